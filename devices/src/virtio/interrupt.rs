//! Device-to-guest interrupts for virtio-mmio.
//!
//! virtio-mmio has one interrupt line per device plus an `InterruptStatus`
//! register telling the driver *why* it fired (used buffers and/or a config
//! change). [`IrqTrigger`] holds both: triggering sets the reason bit first,
//! then signals the eventfd that the VMM registered as a KVM irqfd, so by the
//! time the guest's handler reads `InterruptStatus` the bit is there.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Why the device interrupts the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IrqType {
    /// The device added buffers to a used ring.
    Vring,
    /// The device configuration space changed (or the device needs a reset).
    Config,
}

impl IrqType {
    /// The `InterruptStatus` bit for this reason.
    pub fn status_bit(self) -> u32 {
        match self {
            IrqType::Vring => VIRTIO_MMIO_INT_VRING,
            IrqType::Config => VIRTIO_MMIO_INT_CONFIG,
        }
    }
}

/// The interrupt line of one virtio-mmio device.
#[derive(Debug)]
pub struct IrqTrigger {
    /// Pending reasons, as read by the driver from `InterruptStatus` and
    /// cleared through `InterruptACK`. Shared by the event-loop thread (sets
    /// bits) and the vCPU thread (reads and clears them), hence atomic.
    status: AtomicU32,
    /// Signalled on every trigger; the VMM registers it as a KVM irqfd.
    evt: EventFd,
    /// `InterruptStatus` always shows used buffers: set for a device whose
    /// backend signals the irqfd itself (vhost-user), which cannot set the
    /// bit first.
    vring_always: AtomicBool,
}

impl IrqTrigger {
    /// A new line with no pending interrupt.
    pub fn new() -> io::Result<Self> {
        Ok(IrqTrigger {
            status: AtomicU32::new(0),
            // Non-blocking so that tests (and anyone draining it) never hang
            // on an empty counter.
            evt: EventFd::new(EFD_NONBLOCK)?,
            vring_always: AtomicBool::new(false),
        })
    }

    /// Records `reason` in `InterruptStatus` and raises the interrupt line.
    pub fn trigger(&self, reason: IrqType) -> io::Result<()> {
        // SeqCst pairs with the driver's read of InterruptStatus on another
        // thread: the bit must be visible before the irqfd can fire.
        self.status.fetch_or(reason.status_bit(), Ordering::SeqCst);
        self.evt.write(1)
    }

    /// Current `InterruptStatus` value.
    pub fn status(&self) -> u32 {
        let always = if self.vring_always.load(Ordering::SeqCst) {
            VIRTIO_MMIO_INT_VRING
        } else {
            0
        };
        self.status.load(Ordering::SeqCst) | always
    }

    /// From now until [`IrqTrigger::clear`], `InterruptStatus` says "used
    /// buffers" whatever was acknowledged: another process (a vhost-user
    /// backend) signals [`IrqTrigger::event`] directly, so the guest's
    /// handler must look at the rings on every interrupt. That costs a
    /// look at the rings on a config-change interrupt; it saves a wake-up
    /// of the VMM's event loop on every completion.
    pub fn report_vring_always(&self) {
        self.vring_always.store(true, Ordering::SeqCst);
    }

    /// Puts back a saved `InterruptStatus` and raises the line if any
    /// reason is pending (a snapshot's restore; an interrupt the guest had
    /// already taken is only a spurious one).
    pub fn restore_status(&self, bits: u32) -> io::Result<()> {
        self.status.store(bits, Ordering::SeqCst);
        if bits != 0 {
            self.evt.write(1)?;
        }
        Ok(())
    }

    /// Raises the line again if any reason is pending: after a restore,
    /// once the vCPUs' interrupt controllers are back (an edge raised
    /// before that was overwritten with the saved LAPIC state).
    pub fn resend_pending(&self) -> io::Result<()> {
        if self.status.load(Ordering::SeqCst) != 0 {
            self.evt.write(1)?;
        }
        Ok(())
    }

    /// Clears the given bits (the driver's write to `InterruptACK`).
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// Clears every pending reason (device reset).
    pub fn clear(&self) {
        self.vring_always.store(false, Ordering::SeqCst);
        self.status.store(0, Ordering::SeqCst);
    }

    /// The eventfd to register as the device's KVM irqfd.
    pub fn event(&self) -> &EventFd {
        &self.evt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trigger_sets_status_and_signals_eventfd() {
        let irq = IrqTrigger::new().unwrap();
        assert_eq!(irq.status(), 0);
        // Nothing pending: a non-blocking read fails instead of hanging.
        assert!(irq.event().read().is_err());

        irq.trigger(IrqType::Vring).unwrap();
        irq.trigger(IrqType::Config).unwrap();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.event().read().unwrap(), 2);

        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_CONFIG);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }

    #[test]
    fn a_backend_driven_line_always_reports_used_buffers_until_reset() {
        let irq = IrqTrigger::new().unwrap();
        irq.report_vring_always();
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        irq.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        irq.trigger(IrqType::Config).unwrap();
        irq.ack(VIRTIO_MMIO_INT_CONFIG);
        assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
        irq.clear();
        assert_eq!(irq.status(), 0);
    }
}
