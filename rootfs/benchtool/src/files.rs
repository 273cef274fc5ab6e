//! Filesystem workloads: `meta` times what a build or a package manager
//! does most (create, stat, unlink many small files); `fs-check` proves
//! that a directory carries the file kinds a shared directory must carry.

use crate::{io_fail, Error, Report};
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Creates `count` empty files in a fresh directory under `dir`, stats
/// each, unlinks each, and removes the directory; each phase timed.
pub fn meta(dir: &Path, count: u64) -> Result<Report, Error> {
    let work = dir.join(format!("husk-meta-{}", std::process::id()));
    fs::create_dir(&work).map_err(|e| io_fail(work.display(), "mkdir", e))?;
    let name = |i: u64| work.join(format!("f{i}"));
    let t = Instant::now();
    for i in 0..count {
        File::create(name(i)).map_err(|e| io_fail(name(i).display(), "create", e))?;
    }
    let create = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..count {
        fs::metadata(name(i)).map_err(|e| io_fail(name(i).display(), "stat", e))?;
    }
    let stat = t.elapsed().as_secs_f64();
    let t = Instant::now();
    for i in 0..count {
        fs::remove_file(name(i)).map_err(|e| io_fail(name(i).display(), "unlink", e))?;
    }
    let unlink = t.elapsed().as_secs_f64();
    fs::remove_dir(&work).map_err(|e| io_fail(work.display(), "rmdir", e))?;
    let rate = |secs: f64| count as f64 / secs;
    Ok(Report::new("meta")
        .int("files", count)
        .num("create_per_s", rate(create), 0)
        .num("stat_per_s", rate(stat), 0)
        .num("unlink_per_s", rate(unlink), 0))
}

/// The pattern `fs-check` writes through its shared mapping.
pub const MMAP_TEXT: &[u8] = b"written through a shared mapping\n";
/// The extended attribute `fs-check` sets, and its value.
pub const XATTR: (&str, &[u8]) = ("user.husk", b"kept");
/// What `fs-check` sends over its Unix socket.
const PING: &[u8] = b"ping";

/// In `dir`: a Unix socket that carries a message, a file written through a
/// shared mapping and read back with read(2), an extended attribute set and
/// read back, a file written and fsynced. The files stay (`fs-check.*`) so
/// the caller can look at them from the other side of a share.
pub fn check(dir: &Path) -> Result<Report, Error> {
    unix_socket(&dir.join("fs-check.sock"))?;
    mmap(&dir.join("fs-check.mmap"))?;
    xattr(&dir.join("fs-check.xattr"))?;
    let synced = dir.join("fs-check.synced");
    let mut f = File::create(&synced).map_err(|e| io_fail(synced.display(), "create", e))?;
    f.write_all(b"synced\n")
        .and_then(|()| f.sync_all())
        .map_err(|e| io_fail(synced.display(), "write+fsync", e))?;
    Ok(Report::new("fs-check")
        .int("unix_socket", 1)
        .int("mmap", 1)
        .int("xattr", 1)
        .int("fsync", 1))
}

fn unix_socket(path: &Path) -> Result<(), Error> {
    let fail = |step, e| io_fail(path.display(), step, e);
    let _ = fs::remove_file(path);
    let listener = UnixListener::bind(path).map_err(|e| fail("bind", e))?;
    let mut client = UnixStream::connect(path).map_err(|e| fail("connect", e))?;
    let (mut server, _) = listener.accept().map_err(|e| fail("accept", e))?;
    client.write_all(PING).map_err(|e| fail("send", e))?;
    let mut got = [0u8; PING.len()];
    server
        .read_exact(&mut got)
        .map_err(|e| fail("receive", e))?;
    if got != PING {
        return Err(Error::Io(format!(
            "{}: the socket delivered {got:?}",
            path.display()
        )));
    }
    Ok(())
}

fn mmap(path: &Path) -> Result<(), Error> {
    let fail = |step, e| io_fail(path.display(), step, e);
    let f = write_mapped(path, true)?;
    let mut back = vec![0u8; MMAP_TEXT.len()];
    f.read_exact_at(&mut back, 0)
        .map_err(|e| fail("read back", e))?;
    if back != MMAP_TEXT {
        return Err(Error::Io(format!(
            "{}: read(2) does not see what the mapping wrote",
            path.display()
        )));
    }
    Ok(())
}

