//! `husk run IMAGE [CMD]`: one microVM per container. The run is four
//! steps: a pure [`plan`] (flags and image defaults → spec, VM size, disks),
//! [`launch`] (the image's cached disk, the run's directory and record, the
//! volumes, the VM), the agent [`session`] (create, start, relay, power
//! off), and [`teardown`] (the VM stopped for sure, the volumes' virtiofsd
//! gone, one error). Everything the run made (VM, sockets, console log) is gone at
//! the end, except a detached run's record and logs.

mod blkio;
mod cgroup;
pub(crate) mod checkpoint;
mod cpuset;
pub(crate) mod detach;
mod etc;
pub(crate) mod jail;
pub(crate) mod launch;
pub(crate) mod logfile;
mod names;
mod networking;
mod plan;
pub(crate) mod pool;
pub(crate) mod publish;
pub(crate) mod session;
pub(crate) mod spec;
pub mod state;
pub(crate) mod teardown;
mod timings;
mod volume;

pub(crate) use plan::{serial, CONTAINER_ID, DEFAULT_VM_MIB, GUEST_OVERHEAD_MIB, MAIN_STREAM};

use crate::registry_cmd::{PullPolicy, RegistryFlags};
use crate::Failure;
use clap::Args;
use jail::RunJail;
use std::path::{Path, PathBuf};
use timings::mark;

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
    /// A directory is shared live (virtio-fs, served by virtiofsd); a disk
    /// image file is attached as a disk.
    #[arg(short = 'v', long = "volume", value_name = "SRC:DST[:ro]")]
    volumes: Vec<String>,
    /// Put the container's writable layer on a disk of this size (a sparse
    /// file, formatted ext4) instead of in the VM's memory.
    #[arg(long, value_name = "SIZE")]
    scratch: Option<String>,
    /// Give the VM a network interface on an existing host TAP, with an
    /// address, instead of a husk network; the container shares the VM's
    /// network.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,ip=ADDR/PREFIX][,gw=GW]")]
    net: Option<String>,
    /// Limit on the container's number of processes.
    #[arg(long = "pids-limit", value_name = "N")]
    pids_limit: Option<i64>,
    /// Host CPUs the container's VM may run on (`0-3,6`): its vCPU threads
    /// and the VMM's own are pinned to them.
    #[arg(long = "cpuset-cpus", value_name = "LIST")]
    cpuset_cpus: Option<String>,
    /// The VM's share of contended host CPUs (Docker's `--cpu-shares`:
    /// 1024 is an even share): the run's husk and its VM's threads go in
    /// a host cgroup of their own with that weight. Needs root.
    #[arg(long = "cpu-shares", value_name = "N")]
    cpu_shares: Option<u64>,
    /// Limit the container's reads from a host block device, in bytes a
    /// second (`/dev/sda:10mb`; repeatable): each of its disks whose file
    /// is on DEV (or DEV, a disk volume's file) is limited in the VMM.
    #[arg(long = "device-read-bps", value_name = "DEV:RATE")]
    device_read_bps: Vec<String>,
    /// Limit its writes to a host block device, in bytes a second.
    #[arg(long = "device-write-bps", value_name = "DEV:RATE")]
    device_write_bps: Vec<String>,
    /// Limit its reads from a host block device, in operations a second.
    #[arg(long = "device-read-iops", value_name = "DEV:RATE")]
    device_read_iops: Vec<String>,
    /// Limit its writes to a host block device, in operations a second.
    #[arg(long = "device-write-iops", value_name = "DEV:RATE")]
    device_write_iops: Vec<String>,
    /// A detached run's logs: `max-size=SIZE` a file (default 10m) and
    /// `max-file=N` files kept (default 3), rotated as they fill.
    #[arg(long = "log-opt", value_name = "KEY=VALUE")]
    log_opts: Vec<String>,
    /// Run the VM and the session with the guest in a jail (the default as
    /// root): once the VM is built, the process that runs them sees only
    /// the run's directory and runs as an unprivileged user of its own; a
    /// parent keeps root to tear the run's network down. Needs root.
    #[arg(long)]
    jail: bool,
    /// Do not jail the run: the process that runs the VM keeps root.
    #[arg(long = "no-jail")]
    no_jail: bool,
    /// The jailed run's UID:GID (default: one of its own, from 3000000000
    /// up).
    #[arg(long = "jail-user", value_name = "UID:GID")]
    jail_user: Option<String>,
    /// Guest kernel (default: the project's build).
    #[arg(long, value_name = "PATH", hide = true)]
    kernel: Option<PathBuf>,
    /// The container's network: `bridge` (husk's default bridge: an
    /// address of its own, outbound NAT, `-p`; the default as root),
    /// `passt` (a userspace network stack: outbound traffic and `-p`
    /// without root; the default when not root), `none` (only loopback),
    /// the name of a network (`husk network create`: as bridge, and the
    /// containers on it find each other by name), or `tap=...` (as
    /// `--net`).
    #[arg(long, value_name = "bridge|passt|none|NAME|tap=...")]
    network: Option<String>,
    /// The container's name: `husk exec/kill/logs/rm` take it for the id,
    /// and containers on the same named network resolve it.
    #[arg(long)]
    name: Option<String>,
    /// Publish every port the image exposes on a free host port (`husk
    /// port` says which).
    #[arg(short = 'P', long = "publish-all")]
    publish_all: bool,
    /// Publish a container port on the host (with --network bridge or a
    /// named network).
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "[IP:]HOST:CONTAINER[/tcp]"
    )]
    publish: Vec<String>,
    #[command(flatten)]
    dns: etc::DnsFlags,
    /// When to pull the image from its registry.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pull: PullPolicy,
    #[command(flatten)]
    registry: RegistryFlags,
    /// Image: a name (`debian:12`, `host:5000/repo:tag`, `repo@sha256:...`)
    /// from the image store, pulled if missing; or a path to an OCI layout
    /// directory, an OCI archive or a `docker save` tar.
    image: String,
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

