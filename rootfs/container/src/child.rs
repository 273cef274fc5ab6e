//! What runs in the cloned processes, between clone and execve.
//!
//! The parent may be multi-threaded (tests are), so this code must not
//! allocate, take locks or panic: it only reads the plans the parent built
//! and makes syscalls, reporting the first failure through the socket (see
//! `sys.rs`) before `_exit`.

use std::ffi::CStr;

use libc::{c_char, c_int, c_ulong, c_void};

use crate::plan::{
    CapsPlan, Create, DevicePlan, ExecPlan, InitPlan, MountPlan, ProcPlan, RootMount,
};
use crate::seccomp::Programs;
use crate::sys::{self, errno, fail, fd_path, MsgBuf};

const NULL: *const c_char = std::ptr::null();

/// A raw syscall result that failed: report `parts` and exit.
fn check(sock: c_int, r: c_int, parts: &[&[u8]]) -> c_int {
    if r < 0 {
        fail(sock, parts, errno())
    }
    r
}

fn close(fd: c_int) {
    if fd >= 0 {
        // SAFETY: closing a descriptor we own.
        unsafe { libc::close(fd) };
    }
}

fn opt_ptr(s: &Option<std::ffi::CString>) -> *const c_char {
    s.as_ref().map_or(NULL, |s| s.as_ptr())
}

// ---- path resolution inside the new root ----

#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;

/// openat2(dirfd, path, flags, RESOLVE_IN_ROOT): `path` is looked up as if
/// `dirfd` were `/`, symlinks included. Falls back to openat on kernels
/// without openat2.
fn open_beneath(dirfd: c_int, path: &CStr, flags: c_int) -> c_int {
    let how = OpenHow {
        flags: (flags | libc::O_CLOEXEC) as u64,
        mode: 0,
        resolve: RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS,
    };
    // SAFETY: how and path are valid for the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dirfd,
            path.as_ptr(),
            &how as *const OpenHow,
            std::mem::size_of::<OpenHow>(),
        )
    } as c_int;
    if r < 0 && errno() == libc::ENOSYS {
        // SAFETY: plain openat.
        return unsafe { libc::openat(dirfd, path.as_ptr(), flags | libc::O_CLOEXEC) };
    }
    r
}

/// Opens `path` (absolute, normalized) inside the tree at `rootfd`,
/// resolving symlinks within it and creating missing components as `create`
/// says. The final open uses `flags`. Returns the fd or an errno.
fn open_in_root(rootfd: c_int, path: &[u8], create: Create, flags: c_int) -> Result<c_int, i32> {
    let mut buf = [0u8; 4096];
    let rel = path.strip_prefix(b"/").unwrap_or(path);
    if rel.is_empty() {
        let dot = sys::cstr_in(b".", &mut buf).ok_or(libc::EINVAL)?;
        let fd = open_beneath(rootfd, dot, flags);
        return if fd < 0 { Err(errno()) } else { Ok(fd) };
    }
    // Walk prefix by prefix: "a", "a/b", "a/b/c".
    let mut parent = -1;
    let mut end = 0;
    loop {
        let start = end;
        end = match rel[start..].iter().position(|&b| b == b'/') {
            Some(i) => start + i,
            None => rel.len(),
        };
        let last = end == rel.len();
        let comp = &rel[start..end];
        let this_flags = if last { flags } else { libc::O_PATH };
        let prefix = sys::cstr_in(&rel[..end], &mut buf).ok_or(libc::ENAMETOOLONG)?;
        let mut fd = open_beneath(rootfd, prefix, this_flags);
        if fd < 0 && errno() == libc::ENOENT && create != Create::No {
            let mut cbuf = [0u8; 4096];
            let name = sys::cstr_in(comp, &mut cbuf).ok_or(libc::ENAMETOOLONG)?;
            let dir = if parent >= 0 { parent } else { rootfd };
            let r = if last && create == Create::File {
                // SAFETY: openat on a name in dir.
                let f = unsafe {
                    libc::openat(
                        dir,
                        name.as_ptr(),
                        libc::O_CREAT
                            | libc::O_EXCL
                            | libc::O_WRONLY
                            | libc::O_CLOEXEC
                            | libc::O_NOFOLLOW,
                        0o644,
                    )
                };
                close(f);
                f
            } else {
                // SAFETY: mkdirat on a name in dir.
                unsafe { libc::mkdirat(dir, name.as_ptr(), 0o755) }
            };
            if r < 0 && errno() != libc::EEXIST {
                let e = errno();
                close(parent);
                return Err(e);
            }
            let prefix = sys::cstr_in(&rel[..end], &mut buf).ok_or(libc::ENAMETOOLONG)?;
            fd = open_beneath(rootfd, prefix, this_flags);
        }
        if fd < 0 {
            let e = errno();
            close(parent);
            return Err(e);
        }
        close(parent);
        if last {
            return Ok(fd);
        }
        parent = fd;
        end += 1;
    }
}

