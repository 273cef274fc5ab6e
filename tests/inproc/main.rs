//! In-process boots of the null guest through husk's VMM library: the whole
//! VMM path (KVM setup, ELF loading, PVH and 64-bit entry, port exits, the
//! serial console, the status port, reset, teardown) on any /dev/kvm,
//! kvm_pvm included. No Linux: that is the e2e binary's job.

use husk_tests::null_guest;
use husk_vmm::{Console, Exit, VmConfig};

fn boot(pvh: bool, status: Option<u8>, vcpus: u8) -> (husk_vmm::Outcome, String) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("null.elf");
    null_guest::write(&kernel, pvh, status).unwrap();
    let console = dir.path().join("console");
    let config = VmConfig {
        kernel,
        vcpus,
        mem_mib: 128,
        cmdline: "console=ttyS0".into(),
        disks: vec![],
        nets: vec![],
        vsock: None,
        fs: vec![],
        console: Console::File(console.clone()),
        stdin: false,
        allow_pvm: true,
        track_dirty_pages: false,
    };
    let out = husk_vmm::run(&config, None).expect("the VM runs");
    let text = std::fs::read_to_string(console).unwrap_or_default();
    (out, text)
}

#[test]
fn pvh_entry_prints_and_resets() {
    let (out, console) = boot(true, None, 1);
    assert_eq!(out.exit, Exit::Reset);
    // How it reset is said: a quiet guest's console would not.
    assert_eq!(out.reset, Some(husk_vmm::RESET_I8042));
    assert_eq!(out.guest_status, None);
    assert_eq!(console.as_bytes(), null_guest::LINE);
}

#[test]
fn long_mode_entry_prints_and_resets() {
    let (out, console) = boot(false, None, 1);
    assert_eq!(out.exit, Exit::Reset);
    assert_eq!(console.as_bytes(), null_guest::LINE);
}

#[test]
fn status_port_reaches_the_vmm() {
    let (out, _) = boot(true, Some(42), 1);
    assert_eq!(out.guest_status, Some(42));
    assert_eq!(out.exit, Exit::Reset);
}

#[test]
fn secondary_vcpus_are_torn_down() {
    // The APs never get a SIPI from the null guest: they sit in KVM_RUN
    // until the VMM kicks them out at reset.
    let (out, console) = boot(true, Some(0), 4);
    assert_eq!(out.exit, Exit::Reset);
    assert_eq!(console.as_bytes(), null_guest::LINE);
}

#[test]
fn pause_stops_progress_and_resume_continues() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console");
    let config = elf_config(dir.path(), null_guest::ticker_elf(true), &console);
    let vm = husk_vmm::start(&config, None).expect("the VM starts");
    let controls = vm.controls();
    let size = move || std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
    let driver = std::thread::spawn(move || {
        // Whatever the checks say, stop the VM so `wait` returns.
        struct StopOnDrop(husk_vmm::VmControls);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.resume();
                self.0.stop(Exit::Stopped(0));
            }
        }
        let _stop = StopOnDrop(controls.clone());
        let grows = |what: &str| {
            let a = size();
            std::thread::sleep(Duration::from_millis(300));
            let b = size();
            assert!(b > a, "{what}: no progress ({a} -> {b})");
        };
        grows("running");
        controls.pause();
        assert!(controls.is_paused());
        let a = size();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(size(), a, "the guest ran while paused");
        controls.resume();
        grows("resumed");
    });
    let out = vm.wait();
    driver.join().expect("the checks passed");
    assert_eq!(out.exit, Exit::Stopped(0));
}

/// A 1-vCPU, 128 MiB VM of `elf` printing to `console`.
fn elf_config(dir: &std::path::Path, elf: Vec<u8>, console: &std::path::Path) -> VmConfig {
    let kernel = dir.join("guest.elf");
    std::fs::write(&kernel, elf).unwrap();
    VmConfig {
        kernel,
        vcpus: 1,
        mem_mib: 128,
        cmdline: String::new(),
        disks: vec![],
        nets: vec![],
        vsock: None,
        fs: vec![],
        console: Console::File(console.to_owned()),
        stdin: false,
        allow_pvm: true,
        track_dirty_pages: false,
    }
}

/// The counter guest's VM on `console`.
fn counter_config(dir: &std::path::Path, console: &std::path::Path, limit: u32) -> VmConfig {
    elf_config(dir, null_guest::counter_elf(limit), console)
}

