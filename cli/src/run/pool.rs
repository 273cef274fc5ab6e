//! Pre-booted VMs for `husk run`: a template is a snapshot of a guest whose
//! agent has answered, made once per VM shape (kernel, guest rootfs,
//! vCPUs, memory, husk build) and cached like the images. A run restores
//! it instead of booting: its memory file is mapped private, so clones
//! share its page cache and copy only what they write.
//!
//! The run's own disks go in at restore: the template has empty stand-ins
//! with the same serials (`image`, `scratch`), the restore gives them the
//! run's files and tells the guest their size changed, and the agent waits
//! for a size before it mounts one. Nothing was cached from an empty disk,
//! so the guest reads the new one afresh. The vsock device gets the run's
//! socket; the agent's connection from the template is gone (the guest is
//! told), its listener is not. The host then sends the run's identity
//! (time, entropy, hostname).
//!
//! A run's NIC (a TAP on its bridge, or passt's socket) is given to the
//! clone with the run's MAC; the template booted without an address, and
//! the identity sets the MAC, address and route the kernel's `ip=` sets in
//! a booted VM. Templates are kept per NIC kind (TAP offloads are
//! negotiated at boot).
//!
//! Volumes keep their places (the agent finds them by number): a disk
//! image volume is an empty stand-in disk with the run's read-only bit,
//! given the run's file at restore; a shared directory (`-v DIR:/x`) is a
//! virtio-fs device that the template's guest probed but never mounted,
//! on a virtiofsd serving an empty directory, whose clone connects to the
//! run's virtiofsd instead. A template is made per volume layout. With a
//! share, the clone's memory is a copy of the template's (shared memory,
//! which virtiofsd maps), not a private mapping of its file.
//!
//! The pool is used with `HUSK_POOL=on` (off by default for now: see
//! `POOL_ENV`); runs with more than one NIC or with `--device-*` limits
//! boot. A template records the
//! husk that made it; `husk pool ls|rm` (pool_cmd.rs) shows and removes
//! them.

use super::plan::serial;
use crate::agent::{Client, Sinks};
use husk_vmm::snapshot::{NetOverride, Overrides, RestoreConfig, SnapshotPaths};
use husk_vmm::{Console, DiskConfig, Exit, NetHost, RunningVm, VmConfig, VsockConfig};
use husk_wire::agent::NetIdentity;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The environment variable that turns the pool on (`on`) or off (`off`,
/// the default for now). Clones meet the testbed's L2 corruption
/// (tests/testbed/README.md) as booted VMs do, and at 16 at once no more
/// often (`many-at-once husk-run 16 5`, 2026-12-06: 5 of 80 clones, 4 of
/// 80 booted VMs); but a full suite with the pool on by default had three
/// clones of its sequential runs meet it (two in one `husk compare`),
/// where the suite before had none. A clone takes ~3000 nested page
/// faults per run (its memory file is mapped in 4 KiB pages) where a
/// booted VM takes 26: the likely difference. `HUSK_POOL_MEMORY=copy`
/// takes those faults away (and costs more than it saves in L1,
/// docs/benchmarks.md); whether it spares clones the corruption is the
/// measurement before the pool is the default.
pub const POOL_ENV: &str = "HUSK_POOL";
/// How long the template's guest gets to boot and answer.
const TEMPLATE_DEADLINE: Duration = Duration::from_secs(120);
/// The template's empty disks every template has, by serial (those of
/// volumes come with the run's shape); each is `<serial>.img` in its
/// directory.
const STAND_INS: [&str; 2] = [serial::IMAGE, serial::SCRATCH];
/// A snapshot's files in its directory (a checkpoint's too).
pub const STATE: &str = "vm.state";
pub const MEM: &str = "vm.mem";
/// Which husk executable made a template (its path, size and time).
const ORIGIN: &str = "origin";

/// `$HUSK_POOL_DIR`, else `$XDG_CACHE_HOME/husk/pool`, else
/// `~/.cache/husk/pool`.
pub fn default_dir() -> PathBuf {
    husk_image::user_dir(
        |name| std::env::var_os(name),
        "HUSK_POOL_DIR",
        ("XDG_CACHE_HOME", "husk/pool"),
        ".cache/husk/pool",
        "/var/cache/husk/pool",
    )
}

/// Whether `HUSK_POOL` allows the pool.
pub fn enabled() -> Result<bool, String> {
    match std::env::var(POOL_ENV).as_deref() {
        // How clones map memory is checked with the pool, before a run.
        Ok("on") => memory_backing().map(|_| true),
        Err(_) | Ok("off") | Ok("") => Ok(false),
        Ok(other) => Err(format!("{POOL_ENV}={other}: on or off")),
    }
}

/// Why a template cannot serve this VM, if it cannot. `net` is what its
/// NIC must be given after the restore.
pub fn unpoolable(config: &VmConfig, net: Option<&NetIdentity>) -> Option<&'static str> {
    match (config.nets.len(), net) {
        (0, _) | (1, Some(_)) => {}
        (1, None) => return Some("its network interface has no address"),
        _ => return Some("it has more than one network interface"),
    }
    if let Err(why) = slots(config) {
        return Some(why);
    }
    if config.vsock.is_none() {
        return Some("it has no agent socket");
    }
    // A template's stand-in disks have none; the restore gives only files.
    if config.disks.iter().any(|d| d.read_write.is_limited()) {
        return Some("a disk has read or write limits (--device-*)");
    }
    None
}

