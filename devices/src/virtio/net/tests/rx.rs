//! Frames from the backend to the guest.

use super::super::handler::{check_rx_header, publish_used, RxBuffers, RxDelivery};
use super::*;
use virtio_queue::QueueT;

#[test]
fn rx_frame_lands_in_guest_buffers_with_header_and_used_length() {
    let mut h = harness(BASE_FEATURES);
    // Header and data in separate descriptors (any layout is legal).
    let (head, addrs) = h.driver.post_rx(&[VNET_HDR_LEN as u32, 2048]);
    let p = packet(&frame(1000, 10));
    h.host.send(&p);

    assert!(h.run_rx(), "drained: keep polling the backend");

    assert_eq!(
        h.driver.rxq.pop_used(),
        Some((u32::from(head), p.len() as u32))
    );
    let got = h.driver.read_spread(
        &[(addrs[0], VNET_HDR_LEN as u32), (addrs[1], 2048)],
        p.len(),
    );
    // num_buffers is 1 without mergeable buffers (virtio 1.x header).
    assert_eq!(got, as_received(&p, 1));
    assert!(h.interrupted());
    assert_eq!(h.net.rx_state(), RxState::Receiving);
    assert_eq!(h.metric(|m| &m.rx_packets), 1);
    assert_eq!(h.metric(|m| &m.rx_bytes), 1000);
}

#[test]
fn several_frames_fill_several_buffers_in_order() {
    let mut h = harness(BASE_FEATURES);
    let bufs = h.driver.post_rx_buffers(3, 1600);
    let packets: Vec<_> = (0..3)
        .map(|i| packet(&frame(100 + i * 50, i as u8)))
        .collect();
    for p in &packets {
        h.host.send(p);
    }

    h.run_rx();

    for ((head, addr), p) in bufs.iter().zip(&packets) {
        assert_eq!(
            h.driver.rxq.pop_used(),
            Some((u32::from(*head), p.len() as u32))
        );
        assert_eq!(h.driver.rxq.read(*addr, p.len()), as_received(p, 1));
    }
    // One interrupt for the whole pass.
    assert_eq!(h.irq.event().read().unwrap(), 1);
}

