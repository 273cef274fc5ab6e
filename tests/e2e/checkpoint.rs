//! `husk checkpoint` and `husk restore`: a running container saved at the
//! VM level and started again where it was.

use crate::run::{husk, wait_status, Run, TIMEOUT};
use husk_tests::require_linux_kvm;
use std::time::{Duration, Instant};

/// The numbers the container has printed (its log), checked to be the
/// plain sequence from `from`.
fn counted(r: &Run, id: &str, from: u64) -> Vec<u64> {
    let logs = husk(r, &["logs", id]);
    assert_eq!(logs.code, Some(0), "{}", logs.describe());
    let n: Vec<u64> = logs
        .stdout
        .lines()
        .map(|l| l.parse().unwrap_or_else(|_| panic!("{}", logs.describe())))
        .collect();
    let expected: Vec<u64> = (from..from + n.len() as u64).collect();
    assert_eq!(n, expected, "{id} printed {}", logs.describe());
    n
}

/// Waits until `id` has printed at least `lines` numbers from `from`.
fn wait_counted(r: &Run, id: &str, from: u64, lines: usize) -> Vec<u64> {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let n = counted(r, id, from);
        if n.len() >= lines {
            return n;
        }
        assert!(Instant::now() < deadline, "{id} printed only {n:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A counter that keeps its count in memory (a shell variable) and on its
/// writable layer (a scratch disk): checkpointed, it stops; restored, it
/// prints the next number, not one lost or twice, and its file has gone on
/// too. Checkpointed again with --leave-running, it goes on in place.
#[test]
fn a_checkpointed_container_goes_on_where_it_was() {
    checkpoint_restore_and_again(&[]);
}

/// The same with `--jail`: the jailed run sees nothing of the directory
/// `husk checkpoint` names, and writes its checkpoint into the files that
/// command made and handed over; the restored run (the same command line)
/// is jailed too, and its records and logs stay for `husk logs`/`rm`.
#[test]
fn a_jailed_run_is_checkpointed_and_restored_the_same_way() {
    checkpoint_restore_and_again(&["--jail"]);
}

fn checkpoint_restore_and_again(extra: &[&str]) {
    require_linux_kvm();
    let r = Run::new();
    let script = "i=0; while :; do i=$((i+1)); echo $i; echo $i > /count; sleep 0.1; done";
    let mut flags = vec!["-d", "--network", "none", "--scratch", "64m"];
    flags.extend(extra);
    let started = r.run(&flags, &["sh", "-c", script]);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    wait_counted(&r, &id, 1, 10);
    if extra.contains(&"--jail") {
        assert_ne!(
            owner_uid(&r, &id),
            0,
            "the detached run's husk is not jailed"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("cp");
    let cp = husk(&r, &["checkpoint", &id, saved.to_str().unwrap()]);
    assert_eq!(cp.code, Some(0), "{}", cp.describe());
    wait_status(&r, &id, "Exited (0)");
    let before = counted(&r, &id, 1);
    let last = *before.last().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        counted(&r, &id, 1).len(),
        before.len(),
        "it went on after the checkpoint"
    );

    let restored = husk(&r, &["restore", saved.to_str().unwrap()]);
    assert_eq!(restored.code, Some(0), "{}", restored.describe());
    let new = restored.stdout.trim().to_owned();
    assert_ne!(new, id);
    wait_status(&r, &new, "Up");
    wait_counted(&r, &new, last + 1, 5);
    if extra.contains(&"--jail") {
        assert_ne!(
            owner_uid(&r, &new),
            0,
            "the restored run's husk is not jailed"
        );
    }
    let file = husk(&r, &["exec", &new, "cat", "/count"]);
    assert_eq!(file.code, Some(0), "{}", file.describe());
    let on_disk: u64 = file.stdout.trim().parse().expect("a number");
    assert!(
        on_disk > last,
        "the scratch layer did not go on: {on_disk} <= {last}"
    );

    // --leave-running: the same VM goes on, its output with it.
    let again = dir.path().join("cp2");
    let cp = husk(
        &r,
        &[
            "checkpoint",
            "--leave-running",
            &new,
            again.to_str().unwrap(),
        ],
    );
    assert_eq!(cp.code, Some(0), "{}", cp.describe());
    let at = counted(&r, &new, last + 1).len();
    wait_counted(&r, &new, last + 1, at + 5);
    wait_status(&r, &new, "Up");
    assert_eq!(husk(&r, &["kill", &new]).code, Some(0));
    wait_status(&r, &new, "Exited (137)");

    // What cannot be restored says so on one line.
    let bogus = husk(&r, &["restore", dir.path().to_str().unwrap()]);
    assert_eq!(bogus.code, Some(2), "{}", bogus.describe());
    assert!(
        bogus.stderr.contains("checkpoint.json") && bogus.stderr.trim().lines().count() == 1,
        "{}",
        bogus.describe()
    );
    let gone = husk(&r, &["checkpoint", &id, again.to_str().unwrap()]);
    assert_ne!(gone.code, Some(0));
    assert!(
        gone.stderr.contains("is not running"),
        "{}",
        gone.describe()
    );
}

/// The uid of the process that runs run `id`'s VM (its record's owner,
/// the keeper, or the keeper's jailed child).
fn owner_uid(r: &Run, id: &str) -> u32 {
    let record = r.runtime.path().join(id).join("state.json");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&record).unwrap()).unwrap();
    let owner = state["owner_pid"].as_i64().expect("owner_pid") as i32;
    let pid = crate::run::vm_process(owner);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a Uid line")
}
