//! The in-guest container runtime: an OCI runtime spec and an image tree in,
//! an isolated process out.
//!
//! The guest agent (PID 1 of the VM) calls [`Container::create`], which
//! builds the container (namespaces, overlay root, mounts, cgroup, ...) and
//! leaves its process waiting just before `execve`, like `runc create`;
//! [`Container::start`] lets it run. [`Container::exec`] runs more processes
//! inside it.
//!
//! # Reaping contract
//!
//! The container's process and every exec'd process are children of the
//! caller (the container's init is cloned directly with its new namespaces;
//! exec'd processes are cloned with `CLONE_PARENT` by a short-lived
//! intermediate process that joins the namespaces). The caller reaps them
//! with its own `waitpid` loop. Intermediate processes are reaped by pid
//! inside the call that forked them, and a process whose setup failed is
//! killed and reaped inside the call that returns the error, so the caller
//! never sees pids it was not given. [`Container::start`] is the exception:
//! when the `execve` fails the init exits (127/126) and the caller reaps it.
//!
//! # How the child is written
//!
//! The caller may be multi-threaded (tests are), so nothing allocates
//! between `clone` and `execve`: the parent precomputes every string, flag
//! and array (`plan.rs`), the child (`child.rs`) only makes syscalls and
//! reports failures through a `SOCK_SEQPACKET` socket (`sys.rs`).

mod cgroup;
pub mod changes;
mod child;
mod error;
mod plan;
mod seccomp;
mod spec;
mod sys;
pub mod trace;

use std::ffi::{CString, OsString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use libc::{c_int, c_ulong};
use oci_spec::runtime::{Linux, LinuxNamespaceType, LinuxResources, Process, Spec};

pub use crate::error::Error;
pub use crate::spec::{default_seccomp, DENIED_SYSCALLS};
/// The cgroup figures the agent reports; the type is the protocol's.
pub use husk_wire::agent::Stats;
pub use husk_wire::spec::{
    default_mounts, default_spec, DEFAULT_CAPABILITIES, DEFAULT_PATH, MASKED_PATHS, READONLY_PATHS,
};
pub use oci_spec;

use crate::cgroup::Cgroup;
use crate::plan::{InitPlan, ProcPlan, RootPlan};
use crate::seccomp::Programs;

/// How long the parent waits for a child's answer (setup, execve).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long [`Container::destroy`] waits for the processes to go.
const DESTROY_TIMEOUT: Duration = Duration::from_secs(5);

/// How the process's standard streams are connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stdio {
    /// Pipes for stdout and stderr; a pipe for stdin when `stdin`, else
    /// /dev/null.
    Pipes {
        /// Give the process a stdin pipe.
        stdin: bool,
    },
    /// A pseudo-terminal from the container's own devpts: the process gets
    /// it as stdin, stdout, stderr and controlling terminal.
    Tty,
}

/// The caller's ends of the process's standard streams.
#[derive(Debug)]
pub struct ProcessIo {
    /// Write end of the stdin pipe (`Pipes { stdin: true }`); for a tty, a
    /// dup of the pty master.
    pub stdin: Option<OwnedFd>,
    /// Read end of the stdout pipe; for a tty, the pty master (reading it
    /// gives the terminal's output, EIO once every slave is closed).
    pub stdout: OwnedFd,
    /// Read end of the stderr pipe; None for a tty.
    pub stderr: Option<OwnedFd>,
}

/// The container's root filesystem.
#[derive(Debug, Clone)]
pub enum Rootfs {
    /// An image tree with a writable overlay layer over it.
    Layered {
        /// The image tree, already mounted (read-only) by the caller.
        lower: PathBuf,
        /// A directory on a writable filesystem for the container's
        /// changes (`upper/` and `work/` are made in it and kept), or None
        /// for a tmpfs that lives as long as the container.
        upper: Option<PathBuf>,
    },
    /// A directory used as it is (bind-mounted), changes and all: an OCI
    /// bundle's rootfs, which the caller prepared.
    Dir(PathBuf),
}

impl Rootfs {
    /// The tree the container's root shows.
    fn tree(&self) -> &Path {
        match self {
            Rootfs::Layered { lower, .. } => lower,
            Rootfs::Dir(dir) => dir,
        }
    }
}

/// A created container.
#[derive(Debug)]
pub struct Container {
    id: String,
    init_pid: i32,
    /// state_dir/<id>
    dir: PathBuf,
    /// Socket to the init until start.
    sock: Option<OwnedFd>,
    cgroup: Option<Cgroup>,
    /// The namespaces the container has (new or joined), for exec.
    namespaces: Vec<LinuxNamespaceType>,
    /// The container's pid namespace link (`pid:[...]`) when it has a new
    /// one.
    pidns: Option<OsString>,
    /// A pidfd of the init: signals cannot reach a process that reused its
    /// pid after the caller reaped it. None on kernels without pidfds.
    pidfd: Option<OwnedFd>,
    seccomp: Programs,
    last_cap: u32,
}

fn ns_flag(t: LinuxNamespaceType) -> c_int {
    match t {
        LinuxNamespaceType::Mount => libc::CLONE_NEWNS,
        LinuxNamespaceType::Cgroup => libc::CLONE_NEWCGROUP,
        LinuxNamespaceType::Uts => libc::CLONE_NEWUTS,
        LinuxNamespaceType::Ipc => libc::CLONE_NEWIPC,
        LinuxNamespaceType::User => libc::CLONE_NEWUSER,
        LinuxNamespaceType::Pid => libc::CLONE_NEWPID,
        LinuxNamespaceType::Network => libc::CLONE_NEWNET,
        LinuxNamespaceType::Time => 0x80,
    }
}

fn ns_name(t: LinuxNamespaceType) -> &'static str {
    match t {
        LinuxNamespaceType::Mount => "mnt",
        LinuxNamespaceType::Cgroup => "cgroup",
        LinuxNamespaceType::Uts => "uts",
        LinuxNamespaceType::Ipc => "ipc",
        LinuxNamespaceType::User => "user",
        LinuxNamespaceType::Pid => "pid",
        LinuxNamespaceType::Network => "net",
        LinuxNamespaceType::Time => "time",
    }
}

