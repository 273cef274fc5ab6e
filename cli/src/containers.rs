//! `husk ps`, `exec`, `kill`, `logs`, `rm`: the detached runs' commands.
//! They find a run by its record in the runtime directory and talk to its
//! guest agent through the run's vsock socket, beside the connection the
//! run's own husk process holds.

use crate::agent::{self, tty, Client, Escalation, Escalator, Msg, Sinks};
use crate::run::state::{self, Found};
use crate::run::{runtime_root, ProcessFlags};
use crate::Failure;
use clap::Args;
use husk_wire::agent::{ExitStatus, Request, StdioSpec};
use std::io::Write;
use std::time::{Duration, Instant};

/// The container's id inside its guest (one container per VM).
pub(crate) const CONTAINER_ID: &str = "main";
/// The exec'd process's stream on its own connection (ids are per
/// connection, so every client can use the same one).
const EXEC_STREAM: u32 = 1;
/// How long a running guest's agent gets to answer.
pub(crate) const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Args)]
pub struct PsArgs {
    /// Show exited and dead containers too.
    #[arg(short = 'a', long)]
    all: bool,
    /// Only print the ids.
    #[arg(short = 'q', long)]
    quiet: bool,
    /// OCI runtime (runc's `ps ID`): json (the host pids standing for the
    /// container) or table (its processes in the VM).
    #[arg(short = 'f', long)]
    format: Option<String>,
    /// OCI runtime: the container whose processes to list.
    id: Option<String>,
    /// runc passes these to ps(1); refused (the processes are the VM's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, hide = true)]
    ps_args: Vec<String>,
}

/// Whether `ps` is the OCI runtime's (`ps [--format F] ID`).
pub fn ps_is_oci(g: &crate::oci::Global, p: &PsArgs) -> bool {
    g.any() || p.id.is_some()
}

pub fn oci_ps(g: &crate::oci::Global, p: &PsArgs) -> Result<u8, Failure> {
    let id =
        p.id.as_deref()
            .ok_or_else(|| Failure::usage("ps: the OCI runtime's ps needs a container id"))?;
    let format = p.format.as_deref().unwrap_or("table");
    crate::oci::update::ps(g, id, format, &p.ps_args)
}

#[derive(Args)]
pub struct IdArgs {
    /// The container's id (a unique prefix of it, or its name).
    id: String,
}

#[derive(Args)]
pub struct KillArgs {
    /// Signal every process of the container, not only its main one.
    #[arg(short = 'a', long)]
    all: bool,
    /// The container's id (or a unique prefix of it; an OCI container's
    /// whole id).
    id: String,
    /// The signal, by name or number (default KILL; TERM for an OCI
    /// container, as runc).
    signal: Option<String>,
}

/// Whether `husk kill` is the OCI runtime's: runc's global flags were
/// given, or the id names an OCI container.
pub fn kill_is_oci(g: &crate::oci::Global, k: &KillArgs) -> bool {
    g.any() || crate::oci::state::Record::load(&g.root(), &k.id).is_ok()
}

pub fn oci_kill(g: &crate::oci::Global, k: &KillArgs) -> Result<u8, Failure> {
    let signal =
        state::parse_signal(k.signal.as_deref().unwrap_or("TERM")).map_err(Failure::usage)?;
    crate::oci::kill(g, &k.id, signal, k.all)
}

#[derive(Args)]
pub struct RmArgs {
    /// Kill the container first if it runs.
    #[arg(short = 'f', long)]
    force: bool,
    /// The containers' ids (or unique prefixes).
    #[arg(required = true)]
    ids: Vec<String>,
}

#[derive(Args)]
pub struct ExecArgs {
    #[command(flatten)]
    process: ProcessFlags,
    /// OCI runtime: the process to run, an OCI `process` JSON file (as
    /// conmon and the shims write it) instead of a command.
    #[arg(long = "process", value_name = "FILE", conflicts_with = "command")]
    process_file: Option<std::path::PathBuf>,
    /// OCI runtime: where to write the pid of the process standing for the
    /// exec'd one.
    #[arg(long = "pid-file", value_name = "FILE")]
    pid_file: Option<std::path::PathBuf>,
    /// OCI runtime: a Unix socket to hand the terminal's master to.
    #[arg(long = "console-socket", value_name = "SOCKET")]
    console_socket: Option<std::path::PathBuf>,
    /// OCI runtime: return once the process runs (the pid file's process
    /// relays it and exits with its status).
    #[arg(short = 'd', long)]
    detach: bool,
    /// The container's id (or a unique prefix of it; an OCI container's
    /// whole id).
    id: String,
    /// The command and its arguments.
    #[arg(
        required_unless_present = "process_file",
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    command: Vec<String>,
}

