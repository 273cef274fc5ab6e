//! cgroup v2: the container's cgroup, its limits, its processes, its stats.
//!
//! The file writes are plain functions over a directory so that they can be
//! tested on a fake tree; only [`is_cgroup2`] looks at the real filesystem
//! type.

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use oci_spec::runtime::LinuxResources;

use crate::{Error, Stats};

/// Where the agent mounts cgroup2.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

static ROOT_OVERRIDE: RwLock<Option<PathBuf>> = RwLock::new(None);

/// Uses `path` instead of [`CGROUP_ROOT`] for the containers created after.
pub fn set_root(path: PathBuf) {
    *ROOT_OVERRIDE.write().unwrap_or_else(|e| e.into_inner()) = Some(path);
}

/// Where cgroup2 is expected.
pub fn root() -> PathBuf {
    ROOT_OVERRIDE
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .unwrap_or_else(|| PathBuf::from(CGROUP_ROOT))
}

/// Controllers enabled for the container's subtree, when available.
pub const CONTROLLERS: [&str; 5] = ["cpu", "memory", "pids", "io", "cpuset"];

/// Whether `path` is the root of a cgroup2 mount.
pub fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
        .unwrap_or(false)
}

/// The container's cgroup path relative to the cgroup root: `cgroupsPath`
/// from the spec (absolute or relative, both taken under the root), or
/// `husk/<id>`.
pub fn relative_path(cgroups_path: Option<&Path>, id: &str) -> Result<PathBuf, Error> {
    let Some(p) = cgroups_path else {
        return Ok(Path::new("husk").join(id));
    };
    if p.as_os_str().as_bytes().contains(&b':') {
        return Err(Error::Spec(format!(
            "cgroupsPath {}: systemd slices are not supported",
            p.display()
        )));
    }
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(n) => out.push(n),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(Error::Spec(format!(
                    "cgroupsPath {}: '..' is not allowed",
                    p.display()
                )))
            }
        }
    }
    if out.as_os_str().is_empty() {
        return Err(Error::Spec("cgroupsPath is the cgroup root".into()));
    }
    Ok(out)
}

/// The interface files and values that express `resources` on cgroup v2,
/// in the order they are written. `swap_file` tells whether
/// `memory.swap.max` exists (kernels without swap accounting lack it).
pub fn resource_writes(
    resources: &LinuxResources,
    swap_file: bool,
) -> Result<Vec<(String, String)>, Error> {
    let mut w: Vec<(String, String)> = Vec::new();
    let max_or = |v: i64| {
        if v < 0 {
            "max".to_string()
        } else {
            v.to_string()
        }
    };
    if let Some(m) = resources.memory() {
        if let Some(limit) = m.limit() {
            w.push(("memory.max".into(), max_or(limit)));
        }
        if let Some(r) = m.reservation() {
            w.push(("memory.low".into(), max_or(r)));
        }
        if let Some(swap) = m.swap() {
            // OCI: memory+swap; v2: swap alone.
            let v2 = match (swap, m.limit()) {
                (-1, _) => Some("max".to_string()),
                (s, Some(l)) if l > 0 && s >= l => Some((s - l).to_string()),
                (s, Some(l)) if l > 0 && s < l => {
                    return Err(Error::Spec(format!(
                        "memory.swap ({s}) is lower than memory.limit ({l})"
                    )))
                }
                (0, _) => None,
                (s, _) => {
                    return Err(Error::Spec(format!(
                        "memory.swap ({s}) needs a memory.limit"
                    )))
                }
            };
            match v2 {
                Some(v) if swap_file => w.push(("memory.swap.max".into(), v)),
                Some(v) => log::debug!("no memory.swap.max (no swap accounting): {v} skipped"),
                None => {}
            }
        }
    }
    if let Some(c) = resources.cpu() {
        if let Some(shares) = c.shares().filter(|s| *s > 0) {
            let s = shares.clamp(2, 262_144);
            let weight = 1 + ((s - 2) * 9999) / 262_142;
            w.push(("cpu.weight".into(), weight.to_string()));
        }
        let quota = c.quota();
        let period = c.period();
        if quota.is_some() || period.is_some() {
            let q = match quota {
                Some(q) if q > 0 => q.to_string(),
                _ => "max".to_string(),
            };
            let p = period.filter(|p| *p > 0).unwrap_or(100_000);
            w.push(("cpu.max".into(), format!("{q} {p}")));
        }
        if let Some(cpus) = c.cpus().as_deref().filter(|s| !s.is_empty()) {
            w.push(("cpuset.cpus".into(), cpus.to_string()));
        }
        if let Some(mems) = c.mems().as_deref().filter(|s| !s.is_empty()) {
            w.push(("cpuset.mems".into(), mems.to_string()));
        }
    }
    if let Some(p) = resources.pids() {
        let v = if p.limit() > 0 {
            p.limit().to_string()
        } else {
            "max".to_string()
        };
        w.push(("pids.max".into(), v));
    }
    if let Some(b) = resources.block_io() {
        // 0 is "not set" (Docker sends it for every container), as for runc.
        if let Some(weight) = b.weight().filter(|&w| w != 0) {
            // blkio weight 10..1000 → io.weight 1..10000, as runc does.
            let v = 1 + (u64::from(weight.clamp(10, 1000)) - 10) * 9999 / 990;
            w.push(("io.weight".into(), format!("default {v}")));
        }
    }
    if let Some(unified) = resources.unified() {
        let mut keys: Vec<_> = unified.keys().collect();
        keys.sort();
        for k in keys {
            if k.is_empty() || k.contains('/') || k.starts_with('.') || k.starts_with("cgroup.") {
                return Err(Error::Spec(format!("unified: bad cgroup file name {k:?}")));
            }
            w.push((k.clone(), unified[k].clone()));
        }
    }
    if resources
        .devices()
        .as_ref()
        .is_some_and(|d| d.iter().any(|r| !r.allow()))
    {
        log::debug!("device cgroup rules are not enforced (cgroup v2 needs eBPF)");
    }
    Ok(w)
}