fn validate_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Error::Spec(format!(
            "container id {id:?}: use 1-128 of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

/// A namespace joined by path: fd, CLONE_NEW* type, name.
type JoinNs = (OwnedFd, c_int, &'static str);

/// Which process a spawn starts.
enum Body<'a> {
    Init(&'a InitPlan),
    Exec(&'a ProcPlan),
}

fn run_body(sock: c_int, body: &Body) -> ! {
    match body {
        Body::Init(p) => child::init_main(sock, p),
        Body::Exec(p) => child::exec_main(sock, p),
    }
}

/// Turns a child's `E`/`X` message into an error.
fn child_error(data: &[u8]) -> Error {
    let errno = sys::i32_at(data, 1).unwrap_or(0);
    match data.first() {
        Some(&sys::MSG_ERROR) => Error::os(
            String::from_utf8_lossy(data.get(5..).unwrap_or_default()).into_owned(),
            io::Error::from_raw_os_error(errno),
        ),
        Some(&sys::MSG_EXEC) => Error::Exec {
            path: String::from_utf8_lossy(data.get(6..).unwrap_or_default()).into_owned(),
            searched: data.get(5) == Some(&1),
            source: io::Error::from_raw_os_error(errno),
        },
        _ => Error::State(format!(
            "unexpected message from the container process: {:?}",
            String::from_utf8_lossy(data)
        )),
    }
}

fn describe_status(status: c_int) -> String {
    if libc::WIFEXITED(status) {
        format!("exit status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    }
}

/// Clones the process that runs `body`, directly (new namespaces from
/// `flags`) or, when namespaces must be joined or a cgroup entered first,
/// through an intermediate process that does that and then clones it with
/// `CLONE_PARENT`. The intermediate is reaped here. `sock` (the child's end)
/// is closed in the parent once cloned, so that a dying child is seen as end
/// of file on `parent_sock`. Returns the pid.
fn spawn(
    sock: OwnedFd,
    stdio: [RawFd; 3],
    join: &[JoinNs],
    flags: c_ulong,
    cgroup_procs: Option<&CString>,
    body: &Body,
    parent_sock: BorrowedFd,
) -> Result<i32, Error> {
    let sockfd = sock.as_raw_fd();
    if join.is_empty() && cgroup_procs.is_none() {
        // SAFETY: the child runs only the allocation-free code of child.rs.
        let pid = unsafe { sys::clone_raw(flags) }.map_err(|e| Error::os("clone", e))?;
        if pid == 0 {
            let mut keep = [sockfd];
            if !sys::arrange_fds(stdio, &mut keep) {
                sys::exit(1);
            }
            sys::reset_signals();
            run_body(keep[0], body);
        }
        drop(sock);
        return Ok(pid);
    }

    // Everything the intermediate needs, allocated now.
    let mut keep: Vec<c_int> = std::iter::once(sockfd)
        .chain(join.iter().map(|j| j.0.as_raw_fd()))
        .collect();
    let mut ns: Vec<(c_int, c_int, &'static str)> =
        join.iter().map(|j| (j.0.as_raw_fd(), j.1, j.2)).collect();
    // SAFETY: as above.
    let mid = unsafe { sys::clone_raw(0) }.map_err(|e| Error::os("clone", e))?;
    if mid == 0 {
        if !sys::arrange_fds(stdio, &mut keep) {
            sys::exit(1);
        }
        sys::reset_signals();
        let s = keep[0];
        for (n, fd) in ns.iter_mut().zip(&keep[1..]) {
            n.0 = *fd;
        }
        if let Some(p) = cgroup_procs {
            child::join_cgroup(s, p);
        }
        child::join_namespaces(s, &ns);
        // SAFETY: as above.
        match unsafe { sys::clone_raw(flags | libc::CLONE_PARENT as c_ulong) } {
            Ok(0) => run_body(s, body),
            Ok(pid) => {
                let mut m = sys::MsgBuf::new(sys::MSG_PID);
                m.push_i32(pid);
                sys::send_msg(s, m.as_bytes(), None);
                sys::exit(0)
            }
            Err(e) => sys::fail(s, &[b"clone"], e.raw_os_error().unwrap_or(0)),
        }
    }
    drop(sock);
    let answer = sys::recv_msg(parent_sock, ANSWER_TIMEOUT);
    if answer.is_err() {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(mid, libc::SIGKILL) };
    }
    let status = sys::reap(mid).map_err(|e| Error::os("wait for the intermediate process", e))?;
    match answer {
        Ok(Some(m)) if m.data.first() == Some(&sys::MSG_PID) => {
            sys::i32_at(&m.data, 1).ok_or_else(|| Error::State("short pid message".into()))
        }
        Ok(Some(m)) => Err(child_error(&m.data)),
        Ok(None) => Err(Error::State(format!(
            "the intermediate process died ({})",
            describe_status(status)
        ))),
        Err(e) => Err(Error::os("wait for the intermediate process", e)),
    }
}

/// The child's and the caller's ends of the standard streams.
struct StdioSetup {
    /// Kept open until the child has its copies.
    child: Vec<OwnedFd>,
    raw: [RawFd; 3],
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    stderr: Option<OwnedFd>,
    tty: bool,
}

impl StdioSetup {
    fn new(stdio: Stdio) -> Result<Self, Error> {
        let null = || -> Result<OwnedFd, Error> {
            fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")
                .map(OwnedFd::from)
                .map_err(|e| Error::os("open /dev/null", e))
        };
        let pipe = || sys::pipe().map_err(|e| Error::os("pipe", e));
        match stdio {
            Stdio::Tty => {
                let n = null()?;
                let raw = [n.as_raw_fd(); 3];
                Ok(StdioSetup {
                    child: vec![n],
                    raw,
                    stdin: None,
                    stdout: None,
                    stderr: None,
                    tty: true,
                })
            }
            Stdio::Pipes { stdin } => {
                let (in_r, in_w) = if stdin {
                    let (r, w) = pipe()?;
                    (r, Some(w))
                } else {
                    (null()?, None)
                };
                let (out_r, out_w) = pipe()?;
                let (err_r, err_w) = pipe()?;
                let raw = [in_r.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
                Ok(StdioSetup {
                    child: vec![in_r, out_w, err_w],
                    raw,
                    stdin: in_w,
                    stdout: Some(out_r),
                    stderr: Some(err_r),
                    tty: false,
                })
            }
        }
    }

    /// Closes the parent's copies of the child's ends (once it has them).
    fn close_child_ends(&mut self) {
        self.child.clear();
        self.raw = [-1; 3];
    }

    /// The caller's ends, given the pty master for a tty.
    fn finish(self, master: Option<OwnedFd>) -> Result<ProcessIo, Error> {
        if self.tty {
            let master = master
                .ok_or_else(|| Error::State("the container process sent no pty master".into()))?;
            let dup = master
                .try_clone()
                .map_err(|e| Error::os("dup the pty master", e))?;
            return Ok(ProcessIo {
                stdin: Some(dup),
                stdout: master,
                stderr: None,
            });
        }
        Ok(ProcessIo {
            stdin: self.stdin,
            stdout: self.stdout.expect("pipes have stdout"),
            stderr: self.stderr,
        })
    }
}

/// Waits for `R` (ready, maybe with the pty master).
fn wait_ready(sock: BorrowedFd) -> Result<Option<OwnedFd>, Error> {
    match sys::recv_msg(sock, ANSWER_TIMEOUT) {
        Ok(Some(m)) if m.data.first() == Some(&sys::MSG_READY) => Ok(m.fd),
        Ok(Some(m)) => Err(child_error(&m.data)),
        Ok(None) => Err(Error::State(
            "the container process exited during its setup".into(),
        )),
        Err(e) => Err(Error::os("wait for the container process", e)),
    }
}

/// After `S` (or right away for exec): end of file means execve succeeded.
fn wait_exec(sock: BorrowedFd) -> Result<(), Error> {
    match sys::recv_msg(sock, ANSWER_TIMEOUT) {
        Ok(None) => Ok(()),
        Ok(Some(m)) => Err(child_error(&m.data)),
        Err(e) => Err(Error::os("wait for execve", e)),
    }
}

fn kill_and_reap(pid: i32) {
    // SAFETY: kill/waitpid on our own child.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let _ = sys::reap(pid);
}

fn write_proc(pid: i32, file: &str, value: &str) -> Result<(), Error> {
    let p = format!("/proc/{pid}/{file}");
    fs::write(&p, value).map_err(|e| Error::os(format!("write {value:?} to {p}"), e))
}

fn id_map(m: &[oci_spec::runtime::LinuxIdMapping]) -> String {
    m.iter()
        .map(|m| format!("{} {} {}\n", m.container_id(), m.host_id(), m.size()))
        .collect()
}

fn overlay_path(what: &str, p: &Path) -> Result<String, Error> {
    let s = p
        .to_str()
        .ok_or_else(|| Error::Spec(format!("{what} {} is not UTF-8", p.display())))?;
    if s.contains([',', ':', '\\']) || !p.is_absolute() {
        return Err(Error::Spec(format!(
            "{what} {s}: must be absolute, without ',', ':' or '\\'"
        )));
    }
    Ok(s.to_string())
}

/// Undoes a half-made container.
struct CreateGuard {
    dir: Option<PathBuf>,
    cgroup: Option<Cgroup>,
    pid: Option<i32>,
}

impl CreateGuard {
    fn new(dir: PathBuf) -> Self {
        CreateGuard {
            dir: Some(dir),
            cgroup: None,
            pid: None,
        }
    }

    /// Keeps everything: the container is made.
    fn disarm(&mut self) {
        self.pid = None;
        self.cgroup = None;
        self.dir = None;
    }
}

impl Drop for CreateGuard {
    fn drop(&mut self) {
        if let Some(pid) = self.pid {
            kill_and_reap(pid);
        }
        if let Some(cg) = &self.cgroup {
            let _ = cg.remove(Instant::now() + Duration::from_secs(1));
        }
        if let Some(dir) = &self.dir {
            unmount_under(dir);
            let _ = fs::remove_dir_all(dir);
        }
    }
}

/// Lazily unmounts whatever the caller's mount namespace has under `dir`
/// (normally nothing: the container's mounts live in its own namespace).
fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = dir.as_os_str().as_bytes();
    let mut points: Vec<Vec<u8>> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(prefix) && (p.len() == prefix.len() || p[prefix.len()] == b'/'))
        .collect();
    points.reverse();
    for p in points {
        if let Ok(c) = CString::new(p) {
            // SAFETY: umount2 on a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

/// Pids whose pid namespace link is `link`.
fn pidns_members(link: &OsString) -> Vec<i32> {
    let Ok(rd) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::read_link(format!("/proc/{pid}/ns/pid"))
                .map(|l| l.as_os_str() == link)
                .unwrap_or(false)
        })
        .collect()
}

/// Whether `pid` still runs: not gone, not a zombie, not exiting.
fn is_live(pid: i32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
        return false;
    };
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first().copied().unwrap_or("X");
    let flags: u64 = fields.get(6).and_then(|f| f.parse().ok()).unwrap_or(0);
    const PF_EXITING: u64 = 0x4;
    !matches!(state, "Z" | "X" | "x") && flags & PF_EXITING == 0
}

/// The namespaces of a spec.
struct NsSetup {
    /// CLONE_NEW* of the namespaces to create with clone (all but cgroup).
    clone_flags: c_ulong,
    /// A new cgroup namespace, made by the child once it is in its cgroup.
    unshare_cgroup: bool,
    /// Namespaces to join by path.
    join_paths: Vec<(LinuxNamespaceType, PathBuf)>,
    /// Every namespace the container has, new or joined.
    namespaces: Vec<LinuxNamespaceType>,
}

impl NsSetup {
    /// Whether clone makes a new `t` namespace (a new cgroup namespace is
    /// unshared later, so not counted).
    fn creates(&self, t: LinuxNamespaceType) -> bool {
        self.clone_flags & ns_flag(t) as c_ulong != 0
    }
}

fn ns_setup(linux: &oci_spec::runtime::Linux) -> Result<NsSetup, Error> {
    let mut ns_setup = NsSetup {
        clone_flags: 0,
        unshare_cgroup: false,
        join_paths: Vec::new(),
        namespaces: Vec::new(),
    };
    for ns in linux.namespaces().iter().flatten() {
        let t = ns.typ();
        if ns_setup.namespaces.contains(&t) {
            return Err(Error::Spec(format!(
                "namespace {} listed twice",
                ns_name(t)
            )));
        }
        if t == LinuxNamespaceType::Time {
            return Err(Error::Spec("time namespaces are not supported".into()));
        }
        ns_setup.namespaces.push(t);
        match ns.path() {
            Some(p) if t == LinuxNamespaceType::Mount => {
                return Err(Error::Spec(format!(
                    "mount namespace {}: the container needs a new one, joining is not supported",
                    p.display()
                )))
            }
            Some(p) => ns_setup.join_paths.push((t, p.clone())),
            None if t == LinuxNamespaceType::Cgroup => ns_setup.unshare_cgroup = true,
            None => ns_setup.clone_flags |= ns_flag(t) as c_ulong,
        }
    }
    if ns_setup.clone_flags & libc::CLONE_NEWNS as c_ulong == 0 {
        return Err(Error::Spec("a new mount namespace is required".into()));
    }
    Ok(ns_setup)
}

/// Mounts, devices, sysctls and paths of a spec, checked and converted.
struct SpecParts {
    mounts: Vec<plan::MountPlan>,
    setup_dev: bool,
    devices: Vec<plan::DevicePlan>,
    sysctls: Vec<(CString, CString)>,
    masked: Vec<CString>,
    readonly: Vec<CString>,
    propagation: Option<c_ulong>,
}

fn spec_parts(
    spec: &Spec,
    linux: &oci_spec::runtime::Linux,
    cgroup2: bool,
    namespaces: &[LinuxNamespaceType],
) -> Result<SpecParts, Error> {
    let mut mounts = Vec::new();
    for m in spec.mounts().iter().flatten() {
        if let Some(p) = plan::mount_plan(m, cgroup2)? {
            mounts.push(p);
        }
    }
    // /dev is a fresh filesystem (not a bind of the caller's): fill it.
    let setup_dev = mounts
        .iter()
        .any(|m| m.dest.as_bytes() == b"/dev" && m.fstype.is_some());
    let mut devices = plan::default_devices();
    for d in linux.devices().iter().flatten() {
        let p = plan::device_plan(d)?;
        devices.retain(|x| x.path != p.path);
        devices.push(p);
    }
    let has = |t: LinuxNamespaceType| namespaces.contains(&t);
    let mut sysctls = Vec::new();
    let mut keys: Vec<_> = linux.sysctl().iter().flatten().collect();
    keys.sort();
    for (k, v) in keys {
        if !plan::sysctl_namespaced(
            k,
            has(LinuxNamespaceType::Ipc),
            has(LinuxNamespaceType::Network),
            has(LinuxNamespaceType::Uts),
        ) {
            log::warn!("sysctl {k} is not isolated by the container's namespaces: it applies to the whole VM");
        }
        sysctls.push((
            plan::cstring("sysctl", plan::sysctl_path(k)?)?,
            plan::cstring("sysctl value", v.as_bytes())?,
        ));
    }
    let paths = |v: &Option<Vec<String>>| -> Result<Vec<CString>, Error> {
        v.iter()
            .flatten()
            .map(|p| plan::clean_abs(Path::new(p)))
            .collect()
    };
    let propagation = match linux.rootfs_propagation().as_deref() {
        None | Some("") => None,
        Some(p) => {
            let o = plan::parse_options(&[p.to_string()])?;
            Some(*o.propagation.first().ok_or_else(|| {
                Error::Spec(format!("rootfsPropagation {p:?} is not a propagation"))
            })?)
        }
    };
    Ok(SpecParts {
        mounts,
        setup_dev,
        devices,
        sysctls,
        masked: paths(linux.masked_paths())?,
        readonly: paths(linux.readonly_paths())?,
        propagation,
    })
}

/// A spec checked and converted: everything [`Container::create`] needs
/// from it, known before anything is made.
struct CheckedSpec<'a> {
    linux: &'a Linux,
    ns: NsSetup,
    programs: Programs,
    last_cap: u32,
    proc_plan: ProcPlan,
    parts: SpecParts,
    cgroup: CgroupSetup<'a>,
}

/// Where the container's cgroup goes and what it is given.
struct CgroupSetup<'a> {
    root: PathBuf,
    cgroup2: bool,
    /// Relative to `root`.
    rel: PathBuf,
    resources: Option<&'a LinuxResources>,
}

fn check_spec<'a>(id: &str, spec: &'a Spec, tty: bool) -> Result<CheckedSpec<'a>, Error> {
    let (process, linux) = required_sections(spec)?;
    refuse_unsupported(spec, linux)?;
    let ns = ns_setup(linux)?;
    check_ns_needs(spec, linux, &ns)?;
    let programs = compile_seccomp(linux)?;

    // Everything else from the spec, before anything is made.
    let cgroup_root = cgroup::root();
    let cgroup2 = cgroup::is_cgroup2(&cgroup_root);
    let last_cap = plan::last_cap();
    let proc_plan = plan::proc_plan(process, tty, programs.clone(), last_cap)?;
    let parts = spec_parts(spec, linux, cgroup2, &ns.namespaces)?;
    let cgroup = cgroup_setup(id, linux, cgroup_root, cgroup2)?;
    Ok(CheckedSpec {
        linux,
        ns,
        programs,
        last_cap,
        proc_plan,
        parts,
        cgroup,
    })
}

fn required_sections(spec: &Spec) -> Result<(&Process, &Linux), Error> {
    let process = spec
        .process()
        .as_ref()
        .ok_or_else(|| Error::Spec("the spec has no process".into()))?;
    let linux = spec
        .linux()
        .as_ref()
        .ok_or_else(|| Error::Spec("the spec has no linux section".into()))?;
    Ok((process, linux))
}

/// Settings this code cannot apply: refused by name, never ignored. Hooks
/// that run in the runtime's namespace are the host's business (husk's OCI
/// runtime runs them there and sends no hooks here).
fn refuse_unsupported(spec: &Spec, linux: &Linux) -> Result<(), Error> {
    if spec.hooks().is_some() {
        return Err(Error::Spec("hooks are not supported here".into()));
    }
    if linux.personality().is_some() {
        return Err(Error::Spec("linux.personality is not supported".into()));
    }
    Ok(())
}

/// What other settings ask of the namespaces: a hostname needs a UTS
/// namespace, a new user namespace needs id mappings.
fn check_ns_needs(spec: &Spec, linux: &Linux, ns: &NsSetup) -> Result<(), Error> {
    if (spec.hostname().is_some() || spec.domainname().is_some())
        && !ns.namespaces.contains(&LinuxNamespaceType::Uts)
    {
        return Err(Error::Spec(
            "hostname/domainname need a UTS namespace".into(),
        ));
    }
    let mapped = |m: &Option<Vec<_>>| matches!(m, Some(m) if !m.is_empty());
    if ns.creates(LinuxNamespaceType::User)
        && !(mapped(linux.uid_mappings()) && mapped(linux.gid_mappings()))
    {
        return Err(Error::Spec(
            "a new user namespace needs uidMappings and gidMappings".into(),
        ));
    }
    Ok(())
}

/// Compiled now so that profile errors surface before anything is made.
fn compile_seccomp(linux: &Linux) -> Result<Programs, Error> {
    match linux.seccomp() {
        Some(s) => seccomp::compile(s),
        None => seccomp::compile(&default_seccomp()),
    }
}

fn cgroup_setup<'a>(
    id: &str,
    linux: &'a Linux,
    root: PathBuf,
    cgroup2: bool,
) -> Result<CgroupSetup<'a>, Error> {
    let resources = linux.resources().as_ref();
    let asked = match resources {
        Some(r) => !cgroup::resource_writes(r, true)?.is_empty(),
        None => false,
    };
    let rel = cgroup::relative_path(linux.cgroups_path().as_deref(), id)?;
    if !cgroup2 && asked {
        return Err(Error::Spec(format!(
            "resource limits need cgroup v2 mounted on {}",
            root.display()
        )));
    }
    Ok(CgroupSetup {
        root,
        cgroup2,
        rel,
        resources,
    })
}