/// Whether `husk exec` is the OCI runtime's (see [`kill_is_oci`]).
pub fn exec_is_oci(g: &crate::oci::Global, e: &ExecArgs) -> bool {
    g.any() || e.process_file.is_some() || crate::oci::state::Record::load(&g.root(), &e.id).is_ok()
}

/// runc's `exec`: the process from `--process`, or the command with the
/// flags over the container's own process settings.
pub fn oci_exec(g: &crate::oci::Global, e: &ExecArgs) -> Result<u8, Failure> {
    let process = match &e.process_file {
        Some(f) => crate::oci::exec::read_process(f)?,
        None => {
            let record =
                crate::oci::state::Record::load(&g.root(), &e.id).map_err(Failure::runtime)?;
            let spec: husk_wire::oci_spec::runtime::Spec = serde_json::from_slice(
                &std::fs::read(record.bundle.join("config.json"))
                    .map_err(|e| Failure::runtime(format!("{}: {e}", record.bundle.display())))?,
            )
            .map_err(|e| Failure::runtime(e.to_string()))?;
            let mut p = spec.process().clone().unwrap_or_default();
            p.set_args(Some(e.command.clone()));
            p.set_terminal(Some(e.process.tty));
            if let Some(w) = &e.process.workdir {
                p.set_cwd(w.into());
            }
            if !e.process.env.is_empty() {
                let env =
                    crate::run::merge_env(&p.env().clone().unwrap_or_default(), &e.process.env)
                        .map_err(Failure::usage)?;
                p.set_env(Some(env));
            }
            if let Some(u) = &e.process.user {
                let (uid, gid) = crate::run::parse_user(u).map_err(Failure::usage)?;
                let mut user = p.user().clone();
                user.set_uid(uid);
                user.set_gid(gid);
                p.set_user(user);
            }
            p
        }
    };
    crate::oci::exec::exec(
        g,
        crate::oci::exec::ExecRequest {
            id: &e.id,
            process,
            pid_file: e.pid_file.as_deref(),
            console_socket: e.console_socket.as_deref(),
            detach: e.detach,
        },
    )
}

pub(crate) fn running(id: &str) -> Result<Found, Failure> {
    let found = state::find(&runtime_root()?, id).map_err(Failure::runtime)?;
    if !found.running() {
        return Err(Failure::runtime(format!(
            "container {} is not running: {}",
            found.state.id,
            found.describe_status()
        )));
    }
    Ok(found)
}

/// A connection to a run's agent, past the version handshake.
pub(crate) fn connect(found: &Found, sinks: Sinks) -> Result<Client, String> {
    let uds = found.dir.join(state::VSOCK_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(10);
    Client::open(&uds, deadline, &|| true, sinks).map_err(|e| {
        if e.contains(agent::NO_ANSWER) {
            format!("{e}{}", vmm_report(found))
        } else {
            e
        }
    })
}

/// Where the run's VM stands, from its husk process: asked for (SIGUSR1)
/// when its guest does not answer, read back from the run's monitor.log,
/// where a detached run's husk writes. A stuck vCPU or a silent device
/// loop shows there; the lines follow the caller's error.
fn vmm_report(found: &Found) -> String {
    if !found.state.owner_alive() {
        return String::new();
    }
    let log = found.dir.join(crate::run::detach::MONITOR_LOG);
    let before = std::fs::metadata(&log).map_or(0, |m| m.len());
    // SAFETY: kill(2) of the run's own husk process, alive just above
    // (same pid and start time).
    unsafe { libc::kill(found.state.owner_pid, husk_vmm::REPORT_SIGNAL) };
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut said = Vec::new();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        let Ok(all) = std::fs::read(&log) else { break };
        said = all.get(before as usize..).unwrap_or_default().to_vec();
        // The report ends with the thread list.
        if String::from_utf8_lossy(&said).contains("husk: threads:") {
            break;
        }
    }
    String::from_utf8_lossy(&said)
        .lines()
        .map(|l| format!("\n{l}"))
        .collect()
}

