//! seccomp-BPF for the threads a hostile guest reaches: the vCPU threads
//! (guest code, its port and MMIO exits) and the device event loop (the
//! virtio queues, whatever the guest put in them).
//!
//! Each vCPU thread installs its filter itself, after its setup and before
//! its first `KVM_RUN`; the event loop runs on a thread of its own that
//! installs its filter before the first pass. A system call outside the
//! list does not run: the
//! kernel sends the thread SIGSYS, whose handler records the call, makes
//! it fail with EPERM and wakes the event loop, which stops the VM naming
//! the call (`Exit::Failed`). The thread is not killed outright: one that
//! dies holding a device's lock would hang the VMM's teardown, and the
//! forbidden call has not run either way.
//!
//! What a vCPU thread does, and so the list: `KVM_RUN` and the other KVM
//! ioctls (registers for a snapshot or a report), a TAP's offload ioctl
//! when the guest activates its NIC; writes to eventfds (interrupts, queue
//! kicks, the reset), to the console (emptying a capped one in place:
//! ftruncate) and the log; vhost-user messages when
//! the guest activates a virtio-fs device; locks (futex), the kick signal's
//! return, allocation, clocks, sleeps, and the thread's own exit.
//!
//! The event loop moves the devices' data: disk files (positioned reads and
//! writes, flushes), TAPs and the stream to passt, vsock's Unix sockets
//! (it connects a guest to `<uds>_<port>`: sockets of `AF_UNIX` only), the
//! vhost-user socket, eventfds and timerfds, epoll; and, in `husk vmm`,
//! what API requests do once the VM runs: a snapshot's files and the dirty
//! log, log and metrics files.
//!
//! The helper threads (the stop signals' and the console's input pump)
//! wait on their fds and do what a vCPU thread does besides. The reader of
//! `husk run`'s agent connection, the first host code to parse what the
//! guest sends (its frames), writes the container's output to the
//! terminal or its log files (rotated: open, rename, stat) and does no
//! ioctl. The report thread, which only the host's SIGUSR1 wakes and
//! which reads /proc/self/task, serves every VM of the process and has no
//! filter.
//!
//! `HUSK_SECCOMP_DENY=name,...` takes calls out of every list, and
//! `kind:name` out of one kind's only (`vcpu`, `event-loop`, `api`,
//! `helper`, `agent-reader`): a stricter filter, and how the tests prove a
//! forbidden call stops the VM.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::cell::Cell;
use std::collections::BTreeMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicI64, AtomicU8, Ordering};
use std::sync::Once;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("seccomp: {0}")]
    Filter(String),
    #[error(
        "seccomp: HUSK_SECCOMP_DENY names {0:?}, which is no system call of this architecture"
    )]
    UnknownCall(String),
    #[error(
        "seccomp: HUSK_SECCOMP_DENY cannot take out {0:?}: a filtered thread's SIGSYS handler needs it to report the forbidden call"
    )]
    Essential(String),
    #[error(
        "seccomp: HUSK_SECCOMP_DENY names the thread kind {0:?} (vcpu, event-loop, api, helper, agent-reader or report)"
    )]
    UnknownKind(String),
    #[error("seccomp: installing the vCPU filter: {0}")]
    Install(String),
}

/// The ioctl types a vCPU thread uses: KVM's and the TUN/TAP driver's
/// (`TUNSETOFFLOAD`; terminal ioctls share its type).
const IOCTL_TYPES: [u64; 2] = [0xAE, b'T' as u64];

