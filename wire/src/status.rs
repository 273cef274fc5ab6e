//! How a guest reports an exit status, and the shell's convention for it.
//!
//! The status is one byte: the exit code, or 128 + the signal number when
//! the process died by a signal. The guest init writes it to I/O port
//! [`STATUS_PORT`] (a single `outb`), which the VMM traps without parsing
//! the console. The port is QEMU's `isa-debug-exit` default, so a QEMU run
//! with that device exits right away (with `(status << 1) | 1`). For VMMs
//! that do not trap the port, `husk.status=console` also prints
//! [`CONSOLE_PREFIX`]`<status>` on a line of its own.

use serde::{Deserialize, Serialize};

/// The paravirtual status port (see the module docs and rootfs/README.md).
pub const STATUS_PORT: u16 = 0xf4;

/// The console line that carries the status when `husk.status=console`.
pub const CONSOLE_PREFIX: &str = "husk-init: exit status ";

/// Status used when the init itself fails before or while running the command.
pub const INIT_FAILURE: u8 = 255;

/// How a process ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report; see [`code_status`] and
    /// [`signal_status`]. Values come from the guest, so any `i32` maps to
    /// some byte without overflow.
    pub fn shell_status(self) -> u8 {
        match self {
            ExitStatus::Code(c) => code_status(c),
            ExitStatus::Signal(s) => signal_status(s),
        }
    }
}

/// An exit code as the kernel keeps it: the low 8 bits.
pub fn code_status(code: i32) -> u8 {
    (code & 0xff) as u8
}

/// 128 + the signal number for a real signal (1..=127); anything else, which
/// no kernel reports, is [`INIT_FAILURE`] rather than a wrapped number that
/// could pass for an ordinary exit code.
pub fn signal_status(signal: i32) -> u8 {
    match u8::try_from(signal) {
        Ok(s @ 1..=127) => 128 + s,
        _ => INIT_FAILURE,
    }
}

/// The console line for a status, with its line breaks. The leading newline
/// keeps it on a line of its own when the command's output did not end in one.
pub fn console_line(status: u8) -> String {
    format!("\r\n{CONSOLE_PREFIX}{status}\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_read_like_a_shell() {
        assert_eq!(ExitStatus::Code(0).shell_status(), 0);
        assert_eq!(ExitStatus::Code(42).shell_status(), 42);
        assert_eq!(ExitStatus::Code(256 + 3).shell_status(), 3);
        assert_eq!(ExitStatus::Signal(9).shell_status(), 137);
        assert_eq!(ExitStatus::Signal(11).shell_status(), 139);
        assert_eq!(ExitStatus::Signal(127).shell_status(), 255);
    }

    /// A guest sends whatever it likes: none of it may overflow (a debug
    /// build used to panic on `128 + i32::MAX`) or look like a clean exit.
    #[test]
    fn hostile_statuses_do_not_overflow() {
        for s in [i32::MAX, i32::MIN, -1, 0, 128, 255, 256] {
            assert_eq!(ExitStatus::Signal(s).shell_status(), INIT_FAILURE, "{s}");
        }
        assert_eq!(ExitStatus::Code(i32::MIN).shell_status(), 0);
        assert_eq!(ExitStatus::Code(i32::MAX).shell_status(), 255);
        assert_eq!(ExitStatus::Code(-1).shell_status(), 255);
    }

    #[test]
    fn console_line_stands_alone() {
        assert_eq!(console_line(42), "\r\nhusk-init: exit status 42\r\n");
    }
}
