//! Guest memory in a snapshot: a raw file, region after region, written
//! sparse (pages of zeros are holes), and mapped back private so a
//! restored guest reads pages from the file as it touches them and its
//! writes stay its own (Firecracker's `File` backend).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

use crate::memory::GuestMemory;

const PAGE: usize = 4096;

/// Writes every region of `mem` to `path` in order; returns the regions
/// as (guest address, length).
pub fn dump(mem: &GuestMemory, path: &Path) -> std::io::Result<Vec<(u64, u64)>> {
    dump_to(mem, &File::create(path)?)
}

/// [`dump`] into an open file, from its start (whatever it held is cut).
pub fn dump_to(mem: &GuestMemory, file: &File) -> std::io::Result<Vec<(u64, u64)>> {
    file.set_len(0)?;
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len();
        // SAFETY: the region is a live mapping of `len` bytes owned by
        // `mem`, borrowed for this loop; the vCPUs are paused, so nothing
        // writes it while it is read.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len as usize) };
        write_sparse(file, bytes, offset)?;
        ranges.push((region.start_addr().0, len));
        offset += len;
    }
    file.set_len(offset)?;
    file.sync_all()?;
    Ok(ranges)
}

/// Writes the pages `dirty` marks (per region, [`super::dirty::take`]) at
/// their places in `path`, and nothing else: every other byte of an
/// existing memory file stays, so a Diff written onto the memory file of
/// the snapshot before it makes that file the memory of now; a new file
/// has holes there (merge it onto its base with `husk snapshot merge`).
pub fn dump_diff(
    mem: &GuestMemory,
    dirty: &[super::dirty::PageBits],
    path: &Path,
) -> std::io::Result<Vec<(u64, u64)>> {
    let total: u64 = mem.iter().map(|r| r.len()).sum();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    let have = file.metadata()?.len();
    if have != 0 && have != total {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("it has {have} bytes, not this VM's {total}: a Diff goes onto a memory file of the same VM, or a new one"),
        ));
    }
    file.set_len(total)?;
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for (region, bits) in mem.iter().zip(dirty) {
        let len = region.len();
        // SAFETY: as in `dump`: a live mapping of `len` bytes, read while
        // the vCPUs are paused.
        let bytes = unsafe { std::slice::from_raw_parts(region.as_ptr(), len as usize) };
        for (first, count) in super::dirty::runs(bits) {
            let start = (first * PAGE).min(bytes.len());
            let end = ((first + count) * PAGE).min(bytes.len());
            file.write_all_at(&bytes[start..end], offset + start as u64)?;
        }
        ranges.push((region.start_addr().0, len));
        offset += len;
    }
    file.sync_all()?;
    Ok(ranges)
}

/// Copies what a Diff's memory file `diff` holds (its data; its holes are
/// pages the Diff does not have) onto `base`, the memory file of the
/// snapshot it was taken after, which then is the Diff's full memory
/// (Firecracker's `snapshot-editor edit-memory rebase`). Returns the bytes
/// copied.
pub fn merge(diff: &Path, base: &Path) -> std::io::Result<u64> {
    let from = File::open(diff)?;
    let to = std::fs::OpenOptions::new().write(true).open(base)?;
    let (len, base_len) = (from.metadata()?.len(), to.metadata()?.len());
    if len != base_len {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the Diff has {len} bytes and the base {base_len}: they are not of one VM"),
        ));
    }
    let copied = copy_data(&from, &to, len)?;
    synced(&to, copied)
}

/// Copies the data of `from`'s first `len` bytes (not its holes) to the
/// same offsets of `to`; returns the bytes copied.
fn copy_data(from: &File, to: &File, len: u64) -> std::io::Result<u64> {
    let mut buf = vec![0u8; 1 << 20];
    let mut copied = 0u64;
    for (start, end) in data_runs(from, 0, len)? {
        let mut off = start;
        while off < end {
            let n = ((end - off) as usize).min(buf.len());
            from.read_exact_at(&mut buf[..n], off)?;
            to.write_all_at(&buf[..n], off)?;
            off += n as u64;
            copied += n as u64;
        }
    }
    Ok(copied)
}

/// The end of a merge: what was written is on disk.
fn synced(to: &File, copied: u64) -> std::io::Result<u64> {
    to.sync_all()?;
    Ok(copied)
}

/// Writes the non-zero pages of `bytes` at `base`, runs of them at once.
fn write_sparse(file: &File, bytes: &[u8], base: u64) -> std::io::Result<()> {
    let mut run: Option<usize> = None;
    for (i, page) in bytes.chunks(PAGE).enumerate() {
        let zero = page.iter().all(|&b| b == 0);
        match (zero, run) {
            (false, None) => run = Some(i),
            (true, Some(start)) => {
                file.write_all_at(&bytes[start * PAGE..i * PAGE], base + (start * PAGE) as u64)?;
                run = None;
            }
            _ => {}
        }
    }
    if let Some(start) = run {
        file.write_all_at(&bytes[start * PAGE..], base + (start * PAGE) as u64)?;
    }
    Ok(())
}