/// The image tree (overlay's lowerdir, or the directory bind-mounted).
fn lower_dir(rootfs: &Rootfs) -> Result<String, Error> {
    let tree = rootfs.tree();
    let lower = overlay_path("rootfs", tree)?;
    if !tree.is_dir() {
        return Err(Error::os(
            format!("rootfs {lower}"),
            io::Error::from_raw_os_error(libc::ENOTDIR),
        ));
    }
    Ok(lower)
}

/// Makes `state_dir/<id>`, which must not exist: one there belongs to
/// another container of that id.
fn make_state_dir(state_dir: &Path, id: &str) -> Result<PathBuf, Error> {
    fs::create_dir_all(state_dir)
        .map_err(|e| Error::os(format!("mkdir {}", state_dir.display()), e))?;
    let dir = state_dir.join(id);
    overlay_path("state dir", &dir)?;
    match fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(Error::State(format!(
            "container {id} exists ({} is there)",
            dir.display()
        ))),
        Err(e) => Err(Error::os(format!("mkdir {}", dir.display()), e)),
    }
}

fn mkdir_all(p: &Path) -> Result<(), Error> {
    fs::create_dir_all(p).map_err(|e| Error::os(format!("mkdir {}", p.display()), e))
}

fn root_readonly(spec: &Spec) -> bool {
    spec.root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
}