#[test]
fn mergeable_buffers_spread_a_frame_and_set_num_buffers() {
    let mut h = harness(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    let bufs = h.driver.post_rx_buffers(4, 256);
    // 12 + 700 = 712 bytes: 256 + 256 + 200.
    let big = packet(&frame(700, 11));
    h.host.send(&big);

    h.run_rx();

    // Three used entries, published with one index update.
    assert_eq!(h.driver.rxq.used_idx(), 3);
    for (i, len) in [256u32, 256, 200].iter().enumerate() {
        assert_eq!(h.driver.rxq.pop_used(), Some((u32::from(bufs[i].0), *len)));
    }
    let spread: Vec<_> = bufs[..3].iter().map(|&(_, addr)| (addr, 256)).collect();
    assert_eq!(
        h.driver.read_spread(&spread, big.len()),
        as_received(&big, 3)
    );

    // The fourth buffer takes the next (small) frame on its own.
    let small = packet(&frame(60, 12));
    h.host.send(&small);
    h.run_rx();
    assert_eq!(
        h.driver.rxq.pop_used(),
        Some((u32::from(bufs[3].0), small.len() as u32))
    );
    assert_eq!(
        h.driver.rxq.read(bufs[3].1, small.len()),
        as_received(&small, 1)
    );
    assert_eq!(h.metric(|m| &m.rx_packets), 2);
}

#[test]
fn a_mergeable_frame_waits_for_enough_buffers() {
    let mut h = harness(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    let first = h.driver.post_rx_buffers(2, 256);
    let big = packet(&frame(1000, 13));
    h.host.send(&big);

    // 512 bytes posted, 1012 needed: nothing is published, not even the
    // two buffers that are already taken.
    assert!(!h.run_rx(), "waiting: stop polling the backend");
    assert_eq!(h.net.rx_state(), RxState::WaitingForBuffers);
    assert_eq!(h.driver.rxq.used_idx(), 0);
    assert!(!h.interrupted());

    let more = h.driver.post_rx_buffers(3, 256);
    assert!(h.run_rx());

    assert_eq!(h.net.rx_state(), RxState::Receiving);
    assert_eq!(h.driver.rxq.used_idx(), 4);
    let all: Vec<_> = first.iter().chain(&more).collect();
    for (i, len) in [256u32, 256, 256, 244].iter().enumerate() {
        assert_eq!(h.driver.rxq.pop_used(), Some((u32::from(all[i].0), *len)));
    }
    let spread: Vec<_> = all[..4].iter().map(|&&(_, addr)| (addr, 256)).collect();
    assert_eq!(
        h.driver.read_spread(&spread, big.len()),
        as_received(&big, 4)
    );
    assert_eq!(h.metric(|m| &m.rx_paused), 1);
}

#[test]
fn a_frame_no_full_queue_of_buffers_can_hold_is_dropped() {
    let mut h = harness(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    // A whole queue of 64-byte buffers: 1 KiB in all.
    let bufs = h.driver.post_rx_buffers(usize::from(TEST_QUEUE_SIZE), 64);
    h.host.send(&packet(&frame(2000, 14)));
    let small = packet(&frame(40, 15));
    h.host.send(&small);

    assert!(h.run_rx());

    // The big one is gone, the small one took the first buffer.
    assert_eq!(h.metric(|m| &m.rx_dropped), 1);
    assert_eq!(
        h.driver.rxq.pop_used(),
        Some((u32::from(bufs[0].0), small.len() as u32))
    );
    assert_eq!(h.driver.rxq.pop_used(), None);
}

#[test]
fn without_mergeable_buffers_a_frame_larger_than_the_chain_is_dropped() {
    let mut h = harness(BASE_FEATURES);
    let bufs = h.driver.post_rx_buffers(1, 128);
    h.host.send(&packet(&frame(500, 16)));
    let small = packet(&frame(100, 17));
    h.host.send(&small);

    h.run_rx();

    // The chain was kept for the frame that fits.
    assert_eq!(h.metric(|m| &m.rx_dropped), 1);
    assert_eq!(
        h.driver.rxq.pop_used(),
        Some((u32::from(bufs[0].0), small.len() as u32))
    );
    assert_eq!(
        h.driver.rxq.read(bufs[0].1, small.len()),
        as_received(&small, 1)
    );
}

#[test]
fn host_packets_too_large_or_too_short_are_dropped() {
    let mut h = harness(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    let bufs = h.driver.post_rx_buffers(usize::from(TEST_QUEUE_SIZE), 8192);
    h.host.send(&packet(&frame(MAX_PACKET_LEN, 18))); // 12 bytes too many
    h.host.send(&packet(&frame(13, 19))); // no Ethernet header
    let largest = packet(&frame(MAX_PACKET_LEN - VNET_HDR_LEN, 20));
    h.host.send(&largest);

    h.run_rx();

    assert_eq!(h.metric(|m| &m.rx_dropped), 2);
    assert_eq!(h.metric(|m| &m.rx_packets), 1);
    let needed = largest.len().div_ceil(8192);
    let spread: Vec<_> = bufs[..needed].iter().map(|&(_, a)| (a, 8192)).collect();
    assert_eq!(
        h.driver.read_spread(&spread, largest.len()),
        as_received(&largest, needed as u16)
    );
}

/// Publishes a raw rx chain.
fn post_raw_rx(h: &mut Harness, descs: &[RawDesc]) -> u16 {
    let indices = h.driver.rxq.reserve_descs(descs.len() as u16);
    for (i, desc) in descs.iter().enumerate() {
        let mut desc = *desc;
        if desc.flags & F_NEXT != 0 && desc.next == u16::MAX {
            desc.next = indices[i + 1];
        }
        h.driver.rxq.write_desc(indices[i], desc);
    }
    h.driver.rxq.publish(indices[0]);
    indices[0]
}

#[test]
fn malformed_rx_chains_are_returned_empty_and_the_frame_takes_the_next() {
    for mergeable in [false, true] {
        let features = if mergeable {
            BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF)
        } else {
            BASE_FEATURES
        };
        let mut h = harness(features);
        let addr = h.driver.rxq.alloc(4096);
        let writable = |len: u32| RawDesc {
            addr: addr.raw_value(),
            len,
            flags: F_WRITE,
            next: 0,
        };
        let bad = [
            // Device-readable.
            post_raw_rx(
                &mut h,
                &[RawDesc {
                    flags: 0,
                    ..writable(2048)
                }],
            ),
            // Readable after writable.
            post_raw_rx(
                &mut h,
                &[
                    RawDesc {
                        flags: F_WRITE | F_NEXT,
                        next: u16::MAX,
                        ..writable(1024)
                    },
                    RawDesc {
                        flags: 0,
                        ..writable(1024)
                    },
                ],
            ),
            // Too small for the header.
            post_raw_rx(&mut h, &[writable(VNET_HDR_LEN as u32 - 1)]),
            // Outside guest memory.
            post_raw_rx(
                &mut h,
                &[RawDesc {
                    addr: crate::virtio::test_utils::MEM_SIZE as u64 - 100,
                    ..writable(2048)
                }],
            ),
            // next loop.
            {
                let index = h.driver.rxq.reserve_descs(1)[0];
                h.driver.rxq.write_desc(
                    index,
                    RawDesc {
                        flags: F_WRITE | F_NEXT,
                        next: index,
                        ..writable(64)
                    },
                );
                h.driver.rxq.publish(index);
                index
            },
        ];
        let (good, addrs) = h.driver.post_rx(&[2048]);
        let p = packet(&frame(300, 21));
        h.host.send(&p);

        h.run_rx();

        for head in bad {
            assert_eq!(h.driver.rxq.pop_used(), Some((u32::from(head), 0)));
        }
        assert_eq!(
            h.driver.rxq.pop_used(),
            Some((u32::from(good), p.len() as u32))
        );
        assert_eq!(h.driver.rxq.read(addrs[0], p.len()), as_received(&p, 1));
        assert_eq!(h.metric(|m| &m.rx_malformed), 5, "mergeable: {mergeable}");
        assert!(h.interrupted());
    }
}

#[test]
fn only_malformed_chains_means_waiting_and_they_still_go_back() {
    let mut h = harness(BASE_FEATURES);
    let addr = h.driver.rxq.alloc(64);
    let head = post_raw_rx(
        &mut h,
        &[RawDesc {
            addr: addr.raw_value(),
            len: 64,
            flags: 0,
            next: 0,
        }],
    );
    h.host.send(&packet(&frame(60, 22)));

    assert!(!h.run_rx());

    assert_eq!(h.net.rx_state(), RxState::WaitingForBuffers);
    assert_eq!(h.driver.rxq.pop_used(), Some((u32::from(head), 0)));
    // The returned chain is a used entry: the driver is told.
    assert!(h.interrupted());
}

#[test]
fn host_headers_are_checked_against_the_acked_features() {
    let csum = bit(VIRTIO_NET_F_GUEST_CSUM);
    let tso4 = csum | bit(VIRTIO_NET_F_GUEST_TSO4);
    let all = csum
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_GUEST_TSO6)
        | bit(VIRTIO_NET_F_GUEST_UFO);
    let needs_csum = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    let data_valid = VIRTIO_NET_HDR_F_DATA_VALID as u8;
    let tcpv4 = VIRTIO_NET_HDR_GSO_TCPV4 as u8;
    let tcpv6 = VIRTIO_NET_HDR_GSO_TCPV6 as u8;
    let udp = VIRTIO_NET_HDR_GSO_UDP as u8;
    let udp_l4 = VIRTIO_NET_HDR_GSO_UDP_L4 as u8;
    let ecn = VIRTIO_NET_HDR_GSO_ECN as u8;

    // (acked, flags, gso_type) -> accepted, flags after
    let cases = [
        (0, 0, 0, true, 0),
        (0, data_valid, 0, true, 0),
        (0, needs_csum, 0, false, needs_csum),
        (csum, needs_csum, 0, true, needs_csum),
        (csum, data_valid, 0, true, data_valid),
        (csum, needs_csum, tcpv4, false, needs_csum),
        (tso4, needs_csum, tcpv4, true, needs_csum),
        (tso4, needs_csum, tcpv6, false, needs_csum),
        (all, needs_csum, tcpv6, true, needs_csum),
        (all, needs_csum, udp, true, needs_csum),
        (all, needs_csum, udp_l4, false, needs_csum),
        (all, needs_csum, tcpv4 | ecn, false, needs_csum),
        (all, needs_csum, 0x42, false, needs_csum),
    ];
    for (acked, flags, gso_type, accepted, flags_after) in cases {
        let mut header = [0u8; VNET_HDR_LEN];
        header[0] = flags;
        header[1] = gso_type;
        assert_eq!(
            check_rx_header(&mut header, acked),
            accepted,
            "acked {acked:#x} flags {flags:#x} gso {gso_type:#x}"
        );
        assert_eq!(header[0], flags_after);
    }
}

#[test]
fn a_segmented_packet_for_a_guest_without_tso_is_dropped() {
    let mut h = harness(BASE_FEATURES | bit(VIRTIO_NET_F_GUEST_CSUM));
    let bufs = h.driver.post_rx_buffers(2, 4096);
    h.host.send(&packet_with(
        VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        &frame(3000, 23),
    ));
    let ok = packet_with(VIRTIO_NET_HDR_F_NEEDS_CSUM as u8, 0, &frame(1000, 24));
    h.host.send(&ok);

    h.run_rx();

    assert_eq!(h.metric(|m| &m.rx_dropped), 1);
    assert_eq!(
        h.driver.rxq.pop_used(),
        Some((u32::from(bufs[0].0), ok.len() as u32))
    );
    assert_eq!(h.driver.rxq.read(bufs[0].1, ok.len()), as_received(&ok, 1));
}

#[test]
fn rx_buffers_never_hold_more_than_a_queue() {
    let mut driver = Driver::new();
    driver.post_rx_buffers(usize::from(TEST_QUEUE_SIZE), 64);
    let mem = driver.rxq.mem.clone();
    let mut queue = driver.rxq.create_queue();
    let metrics = NetMetrics::default();
    let mut buffers = RxBuffers::default();
    let mut huge = packet(&frame(60_000, 25));

    let outcome = buffers.deliver(&mem, &mut queue, &mut huge, true, &metrics);

    assert_eq!(outcome.delivery, RxDelivery::Dropped);
    assert_eq!(outcome.published, 0);
    assert_eq!(buffers.len(), usize::from(TEST_QUEUE_SIZE));
    assert_eq!(buffers.capacity(), usize::from(TEST_QUEUE_SIZE) * 64);
}

#[test]
fn publish_used_moves_the_index_once_for_a_batch_and_wraps() {
    let driver = Driver::new();
    let mem = driver.rxq.mem.clone();
    let mut queue = driver.rxq.create_queue();
    // Near the u16 wrap of the index, and two slots before the ring's end.
    queue.set_next_used(u16::MAX - 1);

    publish_used(&mem, &mut queue, &[(3, 100), (7, 200), (1, 300)]).unwrap();

    assert_eq!(driver.rxq.used_idx(), 1);
    assert_eq!(queue.next_used(), 1);
    let slot = |n: u64| {
        let raw = driver
            .rxq
            .read(driver.rxq.used_ring.unchecked_add(4 + 8 * n), 8);
        (
            u32::from_le_bytes(raw[..4].try_into().unwrap()),
            u32::from_le_bytes(raw[4..].try_into().unwrap()),
        )
    };
    let first = u64::from((u16::MAX - 1) % TEST_QUEUE_SIZE);
    assert_eq!(first, 14);
    assert_eq!(slot(14), (3, 100));
    assert_eq!(slot(15), (7, 200));
    assert_eq!(slot(0), (1, 300));
}
