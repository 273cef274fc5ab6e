//! Faults and stress (issue 18): what a user loses when husk is killed,
//! the host's disk fills or the guest's kernel panics, and whether many
//! connections or containers at once hold. Sized for CI; `HUSK_E2E_STRESS=full`
//! runs the sizes the issue names (see `size`).

use crate::run::{Run, TIMEOUT};
use husk_tests::process::Running;
use husk_tests::require_linux_kvm;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// `ci` normally, `full` with `HUSK_E2E_STRESS=full`.
fn size(ci: usize, full: usize) -> usize {
    match std::env::var("HUSK_E2E_STRESS").as_deref() {
        Ok("full") => full,
        Ok("") | Err(_) => ci,
        Ok(other) => panic!("HUSK_E2E_STRESS={other}: only `full` is known"),
    }
}

/// `husk boot` of the project's guest on a private root disk, streaming.
fn boot(dir: &Path, opts: &[&str], script: &str) -> Running {
    let rootfs = husk_tests::scratch_rootfs(dir, "rootfs.ext4");
    let mut cmd = Command::new(husk_tests::husk::binary());
    cmd.arg("boot").arg("--rootfs").arg(&rootfs);
    cmd.args(opts).args(["--", "sh", "-c", script]);
    Running::spawn(cmd)
}

/// The sha256 of `len` bytes at `offset` of `file`.
fn sha_at(file: &Path, offset: u64, len: usize) -> String {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; len];
    std::fs::File::open(file)
        .unwrap()
        .read_exact_at(&mut buf, offset)
        .unwrap();
    husk_tests::hex(&Sha256::digest(&buf))
}

/// A guest writes random 4 KiB blocks to a disk, each with fsync, and says
/// which it finished and their checksums; husk is SIGKILLed mid-loop.
/// Every block the guest was told is written is in the disk file.
#[test]
fn a_killed_husk_keeps_every_acknowledged_disk_write() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(16 << 20)
        .unwrap();
    let script = "i=0; while :; do head -c 4096 /dev/urandom > /tmp/b; \
                  dd if=/tmp/b of=/dev/vdb bs=4096 seek=$i conv=fsync,notrunc 2>/dev/null \
                  && echo acked $i $(sha256sum < /tmp/b | cut -c1-64); i=$((i+1)); done";
    let mut run = boot(dir.path(), &["--disk", &disk.display().to_string()], script);
    let wanted = size(40, 400);
    let last = format!("acked {wanted} ");
    assert!(
        run.wait_for(|l| l.starts_with(&last), TIMEOUT).is_some(),
        "the guest did not get to {wanted} writes"
    );
    run.signal(libc::SIGKILL);
    let out = run.finish(TIMEOUT);
    let acked: Vec<(u64, &str)> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("acked "))
        .filter_map(|l| l.split_once(' '))
        .map(|(i, sha)| (i.parse().unwrap(), sha.trim()))
        .collect();
    assert!(acked.len() > wanted, "{}", out.describe());
    for (i, sha) in acked {
        assert_eq!(
            sha_at(&disk, i * 4096, 4096),
            sha,
            "block {i} was acknowledged to the guest but is not in the disk file"
        );
    }
}

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct SmallFs(tempfile::TempDir);