fn mount(
    src: *const c_char,
    target: *const c_char,
    fstype: *const c_char,
    flags: c_ulong,
    data: *const c_char,
) -> c_int {
    // SAFETY: all pointers are NUL-terminated strings or null.
    unsafe { libc::mount(src, target, fstype, flags, data as *const c_void) }
}

/// Flags of the mount at `path` that a remount must keep (in a user
/// namespace they are locked).
fn mount_flags_of(path: *const c_char) -> c_ulong {
    // The raw statfs syscall (glibc's statvfs may read /proc/mounts, and
    // the libc crate hides f_flags on glibc). The kernel's struct statfs on
    // 64-bit: 10 longs before f_flags, 120 bytes in all.
    let mut st = [0u64; 16];
    // SAFETY: statfs writes at most 120 bytes into the 128-byte buffer.
    if unsafe { libc::syscall(libc::SYS_statfs, path, st.as_mut_ptr()) } < 0 {
        return 0;
    }
    // ST_* values of Linux's statfs f_flags.
    const ST_NOSUID: u64 = 2;
    const ST_NODEV: u64 = 4;
    const ST_NOEXEC: u64 = 8;
    const ST_NOATIME: u64 = 1024;
    const ST_NODIRATIME: u64 = 2048;
    const ST_RELATIME: u64 = 4096;
    let map = [
        (ST_NOSUID, libc::MS_NOSUID),
        (ST_NODEV, libc::MS_NODEV),
        (ST_NOEXEC, libc::MS_NOEXEC),
        (ST_NOATIME, libc::MS_NOATIME),
        (ST_NODIRATIME, libc::MS_NODIRATIME),
        (ST_RELATIME, libc::MS_RELATIME),
    ];
    let flags = st[10];
    let mut f = 0;
    for (st_flag, ms) in map {
        if flags & st_flag != 0 {
            f |= ms;
        }
    }
    f
}

/// MS_BIND|MS_REMOUNT with `flags`, retried with the mount's current flags
/// added when the kernel refuses to clear locked ones.
fn bind_remount(target: *const c_char, flags: c_ulong) -> c_int {
    let base = libc::MS_BIND | libc::MS_REMOUNT;
    let r = mount(NULL, target, NULL, base | flags, NULL);
    if r < 0 && errno() == libc::EPERM {
        return mount(
            NULL,
            target,
            NULL,
            base | flags | mount_flags_of(target),
            NULL,
        );
    }
    r
}

/// setresuid(uid, uid, uid) as a raw syscall. The libc wrappers apply
/// credentials to every thread of the process (glibc's and musl's setxid
/// broadcast); in a child cloned from a multi-threaded parent the libc still
/// believes the parent's threads exist and would wait for them forever. The
/// kernel call affects just this (only) thread.
fn setresuid(uid: u32) -> c_int {
    // SAFETY: a credential syscall with integer arguments.
    unsafe { libc::syscall(libc::SYS_setresuid, uid, uid, uid) as c_int }
}

/// setresgid(gid, gid, gid) as a raw syscall (see [`setresuid`]).
fn setresgid(gid: u32) -> c_int {
    // SAFETY: a credential syscall with integer arguments.
    unsafe { libc::syscall(libc::SYS_setresgid, gid, gid, gid) as c_int }
}

// ---- the container's init ----

