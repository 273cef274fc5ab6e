//! The boot information a kernel reads first: where its RAM is and where its
//! command line is. PVH wants an `hvm_start_info` + memory map; the Linux
//! boot protocol wants a zero page with an e820 table.

use super::layout::{
    CMDLINE_START, EBDA_START, HIMEM_START, MMIO_GAP_END, MMIO_GAP_START, PVH_INFO_START,
    PVH_MEMMAP_START, ZERO_PAGE_START,
};
use crate::memory::GuestMemory;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{hvm_memmap_table_entry, hvm_start_info};
use vm_memory::{GuestAddress, GuestMemoryBackend};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x100_0000;

#[derive(Debug, thiserror::Error)]
#[error("writing the boot parameters: {0}")]
pub struct Error(#[from] linux_loader::configurator::Error);

/// (start, size, type) of every range the guest should know about.
pub fn memory_map(mem: &GuestMemory) -> Vec<(u64, u64, u32)> {
    let end = mem.last_addr().0 + 1;
    let low_end = end.min(MMIO_GAP_START);
    let mut map = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
        (HIMEM_START, low_end - HIMEM_START, E820_RAM),
    ];
    if end > MMIO_GAP_END {
        map.push((MMIO_GAP_END, end - MMIO_GAP_END, E820_RAM));
    }
    map
}

pub fn write_pvh(mem: &GuestMemory) -> Result<(), Error> {
    let memmap: Vec<hvm_memmap_table_entry> = memory_map(mem)
        .into_iter()
        .map(|(addr, size, type_)| hvm_memmap_table_entry {
            addr,
            size,
            type_,
            reserved: 0,
        })
        .collect();
    let info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&info, GuestAddress(PVH_INFO_START));
    params.set_sections(&memmap, GuestAddress(PVH_MEMMAP_START));
    PvhBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)?;
    Ok(())
}

pub fn write_zero_page(
    mem: &GuestMemory,
    header: Option<setup_header>,
    cmdline_len: usize,
) -> Result<(), Error> {
    let mut zp = boot_params::default();
    if let Some(h) = header {
        zp.hdr = h;
    }
    zp.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    zp.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    zp.hdr.header = KERNEL_HDR_MAGIC;
    zp.hdr.cmd_line_ptr = CMDLINE_START as u32;
    zp.hdr.cmdline_size = cmdline_len as u32;
    zp.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    let map = memory_map(mem);
    for (slot, &(addr, size, type_)) in zp.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry {
            addr,
            size,
            r#type: type_,
        };
    }
    zp.e820_entries = map.len() as u8;
    let params = BootParams::new(&zp, GuestAddress(ZERO_PAGE_START));
    LinuxBootConfigurator::write_bootparams::<GuestMemory>(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_skips_the_ebda_and_the_gap() {
        let mem = crate::memory::create(128, false).unwrap();
        let m = memory_map(&mem);
        assert_eq!(m[0], (0, EBDA_START, E820_RAM));
        assert_eq!(m[2], (HIMEM_START, (128 << 20) - HIMEM_START, E820_RAM));
        assert_eq!(m.len(), 3);
    }
}
