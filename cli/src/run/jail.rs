//! `husk run --jail`: the process that runs the VM and talks to the guest
//! gives up the host, as `husk vmm --jail` does for the bare VMM.
//!
//! A run needs root for its setup (the network: bridge, TAP, nftables;
//! cgroups) and its cleanup, but not while the guest runs. So it forks
//! once the host side is set up:
//! - the parent keeps root and nothing else: it waits for the child,
//!   passes it the stop signals sent to the run's pid, then tears the
//!   network down, removes the run's directory and exits with the child's
//!   status;
//! - the child builds the VM as root (it opens every file, socket and
//!   device the VM uses, and makes the pool's template if there is none),
//!   then, before any of the VM's threads exists
//!   ([`husk_vmm::BeforeThreads`]), enters the jail: a mount namespace of
//!   its own whose root is an empty read-only tmpfs holding only the run's
//!   directory (at its own path: the vsock socket, the console log, the
//!   record), and the jail's uid and gid, without supplementary groups,
//!   capabilities or a way back (`no_new_privs`). The guest's session, the
//!   published ports' proxies and the VM itself then run there.
//!
//! Each run has a uid of its own by default ([`JAIL_ID_BASE`] plus a
//! number taken from the run's id), so one jailed run cannot signal
//! another or the host's `nobody` processes (passt, virtiofsd's
//! sandbox); `--jail-user UID:GID` chooses.

use crate::Failure;
use husk_vmm_bin::jail as jailing;
use nix::mount::{mount, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chown, ForkResult, Gid, Pid, Uid};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

/// The first of the uids (and gids) jailed runs take by default: far above
/// the ranges distributions and `/etc/subuid` hand out.
pub const JAIL_ID_BASE: u32 = 3_000_000_000;

/// The name of the jail's root inside the run's directory (a mount point
/// in the child's namespace only; an empty directory on the host).
const ROOT_DIR: &str = "jail";

/// Open files a jailed run may hold.
const MAX_FILES: u64 = 4096;

/// As whom a jailed run runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunJail {
    pub uid: u32,
    pub gid: u32,
    /// A network namespace of its own (only a loopback): for a run whose
    /// jailed process opens no connection once jailed (no published
    /// port's proxy; its TAP, passt's and the agent's sockets are open
    /// before).
    pub own_network: bool,
}

/// `--jail [--jail-user UID:GID]`, checked before the run has an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailFlags {
    user: Option<(u32, u32)>,
}

impl JailFlags {
    /// As whom run `id` is jailed.
    pub fn for_run(self, id: &str) -> RunJail {
        match self.user {
            Some((uid, gid)) => RunJail {
                uid,
                gid,
                own_network: false,
            },
            None => RunJail::for_id(id),
        }
    }

    /// Whether and as whom the run is jailed: always as root, unless
    /// `--no-jail`; never otherwise (there is no root to give up), and an
    /// explicit `--jail` or `--jail-user` without root is an error.
    pub fn parse(
        jail: bool,
        no_jail: bool,
        user: Option<&str>,
    ) -> Result<Option<JailFlags>, Failure> {
        JailFlags::parse_as(Uid::effective().is_root(), jail, no_jail, user)
    }

    fn parse_as(
        root: bool,
        jail: bool,
        no_jail: bool,
        user: Option<&str>,
    ) -> Result<Option<JailFlags>, Failure> {
        if no_jail {
            return match (jail, user) {
                (false, None) => Ok(None),
                _ => Err(Failure::usage("--no-jail with --jail or --jail-user")),
            };
        }
        if !root {
            return match (jail, user) {
                (false, None) => Ok(None),
                _ => Err(Failure::usage(
                    "--jail needs root (to set the run up, then give root up)",
                )),
            };
        }
        let user = user
            .map(|spec| super::parse_user(spec).map_err(Failure::usage))
            .transpose()?;
        if user.is_some_and(|(uid, gid)| uid == 0 || gid == 0) {
            return Err(Failure::usage(
                "--jail-user must not be root (root is what the jail gives up)",
            ));
        }
        Ok(Some(JailFlags { user }))
    }
}

impl RunJail {
    /// As whom run `id` is jailed when no one says.
    pub fn for_id(id: &str) -> RunJail {
        let n = default_id(id);
        RunJail {
            uid: n,
            gid: n,
            own_network: false,
        }
    }

