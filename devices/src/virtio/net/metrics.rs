//! virtio-net counters.
//!
//! Plain relaxed atomics, like `BlockMetrics`: written by the event-loop
//! thread, read by whoever exports them, never used to decide anything.
//! Byte counts are Ethernet frame bytes, the 12-byte virtio-net header
//! excluded.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one network device. Share it with `Arc` (see
/// [`Net::metrics`](super::Net::metrics)).
#[derive(Debug, Default)]
pub struct NetMetrics {
    /// Frames the guest sent that were written to the TAP.
    pub tx_packets: AtomicU64,
    /// Bytes of those frames.
    pub tx_bytes: AtomicU64,
    /// Guest frames the TAP could not take right now (`EAGAIN`): dropped,
    /// as a full NIC queue would.
    pub tx_dropped: AtomicU64,
    /// Guest frames the TAP refused with an error (e.g. a header it rejects,
    /// the interface gone).
    pub tx_errors: AtomicU64,
    /// tx chains rejected as malformed (returned to the guest unsent).
    pub tx_malformed: AtomicU64,
    /// Frames from the TAP delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes of those frames.
    pub rx_bytes: AtomicU64,
    /// Frames from the TAP that were dropped: larger than the guest's
    /// buffers (all of them, with mergeable buffers) or than the device's
    /// limit.
    pub rx_dropped: AtomicU64,
    /// Failed reads from the TAP, and failed copies into guest memory.
    pub rx_errors: AtomicU64,
    /// rx chains rejected as malformed (returned to the guest with length 0).
    pub rx_malformed: AtomicU64,
    /// Times receiving paused because the guest had no rx buffers (the TAP
    /// fd is then left out of the event loop until the guest posts some).
    pub rx_paused: AtomicU64,
    /// Queue notifications (rx and tx) handled by the event loop.
    pub queue_events: AtomicU64,
    /// Readiness events of the TAP fd handled by the event loop.
    pub backend_events: AtomicU64,
}

impl NetMetrics {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Increments `counter`; returns the new value.
    pub(crate) fn inc(counter: &AtomicU64) -> u64 {
        counter.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Increments `counter`; returns the new value if this occurrence
    /// should be logged: the 1st, 2nd, 4th, 8th... A guest (or a TAP left
    /// down) can cause these at packet rate; the counter has the exact
    /// number.
    pub(crate) fn inc_and_log(counter: &AtomicU64) -> Option<u64> {
        Some(Self::inc(counter)).filter(|n| n.is_power_of_two())
    }

    /// Reads `counter` (a convenience for exporters and tests).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
