//! `husk run IMAGE [CMD]`: one microVM per container. Converts the image
//! once into a cached read-only disk, boots the project's guest with the
//! agent as PID 1, has the agent create and start the container over
//! vsock, relays stdio and signals, and exits with the container's status.
//! Everything the run made (VM, sockets, console log) is gone at the end.

pub mod client;
mod spec;
pub mod state;
mod volume;

use crate::Failure;
use clap::Args;
use client::AgentWriter;
use husk_agent_protocol::{
    Event, ExitStatus, Frame, Request, Response, RootfsSpec, StdioSpec, VolumeSpec, MAX_CHUNK,
    VERSION,
};
use husk_vmm::{Console, DiskConfig, Exit, VmConfig, VsockConfig};
use state::{ProcessDefaults, State, Status};
use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

#[derive(Args)]
pub struct RunArgs {
    /// Remove the container's record when it exits (foreground runs always
    /// are; a detached one is kept for `husk logs` until `husk rm`).
    #[arg(long)]
    rm: bool,
    /// Run in the background and print the container's id; see `husk ps`,
    /// `exec`, `kill`, `logs`, `rm`.
    #[arg(short = 'd', long)]
    detach: bool,
    #[command(flatten)]
    process: ProcessFlags,
    /// The container's hostname (default: its id).
    #[arg(long)]
    hostname: Option<String>,
    /// CPUs for the container (fractions allowed); the VM gets the next
    /// whole number of vCPUs.
    #[arg(long, value_name = "N")]
    cpus: Option<f64>,
    /// Memory limit for the container (e.g. 256m); the VM gets this plus
    /// the guest's own overhead.
    #[arg(long, value_name = "SIZE")]
    memory: Option<String>,
    /// A host directory or disk image file in the container (repeatable).
    /// Directories are packed into a disk image; a read-write one gets the
    /// container's changes copied back when it ends.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volumes: Vec<String>,
    /// Put the container's writable layer on a disk of this size (a sparse
    /// file, formatted ext4) instead of in the VM's memory.
    #[arg(long, value_name = "SIZE")]
    scratch: Option<String>,
    /// Give the VM a network interface on an existing host TAP, with an
    /// address; the container then shares the VM's network (without it,
    /// the container has only loopback).
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,ip=ADDR/PREFIX][,gw=GW]")]
    net: Option<String>,
    /// Limit on the container's number of processes.
    #[arg(long = "pids-limit", value_name = "N")]
    pids_limit: Option<i64>,
    /// Guest kernel (default: the project's build).
    #[arg(long, value_name = "PATH", hide = true)]
    kernel: Option<PathBuf>,
    /// Image: an OCI layout directory, an OCI archive or a `docker save` tar.
    image: PathBuf,
    /// Command and arguments (default: the image's).
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

/// The process flags `husk run` and `husk exec` share.
#[derive(Args)]
pub struct ProcessFlags {
    /// Set an environment variable (repeatable); `-e NAME` takes the host's.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// UID[:GID] to run as.
    #[arg(short = 'u', long = "user", value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Allocate a terminal.
    #[arg(short = 't', long)]
    pub tty: bool,
    /// Keep stdin open and pass it to the process.
    #[arg(short = 'i', long)]
    pub interactive: bool,
}

/// Memory the guest itself needs beside the container's limit: kernel,
/// agent, page cache for the image and the tmpfs upper layer.
const GUEST_OVERHEAD_MIB: u64 = 96;
/// VM memory when the container has no limit.
const DEFAULT_VM_MIB: u64 = 256;
/// How long a live guest gets to boot and answer (a guest that stops
/// fails at once). Seconds on hardware; a loaded nested host has taken
/// over a minute.
const AGENT_DEADLINE: Duration = Duration::from_secs(120);
/// The container's stream id on the agent connection.
const MAIN_STREAM: u32 = 1;

