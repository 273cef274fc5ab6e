//! The virtio-blk queue handler on guest memory the fuzzer controls: the
//! descriptor table, the avail ring and the request bytes. Never a panic,
//! never a stall (every run returns).
#![no_main]
use husk_devices::virtio::block::handler::process_queue;
use husk_devices::virtio::block::{BlockMetrics, Budget, DiskFile};
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use husk_devices::virtio::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

const QUEUE_SIZE: u16 = 16;

fuzz_target!(|data: &[u8]| {
    let mem: GuestMemoryMmap = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    // Descriptors at 0, avail ring at 0x1000, used ring at 0x2000, buffers
    // from 0x3000: the fuzz bytes are laid over all of it in order.
    let (table, rest) = data.split_at(data.len().min(16 * usize::from(QUEUE_SIZE)));
    let (avail, bufs) = rest.split_at(rest.len().min(4 + 2 * usize::from(QUEUE_SIZE)));
    mem.write_slice(table, GuestAddress(0)).unwrap();
    mem.write_slice(avail, GuestAddress(0x1000)).unwrap();
    mem.write_slice(&bufs[..bufs.len().min(0x8000)], GuestAddress(0x3000))
        .unwrap();
    let mut queue = Queue::new(QUEUE_SIZE).unwrap();
    queue.set_desc_table_address(Some(0), Some(0));
    queue.set_avail_ring_address(Some(0x1000), Some(0));
    queue.set_used_ring_address(Some(0x2000), Some(0));
    queue.set_ready(true);
    let image = std::env::temp_dir().join(format!("husk-fuzz-blk-{}", std::process::id()));
    if !image.exists() {
        std::fs::write(&image, vec![0x5au8; 64 * 512]).unwrap();
    }
    let mut disk = DiskFile::open(&image, false).unwrap();
    let metrics = BlockMetrics::default();
    // Passes under the default budget until the queue has nothing left: a
    // request split over passes is carried in `in_flight`.
    let mut in_flight = None;
    for _ in 0..64 {
        let outcome = process_queue(
            &mem,
            &mut queue,
            &mut disk,
            b"husk-fuzz-disk-id\0\0\0",
            &metrics,
            &mut in_flight,
            Budget::PASS,
        );
        if !outcome.more {
            break;
        }
    }
});
