//! What `husk vmm` does with each API request: the pre-boot resources
//! (Firecracker's model: boot source, machine config, drives, ...), the
//! rules for what may change when, and the translation of the resources
//! into a `VmConfig` at InstanceStart. No sockets and no KVM here, so every
//! rule is unit-tested.

use husk_api::model::{
    ActionType, BootSource, Drive, DrivePatch, InstanceInfo, InstanceState, Logger, MachineConfig,
    Metrics, NetworkInterface, NetworkInterfacePatch, SharedFs, SnapshotType, VersionInfo,
    VmConfigFile, VmStateChange,
};
use husk_api::{Request, Response};
use husk_vmm::{Console, DiskConfig, FsConfig, NetConfig, VmConfig, VsockConfig};
use std::path::{Path, PathBuf};

/// Firecracker's default when `boot_args` is absent.
const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";

const AFTER_BOOT: &str = "the requested operation is not supported after starting the microVM";
const BEFORE_BOOT: &str = "the requested operation is not supported before starting the microVM";

/// What the VMM thread must do beyond answering.
#[derive(Debug, PartialEq)]
pub enum Effect {
    None,
    Pause,
    Resume,
    CtrlAltDel,
    FlushMetrics,
    /// Configure the logger / metrics sink (files are opened by the caller).
    Logger(Logger),
    Metrics(Metrics),
    /// Write a snapshot of the paused VM.
    CreateSnapshot(husk_vmm::snapshot::SnapshotPaths, husk_vmm::snapshot::Kind),
    /// New limits for a running disk (`PATCH /drives`).
    DiskLimits(String, husk_vmm::rate_limiter::Limits),
    /// New limits for a running NIC (`PATCH /network-interfaces`): rx,
    /// tx; a direction not given keeps its own.
    NetLimits(
        String,
        Option<husk_vmm::rate_limiter::Limits>,
        Option<husk_vmm::rate_limiter::Limits>,
    ),
}

#[derive(Debug, Default)]
pub struct Controller {
    pub id: String,
    /// Passed to the VMM: boot on kvm_pvm (tests with tiny guests).
    pub allow_pvm: bool,
    pub config: VmConfigFile,
    pub state: Option<InstanceState>,
}

fn bad(message: impl Into<String>) -> Response {
    Response::BadRequest(message.into())
}

fn readable_file(what: &str, path: &str) -> Result<(), Response> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() || m.file_type().is_block_device_like() => Ok(()),
        Ok(_) => Err(bad(format!("{what} {path} is not a file"))),
        Err(e) => Err(bad(format!("{what} {path}: {e}"))),
    }
}

trait BlockLike {
    fn is_block_device_like(&self) -> bool;
}

impl BlockLike for std::fs::FileType {
    fn is_block_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_block_device()
    }
}

impl Controller {
    pub fn new(id: String) -> Self {
        Controller {
            id,
            allow_pvm: false,
            config: VmConfigFile::default(),
            state: None,
        }
    }

    fn started(&self) -> bool {
        self.state.is_some()
    }

    fn instance_state(&self) -> InstanceState {
        self.state.unwrap_or(InstanceState::NotStarted)
    }

    pub fn machine(&self) -> MachineConfig {
        self.config.machine_config.clone().unwrap_or_default()
    }