/// What a template has in a volume's place (the agent finds volumes by
/// number: disk serial `volume<i>`, share tag `vol<i>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Slot {
    /// A disk; read-only or not is the device's (virtio-blk's RO bit is
    /// negotiated at boot).
    Disk {
        read_only: bool,
    },
    Share,
}

/// The run's volumes in order, as a template must have them.
fn slots(config: &VmConfig) -> Result<Vec<Slot>, &'static str> {
    let own = [serial::ROOTFS, serial::IMAGE, serial::SCRATCH];
    let disks = config
        .disks
        .iter()
        .filter(|d| !own.contains(&d.id.as_str()))
        .count();
    (0..disks + config.fs.len())
        .map(|i| {
            if let Some(d) = config.disks.iter().find(|d| d.id == serial::volume(i)) {
                Ok(Slot::Disk {
                    read_only: d.read_only,
                })
            } else if config
                .fs
                .iter()
                .any(|f| f.tag == serial::share(i) && f.id == f.tag)
            {
                Ok(Slot::Share)
            } else {
                Err("its volumes are not numbered as husk run numbers them")
            }
        })
        .collect()
}

/// A template on disk.
pub struct Template {
    dir: PathBuf,
}

impl Template {
    /// The template for `config`'s shape, made now if there is none.
    /// `cmdline` is the kernel command line every clone shares (the run's
    /// own hostname comes with its identity).
    pub fn for_config(root: &Path, config: &VmConfig, cmdline: &str) -> Result<Template, String> {
        let dir = root.join(key(config, cmdline)?);
        let template = Template { dir };
        if template.complete() {
            return Ok(template);
        }
        std::fs::create_dir_all(root).map_err(|e| format!("{}: {e}", root.display()))?;
        // One maker per shape; the others wait and take its template.
        let _lock = crate::lockfile::exclusive(&template.dir.with_extension("lock"))?;
        if !template.complete() {
            make(&template.dir, config, cmdline)?;
            prune(root, &template.dir);
        }
        Ok(template)
    }

    /// Deletes the template (clones running from it keep their mapping).
    pub fn remove(&self) {
        let _ = remove_snapshot(&self.dir);
    }

    fn complete(&self) -> bool {
        self.dir.join(STATE).is_file() && self.dir.join(MEM).is_file()
    }

