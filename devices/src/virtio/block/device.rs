//! The virtio-blk device: features, config space, activation.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::virtio::GuestMemoryMmap;
use log::{error, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use crate::rate_limiter::{self, RateLimiter, ReadWriteLimits};

use super::disk::{BlockBackend, DiskError, DiskFile};
use super::handler::{self, Amount, Budget, Direction, InFlight, QueueOutcome};
use super::metrics::BlockMetrics;
use super::{ID_BYTES, QUEUE_SIZE, SEG_MAX};
use crate::virtio::{ActivateError, IrqTrigger, IrqType, VirtioDevice, VIRTIO_F_VERSION_1};

/// Size of the config space we expose: `capacity`, `size_max`, `seg_max`,
/// `geometry` and `blk_size` of `struct virtio_blk_config`. Later fields
/// belong to features we do not offer.
const CONFIG_SPACE_SIZE: usize = 24;

/// What the VMM configures for a drive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockConfig {
    /// Host path of the image (a regular file or a block device).
    pub path: PathBuf,
    /// Offer the disk read-only (`VIRTIO_BLK_F_RO`) and open it `O_RDONLY`.
    pub read_only: bool,
    /// Drive id; its first 20 bytes are the serial returned by GET_ID
    /// (`/sys/block/vdX/serial` in the guest).
    pub id: String,
}

