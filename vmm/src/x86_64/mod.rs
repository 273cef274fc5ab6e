//! Everything x86-specific about booting a guest.

pub mod boot;
pub mod cpuid;
pub mod gdt;
pub mod irqchip;
pub mod lapic;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod paging;
pub mod regs;