/// Runs the container's init: namespaces are already there (clone); this
/// waits for the parent's go, builds the root filesystem, pivots, sets up
/// the process and waits for start before execve.
pub(crate) fn init_main(sock: c_int, plan: &InitPlan) -> ! {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    if sys::recv_byte(sock) != Some(sys::MSG_GO) {
        sys::exit(1);
    }
    if plan.new_user {
        check(sock, setresgid(0), &[b"setresgid 0 in the user namespace"]);
        check(sock, setresuid(0), &[b"setresuid 0 in the user namespace"]);
    }
    if plan.unshare_cgroup {
        // SAFETY: unshare with a namespace flag.
        check(
            sock,
            unsafe { libc::unshare(libc::CLONE_NEWCGROUP) },
            &[b"unshare the cgroup namespace"],
        );
    }
    if let Some(h) = &plan.hostname {
        // SAFETY: pointer and length of a C string.
        let r = unsafe { libc::sethostname(h.as_ptr(), h.as_bytes().len()) };
        check(sock, r, &[b"sethostname ", h.as_bytes()]);
    }
    if let Some(d) = &plan.domainname {
        // SAFETY: as above.
        let r = unsafe { libc::setdomainname(d.as_ptr(), d.as_bytes().len()) };
        check(sock, r, &[b"setdomainname ", d.as_bytes()]);
    }

    let rootfd = setup_root(sock, plan);
    for m in &plan.mounts {
        do_mount(sock, rootfd, m);
    }
    if plan.setup_dev {
        setup_dev(sock, rootfd, &plan.devices);
    }
    let tty = if plan.process.tty {
        let (master, slave) = open_tty_in_root(sock, rootfd, plan.setup_dev);
        size_pty(sock, master, plan.process.console_size);
        Some((master, slave))
    } else {
        None
    };
    pivot(sock, rootfd);
    close(rootfd);

    for (path, value) in &plan.sysctls {
        // SAFETY: open/write/close on a NUL-terminated path and a buffer.
        unsafe {
            let fd = libc::open(
                path.as_ptr(),
                libc::O_WRONLY | libc::O_TRUNC | libc::O_CLOEXEC,
            );
            check(sock, fd, &[b"sysctl ", path.as_bytes()]);
            let v = value.as_bytes();
            let w = libc::write(fd, v.as_ptr() as *const c_void, v.len());
            check(sock, w as c_int, &[b"sysctl ", path.as_bytes()]);
            libc::close(fd);
        }
    }
    for p in &plan.masked {
        mask_path(sock, p);
    }
    for p in &plan.readonly {
        readonly_path(sock, p);
    }
    if plan.root.readonly {
        let r = bind_remount(c"/".as_ptr(), libc::MS_RDONLY);
        check(sock, r, &[b"remount / read-only"]);
    }
    if let Some(flags) = plan.root.propagation {
        let r = mount(NULL, c"/".as_ptr(), NULL, flags, NULL);
        check(sock, r, &[b"set the propagation of /"]);
    }
    finish(sock, &plan.process, tty, true)
}

