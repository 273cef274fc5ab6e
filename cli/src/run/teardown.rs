//! The end of a run: the VM stopped for sure, read-write directory volumes
//! copied back after a clean shutdown, and one error that says what went
//! wrong, with the guest console's last lines when the session failed.

use super::launch::{RunDir, CONSOLE_LOG};
use super::{timings, volume};
use crate::Failure;
use husk_vmm::{Exit, Outcome, VmControls};
use husk_wire::agent::ExitStatus;
use std::path::Path;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a guest gets to power off after the session before it is
/// stopped outright.
const POWER_OFF_GRACE: Duration = Duration::from_secs(10);

pub fn teardown(
    session: Result<ExitStatus, String>,
    vm_thread: JoinHandle<Outcome>,
    controls: &VmControls,
    dir: &RunDir,
    volumes: &[volume::Prepared],
) -> Result<u8, Failure> {
    if session.is_err() || !vm_thread.is_finished() {
        // The guest normally powers off after Shutdown; make sure it stops.
        let deadline = Instant::now() + POWER_OFF_GRACE;
        while !vm_thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !vm_thread.is_finished() {
            controls.stop(Exit::Stopped(libc::SIGKILL));
        }
    }
    let outcome = vm_thread.join();
    timings::mark("vm_stopped");
    // The agent reports 0 after it synced and unmounted everything.
    let clean = session.is_ok() && outcome.as_ref().is_ok_and(|o| o.guest_status == Some(0));
    let copy_errors = copy_back(volumes, clean);
    timings::mark("done");
    timings::print();
    match session {
        Ok(_) if !copy_errors.is_empty() => Err(Failure::runtime(copy_errors.join("\n"))),
        Ok(status) => Ok(status.shell_status()),
        Err(message) => {
            if let Ok(o) = outcome {
                log::info!("VM ended: {:?}", o.exit);
            }
            let tail = console_tail(&dir.path.join(CONSOLE_LOG));
            Err(Failure::runtime(if tail.is_empty() {
                message
            } else {
                format!("{message}\nguest console (last lines):\n{tail}")
            }))
        }
    }
}

fn copy_back(volumes: &[volume::Prepared], clean: bool) -> Vec<String> {
    let mut errors = Vec::new();
    for p in volumes.iter().filter(|p| p.copy_back.is_some()) {
        if !clean {
            errors.push(format!(
                "-v {}: the VM did not shut down cleanly; the container's changes were not \
                 copied back",
                p.arg.source.display()
            ));
        } else if let Err(e) = volume::copy_back(p) {
            errors.push(e);
        }
    }
    errors
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