    /// Restores a clone with the run's disks, socket and console, running.
    /// A stand-in the run has no file for stays the template's empty one
    /// (the snapshot names it where it was built). `before` runs between
    /// the build and the VM's threads.
    pub fn restore(
        &self,
        config: &VmConfig,
        before: Option<husk_vmm::BeforeThreads>,
    ) -> Result<RunningVm, RestoreFailure> {
        let mut disks: Vec<(String, PathBuf)> = config
            .disks
            .iter()
            .filter(|d| d.id != serial::ROOTFS)
            .map(|d| (d.id.clone(), d.path.clone()))
            .collect();
        for id in STAND_INS {
            if !disks.iter().any(|(d, _)| d == id) {
                disks.push((id.into(), stand_in_file(&self.dir, id)));
            }
        }
        let backing = memory_backing().map_err(RestoreFailure::Host)?;
        let mem = match backing {
            husk_vmm::snapshot::memory::Backing::Huge => {
                huge_copy(&self.dir).map_err(RestoreFailure::Host)?
            }
            _ => self.dir.join(MEM),
        };
        restore_as(&self.dir, config, disks, (mem, backing), before)
            .map_err(RestoreFailure::Template)
    }
}

/// Why a template was not restored.
#[derive(Debug)]
pub enum RestoreFailure {
    /// The host lacks what the run asked for (huge pages): the template is
    /// sound, and the run fails rather than boot against its settings.
    Host(String),
    /// The template cannot be restored (a next run makes a new one).
    Template(String),
}

/// The copy on hugetlbfs of the template in `dir`'s memory (made now if
/// there is none), once there are free pages for a clone's private
/// mapping of it, which reserves as many as the guest has. A shortage
/// that comes between this check and the mapping fails the restore with
/// the same words.
fn huge_copy(dir: &Path) -> Result<PathBuf, String> {
    let copy = husk_vmm::snapshot::hugetlb::copy_of(&dir.join(MEM), &huge_copy_name(dir)?)?;
    let len = std::fs::metadata(&copy)
        .map_err(|e| format!("{}: {e}", copy.display()))?
        .len();
    let need = len.div_ceil(2 << 20);
    let free = husk_vmm::snapshot::hugetlb::free_pages()?;
    if free < need {
        return Err(format!(
            "too few free 2 MiB huge pages: {free} free, a clone's memory takes {need} \
             (vm.nr_hugepages)"
        ));
    }
    Ok(copy)
}

/// `HUSK_POOL_MEMORY`: `map` (the default) maps a template's memory file
/// private, `copy` copies its data into anonymous memory, `huge` maps a
/// copy of it on hugetlbfs private (see
/// `husk_vmm::snapshot::memory::Backing`): trades of memory for nested
/// page faults, measured with `benches/run container-startup`.
fn memory_backing() -> Result<husk_vmm::snapshot::memory::Backing, String> {
    use husk_vmm::snapshot::memory::Backing;
    match std::env::var("HUSK_POOL_MEMORY").as_deref() {
        Err(_) | Ok("") | Ok("map") => Ok(Backing::Mapped),
        Ok("copy") => Ok(Backing::Copied),
        Ok("huge") => Ok(Backing::Huge),
        Ok(other) => Err(format!("HUSK_POOL_MEMORY={other}: map, copy or huge")),
    }
}

/// The name of the hugetlbfs copy of the snapshot in `dir`'s memory.
fn huge_copy_name(dir: &Path) -> Result<String, String> {
    let mem = dir.join(MEM);
    let m = std::fs::metadata(&mem).map_err(|e| format!("{}: {e}", mem.display()))?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    use std::os::unix::fs::MetadataExt;
    // The file itself (however its directory is named) and its version.
    (m.dev(), m.ino()).hash(&mut h);
    m.len().hash(&mut h);
    m.modified().ok().hash(&mut h);
    Ok(format!("husk-{:016x}.mem", h.finish()))
}

