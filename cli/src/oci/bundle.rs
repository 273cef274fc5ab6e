//! An OCI bundle (`config.json` + a rootfs directory) as a microVM: which
//! host directories the VM shares (the rootfs, and the sources of bind
//! mounts), how big it is, and the spec the guest's agent gets. What husk
//! cannot honour yet is refused here, by name, before anything starts.

use husk_wire::oci_spec::runtime::{LinuxNamespaceType, Mount, Spec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// VM memory beside the container's limit (kernel, agent, page cache).
pub const GUEST_OVERHEAD_MIB: u64 = crate::run::GUEST_OVERHEAD_MIB;
/// VM memory when the spec sets no limit.
pub const DEFAULT_VM_MIB: u64 = crate::run::DEFAULT_VM_MIB;
/// Annotations that size the VM, overriding what the limits imply.
pub const ANNOTATION_VCPUS: &str = "husk.vcpus";
pub const ANNOTATION_MEMORY: &str = "husk.memory";
/// "false": the monitor keeps root while the VM runs (see monitor.rs).
pub const ANNOTATION_JAIL: &str = "husk.jail";
/// virtio-mmio devices left for shares after the root disk and vsock.
const MAX_SHARES: usize = 14;

/// A host directory the VM shares with virtio-fs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    pub dir: PathBuf,
    pub tag: String,
    /// Where the agent mounts it in the guest.
    pub guest_path: String,
}

/// A bundle, checked and turned into what the VM needs.
#[derive(Debug)]
pub struct Planned {
    pub bundle: PathBuf,
    /// The container's root, shared as [`ROOT_TAG`].
    pub rootfs: PathBuf,
    /// The spec for the guest: bind mounts point into the shares.
    pub spec: Spec,
    pub shares: Vec<Share>,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// [`ANNOTATION_JAIL`], if the spec says.
    pub jail: Option<bool>,
    pub annotations: BTreeMap<String, String>,
}

impl Planned {
    /// Whether the process wants a terminal (`process.terminal`).
    pub fn terminal(&self) -> bool {
        self.spec
            .process()
            .as_ref()
            .and_then(|p| p.terminal())
            .unwrap_or(false)
    }
}

/// The virtio-fs tag of the container's root.
pub const ROOT_TAG: &str = "root";

/// Reads and checks `bundle/config.json`.
pub fn load(bundle: &Path) -> Result<Planned, String> {
    let bundle =
        std::fs::canonicalize(bundle).map_err(|e| format!("bundle {}: {e}", bundle.display()))?;
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let spec: Spec =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    plan(&bundle, spec)
}

fn plan(bundle: &Path, mut spec: Spec) -> Result<Planned, String> {
    refuse_unsupported(&spec)?;
    let root = spec
        .root()
        .as_ref()
        .ok_or("config.json: no root")?
        .path()
        .clone();
    let rootfs = if root.is_absolute() {
        root
    } else {
        bundle.join(root)
    };
    if !rootfs.is_dir() {
        return Err(format!("rootfs {}: not a directory", rootfs.display()));
    }
    let mut shares = Vec::new();
    let mut mounts: Vec<Mount> = spec.mounts().clone().unwrap_or_default();
    for m in &mut mounts {
        if is_bind(m) {
            rewrite_bind(m, &mut shares)?;
        }
    }
    if shares.len() > MAX_SHARES {
        return Err(format!(
            "{} host directories to share: at most {MAX_SHARES}",
            shares.len()
        ));
    }
    spec.set_mounts(Some(mounts));
    let annotations: BTreeMap<String, String> = spec
        .annotations()
        .clone()
        .unwrap_or_default()
        .into_iter()
        .collect();
    let (vcpus, mem_mib) = size(&spec, &annotations)?;
    let jail = match annotations.get(ANNOTATION_JAIL).map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(other) => {
            return Err(format!(
                "annotation {ANNOTATION_JAIL}={other:?}: \"true\" or \"false\""
            ))
        }
    };
    Ok(Planned {
        bundle: bundle.to_owned(),
        rootfs,
        spec,
        shares,
        vcpus,
        mem_mib,
        jail,
        annotations,
    })
}

