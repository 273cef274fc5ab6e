//! The pure part of `husk run`: from the flags and the image's defaults to
//! the runtime spec, the VM's size and command line, and the disks the VM
//! gets and the agent mounts. No VM, no files written; `launch` does that.

use super::etc;
use super::spec::{self, Net, Settings};
use super::volume::{self, VolumeArg};
use super::RunArgs;
use crate::Failure;
use husk_image::ImageDefaults;
use husk_vmm::{DiskConfig, FsConfig};
use husk_wire::agent::{RootfsSpec, StdioSpec, VolumeSource, VolumeSpec};
use husk_wire::cmdline;
use husk_wire::oci_spec::runtime::Spec;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Memory the guest itself needs beside the container's limit: kernel,
/// agent, page cache for the image and the tmpfs upper layer.
pub const GUEST_OVERHEAD_MIB: u64 = 96;
/// VM memory when the container has no limit.
pub const DEFAULT_VM_MIB: u64 = 256;
/// The container's stream id on the run's agent connection.
pub const MAIN_STREAM: u32 = 1;
/// The container's id inside the guest (one container per VM).
pub const CONTAINER_ID: &str = "main";
/// The smallest `--scratch` that holds an ext4 filesystem with room to spare.
const MIN_SCRATCH: u64 = 16 << 20;

/// Disk serials: the VMM reports them to the guest (virtio-blk GET_ID) and
/// the agent finds the disks by them.
pub mod serial {
    pub const ROOTFS: &str = "rootfs";
    pub const IMAGE: &str = "image";
    pub const SCRATCH: &str = "scratch";
    pub fn volume(i: usize) -> String {
        format!("volume{i}")
    }
    /// The virtio-fs mount tag of a directory volume.
    pub fn share(i: usize) -> String {
        format!("vol{i}")
    }
}

/// Everything `husk run` decided before touching the machine.
#[derive(Debug)]
pub struct Plan {
    pub id: String,
    pub spec: Spec,
    /// The process's settings (kept in the run's record for `husk exec`).
    pub settings: Settings,
    pub volumes: Vec<VolumeArg>,
    /// Bytes of the scratch disk for the writable layer.
    pub scratch: Option<u64>,
    pub net: Option<Net>,
    pub vcpus: u8,
    pub mem_mib: u64,
    pub stdio: StdioSpec,
    /// The container's resolv.conf, hosts and hostname (those no volume
    /// covers), for a `files` volume.
    pub etc_files: BTreeMap<String, String>,
    /// What to tell the user about them (the fallback nameservers).
    pub etc_warning: Option<String>,
    /// `--device-read-bps` and its kin, set on the disks at launch.
    pub device_limits: Vec<super::blkio::DeviceLimit>,
    /// How a detached run's logs rotate.
    pub log_opts: super::logfile::LogOpts,
    /// `HUSK_FAULT`: a failure the guest makes on purpose (tests).
    pub fault: Option<cmdline::Fault>,
}

/// A disk made ready on the host: where it is and what is on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadyDisk {
    pub path: PathBuf,
    pub fs_type: &'static str,
}

/// A volume made ready on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadyVolume {
    /// A disk image, attached as a virtio-blk disk.
    Disk(ReadyDisk),
    /// A directory that a virtiofsd serves on this socket.
    Shared { socket: PathBuf },
}

impl ReadyVolume {
    pub fn is_disk(&self) -> bool {
        matches!(self, ReadyVolume::Disk(_))
    }
}

/// What launch made ready for the plan's disks and shares.
#[derive(Debug)]
pub struct Disks {
    pub rootfs: PathBuf,
    pub image: ReadyDisk,
    /// One per [`Plan::volumes`], in order.
    pub volumes: Vec<ReadyVolume>,
    pub scratch: Option<PathBuf>,
}

/// Where the agent mounts volume `i` in the guest; the container's bind
/// mount takes it from there.
fn volume_mount_point(i: usize) -> String {
    format!("/run/husk/volumes/{i}")
}

/// What the run's network gives the plan.
#[derive(Debug, Default)]
pub struct Network {
    /// The NIC a husk network attached, if it did.
    pub bridged: Option<Net>,
    /// `tap=...` (`--net`, `--network tap=...`), parsed here.
    pub tap: Option<String>,
    /// The named network's DNS server.
    pub dns: Option<std::net::Ipv4Addr>,
}

