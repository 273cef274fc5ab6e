//! `--cpu-shares`: the run's husk, and so its VM's threads and helpers, in
//! a cgroup v2 of the host's of its own, `/sys/fs/cgroup/husk/<id>`, with
//! the `cpu.weight` runc gives Docker's shares. The guest cannot see or
//! change it: the weight is how much of contended host CPUs the whole VM
//! gets, vCPUs and device threads alike.
//!
//! The process joins before the VM's threads exist, and stays until it
//! exits; an empty cgroup left by a run that ended is removed by the next
//! one (a cgroup cannot be removed while its last process is in it).

use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted.
const ROOT: &str = "/sys/fs/cgroup";
/// husk's subtree.
const HUSK: &str = "husk";

/// runc's conversion of Docker's `--cpu-shares` (2..=262144, default
/// 1024) to cgroup v2's `cpu.weight` (1..=10000, default 100).
pub fn weight(shares: u64) -> Result<u64, String> {
    if !(2..=262_144).contains(&shares) {
        return Err(format!(
            "--cpu-shares {shares}: expected 2 to 262144 (1024 is an even share)"
        ));
    }
    Ok(1 + ((shares - 2) * 9999) / 262_142)
}

/// Moves this process into `husk/<id>` with `weight`, made for it.
pub fn join(id: &str, weight: u64) -> Result<PathBuf, String> {
    join_under(Path::new(ROOT), id, weight)
}

fn join_under(root: &Path, id: &str, weight: u64) -> Result<PathBuf, String> {
    let said = |what: &Path, e: std::io::Error| {
        format!(
            "--cpu-shares: {}: {e} (it needs root and cgroup v2 with the cpu controller)",
            what.display()
        )
    };
    let controllers = root.join("cgroup.controllers");
    let have = std::fs::read_to_string(&controllers).map_err(|e| said(&controllers, e))?;
    if !have.split_whitespace().any(|c| c == "cpu") {
        return Err(format!(
            "--cpu-shares: the host's cgroup v2 ({}) has no cpu controller",
            root.display()
        ));
    }
    let husk = root.join(HUSK);
    prune(&husk);
    std::fs::create_dir_all(&husk).map_err(|e| said(&husk, e))?;
    for parent in [root, husk.as_path()] {
        enable_cpu(parent).map_err(|e| said(&parent.join("cgroup.subtree_control"), e))?;
    }
    let dir = husk.join(id);
    std::fs::create_dir_all(&dir).map_err(|e| said(&dir, e))?;
    let file = dir.join("cpu.weight");
    std::fs::write(&file, weight.to_string()).map_err(|e| said(&file, e))?;
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(|e| said(&procs, e))?;
    Ok(dir)
}

/// Lets `parent`'s children be given CPU weights.
fn enable_cpu(parent: &Path) -> std::io::Result<()> {
    let control = parent.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&control)?;
    if on.split_whitespace().any(|c| c == "cpu") {
        return Ok(());
    }
    std::fs::write(control, "+cpu")
}

/// Removes the cgroups of runs that ended (no process left in them).
fn prune(husk: &Path) {
    for e in std::fs::read_dir(husk).into_iter().flatten().flatten() {
        let procs = std::fs::read_to_string(e.path().join("cgroup.procs"));
        if procs.is_ok_and(|p| p.trim().is_empty()) {
            // rmdir: only an empty cgroup goes; a busy one stays.
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_convert_as_runc_converts_them_and_out_of_range_is_refused() {
        assert_eq!(weight(1024).unwrap(), 39);
        assert_eq!(weight(2).unwrap(), 1);
        assert_eq!(weight(262_144).unwrap(), 10_000);
        assert_eq!(weight(512).unwrap(), 20);
        assert!(weight(1).unwrap_err().starts_with("--cpu-shares 1:"));
        assert!(weight(262_145).is_err());
    }

    #[test]
    fn a_host_without_the_cpu_controller_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "memory pids\n").unwrap();
        let e = join_under(dir.path(), "abc", 20).unwrap_err();
        assert!(e.contains("no cpu controller"), "{e}");
        let e = join_under(&dir.path().join("none"), "abc", 20).unwrap_err();
        assert!(e.contains("cgroup v2"), "{e}");
    }
}
