//! The virtio-mmio transport, virtio 1.x register layout ("version 2",
//! virtio 1.2 section 4.2.2).
//!
//! One [`MmioTransport`] per device. The VMM maps it at a 4 KiB window and
//! forwards the guest's MMIO exits to [`MmioTransport::read`] /
//! [`MmioTransport::write`] with the offset inside the window.
//!
//! # Threads and locking
//! The device is shared between the vCPU thread (this transport: config
//! space, feature ack, activate, reset) and the event-loop thread (its queue
//! subscriber), so the transport holds it as `Arc<Mutex<dyn VirtioDevice>>`.
//! Everything the driver reads often and that never changes (device id,
//! features, queue sizes) is copied out at construction, and the queue
//! notify fallback signals duplicated eventfds, so the lock is only taken for
//! config-space accesses and the rare status transitions. The queue
//! registers live here until `DRIVER_OK`, when validated copies are moved
//! into the device.
//!
//! Guest mistakes (wrong access size, unknown register, writes the status
//! state machine does not allow) are logged and ignored; nothing here panics
//! on guest input.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::virtio::GuestMemoryMmap;
use log::{error, warn};
use virtio_bindings::virtio_mmio as reg;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;

use super::super::interrupt::{IrqTrigger, IrqType};
use super::super::{status, VirtioDevice, VIRTIO_F_VERSION_1};

#[cfg(test)]
mod tests;

/// Size of the MMIO window of one device: registers plus config space.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;

/// Offset of the QueueNotify register. The VMM registers each queue's
/// eventfd as a KVM ioeventfd at `base + QUEUE_NOTIFY_OFFSET` with the queue
/// index as datamatch, so notifications skip the vCPU exit path entirely.
pub const QUEUE_NOTIFY_OFFSET: u64 = reg::VIRTIO_MMIO_QUEUE_NOTIFY as u64;

/// "virt" in little endian.
const MMIO_MAGIC_VALUE: u32 = 0x7472_6976;
/// Register layout version 2 is the virtio 1.x (non-legacy) layout.
const MMIO_VERSION: u32 = 2;
/// husk has no PCI-style vendor id; Linux does not look at it.
const VENDOR_ID: u32 = 0;
/// Offset of the device-specific config space.
const CONFIG_SPACE_OFFSET: u64 = reg::VIRTIO_MMIO_CONFIG as u64;
/// Register offsets, as `u64` to match the bus offsets.
const MAGIC_VALUE: u64 = reg::VIRTIO_MMIO_MAGIC_VALUE as u64;
const VERSION: u64 = reg::VIRTIO_MMIO_VERSION as u64;
const DEVICE_ID: u64 = reg::VIRTIO_MMIO_DEVICE_ID as u64;
const VENDOR_ID_REG: u64 = reg::VIRTIO_MMIO_VENDOR_ID as u64;
const DEVICE_FEATURES: u64 = reg::VIRTIO_MMIO_DEVICE_FEATURES as u64;
const DEVICE_FEATURES_SEL: u64 = reg::VIRTIO_MMIO_DEVICE_FEATURES_SEL as u64;
const DRIVER_FEATURES: u64 = reg::VIRTIO_MMIO_DRIVER_FEATURES as u64;
const DRIVER_FEATURES_SEL: u64 = reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL as u64;
const QUEUE_SEL: u64 = reg::VIRTIO_MMIO_QUEUE_SEL as u64;
const QUEUE_NUM_MAX: u64 = reg::VIRTIO_MMIO_QUEUE_NUM_MAX as u64;
const QUEUE_NUM: u64 = reg::VIRTIO_MMIO_QUEUE_NUM as u64;
const QUEUE_READY: u64 = reg::VIRTIO_MMIO_QUEUE_READY as u64;
const QUEUE_NOTIFY: u64 = QUEUE_NOTIFY_OFFSET;
const INTERRUPT_STATUS: u64 = reg::VIRTIO_MMIO_INTERRUPT_STATUS as u64;
const INTERRUPT_ACK: u64 = reg::VIRTIO_MMIO_INTERRUPT_ACK as u64;
const STATUS: u64 = reg::VIRTIO_MMIO_STATUS as u64;
const QUEUE_DESC_LOW: u64 = reg::VIRTIO_MMIO_QUEUE_DESC_LOW as u64;
const QUEUE_DESC_HIGH: u64 = reg::VIRTIO_MMIO_QUEUE_DESC_HIGH as u64;
const QUEUE_DRIVER_LOW: u64 = reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW as u64;
const QUEUE_DRIVER_HIGH: u64 = reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH as u64;
const QUEUE_DEVICE_LOW: u64 = reg::VIRTIO_MMIO_QUEUE_USED_LOW as u64;
const QUEUE_DEVICE_HIGH: u64 = reg::VIRTIO_MMIO_QUEUE_USED_HIGH as u64;
const SHM_SEL: u64 = reg::VIRTIO_MMIO_SHM_SEL as u64;
const SHM_LEN_LOW: u64 = reg::VIRTIO_MMIO_SHM_LEN_LOW as u64;
const SHM_LEN_HIGH: u64 = reg::VIRTIO_MMIO_SHM_LEN_HIGH as u64;
const SHM_BASE_LOW: u64 = reg::VIRTIO_MMIO_SHM_BASE_LOW as u64;
const SHM_BASE_HIGH: u64 = reg::VIRTIO_MMIO_SHM_BASE_HIGH as u64;
const CONFIG_GENERATION: u64 = reg::VIRTIO_MMIO_CONFIG_GENERATION as u64;

