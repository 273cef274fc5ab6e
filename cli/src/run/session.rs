//! The agent session of `husk run`: create and start the container, relay
//! stdin, resizes and signals until its process exits, then ask the guest
//! to power off.

use super::plan::{CONTAINER_ID, MAIN_STREAM};
use super::timings::mark;
use crate::agent::{self, tty, Client, Escalation, Escalator, Msg, Sinks};
use husk_vmm::{Exit, VmControls};
use husk_wire::agent::{
    ExitStatus, NetIdentity, Request, Response, RootfsSpec, StdioSpec, VolumeSpec,
};
use husk_wire::oci_spec::runtime::Spec;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a live guest gets to boot and answer (a guest that stops
/// fails at once). Seconds on hardware; a loaded nested host has taken
/// over a minute.
const AGENT_DEADLINE: Duration = Duration::from_secs(120);
/// How long one request may take once the agent runs. Milliseconds on
/// hardware; of twenty guests creating containers at once in the nested
/// testbed (load 5 on two emulated CPUs), one did not answer within a
/// minute (whether slow or stuck, its report would now say).
const REQUEST_DEADLINE: Duration = Duration::from_secs(120);

/// What the container is made of, for the agent.
pub struct Container {
    pub spec: Spec,
    pub rootfs: RootfsSpec,
    pub volumes: Vec<VolumeSpec>,
    pub stdio: StdioSpec,
}

/// What the caller does between the steps.
pub struct Hooks<'a> {
    /// Once the container is created, before it starts (an OCI `create`
    /// reports and waits for `start` here); an error ends the run.
    pub created: &'a mut dyn FnMut() -> Result<(), String>,
    /// Once it runs (the run's record, a detached run going to the
    /// background).
    pub started: &'a mut dyn FnMut(),
}

pub struct Session {
    pub uds: PathBuf,
    pub sinks: Sinks,
    pub controls: VmControls,
    /// Whether the VM has ended.
    pub vm_done: super::VmEnded,
    /// SIGINT/SIGTERM, taken from the default handlers.
    pub signals: nix::sys::signalfd::SignalFd,
    /// When the VM is a pool template's clone: what makes it this run's.
    pub identity: Option<VmIdentity>,
    /// A detached run: its directory, where it serves checkpoint requests,
    /// and what a checkpoint needs.
    pub checkpoint: Option<(PathBuf, super::checkpoint::Source)>,
    /// The VM was restored from a checkpoint: its container runs already,
    /// and is taken over rather than created.
    pub attach: bool,
    /// Nothing in the guest outlives the container (a `--rm` run without
    /// a disk volume): at its end the host stops the VM once the guest has
    /// synced, rather than have the guest unmount and power off.
    pub disposable: bool,
}

/// A VM's own hostname and interface.
#[derive(Debug, Clone)]
pub struct VmIdentity {
    pub hostname: String,
    pub net: Option<NetIdentity>,
}

impl Session {
    fn vm_alive(done: &super::VmEnded) -> bool {
        !done.has_ended()
    }

    /// Runs the container to its end; its status.
    pub fn run(self, c: Container, hooks: &mut Hooks) -> Result<ExitStatus, String> {
        let controls = self.controls.clone();
        self.steps(c, hooks).inspect_err(|e| {
            // Where the VM stood when the guest went silent: it may be
            // stuck, or the device loop that serves it may be. (An answer
            // that is an error needs no report.)
            if e.contains(agent::NO_ANSWER) && !controls.is_stopping() {
                husk_vmm::print_report();
            }
        })
    }

