//! Launching a planned run: the image's disk, the run's directory and
//! record, the volumes' and scratch disks, and the VM.

use super::plan::{Disks, Plan, ReadyDisk, ReadyVolume};
use super::session::VmIdentity;
use super::state::{self, ProcessDefaults, State, Status};
use super::{pool, timings::mark, volume, RunArgs};
use crate::agent::Sinks;
use crate::Failure;
use husk_vmm::{Console, RunningVm, VmConfig, VsockConfig};
use husk_wire::agent::NetIdentity;
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The run's directory, removed when dropped (every exit path), or for a
/// detached run that started and is kept, stripped to its record and logs.
pub struct RunDir {
    pub path: PathBuf,
    pub keep: Cell<bool>,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if !self.keep.get() {
            let _ = std::fs::remove_dir_all(&self.path);
            return;
        }
        let kept = [
            state::STATE_FILE,
            state::STDOUT_LOG,
            state::STDERR_LOG,
            CONSOLE_LOG,
            super::detach::MONITOR_LOG,
        ];
        for e in std::fs::read_dir(&self.path)
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = e.file_name();
            let name = name.to_string_lossy();
            let rotated = [state::STDOUT_LOG, state::STDERR_LOG]
                .iter()
                .any(|log| super::logfile::is_rotated_of(&name, log));
            if !rotated && !kept.iter().any(|k| name == *k) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The guest's console, in the run's directory.
pub const CONSOLE_LOG: &str = "console.log";

/// A run with its VM started.
pub struct Launched {
    pub dir: RunDir,
    pub record: State,
    /// The virtiofsd of each directory volume, for as long as the VM runs.
    pub backends: Vec<volume::Backend>,
    pub disks: Disks,
    pub vm: RunningVm,
    /// The VM came from a pool template: what makes it this run's.
    pub identity: Option<VmIdentity>,
    pub uds: PathBuf,
    pub sinks: Sinks,
}

/// The image as a cached read-only disk, converted on first use.
pub fn image_disk(args: &RunArgs, image: &husk_image::Image) -> Result<ReadyDisk, Failure> {
    let cache = husk_image::Cache::new(husk_image::Cache::default_dir());
    let mut last_report = Instant::now();
    let block = cache
        .block_image(image, &mut |p| {
            if last_report.elapsed() > Duration::from_secs(1) {
                eprintln!(
                    "husk: converting {}: layer {}/{}, {} of {} MiB",
                    args.image,
                    p.layer,
                    p.layers,
                    p.bytes_done >> 20,
                    p.bytes_total >> 20
                );
                last_report = Instant::now();
            }
        })
        .map_err(|e| Failure::runtime(format!("converting {}: {e}", args.image)))?;
    Ok(ReadyDisk {
        path: block.path,
        fs_type: block.fs_type,
    })
}

/// Makes the run's directory and record, its disks, and starts the VM.
pub fn launch(
    args: &RunArgs,
    plan: &Plan,
    image: ReadyDisk,
    origin: &Origin,
    detached: bool,
    restore_from: Option<&Path>,
    jail: Option<&super::jail::RunJail>,
) -> Result<Launched, Failure> {
    let root = super::runtime_root()?;
    // Dead runs' leftovers go before this one starts.
    let _ = state::list(&root);
    let dir = RunDir {
        path: root.join(&plan.id),
        keep: Cell::new(false),
    };
    std::fs::create_dir_all(&dir.path)
        .map_err(|e| Failure::runtime(format!("runtime dir {}: {e}", dir.path.display())))?;
    let mut record = record(origin, plan, detached, jail.is_some());
    record.name = args.name.clone();
    record.save(&dir.path).map_err(Failure::runtime)?;
    let sinks =
        sinks(detached.then_some(dir.path.as_path()), plan.log_opts).map_err(Failure::runtime)?;
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
    let (volumes, backends) = prepare_volumes(plan, &dir.path)?;
    let scratch = match plan.scratch {
        Some(bytes) => {
            let path = dir.path.join("scratch.img");
            match restore_from {
                // The checkpoint's layer, copied: it can be restored again.
                Some(from) => super::checkpoint::copy_scratch(from, &path),
                None => make_scratch(&path, bytes),
            }
            .map_err(Failure::runtime)?;
            Some(path)
        }
        None => None,
    };
    let disks = Disks {
        rootfs,
        image,
        volumes,
        scratch,
    };
    let uds = dir.path.join(state::VSOCK_SOCKET);
    let mut config = VmConfig {
        kernel,
        vcpus: plan.vcpus,
        mem_mib: plan.mem_mib,
        cmdline: plan.cmdline(),
        disks: plan.vm_disks(&disks),
        nets: plan
            .net
            .as_ref()
            .map(nic)
            .transpose()?
            .into_iter()
            .collect(),
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: uds.clone(),
            id: "vsock0".into(),
        }),
        fs: plan.vm_shares(&disks),
        console: Console::Capped(dir.path.join(CONSOLE_LOG), husk_vmm::console::CONSOLE_CAP),
        stdin: false,
        allow_pvm: false,
        track_dirty_pages: false,
    };
    super::blkio::apply(
        &plan.device_limits,
        &mut config.disks,
        super::plan::serial::ROOTFS,
    )
    .map_err(Failure::usage)?;
    // The host knows the MAC, so that a clone of a template can be given
    // it.
    for nic in &mut config.nets {
        nic.mac.get_or_insert_with(husk_vmm::random_mac);
    }
    let identity = VmIdentity {
        hostname: plan.vm_hostname(),
        net: net_identity(plan, &config),
    };
    // Once: a restore that fails after it boots instead, and the jailed
    // process can only fail to open the boot's files then, which it says.
    let entered = Cell::new(false);
    let enter_jail = || match jail {
        Some(j) if !entered.replace(true) => j.enter(&[&dir.path]),
        _ => Ok(()),
    };
    let before: Option<husk_vmm::BeforeThreads> = jail.map(|_| &enter_jail as _);
    let (vm, pooled) = match restore_from {
        Some(from) => (
            super::checkpoint::restore(from, &config, before).map_err(Failure::runtime)?,
            true,
        ),
        None => start_vm(&config, plan, &identity, before)?,
    };
    mark("vm_started");
    Ok(Launched {
        dir,
        record,
        backends,
        disks,
        vm,
        identity: pooled.then_some(identity),
        uds,
        sinks,
    })
}