    /// Enters the jail around `dirs` (the run's directory first, which
    /// holds the jail's root; the others beside it, at their own paths):
    /// called in the child once the VM is built, before its threads.
    pub fn enter(&self, dirs: &[&Path]) -> Result<(), String> {
        // What /dev/kvm is, from the host's /sys and /proc, which the jail
        // does not have.
        let _ = husk_vmm::kvm_kind::host();
        for dir in dirs {
            self.own(dir)?;
        }
        let Some(first) = dirs.first() else {
            return Err("--jail: no directory to keep".into());
        };
        self.confine(first, dirs)?;
        jailing::give_up_root(self.uid, self.gid, true)?;
        die_with_the_keeper()
    }

    /// The jail's namespaces and mounts, still as root: the root becomes
    /// an empty read-only tmpfs (mounted on `base`'s [`ROOT_DIR`]) holding
    /// `binds`, each at its own path, and open files are limited. For the
    /// calling thread and the threads it starts afterwards. With no binds,
    /// nothing of the host is left: for a process whose files and sockets
    /// are all open (the OCI exec proxy).
    pub fn confine(&self, base: &Path, binds: &[&Path]) -> Result<(), String> {
        let fail = |what: &'static str| move |e: nix::Error| format!("--jail: {what}: {e}");
        // Where root may not make namespaces (a container without
        // CAP_SYS_ADMIN), the run says so, and how to run anyway.
        let mut flags = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC;
        if self.own_network {
            flags |= CloneFlags::CLONE_NEWNET;
        }
        unshare(flags).map_err(|e| {
            format!("--jail: new namespaces: {e} (--no-jail runs without the jail)")
        })?;
        jailing::make_mounts_private()?;
        let root = base.join(ROOT_DIR);
        std::fs::create_dir_all(&root).map_err(|e| format!("--jail: {}: {e}", root.display()))?;
        let hidden = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        mount(
            Some("tmpfs"),
            &root,
            Some("tmpfs"),
            hidden,
            Some("size=64k,mode=0755"),
        )
        .map_err(fail("the jail's root"))?;
        for dir in binds {
            bind_inside(&root, dir, hidden)?;
        }
        jailing::pivot_into(&root)?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hidden,
            None::<&str>,
        )
        .map_err(fail("the jail's root read-only"))?;
        jailing::set_limit(libc::RLIMIT_NOFILE, MAX_FILES, "limiting open files")
    }

    /// A directory and what is in it (sockets, logs, record) become the
    /// jail user's.
    fn own(&self, dir: &Path) -> Result<(), String> {
        let (uid, gid) = (Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)));
        let entries =
            std::fs::read_dir(dir).map_err(|e| format!("--jail: {}: {e}", dir.display()))?;
        for entry in entries.flatten() {
            nix::unistd::fchownat(
                None,
                &entry.path(),
                uid,
                gid,
                nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|e| format!("--jail: chown {}: {e}", entry.path().display()))?;
        }
        chown(dir, uid, gid).map_err(|e| format!("--jail: chown {}: {e}", dir.display()))
    }
}

