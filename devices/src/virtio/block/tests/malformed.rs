//! Malformed descriptor chains: each fails alone, the next request works.

use super::*;

/// How a malformed chain must be answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// The chain ends in a usable status byte: IOERR there, used len 1.
    IoErr,
    /// No usable status byte: the chain comes back with used len 0.
    Returned,
}

/// Publishes one malformed chain built from raw descriptors at consecutive
/// indices (`next` fields are taken as given, relative indices are mapped to
/// the reserved slots), runs the device, checks the answer, then checks a
/// valid read still works.
fn check_malformed(
    name: &str,
    build: impl FnOnce(&mut Harness) -> (Vec<RawDesc>, Option<GuestAddress>),
    expect: Expect,
) {
    let mut h = harness(&pattern(4 * SECTOR, 13), false);
    // Use a few slots first so the malformed chain does not start at 0.
    h.assert_device_still_reads();
    let before = host_bytes(&h.image);

    let (descs, status) = build(&mut h);
    let slots = h.vq.reserve_descs(descs.len() as u16);
    for (slot, desc) in slots.iter().zip(&descs) {
        let next = slots
            .get(usize::from(desc.next))
            .copied()
            .unwrap_or(desc.next);
        h.vq.write_desc(*slot, RawDesc { next, ..*desc });
    }
    h.vq.publish(slots[0]);

    let outcome = h.run();
    assert_eq!(outcome.completed, 1, "{name}: chain not returned");
    let (id, len) = h.vq.pop_used().unwrap();
    assert_eq!(id, u32::from(slots[0]), "{name}");
    match expect {
        Expect::IoErr => {
            assert_eq!(len, 1, "{name}");
            assert_eq!(h.vq.read(status.unwrap(), 1)[0], IOERR, "{name}");
        }
        Expect::Returned => {
            assert_eq!(len, 0, "{name}");
            if let Some(status) = status {
                assert_eq!(h.vq.read(status, 1)[0], STATUS_SENTINEL, "{name}");
            }
        }
    }
    assert_eq!(host_bytes(&h.image), before, "{name}: file changed");
    assert_eq!(BlockMetrics::get(&h.metrics.invalid_requests), 1, "{name}");
    h.assert_device_still_reads();
}

fn desc(addr: GuestAddress, len: u32, flags: u16, next: u16) -> RawDesc {
    RawDesc {
        addr: addr.raw_value(),
        len,
        flags,
        next,
    }
}

/// Header, optional data, status: relative `next` indices 0, 1, 2...
fn chain(
    h: &mut Harness,
    request_type: u32,
    data: &[(GuestAddress, u32, u16)],
) -> (Vec<RawDesc>, Option<GuestAddress>) {
    let header = h.header(request_type, 0);
    let status = h.status_byte();
    let mut descs = vec![desc(header, 16, F_NEXT, 1)];
    for (i, &(addr, len, flags)) in data.iter().enumerate() {
        descs.push(desc(addr, len, flags | F_NEXT, i as u16 + 2));
    }
    descs.push(desc(status, 1, F_WRITE, 0));
    (descs, Some(status))
}

const OUTSIDE: GuestAddress = GuestAddress(MEM_SIZE as u64 + 0x1000);

