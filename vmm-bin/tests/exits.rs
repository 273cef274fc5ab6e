//! Every way a guest ends ends the `husk-vmm` process, with the status
//! Firecracker would give, and leaves nothing behind: no API socket, no
//! file the VMM made, no process (natively, with null guests). How fast
//! each is belongs to benches/vmm-startup, not here.
//!
//! A triple fault is in the e2e tests (`exits::`: kvm_pvm cannot run the
//! guest that makes one), and so are a Linux guest's own ways (a `panic=1`
//! reboot, Ctrl-Alt-Del through its init: `api::`, `fault::`).

use husk_tests::null_guest;
use husk_tests::process::Finished;
use husk_tests::vmm_process::VmmProcess;
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");
const BOUND: Duration = Duration::from_secs(20);

/// The names in `dir`.
fn entries(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A kernel and a root disk in a fresh directory.
fn guest(elf: Vec<u8>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("guest.elf"), elf).unwrap();
    std::fs::write(dir.path().join("root.img"), [0u8; 4096]).unwrap();
    dir
}

/// `husk-vmm --no-api --config-file` for the guest in `dir` (the config
/// written there).
fn from_file(dir: &Path) -> Command {
    let config = dir.join("vm.json");
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": dir.join("guest.elf"), "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": dir.join("root.img"),
            "is_root_device": true, "is_read_only": false}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let mut cmd = Command::new(VMM);
    cmd.args(["--allow-kvm-pvm", "--no-api", "--config-file"])
        .arg(&config);
    cmd
}

/// Boots `elf` from a config file, no API; checks the directory holds
/// only what the test and the config put there afterwards.
fn boot_from_file(elf: Vec<u8>) -> Finished {
    let dir = guest(elf);
    let cmd = from_file(dir.path());
    let before = entries(dir.path());
    let out = husk_tests::process::run(cmd, BOUND);
    assert_eq!(entries(dir.path()), before, "the VMM left files behind");
    out
}

/// Boots `elf` through the API until it printed `first`, ends it with
/// `end`, and gives the exit code once the VMM is gone (within `bound`),
/// after checking it left its socket and nothing else behind.
fn end_through_api(
    elf: Vec<u8>,
    first: &str,
    end: impl FnOnce(&VmmProcess),
    bound: Duration,
) -> Option<i32> {
    let dir = guest(elf);
    let dir = dir.path();
    let before = entries(dir);
    let vmm = VmmProcess::start_executable(Path::new(VMM), dir, &["--allow-kvm-pvm"]);
    vmm.configure(
        &dir.join("guest.elf"),
        "console=ttyS0",
        &dir.join("root.img"),
        128,
    );
    assert_eq!(vmm.start_instance().0, 204);
    assert!(vmm.wait_for_output(first, BOUND));
    end(&vmm);
    let (code, _) = vmm.wait(bound);
    assert!(!dir.join("api.sock").exists(), "the API socket was left");
    assert_eq!(entries(dir), before, "the VMM left files behind");
    code
}

#[test]
fn a_reset_through_the_i8042_exits_0() {
    let out = boot_from_file(null_guest::elf(true, None));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout.as_bytes(), null_guest::LINE);
}

#[test]
fn a_status_on_husks_port_is_the_exit_status() {
    let out = boot_from_file(null_guest::elf(true, Some(42)));
    assert_eq!(out.code, Some(42), "{}", out.describe());
}

#[test]
fn ctrl_alt_del_through_the_api_ends_a_guest_that_resets_on_it() {
    let press = |vmm: &VmmProcess| {
        let (status, body) = vmm.req("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#);
        assert_eq!(status, 204, "{body}");
    };
    let code = end_through_api(
        null_guest::ctrl_alt_del_elf(true),
        "husk null guest\n",
        press,
        BOUND,
    );
    assert_eq!(code, Some(0));
}

fn sigterm(vmm: &VmmProcess) {
    // SAFETY: kill(2) on the test's own child, not yet reaped.
    unsafe { libc::kill(vmm.pid() as i32, libc::SIGTERM) };
}

/// SIGTERM asks the guest to stop (Ctrl-Alt-Del, so its disks get
/// flushed); a guest that does stops the VMM at once, with 128 + 15.
#[test]
fn sigterm_stops_a_guest_that_listens_with_143() {
    let code = end_through_api(
        null_guest::ctrl_alt_del_elf(true),
        "husk null guest\n",
        sigterm,
        BOUND,
    );
    assert_eq!(code, Some(143));
}

/// A guest that ignores the request would get a grace period; a second
/// SIGTERM ends the VM at once.
#[test]
fn a_second_sigterm_stops_a_guest_that_does_not_listen() {
    let twice = |vmm: &VmmProcess| {
        sigterm(vmm);
        std::thread::sleep(Duration::from_millis(100));
        sigterm(vmm);
    };
    let code = end_through_api(
        null_guest::ticker_elf(true),
        "xxx",
        twice,
        Duration::from_secs(5),
    );
    assert_eq!(code, Some(143));
}

/// The stop signals' thread runs under its own filter: with `poll` taken
/// out of the lists (it is in no other thread's of this VM), its first wait
/// stops the VM, and the VMM says which thread made which call.
#[test]
fn a_helper_threads_forbidden_call_ends_the_vmm_naming_it() {
    let dir = guest(null_guest::ticker_elf(true));
    let mut cmd = from_file(dir.path());
    cmd.env("HUSK_SECCOMP_DENY", "poll");
    let out = husk_tests::process::run(cmd, BOUND);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        out.stderr.contains("a helper thread (stop signals or console input) made a system call outside its filter: poll"),
        "{}",
        out.describe()
    );
}