/// Flags + image defaults → the plan; every flag error is a usage error.
/// `host_resolv` is the host's resolv.conf ([`etc::host_resolv_conf`]).
pub fn plan(
    args: &RunArgs,
    defaults: &ImageDefaults,
    id: &str,
    network: &Network,
    host_resolv: &str,
) -> Result<Plan, Failure> {
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
    let user = args.process.user.as_deref().or(defaults.user.as_deref());
    let (uid, gid) = spec::user(user.unwrap_or("")).map_err(Failure::usage)?;
    let volumes = volumes(&args.volumes)?;
    let scratch = args
        .scratch
        .as_deref()
        .map(|s| spec::size(s).map_err(|e| format!("--scratch: {e}")))
        .transpose()
        .map_err(Failure::usage)?;
    if scratch.is_some_and(|b| b < MIN_SCRATCH) {
        return Err(Failure::usage("--scratch: at least 16m"));
    }
    let net = match &network.bridged {
        Some(net) => Some(net.clone()),
        None => network
            .tap
            .as_deref()
            .map(spec::net)
            .transpose()
            .map_err(Failure::usage)?,
    };
    let argv = spec::args(&defaults.entrypoint, &defaults.cmd, &args.command);
    if argv.is_empty() {
        return Err(Failure::usage(
            "no command: the image has no Entrypoint or Cmd, give one after the image",
        ));
    }
    let hostname = args.hostname.clone().unwrap_or_else(|| id.to_owned());
    let (etc_files, etc_warning) = etc_files(
        args,
        &volumes,
        &hostname,
        net.as_ref(),
        network.dns,
        host_resolv,
    )?;
    let mut binds: Vec<(String, String, bool)> = volumes
        .iter()
        .enumerate()
        .map(|(i, v)| (volume_mount_point(i), v.target.clone(), v.read_only))
        .collect();
    binds.extend(etc_files.keys().map(|name| {
        (
            format!("{}/{name}", etc::MOUNT_POINT),
            format!("/etc/{name}"),
            false,
        )
    }));
    let settings = Settings {
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
        hostname,
        terminal: args.process.tty,
        memory,
        cpus: args.cpus,
        pids: args.pids_limit,
        binds,
        vm_network: net.is_some(),
    };
    Ok(Plan {
        id: id.to_owned(),
        spec: spec::build(&settings),
        settings,
        volumes,
        scratch,
        net,
        vcpus: args.cpus.map_or(1, |c| c.ceil() as u8).max(1),
        mem_mib: memory.map_or(DEFAULT_VM_MIB, |m| m.div_ceil(1 << 20) + GUEST_OVERHEAD_MIB),
        stdio: StdioSpec {
            stream: MAIN_STREAM,
            tty: args.process.tty,
            stdin: args.process.interactive,
        },
        etc_files,
        etc_warning,
        device_limits: device_limits(args)?,
        log_opts: log_opts(args)?,
        fault: fault_from_env()?,
    })
}

/// `HUSK_FAULT=NAME`: the guest fails that way on purpose, for the tests
/// of how husk copes (`husk_wire::cmdline::Fault`); unset or empty: none.
fn fault_from_env() -> Result<Option<cmdline::Fault>, Failure> {
    match std::env::var("HUSK_FAULT").as_deref() {
        Err(_) | Ok("") => Ok(None),
        Ok(name) => cmdline::Fault::from_name(name).map(Some).ok_or_else(|| {
            let known: Vec<&str> = cmdline::Fault::ALL.iter().map(|f| f.name()).collect();
            Failure::usage(format!(
                "HUSK_FAULT={name}: not a fault husk knows ({})",
                known.join(", ")
            ))
        }),
    }
}

/// `--log-opt`: only a detached run keeps logs to rotate.
fn log_opts(args: &RunArgs) -> Result<super::logfile::LogOpts, Failure> {
    if !args.detach && !args.log_opts.is_empty() {
        return Err(Failure::usage(
            "--log-opt: only a detached run (-d) keeps logs; a foreground run's output is yours",
        ));
    }
    super::logfile::parse(&args.log_opts).map_err(Failure::usage)
}

/// The `--device-*` flags, parsed.
fn device_limits(args: &RunArgs) -> Result<Vec<super::blkio::DeviceLimit>, Failure> {
    use super::blkio::{parse, Kind};
    let flags = [
        (Kind::ReadBps, &args.device_read_bps),
        (Kind::WriteBps, &args.device_write_bps),
        (Kind::ReadIops, &args.device_read_iops),
        (Kind::WriteIops, &args.device_write_iops),
    ];
    flags
        .iter()
        .flat_map(|(kind, values)| values.iter().map(move |v| parse(*kind, v)))
        .collect::<Result<_, _>>()
        .map_err(Failure::usage)
}

