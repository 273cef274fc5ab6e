//! `husk boot`: runs the project's guest (or any kernel) with a root disk,
//! passes the command to the guest init, and exits with its status.

use crate::Failure;
use clap::Args;
use husk_vmm::{Console, DiskConfig, Exit, FsConfig, NetConfig, VmConfig, VsockConfig};
use husk_wire::cmdline;
use std::path::PathBuf;

#[derive(Args)]
pub struct BootArgs {
    /// Guest kernel: vmlinux (ELF, PVH or 64-bit entry) or bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Root filesystem image, attached read-write as /dev/vda.
    #[arg(long, value_name = "PATH")]
    rootfs: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..))]
    cpus: u8,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128, value_parser = clap::value_parser!(u64).range(1..))]
    memory: u64,
    /// An extra disk (repeatable): a file, read-only with `,ro`.
    #[arg(long = "disk", value_name = "PATH[,ro]")]
    disks: Vec<String>,
    /// A network interface on an existing host TAP (repeatable):
    /// `tap=NAME[,mac=AA:BB:CC:DD:EE:FF]`. The guest sees eth0, eth1, ...;
    /// give it an address with `--cmdline ip=...` (see README).
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<String>,
    /// A vsock device: `cid=N,uds=PATH` (Firecracker's hybrid model: host
    /// programs connect to PATH and send `CONNECT <port>`; guest connections
    /// to CID 2 port P reach PATH_P).
    #[arg(long, value_name = "cid=N,uds=PATH")]
    vsock: Option<String>,
    /// A shared directory, live in the guest through virtio-fs:
    /// `tag=TAG,dir=DIR[,ro]` (husk starts virtiofsd for DIR) or
    /// `tag=TAG,socket=PATH` (a virtiofsd you run); the guest mounts it
    /// with `mount -t virtiofs TAG /mnt` (repeatable).
    #[arg(long = "fs", value_name = "tag=TAG,dir=DIR[,ro]|tag=TAG,socket=PATH")]
    fs: Vec<String>,
    /// Appended to the kernel command line.
    #[arg(long, value_name = "EXTRA", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Where the serial console goes: stdio, off, or file=PATH.
    #[arg(long, default_value = "stdio", value_parser = |s: &str| s.parse::<Console>())]
    console: Console,
    /// Run on kvm_pvm anyway (only tiny test guests survive it).
    #[arg(long, hide = true)]
    allow_kvm_pvm: bool,
    /// The command for the guest init; without one, a shell on the console.
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

/// `$HUSK_GUEST_DIR`, else the checkout's `target/guest` (scripts/build-guest).
pub(crate) fn guest_dir() -> PathBuf {
    std::env::var_os("HUSK_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the crate lives in the workspace")
                .join("target/guest")
        })
}

fn existing(path: PathBuf, what: &str) -> Result<PathBuf, Failure> {
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(path),
        Ok(_) => Err(Failure::runtime(format!(
            "the {what} {} is not a file",
            path.display()
        ))),
        Err(e) => Err(Failure::runtime(format!(
            "the {what} {}: {e}",
            path.display()
        ))),
    }
}

/// The kernel command line: husk's base line, the root disk, and the
/// init's parameters.
fn kernel_cmdline(args: &BootArgs) -> String {
    let mut line = format!("{} root=/dev/vda rw", cmdline::BASE);
    if !args.command.is_empty() {
        line.push(' ');
        line.push_str(&cmdline::command_param(&args.command));
    }
    if let Some(extra) = &args.cmdline {
        line.push(' ');
        line.push_str(extra);
    }
    line
}