/// `dir`, bound at its own path under the jail's `root`, with `flags`.
fn bind_inside(root: &Path, dir: &Path, flags: MsFlags) -> Result<(), String> {
    let fail = |what: &'static str| move |e: nix::Error| format!("--jail: {what}: {e}");
    let inner = root.join(dir.strip_prefix("/").unwrap_or(dir));
    std::fs::create_dir_all(&inner).map_err(|e| format!("--jail: {}: {e}", inner.display()))?;
    mount(
        Some(dir),
        &inner,
        None::<&str>,
        MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(fail("a directory in the jail"))?;
    mount(
        None::<&str>,
        &inner,
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags,
        None::<&str>,
    )
    .map_err(fail("a directory in the jail: nosuid, nodev, noexec"))
}

/// Run `id`'s default uid and gid: its first six hex digits (the id is
/// random hex) over [`JAIL_ID_BASE`].
fn default_id(id: &str) -> u32 {
    let n = id
        .get(..6)
        .and_then(|h| u32::from_str_radix(h, 16).ok())
        .unwrap_or_else(|| {
            id.bytes()
                .fold(0u32, |h, b| h.wrapping_mul(31) ^ u32::from(b))
                & 0xff_ffff
        });
    JAIL_ID_BASE + n
}

/// Which side of the fork this is.
pub enum Forked {
    /// The parent, keeping root: it waits for this child.
    Parent(Pid),
    /// The child: it goes on with the run, and enters the jail once the VM
    /// is built.
    Child,
}

/// Forks the run, the child as PID 1 of a pid namespace of its own (it
/// sees no host process, and what it forks stays there). The calling
/// thread should be the process's only one: a thread holding a lock at
/// the fork would leave it held in the child. The child dies with the
/// parent (a SIGKILLed husk takes its VM with it, as an unjailed one
/// does).
pub fn fork() -> Result<Forked, Failure> {
    let fail = |what: &str, e: nix::Error| {
        Failure::runtime(format!(
            "--jail: {what}: {e} (--no-jail runs without the jail)"
        ))
    };
    let (lifeline, held) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| fail("a pipe to the child", e))?;
    let own = std::fs::File::open("/proc/self/ns/pid")
        .map_err(|e| Failure::runtime(format!("--jail: /proc/self/ns/pid: {e}")))?;
    // The new namespace is this thread's next child's: the fork below.
    unshare(CloneFlags::CLONE_NEWPID).map_err(|e| fail("a pid namespace", e))?;
    let keeper = nix::unistd::getpid();
    // Written out before the fork, so that neither side writes it twice.
    {
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
    }
    // SAFETY: the child only goes on with this thread's work (the run);
    // the parent's other threads (the network's DNS service, passt's
    // watcher) are not used in the child, whose copies of them are
    // forgotten, never dropped.
    let forked = unsafe { nix::unistd::fork() };
    if !matches!(forked, Ok(ForkResult::Child)) {
        // This process's own children (`nft`, `ip`) are born in its own
        // namespace again.
        nix::sched::setns(&own, CloneFlags::CLONE_NEWPID)
            .map_err(|e| fail("back to the host's pid namespace", e))?;
    }
    match forked {
        Ok(ForkResult::Parent { child }) => {
            // Held open until this process ends: the child sees its end.
            std::mem::forget(held);
            Ok(Forked::Parent(child))
        }
        Ok(ForkResult::Child) => {
            drop((held, own));
            let _ = LIFELINE.set(lifeline);
            KEEPER.store(keeper.as_raw(), Ordering::Relaxed);
            act_as_init().map_err(Failure::runtime)?;
            die_with_the_keeper().map_err(Failure::runtime)?;
            Ok(Forked::Child)
        }
        Err(e) => Err(fail("fork", e)),
    }
}

/// The read end of a pipe whose write end only the keeper holds: at its
/// end, the pipe hangs up.
static LIFELINE: std::sync::OnceLock<OwnedFd> = std::sync::OnceLock::new();

/// The keeper's pid (as the host sees it), in its jailed child; 0 elsewhere.
static KEEPER: AtomicI32 = AtomicI32::new(0);

/// In the jailed child: the keeper's pid as the host sees it (the child's
/// own namespace cannot name it: its `getppid()` is 0).
pub fn keeper() -> Option<i32> {
    Some(KEEPER.load(Ordering::Relaxed)).filter(|&p| p > 0)
}

/// SIGKILL when the keeper ends; at once if it has already (its end of
/// the lifeline is closed). Set again after the uid changes, which clears
/// it.
fn die_with_the_keeper() -> Result<(), String> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: prctl(2) with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(format!(
            "--jail: parent-death signal: {}",
            std::io::Error::last_os_error()
        ));
    }
    if let Some(fd) = LIFELINE.get() {
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        let hung_up = poll(&mut fds, PollTimeout::ZERO).is_ok_and(|n| n > 0);
        if hung_up {
            std::process::exit(1);
        }
    }
    Ok(())
}

/// PID 1 of a namespace gets none of the signals it leaves at their
/// default action, not even the keeper's: SIGINT and SIGTERM (read from a
/// signal descriptor) get a handler that does nothing, and those whose
/// default is to end the process end it, as they would elsewhere.
fn act_as_init() -> Result<(), String> {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    extern "C" fn nothing(_: libc::c_int) {}
    extern "C" fn end(sig: libc::c_int) {
        // SAFETY: _exit(2) is async-signal-safe.
        unsafe { libc::_exit(128 + sig) };
    }
    let handlers: [(Signal, extern "C" fn(libc::c_int)); 6] = [
        (Signal::SIGINT, nothing),
        (Signal::SIGTERM, nothing),
        (Signal::SIGWINCH, nothing),
        (Signal::SIGHUP, end),
        (Signal::SIGQUIT, end),
        (Signal::SIGUSR2, end),
    ];
    for (sig, handler) in handlers {
        let action = SigAction::new(
            SigHandler::Handler(handler),
            SaFlags::SA_RESTART,
            SigSet::empty(),
        );
        // SAFETY: both handlers are async-signal-safe.
        unsafe { sigaction(sig, &action) }.map_err(|e| format!("--jail: handling {sig}: {e}"))?;
    }
    Ok(())
}

