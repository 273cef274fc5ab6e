//! Snapshots with the project's Linux guest: `husk vmm` snapshots a
//! running guest through the API, and another `husk vmm` loads it and the
//! guest goes on where it was, its disk with it.

use husk_tests::vmm_process::VmmProcess;
use husk_tests::{guest_artifacts, require_linux_kvm};
use husk_wire::cmdline::encode_command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn a_linux_guest_snapshotted_mid_run_goes_on_in_another_vmm() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let husk = husk_tests::husk::binary();
    let a = VmmProcess::start(&husk, dir.path(), &[]);
    // State in memory (the loop), in the page cache and on the disk.
    let script = "i=0; while [ $i -lt 25 ]; do i=$((i+1)); echo tick$i; echo $i >> /count; sync; sleep 0.2; done; \
                  echo lines=$(wc -l < /count) last=$(tail -n 1 /count); exit 7";
    // husk.status=console: the init also prints its status line, which
    // the testbed needs (below).
    let args = format!(
        "console=ttyS0 reboot=k panic=1 quiet husk.status=console husk.cmd={}",
        encode_command(&["sh", "-c", script])
    );
    a.configure(&guest_artifacts().vmlinux, &args, &root, 128);
    assert_eq!(a.start_instance().0, 204);
    assert!(a.wait_for_output("tick5\n", TIMEOUT), "{}", a.output());
    assert_eq!(a.req("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    let (snap, mem) = (dir.path().join("vm.snap"), dir.path().join("vm.mem"));
    let create = serde_json::json!({"snapshot_path": snap, "mem_file_path": mem});
    let (s, v) = a.req("PUT", "/snapshot/create", &create.to_string());
    assert_eq!(s, 204, "{v}");
    let before = a.output();
    let n = before.matches("tick").count();
    drop(a);

    let elsewhere = tempfile::tempdir().unwrap();
    let b = VmmProcess::start(&husk, elsewhere.path(), &[]);
    let load = serde_json::json!({"snapshot_path": snap,
        "mem_backend": {"backend_type": "File", "backend_path": mem}, "resume_vm": true});
    let (s, v) = b.req("PUT", "/snapshot/load", &load.to_string());
    assert_eq!(s, 204, "{v}");
    let (code, out) = b.wait(TIMEOUT);
    assert!(
        out.contains("husk-init: exit status 7"),
        "before:\n{before}\nafter:\n{out}"
    );
    if std::env::var_os("HUSK_TESTBED").is_some() {
        // In the nested testbed a restored guest's user-mode port I/O
        // faults: the init's status writer (ioperm, then out, in a child
        // process) gets SIGSEGV, and the init says so and resets.
        // Firecracker 1.16.1 restoring its own snapshot of the same guest
        // in the same L1 fails the same way (tests/testbed/README.md): not
        // the VMM's. Under hardware KVM the status must arrive.
        assert!(
            code == Some(7) || (code == Some(0) && out.contains("the status port write faulted")),
            "{code:?}: {out}"
        );
        assert!(!out.contains("Attempted to kill init"), "{out}");
    } else {
        assert_eq!(code, Some(7), "before:\n{before}\nafter:\n{out}");
    }
    assert!(
        out.starts_with(&format!("tick{}\n", n + 1)) && out.contains("tick25\n"),
        "the restored guest goes on from tick{n}: {out}"
    );
    assert!(!out.contains("tick1\n"), "it started over: {out}");
    // Every tick is on the disk once: the ones before the snapshot from the
    // first VMM, the rest from the second.
    assert!(out.contains("lines=25 last=25"), "{out}");
}
