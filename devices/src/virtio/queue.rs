//! Taking chains off a queue, the same way in every device.
//!
//! No husk device offers `VIRTIO_RING_F_INDIRECT_DESC`, but the virtio-queue
//! crate's chain iterator follows an indirect descriptor whenever it meets
//! one, into a table of up to 65,535 entries. A driver that was never told
//! it may use them could thus make every chain cost 65,535 reads. [`pop`]
//! looks at the chain's own descriptors first (at most the queue size of
//! them, which iterating costs anyway) and refuses a chain that refers to an
//! indirect table, before anything follows it.
//!
//! The crate also refuses to iterate a queue whose avail ring is at guest
//! address 0 (it takes 0 for "not set up"), which the spec allows and
//! Firecracker serves. [`with_page_zero_alias`] works around that without
//! forking the crate: the device's view of guest memory gets the start of
//! RAM mapped a second time above its end, and such a queue is given that
//! address instead. The guest sees nothing of it; descriptors that point
//! there reach only its own first page.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::virtio::GuestMemoryMmap;
use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

/// How much of the start of RAM the alias covers: an avail ring of the
/// largest queue (4 + 2 * 32768 + 2 bytes) fits.
const ALIAS_LEN: u64 = 68 << 10;

/// What [`pop`] took off the queue.
pub enum Popped<'a> {
    /// A chain to serve.
    Chain(DescriptorChain<&'a GuestMemoryMmap>),
    /// A chain refused without being followed; the caller returns `head`
    /// through the used ring with length 0.
    Refused { head: u16, why: &'static str },
}

/// The next available chain, if any.
pub fn pop<'a>(queue: &mut Queue, mem: &'a GuestMemoryMmap) -> Option<Popped<'a>> {
    let chain = queue.pop_descriptor_chain(mem)?;
    let head = chain.head_index();
    if refers_to_indirect(mem, GuestAddress(queue.desc_table()), queue.size(), head) {
        return Some(Popped::Refused {
            head,
            why: "an indirect descriptor, a feature this device does not offer",
        });
    }
    Some(Popped::Chain(chain))
}

/// Whether the driver has published chains not taken yet (an unreadable
/// ring counts as yes: the next pop says what is wrong with it).
pub fn has_available(queue: &Queue, mem: &GuestMemoryMmap) -> bool {
    queue
        .avail_idx(mem, Ordering::Acquire)
        .map_or(true, |idx| idx.0 != queue.next_avail())
}

/// Whether the chain from `head` has a descriptor with the INDIRECT flag,
/// walking at most `size` descriptors (as the crate's iterator would).
fn refers_to_indirect(mem: &GuestMemoryMmap, table: GuestAddress, size: u16, head: u16) -> bool {
    let mut index = head;
    for _ in 0..size {
        if index >= size {
            return false;
        }
        let Some(addr) = table.checked_add(u64::from(index) * 16) else {
            return false;
        };
        let Ok(desc) = mem.read_obj::<Descriptor>(addr) else {
            return false;
        };
        let flags = u32::from(desc.flags());
        if flags & VRING_DESC_F_INDIRECT != 0 {
            return true;
        }
        if flags & VRING_DESC_F_NEXT == 0 {
            return false;
        }
        index = desc.next();
    }
    false
}

/// `mem` with its first [`ALIAS_LEN`] bytes mapped again at a page above its
/// last address; that address. `None` if there is no RAM at 0.
pub fn with_page_zero_alias(mem: &GuestMemoryMmap) -> Option<(GuestMemoryMmap, GuestAddress)> {
    let first = mem.find_region(GuestAddress(0))?;
    let len = first.len().min(ALIAS_LEN) as usize;
    let host = first.get_host_address(MemoryRegionAddress(0)).ok()?;
    let base = GuestAddress(mem.last_addr().raw_value().checked_add(0x1000)? & !0xfff);
    // SAFETY: `host..host + len` lies inside the mapping of the region at
    // guest address 0 (len is at most that region's length). The alias does
    // not own it (no munmap on drop), and it only lives inside the
    // collection built below, which also holds that region's Arc: the
    // mapping outlives every use of the alias. Guest RAM is shared between
    // the two names the way it already is between the VMM and KVM.
    let raw = unsafe {
        MmapRegion::build_raw(
            host,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
    }
    .ok()?;
    let alias = GuestRegionMmap::new(raw, base)?;
    let view = mem.insert_region(Arc::new(alias)).ok()?;
    Some((view, base))
}