/// Makes the root's mount point (`dir/rootfs`) and, for a layered root,
/// the overlay's upper and work directories: in the caller's upper
/// directory, or else on a tmpfs at `dir/rw` that only the init mounts (so
/// it makes them there).
fn prepare_root(
    dir: &Path,
    rootfs: &Rootfs,
    lower: &str,
    readonly: bool,
    propagation: Option<c_ulong>,
) -> Result<RootPlan, Error> {
    let merged = dir.join("rootfs");
    mkdir_all(&merged)?;
    let c = |p: &Path| plan::cstring("path", p.as_os_str().as_bytes());
    let (tmpfs, mkdirs, mount) = match rootfs {
        Rootfs::Dir(tree) => (None, Vec::new(), plan::RootMount::Bind(c(tree)?)),
        Rootfs::Layered { upper, .. } => {
            let (tmpfs, mkdirs, up, wk) = match upper {
                Some(u) => {
                    let (up, wk) = (u.join("upper"), u.join("work"));
                    mkdir_all(&up)?;
                    mkdir_all(&wk)?;
                    (None, Vec::new(), up, wk)
                }
                None => {
                    let rw = dir.join("rw");
                    mkdir_all(&rw)?;
                    let (up, wk) = (rw.join("upper"), rw.join("work"));
                    (Some(c(&rw)?), vec![c(&up)?, c(&wk)?], up, wk)
                }
            };
            let data = format!(
                "lowerdir={lower},upperdir={},workdir={}",
                overlay_path("upper", &up)?,
                overlay_path("work", &wk)?
            );
            (
                tmpfs,
                mkdirs,
                plan::RootMount::Overlay(plan::cstring("overlay options", data)?),
            )
        }
    };
    Ok(RootPlan {
        tmpfs,
        mkdirs,
        merged: plan::cstring("rootfs", merged.as_os_str().as_bytes())?,
        mount,
        readonly,
        propagation,
    })
}

