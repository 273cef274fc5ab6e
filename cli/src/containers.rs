//! `husk ps`, `exec`, `kill`, `logs`, `rm`: the detached runs' commands.
//! They find a run by its record in the runtime directory and talk to its
//! guest agent through the run's vsock socket, beside the connection the
//! run's own husk process holds.

use crate::run::client::{self, AgentWriter};
use crate::run::state::{self, Found};
use crate::run::{runtime_root, spawn_signal_thread, ProcessFlags};
use crate::Failure;
use clap::Args;
use husk_agent_protocol::{Event, Frame, Request, Response, StdioSpec, VERSION};
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct PsArgs {
    /// Show exited and dead containers too.
    #[arg(short = 'a', long)]
    all: bool,
    /// Only print the ids.
    #[arg(short = 'q', long)]
    quiet: bool,
}

#[derive(Args)]
pub struct IdArgs {
    /// The container's id (or a unique prefix of it).
    id: String,
}

#[derive(Args)]
pub struct KillArgs {
    /// The container's id (or a unique prefix of it).
    id: String,
    /// The signal, by name or number.
    #[arg(default_value = "KILL")]
    signal: String,
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
    /// The container's id (or a unique prefix of it).
    id: String,
    /// The command and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

fn running(id: &str) -> Result<Found, Failure> {
    let found = state::find(&runtime_root(), id).map_err(Failure::runtime)?;
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
fn connect(found: &Found) -> Result<(AgentWriter, mpsc::Receiver<Msg>, mpsc::Sender<Msg>), String> {
    let uds = found.dir.join(state::VSOCK_SOCKET);
    let deadline = Instant::now() + Duration::from_secs(10);
    let stream: UnixStream = client::connect(&uds, deadline, &|| true)?;
    let writer = AgentWriter::new(
        stream
            .try_clone()
            .map_err(|e| format!("agent connection: {e}"))?,
    );
    let (tx, rx) = mpsc::channel();
    client::spawn_reader(stream, tx.clone(), Msg::Frame, Msg::End);
    let seq = writer.request(Request::Hello { version: VERSION })?;
    match wait_response(&rx, seq)? {
        Response::Hello { .. } => Ok((writer, rx, tx)),
        other => Err(format!("agent handshake: {other:?}")),
    }
}

enum Msg {
    Frame(Frame),
    End(String),
    Signal(i32),
    Stdin(Vec<u8>),
}

fn wait_response(rx: &mpsc::Receiver<Msg>, seq: u64) -> Result<Response, String> {
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Msg::Frame(Frame::Response { seq: s, response })) if s == seq => {
                return Ok(response)
            }
            Ok(Msg::End(why)) => return Err(why),
            Ok(_) => {}
            Err(_) => return Err("the agent did not answer".into()),
        }
    }
}

fn expect_ok(r: Response, what: &str) -> Result<(), String> {
    match r {
        Response::Ok => Ok(()),
        Response::Error { message } => Err(format!("cannot {what}: {message}")),
        other => Err(format!("cannot {what}: unexpected answer {other:?}")),
    }
}

