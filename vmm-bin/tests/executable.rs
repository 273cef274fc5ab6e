//! The `husk-vmm` executable on its own (natively, with the null guest):
//! the API and the config file boot a VM, as `husk vmm` does (whose tests,
//! in the CLI's, cover the API at length), and its own command line is its
//! own.

use husk_tests::null_guest;
use husk_tests::vmm_process::VmmProcess;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const VMM: &str = env!("CARGO_BIN_EXE_husk-vmm");

#[test]
fn the_api_boots_a_guest_and_the_exit_status_comes_through() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    std::fs::write(&kernel, null_guest::elf(true, Some(7))).unwrap();
    let root = dir.path().join("root.img");
    std::fs::write(&root, [0u8; 4096]).unwrap();
    let vmm = VmmProcess::start_executable(Path::new(VMM), dir.path(), &["--allow-kvm-pvm"]);
    let (status, info) = vmm.req("GET", "/", "");
    assert_eq!(status, 200);
    assert_eq!(info["state"], "Not started");
    vmm.configure(&kernel, "console=ttyS0", &root, 128);
    assert_eq!(vmm.start_instance().0, 204);
    let (code, out) = vmm.wait(Duration::from_secs(20));
    assert_eq!(code, Some(7));
    assert_eq!(out.as_bytes(), null_guest::LINE);
}

#[test]
fn a_config_file_boots_without_an_api() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("guest.elf");
    null_guest::write(&kernel, true, Some(9)).unwrap();
    let root = dir.path().join("root.img");
    std::fs::write(&root, [0u8; 4096]).unwrap();
    let config = dir.path().join("vm.json");
    let json = serde_json::json!({
        "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
        "drives": [{"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false}],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
    });
    std::fs::write(&config, json.to_string()).unwrap();
    let out = Command::new(VMM)
        .args(["--allow-kvm-pvm", "--no-api", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(9), "{err}");
    assert_eq!(out.stdout, null_guest::LINE);
}

#[test]
fn its_command_line_names_itself_and_refuses_what_it_does_not_know() {
    let version = Command::new(VMM).arg("--version").output().unwrap();
    assert!(version.status.success());
    let text = String::from_utf8_lossy(&version.stdout);
    assert!(text.starts_with("husk-vmm "), "{text}");
    // A `husk` command is not one of the VMM's.
    let out = Command::new(VMM).args(["run", "alpine"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    // Neither an API socket nor a config file: nothing to run.
    let out = Command::new(VMM).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-sock"), "{err}");
}