impl SmallFs {
    fn new(mib: u32) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "husk-e2e"])
            .arg(dir.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "cannot mount a tmpfs on {}", dir.path().display());
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// The disk's file lives on a host filesystem that fills up mid-write: the
/// guest's write fails with an I/O error, husk keeps running, what was
/// written before is intact and the guest's other disk still works.
#[test]
fn a_full_host_disk_is_an_io_error_in_the_guest_and_husk_lives_on() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let small = SmallFs::new(4);
    let disk = small.0.path().join("data.img");
    std::fs::File::create(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let script = "head -c 1048576 /dev/urandom > /tmp/a; \
        dd if=/tmp/a of=/dev/vdb bs=1M oflag=direct 2>/dev/null && echo first $(sha256sum < /tmp/a | cut -c1-64); \
        dd if=/dev/zero of=/dev/vdb bs=1M seek=1 count=16 oflag=direct 2>/dev/null; echo big=$?; \
        echo back $(dd if=/dev/vdb bs=1M count=1 iflag=direct 2>/dev/null | sha256sum | cut -c1-64); \
        echo still > /written; sync; echo root $(cat /written)";
    let run = boot(dir.path(), &["--disk", &disk.display().to_string()], script);
    let out = run.finish(TIMEOUT);
    assert_eq!(
        out.code,
        Some(0),
        "husk did not run to the guest's end: {}",
        out.describe()
    );
    let line = |key: &str| {
        out.stdout
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key:?} line: {}", out.describe()))
            .trim()
            .to_string()
    };
    let first = line("first ");
    assert_ne!(
        line("big="),
        "0",
        "a write past the host's free space succeeded: {}",
        out.describe()
    );
    assert!(
        out.stdout.contains("I/O error"),
        "the guest kernel saw no I/O error: {}",
        out.describe()
    );
    assert_eq!(line("back "), first, "the guest reads back other data");
    assert_eq!(
        sha_at(&disk, 0, 1 << 20),
        first,
        "the first MiB changed on the host"
    );
    assert_eq!(line("root "), "still", "{}", out.describe());
    // One line per failed request at most, never a flood.
    assert!(out.stderr.lines().count() < 200, "{}", out.describe());
}

/// A kernel panic while the guest runs (the OOM killer told to panic) ends
/// husk within 2 s of the panic's first line, with a status that says so.
#[test]
fn a_guest_kernel_panic_ends_husk_within_two_seconds() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    // Overcommit on, so the buffer is granted and the OOM comes as it fills.
    let script = "echo 1 > /proc/sys/vm/overcommit_memory; \
                  echo 1 > /proc/sys/vm/panic_on_oom; echo filling; \
                  dd if=/dev/zero of=/dev/null bs=200M count=1; echo survived";
    let mut run = boot(dir.path(), &["--memory", "128"], script);
    let hit = run.wait_for(|l| l.contains("Kernel panic - not syncing"), TIMEOUT);
    let at = Instant::now();
    let out = run.finish(TIMEOUT);
    assert!(hit.is_some(), "no kernel panic seen: {}", out.describe());
    let took = at.elapsed();
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(!out.stdout.contains("survived"), "{}", out.describe());
    assert!(
        out.stderr
            .contains("the guest kernel panicked: Out of memory"),
        "the error does not name the panic: {}",
        out.describe()
    );
    assert!(
        took < Duration::from_secs(2),
        "husk took {took:?} after the panic"
    );
}

/// The agent (the guest's PID 1) dies while `husk run` waits on it: the
/// guest kernel panics ("Attempted to kill init") and resets, and the run
/// ends at once with one line naming that, not a hang; nothing is left in
/// the runtime dir. `HUSK_FAULT=agent-panic` makes the agent panic when
/// asked to start the container.
#[test]
fn a_dying_agent_ends_husk_run_with_a_clear_error() {
    require_linux_kvm();
    let r = Run::new();
    let mut cmd = r.command(&["--rm", "--network", "none"], &["echo", "never"]);
    cmd.env("HUSK_FAULT", "agent-panic");
    let at = Instant::now();
    let out = husk_tests::process::run(cmd, TIMEOUT);
    let took = at.elapsed();
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(!out.stdout.contains("never"), "{}", out.describe());
    assert!(
        out.stderr.contains("Attempted to kill init"),
        "the error does not say the guest's init died: {}",
        out.describe()
    );
    assert!(
        took < Duration::from_secs(60),
        "husk took {took:?}: {}",
        out.describe()
    );
    r.assert_runtime_empty();
    // An unknown fault is refused before anything starts.
    let mut bad = r.command(&["--rm", "--network", "none"], &["true"]);
    bad.env("HUSK_FAULT", "nonsense");
    let out = husk_tests::process::run(bad, TIMEOUT);
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains("HUSK_FAULT=nonsense: not a fault husk knows"),
        "{}",
        out.describe()
    );
}