/// After the child: what is left of the run's directory goes, unless the
/// run kept it (a detached run's record and logs, until `husk rm`): the
/// child removed what was in it, but not the directory, a mount point in
/// the jail.
pub fn remove_run_dir(run_dir: &Path) {
    let _ = std::fs::remove_dir(run_dir.join(ROOT_DIR));
    let _ = std::fs::remove_dir(run_dir);
}

/// The signals the parent passes on: the stop signals, and SIGUSR1 (a
/// report of where the VM stands, which the child prints).
const PASSED_ON: [nix::sys::signal::Signal; 6] = {
    use nix::sys::signal::Signal::*;
    [SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2]
};

/// The child the parent passes signals on to (0 until it has one).
static CHILD: AtomicI32 = AtomicI32::new(0);

/// Passes a signal sent with kill(2) on to the child; a terminal's (or the
/// kernel's) has reached the child already, in the same process group.
/// A handler, not a blocked signal read from a descriptor: whichever of
/// the parent's threads takes it (the network's DNS service has one that
/// blocks nothing), it is passed on, not the death of the parent.
extern "C" fn pass_on(sig: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo.
    let code = unsafe { (*info).si_code };
    let child = CHILD.load(Ordering::Relaxed);
    if child > 0 && matches!(code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL) {
        // SAFETY: kill(2) is async-signal-safe; the pid is our child's,
        // not reaped while this handler can run (it is reset first).
        unsafe { libc::kill(child, sig) };
    }
}

/// The parent's part: until the child ends, passes on the signals someone
/// sent the run's pid; puts the terminal back as it was (the child may
/// have died with it raw); the child's status, as a shell gives it.
pub fn keep(child: Pid) -> u8 {
    CHILD.store(child.as_raw(), Ordering::Relaxed);
    let mut set = nix::sys::signal::SigSet::empty();
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler};
    let action = SigAction::new(
        SigHandler::SigAction(pass_on),
        SaFlags::SA_SIGINFO | SaFlags::SA_RESTART,
        nix::sys::signal::SigSet::empty(),
    );
    for sig in PASSED_ON {
        // SAFETY: the handler only reads an atomic and calls kill(2), both
        // async-signal-safe.
        if let Err(e) = unsafe { sigaction(sig, &action) } {
            eprintln!("husk: --jail: {sig}: {e}");
        }
        set.add(sig);
    }
    // The stop signals were blocked for the signal descriptor the child
    // reads; here the handler takes them.
    let _ = set.thread_unblock();
    let terminal = nix::sys::termios::tcgetattr(std::io::stdin().as_fd()).ok();
    let status = loop {
        match waitpid(child, None) {
            Ok(WaitStatus::Exited(_, code)) => break u8::try_from(code).unwrap_or(1),
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128u8.saturating_add(sig as u8),
            Ok(_) | Err(nix::Error::EINTR) => {}
            Err(e) => {
                eprintln!("husk: --jail: waiting for the run: {e}");
                break 1;
            }
        }
    };
    CHILD.store(0, Ordering::Relaxed);
    if let Some(t) = terminal {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &t,
        );
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_run_has_its_own_ids_above_the_base() {
        assert_eq!(default_id("00000a1234"), JAIL_ID_BASE + 10);
        assert_eq!(default_id("ffffff"), JAIL_ID_BASE + 0xff_ffff);
        assert_ne!(default_id("abcdef12"), default_id("abcdf012"));
        let odd = default_id("my-name");
        assert!((JAIL_ID_BASE..=JAIL_ID_BASE + 0xff_ffff).contains(&odd));
    }

    #[test]
    fn root_runs_are_jailed_unless_told_and_others_cannot_be() {
        let parse = JailFlags::parse_as;
        // As root: jailed by default, as a uid of the run's or the one given.
        let own = parse(true, false, false, None).unwrap().unwrap();
        assert_eq!(own.for_run("00000a").uid, JAIL_ID_BASE + 10);
        let given = parse(true, true, false, Some("7:8")).unwrap().unwrap();
        assert_eq!(
            given.for_run("abc"),
            RunJail {
                uid: 7,
                gid: 8,
                own_network: false
            }
        );
        assert_eq!(parse(true, false, true, None).unwrap(), None);
        assert!(parse(true, false, false, Some("0:5")).is_err());
        assert!(parse(true, true, true, None).is_err());
        assert!(parse(true, false, true, Some("5:5")).is_err());
        // Without root: not jailed, and asking for it is an error.
        assert_eq!(parse(false, false, false, None).unwrap(), None);
        assert!(parse(false, true, false, None).is_err());
        assert!(parse(false, false, false, Some("5:5")).is_err());
    }
}
