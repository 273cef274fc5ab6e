//! How a workload script runs in each environment. Every environment runs
//! the same `husk-bench` binary from the same image:
//! - native: the host's copy of the binary, in a host work directory;
//! - crun: `crun run` of the image unpacked into an OCI bundle, the work
//!   directory bind-mounted at /work, sharing the host's network stack (as
//!   `docker --net=host`: no veth pair to set up);
//! - husk: `husk run --rm` of the image, a disk image file as the /work
//!   volume, a TAP for the network;
//! - qemu: QEMU `-M microvm` booting the project's guest (whose root
//!   filesystem carries the same binary), the same kind of disk mounted at
//!   /work (a directory: virtio-fs through the same virtiofsd), a TAP.
//!
//! A script is a `sh -c` body; its `op=` lines (husk-bench's output) are
//! what the workloads parse.

use crate::results::Env;
use crate::Error;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// QEMU `-M microvm` as the peer VMM: no firmware option ROMs, RTC or
/// ACPI (so the kernel takes `virtio_mmio.device=` from the command line),
/// no default devices, the serial console on stdio, exit instead of reboot.
pub const QEMU_MICROVM_ARGS: &[&str] = &[
    "-M",
    "microvm,acpi=off,x-option-roms=off,rtc=off",
    "-enable-kvm",
    "-cpu",
    "host",
    "-nodefaults",
    "-no-user-config",
    "-display",
    "none",
    "-no-reboot",
    "-serial",
    "stdio",
];

/// Where the guest-side scripts find the tool.
pub const TOOL_IN_IMAGE: &str = "/usr/bin/husk-bench";

/// What a launch needs besides the script.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// A disk mounted (or a directory) at /work for this instance.
    pub disk: Option<PathBuf>,
    /// The TAP this instance's network uses (VMs only).
    pub tap: Option<Tap>,
    /// vCPUs for a VM (0 or 1: one).
    pub cpus: u32,
    /// Run the script in the applications' image ([`Apps`]) instead of
    /// the bench image: crun its bundle, husk the image, QEMU's guest
    /// its tree (mounted read-only and chrooted into, since the project's
    /// guest root does not carry the applications). Native runs the host's.
    pub apps: bool,
}

/// The applications' image (Debian's Redis and MariaDB servers with their
/// libraries, on busybox: scripts/build-guest) as each environment takes
/// it.
#[derive(Debug, Clone)]
pub struct Apps {
    pub image: PathBuf,
    /// Its crun bundle, when crun is present.
    pub bundle: Option<PathBuf>,
    /// Its tree as an ext4 disk, when QEMU is present.
    pub disk: Option<PathBuf>,
}

/// A host TAP with its two addresses.
#[derive(Debug, Clone)]
pub struct Tap {
    pub name: String,
    pub host_ip: String,
    pub guest_ip: String,
}

impl Tap {
    /// Creates it (root and `ip` needed); removed by [`Tap::remove`].
    pub fn create(name: &str, subnet: u8) -> Result<Tap, Error> {
        let tap = Tap {
            name: name.into(),
            host_ip: format!("10.0.{subnet}.1"),
            guest_ip: format!("10.0.{subnet}.2"),
        };
        let _ = Command::new("ip")
            .args(["link", "del", name])
            .stderr(Stdio::null())
            .status();
        for args in [
            vec!["tuntap", "add", "dev", name, "mode", "tap"],
            vec!["addr", "add", &format!("{}/24", tap.host_ip), "dev", name],
            vec!["link", "set", name, "up"],
        ] {
            let st = Command::new("ip")
                .args(&args)
                .status()
                .map_err(|e| Error::Tool(format!("ip (iproute2): {e}")))?;
            if !st.success() {
                return Err(Error::Tool(format!("ip {}: failed", args.join(" "))));
            }
        }
        Ok(tap)
    }

