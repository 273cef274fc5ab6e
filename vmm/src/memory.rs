//! Guest RAM: anonymous host mappings placed around the 32-bit MMIO gap.

use crate::x86_64::layout::{MMIO_GAP_END, MMIO_GAP_START};
use vm_memory::{GuestAddress, GuestMemoryMmap};

pub type GuestMemory = GuestMemoryMmap<()>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("guest memory of {0} MiB is too small (at least {1} MiB)")]
    TooSmall(u64, u64),
    #[error("guest memory of {0} MiB is more than this host has ({1} MiB)")]
    TooLarge(u64, u64),
    #[error("cannot map {0} MiB of guest memory: {1}")]
    Map(u64, vm_memory::mmap::FromRangesError),
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
/// them, so a 128 MiB guest costs what it uses.
pub fn create(mib: u64) -> Result<GuestMemory, Error> {
    if mib < MIN_MEM_MIB {
        return Err(Error::TooSmall(mib, MIN_MEM_MIB));
    }
    if let Some(host) = host_mem_mib() {
        if mib > host {
            return Err(Error::TooLarge(mib, host));
        }
    }
    GuestMemoryMmap::from_ranges(&ram_ranges(mib << 20)).map_err(|e| Error::Map(mib, e))
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
        assert!(matches!(create(1), Err(Error::TooSmall(1, _))));
        assert!(matches!(create(1 << 40), Err(Error::TooLarge(..))));
        assert!(create(32).is_ok());
    }
}
