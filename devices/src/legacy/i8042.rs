//! An i8042 keyboard controller, just enough of one: Linux's driver probes
//! it (self test, the command byte) without complaint, `reboot=k` resets the
//! machine through it, and the VMM can type Ctrl-Alt-Del into it, which a
//! guest without ACPI takes as "shut down cleanly".

use std::collections::VecDeque;

/// Offsets from port 0x60.
pub const DATA: u8 = 0;
pub const COMMAND: u8 = 4;

const STATUS_OUTPUT_FULL: u8 = 1 << 0;
const STATUS_SYSTEM: u8 = 1 << 2;
/// Output buffer came from the controller or keyboard (not a mouse).
const STATUS_COMMAND_LAST: u8 = 1 << 3;

const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_TEST_AUX: u8 = 0xa9;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_TEST_KBD: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_OUTPORT: u8 = 0xd0;
const CMD_WRITE_OUTPORT: u8 = 0xd1;
const CMD_WRITE_AUX: u8 = 0xd4;
const CMD_RESET_CPU: u8 = 0xfe;

/// Controller command byte: keyboard interrupt enabled, system flag,
/// scancode translation on (what firmware leaves behind).
const CTR_DEFAULT: u8 = 0x01 | 0x04 | 0x40;
const CTR_KBD_INT: u8 = 0x01;

const KBD_ACK: u8 = 0xfa;
const KBD_RESET: u8 = 0xff;
const KBD_SELF_TEST_OK: u8 = 0xaa;
const KBD_GET_ID: u8 = 0xf2;

/// Set-1 scancodes (what the guest sees with translation on) for
/// Ctrl down, Alt down, Delete down, Delete up, Alt up, Ctrl up.
const CTRL_ALT_DEL: &[u8] = &[0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/// What the VMM must do after an access.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Effects {
    /// Raise IRQ 1: there is data for the guest and it asked for interrupts.
    pub interrupt: bool,
    /// The guest pulsed the reset line.
    pub reset: bool,
}

#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    output: VecDeque<u8>,
    /// The next data-port write is the argument of this controller command.
    pending: Option<u8>,
}

impl Default for I8042 {
    fn default() -> Self {
        I8042 {
            ctr: CTR_DEFAULT,
            output: VecDeque::new(),
            pending: None,
        }
    }
}

/// The controller's registers, for a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct I8042State {
    /// The controller configuration byte.
    pub ctr: u8,
    /// Bytes waiting for the guest to read them.
    pub output: Vec<u8>,
    /// A controller command waiting for its argument.
    pub pending: Option<u8>,
}