pub fn ps(args: PsArgs) -> Result<u8, Failure> {
    let runs: Vec<Found> = state::list(&runtime_root())
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
    let _ = writeln!(out, "{:<14}{:<32}{:<28}STATUS", "ID", "IMAGE", "COMMAND");
    for f in &runs {
        let _ = writeln!(
            out,
            "{:<14}{:<32}{:<28}{}",
            f.state.id,
            shorten(&f.state.image, 30),
            shorten(&f.state.command.join(" "), 26),
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

pub fn logs(args: IdArgs) -> Result<u8, Failure> {
    let found = state::find(&runtime_root(), &args.id).map_err(Failure::runtime)?;
    for (name, to_stdout) in [(state::STDOUT_LOG, true), (state::STDERR_LOG, false)] {
        let path = found.dir.join(name);
        let data = std::fs::read(&path).map_err(|e| {
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
    let signal = state::parse_signal(&args.signal).map_err(Failure::usage)?;
    let found = running(&args.id)?;
    signal_main(&found, signal).map_err(Failure::runtime)?;
    Ok(0)
}

fn signal_main(found: &Found, signal: i32) -> Result<(), String> {
    let (writer, rx, _tx) = connect(found)?;
    let seq = writer.request(Request::Signal {
        id: "main".into(),
        exec_id: None,
        signal,
        all: false,
    })?;
    expect_ok(wait_response(&rx, seq)?, "signal the container")
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
    let found = state::find(&runtime_root(), id)?;
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
            signal_main(&found, libc::SIGKILL)?;
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

/// Stream ids of exec'd processes: the run's own process is 1.
fn exec_stream() -> u32 {
    2 + std::process::id() % 1_000_000
}

pub fn exec(args: ExecArgs) -> Result<u8, Failure> {
    let found = running(&args.id)?;
    let defaults = &found.state.process;
    let (uid, gid) = match &args.process.user {
        Some(u) => crate::run::parse_user(u).map_err(Failure::usage)?,
        None => (defaults.uid, defaults.gid),
    };
    let env = crate::run::merge_env(&defaults.env, &args.process.env).map_err(Failure::usage)?;
    let mut process = serde_json::to_value(husk_container::default_spec(args.command.clone()))
        .map_err(|e| Failure::runtime(format!("default spec: {e}")))?["process"]
        .take();
    process["args"] = serde_json::json!(args.command);
    process["env"] = serde_json::json!(env);
    process["cwd"] = serde_json::json!(args
        .process
        .workdir
        .clone()
        .unwrap_or_else(|| defaults.cwd.clone()));
    process["user"] = serde_json::json!({"uid": uid, "gid": gid});
    process["terminal"] = serde_json::json!(args.process.tty);
    let (writer, rx, tx) = connect(&found).map_err(Failure::runtime)?;
    let stream = exec_stream();
    let exec_id = format!("exec-{stream}");
    let seq = writer
        .request(Request::Exec {
            id: "main".into(),
            exec_id: exec_id.clone(),
            process,
            stdio: StdioSpec {
                stream,
                tty: args.process.tty,
                stdin: args.process.interactive,
            },
        })
        .map_err(Failure::runtime)?;
    wait_response(&rx, seq)
        .and_then(|r| expect_ok(r, "exec"))
        .map_err(Failure::runtime)?;
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    spawn_signal_thread(signals, tx.clone(), Msg::Signal);
    let _raw = if args.process.tty {
        husk_vmm::console::RawTerminal::enter()
    } else {
        None
    };
    if args.process.interactive {
        crate::run::spawn_stdin_thread(tx, Msg::Stdin);
    }
    loop {
        let msg = rx
            .recv()
            .map_err(|_| Failure::runtime("lost the agent connection"))?;
        match msg {
            Msg::Frame(Frame::Event(Event::Exited {
                stream: s, status, ..
            })) if s == stream => {
                return Ok(u8::try_from(status.shell_status().clamp(0, 255)).unwrap_or(255));
            }
            Msg::Frame(Frame::Stdout { stream: s, data }) if s == stream => {
                let mut o = std::io::stdout().lock();
                let _ = o.write_all(&data);
                let _ = o.flush();
            }
            Msg::Frame(Frame::Stderr { stream: s, data }) if s == stream => {
                let _ = std::io::stderr().lock().write_all(&data);
            }
            Msg::Frame(_) => {}
            Msg::End(why) => return Err(Failure::runtime(why)),
            Msg::Stdin(data) => writer
                .frame(&Frame::Stdin { stream, data })
                .map_err(Failure::runtime)?,
            Msg::Signal(signal) => {
                writer
                    .request(Request::Signal {
                        id: "main".into(),
                        exec_id: Some(exec_id.clone()),
                        signal,
                        all: false,
                    })
                    .map_err(Failure::runtime)?;
            }
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
