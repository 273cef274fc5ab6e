//! Routing and parsing: method + path + body bytes → [`Request`], or the
//! error [`Response`] to send. Pure functions with no I/O, so they are
//! tested (and can be fuzzed) without a socket.
//!
//! The checks run in a fixed order, so a client always gets the most basic
//! problem first: unknown path (404), method not served there (405), invalid
//! id in the path (400), missing or unexpected body (400), body that does not
//! deserialize (400 naming the field and position), id in the body not the
//! one in the path (400), values the body alone shows to be wrong (400).

use crate::model::{
    check_id, from_json, Action, ActionType, BootSource, Drive, DrivePatch, Logger, MachineConfig,
    MachineConfigPatch, Metrics, NetworkInterface, NetworkInterfacePatch, SharedFs, SnapshotCreate,
    SnapshotLoad, Vm, VmStateChange, Vsock,
};
use crate::response::Response;

/// A parsed API request, for the VMM to carry out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `GET /`: answer with an [`InstanceInfo`](crate::model::InstanceInfo).
    GetInstanceInfo,
    /// `GET /version`: answer with a [`VersionInfo`](crate::model::VersionInfo).
    GetVersion,
    /// `GET /vm/config`: answer with a [`VmConfigFile`](crate::model::VmConfigFile).
    GetVmConfig,
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `GET /machine-config`: answer with a [`MachineConfig`].
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (never empty).
    PatchMachineConfig(MachineConfigPatch),
    /// `PUT /drives/{drive_id}` (the ids match).
    PutDrive(Drive),
    /// `PATCH /drives/{drive_id}` (the ids match).
    PatchDrive(DrivePatch),
    /// `PUT /network-interfaces/{iface_id}` (the ids match).
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{iface_id}` (the ids match).
    PatchNetworkInterface(NetworkInterfacePatch),
    /// `PUT /vsock`.
    PutVsock(Vsock),
    /// `PUT /fs/{fs_id}` (the ids match): husk's extension.
    PutFs(SharedFs),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PATCH /vm`.
    PatchVm(VmStateChange),
    /// `PUT /snapshot/create`.
    CreateSnapshot(SnapshotCreate),
    /// `PUT /snapshot/load`.
    LoadSnapshot(SnapshotLoad),
}

/// One (method, path) that the API serves. `path` is written as in the
/// OpenAPI document, with `{name}` for a path parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path template.
    pub path: &'static str,
}

const fn route(method: &'static str, path: &'static str) -> Route {
    Route { method, path }
}

/// Every (method, path) served, in the order of the OpenAPI document.
pub const ROUTES: &[Route] = &[
    route("GET", "/"),
    route("GET", "/version"),
    route("GET", "/vm/config"),
    route("PUT", "/boot-source"),
    route("GET", "/machine-config"),
    route("PUT", "/machine-config"),
    route("PATCH", "/machine-config"),
    route("PUT", "/drives/{drive_id}"),
    route("PATCH", "/drives/{drive_id}"),
    route("PUT", "/network-interfaces/{iface_id}"),
    route("PATCH", "/network-interfaces/{iface_id}"),
    route("PUT", "/vsock"),
    route("PUT", "/fs/{fs_id}"),
    route("PUT", "/logger"),
    route("PUT", "/metrics"),
    route("PUT", "/actions"),
    route("PATCH", "/vm"),
    route("PUT", "/snapshot/create"),
    route("PUT", "/snapshot/load"),
];

/// Firecracker endpoints husk does not serve (yet): a 404 that says so.
const NOT_IMPLEMENTED: &[&str] = &[
    "balloon",
    "cpu-config",
    "entropy",
    "hotplug",
    "mmds",
    "pmem",
    "serial",
];

/// A resource, once the path is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    InstanceInfo,
    Version,
    VmConfig,
    BootSource,
    MachineConfig,
    Drive(String),
    NetworkInterface(String),
    Vsock,
    Fs(String),
    Logger,
    Metrics,
    Actions,
    Vm,
    SnapshotCreate,
    SnapshotLoad,
}

impl Endpoint {
    /// The path, as a client would write it.
    fn path(&self) -> String {
        match self {
            Endpoint::InstanceInfo => "/".into(),
            Endpoint::Version => "/version".into(),
            Endpoint::VmConfig => "/vm/config".into(),
            Endpoint::BootSource => "/boot-source".into(),
            Endpoint::MachineConfig => "/machine-config".into(),
            Endpoint::Drive(id) => format!("/drives/{id}"),
            Endpoint::NetworkInterface(id) => format!("/network-interfaces/{id}"),
            Endpoint::Vsock => "/vsock".into(),
            Endpoint::Fs(id) => format!("/fs/{id}"),
            Endpoint::Logger => "/logger".into(),
            Endpoint::Metrics => "/metrics".into(),
            Endpoint::Actions => "/actions".into(),
            Endpoint::Vm => "/vm".into(),
            Endpoint::SnapshotCreate => "/snapshot/create".into(),
            Endpoint::SnapshotLoad => "/snapshot/load".into(),
        }
    }