/// Removes the snapshot in `dir`, and the copy of its memory on hugetlbfs
/// if a run made one: that copy holds the host's huge pages until it is
/// removed.
pub fn remove_snapshot(dir: &Path) -> std::io::Result<()> {
    if let (Ok(mount), Ok(name)) = (husk_vmm::snapshot::hugetlb::mount(), huge_copy_name(dir)) {
        match std::fs::remove_file(mount.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::remove_dir_all(dir)
}

/// Restores the snapshot in `dir` (a template, or a checkpoint), running,
/// on `config`'s console, vsock socket and NICs (with their MACs), and
/// with `disks` (drive id → file) in place of the snapshot's, its memory
/// from `mem` (the snapshot's memory file, or its hugetlbfs copy) mapped
/// as `backing` says; `before` runs between the build and the VM's
/// threads.
pub fn restore_as(
    dir: &Path,
    config: &VmConfig,
    disks: Vec<(String, PathBuf)>,
    (mem, backing): (PathBuf, husk_vmm::snapshot::memory::Backing),
    before: Option<husk_vmm::BeforeThreads>,
) -> Result<RunningVm, String> {
    let restore = RestoreConfig {
        snapshot: SnapshotPaths {
            state: dir.join(STATE),
            mem,
        },
        console: config.console.clone(),
        stdin: config.stdin,
        allow_pvm: config.allow_pvm,
        track_dirty_pages: false,
        resume: true,
        memory: backing,
        overrides: Overrides {
            disks,
            vsock_uds: config.vsock.as_ref().map(|v| v.uds_path.clone()),
            fs: config
                .fs
                .iter()
                .map(|f| (f.id.clone(), f.socket.clone()))
                .collect(),
            nets: config
                .nets
                .iter()
                .map(|n| NetOverride {
                    id: n.id.clone(),
                    host: n.host.clone(),
                    mac: n.mac.unwrap_or_default(),
                })
                .collect(),
        },
    };
    husk_vmm::restore_with(&restore, None, before).map_err(|e| e.to_string())
}

/// The shape's name: what the template's guest was booted from. The husk
/// executable is part of it, so a rebuilt VMM or agent makes a new one.
fn key(config: &VmConfig, cmdline: &str) -> Result<String, String> {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let exe = std::env::current_exe().map_err(|e| format!("husk's own path: {e}"))?;
    let rootfs = config
        .disks
        .iter()
        .find(|d| d.id == serial::ROOTFS)
        .map(|d| d.path.clone())
        .ok_or("no guest root disk")?;
    for file in [&exe, &config.kernel, &rootfs] {
        let m = std::fs::metadata(file).map_err(|e| format!("{}: {e}", file.display()))?;
        file.hash(&mut h);
        m.len().hash(&mut h);
        m.modified().ok().hash(&mut h);
    }
    config.vcpus.hash(&mut h);
    config.mem_mib.hash(&mut h);
    cmdline.hash(&mut h);
    config.vsock.as_ref().map(|v| v.guest_cid).hash(&mut h);
    // A TAP's offloads are negotiated at boot: a clone keeps its
    // template's NIC kind.
    let nic = config.nets.first().map(|n| match n.host {
        NetHost::Tap(_) => "tap",
        NetHost::Stream(_) => "stream",
    });
    nic.hash(&mut h);
    slots(config)?.hash(&mut h);
    Ok(format!(
        "{}c-{}m-{:016x}",
        config.vcpus,
        config.mem_mib,
        h.finish()
    ))
}

/// This husk executable: its path on the first line, then its size and
/// time, which change when it is rebuilt or upgraded in place.
fn origin_of_this_husk() -> Result<String, String> {
    let exe = std::env::current_exe().map_err(|e| format!("husk's own path: {e}"))?;
    let m = std::fs::metadata(&exe).map_err(|e| format!("{}: {e}", exe.display()))?;
    let time = m
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos());
    Ok(format!("{}\n{} {time}\n", exe.display(), m.len()))
}

/// Removes the templates a former build of this same husk executable made
/// (an upgrade or a rebuild makes new ones; the old would stay on disk
/// forever), and those that say nothing of their maker (made before
/// templates did). Clones running from one keep their mapping.
fn prune(root: &Path, keep: &Path) {
    let Ok(ours) = origin_of_this_husk() else {
        return;
    };
    let our_exe = ours.lines().next().unwrap_or_default();
    let Ok(entries) = std::fs::read_dir(root) else {
        return;
    };
    for e in entries.flatten() {
        let dir = e.path();
        if dir == keep || !dir.join(STATE).is_file() {
            continue;
        }
        let stale = match std::fs::read_to_string(dir.join(ORIGIN)) {
            Ok(theirs) => theirs.lines().next() == Some(our_exe) && theirs != ours,
            Err(_) => true,
        };
        if stale {
            log::info!("pool: removing {}, made by a former husk", dir.display());
            let _ = remove_snapshot(&dir);
        }
    }
}

/// A template as `husk pool ls` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub name: String,
    /// Bytes its files take on disk (the memory file is sparse).
    pub disk_bytes: u64,
    pub made: Option<std::time::SystemTime>,
    /// The husk that made it: this one, a former build of it, or another.
    pub maker: Maker,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Maker {
    This,
    /// A former build of this executable (the next template made removes
    /// it).
    Former,
    Other(String),
    Unknown,
}

/// The templates in `root`, by name.
pub fn list(root: &Path) -> Result<Vec<Listed>, String> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("{}: {e}", root.display())),
    };
    let ours = origin_of_this_husk()?;
    let our_exe = ours.lines().next().unwrap_or_default().to_owned();
    let mut found: Vec<Listed> = entries
        .flatten()
        .filter(|e| e.path().join(STATE).is_file())
        .map(|e| {
            let dir = e.path();
            let maker = match std::fs::read_to_string(dir.join(ORIGIN)) {
                Ok(o) if o == ours => Maker::This,
                Ok(o) if o.lines().next() == Some(our_exe.as_str()) => Maker::Former,
                Ok(o) => Maker::Other(o.lines().next().unwrap_or_default().to_owned()),
                Err(_) => Maker::Unknown,
            };
            Listed {
                name: e.file_name().to_string_lossy().into_owned(),
                disk_bytes: disk_bytes(&dir),
                made: std::fs::metadata(dir.join(STATE))
                    .and_then(|m| m.modified())
                    .ok(),
                maker,
            }
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(found)
}

/// The blocks the files directly in `dir` take.
fn disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.blocks() * 512)
        .sum()
}

