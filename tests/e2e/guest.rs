//! The project's guest (kernel + rootfs + husk-init) booted by the peer VMM,
//! QEMU `-M microvm`: proves the guest and its init protocol independently
//! of husk's own VMM.

use husk_tests::qemu::{MicroVm, Outcome};
use husk_tests::{guest_artifacts, require_linux_kvm};
use std::path::Path;

fn vm_on(rootfs: &Path) -> MicroVm {
    require_linux_kvm();
    let a = guest_artifacts();
    MicroVm::new(a.vmlinux, rootfs.to_path_buf())
}

/// A private copy of the root image, since QEMU opens it read-write.
fn rootfs_copy(dir: &tempfile::TempDir) -> std::path::PathBuf {
    husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4")
}

fn boot(argv: &[&str]) -> Outcome {
    let dir = tempfile::tempdir().unwrap();
    boot_with(vm_on(&rootfs_copy(&dir)).command(argv))
}

fn boot_with(vm: MicroVm) -> Outcome {
    let out = vm.run();
    assert!(!out.timed_out, "guest did not finish: {}", out.describe());
    out
}

/// The console line and the status port must agree: isa-debug-exit turns the
/// port write into QEMU's exit code `(status << 1) | 1` (low 8 bits).
fn assert_status(out: &Outcome, want: u8) {
    assert_eq!(out.status, Some(want), "{}", out.describe());
    let port = ((i32::from(want) << 1) | 1) & 0xff;
    assert_eq!(out.qemu_exit, Some(port), "status port: {}", out.describe());
}

#[test]
fn command_output_reaches_the_host() {
    let out = boot(&["echo", "hello from the guest"]);
    assert!(
        out.console.contains("hello from the guest\n"),
        "{}",
        out.describe()
    );
    assert_status(&out, 0);
}

#[test]
fn exit_status_1() {
    assert_status(&boot(&["false"]), 1);
}

#[test]
fn exit_status_42() {
    assert_status(&boot(&["sh", "-c", "exit 42"]), 42);
}

#[test]
fn death_by_signal_is_128_plus_signal() {
    assert_status(&boot(&["sh", "-c", "kill -KILL $$"]), 137);
}

#[test]
fn missing_command_is_127() {
    let out = boot(&["/no/such/program"]);
    assert!(
        out.console.contains("cannot run /no/such/program"),
        "{}",
        out.describe()
    );
    assert_status(&out, 127);
}

#[test]
fn leftover_processes_do_not_hang_the_guest() {
    // The background sleeps outlive the command (one becomes a zombie's
    // parent's orphan); init must kill and reap them, not wait 100 s.
    let out = boot(&["sh", "-c", "sleep 100 & (sleep 100 &) ; exit 3"]);
    assert_status(&out, 3);
    assert!(out.elapsed.as_secs() < 60, "{}", out.describe());
}

#[test]
fn two_vcpus_init_environment_and_hostname() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_on(&rootfs_copy(&dir)).command(&[
        "sh",
        "-c",
        "echo nproc=$(nproc); echo host=$(hostname); echo pid1=$(cat /proc/1/comm); \
         for m in /proc /sys /dev /dev/pts /tmp /run /sys/fs/cgroup; do \
           grep -q \" $m \" /proc/mounts && echo mounted=$m; done; cat /proc/mounts",
    ]);
    vm.cpus = 2;
    vm.extra_cmdline = "husk.hostname=box1".into();
    let out = boot_with(vm);
    assert_status(&out, 0);
    for want in [
        "nproc=2",
        "host=box1",
        "pid1=init",
        "mounted=/proc",
        "mounted=/sys",
        "mounted=/dev",
        "mounted=/dev/pts",
        "mounted=/tmp",
        "mounted=/run",
        "mounted=/sys/fs/cgroup",
    ] {
        assert!(
            out.console.contains(want),
            "missing {want}: {}",
            out.describe()
        );
    }
}

#[test]
fn guest_sees_its_memory_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut vm = vm_on(&rootfs_copy(&dir)).command(&["sh", "-c", "grep MemTotal /proc/meminfo"]);
    vm.mem_mib = 384;
    let out = boot_with(vm);
    assert_status(&out, 0);
    let kib: u64 = out
        .console
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no MemTotal: {}", out.describe()));
    // The kernel keeps some RAM for itself; 384 MiB given must read as more
    // than 300 MiB and no more than 384 MiB.
    assert!(
        (300 * 1024..=384 * 1024).contains(&kib),
        "MemTotal {kib} kB for 384 MiB"
    );
}

#[test]
fn root_is_writable_and_data_survives_a_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let image = rootfs_copy(&dir);
    // A token that is nowhere in the image before the guest writes it; no
    // explicit sync: the init's shutdown must flush it.
    let token = format!("husk-persist-{}", std::process::id());
    let token_bytes = token.as_bytes();
    let holds_token = |p: &Path| {
        let data = std::fs::read(p).unwrap();
        data.windows(token_bytes.len()).any(|w| w == token_bytes)
    };
    assert!(!holds_token(&image));

    let write = format!("echo {token} > /root/persisted");
    let out = boot_with(vm_on(&image).command(&["sh", "-c", &write]));
    assert_status(&out, 0);
    assert!(holds_token(&image), "token not on the host's image file");

    let out = boot_with(vm_on(&image).command(&["cat", "/root/persisted"]));
    assert!(out.console.contains(&token), "{}", out.describe());
    assert_status(&out, 0);
}
