//! An OCI container's record under the runtime root (`<root>/<id>/`), and
//! the state runc prints for it. The container's pid is its monitor's (the
//! husk process that owns the VM): when that process is gone the container
//! is stopped, whatever the record says.

use crate::run::state::start_time;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

pub const RECORD: &str = "state.json";
/// The monitor opens it for writing once the container is created; `start`
/// reading a byte from it is the go.
pub const START_FIFO: &str = "start.fifo";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Creating,
    Created,
    Running,
    Paused,
    Stopped,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Creating => "creating",
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    pub rootfs: PathBuf,
    /// RFC 3339, UTC.
    pub created: String,
    pub annotations: BTreeMap<String, String>,
    pub monitor_pid: i32,
    /// The monitor's start time (/proc/PID/stat field 22): a recycled pid
    /// has another.
    pub monitor_start: u64,
    pub status: Status,
    /// The container process's exit status, once known.
    #[serde(default)]
    pub exit_status: Option<u8>,
    /// Where the monitor sits on the host, for `delete` to remove.
    #[serde(default)]
    pub cgroup: Option<HostCgroup>,
}

/// The host cgroup a container's monitor was put in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HostCgroup {
    /// A directory husk made under /sys/fs/cgroup.
    Dir(PathBuf),
    /// A transient scope unit systemd made (`--systemd-cgroup`).
    Scope(String),
}

impl HostCgroup {
    /// Removes it, once the monitor is gone. A cgroup still holding a
    /// process (or a scope systemd cannot stop) is an error to report;
    /// one already gone is fine.
    pub fn remove(&self) -> Result<(), String> {
        match self {
            HostCgroup::Dir(dir) => match fs::remove_dir(dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(format!("cgroup {}: {e}", dir.display()))
                }
                _ => Ok(()),
            },
            HostCgroup::Scope(unit) => super::systemd::stop(unit),
        }
    }
}

impl Record {
    pub fn dir(root: &Path, id: &str) -> PathBuf {
        root.join(id)
    }

    /// Where the container's Unix sockets live (the agent's vsock, the
    /// monitor's control socket, virtiofsd's): a short path of its own,
    /// since `<root>/<64-hex id>/…` (Docker's) outgrows a socket address
    /// (108 bytes).
    pub fn sock_dir(root: &Path, id: &str) -> PathBuf {
        use std::hash::{Hash, Hasher};
        // DefaultHasher::new() has fixed keys: every husk finds the same.
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (root, id).hash(&mut h);
        crate::run::runtime_root_path()
            .join("oci-sock")
            .join(format!("{:016x}", h.finish()))
    }

    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let tmp = dir.join(".state.json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        fs::rename(&tmp, dir.join(RECORD)).map_err(|e| format!("{}: {e}", dir.display()))
    }

    /// The record of container `id`; runc's wording when there is none.
    pub fn load(root: &Path, id: &str) -> Result<Record, String> {
        check_id(id)?;
        let path = Record::dir(root, id).join(RECORD);
        let bytes = fs::read(&path).map_err(|_| format!("container {id} does not exist"))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn monitor_alive(&self) -> bool {
        self.monitor_pid > 0 && start_time(self.monitor_pid) == Some(self.monitor_start)
    }

    /// The status as it is now: a container whose monitor is gone is
    /// stopped.
    pub fn current(&self) -> Status {
        if self.monitor_alive() {
            self.status
        } else {
            Status::Stopped
        }
    }

    /// runc's `state` JSON.
    pub fn oci_state(&self) -> serde_json::Value {
        let status = self.current();
        let pid = if status == Status::Stopped {
            0
        } else {
            self.monitor_pid
        };
        serde_json::json!({
            "ociVersion": husk_wire::oci_spec::runtime::Spec::default().version(),
            "id": self.id,
            "pid": pid,
            "status": status.as_str(),
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "owner": "",
        })
    }
}

/// Container ids name directories: letters, digits and `_.-`, as runc
/// allows.
pub fn check_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 1024
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-+".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!("invalid container id {id:?}"))
    }
}

/// Now as RFC 3339 with nanoseconds, UTC (runc's `created`).
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(pid: i32, start: u64, status: Status) -> Record {
        Record {
            id: "c1".into(),
            bundle: "/b".into(),
            rootfs: "/b/rootfs".into(),
            created: now_rfc3339(),
            annotations: BTreeMap::new(),
            monitor_pid: pid,
            monitor_start: start,
            status,
            exit_status: None,
            cgroup: None,
        }
    }

    #[test]
    fn a_container_whose_monitor_is_gone_is_stopped_with_pid_0() {
        let me = std::process::id() as i32;
        let now = start_time(me).unwrap();
        let live = record(me, now, Status::Running);
        assert_eq!(live.oci_state()["status"], "running");
        assert_eq!(live.oci_state()["pid"], me);
        let dead = record(me, now + 1, Status::Running);
        assert_eq!(dead.oci_state()["status"], "stopped");
        assert_eq!(dead.oci_state()["pid"], 0);
    }

    #[test]
    fn records_round_trip_and_unknown_ids_say_so() {
        let root = tempfile::tempdir().unwrap();
        let r = record(1, 2, Status::Created);
        let dir = Record::dir(root.path(), "c1");
        fs::create_dir(&dir).unwrap();
        r.save(&dir).unwrap();
        assert_eq!(Record::load(root.path(), "c1").unwrap(), r);
        assert_eq!(
            Record::load(root.path(), "nope").unwrap_err(),
            "container nope does not exist"
        );
        assert!(Record::load(root.path(), "../x").is_err());
    }

    #[test]
    fn socket_dirs_are_short_and_per_root_and_id() {
        let long = "a".repeat(64);
        let d = Record::sock_dir(Path::new("/run/x/very/long/root/moby"), &long);
        assert!(d.ends_with(d.file_name().unwrap()) && d.file_name().unwrap().len() == 16);
        assert_ne!(d, Record::sock_dir(Path::new("/other"), &long));
        assert_eq!(
            d,
            Record::sock_dir(Path::new("/run/x/very/long/root/moby"), &long)
        );
    }

    #[test]
    fn ids_and_times() {
        assert!(check_id("abc-1_2.3").is_ok());
        for bad in ["", ".", "..", "a/b", "a b"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        let t = now_rfc3339();
        assert_eq!(t.len(), 30, "{t}");
        assert!(t.ends_with('Z') && t.starts_with("20"), "{t}");
    }
}