fn write_file(path: &Path, value: &str) -> Result<(), Error> {
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| Error::os(format!("write {value:?} to {}", path.display()), e))
}

/// The container's cgroup directory.
#[derive(Debug, Clone)]
pub struct Cgroup {
    path: PathBuf,
}

impl Cgroup {
    /// Creates `root/rel` (and its parents) and enables [`CONTROLLERS`] in
    /// the `cgroup.subtree_control` of every ancestor from `root` down to the
    /// parent of the leaf.
    pub fn create(root: &Path, rel: &Path) -> Result<Cgroup, Error> {
        let path = root.join(rel);
        // Enable controllers top-down; each level needs them in its parent.
        let mut dir = root.to_path_buf();
        for c in rel.components() {
            enable_controllers(&dir)?;
            dir.push(c);
            match fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(Error::os(format!("mkdir {}", dir.display()), e)),
            }
        }
        Ok(Cgroup { path })
    }

    /// Writes interface files (see [`resource_writes`]).
    pub fn set(&self, writes: &[(String, String)]) -> Result<(), Error> {
        for (file, value) in writes {
            write_file(&self.path.join(file), value)?;
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn procs_file(&self) -> PathBuf {
        self.path.join("cgroup.procs")
    }

    /// Moves `pid` into the cgroup.
    pub fn add(&self, pid: i32) -> Result<(), Error> {
        write_file(&self.procs_file(), &pid.to_string())
    }

    /// The pids listed in `cgroup.procs`.
    pub fn procs(&self) -> Result<Vec<i32>, Error> {
        let f = self.procs_file();
        let s =
            fs::read_to_string(&f).map_err(|e| Error::os(format!("read {}", f.display()), e))?;
        Ok(s.lines().filter_map(|l| l.trim().parse().ok()).collect())
    }

    /// Sends `sig` to every process of the cgroup (`cgroup.kill` for SIGKILL
    /// when the kernel has it).
    pub fn signal_all(&self, sig: i32) -> Result<(), Error> {
        let kill_file = self.path.join("cgroup.kill");
        if sig == libc::SIGKILL && kill_file.exists() && write_file(&kill_file, "1").is_ok() {
            return Ok(());
        }
        for pid in self.procs()? {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid, sig) };
        }
        Ok(())
    }

    /// Reads the statistics.
    pub fn stats(&self) -> Result<Stats, Error> {
        read_stats(&self.path)
    }

    /// Removes the cgroup, retrying while it is busy until `deadline`.
    pub fn remove(&self, deadline: Instant) -> Result<(), Error> {
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(Error::os(format!("rmdir {}", self.path.display()), e)),
            }
        }
    }
}

