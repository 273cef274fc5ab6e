//! A container's changes as an OCI layer (`husk commit`): its root as the
//! container sees it, compared with the image tree under it, written as a
//! tar with OCI whiteouts (`.wh.<name>`) for what was deleted.
//!
//! The comparison walks both trees, as Docker's naive differ does, instead
//! of reading overlayfs's upper directory: when the container's writable
//! layer is a tmpfs, only the container's init ever mounted it, so nothing
//! outside the container can reach it. An entry counts as changed when its
//! type, mode, owner, size, mtime, device number or link target differ
//! (a copy-up keeps mtime, so an untouched file is never taken for a
//! change); a write that restores a file's size and mtime is not seen.
//! Other mounts in the container (volumes, /proc, /dev, the files husk
//! binds in) are left out, as Docker leaves volumes out of a commit: the
//! caller names them from the container's mountinfo. (Devices cannot tell
//! them: overlayfs reports a file's st_dev from the layer it lives in.)

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File, Metadata};
use std::io::{self, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The mount points of a process's mount namespace, relative to its root,
/// from its `/proc/PID/mountinfo` (field 5, octal escapes undone).
pub fn mount_points(mountinfo: &str) -> HashSet<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| {
            let mut out = Vec::new();
            let b = p.as_bytes();
            let mut i = 0;
            while i < b.len() {
                let octal = b.get(i + 1..i + 4).and_then(|d| {
                    std::str::from_utf8(d)
                        .ok()
                        .and_then(|d| u8::from_str_radix(d, 8).ok())
                });
                match (b[i], octal) {
                    (b'\\', Some(c)) => {
                        out.push(c);
                        i += 4;
                    }
                    (c, _) => {
                        out.push(c);
                        i += 1;
                    }
                }
            }
            PathBuf::from(std::ffi::OsString::from_vec(out))
        })
        .filter_map(|p| p.strip_prefix("/").ok().map(Path::to_path_buf))
        .filter(|p| !p.as_os_str().is_empty())
        .collect()
}

/// What went into the layer.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Exported {
    /// Entries added or changed (directories included).
    pub changed: usize,
    /// Whiteouts for deleted entries.
    pub deleted: usize,
}

/// Writes the differences of `merged` (the container's root) from `lower`
/// (the image tree) to `out` as an uncompressed tar, leaving out the
/// mount points `mounts` (relative to the root) and what is under them.
pub fn export(
    lower: &Path,
    merged: &Path,
    mounts: &HashSet<PathBuf>,
    out: impl Write,
) -> io::Result<Exported> {
    let mut w = Walker {
        lower,
        merged,
        mounts,
        tar: tar::Builder::new(out),
        links: HashMap::new(),
        done: Exported::default(),
    };
    w.tar.mode(tar::HeaderMode::Complete);
    w.tar.follow_symlinks(false);
    w.dir(Path::new(""), true)?;
    w.tar.into_inner()?.flush()?;
    Ok(w.done)
}

struct Walker<'a, W: Write> {
    lower: &'a Path,
    merged: &'a Path,
    mounts: &'a HashSet<PathBuf>,
    tar: tar::Builder<W>,
    /// Hard-linked files already written: (dev, inode) → their path.
    links: HashMap<(u64, u64), PathBuf>,
    done: Exported,
}