/// The vCPU threads' system calls (x86_64 numbers from libc).
const VCPU_CALLS: &[(&str, i64)] = &[
    ("read", libc::SYS_read),
    ("write", libc::SYS_write),
    ("writev", libc::SYS_writev),
    ("close", libc::SYS_close),
    // A capped console file is emptied in place (console::Capped).
    ("ftruncate", libc::SYS_ftruncate),
    ("sendmsg", libc::SYS_sendmsg),
    ("recvmsg", libc::SYS_recvmsg),
    ("eventfd2", libc::SYS_eventfd2),
    ("fcntl", libc::SYS_fcntl),
    ("futex", libc::SYS_futex),
    ("sched_yield", libc::SYS_sched_yield),
    ("rt_sigreturn", libc::SYS_rt_sigreturn),
    ("rt_sigprocmask", libc::SYS_rt_sigprocmask),
    ("sigaltstack", libc::SYS_sigaltstack),
    ("mmap", libc::SYS_mmap),
    ("munmap", libc::SYS_munmap),
    ("mremap", libc::SYS_mremap),
    ("mprotect", libc::SYS_mprotect),
    ("madvise", libc::SYS_madvise),
    ("brk", libc::SYS_brk),
    ("clock_gettime", libc::SYS_clock_gettime),
    ("gettimeofday", libc::SYS_gettimeofday),
    ("nanosleep", libc::SYS_nanosleep),
    ("clock_nanosleep", libc::SYS_clock_nanosleep),
    ("getrandom", libc::SYS_getrandom),
    ("getpid", libc::SYS_getpid),
    ("gettid", libc::SYS_gettid),
    ("tgkill", libc::SYS_tgkill),
    ("exit", libc::SYS_exit),
    ("exit_group", libc::SYS_exit_group),
];

/// What the device event loop does beyond a vCPU thread's calls.
const EVENT_LOOP_CALLS: &[(&str, i64)] = &[
    ("readv", libc::SYS_readv),
    ("pread64", libc::SYS_pread64),
    ("pwrite64", libc::SYS_pwrite64),
    ("preadv", libc::SYS_preadv),
    ("pwritev", libc::SYS_pwritev),
    ("fsync", libc::SYS_fsync),
    ("fdatasync", libc::SYS_fdatasync),
    ("fallocate", libc::SYS_fallocate),
    ("dup", libc::SYS_dup),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("poll", libc::SYS_poll),
    ("ppoll", libc::SYS_ppoll),
    ("timerfd_settime", libc::SYS_timerfd_settime),
    ("timerfd_gettime", libc::SYS_timerfd_gettime),
    ("connect", libc::SYS_connect),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("shutdown", libc::SYS_shutdown),
    ("getsockopt", libc::SYS_getsockopt),
    ("setsockopt", libc::SYS_setsockopt),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
];

/// What the API server's thread (one tokio runtime on one thread, HTTP
/// over the socket it was given) does beyond a vCPU thread's calls; what
/// a request asks for runs on the VMM's threads, not here.
const API_CALLS: &[(&str, i64)] = &[
    ("readv", libc::SYS_readv),
    ("epoll_wait", libc::SYS_epoll_wait),
    ("epoll_pwait", libc::SYS_epoll_pwait),
    ("epoll_ctl", libc::SYS_epoll_ctl),
    ("accept", libc::SYS_accept),
    ("accept4", libc::SYS_accept4),
    ("shutdown", libc::SYS_shutdown),
    ("getsockopt", libc::SYS_getsockopt),
    ("sendto", libc::SYS_sendto),
    ("recvfrom", libc::SYS_recvfrom),
];

/// What a VM's helper threads do beyond a vCPU thread's calls: the stop
/// signals' thread and the console's input pump wait on their fds.
const HELPER_CALLS: &[(&str, i64)] = &[("poll", libc::SYS_poll), ("ppoll", libc::SYS_ppoll)];

/// Opening, renaming and looking at files: the event loop's snapshot,
/// log and metrics files, the agent reader's rotated logs.
const FILE_CALLS: &[(&str, i64)] = &[
    ("openat", libc::SYS_openat),
    ("rename", libc::SYS_rename),
    ("renameat", libc::SYS_renameat),
    ("renameat2", libc::SYS_renameat2),
    ("fstat", libc::SYS_fstat),
    ("newfstatat", libc::SYS_newfstatat),
    ("statx", libc::SYS_statx),
    ("lseek", libc::SYS_lseek),
];

/// What the agent connection's reader does beyond a vCPU thread's calls
/// and [`FILE_CALLS`] (no ioctl): it receives frames.
const AGENT_READER_CALLS: &[(&str, i64)] = &[("recvfrom", libc::SYS_recvfrom)];

/// The calls glibc makes in every thread when the process changes its
/// credentials: each thread makes the call itself, and one that cannot
/// ends the process. Threads that exist while root is given up need them:
/// the report thread (a pool template's run crashed without them) and the
/// OCI exec proxy's agent reader. After the change the process has no
/// capability left, so they can only set what is already set.
const SETXID_CALLS: &[(&str, i64)] = &[
    ("setuid", libc::SYS_setuid),
    ("setgid", libc::SYS_setgid),
    ("setgroups", libc::SYS_setgroups),
    ("setresuid", libc::SYS_setresuid),
    ("setresgid", libc::SYS_setresgid),
];

