//! The per-region state guest RAM carries besides its bytes: the devices'
//! dirty-page bitmap, and the mapping when the VMM placed it itself.
//!
//! The VMM maps guest RAM at a 2 MiB-aligned host address so KVM can back
//! it with huge pages (it does only where host and guest addresses agree
//! modulo 2 MiB; an unaligned mapping costs one nested page fault per 4 KiB
//! the guest touches). vm-memory's region builder takes no address, so such
//! a region is built over a mapping it does not own, and vm-memory offers
//! no other hook than the bitmap to tie a lifetime to a region: the bitmap
//! holds the mapping, and the mapping goes when the last region holding it
//! does, never while a device or vCPU can still reach it.

use std::sync::Arc;

use vm_memory::bitmap::{AtomicBitmap, Bitmap, NewBitmap, WithBitmapSlice};

/// A host mapping that is unmapped when dropped.
#[derive(Debug)]
pub struct OwnedMapping {
    addr: usize,
    len: usize,
}

impl OwnedMapping {
    /// Takes ownership of `len` bytes mapped at `addr`.
    ///
    /// # Safety
    ///
    /// `addr..addr + len` must be a mapping of this process that nothing
    /// else unmaps, and nothing may use it after this value is dropped.
    pub unsafe fn adopt(addr: *mut u8, len: usize) -> Self {
        Self {
            addr: addr as usize,
            len,
        }
    }

    pub fn as_ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for OwnedMapping {
    fn drop(&mut self) {
        // SAFETY: `adopt`'s contract: the range is this value's alone, and
        // its last user (the region whose bitmap holds it) is gone.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, self.len) };
    }
}

/// A guest RAM region's bitmap: the dirty pages devices wrote, and the
/// region's mapping when vm-memory does not own it.
#[derive(Clone, Debug, Default)]
pub struct RamBitmap {
    dirty: AtomicBitmap,
    /// Held only to be dropped with the region.
    _mapping: Option<Arc<OwnedMapping>>,
}

impl RamBitmap {
    /// A bitmap for a region over `mapping`, which lives as long as it.
    pub fn owning(mapping: OwnedMapping) -> Self {
        Self {
            dirty: AtomicBitmap::with_len(mapping.len()),
            _mapping: Some(Arc::new(mapping)),
        }
    }

    /// The pages devices wrote since the last call, as bit words; cleared.
    pub fn take_dirty(&self) -> Vec<u64> {
        self.dirty.get_and_reset()
    }
}

impl<'a> WithBitmapSlice<'a> for RamBitmap {
    type S = <AtomicBitmap as WithBitmapSlice<'a>>::S;
}

impl Bitmap for RamBitmap {
    fn mark_dirty(&self, offset: usize, len: usize) {
        self.dirty.mark_dirty(offset, len)
    }

    fn dirty_at(&self, offset: usize) -> bool {
        self.dirty.dirty_at(offset)
    }

    fn slice_at(&self, offset: usize) -> <Self as WithBitmapSlice<'_>>::S {
        self.dirty.slice_at(offset)
    }
}

impl NewBitmap for RamBitmap {
    fn with_len(len: usize) -> Self {
        Self {
            dirty: AtomicBitmap::with_len(len),
            _mapping: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    fn mapped(len: usize) -> *mut u8 {
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        p.cast()
    }

    /// The mapping outlives every clone of the memory and goes with the
    /// last one (watched through a weak count: whether the address is still
    /// mapped could be another test's mapping by then); device writes still
    /// reach the dirty bitmap.
    #[test]
    fn the_mapping_lives_exactly_as_long_as_its_regions() {
        let len = 1 << 20;
        let ptr = mapped(len);
        // SAFETY: the mapping was made above and is handed over whole.
        let owner = unsafe { OwnedMapping::adopt(ptr, len) };
        let bitmap = RamBitmap::owning(owner);
        let weak = Arc::downgrade(bitmap._mapping.as_ref().unwrap());
        // SAFETY: `ptr..ptr + len` is the mapping the bitmap now owns.
        let region = unsafe {
            MmapRegionBuilder::new_with_bitmap(len, bitmap)
                .with_raw_mmap_pointer(ptr)
                .build()
                .unwrap()
        };
        let mem =
            GuestMemoryMmap::from_regions(vec![
                GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
            ])
            .unwrap();
        let clone = mem.clone();
        drop(mem);
        clone.write_obj(7u32, GuestAddress(8192)).unwrap();
        assert!(weak.upgrade().is_some());
        let dirty = vm_memory::mmap::MmapRegion::bitmap(clone.iter().next().unwrap()).take_dirty();
        assert_eq!(dirty[0], 0b100);
        drop(clone);
        assert!(weak.upgrade().is_none());
    }
}
