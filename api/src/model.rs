//! The JSON bodies of the API, with Firecracker's field names and meaning.
//!
//! Every body type refuses unknown fields (a typo is a 400 naming the field,
//! never a silently ignored setting). Optional fields are `Option`s, or carry
//! Firecracker's default when they have one (`smt: false`, `cache_type:
//! "Unsafe"`, ...), so the VMM never has to guess. Checks that need nothing
//! but the body itself (ids, MAC format, vsock CID) live here in `validate`
//! methods; checks that need the VM's state are the VMM's.

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Checks a resource id (drive, network interface): non-empty, ASCII
/// letters, digits and `_` only, as Firecracker requires.
pub fn check_id(field: &str, id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
        return Err(format!(
            "{field} {id:?} is not valid: ids may only contain ASCII letters, digits and '_'"
        ));
    }
    Ok(())
}

/// `PUT /boot-source`: the guest kernel and its command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSource {
    /// Host path of the kernel image (ELF vmlinux or bzImage).
    pub kernel_image_path: String,
    /// Kernel command line; the VMM adds its own device tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Host path of an initrd.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<String>,
}

/// Backing of guest memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary 4 KiB pages.
    #[default]
    None,
    /// Transparent huge pages (madvise).
    Transparent,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// Firecracker's static CPU templates (deprecated there; parsed here so
/// a configuration written for Firecracker gets a clear refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CpuTemplate {
    C3,
    T2,
    T2S,
    T2CL,
    T2A,
    V1N1,
    None,
}

/// `PUT /machine-config` and `GET /machine-config`: vCPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs (at least 1; the VMM enforces its maximum).
    pub vcpu_count: u8,
    /// Guest memory in MiB (at least 1).
    pub mem_size_mib: usize,
    /// Simultaneous multithreading (two threads per core).
    #[serde(default)]
    pub smt: bool,
    /// Track dirty guest pages (for diff snapshots).
    #[serde(default)]
    pub track_dirty_pages: bool,
    /// How guest memory is backed.
    #[serde(default)]
    pub huge_pages: HugePages,
    /// A static CPU template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
}

impl Default for MachineConfig {
    /// Firecracker's defaults: 1 vCPU, 128 MiB.
    fn default() -> Self {
        MachineConfig {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: None,
        }
    }
}

impl MachineConfig {
    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        check_counts(Some(self.vcpu_count), Some(self.mem_size_mib))
    }
}

fn check_counts(vcpu_count: Option<u8>, mem_size_mib: Option<usize>) -> Result<(), String> {
    if vcpu_count == Some(0) {
        return Err("vcpu_count must be at least 1".into());
    }
    if mem_size_mib == Some(0) {
        return Err("mem_size_mib must be at least 1".into());
    }
    Ok(())
}

/// `PATCH /machine-config`: the fields to change; at least one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigPatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_template: Option<CpuTemplate>,
}

impl MachineConfigPatch {
    /// True when the patch changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == MachineConfigPatch::default()
    }

    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        if self.is_empty() {
            return Err("the PATCH body changes nothing: give at least one field".into());
        }
        check_counts(self.vcpu_count, self.mem_size_mib)
    }

    /// `config` with this patch applied (the VMM still validates the result).
    pub fn apply(&self, config: &MachineConfig) -> MachineConfig {
        MachineConfig {
            vcpu_count: self.vcpu_count.unwrap_or(config.vcpu_count),
            mem_size_mib: self.mem_size_mib.unwrap_or(config.mem_size_mib),
            smt: self.smt.unwrap_or(config.smt),
            track_dirty_pages: self.track_dirty_pages.unwrap_or(config.track_dirty_pages),
            huge_pages: self.huge_pages.unwrap_or(config.huge_pages),
            cpu_template: self.cpu_template.or(config.cpu_template),
        }
    }
}

/// A token bucket: `size` tokens, refilled completely every `refill_time`
/// milliseconds, plus an initial `one_time_burst`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucket {
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    pub refill_time: u64,
}

/// I/O limits of a device: bytes per second and operations per second.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucket>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucket>,
}

/// How the block device's writes reach the host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests from the guest are acknowledged without syncing.
    #[default]
    Unsafe,
    /// Flush requests are honoured (fsync).
    Writeback,
}

/// The block device's host I/O engine.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Blocking reads and writes.
    #[default]
    Sync,
    /// io_uring.
    Async,
}

/// `PUT /drives/{drive_id}`: a virtio-blk disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Drive {
    /// The id, equal to the one in the path.
    pub drive_id: String,
    /// Host file backing the disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    /// Whether this disk holds the root filesystem.
    pub is_root_device: bool,
    /// Read-only for the guest.
    #[serde(default)]
    pub is_read_only: bool,
    /// With `is_root_device`: boot from this partition (`root=PARTUUID=`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Flush semantics.
    #[serde(default)]
    pub cache_type: CacheType,
    /// Host I/O engine.
    #[serde(default)]
    pub io_engine: IoEngine,
    /// I/O limits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

