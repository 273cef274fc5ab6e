//! Requests that succeed, and well-formed requests that fail.

use super::*;

#[test]
fn read_returns_the_files_bytes() {
    let contents = pattern(8 * SECTOR, 1);
    let mut h = harness(&contents, false);
    // Two data descriptors, as the guest's scatter-gather list would give.
    let a = h.vq.alloc(SECTOR);
    let b = h.vq.alloc(2 * SECTOR);
    let sub = h.submit(
        VIRTIO_BLK_T_IN,
        3,
        &[
            Buf::writable(a, SECTOR as u32),
            Buf::writable(b, 2 * SECTOR as u32),
        ],
    );

    let outcome = h.run();

    assert_eq!(
        outcome,
        QueueOutcome {
            completed: 1,
            notify: true,
            more: false,
            started: 1,
            bytes: 3 * SECTOR_SIZE,
            reads: Amount {
                requests: 1,
                bytes: 3 * SECTOR_SIZE,
            },
            ..QueueOutcome::default()
        }
    );
    assert_eq!(h.expect_used(&sub), 3 * SECTOR as u32 + 1);
    assert_eq!(h.status_of(&sub), OK);
    assert_eq!(h.vq.read(a, SECTOR), contents[3 * SECTOR..4 * SECTOR]);
    assert_eq!(h.vq.read(b, 2 * SECTOR), contents[4 * SECTOR..6 * SECTOR]);
    assert_eq!(BlockMetrics::get(&h.metrics.reads), 1);
    assert_eq!(BlockMetrics::get(&h.metrics.read_bytes), 3 * SECTOR_SIZE);
}

#[test]
fn write_lands_in_the_file() {
    let contents = pattern(8 * SECTOR, 2);
    let mut h = harness(&contents, false);
    let data = pattern(2 * SECTOR, 99);
    let sub = h.submit_write(5, &data);

    let outcome = h.run();

    assert_eq!(
        outcome,
        QueueOutcome {
            completed: 1,
            notify: true,
            more: false,
            started: 1,
            bytes: 2 * SECTOR_SIZE,
            writes: Amount {
                requests: 1,
                bytes: 2 * SECTOR_SIZE,
            },
            ..QueueOutcome::default()
        }
    );
    // OUT writes nothing into device-writable buffers but the status.
    assert_eq!(h.expect_used(&sub), 1);
    assert_eq!(h.status_of(&sub), OK);
    let mut expected = contents.clone();
    expected[5 * SECTOR..7 * SECTOR].copy_from_slice(&data);
    assert_eq!(host_bytes(&h.image), expected);
    assert_eq!(BlockMetrics::get(&h.metrics.writes), 1);
    assert_eq!(BlockMetrics::get(&h.metrics.write_bytes), 2 * SECTOR_SIZE);
}

#[test]
fn write_then_read_back_across_many_requests_wraps_the_rings() {
    // Three times around a 16-entry queue, one request per pass, so the
    // descriptor table, avail ring and used ring all wrap.
    let mut h = harness(&pattern(16 * SECTOR, 3), false);
    for round in 0..3 * TEST_QUEUE_SIZE {
        let sector = u64::from(round % 16);
        let data = pattern(SECTOR, round as u8);
        let w = h.submit_write(sector, &data);
        let (r, buf) = h.submit_read(sector, SECTOR);
        assert_eq!(h.run().completed, 2);
        h.expect_used(&w);
        h.expect_used(&r);
        assert_eq!((h.status_of(&w), h.status_of(&r)), (OK, OK));
        assert_eq!(h.vq.read(buf, SECTOR), data);
    }
}