fn wait_for_bytes(path: &std::path::Path, n: u64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::metadata(path).map(|m| m.len()).unwrap_or(0) < n {
        assert!(
            std::time::Instant::now() < deadline,
            "the guest printed fewer than {n} bytes in 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

#[test]
fn a_restored_snapshot_goes_on_counting_where_it_stopped() {
    use husk_vmm::snapshot::{Kind, RestoreConfig, SnapshotPaths};
    const LIMIT: u8 = 200;
    let dir = tempfile::tempdir().unwrap();
    let before = dir.path().join("before");
    let mut config = counter_config(dir.path(), &before, u32::from(LIMIT));
    // Devices the null guest never drives: the snapshot carries them and
    // the restore attaches them again (the vsock socket path is reused).
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    config.disks.push(husk_vmm::DiskConfig {
        path: disk,
        read_only: true,
        id: "data".into(),
        rate_limiter: None,
        read_write: Default::default(),
    });
    config.vsock = Some(husk_vmm::VsockConfig {
        guest_cid: 3,
        uds_path: dir.path().join("v.sock"),
        id: "vsock0".into(),
    });
    let vm = husk_vmm::start(&config, None).expect("the VM starts");
    let controls = vm.controls();
    let waiter = std::thread::spawn(move || vm.wait());
    wait_for_bytes(&before, 20);
    controls.pause();
    let paths = SnapshotPaths {
        state: dir.path().join("vm.snap"),
        mem: dir.path().join("vm.mem"),
    };
    let made = controls.snapshot(&paths, Kind::Full);
    controls.stop(Exit::Stopped(0));
    assert_eq!(waiter.join().unwrap().exit, Exit::Stopped(0));
    // The last handle on the VM: its devices (the vsock socket) go with it.
    drop(controls);
    made.unwrap_or_else(|e| panic!("snapshot: {e}"));
    let printed = std::fs::read(&before).unwrap();
    let k = printed.len();
    let expected: Vec<u8> = (1..=k as u8).collect();
    assert_eq!(printed, expected, "the counter before the snapshot");

    // A new VM from the files, on another console: it prints the counts
    // after K, not from 1, and reports its status at the limit.
    let after = dir.path().join("after");
    let restore = RestoreConfig {
        snapshot: paths.clone(),
        console: Console::File(after.clone()),
        stdin: false,
        allow_pvm: true,
        resume: true,
        track_dirty_pages: false,
        overrides: Default::default(),
        memory: Default::default(),
    };
    let restored = husk_vmm::restore(&restore, None).unwrap_or_else(|e| panic!("restore: {e}"));
    assert!(
        std::os::unix::net::UnixStream::connect(dir.path().join("v.sock")).is_ok(),
        "the vsock device listens again"
    );
    let out = restored.wait();
    assert_eq!(out.guest_status, Some(0));
    assert_eq!(out.exit, Exit::Reset);
    let rest: Vec<u8> = (k as u8 + 1..=LIMIT).collect();
    assert_eq!(
        std::fs::read(&after).unwrap(),
        rest,
        "the counter after the restore"
    );

    // The memory file is private to the restored VM: a second restore
    // starts from the same point, here on host resources of its own (a
    // pool's clone): another file for the disk, another vsock socket.
    let again = dir.path().join("again");
    let other_disk = dir.path().join("other.img");
    std::fs::write(&other_disk, vec![0u8; 2 << 20]).unwrap();
    let other_uds = dir.path().join("other.sock");
    let overrides = husk_vmm::snapshot::Overrides {
        disks: vec![("data".into(), other_disk)],
        vsock_uds: Some(other_uds.clone()),
        nets: Vec::new(),
        fs: Vec::new(),
    };
    // Its memory copied rather than mapped (the pool's other backing):
    // the guest goes on all the same.
    let clone = husk_vmm::restore(
        &RestoreConfig {
            console: Console::File(again.clone()),
            overrides: overrides.clone(),
            memory: husk_vmm::snapshot::memory::Backing::Copied,
            ..restore.clone()
        },
        None,
    )
    .unwrap_or_else(|e| panic!("restore with overrides: {e}"));
    assert!(
        std::os::unix::net::UnixStream::connect(&other_uds).is_ok(),
        "the vsock device listens on the new socket"
    );
    let out = clone.wait();
    assert_eq!(out.guest_status, Some(0));
    assert_eq!(std::fs::read(&again).unwrap(), rest);

    // An override that names nothing in the snapshot is refused.
    let typo = husk_vmm::snapshot::Overrides {
        disks: vec![("dato".into(), dir.path().join("other.img"))],
        vsock_uds: None,
        nets: Vec::new(),
        fs: Vec::new(),
    };
    let refused = husk_vmm::restore(
        &RestoreConfig {
            overrides: typo,
            ..restore
        },
        None,
    )
    .err()
    .expect("a restore with an unknown drive is refused");
    assert!(
        refused
            .to_string()
            .contains("the snapshot has no drive \"dato\""),
        "{refused}"
    );
}

#[test]
fn snapshots_need_a_paused_vm_and_bad_files_are_refused() {
    use husk_vmm::snapshot::{Kind, RestoreConfig, SnapshotPaths};
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console");
    let vm = husk_vmm::start(&counter_config(dir.path(), &console, 250), None).unwrap();
    let controls = vm.controls();
    let waiter = std::thread::spawn(move || vm.wait());
    let paths = SnapshotPaths {
        state: dir.path().join("vm.snap"),
        mem: dir.path().join("vm.mem"),
    };
    let running = controls.snapshot(&paths, Kind::Full);
    controls.pause();
    let untracked = controls.snapshot(&paths, Kind::Diff);
    let made = controls.snapshot(&paths, Kind::Full);
    controls.stop(Exit::Stopped(0));
    waiter.join().unwrap();
    assert_eq!(
        running.unwrap_err().to_string(),
        "the VM must be paused for a snapshot"
    );
    let untracked = untracked.unwrap_err().to_string();
    assert!(
        untracked.contains("needs dirty-page tracking"),
        "{untracked}"
    );
    made.unwrap();

    let restore = |state: &std::path::Path| {
        husk_vmm::restore(
            &RestoreConfig {
                snapshot: SnapshotPaths {
                    state: state.to_owned(),
                    mem: paths.mem.clone(),
                },
                console: Console::File(dir.path().join("unused")),
                stdin: false,
                allow_pvm: true,
                resume: false,
                track_dirty_pages: false,
                overrides: Default::default(),
                memory: Default::default(),
            },
            None,
        )
        .err()
        .expect("refused")
        .to_string()
    };
    let data = std::fs::read(&paths.state).unwrap();
    let short = dir.path().join("short.snap");
    std::fs::write(&short, &data[..data.len() / 2]).unwrap();
    let e = restore(&short);
    assert!(e.contains("is truncated"), "{e}");
    let garbage = dir.path().join("garbage.snap");
    std::fs::write(&garbage, b"not a snapshot\n").unwrap();
    assert!(restore(&garbage).contains("is not a husk snapshot"));
    // A memory file of the wrong size.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&paths.mem)
        .unwrap()
        .set_len(4096)
        .unwrap();
    let e = restore(&paths.state);
    assert!(
        e.contains("memory file") && e.contains("has 4096 bytes"),
        "{e}"
    );
}

/// The count the counter guest has printed to `console` (its low bytes
/// 1, 2, 3, ...), checked to be the plain sequence from `from`.
fn printed_count(console: &std::path::Path, from: u8) -> u8 {
    let printed = std::fs::read(console).unwrap();
    let expected: Vec<u8> = (from..from + printed.len() as u8).collect();
    assert_eq!(printed, expected, "what {} printed", console.display());
    from + printed.len() as u8 - 1
}

/// Pauses `vm` once `console` shows `bytes` more bytes, snapshots it as
/// `kind` to `paths`, stops it; the count at the snapshot.
fn snapshot_after(
    vm: husk_vmm::RunningVm,
    console: &std::path::Path,
    from: u8,
    bytes: u64,
    paths: &husk_vmm::snapshot::SnapshotPaths,
    kind: husk_vmm::snapshot::Kind,
) -> u8 {
    let controls = vm.controls();
    let waiter = std::thread::spawn(move || vm.wait());
    wait_for_bytes(console, bytes);
    controls.pause();
    let made = controls.snapshot(paths, kind);
    controls.stop(Exit::Stopped(0));
    waiter.join().unwrap();
    made.unwrap_or_else(|e| panic!("{kind:?} snapshot: {e}"));
    printed_count(console, from)
}

/// Full, then Diff snapshots with dirty pages tracked: a Diff written to a
/// new file holds only the pages written since the snapshot before it; a
/// Diff written onto the memory file of the snapshot before makes that
/// file current, and a VM restored from it goes on counting; a restored VM
/// tracks again and its Diff chains on.
#[test]
fn diff_snapshots_hold_what_changed_and_chain_onto_the_full_one() {
    use husk_vmm::snapshot::{Kind, RestoreConfig, SnapshotPaths};
    use std::os::unix::fs::{FileExt, MetadataExt};
    const LIMIT: u8 = 250;
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name);
    let mut config = counter_config(dir.path(), &d("c1"), u32::from(LIMIT));
    config.track_dirty_pages = true;
    let full = SnapshotPaths {
        state: d("full.snap"),
        mem: d("vm.mem"),
    };
    // Full at k1, on a VM that goes on (a pause, not a stop, between).
    let vm = husk_vmm::start(&config, None).expect("the VM starts");
    let controls = vm.controls();
    let waiter = std::thread::spawn(move || vm.wait());
    wait_for_bytes(&d("c1"), 20);
    controls.pause();
    controls.snapshot(&full, Kind::Full).expect("Full snapshot");
    let k1 = printed_count(&d("c1"), 1);
    controls.resume();
    wait_for_bytes(&d("c1"), u64::from(k1) + 30);
    controls.pause();
    // The Diff twice: to a new file, and onto a copy of the Full one.
    std::fs::copy(&full.mem, d("merged.mem")).unwrap();
    let new_file = SnapshotPaths {
        state: d("diff.snap"),
        mem: d("diff.mem"),
    };
    controls
        .snapshot(&new_file, Kind::Diff)
        .expect("Diff snapshot");
    let k2 = printed_count(&d("c1"), 1);
    controls.stop(Exit::Stopped(0));
    waiter.join().unwrap();
    drop(controls);
    assert!(k2 > k1, "{k1} then {k2}");

    // The new file: the VM's size, the counter's page with k2, and (the
    // Full snapshot cleared the log) not the kernel's pages.
    let diff = std::fs::File::open(&new_file.mem).unwrap();
    let meta = diff.metadata().unwrap();
    assert_eq!(meta.len(), 128 << 20);
    assert!(meta.blocks() * 512 <= 64 * 1024, "{} blocks", meta.blocks());
    let mut word = [0u8; 4];
    diff.read_exact_at(&mut word, u64::from(null_guest::COUNTER_ADDR))
        .unwrap();
    assert_eq!(u32::from_le_bytes(word), u32::from(k2));
    diff.read_exact_at(&mut word, null_guest::LOAD_ADDR)
        .unwrap();
    assert_eq!(word, [0; 4], "the guest's code was in the Diff");

    // Merged (`husk snapshot merge`): the pages the Diff has, onto the
    // Full file. Then a Diff straight onto the merged
    // file from a VM restored from it, with tracking: the chain goes on.
    husk_vmm::snapshot::memory::merge(&new_file.mem, &d("merged.mem")).expect("merge");
    let restore = |state: &std::path::Path, mem: &std::path::Path, console: &str, track| {
        husk_vmm::restore(
            &RestoreConfig {
                snapshot: SnapshotPaths {
                    state: state.to_owned(),
                    mem: mem.to_owned(),
                },
                console: Console::File(d(console)),
                stdin: false,
                allow_pvm: true,
                resume: true,
                track_dirty_pages: track,
                overrides: Default::default(),
                memory: Default::default(),
            },
            None,
        )
        .unwrap_or_else(|e| panic!("restore: {e}"))
    };
    let vm = restore(&new_file.state, &d("merged.mem"), "c2", true);
    let in_place = SnapshotPaths {
        state: d("diff2.snap"),
        mem: d("merged.mem"),
    };
    let k3 = snapshot_after(vm, &d("c2"), k2 + 1, 25, &in_place, Kind::Diff);
    let out = restore(&in_place.state, &in_place.mem, "c3", false).wait();
    assert_eq!(out.guest_status, Some(0));
    assert_eq!(printed_count(&d("c3"), k3 + 1), LIMIT);
}

/// A guest that prints far more than a capped console holds: the file
/// stays within its cap, says what it dropped, and ends with the guest's
/// last bytes, in order.
#[test]
fn a_guest_printing_without_end_stays_within_the_consoles_cap() {
    const CAP: u64 = 256;
    // Printed at about 100 bytes a second on kvm_pvm.
    const LIMIT: u32 = 1000;
    let dir = tempfile::tempdir().unwrap();
    let console = dir.path().join("console.log");
    let mut config = counter_config(dir.path(), &console, LIMIT);
    config.console = Console::Capped(console.clone(), CAP);
    let out = husk_vmm::run(&config, None).expect("the VM runs");
    assert_eq!(out.exit, Exit::Reset);
    let kept = std::fs::read(&console).unwrap();
    assert!(kept.len() as u64 <= CAP, "{} bytes kept", kept.len());
    let text = String::from_utf8_lossy(&kept);
    assert!(text.contains("bytes were dropped"), "no note in {text:?}");
    // After the note: the counter's low bytes, each one more than the one
    // before, up to the last it printed.
    let after = &kept[kept.iter().position(|&b| b == b'\n').unwrap() + 1..];
    assert!(after.len() > 1, "{} bytes after the note", after.len());
    assert_eq!(*after.last().unwrap(), LIMIT as u8);
    assert!(after.windows(2).all(|w| w[1] == w[0].wrapping_add(1)));
}
