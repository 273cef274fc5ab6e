//! The end of a run: the VM stopped for sure, the volumes' virtiofsd gone
//! with it, and one error that says what went wrong, with the guest
//! console's last lines when the session failed.

use super::launch::{RunDir, CONSOLE_LOG};
use super::{timings, volume, VmThread};
use crate::Failure;
use husk_vmm::{Exit, VmControls};
use husk_wire::agent::ExitStatus;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a guest gets to power off after the session before it is
/// stopped outright.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);

pub fn teardown(
    session: Result<ExitStatus, String>,
    vm_thread: VmThread<husk_vmm::Outcome>,
    controls: &VmControls,
    dir: &RunDir,
    backends: Vec<volume::Backend>,
) -> Result<u8, Failure> {
    // The guest normally powers off after Shutdown; make sure it stops.
    if !vm_thread.wait_until(Instant::now() + POWER_OFF_GRACE) {
        controls.stop(Exit::Stopped(libc::SIGKILL));
    }
    let outcome = vm_thread.join();
    timings::mark("vm_stopped");
    // Shared directories hold nothing to copy: what the container wrote is
    // on the host's disk already.
    drop(backends);
    timings::mark("done");
    timings::print();
    match session {
        Ok(status) => Ok(status.shell_status()),
        Err(message) => {
            // How the VM ended tells a guest reset from a halt or a KVM
            // failure when the console has nothing (a quiet guest).
            let ended = match outcome {
                Ok(o) => format!(
                    "the VM ended: {:?}{}, guest status {}{}",
                    o.exit,
                    o.reset.map(|how| format!(" by {how}")).unwrap_or_default(),
                    o.guest_status
                        .map_or_else(|| "none".to_string(), |s| s.to_string()),
                    o.guest_panic
                        .map(|why| format!(", after a guest kernel panic: {why}"))
                        .unwrap_or_default()
                ),
                Err(_) => "the VM thread panicked".to_string(),
            };
            let tail = console_tail(&dir.path.join(CONSOLE_LOG));
            Err(Failure::runtime(if tail.is_empty() {
                format!("{message}\n{ended}; the guest console is empty")
            } else {
                format!("{message}\n{ended}; guest console (last lines):\n{tail}")
            }))
        }
    }
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