/// `PATH[,ro]` → a disk; the id is `disk<N>` (N from 1; the root is 0).
fn disk_spec(spec: &str, n: usize) -> Result<DiskConfig, Failure> {
    let (path, read_only) = match spec.rsplit_once(',') {
        Some((p, "ro")) => (p, true),
        Some((p, "rw")) => (p, false),
        Some((_, opt)) => {
            return Err(Failure::usage(format!(
                "--disk {spec}: unknown option {opt:?} (use PATH or PATH,ro)"
            )))
        }
        None => (spec, false),
    };
    if path.is_empty() {
        return Err(Failure::usage(format!("--disk {spec:?}: no path")));
    }
    Ok(DiskConfig {
        path: existing(PathBuf::from(path), "disk")?,
        read_only,
        id: format!("disk{n}"),
        rate_limiter: None,
        read_write: Default::default(),
    })
}

/// A private directory for the run's sockets, removed when dropped.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(needed: bool) -> Result<WorkDir, Failure> {
        let dir = std::env::temp_dir().join(format!("husk-boot-{}", std::process::id()));
        if needed {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
        }
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A parsed `--fs`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FsArg {
    /// A virtiofsd the user runs, on this socket.
    Socket { tag: String, socket: PathBuf },
    /// A directory husk starts a virtiofsd for.
    Dir {
        tag: String,
        dir: PathBuf,
        read_only: bool,
    },
}

/// `tag=TAG,socket=PATH` or `tag=TAG,dir=DIR[,ro]`.
fn fs_arg(spec: &str) -> Result<FsArg, Failure> {
    let bad = |why: String| Failure::usage(format!("--fs {spec}: {why}"));
    let (mut tag, mut socket, mut dir, mut read_only) = (None, None, None, false);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tag", t)) if !t.is_empty() && t.len() <= 36 => tag = Some(t.to_owned()),
            Some(("tag", t)) => return Err(bad(format!("tag {t:?} must be 1 to 36 bytes"))),
            Some(("socket", p)) if !p.is_empty() => socket = Some(PathBuf::from(p)),
            Some(("dir", p)) if !p.is_empty() => dir = Some(PathBuf::from(p)),
            None if part == "ro" => read_only = true,
            _ => {
                return Err(bad(format!(
                    "expected tag=TAG and socket=PATH or dir=DIR[,ro], not {part:?}"
                )))
            }
        }
    }
    let tag = tag.ok_or_else(|| bad("tag=TAG is required".into()))?;
    match (socket, dir) {
        (Some(socket), None) if !read_only => Ok(FsArg::Socket { tag, socket }),
        (Some(_), None) => Err(bad("ro applies to dir=, not to a socket you serve".into())),
        (None, Some(dir)) if dir.is_dir() => Ok(FsArg::Dir {
            tag,
            dir,
            read_only,
        }),
        (None, Some(dir)) => Err(bad(format!("{} is not a directory", dir.display()))),
        _ => Err(bad("give one of socket=PATH and dir=DIR".into())),
    }
}

/// The shared directories of `--fs`: virtiofsd started for each `dir=`
/// (kept alive by the returned backends) and the VM's devices.
fn shares(
    specs: &[String],
    work: &std::path::Path,
) -> Result<(Vec<FsConfig>, Vec<crate::virtiofsd::Backend>), Failure> {
    let (mut configs, mut backends) = (Vec::new(), Vec::new());
    for (n, spec) in specs.iter().enumerate() {
        let id = format!("fs{n}");
        let (tag, socket) = match fs_arg(spec)? {
            FsArg::Socket { tag, socket } => (tag, socket),
            FsArg::Dir {
                tag,
                dir,
                read_only,
            } => {
                let b = crate::virtiofsd::start(&dir, read_only, work, &id)
                    .map_err(|e| Failure::runtime(format!("--fs {spec}: {e}")))?;
                let socket = b.socket.clone();
                backends.push(b);
                (tag, socket)
            }
        };
        configs.push(FsConfig { socket, tag, id });
    }
    Ok((configs, backends))
}