fn setup_root(sock: c_int, plan: &InitPlan) -> c_int {
    let r = &plan.root;
    let m = mount(
        NULL,
        c"/".as_ptr(),
        NULL,
        libc::MS_REC | libc::MS_PRIVATE,
        NULL,
    );
    check(sock, m, &[b"make / private"]);
    if let Some(t) = &r.tmpfs {
        let m = mount(
            c"tmpfs".as_ptr(),
            t.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=755".as_ptr(),
        );
        check(sock, m, &[b"mount tmpfs on ", t.as_bytes()]);
    }
    for d in &r.mkdirs {
        // SAFETY: NUL-terminated path.
        if unsafe { libc::mkdir(d.as_ptr(), 0o755) } < 0 && errno() != libc::EEXIST {
            fail(sock, &[b"mkdir ", d.as_bytes()], errno());
        }
    }
    let m = match &r.mount {
        RootMount::Overlay(data) => mount(
            c"overlay".as_ptr(),
            r.merged.as_ptr(),
            c"overlay".as_ptr(),
            0,
            data.as_ptr(),
        ),
        RootMount::Bind(tree) => mount(
            tree.as_ptr(),
            r.merged.as_ptr(),
            NULL,
            libc::MS_BIND | libc::MS_REC,
            NULL,
        ),
    };
    check(sock, m, &[b"mount the root on ", r.merged.as_bytes()]);
    // SAFETY: NUL-terminated path.
    let fd = unsafe {
        libc::open(
            r.merged.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    check(sock, fd, &[b"open ", r.merged.as_bytes()])
}

fn do_mount(sock: c_int, rootfd: c_int, m: &MountPlan) {
    let dest = m.dest.as_bytes();
    let fd = match open_in_root(rootfd, dest, m.create, libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) => fail(sock, &[b"mount point ", dest], e),
    };
    let mut tbuf = [0u8; 32];
    let target = fd_path(fd, &mut tbuf);
    let r = mount(
        opt_ptr(&m.source),
        target,
        opt_ptr(&m.fstype),
        m.flags,
        opt_ptr(&m.data),
    );
    if r < 0 {
        fail(
            sock,
            &[b"mount ", m.label.as_bytes(), b" on ", dest],
            errno(),
        );
    }
    close(fd);
    if m.remount.is_none() && m.propagation.is_empty() {
        return;
    }
    // Re-open: the old fd is the directory under the new mount.
    let fd = match open_in_root(rootfd, dest, Create::No, libc::O_PATH) {
        Ok(fd) => fd,
        Err(e) => fail(sock, &[b"reopen ", dest], e),
    };
    let target = fd_path(fd, &mut tbuf);
    if let Some(flags) = m.remount {
        let r = bind_remount(target, flags);
        check(sock, r, &[b"remount ", dest]);
    }
    for &p in &m.propagation {
        let r = mount(NULL, target, NULL, p, NULL);
        check(sock, r, &[b"set the propagation of ", dest]);
    }
    close(fd);
}

fn setup_dev(sock: c_int, rootfd: c_int, devices: &[DevicePlan]) {
    for d in devices {
        make_device(sock, rootfd, d);
    }
    let devfd = match open_in_root(
        rootfd,
        b"/dev",
        Create::Dir,
        libc::O_PATH | libc::O_DIRECTORY,
    ) {
        Ok(fd) => fd,
        Err(e) => fail(sock, &[b"open /dev"], e),
    };
    let links: [(&CStr, &CStr); 5] = [
        (c"/proc/self/fd", c"fd"),
        (c"/proc/self/fd/0", c"stdin"),
        (c"/proc/self/fd/1", c"stdout"),
        (c"/proc/self/fd/2", c"stderr"),
        (c"pts/ptmx", c"ptmx"),
    ];
    for (target, name) in links {
        // SAFETY: NUL-terminated strings, a directory fd.
        let r = unsafe { libc::symlinkat(target.as_ptr(), devfd, name.as_ptr()) };
        if r < 0 && errno() != libc::EEXIST {
            fail(sock, &[b"symlink /dev/", name.to_bytes()], errno());
        }
    }
    close(devfd);
}

fn make_device(sock: c_int, rootfd: c_int, d: &DevicePlan) {
    let path = d.path.as_bytes();
    let dirfd = match open_in_root(
        rootfd,
        d.dir.as_bytes(),
        Create::Dir,
        libc::O_PATH | libc::O_DIRECTORY,
    ) {
        Ok(fd) => fd,
        Err(e) => fail(sock, &[b"mkdir for device ", path], e),
    };
    // SAFETY: mknodat on a name in a directory fd.
    let r = unsafe { libc::mknodat(dirfd, d.name.as_ptr(), d.mode, d.dev) };
    if r == 0 {
        // SAFETY: as above.
        let r = unsafe {
            libc::fchownat(
                dirfd,
                d.name.as_ptr(),
                d.uid,
                d.gid,
                libc::AT_SYMLINK_NOFOLLOW,
            )
        };
        check(sock, r, &[b"chown ", path]);
    } else if errno() == libc::EEXIST {
        // Already there (a bind mount of the spec, or listed twice).
    } else if errno() == libc::EPERM {
        // No mknod (user namespace): bind the caller's node instead.
        // SAFETY: openat/close on a name in a directory fd.
        let f = unsafe {
            libc::openat(
                dirfd,
                d.name.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW,
                0o644,
            )
        };
        check(sock, f, &[b"create the mount point for ", path]);
        close(f);
        // SAFETY: as above.
        let t = unsafe {
            libc::openat(
                dirfd,
                d.name.as_ptr(),
                libc::O_PATH | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            )
        };
        check(sock, t, &[b"open ", path]);
        let mut tbuf = [0u8; 32];
        let r = mount(
            d.path.as_ptr(),
            fd_path(t, &mut tbuf),
            NULL,
            libc::MS_BIND,
            NULL,
        );
        check(sock, r, &[b"bind the device ", path]);
        close(t);
    } else {
        fail(sock, &[b"mknod ", path], errno());
    }
    close(dirfd);
}

/// Allocates a pty in the container's devpts (before pivot_root, through
/// `rootfd`) and binds its slave on /dev/console. Returns (master, slave).
fn open_tty_in_root(sock: c_int, rootfd: c_int, console: bool) -> (c_int, c_int) {
    let master = match open_in_root(
        rootfd,
        b"/dev/ptmx",
        Create::No,
        libc::O_RDWR | libc::O_NOCTTY,
    ) {
        Ok(fd) => fd,
        Err(e) => fail(
            sock,
            &[b"open /dev/ptmx (is devpts mounted on /dev/pts?)"],
            e,
        ),
    };
    let slave = pty_slave(sock, master);
    if console {
        let c = match open_in_root(rootfd, b"/dev/console", Create::File, libc::O_PATH) {
            Ok(fd) => fd,
            Err(e) => fail(sock, &[b"create /dev/console"], e),
        };
        let (mut s, mut t) = ([0u8; 32], [0u8; 32]);
        let r = mount(
            fd_path(slave, &mut s),
            fd_path(c, &mut t),
            NULL,
            libc::MS_BIND,
            NULL,
        );
        check(sock, r, &[b"bind the tty on /dev/console"]);
        close(c);
    }
    (master, slave)
}

/// Unlocks the pty of `master` and opens its slave.
fn pty_slave(sock: c_int, master: c_int) -> c_int {
    let zero: c_int = 0;
    // SAFETY: TIOCSPTLCK takes a pointer to an int.
    let r = unsafe { libc::ioctl(master, libc::TIOCSPTLCK, &zero) };
    check(sock, r, &[b"unlock the pty"]);
    // SAFETY: TIOCGPTPEER takes open flags and returns a new fd.
    let slave = unsafe {
        libc::ioctl(
            master,
            libc::TIOCGPTPEER as _,
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    check(sock, slave, &[b"open the pty slave"])
}

/// Gives the pty its size before the process starts (a resize from the
/// host would come after it, and a program that asks first sees 0x0).
fn size_pty(sock: c_int, master: c_int, size: Option<(u16, u16)>) {
    let Some((rows, cols)) = size else { return };
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass, which outlives the call.
    let r = unsafe { libc::ioctl(master, libc::TIOCSWINSZ, &ws) };
    check(sock, r, &[b"size the pty"]);
}

fn pivot(sock: c_int, rootfd: c_int) {
    // SAFETY: fchdir on an O_PATH directory fd.
    check(
        sock,
        unsafe { libc::fchdir(rootfd) },
        &[b"chdir to the root filesystem"],
    );
    // SAFETY: pivot_root with two NUL-terminated paths.
    let r = unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) };
    if r < 0 {
        if errno() != libc::EINVAL {
            fail(sock, &[b"pivot_root"], errno());
        }
        // The current root is initramfs: move the new root over it and chroot.
        let m = mount(c".".as_ptr(), c"/".as_ptr(), NULL, libc::MS_MOVE, NULL);
        check(sock, m, &[b"move the root filesystem to /"]);
        // SAFETY: chroot to the cwd.
        check(sock, unsafe { libc::chroot(c".".as_ptr()) }, &[b"chroot"]);
    } else {
        // The old root is stacked under "."; keep our unmount from propagating.
        let m = mount(
            NULL,
            c".".as_ptr(),
            NULL,
            libc::MS_SLAVE | libc::MS_REC,
            NULL,
        );
        check(sock, m, &[b"make the old root a slave"]);
        // SAFETY: umount2 on a NUL-terminated path.
        let u = unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) };
        check(sock, u, &[b"unmount the old root"]);
    }
    // SAFETY: chdir to a NUL-terminated path.
    check(sock, unsafe { libc::chdir(c"/".as_ptr()) }, &[b"chdir /"]);
}