fn init_plan(
    spec: &Spec,
    ns: &NsSetup,
    root: RootPlan,
    parts: SpecParts,
    process: ProcPlan,
) -> Result<InitPlan, Error> {
    let name = |what: &str, v: &Option<String>| {
        v.as_ref()
            .map(|h| plan::cstring(what, h.as_bytes()))
            .transpose()
    };
    Ok(InitPlan {
        new_user: ns.creates(LinuxNamespaceType::User),
        unshare_cgroup: ns.unshare_cgroup,
        hostname: name("hostname", spec.hostname())?,
        domainname: name("domainname", spec.domainname())?,
        root,
        mounts: parts.mounts,
        setup_dev: parts.setup_dev,
        devices: parts.devices,
        sysctls: parts.sysctls,
        masked: parts.masked,
        readonly: parts.readonly,
        process,
    })
}

/// Creates the container's cgroup and applies its resources. Without
/// cgroup v2 there is none (`cgroup_setup` made sure no resources were
/// asked for).
fn make_cgroup(
    id: &str,
    setup: &CgroupSetup,
    guard: &mut CreateGuard,
) -> Result<Option<Cgroup>, Error> {
    if !setup.cgroup2 {
        log::warn!(
            "{} is not cgroup v2: container {id} runs without a cgroup",
            setup.root.display()
        );
        return Ok(None);
    }
    let cg = Cgroup::create(&setup.root, &setup.rel)?;
    guard.cgroup = Some(cg.clone());
    if let Some(r) = setup.resources {
        // No swap accounting (no swap in the guest): no swap file.
        let swap = cg.path().join("memory.swap.max").exists();
        cg.set(&cgroup::resource_writes(r, swap)?)?;
    }
    Ok(Some(cg))
}

