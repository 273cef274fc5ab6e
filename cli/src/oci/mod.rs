//! husk as an OCI runtime: runc's command line, so that podman (through
//! conmon), containerd's runc shim and Docker can run each container in a
//! microVM. `create` starts a monitor, a husk process that owns the VM and
//! whose pid is the container's: it lives exactly as long as the
//! container's process and exits with its status. The bundle's rootfs and
//! the sources of its bind mounts are shared with virtio-fs.
//!
//! Done so far: the global flags, `create` (with `--console-socket` for a
//! terminal), `start`, `state`, `kill`, `exec`, `pause`, `resume`,
//! `delete`, `update`, `ps` (update.rs); the container's network namespace
//! becomes the VM's network (network.rs); with `--systemd-cgroup` the
//! container's pid goes in a scope systemd makes (systemd.rs). Refused by
//! name: `--preserve-fds`, joining the host's other namespaces, hooks that
//! run inside the container, and runc's other commands. Hooks that run on
//! the host (prestart, createRuntime, poststart, poststop) run there
//! (hooks.rs).

mod bundle;
mod control;
pub mod exec;
mod features;
mod hooks;
mod monitor;
mod network;
pub mod state;
mod systemd;
pub mod update;

use crate::Failure;
use clap::{Args, ValueEnum};
use state::{Record, Status};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// runc's global flags (before the command: `husk --root R create ...`).
#[derive(Args, Debug, Clone, Default)]
pub struct Global {
    /// Where OCI containers' state lives (default /run/husk/oci).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also write errors to this file (containerd reads the last one).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The --log file's format.
    #[arg(long = "log-format", value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// cgroupsPath is systemd's slice:prefix:name: the container's pid
    /// goes in a transient scope systemd makes.
    #[arg(long = "systemd-cgroup")]
    pub systemd_cgroup: bool,
    /// Debug lines in the VMM's log (the container's state directory).
    #[arg(long)]
    pub debug: bool,
    /// Rootless mode: true, false or auto.
    #[arg(long, value_name = "BOOL")]
    pub rootless: Option<String>,
}

#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl Global {
    /// Whether any flag was given: the command is then an OCI runtime call.
    pub fn any(&self) -> bool {
        self.root.is_some()
            || self.log.is_some()
            || self.log_format.is_some()
            || self.systemd_cgroup
            || self.debug
            || self.rootless.is_some()
    }

    pub fn root(&self) -> PathBuf {
        self.root
            .clone()
            .unwrap_or_else(|| crate::run::runtime_root_path().join("oci"))
    }

    fn check(&self) -> Result<(), Failure> {
        match self.rootless.as_deref() {
            None | Some("false" | "auto") => Ok(()),
            Some("true") => Err(Failure::runtime(
                "--rootless=true: husk runs containers as root (KVM, virtiofsd's sandbox)",
            )),
            Some(other) => Err(Failure::usage(format!(
                "--rootless {other:?}: expected true, false or auto"
            ))),
        }
    }

    /// Writes `message` to the --log file, as runc does (JSON lines with
    /// --log-format json).
    pub fn log_error(&self, message: &str) {
        self.log_line("error", message);
    }

    /// A warning (a failed poststart or poststop hook): on stderr, and in
    /// the --log file.
    pub fn warn(&self, message: &str) {
        eprintln!("husk: warning: {message}");
        self.log_line("warning", message);
    }

    fn log_line(&self, level: &str, message: &str) {
        let Some(path) = &self.log else { return };
        let line = match self.log_format.unwrap_or_default() {
            LogFormat::Json => serde_json::json!({
                "level": level,
                "msg": message,
                "time": state::now_rfc3339(),
            })
            .to_string(),
            LogFormat::Text => format!("{} {level}: {message}", state::now_rfc3339()),
        };
        if let Some(mut f) = LOG.get() {
            let _ = writeln!(f, "{line}");
        } else if let Ok(mut f) = open_log(path) {
            let _ = writeln!(f, "{line}");
        }
    }

    /// Opens the --log file now, for a process that will not see its path
    /// when it has something to say (the jailed monitor).
    pub fn open_log_now(&self) {
        if let Some(f) = self.log.as_deref().and_then(|p| open_log(p).ok()) {
            let _ = LOG.set(f);
        }
    }
}

/// The --log file, once opened ahead ([`Global::open_log_now`]).
static LOG: std::sync::OnceLock<std::fs::File> = std::sync::OnceLock::new();

