//! How the guest tells the host the command's exit status.
//!
//! The status is one byte, the shell's convention: the exit code, or
//! 128 + the signal number when the command died by a signal. It goes out on
//! I/O port [`STATUS_PORT`] (a single `outb`), which a VMM traps without
//! parsing the console. The port is QEMU's `isa-debug-exit` default, so a
//! QEMU run with that device exits right away (with `(status << 1) | 1`).
//! For VMMs that do not trap the port, `husk.status=console` also prints
//! [`CONSOLE_PREFIX`]`<status>` on a line of its own.

use nix::sys::wait::WaitStatus;

/// The paravirtual status port (see the module docs and rootfs/README.md).
pub const STATUS_PORT: u16 = 0xf4;

/// The console line that carries the status when `husk.status=console`.
pub const CONSOLE_PREFIX: &str = "husk-init: exit status ";

/// Status used when the init itself fails before or while running the command.
pub const INIT_FAILURE: u8 = 255;

/// Maps a wait status to the shell's one-byte convention; `None` for states
/// that are not terminations (stopped, continued).
pub fn exit_byte(status: WaitStatus) -> Option<u8> {
    match status {
        // The kernel only keeps the low 8 bits of an exit code.
        WaitStatus::Exited(_, code) => Some((code & 0xff) as u8),
        WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as u8)),
        _ => None,
    }
}

/// The console line for a status, with its line breaks. The leading newline
/// keeps it on a line of its own when the command's output did not end in one.
pub fn console_line(status: u8) -> String {
    format!("\r\n{CONSOLE_PREFIX}{status}\r\n")
}

/// Writes the status byte to the status port.
pub fn write_port(status: u8) -> std::io::Result<()> {
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

    #[test]
    fn console_line_stands_alone() {
        assert_eq!(console_line(42), "\r\nhusk-init: exit status 42\r\n");
    }
}