/// Opens the namespaces to join by path: all but user first, user last
/// (once in another user namespace, the caller's privileges over the
/// others are gone).
fn open_join_namespaces(paths: &[(LinuxNamespaceType, PathBuf)]) -> Result<Vec<JoinNs>, Error> {
    let mut join: Vec<JoinNs> = Vec::new();
    let mut user_join = None;
    for (t, p) in paths {
        let f = fs::File::open(p)
            .map_err(|e| Error::os(format!("open namespace {}", p.display()), e))?;
        let entry = (OwnedFd::from(f), ns_flag(*t), ns_name(*t));
        if *t == LinuxNamespaceType::User {
            user_join = Some(entry);
        } else {
            join.push(entry);
        }
    }
    join.extend(user_join);
    Ok(join)
}

/// A cloned init, waiting for `MSG_GO`.
struct SpawnedInit {
    pid: i32,
    pidfd: Option<OwnedFd>,
    /// The parent's end of the init's socket.
    sock: OwnedFd,
    io: StdioSetup,
}

fn spawn_init(
    plan: &InitPlan,
    join: Vec<JoinNs>,
    clone_flags: c_ulong,
    stdio: Stdio,
    guard: &mut CreateGuard,
) -> Result<SpawnedInit, Error> {
    let mut io_setup = StdioSetup::new(stdio)?;
    let (psock, csock) = sys::seqpacket_pair().map_err(|e| Error::os("socketpair", e))?;
    let pid = spawn(
        csock,
        io_setup.raw,
        &join,
        clone_flags,
        None,
        &Body::Init(plan),
        psock.as_fd(),
    )?;
    guard.pid = Some(pid);
    let pidfd = sys::pidfd_open(pid).ok();
    drop(join);
    io_setup.close_child_ends();
    Ok(SpawnedInit {
        pid,
        pidfd,
        sock: psock,
        io: io_setup,
    })
}

/// What the parent sets for the init before it goes on: its id maps, its
/// cgroup and its oom_score_adj.
fn configure_init(
    pid: i32,
    linux: &Linux,
    plan: &InitPlan,
    cg: Option<&Cgroup>,
) -> Result<(), Error> {
    if plan.new_user {
        write_proc(
            pid,
            "uid_map",
            &id_map(linux.uid_mappings().as_deref().unwrap_or(&[])),
        )?;
        write_proc(
            pid,
            "gid_map",
            &id_map(linux.gid_mappings().as_deref().unwrap_or(&[])),
        )?;
    }
    if let Some(cg) = cg {
        cg.add(pid)?;
    }
    if let Some(adj) = plan.process.oom_score_adj {
        write_proc(pid, "oom_score_adj", &adj.to_string())?;
    }
    Ok(())
}

/// Lets the init do its setup and waits until it is ready, just before
/// `execve`; returns the caller's ends of its streams (the child sized a
/// tty itself).
fn release_init(sock: BorrowedFd, io_setup: StdioSetup) -> Result<ProcessIo, Error> {
    sys::send_byte(sock, sys::MSG_GO).map_err(|e| Error::os("signal the container process", e))?;
    let master = wait_ready(sock)?;
    io_setup.finish(master)
}

/// The init's pid namespace link when the container has a pid namespace of
/// its own: its members are the container's processes (one joined by path
/// is shared with others).
fn own_pidns(pid: i32, ns: &NsSetup) -> Option<OsString> {
    if !ns.creates(LinuxNamespaceType::Pid) {
        return None;
    }
    fs::read_link(format!("/proc/{pid}/ns/pid"))
        .ok()
        .map(PathBuf::into_os_string)
}

impl Container {
    /// Sets everything up and leaves the container's process waiting just
    /// before `execve`, like `runc create`.
    ///
    /// `state_dir/<id>` is made for the container (it must not exist): the
    /// overlay is mounted on `state_dir/<id>/rootfs` inside the container's
    /// mount namespace (so nothing is mounted in the caller's), with the
    /// tmpfs for the changes on `state_dir/<id>/rw` when `rootfs.upper` is
    /// None. A new mount namespace is required.
    ///
    /// `stdio` decides the streams (`process.terminal` is not looked at);
    /// `process.consoleSize` sizes the tty. `spec.root.path` is ignored
    /// (`rootfs` says where the image is). Refused: hooks, personality,
    /// time namespaces, idmapped mounts. Not applied (every engine sends
    /// them): AppArmor/SELinux labels (the guest kernel has no LSM), device
    /// cgroup rules (cgroup v2 needs eBPF for those; the container has only
    /// the device nodes its spec makes), intelRdt.
    ///
    /// A container dropped before [`start`](Container::start) makes its
    /// process exit (status 1); one dropped after keeps running: use
    /// [`destroy`](Container::destroy).
    pub fn create(
        id: &str,
        spec: &Spec,
        rootfs: &Rootfs,
        state_dir: &Path,
        stdio: Stdio,
    ) -> Result<(Container, ProcessIo), Error> {
        let mut trace = trace::Trace::default();
        Container::create_traced(id, spec, rootfs, state_dir, stdio, &mut trace)
    }

