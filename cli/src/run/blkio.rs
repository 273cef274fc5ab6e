//! `--device-read-bps`, `--device-write-bps`, `--device-read-iops`,
//! `--device-write-iops`: Docker's per-device I/O limits, on the VM's
//! disks.
//!
//! Docker throttles the container's I/O to a host block device in its
//! cgroup. A husk container's I/O leaves its VM through virtio-blk disks
//! backed by host files, so the same flag limits, in the VMM, each of the
//! container's disks (its image, its scratch layer, its disk volumes; not
//! the guest's own root) whose file lies on the named block device, or a
//! partition of it. DEV may also be a disk volume's file itself, to limit
//! that one disk. A DEV that no disk of the container is on is refused:
//! the limit would apply to nothing.

use husk_vmm::rate_limiter::{Bucket, Limits, ReadWriteLimits};
use husk_vmm::DiskConfig;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Which flag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    ReadBps,
    WriteBps,
    ReadIops,
    WriteIops,
}

impl Kind {
    fn flag(self) -> &'static str {
        match self {
            Kind::ReadBps => "--device-read-bps",
            Kind::WriteBps => "--device-write-bps",
            Kind::ReadIops => "--device-read-iops",
            Kind::WriteIops => "--device-write-iops",
        }
    }
}

/// One `DEV:RATE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLimit {
    pub kind: Kind,
    pub device: PathBuf,
    /// Bytes or operations a second.
    pub rate: u64,
}

/// Parses `DEV:RATE` (`/dev/sda:10mb`; an iops rate is a plain number).
pub fn parse(kind: Kind, value: &str) -> Result<DeviceLimit, String> {
    let bad = |why: &str| format!("{} {value:?}: {why}", kind.flag());
    let (device, rate) = value
        .rsplit_once(':')
        .filter(|(d, _)| !d.is_empty())
        .ok_or_else(|| bad("expected DEVICE:RATE"))?;
    let rate = match kind {
        Kind::ReadBps | Kind::WriteBps => super::spec::size(rate)
            .map_err(|_| bad("expected a rate like 10mb, 512kb or 1g (bytes a second)"))?,
        Kind::ReadIops | Kind::WriteIops => rate
            .parse::<u64>()
            .ok()
            .filter(|&n| n > 0)
            .ok_or_else(|| bad("expected a number of operations a second above 0"))?,
    };
    Ok(DeviceLimit {
        kind,
        device: PathBuf::from(device),
        rate,
    })
}

/// What `device` names: a block device (its number), or a file.
enum Named {
    Block(u64),
    File(PathBuf),
}

fn named(limit: &DeviceLimit) -> Result<Named, String> {
    let dev = &limit.device;
    let meta = std::fs::metadata(dev)
        .map_err(|e| format!("{} {}: {e}", limit.kind.flag(), dev.display()))?;
    if meta.file_type().is_block_device() {
        Ok(Named::Block(meta.rdev()))
    } else if meta.is_file() {
        Ok(Named::File(std::fs::canonicalize(dev).map_err(|e| {
            format!("{} {}: {e}", limit.kind.flag(), dev.display())
        })?))
    } else {
        Err(format!(
            "{} {}: not a block device or a disk image file",
            limit.kind.flag(),
            dev.display()
        ))
    }
}

