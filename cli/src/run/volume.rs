//! `-v SRC:DST[:ro|rw]`: host files and directories inside the container.
//!
//! - A directory is shared live through virtio-fs: a virtiofsd per volume
//!   (`--readonly` for `:ro`) serves it to the guest, which mounts it by
//!   tag. The container and the host see each other's changes as they
//!   happen, and nothing is copied afterwards. (Until December 2026 a
//!   directory was packed into a disk image and copied back after the run,
//!   which showed a snapshot, lost the changes of a killed run, and had
//!   the host's root write through links the container planted.)
//! - A regular file is a disk image (ext2/3/4 or erofs) attached as a
//!   virtio-blk disk as is; the container's writes land in that file.

use std::fs;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

pub use crate::virtiofsd::Backend;

/// At most this many volumes: the guest has 19 IOAPIC pins for devices, and
/// the root disk, the image, vsock, a scratch disk and a NIC may take five.
pub const MAX_VOLUMES: usize = 14;

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

/// A volume made ready for the VM.
#[derive(Debug)]
pub enum Prepared {
    /// A disk image file, attached as a virtio-blk disk.
    Disk {
        disk: PathBuf,
        fs_type: &'static str,
    },
    /// A directory, shared through virtio-fs.
    Shared { arg: VolumeArg },
}

/// Checks a volume: a disk image file (its filesystem from the superblock)
/// or a directory.
pub fn prepare(arg: VolumeArg) -> Result<Prepared, String> {
    let name = arg.source.display().to_string();
    let meta = fs::metadata(&arg.source).map_err(|e| format!("-v {name}: {e}"))?;
    if meta.is_dir() {
        return Ok(Prepared::Shared { arg });
    }
    if !meta.is_file() {
        return Err(format!(
            "-v {name}: neither a directory nor a disk image file"
        ));
    }
    let fs_type = disk_fs_type(&arg.source)
        .map_err(|e| format!("-v {name}: {e}"))?
        .ok_or_else(|| {
            format!(
                "-v {name}: a file volume must be a disk image with an ext2/3/4 or erofs \
                 filesystem (or give a directory)"
            )
        })?;
    Ok(Prepared::Disk {
        disk: arg.source,
        fs_type,
    })
}

/// Starts the virtiofsd that serves directory volume `index`.
pub fn serve(arg: &VolumeArg, index: usize, work: &Path) -> Result<Backend, String> {
    crate::virtiofsd::start(&arg.source, arg.read_only, work, &format!("fs-{index}"))
        .map_err(|e| format!("-v {}: {e}", arg.source.display()))
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
        let e = prepare(arg.clone()).unwrap_err();
        assert!(e.contains("disk image"), "{e}");
        // A directory is shared, whatever it holds.
        let dir = parse(&format!("{}:/d:ro", d.display())).unwrap();
        assert!(matches!(prepare(dir).unwrap(), Prepared::Shared { .. }));
        let mut sb = vec![0u8; 4096];
        sb[1024 + 56..1024 + 58].copy_from_slice(&0xEF53u16.to_le_bytes());
        fs::write(&f, &sb).unwrap();
        assert_eq!(disk_fs_type(&f).unwrap(), Some("ext4"));
        match prepare(arg).unwrap() {
            Prepared::Disk { fs_type, disk } => assert_eq!((fs_type, disk), ("ext4", f.clone())),
            other => panic!("{other:?}"),
        }
        sb[1024..1028].copy_from_slice(&0xE0F5_E1E2u32.to_le_bytes());
        fs::write(&f, &sb).unwrap();
        assert_eq!(disk_fs_type(&f).unwrap(), Some("erofs"));
        fs::write(&f, b"short").unwrap();
        assert_eq!(disk_fs_type(&f).unwrap(), None);
    }
}
