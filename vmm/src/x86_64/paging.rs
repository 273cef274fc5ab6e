//! Reading the guest through its own page tables, for reports on a stuck
//! guest: where its code and stack are in guest memory.

use vm_memory::{Bytes, GuestAddress, GuestMemory};

const PRESENT: u64 = 1;
const HUGE: u64 = 1 << 7;
/// Bits 51:12 of an entry: the next table's or the page's address.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// The guest-physical address of `gva` under 4-level paging rooted at
/// `cr3`, or `None` where the walk finds no page (or leaves memory).
pub fn translate<M: GuestMemory>(mem: &M, cr3: u64, gva: u64) -> Option<GuestAddress> {
    let mut table = cr3 & ADDR_MASK;
    // Levels 4..1: index bits 47:39, 38:30, 29:21, 20:12.
    for level in (1..=4u32).rev() {
        let shift = 12 + 9 * (level - 1);
        let index = (gva >> shift) & 0x1ff;
        let entry: u64 = mem.read_obj(GuestAddress(table + index * 8)).ok()?;
        if entry & PRESENT == 0 {
            return None;
        }
        // A 1 GiB (level 3) or 2 MiB (level 2) page ends the walk.
        if level == 1 || (level <= 3 && entry & HUGE != 0) {
            let page_mask = (1u64 << shift) - 1;
            return Some(GuestAddress(
                (entry & ADDR_MASK & !page_mask) | (gva & page_mask),
            ));
        }
        table = entry & ADDR_MASK;
    }
    None
}

/// Up to `len` bytes at `gva`, stopping at the first unmapped byte.
pub fn read_virt<M: GuestMemory>(mem: &M, cr3: u64, gva: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    for i in 0..len as u64 {
        let Some(gpa) = translate(mem, cr3, gva.wrapping_add(i)) else {
            break;
        };
        let Ok(b) = mem.read_obj::<u8>(gpa) else {
            break;
        };
        out.push(b);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn walks_4k_and_2m_pages() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        let (pml4, pdpt, pd, pt) = (0x1000u64, 0x2000u64, 0x3000u64, 0x4000u64);
        let gva = 0xffff_ffff_8120_3456u64;
        let idx = |shift: u32| (gva >> shift) & 0x1ff;
        let w = |at: u64, v: u64| mem.write_obj(v, GuestAddress(at)).unwrap();
        w(pml4 + idx(39) * 8, pdpt | PRESENT);
        w(pdpt + idx(30) * 8, pd | PRESENT);
        w(pd + idx(21) * 8, pt | PRESENT);
        w(pt + idx(12) * 8, 0x0050_0000 | PRESENT);
        assert_eq!(translate(&mem, pml4, gva), Some(GuestAddress(0x0050_0456)));
        mem.write_slice(b"\x0f\x0b", GuestAddress(0x0050_0456))
            .unwrap();
        assert_eq!(read_virt(&mem, pml4, gva, 2), b"\x0f\x0b");
        // The same address through a 2 MiB page.
        w(pd + idx(21) * 8, 0x0060_0000 | PRESENT | HUGE);
        assert_eq!(translate(&mem, pml4, gva), Some(GuestAddress(0x0060_3456)));
        // Not present.
        w(pdpt + idx(30) * 8, 0);
        assert_eq!(translate(&mem, pml4, gva), None);
        assert!(read_virt(&mem, pml4, gva, 4).is_empty());
    }
}
