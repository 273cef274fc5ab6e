//! `exec` as runc does it for conmon and the shims: `husk exec --process F
//! [--pid-file P] [--console-socket S] [--detach] ID`. The pid written is
//! that of a proxy, a husk process that lives as long as the exec'd
//! process in the guest, relays its stdio (the caller's pipes, or a
//! terminal handed over the console socket) and exits with its status.

use super::monitor::{hand_over_terminal, pipe_back, spawn_self};
use super::state::{Record, Status};
use super::Global;
use crate::agent::{self, tty, Client, Sinks};
use crate::run;
use crate::Failure;
use husk_wire::agent::{Request, StdioSpec};
use husk_wire::oci_spec::runtime::Process;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Set for the proxy a detached exec starts: the fd of its pipe back.
const PROXY_ENV: &str = "HUSK_OCI_EXEC_FD";
const STARTED: &str = "started";
/// The exec's stream id on the proxy's own agent connection.
const STREAM: u32 = 1;

/// What an OCI exec needs, from `husk exec`'s flags.
pub struct ExecRequest<'a> {
    pub id: &'a str,
    pub process: Process,
    pub pid_file: Option<&'a Path>,
    pub console_socket: Option<&'a Path>,
    pub detach: bool,
}

/// The user a proxy for container `record` gives root up for: its jail's,
/// as root, unless its spec runs it unjailed (`husk.jail=false`).
fn jail_of(record: &Record) -> Option<run::jail::RunJail> {
    let unjailed = record
        .annotations
        .get(super::bundle::ANNOTATION_JAIL)
        .is_some_and(|v| v == "false");
    // Its one connection is open before the jail: it needs no network.
    (nix::unistd::Uid::effective().is_root() && !unjailed).then(|| run::jail::RunJail {
        own_network: true,
        ..run::jail::RunJail::for_id(&record.id)
    })
}

/// Reads `--process F` (an OCI `process` object, as conmon writes it).
pub fn read_process(path: &Path) -> Result<Process, Failure> {
    let text = std::fs::read(path)
        .map_err(|e| Failure::runtime(format!("--process {}: {e}", path.display())))?;
    serde_json::from_slice(&text)
        .map_err(|e| Failure::runtime(format!("--process {}: {e}", path.display())))
}

pub fn exec(g: &Global, r: ExecRequest) -> Result<u8, Failure> {
    let sock = Record::sock_dir(&g.root(), r.id);
    let record = Record::load(&g.root(), r.id).map_err(Failure::runtime)?;
    if std::env::var_os(PROXY_ENV).is_none() {
        if record.current() != Status::Running {
            return Err(Failure::runtime(format!(
                "cannot exec in a container that is {}",
                record.current().as_str()
            )));
        }
        super::check_console(r.process.terminal().unwrap_or(false), r.console_socket)?;
        if r.detach {
            let pid = spawn_self(PROXY_ENV, STARTED, "the exec proxy").map_err(Failure::runtime)?;
            if let Some(p) = r.pid_file {
                super::write_pid_file(p, pid).map_err(Failure::runtime)?;
            }
            return Ok(0);
        }
    }
    let mut pipe = pipe_back(PROXY_ENV);
    let jail = jail_of(&record);
    if jail.is_some() {
        // Errors after the jail still reach the caller's log.
        g.open_log_now();
    }
    let dir = Record::dir(&g.root(), r.id);
    let result = proxy(&sock, &dir, &r, &mut pipe, jail);
    if let (Err(e), Some(p)) = (&result, pipe.as_mut()) {
        let _ = writeln!(p, "{}", e.message);
    }
    result
}

/// The exec'd process's life, from this process: its status. Jailed, it
/// leaves the host's mounts and network once its files and its connection
/// are open, before any thread exists, and gives root up once the process
/// runs and the pid file says so.
fn proxy(
    sock: &Path,
    dir: &Path,
    r: &ExecRequest,
    pipe: &mut Option<std::fs::File>,
    jail: Option<run::jail::RunJail>,
) -> Result<u8, Failure> {
    let terminal = r.process.terminal().unwrap_or(false);
    // Before any thread exists, so all inherit the masks.
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    if terminal {
        tty::block_winch().map_err(Failure::runtime)?;
        if let Some(s) = r.console_socket {
            hand_over_terminal(s).map_err(Failure::runtime)?;
        }
    }
    let uds: PathBuf = sock.join(run::state::VSOCK_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream = agent::connect(&uds, deadline, &|| true).map_err(Failure::runtime)?;
    let pid_file = match (r.detach, r.pid_file) {
        (false, Some(p)) => Some(super::PidFile::at(p).map_err(Failure::runtime)?),
        _ => None,
    };
    if let Some(j) = &jail {
        j.confine(dir, &[]).map_err(Failure::runtime)?;
    }
    let client =
        Client::over(stream, deadline, &|| true, Sinks::stdio(), None).map_err(Failure::runtime)?;
    let exec_id = format!("exec-{}", run::random_hex(8));
    let request = Request::Exec {
        id: run::CONTAINER_ID.into(),
        exec_id: exec_id.clone(),
        process: Box::new({
            let mut p = r.process.clone();
            tty::size_process(&mut p);
            p
        }),
        stdio: StdioSpec {
            stream: STREAM,
            tty: terminal,
            stdin: true,
        },
    };
    client
        .call(request, "exec", Duration::from_secs(30), &|| true)
        .map_err(Failure::runtime)?;
    // Started: the pid file names us (a detached exec's starter writes it).
    if let Some(p) = pid_file {
        p.write(std::process::id() as i32)
            .map_err(Failure::runtime)?;
    }
    if let Some(mut p) = pipe.take() {
        let _ = writeln!(p, "{STARTED}");
    }
    // Root was for the setup (the terminal, the pid file); relaying what
    // the guest sends is done as the container's jail user.
    if let Some(j) = jail {
        husk_vmm_bin::jail::give_up_root(j.uid, j.gid, true).map_err(Failure::runtime)?;
    }
    agent::spawn_signal_thread(signals, client.sender());
    let _raw = if terminal {
        let raw = husk_vmm::console::RawTerminal::enter();
        tty::send_size(&client.writer, STREAM);
        tty::spawn_winch_thread(client.sender());
        raw
    } else {
        None
    };
    agent::spawn_stdin_thread(client.writer.clone(), STREAM);
    crate::containers::relay_exec(&client, &exec_id, STREAM)
        .map(|s| s.shell_status())
        .map_err(Failure::runtime)
}