/// Removes template `name` from `root` (its clones keep their mapping).
pub fn remove(root: &Path, name: &str) -> Result<(), String> {
    let dir = root.join(name);
    let is_template = !name.is_empty()
        && !name.contains('/')
        && !name.starts_with('.')
        && dir.join(STATE).is_file();
    if !is_template {
        return Err(format!("no template {name:?} in {}", root.display()));
    }
    // Its lock file stays: a maker may hold it.
    remove_snapshot(&dir).map_err(|e| format!("{}: {e}", dir.display()))
}

/// Boots the template's guest with empty stand-in disks, waits for its
/// agent, and snapshots it into `dir` (made whole or not at all).
fn make(dir: &Path, config: &VmConfig, cmdline: &str) -> Result<(), String> {
    // One maker at a time (the template's lock): a name of its own would
    // only leave a crashed maker's leftovers for good (and a jailed run's
    // pid is 1 in its namespace).
    let build = dir.with_extension("build");
    let _ = std::fs::remove_dir_all(&build);
    std::fs::create_dir_all(&build).map_err(|e| format!("{}: {e}", build.display()))?;
    let made = boot_and_snapshot(&build, config, cmdline)
        .and_then(|()| {
            let origin = build.join(ORIGIN);
            std::fs::write(&origin, origin_of_this_husk()?)
                .map_err(|e| format!("{}: {e}", origin.display()))
        })
        .and_then(|()| std::fs::rename(&build, dir).map_err(|e| format!("{}: {e}", dir.display())));
    if made.is_err() {
        let _ = std::fs::remove_dir_all(&build);
    }
    made
}

fn stand_in_file(dir: &Path, id: &str) -> PathBuf {
    dir.join(format!("{id}.img"))
}