/// Host → guest vsock connections one after another, each with its own
/// data echoed back whole (10,000 with `HUSK_E2E_STRESS=full`), then some
/// at once; the device serves to the end.
#[test]
fn many_vsock_connections_each_echo_their_own_bytes() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let mut run = boot(
        dir.path(),
        &["--vsock", &format!("cid=3,uds={}", uds.display())],
        "husk-vsock echo 5000 & sleep 1; echo ready; sleep 100000",
    );
    assert!(
        run.wait_for_line("ready", TIMEOUT),
        "the guest never got ready"
    );
    let n = size(1000, 10_000);
    let started = Instant::now();
    for i in 0..n {
        let msg = format!("connection {i};").repeat(1 + i % 300).into_bytes();
        let s = crate::vsock::try_connect(&uds, 5000)
            .unwrap_or_else(|e| panic!("connection {i} of {n}: {e}"));
        let back = crate::vsock::round_trip(s, &msg);
        assert!(
            back == msg,
            "connection {i} of {n}: {} of {} bytes came back{}",
            back.len(),
            msg.len(),
            if msg.starts_with(&back) {
                ""
            } else {
                ", not the ones sent"
            }
        );
    }
    eprintln!("{n} vsock connections in {:?}", started.elapsed());
    let clients: Vec<_> = (0..64u32)
        .map(|i| {
            let uds = uds.clone();
            std::thread::spawn(move || {
                let msg = format!("together {i};").repeat(2000).into_bytes();
                let s = crate::vsock::connect(&uds, 5000).expect("OK");
                assert!(
                    crate::vsock::round_trip(s, &msg) == msg,
                    "connection {i} garbled"
                );
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    run.signal(libc::SIGTERM);
    let out = run.finish(TIMEOUT);
    assert!(!out.timed_out, "{}", out.describe());
}

/// Twenty containers started at once, each writing and checking its own
/// file: all exit 0 with their own output, and nothing is left behind.
/// In the testbed, a guest the nested virtualization corrupted (its
/// signature, see husk_tests::testbed) is said and excused, a few at most.
#[test]
fn twenty_containers_at_once() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    let r = Run::new();
    // Converted once up front, so the twenty do not all convert the image.
    let first = r.run(&["--rm", "--network", "none"], &["true"]);
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let n = size(20, 20);
    let log = |i: usize| r.cache.path().join(format!("husk-{i}.log"));
    let runs: Vec<_> = (0..n)
        .map(|i| {
            let script = format!(
                "head -c 65536 /dev/urandom > /f; cp /f /g; cmp /f /g && echo container {i} ok"
            );
            let mut c = r.command(
                &["--rm", "--network", "none", "--memory", "64m"],
                &["sh", "-c", &script],
            );
            c.env("HUSK_LOG", log(i));
            Running::spawn(c)
        })
        .collect();
    let mut excused = 0;
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.finish(Duration::from_secs(600));
        let ok = out.code == Some(0) && out.stdout == format!("container {i} ok\n");
        if ok {
            continue;
        }
        let vmm_log = std::fs::read_to_string(log(i)).unwrap_or_default();
        match husk_tests::testbed::corruption(&out.stderr, &vmm_log) {
            Some(why) => {
                eprintln!("container {i} failed, the testbed's: {why}");
                excused += 1;
            }
            None => panic!(
                "container {i}: {}\n--- VMM log ---\n{vmm_log}",
                out.describe()
            ),
        }
    }
    assert!(
        excused <= 3,
        "{excused} of {n} guests corrupted: more than the testbed's rate"
    );
    assert_eq!(
        crate::run::husk_processes(&r),
        Vec::<i32>::new(),
        "husk processes left"
    );
    assert_eq!(
        crate::run::entries(r.runtime.path()),
        Vec::<String>::new(),
        "run dirs left"
    );
}
