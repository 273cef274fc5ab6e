//! `husk-vmm` and `husk vmm`: one VMM process for one VM, driven through the
//! Firecracker-compatible API on a Unix socket (`--api-sock`), or booted
//! straight from a JSON file with the schema of `GET /vm/config`
//! (`--no-api --config-file`).
//!
//! Before InstanceStart this thread waits on the API's wake-up eventfd and
//! the stop signals; after it, the API is one more subscriber of the VM's
//! event loop, so requests never block vCPUs and vCPUs never block requests.

use crate::controller::{Controller, Effect};
use crate::Failure;
use clap::Args;
use event_manager::{EventOps, Events, MutEventSubscriber, SubscriberOps};
use husk_api::model::{ActionType, InstanceState, VmConfigFile};
use husk_api::{ApiRequest, EventFd, Request, Response};
use husk_vmm::{Exit, VmControls};
use std::io::Write;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::timerfd::TimerFd;

#[derive(Args)]
pub struct VmmArgs {
    /// Serve the API on this Unix socket.
    #[arg(long, value_name = "PATH", required_unless_present = "no_api")]
    api_sock: Option<PathBuf>,
    /// No API: boot from --config-file and run until the guest stops.
    #[arg(long, requires = "config_file", conflicts_with = "api_sock")]
    no_api: bool,
    /// Configure (and boot) the VM from this JSON file.
    #[arg(long, value_name = "PATH")]
    config_file: Option<PathBuf>,
    /// The instance id reported by GET /.
    #[arg(long, default_value = "husk-vm")]
    id: String,
    /// Run on kvm_pvm anyway (only tiny test guests survive it).
    #[arg(long, hide = true)]
    allow_kvm_pvm: bool,
    /// Jail the VMM in DIR before it serves anything: DIR becomes its `/`
    /// (in mount and pid namespaces of its own: the VMM is PID 1 there,
    /// and this process waits for it), it runs as --uid/--gid with no
    /// capabilities, and every path the API or --config-file names is
    /// inside DIR (put the kernel and disks there first). Needs root.
    #[arg(long, value_name = "DIR", requires_all = ["uid", "gid"])]
    jail: Option<PathBuf>,
    /// The jailed VMM's user id (not 0).
    #[arg(long, value_name = "UID", requires = "jail")]
    uid: Option<u32>,
    /// The jailed VMM's group id (not 0).
    #[arg(long, value_name = "GID", requires = "jail")]
    gid: Option<u32>,
    /// The largest file the jailed VMM may write (bytes; RLIMIT_FSIZE).
    #[arg(long, value_name = "BYTES", requires = "jail")]
    jail_fsize: Option<u64>,
    /// The jailed VMM's network namespace: this one (a file such as
    /// /var/run/netns/NAME), where its TAP devices are. Default: the host's.
    #[arg(
        long,
        value_name = "PATH",
        requires = "jail",
        conflicts_with = "new_netns"
    )]
    netns: Option<PathBuf>,
    /// The jailed VMM gets a network namespace of its own, empty: no TAP
    /// can be opened, no network reached.
    #[arg(long, requires = "jail")]
    new_netns: bool,
    /// A limit for the jailed VMM's cgroup v2, FILE=VALUE (repeatable):
    /// `memory.max=300M`, `cpu.max=50000 100000`, `pids.max=64`... The
    /// VMM and its keeper run in /sys/fs/cgroup/PARENT/ID-PID, made for
    /// them (an empty one a former VMM left is removed then).
    #[arg(long = "cgroup", value_name = "FILE=VALUE", requires = "jail",
          value_parser = crate::cgroup2::Setting::parse)]
    cgroups: Vec<crate::cgroup2::Setting>,
    /// The cgroup under which the jailed VMM's own is made.
    #[arg(long, value_name = "NAME", requires = "jail", default_value = "husk-vmm",
          value_parser = crate::cgroup2::parse_parent)]
    parent_cgroup: String,
}

