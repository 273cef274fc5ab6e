//! Initial vCPU state for the two entry protocols.
//!
//! - PVH: 32-bit protected mode, paging off, %ebx = the start info
//!   (xenbits.xen.org/docs/unstable/misc/pvh.html).
//! - Linux 64-bit boot protocol: long mode with an identity map of the first
//!   GiB, %rsi = the zero page (Documentation/x86/boot.rst, "64-bit boot").

use super::gdt;
use super::layout::{
    BOOT_STACK_POINTER, GDT_START, IDT_START, PDE_START, PDPTE_START, PML4_START, PVH_INFO_START,
    ZERO_PAGE_START,
};
use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress};

use crate::memory::GuestMemory;

const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryMode {
    /// 32-bit PVH entry.
    Pvh,
    /// 64-bit Linux boot protocol entry.
    Long,
}

#[derive(Debug, thiserror::Error)]
#[error("writing the boot tables to guest memory: {0}")]
pub struct Error(#[from] vm_memory::GuestMemoryError);

/// Writes the GDT, an empty IDT and (for long mode) the identity page tables.
pub fn write_tables(mem: &GuestMemory, mode: EntryMode) -> Result<(), Error> {
    for (i, &(flags, base, limit)) in gdt::TABLE.iter().enumerate() {
        mem.write_obj(
            gdt::encode(flags, base, limit),
            GuestAddress(GDT_START + 8 * i as u64),
        )?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))?;
    if mode == EntryMode::Long {
        mem.write_obj(PDPTE_START | 0x3, GuestAddress(PML4_START))?;
        mem.write_obj(PDE_START | 0x3, GuestAddress(PDPTE_START))?;
        // 512 present, writable, 2 MiB pages: the first GiB, identity mapped.
        for i in 0..512u64 {
            mem.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
        }
    }
    Ok(())
}

/// Segment and control registers for `mode`, on top of what KVM reports.
pub fn sregs(mut s: kvm_sregs, mode: EntryMode) -> kvm_sregs {
    let (code, data) = match mode {
        EntryMode::Pvh => (gdt::CODE32_SEL, gdt::DATA_SEL),
        EntryMode::Long => (gdt::CODE64_SEL, gdt::DATA_SEL),
    };
    s.cs = gdt::segment(code);
    let d = gdt::segment(data);
    (s.ds, s.es, s.fs, s.gs, s.ss) = (d, d, d, d, d);
    s.tr = gdt::segment(gdt::TSS_SEL);
    s.gdt.base = GDT_START;
    s.gdt.limit = (gdt::TABLE.len() * 8 - 1) as u16;
    s.idt.base = IDT_START;
    s.idt.limit = 7;
    match mode {
        EntryMode::Pvh => {
            s.cr0 = X86_CR0_PE | X86_CR0_ET;
            s.cr4 = 0;
            s.efer = 0;
        }
        EntryMode::Long => {
            s.cr0 = X86_CR0_PE | X86_CR0_ET | X86_CR0_PG;
            s.cr3 = PML4_START;
            s.cr4 = X86_CR4_PAE;
            s.efer = EFER_LME | EFER_LMA;
        }
    }
    s
}

/// General registers for the boot vCPU.
pub fn regs(entry: u64, mode: EntryMode) -> kvm_regs {
    let mut r = kvm_regs {
        rflags: 0x2, // bit 1 is reserved and must be set
        rip: entry,
        ..Default::default()
    };
    match mode {
        EntryMode::Pvh => r.rbx = PVH_INFO_START,
        EntryMode::Long => {
            r.rsp = BOOT_STACK_POINTER;
            r.rbp = BOOT_STACK_POINTER;
            r.rsi = ZERO_PAGE_START;
        }
    }
    r
}

/// x87 and SSE control words as after FNINIT / reset.
pub fn fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_has_paging_and_identity_map() {
        let mem = GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        write_tables(&mem, EntryMode::Long).unwrap();
        let pde: u64 = mem.read_obj(GuestAddress(PDE_START + 8 * 3)).unwrap();
        assert_eq!(pde, (3 << 21) | 0x83);
        let s = sregs(kvm_sregs::default(), EntryMode::Long);
        assert_eq!(s.cr3, PML4_START);
        assert_ne!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!(s.cs.l, 1);
    }

    #[test]
    fn pvh_is_flat_protected_mode_without_paging() {
        let s = sregs(kvm_sregs::default(), EntryMode::Pvh);
        assert_eq!(s.cr0 & X86_CR0_PG, 0);
        assert_eq!((s.cs.db, s.cs.l), (1, 0));
        assert_eq!(regs(0x100_0000, EntryMode::Pvh).rbx, PVH_INFO_START);
    }
}
