//! `husk vmm` with the project's Linux guest: booted through the API alone,
//! paused and resumed, stopped with SendCtrlAltDel, and booted from a
//! config file.

use husk_tests::vmm_process::VmmProcess;
use husk_tests::{guest_artifacts, require_linux_kvm};
use husk_wire::cmdline::encode_command;
use std::path::PathBuf;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

fn boot_args(argv: &[&str]) -> String {
    format!(
        "console=ttyS0 reboot=k panic=1 quiet husk.cmd={}",
        encode_command(argv)
    )
}

fn scratch_root(dir: &tempfile::TempDir) -> PathBuf {
    husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4")
}

#[test]
fn api_boot_pause_resume_and_ctrl_alt_del() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = scratch_root(&dir);
    let vmm = VmmProcess::start(&husk_tests::husk::binary(), dir.path(), &[]);
    let script = "i=0; while true; do i=$((i+1)); echo tick$i; sleep 0.1; done";
    vmm.configure(
        &guest_artifacts().vmlinux,
        &boot_args(&["sh", "-c", script]),
        &root,
        128,
    );
    assert_eq!(vmm.start_instance().0, 204);
    assert!(vmm.wait_for_output("tick3\n", TIMEOUT), "{}", vmm.output());
    assert_eq!(vmm.req("GET", "/", "").1["state"], "Running");

    assert_eq!(vmm.req("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    let frozen = vmm.output();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(vmm.output(), frozen, "the guest printed while paused");
    assert_eq!(vmm.req("PATCH", "/vm", r#"{"state":"Resumed"}"#).0, 204);
    let n = frozen.matches("tick").count();
    assert!(
        vmm.wait_for_output(&format!("tick{}\n", n + 3), TIMEOUT),
        "no progress after resume: {}",
        vmm.output()
    );

    // Ctrl-Alt-Del: the init stops the command (SIGTERM, then SIGKILL
    // after 3 s), flushes, reports its status, and husk exits.
    assert_eq!(
        vmm.req("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#)
            .0,
        204
    );
    let (code, out) = vmm.wait(Duration::from_secs(20));
    assert!(code == Some(143) || code == Some(137), "{code:?}: {out}");
}

#[test]
fn api_boot_reads_serial_output_and_exit_status() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = scratch_root(&dir);
    let vmm = VmmProcess::start(&husk_tests::husk::binary(), dir.path(), &[]);
    vmm.configure(
        &guest_artifacts().vmlinux,
        &boot_args(&["sh", "-c", "echo booted by the api; exit 3"]),
        &root,
        256,
    );
    assert_eq!(vmm.start_instance().0, 204);
    let (code, out) = vmm.wait(TIMEOUT);
    assert!(out.contains("booted by the api\n"), "{out}");
    assert_eq!(code, Some(3), "{out}");
}

#[test]
fn config_file_boot() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = scratch_root(&dir);
    let config = dir.path().join("vm.json");
    let data = dir.path().join("data.img");
    std::fs::write(&data, vec![0u8; 1 << 20]).unwrap();
    let file = serde_json::json!({
        "boot-source": {"kernel_image_path": guest_artifacts().vmlinux,
                        "boot_args": boot_args(&["sh", "-c", "cat /sys/block/vdb/size; nproc"])},
        "drives": [
            {"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false},
            {"drive_id": "data", "path_on_host": data, "is_root_device": false, "is_read_only": true}
        ],
        "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
    });
    std::fs::write(&config, file.to_string()).unwrap();
    // The small executable a Firecracker user runs (`husk vmm` is the same
    // code, booted through the API by the tests above).
    let mut cmd = std::process::Command::new(husk_tests::husk::vmm_binary());
    cmd.args(["--no-api", "--config-file"]).arg(&config);
    // A reset ends husk-vmm with 0, as Firecracker; only its log says
    // whether the guest asked for it or triple-faulted (the testbed's).
    let log = dir.path().join("vmm.log");
    cmd.env("HUSK_LOG", &log).env("HUSK_LOG_LEVEL", "warning");
    let out = husk_tests::process::run(cmd, TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    if out.stdout != "2048\n2\n" {
        let log = std::fs::read_to_string(&log).unwrap_or_default();
        husk_tests::testbed::flag(&out.stderr, &log);
        panic!("stdout {:?}; the VMM's log: {log}", out.stdout);
    }
}

/// A guest that triple-faults (kvm_pvm cannot run it, hardware KVM can)
/// ends `husk-vmm` as any reset does, with 0 as Firecracker gives, and the
/// log names the triple fault; the VMM leaves no file but the log it was
/// told to write.
#[test]
fn a_triple_fault_ends_husk_vmm_with_0_and_says_so() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    std::fs::write(&kernel, husk_tests::null_guest::triple_fault_elf()).unwrap();
    let config = dir.path().join("vm.json");
    let log = dir.path().join("vmm.log");
    let file = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
        "logger": {"log_path": log, "level": "Warning"},
    });
    std::fs::write(&config, file.to_string()).unwrap();
    let mut cmd = std::process::Command::new(husk_tests::husk::vmm_binary());
    cmd.args(["--no-api", "--config-file"]).arg(&config);
    let out = husk_tests::process::run(cmd, TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout.as_bytes(), husk_tests::null_guest::LINE);
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("triple fault"), "{logged}");
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(left.len(), 3, "{left:?}");
}