fn mask_path(sock: c_int, p: &std::ffi::CString) {
    // SAFETY: stat into a local struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path.
    if unsafe { libc::stat(p.as_ptr(), &mut st) } < 0 {
        if errno() == libc::ENOENT {
            return;
        }
        fail(sock, &[b"mask ", p.as_bytes()], errno());
    }
    let r = if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
        mount(
            c"tmpfs".as_ptr(),
            p.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_RDONLY,
            NULL,
        )
    } else {
        mount(c"/dev/null".as_ptr(), p.as_ptr(), NULL, libc::MS_BIND, NULL)
    };
    check(sock, r, &[b"mask ", p.as_bytes()]);
}

fn readonly_path(sock: c_int, p: &std::ffi::CString) {
    let r = mount(
        p.as_ptr(),
        p.as_ptr(),
        NULL,
        libc::MS_BIND | libc::MS_REC,
        NULL,
    );
    if r < 0 {
        if errno() == libc::ENOENT {
            return;
        }
        fail(sock, &[b"bind ", p.as_bytes(), b" read-only"], errno());
    }
    let r = bind_remount(p.as_ptr(), libc::MS_RDONLY | libc::MS_REC);
    check(sock, r, &[b"remount ", p.as_bytes(), b" read-only"]);
}

// ---- the process part, shared with exec ----

