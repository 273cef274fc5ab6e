//! The guest's end of the status protocol (`husk_wire::status`): turning a
//! wait status into the byte and writing it to the status port.

use husk_wire::status::{code_status, signal_status, STATUS_PORT};
use nix::sys::wait::WaitStatus;

pub use husk_wire::status::{console_line, INIT_FAILURE};

/// Maps a wait status to the shell's one-byte convention; `None` for states
/// that are not terminations (stopped, continued).
pub fn exit_byte(status: WaitStatus) -> Option<u8> {
    match status {
        WaitStatus::Exited(_, code) => Some(code_status(code)),
        WaitStatus::Signaled(_, sig, _) => Some(signal_status(sig as i32)),
        _ => None,
    }
}

/// Writes the status byte to the status port, from a child process: PID 1
/// must outlive a write that faults (a user-mode `out` after a snapshot
/// restore faults under nested SVM; tests/testbed/README.md), so that the
/// reset that follows still ends the VM. Called single-threaded, at the
/// end.
pub fn write_port(status: u8) -> Result<(), String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    use nix::unistd::{fork, ForkResult};
    // SAFETY: PID 1 is single-threaded here; the child makes one syscall and one
    // port write, and exits without unwinding.
    match unsafe { fork() }.map_err(|e| format!("fork: {e}"))? {
        ForkResult::Child => {
            let code = match out(status) {
                Ok(()) => 0,
                Err(e) => e.raw_os_error().unwrap_or(libc::EIO),
            };
            // SAFETY: _exit ends the child without running PID 1's atexit
            // handlers or flushing its buffers twice.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => match waitpid(child, None) {
            // A VMM that takes the byte stops the VM before this returns.
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            Ok(WaitStatus::Exited(_, errno)) => Err(format!(
                "ioperm: {}",
                std::io::Error::from_raw_os_error(errno)
            )),
            Ok(WaitStatus::Signaled(_, sig, _)) => {
                Err(format!("the status port write faulted ({sig})"))
            }
            Ok(other) => Err(format!("the status writer ended as {other:?}")),
            Err(e) => Err(format!("waiting for the status writer: {e}")),
        },
    }
}

fn out(status: u8) -> std::io::Result<()> {
    // SAFETY: ioperm only changes this process's I/O permission bitmap; the
    // arguments are plain integers.
    if unsafe { libc::ioperm(u64::from(STATUS_PORT), 1, 1) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the port was just granted to this process by ioperm, and an
    // `out` to it touches no memory; a VMM either traps it or drops it.
    unsafe {
        std::arch::asm!("out dx, al", in("dx") STATUS_PORT, in("al") status, options(nomem, nostack, preserves_flags));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::signal::Signal;
    use nix::unistd::Pid;

    #[test]
    fn exit_codes_and_signals_follow_the_shell() {
        let pid = Pid::from_raw(7);
        assert_eq!(exit_byte(WaitStatus::Exited(pid, 0)), Some(0));
        assert_eq!(exit_byte(WaitStatus::Exited(pid, 42)), Some(42));
        assert_eq!(exit_byte(WaitStatus::Exited(pid, 256 + 3)), Some(3));
        assert_eq!(
            exit_byte(WaitStatus::Signaled(pid, Signal::SIGKILL, false)),
            Some(137)
        );
        assert_eq!(
            exit_byte(WaitStatus::Signaled(pid, Signal::SIGSEGV, true)),
            Some(139)
        );
        assert_eq!(exit_byte(WaitStatus::Stopped(pid, Signal::SIGSTOP)), None);
    }
}