/// Creates `path` of [`MMAP_TEXT`]'s length and writes the text through a
/// shared mapping of it, then `msync`s it if `sync`; the mapping is gone
/// when this returns.
fn write_mapped(path: &Path, sync: bool) -> Result<File, Error> {
    let fail = |step, e| io_fail(path.display(), step, e);
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .map_err(|e| fail("create", e))?;
    f.set_len(MMAP_TEXT.len() as u64)
        .map_err(|e| fail("truncate", e))?;
    let len = crate::PAGE;
    // SAFETY: a fresh shared mapping of a file this function owns; the
    // page past its end is never touched, and it is unmapped below before
    // `f` can be dropped.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(fail("mmap", io::Error::last_os_error()));
    }
    // SAFETY: `addr` maps the file's MMAP_TEXT.len() writable bytes.
    unsafe { std::ptr::copy_nonoverlapping(MMAP_TEXT.as_ptr(), addr.cast(), MMAP_TEXT.len()) };
    let synced = if sync {
        // SAFETY: `addr`/`len` are the mapping made above.
        unsafe { libc::msync(addr, len, libc::MS_SYNC) }
    } else {
        0
    };
    let sync_err = io::Error::last_os_error();
    // SAFETY: as above; nothing uses the mapping afterwards.
    unsafe { libc::munmap(addr, len) };
    if synced != 0 {
        return Err(fail("msync", sync_err));
    }
    Ok(f)
}

/// What `unsynced` writes with write(2).
pub const UNSYNCED_TEXT: &[u8] = b"written and never synced\n";

/// In `dir`: `unsynced.write` written with write(2) and `unsynced.mmap`
/// through a shared mapping, neither synced, so they sit dirty in the page
/// cache when this returns. Whoever ends the system after it decides
/// whether they reach the disk: a VM's end that loses them is a bug.
pub fn unsynced(dir: &Path) -> Result<Report, Error> {
    let written = dir.join("unsynced.write");
    fs::write(&written, UNSYNCED_TEXT).map_err(|e| io_fail(written.display(), "write", e))?;
    write_mapped(&dir.join("unsynced.mmap"), false)?;
    Ok(Report::new("unsynced").int("files", 2))
}

fn c_path(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Usage(format!("{}: NUL in the path", path.display())))
}

fn xattr(path: &Path) -> Result<(), Error> {
    let fail = |step, e| io_fail(path.display(), step, e);
    File::create(path).map_err(|e| fail("create", e))?;
    let p = c_path(path)?;
    let name = CString::new(XATTR.0).expect("no NUL");
    let value = XATTR.1;
    // SAFETY: valid NUL-terminated strings and a buffer of the given length.
    let set = unsafe {
        libc::setxattr(
            p.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            0,
        )
    };
    if set != 0 {
        return Err(fail("setxattr", io::Error::last_os_error()));
    }
    let mut back = [0u8; 64];
    // SAFETY: as above; `back` has room for 64 bytes.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            name.as_ptr(),
            back.as_mut_ptr().cast(),
            back.len(),
        )
    };
    if n < 0 {
        return Err(fail("getxattr", io::Error::last_os_error()));
    }
    if &back[..n as usize] != value {
        return Err(Error::Io(format!(
            "{}: {} reads back as {:?}",
            path.display(),
            XATTR.0,
            &back[..n as usize]
        )));
    }
    Ok(())
}

/// `fs-check`'s files in `dir`, for a caller that inspects them.
pub fn check_files(dir: &Path) -> [PathBuf; 4] {
    ["sock", "mmap", "xattr", "synced"].map(|s| dir.join(format!("fs-check.{s}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meta_counts_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let r = meta(dir.path(), 200).unwrap();
        assert_eq!(r.get("files"), Some("200"));
        for k in ["create_per_s", "stat_per_s", "unlink_per_s"] {
            assert!(r.get_f64(k).unwrap() > 0.0, "{k}");
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn meta_in_a_missing_directory_is_an_error() {
        let e = meta(Path::new("/nonexistent/dir"), 1).unwrap_err();
        assert!(e.to_string().contains("mkdir"), "{e}");
    }

    #[test]
    fn check_leaves_every_kind_of_file() {
        use std::os::unix::fs::FileTypeExt;
        let dir = tempfile::tempdir().unwrap();
        let r = check(dir.path()).unwrap();
        assert_eq!(r.get("xattr"), Some("1"));
        let [sock, mapped, _, synced] = check_files(dir.path());
        assert!(fs::symlink_metadata(sock).unwrap().file_type().is_socket());
        assert_eq!(fs::read(mapped).unwrap(), MMAP_TEXT);
        assert_eq!(fs::read(synced).unwrap(), b"synced\n");
        // Twice in the same place works (the socket is replaced).
        check(dir.path()).unwrap();
    }

    #[test]
    fn unsynced_leaves_both_files_with_their_text() {
        let dir = tempfile::tempdir().unwrap();
        unsynced(dir.path()).unwrap();
        assert_eq!(
            fs::read(dir.path().join("unsynced.write")).unwrap(),
            UNSYNCED_TEXT
        );
        assert_eq!(
            fs::read(dir.path().join("unsynced.mmap")).unwrap(),
            MMAP_TEXT
        );
    }
}
