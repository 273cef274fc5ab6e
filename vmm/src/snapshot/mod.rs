//! Snapshots of a paused VM and VMs restored from them (Firecracker's
//! Full snapshot: a state file and a memory file).
//!
//! - `cpu`: the vCPUs' and the VM's KVM state (registers, MSRs, LAPIC,
//!   PICs, IOAPIC, clock; no PIT);
//! - `file`: the state file's checked, versioned format;
//! - `memory`: the memory file, written sparse and mapped back private.
//!
//! - `devices`: virtio devices: what each was made from (re-attached in
//!   the same order at restore) and its transport's registers and queues.
//!
//! The port devices (serial, i8042, the status port) are saved with the
//! VM. Disks, TAP NICs and the vsock device are saved; a shared directory
//! only while the guest has not used it (once mounted, its FUSE session
//! lives in virtiofsd): a VM with one is restored into shared memory (a
//! memfd the memory file is copied into), which its new virtiofsd maps.
//! A NIC on passt
//! is saved without its host side, so a restore must give it one
//! ([`Overrides::nets`]). vsock connections do not survive a restore: the guest is told
//! (TRANSPORT_RESET), as Firecracker does.

pub mod cpu;
pub mod devices;
pub mod dirty;
pub mod file;
pub mod hugetlb;
pub mod memory;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

use crate::pio::PioState;

/// Everything but guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct VmState {
    /// Guest RAM in MiB, as the VM was configured.
    pub mem_mib: u64,
    /// The RAM regions in the memory file, in order: (guest address,
    /// length).
    pub ram: Vec<(u64, u64)>,
    pub kvm: cpu::VmKvmState,
    pub vcpus: Vec<cpu::VcpuState>,
    pub pio: PioState,
    /// husk's IOAPIC (KVM has only the local APICs).
    pub ioapic: husk_devices::legacy::ioapic::IoapicState,
    /// virtio devices, in attachment order.
    pub devices: Vec<devices::DeviceState>,
}

/// Why a snapshot could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the VM must be paused for a snapshot")]
    NotPaused,
    #[error("a Diff snapshot needs dirty-page tracking: set track_dirty_pages in the machine config (or when loading the snapshot it resumes)")]
    NotTracking,
    #[error("reading the dirty pages: {0}")]
    DirtyLog(String),
    #[error("the VM has stopped")]
    Stopped,
    #[error("device {0}: {1}")]
    Device(usize, String),
    #[error("vCPU {0} did not stop to be saved")]
    VcpuBusy(usize),
    #[error("saving vCPU {0}: {1}")]
    Vcpu(usize, String),
    #[error("saving the VM: {0}")]
    Kvm(String),
    #[error("writing guest memory to {0}: {1}")]
    Memory(PathBuf, std::io::Error),
    #[error("a Diff snapshot goes onto a memory file by its path, not into an open file")]
    DiffIntoFile,
    #[error(transparent)]
    File(#[from] file::Error),
}

/// Firecracker's snapshot types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages written since the last snapshot (or since the VM
    /// started), onto the memory file given; needs dirty-page tracking.
    Diff,
}

/// Where a snapshot goes, or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The state file.
    pub state: PathBuf,
    /// The guest memory file.
    pub mem: PathBuf,
}

/// A Full snapshot's files, opened by someone who may write where the VMM
/// cannot (a jailed run's checkpoint, made by the unjailed command).
#[derive(Debug)]
pub struct SnapshotFiles {
    pub state: std::fs::File,
    pub mem: std::fs::File,
}

/// Where a snapshot goes.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotTarget<'a> {
    Paths(&'a SnapshotPaths),
    Files(&'a SnapshotFiles),
}

/// A VM to restore.
#[derive(Debug, Clone)]
pub struct RestoreConfig {
    pub snapshot: SnapshotPaths,
    pub console: crate::Console,
    /// Forward the VMM's stdin to the serial console.
    pub stdin: bool,
    /// Run even on kvm_pvm (tests, benches).
    pub allow_pvm: bool,
    /// Run the vCPUs at once; otherwise the VM waits paused.
    pub resume: bool,
    /// Track dirty pages from here on, for Diff snapshots of the restored
    /// VM.
    pub track_dirty_pages: bool,
    /// Host resources that differ from the snapshot's.
    pub overrides: Overrides,
    /// How guest memory comes back from the memory file.
    pub memory: memory::Backing,
}

/// What a restored VM takes from the host in place of what the snapshot
/// names: how one template serves many VMs. A disk given a new file keeps
/// its serial, its read-only flag and its place; the guest is told its
/// size changed (a config interrupt), so a disk that was empty in the
/// template shows the new file's size. Nothing the guest has cached of the
/// old file is dropped: a template's stand-in disks are empty, so there is
/// nothing to cache.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    /// New files for disks, by drive id.
    pub disks: Vec<(String, PathBuf)>,
    /// The vsock device's Unix socket.
    pub vsock_uds: Option<PathBuf>,
    /// New host sides (and MACs) for NICs. The guest's driver keeps the
    /// MAC it read at probe: its owner sets the new one in the guest.
    pub nets: Vec<NetOverride>,
    /// New virtiofsd sockets for shared directories, by device id: the
    /// guest mounts the new backend's directory by the saved tag.
    pub fs: Vec<(String, PathBuf)>,
}