/// An empty disk file in `build` for drive `id`.
fn stand_in_disk(build: &Path, id: &str, read_only: bool) -> Result<DiskConfig, String> {
    let path = stand_in_file(build, id);
    std::fs::File::create(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(DiskConfig {
        path,
        read_only,
        id: id.into(),
        rate_limiter: None,
        read_write: Default::default(),
    })
}

fn boot_and_snapshot(build: &Path, config: &VmConfig, cmdline: &str) -> Result<(), String> {
    let rootfs = config
        .disks
        .iter()
        .find(|d| d.id == serial::ROOTFS)
        .ok_or("no guest root disk")?;
    let cid = config.vsock.as_ref().map_or(3, |v| v.guest_cid);
    let uds = build.join("v.sock");
    let slots = slots(config)?;
    let mut disks = vec![
        rootfs.clone(),
        stand_in_disk(build, serial::IMAGE, true)?,
        stand_in_disk(build, serial::SCRATCH, false)?,
    ];
    let mut shares = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        match slot {
            Slot::Disk { read_only } => {
                disks.push(stand_in_disk(build, &serial::volume(i), *read_only)?)
            }
            Slot::Share => shares.push(i),
        }
    }
    let (fs, _backends) = stand_in_shares(build, &shares)?;
    let template = VmConfig {
        kernel: config.kernel.clone(),
        vcpus: config.vcpus,
        mem_mib: config.mem_mib,
        cmdline: cmdline.to_owned(),
        disks,
        // The run's own NIC: its host side is live now, and the clones
        // replace it (without an address, the template sends nothing).
        nets: config.nets.clone(),
        vsock: Some(VsockConfig {
            guest_cid: cid,
            uds_path: uds.clone(),
            id: "vsock0".into(),
        }),
        fs,
        console: Console::File(build.join("console.log")),
        stdin: false,
        allow_pvm: config.allow_pvm,
        track_dirty_pages: false,
    };
    let vm = husk_vmm::start(&template, None).map_err(|e| e.to_string())?;
    let controls = vm.controls();
    let (thread, done) = super::wait_on_a_thread(vm);
    let alive = || !done.has_ended();
    let ready = Client::open_guarded(
        &uds,
        Instant::now() + TEMPLATE_DEADLINE,
        &alive,
        Sinks::discard(),
        controls.clone(),
    );
    let snapshot = ready.and_then(|client| {
        // The connection goes before the snapshot: a clone starts with
        // nothing but the agent's listener.
        drop(client);
        controls.pause();
        controls
            .snapshot(
                &SnapshotPaths {
                    state: build.join(STATE),
                    mem: build.join(MEM),
                },
                husk_vmm::snapshot::Kind::Full,
            )
            .map_err(|e| e.to_string())
    });
    controls.stop(Exit::Stopped(libc::SIGKILL));
    let _ = thread.join();
    snapshot.map_err(|e| {
        let console = std::fs::read_to_string(build.join("console.log")).unwrap_or_default();
        let lines: Vec<&str> = console.lines().collect();
        match &lines[lines.len().saturating_sub(5)..] {
            [] => e,
            tail => format!("{e}; guest console: {}", tail.join(" | ")),
        }
    })
}

