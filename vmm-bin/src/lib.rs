//! The VMM process: one VM driven through the Firecracker-compatible API on
//! a Unix socket, or booted from a config file. Both the small `husk-vmm`
//! executable and `husk vmm` (and `husk snapshot restore`) run it; the
//! executable links only this, the VMM and the API, so it starts and exits
//! the way a Firecracker user expects of a VMM.

pub mod cgroup2;
pub mod controller;
pub mod jail;
pub mod logger;
mod serve;

pub use serve::{run, run_restored, VmmArgs};

/// A failure with the exit status it deserves: 2 for bad usage, 1 for a
/// runtime failure (the conventions of clap and of most Unix tools).
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn usage(message: impl Into<String>) -> Self {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
    pub fn runtime(message: impl Into<String>) -> Self {
        Failure {
            code: 1,
            message: message.into(),
        }
    }
}
