//! `husk vmm --jail DIR --uid U --gid G`: the VMM gives up the host before
//! it serves anything, as Firecracker's jailer does for Firecracker.
//!
//! In order, while the process still has one thread and is root:
//! 1. the device nodes the VMM needs are made inside DIR (`/dev/kvm`, and
//!    `/dev/net/tun` when the host has it), owned by U:G;
//! 2. a mount namespace of its own, where DIR becomes `/` (pivot_root;
//!    the host's tree is detached, not merely hidden under a chroot);
//! 3. limits: open files, and the size of files it writes (`--jail-fsize`);
//! 4. no supplementary groups, then G, then U: every capability goes with
//!    root, and `no_new_privs` keeps it so across exec;
//! 5. a pid namespace of its own: the process forks, and the child, PID 1
//!    there, is the VMM, which sees no host process; the process the
//!    caller started stays, jailed the same way, to pass signals on and
//!    exit with the VMM's status. The network namespace is the host's, the
//!    one `--netns PATH` names, or a new empty one (`--new-netns`).
//!
//! Everything the API names afterwards (kernel, disks, sockets, logs) is a
//! path inside DIR, which the caller fills beforehand (Firecracker's jailer
//! works the same way). With `--cgroup FILE=VALUE`, both go into a cgroup
//! v2 of their own first, with those limits (`cgroup2.rs`).

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::unistd::{chdir, chown, pivot_root, setgid, setgroups, setuid, Gid, Uid};
use std::path::{Path, PathBuf};

/// Where and as whom the VMM is jailed.
#[derive(Debug, Clone)]
pub struct Jail {
    pub dir: PathBuf,
    pub uid: u32,
    pub gid: u32,
    /// Largest file the VMM may write, in bytes (`RLIMIT_FSIZE`).
    pub fsize: Option<u64>,
    /// The network namespace the VMM runs in.
    pub net: JailNet,
    /// The cgroup v2 the VMM and its keeper are placed in, with limits.
    pub cgroup: Option<JailCgroup>,
}

/// A jailed VMM's cgroup: `/sys/fs/cgroup/<parent>/<leaf>`.
#[derive(Debug, Clone)]
pub struct JailCgroup {
    pub parent: String,
    pub leaf: String,
    pub settings: Vec<crate::cgroup2::Setting>,
}

/// Which network namespace a jailed VMM has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JailNet {
    /// The caller's (TAP devices the host made are there).
    Host,
    /// The one this file names (`/var/run/netns/NAME`, `/proc/PID/ns/net`).
    Join(PathBuf),
    /// A new one with only a loopback: the VMM can reach no network.
    New,
}

/// What the process is once [`Jail::enter`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The VMM: PID 1 of the jail's pid namespace.
    Vmm,
    /// The process the caller started: it waits for the VMM (this pid)
    /// and passes signals on ([`keep`]).
    Keeper(nix::unistd::Pid),
}

