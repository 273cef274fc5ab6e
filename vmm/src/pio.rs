//! The port-I/O devices of a microVM and the dispatch of vCPU port exits:
//! COM1 (8250 UART), the i8042 keyboard controller (reset, Ctrl-Alt-Del),
//! and husk's status port where the guest init reports its command's exit
//! status; that write ends the VM as a reset would, so a guest that
//! reported never prints the kernel's reset message.

use husk_devices::legacy::i8042::{Effects, I8042};
use husk_wire::status::STATUS_PORT;
use std::io::Write;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::Mutex;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

pub const COM1: u16 = 0x3f8;
const COM_PORTS: u16 = 8;
const I8042_DATA: u16 = 0x60;
const I8042_COMMAND: u16 = 0x64;

/// vm-superio devices signal through this: an eventfd that KVM turns into an
/// interrupt (irqfd) or that the VMM waits on (reset).
pub struct EventTrigger(pub EventFd);

impl Trigger for EventTrigger {
    type E = std::io::Error;
    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}

pub type SerialDevice = Serial<EventTrigger, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

/// The port devices' registers in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PioState {
    pub serial: SerialRegs,
    pub i8042_ctr: u8,
    pub i8042_output: Vec<u8>,
    pub i8042_pending: Option<u8>,
    /// What the guest reported on the status port, if it did.
    pub status: Option<u8>,
}

/// The 8250's registers (vm-superio's `SerialState`, which has no serde).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialRegs {
    pub divisor: [u8; 2],
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// No status reported yet.
const NO_STATUS: u16 = u16::MAX;

pub struct PioDevices {
    pub serial: Mutex<SerialDevice>,
    i8042: Mutex<I8042>,
    /// IRQ 1 (irqfd): the keyboard has data.
    keyboard_irq: EventFd,
    /// The VM must end: i8042 reset, or a status was reported.
    done: EventFd,
    status: AtomicU16,
}

impl PioDevices {
    /// `serial_irq` and `keyboard_irq` are irqfds; `done` is written when
    /// the guest resets through the i8042 or reports its status.
    pub fn new(
        out: Box<dyn Write + Send>,
        serial_irq: EventFd,
        keyboard_irq: EventFd,
        done: EventFd,
    ) -> Self {
        PioDevices {
            serial: Mutex::new(Serial::new(EventTrigger(serial_irq), out)),
            i8042: Mutex::new(I8042::default()),
            keyboard_irq,
            done,
            status: AtomicU16::new(NO_STATUS),
        }
    }

    /// The devices' registers, for a snapshot (the VM is paused).
    pub fn state(&self) -> PioState {
        let s = lock(&self.serial).state();
        let k = lock(&self.i8042).state();
        PioState {
            serial: SerialRegs {
                divisor: [s.baud_divisor_low, s.baud_divisor_high],
                interrupt_enable: s.interrupt_enable,
                interrupt_identification: s.interrupt_identification,
                line_control: s.line_control,
                line_status: s.line_status,
                modem_control: s.modem_control,
                modem_status: s.modem_status,
                scratch: s.scratch,
                in_buffer: s.in_buffer,
            },
            i8042_ctr: k.ctr,
            i8042_output: k.output,
            i8042_pending: k.pending,
            status: self.reported_status(),
        }
    }

    /// The devices in a saved state, wired as [`PioDevices::new`] wires
    /// them.
    pub fn restored(
        state: &PioState,
        out: Box<dyn Write + Send>,
        serial_irq: EventFd,
        keyboard_irq: EventFd,
        done: EventFd,
    ) -> Result<Self, String> {
        let r = &state.serial;
        let serial = vm_superio::serial::SerialState {
            baud_divisor_low: r.divisor[0],
            baud_divisor_high: r.divisor[1],
            interrupt_enable: r.interrupt_enable,
            interrupt_identification: r.interrupt_identification,
            line_control: r.line_control,
            line_status: r.line_status,
            modem_control: r.modem_control,
            modem_status: r.modem_status,
            scratch: r.scratch,
            in_buffer: r.in_buffer.clone(),
        };
        let serial = Serial::from_state(
            &serial,
            EventTrigger(serial_irq),
            vm_superio::serial::NoEvents,
            out,
        )
        .map_err(|e| format!("serial port state: {e:?}"))?;
        let i8042 = I8042::from_state(&husk_devices::legacy::i8042::I8042State {
            ctr: state.i8042_ctr,
            output: state.i8042_output.clone(),
            pending: state.i8042_pending,
        });
        Ok(PioDevices {
            serial: Mutex::new(serial),
            i8042: Mutex::new(i8042),
            keyboard_irq,
            done,
            status: AtomicU16::new(state.status.map_or(NO_STATUS, u16::from)),
        })
    }