/// The whole disk a partition belongs to (`8:1` → `8:0`), from sysfs.
fn whole_disk(dev: u64) -> Option<u64> {
    let sys = PathBuf::from(format!(
        "/sys/dev/block/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    if !sys.join("partition").exists() {
        return None;
    }
    let parent = std::fs::canonicalize(&sys).ok()?.parent()?.join("dev");
    let text = std::fs::read_to_string(parent).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some(libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

/// Whether `limit` names `path`'s disk.
fn covers(named: &Named, path: &Path) -> bool {
    match named {
        Named::Block(rdev) => std::fs::metadata(path).is_ok_and(|m| {
            let on = m.dev();
            on == *rdev || whole_disk(on) == Some(*rdev)
        }),
        Named::File(file) => std::fs::canonicalize(path).is_ok_and(|p| &p == file),
    }
}

/// Sets each limit on the container's disks it names (all but the guest's
/// own root, `skip`); refuses one that names none of them.
pub fn apply(limits: &[DeviceLimit], disks: &mut [DiskConfig], skip: &str) -> Result<(), String> {
    for limit in limits {
        let named = named(limit)?;
        let mut hit = false;
        for disk in disks.iter_mut().filter(|d| d.id != skip) {
            if covers(&named, &disk.path) {
                set(&mut disk.read_write, limit);
                hit = true;
            }
        }
        if !hit {
            let on: Vec<String> = disks
                .iter()
                .filter(|d| d.id != skip)
                .filter_map(|d| std::fs::metadata(&d.path).ok())
                .map(|m| format!("{}:{}", libc::major(m.dev()), libc::minor(m.dev())))
                .collect();
            return Err(format!(
                "{} {}: none of the container's disks is on it, so it would limit nothing (they are on device {})",
                limit.kind.flag(),
                limit.device.display(),
                on.join(", ")
            ));
        }
    }
    Ok(())
}

fn set(l: &mut ReadWriteLimits, limit: &DeviceLimit) {
    let bucket = Some(Bucket::per_second(limit.rate));
    let side: &mut Limits = match limit.kind {
        Kind::ReadBps | Kind::ReadIops => &mut l.read,
        Kind::WriteBps | Kind::WriteIops => &mut l.write,
    };
    match limit.kind {
        Kind::ReadBps | Kind::WriteBps => side.bytes = bucket,
        Kind::ReadIops | Kind::WriteIops => side.ops = bucket,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_rates_parse_as_docker_writes_them() {
        let l = parse(Kind::ReadBps, "/dev/sda:10mb").unwrap();
        assert_eq!((l.device, l.rate), (PathBuf::from("/dev/sda"), 10 << 20));
        assert_eq!(
            parse(Kind::WriteBps, "/dev/sda:512k").unwrap().rate,
            512 << 10
        );
        assert_eq!(parse(Kind::ReadIops, "/dev/sda:100").unwrap().rate, 100);
        for bad in ["/dev/sda", ":10mb", "/dev/sda:fast", "/dev/sda:0"] {
            let e = parse(Kind::ReadBps, bad).unwrap_err();
            assert!(e.starts_with("--device-read-bps"), "{e}");
        }
        assert!(parse(Kind::WriteIops, "/dev/sda:1k").is_err());
    }

    fn disk(path: &Path, id: &str) -> DiskConfig {
        DiskConfig {
            path: path.to_owned(),
            read_only: false,
            id: id.into(),
            rate_limiter: None,
            read_write: Default::default(),
        }
    }

    #[test]
    fn a_disk_file_named_is_limited_and_a_device_no_disk_is_on_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (root, vol) = (dir.path().join("root.img"), dir.path().join("v.img"));
        std::fs::write(&root, b"r").unwrap();
        std::fs::write(&vol, b"v").unwrap();
        let mut disks = vec![disk(&root, "rootfs"), disk(&vol, "volume0")];
        let limits = [
            parse(Kind::WriteBps, &format!("{}:1m", vol.display())).unwrap(),
            parse(Kind::ReadIops, &format!("{}:50", vol.display())).unwrap(),
        ];
        apply(&limits, &mut disks, "rootfs").unwrap();
        assert!(!disks[0].read_write.is_limited());
        let rw = disks[1].read_write;
        assert_eq!(rw.write.bytes, Some(Bucket::per_second(1 << 20)));
        assert_eq!(rw.read.ops, Some(Bucket::per_second(50)));
        assert_eq!((rw.read.bytes, rw.write.ops), (None, None));
        // The guest's own root is never the container's disk.
        let root_only = [parse(Kind::ReadBps, &format!("{}:1m", root.display())).unwrap()];
        let e = apply(&root_only, &mut disks, "rootfs").unwrap_err();
        assert!(e.contains("none of the container's disks"), "{e}");
        let dir_named = [parse(Kind::ReadBps, &format!("{}:1m", dir.path().display())).unwrap()];
        let e = apply(&dir_named, &mut disks, "rootfs").unwrap_err();
        assert!(e.contains("not a block device"), "{e}");
    }
}
