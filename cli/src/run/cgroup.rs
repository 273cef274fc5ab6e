//! `--cpu-shares`: the run's husk, and so its VM's threads and helpers, in
//! a cgroup v2 of the host's of its own, `/sys/fs/cgroup/husk/<id>`, with
//! the `cpu.weight` runc gives Docker's shares. The guest cannot see or
//! change it: the weight is how much of contended host CPUs the whole VM
//! gets, vCPUs and device threads alike.
//!
//! The process joins before the VM's threads exist, and stays until it
//! exits; an empty cgroup left by a run that ended is removed by the next
//! one (a cgroup cannot be removed while its last process is in it).

use husk_vmm_bin::cgroup2::{self, Setting};
use std::path::{Path, PathBuf};

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
    join_under(Path::new(cgroup2::ROOT), id, weight)
}

fn join_under(root: &Path, id: &str, weight: u64) -> Result<PathBuf, String> {
    let setting = Setting {
        file: "cpu.weight".into(),
        value: weight.to_string(),
    };
    cgroup2::join(root, HUSK, id, &[setting], "--cpu-shares")
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
