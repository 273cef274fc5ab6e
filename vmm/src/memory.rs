//! Guest RAM: anonymous host mappings placed around the 32-bit MMIO gap.

use crate::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
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
    Map(u64, vm_memory::mmap::FromRangesError),
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
    if !shared {
        return GuestMemory::from_ranges(&ram_ranges(mib << 20)).map_err(|e| Error::Map(mib, e));
    }
    let file = memfd(mib << 20).map_err(|e| Error::Memfd(mib, e))?;
    let file = std::sync::Arc::new(file);
    let mut offset = 0u64;
    let ranges: Vec<_> = ram_ranges(mib << 20)
        .into_iter()
        .map(|(addr, len)| {
            let at = FileOffset::from_arc(file.clone(), offset);
            offset += len as u64;
            (addr, len, Some(at))
        })
        .collect();
    GuestMemory::from_ranges_with_files(&ranges).map_err(|e| Error::Map(mib, e))
}

/// An anonymous memory file of `bytes` (sparse: pages come when touched).
fn memfd(bytes: u64) -> std::io::Result<std::fs::File> {
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
