//! virtio-blk counters.
//!
//! Plain relaxed atomics: they are written by the event-loop thread and read
//! by whoever exports them (the API server, later), and no decision is ever
//! made on them, so no ordering is needed.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one block device. Share it with `Arc` (see
/// [`Block::metrics`](super::Block::metrics)).
#[derive(Debug, Default)]
pub struct BlockMetrics {
    /// Completed `VIRTIO_BLK_T_IN` requests.
    pub reads: AtomicU64,
    /// Completed `VIRTIO_BLK_T_OUT` requests.
    pub writes: AtomicU64,
    /// Bytes copied from the disk to the guest.
    pub read_bytes: AtomicU64,
    /// Bytes copied from the guest to the disk.
    pub write_bytes: AtomicU64,
    /// Completed `VIRTIO_BLK_T_FLUSH` requests.
    pub flushes: AtomicU64,
    /// Completed `VIRTIO_BLK_T_GET_ID` requests.
    pub get_ids: AtomicU64,
    /// Requests of a type the device does not implement.
    pub unsupported: AtomicU64,
    /// Requests rejected as malformed (bad descriptor chain or header).
    pub invalid_requests: AtomicU64,
    /// Well-formed requests that failed (out of range, read-only, host I/O
    /// error).
    pub io_errors: AtomicU64,
    /// Queue notifications handled by the event loop.
    pub queue_events: AtomicU64,
    /// Times the rate limiter stopped the queue until its timer.
    pub throttled: AtomicU64,
}

impl BlockMetrics {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Increments `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Reads `counter` (a convenience for exporters and tests).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
