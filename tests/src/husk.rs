//! Launches the `husk` binary the way a user does.

use crate::process::{self, Finished};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// `$HUSK_BIN`, else `husk` next to the running test binary's `deps/`
/// directory (cargo builds it there for `cargo test --workspace`).
pub fn binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HUSK_BIN") {
        return p.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target/<profile>");
    let husk = profile_dir.join("husk");
    assert!(
        husk.exists(),
        "{} is missing: build it with `cargo build -p husk` (cargo test --workspace does)",
        husk.display()
    );
    husk
}

/// The small `husk-vmm` executable beside `husk` (`$HUSK_VMM_BIN` first).
pub fn vmm_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("HUSK_VMM_BIN") {
        return p.into();
    }
    let vmm = binary().with_file_name("husk-vmm");
    assert!(
        vmm.exists(),
        "{} is missing: build it with `cargo build -p husk-vmm-bin` (cargo test --workspace does)",
        vmm.display()
    );
    vmm
}

/// Runs `husk ARGS` with a deadline.
pub fn run(args: &[&str], timeout: Duration) -> Finished {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    // A husk that runs out of time says where its VM stood (SIGUSR1).
    process::run_asking(cmd, timeout, Some(libc::SIGUSR1))
}

impl Finished {
    pub fn describe(&self) -> String {
        format!(
            "exit {:?}, timed out {}, {:?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.code, self.timed_out, self.elapsed, self.stdout, self.stderr
        )
    }
}