/// What a VM cannot do the way the spec asks, yet: an error naming it.
fn refuse_unsupported(spec: &Spec) -> Result<(), String> {
    spec.process().as_ref().ok_or("config.json: no process")?;
    if let Some(h) = spec.hooks() {
        let inside = [
            ("createContainer", h.create_container()),
            ("startContainer", h.start_container()),
        ];
        for (kind, hooks) in inside {
            if hooks.as_ref().is_some_and(|v| !v.is_empty()) {
                return Err(format!(
                    "hooks.{kind}: hooks that run inside the container (in the VM) are not supported"
                ));
            }
        }
    }
    if let Some(linux) = spec.linux() {
        for ns in linux.namespaces().iter().flatten() {
            // network.rs stands the monitor in a network namespace it is
            // given; the others would have to be the VM's.
            if ns.typ() == LinuxNamespaceType::Network {
                continue;
            }
            if let Some(p) = ns.path() {
                return Err(format!(
                    "linux.namespaces: joining the host's {:?} namespace {} is not supported yet",
                    ns.typ(),
                    p.display()
                ));
            }
        }
    }
    Ok(())
}

fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options()
            .iter()
            .flatten()
            .any(|o| o == "bind" || o == "rbind")
}

/// Points a bind mount's source into a share of its directory (or of the
/// directory holding it, for a file), adding that share once.
fn rewrite_bind(m: &mut Mount, shares: &mut Vec<Share>) -> Result<(), String> {
    let source = m.source().clone().ok_or_else(|| {
        format!(
            "mount {}: a bind mount needs a source",
            m.destination().display()
        )
    })?;
    let meta = std::fs::metadata(&source).map_err(|e| {
        format!(
            "mount {}: source {}: {e}",
            m.destination().display(),
            source.display()
        )
    })?;
    let (dir, name) = if meta.is_dir() {
        (source.clone(), None)
    } else if meta.is_file() {
        let parent = source.parent().unwrap_or(Path::new("/")).to_owned();
        (parent, source.file_name().map(|n| n.to_owned()))
    } else {
        return Err(format!(
            "mount {}: source {} is neither a file nor a directory (devices and sockets cannot be shared into a VM)",
            m.destination().display(),
            source.display()
        ));
    };
    let share = match shares.iter().find(|s| s.dir == dir) {
        Some(s) => s.clone(),
        None => {
            let i = shares.len();
            let s = Share {
                dir,
                tag: format!("bind{i}"),
                guest_path: format!("/run/husk/volumes/{i}"),
            };
            shares.push(s.clone());
            s
        }
    };
    let mut guest = PathBuf::from(&share.guest_path);
    if let Some(n) = name {
        guest.push(n);
    }
    m.set_source(Some(guest));
    Ok(())
}