    /// [`create`](Container::create), with each step's time in `trace`.
    pub fn create_traced(
        id: &str,
        spec: &Spec,
        rootfs: &Rootfs,
        state_dir: &Path,
        stdio: Stdio,
        trace: &mut trace::Trace,
    ) -> Result<(Container, ProcessIo), Error> {
        validate_id(id)?;
        let tty = stdio == Stdio::Tty;
        let checked = check_spec(id, spec, tty)?;
        let lower = lower_dir(rootfs)?;
        trace.step("spec");

        // From here on, things are made; the guard undoes them on error.
        let dir = make_state_dir(state_dir, id)?;
        let mut guard = CreateGuard::new(dir.clone());
        let root = prepare_root(
            &dir,
            rootfs,
            &lower,
            root_readonly(spec),
            checked.parts.propagation,
        )?;
        let plan = init_plan(spec, &checked.ns, root, checked.parts, checked.proc_plan)?;
        trace.step("plan");
        let cg = make_cgroup(id, &checked.cgroup, &mut guard)?;
        trace.step("cgroup");
        let join = open_join_namespaces(&checked.ns.join_paths)?;
        let init = spawn_init(&plan, join, checked.ns.clone_flags, stdio, &mut guard)?;
        trace.step("clone");
        configure_init(init.pid, checked.linux, &plan, cg.as_ref())?;
        trace.step("configure");
        // The init's own work: its mounts, pivot_root, devices, limits.
        let io = release_init(init.sock.as_fd(), init.io)?;
        trace.step("init_ready");
        let pidns = own_pidns(init.pid, &checked.ns);
        guard.disarm();
        Ok((
            Container {
                id: id.to_string(),
                init_pid: init.pid,
                dir,
                sock: Some(init.sock),
                cgroup: cg,
                namespaces: checked.ns.namespaces,
                pidns,
                pidfd: init.pidfd,
                seccomp: checked.programs,
                last_cap: checked.last_cap,
            },
            io,
        ))
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The container process's pid in the caller's pid namespace.
    pub fn init_pid(&self) -> i32 {
        self.init_pid
    }

    /// The container's cgroup directory, if it has one.
    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(|c| c.path())
    }

    /// Lets the container's process execve. An exec failure comes back as
    /// [`Error::Exec`] naming the path; the process then exits 127 (not
    /// found) or 126 and the caller reaps it.
    pub fn start(&mut self) -> Result<(), Error> {
        let sock = self
            .sock
            .take()
            .ok_or_else(|| Error::State(format!("container {} was already started", self.id)))?;
        sys::send_byte(sock.as_fd(), sys::MSG_START).map_err(|_| {
            Error::State(format!(
                "container {}: its process is gone before start",
                self.id
            ))
        })?;
        wait_exec(sock.as_fd())
    }

    /// Runs another process inside the running container: it joins all the
    /// container's namespaces and its cgroup, and gets credentials,
    /// capabilities, rlimits and the cwd from `process` and the container's
    /// seccomp filter. Returns its pid in the caller's pid namespace (it is
    /// the caller's child). If it cannot be set up or executed, it is reaped
    /// here and the error returned.
    pub fn exec(&self, process: &Process, stdio: Stdio) -> Result<(i32, ProcessIo), Error> {
        let plan = plan::proc_plan(
            process,
            stdio == Stdio::Tty,
            self.seccomp.clone(),
            self.last_cap,
        )?;
        let own_user = fs::metadata("/proc/self/ns/user").ok();
        let mut join: Vec<JoinNs> = Vec::new();
        let mut user_join = None;
        for &t in &self.namespaces {
            let path = format!("/proc/{}/ns/{}", self.init_pid, ns_name(t));
            let f = fs::File::open(&path).map_err(|e| {
                Error::os(
                    format!("container {} is not running: open {path}", self.id),
                    e,
                )
            })?;
            if t == LinuxNamespaceType::User {
                let m = f
                    .metadata()
                    .map_err(|e| Error::os(format!("stat {path}"), e))?;
                if own_user
                    .as_ref()
                    .is_some_and(|o| o.ino() == m.ino() && o.dev() == m.dev())
                {
                    continue;
                }
                user_join = Some((OwnedFd::from(f), ns_flag(t), ns_name(t)));
            } else {
                join.push((OwnedFd::from(f), ns_flag(t), ns_name(t)));
            }
        }
        join.extend(user_join);
        let procs = self
            .cgroup
            .as_ref()
            .map(|c| plan::cstring("cgroup path", c.procs_file().as_os_str().as_bytes()))
            .transpose()?;

        let mut io_setup = StdioSetup::new(stdio)?;
        let (psock, csock) = sys::seqpacket_pair().map_err(|e| Error::os("socketpair", e))?;
        let pid = spawn(
            csock,
            io_setup.raw,
            &join,
            0,
            procs.as_ref(),
            &Body::Exec(&plan),
            psock.as_fd(),
        )?;
        drop(join);
        io_setup.close_child_ends();
        let result = (|| {
            if let Some(adj) = plan.oom_score_adj {
                write_proc(pid, "oom_score_adj", &adj.to_string())?;
            }
            sys::send_byte(psock.as_fd(), sys::MSG_GO)
                .map_err(|e| Error::os("signal the exec'd process", e))?;
            let master = wait_ready(psock.as_fd())?;
            wait_exec(psock.as_fd())?;
            Ok(master)
        })();
        match result.and_then(|master| io_setup.finish(master)) {
            Ok(io) => Ok((pid, io)),
            Err(e) => {
                kill_and_reap(pid);
                Err(e)
            }
        }
    }

    /// The pids of the container's processes: from the cgroup, else from
    /// the container's pid namespace, else just the init.
    pub fn pids(&self) -> Vec<i32> {
        if let Some(cg) = &self.cgroup {
            if let Ok(p) = cg.procs() {
                return p;
            }
        }
        match &self.pidns {
            Some(link) => pidns_members(link),
            None if self.init_exited() => Vec::new(),
            None => vec![self.init_pid],
        }
    }

