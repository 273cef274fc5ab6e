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
    /// Times sending stopped until the backend could take more (a stream
    /// backend, which makes the guest wait instead of dropping).
    pub tx_blocked: AtomicU64,
    /// Guest frames the TAP refused with an error (e.g. a header it rejects,
    /// the interface gone).
    pub tx_errors: AtomicU64,
    /// tx chains rejected as malformed (returned to the guest unsent).
    pub tx_malformed: AtomicU64,
    /// Times sending stopped at the tx rate limit (until its timer).
    pub tx_throttled: AtomicU64,
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
    /// Times receiving stopped at the rx rate limit (until its timer).
    pub rx_throttled: AtomicU64,
    /// Queue notifications (rx and tx) handled by the event loop.
    pub queue_events: AtomicU64,
    /// Readiness events of the TAP fd handled by the event loop.
    pub backend_events: AtomicU64,
    /// Where the rx queue stands.
    pub rx_queue: QueueCounters,
    /// Where the tx queue stands.
    pub tx_queue: QueueCounters,
}

/// Where one queue stands as the device last served it; for a stall, which
/// side stopped: the guest posting (`avail`), the device taking (`taken`)
/// or completing (`used`), a notification that never came
/// (`notifications`), an interrupt that never went (`interrupts`).
#[derive(Debug, Default)]
pub struct QueueCounters {
    /// avail.idx as the device last read it: what the guest had posted.
    pub avail: AtomicU64,
    /// The device's next avail index: what it has taken.
    pub taken: AtomicU64,
    /// used.idx as the device last wrote it: what it has completed.
    pub used: AtomicU64,
    /// Notifications from the guest served (kicks, and the device's own
    /// re-kicks when a budget ran out).
    pub notifications: AtomicU64,
    /// Interrupts sent to the guest for this queue.
    pub interrupts: AtomicU64,
}

impl QueueCounters {
    /// Records the queue's indexes after a pass.
    pub(crate) fn snapshot(&self, avail: Option<u16>, taken: u16, used: u16) {
        if let Some(a) = avail {
            self.avail.store(u64::from(a), Ordering::Relaxed);
        }
        self.taken.store(u64::from(taken), Ordering::Relaxed);
        self.used.store(u64::from(used), Ordering::Relaxed);
    }

    /// `name avail=A taken=T used=U notifications=N interrupts=I`.
    pub fn line(&self, name: &str) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{name} avail={} taken={} used={} notifications={} interrupts={}",
            g(&self.avail),
            g(&self.taken),
            g(&self.used),
            g(&self.notifications),
            g(&self.interrupts)
        )
    }
}

impl NetMetrics {
    /// One line with every counter and both queues, for a report on demand.
    pub fn report(&self, id: &str) -> String {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "virtio-net {id}: {}; {}; tx packets={} dropped(EAGAIN)={} blocked={} errors={} throttled={}; rx packets={} dropped={} errors={} paused={} throttled={}; queue events={} backend events={}",
            self.rx_queue.line("rx"),
            self.tx_queue.line("tx"),
            g(&self.tx_packets),
            g(&self.tx_dropped),
            g(&self.tx_blocked),
            g(&self.tx_errors),
            g(&self.tx_throttled),
            g(&self.rx_packets),
            g(&self.rx_dropped),
            g(&self.rx_errors),
            g(&self.rx_paused),
            g(&self.rx_throttled),
            g(&self.queue_events),
            g(&self.backend_events)
        )
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_says_where_each_queue_stands() {
        let m = NetMetrics::default();
        m.rx_queue.snapshot(Some(7), 5, 5);
        m.tx_queue.snapshot(None, 3, 2);
        NetMetrics::inc(&m.rx_queue.interrupts);
        NetMetrics::add(&m.tx_dropped, 4);
        let r = m.report("eth0");
        assert!(
            r.starts_with("virtio-net eth0: rx avail=7 taken=5 used=5 notifications=0 interrupts=1; tx avail=0 taken=3 used=2 "),
            "{r}"
        );
        assert!(r.contains("dropped(EAGAIN)=4"), "{r}");
    }
}
