//! Puts the kernel and its command line into guest memory and says how to
//! enter it: PVH when the ELF carries the note, else the 64-bit Linux boot
//! protocol (ELF without the note, or bzImage).

use crate::memory::GuestMemory;
use crate::x86_64::layout::{CMDLINE_MAX_SIZE, CMDLINE_START, HIMEM_START};
use crate::x86_64::regs::EntryMode;
use linux_loader::loader::bootparam::setup_header;
use linux_loader::loader::bzimage::BzImage;
use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{self, Cmdline, KernelLoader};
use std::fs::File;
use std::path::Path;
use vm_memory::GuestAddress;

/// The 64-bit entry point sits 0x200 bytes into a bzImage's protected-mode
/// code (Documentation/x86/boot.rst).
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot open the kernel {0}: {1}")]
    Open(String, std::io::Error),
    #[error("the kernel {0} is neither an x86-64 ELF (vmlinux) nor a bzImage: {1}")]
    NotAKernel(String, String),
    #[error("the kernel {0} does not fit in guest memory: {1}")]
    TooBig(String, String),
    #[error("the kernel command line is {0} bytes; at most {max} fit", max = CMDLINE_MAX_SIZE - 1)]
    CmdlineTooLong(usize),
    #[error("invalid kernel command line: {0}")]
    Cmdline(String),
}

/// Where and how to enter the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub addr: u64,
    pub mode: EntryMode,
    /// The bzImage's setup header, for the zero page.
    pub setup_header: Option<setup_header>,
}

fn is_out_of_memory(e: &loader::Error) -> bool {
    let text = e.to_string().to_lowercase();
    text.contains("memory") || text.contains("past") || text.contains("overflow")
}

/// Loads `path` into `mem`.
pub fn load_kernel(mem: &GuestMemory, path: &Path) -> Result<Entry, Error> {
    let name = path.display().to_string();
    let mut file = File::open(path).map_err(|e| Error::Open(name.clone(), e))?;
    let highmem = Some(GuestAddress(HIMEM_START));
    let elf_err = match Elf::load(mem, None, &mut file, highmem) {
        Ok(r) => {
            let (addr, mode) = match r.pvh_boot_cap {
                PvhBootCapability::PvhEntryPresent(a) => (a.0, EntryMode::Pvh),
                _ => (r.kernel_load.0, EntryMode::Long),
            };
            return Ok(Entry {
                addr,
                mode,
                setup_header: None,
            });
        }
        Err(loader::Error::Elf(linux_loader::loader::elf::Error::InvalidElfMagicNumber)) => None,
        Err(e) => Some(e),
    };
    match BzImage::load(mem, None, &mut file, highmem) {
        Ok(r) => Ok(Entry {
            addr: r.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET,
            mode: EntryMode::Long,
            setup_header: r.setup_header,
        }),
        Err(bz_err) => {
            // Report the ELF error for ELF files: it is the precise one.
            let e = elf_err.unwrap_or(bz_err);
            if is_out_of_memory(&e) {
                Err(Error::TooBig(name, e.to_string()))
            } else {
                Err(Error::NotAKernel(name, e.to_string()))
            }
        }
    }
}

/// Writes the command line; returns its length in bytes (without the NUL).
pub fn load_cmdline(mem: &GuestMemory, line: &str) -> Result<usize, Error> {
    if line.len() >= CMDLINE_MAX_SIZE {
        return Err(Error::CmdlineTooLong(line.len()));
    }
    let mut c = Cmdline::new(CMDLINE_MAX_SIZE).map_err(|e| Error::Cmdline(e.to_string()))?;
    c.insert_str(line)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), &c)
        .map_err(|e| Error::Cmdline(e.to_string()))?;
    Ok(line.len())
}
