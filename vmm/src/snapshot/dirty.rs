//! Dirty-page tracking for Diff snapshots.
//!
//! A guest page changes two ways: a vCPU writes it (KVM's dirty log for
//! the memory slot, on when the slot has `KVM_MEM_LOG_DIRTY_PAGES`) or the
//! VMM writes it for a device (a used ring, a received frame, a block
//! read: vm-memory's bitmap on each region). A page is dirty if either
//! says so. Reading both clears them, so each snapshot, Full or Diff,
//! starts the next Diff from nothing.

use kvm_ioctls::VmFd;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemory;

/// One bit per 4 KiB page of a region, in `u64` words (KVM's layout).
pub type PageBits = Vec<u64>;

/// The memory-slot flags for a VM that does or does not track pages.
pub fn slot_flags(track: bool) -> u32 {
    if track {
        kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES
    } else {
        0
    }
}

/// The pages written since the last call (or since the slots were made),
/// per region in order; both logs are cleared.
pub fn take(vm: &VmFd, mem: &GuestMemory) -> Result<Vec<PageBits>, String> {
    mem.iter()
        .enumerate()
        .map(|(slot, region)| {
            let len = region.len() as usize;
            let mut bits = vm
                .get_dirty_log(slot as u32, len)
                .map_err(|e| format!("KVM_GET_DIRTY_LOG for slot {slot}: {e}"))?;
            // The whole region's bitmap (MmapRegion's), not a slice of it.
            let devices = vm_memory::mmap::MmapRegion::bitmap(region).take_dirty();
            for (word, dev) in bits.iter_mut().zip(devices) {
                *word |= dev;
            }
            Ok(bits)
        })
        .collect()
}

/// The runs of set bits in `bits` as (first page, page count).
pub fn runs(bits: &[u64]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let total = bits.len() * 64;
    for page in 0..=total {
        let set = page < total && bits[page / 64] & (1 << (page % 64)) != 0;
        match (set, start) {
            (true, None) => start = Some(page),
            (false, Some(s)) => {
                out.push((s, page - s));
                start = None;
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::runs;

    #[test]
    fn runs_of_pages() {
        assert_eq!(runs(&[]), vec![]);
        assert_eq!(runs(&[0, 0]), vec![]);
        assert_eq!(runs(&[0b1011]), vec![(0, 2), (3, 1)]);
        // A run across a word boundary, and one to the very end.
        assert_eq!(runs(&[1 << 63, 1, 1 << 63]), vec![(63, 2), (191, 1)]);
        assert_eq!(runs(&[u64::MAX]), vec![(0, 64)]);
    }
}