pub fn ps(args: PsArgs) -> Result<u8, Failure> {
    if args.format.is_some() {
        return Err(Failure::usage(
            "--format belongs to the OCI runtime's `ps ID`",
        ));
    }
    let runs: Vec<Found> = state::list(&runtime_root()?)
        .into_iter()
        .filter(|f| args.all || f.running())
        .collect();
    let mut out = std::io::stdout().lock();
    if args.quiet {
        for f in &runs {
            let _ = writeln!(out, "{}", f.state.id);
        }
        return Ok(0);
    }
    let _ = writeln!(
        out,
        "{:<14}{:<32}{:<28}{:<16}STATUS",
        "ID", "IMAGE", "COMMAND", "NAME"
    );
    for f in &runs {
        let _ = writeln!(
            out,
            "{:<14}{:<32}{:<28}{:<16}{}",
            f.state.id,
            shorten(&f.state.image, 30),
            shorten(&f.state.command.join(" "), 26),
            shorten(f.state.name.as_deref().unwrap_or(""), 14),
            f.describe_status()
        );
    }
    Ok(0)
}

fn shorten(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        return s.to_owned();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(n - 1)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("…{tail}")
}

/// `husk port ID`: the container's published ports, as `docker port`.
pub fn port(args: IdArgs) -> Result<u8, Failure> {
    let found = state::find(&runtime_root()?, &args.id).map_err(Failure::runtime)?;
    let mut out = std::io::stdout().lock();
    for p in &found.state.ports {
        let _ = writeln!(out, "{p}");
    }
    Ok(0)
}

pub fn logs(args: IdArgs) -> Result<u8, Failure> {
    let found = state::find(&runtime_root()?, &args.id).map_err(Failure::runtime)?;
    for (name, to_stdout) in [(state::STDOUT_LOG, true), (state::STDERR_LOG, false)] {
        let path = found.dir.join(name);
        let data = crate::run::logfile::read_all(&path).map_err(|e| {
            Failure::runtime(format!(
                "container {}: no log ({}: {e}); only detached runs keep one",
                found.state.id,
                path.display()
            ))
        })?;
        if to_stdout {
            let _ = std::io::stdout().lock().write_all(&data);
        } else {
            let _ = std::io::stderr().lock().write_all(&data);
        }
    }
    Ok(0)
}

pub fn kill(args: KillArgs) -> Result<u8, Failure> {
    let signal =
        state::parse_signal(args.signal.as_deref().unwrap_or("KILL")).map_err(Failure::usage)?;
    let found = running(&args.id)?;
    signal_main(&found, signal, args.all).map_err(Failure::runtime)?;
    Ok(0)
}

fn signal_main(found: &Found, signal: i32, all: bool) -> Result<(), String> {
    let client = connect(found, Sinks::stdio())?;
    let request = Request::Signal {
        id: CONTAINER_ID.into(),
        exec_id: None,
        signal,
        all,
    };
    client.call(request, "signal the container", AGENT_TIMEOUT, &|| true)
}

pub fn rm(args: RmArgs) -> Result<u8, Failure> {
    let mut failed = false;
    for id in &args.ids {
        if let Err(e) = rm_one(id, args.force) {
            eprintln!("husk: {e}");
            failed = true;
        }
    }
    Ok(u8::from(failed))
}

fn rm_one(id: &str, force: bool) -> Result<(), String> {
    let found = state::find(&runtime_root().map_err(|f| f.message)?, id)?;
    let exited = matches!(found.state.status, state::Status::Exited { .. });
    if found.alive {
        // An exited container's husk process may still be powering off.
        if !force && !exited {
            return Err(format!(
                "container {} is running: stop it first or use rm -f",
                found.state.id
            ));
        }
        if found.running() {
            signal_main(&found, libc::SIGKILL, false)?;
        }
        // Its husk process powers the VM off and records the exit.
        let deadline = Instant::now() + Duration::from_secs(20);
        while found.state.owner_alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        if found.state.owner_alive() {
            return Err(format!(
                "container {}: its husk process (pid {}) did not stop",
                found.state.id, found.state.owner_pid
            ));
        }
    }
    std::fs::remove_dir_all(&found.dir).map_err(|e| format!("{}: {e}", found.dir.display()))?;
    println!("{}", found.state.id);
    Ok(())
}