/// Errors building a transport (guest-caused errors are never returned: they
/// are logged and ignored, as a real device would).
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// The device does not offer `VIRTIO_F_VERSION_1`; this transport only
    /// speaks virtio 1.x.
    #[error("device does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    /// A queue's maximum size is zero, too large or not a power of two.
    #[error("queue {index} has invalid maximum size {size}")]
    InvalidQueueMaxSize {
        /// Queue index.
        index: usize,
        /// The offending size.
        size: u16,
    },
    /// The device reports a different number of queue eventfds than queues.
    #[error("device has {queues} queues but {events} queue eventfds")]
    QueueEventCount {
        /// Number of queues.
        queues: usize,
        /// Number of eventfds.
        events: usize,
    },
    /// Duplicating a queue eventfd for the notify fallback failed.
    #[error("failed to duplicate a queue eventfd")]
    CloneQueueEvent(#[source] std::io::Error),
    /// Creating the interrupt eventfd failed.
    #[error("failed to create the interrupt eventfd")]
    IrqEvent(#[source] std::io::Error),
}

/// Renders the kernel command-line token that tells Linux's virtio_mmio
/// driver where a device is: `virtio_mmio.device=<size>@<base>:<irq>`,
/// e.g. `virtio_mmio.device=4K@0xd0000000:5`.
pub fn cmdline_token(base: u64, size: u64, irq: u32) -> String {
    // The kernel parses <size> with memparse(), which takes K/M/G suffixes.
    let size = if size != 0 && size % (1 << 20) == 0 {
        format!("{}M", size >> 20)
    } else if size != 0 && size % (1 << 10) == 0 {
        format!("{}K", size >> 10)
    } else {
        size.to_string()
    };
    format!("virtio_mmio.device={size}@{base:#x}:{irq}")
}

/// The virtio-mmio register file in front of one device.
pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    mem: GuestMemoryMmap,
    interrupt: Arc<IrqTrigger>,
    /// Copied from the device at construction: they never change, and
    /// reading them must not wait for the event loop to release the lock.
    device_type: u32,
    device_features: u64,
    /// Duplicates of the device's queue eventfds, for QueueNotify writes
    /// that reach us instead of a KVM ioeventfd.
    queue_evts: Vec<EventFd>,
    /// Queue configuration as written by the driver; copied into the device
    /// on DRIVER_OK.
    queues: Vec<Queue>,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    status: u32,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Puts `device` behind a virtio-mmio register file.
    ///
    /// `mem` is the guest memory the device's queues will live in; it is
    /// used to validate the driver's queue addresses before activation and
    /// handed to the device on `DRIVER_OK`.
    pub fn new(
        mem: GuestMemoryMmap,
        device: Arc<Mutex<dyn VirtioDevice>>,
    ) -> Result<Self, MmioError> {
        let (device_type, device_features, queues, queue_evts) = {
            let dev = lock(&device);
            let features = dev.avail_features();
            if features & (1 << VIRTIO_F_VERSION_1) == 0 {
                return Err(MmioError::NoVersion1);
            }
            let sizes = dev.queue_max_sizes();
            let evts = dev.queue_events();
            if sizes.len() != evts.len() {
                return Err(MmioError::QueueEventCount {
                    queues: sizes.len(),
                    events: evts.len(),
                });
            }
            let queues = sizes
                .iter()
                .enumerate()
                .map(|(index, &size)| {
                    Queue::new(size).map_err(|_| MmioError::InvalidQueueMaxSize { index, size })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let evts = evts
                .iter()
                .map(|e| e.try_clone().map_err(MmioError::CloneQueueEvent))
                .collect::<Result<Vec<_>, _>>()?;
            (dev.device_type(), features, queues, evts)
        };
        Ok(MmioTransport {
            device,
            mem,
            interrupt: Arc::new(IrqTrigger::new().map_err(MmioError::IrqEvent)?),
            device_type,
            device_features,
            queue_evts,
            queues,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            status: 0,
            config_generation: 0,
        })
    }

    /// The device's interrupt line; register `interrupt().event()` as the
    /// KVM irqfd for this device's IRQ.
    pub fn interrupt(&self) -> &Arc<IrqTrigger> {
        &self.interrupt
    }

    /// The device behind this transport.
    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    /// The device status register, as last accepted from the driver.
    pub fn device_status(&self) -> u32 {
        self.status
    }

    /// The registers and the queues, for a snapshot: the device's live
    /// queues while it is active, else what the driver configured so far.
    /// Fails for an active device whose queues are not ours to save
    /// (vhost-user).
    pub fn state(&self) -> Result<MmioState, String> {
        self.state_with(&*lock(&self.device))
    }

    /// The device, locked: its event handlers wait meanwhile. A snapshot
    /// holds every device so from their saved queues to the end of the
    /// memory dump, so that no queue moves in between.
    pub fn lock_device(&self) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
        lock(&self.device)
    }

    /// [`Self::state`] with the device already locked ([`Self::lock_device`]).
    pub fn state_with(&self, device: &dyn VirtioDevice) -> Result<MmioState, String> {
        if let Some(why) = device.snapshot_refusal() {
            return Err(why);
        }
        let live = device.queue_states();
        let active = device.is_activated();
        let queues = match (live, active) {
            (Some(q), _) => q,
            (None, false) => self.queues.iter().map(Queue::state).collect(),
            (None, true) => {
                return Err(format!(
                "device type {} cannot be snapshotted (its queues are served by another process)",
                self.device_type
            ))
            }
        };
        Ok(MmioState {
            status: self.status,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: self.interrupt.status(),
            queues,
        })
    }

    /// Puts a saved state back into a new transport (same device type and
    /// queues): the registers, the queues, and, if the driver had started
    /// the device, the device started again on those queues at their saved
    /// positions.
    pub fn restore(&mut self, state: &MmioState) -> Result<(), String> {
        if state.queues.len() != self.queues.len() {
            return Err(format!(
                "the snapshot has {} queues for device type {}, which has {}",
                state.queues.len(),
                self.device_type,
                self.queues.len()
            ));
        }
        self.queues = state
            .queues
            .iter()
            .enumerate()
            .map(|(i, q)| Queue::try_from(*q).map_err(|e| format!("queue {i}: {e}")))
            .collect::<Result<_, _>>()?;
        self.status = state.status;
        self.device_features_select = state.device_features_select;
        self.driver_features_select = state.driver_features_select;
        self.driver_features = state.driver_features;
        self.queue_select = state.queue_select;
        self.config_generation = state.config_generation;
        if self.status & status::FEATURES_OK != 0 {
            lock(&self.device).ack_features(self.driver_features);
        }
        let running = status::DRIVER_OK;
        let stopped = status::FAILED | status::DEVICE_NEEDS_RESET;
        if self.status & (running | stopped) == running {
            self.activate().map_err(|e| e.to_string())?;
        }
        self.interrupt
            .restore_status(state.interrupt_status)
            .map_err(|e| format!("interrupt: {e}"))
    }

    /// Tells the driver the device's configuration changed (a disk's
    /// capacity, say): a new generation and a config interrupt. Nothing is
    /// raised for a device the driver has not started: it reads the
    /// configuration when it does.
    pub fn config_changed(&mut self) -> std::io::Result<()> {
        self.config_generation = self.config_generation.wrapping_add(1);
        if self.status & status::DRIVER_OK == 0 {
            return Ok(());
        }
        self.interrupt.trigger(IrqType::Config)
    }

    /// Handles a guest read of `data.len()` bytes at `offset` in the window.
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Whatever goes wrong below, the guest must not see stale bytes of
        // the VMM's buffer.
        data.fill(0);
        if offset >= CONFIG_SPACE_OFFSET {
            if !(1..=8).contains(&data.len()) {
                warn!("virtio-mmio: config read of {} bytes ignored", data.len());
                return;
            }
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        if data.len() != 4 || offset % 4 != 0 {
            warn!(
                "virtio-mmio: {}-byte read at {offset:#x} ignored (registers are 32-bit, aligned)",
                data.len()
            );
            return;
        }
        let value = match offset {
            MAGIC_VALUE => MMIO_MAGIC_VALUE,
            VERSION => MMIO_VERSION,
            DEVICE_ID => self.device_type,
            VENDOR_ID_REG => VENDOR_ID,
            DEVICE_FEATURES => match self.device_features_select {
                0 => self.device_features as u32,
                1 => (self.device_features >> 32) as u32,
                _ => 0,
            },
            QUEUE_NUM_MAX => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            QUEUE_READY => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            INTERRUPT_STATUS => self.interrupt.status(),
            STATUS => self.status,
            // No shared memory regions: the spec says a missing region reads
            // as length (and base) -1.
            SHM_LEN_LOW | SHM_LEN_HIGH | SHM_BASE_LOW | SHM_BASE_HIGH => u32::MAX,
            CONFIG_GENERATION => self.config_generation,
            _ => {
                warn!("virtio-mmio: read of unknown or write-only register {offset:#x}");
                return;
            }
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// Handles a guest write of `data` at `offset` in the window.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            if !(1..=8).contains(&data.len()) {
                warn!("virtio-mmio: config write of {} bytes ignored", data.len());
                return;
            }
            if self.status & status::DRIVER == 0 {
                warn!("virtio-mmio: config write before DRIVER ignored");
                return;
            }
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let value = match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => u32::from_le_bytes(bytes),
            _ => {
                warn!(
                    "virtio-mmio: {}-byte write at {offset:#x} ignored (registers are 32-bit, aligned)",
                    data.len()
                );
                return;
            }
        };
        match offset {
            DEVICE_FEATURES_SEL => self.device_features_select = value,
            DRIVER_FEATURES_SEL => self.driver_features_select = value,
            DRIVER_FEATURES => self.write_driver_features(value),
            QUEUE_SEL => self.queue_select = value,
            QUEUE_NUM => self.update_queue("QueueNum", |q| match u16::try_from(value) {
                Ok(size) => q.try_set_size(size).is_ok(),
                Err(_) => false,
            }),
            QUEUE_READY => self.update_queue("QueueReady", |q| match value {
                0 | 1 => {
                    q.set_ready(value == 1);
                    true
                }
                _ => false,
            }),
            QUEUE_DESC_LOW => self.update_queue("QueueDescLow", |q| {
                q.try_set_desc_table_address(set_low(q.desc_table(), value))
                    .is_ok()
            }),
            QUEUE_DESC_HIGH => self.update_queue("QueueDescHigh", |q| {
                q.try_set_desc_table_address(set_high(q.desc_table(), value))
                    .is_ok()
            }),
            QUEUE_DRIVER_LOW => self.update_queue("QueueDriverLow", |q| {
                q.try_set_avail_ring_address(set_low(q.avail_ring(), value))
                    .is_ok()
            }),
            QUEUE_DRIVER_HIGH => self.update_queue("QueueDriverHigh", |q| {
                q.try_set_avail_ring_address(set_high(q.avail_ring(), value))
                    .is_ok()
            }),
            QUEUE_DEVICE_LOW => self.update_queue("QueueDeviceLow", |q| {
                q.try_set_used_ring_address(set_low(q.used_ring(), value))
                    .is_ok()
            }),
            QUEUE_DEVICE_HIGH => self.update_queue("QueueDeviceHigh", |q| {
                q.try_set_used_ring_address(set_high(q.used_ring(), value))
                    .is_ok()
            }),
            QUEUE_NOTIFY => self.notify(value),
            INTERRUPT_ACK => self.interrupt.ack(value),
            STATUS => self.write_status(value),
            // No shared memory regions, so the selector has nothing to pick.
            SHM_SEL => {}
            _ => warn!("virtio-mmio: write of unknown or read-only register {offset:#x}"),
        }
    }

    fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_select as usize)
    }

    fn write_driver_features(&mut self, value: u32) {
        // Features may only change between DRIVER and FEATURES_OK.
        if self.status & (status::DRIVER | status::FEATURES_OK | status::FAILED) != status::DRIVER {
            warn!(
                "virtio-mmio: DriverFeatures write in status {:#x} ignored",
                self.status
            );
            return;
        }
        let (shift, mask) = match self.driver_features_select {
            0 => (0, 0xffff_ffff_u64),
            1 => (32, 0xffff_ffff_0000_0000_u64),
            sel => {
                warn!("virtio-mmio: DriverFeatures write with selector {sel} ignored");
                return;
            }
        };
        let page = u64::from(value) << shift;
        if page & !self.device_features != 0 {
            // A driver must not accept what was not offered; drop those bits
            // rather than pass them to the device.
            warn!(
                "virtio-mmio: driver accepted unoffered features {:#x}",
                page & !self.device_features
            );
        }
        self.driver_features =
            (self.driver_features & !mask) | (page & self.device_features & mask);
    }

    /// Applies a queue register write to the selected queue, if the status
    /// allows it (after FEATURES_OK, before DRIVER_OK) and the queue is not
    /// live yet.
    fn update_queue(&mut self, name: &str, apply: impl FnOnce(&mut Queue) -> bool) {
        if self.status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            != status::FEATURES_OK
        {
            warn!(
                "virtio-mmio: {name} write in status {:#x} ignored",
                self.status
            );
            return;
        }
        let sel = self.queue_select;
        let Some(queue) = self.queues.get_mut(sel as usize) else {
            warn!("virtio-mmio: {name} write for nonexistent queue {sel} ignored");
            return;
        };
        // The driver must not change a queue it has marked ready (4.2.3.2);
        // only QueueReady itself may still be written.
        if queue.ready() && name != "QueueReady" {
            warn!("virtio-mmio: {name} write to ready queue {sel} ignored");
            return;
        }
        if !apply(queue) {
            warn!("virtio-mmio: invalid {name} value for queue {sel} ignored");
        }
    }

    fn notify(&self, value: u32) {
        // Without VIRTIO_F_NOTIFICATION_DATA the value is the queue index.
        match self.queue_evts.get(value as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    error!("virtio-mmio: failed to signal queue {value}: {e}");
                }
            }
            None => warn!("virtio-mmio: notify for nonexistent queue {value} ignored"),
        }
    }

    /// The device status state machine (virtio 1.2, 3.1.1): bits are only
    /// ever added, in the order ACKNOWLEDGE → DRIVER → FEATURES_OK →
    /// DRIVER_OK; FAILED may be added at any time; writing 0 resets.
    fn write_status(&mut self, new: u32) {
        if new == 0 {
            self.reset();
            return;
        }
        let old = self.status;
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::FAILED;
        // DEVICE_NEEDS_RESET is the device's to set; a driver echoing it back
        // in a read-modify-write is fine, so it does not count as "added".
        let new_req = new & !status::DEVICE_NEEDS_RESET;
        let old_req = old & !status::DEVICE_NEEDS_RESET;
        if new_req & !known != 0 || new_req & old_req != old_req {
            warn!("virtio-mmio: status write {new:#x} over {old:#x} ignored (bits cleared or unknown)");
            return;
        }
        let requires =
            |bit: u32, prerequisite: u32| new_req & bit == 0 || new_req & prerequisite != 0;
        if !(requires(status::DRIVER, status::ACKNOWLEDGE)
            && requires(status::FEATURES_OK, status::DRIVER)
            && requires(status::DRIVER_OK, status::FEATURES_OK))
        {
            warn!("virtio-mmio: status write {new:#x} over {old:#x} ignored (out of order)");
            return;
        }
        let added = new_req & !old_req;
        let mut accepted = old | added;

        if added & status::FEATURES_OK != 0 {
            if self.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                // Refusing is done by not setting the bit: the driver reads
                // Status back and gives up (Linux: "virtio: device refuses
                // features").
                warn!("virtio-mmio: FEATURES_OK refused, driver did not accept VERSION_1");
                accepted &= !(status::FEATURES_OK | status::DRIVER_OK);
            } else {
                lock(&self.device).ack_features(self.driver_features);
            }
        }
        self.status = accepted;

        // A driver that already declared FAILED gets no device started.
        if self.status & (status::DRIVER_OK | status::FAILED) == status::DRIVER_OK
            && added & status::DRIVER_OK != 0
        {
            if let Err(e) = self.activate() {
                error!("virtio-mmio: activation failed: {e}");
                // 2.1.2: signal the driver that it has to reset the device.
                self.status |= status::DEVICE_NEEDS_RESET;
                if let Err(e) = self.interrupt.trigger(IrqType::Config) {
                    error!("virtio-mmio: failed to raise config interrupt: {e}");
                }
            }
        }
    }

    fn activate(&mut self) -> Result<(), ActivationFailure> {
        // An avail ring at guest address 0 is valid, but virtio-queue will
        // not iterate it: such a queue gets the alias of page 0 instead
        // (see `virtio::queue::with_page_zero_alias`).
        let at_zero = |q: &Queue| q.ready() && q.avail_ring() == 0;
        let (mem, alias) = match self.queues.iter().any(at_zero) {
            true => crate::virtio::queue::with_page_zero_alias(&self.mem)
                .map_or((self.mem.clone(), None), |(m, a)| (m, Some(a))),
            false => (self.mem.clone(), None),
        };
        let mut queues = Vec::with_capacity(self.queues.len());
        for (index, queue) in self.queues.iter().enumerate() {
            if queue.ready() && !queue.is_valid(&self.mem) {
                return Err(ActivationFailure::InvalidQueue(index));
            }
            // Queue is not Clone; its state round-trip is the supported copy.
            let mut copy = Queue::try_from(queue.state())
                .map_err(|_| ActivationFailure::InvalidQueue(index))?;
            if let (true, Some(base)) = (at_zero(queue), alias) {
                copy.try_set_avail_ring_address(base)
                    .map_err(|_| ActivationFailure::InvalidQueue(index))?;
            }
            queues.push(copy);
        }
        lock(&self.device)
            .activate(mem, self.interrupt.clone(), queues)
            .map_err(ActivationFailure::Device)
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.clear();
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
        self.status = 0;
    }
}