    /// Answers `request`; InstanceStart is the caller's (it builds the VM
    /// from [`Controller::vm_config`]). `Effect` says what else to do.
    pub fn handle(&mut self, request: Request) -> (Response, Effect) {
        use Request as R;
        let pre_boot_only = matches!(
            request,
            R::PutBootSource(_)
                | R::PutMachineConfig(_)
                | R::PatchMachineConfig(_)
                | R::PutDrive(_)
                | R::PutNetworkInterface(_)
                | R::PutVsock(_)
                | R::PutFs(_)
                | R::LoadSnapshot(_)
        );
        if pre_boot_only && self.started() {
            return (bad(AFTER_BOOT), Effect::None);
        }
        let ok = (Response::NoContent, Effect::None);
        let result: Result<(Response, Effect), Response> = match request {
            R::GetInstanceInfo => Ok((
                Response::json(&InstanceInfo {
                    id: self.id.clone(),
                    state: self.instance_state(),
                    vmm_version: env!("CARGO_PKG_VERSION").into(),
                    app_name: "husk".into(),
                }),
                Effect::None,
            )),
            R::GetVersion => Ok((
                Response::json(&VersionInfo {
                    firecracker_version: env!("CARGO_PKG_VERSION").into(),
                }),
                Effect::None,
            )),
            R::GetVmConfig => Ok((Response::json(&self.config), Effect::None)),
            R::GetMachineConfig => Ok((Response::json(&self.machine()), Effect::None)),
            R::PutBootSource(b) => self.put_boot_source(b).map(|_| ok),
            R::PutMachineConfig(m) => self.put_machine(m).map(|_| ok),
            R::PatchMachineConfig(p) => {
                let m = p.apply(&self.machine());
                self.put_machine(m).map(|_| ok)
            }
            R::PutDrive(d) => self.put_drive(d).map(|_| ok),
            R::PatchDrive(p) => self
                .patch_drive(p)
                .map(|effect| (Response::NoContent, effect)),
            R::PutNetworkInterface(n) => self.put_net(n).map(|_| ok),
            R::PatchNetworkInterface(p) => self
                .patch_net(p)
                .map(|effect| (Response::NoContent, effect)),
            R::PutVsock(v) => {
                self.config.vsock = Some(v);
                Ok(ok)
            }
            R::PutFs(f) => self.put_fs(f).map(|_| ok),
            R::PutLogger(l) => {
                self.config.logger = Some(l.clone());
                Ok((Response::NoContent, Effect::Logger(l)))
            }
            R::PutMetrics(m) => {
                self.config.metrics = Some(m.clone());
                Ok((Response::NoContent, Effect::Metrics(m)))
            }
            R::Action(ActionType::InstanceStart) | R::LoadSnapshot(_) => Err(bad(
                "InstanceStart and snapshot loads are handled by the VMM loop (internal routing error)",
            )),
            R::Action(ActionType::SendCtrlAltDel) if self.started() => {
                Ok((Response::NoContent, Effect::CtrlAltDel))
            }
            R::Action(ActionType::FlushMetrics) => {
                if self.config.metrics.is_none() {
                    Err(bad("FlushMetrics: no metrics sink; PUT /metrics first"))
                } else {
                    Ok((Response::NoContent, Effect::FlushMetrics))
                }
            }
            R::Action(_) | R::PatchVm(_) | R::CreateSnapshot(_) if !self.started() => {
                Err(bad(BEFORE_BOOT))
            }
            R::CreateSnapshot(_) if self.state != Some(InstanceState::Paused) => Err(bad(
                "the microVM must be paused for a snapshot (PATCH /vm with state Paused)",
            )),
            R::CreateSnapshot(c) => Ok((
                Response::NoContent,
                Effect::CreateSnapshot(
                    husk_vmm::snapshot::SnapshotPaths {
                        state: c.snapshot_path.into(),
                        mem: c.mem_file_path.into(),
                    },
                    match c.snapshot_type {
                        SnapshotType::Full => husk_vmm::snapshot::Kind::Full,
                        SnapshotType::Diff => husk_vmm::snapshot::Kind::Diff,
                    },
                ),
            )),
            R::PatchVm(VmStateChange::Paused) => {
                self.state = Some(InstanceState::Paused);
                Ok((Response::NoContent, Effect::Pause))
            }
            R::PatchVm(VmStateChange::Resumed) => {
                self.state = Some(InstanceState::Running);
                Ok((Response::NoContent, Effect::Resume))
            }
            R::Action(_) => Err(bad(AFTER_BOOT)),
        };
        result.unwrap_or_else(|e| (e, Effect::None))
    }

    /// What loading `load` restores, if nothing is configured yet (a
    /// snapshot brings its own machine, as in Firecracker).
    pub fn restore_config(
        &self,
        load: &husk_api::model::SnapshotLoad,
    ) -> Result<husk_vmm::snapshot::RestoreConfig, Response> {
        if self.started() {
            return Err(bad(AFTER_BOOT));
        }
        let c = &self.config;
        let configured = c.boot_source.is_some()
            || c.machine_config.is_some()
            || !c.drives.is_empty()
            || !c.network_interfaces.is_empty()
            || c.vsock.is_some()
            || !c.fs.is_empty();
        if configured {
            return Err(bad(
                "a snapshot can only be loaded before anything is configured (it brings its own VM)",
            ));
        }
        readable_file("snapshot_path", &load.snapshot_path)?;
        readable_file("the memory file", load.mem_file())?;
        Ok(husk_vmm::snapshot::RestoreConfig {
            snapshot: husk_vmm::snapshot::SnapshotPaths {
                state: load.snapshot_path.clone().into(),
                mem: load.mem_file().into(),
            },
            console: Console::Stdio,
            stdin: true,
            allow_pvm: self.allow_pvm,
            resume: load.resume_vm,
            track_dirty_pages: load.tracks_dirty_pages(),
            overrides: Default::default(),
            // Firecracker's `File` backend: mapped private.
            memory: Default::default(),
        })
    }

