//! Virtio devices and their transport.
//!
//! The split follows the virtio spec's own layering: a device (`block`)
//! implements [`VirtioDevice`] and never sees MMIO; the transport
//! (`transport::mmio`) owns the register file, negotiates features, sets up
//! the queues from the driver's writes and hands them to the device on
//! `DRIVER_OK` via [`VirtioDevice::activate`].

use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device sees it: vm-memory's mmap backend with a
/// dirty-page bitmap, so what a device writes into the guest (a used ring,
/// a received frame, a block read) is found by a Diff snapshot beside the
/// vCPUs' writes, which KVM's dirty log holds. The bitmap also holds the
/// region's mapping when the VMM placed it (see [`ram`]).
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<ram::RamBitmap>;

pub mod block;
pub mod fs;
pub mod interrupt;
pub mod net;
pub mod queue;
pub mod ram;
pub mod transport;
pub mod vsock;

#[cfg(test)]
pub(crate) mod test_utils;

/// The common start of every `activate`: refuse a second activation and
/// take exactly `N` queues.
pub fn activation_queues<const N: usize>(
    already_active: bool,
    queues: Vec<Queue>,
) -> Result<[Queue; N], ActivateError> {
    if already_active {
        return Err(ActivateError::AlreadyActive);
    }
    let got = queues.len();
    <[Queue; N]>::try_from(queues).map_err(|_| ActivateError::QueueCount { expected: N, got })
}

/// Copies config space bytes from `offset` into `data`; bytes past the end
/// (or at offsets that overflow) read as zero, as the transport expects.
pub fn read_config_bytes(space: &[u8], offset: u64, data: &mut [u8]) {
    for (i, byte) in data.iter_mut().enumerate() {
        *byte = offset
            .checked_add(i as u64)
            .and_then(|pos| usize::try_from(pos).ok())
            .and_then(|pos| space.get(pos).copied())
            .unwrap_or(0);
    }
}

pub use interrupt::{IrqTrigger, IrqType};

/// Feature bit every device offers: husk only speaks virtio 1.x ("modern")
/// to the guest, never the legacy interface.
pub const VIRTIO_F_VERSION_1: u32 = virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;

/// Device status bits (virtio 1.2, section 2.1).
pub mod status {
    use virtio_bindings::virtio_config as c;

    /// The guest found the device.
    pub const ACKNOWLEDGE: u32 = c::VIRTIO_CONFIG_S_ACKNOWLEDGE;
    /// The guest has a driver for it.
    pub const DRIVER: u32 = c::VIRTIO_CONFIG_S_DRIVER;
    /// The driver is set up and ready to drive the device.
    pub const DRIVER_OK: u32 = c::VIRTIO_CONFIG_S_DRIVER_OK;
    /// Feature negotiation is complete.
    pub const FEATURES_OK: u32 = c::VIRTIO_CONFIG_S_FEATURES_OK;
    /// The device hit an error it cannot recover from without a reset.
    pub const DEVICE_NEEDS_RESET: u32 = c::VIRTIO_CONFIG_S_NEEDS_RESET;
    /// The driver gave up on the device.
    pub const FAILED: u32 = c::VIRTIO_CONFIG_S_FAILED;
}

/// Why a device refused to activate.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver handed over a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount {
        /// Queues the device has.
        expected: usize,
        /// Queues the transport passed.
        got: usize,
    },
    /// A queue the device needs was not marked ready by the driver.
    #[error("queue {0} is not ready")]
    QueueNotReady(usize),
    /// `activate` was called on an already active device.
    #[error("device is already active")]
    AlreadyActive,
    /// The device's backend (a vhost-user process) refused the setup.
    #[error("backend: {0}")]
    Backend(String),
}

/// A virtio device, as seen by a transport.
///
/// The transport calls these from the vCPU thread (under the device's mutex);
/// the device's own queue processing runs on the event-loop thread. A device
/// never sees the register layout of its transport: it only gets memory,
/// queues and an interrupt in [`activate`](VirtioDevice::activate).
pub trait VirtioDevice: Send {
    /// Virtio device id (`VIRTIO_ID_*`, e.g. 2 for block).
    fn device_type(&self) -> u32;

    /// Largest size the driver may choose for each queue; the slice length is
    /// the number of queues. Every size must be a power of two.
    fn queue_max_sizes(&self) -> &[u16];

    /// One eventfd per queue, signalled when the driver notifies that queue.
    ///
    /// Created with the device, so the VMM can register them as KVM
    /// ioeventfds before the guest boots; the device's event-loop subscriber
    /// waits on the same fds.
    fn queue_events(&self) -> &[EventFd];

    /// Features the device offers. Must include `1 << VIRTIO_F_VERSION_1`.
    fn avail_features(&self) -> u64;

    /// The negotiated feature set (a subset of `avail_features`), given when
    /// the driver sets `FEATURES_OK` and the transport accepts it.
    fn ack_features(&mut self, features: u64);

    /// Reads `data.len()` bytes of device config space at `offset`. Bytes past
    /// the end of the config space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// Writes device config space. Devices ignore writes to read-only fields.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device: from now on it processes `queues` (one per entry in
    /// `queue_max_sizes`, configured and validated by the transport) in
    /// `mem`, and signals completions through `interrupt`.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError>;

    /// Whether `activate` succeeded and no reset happened since.
    fn is_activated(&self) -> bool;

    /// Where each queue stands while the device is active (for a
    /// snapshot: the driver's addresses and the device's ring positions),
    /// or `None`: inactive, or a device whose queues another process
    /// serves (vhost-user), which cannot be snapshotted.
    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        None
    }

    /// Why the device cannot be snapshotted as it stands, if it cannot
    /// (checked before `queue_states`).
    fn snapshot_refusal(&self) -> Option<String> {
        None
    }

    /// Returns the device to its pre-activation state: drops the queues, the
    /// memory and the interrupt, keeps the backend and the queue eventfds
    /// (the VMM registered those with KVM once, for the device's lifetime).
    fn reset(&mut self);
}
