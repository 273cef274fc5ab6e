//! Where things live in guest physical memory. One table so the loader,
//! the boot structures and the device manager cannot disagree.

/// Global descriptor table (boot segments).
pub const GDT_START: u64 = 0x500;
/// An empty interrupt descriptor table, so early faults triple-fault (reset)
/// instead of jumping through garbage.
pub const IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, handed to the kernel in %ebx.
pub const PVH_INFO_START: u64 = 0x6000;
/// The PVH memory map follows the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// The Linux boot protocol's zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Boot stack for the 64-bit entry (grows down from here).
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry: PML4, PDPT, one PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line (the x86 kernel reads at most 2048 bytes).
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Start of the extended BIOS data area; the MP table goes here and the
/// memory map marks it reserved.
pub const EBDA_START: u64 = 0x9fc00;
/// First byte of memory above the legacy hole; kernels load at or above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// The 32-bit hole for device MMIO: guest RAM never lives in
/// [MMIO_GAP_START, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// virtio-mmio devices, one 4 KiB window each, from here.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
pub const VIRTIO_MMIO_SIZE: u64 = 0x1000;
/// The IOAPIC's first free pin: 0-4 are taken by the PIT, keyboard, cascade
/// and COM1 (IRQ 4).
pub const FIRST_DEVICE_IRQ: u32 = 5;
pub const SERIAL_IRQ: u32 = 4;
pub const KEYBOARD_IRQ: u32 = 1;
/// The IOAPIC has 24 pins.
pub const LAST_DEVICE_IRQ: u32 = 23;