/// How a restored VM's memory comes from its memory file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backing {
    /// The file mapped private: pages load as the guest touches them and
    /// VMs restored from one file share its page cache, but the host maps
    /// a private file mapping in 4 KiB pages only, so each page the guest
    /// touches first is a nested page fault (Firecracker's `File`).
    #[default]
    Mapped,
    /// The file's data copied into anonymous memory at the start: it costs
    /// the copy and the pages, shared with nothing, but the host may back
    /// it with huge pages as it does a booted VM's.
    Copied,
    /// The memory file is a copy on hugetlbfs (`super::hugetlb`), mapped
    /// private as with `Mapped`, but in 2 MiB pages: one nested fault per
    /// 2 MiB touched, and a write copies 2 MiB. The mapping reserves its
    /// huge pages, so a shortage fails the restore, not a later write.
    Huge,
}

/// Maps a memory file as guest memory: see [`Backing`]. With `shared`
/// (whatever `backing` says), the file's data is copied into a memfd
/// mapped shared instead, which a vhost-user backend can map too (a
/// private mapping's writes stay in this process, where virtiofsd would
/// never see them).
pub fn map(
    path: &Path,
    ranges: &[(u64, u64)],
    shared: bool,
    backing: Backing,
) -> Result<GuestMemory, String> {
    let file = File::open(path).map_err(|e| format!("memory file {}: {e}", path.display()))?;
    let want: u64 = ranges.iter().map(|(_, len)| len).sum();
    let have = file
        .metadata()
        .map_err(|e| format!("memory file {}: {e}", path.display()))?
        .len();
    // A hugetlbfs file's size is whole huge pages.
    let fits = if backing == Backing::Huge {
        have == want.next_multiple_of(2 << 20)
    } else {
        have == want
    };
    if !fits {
        return Err(format!(
            "memory file {} has {have} bytes, the snapshot's guest has {want}",
            path.display()
        ));
    }
    // Where the regions' pages come from: the memory file itself, or, for
    // a copy, a memfd (shared, which virtiofsd maps) or anonymous memory.
    let file = Arc::new(file);
    let (source, flags) = match (shared, backing) {
        (true, _) => {
            let ram = crate::memory::memfd(want).map_err(|e| {
                format!("a memfd for {} MiB of shared guest memory: {e}", want >> 20)
            })?;
            (Some(Arc::new(ram)), libc::MAP_SHARED)
        }
        (false, Backing::Copied) => (None, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS),
        (false, Backing::Mapped) => (Some(file.clone()), libc::MAP_PRIVATE),
        (false, Backing::Huge) => {
            huge_aligned(ranges).map_err(|e| format!("memory file {}: {e}", path.display()))?;
            (Some(file.clone()), libc::MAP_PRIVATE)
        }
    };
    // A private hugetlbfs mapping without a reservation would meet a
    // shortage of huge pages as a SIGBUS at the guest's write.
    let reserve = if backing == Backing::Huge && !shared {
        0
    } else {
        libc::MAP_NORESERVE
    };
    let copy = shared || backing == Backing::Copied;
    let fail = |e: String| format!("memory file {}: {e}", path.display());
    let mut offset = 0u64;
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        let region = crate::memory::region(
            GuestAddress(addr),
            len as usize,
            flags | reserve,
            source
                .as_ref()
                .map(|f| FileOffset::from_arc(f.clone(), offset)),
        )
        .map_err(|e| match (reserve, e.raw_os_error()) {
            (0, Some(libc::ENOMEM)) => fail(format!(
                "too few free 2 MiB huge pages to map {} MiB of guest memory private \
                 (vm.nr_hugepages)",
                len >> 20
            )),
            _ => fail(format!("guest memory at {addr:#x}: {e}")),
        })?;
        if copy {
            fill(&region, &file, offset).map_err(|e| fail(format!("copying it: {e}")))?;
        }
        regions.push(region);
        offset += len;
    }
    GuestMemory::from_regions(regions).map_err(|e| format!("guest memory layout: {e}"))
}

