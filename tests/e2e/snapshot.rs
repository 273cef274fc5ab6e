//! Snapshots with the project's Linux guest: `husk vmm` snapshots a
//! running guest through the API, and another `husk vmm` loads it and the
//! guest goes on where it was, its disk with it.

use husk_tests::vmm_process::VmmProcess;
use husk_tests::{guest_artifacts, require_linux_kvm};
use husk_wire::cmdline::encode_command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

/// The guest's job: 25 ticks, each counted on its disk with a sync, then
/// how many lines the disk has; it exits 7.
const SCRIPT: &str = "i=0; while [ $i -lt 25 ]; do i=$((i+1)); echo tick$i; echo $i >> /count; sync; sleep 0.2; done; \
                      echo lines=$(wc -l < /count) last=$(tail -n 1 /count); exit 7";

/// A `husk vmm` in `dir` running SCRIPT on its own copy of the root image,
/// optionally tracking dirty pages.
fn start_guest(dir: &std::path::Path, track_dirty_pages: bool) -> VmmProcess {
    let root = husk_tests::scratch_rootfs(dir, "rootfs.ext4");
    let a = VmmProcess::start(&husk_tests::husk::binary(), dir, &[]);
    // husk.status=console: the init also prints its status line, which
    // the testbed needs (see `check_goes_on`).
    let args = format!(
        "console=ttyS0 reboot=k panic=1 quiet husk.status=console husk.cmd={}",
        encode_command(&["sh", "-c", SCRIPT])
    );
    a.configure(&guest_artifacts().vmlinux, &args, &root, 128);
    if track_dirty_pages {
        let (s, v) = a.req("PATCH", "/machine-config", r#"{"track_dirty_pages": true}"#);
        assert_eq!(s, 204, "{v}");
    }
    assert_eq!(a.start_instance().0, 204);
    a
}

/// Pauses `a` once it printed `tick`, writes a snapshot of `kind` to
/// (snap, mem); the ticks it printed until then.
fn snapshot_at(
    a: &VmmProcess,
    tick: u32,
    kind: &str,
    snap: &std::path::Path,
    mem: &std::path::Path,
) -> usize {
    assert!(
        a.wait_for_output(&format!("tick{tick}\n"), TIMEOUT),
        "{}",
        a.output()
    );
    assert_eq!(a.req("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    let create =
        serde_json::json!({"snapshot_type": kind, "snapshot_path": snap, "mem_file_path": mem});
    let (s, v) = a.req("PUT", "/snapshot/create", &create.to_string());
    assert_eq!(s, 204, "{v}");
    a.output().matches("tick").count()
}

/// Loads (snap, mem) in a new `husk vmm` and checks the guest goes on from
/// tick n+1 to its end, every tick on its disk once.
fn check_goes_on(snap: &std::path::Path, mem: &std::path::Path, n: usize, before: &str) {
    let elsewhere = tempfile::tempdir().unwrap();
    let b = VmmProcess::start(&husk_tests::husk::binary(), elsewhere.path(), &[]);
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

#[test]
fn a_linux_guest_snapshotted_mid_run_goes_on_in_another_vmm() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let a = start_guest(dir.path(), false);
    let (snap, mem) = (dir.path().join("vm.snap"), dir.path().join("vm.mem"));
    let n = snapshot_at(&a, 5, "Full", &snap, &mem);
    let before = a.output();
    drop(a);
    check_goes_on(&snap, &mem, n, &before);
}

/// A Full snapshot, the guest goes on, then a Diff into a new file, merged
/// onto the Full one's memory with `husk snapshot merge`: the guest goes
/// on from the Diff. Between the two the guest's disk writes made the
/// device write guest memory (used rings, statuses): a Diff without them
/// would restore a driver out of step with its queues.
#[test]
fn a_diff_snapshot_merged_onto_the_full_one_goes_on_from_the_diff() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let a = start_guest(dir.path(), true);
    snapshot_at(&a, 5, "Full", &d("full.snap"), &d("vm.mem"));
    assert_eq!(a.req("PATCH", "/vm", r#"{"state":"Resumed"}"#).0, 204);
    let n = snapshot_at(&a, 12, "Diff", &d("diff.snap"), &d("diff.mem"));
    let before = a.output();
    drop(a);
    let size = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(p).unwrap().blocks() * 512
    };
    assert!(
        size(&d("diff.mem")) < size(&d("vm.mem")) / 2,
        "the Diff ({} bytes) is not much smaller than the Full snapshot ({})",
        size(&d("diff.mem")),
        size(&d("vm.mem"))
    );
    let (diff, base) = (d("diff.mem"), d("vm.mem"));
    let merge = husk_tests::husk::run(
        &[
            "snapshot",
            "merge",
            "--diff",
            diff.to_str().unwrap(),
            "--base",
            base.to_str().unwrap(),
        ],
        TIMEOUT,
    );
    assert_eq!(merge.code, Some(0), "{merge:?}");
    check_goes_on(&d("diff.snap"), &d("vm.mem"), n, &before);
}