/// The report thread lists its process's threads (`/proc/self/task`).
const REPORT_CALLS: &[(&str, i64)] = &[("getdents64", libc::SYS_getdents64)];

/// The threads that have a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Vcpu = 1,
    EventLoop = 2,
    Api = 3,
    /// The stop signals' thread and the console's input pump.
    Helper = 4,
    /// The reader of an agent connection (`husk run`'s session).
    AgentReader = 5,
    /// The thread that prints where the VMs stand on SIGUSR1 (report.rs).
    Report = 6,
}

impl Kind {
    fn describe(self) -> &'static str {
        match self {
            Kind::Vcpu => "a vCPU thread",
            Kind::EventLoop => "the device event loop",
            Kind::Api => "the API thread",
            Kind::Helper => "a helper thread (stop signals or console input)",
            Kind::AgentReader => "the agent connection's reader (the guest's frames)",
            Kind::Report => "the report thread (SIGUSR1)",
        }
    }

    fn from_u8(k: u8) -> Kind {
        match k {
            2 => Kind::EventLoop,
            3 => Kind::Api,
            4 => Kind::Helper,
            5 => Kind::AgentReader,
            6 => Kind::Report,
            _ => Kind::Vcpu,
        }
    }

    /// Its name in `HUSK_SECCOMP_DENY`.
    fn name(self) -> &'static str {
        match self {
            Kind::Vcpu => "vcpu",
            Kind::EventLoop => "event-loop",
            Kind::Api => "api",
            Kind::Helper => "helper",
            Kind::AgentReader => "agent-reader",
            Kind::Report => "report",
        }
    }

    const ALL: [Kind; 6] = [
        Kind::Vcpu,
        Kind::EventLoop,
        Kind::Api,
        Kind::Helper,
        Kind::AgentReader,
        Kind::Report,
    ];

    /// Its own calls beyond a vCPU thread's.
    fn extra_calls(self) -> impl Iterator<Item = &'static (&'static str, i64)> {
        let lists: &[&[(&str, i64)]] = match self {
            Kind::Vcpu => &[],
            Kind::EventLoop => &[EVENT_LOOP_CALLS, FILE_CALLS],
            Kind::Api => &[API_CALLS],
            Kind::Helper => &[HELPER_CALLS],
            Kind::AgentReader => &[AGENT_READER_CALLS, FILE_CALLS, SETXID_CALLS],
            Kind::Report => &[REPORT_CALLS, FILE_CALLS, SETXID_CALLS],
        };
        lists.iter().flat_map(|l| l.iter())
    }
}

/// The vCPU threads' filter, less the calls `deny` names.
pub fn vcpu_filter(deny: &[String]) -> Result<BpfProgram, Error> {
    filter(Kind::Vcpu, deny)
}

/// A kind of thread's filter, less the calls `deny` names (each `name`,
/// or `kind:name` for one kind only).
pub fn filter(kind: Kind, deny: &[String]) -> Result<BpfProgram, Error> {
    let denied = denied_to(kind, deny)?;
    let allowed = |name: &str| !denied.contains(&name);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = VCPU_CALLS
        .iter()
        .chain(kind.extra_calls())
        .filter(|(name, _)| allowed(name))
        .map(|&(_, nr)| (nr, Vec::new()))
        .collect();
    let ioctls = matches!(kind, Kind::Vcpu | Kind::EventLoop | Kind::Helper);
    if ioctls && allowed("ioctl") {
        rules.insert(libc::SYS_ioctl, ioctl_rules()?);
    }
    if kind == Kind::EventLoop && allowed("socket") {
        rules.insert(libc::SYS_socket, vec![unix_socket_rule()?]);
    }
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|e| Error::Filter(format!("{e:?}")))?;
    SeccompFilter::new(rules, SeccompAction::Trap, SeccompAction::Allow, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| Error::Filter(e.to_string()))
}