/// Reads the data (not the holes) of `file` from `offset` on into the
/// fresh `region`, which starts there in the file.
fn fill(
    region: &vm_memory::mmap::GuestRegionMmap<husk_devices::virtio::ram::RamBitmap>,
    file: &File,
    offset: u64,
) -> std::io::Result<()> {
    let len = region.len();
    // SAFETY: the region is a fresh mapping of `len` bytes that nothing
    // else refers to yet.
    let bytes = unsafe { std::slice::from_raw_parts_mut(region.as_ptr(), len as usize) };
    for (start, end) in data_runs(file, offset, offset + len)? {
        let at = (start - offset) as usize..(end - offset) as usize;
        file.read_exact_at(&mut bytes[at], start)?;
    }
    Ok(())
}

/// Whether every region starts and ends on a 2 MiB boundary of the file,
/// as a hugetlbfs mapping must.
fn huge_aligned(ranges: &[(u64, u64)]) -> Result<(), String> {
    let huge = 2u64 << 20;
    match ranges.iter().find(|(_, len)| len % huge != 0) {
        Some((addr, len)) => Err(format!(
            "the guest memory at {addr:#x} ({len} bytes) is not whole 2 MiB pages"
        )),
        None => Ok(()),
    }
}

/// The runs of data (not holes) of `file` between `from` and `to`.
pub(super) fn data_runs(file: &File, from: u64, to: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use std::os::fd::AsRawFd;
    let mut runs = Vec::new();
    let mut at = from;
    while at < to {
        // SAFETY: lseek(2) on a descriptor we own; it moves only the file
        // offset, which nothing here uses (reads are positioned).
        let data = unsafe { libc::lseek(file.as_raw_fd(), at as i64, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENXIO) => Ok(runs),
                _ => Err(e),
            };
        }
        if data as u64 >= to {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(file.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let end = (hole as u64).min(to);
        runs.push((data as u64, end));
        at = end;
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    /// A 32 MiB guest with a word at the start and one at the end, dumped
    /// to `dir/mem`.
    fn dumped(dir: &Path) -> (std::path::PathBuf, Vec<(u64, u64)>) {
        let path = dir.join("mem");
        let mem = crate::memory::create(32, false).unwrap();
        mem.write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        mem.write_obj(0x1234_u16, GuestAddress((31 << 20) + 8))
            .unwrap();
        let ranges = dump(&mem, &path).unwrap();
        (path, ranges)
    }

    fn has_both_words(mem: &GuestMemory) {
        assert_eq!(
            mem.read_obj::<u32>(GuestAddress(0x1000)).unwrap(),
            0xdead_beef
        );
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress((31 << 20) + 8)).unwrap(),
            0x1234
        );
    }

    /// The little-endian word at `offset` of `file`.
    fn word_at(file: &File, offset: u64) -> u32 {
        let mut word = [0u8; 4];
        file.read_exact_at(&mut word, offset).unwrap();
        u32::from_le_bytes(word)
    }

    #[test]
    fn memory_round_trips_sparse_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ranges) = dumped(dir.path());
        assert_eq!(ranges, vec![(0, 32 << 20)]);
        // Two pages of data in a 32 MiB file.
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 32 << 20);
        use std::os::unix::fs::MetadataExt;
        assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks", meta.blocks());

        let back = map(&path, &ranges, false, Backing::Mapped).unwrap();
        has_both_words(&back);
        back.write_obj(1u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            word_at(&File::open(&path).unwrap(), 0x1000),
            0xdead_beef,
            "a private write reached the file"
        );
        assert!(map(&path, &[(0, 16 << 20)], false, Backing::Mapped)
            .unwrap_err()
            .contains("has 33554432 bytes"));
    }

    #[test]
    fn copied_memory_holds_the_data_and_is_no_mapping_of_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ranges) = dumped(dir.path());
        let back = map(&path, &ranges, false, Backing::Copied).unwrap();
        has_both_words(&back);
        let region = back.iter().next().unwrap();
        assert!(region.file_offset().is_none(), "anonymous memory");
        back.write_obj(9u32, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            word_at(&File::open(&path).unwrap(), 0x1000),
            0xdead_beef,
            "a write reached the memory file"
        );
    }

    #[test]
    fn shared_memory_is_a_copy_another_process_can_map() {
        let dir = tempfile::tempdir().unwrap();
        let (path, ranges) = dumped(dir.path());
        let back = map(&path, &ranges, true, Backing::Mapped).unwrap();
        has_both_words(&back);
        back.write_obj(7u32, GuestAddress(0x2000)).unwrap();
        // What a vhost-user backend maps: the region's fd, at its offset.
        let region = back.iter().next().unwrap();
        let at = region.file_offset().expect("shared memory has a file");
        assert_eq!(
            word_at(at.file(), at.start() + 0x2000),
            7,
            "the write is not in the fd"
        );
        assert_eq!(
            word_at(&File::open(&path).unwrap(), 0x2000),
            0,
            "a write reached the memory file"
        );
    }
}
