//! virtio-vsock counters.
//!
//! Plain relaxed atomics, like the block device's: written by the
//! event-loop thread, read by whoever exports them; nothing is decided on
//! them.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of one vsock device. Share it with `Arc` (see
/// [`Vsock::metrics`](super::Vsock::metrics)).
#[derive(Debug, Default)]
pub struct VsockMetrics {
    /// Notifications of the rx queue (the guest posted receive buffers).
    pub rx_queue_events: AtomicU64,
    /// Notifications of the tx queue (the guest sent packets).
    pub tx_queue_events: AtomicU64,
    /// Notifications of the event queue (unused by the device).
    pub event_queue_events: AtomicU64,
    /// Readiness events on the listener and the host streams.
    pub muxer_events: AtomicU64,
    /// Packets delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Payload bytes delivered to the guest.
    pub rx_bytes: AtomicU64,
    /// Packets taken from the guest.
    pub tx_packets: AtomicU64,
    /// Payload bytes taken from the guest.
    pub tx_bytes: AtomicU64,
    /// Guest packets refused as malformed (dropped or answered with RST).
    pub tx_malformed: AtomicU64,
    /// rx buffers unusable for a packet (too small, outside guest memory);
    /// returned to the guest empty.
    pub rx_bad_buffers: AtomicU64,
    /// Times the device had packets for the guest but no rx buffer.
    pub rx_queue_stalls: AtomicU64,
    /// Host connections that completed `CONNECT <port>` (the guest may
    /// still refuse them).
    pub conns_host_initiated: AtomicU64,
    /// Guest connections whose `<uds_path>_<port>` connect succeeded.
    pub conns_guest_initiated: AtomicU64,
    /// Connections removed, for any reason.
    pub conns_closed: AtomicU64,
    /// Guest requests refused because `<uds_path>_<port>` could not be
    /// connected.
    pub host_connect_failures: AtomicU64,
    /// Host connections closed for a bad or missing `CONNECT` line.
    pub handshake_errors: AtomicU64,
    /// Connections refused because the device already has
    /// [`MAX_CONNECTIONS`](super::muxer::MAX_CONNECTIONS).
    pub conn_limit_rejects: AtomicU64,
    /// `RST` packets sent to the guest.
    pub resets_sent: AtomicU64,
    /// Connections reset because the guest exceeded its credit.
    pub credit_violations: AtomicU64,
    /// Connections reset because the host stream failed.
    pub host_io_errors: AtomicU64,
}

impl VsockMetrics {
    /// Adds `n` to `counter`.
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    /// Increments `counter`.
    pub(crate) fn inc(counter: &AtomicU64) {
        Self::add(counter, 1);
    }

    /// Reads `counter`.
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}