/// The template's shares in the volume places `numbers`, each a virtiofsd
/// serving one empty directory read-only: the guest probes them at boot
/// (and reads their tags) but never mounts them, so a clone's new
/// virtiofsd starts them afresh. Their backends go when the template is
/// made.
fn stand_in_shares(
    build: &Path,
    numbers: &[usize],
) -> Result<(Vec<husk_vmm::FsConfig>, Vec<crate::virtiofsd::Backend>), String> {
    if numbers.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let empty = build.join("empty");
    std::fs::create_dir_all(&empty).map_err(|e| format!("{}: {e}", empty.display()))?;
    let mut shares = Vec::with_capacity(numbers.len());
    let mut backends = Vec::with_capacity(numbers.len());
    for &i in numbers {
        let tag = serial::share(i);
        let backend = crate::virtiofsd::start(&empty, true, build, &tag)?;
        shares.push(husk_vmm::FsConfig {
            socket: backend.socket.clone(),
            tag: tag.clone(),
            id: tag,
        });
        backends.push(backend);
    }
    Ok((shares, backends))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Made once per test: the key reads their sizes and times.
    fn files(dir: &Path) {
        for name in ["vmlinux", "rootfs.ext4", "image.erofs"] {
            std::fs::write(dir.join(name), name).unwrap();
        }
    }

    fn config(dir: &Path) -> VmConfig {
        let file = |name: &str| dir.join(name);
        VmConfig {
            kernel: file("vmlinux"),
            vcpus: 1,
            mem_mib: 256,
            cmdline: "console=ttyS0".into(),
            disks: vec![
                DiskConfig {
                    path: file("rootfs.ext4"),
                    read_only: true,
                    id: serial::ROOTFS.into(),
                    rate_limiter: None,
                    read_write: Default::default(),
                },
                DiskConfig {
                    path: file("image.erofs"),
                    read_only: true,
                    id: serial::IMAGE.into(),
                    rate_limiter: None,
                    read_write: Default::default(),
                },
            ],
            nets: Vec::new(),
            vsock: Some(VsockConfig {
                guest_cid: 3,
                uds_path: dir.join("v.sock"),
                id: "vsock0".into(),
            }),
            fs: Vec::new(),
            console: Console::Stdio,
            stdin: false,
            allow_pvm: false,
            track_dirty_pages: false,
        }
    }

    #[test]
    fn an_unaddressed_nic_or_misnumbered_volumes_boot_cold() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path());
        assert_eq!(unpoolable(&c, None), None);
        let mut nic = config(dir.path());
        nic.nets.push(husk_vmm::NetConfig {
            host: NetHost::Tap("tap0".into()),
            mac: Some([2, 0, 0, 0, 0, 1]),
            id: "eth0".into(),
            limits: Default::default(),
        });
        let addressed = NetIdentity {
            mac: [2, 0, 0, 0, 0, 1],
            address: "10.88.0.2".parse().unwrap(),
            prefix: 24,
            gateway: None,
        };
        assert_eq!(unpoolable(&nic, Some(&addressed)), None);
        assert_eq!(
            unpoolable(&nic, None),
            Some("its network interface has no address")
        );
        let misnumbered = Some("its volumes are not numbered as husk run numbers them");
        let mut volume = config(dir.path());
        volume.disks.push(volume_disk(dir.path(), 1, false));
        assert_eq!(unpoolable(&volume, None), misnumbered);
        volume.fs.push(share(dir.path(), 0));
        assert_eq!(unpoolable(&volume, None), None);
        let mut agentless = config(dir.path());
        agentless.vsock = None;
        assert_eq!(unpoolable(&agentless, None), Some("it has no agent socket"));
        let mut shares = config(dir.path());
        shares.fs = vec![share(dir.path(), 0), share(dir.path(), 1)];
        assert_eq!(unpoolable(&shares, None), None);
        shares.fs.remove(0);
        assert_eq!(unpoolable(&shares, None), misnumbered);
    }

    fn volume_disk(dir: &Path, i: usize, read_only: bool) -> DiskConfig {
        DiskConfig {
            path: dir.join(format!("v{i}.img")),
            read_only,
            id: serial::volume(i),
            rate_limiter: None,
            read_write: Default::default(),
        }
    }

    fn share(dir: &Path, i: usize) -> husk_vmm::FsConfig {
        husk_vmm::FsConfig {
            socket: dir.join(format!("vol{i}.sock")),
            tag: serial::share(i),
            id: serial::share(i),
        }
    }

    #[test]
    fn the_key_follows_the_shape_not_the_run() {
        let dir = tempfile::tempdir().unwrap();
        files(dir.path());
        let c = config(dir.path());
        let k = key(&c, "a").unwrap();
        assert!(k.starts_with("1c-256m-"), "{k}");
        // Another run's image and socket: the same template.
        let mut other_run = config(dir.path());
        other_run.disks[1].path = dir.path().join("other.erofs");
        other_run.vsock.as_mut().unwrap().uds_path = dir.path().join("w.sock");
        assert_eq!(key(&other_run, "a").unwrap(), k);
        // Another size or command line: another template.
        let mut bigger = config(dir.path());
        bigger.mem_mib = 512;
        assert_ne!(key(&bigger, "a").unwrap(), k);
        assert_ne!(key(&c, "b").unwrap(), k);
        // Shares: the template has as many, whatever their sockets.
        let mut shared = config(dir.path());
        shared.fs.push(share(dir.path(), 0));
        let one = key(&shared, "a").unwrap();
        assert_ne!(one, k);
        shared.fs[0].socket = dir.path().join("elsewhere.sock");
        assert_eq!(key(&shared, "a").unwrap(), one);
        shared.fs.push(share(dir.path(), 1));
        assert_ne!(key(&shared, "a").unwrap(), one);
        // Disk volumes: by number and read-only bit, not by file.
        let mut disk = config(dir.path());
        disk.disks.push(volume_disk(dir.path(), 0, true));
        let ro = key(&disk, "a").unwrap();
        disk.disks[2].path = dir.path().join("another.img");
        assert_eq!(key(&disk, "a").unwrap(), ro);
        disk.disks[2].read_only = false;
        assert_ne!(key(&disk, "a").unwrap(), ro);
    }

    #[test]
    fn a_former_build_of_this_husk_leaves_no_templates_behind() {
        let root = tempfile::tempdir().unwrap();
        let ours = origin_of_this_husk().unwrap();
        let exe = ours.lines().next().unwrap().to_owned();
        let template = |name: &str, origin: Option<&str>| {
            let d = root.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(STATE), "").unwrap();
            if let Some(o) = origin {
                std::fs::write(d.join(ORIGIN), o).unwrap();
            }
            d
        };
        let keep = template("new", Some(&ours));
        let same_build = template("same", Some(&ours));
        let rebuilt = template("rebuilt", Some(&format!("{exe}\n1 2\n")));
        let other_husk = template("other", Some("/opt/husk\n1 2\n"));
        let unknown = template("unknown", None);
        let not_a_template = root.path().join("lock-and-stuff");
        std::fs::create_dir_all(&not_a_template).unwrap();
        prune(root.path(), &keep);
        for (d, stays) in [
            (&keep, true),
            (&same_build, true),
            (&rebuilt, false),
            (&other_husk, true),
            (&unknown, false),
            (&not_a_template, true),
        ] {
            assert_eq!(d.exists(), stays, "{}", d.display());
        }
    }

    #[test]
    fn templates_are_listed_with_their_maker_and_removed_by_name() {
        let root = tempfile::tempdir().unwrap();
        assert_eq!(list(&root.path().join("none")).unwrap(), Vec::new());
        let ours = origin_of_this_husk().unwrap();
        let exe = ours.lines().next().unwrap().to_owned();
        for (name, origin) in [
            ("b-this", Some(ours.clone())),
            ("a-former", Some(format!("{exe}\n1 2\n"))),
            ("c-other", Some("/opt/husk\n1 2\n".to_owned())),
            ("d-unknown", None),
        ] {
            let d = root.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join(STATE), vec![7u8; 8192]).unwrap();
            if let Some(o) = origin {
                std::fs::write(d.join(ORIGIN), o).unwrap();
            }
        }
        std::fs::create_dir_all(root.path().join("e.build-1")).unwrap();
        let listed = list(root.path()).unwrap();
        let makers: Vec<(&str, &Maker)> =
            listed.iter().map(|l| (l.name.as_str(), &l.maker)).collect();
        assert_eq!(
            makers,
            [
                ("a-former", &Maker::Former),
                ("b-this", &Maker::This),
                ("c-other", &Maker::Other("/opt/husk".into())),
                ("d-unknown", &Maker::Unknown),
            ]
        );
        assert!(listed
            .iter()
            .all(|l| l.disk_bytes >= 8192 && l.made.is_some()));

        remove(root.path(), "b-this").unwrap();
        assert!(!root.path().join("b-this").exists());
        for bad in ["b-this", "e.build-1", "../x", "", "."] {
            let e = remove(root.path(), bad).unwrap_err();
            assert!(e.starts_with("no template"), "{bad}: {e}");
        }
    }

    #[test]
    fn pool_env_is_on_off_or_an_error() {
        // Only this test touches the variable.
        std::env::set_var(POOL_ENV, "off");
        assert_eq!(enabled(), Ok(false));
        std::env::set_var(POOL_ENV, "sometimes");
        assert!(enabled().unwrap_err().contains("on or off"));
        std::env::set_var(POOL_ENV, "on");
        assert_eq!(enabled(), Ok(true));
        std::env::remove_var(POOL_ENV);
        assert_eq!(enabled(), Ok(false));
    }
}
