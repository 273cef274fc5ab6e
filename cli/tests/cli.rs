//! The `husk` binary's own behaviour that needs no Linux guest: argument
//! errors and runtime errors (one line, the right exit status, no hang), and
//! a full boot of the null guest, which runs on any /dev/kvm.

use husk_tests::null_guest;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn husk(args: &[&str]) -> Output {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "husk {args:?} took too long"
    );
    out
}

/// `husk boot --allow-kvm-pvm --kernel K --rootfs R EXTRA...`
fn boot_null(k: &str, r: &str, extra: &[&str]) -> Output {
    let mut args = vec!["boot", "--allow-kvm-pvm", "--kernel", k, "--rootfs", r];
    args.extend_from_slice(extra);
    husk(&args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fake root disk: `husk boot` checks that the root image exists.
fn scratch() -> (tempfile::TempDir, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root.img");
    std::fs::write(&root, vec![0u8; 4096]).unwrap();
    let kernel = dir.path().join("null.elf");
    null_guest::write(&kernel, true, Some(7)).unwrap();
    let (k, r) = (kernel.display().to_string(), root.display().to_string());
    (dir, k, r)
}

fn assert_one_line_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "stderr: {err}");
    assert!(err.contains(needle), "expected {needle:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn null_guest_boots_and_its_status_is_the_exit_code() {
    let (_d, k, r) = scratch();
    let o = boot_null(&k, &r, &["--", "x"]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert_eq!(o.stdout, null_guest::LINE);
}

#[test]
fn missing_kernel_and_rootfs() {
    let (_d, k, r) = scratch();
    let o = husk(&["boot", "--kernel", "/nonexistent/vmlinux", "--rootfs", &r]);
    assert_one_line_error(&o, 1, "/nonexistent/vmlinux");
    let o = husk(&["boot", "--kernel", &k, "--rootfs", "/nonexistent/root.ext4"]);
    assert_one_line_error(&o, 1, "/nonexistent/root.ext4");
}

#[test]
fn a_file_that_is_not_a_kernel() {
    let (_d, _k, r) = scratch();
    let o = husk(&["boot", "--allow-kvm-pvm", "--kernel", &r, "--rootfs", &r]);
    assert_one_line_error(&o, 1, "neither an x86-64 ELF");
}

#[test]
fn bad_vcpu_and_memory_counts_are_usage_errors() {
    let (_d, k, r) = scratch();
    let o = boot_null(&k, &r, &["--cpus", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = boot_null(&k, &r, &["--cpus", "255"]);
    assert_one_line_error(&o, 2, "255 vCPUs requested");
    let o = boot_null(&k, &r, &["--memory", "4"]);
    assert_one_line_error(&o, 2, "too small");
    let o = boot_null(&k, &r, &["--memory", "100000000"]);
    assert_one_line_error(&o, 2, "more than this host has");
}

#[test]
fn memory_too_small_for_the_kernel() {
    // The null guest loads at 16 MiB: a 16 MiB guest cannot hold it.
    let (_d, k, r) = scratch();
    let o = boot_null(&k, &r, &["--memory", "16"]);
    assert_one_line_error(&o, 1, "does not fit in guest memory");
}

#[test]
fn kvm_pvm_is_refused_with_a_pointer_to_the_testbed() {
    let kind = husk_tests::kvm::detect_at(std::path::Path::new("/"));
    if kind != husk_tests::kvm::KvmKind::Pvm {
        return husk_skip::not_applicable("/dev/kvm is not kvm_pvm here");
    }
    let (_d, k, r) = scratch();
    let o = husk(&["boot", "--kernel", &k, "--rootfs", &r]);
    assert_one_line_error(&o, 1, "kvm_pvm");
    assert!(stderr(&o).contains("testbed"));
}

#[test]
fn console_to_a_file_and_off() {
    let (d, k, r) = scratch();
    let log = d.path().join("console.log");
    let spec = format!("file={}", log.display());
    let o = boot_null(&k, &r, &["--console", &spec]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
    assert_eq!(std::fs::read(&log).unwrap(), null_guest::LINE);
    let o = boot_null(&k, &r, &["--console", "off"]);
    assert_eq!(o.status.code(), Some(7));
    assert!(o.stdout.is_empty());
    let o = husk(&["boot", "--kernel", &k, "--rootfs", &r, "--console", "tty"]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn bad_disk_specs() {
    let (_d, k, r) = scratch();
    let o = boot_null(&k, &r, &["--disk", "/nonexistent.img"]);
    assert_one_line_error(&o, 1, "/nonexistent.img");
    let spec = format!("{r},rx");
    let o = boot_null(&k, &r, &["--disk", &spec]);
    assert_one_line_error(&o, 2, "unknown option");
}

/// A TAP for the test, removed on drop (needs root and /dev/net/tun).
struct TestTap(String);

impl TestTap {
    fn create(name: &str) -> Option<TestTap> {
        let ok = Command::new("ip")
            .args(["tuntap", "add", "dev", name, "mode", "tap"])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        ok.then(|| TestTap(name.to_owned()))
    }
}

impl Drop for TestTap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

#[test]
fn missing_or_busy_tap_is_a_clear_error() {
    let (_d, k, r) = scratch();
    let o = boot_null(&k, &r, &["--net", "tap=husknotap0"]);
    assert_one_line_error(&o, 1, "TAP device husknotap0 does not exist");
    let o = boot_null(&k, &r, &["--net", "mac=02:00:00:00:00:01"]);
    assert_one_line_error(&o, 2, "tap=NAME is required");
    let o = boot_null(&k, &r, &["--net", "tap=x, mac=zz"]);
    assert_one_line_error(&o, 2, "mac");

    let Some(tap) = TestTap::create("husktest-busy") else {
        return husk_skip::skip("the busy-TAP case: cannot create a TAP here");
    };
    let _held = husk_devices::virtio::net::Tap::open(&tap.0).expect("open the test TAP");
    let spec = format!("tap={}", tap.0);
    let o = boot_null(&k, &r, &["--net", &spec]);
    assert_one_line_error(&o, 1, "is in use");
}

#[test]
fn null_guest_boots_with_a_network_interface() {
    let Some(tap) = TestTap::create("husktest-ok") else {
        return husk_skip::skip("cannot create a TAP here");
    };
    let (_d, k, r) = scratch();
    let spec = format!("tap={},mac=02:aa:bb:cc:dd:ee", tap.0);
    let o = boot_null(&k, &r, &["--net", &spec]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
}

#[test]
fn vsock_specs_and_sockets() {
    let (d, k, r) = scratch();
    let o = boot_null(&k, &r, &["--vsock", "cid=2, uds=/tmp/x"]);
    assert_one_line_error(&o, 2, "cid must be");
    let o = boot_null(&k, &r, &["--vsock", "cid=3"]);
    assert_one_line_error(&o, 2, "uds=PATH");
    // A live socket at the path is refused; the null guest boots with a
    // fresh one, and the device removes it when the VM ends.
    let live = d.path().join("live.sock");
    let _listener = std::os::unix::net::UnixListener::bind(&live).unwrap();
    let spec = format!("cid=3,uds={}", live.display());
    let o = boot_null(&k, &r, &["--vsock", &spec]);
    assert_one_line_error(&o, 1, &live.display().to_string());
    let fresh = d.path().join("fresh.sock");
    let spec = format!("cid=3,uds={}", fresh.display());
    let o = boot_null(&k, &r, &["--vsock", &spec]);
    assert_eq!(o.status.code(), Some(7), "{}", stderr(&o));
    assert!(!fresh.exists(), "the vsock socket was left behind");
}

#[test]
fn husk_log_writes_the_vmm_log() {
    let (d, k, r) = scratch();
    let log = d.path().join("husk.log");
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["boot", "--allow-kvm-pvm", "--kernel", &k, "--rootfs", &r])
        .env("HUSK_LOG", &log)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(7),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("[INFO] starting a VM"), "{text:?}");
}

#[test]
fn run_refuses_missing_and_tampered_images_before_booting() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let run = |image: &str| {
        Command::new(env!("CARGO_BIN_EXE_husk"))
            .args(["run", "--rm", image, "true"])
            .env("HUSK_IMAGE_CACHE", &cache)
            .env("HUSK_RUNTIME_DIR", dir.path().join("run"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let missing = dir.path().join("no-such-image");
    assert_one_line_error(&run(missing.to_str().unwrap()), 1, "no-such-image");

    let image = dir.path().join("image");
    let built = husk(&["image", "build-test", image.to_str().unwrap()]);
    assert!(built.status.success(), "{}", stderr(&built));
    // Flip a byte in the biggest blob: a layer.
    let blobs = image.join("blobs/sha256");
    let layer = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let digest = layer.file_name().unwrap().to_str().unwrap().to_owned();
    let out = run(image.to_str().unwrap());
    assert_one_line_error(&out, 1, "corrupt");
    assert!(
        stderr(&out).contains(&digest),
        "names the blob: {}",
        stderr(&out)
    );
}

/// A vCPU thread's system call outside its seccomp filter does not run and
/// stops the VM naming it: `HUSK_SECCOMP_DENY=ioctl` takes ioctl out of
/// the list, so the first KVM_RUN is refused.
#[test]
fn a_forbidden_system_call_stops_the_vm_naming_it() {
    let (_d, k, r) = scratch();
    let deny = |calls: &str| {
        Command::new(env!("CARGO_BIN_EXE_husk"))
            .args(["boot", "--allow-kvm-pvm", "--kernel", &k, "--rootfs", &r])
            .env("HUSK_SECCOMP_DENY", calls)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap()
    };
    let o = deny("ioctl");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("outside its filter: ioctl (number 16)"),
        "{err}"
    );
    assert!(o.stdout.is_empty(), "the guest ran: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // The device event loop has a filter of its own.
    let o = deny("epoll_wait,epoll_pwait");
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the device event loop made a system call outside its filter: epoll_"),
        "{err}"
    );
    // A name that is no system call is refused before the VM starts.
    assert_one_line_error(&deny("nosuchcall"), 1, "nosuchcall");
}

/// The report thread (SIGUSR1) runs under a filter of its own: with
/// getdents64 taken out of it, the report it prints for a running guest
/// stops the VM naming the thread and the call.
#[test]
fn the_report_threads_forbidden_call_stops_the_vm_naming_it() {
    let (dir, _, r) = scratch();
    let kernel = dir.path().join("ticker.elf");
    std::fs::write(&kernel, null_guest::ticker_elf(true)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.args(["boot", "--allow-kvm-pvm", "--kernel"])
        .arg(&kernel)
        .args(["--rootfs", &r])
        .env("HUSK_SECCOMP_DENY", "report:getdents64");
    let running = husk_tests::process::Running::spawn(cmd);
    // SIGUSR1 ends a process that does not catch it: wait for the handler.
    let caught = |pid: i32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("SigCgt:"))
            .and_then(|m| u64::from_str_radix(m.trim(), 16).ok())
            .is_some_and(|m| m & (1 << (libc::SIGUSR1 - 1)) != 0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !caught(running.pid()) {
        assert!(Instant::now() < deadline, "no SIGUSR1 handler");
        std::thread::sleep(Duration::from_millis(10));
    }
    running.signal(libc::SIGUSR1);
    let out = running.finish(Duration::from_secs(20));
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains(
            "the report thread (SIGUSR1) made a system call outside its filter: getdents64"
        ),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());
}