#[test]
fn a_batch_completes_in_order_with_one_notification_decision() {
    let contents = pattern(4 * SECTOR, 4);
    let mut h = harness(&contents, false);
    let subs: Vec<_> = (0..4).map(|s| h.submit_read(s, SECTOR)).collect();

    assert_eq!(
        h.run(),
        QueueOutcome {
            completed: 4,
            notify: true,
            more: false,
            started: 4,
            bytes: 4 * SECTOR_SIZE,
            reads: Amount {
                requests: 4,
                bytes: 4 * SECTOR_SIZE,
            },
            ..QueueOutcome::default()
        }
    );
    for (sector, (sub, buf)) in subs.iter().enumerate() {
        h.expect_used(sub);
        assert_eq!(
            h.vq.read(*buf, SECTOR),
            contents[sector * SECTOR..][..SECTOR]
        );
    }
    // Nothing new: nothing used, no interrupt.
    assert_eq!(h.run(), QueueOutcome::default());
}

/// Wraps the real disk and records, at the moment `flush` runs, how many
/// used entries the driver could already see.
struct FlushOrderDisk {
    inner: DiskFile,
    mem: GuestMemoryMmap,
    used_ring: GuestAddress,
    used_idx_at_flush: Option<u16>,
}

impl BlockBackend for FlushOrderDisk {
    fn capacity(&self) -> u64 {
        self.inner.capacity()
    }
    fn is_read_only(&self) -> bool {
        self.inner.is_read_only()
    }
    fn read_to_guest(
        &mut self,
        offset: u64,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), DiskError> {
        self.inner.read_to_guest(offset, mem, addr, len)
    }
    fn write_from_guest(
        &mut self,
        offset: u64,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), DiskError> {
        self.inner.write_from_guest(offset, mem, addr, len)
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        let used_idx: u16 = self.mem.read_obj(self.used_ring.unchecked_add(2)).unwrap();
        self.used_idx_at_flush = Some(u16::from_le(used_idx));
        self.inner.flush()
    }
}