/// The container's /etc files, but for those a volume covers.
fn etc_files(
    args: &RunArgs,
    volumes: &[VolumeArg],
    hostname: &str,
    net: Option<&Net>,
    network_dns: Option<std::net::Ipv4Addr>,
    host_resolv: &str,
) -> Result<(BTreeMap<String, String>, Option<String>), Failure> {
    let covered = |name: &str| {
        let path = format!("/etc/{name}");
        volumes
            .iter()
            .any(|v| v.target.trim_end_matches('/') == "/etc" || v.target == path)
    };
    let skip: Vec<&str> = [etc::RESOLV_CONF, etc::HOSTS, etc::HOSTNAME]
        .into_iter()
        .filter(|n| covered(n))
        .collect();
    let me = etc::Identity {
        hostname,
        addr: net.and_then(|n| n.addr).map(|(a, _)| a),
        gateway: net.and_then(|n| n.gateway),
        network_dns,
    };
    etc::compose(&args.dns, host_resolv, me, &skip).map_err(Failure::usage)
}

fn volumes(args: &[String]) -> Result<Vec<VolumeArg>, Failure> {
    let volumes = args
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
    Ok(volumes)
}

impl Plan {
    /// The guest's kernel command line: the base, the read-only root, the
    /// agent, and the network's address when there is one.
    pub fn cmdline(&self) -> String {
        self.cmdline_named(&self.vm_hostname(), true)
    }

    /// The guest's own hostname (the container has its own namespace's).
    pub fn vm_hostname(&self) -> String {
        format!("husk-{}", self.id)
    }

    /// The command line of a pool template this run may come from: every
    /// clone's, so neither the run's hostname nor its address (a clone
    /// gets both with its identity).
    pub fn template_cmdline(&self) -> String {
        self.cmdline_named("husk", false)
    }

    fn cmdline_named(&self, hostname: &str, with_address: bool) -> String {
        format!(
            "{} root=/dev/vda ro {} {}={}{}{}",
            cmdline::BASE,
            cmdline::KEY_AGENT,
            cmdline::KEY_HOSTNAME,
            hostname,
            self.net
                .as_ref()
                .filter(|_| with_address)
                .map(|n| n.cmdline())
                .unwrap_or_default(),
            self.fault
                .map(|f| format!(" {}={}", cmdline::KEY_FAULT, f.name()))
                .unwrap_or_default()
        )
    }

    /// The VM's disks, each named by its serial. The guest's root comes
    /// first: the kernel mounts it as /dev/vda.
    pub fn vm_disks(&self, d: &Disks) -> Vec<DiskConfig> {
        let disk = |path: &PathBuf, read_only, id: &str| DiskConfig {
            path: path.clone(),
            read_only,
            id: id.to_owned(),
            rate_limiter: None,
            read_write: Default::default(),
        };
        let mut disks = vec![
            disk(&d.rootfs, true, serial::ROOTFS),
            disk(&d.image.path, true, serial::IMAGE),
        ];
        for (i, (v, ready)) in self.volumes.iter().zip(&d.volumes).enumerate() {
            if let ReadyVolume::Disk(ready) = ready {
                disks.push(disk(&ready.path, v.read_only, &serial::volume(i)));
            }
        }
        if let Some(s) = &d.scratch {
            disks.push(disk(s, false, serial::SCRATCH));
        }
        disks
    }

    /// The VM's virtio-fs shares: one per directory volume.
    pub fn vm_shares(&self, d: &Disks) -> Vec<FsConfig> {
        d.volumes
            .iter()
            .enumerate()
            .filter_map(|(i, ready)| match ready {
                ReadyVolume::Shared { socket } => Some(FsConfig {
                    socket: socket.clone(),
                    tag: serial::share(i),
                    id: serial::share(i),
                }),
                ReadyVolume::Disk(_) => None,
            })
            .collect()
    }