/// A transport's registers and its queues, as a snapshot keeps them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MmioState {
    pub status: u32,
    pub device_features_select: u32,
    pub driver_features_select: u32,
    pub driver_features: u64,
    pub queue_select: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    #[serde(with = "queue_states")]
    pub queues: Vec<virtio_queue::QueueState>,
}

/// serde for virtio-queue's `QueueState`, which has none (serde's remote
/// derive: the fields are listed once, here).
mod queue_states {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};
    use virtio_queue::QueueState;

    #[derive(Serialize, Deserialize)]
    #[serde(remote = "QueueState")]
    struct Def {
        max_size: u16,
        next_avail: u16,
        next_used: u16,
        event_idx_enabled: bool,
        size: u16,
        ready: bool,
        desc_table: u64,
        avail_ring: u64,
        used_ring: u64,
    }

    #[derive(Serialize)]
    struct Out<'a>(#[serde(with = "Def")] &'a QueueState);

    #[derive(Deserialize)]
    struct In(#[serde(with = "Def")] QueueState);

    pub fn serialize<S: Serializer>(queues: &[QueueState], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(queues.iter().map(Out))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<QueueState>, D::Error> {
        Ok(Vec::<In>::deserialize(d)?
            .into_iter()
            .map(|In(q)| q)
            .collect())
    }
}

/// Why DRIVER_OK did not start the device.
#[derive(Debug, thiserror::Error)]
enum ActivationFailure {
    #[error("queue {0} is ready but its rings are not valid in guest memory")]
    InvalidQueue(usize),
    #[error(transparent)]
    Device(super::super::ActivateError),
}

/// Locks the device, recovering from poisoning: a panic on another thread
/// must not turn every later MMIO access of the guest into a VMM panic.
fn lock<'a>(device: &'a Mutex<dyn VirtioDevice>) -> MutexGuard<'a, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|poisoned| {
        error!("virtio-mmio: device mutex poisoned, continuing");
        poisoned.into_inner()
    })
}

fn set_low(addr: u64, low: u32) -> GuestAddress {
    GuestAddress((addr & !0xffff_ffff) | u64::from(low))
}

fn set_high(addr: u64, high: u32) -> GuestAddress {
    GuestAddress((addr & 0xffff_ffff) | (u64::from(high) << 32))
}
