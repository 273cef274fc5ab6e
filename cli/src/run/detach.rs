//! `husk run -d`: the same command line again as a background husk that
//! owns the VM, and the handover once the container runs.

use super::RunArgs;
use crate::Failure;
use std::io::BufRead;
use std::path::Path;

/// Set in the environment of the background process a `husk run -d`
/// starts: the id it is to use.
pub const MONITOR_ENV: &str = "HUSK_MONITOR_ID";
/// What that process writes on its stderr once the container runs.
const READY_LINE: &str = "husk: container started";

/// `husk run -d`: starts this same command line again as a background
/// process that owns the VM, relays its stderr until the container runs,
/// then prints the id and returns.
pub fn detach(args: &RunArgs) -> Result<u8, Failure> {
    if args.process.interactive {
        return Err(Failure::usage(
            "-d with -i: attaching to a detached container is not supported",
        ));
    }
    let argv: Vec<std::ffi::OsString> = std::env::args_os().skip(1).collect();
    spawn(&argv, None)
}

/// Starts `husk ARGV` (a `run -d` command line) as the background process
/// that owns the VM, restoring it from a checkpoint if given one; relays
/// its stderr until the container runs, then prints the id.
pub fn spawn(
    argv: &[impl AsRef<std::ffi::OsStr>],
    restore_from: Option<&Path>,
) -> Result<u8, Failure> {
    let id = super::new_id();
    let exe = std::env::current_exe()
        .map_err(|e| Failure::runtime(format!("cannot find the husk binary: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    if let Some(dir) = restore_from {
        cmd.env(super::checkpoint::RESTORE_ENV, dir);
    }
    cmd.args(argv)
        .env(MONITOR_ENV, &id)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setsid is async-signal-safe; it detaches the child from the
    // terminal's session so Ctrl-C and hangups there do not reach it.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| Failure::runtime(format!("cannot start the background husk: {e}")))?;
    let stderr = child.stderr.take().expect("piped above");
    for line in std::io::BufReader::new(stderr).lines() {
        let Ok(line) = line else { break };
        if line == READY_LINE {
            println!("{id}");
            return Ok(0);
        }
        eprintln!("{line}");
    }
    let status = child
        .wait()
        .map_err(|e| Failure::runtime(format!("waiting for the background husk: {e}")))?;
    // It said why on the stderr relayed above.
    Ok(status
        .code()
        .map_or(1, |c| u8::try_from(c).unwrap_or(1))
        .max(1))
}

/// Where a detached run's husk writes its messages once the container runs.
pub const MONITOR_LOG: &str = "monitor.log";

/// Tells the `husk run -d` that started us that the container runs, and
/// sends our own messages to `monitor.log` from now on (which also ends
/// that process's wait for us).
pub fn become_background(dir: &Path) {
    eprintln!("{READY_LINE}");
    let log = dir.join(MONITOR_LOG);
    if let Ok(f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        use std::os::fd::AsRawFd;
        // SAFETY: dup2 onto fd 2 replaces our stderr with an open file we
        // own; the old pipe end is closed by it, nothing else holds fd 2.
        unsafe { libc::dup2(f.as_raw_fd(), libc::STDERR_FILENO) };
    }
}
