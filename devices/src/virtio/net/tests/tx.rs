//! Frames from the guest to the backend.

use super::*;
use crate::rate_limiter::RateLimiter;

#[test]
fn tx_frame_reaches_the_backend_byte_exact() {
    let mut h = harness(BASE_FEATURES);
    let packet = packet_with(1, 0, &frame(1000, 1));
    // Header split from the frame, and the frame itself split unevenly, as
    // a scatter-gather skb would be.
    let head = h.driver.post_tx(&packet, &[VNET_HDR_LEN, 300]);

    let outcome = h.run_tx();

    assert_eq!(
        outcome,
        TxOutcome {
            completed: 1,
            notify: true,
            more: false,
            blocked: false,
            limited: false,
        }
    );
    assert_eq!(h.host.recv().unwrap(), packet);
    assert_eq!(h.host.recv(), None);
    // The device writes nothing into tx buffers.
    assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
    assert!(h.interrupted());
    assert_eq!(h.metric(|m| &m.tx_packets), 1);
    assert_eq!(h.metric(|m| &m.tx_bytes), 1000);
}

#[test]
fn a_tx_batch_keeps_its_order_and_wraps_the_rings() {
    let mut h = harness(BASE_FEATURES);
    // Three times around a 16-entry queue, a few frames per pass.
    for round in 0..3 * TEST_QUEUE_SIZE / 4 {
        let packets: Vec<_> = (0..4)
            .map(|i| packet(&frame(60 + usize::from(round) * 7 + i, round as u8)))
            .collect();
        let heads: Vec<_> = packets.iter().map(|p| h.driver.post_tx(p, &[])).collect();
        assert_eq!(h.run_tx().completed, 4);
        for (p, head) in packets.iter().zip(heads) {
            assert_eq!(h.host.recv().as_ref(), Some(p));
            assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
        }
    }
    // Nothing new: nothing used, no interrupt decision.
    assert_eq!(h.run_tx(), TxOutcome::default());
}

#[test]
fn the_largest_packet_passes_and_one_byte_more_is_malformed() {
    let mut h = harness(BASE_FEATURES);
    let largest = packet(&frame(MAX_PACKET_LEN - VNET_HDR_LEN, 2));
    h.driver.post_tx(&largest, &[VNET_HDR_LEN]);
    let too_long = packet(&frame(MAX_PACKET_LEN - VNET_HDR_LEN + 1, 3));
    let head = h.driver.post_tx(&too_long, &[VNET_HDR_LEN]);

    assert_eq!(h.run_tx().completed, 2);

    assert_eq!(h.host.recv().unwrap(), largest);
    assert_eq!(h.host.recv(), None);
    h.driver.txq.pop_used();
    assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
    assert_eq!(h.metric(|m| &m.tx_malformed), 1);
}

/// Publishes a raw chain on the tx queue.
fn post_raw(h: &mut Harness, descs: &[RawDesc]) -> u16 {
    let indices = h.driver.txq.reserve_descs(descs.len() as u16);
    for (i, desc) in descs.iter().enumerate() {
        h.driver.txq.write_desc(indices[i], *desc);
    }
    h.driver.txq.publish(indices[0]);
    indices[0]
}

/// Publishes one (malformed) chain; returns its head.
type PostChain = Box<dyn Fn(&mut Harness) -> u16>;

#[test]
fn malformed_tx_chains_fail_alone_and_the_device_keeps_sending() {
    let mut h = harness(BASE_FEATURES);
    let good = packet(&frame(100, 4));
    let good_addr = h.driver.txq.alloc(good.len());
    h.driver.txq.write(good_addr, &good);
    let readable = |addr: GuestAddress, len: usize| RawDesc {
        addr: addr.raw_value(),
        len: len as u32,
        flags: 0,
        next: 0,
    };

    let cases: Vec<(&str, PostChain)> = vec![
        (
            "device-writable descriptor",
            Box::new(move |h| {
                let mut d = readable(good_addr, good.len());
                d.flags = F_WRITE;
                post_raw(h, &[d])
            }),
        ),
        (
            "outside guest memory",
            Box::new(|h| {
                post_raw(
                    h,
                    &[RawDesc {
                        addr: crate::virtio::test_utils::MEM_SIZE as u64 - 10,
                        len: 100,
                        flags: 0,
                        next: 0,
                    }],
                )
            }),
        ),
        (
            "shorter than header and Ethernet header",
            Box::new(move |h| post_raw(h, &[readable(good_addr, VNET_HDR_LEN + 13)])),
        ),
        (
            "next loop",
            Box::new(move |h| {
                let index = h.driver.txq.reserve_descs(1)[0];
                h.driver.txq.write_desc(
                    index,
                    RawDesc {
                        addr: good_addr.raw_value(),
                        len: 64,
                        flags: F_NEXT,
                        next: index,
                    },
                );
                h.driver.txq.publish(index);
                index
            }),
        ),
        (
            "next index outside the table",
            Box::new(move |h| {
                let mut d = readable(good_addr, 64);
                d.flags = F_NEXT;
                d.next = TEST_QUEUE_SIZE + 3;
                post_raw(h, &[d])
            }),
        ),
    ];

    let good = packet(&frame(100, 4));
    for (i, (what, post)) in cases.iter().enumerate() {
        let head = post(&mut h);
        let good_head = h.driver.post_tx(&good, &[]);

        assert_eq!(h.run_tx().completed, 2, "{what}");

        assert_eq!(
            h.driver.txq.pop_used(),
            Some((u32::from(head), 0)),
            "{what}"
        );
        assert_eq!(
            h.driver.txq.pop_used(),
            Some((u32::from(good_head), 0)),
            "{what}"
        );
        // Only the good frame went out.
        assert_eq!(h.host.recv().as_ref(), Some(&good), "{what}");
        assert_eq!(h.host.recv(), None, "{what}");
        assert_eq!(h.metric(|m| &m.tx_malformed), i as u64 + 1, "{what}");
    }
    assert_eq!(h.metric(|m| &m.tx_packets), cases.len() as u64);
}