fn open_log(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

#[derive(Args, Debug, Clone)]
pub struct CreateArgs {
    /// The bundle: config.json and the rootfs it names.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
    /// Where to write the container's pid (its monitor's), once created.
    #[arg(long = "pid-file", value_name = "FILE")]
    pub pid_file: Option<PathBuf>,
    /// A Unix socket to send the master of the container's terminal to
    /// (SCM_RIGHTS), when process.terminal is true.
    #[arg(long = "console-socket", value_name = "SOCKET")]
    pub console_socket: Option<PathBuf>,
    /// runc's: no pivot_root (the guest's agent always pivots).
    #[arg(long = "no-pivot")]
    pub no_pivot: bool,
    /// runc's: no new session keyring (the guest's kernel has no keyrings).
    #[arg(long = "no-new-keyring")]
    pub no_new_keyring: bool,
    /// Pass this many more fds (from 3) to the container (not supported
    /// yet: only 0).
    #[arg(long = "preserve-fds", default_value_t = 0)]
    pub preserve_fds: u32,
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct IdArg {
    pub id: String,
}

#[derive(Args, Debug, Clone)]
pub struct DeleteArgs {
    /// Kill the container first if it runs.
    #[arg(short = 'f', long)]
    pub force: bool,
    pub id: String,
}

/// Runs an OCI command; an error also goes to --log.
pub fn run(g: &Global, f: impl FnOnce(&Global) -> Result<u8, Failure>) -> Result<u8, Failure> {
    let result = g.check().and_then(|()| f(g));
    if let Err(e) = &result {
        g.log_error(&e.message);
    }
    result
}

pub fn create(g: &Global, a: &CreateArgs) -> Result<u8, Failure> {
    if monitor::is_monitor() {
        return monitor::run(g, a);
    }
    if a.preserve_fds > 0 {
        return Err(Failure::runtime(
            "--preserve-fds: passing fds into the VM is not supported yet",
        ));
    }
    state::check_id(&a.id).map_err(Failure::usage)?;
    // Checked here too, so a bad bundle fails before anything starts.
    let planned = bundle::load(&a.bundle).map_err(Failure::runtime)?;
    check_console(planned.terminal(), a.console_socket.as_deref())?;
    let root = g.root();
    std::fs::create_dir_all(&root)
        .map_err(|e| Failure::runtime(format!("--root {}: {e}", root.display())))?;
    let dir = Record::dir(&root, &a.id);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            return Err(Failure::runtime(format!(
                "container with id {} already exists",
                a.id
            )))
        }
        Err(e) => return Err(Failure::runtime(format!("{}: {e}", dir.display()))),
    }
    match monitor::spawn(&dir) {
        Ok(pid) => {
            if let Some(p) = &a.pid_file {
                write_pid_file(p, pid).map_err(Failure::runtime)?;
            }
            Ok(0)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(Failure::runtime(e))
        }
    }
}

/// A terminal needs a socket to hand it over on, and a socket needs a
/// terminal to hand over (create and exec alike).
pub(crate) fn check_console(terminal: bool, socket: Option<&Path>) -> Result<(), Failure> {
    match (terminal, socket) {
        (true, None) => Err(Failure::runtime(
            "process.terminal is true: --console-socket is needed to hand over the terminal",
        )),
        (false, Some(_)) => Err(Failure::runtime(
            "--console-socket given, but process.terminal is false",
        )),
        _ => Ok(()),
    }
}

/// Written last, atomically: whoever waits for it sees a whole pid.
pub(crate) fn write_pid_file(path: &Path, pid: i32) -> Result<(), String> {
    PidFile::at(path)?.write(pid)
}

/// A pid file to write later, through its directory held open: written
/// after the process left the host's mount namespace (the OCI exec proxy).
pub(crate) struct PidFile {
    dir: std::fs::File,
    name: std::ffi::OsString,
    path: std::path::PathBuf,
}

impl PidFile {
    pub(crate) fn at(path: &Path) -> Result<PidFile, String> {
        let name = path.file_name().ok_or("--pid-file: not a file name")?;
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let dir = std::fs::File::open(parent).map_err(|e| format!("{}: {e}", parent.display()))?;
        Ok(PidFile {
            dir,
            name: name.to_owned(),
            path: path.to_owned(),
        })
    }

    /// Writes `pid` into a temporary file that is then renamed: a reader
    /// never sees part of it.
    pub(crate) fn write(&self, pid: i32) -> Result<(), String> {
        use nix::fcntl::{openat, renameat, OFlag};
        use std::os::fd::{AsRawFd, FromRawFd};
        let fail = |e: &dyn std::fmt::Display| format!("{}: {e}", self.path.display());
        let dir = Some(self.dir.as_raw_fd());
        let tmp = format!(".{}.tmp", self.name.to_string_lossy());
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_TRUNC | OFlag::O_CLOEXEC;
        let mode = nix::sys::stat::Mode::from_bits_truncate(0o666);
        let fd = openat(dir, tmp.as_str(), flags, mode).map_err(|e| fail(&e))?;
        // SAFETY: openat just returned this fd; the File is its one owner.
        let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
        std::io::Write::write_all(&mut file, pid.to_string().as_bytes()).map_err(|e| fail(&e))?;
        renameat(dir, tmp.as_str(), dir, self.name.as_os_str()).map_err(|e| fail(&e))
    }
}