/// Where the runs' sockets and logs live while they run, made if missing
/// (mode 0700). Records and sockets there are trusted (`husk exec`
/// connects to them), so a directory husk chose itself must be a directory,
/// not a link, of this user's, that no one else may write: without
/// `XDG_RUNTIME_DIR` a user's is `/tmp/husk-UID`, which anyone could have
/// made first. `HUSK_RUNTIME_DIR` is the caller's own choice and is taken
/// as it is.
pub fn runtime_root() -> Result<PathBuf, Failure> {
    let root = runtime_root_path();
    if std::env::var_os("HUSK_RUNTIME_DIR").is_some() {
        std::fs::create_dir_all(&root)
            .map_err(|e| Failure::runtime(format!("runtime dir {}: {e}", root.display())))?;
    } else {
        private_dir(&root).map_err(Failure::runtime)?;
    }
    Ok(root)
}

/// The runtime directory's path, unchecked: the OCI runtime's default
/// `--root` (its callers, containerd and podman, own that tree).
pub fn runtime_root_path() -> PathBuf {
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

/// Makes `dir` (0700) if missing, then checks it is a directory of this
/// user's that no one else may write.
fn private_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let said = |why: String| {
        format!(
            "runtime dir {}: {why}; refusing it (set XDG_RUNTIME_DIR or HUSK_RUNTIME_DIR to a directory of yours)",
            dir.display()
        )
    };
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(said(e.to_string())),
    }
    let meta = std::fs::symlink_metadata(dir).map_err(|e| said(e.to_string()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if !meta.file_type().is_dir() {
        return Err(said("it is not a directory (a link?)".into()));
    }
    if meta.uid() != uid {
        return Err(said(format!(
            "it belongs to uid {}, not to you (uid {uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(said(format!(
            "others may write to it (mode {:o})",
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// `bytes` random bytes as hex: container and exec ids.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    let _ = fill_random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fills `buf` from the kernel's generator with getrandom(2), which needs
/// no `/dev/urandom` (a jailed run has none).
pub fn fill_random(buf: &mut [u8]) -> std::io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: getrandom(2) writes at most `rest.len()` bytes into it.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        match n {
            n if n > 0 => done += n as usize,
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

fn new_id() -> String {
    random_hex(6)
}

pub fn run(args: RunArgs) -> Result<u8, Failure> {
    let cpuset = (args.cpuset_cpus.as_deref())
        .map(cpuset::parse)
        .transpose()
        .map_err(Failure::usage)?;
    let cpu_weight = args
        .cpu_shares
        .map(cgroup::weight)
        .transpose()
        .map_err(Failure::usage)?;
    let jail_flags = jail::JailFlags::parse(args.jail, args.no_jail, args.jail_user.as_deref())?;
    let monitor_id = std::env::var(detach::MONITOR_ENV)
        .ok()
        .filter(|_| args.detach);
    if args.detach && monitor_id.is_none() {
        return detach::detach(&args);
    }
    mark("start");
    let detached = monitor_id.is_some();
    // The background husk of `husk restore`: the VM comes from here.
    let restore_from = std::env::var_os(checkpoint::RESTORE_ENV)
        .map(PathBuf::from)
        .filter(|_| detached);
    let id = monitor_id.unwrap_or_else(new_id);
    let (image, name) = crate::registry_cmd::open_for_run(&args.image, args.pull, &args.registry)?;
    let origin = launch::Origin {
        name,
        digest: image.manifest_digest().to_string(),
    };
    if let Some(name) = &args.name {
        names::claim(&runtime_root()?, name, &id).map_err(Failure::usage)?;
    }
    // Dropped after the teardown below: the TAP goes once the VM is gone.
    let mut networking = networking::network(&args, &id, &image.defaults().exposed_ports)?;
    let plan = plan::plan(
        &args,
        image.defaults(),
        &id,
        &plan::Network {
            bridged: networking.nic(),
            tap: networking.tap.clone(),
            dns: networking
                .attachment
                .as_ref()
                .filter(|a| a.network.has_dns())
                .map(|a| a.network.gateway()),
        },
        &etc::host_resolv_conf(),
    )?;
    // Before the image is converted or anything started: a directory
    // volume needs virtiofsd.
    if plan.volumes.iter().any(|v| v.source.is_dir()) {
        crate::virtiofsd::program().map_err(Failure::runtime)?;
    }
    let image_disk = launch::image_disk(&args, &image)?;
    mark("image_ready");
    // Set before the VM's threads exist, so they inherit it.
    if let Some(cpus) = &cpuset {
        cpuset::apply(cpus).map_err(Failure::usage)?;
    }
    if let Some(weight) = cpu_weight {
        cgroup::join(&id, weight).map_err(Failure::runtime)?;
    }
    // Taken before the VM's threads exist, so they inherit the masks: the
    // stop signals and resizes reach only the threads that wait for them.
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    if args.process.tty {
        crate::agent::tty::block_winch().map_err(Failure::runtime)?;
    }
    // What the rest of the run takes from the network; the network itself
    // stays with the process that tears it down.
    let notice = networking.notice.clone();
    let ports = networking.ports.clone();
    let publish_to = networking.attachment.as_ref().map(|a| a.ip);
    let listeners = std::mem::take(&mut networking.listeners);
    // The published ports' proxies connect to the guest from the jailed
    // process: only without them may it leave the host's network.
    let own_network = listeners.is_empty();
    let jail = jail_flags.map(|f| RunJail {
        own_network,
        ..f.for_run(&id)
    });
    let _network = match jail {
        None => Some(networking),
        Some(_) => {
            match jail::fork()? {
                jail::Forked::Parent(child) => {
                    drop(signals);
                    let status = jail::keep(child);
                    drop(networking);
                    jail::remove_run_dir(&runtime_root()?.join(&id));
                    return Ok(status);
                }
                jail::Forked::Child => {
                    // The parent's: its threads (DNS, passt's watcher) are
                    // not in this process, and it tears the network down.
                    std::mem::forget(networking);
                    None
                }
            }
        }
    };
    let launched = launch::launch(
        &args,
        &plan,
        image_disk,
        &origin,
        detached,
        restore_from.as_deref(),
        jail.as_ref(),
    )?;
    // Once the VM is up: a run that fails before says only why.
    for w in plan.etc_warning.iter().chain(&notice) {
        eprintln!("husk: {w}");
    }
    let launch::Launched {
        dir,
        mut record,
        mut backends,
        disks,
        vm,
        identity,
        uds,
        sinks,
    } = launched;
    if jail.is_some() {
        // The jail's user may not kill them (they run as root), and they
        // leave once this process has: they die with it, and their sockets
        // go with the run's directory.
        std::mem::forget(std::mem::take(&mut backends));
    }
    let controls = vm.controls();
    record.ports = ports;
    if let Some(ip) = publish_to {
        publish::serve(listeners, ip);
    }
    let (vm_thread, vm_done) = wait_on_a_thread(vm);
    let (rootfs, volume_specs) = plan.agent_disks(&disks);
    let container = session::Container {
        spec: plan.spec,
        rootfs,
        volumes: volume_specs,
        stdio: plan.stdio,
    };
    let checkpoint = detached.then(|| {
        let source = checkpoint::Source {
            args: std::env::args_os().skip(1).collect(),
            scratch: disks.scratch.clone(),
        };
        (dir.path.clone(), source)
    });
    let session = session::Session {
        uds,
        sinks,
        controls: controls.clone(),
        vm_done,
        signals,
        identity,
        checkpoint,
        attach: restore_from.is_some(),
        disposable: args.rm && !disks.volumes.iter().any(plan::ReadyVolume::is_disk),
    };
    let mut on_started = || {
        record.status = state::Status::Running;
        dir.keep.set(detached && !args.rm);
        if let Err(e) = record.save(&dir.path) {
            log::warn!("{e}");
        }
        if detached {
            detach::become_background(&dir.path);
        }
    };
    let result = session.run(
        container,
        &mut session::Hooks {
            created: &mut || Ok(()),
            started: &mut on_started,
        },
    );
    if let Ok(status) = result {
        record.status = state::Status::Exited {
            code: status.shell_status(),
        };
        if let Err(e) = record.save(&dir.path) {
            log::warn!("{e}");
        }
    }
    teardown::teardown(result, vm_thread, &controls, &dir, backends)
}

/// The VM's device loop on a thread of its own (the caller talks to the
/// agent), and what tells anyone when the VM has ended.
pub(crate) fn wait_on_a_thread(vm: husk_vmm::RunningVm) -> (VmThread<husk_vmm::Outcome>, VmEnded) {
    let thread = VmThread::spawn(move || vm.wait());
    let ended = thread.ended();
    (thread, ended)
}

type EndedFlag = std::sync::Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>;

/// A thread whose end can be waited for with a deadline, woken by the end
/// itself (a run's exit waits on this) rather than polled.
pub(crate) struct VmThread<T> {
    handle: std::thread::JoinHandle<T>,
    ended: EndedFlag,
}

/// Whether a [`VmThread`] has ended, for any thread to ask.
#[derive(Clone)]
pub(crate) struct VmEnded(EndedFlag);

impl VmEnded {
    pub fn has_ended(&self) -> bool {
        *self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Says that the thread ended, when dropped: a panic's unwinding too.
struct Ended(EndedFlag);

impl Drop for Ended {
    fn drop(&mut self) {
        let (lock, cv) = &*self.0;
        *lock.lock().unwrap_or_else(|p| p.into_inner()) = true;
        cv.notify_all();
    }
}

impl<T: Send + 'static> VmThread<T> {
    pub fn spawn(f: impl FnOnce() -> T + Send + 'static) -> Self {
        let ended = EndedFlag::default();
        let flag = Ended(ended.clone());
        let handle = std::thread::spawn(move || {
            let _flag = flag;
            f()
        });
        VmThread { handle, ended }
    }

    pub fn ended(&self) -> VmEnded {
        VmEnded(self.ended.clone())
    }

    /// Waits until the thread has ended or `deadline` passed: whether it
    /// ended.
    pub fn wait_until(&self, deadline: std::time::Instant) -> bool {
        let (lock, cv) = &*self.ended;
        let mut ended = lock.lock().unwrap_or_else(|p| p.into_inner());
        while !*ended {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                return false;
            }
            ended = cv
                .wait_timeout(ended, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    pub fn join(self) -> std::thread::Result<T> {
        self.handle.join()
    }
}

#[cfg(test)]
mod vm_thread_tests {
    use super::VmThread;
    use std::time::{Duration, Instant};

    #[test]
    fn a_thread_that_is_still_running_is_waited_for_until_the_deadline() {
        let t = VmThread::spawn(|| std::thread::sleep(Duration::from_millis(300)));
        let ended = t.ended();
        assert!(!t.wait_until(Instant::now() + Duration::from_millis(20)));
        assert!(!ended.has_ended());
        assert!(t.wait_until(Instant::now() + Duration::from_secs(10)));
        assert!(ended.has_ended());
        assert!(t.join().is_ok());
    }

    #[test]
    fn a_thread_that_panicked_has_ended_at_once() {
        let t = VmThread::spawn(|| -> u8 { panic!("on purpose") });
        let started = Instant::now();
        assert!(t.wait_until(started + Duration::from_secs(10)));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(t.join().is_err());
    }
}

/// `-u` parsing, shared with `husk exec`.
pub fn parse_user(spec: &str) -> Result<(u32, u32), String> {
    spec::user(spec)
}

/// `-e` over a base environment, shared with `husk exec`.
pub fn merge_env(base: &[String], cli: &[String]) -> Result<Vec<String>, String> {
    spec::env(base, cli)
}

/// The OCI process `husk exec` sends: the defaults with its settings.
pub fn exec_process(
    args: Vec<String>,
    env: Vec<String>,
    cwd: String,
    (uid, gid): (u32, u32),
    terminal: bool,
) -> husk_wire::oci_spec::runtime::Process {
    spec::process(&spec::Settings {
        args,
        env,
        cwd,
        uid,
        gid,
        terminal,
        ..spec::Settings::default()
    })
}

#[cfg(test)]
mod tests {
    use super::private_dir;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_runtime_dir_is_made_private_and_a_planted_one_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let made = base.path().join("husk-1000");
        private_dir(&made).unwrap();
        let mode = std::fs::metadata(&made).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        // Made by someone else first: a link to elsewhere, a directory
        // others may write.
        let link = base.path().join("link");
        std::os::unix::fs::symlink(&made, &link).unwrap();
        assert!(private_dir(&link).unwrap_err().contains("not a directory"));
        let open = base.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(private_dir(&open).unwrap_err().contains("others may write"));
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            let theirs = base.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
            let err = private_dir(&theirs).unwrap_err();
            assert!(err.contains("belongs to uid 65534"), "{err}");
            assert!(err.contains("XDG_RUNTIME_DIR"), "{err}");
        }
    }
}