/// `cid=N,uds=PATH` → the vsock device.
fn vsock_spec(spec: &str) -> Result<VsockConfig, Failure> {
    let (mut cid, mut uds) = (None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("cid", n)) => {
                cid = Some(
                    n.parse::<u64>()
                        .ok()
                        .filter(|c| (3..u64::from(u32::MAX)).contains(c))
                        .ok_or_else(|| {
                            Failure::usage(format!(
                                "--vsock {spec}: cid must be a number from 3 to 4294967294"
                            ))
                        })?,
                )
            }
            Some(("uds", p)) if !p.is_empty() => uds = Some(PathBuf::from(p)),
            _ => {
                return Err(Failure::usage(format!(
                    "--vsock {spec}: expected cid=N,uds=PATH, not {part:?}"
                )))
            }
        }
    }
    match (cid, uds) {
        (Some(guest_cid), Some(uds_path)) => Ok(VsockConfig {
            guest_cid,
            uds_path,
            id: "vsock0".into(),
        }),
        _ => Err(Failure::usage(format!(
            "--vsock {spec}: both cid=N and uds=PATH are required"
        ))),
    }
}

/// `tap=NAME[,mac=MAC]` → a network interface; the id is `eth<N>`.
pub fn net_spec(spec: &str, n: usize) -> Result<NetConfig, Failure> {
    let (mut tap, mut mac) = (None, None);
    for part in spec.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if !name.is_empty() => tap = Some(name.to_owned()),
            Some(("mac", m)) => {
                let parsed: husk_api::model::MacAddr = m
                    .parse()
                    .map_err(|e| Failure::usage(format!("--net {spec}: mac: {e}")))?;
                mac = Some(parsed.0);
            }
            _ => {
                return Err(Failure::usage(format!(
                    "--net {spec}: expected tap=NAME[,mac=MAC], not {part:?}"
                )))
            }
        }
    }
    let tap_name =
        tap.ok_or_else(|| Failure::usage(format!("--net {spec}: tap=NAME is required")))?;
    Ok(NetConfig {
        host: husk_vmm::NetHost::Tap(tap_name),
        mac,
        id: format!("eth{n}"),
        limits: Default::default(),
    })
}

/// A VMM error as the command's failure: bad sizes are usage errors, and
/// a /dev/kvm that cannot boot Linux gets the way out.
pub(crate) fn usage_or_runtime(e: husk_vmm::Error) -> Failure {
    use husk_vmm::Error as E;
    let mut message = e.to_string();
    match e {
        E::Kvm(kind) if !kind.runs_linux() => {
            message.push_str(
                "; on a host without hardware virtualization, run husk's guests in the \
                 nested testbed (tests/testbed/run; `cargo test` uses it by itself)",
            );
            Failure::runtime(message)
        }
        E::Vcpus(..) | E::Memory(husk_vmm::memory::Error::TooSmall(..)) => Failure::usage(message),
        E::Memory(husk_vmm::memory::Error::TooLarge(..)) => Failure::usage(message),
        E::Loader(husk_vmm::loader::Error::CmdlineTooLong(_)) => Failure::usage(message),
        _ => Failure::runtime(message),
    }
}