/// The names in `deny` that apply to `kind`; an unknown call or kind is
/// an error, whichever kind asks.
fn denied_to(kind: Kind, deny: &[String]) -> Result<Vec<&str>, Error> {
    let known = |name: &str| {
        Kind::ALL
            .iter()
            .flat_map(|k| VCPU_CALLS.iter().chain(k.extra_calls()))
            .any(|(n, _)| *n == name)
            || name == "ioctl"
            || name == "socket"
    };
    let mut out = Vec::new();
    for entry in deny {
        let (only, name) = match entry.split_once(':') {
            Some((k, name)) => {
                let k = Kind::ALL
                    .into_iter()
                    .find(|x| x.name() == k)
                    .ok_or_else(|| Error::UnknownKind(k.to_owned()))?;
                (Some(k), name)
            }
            None => (None, entry.as_str()),
        };
        if !known(name) {
            return Err(Error::UnknownCall(name.to_owned()));
        }
        // The handler writes to the VM's eventfd, and returns.
        if name == "write" || name == "rt_sigreturn" {
            return Err(Error::Essential(name.to_owned()));
        }
        if only.is_none_or(|k| k == kind) {
            out.push(name);
        }
    }
    Ok(out)
}

/// An ioctl whose request is of one of [`IOCTL_TYPES`] (bits 8..16).
fn ioctl_rules() -> Result<Vec<SeccompRule>, Error> {
    IOCTL_TYPES
        .iter()
        .map(|&t| rule(1, SeccompCmpOp::MaskedEq(0xff00), t << 8))
        .collect()
}

/// A socket of the Unix family only (vsock's host side).
fn unix_socket_rule() -> Result<SeccompRule, Error> {
    rule(0, SeccompCmpOp::Eq, libc::AF_UNIX as u64)
}

/// A rule of one condition on a 32-bit argument.
fn rule(arg: u8, op: SeccompCmpOp, value: u64) -> Result<SeccompRule, Error> {
    let c = SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value)
        .map_err(|e| Error::Filter(e.to_string()))?;
    SeccompRule::new(vec![c]).map_err(|e| Error::Filter(e.to_string()))
}