/// Set in the environment of the background process a `husk run -d`
/// starts: the id it is to use.
const MONITOR_ENV: &str = "HUSK_MONITOR_ID";
/// What that process writes on its stderr once the container runs.
const READY_LINE: &str = "husk: container started";

/// Phase timestamps of this run for `HUSK_TIMINGS=1` (the startup bench's
/// breakdown): milliseconds since the run began.
static TIMINGS: std::sync::Mutex<Vec<(&str, f64)>> = std::sync::Mutex::new(Vec::new());
static RUN_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn mark(phase: &'static str) {
    let ms = RUN_START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3;
    TIMINGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((phase, ms));
}

fn print_timings() {
    if std::env::var_os("HUSK_TIMINGS").is_none() {
        return;
    }
    let t = TIMINGS.lock().unwrap_or_else(|p| p.into_inner());
    let fields: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
    eprintln!("husk-timings: {}", fields.join(" "));
}

/// Where the runs' sockets and logs live while they run.
pub fn runtime_root() -> PathBuf {
    if let Some(d) = std::env::var_os("HUSK_RUNTIME_DIR") {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid == 0 {
        return PathBuf::from("/run/husk");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("husk"),
        None => std::env::temp_dir().join(format!("husk-{uid}")),
    }
}

fn new_id() -> String {
    let mut b = [0u8; 6];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The run's directory, removed when dropped (every exit path), or for a
/// detached run that started and is kept, stripped to its record and logs.
struct RunDir(PathBuf, std::cell::Cell<bool>);

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.1.get() {
            let _ = std::fs::remove_dir_all(&self.0);
            return;
        }
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let name = e.file_name();
            let keep = [
                state::STATE_FILE,
                state::STDOUT_LOG,
                state::STDERR_LOG,
                "console.log",
                "monitor.log",
            ]
            .iter()
            .any(|k| name == *k);
            if !keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// `husk run -d`: starts this same command line again as a background
/// process that owns the VM, relays its stderr until the container runs,
/// then prints the id and returns.
fn detach(args: &RunArgs) -> Result<u8, Failure> {
    if args.process.interactive {
        return Err(Failure::usage(
            "-d with -i: attaching to a detached container is not supported",
        ));
    }
    let id = new_id();
    let exe = std::env::current_exe()
        .map_err(|e| Failure::runtime(format!("cannot find the husk binary: {e}")))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args_os().skip(1))
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

enum Msg {
    Frame(Frame),
    ConnEnd(String),
    Signal(i32),
    Stdin(Vec<u8>),
    Resize,
}

pub fn run(args: RunArgs) -> Result<u8, Failure> {
    let monitor_id = std::env::var(MONITOR_ENV).ok().filter(|_| args.detach);
    if args.detach && monitor_id.is_none() {
        return detach(&args);
    }
    mark("start");
    let id = monitor_id.clone().unwrap_or_else(new_id);
    let image = husk_image::Image::open(&args.image)
        .map_err(|e| Failure::runtime(format!("image {}: {e}", args.image.display())))?;
    let memory = args
        .memory
        .as_deref()
        .map(spec::size)
        .transpose()
        .map_err(Failure::usage)?;
    if let Some(c) = args.cpus {
        if !(c > 0.0 && c <= 255.0) {
            return Err(Failure::usage(format!(
                "--cpus {c}: expected a number above 0"
            )));
        }
    }
    let (uid, gid) = spec::user(
        args.process
            .user
            .as_deref()
            .or(image.defaults().user.as_deref())
            .unwrap_or(""),
    )
    .map_err(Failure::usage)?;
    let volumes = args
        .volumes
        .iter()
        .map(|v| volume::parse(v))
        .collect::<Result<Vec<_>, _>>()
        .map_err(Failure::usage)?;
    if volumes.len() > volume::MAX_VOLUMES {
        return Err(Failure::usage(format!(
            "{} volumes: at most {} are supported",
            volumes.len(),
            volume::MAX_VOLUMES
        )));
    }
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i].iter().any(|w| w.target == v.target) {
            return Err(Failure::usage(format!("-v: {} is mounted twice", v.target)));
        }
    }
    let scratch = args
        .scratch
        .as_deref()
        .map(|s| spec::size(s).map_err(|e| format!("--scratch: {e}")))
        .transpose()
        .map_err(Failure::usage)?;
    if scratch.is_some_and(|b| b < 16 << 20) {
        return Err(Failure::usage("--scratch: at least 16m"));
    }
    let net = args
        .net
        .as_deref()
        .map(spec::net)
        .transpose()
        .map_err(Failure::usage)?;
    let nic = net
        .as_ref()
        .map(|n| crate::boot::net_spec(&n.device, 0))
        .transpose()?;
    let defaults = image.defaults();
    let argv = spec::args(&defaults.entrypoint, &defaults.cmd, &args.command);
    if argv.is_empty() {
        return Err(Failure::usage(
            "no command: the image has no Entrypoint or Cmd, give one after the image",
        ));
    }
    let settings = spec::Settings {
        args: argv,
        env: spec::env(&defaults.env, &args.process.env).map_err(Failure::usage)?,
        cwd: args
            .process
            .workdir
            .clone()
            .or(defaults.working_dir.clone())
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
        uid,
        gid,
        hostname: args.hostname.clone().unwrap_or_else(|| id.clone()),
        terminal: args.process.tty,
        memory,
        cpus: args.cpus,
        pids: args.pids_limit,
        binds: volumes
            .iter()
            .enumerate()
            .map(|(i, v)| (volume_mount_point(i), v.target.clone(), v.read_only))
            .collect(),
    };
    let base_spec = serde_json::to_value(husk_container::default_spec(settings.args.clone()))
        .map_err(|e| Failure::runtime(format!("default spec: {e}")))?;
    let mut spec = spec::build(base_spec, &settings);
    if net.is_some() {
        spec::share_vm_network(&mut spec);
    }

    let cache = husk_image::Cache::new(husk_image::Cache::default_dir());
    let mut last_report = Instant::now();
    let block = cache
        .block_image(&image, &mut |p| {
            if last_report.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "husk: converting {}: layer {}/{}, {} of {} MiB",
                    args.image.display(),
                    p.layer,
                    p.layers,
                    p.bytes_done >> 20,
                    p.bytes_total >> 20
                );
                last_report = Instant::now();
            }
        })
        .map_err(|e| Failure::runtime(format!("converting {}: {e}", args.image.display())))?;

    mark("image_ready");
    let root = runtime_root();
    // Dead runs' leftovers go before this one starts.
    let _ = state::list(&root);
    let detached = monitor_id.is_some();
    let dir = RunDir(root.join(&id), std::cell::Cell::new(false));
    std::fs::create_dir_all(&dir.0)
        .map_err(|e| Failure::runtime(format!("runtime dir {}: {e}", dir.0.display())))?;
    let me = std::process::id() as i32;
    let mut record = State {
        id: id.clone(),
        image: args.image.display().to_string(),
        command: settings.args.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        detached,
        owner_pid: me,
        owner_start: state::start_time(me).unwrap_or(0),
        status: Status::Starting,
        process: ProcessDefaults {
            env: settings.env.clone(),
            cwd: settings.cwd.clone(),
            uid: settings.uid,
            gid: settings.gid,
        },
    };
    record.save(&dir.0).map_err(Failure::runtime)?;
    let sinks = Sinks::new(detached.then_some(dir.0.as_path())).map_err(Failure::runtime)?;
    let uds = dir.0.join(state::VSOCK_SOCKET);
    let console_log = dir.0.join("console.log");
    let guest = crate::boot::guest_dir();
    let kernel = args.kernel.clone().unwrap_or_else(|| guest.join("vmlinux"));
    let rootfs = guest.join("rootfs.ext4");
    for (p, what) in [
        (&kernel, "guest kernel"),
        (&rootfs, "guest root filesystem"),
    ] {
        if !p.is_file() {
            return Err(Failure::runtime(format!(
                "the {what} {} is missing (scripts/build-guest builds it)",
                p.display()
            )));
        }
    }
    let mut prepared = Vec::new();
    for (i, v) in volumes.into_iter().enumerate() {
        prepared.push(volume::prepare(v, i, &dir.0).map_err(Failure::runtime)?);
    }
    let volume_specs: Vec<VolumeSpec> = prepared
        .iter()
        .enumerate()
        .map(|(i, p)| VolumeSpec {
            device: format!("/dev/vd{}", char::from(b'c' + i as u8)),
            fs_type: p.fs_type.into(),
            mount_point: volume_mount_point(i),
            read_only: p.arg.read_only,
        })
        .collect();
    let mut disks = vec![
        DiskConfig {
            path: rootfs,
            read_only: true,
            id: "rootfs".into(),
        },
        DiskConfig {
            path: block.path.clone(),
            read_only: true,
            id: "image".into(),
        },
    ];
    for (i, p) in prepared.iter().enumerate() {
        disks.push(DiskConfig {
            path: p.disk.clone(),
            read_only: p.arg.read_only,
            id: format!("volume{i}"),
        });
    }
    let scratch_device = match scratch {
        Some(bytes) => {
            let path = dir.0.join("scratch.img");
            make_scratch(&path, bytes).map_err(Failure::runtime)?;
            disks.push(DiskConfig {
                path,
                read_only: false,
                id: "scratch".into(),
            });
            Some(format!(
                "/dev/vd{}",
                char::from(b'a' + disks.len() as u8 - 1)
            ))
        }
        None => None,
    };
    let rootfs_spec = RootfsSpec {
        device: "/dev/vdb".into(),
        fs_type: block.fs_type.into(),
        scratch_device,
    };
    let vcpus = args.cpus.map_or(1, |c| c.ceil() as u8).max(1);
    let mem_mib = memory.map_or(DEFAULT_VM_MIB, |m| m.div_ceil(1 << 20) + GUEST_OVERHEAD_MIB);
    let config = VmConfig {
        kernel,
        vcpus,
        mem_mib,
        cmdline: format!(
            "console=ttyS0 reboot=k panic=1 quiet i8042.noaux i8042.nomux i8042.nopnp \
             i8042.dumbkbd root=/dev/vda ro husk.agent husk.hostname=husk-{id}{}",
            net.as_ref().map(|n| n.cmdline()).unwrap_or_default()
        ),
        disks,
        nets: nic.into_iter().collect(),
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
            id: "vsock0".into(),
        }),
        console: Console::File(console_log.clone()),
        stdin: false,
        allow_pvm: false,
    };
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    if args.process.tty {
        // Blocked before the VM's threads exist, so they inherit the mask
        // and a resize reaches the one thread that waits for it.
        winch_set()
            .thread_block()
            .map_err(|e| Failure::runtime(format!("cannot block SIGWINCH: {e}")))?;
    }
    let vm = husk_vmm::start(&config, None).map_err(|e| Failure::runtime(e.to_string()))?;
    mark("vm_started");
    let controls = vm.controls();
    let (tx, rx) = mpsc::channel::<Msg>();
    let (done_tx, done_rx) = mpsc::channel();
    // The VM's device loop runs on its own thread; this one talks to the agent.
    let vm_thread = std::thread::spawn(move || {
        let outcome = vm.wait();
        let _ = done_tx.send(());
        outcome
    });
    spawn_signal_thread(signals, tx.clone(), Msg::Signal);
    let session = Session {
        tx,
        rx,
        done: done_rx,
        controls: controls.clone(),
        args: &args,
        uds,
        sinks,
    };
    let mut on_started = || {
        record.status = Status::Running;
        dir.1.set(detached && !args.rm);
        if let Err(e) = record.save(&dir.0) {
            log::warn!("{e}");
        }
        if detached {
            become_background(&dir.0);
        }
    };
    let result = session.run(spec, rootfs_spec, volume_specs, &mut on_started);
    if let Ok(code) = result {
        record.status = Status::Exited { code };
        if let Err(e) = record.save(&dir.0) {
            log::warn!("{e}");
        }
    }
    if result.is_err() || !vm_thread.is_finished() {
        // The guest normally powers off after Shutdown; make sure it stops.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !vm_thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if !vm_thread.is_finished() {
            controls.stop(Exit::Stopped(libc::SIGKILL));
        }
    }
    let outcome = vm_thread.join();
    mark("vm_stopped");
    // The agent reports 0 after it synced and unmounted everything.
    let clean = result.is_ok() && outcome.as_ref().is_ok_and(|o| o.guest_status == Some(0));
    let mut copy_errors = Vec::new();
    for p in prepared.iter().filter(|p| p.copy_back.is_some()) {
        if !clean {
            copy_errors.push(format!(
                "-v {}: the VM did not shut down cleanly; the container's changes were not \
                 copied back",
                p.arg.source.display()
            ));
        } else if let Err(e) = volume::copy_back(p) {
            copy_errors.push(e);
        }
    }
    mark("done");
    print_timings();
    match result {
        Ok(_) if !copy_errors.is_empty() => Err(Failure::runtime(copy_errors.join("\n"))),
        Ok(status) => Ok(status),
        Err(message) => {
            let tail = console_tail(&console_log);
            if let Ok(o) = outcome {
                log::info!("VM ended: {:?}", o.exit);
            }
            Err(Failure::runtime(if tail.is_empty() {
                message
            } else {
                format!("{message}\nguest console (last lines):\n{tail}")
            }))
        }
    }
}