    /// The methods served on this path.
    fn allowed(&self) -> &'static [&'static str] {
        match self {
            Endpoint::InstanceInfo | Endpoint::Version | Endpoint::VmConfig => &["GET"],
            Endpoint::MachineConfig => &["GET", "PUT", "PATCH"],
            Endpoint::Drive(_) | Endpoint::NetworkInterface(_) => &["PUT", "PATCH"],
            Endpoint::Vm => &["PATCH"],
            Endpoint::BootSource
            | Endpoint::Vsock
            | Endpoint::Fs(_)
            | Endpoint::Logger
            | Endpoint::Metrics
            | Endpoint::Actions
            | Endpoint::SnapshotCreate
            | Endpoint::SnapshotLoad => &["PUT"],
        }
    }
}

/// A request whose method and path are known to be served; its body is
/// still to be read and decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Routed {
    method: &'static str,
    endpoint: Endpoint,
}

/// Finds what `method` on `path` (without the query) is: 404 for an unknown
/// path, 405 for a method the path does not serve, 400 for a malformed id.
pub(crate) fn route_request(method: &str, path: &str) -> Result<Routed, Response> {
    // Leading slashes are ignored, and so is one trailing slash
    // ("/machine-config/"), as Firecracker does.
    let mut tokens = path.trim_start_matches('/').split_terminator('/');
    let first = tokens.next().unwrap_or("");
    let second = tokens.next();
    let extra = tokens.next().is_some();
    let not_found = || Response::NotFound(format!("no such path: {path}"));
    let endpoint = match (first, second, extra) {
        ("", None, false) => Endpoint::InstanceInfo,
        ("version", None, false) => Endpoint::Version,
        ("vm", None, false) => Endpoint::Vm,
        ("vm", Some("config"), false) => Endpoint::VmConfig,
        ("boot-source", None, false) => Endpoint::BootSource,
        ("machine-config", None, false) => Endpoint::MachineConfig,
        ("drives", Some(id), false) => Endpoint::Drive(id.to_owned()),
        ("network-interfaces", Some(id), false) => Endpoint::NetworkInterface(id.to_owned()),
        ("vsock", None, false) => Endpoint::Vsock,
        ("fs", Some(id), false) => Endpoint::Fs(id.to_owned()),
        ("logger", None, false) => Endpoint::Logger,
        ("metrics", None, false) => Endpoint::Metrics,
        ("actions", None, false) => Endpoint::Actions,
        ("snapshot", Some("create"), false) => Endpoint::SnapshotCreate,
        ("snapshot", Some("load"), false) => Endpoint::SnapshotLoad,
        ("drives", None, false) => {
            return Err(Response::NotFound(format!(
                "no such path: {path} (a drive is /drives/{{drive_id}})"
            )))
        }
        ("fs", None, false) => {
            return Err(Response::NotFound(format!(
                "no such path: {path} (a shared directory is /fs/{{fs_id}})"
            )))
        }
        ("network-interfaces", None, false) => {
            return Err(Response::NotFound(format!(
                "no such path: {path} (a network interface is /network-interfaces/{{iface_id}})"
            )))
        }
        (other, _, _) if NOT_IMPLEMENTED.contains(&other) => {
            return Err(Response::NotFound(format!(
                "no such path: {path} (Firecracker's /{other} API is not implemented by husk)"
            )))
        }
        _ => return Err(not_found()),
    };
    let allowed = endpoint.allowed();
    let Some(&method) = allowed.iter().find(|&&m| m == method) else {
        return Err(Response::MethodNotAllowed {
            allowed,
            message: format!(
                "{method} is not allowed on {} (allowed: {})",
                endpoint.path(),
                allowed.join(", ")
            ),
        });
    };
    match &endpoint {
        Endpoint::Drive(id) => check_id("drive id in the path", id),
        Endpoint::NetworkInterface(id) => check_id("iface id in the path", id),
        Endpoint::Fs(id) => check_id("fs id in the path", id),
        _ => Ok(()),
    }
    .map_err(Response::BadRequest)?;
    Ok(Routed { method, endpoint })
}