/// A NIC's new host side and MAC, by interface id.
#[derive(Debug, Clone, PartialEq)]
pub struct NetOverride {
    pub id: String,
    pub host: crate::NetHost,
    pub mac: [u8; 6],
}

impl Overrides {
    /// The NIC override for interface `id`, if any.
    pub fn net(&self, id: &str) -> Option<&NetOverride> {
        self.nets.iter().find(|n| n.id == id)
    }

    /// The snapshot's spec with the disk and vsock overrides applied, and
    /// whether it changed (NICs: see [`Overrides::net`]).
    pub fn apply(&self, spec: &devices::DeviceSpec) -> (devices::DeviceSpec, bool) {
        let mut spec = spec.clone();
        let changed = match &mut spec {
            devices::DeviceSpec::Disk { path, id, .. } => replace(path, by_id(&self.disks, id)),
            devices::DeviceSpec::Vsock { uds_path, .. } => {
                replace(uds_path, self.vsock_uds.as_ref())
            }
            devices::DeviceSpec::Fs { socket, id, .. } => replace(socket, by_id(&self.fs, id)),
            devices::DeviceSpec::Net { .. } => false,
        };
        (spec, changed)
    }

    /// The first override no device of `specs` takes: a typo'd drive id,
    /// or a vsock socket for a VM without vsock.
    pub fn unmatched(&self, specs: &[&devices::DeviceSpec]) -> Option<String> {
        use devices::DeviceSpec::{Disk, Fs, Net, Vsock};
        let has = |is: &dyn Fn(&devices::DeviceSpec) -> bool| specs.iter().any(|s| is(s));
        if let Some((want, _)) = self
            .disks
            .iter()
            .find(|(want, _)| !has(&|s| matches!(s, Disk { id, .. } if id == want)))
        {
            return Some(format!("the snapshot has no drive {want:?}"));
        }
        if let Some(n) = self
            .nets
            .iter()
            .find(|n| !has(&|s| matches!(s, Net { id, .. } if *id == n.id)))
        {
            return Some(format!("the snapshot has no network interface {:?}", n.id));
        }
        if let Some((want, _)) = self
            .fs
            .iter()
            .find(|(want, _)| !has(&|s| matches!(s, Fs { id, .. } if id == want)))
        {
            return Some(format!("the snapshot has no shared directory {want:?}"));
        }
        (self.vsock_uds.is_some() && !has(&|s| matches!(s, Vsock { .. })))
            .then(|| "the snapshot has no vsock device".to_string())
    }
}

/// The path `list` gives device `id`, if any.
fn by_id<'a>(list: &'a [(String, PathBuf)], id: &str) -> Option<&'a PathBuf> {
    list.iter().find(|(d, _)| d == id).map(|(_, p)| p)
}

/// Puts `new` in `path`; whether there was one.
fn replace(path: &mut PathBuf, new: Option<&PathBuf>) -> bool {
    new.map(|n| *path = n.clone()).is_some()
}

#[cfg(test)]
mod tests {
    use super::devices::DeviceSpec;
    use super::*;

    #[test]
    fn a_share_takes_its_new_socket_by_id_and_an_unknown_id_is_named() {
        let share = DeviceSpec::Fs {
            socket: "/template/vol0.sock".into(),
            tag: "vol0".into(),
            id: "vol0".into(),
        };
        let o = Overrides {
            fs: vec![("vol0".into(), "/run/vol0.sock".into())],
            ..Default::default()
        };
        let (spec, changed) = o.apply(&share);
        assert!(changed);
        assert!(
            matches!(&spec, DeviceSpec::Fs { socket, tag, .. }
                if socket == std::path::Path::new("/run/vol0.sock") && tag == "vol0"),
            "{spec:?}"
        );
        assert_eq!(o.unmatched(&[&share]), None);
        let typo = Overrides {
            fs: vec![("vol1".into(), "/run/vol1.sock".into())],
            ..Default::default()
        };
        assert_eq!(typo.apply(&share), (share.clone(), false));
        assert_eq!(
            typo.unmatched(&[&share]).as_deref(),
            Some("the snapshot has no shared directory \"vol1\"")
        );
    }
}
