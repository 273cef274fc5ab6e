//! Guest RAM: host mappings placed around the 32-bit MMIO gap, each at a
//! 2 MiB-aligned host address.
//!
//! KVM backs guest memory with a huge page only where the host page is huge
//! and host and guest addresses agree modulo 2 MiB. Linux before 6.7 puts a
//! large anonymous mapping wherever it fits, so an unaligned region costs
//! one nested page fault per 4 KiB page the guest touches: measured in the
//! testbed, 5,700 extra exits (430 ms) in a Linux boot. Whether the host
//! hands out huge pages at all stays the host's policy
//! (`/sys/kernel/mm/transparent_hugepage/enabled`), as for Firecracker:
//! asking for them here (MADV_HUGEPAGE) would back even an idle 128 MiB
//! guest in 2 MiB steps.

use std::io;

use crate::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
use husk_devices::virtio::ram::{OwnedMapping, RamBitmap};
use vm_memory::mmap::{GuestRegionMmap, MmapRegionBuilder};
use vm_memory::{FileOffset, GuestAddress};

/// The devices' guest memory type (with its dirty-page bitmap).
pub type GuestMemory = husk_devices::virtio::GuestMemoryMmap;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory of {0} MiB is too small (at least {1} MiB)")]
    TooSmall(u64, u64),
    #[error("guest memory of {0} MiB is more than this host has ({1} MiB)")]
    TooLarge(u64, u64),
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Map(u64, io::Error),
    #[error("cannot create a memfd for {0} MiB of shared guest memory: {1}")]
    Memfd(u64, std::io::Error),
}

/// Below this the guest kernel cannot even decompress itself.
pub const MIN_MEM_MIB: u64 = 16;

/// The RAM ranges for `size` bytes: one below the gap, the rest above 4 GiB.
pub fn ram_ranges(size: u64) -> Vec<(GuestAddress, usize)> {
    if size <= MMIO_GAP_START {
        vec![(GuestAddress(0), size as usize)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START as usize),
            (GuestAddress(MMIO_GAP_END), (size - MMIO_GAP_START) as usize),
        ]
    }
}

fn host_mem_mib() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib / 1024)
}

/// Maps `mib` MiB of guest RAM. Pages are only backed when the guest touches
/// them, so a 128 MiB guest costs what it uses. With `shared`, RAM is a
/// memfd mapped shared, so a vhost-user backend (virtiofsd) can map the
/// same pages from the fd it is handed.
pub fn create(mib: u64, shared: bool) -> Result<GuestMemory, Error> {
    if mib < MIN_MEM_MIB {
        return Err(Error::TooSmall(mib, MIN_MEM_MIB));
    }
    if let Some(host) = host_mem_mib() {
        if mib > host {
            return Err(Error::TooLarge(mib, host));
        }
    }
    let file = if shared {
        Some(std::sync::Arc::new(
            memfd(mib << 20).map_err(|e| Error::Memfd(mib, e))?,
        ))
    } else {
        None
    };
    // Shared RAM is what a vhost-user backend maps too; private RAM is the
    // VMM's alone.
    let flags = libc::MAP_NORESERVE
        | if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
        };
    let mut offset = 0u64;
    let regions = ram_ranges(mib << 20)
        .into_iter()
        .map(|(addr, len)| {
            let at = file
                .as_ref()
                .map(|f| FileOffset::from_arc(f.clone(), offset));
            offset += len as u64;
            region(addr, len, flags, at)
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(|e| Error::Map(mib, e))?;
    GuestMemory::from_regions(regions).map_err(|e| Error::Map(mib, io::Error::other(e)))
}

/// A guest RAM region of `len` bytes at guest address `addr`, mapped
/// read-write with `flags` (anonymous, or `file` at its offset) at a 2 MiB-
/// aligned host address; the region owns the mapping.
pub fn region(
    addr: GuestAddress,
    len: usize,
    flags: i32,
    file: Option<FileOffset>,
) -> io::Result<GuestRegionMmap<RamBitmap>> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    let mapping = map_aligned(len, prot, flags, file.as_ref())?;
    let ptr = mapping.as_ptr();
    let mut builder = MmapRegionBuilder::new_with_bitmap(len, RamBitmap::owning(mapping))
        .with_mmap_prot(prot)
        .with_mmap_flags(flags);
    if let Some(file) = file {
        builder = builder.with_file_offset(file);
    }
    // SAFETY: `ptr..ptr + len` is the mapping the bitmap now owns, so it
    // stays mapped as long as the region.
    let region = unsafe { builder.with_raw_mmap_pointer(ptr) }
        .build()
        .map_err(io::Error::other)?;
    GuestRegionMmap::new(region, addr)
        .ok_or_else(|| io::Error::other(format!("the region at {:#x} wraps around", addr.0)))
}

