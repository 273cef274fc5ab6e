//! `export_changes` (for `husk commit`): a child of the agent writes the
//! container's changes as a tar to a pipe the agent relays like a
//! process's output, so a large layer neither blocks the agent's loop nor
//! sits in its memory; the child's exit status is the export's.

use husk_container::ProcessIo;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Forks the exporter; returns its pid and its output pipes.
pub fn spawn(
    lower: PathBuf,
    init_pid: i32,
    cgroup: Option<PathBuf>,
) -> Result<(i32, ProcessIo), String> {
    let (out_r, out_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = nix::unistd::pipe().map_err(|e| format!("pipe: {e}"))?;
    // SAFETY: the agent is single-threaded (it never spawns threads), so
    // the child may run ordinary Rust code: no lock can be held by a thread
    // that does not exist in it. It only exits, never returns.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop((out_r, err_r));
            let code = run(&lower, init_pid, cgroup.as_deref(), out_w, err_w);
            // SAFETY: _exit ends the child without running the parent's
            // atexit handlers or flushing its copies of the agent's buffers.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => Ok((
            child.as_raw(),
            ProcessIo {
                stdin: None,
                stdout: out_r,
                stderr: Some(err_r),
            },
        )),
    }
}

/// The child: the container frozen (as `docker commit` pauses it) while
/// its root is compared with the image tree.
fn run(lower: &Path, init_pid: i32, cgroup: Option<&Path>, out: OwnedFd, err: OwnedFd) -> i32 {
    let mut err = std::fs::File::from(err);
    let frozen = cgroup.map(|c| freeze(c, true));
    if let Some(Err(e)) = &frozen {
        let _ = writeln!(err, "cannot freeze the container: {e}");
        return 1;
    }
    let merged = PathBuf::from(format!("/proc/{init_pid}/root"));
    let out = std::io::BufWriter::with_capacity(64 << 10, std::fs::File::from(out));
    let result = std::fs::read_to_string(format!("/proc/{init_pid}/mountinfo")).and_then(|info| {
        let mounts = husk_container::changes::mount_points(&info);
        husk_container::changes::export(lower, &merged, &mounts, out)
    });
    if let Some(c) = cgroup {
        let _ = freeze(c, false);
    }
    match result {
        Ok(_) => 0,
        Err(e) => {
            let _ = writeln!(err, "exporting the container's changes: {e}");
            1
        }
    }
}

/// Freezes or thaws a cgroup v2 and waits until it is so.
fn freeze(cgroup: &Path, frozen: bool) -> Result<(), String> {
    let want = if frozen { "1" } else { "0" };
    std::fs::write(cgroup.join("cgroup.freeze"), want)
        .map_err(|e| format!("{}/cgroup.freeze: {e}", cgroup.display()))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let events = std::fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if events.lines().any(|l| l == format!("frozen {want}")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{} did not become frozen={want} in 5 s",
                cgroup.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}