    fn steps(self, c: Container, hooks: &mut Hooks) -> Result<ExitStatus, String> {
        let done = self.vm_done;
        let alive = || Session::vm_alive(&done);
        let deadline = Instant::now() + AGENT_DEADLINE;
        let client = Client::open_guarded(
            &self.uds,
            deadline,
            &alive,
            self.sinks,
            self.controls.clone(),
        )?;
        mark("agent_ready");
        if let Some(id) = self.identity {
            client.call(
                identity(id)?,
                "give the VM its identity",
                REQUEST_DEADLINE,
                &alive,
            )?;
            mark("identity");
        }
        agent::spawn_signal_thread(self.signals, client.sender());
        if let Some((dir, _)) = &self.checkpoint {
            super::checkpoint::serve(dir, client.sender())?;
        }
        let source = self.checkpoint.map(|(_, s)| s);
        if self.attach {
            let attach = Request::Attach {
                id: CONTAINER_ID.into(),
                stream: MAIN_STREAM,
            };
            client.call(
                attach,
                "take over the restored container",
                REQUEST_DEADLINE,
                &alive,
            )?;
            mark("started");
            (hooks.started)();
            return finish(
                &client,
                &self.controls,
                source.as_ref(),
                self.disposable,
                &alive,
            );
        }
        let create = Request::CreateContainer {
            id: CONTAINER_ID.into(),
            spec: Box::new({
                let mut spec = c.spec;
                if let Some(p) = spec.process_mut() {
                    tty::size_process(p);
                }
                spec
            }),
            rootfs: c.rootfs,
            volumes: c.volumes,
            stdio: c.stdio.clone(),
        };
        let what = "create the container";
        match client.ask(create, what, REQUEST_DEADLINE, &alive)? {
            Response::Created { steps } => super::timings::guest_steps(&steps),
            other => return Err(format!("cannot {what}: unexpected answer {other:?}")),
        }
        mark("created");
        (hooks.created)()?;
        let _raw = if c.stdio.tty {
            let raw = husk_vmm::console::RawTerminal::enter();
            tty::send_size(&client.writer, MAIN_STREAM);
            tty::spawn_winch_thread(client.sender());
            raw
        } else {
            None
        };
        let start = Request::StartContainer {
            id: CONTAINER_ID.into(),
        };
        client.call(start, "start the container", REQUEST_DEADLINE, &alive)?;
        mark("started");
        (hooks.started)();
        if c.stdio.stdin {
            agent::spawn_stdin_thread(client.writer.clone(), MAIN_STREAM);
        }
        finish(
            &client,
            &self.controls,
            source.as_ref(),
            self.disposable,
            &alive,
        )
    }
}

/// Relays to the container's end, then ends the VM (unless a checkpoint
/// stopped it already).
fn finish(
    client: &Client,
    controls: &VmControls,
    source: Option<&super::checkpoint::Source>,
    disposable: bool,
    alive: &dyn Fn() -> bool,
) -> Result<ExitStatus, String> {
    let (status, stopped) = relay(client, controls, source, alive)?;
    mark("exited");
    if !stopped {
        end(client, controls, disposable, alive);
    }
    Ok(status)
}

/// The end of a VM whose container has exited (and whose output is all
/// here). A disposable one is stopped by the host once the guest has
/// written what it holds dirty (a share's pages a process wrote through
/// mmap): its scratch layer goes with the run, and the guest's unmounts
/// and power-off were a fifth of a pooled run in the testbed. Any other
/// guest syncs, unmounts and powers off; its answer is not needed.
fn end(client: &Client, controls: &VmControls, disposable: bool, alive: &dyn Fn() -> bool) {
    if disposable {
        match client.call(Request::Sync, "sync the guest", REQUEST_DEADLINE, alive) {
            Ok(()) => return controls.stop(Exit::Stopped(libc::SIGKILL)),
            Err(e) => log::warn!("{e}; powering the guest off instead"),
        }
    }
    let _ = client.writer.request(Request::Shutdown);
}

/// How a checkpoint asked of the run ended for the session.
enum Checkpointed {
    /// The VM goes on (a failed checkpoint, or `--leave-running`).
    Running,
    /// It was saved and stopped: the container ends here, as with CRIU.
    Stopped,
    /// The container exited first; its status.
    Exited(ExitStatus),
}

/// A checkpoint asked of the run: the container's output held (`Park`),
/// the VM paused and saved, then stopped or resumed and the output taken
/// back. The asker hears how it went.
fn checkpoint(
    client: &Client,
    controls: &VmControls,
    source: Option<&super::checkpoint::Source>,
    mut asked: super::checkpoint::Asked,
    alive: &dyn Fn() -> bool,
) -> Result<Checkpointed, String> {
    let leave_running = asked.request.leave_running;
    let (taken, outcome) = match source {
        None => (
            Err("this run cannot be checkpointed".to_string()),
            Checkpointed::Running,
        ),
        Some(source) => match park(client, alive)? {
            Some(status) => (
                Err("the container exited first".to_string()),
                Checkpointed::Exited(status),
            ),
            None => {
                controls.pause();
                let taken = super::checkpoint::take(controls, source, &mut asked.files);
                if taken.is_ok() && !leave_running {
                    controls.stop(Exit::Stopped(0));
                    (taken, Checkpointed::Stopped)
                } else {
                    controls.resume();
                    let attach = Request::Attach {
                        id: CONTAINER_ID.into(),
                        stream: MAIN_STREAM,
                    };
                    client.call(attach, "take the container back", REQUEST_DEADLINE, alive)?;
                    (taken, Checkpointed::Running)
                }
            }
        },
    };
    let _ = asked.reply.send(taken);
    Ok(outcome)
}