#[test]
fn a_head_index_outside_the_table_is_skipped() {
    let mut h = harness(BASE_FEATURES);
    h.driver.txq.publish(TEST_QUEUE_SIZE + 1);
    let good = packet(&frame(80, 5));
    let head = h.driver.post_tx(&good, &[]);

    // No used entry can name the bad head; the good chain still goes.
    assert_eq!(h.run_tx().completed, 1);
    assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
    assert_eq!(h.host.recv(), Some(good));
}

#[test]
fn backend_failures_drop_the_frame_and_return_the_chain() {
    let mut h = harness(BASE_FEATURES);
    let p = packet(&frame(64, 6));

    h.host.fail_writes(Some(io::ErrorKind::WouldBlock));
    let a = h.driver.post_tx(&p, &[]);
    h.run_tx();
    h.host.fail_writes(Some(io::ErrorKind::InvalidInput));
    let b = h.driver.post_tx(&p, &[]);
    h.run_tx();
    h.host.fail_writes(None);
    let c = h.driver.post_tx(&p, &[]);
    h.run_tx();

    for head in [a, b, c] {
        assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
    }
    assert_eq!(h.host.recv(), Some(p));
    assert_eq!(h.host.recv(), None);
    assert_eq!(h.metric(|m| &m.tx_dropped), 1);
    assert_eq!(h.metric(|m| &m.tx_errors), 1);
    assert_eq!(h.metric(|m| &m.tx_packets), 1);
}

#[test]
fn a_backend_that_asks_to_wait_gets_every_frame_in_order() {
    let mut h = harness(BASE_FEATURES);
    h.host.knobs.backpressure.store(true, Ordering::SeqCst);
    let ps: Vec<Vec<u8>> = (1..=3).map(|i| packet(&frame(64, i))).collect();

    h.host.fail_writes(Some(io::ErrorKind::WouldBlock));
    let a = h.driver.post_tx(&ps[0], &[]);
    let b = h.driver.post_tx(&ps[1], &[]);
    let out = h.run_tx();
    assert!(out.blocked && out.completed == 0, "{out:?}");
    assert_eq!(h.driver.txq.pop_used(), None, "the chains wait in the ring");
    // Notifications while blocked send nothing.
    let c = h.driver.post_tx(&ps[2], &[]);
    assert!(h.run_tx().blocked);
    assert_eq!(h.host.recv(), None);

    h.host.fail_writes(None);
    h.net.backend_writable();
    for head in [a, b, c] {
        assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
    }
    for p in &ps {
        assert_eq!(h.host.recv().as_ref(), Some(p));
    }
    assert_eq!(h.metric(|m| &m.tx_dropped), 0);
    assert_eq!(h.metric(|m| &m.tx_blocked), 1);
    assert_eq!(h.metric(|m| &m.tx_packets), 3);
    assert!(!h.run_tx().blocked);
}

#[test]
fn a_tx_pass_stops_at_its_budget_and_kicks_itself() {
    let (backend, host) = fake_backend();
    let mut driver = Driver::new();
    let mem = driver.txq.mem.clone();
    let mut queue = driver.txq.create_queue();
    let p = packet(&frame(64, 7));
    for _ in 0..5 {
        driver.post_tx(&p, &[]);
    }
    let mut backend = backend;
    let metrics = NetMetrics::default();
    let mut buf = vec![0u8; MAX_PACKET_LEN];

    let mut open = RateLimiter::default();
    let mut tx = |budget| {
        super::super::process_tx(
            &mem,
            &mut queue,
            &mut backend,
            &mut buf,
            &metrics,
            budget,
            &mut open,
        )
    };
    let first = tx(3);
    let second = tx(3);

    assert_eq!((first.completed, first.more), (3, true));
    assert_eq!((second.completed, second.more), (2, false));
    for _ in 0..5 {
        assert_eq!(host.recv().as_ref(), Some(&p));
    }
}