/// An exec'd process: namespaces joined by the intermediate process; waits
/// for the parent's go, sets the process up and execs at once.
pub(crate) fn exec_main(sock: c_int, plan: &ProcPlan) -> ! {
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0) };
    if sys::recv_byte(sock) != Some(sys::MSG_GO) {
        sys::exit(1);
    }
    let tty = if plan.tty {
        // SAFETY: open on a NUL-terminated path.
        let master = unsafe {
            libc::open(
                c"/dev/ptmx".as_ptr(),
                libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
            )
        };
        check(sock, master, &[b"open /dev/ptmx"]);
        let slave = pty_slave(sock, master);
        size_pty(sock, master, plan.console_size);
        Some((master, slave))
    } else {
        None
    };
    finish(sock, plan, tty, false)
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

const CAP_VERSION_3: u32 = 0x2008_0522;
const PR_CAP_AMBIENT: c_int = 47;
const PR_CAP_AMBIENT_RAISE: c_ulong = 2;
const PR_CAP_AMBIENT_CLEAR_ALL: c_ulong = 4;

fn prctl(op: c_int, a: c_ulong) -> c_int {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(op, a, 0 as c_ulong, 0 as c_ulong, 0 as c_ulong) }
}

fn drop_bounding(sock: c_int, c: &CapsPlan) {
    for i in 0..=c.last_cap {
        if c.bounding & (1u64 << i) == 0 && prctl(libc::PR_CAPBSET_DROP, i as c_ulong) < 0 {
            if errno() == libc::EINVAL {
                continue;
            }
            fail(sock, &[b"drop capabilities from the bounding set"], errno());
        }
    }
}

fn set_caps(sock: c_int, c: &CapsPlan) {
    let mut hdr = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let split = |m: u64| [(m & 0xffff_ffff) as u32, (m >> 32) as u32];
    let (e, p, i) = (split(c.effective), split(c.permitted), split(c.inheritable));
    let data = [
        CapData {
            effective: e[0],
            permitted: p[0],
            inheritable: i[0],
        },
        CapData {
            effective: e[1],
            permitted: p[1],
            inheritable: i[1],
        },
    ];
    // SAFETY: capset with a v3 header and two data structs.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    check(
        sock,
        r as c_int,
        &[b"capset (effective must be within permitted)"],
    );
    // Ambient: best effort, as runc (needs the cap in permitted and inheritable).
    unsafe_prctl5(libc::PR_SET_KEEPCAPS, 0, 0);
    unsafe_prctl5(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0);
    for n in 0..=c.last_cap {
        if c.ambient & (1u64 << n) != 0 {
            unsafe_prctl5(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, n as c_ulong);
        }
    }
}

fn unsafe_prctl5(op: c_int, a: c_ulong, b: c_ulong) -> c_int {
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(op, a, b, 0 as c_ulong, 0 as c_ulong) }
}

#[repr(C)]
struct SockFprog {
    len: u16,
    filter: *const seccompiler::sock_filter,
}

fn install_seccomp(sock: c_int, p: &Programs) {
    for f in &p.filters {
        let prog = SockFprog {
            len: f.len() as u16,
            filter: f.as_ptr(),
        };
        let call = |flags: c_ulong| {
            // SAFETY: seccomp(SET_MODE_FILTER) with a valid program.
            unsafe {
                libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    flags,
                    &prog as *const SockFprog,
                )
            }
        };
        let mut r = call(p.flags);
        if r < 0 && errno() == libc::EINVAL && p.flags != 0 {
            r = call(0);
        }
        check(sock, r as c_int, &[b"install the seccomp filter"]);
    }
}

#[repr(C)]
struct Rlimit64 {
    cur: u64,
    max: u64,
}