/// vCPUs and MiB: annotations first, else the spec's CPU and memory limits
/// (the limit plus the guest's own overhead), else the defaults.
fn size(spec: &Spec, annotations: &BTreeMap<String, String>) -> Result<(u8, u64), String> {
    let resources = spec.linux().as_ref().and_then(|l| l.resources().clone());
    let limit = resources
        .as_ref()
        .and_then(|r| r.memory().as_ref())
        .and_then(|m| m.limit())
        .filter(|&l| l > 0)
        .map(|l| (l as u64).div_ceil(1 << 20) + GUEST_OVERHEAD_MIB);
    let cpus = resources
        .as_ref()
        .and_then(|r| r.cpu().as_ref())
        .and_then(|c| match (c.quota(), c.period()) {
            (Some(q), Some(p)) if q > 0 && p > 0 => Some((q as u64).div_ceil(p)),
            _ => None,
        });
    let number = |key: &str, max: u64| -> Result<Option<u64>, String> {
        annotations
            .get(key)
            .map(|v| {
                v.parse::<u64>()
                    .ok()
                    .filter(|&n| (1..=max).contains(&n))
                    .ok_or_else(|| format!("annotation {key}={v:?}: expected 1 to {max}"))
            })
            .transpose()
    };
    let vcpus = number(ANNOTATION_VCPUS, 32)?.or(cpus).unwrap_or(1).min(32) as u8;
    let mem = number(ANNOTATION_MEMORY, 1 << 20)?
        .or(limit)
        .unwrap_or(DEFAULT_VM_MIB);
    Ok((vcpus, mem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_wire::oci_spec::runtime::{MountBuilder, Spec};

    fn bundle() -> (tempfile::TempDir, Spec) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("rootfs")).unwrap();
        let spec = husk_wire::spec::default_spec(vec!["sh".into()]);
        (dir, spec)
    }

    #[test]
    fn bind_mounts_become_shares_and_files_share_their_directory() {
        let (dir, mut spec) = bundle();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        let etc = dir.path().join("etc");
        std::fs::create_dir(&etc).unwrap();
        std::fs::write(etc.join("hosts"), "").unwrap();
        std::fs::write(etc.join("resolv.conf"), "").unwrap();
        let bind = |src: &Path, dst: &str| {
            MountBuilder::default()
                .destination(dst)
                .typ("bind")
                .source(src)
                .options(vec!["rbind".to_string(), "rw".to_string()])
                .build()
                .unwrap()
        };
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(bind(&data, "/data"));
        mounts.push(bind(&etc.join("hosts"), "/etc/hosts"));
        mounts.push(bind(&etc.join("resolv.conf"), "/etc/resolv.conf"));
        spec.set_mounts(Some(mounts));
        let p = plan(dir.path(), spec).unwrap();
        assert_eq!(p.shares.len(), 2, "{:?}", p.shares);
        assert_eq!(p.shares[0].dir, data);
        assert_eq!(p.shares[1].dir, etc);
        let sources: Vec<String> = p
            .spec
            .mounts()
            .clone()
            .unwrap()
            .iter()
            .filter(|m| is_bind(m))
            .map(|m| m.source().clone().unwrap().display().to_string())
            .collect();
        assert_eq!(
            sources,
            [
                "/run/husk/volumes/0",
                "/run/husk/volumes/1/hosts",
                "/run/husk/volumes/1/resolv.conf"
            ]
        );
        assert_eq!((p.vcpus, p.mem_mib), (1, DEFAULT_VM_MIB));
    }

    #[test]
    fn what_a_vm_cannot_do_yet_is_refused_by_name() {
        let (dir, mut spec) = bundle();
        let mut hooks = husk_wire::oci_spec::runtime::Hooks::default();
        hooks.set_start_container(Some(vec![
            husk_wire::oci_spec::runtime::HookBuilder::default()
                .path("/bin/true")
                .build()
                .unwrap(),
        ]));
        spec.set_hooks(Some(hooks));
        assert!(plan(dir.path(), spec)
            .unwrap_err()
            .contains("hooks.startContainer"));
        let (dir, mut spec) = bundle();
        let mut mounts = spec.mounts().clone().unwrap();
        mounts.push(
            MountBuilder::default()
                .destination("/x")
                .typ("bind")
                .source("/nonexistent/source")
                .build()
                .unwrap(),
        );
        spec.set_mounts(Some(mounts));
        assert!(plan(dir.path(), spec)
            .unwrap_err()
            .contains("/nonexistent/source"));
        let (dir, spec) = bundle();
        std::fs::remove_dir(dir.path().join("rootfs")).unwrap();
        assert!(plan(dir.path(), spec).unwrap_err().contains("rootfs"));
    }

    #[test]
    fn limits_and_annotations_size_the_vm() {
        let (dir, mut spec) = bundle();
        let mut a = std::collections::HashMap::new();
        a.insert(ANNOTATION_VCPUS.to_string(), "2".to_string());
        a.insert(ANNOTATION_MEMORY.to_string(), "300".to_string());
        spec.set_annotations(Some(a.clone()));
        let p = plan(dir.path(), spec).unwrap();
        assert_eq!((p.vcpus, p.mem_mib), (2, 300));
        let (dir, mut spec) = bundle();
        a.insert(ANNOTATION_VCPUS.to_string(), "0".to_string());
        spec.set_annotations(Some(a));
        assert!(plan(dir.path(), spec).unwrap_err().contains("husk.vcpus"));
    }
}
