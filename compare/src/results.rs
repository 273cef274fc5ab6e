//! What a comparison measured: the machine, and per workload the samples
//! of each environment. The report, the charts and the JSON all come from
//! this one structure.

use serde::{Deserialize, Serialize};

/// The environments a workload runs in, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Env {
    /// The process on the host, no isolation.
    Native,
    /// A container on the host (`crun run`).
    Crun,
    /// A husk microVM running the container (`husk run`).
    Husk,
    /// QEMU `-M microvm` booting the same guest.
    Qemu,
    /// Firecracker booting the same guest (only when asked for: it is a
    /// peer a user may not have).
    Firecracker,
}

impl Env {
    pub const ALL: [Env; 5] = [
        Env::Native,
        Env::Crun,
        Env::Husk,
        Env::Qemu,
        Env::Firecracker,
    ];
    /// What a run without `--envs` measures.
    pub const DEFAULT: [Env; 4] = [Env::Native, Env::Crun, Env::Husk, Env::Qemu];

    pub fn name(self) -> &'static str {
        match self {
            Env::Native => "native",
            Env::Crun => "crun",
            Env::Husk => "husk",
            Env::Qemu => "qemu",
            Env::Firecracker => "firecracker",
        }
    }

    /// A virtual machine booting a Linux guest (TAP, disk images).
    pub fn is_vm(self) -> bool {
        matches!(self, Env::Husk | Env::Qemu | Env::Firecracker)
    }

    /// A peer VMM booting the project's guest, which reports the command's
    /// status on the console (husk's own runs report it on their port).
    pub fn boots_the_guest(self) -> bool {
        matches!(self, Env::Qemu | Env::Firecracker)
    }
}

/// The host the figures come from.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: u32,
    pub mem_mib: u64,
    pub kernel: String,
    /// e.g. "kvm_intel (hardware)", "kvm_amd (nested, L1 of a TCG testbed)".
    pub kvm: String,
    /// True when the host is itself a VM (CPU `hypervisor` flag).
    pub nested: bool,
    /// RFC 3339, UTC.
    pub date: String,
}

/// One environment's figures for one workload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EnvResult {
    pub env: Env,
    /// Each repetition's value (warm-up excluded), in the workload's unit.
    pub samples: Vec<f64>,
    /// Why there are no samples (e.g. "QEMU is not installed"): a skipped
    /// environment is reported as such, never as a zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl EnvResult {
    pub fn median(&self) -> Option<f64> {
        median(&self.samples)
    }

    pub fn min(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::min)
    }

    pub fn max(&self) -> Option<f64> {
        self.samples.iter().copied().reduce(f64::max)
    }
}

/// One workload across the environments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Workload {
    /// Stable key: `startup_output`, `seq_write`, ...
    pub id: String,
    pub title: String,
    /// "ms", "MB/s", "IOPS", "µs", "MiB".
    pub unit: String,
    pub higher_is_better: bool,
    /// What exactly ran (sizes, flags), for the report.
    pub detail: String,
    pub results: Vec<EnvResult>,
}

impl Workload {
    pub fn result(&self, env: Env) -> Option<&EnvResult> {
        self.results.iter().find(|r| r.env == env)
    }

    /// `env`'s median over `base`'s median, when both ran.
    pub fn ratio(&self, env: Env, base: Env) -> Option<f64> {
        let a = self.result(env)?.median()?;
        let b = self.result(base)?.median()?;
        (b != 0.0).then(|| a / b)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    pub machine: Machine,
    pub quick: bool,
    /// Repetitions per workload and environment (after one warm-up).
    pub runs: u32,
    /// The command line that produced it.
    pub command: String,
    /// husk's VMs were restored from the pool's templates (`HUSK_POOL`),
    /// not booted: the start-up figure is a restore's.
    #[serde(default)]
    pub husk_pool: bool,
    pub workloads: Vec<Workload>,
}

pub fn median(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    Some(if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    })
}