/// cwd, session and terminal, rlimits, credentials, capabilities,
/// no_new_privs, seccomp; then (init) wait for start; execve.
fn finish(sock: c_int, p: &ProcPlan, tty: Option<(c_int, c_int)>, wait_start: bool) -> ! {
    // SAFETY: chdir to a NUL-terminated path.
    if unsafe { libc::chdir(p.cwd.as_ptr()) } < 0 {
        fail(sock, &[b"chdir to cwd ", p.cwd.as_bytes()], errno());
    }
    // SAFETY: setsid has no preconditions; EPERM (already a leader) is fine.
    unsafe { libc::setsid() };
    if let Some((_, slave)) = tty {
        // SAFETY: ioctl/dup2 on descriptors we own.
        unsafe {
            check(
                sock,
                libc::ioctl(slave, libc::TIOCSCTTY, 0),
                &[b"set the controlling terminal"],
            );
            for i in 0..3 {
                check(sock, libc::dup2(slave, i), &[b"dup the tty"]);
            }
        }
        close(slave);
    }
    for &(res, soft, hard) in &p.rlimits {
        let lim = Rlimit64 {
            cur: soft,
            max: hard,
        };
        // SAFETY: prlimit64 on ourselves with a valid struct.
        let r = unsafe {
            libc::syscall(
                libc::SYS_prlimit64,
                0,
                res as c_ulong,
                &lim as *const Rlimit64,
                std::ptr::null_mut::<Rlimit64>(),
            )
        };
        check(sock, r as c_int, &[b"setrlimit"]);
    }

    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which
    // the process may be about to lose: install it now, while root (runc's
    // order). With no_new_privs it goes last.
    if !p.no_new_privs {
        install_seccomp(sock, &p.seccomp);
    }

    if let Some(c) = &p.caps {
        drop_bounding(sock, c);
        check(
            sock,
            prctl(libc::PR_SET_KEEPCAPS, 1),
            &[b"prctl PR_SET_KEEPCAPS"],
        );
    }
    // SAFETY: setgroups with a valid array (the raw syscall: see setresuid).
    let r = unsafe { libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) };
    if r < 0 && !(p.groups.is_empty() && errno() == libc::EPERM) {
        fail(sock, &[b"setgroups"], errno());
    }
    let r = setresgid(p.gid);
    if r < 0 {
        gid_fail(sock, p.gid);
    }
    let r = setresuid(p.uid);
    if r < 0 {
        uid_fail(sock, p.uid);
    }
    if let Some(c) = &p.caps {
        set_caps(sock, c);
    }
    if p.no_new_privs {
        check(
            sock,
            prctl(libc::PR_SET_NO_NEW_PRIVS, 1),
            &[b"prctl PR_SET_NO_NEW_PRIVS"],
        );
    }
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(p.umask) };

    let master = tty.map(|(m, _)| m);
    if !sys::send_msg(sock, &[sys::MSG_READY], master) {
        sys::exit(1);
    }
    close(master.unwrap_or(-1));
    if p.no_new_privs {
        install_seccomp(sock, &p.seccomp);
    }
    if wait_start && sys::recv_byte(sock) != Some(sys::MSG_START) {
        sys::exit(1);
    }
    do_exec(sock, &p.exec)
}

