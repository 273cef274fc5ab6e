//! Rate limits: a direction stops at its limit without spinning, and its
//! timer lets it go on.

use super::*;
use crate::rate_limiter::{Bucket, Limits};
use crate::virtio::net::{NetLimits, TX_QUEUE};
use std::time::{Duration, Instant};

/// `size` operations per `refill_ms`.
fn ops(size: u64, refill_ms: u64) -> Option<Limits> {
    Some(Limits {
        bytes: None,
        ops: Some(Bucket {
            size,
            one_time_burst: 0,
            refill_time_ms: refill_ms,
        }),
    })
}

#[test]
fn tx_stops_at_its_limit_and_leaves_the_rest_in_the_ring() {
    let mut h = harness(BASE_FEATURES);
    h.net.set_rate_limiters(NetLimits {
        rx: None,
        tx: ops(2, 60_000),
    });
    let p = packet(&frame(100, 1));
    for _ in 0..5 {
        h.driver.post_tx(&p, &[]);
    }
    let outcome = h.run_tx();
    assert_eq!((outcome.completed, outcome.limited), (2, true));
    assert_eq!(h.metric(|m| &m.tx_throttled), 1);
    assert_eq!((h.host.recv(), h.host.recv()), (Some(p.clone()), Some(p)));
    assert_eq!(h.host.recv(), None);
    // A kick while limited sends nothing.
    assert_eq!(h.run_tx().completed, 0);
}

#[test]
fn rx_stops_at_its_limit_without_polling_and_its_timer_resumes_it() {
    let (mut net, host) = fake_net();
    // 2 frames per 100 ms: 6 frames take 200 ms after the first two.
    net.set_rate_limiters(NetLimits {
        rx: ops(2, 100),
        tx: None,
    });
    let mut h = loop_harness(net);
    let bufs = h.driver.post_rx_buffers(8, 2048);
    assert_eq!(bufs.len(), 8);
    for i in 0..6 {
        host.send(&packet(&frame(100, i)));
    }
    let start = Instant::now();
    h.activate(BASE_FEATURES);
    h.run(100);
    assert_eq!(h.metric(|m| &m.rx_packets), 2);
    // Stopped by the limit: the backend is not polled, and nothing spins
    // until the timer.
    assert!(!h.state().1);
    let deadline = start + Duration::from_secs(5);
    while h.metric(|m| &m.rx_packets) < 6 && Instant::now() < deadline {
        h.run(100);
    }
    let took = start.elapsed();
    assert_eq!(h.metric(|m| &m.rx_packets), 6);
    assert!(took >= Duration::from_millis(190), "{took:?}");
    // One wakeup per frame's refill at most, not a spin.
    assert!(
        h.metric(|m| &m.rx_throttled) <= 8,
        "{}",
        h.metric(|m| &m.rx_throttled)
    );
    assert!(h.metric(|m| &m.backend_events) <= 8);
}

#[test]
fn a_new_limit_lets_a_stopped_direction_go_at_once() {
    let (mut net, host) = fake_net();
    net.set_rate_limiters(NetLimits {
        rx: None,
        tx: ops(1, 60_000),
    });
    let mut h = loop_harness(net);
    h.activate(BASE_FEATURES);
    h.run(50);
    let p = packet(&frame(80, 9));
    for _ in 0..3 {
        h.driver.post_tx(&p, &[]);
    }
    h.notify(TX_QUEUE);
    h.run(100);
    assert_eq!(h.metric(|m| &m.tx_packets), 1);
    // No limit any more: the kick it gives sends the rest.
    h.net
        .lock()
        .unwrap()
        .set_rate_limiters(NetLimits::default());
    h.run(100);
    assert_eq!(h.metric(|m| &m.tx_packets), 3);
    for _ in 0..3 {
        assert_eq!(host.recv(), Some(p.clone()));
    }
}
