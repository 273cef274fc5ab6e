//! `-v SRC:DST[:ro|rw]`: host files and directories inside the container.
//!
//! Every volume reaches the guest as a virtio-blk disk, because a block
//! device is the one sharing path husk already has and it keeps the guest
//! kernel small (no virtio-fs daemon, no 9p):
//! - a regular file is a disk image (ext2/3/4 or erofs) attached as is; the
//!   container's writes land in that file;
//! - a directory mounted read-only is packed into an erofs image;
//! - a directory mounted read-write is packed into a journal-less ext4
//!   image, and when the container is done its content is copied back into
//!   the directory (deletions included). The directory is a snapshot while
//!   the container runs: host-side changes made meanwhile are not seen, and
//!   are overwritten where the container changed the same paths.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// At most this many volumes: disks are /dev/vdc onwards, one letter each.
pub const MAX_VOLUMES: usize = 16;

/// A parsed `-v`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeArg {
    pub source: PathBuf,
    pub target: String,
    pub read_only: bool,
}

pub fn parse(spec: &str) -> Result<VolumeArg, String> {
    let bad = |why: &str| format!("-v {spec}: {why}");
    let mut parts: Vec<&str> = spec.split(':').collect();
    let read_only = match parts.last() {
        Some(&"ro") if parts.len() == 3 => true,
        Some(&"rw") if parts.len() == 3 => false,
        _ if parts.len() == 2 => false,
        _ => return Err(bad("expected SRC:DST[:ro|rw]")),
    };
    parts.truncate(2);
    let (source, target) = (parts[0], parts[1]);
    if source.is_empty() {
        return Err(bad("no host path"));
    }
    if !target.starts_with('/') || target.split('/').any(|c| c == "..") {
        return Err(bad("the container path must be absolute, without '..'"));
    }
    if target.trim_end_matches('/').is_empty() {
        return Err(bad("cannot mount over the container's /"));
    }
    let source = fs::canonicalize(source).map_err(|e| bad(&format!("host path {source}: {e}")))?;
    Ok(VolumeArg {
        source,
        target: target.to_owned(),
        read_only,
    })
}

/// A volume made ready for the VM: the disk to attach and how to mount it.
#[derive(Debug)]
pub struct Prepared {
    pub arg: VolumeArg,
    pub disk: PathBuf,
    pub fs_type: &'static str,
    /// A directory to copy the disk's content back into after the run.
    pub copy_back: Option<PathBuf>,
}

/// Checks a file volume or packs a directory volume into `work`.
pub fn prepare(arg: VolumeArg, index: usize, work: &Path) -> Result<Prepared, String> {
    let name = arg.source.display().to_string();
    let meta = fs::metadata(&arg.source).map_err(|e| format!("-v {name}: {e}"))?;
    if meta.is_file() {
        let fs_type = disk_fs_type(&arg.source)
            .map_err(|e| format!("-v {name}: {e}"))?
            .ok_or_else(|| {
                format!(
                    "-v {name}: a file volume must be a disk image with an ext2/3/4 or erofs \
                     filesystem (or give a directory)"
                )
            })?;
        return Ok(Prepared {
            disk: arg.source.clone(),
            arg,
            fs_type,
            copy_back: None,
        });
    }
    if !meta.is_dir() {
        return Err(format!(
            "-v {name}: neither a directory nor a disk image file"
        ));
    }
    let disk = work.join(format!("volume-{index}.img"));
    if arg.read_only {
        husk_image::mkfs::erofs(husk_image::mkfs::EROFS.as_ref(), &arg.source, &disk)
            .map_err(|e| format!("-v {name}: {e}"))?;
        return Ok(Prepared {
            disk,
            arg,
            fs_type: "erofs",
            copy_back: None,
        });
    }
    // Room to grow: twice the content plus 64 MiB, in a sparse file. No
    // journal: the guest syncs and unmounts before it powers off, and the
    // copy back reads the image without replaying a journal.
    let size = tree_bytes(&arg.source)
        .saturating_mul(2)
        .saturating_add(64 << 20);
    husk_image::mkfs::Ext4::new(size)
        .no_journal()
        .from_tree(&arg.source)
        .make(&disk)
        .map_err(|e| format!("-v {name}: {e}"))?;
    Ok(Prepared {
        disk,
        copy_back: Some(arg.source.clone()),
        arg,
        fs_type: "ext4",
    })
}