impl Drive {
    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        check_id("drive_id", &self.drive_id)
    }
}

/// `PATCH /drives/{drive_id}` (after boot): swap the backing file or change
/// the limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrivePatch {
    pub drive_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiter>,
}

/// A MAC address; JSON form `"06:00:ac:10:00:02"` (either case on input,
/// lower case on output).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl FromStr for MacAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || {
            format!("invalid MAC address {s:?}: expected six two-digit hex bytes separated by ':'")
        };
        let mut bytes = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut bytes {
            let part = parts.next().ok_or_else(invalid)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(invalid());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| invalid())?;
        }
        if parts.next().is_some() {
            return Err(invalid());
        }
        Ok(MacAddr(bytes))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// `PUT /network-interfaces/{iface_id}`: a virtio-net device on a host TAP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterface {
    /// The id, equal to the one in the path.
    pub iface_id: String,
    /// The host TAP device.
    pub host_dev_name: String,
    /// The guest's MAC address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<MacAddr>,
    /// MTU offered to the guest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Limits on what the guest receives.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    /// Limits on what the guest sends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

impl NetworkInterface {
    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        check_id("iface_id", &self.iface_id)?;
        if self.host_dev_name.is_empty() {
            return Err("host_dev_name must not be empty".into());
        }
        Ok(())
    }
}

/// `PATCH /network-interfaces/{iface_id}` (after boot): new limits for
/// either direction; a direction not given keeps its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfacePatch {
    pub iface_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiter>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiter>,
}

/// `PUT /vsock`: the virtio-vsock device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vsock {
    /// Deprecated by Firecracker; accepted and ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id (3 or more; 0-2 are reserved).
    pub guest_cid: u32,
    /// Host Unix socket for host-initiated connections; guest-initiated
    /// connections to port P go to `<uds_path>_<P>`.
    pub uds_path: String,
}

impl Vsock {
    /// The lowest CID a guest may have.
    pub const MIN_GUEST_CID: u32 = 3;

    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        if self.guest_cid < Self::MIN_GUEST_CID {
            return Err(format!(
                "guest_cid {} is reserved: it must be at least {}",
                self.guest_cid,
                Self::MIN_GUEST_CID
            ));
        }
        if self.uds_path.is_empty() {
            return Err("uds_path must not be empty".into());
        }
        Ok(())
    }
}

/// `PUT /fs/{fs_id}`: a virtio-fs device whose backend (virtiofsd or any
/// vhost-user-fs server) already listens on `socket`. An extension:
/// Firecracker has no virtio-fs; the fields follow Cloud Hypervisor's.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedFs {
    /// The id, equal to the one in the path.
    pub fs_id: String,
    /// The mount tag the guest uses (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    /// The backend's vhost-user socket.
    pub socket: String,
}

impl SharedFs {
    /// The longest tag virtio-fs carries (the config field is 36 bytes).
    pub const TAG_LEN: usize = 36;

    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        check_id("fs_id", &self.fs_id)?;
        if self.tag.is_empty() || self.tag.len() > Self::TAG_LEN {
            return Err(format!(
                "tag {:?}: 1 to {} bytes expected",
                self.tag,
                Self::TAG_LEN
            ));
        }
        if self
            .tag
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "tag {:?}: no spaces or control characters",
                self.tag
            ));
        }
        if self.socket.is_empty() {
            return Err("socket must not be empty".into());
        }
        Ok(())
    }
}

/// A log level. Input is case-insensitive and also takes `Warn`; output is
/// the canonical name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Off,
    Error,
    Warning,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The canonical name.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "Off",
            LogLevel::Error => "Error",
            LogLevel::Warning => "Warning",
            LogLevel::Info => "Info",
            LogLevel::Debug => "Debug",
            LogLevel::Trace => "Trace",
        }
    }
}

impl FromStr for LogLevel {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "off" => LogLevel::Off,
            "error" => LogLevel::Error,
            "warning" | "warn" => LogLevel::Warning,
            "info" => LogLevel::Info,
            "debug" => LogLevel::Debug,
            "trace" => LogLevel::Trace,
            _ => {
                return Err(format!(
                    "unknown log level {s:?}: expected Off, Error, Warning, Info, Debug or Trace"
                ))
            }
        })
    }
}

impl Serialize for LogLevel {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(D::Error::custom)
    }
}

/// `PUT /logger`: where and what the VMM logs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Logger {
    /// File (or named pipe) to log to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<String>,
    /// Most verbose level logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Prefix lines with their level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Prefix lines with file and line of origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log from this module (path prefix).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// `PUT /metrics`: where the VMM writes metrics (one JSON object a line).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metrics {
    /// File (or named pipe) for metrics.
    pub metrics_path: String,
}

/// What `PUT /actions` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Boot the configured VM.
    InstanceStart,
    /// Press Ctrl-Alt-Del on the guest's keyboard.
    SendCtrlAltDel,
    /// Write the metrics now.
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Action {
    pub action_type: ActionType,
}

