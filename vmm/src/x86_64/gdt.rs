//! The boot GDT and the KVM segment registers that mirror it.
//!
//! KVM takes segment registers with their hidden parts already loaded, so
//! the guest never reads this table before it installs its own; we still put
//! it in guest memory so the registers and memory agree (a guest that
//! reloads a selector gets the same segment).

use kvm_bindings::kvm_segment;

/// Access byte + flags nibble of each boot descriptor, as the CPU packs them
/// (`flags << 12 | access`). Index = selector / 8.
pub const NULL: u16 = 0;
pub const CODE64: u16 = 0xa09b; // G, L, present, code exec/read accessed
pub const CODE32: u16 = 0xc09b; // G, D/B (32-bit), present, code
pub const DATA: u16 = 0xc093; // G, D/B, present, data read/write accessed
pub const TSS: u16 = 0x808b; // G, present, busy 64-bit TSS

pub const CODE64_SEL: usize = 1;
pub const CODE32_SEL: usize = 2;
pub const DATA_SEL: usize = 3;
pub const TSS_SEL: usize = 4;

/// The table: flat 4 GiB segments (limit 0xfffff pages).
pub const TABLE: [(u16, u32, u32); 5] = [
    (NULL, 0, 0),
    (CODE64, 0, 0xfffff),
    (CODE32, 0, 0xfffff),
    (DATA, 0, 0xfffff),
    (TSS, 0, 0xfffff),
];

/// Packs a descriptor: base and limit are scattered across the 8 bytes.
pub fn encode(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (u64::from(flags), u64::from(base), u64::from(limit));
    (limit & 0xffff)
        | ((base & 0xff_ffff) << 16)
        | ((flags & 0xff) << 40)
        | (((limit >> 16) & 0xf) << 48)
        | (((flags >> 12) & 0xf) << 52)
        | (((base >> 24) & 0xff) << 56)
}

/// The KVM view of table entry `index`.
pub fn segment(index: usize) -> kvm_segment {
    let (flags, base, limit) = TABLE[index];
    let bit = |n: u16| ((flags >> n) & 1) as u8;
    let granular = bit(15) == 1;
    let present = bit(7);
    kvm_segment {
        base: u64::from(base),
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: (index * 8) as u16,
        type_: (flags & 0xf) as u8,
        present,
        dpl: ((flags >> 5) & 3) as u8,
        db: bit(14),
        s: bit(4),
        l: bit(13),
        g: bit(15),
        avl: bit(12),
        unusable: u8::from(present == 0),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_the_well_known_flat_descriptors() {
        assert_eq!(encode(CODE64, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(encode(DATA, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(encode(0x93, 0x1234_5678, 0xabcde), 0x120a_9334_5678_bcde);
    }

    #[test]
    fn segments_match_the_table() {
        let cs = segment(CODE64_SEL);
        assert_eq!((cs.selector, cs.l, cs.db, cs.type_), (8, 1, 0, 0xb));
        assert_eq!(cs.limit, 0xffff_ffff);
        let cs32 = segment(CODE32_SEL);
        assert_eq!((cs32.l, cs32.db), (0, 1));
        assert_eq!(segment(0).unusable, 1);
    }
}
