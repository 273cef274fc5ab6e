//! `husk boot`: the project's guest on husk's own VMM, through the binary a
//! user runs.

use husk_tests::process::Finished;
use husk_tests::{guest_artifacts, require_linux_kvm};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

/// A private root disk per test: the guest mounts it read-write.
struct Scratch {
    dir: tempfile::TempDir,
    rootfs: String,
}

impl Scratch {
    fn new() -> Self {
        require_linux_kvm();
        let dir = tempfile::tempdir().unwrap();
        let rootfs = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
        Scratch {
            rootfs: rootfs.display().to_string(),
            dir,
        }
    }

    fn file(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    fn boot(&self, opts: &[&str], command: &[&str]) -> Finished {
        let mut args = vec!["boot", "--rootfs", &self.rootfs];
        args.extend_from_slice(opts);
        args.push("--");
        args.extend_from_slice(command);
        let out = husk_tests::husk::run(&args, TIMEOUT);
        assert!(
            !out.timed_out,
            "husk boot did not finish: {}",
            out.describe()
        );
        out
    }
}

fn sh(script: &str) -> [&str; 3] {
    ["sh", "-c", script]
}

fn sha256(p: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(p).unwrap()).to_vec()
}

#[test]
fn echo_hello() {
    let out = Scratch::new().boot(&[], &["echo", "hello"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hello\n", "{}", out.describe());
}

#[test]
fn exit_statuses_come_through() {
    let s = Scratch::new();
    for (script, want) in [("exit 1", 1), ("exit 42", 42), ("kill -KILL $$", 137)] {
        let out = s.boot(&[], &sh(script));
        assert_eq!(out.code, Some(want), "{script}: {}", out.describe());
    }
}

/// The guest's tick is the LAPIC in TSC-deadline mode, which needs no
/// calibration: calibrating against the PIT on a starved vCPU gave guests
/// a tick far too fast to boot (issue 18, fault::twenty_containers_at_once).
#[test]
fn the_guest_ticks_with_the_tsc_deadline_timer() {
    let out = Scratch::new().boot(
        &[],
        &sh("grep -o -m1 tsc_deadline_timer /proc/cpuinfo; \
             cat /sys/devices/system/clockevents/clockevent0/current_device"),
    );
    assert_eq!(
        out.stdout,
        "tsc_deadline_timer\nlapic-deadline\n",
        "{}",
        out.describe()
    );
}

#[test]
fn two_vcpus() {
    let out = Scratch::new().boot(&["--cpus", "2"], &["nproc"]);
    assert_eq!(out.stdout.trim(), "2", "{}", out.describe());
}

#[test]
fn memory_size_reaches_the_guest() {
    let out = Scratch::new().boot(&["--memory", "256"], &sh("grep MemTotal /proc/meminfo"));
    let kib: u64 = out
        .stdout
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.describe()));
    assert!(
        (200 * 1024..=256 * 1024).contains(&kib),
        "MemTotal {kib} kB for 256 MiB"
    );
}

#[test]
fn cmdline_extra_reaches_proc_cmdline() {
    let out = Scratch::new().boot(
        &["--cmdline", "husk.test=extra-word"],
        &["cat", "/proc/cmdline"],
    );
    assert!(
        out.stdout.contains("husk.test=extra-word"),
        "{}",
        out.describe()
    );
    assert_eq!(out.code, Some(0));
}

#[test]
fn guest_writes_reach_the_host_file() {
    let s = Scratch::new();
    let disk = s.file("data.img", &vec![0u8; 1 << 20]);
    let pattern = "husk-disk-pattern-0123456789";
    let script =
        format!("printf {pattern} | dd of=/dev/vdb bs=512 seek=3 conv=notrunc,fsync 2>/dev/null");
    let out = s.boot(&["--disk", &disk.display().to_string()], &sh(&script));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let data = std::fs::read(&disk).unwrap();
    assert_eq!(&data[1536..1536 + pattern.len()], pattern.as_bytes());
    assert_eq!(data.len(), 1 << 20, "the disk file changed size");
}

#[test]
fn guest_reads_what_the_host_wrote() {
    let s = Scratch::new();
    // Non-repeating bytes, so a misplaced sector would change the digest.
    let bytes: Vec<u8> = (0u32..(1 << 20))
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let disk = s.file("prefilled.img", &bytes);
    let want = Sha256::digest(&bytes);
    let out = s.boot(
        &["--disk", &disk.display().to_string()],
        &sh("sha256sum /dev/vdb"),
    );
    let hex = husk_tests::hex(&want);
    assert!(
        out.stdout.starts_with(&hex),
        "want {hex}: {}",
        out.describe()
    );
}

#[test]
fn read_only_disk_refuses_writes() {
    let s = Scratch::new();
    let disk = s.file("ro.img", &vec![7u8; 1 << 20]);
    let before = sha256(&disk);
    let spec = format!("{},ro", disk.display());
    // blockdev --setrw lifts the kernel's own read-only flag, so the write
    // reaches the device, which must refuse it.
    let script = "cat /sys/block/vdb/ro; blockdev --setrw /dev/vdb 2>/dev/null; \
                  dd if=/dev/zero of=/dev/vdb bs=512 count=8 conv=fsync 2>/dev/null";
    let out = s.boot(&["--disk", &spec], &sh(script));
    assert!(
        out.stdout.starts_with("1\n"),
        "not read-only in the guest: {}",
        out.describe()
    );
    assert_ne!(out.code, Some(0), "the write succeeded: {}", out.describe());
    assert_eq!(sha256(&disk), before, "the read-only disk changed");
}