    /// What the agent mounts for the container, by the same serials and
    /// tags.
    pub fn agent_disks(&self, d: &Disks) -> (RootfsSpec, Vec<VolumeSpec>) {
        let rootfs = RootfsSpec::Image {
            disk: serial::IMAGE.into(),
            fs_type: d.image.fs_type.into(),
            scratch_disk: d.scratch.as_ref().map(|_| serial::SCRATCH.into()),
        };
        let volumes = self
            .volumes
            .iter()
            .zip(&d.volumes)
            .enumerate()
            .map(|(i, (v, ready))| VolumeSpec {
                source: match ready {
                    ReadyVolume::Disk(d) => VolumeSource::Disk {
                        serial: serial::volume(i),
                        fs_type: d.fs_type.into(),
                    },
                    ReadyVolume::Shared { .. } => VolumeSource::Shared {
                        tag: serial::share(i),
                    },
                },
                mount_point: volume_mount_point(i),
                read_only: v.read_only,
            })
            .chain((!self.etc_files.is_empty()).then(|| VolumeSpec {
                source: VolumeSource::Files {
                    files: self.etc_files.clone(),
                },
                mount_point: etc::MOUNT_POINT.into(),
                read_only: false,
            }))
            .collect();
        (rootfs, volumes)
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// `husk run` flags parsed as clap does (shared with networking's tests).
    pub(in crate::run) fn args(line: &[&str]) -> RunArgs {
        Cli::try_parse_from(std::iter::once("husk-run").chain(line.iter().copied()))
            .unwrap()
            .run
    }

    fn defaults() -> ImageDefaults {
        ImageDefaults {
            entrypoint: vec![],
            cmd: vec!["sh".into()],
            env: vec!["PATH=/bin".into(), "A=1".into()],
            working_dir: Some("/srv".into()),
            user: Some("5:6".into()),
            exposed_ports: vec![],
        }
    }

    fn ready(path: &str, fs_type: &'static str) -> ReadyDisk {
        ReadyDisk {
            path: path.into(),
            fs_type,
        }
    }

    #[test]
    fn flags_and_image_defaults_make_the_spec_and_the_vm() {
        let p = plan(
            &args(&[
                "--memory", "64m", "--cpus", "1.5", "-e", "A=2", "img", "echo", "hi",
            ]),
            &defaults(),
            "abc",
            &Network::default(),
            "",
        )
        .unwrap();
        assert_eq!(p.vcpus, 2);
        assert_eq!(p.mem_mib, 64 + GUEST_OVERHEAD_MIB);
        let proc_ = p.spec.process().as_ref().unwrap();
        assert_eq!(proc_.args().as_ref().unwrap(), &["echo", "hi"]);
        assert_eq!(proc_.env().as_ref().unwrap(), &["PATH=/bin", "A=2"]);
        assert_eq!(proc_.cwd(), std::path::Path::new("/srv"));
        assert_eq!((proc_.user().uid(), proc_.user().gid()), (5, 6));
        assert_eq!(p.spec.hostname().as_deref(), Some("abc"));
        assert_eq!(p.stdio.stream, MAIN_STREAM);
        assert!(p.cmdline().starts_with(cmdline::BASE));
        assert!(p.cmdline().ends_with("husk.agent husk.hostname=husk-abc"));

        let p = plan(&args(&["img"]), &defaults(), "x", &Network::default(), "").unwrap();
        assert_eq!((p.vcpus, p.mem_mib), (1, DEFAULT_VM_MIB));
    }

    #[test]
    fn disks_are_named_by_serial_whatever_their_order() {
        let dir = std::env::temp_dir();
        let vol = format!("{}:/data:ro", dir.display());
        let vol2 = format!("{}:/more", dir.display());
        let p = plan(
            &args(&["-v", &vol, "-v", &vol2, "--scratch", "64m", "img"]),
            &defaults(),
            "x",
            &Network::default(),
            "",
        )
        .unwrap();
        assert_eq!(p.scratch, Some(64 << 20));
        let disks = Disks {
            rootfs: "/g/rootfs.ext4".into(),
            image: ready("/c/img.erofs", "erofs"),
            volumes: vec![
                ReadyVolume::Shared {
                    socket: "/r/fs-0.sock".into(),
                },
                ReadyVolume::Disk(ready("/r/v1", "ext4")),
            ],
            scratch: Some("/r/scratch.img".into()),
        };
        let vm: Vec<(String, bool)> = p
            .vm_disks(&disks)
            .into_iter()
            .map(|d| (d.id, d.read_only))
            .collect();
        assert_eq!(
            vm,
            [
                ("rootfs".into(), true),
                ("image".into(), true),
                ("volume1".into(), false),
                ("scratch".into(), false)
            ]
        );
        let shares = p.vm_shares(&disks);
        assert_eq!(shares.len(), 1);
        assert_eq!(shares[0].tag, "vol0");
        assert_eq!(shares[0].socket, std::path::Path::new("/r/fs-0.sock"));
        let (root, volumes) = p.agent_disks(&disks);
        assert_eq!(
            root,
            RootfsSpec::Image {
                disk: "image".into(),
                fs_type: "erofs".into(),
                scratch_disk: Some("scratch".into()),
            }
        );
        assert_eq!(
            volumes[0].source,
            VolumeSource::Shared { tag: "vol0".into() }
        );
        assert!(volumes[0].read_only);
        assert_eq!(
            volumes[1].source,
            VolumeSource::Disk {
                serial: "volume1".into(),
                fs_type: "ext4".into()
            }
        );
        assert_eq!(volumes[1].mount_point, "/run/husk/volumes/1");
        // The spec bind-mounts each volume's mount point.
        let mounts = p.spec.mounts().as_ref().unwrap();
        let data = mounts
            .iter()
            .find(|m| m.destination() == std::path::Path::new("/data"))
            .unwrap();
        assert_eq!(
            data.source().as_deref(),
            Some(std::path::Path::new("/run/husk/volumes/0"))
        );
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        let d = defaults();
        let bad = |line: &[&str]| plan(&args(line), &d, "x", &Network::default(), "").unwrap_err();
        assert!(bad(&["--cpus", "0", "img"]).message.contains("--cpus"));
        assert!(bad(&["--memory", "lots", "img"])
            .message
            .contains("--memory"));
        assert!(bad(&["--scratch", "1m", "img"])
            .message
            .contains("at least 16m"));
        assert!(bad(&["-u", "root", "img"]).message.contains("numeric"));
        let tap = |t: &str| Network {
            tap: Some(t.into()),
            ..Network::default()
        };
        let e = plan(&args(&["img"]), &d, "x", &tap("tap=t0,gw=1.2.3.4"), "").unwrap_err();
        assert!(e.message.contains("needs ip="));
        let tmp = std::env::temp_dir().display().to_string();
        let twice = bad(&[
            "-v",
            &format!("{tmp}:/a"),
            "-v",
            &format!("{tmp}:/a"),
            "img",
        ]);
        assert!(twice.message.contains("mounted twice"));
        let no_cmd = ImageDefaults {
            cmd: vec![],
            ..defaults()
        };
        let e = plan(&args(&["img"]), &no_cmd, "x", &Network::default(), "").unwrap_err();
        assert_eq!(e.code, 2);
        assert!(e.message.contains("no command"));
    }

    #[test]
    fn the_network_flag_shares_the_vm_network_and_configures_the_guest() {
        let p = plan(
            &args(&["--add-host", "db:192.0.2.9", "img"]),
            &defaults(),
            "x",
            &Network {
                tap: Some("tap=t0,ip=10.0.0.2/24".into()),
                ..Network::default()
            },
            "nameserver 192.0.2.53\n",
        )
        .unwrap();
        assert!(p.settings.vm_network);
        assert!(p
            .cmdline()
            .ends_with(" ip=10.0.0.2:::255.255.255.0::eth0:off"));
        // The container's /etc files: composed, sent as a files volume,
        // bind-mounted over the image's.
        assert!(p.etc_files["hosts"].ends_with("192.0.2.9\tdb\n10.0.0.2\tx\n"));
        assert!(p.etc_files["resolv.conf"].contains("nameserver 192.0.2.53\n"));
        let mounts = p.spec.mounts().as_ref().unwrap();
        for name in ["resolv.conf", "hosts", "hostname"] {
            let dest = format!("/etc/{name}");
            let m = mounts
                .iter()
                .find(|m| m.destination() == std::path::Path::new(&dest))
                .unwrap();
            let source = format!("{}/{name}", etc::MOUNT_POINT);
            assert_eq!(m.source().as_deref(), Some(std::path::Path::new(&source)));
        }
        let disks = Disks {
            rootfs: "/g/rootfs.ext4".into(),
            image: ready("/c/img.erofs", "erofs"),
            volumes: vec![],
            scratch: None,
        };
        let (_, volumes) = p.agent_disks(&disks);
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].mount_point, etc::MOUNT_POINT);
        assert!(matches!(&volumes[0].source, VolumeSource::Files { files } if files.len() == 3));
    }

    #[test]
    fn a_volume_over_an_etc_file_wins() {
        let dir = std::env::temp_dir().display().to_string();
        let p = plan(
            &args(&["-v", &format!("{dir}:/etc/hosts"), "img"]),
            &defaults(),
            "x",
            &Network::default(),
            "",
        )
        .unwrap();
        assert!(!p.etc_files.contains_key("hosts"));
        assert!(p.etc_files.contains_key("resolv.conf"));
    }
}
