//! The pseudo filesystems a guest needs before anything else can run.

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};
use std::path::Path;

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

const fn m(
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
) -> Mount {
    Mount {
        source,
        target,
        fstype,
        flags,
        data,
    }
}

const NOSUID_NODEV_NOEXEC: MsFlags = MsFlags::MS_NOSUID
    .union(MsFlags::MS_NODEV)
    .union(MsFlags::MS_NOEXEC);

/// In order: later targets live inside earlier ones.
const MOUNTS: &[Mount] = &[
    m("proc", "/proc", "proc", NOSUID_NODEV_NOEXEC, None),
    m("sysfs", "/sys", "sysfs", NOSUID_NODEV_NOEXEC, None),
    m(
        "devtmpfs",
        "/dev",
        "devtmpfs",
        MsFlags::MS_NOSUID,
        Some("mode=0755"),
    ),
    m(
        "devpts",
        "/dev/pts",
        "devpts",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        Some("mode=0620,ptmxmode=0666"),
    ),
    m(
        "tmpfs",
        "/dev/shm",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
    m(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=1777"),
    ),
    m(
        "tmpfs",
        "/run",
        "tmpfs",
        MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        Some("mode=0755"),
    ),
    m(
        "cgroup2",
        "/sys/fs/cgroup",
        "cgroup2",
        NOSUID_NODEV_NOEXEC,
        None,
    ),
];

/// Mounts everything in [`MOUNTS`]. A target that is already mounted (the
/// kernel mounts devtmpfs itself on a disk root) is fine; any other failure
/// is reported with the target's name, and the init carries on without it,
/// because a guest without /run is more useful than a guest that resets.
pub fn mount_all() -> Vec<String> {
    let mut problems = Vec::new();
    for mnt in MOUNTS {
        let target = Path::new(mnt.target);
        if !target.exists() {
            if let Err(e) = std::fs::create_dir_all(target) {
                problems.push(format!("mkdir {}: {e}", mnt.target));
                continue;
            }
        }
        match mount(
            Some(mnt.source),
            target,
            Some(mnt.fstype),
            mnt.flags,
            mnt.data,
        ) {
            Ok(()) => {}
            Err(Errno::EBUSY) if is_mounted(mnt.target) => {}
            Err(e) => problems.push(format!("mount {} on {}: {e}", mnt.fstype, mnt.target)),
        }
    }
    problems
}

/// Whether /proc/mounts lists `target` as a mount point.
fn is_mounted(target: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .map(|m| {
            m.lines()
                .any(|l| l.split_whitespace().nth(1) == Some(target))
        })
        .unwrap_or(false)
}

/// Makes the root filesystem read-only so everything written is on the disk
/// and the filesystem is marked clean before the machine resets.
pub fn remount_root_readonly() -> nix::Result<()> {
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
        None::<&str>,
    )
}