pub fn start(g: &Global, a: &IdArg) -> Result<u8, Failure> {
    let root = g.root();
    let record = Record::load(&root, &a.id).map_err(Failure::runtime)?;
    match record.current() {
        Status::Created => {}
        Status::Stopped => {
            return Err(Failure::runtime(
                "cannot start a container that has stopped",
            ))
        }
        s => {
            return Err(Failure::runtime(format!(
                "cannot start a container in the {} state",
                s.as_str()
            )))
        }
    }
    let dir = Record::dir(&root, &a.id);
    monitor::release(&dir, &record).map_err(Failure::runtime)?;
    // Until the monitor says so: a `state` right after sees it running.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = Record::load(&root, &a.id).map_err(Failure::runtime)?;
        match r.current() {
            Status::Running | Status::Stopped => return Ok(0),
            _ if Instant::now() > deadline => {
                return Err(Failure::runtime("the container did not start in 60 s"))
            }
            _ => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

pub fn state(g: &Global, a: &IdArg) -> Result<u8, Failure> {
    let record = Record::load(&g.root(), &a.id).map_err(Failure::runtime)?;
    let text = serde_json::to_string_pretty(&record.oci_state())
        .map_err(|e| Failure::runtime(e.to_string()))?;
    println!("{text}");
    Ok(0)
}

/// `kill [--all] ID [SIG]`: SIGKILL ends the monitor, and the VM with it;
/// any other signal goes to the container's process through the agent.
pub fn kill(g: &Global, id: &str, signal: i32, all: bool) -> Result<u8, Failure> {
    let root = g.root();
    let record = Record::load(&root, id).map_err(Failure::runtime)?;
    let status = record.current();
    if !matches!(status, Status::Created | Status::Running | Status::Paused) {
        return Err(Failure::runtime("container not running"));
    }
    if status == Status::Paused && signal != libc::SIGKILL {
        // The guest's agent cannot take it while the vCPUs are parked.
        return Err(Failure::runtime(
            "the container is paused: resume it first (KILL works while paused)",
        ));
    }
    if signal == libc::SIGKILL {
        monitor::kill(&record);
        return Ok(0);
    }
    monitor::signal(&Record::sock_dir(&root, id), signal, all).map_err(Failure::runtime)?;
    Ok(0)
}

/// `pause ID` / `resume ID`: the monitor parks or releases the VM's vCPUs.
pub fn pause(g: &Global, a: &IdArg, pause: bool) -> Result<u8, Failure> {
    let root = g.root();
    let record = Record::load(&root, &a.id).map_err(Failure::runtime)?;
    let (want, request) = if pause {
        (Status::Running, "pause")
    } else {
        (Status::Paused, "resume")
    };
    let now = record.current();
    if now != want {
        return Err(Failure::runtime(format!(
            "cannot {request} a container that is {}",
            now.as_str()
        )));
    }
    control::ask(&Record::sock_dir(&root, &a.id), request).map_err(Failure::runtime)?;
    Ok(0)
}

pub fn delete(g: &Global, a: &DeleteArgs) -> Result<u8, Failure> {
    let root = g.root();
    let record = match Record::load(&root, &a.id) {
        Ok(r) => r,
        // runc: deleting what is not there is fine with --force.
        Err(_) if a.force => return Ok(0),
        Err(e) => return Err(Failure::runtime(e)),
    };
    let status = record.current();
    if status != Status::Stopped {
        if !a.force {
            return Err(Failure::runtime(format!(
                "cannot delete container {} that is not stopped: {}",
                a.id,
                status.as_str()
            )));
        }
        monitor::kill(&record);
        let deadline = Instant::now() + Duration::from_secs(10);
        while record.monitor_alive() {
            if Instant::now() > deadline {
                return Err(Failure::runtime(format!(
                    "container {}: its monitor (pid {}) did not die",
                    a.id, record.monitor_pid
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    poststop(g, &record);
    if let Some(cgroup) = &record.cgroup {
        if let Err(e) = cgroup.remove() {
            g.warn(&e);
        }
    }
    let _ = std::fs::remove_dir_all(Record::sock_dir(&root, &a.id));
    let dir = Record::dir(&root, &a.id);
    std::fs::remove_dir_all(&dir)
        .map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
    Ok(0)
}

/// The bundle's poststop hooks, as the container goes; a failure is only
/// reported (the container is gone either way).
fn poststop(g: &Global, record: &Record) {
    let path = record.bundle.join("config.json");
    let Ok(spec) = std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| {
            serde_json::from_slice::<husk_wire::oci_spec::runtime::Spec>(&b)
                .map_err(|e| e.to_string())
        })
    else {
        return;
    };
    let hooks = spec
        .hooks()
        .as_ref()
        .and_then(|h| h.poststop().clone())
        .unwrap_or_default();
    for warning in hooks::run_all("poststop", &hooks, &record.oci_state()) {
        g.warn(&warning);
    }
}

#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// Where to write config.json.
    #[arg(short = 'b', long, default_value = ".")]
    pub bundle: PathBuf,
}

/// `spec`: a starting config.json (runc's: `sh` with a terminal, the
/// rootfs at `rootfs`); an existing one is left alone.
pub fn spec(_g: &Global, a: &SpecArgs) -> Result<u8, Failure> {
    let path = a.bundle.join("config.json");
    if path.exists() {
        return Err(Failure::runtime(format!(
            "{} already exists",
            path.display()
        )));
    }
    let mut spec = husk_wire::spec::default_spec(vec!["sh".into()]);
    if let Some(p) = spec.process_mut() {
        p.set_terminal(Some(true));
    }
    let text = serde_json::to_vec_pretty(&spec).map_err(|e| Failure::runtime(e.to_string()))?;
    std::fs::write(&path, text)
        .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))?;
    Ok(0)
}

/// `features`: the runtime-spec features document.
pub fn features(_g: &Global) -> Result<u8, Failure> {
    let text = serde_json::to_string_pretty(&features::document())
        .map_err(|e| Failure::runtime(e.to_string()))?;
    println!("{text}");
    Ok(0)
}

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
    /// table or json (an array of `state` objects).
    #[arg(short = 'f', long, default_value = "table")]
    pub format: String,
    /// Ids only.
    #[arg(short = 'q', long)]
    pub quiet: bool,
}

/// `list`: every container under the root, oldest first.
pub fn list(g: &Global, a: &ListArgs) -> Result<u8, Failure> {
    let root = g.root();
    let mut records: Vec<Record> = std::fs::read_dir(&root)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Record::load(&root, &e.file_name().to_string_lossy()).ok())
        .collect();
    records.sort_by(|a, b| (&a.created, &a.id).cmp(&(&b.created, &b.id)));
    let mut out = std::io::stdout().lock();
    if a.quiet {
        for r in &records {
            let _ = writeln!(out, "{}", r.id);
        }
        return Ok(0);
    }
    match a.format.as_str() {
        "json" => {
            let all: Vec<serde_json::Value> = records.iter().map(Record::oci_state).collect();
            let _ = writeln!(out, "{}", serde_json::Value::Array(all));
        }
        "table" => {
            let _ = writeln!(out, "ID\tPID\tSTATUS\tBUNDLE\tCREATED\tOWNER");
            for r in &records {
                let s = r.oci_state();
                let _ = writeln!(
                    out,
                    "{}\t{}\t{}\t{}\t{}\troot",
                    r.id,
                    s["pid"],
                    r.current().as_str(),
                    r.bundle.display(),
                    r.created
                );
            }
        }
        other => return Err(Failure::usage(format!("--format {other:?}: table or json"))),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn global(root: &Path) -> Global {
        Global {
            root: Some(root.to_owned()),
            ..Global::default()
        }
    }

    #[test]
    fn spec_writes_a_config_once() {
        let dir = tempfile::tempdir().unwrap();
        let a = SpecArgs {
            bundle: dir.path().to_owned(),
        };
        let g = global(dir.path());
        assert_eq!(spec(&g, &a).unwrap(), 0);
        let written: husk_wire::oci_spec::runtime::Spec =
            serde_json::from_slice(&std::fs::read(dir.path().join("config.json")).unwrap())
                .unwrap();
        assert_eq!(
            written.process().as_ref().unwrap().args().as_deref(),
            Some(&["sh".to_string()][..])
        );
        assert!(spec(&g, &a).unwrap_err().message.contains("already exists"));
    }

    #[test]
    fn json_log_lines_and_rootless_refusal() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.json");
        let g = Global {
            log: Some(log.clone()),
            log_format: Some(LogFormat::Json),
            rootless: Some("true".into()),
            ..global(dir.path())
        };
        let r = run(&g, |_| Ok(0));
        assert!(r.unwrap_err().message.contains("--rootless=true"));
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
        assert_eq!(line["level"], "error");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
        assert!(!Global::default().any());
        assert!(g.any());
    }
}