/// The calls `HUSK_SECCOMP_DENY` takes out of the list.
pub fn denied() -> Vec<String> {
    std::env::var("HUSK_SECCOMP_DENY")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Where a VM hears of a forbidden call: the number of the first one (-1
/// until then) and the eventfd that wakes its event loop.
pub struct Watch {
    pub call: AtomicI64,
    /// Which kind of thread made it ([`Kind`] as u8).
    pub kind: AtomicU8,
    pub evt: vmm_sys_util::eventfd::EventFd,
}

impl Watch {
    pub fn new() -> std::io::Result<Self> {
        Ok(Watch {
            call: AtomicI64::new(-1),
            kind: AtomicU8::new(0),
            evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// What the VM's exit says of the call.
    pub fn describe(&self) -> Option<String> {
        self.refused()
            .map(|call| format!("{call}, and the VM was stopped"))
    }

    /// The call refused, for a process with no VM to stop (an agent
    /// connection's reader in `husk exec`).
    pub fn refused(&self) -> Option<String> {
        let nr = self.call.load(Ordering::Acquire);
        (nr >= 0).then(|| {
            let name = usize::try_from(nr)
                .ok()
                .and_then(syscalls::Sysno::new)
                .map_or("an unknown call", |s| s.name());
            let who = Kind::from_u8(self.kind.load(Ordering::Acquire)).describe();
            format!(
                "seccomp: {who} made a system call outside its filter: {name} (number {nr}); it did not run"
            )
        })
    }
}

thread_local! {
    /// This thread's VM's watch, for the SIGSYS handler.
    static WATCH: Cell<(*const Watch, RawFd, u8)> = const { Cell::new((std::ptr::null(), -1, 0)) };
}

/// Installs the filter of `kind` on the calling thread, reporting to
/// `watch`; the error says what failed, for the VM's exit.
pub fn guard(kind: Kind, watch: &Watch) -> Result<(), Error> {
    filter(kind, &denied()).and_then(|f| install(&f, kind, watch))
}

/// Installs `filter` on the calling thread, a `kind` thread, reporting to
/// `watch` (which must outlive the thread: the VM's shared state holds it).
pub fn install(filter: &BpfProgram, kind: Kind, watch: &Watch) -> Result<(), Error> {
    use std::os::fd::AsRawFd;
    static HANDLER: Once = Once::new();
    let mut registered = Ok(());
    HANDLER.call_once(|| {
        prepare_allocator();
        registered = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(|e| Error::Install(format!("SIGSYS handler: {e}")));
    });
    registered?;
    WATCH.with(|w| w.set((watch as *const Watch, watch.evt.as_raw_fd(), kind as u8)));
    seccompiler::apply_filter(filter).map_err(|e| Error::Install(e.to_string()))
}

/// Runs `f` with this thread's forbidden calls told to `watch` (and so
/// stopping its VM), then as before: for a thread that serves whichever
/// VMs are alive (the report thread), pointed at one it holds for the
/// call.
pub fn with_watch<R>(watch: &Watch, f: impl FnOnce() -> R) -> R {
    use std::os::fd::AsRawFd;
    let before = WATCH.with(|w| {
        let before = w.get();
        w.set((watch as *const Watch, watch.evt.as_raw_fd(), before.2));
        before
    });
    let result = f();
    WATCH.with(|w| w.set(before));
    result
}

/// glibc's malloc opens files on its own, in whichever thread gets there
/// first, and a filtered thread may not open any: the first shrink of a
/// per-thread arena's heap reads /proc/sys/vm/overcommit_memory (the API
/// thread was stopped that way under load; tests/seccomp_malloc.rs), and
/// the first arena past the eighth counts the online CPUs. Setting both
/// bounds before any filter leaves malloc nothing to read: heaps of
/// per-thread arenas (64 MiB at most) are then freed whole, never shrunk,
/// and the arenas are bounded by glibc's own default (8 per CPU). musl
/// reads nothing.
fn prepare_allocator() {
    #[cfg(target_env = "gnu")]
    {
        const PER_THREAD_HEAP_MAX: libc::c_int = 64 << 20;
        // sysconf, not std's available_parallelism: that one reads the
        // cgroup files and mountinfo, ~3 ms on a VM's start path that
        // every other filtered thread waited out on this Once.
        // SAFETY: sysconf takes a plain constant.
        let cpus = usize::try_from(unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) })
            .unwrap_or(1)
            .max(1);
        let arenas = libc::c_int::try_from(cpus.saturating_mul(8)).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt takes plain integers, and these are glibc's own
        // parameters, set before the filtered threads run.
        unsafe {
            libc::mallopt(libc::M_TRIM_THRESHOLD, PER_THREAD_HEAP_MAX);
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Offset of `si_syscall` in `siginfo_t` on x86_64: after signo, errno,
/// code (and padding to 16), the SIGSYS union holds `_call_addr` (8
/// bytes) then `_syscall`.
const SI_SYSCALL_OFFSET: usize = 24;

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SIGSYS, whose
    // `_sigsys._syscall` is an int at SI_SYSCALL_OFFSET.
    let nr = unsafe { *info.cast::<u8>().add(SI_SYSCALL_OFFSET).cast::<i32>() };
    let (watch, fd, kind) = WATCH.with(Cell::get);
    if !watch.is_null() {
        // SAFETY: set by `install` on this thread to the watch the VM's
        // shared state keeps alive while its filtered threads run.
        let watch = unsafe { &*watch };
        let first =
            watch
                .call
                .compare_exchange(-1, i64::from(nr), Ordering::AcqRel, Ordering::Acquire);
        if first.is_ok() {
            watch.kind.store(kind, Ordering::Release);
        }
    }
    if fd >= 0 {
        let one = 1u64;
        // SAFETY: write(2) of 8 live bytes to the VM's eventfd; signal-safe.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
    // The call fails with EPERM instead of running.
    // SAFETY: the kernel passes this thread's saved context for SA_SIGINFO
    // handlers; RAX holds the call's return value when the handler returns.
    unsafe {
        let uc = context.cast::<libc::ucontext_t>();
        (*uc).uc_mcontext.gregs[libc::REG_RAX as usize] = -i64::from(libc::EPERM);
    }
}

/// The API server thread's guard: its filter, installed by the returned
/// closure on that thread, and the watch that hears of a forbidden call
/// there, whose eventfd is the one that wakes the VMM for API requests
/// (`wake`): the VMM checks the watch when woken, and stops. It lives as
/// long as the process (the thread may outlive any VM).
pub fn api_guard(
    wake: &vmm_sys_util::eventfd::EventFd,
) -> Result<(ApiSetup, &'static Watch), Error> {
    let filter = filter(Kind::Api, &denied())?;
    let evt = wake
        .try_clone()
        .map_err(|e| Error::Install(format!("eventfd: {e}")))?;
    let watch: &'static Watch = Box::leak(Box::new(Watch {
        call: AtomicI64::new(-1),
        kind: AtomicU8::new(0),
        evt,
    }));
    let setup = move || install(&filter, Kind::Api, watch).map_err(|e| e.to_string());
    Ok((std::sync::Arc::new(setup), watch))
}

/// What installs the API thread's filter, on that thread.
pub type ApiSetup = std::sync::Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_denied_call_traps_with_eperm_and_is_reported() {
        let watch = std::sync::Arc::new(Watch::new().unwrap());
        let filter = vcpu_filter(&["getpid".to_string()]).unwrap();
        let w = watch.clone();
        let (pid, tid) = std::thread::spawn(move || {
            install(&filter, Kind::Vcpu, &w).unwrap();
            // SAFETY: plain system calls without arguments.
            unsafe {
                (
                    libc::syscall(libc::SYS_getpid),
                    libc::syscall(libc::SYS_gettid),
                )
            }
        })
        .join()
        .unwrap();
        assert_eq!(pid, -1);
        assert!(tid > 0);
        assert_eq!(watch.evt.read().unwrap(), 1);
        let said = watch.describe().unwrap();
        assert!(said.contains("getpid (number 39)"), "{said}");
        assert!(vcpu_filter(&["nosuchcall".to_string()]).is_err());
    }

    #[test]
    fn a_kind_prefix_denies_a_call_to_that_kind_only() {
        let deny = ["agent-reader:recvfrom".to_string(), "getpid".to_string()];
        assert_eq!(
            denied_to(Kind::AgentReader, &deny).unwrap(),
            ["recvfrom", "getpid"]
        );
        assert_eq!(denied_to(Kind::Vcpu, &deny).unwrap(), ["getpid"]);
        let bad_kind = ["reader:recvfrom".to_string()];
        assert!(matches!(
            filter(Kind::Vcpu, &bad_kind),
            Err(Error::UnknownKind(k)) if k == "reader"
        ));
        assert!(matches!(
            filter(Kind::Vcpu, &["write".to_string()]),
            Err(Error::Essential(c)) if c == "write"
        ));
        let bad_call = ["api:nosuchcall".to_string()];
        assert!(matches!(
            filter(Kind::Api, &bad_call),
            Err(Error::UnknownCall(c)) if c == "nosuchcall"
        ));
    }

    #[test]
    fn the_agent_reader_may_write_and_rename_but_not_ioctl_or_exec() {
        let watch = std::sync::Arc::new(Watch::new().unwrap());
        let filter = filter(Kind::AgentReader, &[]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let w = watch.clone();
        let d = dir.path().to_owned();
        let (renamed, ioctl) = std::thread::spawn(move || {
            install(&filter, Kind::AgentReader, &w).unwrap();
            std::fs::write(d.join("a"), "log").unwrap();
            let renamed = std::fs::rename(d.join("a"), d.join("a.1")).is_ok();
            // SAFETY: TIOCGWINSZ on stdin into a zeroed winsize.
            let ioctl = unsafe {
                let mut ws: libc::winsize = std::mem::zeroed();
                libc::ioctl(0, libc::TIOCGWINSZ, &mut ws)
            };
            (renamed, ioctl)
        })
        .join()
        .unwrap();
        assert!(renamed);
        assert_eq!(ioctl, -1);
        let said = watch.describe().unwrap();
        assert!(
            said.contains("agent connection's reader") && said.contains("ioctl"),
            "{said}"
        );
    }

    #[test]
    fn the_api_threads_forbidden_call_wakes_the_vmm_naming_the_thread() {
        let wake = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let (setup, watch) = api_guard(&wake).unwrap();
        let got = std::thread::spawn(move || {
            setup().unwrap();
            // SAFETY: a plain system call: an API thread never opens a
            // file.
            unsafe { libc::syscall(libc::SYS_openat, libc::AT_FDCWD, c"/".as_ptr(), 0) }
        })
        .join()
        .unwrap();
        assert_eq!(got, -1);
        assert_eq!(wake.read().unwrap(), 1);
        let said = watch.describe().unwrap();
        assert!(
            said.contains("the API thread") && said.contains("openat"),
            "{said}"
        );
    }
}