    fn put_boot_source(&mut self, b: BootSource) -> Result<(), Response> {
        readable_file("kernel_image_path", &b.kernel_image_path)?;
        if b.initrd_path.is_some() {
            return Err(bad("initrd_path: husk does not load an initrd yet"));
        }
        self.config.boot_source = Some(b);
        Ok(())
    }

    fn put_machine(&mut self, m: MachineConfig) -> Result<(), Response> {
        m.validate().map_err(bad)?;
        if m.smt {
            return Err(bad(
                "smt: husk gives each vCPU its own core; SMT is not supported",
            ));
        }
        // Accepted by the parser so Firecracker's configurations read, but
        // nothing applies them yet: refused, never ignored.
        if m.huge_pages != husk_api::model::HugePages::None {
            return Err(bad(
                "huge_pages: husk backs guest memory with ordinary pages only; use \"None\"",
            ));
        }
        if let Some(t) = m.cpu_template {
            return Err(bad(format!(
                "cpu_template {t:?}: husk has no CPU templates (the guest sees the host's CPU as KVM offers it)"
            )));
        }
        if m.mem_size_mib < husk_vmm::memory::MIN_MEM_MIB as usize {
            return Err(bad(format!(
                "mem_size_mib: {} MiB is too small (at least {})",
                m.mem_size_mib,
                husk_vmm::memory::MIN_MEM_MIB
            )));
        }
        self.config.machine_config = Some(m);
        Ok(())
    }

    fn put_drive(&mut self, d: Drive) -> Result<(), Response> {
        d.validate().map_err(bad)?;
        if d.io_engine != husk_api::model::IoEngine::Sync {
            return Err(bad(format!(
                "drive {}: io_engine Async: husk's block I/O is synchronous; use \"Sync\"",
                d.drive_id
            )));
        }
        let path = d
            .path_on_host
            .as_deref()
            .ok_or_else(|| bad(format!("drive {}: path_on_host is required", d.drive_id)))?;
        readable_file(&format!("drive {}: path_on_host", d.drive_id), path)?;
        if d.is_root_device {
            if let Some(other) = self
                .config
                .drives
                .iter()
                .find(|o| o.is_root_device && o.drive_id != d.drive_id)
            {
                return Err(bad(format!(
                    "drive {}: drive {} is already the root device",
                    d.drive_id, other.drive_id
                )));
            }
        }
        match self
            .config
            .drives
            .iter_mut()
            .find(|o| o.drive_id == d.drive_id)
        {
            // Before boot, a PUT with a known id replaces that drive.
            Some(slot) => *slot = d,
            None => self.config.drives.push(d),
        }
        Ok(())
    }

    fn patch_drive(&mut self, p: DrivePatch) -> Result<Effect, Response> {
        if !self.started() {
            return Err(bad(BEFORE_BOOT));
        }
        let drive = self
            .config
            .drives
            .iter_mut()
            .find(|d| d.drive_id == p.drive_id)
            .ok_or_else(|| bad(format!("drive {} does not exist", p.drive_id)))?;
        if let Some(path) = &p.path_on_host {
            if drive.path_on_host.as_deref() != Some(path.as_str()) {
                return Err(bad(format!(
                    "drive {}: swapping the backing file of a running VM is not supported yet",
                    p.drive_id
                )));
            }
        }
        let Some(rl) = p.rate_limiter else {
            return Ok(Effect::None);
        };
        drive.rate_limiter = Some(rl);
        Ok(Effect::DiskLimits(p.drive_id, limits(&rl)))
    }

