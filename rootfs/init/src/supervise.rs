//! Runs the command as PID 1's only direct job: reaps every orphan while it
//! runs, turns Ctrl-Alt-Del / SIGTERM into an orderly stop, and never waits
//! forever on processes that ignore SIGKILL's aftermath.

use crate::status::exit_byte;
use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

/// How long processes get between SIGTERM and SIGKILL on an orderly stop.
const TERM_GRACE: Duration = Duration::from_secs(3);
/// How long we wait for killed processes to be reaped before resetting anyway.
const REAP_LIMIT: Duration = Duration::from_secs(2);

pub use husk_wire::spec::DEFAULT_PATH;

/// Signals PID 1 handles through its signalfd instead of default actions.
fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    set.add(Signal::SIGCHLD);
    // Ctrl-Alt-Del arrives as SIGINT once the kernel's CAD reboot is off.
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set
}

/// Blocks the handled signals and returns a descriptor that delivers them.
pub fn signal_fd() -> nix::Result<SignalFd> {
    let set = handled_signals();
    set.thread_block()?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
}

fn spawn(argv: &[String]) -> std::io::Result<std::process::Child> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..]);
    if std::env::var_os("PATH").is_none() {
        cmd.env("PATH", DEFAULT_PATH);
    }
    // SAFETY: the closure runs between fork and exec and only calls
    // setpgid, signal, tcsetpgrp and getpid, which are async-signal-safe
    // and touch no shared memory.
    unsafe {
        cmd.pre_exec(|| {
            // The console's foreground process group, in PID 1's session
            // (see `take_console`), so Ctrl-C and job control reach the
            // command, not PID 1. tcsetpgrp from a background group raises
            // SIGTTOU, ignored for the call.
            libc::setpgid(0, 0);
            let old = libc::signal(libc::SIGTTOU, libc::SIG_IGN);
            libc::tcsetpgrp(0, libc::getpid());
            libc::signal(libc::SIGTTOU, old);
            Ok(())
        });
    }
    // std resets the signal mask in the child, so the command does not
    // inherit PID 1's blocked signals.
    cmd.spawn()
}

/// Status for a command that could not be started, as a shell reports it.
fn spawn_failure_byte(err: &std::io::Error) -> u8 {
    match err.kind() {
        std::io::ErrorKind::NotFound => 127,
        _ => 126,
    }
}

/// Reaps every child that has exited; returns the main child's status byte
/// if it was among them.
fn reap(main: Pid) -> Option<u8> {
    let mut main_status = None;
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return main_status,
            Ok(ws) => {
                if ws.pid() == Some(main) {
                    main_status = exit_byte(ws).or(main_status);
                }
            }
            Err(Errno::EINTR) => continue,
            Err(_) => return main_status,
        }
    }
}

/// Waits for the next batch of signals (or the timeout); returns whether an
/// orderly stop was requested.
fn wait_signals(sfd: &mut SignalFd, timeout: Option<Duration>) -> bool {
    let ms = timeout.map_or(PollTimeout::NONE, |d| {
        PollTimeout::try_from(d.as_millis().min(60_000) as i32).unwrap_or(PollTimeout::MAX)
    });
    let mut fds = [PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
    let _ = poll(&mut fds, ms);
    let mut stop = false;
    while let Ok(Some(info)) = sfd.read_signal() {
        let sig = info.ssi_signo as i32;
        stop |= sig == Signal::SIGINT as i32 || sig == Signal::SIGTERM as i32;
    }
    stop
}

/// Makes PID 1 the leader of the console's session, with the console as
/// its controlling terminal. The command then runs in that session, not in
/// one of its own: when a session leader exits, the kernel hangs up its
/// controlling terminal, and the hangup throws away whatever the UART has
/// not sent yet. With more than one vCPU the UART's interrupts may be
/// served by another vCPU after the command is gone, and the tail of its
/// output was lost (`nproc` printed nothing in a 2-vCPU guest, 2026-12-07)
/// where `finish`'s tcdrain would have waited for it.
pub fn take_console() {
    // SAFETY: setsid and ioctl(TIOCSCTTY) on fd 0 change only this
    // process's session; failures (no console) leave things as they were.
    unsafe {
        libc::setsid();
        libc::ioctl(0, libc::TIOCSCTTY, 1);
    }
}

/// Runs `argv` to completion and returns its status byte. Every other process
/// is gone when this returns.
pub fn run(argv: &[String], sfd: &mut SignalFd) -> u8 {
    let child = match spawn(argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("husk-init: cannot run {}: {e}", argv[0]);
            return spawn_failure_byte(&e);
        }
    };
    let main = Pid::from_raw(child.id() as i32);
    // Not using Child::wait: PID 1 must reap orphans too, so waitpid(-1).
    drop(child);

    let mut term_deadline: Option<Instant> = None;
    let status = loop {
        if let Some(s) = reap(main) {
            break s;
        }
        if let Some(deadline) = term_deadline {
            if Instant::now() >= deadline {
                let _ = kill(Pid::from_raw(-1), Signal::SIGKILL);
                term_deadline = None;
                continue;
            }
        }
        let timeout = term_deadline.map(|d| d.saturating_duration_since(Instant::now()));
        if wait_signals(sfd, timeout) && term_deadline.is_none() {
            eprintln!("husk-init: stop requested, terminating processes");
            let _ = kill(Pid::from_raw(-1), Signal::SIGTERM);
            term_deadline = Some(Instant::now() + TERM_GRACE);
        }
    };
    kill_all(sfd);
    status
}

/// Kills every remaining process and reaps them, within [`REAP_LIMIT`].
pub fn kill_all(sfd: &mut SignalFd) {
    // kill(-1) reaches every process but PID 1 itself.
    if kill(Pid::from_raw(-1), Signal::SIGKILL) == Err(Errno::ESRCH) {
        return;
    }
    let deadline = Instant::now() + REAP_LIMIT;
    loop {
        reap(Pid::from_raw(0));
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Err(Errno::ECHILD) => return,
            _ if Instant::now() >= deadline => {
                eprintln!("husk-init: some processes did not die; resetting anyway");
                return;
            }
            _ => {
                wait_signals(sfd, Some(Duration::from_millis(100)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spawn_failures_follow_the_shell() {
        let nf = std::io::Error::from(std::io::ErrorKind::NotFound);
        let perm = std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        assert_eq!(spawn_failure_byte(&nf), 127);
        assert_eq!(spawn_failure_byte(&perm), 126);
    }
}
