//! A test harness that plays the guest driver of a split virtqueue.
//!
//! It lays out the descriptor table, available ring and used ring in guest
//! memory exactly as a driver would (virtio 1.2, 2.7), publishes chains the
//! way Linux does (descriptors first, then the avail entry, then the avail
//! index with release ordering) and reads back the used ring. Descriptors can
//! be written raw, so tests can build any malformed chain they like.

use std::sync::atomic::Ordering;

use crate::virtio::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

/// Guest memory size used by the tests.
pub const MEM_SIZE: usize = 0x40_0000;

/// `VRING_DESC_F_NEXT` as the u16 the descriptor holds.
pub const F_NEXT: u16 = VRING_DESC_F_NEXT as u16;
/// `VRING_DESC_F_WRITE` as the u16 the descriptor holds.
pub const F_WRITE: u16 = VRING_DESC_F_WRITE as u16;

/// A single 4 MiB region at guest address 0.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// One raw split-ring descriptor.
#[derive(Debug, Clone, Copy)]
pub struct RawDesc {
    pub addr: u64,
    pub len: u32,
    pub flags: u16,
    pub next: u16,
}

/// A buffer of a chain: address, length, device-writable?
#[derive(Debug, Clone, Copy)]
pub struct Buf {
    pub addr: GuestAddress,
    pub len: u32,
    pub writable: bool,
}

impl Buf {
    pub fn readable(addr: GuestAddress, len: u32) -> Self {
        Buf {
            addr,
            len,
            writable: false,
        }
    }

    pub fn writable(addr: GuestAddress, len: u32) -> Self {
        Buf {
            addr,
            len,
            writable: true,
        }
    }
}

/// The driver side of one split virtqueue.
pub struct VirtQueueDriver {
    pub mem: GuestMemoryMmap,
    pub size: u16,
    pub desc_table: GuestAddress,
    pub avail_ring: GuestAddress,
    pub used_ring: GuestAddress,
    next_desc: u16,
    avail_idx: u16,
    last_used: u16,
    next_buf: u64,
}

impl VirtQueueDriver {
    /// Lays out a queue of `size` entries at `base`; data buffers are
    /// allocated after the rings.
    pub fn new(mem: &GuestMemoryMmap, base: GuestAddress, size: u16) -> Self {
        let n = u64::from(size);
        let desc_table = base;
        // Descriptor table: 16-byte aligned; avail: 2; used: 4.
        let avail_ring = desc_table.unchecked_add(16 * n);
        let used_ring = GuestAddress((avail_ring.raw_value() + 6 + 2 * n + 3) & !3);
        let used_end = used_ring.raw_value() + 6 + 8 * n;
        let driver = VirtQueueDriver {
            mem: mem.clone(),
            size,
            desc_table,
            avail_ring,
            used_ring,
            next_desc: 0,
            avail_idx: 0,
            last_used: 0,
            next_buf: (used_end + 0xfff) & !0xfff,
        };
        // Rings start zeroed, as a driver would leave them.
        let zeros = vec![0u8; (used_end - base.raw_value()) as usize];
        mem.write_slice(&zeros, base).unwrap();
        driver
    }

    /// The device-side queue, configured as the transport would from the
    /// driver's register writes.
    pub fn create_queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.try_set_size(self.size).unwrap();
        q.try_set_desc_table_address(self.desc_table).unwrap();
        q.try_set_avail_ring_address(self.avail_ring).unwrap();
        q.try_set_used_ring_address(self.used_ring).unwrap();
        q.set_ready(true);
        assert!(q.is_valid(&self.mem));
        q
    }

    /// Allocates a zeroed guest buffer (16-byte aligned).
    pub fn alloc(&mut self, len: usize) -> GuestAddress {
        let addr = GuestAddress(self.next_buf);
        self.next_buf = (self.next_buf + len as u64 + 15) & !15;
        assert!(
            self.next_buf <= MEM_SIZE as u64,
            "test guest memory exhausted"
        );
        self.mem.write_slice(&vec![0u8; len], addr).unwrap();
        addr
    }

    /// Writes descriptor `index` of the table verbatim.
    pub fn write_desc(&self, index: u16, desc: RawDesc) {
        let addr = self.desc_table.unchecked_add(16 * u64::from(index));
        self.mem.write_obj(desc.addr.to_le(), addr).unwrap();
        self.mem
            .write_obj(desc.len.to_le(), addr.unchecked_add(8))
            .unwrap();
        self.mem
            .write_obj(desc.flags.to_le(), addr.unchecked_add(12))
            .unwrap();
        self.mem
            .write_obj(desc.next.to_le(), addr.unchecked_add(14))
            .unwrap();
    }

    /// Reserves `count` consecutive descriptor indices (wrapping).
    pub fn reserve_descs(&mut self, count: u16) -> Vec<u16> {
        (0..count)
            .map(|_| {
                let index = self.next_desc;
                self.next_desc = (self.next_desc + 1) % self.size;
                index
            })
            .collect()
    }

    /// Writes `bufs` as a properly linked chain and publishes it; returns
    /// the head index.
    pub fn add_chain(&mut self, bufs: &[Buf]) -> u16 {
        let count = u16::try_from(bufs.len()).unwrap();
        let indices = self.reserve_descs(count);
        for (i, buf) in bufs.iter().enumerate() {
            let last = i + 1 == bufs.len();
            let mut flags = if buf.writable { F_WRITE } else { 0 };
            if !last {
                flags |= F_NEXT;
            }
            self.write_desc(
                indices[i],
                RawDesc {
                    addr: buf.addr.raw_value(),
                    len: buf.len,
                    flags,
                    next: if last { 0 } else { indices[i + 1] },
                },
            );
        }
        self.publish(indices[0]);
        indices[0]
    }

    /// Puts `head` in the available ring and bumps the index.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % self.size);
        self.mem
            .write_obj(head.to_le(), self.avail_ring.unchecked_add(4 + 2 * slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        // Release: the device must see the ring entry before the index.
        self.mem
            .store(
                self.avail_idx.to_le(),
                self.avail_ring.unchecked_add(2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// Overwrites the avail index (for tests of a lying driver).
    pub fn set_avail_idx(&mut self, idx: u16) {
        self.avail_idx = idx;
        self.mem
            .store(
                idx.to_le(),
                self.avail_ring.unchecked_add(2),
                Ordering::Release,
            )
            .unwrap();
    }

    /// The device's used index.
    pub fn used_idx(&self) -> u16 {
        u16::from_le(
            self.mem
                .load(self.used_ring.unchecked_add(2), Ordering::Acquire)
                .unwrap(),
        )
    }

    /// The next used element the driver has not consumed: `(id, len)`.
    pub fn pop_used(&mut self) -> Option<(u32, u32)> {
        if self.used_idx() == self.last_used {
            return None;
        }
        let slot = u64::from(self.last_used % self.size);
        let elem = self.used_ring.unchecked_add(4 + 8 * slot);
        let id: u32 = self.mem.read_obj(elem).unwrap();
        let len: u32 = self.mem.read_obj(elem.unchecked_add(4)).unwrap();
        self.last_used = self.last_used.wrapping_add(1);
        Some((u32::from_le(id), u32::from_le(len)))
    }

    /// Reads guest bytes.
    pub fn read(&self, addr: GuestAddress, len: usize) -> Vec<u8> {
        let mut buf = vec![0u8; len];
        self.mem.read_slice(&mut buf, addr).unwrap();
        buf
    }

    /// Writes guest bytes.
    pub fn write(&self, addr: GuestAddress, data: &[u8]) {
        self.mem.write_slice(data, addr).unwrap();
    }
}