    fn patch_net(&mut self, p: NetworkInterfacePatch) -> Result<Effect, Response> {
        if !self.started() {
            return Err(bad(BEFORE_BOOT));
        }
        let nic = self
            .config
            .network_interfaces
            .iter_mut()
            .find(|n| n.iface_id == p.iface_id)
            .ok_or_else(|| bad(format!("network interface {} does not exist", p.iface_id)))?;
        if p.rx_rate_limiter.is_none() && p.tx_rate_limiter.is_none() {
            return Err(bad(format!(
                "network interface {}: the PATCH changes nothing: give rx_rate_limiter or tx_rate_limiter",
                p.iface_id
            )));
        }
        if let Some(rl) = p.rx_rate_limiter {
            nic.rx_rate_limiter = Some(rl);
        }
        if let Some(rl) = p.tx_rate_limiter {
            nic.tx_rate_limiter = Some(rl);
        }
        Ok(Effect::NetLimits(
            p.iface_id,
            p.rx_rate_limiter.as_ref().map(limits),
            p.tx_rate_limiter.as_ref().map(limits),
        ))
    }

    fn put_fs(&mut self, f: SharedFs) -> Result<(), Response> {
        f.validate().map_err(bad)?;
        use std::os::unix::fs::FileTypeExt;
        match std::fs::metadata(&f.socket) {
            Ok(m) if m.file_type().is_socket() => {}
            Ok(_) => return Err(bad(format!("fs {}: {} is not a socket", f.fs_id, f.socket))),
            Err(e) => {
                return Err(bad(format!(
                    "fs {}: socket {}: {e} (start virtiofsd first)",
                    f.fs_id, f.socket
                )))
            }
        }
        if let Some(other) = self
            .config
            .fs
            .iter()
            .find(|o| o.tag == f.tag && o.fs_id != f.fs_id)
        {
            return Err(bad(format!(
                "fs {}: tag {:?} is already fs {}'s",
                f.fs_id, f.tag, other.fs_id
            )));
        }
        match self.config.fs.iter_mut().find(|o| o.fs_id == f.fs_id) {
            Some(slot) => *slot = f,
            None => self.config.fs.push(f),
        }
        Ok(())
    }

    fn put_net(&mut self, n: NetworkInterface) -> Result<(), Response> {
        n.validate().map_err(bad)?;
        if n.mtu.is_some() {
            return Err(bad(format!(
                "network interface {}: mtu: husk does not offer the guest an MTU yet (the TAP's is used)",
                n.iface_id
            )));
        }
        match self
            .config
            .network_interfaces
            .iter_mut()
            .find(|o| o.iface_id == n.iface_id)
        {
            Some(slot) => *slot = n,
            None => self.config.network_interfaces.push(n),
        }
        Ok(())
    }

    /// The VM to build at InstanceStart, or why it cannot start.
    pub fn vm_config(&self) -> Result<VmConfig, String> {
        let boot = self
            .config
            .boot_source
            .as_ref()
            .ok_or("InstanceStart: no boot source; PUT /boot-source first")?;
        let mut cmdline = boot
            .boot_args
            .clone()
            .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_owned());
        // The root device first (/dev/vda), the others in the order given.
        let mut drives: Vec<&Drive> = self.config.drives.iter().collect();
        drives.sort_by_key(|d| !d.is_root_device);
        if let Some(root) = drives.first().filter(|d| d.is_root_device) {
            let mode = if root.is_read_only { "ro" } else { "rw" };
            let dev = match &root.partuuid {
                Some(u) => format!("PARTUUID={u}"),
                None => "/dev/vda".to_owned(),
            };
            cmdline = format!("{cmdline} root={dev} {mode}");
        }
        let disks = drives
            .iter()
            .map(|d| DiskConfig {
                path: PathBuf::from(d.path_on_host.clone().unwrap_or_default()),
                read_only: d.is_read_only,
                id: d.drive_id.clone(),
                rate_limiter: d.rate_limiter.as_ref().map(limits),
                read_write: Default::default(),
            })
            .collect();
        let nets = self
            .config
            .network_interfaces
            .iter()
            .map(|n| NetConfig {
                host: husk_vmm::NetHost::Tap(n.host_dev_name.clone()),
                mac: n.guest_mac.map(|m| m.0),
                id: n.iface_id.clone(),
                limits: husk_vmm::NetLimits {
                    rx: n.rx_rate_limiter.as_ref().map(limits),
                    tx: n.tx_rate_limiter.as_ref().map(limits),
                },
            })
            .collect();
        let m = self.machine();
        Ok(VmConfig {
            kernel: Path::new(&boot.kernel_image_path).to_path_buf(),
            vcpus: m.vcpu_count,
            mem_mib: m.mem_size_mib as u64,
            cmdline,
            disks,
            nets,
            vsock: self.config.vsock.as_ref().map(|v| VsockConfig {
                guest_cid: u64::from(v.guest_cid),
                uds_path: PathBuf::from(&v.uds_path),
                id: v.vsock_id.clone().unwrap_or_else(|| "vsock0".into()),
            }),
            fs: self
                .config
                .fs
                .iter()
                .map(|f| FsConfig {
                    socket: PathBuf::from(&f.socket),
                    tag: f.tag.clone(),
                    id: f.fs_id.clone(),
                })
                .collect(),
            console: Console::Stdio,
            stdin: true,
            allow_pvm: self.allow_pvm,
            track_dirty_pages: m.track_dirty_pages,
        })
    }
}

