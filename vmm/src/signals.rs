//! SIGINT/SIGTERM on a thread of their own.
//!
//! The event loop's thread serves the guest's devices; whatever a guest
//! makes it do, a stop request must still be acted on. So the stop signals
//! are read here: the first one asks the guest to stop (Ctrl-Alt-Del, so
//! its disks get flushed), a second one or the end of the grace period
//! stops the VM, and if the event loop has still not wound down a few
//! seconds after that, this thread ends the process itself (status 128 +
//! signal, as the shell reports it).

use crate::Shared;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signalfd::SignalFd;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::EventFd;

/// How long the event loop gets to wind down once the VM is stopped
/// because of a signal, before the process exits without it.
const EXIT_GRACE: Duration = Duration::from_secs(5);
/// How often the thread looks at the deadlines.
const TICK: u16 = 100;

/// The watching thread; [`Watcher::stop`] ends it.
pub struct Watcher {
    /// Wakes the thread to end: a VM's exit waits for nothing but it (the
    /// thread's tick alone cost the exit up to a tick, 100 ms).
    done: EventFd,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    pub fn start(shared: Arc<Shared>, signals: SignalFd) -> std::io::Result<Watcher> {
        let done = EventFd::new(libc::EFD_NONBLOCK)?;
        let woken = done.try_clone()?;
        let thread = std::thread::Builder::new()
            .name("signals".into())
            .spawn(move || watch(&shared, &signals, &woken))?;
        Ok(Watcher {
            done,
            thread: Some(thread),
        })
    }

    /// Ends the thread (the VM has stopped and is being torn down).
    pub fn stop(mut self) {
        if let Err(e) = self.done.write(1) {
            log::error!("cannot wake the signal thread to end: {e}");
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn watch(shared: &Shared, signals: &SignalFd, done: &EventFd) {
    if let Err(e) = crate::seccomp::guard(crate::seccomp::Kind::Helper, &shared.seccomp) {
        shared.finish(crate::Exit::Failed(format!("the signal thread: {e}")));
        return;
    }
    // The signal that stopped the VM, and when.
    let mut stopped_by: Option<(i32, Instant)> = None;
    loop {
        // SAFETY: `done` is a live eventfd that outlives the poll.
        let woken = unsafe { std::os::fd::BorrowedFd::borrow_raw(done.as_raw_fd()) };
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(woken, PollFlags::POLLIN),
        ];
        // A poll that fails for any reason but a signal would fail again
        // at once: the thread would spin and the VM's end, which joins it,
        // would wait forever (a forbidden call fails with EPERM).
        if let Err(e) = poll(&mut fds, PollTimeout::from(TICK)) {
            if e != nix::errno::Errno::EINTR {
                log::error!("the signal thread cannot wait: {e}; it stops watching");
                return;
            }
        }
        if fds[1].any().unwrap_or(false) {
            return;
        }
        while let Ok(Some(info)) = signals.read_signal() {
            let sig = info.ssi_signo as i32;
            log::info!("signal {sig}: stopping the VM");
            shared.request_stop(sig);
        }
        shared.check_stop_deadline();
        if stopped_by.is_none() && shared.stopping() {
            stopped_by = shared.stop_signal().map(|sig| (sig, Instant::now()));
        }
        if let Some((sig, since)) = stopped_by {
            if since.elapsed() >= EXIT_GRACE {
                log::error!(
                    "the event loop did not stop within {EXIT_GRACE:?} of signal {sig}; exiting"
                );
                std::process::exit(husk_wire::status::signal_status(sig).into());
            }
        }
    }
}
