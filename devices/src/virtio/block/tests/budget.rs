//! A pass is bounded whatever the guest does: a self-feeding request loop,
//! one enormous transfer, chains that point at indirect tables.

use super::*;

/// Offset of the request header inside the 512 bytes a self-feeding read
/// overwrites (the avail ring starts the block; the used ring follows it).
const HEADER_AT: u64 = 0xb0;

/// A disk whose sector `k`, read over the avail ring, publishes head `head`
/// once more (avail idx `k + 2`) and points the request's own header at
/// sector `k + 1`: each completion queues the next request, as a hostile
/// guest did to husk.
fn self_feeding_disk(sectors: usize, size: u16, head: u16) -> Vec<u8> {
    let mut disk = vec![0u8; sectors * SECTOR];
    for (k, s) in disk.chunks_mut(SECTOR).enumerate() {
        s[2..4].copy_from_slice(&((k + 2) as u16).to_le_bytes());
        for i in 0..usize::from(size) {
            s[4 + 2 * i..6 + 2 * i].copy_from_slice(&head.to_le_bytes());
        }
        let h = HEADER_AT as usize;
        s[h..h + 4].copy_from_slice(&VIRTIO_BLK_T_IN.to_le_bytes());
        s[h + 8..h + 16].copy_from_slice(&((k + 1) as u64).to_le_bytes());
    }
    disk
}

#[test]
fn a_self_feeding_request_loop_is_served_a_budget_at_a_time() {
    const SECTORS: usize = 1000;
    // The chain's head will be descriptor 0.
    let mut h = harness(&self_feeding_disk(SECTORS, TEST_QUEUE_SIZE, 0), false);
    let ring = h.vq.avail_ring;
    assert!(ring.raw_value() + HEADER_AT + 16 <= ring.raw_value() + SECTOR as u64);
    let header = ring.unchecked_add(HEADER_AT);
    h.vq.write(header, &[0u8; 16]);
    let status = h.status_byte();
    let head = h.vq.add_chain(&[
        Buf::readable(header, 16),
        Buf::writable(ring, SECTOR as u32),
        Buf::writable(status, 1),
    ]);
    assert_eq!(head, 0);
    h.vq.publish(head);

    let budget = Budget::PASS.requests;
    let first = h.run();
    assert_eq!(first.completed, budget, "{first:?}");
    assert!(first.more, "the pass must say it stopped at its budget");
    // The loop really feeds itself: the header now asks for the next sector.
    let sector = u64::from_le_bytes(h.vq.read(header.unchecked_add(8), 8).try_into().unwrap());
    assert_eq!(sector, u64::from(budget));
    for _ in 0..3 {
        let pass = h.run();
        assert_eq!((pass.completed, pass.more), (budget, true), "{pass:?}");
    }
    assert_eq!(BlockMetrics::get(&h.metrics.reads), 4 * u64::from(budget));
}

#[test]
fn a_large_transfer_is_moved_in_pieces_across_passes() {
    let contents = pattern(64 * SECTOR, 7);
    let mut h = harness(&contents, false);
    h.budget = Budget {
        requests: 128,
        bytes: 4096,
        ..Budget::PASS
    };
    // 12 KiB over three segments: three passes of 4 KiB.
    let bufs: Vec<GuestAddress> = (0..3).map(|_| h.vq.alloc(4096)).collect();
    let data: Vec<Buf> = bufs.iter().map(|&b| Buf::writable(b, 4096)).collect();
    let sub = h.submit(VIRTIO_BLK_T_IN, 8, &data);
    for pass in 0..2 {
        let o = h.run();
        assert_eq!((o.completed, o.more), (0, true), "pass {pass}: {o:?}");
        assert_eq!(h.status_of(&sub), STATUS_SENTINEL, "answered early");
    }
    let o = h.run();
    assert_eq!((o.completed, o.more), (1, false), "{o:?}");
    assert_eq!(h.expect_used(&sub), 3 * 4096 + 1);
    assert_eq!(h.status_of(&sub), OK);
    for (i, b) in bufs.iter().enumerate() {
        let at = 8 * SECTOR + i * 4096;
        assert_eq!(h.vq.read(*b, 4096), contents[at..at + 4096], "segment {i}");
    }
    assert_eq!(BlockMetrics::get(&h.metrics.reads), 1);
    // A write in pieces lands whole.
    let payload = pattern(3 * 4096, 99);
    let sub = h.submit_write(2, &payload);
    while h.run().completed == 0 {}
    assert_eq!(h.expect_used(&sub), 1);
    assert_eq!(
        &host_bytes(&h.image)[2 * SECTOR..2 * SECTOR + payload.len()],
        &payload[..]
    );
    h.budget = Budget::PASS;
    h.assert_device_still_reads();
}