/// The signals a keeper passes on to its VMM.
const PASSED_ON: &[nix::sys::signal::Signal] = {
    use nix::sys::signal::Signal::*;
    &[SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
};

/// Open files a jailed VMM may hold: enough for many disks, NICs and
/// vsock connections, bounded.
const MAX_FILES: u64 = 4096;

/// A character device a VMM opens: its path in the jail, major, minor,
/// and whether it must exist on the host.
const DEVICES: &[(&str, u64, u64, bool)] =
    &[("dev/kvm", 10, 232, true), ("dev/net/tun", 10, 200, false)];

impl Jail {
    /// Enters the jail; the calling process must be single-threaded and
    /// root. Returns, in two processes, once each runs as the jail's uid
    /// inside it: the VMM and its keeper.
    pub fn enter(&self) -> Result<Role, String> {
        let fail = |what: &'static str| move |e: nix::Error| format!("--jail: {what}: {e}");
        if !Uid::effective().is_root() {
            return Err("--jail: needs root (to make the jail, then give root up)".into());
        }
        if self.uid == 0 || self.gid == 0 {
            return Err(
                "--jail: --uid and --gid must not be 0 (root is what the jail gives up)".into(),
            );
        }
        let dir = std::fs::canonicalize(&self.dir)
            .map_err(|e| format!("--jail {}: {e}", self.dir.display()))?;
        if dir == Path::new("/") || !dir.is_dir() {
            return Err(format!(
                "--jail {}: must be a directory other than /",
                dir.display()
            ));
        }
        self.make_devices(&dir)?;
        // The jail's root is the VMM's own (its API socket, its logs);
        // `dev/` stays root's.
        chown(
            &dir,
            Some(Uid::from_raw(self.uid)),
            Some(Gid::from_raw(self.gid)),
        )
        .map_err(|e| format!("--jail: chown {}: {e}", dir.display()))?;
        // What /dev/kvm is, from the host's /sys and /proc, which the jail
        // does not have.
        let _ = husk_vmm::kvm_kind::host();
        // While the host's /sys/fs/cgroup is still there and this process
        // is root; the VMM forked below inherits it.
        if let Some(cg) = &self.cgroup {
            let root = Path::new(crate::cgroup2::ROOT);
            crate::cgroup2::join(root, &cg.parent, &cg.leaf, &cg.settings, "--cgroup")?;
        }
        if let JailNet::Join(path) = &self.net {
            let ns = std::fs::File::open(path)
                .map_err(|e| format!("--netns {}: {e}", path.display()))?;
            nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
                .map_err(|e| format!("--netns {}: {e}", path.display()))?;
        }
        let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID;
        if self.net == JailNet::New {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        // The pid namespace is the next child's: the fork below.
        unshare(flags).map_err(fail("new namespaces"))?;
        make_mounts_private()?;
        // pivot_root wants the new root to be a mount point.
        mount(
            Some(&dir),
            &dir,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(fail("binding the jail onto itself"))?;
        pivot_into(&dir)?;
        self.limit()?;
        give_up_root(self.uid, self.gid, false)?;
        split()
    }

    /// The device nodes, owned by the jail's uid and gid, mode 0660.
    fn make_devices(&self, dir: &Path) -> Result<(), String> {
        for &(path, major, minor, required) in DEVICES {
            let host = Path::new("/").join(path);
            if !host.exists() {
                if required {
                    return Err(format!("--jail: the host has no {}", host.display()));
                }
                continue;
            }
            let node = dir.join(path);
            if let Some(parent) = node.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("--jail: {}: {e}", parent.display()))?;
            }
            let _ = std::fs::remove_file(&node);
            mknod(
                &node,
                SFlag::S_IFCHR,
                Mode::from_bits_truncate(0o660),
                makedev(major, minor),
            )
            .map_err(|e| format!("--jail: mknod {}: {e}", node.display()))?;
            chown(
                &node,
                Some(Uid::from_raw(self.uid)),
                Some(Gid::from_raw(self.gid)),
            )
            .map_err(|e| format!("--jail: chown {}: {e}", node.display()))?;
        }
        Ok(())
    }

    /// Open files and, if asked, file size.
    fn limit(&self) -> Result<(), String> {
        set_limit(libc::RLIMIT_NOFILE, MAX_FILES, "limiting open files")?;
        if let Some(bytes) = self.fsize {
            set_limit(libc::RLIMIT_FSIZE, bytes, "limiting file size")?;
        }
        Ok(())
    }
}

/// A resource's soft and hard limit, `value`.
pub fn set_limit(
    resource: libc::__rlimit_resource_t,
    value: u64,
    what: &str,
) -> Result<(), String> {
    let lim = libc::rlimit {
        rlim_cur: value,
        rlim_max: value,
    };
    // SAFETY: setrlimit(2) with a live struct.
    if unsafe { libc::setrlimit(resource, &lim) } != 0 {
        return Err(format!(
            "--jail: {what}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// In a new mount namespace: nothing done below propagates back to the
/// host's mounts.
pub fn make_mounts_private() -> Result<(), String> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("--jail: making / private: {e}"))
}

/// Makes `dir`, a mount point, the root: the old root is stacked under
/// the new one, then detached (not merely hidden, as under a chroot).
pub fn pivot_into(dir: &Path) -> Result<(), String> {
    let fail = |what: &'static str| move |e: nix::Error| format!("--jail: {what}: {e}");
    chdir(dir).map_err(fail("entering the jail"))?;
    pivot_root(".", ".").map_err(fail("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(fail("detaching the host's tree"))?;
    chdir("/").map_err(fail("chdir /"))
}

/// No supplementary groups, `gid`, then `uid`: every capability goes with
/// root (and, with `bounding`, from the bounding set first, so nothing run
/// later gets one back from a file); `no_new_privs` keeps it so.
pub fn give_up_root(uid: u32, gid: u32, bounding: bool) -> Result<(), String> {
    let fail = |what: &'static str| move |e: nix::Error| format!("--jail: {what}: {e}");
    if bounding {
        for cap in 0..=63 {
            // SAFETY: prctl(2) with integer arguments; a number past the
            // kernel's last capability is EINVAL, and ignored.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        }
    }
    setgroups(&[]).map_err(fail("dropping supplementary groups"))?;
    setgid(Gid::from_raw(gid)).map_err(fail("setgid"))?;
    setuid(Uid::from_raw(uid)).map_err(fail("setuid"))?;
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(format!(
            "--jail: no_new_privs: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// What the keeper waits for: the signals it passes on, and its VMM's end.
fn kept() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    for &sig in PASSED_ON {
        set.add(sig);
    }
    set.add(nix::sys::signal::Signal::SIGCHLD);
    set
}

/// Forks into the VMM (the child, PID 1 of the new pid namespace) and its
/// keeper. Signals are blocked across the fork, so none is lost or acted
/// on by default before the keeper waits for them.
fn split() -> Result<Role, String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, SigmaskHow};
    let mut before = SigSet::empty();
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&kept()), Some(&mut before))
        .map_err(|e| format!("--jail: blocking signals: {e}"))?;
    // SAFETY: the process is single-threaded here (Jail::enter's contract),
    // so the child may run anything.
    match unsafe { nix::unistd::fork() } {
        Err(e) => Err(format!("--jail: fork into the pid namespace: {e}")),
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(Role::Keeper(child)),
        Ok(nix::unistd::ForkResult::Child) => {
            // PID 1 of a namespace gets no signal it leaves at its default
            // action, even blocked for a signalfd: a handler that does
            // nothing makes the keeper's SIGTERM and SIGINT arrive.
            extern "C" fn nothing(_: libc::c_int) {}
            let noop = SigAction::new(
                SigHandler::Handler(nothing),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            for &sig in PASSED_ON {
                // SAFETY: the handler does nothing, so is async-signal-safe.
                unsafe { sigaction(sig, &noop) }
                    .map_err(|e| format!("--jail: handling {sig}: {e}"))?;
            }
            nix::sys::signal::sigprocmask(SigmaskHow::SIG_SETMASK, Some(&before), None)
                .map_err(|e| format!("--jail: signal mask: {e}"))?;
            Ok(Role::Vmm)
        }
    }
}

/// The keeper's life: pass [`PASSED_ON`] signals to the VMM `child` and
/// end with its status (128 + the signal when one killed it).
pub fn keep(child: nix::unistd::Pid) -> u8 {
    use nix::sys::signal::Signal;
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let set = kept();
    loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code as u8,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as u8,
            Ok(_) => {}
            Err(_) => return 1,
        }
        match set.wait() {
            Ok(Signal::SIGCHLD) | Err(_) => {}
            Ok(sig) => {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// In a child process (the jail changes the whole process): enter,
    /// then look around as a compromised VMM would.
    #[test]
    fn inside_the_jail_only_the_jail_is_there_and_root_is_gone() {
        if !Uid::effective().is_root() {
            return husk_skip::skip("needs root to make a jail");
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinux"), b"kernel").unwrap();
        let jail = Jail {
            dir: dir.path().to_path_buf(),
            uid: 65534,
            gid: 65534,
            fsize: Some(1 << 20),
            net: JailNet::New,
            cgroup: None,
        };
        let (mut rx, tx) = std::os::unix::net::UnixStream::pair().unwrap();
        // SAFETY: the child only runs async-signal-safe-enough code of its
        // own (no locks held by other threads are taken: the jail code and
        // std::fs) and ends with _exit.
        match unsafe { libc::fork() } {
            0 => {
                use std::io::Write;
                let mut tx = tx;
                let report = match jail.enter() {
                    Err(e) => format!("error {e}"),
                    Ok(Role::Keeper(vmm)) => {
                        drop(tx);
                        let code = keep(vmm);
                        // SAFETY: ends the keeper without the test
                        // harness's exit handlers.
                        unsafe { libc::_exit(i32::from(code)) };
                    }
                    Ok(Role::Vmm) => {
                        let mut names: Vec<String> = std::fs::read_dir("/")
                            .unwrap()
                            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                            .collect();
                        names.sort();
                        let kvm = std::fs::OpenOptions::new()
                            .read(true)
                            .write(true)
                            .open("/dev/kvm");
                        let escape = std::fs::read_dir("/..").map(|d| d.count());
                        format!(
                            "root {} uid {} kvm {} up {} pid {}",
                            names.join(","),
                            Uid::effective(),
                            kvm.is_ok(),
                            escape.unwrap_or(0),
                            nix::unistd::getpid()
                        )
                    }
                };
                let _ = tx.write_all(report.as_bytes());
                // SAFETY: ends the forked child without running the
                // parent's exit handlers.
                unsafe { libc::_exit(0) };
            }
            -1 => panic!("fork: {}", std::io::Error::last_os_error()),
            child => {
                drop(tx);
                let mut report = String::new();
                std::io::Read::read_to_string(&mut rx, &mut report).unwrap();
                let mut status = 0;
                // SAFETY: reaps the keeper forked above.
                unsafe { libc::waitpid(child, &mut status, 0) };
                // "/.." is "/" itself: two entries, dev and vmlinux; the
                // VMM is PID 1 of its own namespace, and its keeper ends
                // with its status.
                assert_eq!(
                    report, "root dev,vmlinux uid 65534 kvm true up 2 pid 1",
                    "{report}"
                );
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
        // The host's tree was never touched: the node is in the jail only.
        assert!(dir.path().join("dev/kvm").exists());
    }

    #[test]
    fn root_as_the_jails_user_is_refused() {
        let jail = Jail {
            dir: "/tmp".into(),
            uid: 0,
            gid: 0,
            fsize: None,
            net: JailNet::Host,
            cgroup: None,
        };
        let err = jail.enter().unwrap_err();
        assert!(
            err.contains("must not be 0") || err.contains("needs root"),
            "{err}"
        );
    }
}