pub fn run(args: BootArgs) -> Result<u8, Failure> {
    let dir = guest_dir();
    let kernel = existing(
        args.kernel.clone().unwrap_or_else(|| dir.join("vmlinux")),
        "kernel",
    )?;
    let rootfs = existing(
        args.rootfs
            .clone()
            .unwrap_or_else(|| dir.join("rootfs.ext4")),
        "root filesystem",
    )?;
    let mut disks = vec![DiskConfig {
        path: rootfs,
        read_only: false,
        id: "rootfs".into(),
        rate_limiter: None,
        read_write: Default::default(),
    }];
    for (i, spec) in args.disks.iter().enumerate() {
        disks.push(disk_spec(spec, i + 1)?);
    }
    let nets = args
        .nets
        .iter()
        .enumerate()
        .map(|(i, spec)| net_spec(spec, i))
        .collect::<Result<Vec<_>, _>>()?;
    // virtiofsd sockets and logs for `--fs dir=`, gone with the run.
    let work = WorkDir::new(!args.fs.is_empty())?;
    let (fs, _backends) = shares(&args.fs, &work.0)?;
    let interactive = args.command.is_empty();
    let config = VmConfig {
        kernel,
        vcpus: args.cpus,
        mem_mib: args.memory,
        cmdline: kernel_cmdline(&args),
        disks,
        nets,
        vsock: args.vsock.as_deref().map(vsock_spec).transpose()?,
        fs,
        console: args.console.clone(),
        stdin: args.console == Console::Stdio,
        allow_pvm: args.allow_kvm_pvm,
        track_dirty_pages: false,
    };
    let signals = husk_vmm::take_stop_signals()
        .map_err(|e| Failure::runtime(format!("cannot take over SIGINT/SIGTERM: {e}")))?;
    // Raw mode only for an interactive shell on a terminal: with a command,
    // Ctrl-C should stop husk, not travel to the guest.
    let _raw = (interactive && config.stdin)
        .then(husk_vmm::console::RawTerminal::enter)
        .flatten();
    let outcome = husk_vmm::run(&config, Some(signals)).map_err(usage_or_runtime)?;
    match (outcome.exit, outcome.guest_status) {
        (Exit::Reset | Exit::Halted, Some(status)) => Ok(status),
        (Exit::Reset, None) => Err(Failure::runtime(match outcome.guest_panic {
            Some(why) => format!("the guest kernel panicked: {why}"),
            None => unreported_reset(outcome.reset),
        })),
        (Exit::Halted, None) => Err(Failure::runtime(
            "the guest halted without reporting an exit status",
        )),
        (Exit::Stopped(sig), _) => Ok(husk_wire::status::signal_status(sig)),
        (Exit::Failed(why), _) => Err(Failure::runtime(why)),
    }
}

/// A reset with no status and no panic on the console: how it came about
/// is all there is to say (a quiet guest's console shows nothing of a
/// triple fault).
fn unreported_reset(how: Option<&str>) -> String {
    let what = "the guest reset without reporting an exit status (kernel panic, or the init died)";
    match how {
        Some(how) => format!("{what}; the reset came by {how}"),
        None => what.to_string(),
    }
}

#[cfg(test)]
mod fs_tests {
    use super::*;

    #[test]
    fn fs_specs() {
        let dir = std::env::temp_dir();
        let d = dir.display();
        assert_eq!(
            fs_arg("tag=t,socket=/s").unwrap(),
            FsArg::Socket {
                tag: "t".into(),
                socket: "/s".into()
            }
        );
        assert_eq!(
            fs_arg(&format!("tag=t,dir={d},ro")).unwrap(),
            FsArg::Dir {
                tag: "t".into(),
                dir: dir.clone(),
                read_only: true
            }
        );
        for (bad, says) in [
            ("socket=/s".to_string(), "tag=TAG is required"),
            ("tag=t".to_string(), "one of socket=PATH and dir=DIR"),
            (
                format!("tag=t,socket=/s,dir={d}"),
                "one of socket=PATH and dir=DIR",
            ),
            ("tag=t,socket=/s,ro".to_string(), "ro applies to dir="),
            (
                "tag=t,dir=/nonexistent-dir".to_string(),
                "is not a directory",
            ),
            (format!("tag={},dir={d}", "x".repeat(37)), "1 to 36 bytes"),
            ("tag=t,cache=always".to_string(), "expected tag=TAG"),
        ] {
            let e = fs_arg(&bad).unwrap_err();
            assert_eq!(e.code, 2, "{bad}");
            assert!(e.message.contains(says), "{bad}: {}", e.message);
        }
    }
}

#[cfg(test)]
mod reset_tests {
    #[test]
    fn an_unreported_reset_says_how_it_came() {
        // The testbed's signature (husk_tests::testbed) reads these words.
        let said = super::unreported_reset(Some(husk_vmm::RESET_TRIPLE_FAULT));
        assert!(said.contains("triple fault (KVM_EXIT_SHUTDOWN)"), "{said}");
        assert!(!super::unreported_reset(None).contains("came by"));
    }
}