#[test]
fn malformed_chains_fail_alone() {
    use Expect::{IoErr, Returned};

    check_malformed(
        "header only",
        |h| {
            let header = h.header(VIRTIO_BLK_T_IN, 0);
            (vec![desc(header, 16, 0, 0)], None)
        },
        Returned,
    );
    check_malformed(
        "status only",
        |h| {
            let status = h.status_byte();
            (vec![desc(status, 1, F_WRITE, 0)], Some(status))
        },
        IoErr,
    );
    check_malformed(
        "header device-writable",
        |h| {
            let (mut d, s) = chain(h, VIRTIO_BLK_T_FLUSH, &[]);
            d[0].flags |= F_WRITE;
            (d, s)
        },
        IoErr,
    );
    check_malformed(
        "header too short",
        |h| {
            let (mut d, s) = chain(h, VIRTIO_BLK_T_FLUSH, &[]);
            d[0].len = 8;
            (d, s)
        },
        IoErr,
    );
    check_malformed(
        "header outside guest memory",
        |h| {
            let (mut d, s) = chain(h, VIRTIO_BLK_T_FLUSH, &[]);
            d[0].addr = OUTSIDE.raw_value();
            (d, s)
        },
        IoErr,
    );
    check_malformed(
        "header straddling the end of guest memory",
        |h| {
            let (mut d, s) = chain(h, VIRTIO_BLK_T_FLUSH, &[]);
            d[0].addr = MEM_SIZE as u64 - 8;
            (d, s)
        },
        IoErr,
    );
    check_malformed(
        "status device-readable",
        |h| {
            let (mut d, s) = chain(h, VIRTIO_BLK_T_FLUSH, &[]);
            d[1].flags = 0;
            (d, s)
        },
        Returned,
    );
    check_malformed(
        "status zero-length",
        |h| {
            let (mut d, s) = chain(h, VIRTIO_BLK_T_FLUSH, &[]);
            d[1].len = 0;
            (d, s)
        },
        Returned,
    );
    check_malformed(
        "status outside guest memory",
        |h| {
            let (mut d, _) = chain(h, VIRTIO_BLK_T_FLUSH, &[]);
            d[1].addr = OUTSIDE.raw_value();
            (d, None)
        },
        Returned,
    );
    check_malformed(
        "data outside guest memory",
        |h| chain(h, VIRTIO_BLK_T_IN, &[(OUTSIDE, 512, F_WRITE)]),
        IoErr,
    );
    check_malformed(
        "data straddling the end of guest memory",
        |h| {
            chain(
                h,
                VIRTIO_BLK_T_IN,
                &[(GuestAddress(MEM_SIZE as u64 - 256), 512, F_WRITE)],
            )
        },
        IoErr,
    );
    check_malformed(
        "data at the top of the address space",
        |h| {
            chain(
                h,
                VIRTIO_BLK_T_IN,
                &[(GuestAddress(u64::MAX - 100), 512, F_WRITE)],
            )
        },
        IoErr,
    );
    check_malformed(
        "zero-length data",
        |h| {
            let a = h.vq.alloc(512);
            chain(h, VIRTIO_BLK_T_IN, &[(a, 512, F_WRITE), (a, 0, F_WRITE)])
        },
        IoErr,
    );
    check_malformed(
        "read into device-readable data",
        |h| {
            let a = h.vq.alloc(512);
            chain(h, VIRTIO_BLK_T_IN, &[(a, 512, 0)])
        },
        IoErr,
    );
    check_malformed(
        "write from device-writable data",
        |h| {
            let a = h.vq.alloc(512);
            chain(h, VIRTIO_BLK_T_OUT, &[(a, 512, F_WRITE)])
        },
        IoErr,
    );
    check_malformed(
        "mixed directions",
        |h| {
            let a = h.vq.alloc(1024);
            chain(
                h,
                VIRTIO_BLK_T_OUT,
                &[(a, 512, 0), (a.unchecked_add(512), 512, F_WRITE)],
            )
        },
        IoErr,
    );
    check_malformed(
        "read without data",
        |h| chain(h, VIRTIO_BLK_T_IN, &[]),
        IoErr,
    );
    check_malformed(
        "write without data",
        |h| chain(h, VIRTIO_BLK_T_OUT, &[]),
        IoErr,
    );
    check_malformed(
        "get-id without data",
        |h| chain(h, VIRTIO_BLK_T_GET_ID, &[]),
        IoErr,
    );
    check_malformed(
        "flush with data",
        |h| {
            let a = h.vq.alloc(512);
            chain(h, VIRTIO_BLK_T_FLUSH, &[(a, 512, 0)])
        },
        IoErr,
    );
    check_malformed(
        "two-descriptor loop",
        |h| {
            let header = h.header(VIRTIO_BLK_T_IN, 0);
            let a = h.vq.alloc(512);
            (
                vec![
                    desc(header, 16, F_NEXT, 1),
                    desc(a, 512, F_WRITE | F_NEXT, 0),
                ],
                None,
            )
        },
        Returned,
    );
    check_malformed(
        "self loop",
        |h| {
            let header = h.header(VIRTIO_BLK_T_IN, 0);
            let status = h.status_byte();
            (
                vec![
                    desc(header, 16, F_NEXT, 1),
                    desc(status, 1, F_WRITE | F_NEXT, 1),
                ],
                Some(status),
            )
        },
        Returned,
    );
    check_malformed(
        "next index outside the table",
        |h| {
            let header = h.header(VIRTIO_BLK_T_IN, 0);
            (vec![desc(header, 16, F_NEXT, 999)], None)
        },
        Returned,
    );
}