    pub fn remove(&self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Everything the environments share.
#[derive(Debug, Clone)]
pub struct Setup {
    pub work: PathBuf,
    /// The husk binary (for `husk run`).
    pub husk: PathBuf,
    /// husk-bench for the host.
    pub tool: PathBuf,
    /// The bench image (an OCI layout with husk-bench in it).
    pub image: PathBuf,
    /// The crun bundle made from it, when crun is present.
    pub bundle: Option<PathBuf>,
    pub kernel: PathBuf,
    pub rootfs: PathBuf,
    pub qemu: Option<PathBuf>,
    pub firecracker: Option<PathBuf>,
    pub crun: Option<PathBuf>,
    /// The virtio-fs backend QEMU's shared directories use (husk finds
    /// its own the same way).
    pub virtiofsd: Option<PathBuf>,
    /// The applications' image, or why there is none.
    pub apps: Result<Apps, String>,
    /// The host's Redis, or why there is none.
    pub redis: Result<crate::apps::Redis, String>,
    /// The host's MariaDB server and sysbench, or why not.
    pub mariadb: Result<crate::apps::MariaDb, String>,
}

impl Setup {
    /// The applications' image, or why the workload is not measured.
    pub fn apps(&self) -> Result<&Apps, Error> {
        self.apps
            .as_ref()
            .map_err(|why| Error::NotMeasured(format!("skipped: {why}")))
    }
}

/// virtiofsd: `$HUSK_VIRTIOFSD`, where scripts/setup installs it, or PATH.
pub fn find_virtiofsd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HUSK_VIRTIOFSD") {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    Some(PathBuf::from("/usr/local/bin/virtiofsd"))
        .filter(|p| p.is_file())
        .or_else(|| which("virtiofsd"))
}

/// A program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Why `env` cannot run here, if it cannot.
pub fn unavailable(s: &Setup, env: Env) -> Option<String> {
    match env {
        Env::Native | Env::Husk => None,
        Env::Crun if s.crun.is_none() => Some("crun is not installed".into()),
        Env::Crun => None,
        Env::Qemu if s.qemu.is_none() => Some("qemu-system-x86_64 is not installed".into()),
        Env::Qemu => None,
        Env::Firecracker if s.firecracker.is_none() => {
            Some("firecracker is not installed (--firecracker PATH)".into())
        }
        Env::Firecracker => None,
    }
}

/// An OCI bundle for crun from the bench image: read-only root (so many
/// instances share it), /work bound per launch.
pub fn make_bundle(image: &Path, crun: &Path, dir: &Path) -> Result<PathBuf, Error> {
    let img = husk_image::Image::open(image).map_err(|e| Error::Tool(format!("image: {e}")))?;
    let root = dir.join("rootfs");
    img.unpack(&root, &mut |_| {})
        .map_err(|e| Error::Tool(format!("unpacking the image: {e}")))?;
    // The mount point for /work: the root is read-only when crun mounts.
    std::fs::create_dir_all(root.join("work")).map_err(|e| Error::io(&root, e))?;
    let st = Command::new(crun)
        .arg("spec")
        .current_dir(dir)
        .stdout(Stdio::null())
        .status()
        .map_err(|e| Error::Tool(format!("crun spec: {e}")))?;
    if !st.success() {
        return Err(Error::Tool("crun spec failed".into()));
    }
    Ok(dir.to_owned())
}

/// An image unpacked into an ext4 disk image at `disk`, for a QEMU guest
/// to mount read-only and chroot into.
pub fn make_image_disk(image: &Path, disk: &Path) -> Result<(), Error> {
    let img = husk_image::Image::open(image).map_err(|e| Error::Tool(format!("image: {e}")))?;
    let tree = disk.with_extension("tree");
    let _ = std::fs::remove_dir_all(&tree);
    img.unpack(&tree, &mut |_| {})
        .map_err(|e| Error::Tool(format!("unpacking the image: {e}")))?;
    let bytes = tree_bytes(&tree);
    // Room for ext4's own tables and the files' last blocks.
    let size = (bytes + bytes / 2 + (32 << 20)).next_multiple_of(1 << 20);
    let made = husk_image::mkfs::Ext4::new(size)
        .from_tree(&tree)
        .make(disk)
        .map_err(|e| Error::Tool(format!("{}: {e}", disk.display())));
    let _ = std::fs::remove_dir_all(&tree);
    made
}

/// The bytes of the regular files under `dir`.
fn tree_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => tree_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Writes the bundle's config.json for one launch (crun reads it at start).
fn crun_config(
    bundle: &Path,
    id: &str,
    script: &str,
    work: Option<&Path>,
) -> Result<PathBuf, Error> {
    let base = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&base).map_err(|e| Error::io(&base, e))?)
            .map_err(|e| Error::Tool(format!("{}: {e}", base.display())))?;
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["/bin/sh", "-c", script]);
    spec["root"]["readonly"] = serde_json::json!(true);
    if let Some(ns) = spec["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    if let Some(w) = work {
        if let Some(m) = spec["mounts"].as_array_mut() {
            m.push(serde_json::json!({
                "destination": "/work",
                "type": "bind",
                "source": w,
                "options": ["rbind", "rw"],
            }));
        }
    }
    // /tmp writable for scripts even with a read-only root.
    if let Some(m) = spec["mounts"].as_array_mut() {
        m.push(serde_json::json!({
            "destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
            "options": ["nosuid", "nodev", "mode=1777"],
        }));
    }
    let dir = bundle.join(format!("config-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap_or_default())
        .map_err(|e| Error::io(&path, e))?;
    Ok(path)
}

/// Starts `script` in `env`; stdout piped (the `op=` lines, for VMs mixed
/// with the console), stderr piped, stdin closed.
pub fn launch(s: &Setup, env: Env, id: &str, script: &str, needs: &Needs) -> Result<Child, Error> {
    let mut cmd = match env {
        Env::Native => {
            // The image's paths are not the host's: /work first (the
            // tool's host path may contain "/work" itself), then the tool.
            let script = script
                .replace("/work/", &format!("{}/", work_dir(needs, s).display()))
                .replace(TOOL_IN_IMAGE, &s.tool.display().to_string());
            let mut c = Command::new("/bin/sh");
            c.arg("-c").arg(script);
            c
        }
        Env::Crun => {
            let bundle = if needs.apps {
                s.apps()?.bundle.as_ref()
            } else {
                s.bundle.as_ref()
            };
            let bundle = bundle.ok_or_else(|| Error::Tool("no crun bundle".into()))?;
            let config = crun_config(bundle, id, script, needs.disk.as_deref())?;
            let mut c = Command::new(s.crun.as_ref().expect("checked by unavailable()"));
            c.args(["run", "--bundle"])
                .arg(bundle)
                .arg("--config")
                .arg(config)
                .arg(format!("husk-compare-{id}"));
            c
        }
        Env::Husk => {
            let mut c = Command::new(&s.husk);
            c.args(["run", "--rm"]);
            if let Some(d) = &needs.disk {
                c.arg("-v").arg(format!("{}:/work", d.display()));
            }
            // Only the TAP the workload asks for, as crun's container has
            // only what its config gives it (husk's default network would
            // add a bridge, a TAP and NAT to every figure).
            match &needs.tap {
                Some(t) => c
                    .arg("--net")
                    .arg(format!("tap={},ip={}/24", t.name, t.guest_ip)),
                None => c.args(["--network", "none"]),
            };
            if needs.cpus > 1 {
                c.arg("--cpus").arg(needs.cpus.to_string());
            }
            let image = if needs.apps {
                &s.apps()?.image
            } else {
                &s.image
            };
            c.arg(image)
                .args(["sh", "-c", script])
                .env("HUSK_IMAGE_CACHE", s.work.join("image-cache"))
                .env("HUSK_RUNTIME_DIR", s.work.join("runtime"));
            c
        }
        Env::Qemu => qemu_command(s, id, script, needs)?,
        Env::Firecracker => firecracker_command(s, id, script, needs)?,
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool(format!("starting {env:?}: {e}")))
}

/// The host directory that is /work for native runs.
fn work_dir(needs: &Needs, s: &Setup) -> PathBuf {
    needs.disk.clone().unwrap_or_else(|| s.work.join("native"))
}

/// Starts virtiofsd sharing `dir` on `socket` for one QEMU launch. It
/// exits when QEMU disconnects; a thread reaps it.
fn start_virtiofsd(s: &Setup, dir: &Path, socket: &Path) -> Result<(), Error> {
    let program = s
        .virtiofsd
        .as_ref()
        .ok_or_else(|| Error::NotMeasured("not measured: virtiofsd is not installed".into()))?;
    let _ = std::fs::remove_file(socket);
    let mut child = Command::new(program)
        .arg(format!("--socket-path={}", socket.display()))
        .arg(format!("--shared-dir={}", dir.display()))
        .args(["--sandbox=namespace", "--seccomp=kill", "--log-level=error"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(|e| Error::Tool(format!("{}: {e}", program.display())))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !socket.exists() {
        if child.try_wait().ok().flatten().is_some() || std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Tool(format!(
                "virtiofsd made no socket for {}",
                dir.display()
            )));
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    std::thread::spawn(move || child.wait());
    Ok(())
}

/// What a peer VMM's guest runs (the project's init, its root read-only):
/// the kernel command line's command for `script`, and the applications'
/// tree as a disk when it runs there.
struct GuestLine {
    /// `husk.cmd=...` and, with a TAP, the kernel's `ip=`.
    tail: String,
    image_disk: Option<PathBuf>,
}

fn guest_line(s: &Setup, script: &str, needs: &Needs) -> Result<GuestLine, Error> {
    let shared = needs.disk.as_deref().filter(|d| d.is_dir());
    let mut body = String::new();
    // The guest's root is read-only and has no /work: its /mnt serves.
    match (&needs.disk, shared) {
        (_, Some(_)) => body.push_str("mount -t virtiofs work /mnt && "),
        (Some(_), None) => body.push_str("mount -t ext4 /dev/vdb /mnt && "),
        (None, _) => {}
    }
    let image_disk = match (needs.apps, &needs.disk) {
        (false, _) => None,
        (true, Some(_)) => return Err(Error::Tool("a work disk and the apps' root".into())),
        (true, None) => Some(
            s.apps()?
                .disk
                .as_ref()
                .ok_or_else(|| Error::Tool("no disk of the apps image's tree".into()))?,
        ),
    };
    if image_disk.is_some() {
        // Its root read-only as the others' is, with a writable /tmp.
        body.push_str(
            "mount -t ext4 -o ro /dev/vdb /mnt && mount -t proc proc /mnt/proc && \
             mount -t devtmpfs dev /mnt/dev && mount -t tmpfs tmp /mnt/tmp && \
             chroot /mnt /bin/sh -c ",
        );
        body.push_str(&format!("'{}'", script.replace('\'', "'\\''")));
    } else {
        body.push_str(&script.replace("/work/", "/mnt/"));
    }
    body.push_str("; st=$?; sync; exit $st");
    let mut tail = String::from("husk.status=console husk.cmd=");
    tail.push_str(&husk_wire::cmdline::encode_command(&["sh", "-c", &body]));
    if let Some(t) = &needs.tap {
        tail.push_str(&format!(
            " ip={}::{}:255.255.255.0::eth0:off",
            t.guest_ip, t.host_ip
        ));
    }
    Ok(GuestLine {
        tail,
        image_disk: image_disk.cloned(),
    })
}

fn qemu_command(s: &Setup, id: &str, script: &str, needs: &Needs) -> Result<Command, Error> {
    let qemu = s.qemu.as_ref().expect("checked by unavailable()");
    let shared = needs.disk.as_deref().filter(|d| d.is_dir());
    let line = guest_line(s, script, needs)?;
    let image_disk = line.image_disk.as_ref();
    let cmdline = format!(
        "console=ttyS0 reboot=t panic=1 quiet root=/dev/vda ro {}",
        line.tail
    );
    let mut c = Command::new(qemu);
    c.args(QEMU_MICROVM_ARGS)
        .arg("-smp")
        .arg(needs.cpus.max(1).to_string())
        .args(["-m", "256", "-kernel"])
        .arg(&s.kernel)
        .arg("-append")
        .arg(cmdline)
        // The shared root is read-only for the guest: instances can share it.
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            s.rootfs.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"]);
    if let Some(dir) = shared {
        let socket = s.work.join(format!("virtiofsd-{id}.sock"));
        start_virtiofsd(s, dir, &socket)?;
        // vhost-user needs guest memory the backend can map.
        c.args(["-object", "memory-backend-memfd,id=mem,size=256M,share=on"])
            .args(["-machine", "memory-backend=mem"])
            .arg("-chardev")
            .arg(format!("socket,id=vfs,path={}", socket.display()))
            .args(["-device", "vhost-user-fs-device,chardev=vfs,tag=work"]);
    } else if let Some(d) = image_disk {
        c.arg("-drive")
            .arg(format!(
                "id=image,file={},format=raw,if=none,readonly=on",
                d.display()
            ))
            .args(["-device", "virtio-blk-device,drive=image"]);
    } else if let Some(d) = &needs.disk {
        c.arg("-drive")
            .arg(format!("id=work,file={},format=raw,if=none", d.display()))
            .args(["-device", "virtio-blk-device,drive=work"]);
    }
    if let Some(t) = &needs.tap {
        c.arg("-netdev")
            .arg(format!(
                "tap,id=n0,ifname={},script=no,downscript=no",
                t.name
            ))
            .args(["-device", "virtio-net-device,netdev=n0"]);
    }
    Ok(c)
}

/// Firecracker booting the same guest as QEMU from a config file, with no
/// API: the root read-only, the applications' tree or the work disk as a
/// second drive, the TAP. It has no virtio-fs, so a shared directory is
/// not measured. Its i8042 reset (`reboot=k`) ends the process; its own
/// log (errors only) goes to stdout with the console.
fn firecracker_command(s: &Setup, id: &str, script: &str, needs: &Needs) -> Result<Command, Error> {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAUNCHES: AtomicU64 = AtomicU64::new(0);
    let fc = s.firecracker.as_ref().expect("checked by unavailable()");
    if needs.disk.as_deref().is_some_and(Path::is_dir) {
        return Err(Error::NotMeasured(
            "not measured: Firecracker has no virtio-fs".into(),
        ));
    }
    let line = guest_line(s, script, needs)?;
    let mut drives = vec![
        serde_json::json!({"drive_id": "root", "path_on_host": s.rootfs,
        "is_root_device": true, "is_read_only": true}),
    ];
    if let Some(d) = &line.image_disk {
        drives.push(serde_json::json!({"drive_id": "image", "path_on_host": d,
            "is_root_device": false, "is_read_only": true}));
    } else if let Some(d) = &needs.disk {
        drives.push(serde_json::json!({"drive_id": "work", "path_on_host": d,
            "is_root_device": false, "is_read_only": false}));
    }
    let nets: Vec<serde_json::Value> = needs
        .tap
        .iter()
        .map(|t| serde_json::json!({"iface_id": "eth0", "host_dev_name": t.name}))
        .collect();
    // Firecracker adds root= and the virtio-mmio devices itself.
    let config = serde_json::json!({
        "boot-source": {"kernel_image_path": s.kernel,
                        "boot_args": format!("console=ttyS0 reboot=k panic=1 quiet {}", line.tail)},
        "drives": drives,
        "network-interfaces": nets,
        "machine-config": {"vcpu_count": needs.cpus.max(1), "mem_size_mib": 256},
    });
    // Instances of one id start together (density): each its own files.
    let n = LAUNCHES.fetch_add(1, Ordering::Relaxed);
    let path = s.work.join(format!("firecracker-{id}-{n}.json"));
    std::fs::write(&path, config.to_string()).map_err(|e| Error::io(&path, e))?;
    let sock = s.work.join(format!("firecracker-{id}-{n}.sock"));
    let _ = std::fs::remove_file(&sock);
    let mut c = Command::new(fc);
    c.arg("--no-api")
        .arg("--config-file")
        .arg(&path)
        .arg("--api-sock")
        .arg(&sock)
        .args(["--level", "Error"]);
    Ok(c)
}

/// A fresh ext4 disk image of `mib` for a VM's /work.
pub fn make_disk(path: &Path, mib: u64) -> Result<(), Error> {
    husk_image::mkfs::Ext4::new(mib << 20)
        .make(path)
        .map_err(|e| Error::Tool(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(work: &Path) -> Setup {
        Setup {
            work: work.into(),
            husk: "/h/husk".into(),
            tool: "/h/husk-bench".into(),
            image: "/g/husk-bench-image".into(),
            bundle: None,
            kernel: "/g/vmlinux".into(),
            rootfs: "/g/rootfs.ext4".into(),
            qemu: None,
            firecracker: Some("/fc/firecracker".into()),
            crun: None,
            virtiofsd: None,
            apps: Err("no apps".into()),
            redis: Err("no redis".into()),
            mariadb: Err("no mariadb".into()),
        }
    }

    fn config_of(c: &Command) -> serde_json::Value {
        let args: Vec<_> = c.get_args().collect();
        let at = args.iter().position(|a| *a == "--config-file").unwrap();
        let text = std::fs::read_to_string(args[at + 1]).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn firecracker_boots_the_guest_with_its_disk_and_tap_and_no_api() {
        let dir = tempfile::tempdir().unwrap();
        let s = setup(dir.path());
        let needs = Needs {
            disk: Some(dir.path().join("work.ext4")),
            tap: Some(Tap {
                name: "husk-cmp9".into(),
                host_ip: "10.0.69.1".into(),
                guest_ip: "10.0.69.2".into(),
            }),
            cpus: 2,
            apps: false,
        };
        let c = firecracker_command(&s, "fc-0", "true", &needs).unwrap();
        assert_eq!(c.get_program(), "/fc/firecracker");
        assert!(c.get_args().any(|a| a == "--no-api"));
        let v = config_of(&c);
        let line = v["boot-source"]["boot_args"].as_str().unwrap();
        assert!(line.contains("reboot=k") && line.contains("husk.status=console"));
        assert!(line.contains(" ip=10.0.69.2::10.0.69.1:255.255.255.0::eth0:off"));
        assert!(
            !line.contains("root="),
            "Firecracker adds root= itself: {line}"
        );
        let drives = v["drives"].as_array().unwrap();
        assert_eq!(drives.len(), 2);
        assert_eq!(drives[0]["is_read_only"], true);
        assert_eq!(drives[1]["is_read_only"], false);
        assert_eq!(v["network-interfaces"][0]["host_dev_name"], "husk-cmp9");
        assert_eq!(v["machine-config"]["vcpu_count"], 2);
        // Two launches of one id (density) get files of their own.
        let again = firecracker_command(&s, "fc-0", "true", &needs).unwrap();
        let path = |c: &Command| c.get_args().nth(2).unwrap().to_owned();
        assert_ne!(path(&c), path(&again));
    }

    #[test]
    fn a_shared_directory_is_not_measured_in_firecracker() {
        let dir = tempfile::tempdir().unwrap();
        let s = setup(dir.path());
        let needs = Needs {
            disk: Some(dir.path().to_owned()),
            ..Needs::default()
        };
        match firecracker_command(&s, "fc-1", "true", &needs) {
            Err(Error::NotMeasured(why)) => assert!(why.contains("virtio-fs"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