impl<W: Write> Walker<'_, W> {
    /// Compares directory `rel` of both trees; `lower_is_dir` says whether
    /// the image has a directory there to compare with.
    fn dir(&mut self, rel: &Path, lower_is_dir: bool) -> io::Result<()> {
        let names = |dir: &Path| -> io::Result<BTreeSet<std::ffi::OsString>> {
            fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name()))
                .collect()
        };
        let merged_names = names(&self.merged.join(rel))?;
        if lower_is_dir {
            for gone in names(&self.lower.join(rel))?.difference(&merged_names) {
                self.whiteout(&rel.join(gone))?;
            }
        }
        for name in &merged_names {
            let path = rel.join(name);
            if self.mounts.contains(&path) {
                continue;
            }
            let m = fs::symlink_metadata(self.merged.join(&path))?;
            let l = if lower_is_dir {
                fs::symlink_metadata(self.lower.join(&path)).ok()
            } else {
                None
            };
            let changed = match &l {
                None => true,
                Some(l) => self.differs(&path, &m, l),
            };
            if changed {
                self.entry(&path, &m)?;
            }
            if m.is_dir() {
                let below = l.as_ref().is_some_and(|l| l.is_dir());
                self.dir(&path, below)?;
            }
        }
        Ok(())
    }

    fn differs(&self, path: &Path, m: &Metadata, l: &Metadata) -> bool {
        if m.file_type() != l.file_type()
            || m.mode() != l.mode()
            || m.uid() != l.uid()
            || m.gid() != l.gid()
            || m.rdev() != l.rdev()
        {
            return true;
        }
        if m.is_dir() {
            // A directory's size and mtime move with its entries, which
            // are compared one by one.
            return false;
        }
        if m.is_symlink() {
            return fs::read_link(self.merged.join(path)).ok()
                != fs::read_link(self.lower.join(path)).ok();
        }
        m.size() != l.size() || m.mtime() != l.mtime() || m.mtime_nsec() != l.mtime_nsec()
    }

    fn entry(&mut self, path: &Path, m: &Metadata) -> io::Result<()> {
        let full = self.merged.join(path);
        let t = m.file_type();
        if t.is_socket() {
            // A socket is a live endpoint, not content: images never carry one.
            return Ok(());
        }
        self.done.changed += 1;
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(m, tar::HeaderMode::Complete);
        if t.is_file() && m.nlink() > 1 {
            let key = (m.dev(), m.ino());
            if let Some(first) = self.links.get(&key) {
                header.set_entry_type(tar::EntryType::Link);
                header.set_size(0);
                return self.tar.append_link(&mut header, path, first.clone());
            }
            self.links.insert(key, path.to_path_buf());
        }
        if t.is_symlink() {
            let target = fs::read_link(&full)?;
            return self.tar.append_link(&mut header, path, target);
        }
        if t.is_file() {
            return self.tar.append_data(&mut header, path, File::open(&full)?);
        }
        if t.is_block_device() || t.is_char_device() {
            let rdev = m.rdev();
            header.set_device_major(libc::major(rdev))?;
            header.set_device_minor(libc::minor(rdev))?;
        }
        header.set_size(0);
        self.tar.append_data(&mut header, path, io::empty())
    }

    fn whiteout(&mut self, path: &Path) -> io::Result<()> {
        let name = path.file_name().expect("a path under the root has a name");
        let mut wh = std::ffi::OsString::from(".wh.");
        wh.push(name);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(0);
        self.done.deleted += 1;
        let at = path.parent().unwrap_or(Path::new("")).join(wh);
        self.tar.append_data(&mut header, at, io::empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn list(tar_bytes: &[u8]) -> Vec<(String, char)> {
        let mut a = tar::Archive::new(tar_bytes);
        let mut out: Vec<(String, char)> = a
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                let kind = match e.header().entry_type() {
                    tar::EntryType::Directory => 'd',
                    tar::EntryType::Symlink => 'l',
                    tar::EntryType::Link => 'h',
                    _ => 'f',
                };
                (e.path().unwrap().display().to_string(), kind)
            })
            .collect();
        out.sort();
        out
    }

    #[test]
    fn mount_points_are_relative_and_unescaped() {
        let m = mount_points(
            "36 35 98:0 /mnt1 /a\\040b rw - ext3 /dev/root rw\n1 1 0:1 / / rw - x y rw\n",
        );
        assert_eq!(m, HashSet::from([PathBuf::from("a b")]));
    }

    #[test]
    fn changes_additions_and_deletions_become_a_layer() {
        let t = tempfile::tempdir().unwrap();
        let (lower, merged) = (t.path().join("lower"), t.path().join("merged"));
        for root in [&lower, &merged] {
            fs::create_dir_all(root.join("etc/sub")).unwrap();
            fs::create_dir_all(root.join("gone-dir/x")).unwrap();
            fs::write(root.join("etc/same"), "same").unwrap();
            fs::write(root.join("etc/edited"), "old").unwrap();
            fs::write(root.join("etc/chmod"), "c").unwrap();
            fs::write(root.join("etc/sub/deleted"), "d").unwrap();
            std::os::unix::fs::symlink("same", root.join("etc/link")).unwrap();
        }
        // Same content and mtime in both trees, as a copy-up leaves them.
        for f in ["etc/same", "etc/chmod", "etc/edited"] {
            let when = fs::metadata(lower.join(f)).unwrap().modified().unwrap();
            File::options()
                .write(true)
                .open(merged.join(f))
                .unwrap()
                .set_modified(when)
                .unwrap();
        }
        fs::write(merged.join("etc/edited"), "new content").unwrap();
        fs::set_permissions(merged.join("etc/chmod"), fs::Permissions::from_mode(0o600)).unwrap();
        fs::remove_file(merged.join("etc/sub/deleted")).unwrap();
        fs::remove_dir_all(merged.join("gone-dir")).unwrap();
        fs::remove_file(merged.join("etc/link")).unwrap();
        std::os::unix::fs::symlink("edited", merged.join("etc/link")).unwrap();
        fs::create_dir(merged.join("new")).unwrap();
        fs::write(merged.join("new/file"), "n").unwrap();
        fs::hard_link(merged.join("new/file"), merged.join("new/hard")).unwrap();

        // Through a symlink, as the agent reaches it (/proc/PID/root).
        let link = t.path().join("root-link");
        std::os::unix::fs::symlink(&merged, &link).unwrap();
        fs::create_dir_all(merged.join("proc/1")).unwrap();
        fs::write(merged.join("etc/hosts"), "a bind mount").unwrap();
        let mounts = mount_points(
            "22 1 0:5 / /proc rw - proc proc rw\n\
             23 1 0:6 /h /etc/hosts rw - ext4 /dev/vda rw\n\
             24 1 0:7 / / rw - overlay overlay rw\n",
        );
        let mut out = Vec::new();
        let done = export(&lower, &link, &mounts, &mut out).unwrap();
        let mut want: Vec<(String, char)> = [
            (".wh.gone-dir", 'f'),
            ("etc/chmod", 'f'),
            ("etc/edited", 'f'),
            ("etc/link", 'l'),
            ("etc/sub/.wh.deleted", 'f'),
            ("new", 'd'),
            ("new/file", 'f'),
            ("new/hard", 'h'),
        ]
        .iter()
        .map(|(p, k)| (p.to_string(), *k))
        .collect();
        want.sort();
        assert_eq!(list(&out), want);
        assert_eq!(
            done,
            Exported {
                changed: 6,
                deleted: 2
            }
        );
    }
}
