//! Placing this process in a cgroup v2 of its own, with limits: a jailed
//! VMM (`husk vmm --jail --cgroup FILE=VALUE`) and a `husk run` with
//! `--cpu-shares` both go through here.
//!
//! The process joins `ROOT/<parent>/<leaf>` before it has other threads
//! and stays until it exits; a cgroup cannot be removed while a process is
//! in it, so the empty leaves that ended runs left are removed the next
//! time one is made under the same parent.

use std::path::{Path, PathBuf};

/// Where cgroup v2 is mounted.
pub const ROOT: &str = "/sys/fs/cgroup";

/// A limit to write: an interface file of a controller (`memory.max`,
/// `cpu.max`, `pids.max`, `cpu.weight`...) and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub file: String,
    pub value: String,
}

impl Setting {
    /// `FILE=VALUE`, FILE a controller's interface file (`memory.max`),
    /// not a path and not one of cgroup's own (`cgroup.procs`).
    pub fn parse(s: &str) -> Result<Setting, String> {
        let bad = |why: &str| format!("--cgroup {s}: {why}");
        let (file, value) = s
            .split_once('=')
            .ok_or_else(|| bad("expected FILE=VALUE"))?;
        let (controller, rest) = file
            .split_once('.')
            .ok_or_else(|| bad("FILE is a controller's file, such as memory.max"))?;
        let word = |w: &str| {
            !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._".contains(c))
        };
        if !word(controller) || !word(rest) || controller == "cgroup" {
            return Err(bad("FILE is a controller's file, such as memory.max"));
        }
        if value.is_empty() || value.contains('\n') {
            return Err(bad("VALUE is one line"));
        }
        Ok(Setting {
            file: file.to_owned(),
            value: value.to_owned(),
        })
    }

    fn controller(&self) -> &str {
        self.file.split('.').next().unwrap_or_default()
    }
}

/// `--parent-cgroup`: a path under the cgroup root, each part a plain
/// name.
pub fn parse_parent(s: &str) -> Result<String, String> {
    let plain = |p: &str| {
        !p.is_empty()
            && p != "."
            && p != ".."
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
    };
    if s.split('/').all(plain) {
        Ok(s.to_owned())
    } else {
        Err(format!(
            "--parent-cgroup {s}: names of letters, digits, '.', '_' and '-', joined by '/'"
        ))
    }
}

/// Moves this process into `root/parent/leaf`, made for it with
/// `settings` written first. `what` names the caller in errors.
pub fn join(
    root: &Path,
    parent: &str,
    leaf: &str,
    settings: &[Setting],
    what: &str,
) -> Result<PathBuf, String> {
    let said = |p: &Path, e: std::io::Error| {
        format!(
            "{what}: {}: {e} (it needs root and cgroup v2 at {})",
            p.display(),
            root.display()
        )
    };
    let controllers = root.join("cgroup.controllers");
    let have = std::fs::read_to_string(&controllers).map_err(|e| said(&controllers, e))?;
    let mut needed: Vec<&str> = settings.iter().map(Setting::controller).collect();
    needed.sort_unstable();
    needed.dedup();
    if let Some(missing) = needed
        .iter()
        .find(|c| !have.split_whitespace().any(|h| h == **c))
    {
        return Err(format!(
            "{what}: the host's cgroup v2 ({}) has no {missing} controller",
            root.display()
        ));
    }
    let parent_dir = root.join(parent);
    prune(&parent_dir);
    std::fs::create_dir_all(&parent_dir).map_err(|e| said(&parent_dir, e))?;
    for dir in [root, parent_dir.as_path()] {
        enable(dir, &needed).map_err(|e| said(&dir.join("cgroup.subtree_control"), e))?;
    }
    let dir = parent_dir.join(leaf);
    std::fs::create_dir_all(&dir).map_err(|e| said(&dir, e))?;
    for s in settings {
        let file = dir.join(&s.file);
        std::fs::write(&file, &s.value)
            .map_err(|e| format!("{what}: {}={}: {e}", s.file, s.value))?;
    }
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, std::process::id().to_string()).map_err(|e| said(&procs, e))?;
    Ok(dir)
}

/// Lets `parent`'s children use `controllers`.
fn enable(parent: &Path, controllers: &[&str]) -> std::io::Result<()> {
    let control = parent.join("cgroup.subtree_control");
    let on = std::fs::read_to_string(&control)?;
    for c in controllers {
        if !on.split_whitespace().any(|o| o == *c) {
            std::fs::write(&control, format!("+{c}"))?;
        }
    }
    Ok(())
}

/// Removes the cgroups under `parent` with no process left in them.
fn prune(parent: &Path) {
    for e in std::fs::read_dir(parent).into_iter().flatten().flatten() {
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
    fn settings_are_a_controllers_file_and_one_line() {
        let s = Setting::parse("memory.max=268435456").unwrap();
        assert_eq!(
            (s.file.as_str(), s.value.as_str()),
            ("memory.max", "268435456")
        );
        assert_eq!(s.controller(), "memory");
        assert_eq!(
            Setting::parse("cpu.max=50000 100000").unwrap().value,
            "50000 100000"
        );
        for bad in [
            "memory.max",
            "memory.max=",
            "../x.max=1",
            "memory/x.max=1",
            "cgroup.procs=1",
            "max=1",
            "Memory.max=1",
        ] {
            let e = Setting::parse(bad).unwrap_err();
            assert!(e.starts_with(&format!("--cgroup {bad}:")), "{bad}: {e}");
        }
    }

    #[test]
    fn a_missing_controller_or_no_cgroup_v2_is_one_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cgroup.controllers"), "cpu pids\n").unwrap();
        let mem = [Setting::parse("memory.max=1G").unwrap()];
        let e = join(dir.path(), "p", "l", &mem, "--cgroup").unwrap_err();
        assert!(e.contains("has no memory controller"), "{e}");
        let e = join(&dir.path().join("none"), "p", "l", &mem, "--cgroup").unwrap_err();
        assert!(e.contains("cgroup v2"), "{e}");
    }
}