#[test]
fn odd_sized_disk_rounds_down() {
    let s = Scratch::new();
    let disk = s.file("odd.img", &vec![1u8; (1 << 20) + 100]);
    let out = s.boot(
        &["--disk", &disk.display().to_string()],
        &["cat", "/sys/block/vdb/size"],
    );
    assert_eq!(out.stdout.trim(), "2048", "{}", out.describe());
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), (1 << 20) + 100);
}

#[test]
fn kernel_panic_ends_husk_quickly_with_the_message() {
    let out = Scratch::new().boot(&["--cmdline", "root=/dev/vdz"], &["true"]);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(out.stdout.contains("Kernel panic"), "{}", out.describe());
    assert!(
        out.stderr
            .contains("the guest kernel panicked: VFS: Unable to mount root fs"),
        "{}",
        out.describe()
    );
    assert!(out.elapsed < Duration::from_secs(60), "{}", out.describe());
}

#[test]
fn command_after_dashes_on_the_kernel_cmdline() {
    // The human path: no husk.cmd, the words after `--` are the command.
    let s = Scratch::new();
    let args = [
        "boot",
        "--rootfs",
        &s.rootfs,
        "--cmdline",
        r#"-- sh -c "echo typed by hand; exit 7""#,
    ];
    let out = husk_tests::husk::run(&args, TIMEOUT);
    assert!(out.stdout.contains("typed by hand"), "{}", out.describe());
    assert_eq!(out.code, Some(7), "{}", out.describe());
}

#[test]
fn sigterm_stops_the_guest_cleanly() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let s = Scratch::new();
    let mut child = Command::new(husk_tests::husk::binary())
        .args([
            "boot",
            "--rootfs",
            &s.rootfs,
            "--",
            "sh",
            "-c",
            "echo ready; sleep 100",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("husk printed nothing").unwrap();
    assert_eq!(first, "ready");
    let start = std::time::Instant::now();
    // SAFETY: kill(2) on the child we spawned and have not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    // The guest got Ctrl-Alt-Del; its init sent SIGTERM to everything and
    // SIGKILL 3 s later (busybox sh waiting on a child shrugs off SIGTERM),
    // flushed and reported. Well before husk's own 10 s grace: its hard
    // stop would also exit 143.
    let code = status.code();
    assert!(code == Some(143) || code == Some(137), "{status:?}");
    assert!(
        start.elapsed() < Duration::from_secs(8),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn console_output_is_complete_when_the_guest_ends() {
    // The status write ends the VM at once; the init must drain the UART
    // first or the tail of a long output is lost.
    // 500 lines: more than the UART sends before the command exits. (3000
    // lines made the testbed's L1 kernel overflow its stack in KVM_RUN
    // twice; nested SVM under TCG does not like interrupt storms.)
    let out = Scratch::new().boot(&[], &["seq", "1", "500"]);
    assert_seq_500(&out, "");
}

/// `out` is a successful `seq 1 500`, every line there; `what` prefixes
/// the failure.
fn assert_seq_500(out: &Finished, what: &str) {
    assert_eq!(out.code, Some(0), "{what}{}", out.describe());
    let want: String = (1..=500).map(|i| format!("{i}\n")).collect();
    assert!(
        out.stdout == want,
        "{what}output differs; tail: {:?}",
        &out.stdout[out.stdout.len().saturating_sub(40)..]
    );
}

#[test]
fn console_output_is_complete_when_another_vcpu_sends_it() {
    // The UART's interrupts go to vCPU 1 while the command prints on vCPU 0
    // and exits at once: what vCPU 1 has not sent by then must still come
    // out. (A command that led its own session hung the console up as it
    // exited, and the hangup threw the unsent tail away: `nproc` printed
    // nothing now and then in a 2-vCPU guest.)
    let script = "echo 2 > /proc/irq/4/smp_affinity && exec taskset -c 0 seq 1 500";
    for round in 0..3 {
        let out = Scratch::new().boot(&["--cpus", "2"], &sh(script));
        assert_seq_500(&out, &format!("round {round}: "));
    }
}

#[test]
fn the_command_is_the_consoles_foreground_group_in_pid_1s_session() {
    // Ctrl-C on the console reaches the command's group; the session is
    // PID 1's, so the command's exit does not hang the console up.
    let script = "read -r pid comm state ppid pgrp session tty tpgid rest < /proc/$$/stat; \
                  [ $pgrp = $tpgid ] && echo foreground session=$session";
    let out = Scratch::new().boot(&[], &sh(script));
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "foreground session=1\n", "{}", out.describe());
}

#[test]
fn without_a_command_the_console_shell_reads_stdin() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let s = Scratch::new();
    let mut child = Command::new(husk_tests::husk::binary())
        .args(["boot", "--rootfs", &s.rootfs])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"echo from-$((6*7))-stdin; exit 5\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).replace('\r', "");
    // The shell's own output line, not the terminal's echo of the input.
    assert!(stdout.lines().any(|l| l == "from-42-stdin"), "{stdout}");
    assert_eq!(out.status.code(), Some(5), "{stdout}");
}

#[test]
fn bzimage_boots_through_the_64bit_protocol() {
    let bz = guest_artifacts().bzimage.display().to_string();
    let out = Scratch::new().boot(&["--kernel", &bz], &["echo", "from-bzimage"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "from-bzimage\n", "{}", out.describe());
}