/// The API's limits as the disk applies them.
fn limits(rl: &husk_api::model::RateLimiter) -> husk_vmm::rate_limiter::Limits {
    let bucket = |b: &husk_api::model::TokenBucket| husk_vmm::rate_limiter::Bucket {
        size: b.size,
        one_time_burst: b.one_time_burst.unwrap_or(0),
        refill_time_ms: b.refill_time,
    };
    husk_vmm::rate_limiter::Limits {
        bytes: rl.bandwidth.as_ref().map(bucket),
        ops: rl.ops.as_ref().map(bucket),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_api::parse;

    fn req(method: &str, path: &str, body: &str) -> Request {
        parse(method, path, body.as_bytes()).unwrap_or_else(|e| panic!("{e:?}"))
    }

    fn file() -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), [0u8; 4096]).unwrap();
        f
    }

    fn fault(r: &Response) -> String {
        r.fault_message().unwrap_or_default().to_owned()
    }

    #[test]
    fn getting_started_sequence_builds_the_vm_config() {
        let (k, root) = (file(), file());
        let mut c = Controller::new("vm1".into());
        let body = format!(
            r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0 reboot=k"}}"#,
            k.path().display()
        );
        assert_eq!(
            c.handle(req("PUT", "/boot-source", &body)).0,
            Response::NoContent
        );
        let body = format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,"is_read_only":false}}"#,
            root.path().display()
        );
        assert_eq!(
            c.handle(req("PUT", "/drives/rootfs", &body)).0,
            Response::NoContent
        );
        let body = r#"{"vcpu_count":2,"mem_size_mib":256}"#;
        assert_eq!(
            c.handle(req("PUT", "/machine-config", body)).0,
            Response::NoContent
        );
        let cfg = c.vm_config().unwrap();
        assert_eq!((cfg.vcpus, cfg.mem_mib), (2, 256));
        assert_eq!(cfg.cmdline, "console=ttyS0 reboot=k root=/dev/vda rw");
        assert_eq!(cfg.disks.len(), 1);
        assert_eq!(cfg.disks[0].id, "rootfs");
    }

    #[test]
    fn instance_start_needs_a_boot_source() {
        let c = Controller::new("vm1".into());
        assert!(c.vm_config().unwrap_err().contains("no boot source"));
    }

    #[test]
    fn two_root_devices_and_missing_files_are_refused() {
        let (a, b) = (file(), file());
        let mut c = Controller::new("vm1".into());
        let put = |id: &str, p: &Path| {
            format!(
                r#"{{"drive_id":"{id}","path_on_host":"{}","is_root_device":true}}"#,
                p.display()
            )
        };
        assert_eq!(
            c.handle(req("PUT", "/drives/a", &put("a", a.path()))).0,
            Response::NoContent
        );
        let (r, _) = c.handle(req("PUT", "/drives/b", &put("b", b.path())));
        assert!(fault(&r).contains("already the root device"), "{r:?}");
        let (r, _) = c.handle(req(
            "PUT",
            "/drives/c",
            &put("c", Path::new("/nonexistent")),
        ));
        assert!(fault(&r).contains("/nonexistent"), "{r:?}");
        // A correct request afterwards still works.
        let body = format!(
            r#"{{"drive_id":"b","path_on_host":"{}","is_root_device":false}}"#,
            b.path().display()
        );
        assert_eq!(
            c.handle(req("PUT", "/drives/b", &body)).0,
            Response::NoContent
        );
    }

    #[test]
    fn root_drive_goes_first_whatever_the_order() {
        let (k, a, b) = (file(), file(), file());
        let mut c = Controller::new("vm1".into());
        c.handle(req(
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path":"{}"}}"#, k.path().display()),
        ));
        let data = format!(
            r#"{{"drive_id":"data","path_on_host":"{}","is_root_device":false,"is_read_only":true}}"#,
            a.path().display()
        );
        let root = format!(
            r#"{{"drive_id":"root","path_on_host":"{}","is_root_device":true,"is_read_only":true}}"#,
            b.path().display()
        );
        c.handle(req("PUT", "/drives/data", &data));
        c.handle(req("PUT", "/drives/root", &root));
        let cfg = c.vm_config().unwrap();
        assert_eq!(cfg.disks[0].id, "root");
        assert!(cfg.disks[1].read_only);
        assert!(cfg.cmdline.ends_with("root=/dev/vda ro"));
        assert_eq!(cfg.cmdline, format!("{DEFAULT_BOOT_ARGS} root=/dev/vda ro"));
    }

    #[test]
    fn pre_boot_resources_are_refused_after_boot_and_runtime_actions_before() {
        let k = file();
        let mut c = Controller::new("vm1".into());
        let (r, _) = c.handle(req("PATCH", "/vm", r#"{"state":"Paused"}"#));
        assert!(fault(&r).contains("before starting"), "{r:?}");
        let (r, _) = c.handle(req(
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#,
        ));
        assert!(fault(&r).contains("before starting"), "{r:?}");
        c.state = Some(InstanceState::Running);
        let body = format!(r#"{{"kernel_image_path":"{}"}}"#, k.path().display());
        let (r, _) = c.handle(req("PUT", "/boot-source", &body));
        assert!(fault(&r).contains("after starting"), "{r:?}");
        let (r, fx) = c.handle(req("PATCH", "/vm", r#"{"state":"Paused"}"#));
        assert_eq!((r, fx), (Response::NoContent, Effect::Pause));
        assert_eq!(c.instance_state(), InstanceState::Paused);
        let (r, fx) = c.handle(req(
            "PUT",
            "/actions",
            r#"{"action_type":"SendCtrlAltDel"}"#,
        ));
        assert_eq!((r, fx), (Response::NoContent, Effect::CtrlAltDel));
    }

    #[test]
    fn snapshots_are_made_paused_and_loaded_before_anything_is_configured() {
        let create = r#"{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}"#;
        let mut c = Controller::new("vm1".into());
        let (r, _) = c.handle(req("PUT", "/snapshot/create", create));
        assert!(fault(&r).contains("before starting"), "{r:?}");
        c.state = Some(InstanceState::Running);
        let (r, _) = c.handle(req("PUT", "/snapshot/create", create));
        assert!(fault(&r).contains("must be paused"), "{r:?}");
        c.state = Some(InstanceState::Paused);
        let (r, fx) = c.handle(req("PUT", "/snapshot/create", create));
        assert_eq!(r, Response::NoContent);
        let paths = husk_vmm::snapshot::SnapshotPaths {
            state: "/tmp/s".into(),
            mem: "/tmp/m".into(),
        };
        assert_eq!(
            fx,
            Effect::CreateSnapshot(paths.clone(), husk_vmm::snapshot::Kind::Full)
        );
        let diff = r#"{"snapshot_type":"Diff","snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}"#;
        let (_, fx) = c.handle(req("PUT", "/snapshot/create", diff));
        assert_eq!(
            fx,
            Effect::CreateSnapshot(paths, husk_vmm::snapshot::Kind::Diff)
        );
        let (r, _) = c.handle(req(
            "PUT",
            "/snapshot/load",
            r#"{"snapshot_path":"/tmp/s","mem_file_path":"/tmp/m"}"#,
        ));
        assert!(fault(&r).contains("after starting"), "{r:?}");

        let (state, mem) = (file(), file());
        let load = |s: &str, m: &str| husk_api::model::SnapshotLoad {
            snapshot_path: s.into(),
            mem_file_path: Some(m.into()),
            mem_backend: None,
            enable_diff_snapshots: None,
            track_dirty_pages: None,
            resume_vm: true,
        };
        let paths =
            |l: &husk_api::model::SnapshotLoad| (l.snapshot_path.clone(), l.mem_file().to_owned());
        let good = load(state.path().to_str().unwrap(), mem.path().to_str().unwrap());
        let mut c = Controller::new("vm2".into());
        let cfg = c.restore_config(&good).unwrap();
        assert!(cfg.resume);
        assert_eq!(
            (cfg.snapshot.state, cfg.snapshot.mem),
            (paths(&good).0.into(), paths(&good).1.into())
        );
        let missing = c.restore_config(&load("/no/such", "/no/mem")).unwrap_err();
        assert!(
            fault(&missing).contains("snapshot_path /no/such"),
            "{missing:?}"
        );
        c.config.machine_config = Some(MachineConfig::default());
        let configured = c.restore_config(&good).unwrap_err();
        assert!(fault(&configured).contains("before anything is configured"));
    }

    #[test]
    fn machine_config_limits() {
        let mut c = Controller::new("vm1".into());
        let (r, _) = c.handle(req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":8}"#,
        ));
        assert!(fault(&r).contains("too small"), "{r:?}");
        let (r, _) = c.handle(req(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":2,"mem_size_mib":128,"smt":true}"#,
        ));
        assert!(fault(&r).contains("smt"), "{r:?}");
        let (r, _) = c.handle(req("PATCH", "/machine-config", r#"{"mem_size_mib":512}"#));
        assert_eq!(r, Response::NoContent);
        assert_eq!(c.machine().mem_size_mib, 512);
        assert_eq!(c.machine().vcpu_count, 1);
        // What nothing applies is refused; dirty-page tracking is applied.
        for (body, says) in [
            (r#"{"huge_pages":"2M"}"#, "huge_pages"),
            (r#"{"huge_pages":"Transparent"}"#, "huge_pages"),
            (r#"{"cpu_template":"T2S"}"#, "cpu_template T2S"),
        ] {
            let (r, _) = c.handle(req("PATCH", "/machine-config", body));
            assert!(fault(&r).contains(says), "{body}: {r:?}");
        }
        let (r, _) = c.handle(req(
            "PATCH",
            "/machine-config",
            r#"{"track_dirty_pages":true}"#,
        ));
        assert_eq!(r, Response::NoContent);
        assert!(c.machine().track_dirty_pages);
    }

    #[test]
    fn disk_limits_are_applied_and_what_nothing_applies_is_refused() {
        let mut c = Controller::new("vm1".into());
        let disk = file();
        let drive = |extra: &str| {
            format!(
                r#"{{"drive_id":"d","path_on_host":"{}","is_root_device":false{extra}}}"#,
                disk.path().display()
            )
        };
        let limit = r#"{"bandwidth":{"size":1000,"refill_time":100}}"#;
        let (r, _) = c.handle(req("PUT", "/drives/d", &drive(r#","io_engine":"Async""#)));
        assert!(fault(&r).contains("io_engine Async"), "{r:?}");
        // A disk's limits are applied: the VM gets them, and a PATCH once
        // it runs changes them.
        let (r, _) = c.handle(req(
            "PUT",
            "/drives/d",
            &drive(&format!(r#","rate_limiter":{limit}"#)),
        ));
        assert_eq!(r, Response::NoContent);
        let k = file();
        let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, k.path().display());
        assert_eq!(
            c.handle(req("PUT", "/boot-source", &boot)).0,
            Response::NoContent
        );
        let bucket = husk_vmm::rate_limiter::Bucket {
            size: 1000,
            one_time_burst: 0,
            refill_time_ms: 100,
        };
        let disks = c.vm_config().unwrap().disks;
        assert_eq!(disks[0].rate_limiter.unwrap().bytes, Some(bucket));
        c.state = Some(InstanceState::Running);
        let patch = r#"{"drive_id":"d","rate_limiter":{"ops":{"size":50,"refill_time":1000}}}"#;
        let (r, fx) = c.handle(req("PATCH", "/drives/d", patch));
        assert_eq!(r, Response::NoContent);
        let Effect::DiskLimits(id, l) = fx else {
            panic!("{fx:?}")
        };
        assert_eq!(
            (id.as_str(), l.bytes, l.ops.map(|b| b.size)),
            ("d", None, Some(50))
        );
        let mut c = Controller::new("vm1".into());
        let net = |extra: &str| format!(r#"{{"iface_id":"eth0","host_dev_name":"tap0"{extra}}}"#);
        let (r, _) = c.handle(req(
            "PUT",
            "/network-interfaces/eth0",
            &net(r#","mtu":9000"#),
        ));
        assert!(fault(&r).contains("mtu"), "{r:?}");
    }

    #[test]
    fn nic_limits_are_applied_and_a_patch_changes_one_direction() {
        let mut c = Controller::new("vm1".into());
        let body = r#"{"iface_id":"eth0","host_dev_name":"tap0","rx_rate_limiter":{"bandwidth":{"size":1000,"refill_time":100}}}"#;
        let patch =
            r#"{"iface_id":"eth0","tx_rate_limiter":{"ops":{"size":50,"refill_time":1000}}}"#;
        // A PATCH is for a running VM.
        let (r, _) = c.handle(req("PATCH", "/network-interfaces/eth0", patch));
        assert!(fault(&r).contains("not supported before"), "{r:?}");
        let (r, _) = c.handle(req("PUT", "/network-interfaces/eth0", body));
        assert_eq!(r, Response::NoContent);
        let k = file();
        let boot = format!(r#"{{"kernel_image_path":"{}"}}"#, k.path().display());
        c.handle(req("PUT", "/boot-source", &boot));
        let nets = c.vm_config().unwrap().nets;
        let rx = nets[0].limits.rx.unwrap();
        assert_eq!((rx.bytes.map(|b| b.size), rx.ops), (Some(1000), None));
        assert_eq!(nets[0].limits.tx, None);
        c.state = Some(InstanceState::Running);
        let (r, fx) = c.handle(req("PATCH", "/network-interfaces/eth0", patch));
        assert_eq!(r, Response::NoContent);
        let Effect::NetLimits(id, None, Some(tx)) = fx else {
            panic!("{fx:?}")
        };
        assert_eq!((id.as_str(), tx.ops.map(|b| b.size)), ("eth0", Some(50)));
        // GET /vm/config shows both.
        let nic = &c.config.network_interfaces[0];
        assert!(nic.rx_rate_limiter.is_some() && nic.tx_rate_limiter.is_some());
        for (path, body, says) in [
            (
                "/network-interfaces/eth1",
                r#"{"iface_id":"eth1","tx_rate_limiter":{}}"#,
                "does not exist",
            ),
            (
                "/network-interfaces/eth0",
                r#"{"iface_id":"eth0"}"#,
                "changes nothing",
            ),
        ] {
            let (r, _) = c.handle(req("PATCH", path, body));
            assert!(fault(&r).contains(says), "{body}: {r:?}");
        }
    }

    #[test]
    fn shared_directories_need_a_listening_socket_and_distinct_tags() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("fs.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let plain = file();
        let put = |id: &str, tag: &str, p: &Path| {
            format!(
                r#"{{"fs_id":"{id}","tag":"{tag}","socket":"{}"}}"#,
                p.display()
            )
        };
        let mut c = Controller::new("vm1".into());
        let (r, _) = c.handle(req("PUT", "/fs/a", &put("a", "share", plain.path())));
        assert!(fault(&r).contains("is not a socket"), "{r:?}");
        let missing = dir.path().join("none.sock");
        let (r, _) = c.handle(req("PUT", "/fs/a", &put("a", "share", &missing)));
        assert!(fault(&r).contains("start virtiofsd first"), "{r:?}");
        let (r, _) = c.handle(req("PUT", "/fs/a", &put("a", "share", &sock)));
        assert_eq!(r, Response::NoContent);
        let (r, _) = c.handle(req("PUT", "/fs/b", &put("b", "share", &sock)));
        assert!(fault(&r).contains("already fs a's"), "{r:?}");
        // The same id again replaces it.
        let (r, _) = c.handle(req("PUT", "/fs/a", &put("a", "data", &sock)));
        assert_eq!(r, Response::NoContent);
        let k = file();
        c.handle(req(
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path":"{}"}}"#, k.path().display()),
        ));
        let cfg = c.vm_config().unwrap();
        assert_eq!(cfg.fs.len(), 1);
        assert_eq!(
            (cfg.fs[0].tag.as_str(), cfg.fs[0].id.as_str()),
            ("data", "a")
        );
        assert_eq!(cfg.fs[0].socket, sock);
        c.state = Some(InstanceState::Running);
        let (r, _) = c.handle(req("PUT", "/fs/c", &put("c", "late", &sock)));
        assert!(fault(&r).contains("after starting"), "{r:?}");
    }
}