/// `husk-vmm --jail ... --cgroup FILE=VALUE`: the VMM and its keeper run in
/// a cgroup v2 of their own under `--parent-cgroup`, with the limits
/// written, and the guest's status comes through; the next jailed VMM
/// under the same parent removes the empty cgroup the first one left.
#[test]
fn a_jailed_vmm_runs_in_a_cgroup_with_its_limits() {
    require_linux_kvm();
    // L1 mounts no cgroup v2 of its own (a host's init does).
    husk_compare::runner::ensure_cgroup2();
    let parent = format!("husk-e2e-{}", std::process::id());
    let jailed = |dir: &std::path::Path| {
        let guest = husk_tests::null_guest::elf(true, Some(7));
        std::fs::write(dir.join("guest.elf"), guest).unwrap();
        let dir = dir.to_str().unwrap();
        let args = [
            "--jail",
            dir,
            "--uid",
            "65534",
            "--gid",
            "65534",
            "--new-netns",
            "--parent-cgroup",
            &parent,
            "--cgroup",
            "memory.max=300M",
            "--cgroup",
            "pids.max=64",
        ];
        VmmProcess::start_jailed(&husk_tests::husk::vmm_binary(), dir.as_ref(), &args)
    };
    let parent_dir = std::path::Path::new("/sys/fs/cgroup").join(&parent);
    let first_dir = tempfile::tempdir().unwrap();
    let first = jailed(first_dir.path());
    let keeper = first.pid();
    let leaf = parent_dir.join(format!("husk-vm-{keeper}"));
    let read = |f: &str| {
        std::fs::read_to_string(leaf.join(f))
            .unwrap_or_else(|e| panic!("{}: {e}", leaf.join(f).display()))
    };
    assert_eq!(read("memory.max").trim(), (300u64 << 20).to_string());
    assert_eq!(read("pids.max").trim(), "64");
    let procs: Vec<u32> = read("cgroup.procs")
        .lines()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(procs.len(), 2, "the keeper and the VMM: {procs:?}");
    assert!(procs.contains(&keeper), "{procs:?}");
    let boot = r#"{"kernel_image_path": "/guest.elf", "boot_args": "console=ttyS0"}"#;
    assert_eq!(first.req("PUT", "/boot-source", boot).0, 204);
    assert_eq!(first.start_instance().0, 204);
    let (code, out) = first.wait(TIMEOUT);
    assert_eq!(code, Some(7), "{out}");
    assert_eq!(read("cgroup.procs"), "", "a process outlived the VMM");

    let second_dir = tempfile::tempdir().unwrap();
    let second = jailed(second_dir.path());
    let second_leaf = parent_dir.join(format!("husk-vm-{}", second.pid()));
    let pruned = !leaf.exists();
    // SAFETY: kill(2) on the keeper this test started.
    unsafe { libc::kill(second.pid() as i32, libc::SIGTERM) };
    let (code, out) = second.wait(TIMEOUT);
    let _ = std::fs::remove_dir(&second_leaf);
    let _ = std::fs::remove_dir(&leaf);
    let _ = std::fs::remove_dir(&parent_dir);
    assert!(pruned, "the first VMM's empty cgroup stayed");
    assert_eq!(code, Some(143), "{out}");
}
