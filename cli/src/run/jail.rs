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
use nix::sys::signalfd::SignalFd;
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::{chown, ForkResult, Gid, Pid, Uid};
use std::os::fd::AsFd;
use std::path::Path;
use std::time::Duration;

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
}

/// `--jail [--jail-user UID:GID]`, checked before the run has an id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JailFlags {
    user: Option<(u32, u32)>,
}

impl JailFlags {
    /// As whom run `id` is jailed.
    pub fn for_run(self, id: &str) -> RunJail {
        let (uid, gid) = self.user.unwrap_or_else(|| {
            let n = default_id(id);
            (n, n)
        });
        RunJail { uid, gid }
    }
}

impl JailFlags {
    /// `None` without `--jail`; an error for what a jailed run cannot be.
    pub fn parse(jail: bool, user: Option<&str>) -> Result<Option<JailFlags>, Failure> {
        if !jail {
            return match user {
                Some(_) => Err(Failure::usage("--jail-user needs --jail")),
                None => Ok(None),
            };
        }
        if !Uid::effective().is_root() {
            return Err(Failure::usage(
                "--jail needs root (to set the run up, then give root up)",
            ));
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
    /// Enters the jail around `run_dir`: called in the child once the VM is
    /// built, before its threads.
    pub fn enter(&self, run_dir: &Path) -> Result<(), String> {
        let fail = |what: &'static str| move |e: nix::Error| format!("--jail: {what}: {e}");
        // What /dev/kvm is, from the host's /sys and /proc, which the jail
        // does not have.
        let _ = husk_vmm::kvm_kind::host();
        self.own(run_dir)?;
        unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC)
            .map_err(fail("new namespaces"))?;
        jailing::make_mounts_private()?;
        let root = run_dir.join(ROOT_DIR);
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
        let inner = root.join(run_dir.strip_prefix("/").unwrap_or(run_dir));
        std::fs::create_dir_all(&inner).map_err(|e| format!("--jail: {}: {e}", inner.display()))?;
        mount(
            Some(run_dir),
            &inner,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
        .map_err(fail("the run's directory in the jail"))?;
        mount(
            None::<&str>,
            &inner,
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | hidden,
            None::<&str>,
        )
        .map_err(fail("the run's directory: nosuid, nodev, noexec"))?;
        jailing::pivot_into(&root)?;
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | hidden,
            None::<&str>,
        )
        .map_err(fail("the jail's root read-only"))?;
        jailing::set_limit(libc::RLIMIT_NOFILE, MAX_FILES, "limiting open files")?;
        jailing::give_up_root(self.uid, self.gid, true)
    }

    /// The run's directory and what is in it (its sockets, logs, record)
    /// become the jail user's.
    fn own(&self, run_dir: &Path) -> Result<(), String> {
        let (uid, gid) = (Some(Uid::from_raw(self.uid)), Some(Gid::from_raw(self.gid)));
        let entries = std::fs::read_dir(run_dir)
            .map_err(|e| format!("--jail: {}: {e}", run_dir.display()))?;
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
        chown(run_dir, uid, gid).map_err(|e| format!("--jail: chown {}: {e}", run_dir.display()))
    }
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

/// Forks the run. The calling thread should be the process's only one: a
/// thread holding a lock at the fork would leave it held in the child.
pub fn fork() -> Result<Forked, Failure> {
    // SAFETY: the child only goes on with this thread's work (the run);
    // the parent's other threads (the network's DNS service, passt's
    // watcher) are not used in the child, whose copies of them are
    // forgotten, never dropped.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Parent { child }) => Ok(Forked::Parent(child)),
        Ok(ForkResult::Child) => Ok(Forked::Child),
        Err(e) => Err(Failure::runtime(format!("--jail: fork: {e}"))),
    }
}

/// After the child: what is left of the run's directory goes, unless the
/// run kept it (a detached run's record and logs, until `husk rm`): the
/// child removed what was in it, but not the directory, a mount point in
/// the jail.
pub fn remove_run_dir(run_dir: &Path) {
    let _ = std::fs::remove_dir(run_dir.join(ROOT_DIR));
    let _ = std::fs::remove_dir(run_dir);
}

/// The parent's part: until the child ends, passes on the stop signals
/// someone sent the run's pid (a terminal's go to both processes already);
/// puts the terminal back as it was (the child may have died with it
/// raw); the child's status, as a shell gives it.
pub fn keep(child: Pid, signals: &mut SignalFd) -> u8 {
    let terminal = nix::sys::termios::tcgetattr(std::io::stdin().as_fd()).ok();
    let status = loop {
        match waitpid(child, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => break u8::try_from(code).unwrap_or(1),
            Ok(WaitStatus::Signaled(_, sig, _)) => break 128u8.saturating_add(sig as u8),
            Ok(_) => {}
            Err(nix::Error::EINTR) => {}
            Err(e) => {
                eprintln!("husk: --jail: waiting for the run: {e}");
                break 1;
            }
        }
        pass_signals(child, signals);
    };
    if let Some(t) = terminal {
        let _ = nix::sys::termios::tcsetattr(
            std::io::stdin().as_fd(),
            nix::sys::termios::SetArg::TCSANOW,
            &t,
        );
    }
    status
}

/// Waits a little for a stop signal and passes on those sent with kill(2)
/// (a terminal's have reached the child, in the same process group).
fn pass_signals(child: Pid, signals: &mut SignalFd) {
    use std::os::fd::AsRawFd;
    let mut fds = [libc::pollfd {
        fd: signals.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll(2) on one live pollfd.
    let ready = unsafe { libc::poll(fds.as_mut_ptr(), 1, POLL.as_millis() as i32) };
    if ready <= 0 {
        return;
    }
    while let Ok(Some(info)) = signals.read_signal() {
        let from_kill = matches!(
            info.ssi_code,
            libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL
        );
        if from_kill {
            if let Ok(sig) = nix::sys::signal::Signal::try_from(info.ssi_signo as i32) {
                let _ = nix::sys::signal::kill(child, sig);
            }
        }
    }
}

/// How often the parent looks for the child's end between signals.
const POLL: Duration = Duration::from_millis(100);

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
    fn jail_user_without_jail_or_as_root_is_refused() {
        assert!(JailFlags::parse(false, Some("5:5")).is_err());
        assert_eq!(JailFlags::parse(false, None).unwrap(), None);
        if Uid::effective().is_root() {
            assert!(JailFlags::parse(true, Some("0:5")).is_err());
            let flags = JailFlags::parse(true, Some("7:8")).unwrap().unwrap();
            assert_eq!(flags.for_run("abc"), RunJail { uid: 7, gid: 8 });
            let own = JailFlags::parse(true, None).unwrap().unwrap();
            assert_eq!(own.for_run("00000a").uid, JAIL_ID_BASE + 10);
        }
    }
}