/// A fresh exec id: unique in the container while its process runs (the
/// agent refuses one in use), whichever clients exec at the same time.
fn exec_id() -> String {
    format!("exec-{}", crate::run::random_hex(8))
}

pub fn exec(args: ExecArgs) -> Result<u8, Failure> {
    if args.pid_file.is_some() || args.console_socket.is_some() || args.detach {
        return Err(Failure::usage(
            "--pid-file, --console-socket and --detach are for OCI containers",
        ));
    }
    let found = running(&args.id)?;
    let defaults = &found.state.process;
    let user = match &args.process.user {
        Some(u) => crate::run::parse_user(u).map_err(Failure::usage)?,
        None => (defaults.uid, defaults.gid),
    };
    let env = crate::run::merge_env(&defaults.env, &args.process.env).map_err(Failure::usage)?;
    let cwd = args
        .process
        .workdir
        .clone()
        .unwrap_or_else(|| defaults.cwd.clone());
    let mut process =
        crate::run::exec_process(args.command.clone(), env, cwd, user, args.process.tty);
    tty::size_process(&mut process);
    // Before any thread exists, so they inherit the masks (see run).
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    if args.process.tty {
        tty::block_winch().map_err(Failure::runtime)?;
    }
    let client = connect(&found, Sinks::stdio()).map_err(Failure::runtime)?;
    let exec_id = exec_id();
    let request = Request::Exec {
        id: CONTAINER_ID.into(),
        exec_id: exec_id.clone(),
        process: Box::new(process),
        stdio: StdioSpec {
            stream: EXEC_STREAM,
            tty: args.process.tty,
            stdin: args.process.interactive,
        },
    };
    client
        .call(request, "exec", AGENT_TIMEOUT, &|| true)
        .map_err(Failure::runtime)?;
    agent::spawn_signal_thread(signals, client.sender());
    let _raw = if args.process.tty {
        let raw = husk_vmm::console::RawTerminal::enter();
        tty::send_size(&client.writer, EXEC_STREAM);
        tty::spawn_winch_thread(client.sender());
        raw
    } else {
        None
    };
    if args.process.interactive {
        agent::spawn_stdin_thread(client.writer.clone(), EXEC_STREAM);
    }
    relay_exec(&client, &exec_id, EXEC_STREAM)
        .map(ExitStatus::shell_status)
        .map_err(Failure::runtime)
}

/// Relays until the exec'd process ends. Signals go to it (the second is a
/// SIGKILL); a third one leaves it running and ends `husk exec` itself.
pub(crate) fn relay_exec(
    client: &Client,
    exec_id: &str,
    exec_stream: u32,
) -> Result<ExitStatus, String> {
    let mut escalator = Escalator::default();
    loop {
        match client.next(Duration::from_secs(3600))? {
            Some(Msg::Exited { stream, status }) if stream == exec_stream => return Ok(status),
            Some(Msg::Closed(why)) => return Err(why),
            Some(Msg::Resize) => tty::send_size(&client.writer, exec_stream),
            Some(Msg::Signal(sig)) => match escalator.next(sig) {
                Escalation::GiveUp => return Ok(ExitStatus::Signal(sig)),
                step => {
                    let signal = match step {
                        Escalation::Pass(s) => s,
                        _ => libc::SIGKILL,
                    };
                    client.writer.request(Request::Signal {
                        id: CONTAINER_ID.into(),
                        exec_id: Some(exec_id.to_owned()),
                        signal,
                        all: false,
                    })?;
                }
            },
            Some(_) | None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn long_fields_keep_their_tail() {
        assert_eq!(super::shorten("short", 10), "short");
        assert_eq!(super::shorten("/a/very/long/path/image", 8), "…h/image");
    }
}
