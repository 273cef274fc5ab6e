//! A snapshot's memory file copied onto hugetlbfs, so that VMs restored
//! from it map it private in 2 MiB pages: KVM then maps the guest's
//! memory in 2 MiB nested pages too, and a clone takes one fault per
//! 2 MiB it touches instead of one per 4 KiB (docs/benchmarks.md, "Where
//! a clone's time goes"). The read-only parts stay the copy's, shared by
//! every clone; a write copies its 2 MiB page.
//!
//! hugetlbfs takes no write(2): the copy is filled through a shared
//! mapping. Its pages come from the host's reserved huge pages
//! (`vm.nr_hugepages`), which only the host's administrator can set, so
//! this is a choice (`HUSK_POOL_MEMORY=huge`), never a default.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The huge page size the copy is made for (x86's 2 MiB).
const HUGE: u64 = 2 << 20;

/// Where hugetlbfs with 2 MiB pages is mounted, from a mount table
/// (`/proc/self/mounts`' text); the first such mount.
pub fn mount_in(mounts: &str) -> Option<PathBuf> {
    mounts.lines().find_map(|line| {
        let mut f = line.split_whitespace();
        let (_, dir, kind, opts) = (f.next()?, f.next()?, f.next()?, f.next()?);
        // Without a pagesize option a mount has the default huge page
        // size, 2 MiB on x86.
        let size = opts
            .split(',')
            .find_map(|o| o.strip_prefix("pagesize="))
            .unwrap_or("2M");
        (kind == "hugetlbfs" && size == "2M").then(|| PathBuf::from(unescape(dir)))
    })
}

/// This host's hugetlbfs with 2 MiB pages.
pub fn mount() -> Result<PathBuf, String> {
    let mounts = std::fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("/proc/self/mounts: {e}"))?;
    mount_in(&mounts).ok_or_else(|| {
        "no hugetlbfs with 2 MiB pages is mounted (mount -t hugetlbfs none /dev/hugepages)".into()
    })
}

/// One of the host's counts of 2 MiB huge pages (`nr_hugepages`,
/// `free_hugepages`, `resv_hugepages`...).
pub fn count(name: &str) -> Result<u64, String> {
    let path = format!("/sys/kernel/mm/hugepages/hugepages-2048kB/{name}");
    std::fs::read_to_string(&path)
        .map_err(|e| format!("{path}: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("{path}: {e}"))
}

/// The 2 MiB huge pages of the host's pool that are free and not
/// reserved by a mapping.
pub fn free_pages() -> Result<u64, String> {
    Ok(count("free_hugepages")?.saturating_sub(count("resv_hugepages")?))
}

/// A mount table's path, with its octal escapes (`\040` for a space)
/// undone.
fn unescape(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    let mut rest = path;
    while let Some(at) = rest.find('\\') {
        out.push_str(&rest[..at]);
        let code = rest.get(at + 1..at + 4);
        match code.and_then(|c| u8::from_str_radix(c, 8).ok()) {
            Some(b) => {
                out.push(b as char);
                rest = &rest[at + 4..];
            }
            None => {
                out.push('\\');
                rest = &rest[at + 1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// The copy of `mem` named `name` on this host's hugetlbfs, made now if
/// it is not there yet. A copy is made under a temporary name and renamed,
/// so a copy of that name is whole.
pub fn copy_of(mem: &Path, name: &str) -> Result<PathBuf, String> {
    let dir = mount()?;
    let path = dir.join(name);
    if path.exists() {
        return Ok(path);
    }
    let tmp = dir.join(format!(".{name}.{}", std::process::id()));
    let made = fill(mem, &tmp).and_then(|()| std::fs::rename(&tmp, &path));
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        return Err(match e.raw_os_error() {
            Some(libc::ENOMEM | libc::ENOSPC) => format!(
                "{}: too few free 2 MiB huge pages for a copy of {} (vm.nr_hugepages)",
                dir.display(),
                mem.display()
            ),
            _ => format!("a copy of {} on {}: {e}", mem.display(), dir.display()),
        });
    }
    Ok(path)
}

/// Makes `to` on hugetlbfs a copy of `from`, through a shared mapping.
/// Only the data's huge pages are taken (the holes stay holes), and they
/// are allocated first, where a shortage is an error rather than a SIGBUS
/// at the copy's touch.
fn fill(from: &Path, to: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let src = File::open(from)?;
    let len = src.metadata()?.len();
    let dst = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(to)?;
    let mapped = len.next_multiple_of(HUGE);
    dst.set_len(mapped)?;
    let runs = super::memory::data_runs(&src, 0, len)?;
    for &(start, end) in &runs {
        let (at, to) = (start / HUGE * HUGE, end.next_multiple_of(HUGE));
        // SAFETY: fallocate(2) on a descriptor we own, within its size.
        let r = unsafe { libc::fallocate(dst.as_raw_fd(), 0, at as i64, (to - at) as i64) };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    let map = Shared::new(&dst, mapped as usize)?;
    // SAFETY: `map` is a fresh shared mapping of `mapped` bytes of a file
    // made above under a name no one else uses; nothing else refers to it
    // while this slice lives.
    let bytes = unsafe { std::slice::from_raw_parts_mut(map.ptr, len as usize) };
    for (start, end) in runs {
        src.read_exact_at(&mut bytes[start as usize..end as usize], start)?;
    }
    Ok(())
}

/// A shared read-write mapping of a whole file, unmapped on drop.
struct Shared {
    ptr: *mut u8,
    len: usize,
}

impl Shared {
    fn new(file: &File, len: usize) -> io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: a new mapping at an address the kernel picks, of a file
        // we hold open. Without a reservation: one would stay with the
        // file for its holes too, and the pages touched are allocated.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_NORESERVE,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            ptr: ptr.cast(),
            len,
        })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, which nothing refers to past
        // this owner.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_2_mib_hugetlbfs_mount_is_found() {
        let mounts = "proc /proc proc rw 0 0\n\
            hugetlbfs /mnt/huge\\0401g hugetlbfs rw,pagesize=1024M 0 0\n\
            hugetlbfs /dev/huge\\040pages hugetlbfs rw,relatime,pagesize=2M 0 0\n";
        assert_eq!(mount_in(mounts), Some(PathBuf::from("/dev/huge pages")));
        let default = "none /dev/hugepages hugetlbfs rw,relatime 0 0\n";
        assert_eq!(mount_in(default), Some(PathBuf::from("/dev/hugepages")));
        assert_eq!(mount_in("tmpfs /tmp tmpfs rw 0 0\n"), None);
    }
}
