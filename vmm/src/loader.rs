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
use vm_memory::{GuestAddress, GuestMemoryBackend};

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

/// The end of the highest PT_LOAD segment of an ELF64 file, read straight
/// from the headers: linux-loader reports a segment past the end of guest
/// memory as a read error, and the user deserves to hear "too big".
fn elf_load_end(file: &mut File) -> Option<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let mut eh = [0u8; 64];
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_exact(&mut eh).ok()?;
    if &eh[..4] != b"\x7fELF" {
        return None;
    }
    let u16_at = |b: &[u8], o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u64_at = |b: &[u8], o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
    let (phoff, phentsize, phnum) = (u64_at(&eh, 32), u16_at(&eh, 54), u16_at(&eh, 56));
    if phentsize < 56 {
        return None;
    }
    let mut end = 0u64;
    for i in 0..u64::from(phnum) {
        let mut ph = [0u8; 56];
        file.seek(SeekFrom::Start(
            phoff.checked_add(i * u64::from(phentsize))?,
        ))
        .ok()?;
        file.read_exact(&mut ph).ok()?;
        if u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]) == 1 {
            end = end.max(u64_at(&ph, 24).saturating_add(u64_at(&ph, 40)));
        }
    }
    Some(end)
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
            let mem_end = mem.last_addr().0 + 1;
            if let Some(end) = elf_load_end(&mut file).filter(|&end| end > mem_end) {
                return Err(Error::TooBig(
                    name,
                    format!(
                        "it loads up to {} MiB, the guest has {} MiB",
                        end.div_ceil(1 << 20),
                        mem_end >> 20
                    ),
                ));
            }
            // Report the ELF error for ELF files: it is the precise one.
            let e = elf_err.unwrap_or(bz_err);
            Err(Error::NotAKernel(name, e.to_string()))
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