impl I8042 {
    /// The registers as they are.
    pub fn state(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            output: self.output.iter().copied().collect(),
            pending: self.pending,
        }
    }

    /// A controller in a saved state (the output queue bounded as a
    /// running one's is).
    pub fn from_state(state: &I8042State) -> Self {
        I8042 {
            ctr: state.ctr,
            output: state.output.iter().copied().take(64).collect(),
            pending: state.pending,
        }
    }

    fn reply(&mut self, bytes: &[u8]) -> Effects {
        // A real controller holds one byte; a queue keeps multi-byte
        // replies and key sequences intact. Bound it against a guest that
        // never reads.
        if self.output.len() < 64 {
            self.output.extend(bytes);
        }
        Effects {
            interrupt: self.ctr & CTR_KBD_INT != 0 && !self.output.is_empty(),
            reset: false,
        }
    }

    pub fn read(&mut self, offset: u8) -> (u8, Effects) {
        match offset {
            COMMAND => {
                let mut s = STATUS_SYSTEM | STATUS_COMMAND_LAST;
                if !self.output.is_empty() {
                    s |= STATUS_OUTPUT_FULL;
                }
                (s, Effects::default())
            }
            DATA => {
                let byte = self.output.pop_front().unwrap_or(0);
                // More queued bytes: interrupt again for the next one.
                let more = Effects {
                    interrupt: self.ctr & CTR_KBD_INT != 0 && !self.output.is_empty(),
                    reset: false,
                };
                (byte, more)
            }
            _ => (0xff, Effects::default()),
        }
    }

    pub fn write(&mut self, offset: u8, value: u8) -> Effects {
        match offset {
            COMMAND => self.command(value),
            DATA => match self.pending.take() {
                Some(CMD_WRITE_CTR) => {
                    self.ctr = value;
                    Effects::default()
                }
                // Output port bit 0 low is the reset line.
                Some(CMD_WRITE_OUTPORT) if value & 1 == 0 => Effects {
                    reset: true,
                    ..Default::default()
                },
                // Bytes for the (absent) mouse vanish.
                Some(_) => Effects::default(),
                None => self.keyboard(value),
            },
            _ => Effects::default(),
        }
    }

    fn command(&mut self, cmd: u8) -> Effects {
        match cmd {
            CMD_READ_CTR => self.reply(&[self.ctr]),
            CMD_WRITE_CTR | CMD_WRITE_OUTPORT | CMD_WRITE_AUX => {
                self.pending = Some(cmd);
                Effects::default()
            }
            CMD_SELF_TEST => self.reply(&[0x55]),
            CMD_TEST_KBD => self.reply(&[0x00]),
            // No mouse: its interface test fails, so the driver leaves it.
            CMD_TEST_AUX => self.reply(&[0xff]),
            CMD_READ_OUTPORT => self.reply(&[0x01]),
            CMD_DISABLE_AUX | CMD_ENABLE_AUX | CMD_DISABLE_KBD | CMD_ENABLE_KBD => {
                Effects::default()
            }
            CMD_RESET_CPU => Effects {
                reset: true,
                ..Default::default()
            },
            _ => Effects::default(),
        }
    }

    /// Commands sent to the keyboard itself: acknowledge everything.
    fn keyboard(&mut self, cmd: u8) -> Effects {
        match cmd {
            KBD_RESET => self.reply(&[KBD_ACK, KBD_SELF_TEST_OK]),
            KBD_GET_ID => self.reply(&[KBD_ACK, 0xab, 0x83]),
            _ => self.reply(&[KBD_ACK]),
        }
    }

    /// Types Ctrl-Alt-Del on the keyboard.
    pub fn ctrl_alt_del(&mut self) -> Effects {
        self.reply(CTRL_ALT_DEL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read_data(k: &mut I8042) -> u8 {
        k.read(DATA).0
    }

    #[test]
    fn linux_probe_sequence() {
        let mut k = I8042::default();
        assert_eq!(k.read(COMMAND).0 & STATUS_OUTPUT_FULL, 0);
        k.write(COMMAND, CMD_READ_CTR);
        assert_ne!(k.read(COMMAND).0 & STATUS_OUTPUT_FULL, 0);
        assert_eq!(read_data(&mut k), CTR_DEFAULT);
        k.write(COMMAND, CMD_WRITE_CTR);
        k.write(DATA, 0x00);
        k.write(COMMAND, CMD_READ_CTR);
        assert_eq!(read_data(&mut k), 0x00);
        k.write(COMMAND, CMD_SELF_TEST);
        assert_eq!(read_data(&mut k), 0x55);
        k.write(DATA, KBD_RESET);
        assert_eq!(
            (read_data(&mut k), read_data(&mut k)),
            (KBD_ACK, KBD_SELF_TEST_OK)
        );
        assert_eq!(k.read(COMMAND).0 & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn reset_by_command_and_by_output_port() {
        let mut k = I8042::default();
        assert!(k.write(COMMAND, CMD_RESET_CPU).reset);
        k.write(COMMAND, CMD_WRITE_OUTPORT);
        assert!(k.write(DATA, 0xfe).reset);
        k.write(COMMAND, CMD_WRITE_OUTPORT);
        assert!(!k.write(DATA, 0xff).reset);
    }

    #[test]
    fn ctrl_alt_del_interrupts_until_drained() {
        let mut k = I8042::default();
        assert!(k.ctrl_alt_del().interrupt);
        let mut got = Vec::new();
        loop {
            let (b, fx) = k.read(DATA);
            got.push(b);
            if !fx.interrupt {
                break;
            }
        }
        assert_eq!(got, CTRL_ALT_DEL);
    }

    #[test]
    fn no_interrupt_when_the_guest_masked_it() {
        let mut k = I8042::default();
        k.write(COMMAND, CMD_WRITE_CTR);
        k.write(DATA, 0);
        assert!(!k.ctrl_alt_del().interrupt);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_queue() {
        let mut k = I8042::default();
        for _ in 0..10_000 {
            k.write(DATA, 0xed);
        }
        assert!(k.output.len() <= 64);
    }
}