/// eth0's MAC and address, as the kernel's `ip=` sets them in a booted VM.
fn net_identity(plan: &Plan, config: &VmConfig) -> Option<NetIdentity> {
    let net = plan.net.as_ref()?;
    let (address, prefix) = net.addr?;
    Some(NetIdentity {
        mac: config.nets.first()?.mac?,
        address,
        prefix,
        gateway: net.gateway,
    })
}

/// The VM, restored from the pool's template when one can serve it (made
/// first if there is none); else booted. Whether it was restored.
fn start_vm(
    config: &VmConfig,
    plan: &Plan,
    identity: &VmIdentity,
    before: Option<husk_vmm::BeforeThreads>,
) -> Result<(RunningVm, bool), Failure> {
    let servable = pool::unpoolable(config, identity.net.as_ref()).is_none();
    if pool::enabled().map_err(Failure::usage)? && servable {
        match pool::Template::for_config(&pool::default_dir(), config, &plan.template_cmdline()) {
            Ok(template) => {
                mark("template_ready");
                match template.restore(config, before) {
                    Ok(vm) => return Ok((vm, true)),
                    Err(pool::RestoreFailure::Host(e)) => {
                        return Err(Failure::runtime(format!("pool: {e}")))
                    }
                    // A template this husk cannot restore is of no use to
                    // the next run either: it makes a new one.
                    Err(pool::RestoreFailure::Template(e)) => {
                        log::warn!("pool: {e}; booting instead");
                        template.remove();
                    }
                }
            }
            Err(e) => log::warn!("pool: {e}; booting instead"),
        }
    }
    let vm = husk_vmm::start_with(config, None, before).map_err(crate::boot::usage_or_runtime)?;
    Ok((vm, false))
}

