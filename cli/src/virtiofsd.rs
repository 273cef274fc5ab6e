//! virtiofsd, the virtio-fs backend husk starts for a shared directory:
//! one per directory, on a socket in the run's directory, in its own
//! namespace sandbox with seccomp killing what it does not expect, its
//! messages in a log beside the socket.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long virtiofsd gets to create its socket.
const START: Duration = Duration::from_secs(10);

/// virtiofsd: `$HUSK_VIRTIOFSD`, else where scripts/setup installs it, else
/// `PATH`.
pub fn program() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HUSK_VIRTIOFSD") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            return Err(format!(
                "HUSK_VIRTIOFSD={}: no such program (virtiofsd serves shared directories)",
                p.display()
            ));
        }
        return Ok(p);
    }
    let installed = Path::new("/usr/local/bin/virtiofsd");
    if installed.is_file() {
        return Ok(installed.to_path_buf());
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("virtiofsd"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "shared directories need virtiofsd, which is not installed \
             (cargo install virtiofsd; scripts/setup does it)"
                .to_owned()
        })
}

/// A running virtiofsd; killed when dropped (it also exits by itself when
/// the VM disconnects).
pub struct Backend {
    child: Child,
    pub socket: PathBuf,
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.socket);
    }
}

/// Starts virtiofsd for `dir` with its socket and log as `work/NAME.sock`
/// and `work/NAME.log`, and waits for the socket.
pub fn start(dir: &Path, read_only: bool, work: &Path, name: &str) -> Result<Backend, String> {
    let socket = work.join(format!("{name}.sock"));
    let log_path = work.join(format!("{name}.log"));
    let log = fs::File::create(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let mut cmd = Command::new(program()?);
    cmd.arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", dir.display()))
        .args(["--sandbox=namespace", "--seccomp=kill", "--log-level=warn"])
        // Extended attributes are off in virtiofsd by default; a shared
        // directory should keep them like any other filesystem does.
        .arg("--xattr")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    if read_only {
        cmd.arg("--readonly");
    }
    // SAFETY: prctl is async-signal-safe. A husk that is SIGKILLed takes
    // its virtiofsd with it (the thread that spawns it is the one that
    // lives as long as the run), so no backend outlives its VM.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start virtiofsd: {e}"))?;
    let mut backend = Backend { child, socket };
    let deadline = Instant::now() + START;
    while !backend.socket.exists() {
        let exited = backend.child.try_wait().ok().flatten();
        if exited.is_some() || Instant::now() > deadline {
            let why = fs::read_to_string(&log_path).unwrap_or_default();
            let last = why.lines().last().unwrap_or("no message").trim().to_owned();
            return Err(format!("virtiofsd did not start: {last}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(backend)
}