const HUGE_PAGE: usize = 2 << 20;

/// Maps `len` bytes at a 2 MiB-aligned address: reserves `len` + 2 MiB of
/// address space, maps over its aligned part, and gives back the rest.
fn map_aligned(
    len: usize,
    prot: i32,
    flags: i32,
    file: Option<&FileOffset>,
) -> io::Result<OwnedMapping> {
    use std::os::fd::AsRawFd;
    let span = len
        .checked_add(HUGE_PAGE)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOMEM))?;
    // SAFETY: a new inaccessible anonymous mapping at an address the kernel
    // picks; nothing else refers to it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let start = base as usize;
    let aligned = start.next_multiple_of(HUGE_PAGE);
    let (fd, offset) = file.map_or((-1, 0), |f| (f.file().as_raw_fd(), f.start()));
    // SAFETY: `aligned..aligned + len` lies inside the reservation just
    // made, which is ours alone, so MAP_FIXED replaces nothing else.
    let got = unsafe {
        libc::mmap(
            aligned as *mut libc::c_void,
            len,
            prot,
            flags | libc::MAP_FIXED,
            fd,
            offset as libc::off_t,
        )
    };
    let failed = (got == libc::MAP_FAILED).then(io::Error::last_os_error);
    // SAFETY: the head and tail are the reservation's unused ends (the
    // whole reservation if the mapping failed); nothing refers to them.
    unsafe {
        if let Some(e) = failed {
            libc::munmap(base, span);
            return Err(e);
        }
        if aligned > start {
            libc::munmap(base, aligned - start);
        }
        let tail = aligned + len;
        if start + span > tail {
            libc::munmap(tail as *mut libc::c_void, start + span - tail);
        }
    }
    // SAFETY: `aligned..aligned + len` is the mapping made above, and only
    // the returned owner unmaps it.
    Ok(unsafe { OwnedMapping::adopt(aligned as *mut u8, len) })
}

/// An anonymous memory file of `bytes` (sparse: pages come when touched).
pub(crate) fn memfd(bytes: u64) -> std::io::Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: the name is a NUL-terminated literal; memfd_create only reads
    // it and returns a new descriptor or -1.
    let fd = unsafe { libc::memfd_create(c"husk-guest-ram".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a new descriptor that nothing else owns.
    let file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.set_len(bytes)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_guests_get_one_range_large_ones_skip_the_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(GuestAddress(0), 128 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r[0], (GuestAddress(0), MMIO_GAP_START as usize));
        assert_eq!(r[1], (GuestAddress(MMIO_GAP_END), (1 << 30) as usize));
    }

    #[test]
    fn sizes_are_checked() {
        assert!(matches!(create(1, false), Err(Error::TooSmall(1, _))));
        assert!(matches!(create(1 << 40, false), Err(Error::TooLarge(..))));
        assert!(create(32, false).is_ok());
    }

    /// Every region starts on a 2 MiB host boundary, so KVM can back it
    /// with huge pages wherever the host gives them.
    #[test]
    fn ram_is_mapped_at_huge_page_aligned_host_addresses() {
        use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
        for shared in [false, true] {
            let mem = create(130, shared).unwrap();
            for r in mem.iter() {
                let host = r.get_host_address(MemoryRegionAddress(0)).unwrap() as usize;
                assert_eq!(host % HUGE_PAGE, 0, "shared={shared}: {host:#x}");
            }
        }
    }

    /// Shared RAM is one memfd, each region at its own offset, so a
    /// vhost-user backend can map what the guest sees.
    #[test]
    fn shared_memory_is_file_backed_at_distinct_offsets() {
        use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};
        let mem = create(32, true).unwrap();
        let r = mem.iter().next().unwrap();
        let f = r.file_offset().expect("a file-backed region");
        assert_eq!(f.start(), 0);
        assert_eq!(f.file().metadata().unwrap().len(), 32 << 20);
        mem.write_obj(0xabcd_u32, GuestAddress(4096)).unwrap();
        // The same bytes through the file, as the backend would see them.
        let mut buf = [0u8; 4];
        std::os::unix::fs::FileExt::read_exact_at(f.file(), &mut buf, 4096).unwrap();
        assert_eq!(u32::from_le_bytes(buf), 0xabcd);
    }
}