/// How often metrics are written while the VM runs.
const METRICS_PERIOD: Duration = Duration::from_secs(60);

/// Where metrics go, and the API counters only this layer sees.
#[derive(Default)]
struct MetricsSink {
    file: Option<std::fs::File>,
    api_requests: u64,
    api_errors: u64,
}

impl MetricsSink {
    fn open(&mut self, path: &str) -> Result<(), String> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| format!("metrics_path {path}: {e}"))?;
        self.file = Some(f);
        Ok(())
    }

    fn count(&mut self, response: &Response) {
        self.api_requests += 1;
        if response.fault_message().is_some() {
            self.api_errors += 1;
        }
    }

    /// One JSON line with every counter.
    fn flush(&mut self, vm: Option<&VmControls>) {
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let stats = vm.map(|v| v.stats()).unwrap_or_default();
        let disks: serde_json::Map<String, serde_json::Value> = stats
            .disks
            .iter()
            .map(|(id, d)| {
                (
                    id.clone(),
                    serde_json::json!({
                        "read_count": d.reads, "write_count": d.writes,
                        "read_bytes": d.read_bytes, "write_bytes": d.write_bytes,
                        "flush_count": d.flushes, "errors": d.errors,
                    }),
                )
            })
            .collect();
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let line = serde_json::json!({
            "utc_timestamp_ms": ms,
            "api_server": { "requests": self.api_requests, "errors": self.api_errors },
            "vcpu": { "exits": stats.vcpu_exits },
            "block": disks,
        });
        let _ = writeln!(file, "{line}");
    }
}

/// Applies what a request asks beyond its answer; returns an error answer
/// if that part fails (a metrics file that cannot be opened).
fn apply(effect: Effect, vm: Option<&VmControls>, metrics: &mut MetricsSink) -> Option<Response> {
    match effect {
        Effect::None => None,
        Effect::Logger(l) => crate::logger::configure(&l).err().map(Response::BadRequest),
        Effect::Pause => vm.map(VmControls::pause).and(None),
        Effect::Resume => vm.map(VmControls::resume).and(None),
        Effect::CtrlAltDel => vm.map(VmControls::ctrl_alt_del).and(None),
        Effect::FlushMetrics => {
            metrics.flush(vm);
            None
        }
        Effect::DiskLimits(id, limits) => match vm {
            Some(vm) => vm
                .set_disk_limits(&id, limits)
                .err()
                .map(Response::BadRequest),
            None => Some(Response::BadRequest(
                "the requested operation is not supported before starting the microVM".into(),
            )),
        },
        Effect::NetLimits(id, rx, tx) => match vm {
            Some(vm) => vm
                .set_net_limits(&id, rx, tx)
                .err()
                .map(Response::BadRequest),
            None => Some(Response::BadRequest(
                "the requested operation is not supported before starting the microVM".into(),
            )),
        },
        Effect::CreateSnapshot(paths, kind) => match vm {
            Some(vm) => vm
                .snapshot(&paths, kind)
                .err()
                .map(|e| Response::BadRequest(format!("snapshot: {e}"))),
            None => Some(Response::BadRequest(
                "the requested operation is not supported before starting the microVM".into(),
            )),
        },
        Effect::Metrics(m) => metrics
            .open(&m.metrics_path)
            .err()
            .map(Response::BadRequest),
    }
}

/// The API as a subscriber of the running VM's event loop.
struct ApiSubscriber {
    rx: Receiver<ApiRequest>,
    wake: EventFd,
    timer: TimerFd,
    controller: Controller,
    vm: VmControls,
    metrics: Arc<Mutex<MetricsSink>>,
    /// Hears of a forbidden call on the API thread.
    api_watch: &'static husk_vmm::seccomp::Watch,
}

/// Whether the client stopped waiting (504, or gone): the request is
/// dropped, not carried out after its client was told it failed.
fn abandoned(reply: &husk_api::Reply) -> bool {
    let gone = reply.is_abandoned();
    if gone {
        log::warn!("API request dropped: its client stopped waiting for the answer");
    }
    gone
}