/// Where the agent mounts volume `i` in the guest; the container's bind
/// mount takes it from there.
fn volume_mount_point(i: usize) -> String {
    format!("/run/husk/volumes/{i}")
}

/// A sparse file of `bytes`, formatted ext4 without a journal: the layer
/// lives as long as the run, so crash consistency buys nothing.
fn make_scratch(path: &Path, bytes: u64) -> Result<(), String> {
    let f = std::fs::File::create(path).map_err(|e| format!("{}: {e}", path.display()))?;
    f.set_len(bytes)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let out = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-O", "^has_journal"])
        .arg(path)
        .output()
        .map_err(|e| format!("--scratch: mkfs.ext4: {e} (Debian: e2fsprogs)"))?;
    if !out.status.success() {
        return Err(format!(
            "--scratch: mkfs.ext4 failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(())
}

/// Tells the `husk run -d` that started us that the container runs, and
/// sends our own messages to `monitor.log` from now on (which also ends
/// that process's wait for us).
fn become_background(dir: &Path) {
    eprintln!("{READY_LINE}");
    let log = dir.join("monitor.log");
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

/// Where the container's output goes: our stdout/stderr, or for a detached
/// run its log files.
struct Sinks {
    out: RefCell<Box<dyn Write>>,
    err: RefCell<Box<dyn Write>>,
}

impl Sinks {
    fn new(logs: Option<&Path>) -> Result<Sinks, String> {
        let Some(dir) = logs else {
            return Ok(Sinks {
                out: RefCell::new(Box::new(std::io::stdout())),
                err: RefCell::new(Box::new(std::io::stderr())),
            });
        };
        let open = |name: &str| {
            let p = dir.join(name);
            std::fs::File::create(&p).map_err(|e| format!("{}: {e}", p.display()))
        };
        Ok(Sinks {
            out: RefCell::new(Box::new(open(state::STDOUT_LOG)?)),
            err: RefCell::new(Box::new(open(state::STDERR_LOG)?)),
        })
    }
}

fn console_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `-u` parsing, shared with `husk exec`.
pub fn parse_user(spec: &str) -> Result<(u32, u32), String> {
    spec::user(spec)
}

/// `-e` over a base environment, shared with `husk exec`.
pub fn merge_env(base: &[String], cli: &[String]) -> Result<Vec<String>, String> {
    spec::env(base, cli)
}

/// Passes each signal the signalfd reads to `tx` as `wrap(signo)`.
pub fn spawn_signal_thread<M: Send + 'static>(
    signals: nix::sys::signalfd::SignalFd,
    tx: mpsc::Sender<M>,
    wrap: fn(i32) -> M,
) {
    std::thread::spawn(move || loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        while let Ok(Some(info)) = signals.read_signal() {
            if tx.send(wrap(info.ssi_signo as i32)).is_err() {
                return;
            }
        }
    });
}

struct Session<'a> {
    tx: mpsc::Sender<Msg>,
    rx: mpsc::Receiver<Msg>,
    done: mpsc::Receiver<()>,
    controls: husk_vmm::VmControls,
    args: &'a RunArgs,
    uds: PathBuf,
    sinks: Sinks,
}

impl Session<'_> {
    fn vm_ended(&self) -> bool {
        !matches!(self.done.try_recv(), Err(mpsc::TryRecvError::Empty))
    }

    fn run(
        self,
        spec: serde_json::Value,
        rootfs: RootfsSpec,
        volumes: Vec<VolumeSpec>,
        on_started: &mut dyn FnMut(),
    ) -> Result<u8, String> {
        let deadline = Instant::now() + AGENT_DEADLINE;
        let stream = client::connect(&self.uds, deadline, &|| !self.vm_ended())?;
        let writer = AgentWriter::new(
            stream
                .try_clone()
                .map_err(|e| format!("agent connection: {e}"))?,
        );
        client::spawn_reader(stream, self.tx.clone(), Msg::Frame, Msg::ConnEnd);
        let hello = writer.request(Request::Hello { version: VERSION })?;
        match self.response(hello)? {
            Response::Hello { .. } => {}
            other => return Err(format!("agent handshake: {other:?}")),
        }
        mark("agent_ready");
        let stdio = StdioSpec {
            stream: MAIN_STREAM,
            tty: self.args.process.tty,
            stdin: self.args.process.interactive,
        };
        let create = writer.request(Request::CreateContainer {
            id: "main".into(),
            spec,
            rootfs,
            volumes,
            stdio,
        })?;
        self.expect_ok(create, "create the container")?;
        mark("created");
        let _raw = if self.args.process.tty {
            let raw = husk_vmm::console::RawTerminal::enter();
            self.send_size(&writer);
            spawn_winch_thread(self.tx.clone());
            raw
        } else {
            None
        };
        let start = writer.request(Request::StartContainer { id: "main".into() })?;
        self.expect_ok(start, "start the container")?;
        mark("started");
        on_started();
        if self.args.process.interactive {
            spawn_stdin_thread(self.tx.clone(), Msg::Stdin);
        }
        let status = self.relay(&writer)?;
        mark("exited");
        // Done: the guest syncs and powers off; its answer is not needed.
        let _ = writer.request(Request::Shutdown);
        Ok(u8::try_from(status.shell_status().clamp(0, 255)).unwrap_or(255))
    }

    fn send_size(&self, writer: &AgentWriter) {
        if let Some((rows, cols)) = terminal_size() {
            let _ = writer.request(Request::ResizeTty {
                stream: MAIN_STREAM,
                rows,
                cols,
            });
        }
    }

    /// Waits for the response to `seq`, passing output through meanwhile.
    fn response(&self, seq: u64) -> Result<Response, String> {
        loop {
            match self.next()? {
                Msg::Frame(Frame::Response { seq: s, response }) if s == seq => {
                    return Ok(response)
                }
                Msg::Frame(f) => self.output(&f),
                Msg::ConnEnd(why) => return Err(why),
                Msg::Signal(sig) => {
                    return Err(format!("interrupted by signal {sig} while starting"));
                }
                Msg::Stdin(_) | Msg::Resize => {}
            }
        }
    }

    fn expect_ok(&self, seq: u64, what: &str) -> Result<(), String> {
        match self.response(seq)? {
            Response::Ok => Ok(()),
            Response::Error { message } => Err(format!("cannot {what}: {message}")),
            other => Err(format!("cannot {what}: unexpected answer {other:?}")),
        }
    }

    fn next(&self) -> Result<Msg, String> {
        loop {
            match self.rx.recv_timeout(Duration::from_millis(200)) {
                Ok(m) => return Ok(m),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.vm_ended() {
                        return Err("the VM stopped before the container exited".into());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    return Err("lost every event source".into())
                }
            }
        }
    }

    fn output(&self, f: &Frame) {
        match f {
            Frame::Stdout { data, .. } if !data.is_empty() => {
                let mut o = self.sinks.out.borrow_mut();
                let _ = o.write_all(data);
                let _ = o.flush();
            }
            Frame::Stderr { data, .. } if !data.is_empty() => {
                let mut e = self.sinks.err.borrow_mut();
                let _ = e.write_all(data);
                let _ = e.flush();
            }
            _ => {}
        }
    }

    /// Relays until the container's process exits; its status.
    fn relay(&self, writer: &AgentWriter) -> Result<ExitStatus, String> {
        let mut signals_seen = 0;
        loop {
            match self.next()? {
                Msg::Frame(Frame::Event(Event::Exited { stream, status, .. }))
                    if stream == MAIN_STREAM =>
                {
                    return Ok(status)
                }
                Msg::Frame(Frame::Response {
                    response: Response::Error { message },
                    ..
                }) => log::warn!("agent: {message}"),
                Msg::Frame(f) => self.output(&f),
                Msg::ConnEnd(why) => return Err(why),
                Msg::Stdin(data) => {
                    writer.frame(&Frame::Stdin {
                        stream: MAIN_STREAM,
                        data,
                    })?;
                }
                Msg::Resize => self.send_size(writer),
                Msg::Signal(sig) => {
                    signals_seen += 1;
                    if signals_seen >= 3 {
                        // The container ignores us: stop the VM outright.
                        self.controls.stop(Exit::Stopped(sig));
                        return Ok(ExitStatus::Signal(sig));
                    }
                    // Like docker's sig-proxy: the container gets it; a
                    // second one is a SIGKILL to everything in it.
                    let (signal, all) = if signals_seen == 1 {
                        (sig, false)
                    } else {
                        (libc::SIGKILL, true)
                    };
                    writer.request(Request::Signal {
                        id: "main".into(),
                        exec_id: None,
                        signal,
                        all,
                    })?;
                }
            }
        }
    }
}

/// Reads our stdin and passes it on as `wrap(chunk)`; an empty chunk is
/// the end of input.
pub fn spawn_stdin_thread<M: Send + 'static>(tx: mpsc::Sender<M>, wrap: fn(Vec<u8>) -> M) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK];
        let stdin = std::io::stdin();
        loop {
            let n = match std::io::Read::read(&mut stdin.lock(), &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            // An empty chunk is end of input, which the agent passes on.
            if tx.send(wrap(buf[..n].to_vec())).is_err() || n == 0 {
                return;
            }
        }
    });
}

fn winch_set() -> nix::sys::signal::SigSet {
    let mut set = nix::sys::signal::SigSet::empty();
    set.add(nix::sys::signal::Signal::SIGWINCH);
    set
}

fn spawn_winch_thread(tx: mpsc::Sender<Msg>) {
    let set = winch_set();
    std::thread::spawn(move || loop {
        if set.wait().is_err() || tx.send(Msg::Resize).is_err() {
            return;
        }
    });
}

fn terminal_size() -> Option<(u16, u16)> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass, which
    // lives for the call.
    let r = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
    (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
}