/// Enables the available [`CONTROLLERS`] for the children of `dir`.
fn enable_controllers(dir: &Path) -> Result<(), Error> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let enabled = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
    let enabled: Vec<&str> = enabled.split_whitespace().collect();
    let control = dir.join("cgroup.subtree_control");
    for c in CONTROLLERS {
        if !available.split_whitespace().any(|a| a == c) || enabled.contains(&c) {
            continue;
        }
        // One at a time: a controller that cannot be enabled (cpuset on some
        // kernels, cpu with realtime tasks) must not block the others.
        let r = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&control)
            .and_then(|mut f| f.write_all(format!("+{c}").as_bytes()));
        if let Err(e) = r {
            log::warn!("cannot enable {c} in {}: {e}", control.display());
        }
    }
    Ok(())
}

fn read_u64(path: &Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `max` → None; a number → Some.
fn read_max(path: &Path) -> Option<u64> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim();
    if s == "max" {
        None
    } else {
        s.parse().ok()
    }
}

/// Reads memory.current, memory.max, cpu.stat usage_usec, pids.current and
/// pids.max of the cgroup at `dir`. Missing files read as 0 / no limit.
pub fn read_stats(dir: &Path) -> Result<Stats, Error> {
    if !dir.is_dir() {
        return Err(Error::os(
            format!("cgroup {}", dir.display()),
            io::Error::from_raw_os_error(libc::ENOENT),
        ));
    }
    let cpu_usage_usec = fs::read_to_string(dir.join("cpu.stat"))
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some("usage_usec"))
                    .then(|| it.next().and_then(|v| v.parse().ok()))
                    .flatten()
            })
        })
        .unwrap_or(0);
    Ok(Stats {
        memory_current: read_u64(&dir.join("memory.current")).unwrap_or(0),
        memory_max: read_max(&dir.join("memory.max")),
        cpu_usage_usec,
        pids_current: read_u64(&dir.join("pids.current")).unwrap_or(0),
        pids_max: read_max(&dir.join("pids.max")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{
        LinuxCpuBuilder, LinuxMemoryBuilder, LinuxPidsBuilder, LinuxResourcesBuilder,
    };
    use std::collections::HashMap;

    fn tmp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("husk-cgroup-test-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn paths() {
        assert_eq!(relative_path(None, "c1").unwrap(), Path::new("husk/c1"));
        assert_eq!(
            relative_path(Some(Path::new("/a/b")), "c1").unwrap(),
            Path::new("a/b")
        );
        assert_eq!(
            relative_path(Some(Path::new("a/./b")), "c1").unwrap(),
            Path::new("a/b")
        );
        assert!(relative_path(Some(Path::new("/a/../b")), "c1").is_err());
        assert!(relative_path(Some(Path::new("system.slice:husk:c1")), "c1").is_err());
        assert!(relative_path(Some(Path::new("/")), "c1").is_err());
    }

    #[test]
    fn writes_from_resources() {
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .swap(64i64 << 20)
                    .build()
                    .unwrap(),
            )
            .cpu(
                LinuxCpuBuilder::default()
                    .quota(50_000i64)
                    .period(100_000u64)
                    .shares(1024u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(100i64).build().unwrap())
            .build()
            .unwrap();
        let w = resource_writes(&r, true).unwrap();
        let get = |k: &str| w.iter().find(|(f, _)| f == k).map(|(_, v)| v.as_str());
        assert_eq!(get("memory.max"), Some("67108864"));
        assert_eq!(get("memory.swap.max"), Some("0"));
        assert_eq!(get("cpu.max"), Some("50000 100000"));
        assert_eq!(get("cpu.weight"), Some("39"));
        assert_eq!(get("pids.max"), Some("100"));
        // A block I/O weight of 0 is unset (Docker sends it); 500 maps.
        for (weight, want) in [(0u16, None), (500, Some("default 4950"))] {
            let r = LinuxResourcesBuilder::default()
                .block_io(
                    oci_spec::runtime::LinuxBlockIoBuilder::default()
                        .weight(weight)
                        .build()
                        .unwrap(),
                )
                .build()
                .unwrap();
            let w = resource_writes(&r, true).unwrap();
            let io = w
                .iter()
                .find(|(f, _)| f == "io.weight")
                .map(|(_, v)| v.as_str());
            assert_eq!(io, want);
        }
        // No swap accounting: the swap write is dropped.
        let w = resource_writes(&r, false).unwrap();
        assert!(w.iter().all(|(f, _)| f != "memory.swap.max"));

        // Unlimited values and quota-less period.
        let r = LinuxResourcesBuilder::default()
            .memory(LinuxMemoryBuilder::default().limit(-1i64).build().unwrap())
            .cpu(
                LinuxCpuBuilder::default()
                    .period(50_000u64)
                    .build()
                    .unwrap(),
            )
            .pids(LinuxPidsBuilder::default().limit(0i64).build().unwrap())
            .unified(HashMap::from([(
                "memory.high".to_string(),
                "1G".to_string(),
            )]))
            .build()
            .unwrap();
        let w = resource_writes(&r, true).unwrap();
        assert_eq!(
            w,
            vec![
                ("memory.max".to_string(), "max".to_string()),
                ("cpu.max".to_string(), "max 50000".to_string()),
                ("pids.max".to_string(), "max".to_string()),
                ("memory.high".to_string(), "1G".to_string()),
            ]
        );

        // Nothing asked → nothing written.
        let empty = LinuxResourcesBuilder::default().build().unwrap();
        assert!(resource_writes(&empty, true).unwrap().is_empty());

        // Bad values.
        let r = LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(100i64)
                    .swap(50i64)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap();
        assert!(resource_writes(&r, true).is_err());
        let r = LinuxResourcesBuilder::default()
            .unified(HashMap::from([("../x".to_string(), "1".to_string())]))
            .build()
            .unwrap();
        assert!(resource_writes(&r, true).is_err());
    }

    #[test]
    fn create_on_a_fake_tree() {
        let root = tmp("create");
        fs::write(
            root.join("cgroup.controllers"),
            "cpuset cpu io memory pids\n",
        )
        .unwrap();
        fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        let writes = vec![
            ("memory.max".to_string(), "1048576".to_string()),
            ("pids.max".to_string(), "10".to_string()),
        ];
        let cg = Cgroup::create(&root, Path::new("husk/c1")).unwrap();
        cg.set(&writes).unwrap();
        assert_eq!(cg.path(), root.join("husk/c1"));
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "+cpu+memory+pids+io+cpuset"
        );
        // husk/ has no cgroup.controllers in the fake tree: nothing enabled there.
        assert!(!root.join("husk/cgroup.subtree_control").exists());
        assert_eq!(
            fs::read_to_string(root.join("husk/c1/memory.max")).unwrap(),
            "1048576"
        );
        cg.add(1234).unwrap();
        assert_eq!(cg.procs().unwrap(), vec![1234]);
        // Creating again is fine (existing directories).
        Cgroup::create(&root, Path::new("husk/c1")).unwrap();

        // Stats.
        let d = cg.path();
        fs::write(d.join("memory.current"), "4096\n").unwrap();
        fs::write(d.join("memory.max"), "max\n").unwrap();
        fs::write(d.join("cpu.stat"), "usage_usec 1500\nuser_usec 1000\n").unwrap();
        fs::write(d.join("pids.current"), "3\n").unwrap();
        fs::write(d.join("pids.max"), "10\n").unwrap();
        let s = cg.stats().unwrap();
        assert_eq!(
            s,
            Stats {
                memory_current: 4096,
                memory_max: None,
                cpu_usage_usec: 1500,
                pids_current: 3,
                pids_max: Some(10),
            }
        );

        // Removal of a non-empty (fake) dir fails with a message naming it;
        // an empty one goes.
        let err = cg.remove(Instant::now()).unwrap_err();
        assert!(err.to_string().contains("husk/c1"), "{err}");
        for f in fs::read_dir(d).unwrap() {
            fs::remove_file(f.unwrap().path()).unwrap();
        }
        cg.remove(Instant::now()).unwrap();
        assert!(!d.exists());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn enable_skips_unavailable_and_enabled() {
        let root = tmp("enable");
        fs::write(root.join("cgroup.controllers"), "memory pids\n").unwrap();
        fs::write(root.join("cgroup.subtree_control"), "memory\n").unwrap();
        enable_controllers(&root).unwrap();
        assert_eq!(
            fs::read_to_string(root.join("cgroup.subtree_control")).unwrap(),
            "memory\n+pids"
        );
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn dev_host_is_not_cgroup2_or_is() {
        // Only checks that the probe does not fail on odd paths.
        assert!(!is_cgroup2(Path::new("/nonexistent")));
    }
}
