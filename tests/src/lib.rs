//! Helpers shared by husk's end-to-end tests: where the guest artifacts are,
//! whether this host can boot Linux under KVM, and launchers for the VMMs
//! under test (QEMU `-M microvm` is the peer every husk figure is compared
//! against).

pub mod dns;
pub mod hostile_guest;
pub mod http;
pub mod husk;
pub mod null_guest;
pub mod podman;
pub mod process;
pub mod qemu;
pub mod registry;
pub mod systemd;
pub mod testbed;
pub mod vmm_process;

pub use husk_vmm::kvm_kind as kvm;

use std::path::PathBuf;

/// The guest kernel and root filesystem the project builds
/// (`scripts/build-guest`).
#[derive(Debug, Clone)]
pub struct GuestArtifacts {
    pub vmlinux: PathBuf,
    pub bzimage: PathBuf,
    pub rootfs_ext4: PathBuf,
}

/// `$HUSK_GUEST_DIR`, else `<workspace>/target/guest`.
pub fn guest_dir() -> PathBuf {
    std::env::var_os("HUSK_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .expect("the crate lives in the workspace")
                .join("target/guest")
        })
}

/// The built guest artifacts; panics with the command that builds them.
pub fn guest_artifacts() -> GuestArtifacts {
    let dir = guest_dir();
    let a = GuestArtifacts {
        vmlinux: dir.join("vmlinux"),
        bzimage: dir.join("bzImage"),
        rootfs_ext4: dir.join("rootfs.ext4"),
    };
    for p in [&a.vmlinux, &a.bzimage, &a.rootfs_ext4] {
        assert!(
            p.exists(),
            "{} is missing: build the guest with scripts/build-guest",
            p.display()
        );
    }
    a
}

/// A private copy of the project's root image in `dir` (guests mount it
/// read-write, so every boot gets its own).
pub fn scratch_rootfs(dir: &std::path::Path, name: &str) -> PathBuf {
    let copy = dir.join(name);
    std::fs::copy(guest_artifacts().rootfs_ext4, &copy)
        .unwrap_or_else(|e| panic!("copying the root image to {}: {e}", copy.display()));
    copy
}

/// Panics with a one-line explanation unless this host can boot Linux guests
/// under KVM. End-to-end tests call it first so they fail loudly, not hang.
pub fn require_linux_kvm() {
    let kind = kvm::detect();
    assert!(kind.runs_linux(), "{kind}");
}

/// Prints a test's panic on stderr the moment it happens, beside the
/// report libtest prints at the end of the run: when the testbed's L1 dies
/// later in the run, that report never comes, and neither would the reason.
pub fn report_panics_at_once() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let thread = std::thread::current();
        let line = format!(
            "\n[e2e] panic in {}: {info}\n[e2e] host: {}\n",
            thread.name().unwrap_or("a thread"),
            vitals()
        );
        // SAFETY: write(2) of a live buffer to fd 2, past libtest's
        // capture of print!.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        previous(info);
    }));
}

/// The host's `MemAvailable` (KiB), if /proc/meminfo says.
pub fn mem_available_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/meminfo")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The resident memory (`VmRSS`, KiB) of process `pid`, if it is there.
pub fn vm_rss_kib(pid: u32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// Memory, disk and load as a failing test saw them: a test that fails
/// for want of either says so.
fn vitals() -> String {
    let mem = mem_available_kib().map_or("?".to_string(), |kib| format!("{} MiB", kib / 1024));
    // SAFETY: statvfs fills the zeroed struct we pass from a NUL-terminated
    // path; both live for the call.
    let disk = unsafe {
        let mut st: libc::statvfs = std::mem::zeroed();
        match libc::statvfs(c".".as_ptr(), &mut st) {
            0 => format!("{} MiB", st.f_bavail * st.f_frsize / (1 << 20)),
            _ => "?".to_string(),
        }
    };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load: Vec<&str> = load.split_whitespace().take(3).collect();
    format!(
        "memory available {mem}, disk free {disk} (the working directory's filesystem), load {}",
        load.join(" ")
    )
}

/// Whether this host has an IPv4 default route (passt insists on one).
pub fn host_has_default_route() -> bool {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    // Destination and mask both 0.
    routes.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")
    })
}

/// The static busybox wherever PATH has it (L1 keeps it in its own bin
/// directory), for tests and benches that build an image.
pub fn busybox_on_path() -> PathBuf {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|d| d.join("busybox"))
        .find(|p| p.is_file())
        .expect("a static busybox on PATH")
}

/// Whether this machine is itself a virtual machine (the `hypervisor` CPU
/// flag): tests then size their workloads for nested virtualization.
pub fn host_is_a_guest() -> bool {
    std::fs::read_to_string("/proc/cpuinfo")
        .map(|c| {
            c.lines()
                .filter(|l| l.starts_with("flags"))
                .any(|l| l.split_whitespace().any(|f| f == "hypervisor"))
        })
        .unwrap_or(false)
}

/// Held by the tests that load the machine most (many VMs, long transfers),
/// so two of them never run at once: on a 2-CPU nested testbed, a pair of
/// them slowed guest boots past every deadline. Other tests still run beside.
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A panicking holder poisons it; the next test may still run.
    HEAVY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lower-case hex of `bytes`, as `sha256sum` prints a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