/// The state `PATCH /vm` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateChange {
    Paused,
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vm {
    pub state: VmStateChange,
}

/// `snapshot_type` of `PUT /snapshot/create`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages written since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create` body (Firecracker's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Full (the default) or Diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the VM's state goes.
    pub snapshot_path: String,
    /// Where guest memory goes.
    pub mem_file_path: String,
}

impl SnapshotCreate {
    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        if self.snapshot_path.is_empty() || self.mem_file_path.is_empty() {
            return Err("snapshot_path and mem_file_path must not be empty".into());
        }
        if self.snapshot_path == self.mem_file_path {
            return Err("snapshot_path and mem_file_path must be different files".into());
        }
        Ok(())
    }
}

/// `backend_type` of a snapshot's memory backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped private.
    File,
    /// A userfaultfd handler's socket.
    Uffd,
}

/// `mem_backend` of `PUT /snapshot/load`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    pub backend_type: MemBackendType,
    pub backend_path: String,
}

/// `PUT /snapshot/load` body (Firecracker's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoad {
    /// The state file.
    pub snapshot_path: String,
    /// The memory file (deprecated by Firecracker for `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<String>,
    /// Where guest memory comes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemBackend>,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Track dirty pages for a later Diff snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// Run the VM once loaded (otherwise it waits, paused).
    #[serde(default)]
    pub resume_vm: bool,
}

impl SnapshotLoad {
    /// The memory file, once the body is known to be valid.
    pub fn mem_file(&self) -> &str {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(b), _) => &b.backend_path,
            (None, Some(p)) => p,
            (None, None) => "",
        }
    }

    /// Whether the restored VM tracks dirty pages (for Diff snapshots).
    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages
            .or(self.enable_diff_snapshots)
            .unwrap_or(false)
    }

    /// Checks what the body alone can tell.
    pub fn validate(&self) -> Result<(), String> {
        match (&self.mem_backend, &self.mem_file_path) {
            (Some(_), Some(_)) => return Err("give mem_backend or mem_file_path, not both".into()),
            (None, None) => return Err("mem_backend (or mem_file_path) is required".into()),
            (Some(b), None) if b.backend_type == MemBackendType::Uffd => {
                return Err("the Uffd memory backend is not supported; use File".into())
            }
            _ => {}
        }
        if self.track_dirty_pages.is_some() && self.enable_diff_snapshots.is_some() {
            return Err(
                "give track_dirty_pages or its old name enable_diff_snapshots, not both".into(),
            );
        }
        if self.snapshot_path.is_empty() || self.mem_file().is_empty() {
            return Err("snapshot_path and the memory file must not be empty".into());
        }
        Ok(())
    }
}

/// The VM's state as `GET /` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configuring; `InstanceStart` not yet done.
    #[serde(rename = "Not started")]
    NotStarted,
    /// Booted and running.
    Running,
    /// Booted and paused.
    Paused,
}

/// `GET /` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceInfo {
    /// The instance id (`--id`).
    pub id: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// The VMM's version.
    pub vmm_version: String,
    /// The VMM's name (`husk`).
    pub app_name: String,
}

/// `GET /version` answer (the key name is Firecracker's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionInfo {
    /// The VMM's version.
    pub firecracker_version: String,
}

/// The whole configuration: the answer of `GET /vm/config`, and the schema
/// of `--config-file` (Firecracker's kebab-case top-level keys). Absent
/// sections are left unconfigured; unknown sections are refused.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfigFile {
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSource>,
    #[serde(
        rename = "machine-config",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub machine_config: Option<MachineConfig>,
    #[serde(default)]
    pub drives: Vec<Drive>,
    #[serde(rename = "network-interfaces", default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<Vsock>,
    /// Shared directories (husk's extension).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fs: Vec<SharedFs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<Logger>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<Metrics>,
}

impl VmConfigFile {
    /// Parses and validates a configuration file's contents. The error
    /// names the offending key (`drives[0].drive_id: ...`).
    pub fn from_json(bytes: &[u8]) -> Result<Self, String> {
        let config: VmConfigFile = from_json(bytes)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every section as the matching API call would.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(m) = &self.machine_config {
            m.validate().map_err(|e| format!("machine-config: {e}"))?;
        }
        for (i, d) in self.drives.iter().enumerate() {
            d.validate().map_err(|e| format!("drives[{i}]: {e}"))?;
        }
        for (i, n) in self.network_interfaces.iter().enumerate() {
            n.validate()
                .map_err(|e| format!("network-interfaces[{i}]: {e}"))?;
        }
        if let Some(v) = &self.vsock {
            v.validate().map_err(|e| format!("vsock: {e}"))?;
        }
        for (i, f) in self.fs.iter().enumerate() {
            f.validate().map_err(|e| format!("fs[{i}]: {e}"))?;
        }
        Ok(())
    }
}

/// Deserializes JSON; the error names the field at fault, then serde's
/// message (with line and column).
pub(crate) fn from_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        }
    })?;
    // Trailing characters after the value.
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}