impl MutEventSubscriber for ApiSubscriber {
    fn init(&mut self, ops: &mut EventOps) {
        for fd in [self.wake.as_raw_fd(), self.timer.as_raw_fd()] {
            if let Err(e) = ops.add(Events::new_raw(fd, EventSet::IN)) {
                self.vm
                    .stop(Exit::Failed(format!("API event registration: {e:?}")));
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let mut metrics = self.metrics.lock().unwrap_or_else(|p| p.into_inner());
        if events.fd() == self.timer.as_raw_fd() {
            let _ = self.timer.wait();
            metrics.flush(Some(&self.vm));
            return;
        }
        let _ = self.wake.read();
        if let Some(why) = self.api_watch.describe() {
            self.vm.stop(Exit::Failed(why));
            return;
        }
        while let Ok(ApiRequest { request, reply }) = self.rx.try_recv() {
            if abandoned(&reply) {
                continue;
            }
            let (response, effect) = match request {
                Request::Action(ActionType::InstanceStart) => (
                    Response::BadRequest(
                        "the requested operation is not supported after starting the microVM"
                            .into(),
                    ),
                    Effect::None,
                ),
                other => self.controller.handle(other),
            };
            let response = apply(effect, Some(&self.vm), &mut metrics).unwrap_or(response);
            metrics.count(&response);
            log::info!("API request answered: {}", response.status());
            let _ = reply.send(response);
        }
    }
}

fn poll_two(a: &EventFd, b: &impl AsRawFd) -> nix::Result<(bool, bool)> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    // SAFETY: both descriptors are owned by the caller and outlive the poll.
    let (fa, fb) = unsafe {
        (
            BorrowedFd::borrow_raw(a.as_raw_fd()),
            BorrowedFd::borrow_raw(b.as_raw_fd()),
        )
    };
    let mut fds = [
        PollFd::new(fa, PollFlags::POLLIN),
        PollFd::new(fb, PollFlags::POLLIN),
    ];
    poll(&mut fds, PollTimeout::NONE)?;
    Ok((fds[0].any().unwrap_or(false), fds[1].any().unwrap_or(false)))
}

/// Feeds a config file through the same checks as the API calls.
fn load_config_file(controller: &mut Controller, path: &PathBuf) -> Result<(), Failure> {
    let bytes = std::fs::read(path)
        .map_err(|e| Failure::runtime(format!("config file {}: {e}", path.display())))?;
    let file = VmConfigFile::from_json(&bytes)
        .map_err(|e| Failure::usage(format!("config file {}: {e}", path.display())))?;
    let mut requests = Vec::new();
    if let Some(l) = file.logger {
        requests.push(Request::PutLogger(l));
    }
    if let Some(m) = file.metrics {
        requests.push(Request::PutMetrics(m));
    }
    if let Some(b) = file.boot_source {
        requests.push(Request::PutBootSource(b));
    }
    if let Some(m) = file.machine_config {
        requests.push(Request::PutMachineConfig(m));
    }
    requests.extend(file.drives.into_iter().map(Request::PutDrive));
    requests.extend(
        file.network_interfaces
            .into_iter()
            .map(Request::PutNetworkInterface),
    );
    if let Some(v) = file.vsock {
        requests.push(Request::PutVsock(v));
    }
    requests.extend(file.fs.into_iter().map(Request::PutFs));
    let mut metrics = MetricsSink::default();
    for r in requests {
        let (response, effect) = controller.handle(r);
        if let Some(Response::BadRequest(e)) = apply(effect, None, &mut metrics) {
            return Err(Failure::usage(format!(
                "config file {}: {e}",
                path.display()
            )));
        }
        if let Some(msg) = response.fault_message() {
            return Err(Failure::usage(format!(
                "config file {}: {msg}",
                path.display()
            )));
        }
    }
    Ok(())
}

fn exit_code(outcome: husk_vmm::Outcome) -> Result<u8, Failure> {
    // Firecracker's exit code for a guest reset is 0 whatever the cause;
    // the log at least says it was a panic.
    if let Some(why) = &outcome.guest_panic {
        log::warn!("the guest kernel panicked: {why}");
    }
    match (outcome.exit, outcome.guest_status) {
        (Exit::Reset | Exit::Halted, status) => Ok(status.unwrap_or(0)),
        (Exit::Stopped(sig), _) => Ok(husk_wire::status::signal_status(sig)),
        (Exit::Failed(why), _) => Err(Failure::runtime(why)),
    }
}

pub fn run(args: VmmArgs) -> Result<u8, Failure> {
    serve(args, None)
}

/// `husk snapshot restore`: a VMM that starts by loading `load`, with the
/// API on `api_sock` if given.
pub fn run_restored(
    api_sock: Option<PathBuf>,
    allow_kvm_pvm: bool,
    load: husk_api::model::SnapshotLoad,
) -> Result<u8, Failure> {
    let args = VmmArgs {
        no_api: api_sock.is_none(),
        api_sock,
        config_file: None,
        id: "husk-vm".into(),
        allow_kvm_pvm,
        jail: None,
        uid: None,
        gid: None,
        jail_fsize: None,
        netns: None,
        new_netns: false,
        cgroups: Vec::new(),
        parent_cgroup: "husk-vmm".into(),
    };
    serve(args, Some(load))
}

fn serve(
    args: VmmArgs,
    initial_load: Option<husk_api::model::SnapshotLoad>,
) -> Result<u8, Failure> {
    // First: nothing is opened or started outside the jail.
    if let (Some(dir), Some(uid), Some(gid)) = (&args.jail, args.uid, args.gid) {
        let net = match (&args.netns, args.new_netns) {
            (Some(path), _) => crate::jail::JailNet::Join(path.clone()),
            (None, true) => crate::jail::JailNet::New,
            (None, false) => crate::jail::JailNet::Host,
        };
        let jail = crate::jail::Jail {
            dir: dir.clone(),
            uid,
            gid,
            fsize: args.jail_fsize,
            net,
            cgroup: (!args.cgroups.is_empty()).then(|| crate::jail::JailCgroup {
                parent: args.parent_cgroup.clone(),
                leaf: format!("{}-{}", args.id, std::process::id()),
                settings: args.cgroups.clone(),
            }),
        };
        if let crate::jail::Role::Keeper(vmm) = jail.enter().map_err(Failure::runtime)? {
            return Ok(crate::jail::keep(vmm));
        }
    }
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    let mut controller = Controller::new(args.id.clone());
    controller.allow_pvm = args.allow_kvm_pvm;
    let metrics = Arc::new(Mutex::new(MetricsSink::default()));
    if let Some(path) = &args.config_file {
        load_config_file(&mut controller, path)?;
        if let Some(m) = &controller.config.metrics {
            metrics
                .lock()
                .unwrap()
                .open(&m.metrics_path)
                .map_err(Failure::usage)?;
        }
    }
    let wake =
        EventFd::new(libc::EFD_NONBLOCK).map_err(|e| Failure::runtime(format!("eventfd: {e}")))?;
    let (tx, rx) = channel();
    // The API thread runs under its own seccomp filter; a call outside it
    // wakes this thread, which stops the VMM naming it.
    let (setup, api_watch) =
        husk_vmm::seccomp::api_guard(&wake).map_err(|e| Failure::runtime(e.to_string()))?;
    let server = match &args.api_sock {
        Some(sock) if !args.no_api => Some(
            husk_api::start_with(
                sock,
                tx,
                wake.try_clone()
                    .map_err(|e| Failure::runtime(format!("eventfd: {e}")))?,
                husk_api::Options {
                    thread_setup: Some(husk_api::ThreadSetup(setup)),
                    ..husk_api::Options::default()
                },
            )
            .map_err(|e| Failure::runtime(format!("API socket: {e}")))?,
        ),
        _ => None,
    };

    // Before boot: answer requests until an InstanceStart succeeds (or
    // boot at once from a config file). A failed start is a 400 and the
    // VMM stays usable, as with any other bad request.
    let try_start = |controller: &Controller| -> Result<husk_vmm::RunningVm, Response> {
        let cfg = controller.vm_config().map_err(Response::BadRequest)?;
        let signals = husk_vmm::take_stop_signals()
            .map_err(|e| Response::BadRequest(format!("InstanceStart: signals: {e}")))?;
        husk_vmm::start(&cfg, Some(signals))
            .map_err(|e| Response::BadRequest(format!("InstanceStart: {e}")))
    };
    let try_restore = |controller: &Controller,
                       load: &husk_api::model::SnapshotLoad|
     -> Result<husk_vmm::RunningVm, Response> {
        let cfg = controller.restore_config(load)?;
        let signals = husk_vmm::take_stop_signals()
            .map_err(|e| Response::BadRequest(format!("snapshot load: signals: {e}")))?;
        husk_vmm::restore(&cfg, Some(signals))
            .map_err(|e| Response::BadRequest(format!("snapshot load: {e}")))
    };
    let mut state = InstanceState::Running;
    let fail = |r: Response| Failure::runtime(r.fault_message().unwrap_or_default().to_owned());
    let mut vm = if let Some(load) = &initial_load {
        if !load.resume_vm {
            state = InstanceState::Paused;
        }
        try_restore(&controller, load).map_err(fail)?
    } else if args.config_file.is_some() {
        try_start(&controller).map_err(fail)?
    } else {
        'preboot: loop {
            let (woken, signalled) =
                poll_two(&wake, &signals).map_err(|e| Failure::runtime(format!("poll: {e}")))?;
            if signalled {
                // Nothing runs yet: stop at once.
                let sig = signals
                    .read_signal()
                    .ok()
                    .flatten()
                    .map_or(15, |i| i.ssi_signo);
                drop(server);
                return Ok(husk_wire::status::signal_status(sig as i32));
            }
            if !woken {
                continue;
            }
            let _ = wake.read();
            if let Some(why) = api_watch.describe() {
                drop(server);
                return Err(Failure::runtime(why));
            }
            let mut m = metrics.lock().unwrap();
            while let Ok(ApiRequest { request, reply }) = rx.try_recv() {
                if abandoned(&reply) {
                    continue;
                }
                let started = match &request {
                    Request::Action(ActionType::InstanceStart) => Some(try_start(&controller)),
                    Request::LoadSnapshot(load) => {
                        if !load.resume_vm {
                            state = InstanceState::Paused;
                        }
                        Some(try_restore(&controller, load))
                    }
                    _ => None,
                };
                let response = match started {
                    Some(Ok(vm)) => {
                        m.count(&Response::NoContent);
                        let _ = reply.send(Response::NoContent);
                        break 'preboot vm;
                    }
                    Some(Err(r)) => {
                        state = InstanceState::Running;
                        r
                    }
                    None => {
                        let (response, effect) = controller.handle(request);
                        apply(effect, None, &mut m).unwrap_or(response)
                    }
                };
                m.count(&response);
                let _ = reply.send(response);
            }
        }
    };
    controller.state = Some(state);
    let controls = vm.controls();
    let timer = TimerFd::new().map_err(|e| Failure::runtime(format!("timerfd: {e}")))?;
    let mut timer = timer;
    timer
        .reset(METRICS_PERIOD, Some(METRICS_PERIOD))
        .map_err(|e| Failure::runtime(format!("timerfd: {e}")))?;
    vm.events()
        .add_subscriber(Arc::new(Mutex::new(ApiSubscriber {
            rx,
            wake,
            timer,
            controller,
            vm: controls.clone(),
            metrics: metrics.clone(),
            api_watch,
        })));
    let outcome = vm.wait();
    metrics.lock().unwrap().flush(Some(&controls));
    drop(server);
    exit_code(outcome)
}