#[test]
fn chain_longer_than_the_queue_is_cut_and_rejected() {
    // Every descriptor of the table in one chain that never ends: the
    // iterator gives up after queue-size steps.
    let mut h = harness(&pattern(4 * SECTOR, 14), false);
    let header = h.header(VIRTIO_BLK_T_IN, 0);
    let buf = h.vq.alloc(SECTOR);
    for i in 0..TEST_QUEUE_SIZE {
        let (addr, len, flags) = if i == 0 {
            (header, 16, F_NEXT)
        } else {
            (buf, SECTOR as u32, F_WRITE | F_NEXT)
        };
        h.vq.write_desc(i, desc(addr, len, flags, (i + 1) % TEST_QUEUE_SIZE));
    }
    h.vq.publish(0);
    assert_eq!(h.run().completed, 1);
    assert_eq!(h.vq.pop_used(), Some((0, 0)));
    h.assert_device_still_reads();
}

#[test]
fn head_index_outside_the_table_is_skipped() {
    let mut h = harness(&pattern(4 * SECTOR, 15), false);
    h.vq.publish(TEST_QUEUE_SIZE + 3);
    // Nothing can be returned for it, and nothing breaks (it was taken off
    // the queue: an operation for a rate limiter).
    assert_eq!(
        h.run(),
        QueueOutcome {
            started: 1,
            ..QueueOutcome::default()
        }
    );
    assert_eq!(h.vq.used_idx(), 0);
    assert_eq!(BlockMetrics::get(&h.metrics.invalid_requests), 1);
    h.assert_device_still_reads();
}

#[test]
fn avail_index_running_ahead_of_the_queue_is_ignored() {
    let mut h = harness(&pattern(4 * SECTOR, 16), false);
    // A driver claiming more new entries than the queue holds.
    h.vq.set_avail_idx(TEST_QUEUE_SIZE * 4);
    assert_eq!(h.run(), QueueOutcome::default());
    // Once it behaves again, so does the device.
    h.vq.set_avail_idx(0);
    h.assert_device_still_reads();
}

#[test]
fn parse_request_reports_errors_with_the_status_address() {
    // The parser on its own, as a fuzz target would call it.
    let mut h = harness(&pattern(SECTOR, 17), false);
    let a = h.vq.alloc(SECTOR);
    let sub = h.submit(VIRTIO_BLK_T_IN, 0, &[Buf::readable(a, SECTOR as u32)]);
    let chain = h.queue.pop_descriptor_chain(&h.vq.mem).unwrap();
    let failure = parse_request(&h.vq.mem, chain).unwrap_err();
    assert_eq!(failure.error, RequestError::WrongDirection(1));
    assert_eq!(failure.status_addr, Some(sub.status));

    let sub = h.submit(VIRTIO_BLK_T_OUT, 42, &[Buf::readable(a, SECTOR as u32)]);
    let chain = h.queue.pop_descriptor_chain(&h.vq.mem).unwrap();
    let request = parse_request(&h.vq.mem, chain).unwrap();
    assert_eq!(request.request_type, RequestType::Out);
    assert_eq!(request.sector, 42);
    assert_eq!(request.data_len, SECTOR_SIZE);
    assert_eq!(request.status_addr, sub.status);
}

/// Random descriptor chains (a fuzz in miniature, in every `cargo test`):
/// random addresses inside and outside memory, lengths, flags and `next`
/// links, with random bytes where headers would be. The handler must
/// neither panic nor stall, and a valid request must still work afterwards.
#[test]
fn random_chains_never_break_the_device() {
    let mut h = harness(&pattern(8 * SECTOR, 5), false);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rand = move || {
        // xorshift64: deterministic, so a failure reproduces.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let scratch = h.vq.alloc(4 * SECTOR);
    for round in 0..3000 {
        let noise: Vec<u8> = (0..64).map(|_| rand() as u8).collect();
        h.vq.write(scratch, &noise);
        let count = 1 + (rand() % 4) as u16;
        let slots = h.vq.reserve_descs(count);
        for (i, slot) in slots.iter().enumerate() {
            let addr = match rand() % 4 {
                0 => rand(),
                1 => OUTSIDE.raw_value() + rand() % 0x10000,
                _ => scratch.raw_value() + rand() % (4 * SECTOR as u64),
            };
            let len = match rand() % 4 {
                0 => rand() as u32,
                1 => 0,
                _ => (rand() % (2 * SECTOR as u64)) as u32,
            };
            let flags = (rand() & u64::from(F_NEXT | F_WRITE | 0x4)) as u16;
            let next = match rand() % 3 {
                0 => rand() as u16,
                _ => slots.get(i + 1).copied().unwrap_or(slots[0]),
            };
            h.vq.write_desc(
                *slot,
                RawDesc {
                    addr,
                    len,
                    flags,
                    next,
                },
            );
        }
        h.vq.publish(slots[0]);
        h.run();
        while h.vq.pop_used().is_some() {}
        if round % 250 == 0 {
            h.assert_device_still_reads();
        }
    }
    h.assert_device_still_reads();
}