    /// Sends `sig` to the init (through its pidfd when there is one).
    fn signal_init(&self, sig: i32) -> io::Result<()> {
        if let Some(fd) = &self.pidfd {
            return sys::pidfd_signal(fd.as_fd(), sig);
        }
        // SAFETY: kill has no memory-safety preconditions.
        if unsafe { libc::kill(self.init_pid, sig) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the init has exited (is a zombie, is reaped, or is exiting).
    fn init_exited(&self) -> bool {
        match &self.pidfd {
            Some(fd) => sys::pidfd_exited(fd.as_fd()) || !is_live(self.init_pid),
            None => !is_live(self.init_pid),
        }
    }

    /// Sends `sig` to the container's process, or with `all` to every
    /// process of the container (cgroup.procs / cgroup.kill, or its pid
    /// namespace when there is no cgroup).
    pub fn signal(&self, sig: i32, all: bool) -> Result<(), Error> {
        if all {
            if let Some(cg) = &self.cgroup {
                return cg.signal_all(sig);
            }
            let _ = self.signal_init(sig);
            if let Some(link) = &self.pidns {
                for pid in pidns_members(link) {
                    // SAFETY: kill has no memory-safety preconditions.
                    unsafe { libc::kill(pid, sig) };
                }
            }
            return Ok(());
        }
        self.signal_init(sig).map_err(|e| {
            Error::os(
                format!(
                    "signal {sig} to container {} (pid {})",
                    self.id, self.init_pid
                ),
                e,
            )
        })
    }

    /// memory.current, memory.max, cpu.stat usage_usec, pids.current and
    /// pids.max of the container's cgroup.
    pub fn stats(&self) -> Result<Stats, Error> {
        match &self.cgroup {
            Some(cg) => cg.stats(),
            None => Err(Error::State(format!(
                "container {} has no cgroup (no cgroup v2 on this system)",
                self.id
            ))),
        }
    }

    /// Writes `resources` to the container's cgroup, as at create
    /// (`runc update`); what the spec leaves out stays as it was.
    pub fn update(&self, resources: &LinuxResources) -> Result<(), Error> {
        let Some(cg) = &self.cgroup else {
            return Err(Error::State(format!(
                "container {} has no cgroup (no cgroup v2 on this system)",
                self.id
            )));
        };
        let swap = cg.path().join("memory.swap.max").exists();
        cg.set(&cgroup::resource_writes(resources, swap)?)
    }

    /// SIGKILLs every process left, waits (at most 5 s) until none runs,
    /// removes the cgroup, unmounts what the caller's namespace has under
    /// the state directory (normally nothing) and removes it. The killed
    /// processes stay the caller's to reap.
    pub fn destroy(self) -> Result<(), Error> {
        let deadline = Instant::now() + DESTROY_TIMEOUT;
        let _ = self.signal(libc::SIGKILL, true);
        let _ = self.signal_init(libc::SIGKILL);
        loop {
            // Processes still running (an init in its pid namespace's
            // teardown counts as gone: it waits for exec'd zombies that
            // only the caller can reap).
            let live: Vec<i32> = match (&self.cgroup, &self.pidns) {
                (Some(cg), _) => cg.procs().unwrap_or_default(),
                (None, Some(link)) => {
                    let mut p = pidns_members(link);
                    p.retain(|&pid| is_live(pid));
                    p
                }
                (None, None) if self.init_exited() => Vec::new(),
                (None, None) => vec![self.init_pid],
            };
            if live.is_empty() {
                break;
            }
            if Instant::now() >= deadline {
                log::warn!("container {}: processes {live:?} survive SIGKILL", self.id);
                break;
            }
            let _ = self.signal(libc::SIGKILL, true);
            std::thread::sleep(Duration::from_millis(2));
        }
        let mut result = Ok(());
        if let Some(cg) = &self.cgroup {
            result = cg.remove(deadline);
        }
        unmount_under(&self.dir);
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound && result.is_ok() {
                result = Err(Error::os(format!("remove {}", self.dir.display()), e));
            }
        }
        result
    }
}

/// Where cgroup2 is mounted, for the containers created from now on
/// (default `/sys/fs/cgroup`). When it is not a cgroup2 mount, containers
/// that ask for no resources run without a cgroup.
pub fn set_cgroup_root(path: impl Into<PathBuf>) {
    cgroup::set_root(path.into());
}

/// Sets the window size of a terminal (TIOCSWINSZ on the pty master).
pub fn resize_tty(master: BorrowedFd, rows: u16, cols: u16) -> Result<(), Error> {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads a winsize struct.
    if unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) } < 0 {
        return Err(Error::last("resize the terminal"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Container>();
        check::<ProcessIo>();
        check::<Error>();
    }

    #[test]
    fn hooks_and_personality_are_refused_not_ignored() {
        let base = husk_wire::spec::default_spec(vec!["sh".into()]);
        let mut s = base.clone();
        s.set_hooks(Some(Default::default()));
        let e = refuse_unsupported(&s, s.linux().as_ref().unwrap()).unwrap_err();
        assert!(e.to_string().contains("hooks"), "{e}");
        let mut s = base.clone();
        let mut linux = s.linux().clone().unwrap();
        linux.set_personality(Some(Default::default()));
        s.set_linux(Some(linux));
        let e = refuse_unsupported(&s, s.linux().as_ref().unwrap()).unwrap_err();
        assert!(e.to_string().contains("personality"), "{e}");
        assert!(refuse_unsupported(&base, base.linux().as_ref().unwrap()).is_ok());
    }

    #[test]
    fn ids() {
        assert!(validate_id("abc-1_2.3").is_ok());
        for bad in ["", ".x", "a/b", "a b", &"x".repeat(129)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn child_errors_decode() {
        let mut m = sys::MsgBuf::new(sys::MSG_ERROR);
        m.push_i32(libc::ENOENT).push(b"chdir to cwd /nope");
        let e = child_error(m.as_bytes());
        assert_eq!(
            e.to_string(),
            format!(
                "chdir to cwd /nope: {}",
                io::Error::from_raw_os_error(libc::ENOENT)
            )
        );
        let mut m = sys::MsgBuf::new(sys::MSG_EXEC);
        m.push_i32(libc::ENOENT).push(&[0]).push(b"/bin/nope");
        assert_eq!(
            child_error(m.as_bytes()).to_string(),
            "executable file not found: /bin/nope"
        );
        assert!(matches!(child_error(b"?"), Error::State(_)));
    }

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), b"/a b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo("/x\\04"), b"/x\\04");
    }

    #[test]
    fn overlay_paths() {
        assert!(overlay_path("x", Path::new("/a/b")).is_ok());
        assert!(overlay_path("x", Path::new("/a,b")).is_err());
        assert!(overlay_path("x", Path::new("/a:b")).is_err());
        assert!(overlay_path("x", Path::new("rel")).is_err());
    }

    #[test]
    fn liveness_of_self_and_nothing() {
        assert!(is_live(std::process::id() as i32));
        assert!(!is_live(i32::MAX));
    }
}