/// Errors creating a block device.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened or sized.
    #[error("cannot use the disk image")]
    Disk(#[source] DiskError),
    /// Creating the queue eventfd failed.
    #[error("cannot create the queue eventfd")]
    QueueEvent(#[source] io::Error),
    /// Creating the rate limiter's timer failed.
    #[error("cannot create the rate limiter's timer")]
    Timer(#[source] io::Error),
}

/// State that exists only between activation and reset.
struct Active {
    mem: GuestMemoryMmap,
    queue: Queue,
    interrupt: Arc<IrqTrigger>,
    /// A transfer the last pass left half done.
    in_flight: Option<InFlight>,
}

/// A virtio-blk device with one request queue, backed by a host file.
pub struct Block {
    disk: DiskFile,
    id: [u8; ID_BYTES],
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; 1],
    queue_evts: [EventFd; 1],
    budget: Budget,
    active: Option<Active>,
    metrics: Arc<BlockMetrics>,
    limiter: RateLimiter,
    /// Reads' and writes' own limits, on top.
    read_limiter: RateLimiter,
    write_limiter: RateLimiter,
    /// Fires when the limiter lets a stopped queue go on.
    limit_timer: TimerFd,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("acked_features", &self.acked_features)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Block {
    /// Opens the image and builds the (inactive) device.
    pub fn new(config: &BlockConfig) -> Result<Self, BlockError> {
        let disk = DiskFile::open(&config.path, config.read_only).map_err(BlockError::Disk)?;

        let mut id = [0u8; ID_BYTES];
        let id_bytes = config.id.as_bytes();
        if id_bytes.len() > ID_BYTES {
            warn!(
                "virtio-blk: drive id {:?} is longer than {ID_BYTES} bytes; the serial is truncated",
                config.id
            );
        }
        let n = id_bytes.len().min(ID_BYTES);
        id[..n].copy_from_slice(&id_bytes[..n]);

        let mut avail_features = (1u64 << VIRTIO_F_VERSION_1)
            | (1u64 << VIRTIO_BLK_F_FLUSH)
            | (1u64 << VIRTIO_BLK_F_SEG_MAX);
        if config.read_only {
            avail_features |= 1u64 << VIRTIO_BLK_F_RO;
        }

        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        // seg_max: data descriptors per request. A chain also needs the
        // header and status descriptors and cannot exceed the queue size.
        config_space[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());

        Ok(Block {
            disk,
            id,
            avail_features,
            acked_features: 0,
            config_space,
            queue_sizes: [QUEUE_SIZE],
            // Non-blocking: the event loop drains it, and must never block
            // on a spurious wakeup.
            queue_evts: [EventFd::new(EFD_NONBLOCK).map_err(BlockError::QueueEvent)?],
            budget: Budget::PASS,
            active: None,
            metrics: Arc::new(BlockMetrics::default()),
            limiter: RateLimiter::default(),
            read_limiter: RateLimiter::default(),
            write_limiter: RateLimiter::default(),
            limit_timer: rate_limiter::timer().map_err(BlockError::Timer)?,
        })
    }

    /// Sets the disk's I/O limits, now and while it runs (`PATCH /drives`):
    /// a queue the old limits stopped goes on under the new ones.
    pub fn set_rate_limiter(&mut self, limiter: RateLimiter) {
        self.limiter = limiter;
        if let Err(e) = self.queue_evts[0].write(1) {
            error!("virtio-blk: cannot re-arm the queue: {e}");
        }
    }

    /// Sets the limits on reads and on writes apart, now and while it
    /// runs.
    pub fn set_read_write_limits(&mut self, limits: ReadWriteLimits) {
        self.read_limiter = RateLimiter::new(limits.read);
        self.write_limiter = RateLimiter::new(limits.write);
        if let Err(e) = self.queue_evts[0].write(1) {
            error!("virtio-blk: cannot re-arm the queue: {e}");
        }
    }

    /// The limiter's timer, for the event loop.
    pub(crate) fn limit_timer(&self) -> &TimerFd {
        &self.limit_timer
    }

    /// Reads the fired timer, so it does not wake the loop again.
    pub(crate) fn clear_limit_timer(&mut self) {
        rate_limiter::clear_timer(&mut self.limit_timer, "virtio-blk");
    }

    /// Sets what one pass over the queue may do (default [`Budget::PASS`]);
    /// `husk`'s `HUSK_BLK_PASS_BUDGET` uses it to measure the budget's cost.
    pub fn set_budget(&mut self, budget: Budget) {
        self.budget = budget;
    }

    /// The device's counters, to be exported by the VMM.
    pub fn metrics(&self) -> &Arc<BlockMetrics> {
        &self.metrics
    }

    /// Capacity in 512-byte sectors, as reported to the guest.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// Bytes at the end of the image that the guest cannot see (the image
    /// size is not a multiple of 512).
    pub fn ignored_tail_bytes(&self) -> u64 {
        self.disk.ignored_tail_bytes()
    }

    /// The 20-byte serial returned by GET_ID (the drive id, zero-padded or
    /// truncated).
    pub fn serial(&self) -> &[u8; ID_BYTES] {
        &self.id
    }

    /// Whether the disk is read-only.
    pub fn is_read_only(&self) -> bool {
        self.disk.is_read_only()
    }

    /// The negotiated features (0 before `FEATURES_OK`).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Serves the queue after a notification, up to a pass's budget, and
    /// interrupts the guest if anything completed. Work left over re-arms
    /// the queue's own eventfd, so the event loop serves everything else
    /// before it comes back. Returns what the pass did; a no-op before
    /// activation.
    pub(crate) fn process_queue_event(&mut self) -> QueueOutcome {
        BlockMetrics::inc(&self.metrics.queue_events);
        let Some(active) = self.active.as_mut() else {
            // Notifications before DRIVER_OK carry nothing we may look at yet.
            return QueueOutcome::default();
        };
        // The pass does at most what the limits allow now; a queue they
        // stop waits on the timer, not in a loop.
        let mut budget = self.budget;
        if self.limiter.is_limited() {
            let allowed = self.limiter.allowance();
            budget.requests = budget
                .requests
                .min(u32::try_from(allowed.ops).unwrap_or(u32::MAX));
            budget.bytes = budget.bytes.min(allowed.bytes);
        }
        // Most disks have no read or write limits: no clock read per pass.
        let share = |l: &mut RateLimiter| {
            if !l.is_limited() {
                return Amount::ALL;
            }
            let a = l.allowance();
            Amount {
                requests: a.ops,
                bytes: a.bytes,
            }
        };
        budget.read = share(&mut self.read_limiter);
        budget.write = share(&mut self.write_limiter);
        let outcome = if budget.requests == 0 || budget.bytes == 0 {
            QueueOutcome {
                more: true,
                ..QueueOutcome::default()
            }
        } else {
            handler::process_queue(
                &active.mem,
                &mut active.queue,
                &mut self.disk,
                &self.id,
                &self.metrics,
                &mut active.in_flight,
                budget,
            )
        };
        if outcome.notify {
            if let Err(e) = active.interrupt.trigger(IrqType::Vring) {
                error!("virtio-blk: cannot interrupt the guest: {e}");
            }
        }
        self.limiter
            .consume(u64::from(outcome.started), outcome.bytes);
        self.read_limiter
            .consume(outcome.reads.requests, outcome.reads.bytes);
        self.write_limiter
            .consume(outcome.writes.requests, outcome.writes.bytes);
        if outcome.more {
            self.go_on(outcome.waiting);
        }
        outcome
    }
}

impl Block {
    /// After a pass that left work: another pass soon, or when the limits
    /// allow it (the disk's, and those of the direction that stopped it).
    fn go_on(&mut self, waiting: Option<Direction>) {
        let own = match waiting {
            Some(Direction::Read) => self.read_limiter.wait(),
            Some(Direction::Write) => self.write_limiter.wait(),
            None => std::time::Duration::ZERO,
        };
        let wait = self.limiter.wait().max(own);
        if wait.is_zero() {
            if let Err(e) = self.queue_evts[0].write(1) {
                error!("virtio-blk: cannot re-arm the queue: {e}");
            }
            return;
        }
        BlockMetrics::inc(&self.metrics.throttled);
        if let Err(e) = self.limit_timer.reset(wait, None) {
            error!("virtio-blk: cannot arm the rate limiter's timer: {e}");
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Every field we expose is read-only (no VIRTIO_BLK_F_CONFIG_WCE).
        warn!(
            "virtio-blk: guest write of {} bytes to config offset {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let [queue] = crate::virtio::activation_queues(self.active.is_some(), queues)?;
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.active = Some(Active {
            mem,
            queue,
            interrupt,
            in_flight: None,
        });
        // A notification that raced with activation was drained and dropped
        // by the event loop (we were not active yet); kick the queue once so
        // requests already posted are not stranded.
        if let Err(e) = self.queue_evts[0].write(1) {
            error!("virtio-blk: cannot kick the queue after activation: {e}");
        }
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active.as_ref().map(|a| vec![a.queue.state()])
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }
}