/// Copies a read-write directory volume's disk content back into its host
/// directory, so the directory ends up as the container left it.
pub fn copy_back(p: &Prepared) -> Result<(), String> {
    let Some(dir) = &p.copy_back else {
        return Ok(());
    };
    let name = dir.display().to_string();
    let stage = p.disk.with_extension("out");
    let _ = fs::remove_dir_all(&stage);
    fs::create_dir_all(&stage).map_err(|e| format!("{}: {e}", stage.display()))?;
    run_tool(
        Command::new("debugfs")
            .arg("-R")
            .arg(format!("rdump / {}", stage.display()))
            .arg(&p.disk),
        "debugfs",
        &name,
    )?;
    let result = mirror(&stage, dir, true).map_err(|e| format!("-v {name}: copying back: {e}"));
    let _ = fs::remove_dir_all(&stage);
    result
}

fn run_tool(cmd: &mut Command, tool: &str, volume: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            format!("-v {volume}: {tool} is missing (Debian: e2fsprogs, erofs-utils)")
        } else {
            format!("-v {volume}: {tool}: {e}")
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    let text = String::from_utf8_lossy(&out.stderr);
    let first = text.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    Err(format!("-v {volume}: {tool} failed: {}", first.trim()))
}

/// The filesystem of a disk image, from its superblock magic.
fn disk_fs_type(path: &Path) -> std::io::Result<Option<&'static str>> {
    let mut f = fs::File::open(path)?;
    let mut sb = [0u8; 64];
    f.seek(SeekFrom::Start(1024))?;
    if f.read_exact(&mut sb).is_err() {
        return Ok(None);
    }
    if sb[0..4] == 0xE0F5_E1E2u32.to_le_bytes() {
        return Ok(Some("erofs"));
    }
    if sb[56..58] == 0xEF53u16.to_le_bytes() {
        return Ok(Some("ext4"));
    }
    Ok(None)
}

fn tree_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.metadata() {
            Ok(m) if m.is_dir() => total += 4096 + tree_bytes(&e.path()),
            Ok(m) => total += m.len().max(4096),
            Err(_) => {}
        }
    }
    total
}