impl Routed {
    /// Decodes the body into the request.
    pub(crate) fn decode(self, body: &[u8]) -> Result<Request, Response> {
        let what = format!("{} {}", self.method, self.endpoint.path());
        let empty = body.iter().all(u8::is_ascii_whitespace);
        if self.method == "GET" {
            if !empty {
                return Err(Response::BadRequest(format!("{what} takes no body")));
            }
        } else if empty {
            return Err(Response::BadRequest(format!("{what} needs a JSON body")));
        }
        let bad = |e: String| Response::BadRequest(format!("invalid body for {what}: {e}"));
        // serde would also take a struct written as an array of its fields.
        if self.method != "GET" && body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(bad("expected a JSON object".into()));
        }
        let request = match (self.method, self.endpoint) {
            ("GET", Endpoint::InstanceInfo) => Request::GetInstanceInfo,
            ("GET", Endpoint::Version) => Request::GetVersion,
            ("GET", Endpoint::VmConfig) => Request::GetVmConfig,
            ("GET", Endpoint::MachineConfig) => Request::GetMachineConfig,
            ("PUT", Endpoint::BootSource) => Request::PutBootSource(from_json(body).map_err(bad)?),
            ("PUT", Endpoint::MachineConfig) => {
                let config: MachineConfig = from_json(body).map_err(bad)?;
                config.validate().map_err(bad)?;
                Request::PutMachineConfig(config)
            }
            ("PATCH", Endpoint::MachineConfig) => {
                let patch: MachineConfigPatch = from_json(body).map_err(bad)?;
                patch.validate().map_err(bad)?;
                Request::PatchMachineConfig(patch)
            }
            ("PUT", Endpoint::Drive(id)) => {
                let drive: Drive = from_json(body).map_err(bad)?;
                ids_match("drive_id", &id, &drive.drive_id).map_err(bad)?;
                drive.validate().map_err(bad)?;
                Request::PutDrive(drive)
            }
            ("PATCH", Endpoint::Drive(id)) => {
                let patch: DrivePatch = from_json(body).map_err(bad)?;
                ids_match("drive_id", &id, &patch.drive_id).map_err(bad)?;
                Request::PatchDrive(patch)
            }
            ("PUT", Endpoint::NetworkInterface(id)) => {
                let iface: NetworkInterface = from_json(body).map_err(bad)?;
                ids_match("iface_id", &id, &iface.iface_id).map_err(bad)?;
                iface.validate().map_err(bad)?;
                Request::PutNetworkInterface(iface)
            }
            ("PATCH", Endpoint::NetworkInterface(id)) => {
                let patch: NetworkInterfacePatch = from_json(body).map_err(bad)?;
                ids_match("iface_id", &id, &patch.iface_id).map_err(bad)?;
                Request::PatchNetworkInterface(patch)
            }
            ("PUT", Endpoint::Vsock) => {
                let vsock: Vsock = from_json(body).map_err(bad)?;
                vsock.validate().map_err(bad)?;
                Request::PutVsock(vsock)
            }
            ("PUT", Endpoint::Fs(id)) => {
                let fs: SharedFs = from_json(body).map_err(bad)?;
                ids_match("fs_id", &id, &fs.fs_id).map_err(bad)?;
                fs.validate().map_err(bad)?;
                Request::PutFs(fs)
            }
            ("PUT", Endpoint::Logger) => Request::PutLogger(from_json(body).map_err(bad)?),
            ("PUT", Endpoint::Metrics) => Request::PutMetrics(from_json(body).map_err(bad)?),
            ("PUT", Endpoint::Actions) => {
                let action: Action = from_json(body).map_err(bad)?;
                Request::Action(action.action_type)
            }
            ("PATCH", Endpoint::Vm) => {
                let vm: Vm = from_json(body).map_err(bad)?;
                Request::PatchVm(vm.state)
            }
            ("PUT", Endpoint::SnapshotCreate) => {
                let create: SnapshotCreate = from_json(body).map_err(bad)?;
                create.validate().map_err(Response::BadRequest)?;
                Request::CreateSnapshot(create)
            }
            ("PUT", Endpoint::SnapshotLoad) => {
                let load: SnapshotLoad = from_json(body).map_err(bad)?;
                load.validate().map_err(Response::BadRequest)?;
                Request::LoadSnapshot(load)
            }
            // `route_request` only lets through the methods in `allowed()`,
            // and every one of them has an arm above.
            (method, endpoint) => {
                return Err(Response::MethodNotAllowed {
                    allowed: endpoint.allowed(),
                    message: format!("{method} is not allowed on {}", endpoint.path()),
                })
            }
        };
        Ok(request)
    }
}

fn ids_match(field: &str, in_path: &str, in_body: &str) -> Result<(), String> {
    if in_path == in_body {
        Ok(())
    } else {
        Err(format!(
            "{field} {in_body:?} in the body does not match {in_path:?} in the path"
        ))
    }
}

/// Parses one request: `method` as HTTP spells it (`"PUT"`), `path` without
/// the query string, `body` the raw bytes (empty when there is none).
/// `Err` holds the answer to send instead (never a 5xx).
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<Request, Response> {
    route_request(method, path)?.decode(body)
}
