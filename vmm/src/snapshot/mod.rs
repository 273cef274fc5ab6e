//! Snapshots of a paused VM and VMs restored from them (Firecracker's
//! Full snapshot: a state file and a memory file).
//!
//! - `cpu`: the vCPUs' and the VM's KVM state (registers, MSRs, LAPIC,
//!   PICs, IOAPIC, PIT, clock);
//! - `file`: the state file's checked, versioned format;
//! - `memory`: the memory file, written sparse and mapped back private.
//!
//! - `devices`: virtio devices: what each was made from (re-attached in
//!   the same order at restore) and its transport's registers and queues.
//!
//! The port devices (serial, i8042, the status port) are saved with the
//! VM. Disks, TAP NICs and the vsock device are saved; a shared directory
//! (virtiofsd holds its state) and a NIC on passt are refused, with the
//! reason. vsock connections do not survive a restore: the guest is told
//! (TRANSPORT_RESET), as Firecracker does.

pub mod cpu;
pub mod devices;
pub mod file;
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
    /// virtio devices, in attachment order.
    pub devices: Vec<devices::DeviceState>,
}

/// Why a snapshot could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the VM must be paused for a snapshot")]
    NotPaused,
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
    #[error(transparent)]
    File(#[from] file::Error),
}

/// Where a snapshot goes, or comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    /// The state file.
    pub state: PathBuf,
    /// The guest memory file.
    pub mem: PathBuf,
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
}