    fn apply(&self, fx: Effects) {
        if fx.interrupt {
            let _ = self.keyboard_irq.write(1);
        }
        if fx.reset {
            let _ = self.done.write(1);
        }
    }

    /// Types Ctrl-Alt-Del: the guest init's cue for an orderly stop.
    pub fn ctrl_alt_del(&self) {
        let fx = lock(&self.i8042).ctrl_alt_del();
        self.apply(fx);
    }

    /// The exit status the guest init reported, if any.
    pub fn reported_status(&self) -> Option<u8> {
        match self.status.load(Ordering::Acquire) {
            NO_STATUS => None,
            s => Some(s as u8),
        }
    }

    pub fn read(&self, port: u16, data: &mut [u8]) {
        data.fill(0);
        let Some(first) = data.first_mut() else {
            return;
        };
        match port {
            p if (COM1..COM1 + COM_PORTS).contains(&p) => {
                *first = lock(&self.serial).read((p - COM1) as u8);
            }
            I8042_DATA | I8042_COMMAND => {
                let (value, fx) = lock(&self.i8042).read((port - I8042_DATA) as u8);
                *first = value;
                self.apply(fx);
            }
            // Absent hardware reads as all ones, as on a PC bus.
            _ => data.fill(0xff),
        }
    }

    pub fn write(&self, port: u16, data: &[u8]) {
        let Some(&value) = data.first() else { return };
        match port {
            p if (COM1..COM1 + COM_PORTS).contains(&p) => {
                // An error is a failed interrupt or output write; the guest
                // cannot be told, and dropping console bytes beats stopping.
                let _ = lock(&self.serial).write((p - COM1) as u8, value);
            }
            I8042_DATA | I8042_COMMAND => {
                let fx = lock(&self.i8042).write((port - I8042_DATA) as u8, value);
                self.apply(fx);
            }
            STATUS_PORT => {
                self.status.store(u16::from(value), Ordering::Release);
                let _ = self.done.write(1);
            }
            _ => {}
        }
    }
}

/// A poisoned device lock means a vCPU thread panicked mid-access; the
/// device state is still a valid register file, so keep serving.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn devices() -> (PioDevices, Sink, EventFd) {
        let sink = Sink::default();
        let reset = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let d = PioDevices::new(
            Box::new(sink.clone()),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            EventFd::new(libc::EFD_NONBLOCK).unwrap(),
            reset.try_clone().unwrap(),
        );
        (d, sink, reset)
    }

    #[test]
    fn uart_output_status_and_reset() {
        let (d, sink, reset) = devices();
        for b in b"hi\n" {
            d.write(COM1, &[*b]);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_eq!(d.reported_status(), None);
        assert!(reset.read().is_err(), "no reset yet");
        d.write(I8042_COMMAND, &[0xfe]);
        assert_eq!(reset.read().unwrap(), 1);
        d.write(STATUS_PORT, &[42]);
        assert_eq!(d.reported_status(), Some(42));
        assert_eq!(reset.read().unwrap(), 1, "a status ends the VM");
    }

    #[test]
    fn absent_ports_read_all_ones_and_empty_accesses_are_ignored() {
        let (d, _, _) = devices();
        let mut b = [0u8; 2];
        d.read(0x80, &mut b);
        assert_eq!(b, [0xff, 0xff]);
        d.read(COM1, &mut []);
        d.write(COM1, &[]);
    }
}
