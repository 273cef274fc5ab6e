//! `--systemd-cgroup`: the container's host process goes in a transient
//! scope that systemd makes for it, as runc and crun do, rather than in a
//! cgroup directory husk makes itself. cgroupsPath is then
//! `slice:prefix:name` (podman: `machine.slice:libpod:ID`; Docker and
//! containerd: `system.slice:docker:ID`): the unit is `prefix-name.scope`
//! in `slice`. Inside the VM the container's cgroup gets the path systemd
//! would give it on the host (`/machine.slice/libpod-ID.scope`).
//!
//! Root only, as runc: PID 1 is reached on its private socket, with no bus
//! daemon in between.

use crate::dbus::{self, Peer, Target};
use std::path::Path;
use std::time::{Duration, Instant};
use zbus::wire::{OwnedObjectPath, Variant};

const PRIVATE_SOCKET: &str = "/run/systemd/private";
const MANAGER: Target = Target {
    destination: "org.freedesktop.systemd1",
    path: "/org/freedesktop/systemd1",
    interface: "org.freedesktop.systemd1.Manager",
};
/// How long systemd may take to answer, then to move us into the scope.
const TIMEOUT: Duration = Duration::from_secs(10);

/// A container's scope: its unit name and the slice it sits in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub slice: String,
    pub unit: String,
}

impl Scope {
    /// The scope `cgroupsPath` names (`slice:prefix:name`); without one,
    /// `system.slice:husk:ID`, as runc's default is `system.slice:runc:ID`.
    pub fn parse(cgroups_path: Option<&str>, id: &str) -> Result<Scope, String> {
        let Some(path) = cgroups_path else {
            return Ok(Scope {
                slice: "system.slice".into(),
                unit: format!("husk-{id}.scope"),
            });
        };
        let parts: Vec<&str> = path.split(':').collect();
        let [slice, prefix, name] = parts[..] else {
            return Err(format!(
                "cgroupsPath {path}: --systemd-cgroup wants slice:prefix:name"
            ));
        };
        let slice = if slice.is_empty() {
            "system.slice"
        } else {
            slice
        };
        if !slice.ends_with(".slice") || slice.contains('/') {
            return Err(format!("cgroupsPath {path}: {slice} is not a slice unit"));
        }
        if name.is_empty() || name.contains('/') || name.ends_with(".slice") {
            return Err(format!(
                "cgroupsPath {path}: {name:?} cannot name the container's scope"
            ));
        }
        let unit = if prefix.is_empty() {
            format!("{name}.scope")
        } else {
            format!("{prefix}-{name}.scope")
        };
        Ok(Scope {
            slice: slice.into(),
            unit,
        })
    }

    /// The scope's cgroup, as systemd lays slices out: `a-b.slice` is
    /// `/a.slice/a-b.slice`, `-.slice` the root.
    pub fn cgroup_path(&self) -> String {
        let mut path = String::new();
        if self.slice != "-.slice" {
            let stem = self.slice.trim_end_matches(".slice");
            let mut prefix = String::new();
            for part in stem.split('-') {
                if !prefix.is_empty() {
                    prefix.push('-');
                }
                prefix.push_str(part);
                path.push('/');
                path.push_str(&prefix);
                path.push_str(".slice");
            }
        }
        path.push('/');
        path.push_str(&self.unit);
        path
    }

    /// Asks systemd for the scope with `pid` in it, and waits until the
    /// pid is there.
    pub fn start(&self, pid: u32, description: &str) -> Result<(), String> {
        let mut peer = connect()?;
        let properties: Vec<(&str, Variant)> = vec![
            ("Description", Variant::from(description)),
            ("Slice", Variant::from(self.slice.as_str())),
            ("PIDs", Variant::from(vec![pid])),
            // The scope's subtree is ours, as runc asks.
            ("Delegate", Variant::from(true)),
            // No ordering against shutdown targets: the container's life
            // is its own.
            ("DefaultDependencies", Variant::from(false)),
        ];
        let aux: Vec<(&str, Vec<(&str, Variant)>)> = Vec::new();
        let (_job,): (OwnedObjectPath,) = peer
            .call(
                &MANAGER,
                "StartTransientUnit",
                &(self.unit.as_str(), "fail", properties, aux),
            )
            .map_err(|e| format!("systemd: cannot start {}: {e}", self.unit))?;
        let want = self.cgroup_path();
        let deadline = Instant::now() + TIMEOUT;
        loop {
            if cgroup_of(pid).as_deref() == Some(want.as_str()) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "systemd started {} but did not move pid {pid} into {want} in {} s",
                    self.unit,
                    TIMEOUT.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

/// Stops `unit` (what is left in it is killed) and forgets a failed one.
/// A unit that is already gone is fine.
pub fn stop(unit: &str) -> Result<(), String> {
    let mut peer = connect()?;
    let gone = |e: &dbus::Error| matches!(e, dbus::Error::Remote { name, .. } if name.ends_with(".NoSuchUnit") || name.ends_with(".UnitNotLoaded"));
    match peer.call::<_, (OwnedObjectPath,)>(&MANAGER, "StopUnit", &(unit, "replace")) {
        Ok(_) => {}
        Err(e) if gone(&e) => return Ok(()),
        Err(e) => return Err(format!("systemd: cannot stop {unit}: {e}")),
    }
    match peer.call::<_, ()>(&MANAGER, "ResetFailedUnit", &(unit,)) {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(e) => Err(format!("systemd: cannot reset {unit}: {e}")),
    }
}

fn connect() -> Result<Peer, String> {
    if !nix::unistd::Uid::effective().is_root() {
        return Err(
            "--systemd-cgroup needs root (rootless systemd cgroups are not supported)".into(),
        );
    }
    let path = Path::new(PRIVATE_SOCKET);
    Peer::connect(path, TIMEOUT).map_err(|e| {
        format!("--systemd-cgroup: cannot reach systemd at {PRIVATE_SOCKET} ({e}); is systemd this host's init?")
    })
}

/// `pid`'s cgroup v2 path, from /proc.
fn cgroup_of(pid: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(path: &str) -> Result<Scope, String> {
        Scope::parse(Some(path), "abc")
    }

    #[test]
    fn slice_prefix_name_becomes_a_scope_in_a_slice() {
        let s = scope("machine.slice:libpod:abc").unwrap();
        assert_eq!(s.unit, "libpod-abc.scope");
        assert_eq!(s.cgroup_path(), "/machine.slice/libpod-abc.scope");
        let s = scope(":docker:abc").unwrap();
        assert_eq!(s.slice, "system.slice");
        assert_eq!(s.cgroup_path(), "/system.slice/docker-abc.scope");
        let s = scope("kubepods-besteffort-pod1.slice::abc").unwrap();
        assert_eq!(s.unit, "abc.scope");
        assert_eq!(
            s.cgroup_path(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/abc.scope"
        );
        assert_eq!(
            scope("-.slice:p:abc").unwrap().cgroup_path(),
            "/p-abc.scope"
        );
        let d = Scope::parse(None, "abc").unwrap();
        assert_eq!(d.cgroup_path(), "/system.slice/husk-abc.scope");
    }

    #[test]
    fn other_paths_are_refused_by_name() {
        for bad in [
            "/a/b",
            "a:b",
            "a:b:c:d",
            "a.scope:p:n",
            "a.slice:p:",
            "a.slice:p:x/y",
        ] {
            let e = scope(bad).unwrap_err();
            assert!(e.starts_with(&format!("cgroupsPath {bad}:")), "{e}");
        }
    }
}