#[test]
fn a_chain_with_an_indirect_descriptor_is_refused_unfollowed() {
    let mut h = harness(&pattern(8 * SECTOR, 1), false);
    // An indirect table the device must not read: 3 valid descriptors.
    let header = h.header(VIRTIO_BLK_T_IN, 0);
    let data = h.vq.alloc(SECTOR);
    let status = h.status_byte();
    let table = h.vq.alloc(3 * 16);
    for (i, (addr, len, flags)) in [
        (header, 16u32, F_NEXT),
        (data, SECTOR as u32, F_NEXT | F_WRITE),
        (status, 1, F_WRITE),
    ]
    .into_iter()
    .enumerate()
    {
        let mut d = [0u8; 16];
        d[0..8].copy_from_slice(&addr.raw_value().to_le_bytes());
        d[8..12].copy_from_slice(&len.to_le_bytes());
        d[12..14].copy_from_slice(&flags.to_le_bytes());
        d[14..16].copy_from_slice(&(i as u16 + 1).to_le_bytes());
        h.vq.write(table.unchecked_add(16 * i as u64), &d);
    }
    let [head] = h.vq.reserve_descs(1)[..] else {
        unreachable!()
    };
    h.vq.write_desc(
        head,
        RawDesc {
            addr: table.raw_value(),
            len: 3 * 16,
            flags: virtio_bindings::virtio_ring::VRING_DESC_F_INDIRECT as u16,
            next: 0,
        },
    );
    h.vq.publish(head);
    let o = h.run();
    assert_eq!(o.completed, 1);
    let (id, len) = h.vq.pop_used().unwrap();
    assert_eq!((id, len), (u32::from(head), 0));
    assert_eq!(
        h.vq.read(status, 1)[0],
        STATUS_SENTINEL,
        "followed the table"
    );
    assert_eq!(BlockMetrics::get(&h.metrics.reads), 0);
    assert_eq!(BlockMetrics::get(&h.metrics.invalid_requests), 1);
    h.assert_device_still_reads();
}

#[test]
fn reads_and_writes_each_stop_at_their_own_share() {
    let mut h = harness(&pattern(64 * SECTOR, 3), false);
    // One read a pass, and 4 KiB of writes.
    h.budget = Budget {
        read: Amount {
            requests: 1,
            bytes: u64::MAX,
        },
        write: Amount {
            requests: u64::MAX,
            bytes: 4096,
        },
        ..Budget::PASS
    };
    let (a, _) = h.submit_read(0, SECTOR);
    let (b, _) = h.submit_read(1, SECTOR);
    let o = h.run();
    assert_eq!(
        (o.completed, o.more, o.waiting),
        (1, true, Some(Direction::Read)),
        "{o:?}"
    );
    assert_eq!((o.reads.requests, o.reads.bytes), (1, SECTOR as u64));
    assert_eq!(h.expect_used(&a), SECTOR as u32 + 1);
    // The second read, held in flight, is counted when it moves.
    let o = h.run();
    assert_eq!((o.completed, o.reads.requests), (1, 1), "{o:?}");
    assert_eq!(h.expect_used(&b), SECTOR as u32 + 1);
    // 12 KiB of writes take three passes; reads were never in the way.
    let payload = pattern(3 * 4096, 5);
    let w = h.submit_write(4, &payload);
    for pass in 0..2 {
        let o = h.run();
        assert_eq!(
            (o.completed, o.waiting, o.writes.bytes),
            (0, Some(Direction::Write), 4096),
            "pass {pass}: {o:?}"
        );
    }
    let o = h.run();
    assert_eq!(
        (o.completed, o.writes.requests),
        (1, 0),
        "counted once: {o:?}"
    );
    assert_eq!(h.expect_used(&w), 1);
    assert_eq!(
        &host_bytes(&h.image)[4 * SECTOR..4 * SECTOR + payload.len()],
        &payload[..]
    );
}