/// Asks the agent to hold the container's output; once it answers, all
/// output before is here. The container's status if it exited first.
fn park(client: &Client, alive: &dyn Fn() -> bool) -> Result<Option<ExitStatus>, String> {
    let seq = client.writer.request(Request::Park {
        id: CONTAINER_ID.into(),
    })?;
    // Signals, resizes and further checkpoints wait for the relay, after.
    let mut later = Vec::new();
    let parked = wait_parked(client, seq, alive, &mut later);
    let tx = client.sender();
    for m in later {
        let _ = tx.send(m);
    }
    parked
}

fn wait_parked(
    client: &Client,
    seq: u64,
    alive: &dyn Fn() -> bool,
    later: &mut Vec<Msg>,
) -> Result<Option<ExitStatus>, String> {
    let deadline = Instant::now() + REQUEST_DEADLINE;
    while Instant::now() < deadline {
        match client.next(Duration::from_millis(200))? {
            Some(Msg::Exited { stream, status }) if stream == MAIN_STREAM => {
                return Ok(Some(status))
            }
            Some(Msg::Response { seq: s, response }) if s == seq => {
                return match response {
                    husk_wire::agent::Response::Ok => Ok(None),
                    other => Err(format!("the agent would not hold the container: {other:?}")),
                };
            }
            Some(Msg::Closed(why)) => return Err(why),
            Some(m @ (Msg::Signal(_) | Msg::Resize | Msg::Checkpoint(_))) => later.push(m),
            _ if !alive() => return Err("the VM stopped during a checkpoint".into()),
            _ => {}
        }
    }
    Err("the agent did not hold the container in time".into())
}

/// The host's time and fresh entropy, with the VM's hostname and NIC.
fn identity(id: VmIdentity) -> Result<Request, String> {
    let realtime_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_err(|e| format!("the host clock: {e}"))?
        .as_nanos() as u64;
    let mut entropy = vec![0u8; husk_wire::agent::MIN_ENTROPY];
    super::fill_random(&mut entropy).map_err(|e| format!("getrandom: {e}"))?;
    Ok(Request::Identity {
        realtime_ns,
        entropy,
        hostname: id.hostname,
        net: id.net,
    })
}

/// Relays until the container's process exits; its status. Never blocks on
/// the guest: requests are queued, output is written by the reader.
fn relay(
    client: &Client,
    controls: &VmControls,
    source: Option<&super::checkpoint::Source>,
    alive: &dyn Fn() -> bool,
) -> Result<(ExitStatus, bool), String> {
    let mut escalator = Escalator::default();
    loop {
        let msg = match client.next(Duration::from_millis(200))? {
            Some(m) => m,
            None if !alive() => return Err("the VM stopped before the container exited".into()),
            None => continue,
        };
        match msg {
            Msg::Exited { stream, status } if stream == MAIN_STREAM => return Ok((status, false)),
            Msg::Checkpoint(asked) => match checkpoint(client, controls, source, asked, alive)? {
                Checkpointed::Running => {}
                Checkpointed::Stopped => return Ok((ExitStatus::Code(0), true)),
                Checkpointed::Exited(status) => return Ok((status, false)),
            },
            Msg::Exited { .. } => {}
            Msg::Response {
                response: husk_wire::agent::Response::Error { message },
                ..
            } => log::warn!("agent: {message}"),
            Msg::Response { .. } => {}
            Msg::Closed(why) => return Err(why),
            Msg::Resize => tty::send_size(&client.writer, MAIN_STREAM),
            Msg::Signal(sig) => match escalator.next(sig) {
                // The container ignores us, or the guest does not take our
                // requests: stop the VM outright.
                Escalation::GiveUp => {
                    controls.stop(Exit::Stopped(sig));
                    return Ok((ExitStatus::Signal(sig), true));
                }
                step => {
                    // The SIGKILL goes to everything in the container.
                    let (signal, all) = match step {
                        Escalation::Pass(s) => (s, false),
                        _ => (libc::SIGKILL, true),
                    };
                    client.writer.request(Request::Signal {
                        id: CONTAINER_ID.into(),
                        exec_id: None,
                        signal,
                        all,
                    })?;
                }
            },
        }
    }
}
