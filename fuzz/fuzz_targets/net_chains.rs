//! The virtio-net queue passes on guest memory the fuzzer controls: the tx
//! queue sent through a backend that takes everything (under a rate limit
//! the input chooses), and one host frame offered to the rx queue, with or
//! without mergeable buffers. Never a panic, never a stall.
#![no_main]
use husk_devices::rate_limiter::{Bucket, Limits, RateLimiter};
use husk_devices::virtio::net::{process_tx, NetMetrics, RxBuffers, MAX_PACKET_LEN};
use husk_devices::virtio::GuestMemoryMmap;
use libfuzzer_sys::fuzz_target;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

#[path = "common/sink.rs"]
mod sink;
use sink::Sink;

const QUEUE_SIZE: u16 = 16;
const TX: u64 = 0;
const RX: u64 = 0x4000;
const BUFFERS: u64 = 0x8000;

/// A queue of `QUEUE_SIZE` at `base`: table, avail ring at +0x1000, used
/// ring at +0x2000.
fn queue(base: u64) -> Queue {
    let mut q = Queue::new(QUEUE_SIZE).unwrap();
    q.set_desc_table_address(Some(base as u32), Some(0));
    q.set_avail_ring_address(Some((base + 0x1000) as u32), Some(0));
    q.set_used_ring_address(Some((base + 0x2000) as u32), Some(0));
    q.set_ready(true);
    q
}

/// Takes `n` bytes off the front of `data` (fewer at its end).
fn take<'a>(data: &mut &'a [u8], n: usize) -> &'a [u8] {
    let (head, rest) = data.split_at(data.len().min(n));
    *data = rest;
    head
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let flags = take(&mut data, 1).first().copied().unwrap_or(0);
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let table = 16 * usize::from(QUEUE_SIZE);
    let avail = 4 + 2 * usize::from(QUEUE_SIZE);
    for base in [TX, RX] {
        mem.write_slice(take(&mut data, table), GuestAddress(base)).unwrap();
        mem.write_slice(take(&mut data, avail), GuestAddress(base + 0x1000))
            .unwrap();
    }
    let frame_len = take(&mut data, 2);
    let frame_len = usize::from(u16::from_le_bytes([
        frame_len.first().copied().unwrap_or(0),
        frame_len.get(1).copied().unwrap_or(0),
    ]));
    let mut frame = take(&mut data, frame_len).to_vec();
    mem.write_slice(take(&mut data, 0x10000), GuestAddress(BUFFERS))
        .unwrap();

    let metrics = NetMetrics::default();
    let mut limiter = if flags & 2 != 0 {
        RateLimiter::new(Limits {
            bytes: Some(Bucket {
                size: 4096,
                one_time_burst: 0,
                refill_time_ms: 1000,
            }),
            ops: None,
        })
    } else {
        RateLimiter::default()
    };
    let mut tx = queue(TX);
    let mut buf = vec![0u8; MAX_PACKET_LEN];
    for _ in 0..4 {
        let outcome = process_tx(&mem, &mut tx, &mut Sink, &mut buf, &metrics, 8, &mut limiter);
        if !outcome.more {
            break;
        }
    }

    let mut rx = queue(RX);
    let mut buffers = RxBuffers::default();
    if frame.len() >= 12 {
        let _ = buffers.deliver(&mem, &mut rx, &mut frame, flags & 1 != 0, &metrics);
    }
});