#[test]
fn flush_is_answered_only_after_the_disk_is_synced() {
    let contents = pattern(4 * SECTOR, 5);
    let image = image_with(&contents);
    let inner = DiskFile::open(image.as_path(), false).unwrap();
    let mut h = harness_with(
        image,
        FlushOrderDisk {
            inner,
            mem: guest_memory(), // replaced below: must be the harness's memory
            used_ring: GuestAddress(0),
            used_idx_at_flush: None,
        },
    );
    h.disk.mem = h.vq.mem.clone();
    h.disk.used_ring = h.vq.used_ring;

    let data = pattern(SECTOR, 7);
    let write = h.submit_write(2, &data);
    let flush = h.submit(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(h.run().completed, 2);

    // The write's entry was out, the flush's was not: the sync came first.
    assert_eq!(h.disk.used_idx_at_flush, Some(1));
    assert_eq!(h.expect_used(&write), 1);
    assert_eq!(h.expect_used(&flush), 1);
    assert_eq!(h.status_of(&flush), OK);
    // And what the guest was told is done is in the host file.
    assert_eq!(host_bytes(&h.image)[2 * SECTOR..3 * SECTOR], data[..]);
    assert_eq!(BlockMetrics::get(&h.metrics.flushes), 1);
}

/// A disk whose every operation fails, to check host errors become IOERR.
struct FailingDisk {
    capacity: u64,
}

impl BlockBackend for FailingDisk {
    fn capacity(&self) -> u64 {
        self.capacity
    }
    fn is_read_only(&self) -> bool {
        false
    }
    fn read_to_guest(
        &mut self,
        _: u64,
        _: &GuestMemoryMmap,
        _: GuestAddress,
        _: usize,
    ) -> Result<(), DiskError> {
        Err(DiskError::Io(std::io::Error::other("injected failure")))
    }
    fn write_from_guest(
        &mut self,
        _: u64,
        _: &GuestMemoryMmap,
        _: GuestAddress,
        _: usize,
    ) -> Result<(), DiskError> {
        Err(DiskError::Io(std::io::Error::other("injected failure")))
    }
    fn flush(&mut self) -> Result<(), DiskError> {
        Err(DiskError::Io(std::io::Error::other("injected failure")))
    }
}

#[test]
fn host_io_errors_become_ioerr_and_the_queue_moves_on() {
    let mut h = harness_with(
        TempFile::new().unwrap(),
        FailingDisk {
            capacity: 8 * SECTOR_SIZE,
        },
    );
    let (read, _) = h.submit_read(0, SECTOR);
    let write = h.submit_write(1, &pattern(SECTOR, 1));
    let flush = h.submit(VIRTIO_BLK_T_FLUSH, 0, &[]);

    assert_eq!(h.run().completed, 3);
    for sub in [&read, &write, &flush] {
        assert_eq!(h.expect_used(sub), 1);
        assert_eq!(h.status_of(sub), IOERR);
    }
    assert_eq!(BlockMetrics::get(&h.metrics.io_errors), 3);
    assert_eq!(BlockMetrics::get(&h.metrics.flushes), 0);
}

#[test]
fn get_id_returns_the_serial() {
    let mut h = harness(&pattern(SECTOR, 6), false);
    let full = h.vq.alloc(ID_BYTES);
    let sub = h.submit(
        VIRTIO_BLK_T_GET_ID,
        0,
        &[Buf::writable(full, ID_BYTES as u32)],
    );
    // A shorter buffer gets a prefix; the byte after it stays untouched.
    let short = h.vq.alloc(9);
    h.vq.write(short, &[0xaa; 9]);
    let short_sub = h.submit(VIRTIO_BLK_T_GET_ID, 0, &[Buf::writable(short, 8)]);

    assert_eq!(h.run().completed, 2);

    assert_eq!(h.expect_used(&sub), ID_BYTES as u32 + 1);
    assert_eq!(h.status_of(&sub), OK);
    let mut expected = [0u8; ID_BYTES];
    expected[..11].copy_from_slice(b"husk-disk-0");
    assert_eq!(h.vq.read(full, ID_BYTES), expected);

    assert_eq!(h.expect_used(&short_sub), 8 + 1);
    assert_eq!(h.vq.read(short, 9), b"husk-dis\xaa");
    assert_eq!(BlockMetrics::get(&h.metrics.get_ids), 2);
}

#[test]
fn unsupported_request_types_get_unsupp() {
    let mut h = harness(&pattern(4 * SECTOR, 7), false);
    // DISCARD is not offered; a random type is not even defined.
    let discard_buf = h.vq.alloc(16);
    let discard = h.submit(VIRTIO_BLK_T_DISCARD, 0, &[Buf::readable(discard_buf, 16)]);
    let bogus = h.submit(0xdead_beef, 0, &[]);

    assert_eq!(h.run().completed, 2);
    for sub in [&discard, &bogus] {
        assert_eq!(h.expect_used(sub), 1);
        assert_eq!(h.status_of(sub), UNSUPP);
    }
    assert_eq!(BlockMetrics::get(&h.metrics.unsupported), 2);
    h.assert_device_still_reads();
}

// ---------------------------------------------------------------------------
// Requests that fail but leave the device working

#[test]
fn read_only_disk_rejects_writes_and_keeps_the_file_intact() {
    let contents = pattern(4 * SECTOR, 8);
    let mut h = harness(&contents, true);

    // Opened O_RDONLY: even a bug past the handler's check could not write.
    let fdinfo = std::fs::read_to_string(format!(
        "/proc/self/fdinfo/{}",
        std::os::fd::AsRawFd::as_raw_fd(&h.disk)
    ))
    .unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    assert_eq!(flags & 0o3, 0, "O_ACCMODE must be O_RDONLY");

    let write = h.submit_write(1, &pattern(SECTOR, 0));
    let flush = h.submit(VIRTIO_BLK_T_FLUSH, 0, &[]);
    assert_eq!(h.run().completed, 2);

    assert_eq!(h.expect_used(&write), 1);
    assert_eq!(h.status_of(&write), IOERR);
    // Nothing was written, so there is nothing to flush: fine.
    h.expect_used(&flush);
    assert_eq!(h.status_of(&flush), OK);
    assert_eq!(host_bytes(&h.image), contents);
    assert_eq!(BlockMetrics::get(&h.metrics.writes), 0);
    h.assert_device_still_reads();
}

#[test]
fn requests_past_the_end_of_the_disk_fail() {
    let contents = pattern(4 * SECTOR, 9);
    let mut h = harness(&contents, false);
    // Starts at the capacity.
    let (at_end, _) = h.submit_read(4, SECTOR);
    // Starts inside, ends outside.
    let (straddling, _) = h.submit_read(3, 2 * SECTOR);
    let straddling_write = h.submit_write(3, &pattern(2 * SECTOR, 1));
    // sector * 512 overflows u64.
    let (overflow, _) = h.submit_read(u64::MAX / 256, SECTOR);
    // sector * 512 fits, + len overflows.
    let (overflow_len, _) = h.submit_read(u64::MAX >> 9, SECTOR);

    assert_eq!(h.run().completed, 5);
    for sub in [
        &at_end,
        &straddling,
        &straddling_write,
        &overflow,
        &overflow_len,
    ] {
        assert_eq!(h.expect_used(sub), 1);
        assert_eq!(h.status_of(sub), IOERR);
    }
    assert_eq!(host_bytes(&h.image), contents);
    assert_eq!(BlockMetrics::get(&h.metrics.io_errors), 5);
    h.assert_device_still_reads();
}

#[test]
fn odd_sized_image_is_rounded_down_and_its_tail_never_touched() {
    let contents = pattern(3 * SECTOR + 100, 10);
    let mut h = harness(&contents, false);
    assert_eq!(h.disk.capacity_sectors(), 3);
    assert_eq!(h.disk.ignored_tail_bytes(), 100);

    // The last whole sector is usable...
    let data = pattern(SECTOR, 11);
    let last = h.submit_write(2, &data);
    // ...the partial one is not, for reads or writes.
    let (tail_read, tail_buf) = h.submit_read(3, SECTOR);
    let tail_write = h.submit_write(3, &[0x55; SECTOR]);
    assert_eq!(h.run().completed, 3);

    h.expect_used(&last);
    assert_eq!(h.status_of(&last), OK);
    for sub in [&tail_read, &tail_write] {
        assert_eq!(h.expect_used(sub), 1);
        assert_eq!(h.status_of(sub), IOERR);
    }
    assert_eq!(h.vq.read(tail_buf, SECTOR), vec![0u8; SECTOR]);
    let after = host_bytes(&h.image);
    assert_eq!(after.len(), contents.len(), "file must not grow");
    assert_eq!(after[2 * SECTOR..3 * SECTOR], data[..]);
    assert_eq!(after[3 * SECTOR..], contents[3 * SECTOR..]);
}

#[test]
fn data_not_a_multiple_of_512_fails() {
    let contents = pattern(4 * SECTOR, 12);
    let mut h = harness(&contents, false);
    let (read, _) = h.submit_read(0, SECTOR + 1);
    let write = h.submit_write(0, &[1u8; 100]);
    assert_eq!(h.run().completed, 2);
    for sub in [&read, &write] {
        assert_eq!(h.expect_used(sub), 1);
        assert_eq!(h.status_of(sub), IOERR);
    }
    assert_eq!(host_bytes(&h.image), contents);
    assert_eq!(BlockMetrics::get(&h.metrics.invalid_requests), 2);
    h.assert_device_still_reads();
}

#[test]
fn a_truncated_file_fails_reads_instead_of_returning_zeros() {
    // The image shrinks under the VMM after the device was created.
    let image = image_with(&pattern(4 * SECTOR, 23));
    let mut h = harness_with(
        TempFile::new().unwrap(),
        DiskFile::open(image.as_path(), false).unwrap(),
    );
    File::options()
        .write(true)
        .open(image.as_path())
        .unwrap()
        .set_len(SECTOR_SIZE)
        .unwrap();
    let (sub, _) = h.submit_read(2, SECTOR);
    assert_eq!(h.run().completed, 1);
    assert_eq!(h.expect_used(&sub), 1);
    assert_eq!(h.status_of(&sub), IOERR);
}