/// The VM's NIC: on passt's socket, or `--net`'s TAP.
fn nic(net: &super::spec::Net) -> Result<husk_vmm::NetConfig, Failure> {
    match &net.stream {
        Some(socket) => Ok(husk_vmm::NetConfig {
            host: husk_vmm::NetHost::Stream(socket.clone()),
            mac: None,
            id: "eth0".into(),
            limits: Default::default(),
        }),
        None => crate::boot::net_spec(&net.device, 0),
    }
}

/// Disk image volumes as they are; a virtiofsd for each directory.
fn prepare_volumes(
    plan: &Plan,
    work: &Path,
) -> Result<(Vec<ReadyVolume>, Vec<volume::Backend>), Failure> {
    let (mut ready, mut backends) = (Vec::new(), Vec::new());
    for (i, v) in plan.volumes.iter().enumerate() {
        match volume::prepare(v.clone()).map_err(Failure::runtime)? {
            volume::Prepared::Disk { disk, fs_type } => {
                ready.push(ReadyVolume::Disk(ReadyDisk {
                    path: disk,
                    fs_type,
                }));
            }
            volume::Prepared::Shared { arg } => {
                let backend = volume::serve(&arg, i, work).map_err(Failure::runtime)?;
                ready.push(ReadyVolume::Shared {
                    socket: backend.socket.clone(),
                });
                backends.push(backend);
            }
        }
    }
    Ok((ready, backends))
}

/// Which image a run runs: its name (full, or the path given) and digest.
pub struct Origin {
    pub name: String,
    pub digest: String,
}

/// The run's record; its owner is the process the user started: this
/// one, or for a jailed run the keeper (which lives and dies with this
/// one, and tears the run down: what `husk rm -f` kills).
fn record(origin: &Origin, plan: &Plan, detached: bool, jailed: bool) -> State {
    let me = match super::jail::keeper() {
        Some(keeper) if jailed => keeper,
        _ => std::process::id() as i32,
    };
    let s = &plan.settings;
    State {
        id: plan.id.clone(),
        name: None,
        image: origin.name.clone(),
        image_digest: Some(origin.digest.clone()),
        command: s.args.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        detached,
        owner_pid: me,
        owner_start: state::start_time(me).unwrap_or(0),
        status: Status::Starting,
        process: ProcessDefaults {
            env: s.env.clone(),
            cwd: s.cwd.clone(),
            uid: s.uid,
            gid: s.gid,
        },
        ports: Vec::new(),
    }
}

/// Where the container's output goes: our stdout/stderr, or for a detached
/// run its log files.
fn sinks(logs: Option<&Path>, opts: super::logfile::LogOpts) -> Result<Sinks, String> {
    let Some(dir) = logs else {
        return Ok(Sinks::stdio());
    };
    let open = |name: &str| {
        let p = dir.join(name);
        super::logfile::Rotating::create(&p, opts).map_err(|e| format!("{}: {e}", p.display()))
    };
    Ok(Sinks {
        out: Box::new(open(state::STDOUT_LOG)?),
        err: Box::new(open(state::STDERR_LOG)?),
    })
}

/// A sparse file of `bytes`, formatted ext4 without a journal: the layer
/// lives as long as the run, so crash consistency buys nothing.
fn make_scratch(path: &Path, bytes: u64) -> Result<(), String> {
    husk_image::mkfs::Ext4::new(bytes)
        .no_journal()
        .make(path)
        .map_err(|e| format!("--scratch: {e}"))
}