fn itoa(mut n: u32, buf: &mut [u8; 10]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

fn uid_fail(sock: c_int, uid: u32) -> ! {
    let mut b = [0u8; 10];
    let e = errno();
    fail(sock, &[b"setresuid ", itoa(uid, &mut b)], e)
}

fn gid_fail(sock: c_int, gid: u32) -> ! {
    let mut b = [0u8; 10];
    let e = errno();
    fail(sock, &[b"setresgid ", itoa(gid, &mut b)], e)
}

fn exec_fail(sock: c_int, err: i32, searched: bool, path: &[u8]) -> ! {
    let mut m = MsgBuf::new(sys::MSG_EXEC);
    m.push_i32(err).push(&[searched as u8]).push(path);
    sys::send_msg(sock, m.as_bytes(), None);
    sys::exit(if err == libc::ENOENT { 127 } else { 126 })
}

fn do_exec(sock: c_int, e: &ExecPlan) -> ! {
    let mut denied: Option<&std::ffi::CString> = None;
    for c in &e.candidates {
        // SAFETY: NUL-terminated path and NULL-terminated arrays of C strings.
        unsafe { libc::execve(c.as_ptr(), e.argv_ptrs.as_ptr(), e.envp_ptrs.as_ptr()) };
        let err = errno();
        if !e.searched {
            exec_fail(sock, err, false, c.as_bytes());
        }
        match err {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => {
                denied.get_or_insert(c);
            }
            _ => exec_fail(sock, err, false, c.as_bytes()),
        }
    }
    match denied {
        Some(c) => exec_fail(sock, libc::EACCES, false, c.as_bytes()),
        None => exec_fail(sock, libc::ENOENT, true, e.name.as_bytes()),
    }
}

// ---- intermediate process (joining namespaces) ----

/// Joins `ns` (fd, CLONE_NEW* type) in order.
pub(crate) fn join_namespaces(sock: c_int, ns: &[(c_int, c_int, &'static str)]) {
    for &(fd, nstype, name) in ns {
        // SAFETY: setns on an fd we own.
        if unsafe { libc::setns(fd, nstype) } < 0 {
            fail(
                sock,
                &[b"join the ", name.as_bytes(), b" namespace"],
                errno(),
            );
        }
        close(fd);
    }
}

/// Writes "0" into a cgroup.procs file: moves the calling process.
pub(crate) fn join_cgroup(sock: c_int, procs: &CStr) {
    // SAFETY: open/write/close with a NUL-terminated path and a buffer.
    unsafe {
        let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        check(sock, fd, &[b"open ", procs.to_bytes()]);
        let w = libc::write(fd, b"0".as_ptr() as *const c_void, 1);
        check(sock, w as c_int, &[b"join the cgroup ", procs.to_bytes()]);
        libc::close(fd);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;
    use std::path::PathBuf;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-child-test-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn open_dir(p: &std::path::Path) -> c_int {
        let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
        // SAFETY: NUL-terminated path.
        unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        }
    }

    fn fd_target(fd: c_int) -> PathBuf {
        std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap()
    }

    #[test]
    fn symlinks_resolve_inside_the_root() {
        let root = tmp("root");
        let outside = tmp("outside");
        std::os::unix::fs::symlink(&outside, root.join("esc")).unwrap();
        std::os::unix::fs::symlink("/real", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../../..", root.join("up")).unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        std::os::unix::fs::symlink("real", root.join("rel")).unwrap();
        let rootfd = open_dir(&root);
        assert!(rootfd >= 0);

        // An absolute symlink is taken relative to the root.
        let fd = open_in_root(rootfd, b"/abs/x", Create::Dir, libc::O_PATH).unwrap();
        assert_eq!(fd_target(fd), root.join("real/x"));
        close(fd);
        // One that only exists outside dangles: an error, nothing made outside.
        assert_eq!(
            open_in_root(rootfd, b"/esc/x", Create::Dir, libc::O_PATH),
            Err(libc::ENOENT)
        );
        assert!(!outside.join("x").exists());

        // ".." symlinks stop at the root.
        let fd = open_in_root(rootfd, b"/up/y", Create::Dir, libc::O_PATH).unwrap();
        assert_eq!(fd_target(fd), root.join("y"));
        close(fd);

        // Relative symlinks work; files are created at the end.
        let fd = open_in_root(rootfd, b"/rel/sub/file", Create::File, libc::O_PATH).unwrap();
        assert_eq!(fd_target(fd), root.join("real/sub/file"));
        assert!(root.join("real/sub/file").is_file());
        close(fd);

        // Missing without create; the root itself.
        assert_eq!(
            open_in_root(rootfd, b"/nope/x", Create::No, libc::O_PATH),
            Err(libc::ENOENT)
        );
        let fd = open_in_root(rootfd, b"/", Create::No, libc::O_PATH).unwrap();
        assert_eq!(fd_target(fd), root);
        close(fd);
        close(rootfd);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn statfs_flags_match_statvfs() {
        for p in [c"/proc", c"/", c"/dev"] {
            let ours = mount_flags_of(p.as_ptr());
            let theirs = nix::sys::statvfs::statvfs(p).unwrap().flags();
            use nix::sys::statvfs::FsFlags;
            assert_eq!(
                ours & libc::MS_NOSUID != 0,
                theirs.contains(FsFlags::ST_NOSUID)
            );
            assert_eq!(
                ours & libc::MS_NODEV != 0,
                theirs.contains(FsFlags::ST_NODEV)
            );
            assert_eq!(
                ours & libc::MS_NOEXEC != 0,
                theirs.contains(FsFlags::ST_NOEXEC)
            );
            // musl's statvfs drops ST_RELATIME; glibc passes the kernel's.
            #[cfg(target_env = "gnu")]
            assert_eq!(
                ours & libc::MS_RELATIME != 0,
                theirs.bits() as u64 & 4096 != 0
            );
        }
    }
}
