//! Taking chains off a queue, the same way in every device.
//!
//! No husk device offers `VIRTIO_RING_F_INDIRECT_DESC`, but the virtio-queue
//! crate's chain iterator follows an indirect descriptor whenever it meets
//! one, into a table of up to 65,535 entries. A driver that was never told
//! it may use them could thus make every chain cost 65,535 reads. [`pop`]
//! looks at the chain's own descriptors first (at most the queue size of
//! them, which iterating costs anyway) and refuses a chain that refers to an
//! indirect table, before anything follows it.

use std::sync::atomic::Ordering;

use virtio_bindings::virtio_ring::{VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

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