/// Makes `dst` hold what `src` holds: entries missing from `src` are
/// removed, changed files rewritten through a temporary name and a rename
/// (so a crash leaves either version, never half of one). At the top level
/// ext4's `lost+found` is neither copied nor deleted.
fn mirror(src: &Path, dst: &Path, top: bool) -> std::io::Result<()> {
    let skip = |name: &std::ffi::OsStr| top && name == "lost+found";
    for e in fs::read_dir(dst)? {
        let e = e?;
        if skip(&e.file_name()) {
            continue;
        }
        if fs::symlink_metadata(src.join(e.file_name())).is_err() {
            remove_any(&e.path())?;
        }
    }
    for e in fs::read_dir(src)? {
        let e = e?;
        if skip(&e.file_name()) {
            continue;
        }
        let from = e.path();
        let to = dst.join(e.file_name());
        let meta = fs::symlink_metadata(&from)?;
        let existing = fs::symlink_metadata(&to).ok();
        let ft = meta.file_type();
        if ft.is_dir() {
            if existing.as_ref().is_some_and(|m| !m.is_dir()) {
                remove_any(&to)?;
            }
            if !to.is_dir() {
                fs::create_dir(&to)?;
            }
            mirror(&from, &to, false)?;
            fs::set_permissions(&to, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        } else if ft.is_symlink() {
            let target = fs::read_link(&from)?;
            if existing.is_some() {
                if fs::read_link(&to).ok().as_ref() == Some(&target) {
                    continue;
                }
                remove_any(&to)?;
            }
            std::os::unix::fs::symlink(&target, &to)?;
        } else if ft.is_file() {
            if existing.as_ref().is_some_and(|m| m.is_file())
                && same_content(&from, &to)?
                && existing.as_ref().map(|m| m.mode() & 0o7777) == Some(meta.mode() & 0o7777)
            {
                continue;
            }
            if existing.as_ref().is_some_and(|m| m.is_dir()) {
                remove_any(&to)?;
            }
            let tmp = dst.join(format!(".{}.husk-tmp", e.file_name().to_string_lossy()));
            fs::copy(&from, &tmp)?;
            fs::set_permissions(&tmp, fs::Permissions::from_mode(meta.mode() & 0o7777))?;
            fs::rename(&tmp, &to)?;
        } else {
            log::warn!(
                "volume copy back: skipping {} (not a file, directory or symlink)",
                from.display()
            );
        }
    }
    Ok(())
}

fn remove_any(p: &Path) -> std::io::Result<()> {
    match fs::symlink_metadata(p) {
        Ok(m) if m.is_dir() => fs::remove_dir_all(p),
        Ok(_) => fs::remove_file(p),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

fn same_content(a: &Path, b: &Path) -> std::io::Result<bool> {
    let (ma, mb) = (fs::metadata(a)?, fs::metadata(b)?);
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (fs::File::open(a)?, fs::File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("husk-volume-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn parses_specs() {
        let d = tmp("parse");
        let s = d.display();
        let v = parse(&format!("{s}:/data")).unwrap();
        assert_eq!((v.target.as_str(), v.read_only), ("/data", false));
        assert!(parse(&format!("{s}:/data:ro")).unwrap().read_only);
        assert!(!parse(&format!("{s}:/data:rw")).unwrap().read_only);
        for bad in [
            format!("{s}"),
            format!("{s}:data"),
            format!("{s}:/"),
            format!("{s}:/a/../b"),
            format!("{s}:/data:rx"),
            format!("{s}/missing:/data"),
            ":/data".to_string(),
        ] {
            let e = parse(&bad).unwrap_err();
            assert!(e.starts_with("-v "), "{e}");
        }
    }

    #[test]
    fn file_volumes_must_be_disk_images() {
        let d = tmp("file");
        let f = d.join("notes.txt");
        fs::write(&f, vec![b'x'; 4096]).unwrap();
        let arg = parse(&format!("{}:/n", f.display())).unwrap();
        let e = prepare(arg, 0, &d).unwrap_err();
        assert!(e.contains("disk image"), "{e}");
        let mut sb = vec![0u8; 4096];
        sb[1024 + 56..1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        fs::write(&f, &sb).unwrap();
        assert_eq!(disk_fs_type(&f).unwrap(), Some("ext4"));
        sb[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        fs::write(&f, &sb).unwrap();
        assert_eq!(disk_fs_type(&f).unwrap(), Some("erofs"));
        fs::write(&f, b"short").unwrap();
        assert_eq!(disk_fs_type(&f).unwrap(), None);
    }

    #[test]
    fn mirror_copies_changes_and_deletions() {
        let d = tmp("mirror");
        let (src, dst) = (d.join("src"), d.join("dst"));
        fs::create_dir_all(src.join("sub")).unwrap();
        fs::create_dir_all(dst.join("gone-dir/x")).unwrap();
        fs::create_dir_all(src.join("lost+found")).unwrap();
        fs::write(src.join("same"), "1").unwrap();
        fs::write(dst.join("same"), "1").unwrap();
        fs::write(src.join("changed"), "new").unwrap();
        fs::write(dst.join("changed"), "old").unwrap();
        fs::write(src.join("sub/new"), "n").unwrap();
        fs::write(dst.join("gone"), "g").unwrap();
        fs::write(dst.join("sub"), "a file where a dir is now").unwrap();
        std::os::unix::fs::symlink("same", src.join("link")).unwrap();
        mirror(&src, &dst, true).unwrap();
        assert_eq!(fs::read_to_string(dst.join("changed")).unwrap(), "new");
        assert_eq!(fs::read_to_string(dst.join("sub/new")).unwrap(), "n");
        assert_eq!(fs::read_link(dst.join("link")).unwrap(), Path::new("same"));
        assert!(!dst.join("gone").exists() && !dst.join("gone-dir").exists());
        assert!(!dst.join("lost+found").exists());
        let mut names: Vec<_> = fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["changed", "link", "same", "sub"]);
    }

    #[test]
    fn a_directory_round_trips_through_ext4() {
        if Command::new("debugfs").arg("-V").output().is_err() {
            return husk_skip::skip("no debugfs (Debian: e2fsprogs)");
        }
        let d = tmp("roundtrip");
        let src = d.join("vol");
        fs::create_dir_all(src.join("a/b")).unwrap();
        fs::write(src.join("a/b/f"), "content").unwrap();
        let arg = parse(&format!("{}:/v", src.display())).unwrap();
        let p = prepare(arg, 0, &d).unwrap();
        assert_eq!(p.fs_type, "ext4");
        fs::write(src.join("a/b/f"), "changed on the host meanwhile").unwrap();
        fs::write(src.join("extra"), "x").unwrap();
        copy_back(&p).unwrap();
        assert_eq!(fs::read_to_string(src.join("a/b/f")).unwrap(), "content");
        assert!(!src.join("extra").exists());
        assert!(!src.join("lost+found").exists());
    }
}
