//! `husk run IMAGE`: containers from the project's test image, each in its
//! own microVM with the agent as PID 1.

use husk_tests::process::Finished;
use husk_tests::require_linux_kvm;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

pub(crate) const TIMEOUT: Duration = Duration::from_secs(120);

/// The test image (busybox in an OCI layout) that scripts/build-guest
/// writes next to the guest kernel.
pub(crate) fn image() -> PathBuf {
    let p = husk_tests::guest_dir().join("husk-test-image");
    assert!(
        p.join("index.json").is_file(),
        "{} is missing: scripts/build-guest builds it",
        p.display()
    );
    p
}

/// `husk run` with its own image cache and runtime dir under `env`.
pub(crate) struct Run {
    pub(crate) cache: tempfile::TempDir,
    pub(crate) runtime: tempfile::TempDir,
}

impl Run {
    pub(crate) fn new() -> Run {
        Run {
            cache: tempfile::tempdir().unwrap(),
            runtime: tempfile::tempdir().unwrap(),
        }
    }

    pub(crate) fn command(&self, flags: &[&str], cmd: &[&str]) -> Command {
        self.command_with_image(&image(), flags, cmd)
    }

    /// `husk run FLAGS IMAGE CMD` for another image than the test image.
    pub(crate) fn command_with_image(
        &self,
        image: &std::path::Path,
        flags: &[&str],
        cmd: &[&str],
    ) -> Command {
        let mut c = self.husk_command(&["run"]);
        c.args(flags).arg(image).args(cmd);
        c
    }

    /// `husk ARGS` with this run's image cache and runtime dir.
    pub(crate) fn husk_command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(husk_tests::husk::binary());
        c.args(args)
            .env("HUSK_IMAGE_CACHE", self.cache.path())
            .env("HUSK_RUNTIME_DIR", self.runtime.path());
        c
    }

    pub(crate) fn run(&self, flags: &[&str], cmd: &[&str]) -> Finished {
        husk_tests::process::run(self.command(flags, cmd), TIMEOUT)
    }

    /// Fails the test if anything is left in the runtime dir.
    pub(crate) fn assert_runtime_empty(&self) {
        let left: Vec<_> = std::fs::read_dir(self.runtime.path())
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .collect();
        assert!(left.is_empty(), "left in the runtime dir: {left:?}");
    }
}

/// A test that fails before removing its detached containers would leave
/// them running, with their TAPs and leases on the host's bridge, and fail
/// the tests that check the bridge after it (a suite on 2026-12-07 lost
/// six z_bridge tests so). So whatever is left is removed, and said.
impl Drop for Run {
    fn drop(&mut self) {
        let Ok(entries) = std::fs::read_dir(self.runtime.path()) else {
            return;
        };
        for e in entries.flatten() {
            if !e.path().join("state.json").is_file() {
                continue;
            }
            let id = e.file_name().to_string_lossy().into_owned();
            let rm = husk_tests::process::run(self.husk_command(&["rm", "-f", &id]), TIMEOUT);
            eprintln!(
                "[e2e] the test left container {id}: husk rm -f exited {:?}",
                rm.code
            );
        }
    }
}

#[test]
fn echo_and_exit_statuses() {
    require_linux_kvm();
    let r = Run::new();
    let out = r.run(&["--rm"], &["echo", "hello from a container"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "hello from a container\n", "{}", out.describe());
    let out = r.run(&[], &["sh", "-c", "echo to-stderr >&2; exit 42"]);
    assert_eq!(out.code, Some(42), "{}", out.describe());
    assert!(out.stderr.contains("to-stderr"), "{}", out.describe());
    // The container's process is PID 1 of its namespace, which its own
    // SIGKILL cannot touch (as under docker); a child can die by one. The
    // OOM test below covers PID 1 killed from outside.
    let out = r.run(&[], &["sh", "-c", "sh -c 'kill -9 $$'; echo child=$?"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "child=137\n", "{}", out.describe());
    let out = r.run(&[], &["/bin/no-such-program"]);
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains("no-such-program"),
        "the error names the program: {}",
        out.describe()
    );
}

#[test]
fn env_cwd_user_hostname_and_image_layers() {
    require_linux_kvm();
    let out = Run::new().run(
        &[
            "-e",
            "GREETING=hi there",
            "-w",
            "/tmp",
            "-u",
            "1000:1000",
            "--hostname",
            "box",
        ],
        &[
            "sh",
            "-c",
            "echo \"$GREETING\"; pwd; id -u; id -g; hostname; cat /etc/husk-test-image; \
             test -e /etc/motd-to-delete && echo whiteout-ignored || echo whiteout-ok",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(
        &lines[..5],
        ["hi there", "/tmp", "1000", "1000", "box"],
        "{}",
        out.describe()
    );
    assert!(out.stdout.contains("husk test image"), "{}", out.describe());
    assert!(out.stdout.contains("whiteout-ok"), "{}", out.describe());
}

#[test]
fn stdin_is_read_and_pid_1_is_the_container_process() {
    require_linux_kvm();
    use std::io::Write;
    use std::process::Stdio;
    let r = Run::new();
    let mut child = r
        .command(
            &["-i"],
            &[
                "sh",
                "-c",
                "echo pid=$$; ls /proc | grep -c '^[0-9]'; tr a-z A-Z",
            ],
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"piped in\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], "pid=1", "{stdout}");
    // sh, ls and grep: nothing of the guest's own processes.
    let n: u32 = lines[1].parse().unwrap();
    assert!(n <= 3, "the container sees {n} processes: {stdout}");
    assert_eq!(lines[2], "PIPED IN", "{stdout}");
}

#[test]
fn a_tty_when_asked() {
    require_linux_kvm();
    let out = Run::new().run(&["-t"], &["sh", "-c", "tty; test -t 0 && echo is-a-tty"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(out.stdout.contains("/dev/pts/"), "{}", out.describe());
    assert!(out.stdout.contains("is-a-tty"), "{}", out.describe());
}

#[test]
fn memory_and_pids_limits_hold() {
    require_linux_kvm();
    let r = Run::new();
    // A string that doubles until the limit stops it: the OOM killer's
    // SIGKILL is status 137.
    let out = r.run(
        &["--memory", "32m"],
        &["awk", "BEGIN { s = \"x\"; while (1) s = s s }"],
    );
    assert_eq!(out.code, Some(137), "{}", out.describe());
    // Start up to 20 sleepers from a subshell that counts them in a file;
    // a failed fork ends the subshell. Only shell builtins run afterwards,
    // since the sleepers may hold every pid the limit allows.
    let out = r.run(
        &["--pids-limit", "8"],
        &[
            "sh",
            "-c",
            "(i=0; while [ $i -lt 20 ]; do sleep 30 & i=$((i+1)); echo $i >/tmp/n; done) 2>/dev/null; \
             read n </tmp/n; read max </sys/fs/cgroup/pids.max; echo started=$n max=$max",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let started: u32 = out
        .stdout
        .trim()
        .strip_suffix(" max=8")
        .and_then(|s| s.strip_prefix("started="))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{}", out.describe()));
    // The shell and the subshell count against the limit too.
    assert!(
        (1..=6).contains(&started),
        "pids.max 8 let {started} sleepers start: {}",
        out.describe()
    );
}

/// `--cpuset-cpus`: every thread of the container's husk, its vCPUs
/// first, may run only on the CPUs named; a CPU the host does not give is
/// one line.
#[test]
fn the_vm_runs_on_the_cpus_cpuset_names() {
    require_linux_kvm();
    let r = Run::new();
    let mut running = husk_tests::process::Running::spawn(r.command(
        &["--cpuset-cpus", "1", "--cpus", "2"],
        &["sh", "-c", "echo started; sleep 10"],
    ));
    assert!(running.wait_for_line("started", TIMEOUT));
    let tasks = format!("/proc/{}/task", vm_process(running.pid()));
    let mut threads = Vec::new();
    for task in std::fs::read_dir(&tasks).unwrap() {
        let status = std::fs::read_to_string(task.unwrap().path().join("status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        threads.push((field("Name:"), field("Cpus_allowed_list:")));
    }
    let out = running.finish(TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let vcpus = threads
        .iter()
        .filter(|(n, _)| n.starts_with("vcpu"))
        .count();
    assert_eq!(vcpus, 2, "{threads:?}");
    assert!(threads.iter().all(|(_, cpus)| cpus == "1"), "{threads:?}");
    let bad = r.run(&["--cpuset-cpus", "1000"], &["true"]);
    assert_ne!(bad.code, Some(0), "{}", bad.describe());
    assert!(bad.stderr.contains("CPU 1000"), "{}", bad.describe());
    assert_eq!(bad.stderr.trim().lines().count(), 1, "{}", bad.describe());
}

/// Processes running the husk binary for `r` (its runtime dir in their
/// environment): other tests run their own husks at the same time.
pub(crate) fn husk_processes(r: &Run) -> Vec<i32> {
    let husk = std::fs::canonicalize(husk_tests::husk::binary()).unwrap();
    let mut mine = b"HUSK_RUNTIME_DIR=".to_vec();
    mine.extend_from_slice(r.runtime.path().as_os_str().as_encoded_bytes());
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == husk))
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == mine.as_slice()))
        })
        .collect()
}

pub(crate) fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn twenty_runs_convert_once_and_leave_nothing_behind() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    let r = Run::new();
    let log = r.cache.path().join("husk.log");
    let run_logged = || {
        let mut c = r.command(&["--rm"], &["true"]);
        c.env("HUSK_LOG", &log).env("HUSK_LOG_LEVEL", "info");
        husk_tests::process::run(c, TIMEOUT)
    };
    let nets_before = entries(std::path::Path::new("/sys/class/net"));
    let tmp_before = entries(&std::env::temp_dir());
    let first = run_logged();
    assert_eq!(first.code, Some(0), "{}", first.describe());
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(text.matches("converted sha256:").count(), 1, "{text}");
    let cache_after_first = entries(r.cache.path());
    for _ in 1..20 {
        let again = run_logged();
        assert_eq!(again.code, Some(0), "{}", again.describe());
    }
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert_eq!(
        text.matches("converted sha256:").count(),
        1,
        "converted again: {text}"
    );
    assert_eq!(
        entries(r.runtime.path()),
        Vec::<String>::new(),
        "run dirs left"
    );
    assert_eq!(entries(r.cache.path()), cache_after_first, "cache grew");
    assert_eq!(husk_processes(&r), Vec::<i32>::new(), "husk processes left");
    // Each run was on the default network (root's default): no TAP, bridge,
    // lease or nftables table of it stays.
    assert_eq!(entries(std::path::Path::new("/sys/class/net")), nets_before);
    assert_eq!(
        entries(std::path::Path::new("/run/husk/network/bridge/leases")),
        Vec::<String>::new(),
        "leases left"
    );
    let tables = std::process::Command::new("/usr/sbin/nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    let tables = String::from_utf8_lossy(&tables.stdout);
    assert!(!tables.contains("huskbr"), "tables left: {tables}");
    assert_eq!(
        entries(&std::env::temp_dir()),
        tmp_before,
        "temp files left"
    );
}

#[test]
fn two_containers_in_two_vms_see_only_their_own() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    let r = Run::new();
    // Each marks its /tmp, waits for the other to have started and done
    // the same, then looks for the other's file, process and hostname.
    let script = |me: &str| {
        format!(
            "touch /tmp/mark-{me}; sleep 1000 & sleep 8; ls /tmp; \
             ps -o comm | grep -cx sleep; hostname"
        )
    };
    let a = r.command(
        &["--rm", "--hostname", "box-a"],
        &["sh", "-c", &script("a")],
    );
    let a = std::thread::spawn(move || husk_tests::process::run(a, TIMEOUT));
    let b = husk_tests::process::run(
        r.command(
            &["--rm", "--hostname", "box-b"],
            &["sh", "-c", &script("b")],
        ),
        TIMEOUT,
    );
    let a = a.join().unwrap();
    for (out, me) in [(&a, "a"), (&b, "b")] {
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert_eq!(
            out.stdout,
            format!("mark-{me}\n1\nbox-{me}\n"),
            "{}",
            out.describe()
        );
    }
    // They overlapped in time, or the test proves nothing.
    assert!(
        a.elapsed > std::time::Duration::from_secs(8),
        "{}",
        a.describe()
    );
}

#[test]
fn ctrl_c_reaches_the_container_and_a_second_one_kills_it() {
    require_linux_kvm();
    let r = Run::new();
    // A trap: the first SIGINT is the container's to handle.
    let mut run = husk_tests::process::Running::spawn(r.command(
        &["--rm"],
        &[
            "sh",
            "-c",
            "trap 'echo got-INT; exit 3' INT; echo ready; while :; do sleep 1; done",
        ],
    ));
    assert!(run.wait_for_line("ready", TIMEOUT), "never ready");
    run.signal(libc::SIGINT);
    let out = run.finish(TIMEOUT);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    assert_eq!(out.stdout, "ready\ngot-INT\n", "{}", out.describe());
    // No handler: PID 1 of a namespace ignores SIGINT; the second Ctrl-C
    // kills everything in the container.
    let mut run = husk_tests::process::Running::spawn(
        r.command(&["--rm"], &["sh", "-c", "echo ready; exec sleep 1000"]),
    );
    assert!(run.wait_for_line("ready", TIMEOUT), "never ready");
    // "ready" comes from the shell before it execs sleep, and the shell
    // catches SIGINT (then dies of it, 130): give the exec time to happen.
    std::thread::sleep(std::time::Duration::from_secs(1));
    run.signal(libc::SIGINT);
    std::thread::sleep(std::time::Duration::from_secs(2));
    run.signal(libc::SIGINT);
    let out = run.finish(TIMEOUT);
    assert_eq!(out.code, Some(137), "{}", out.describe());
    assert_eq!(
        entries(r.runtime.path()),
        Vec::<String>::new(),
        "run dirs left"
    );
    assert_eq!(husk_processes(&r), Vec::<i32>::new(), "husk processes left");
}

/// A directory volume is the host directory itself (virtio-fs): a file the
/// host makes while the container runs is there, what the container writes
/// is on the host before it exits, and links the container plants are only
/// links: nothing of the host's is written through them (the old copy-back
/// of a packed image had the host's root follow them).
#[test]
fn a_directory_volume_is_live_and_its_links_stay_links() {
    require_linux_kvm();
    let r = Run::new();
    let host = tempfile::tempdir().unwrap();
    let shared = host.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    // A path that exists in the container (its root is writable) and on
    // the host, so a write through the link succeeds on one side only.
    let target = std::path::PathBuf::from(format!("/husk-escape-{}", std::process::id()));
    let _ = std::fs::remove_file(&target);
    let script = format!(
        "echo early >/work/early; echo ready; \
         while [ ! -e /work/go ]; do sleep 0.2; done; cat /work/go; \
         ln -s {t} /work/.x.husk-tmp; ln -s {t} /work/link; \
         echo through-the-link >/work/link && echo written-in-the-container",
        t = target.display()
    );
    let mut run = husk_tests::process::Running::spawn(r.command(
        &["--rm", "-v", &format!("{}:/work", shared.display())],
        &["sh", "-c", &script],
    ));
    assert!(run.wait_for_line("ready", TIMEOUT), "never ready");
    assert_eq!(
        std::fs::read_to_string(shared.join("early")).unwrap(),
        "early\n",
        "the container's write is not on the host while it runs"
    );
    std::fs::write(shared.join("go"), "made by the host meanwhile\n").unwrap();
    let out = run.finish(TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "ready\nmade by the host meanwhile\nwritten-in-the-container\n",
        "{}",
        out.describe()
    );
    for link in ["link", ".x.husk-tmp"] {
        let meta = std::fs::symlink_metadata(shared.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link}");
    }
    assert!(
        !target.exists(),
        "something wrote through the container's link on the host"
    );
}

/// husk SIGKILLed while the container writes to a directory volume: every
/// write the container finished with fsync is in the host directory; no
/// virtiofsd, socket or run directory is left once the next run has
/// started, and that run works.
#[test]
fn a_killed_husk_loses_no_synced_write_and_leaves_nothing_behind() {
    require_linux_kvm();
    let r = Run::new();
    let host = tempfile::tempdir().unwrap();
    let shared = host.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let script = "i=0; while :; do echo $i | dd of=/work/f$i conv=fsync 2>/dev/null \
                  && echo synced$i; i=$((i+1)); done";
    let mut run = husk_tests::process::Running::spawn(r.command(
        &["--rm", "-v", &format!("{}:/work", shared.display())],
        &["sh", "-c", script],
    ));
    assert!(run.wait_for_line("synced20", TIMEOUT), "no writes");
    run.signal(libc::SIGKILL);
    let out = run.finish(TIMEOUT);
    let synced: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.strip_prefix("synced"))
        .collect();
    assert!(synced.len() > 20, "{}", out.describe());
    for i in synced {
        assert_eq!(
            std::fs::read_to_string(shared.join(format!("f{i}"))).unwrap_or_default(),
            format!("{i}\n"),
            "write {i} was reported synced but is not on the host"
        );
    }
    // virtiofsd dies with its husk (PR_SET_PDEATHSIG), asynchronously.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while let Some(pid) = husk_tests::process::find_by_cmdline(&shared.display().to_string()) {
        assert!(
            std::time::Instant::now() < deadline,
            "virtiofsd (pid {pid}) outlived its husk"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let next = r.run(
        &["--rm", "-v", &format!("{}:/work", shared.display())],
        &["cat", "/work/f0"],
    );
    assert_eq!(next.code, Some(0), "{}", next.describe());
    assert_eq!(next.stdout, "0\n", "{}", next.describe());
    r.assert_runtime_empty();
}

#[test]
fn volumes_read_only_read_write_and_disk_images() {
    require_linux_kvm();
    let r = Run::new();
    let host = tempfile::tempdir().unwrap();
    let ro = host.path().join("ro");
    let rw = host.path().join("rw");
    std::fs::create_dir_all(&ro).unwrap();
    std::fs::create_dir_all(rw.join("sub")).unwrap();
    std::fs::write(ro.join("given"), "read me\n").unwrap();
    std::fs::write(rw.join("old"), "old\n").unwrap();
    std::fs::write(rw.join("sub/deleted"), "x").unwrap();
    // A disk image file volume: the container's writes land in the file.
    let disk = host.path().join("disk.ext4");
    husk_image::mkfs::Ext4::new(32 << 20).make(&disk).unwrap();
    let vol = |p: &std::path::Path, at: &str| format!("{}:{at}", p.display());
    let out = r.run(
        &[
            "-v",
            &format!("{}:ro", vol(&ro, "/in")),
            "-v",
            &vol(&rw, "/work"),
            "-v",
            &vol(&disk, "/disk"),
        ],
        &[
            "sh",
            "-c",
            "cat /in/given; echo no >/in/new 2>/dev/null && echo ro-written || echo ro-refused; \
             cat /work/old; echo made >/work/new; rm /work/sub/deleted; mkdir /work/d; \
             echo deep >/work/d/f; echo on-disk >/disk/f; echo done",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "read me\nro-refused\nold\ndone\n",
        "{}",
        out.describe()
    );
    assert!(!ro.join("new").exists());
    assert_eq!(std::fs::read_to_string(rw.join("new")).unwrap(), "made\n");
    assert_eq!(std::fs::read_to_string(rw.join("d/f")).unwrap(), "deep\n");
    assert_eq!(std::fs::read_to_string(rw.join("old")).unwrap(), "old\n");
    assert!(!rw.join("sub/deleted").exists() && rw.join("sub").is_dir());
    assert!(!rw.join("lost+found").exists());
    // The disk image keeps the write: a second container reads it back, and
    // mounted read-only it cannot be written.
    let out = r.run(
        &["-v", &format!("{}:ro", vol(&disk, "/disk"))],
        &[
            "sh",
            "-c",
            "cat /disk/f; touch /disk/g 2>/dev/null && echo written || echo refused",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "on-disk\nrefused\n", "{}", out.describe());
    // Bad volumes fail before a VM starts, naming the problem.
    let notes = host.path().join("notes.txt");
    std::fs::write(&notes, "not a disk").unwrap();
    for (spec, says) in [
        (vol(&notes, "/n"), "disk image"),
        (vol(&host.path().join("missing"), "/m"), "missing"),
        (vol(&ro, "relative"), "absolute"),
    ] {
        let out = r.run(&["-v", &spec], &["true"]);
        assert_ne!(out.code, Some(0), "{}", out.describe());
        assert!(out.stderr.contains(says), "{spec}: {}", out.describe());
        assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
    }
}

/// `husk SUBCOMMAND ARGS` against the same runtime dir as `r`'s runs.
pub(crate) fn husk(r: &Run, args: &[&str]) -> Finished {
    husk_tests::process::run(r.husk_command(args), TIMEOUT)
}

/// Polls `husk ps -a` until the container's line says `status`.
pub(crate) fn wait_status(r: &Run, id: &str, status: &str) -> Finished {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let ps = husk(r, &["ps", "-a"]);
        let hit = ps
            .stdout
            .lines()
            .any(|l| l.starts_with(id) && l.ends_with(status));
        if hit || std::time::Instant::now() > deadline {
            assert!(hit, "{id} never {status}: {}", ps.describe());
            return ps;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn detached_runs_ps_exec_logs_kill_rm() {
    require_linux_kvm();
    let r = Run::new();
    let started = r.run(
        &["-d"],
        &[
            "sh",
            "-c",
            "echo started; echo to-stderr >&2; while :; do sleep 1; done",
        ],
    );
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    assert_eq!(id.len(), 12, "{}", started.describe());
    // Back as soon as the container runs, not when it ends.
    assert!(started.elapsed < Duration::from_secs(60));
    let ps = husk(&r, &["ps"]);
    assert!(
        ps.stdout
            .lines()
            .any(|l| l.starts_with(&id) && l.ends_with("Up")),
        "{}",
        ps.describe()
    );
    assert_eq!(husk(&r, &["ps", "-q"]).stdout, format!("{id}\n"));
    // exec joins the container: its PID 1 is the container's shell.
    let out = husk(
        &r,
        &[
            "exec",
            "-e",
            "X=from-exec",
            &id[..6],
            "sh",
            "-c",
            "echo $X; tr '\\0' ' ' </proc/1/cmdline; echo; hostname; exit 5",
        ],
    );
    assert_eq!(out.code, Some(5), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "from-exec", "{}", out.describe());
    assert!(
        lines[1].starts_with("sh -c echo started"),
        "{}",
        out.describe()
    );
    assert_eq!(lines[2], id, "{}", out.describe());
    let logs = husk(&r, &["logs", &id]);
    assert_eq!(logs.code, Some(0), "{}", logs.describe());
    assert_eq!(logs.stdout, "started\n", "{}", logs.describe());
    assert_eq!(logs.stderr, "to-stderr\n", "{}", logs.describe());
    // PID 1 of a namespace has no handler for TERM: still up. KILL ends it.
    assert_eq!(husk(&r, &["kill", &id, "TERM"]).code, Some(0));
    std::thread::sleep(Duration::from_secs(1));
    wait_status(&r, &id, "Up");
    let killed = husk(&r, &["kill", &id]);
    assert_eq!(killed.code, Some(0), "{}", killed.describe());
    wait_status(&r, &id, "Exited (137)");
    assert_eq!(husk(&r, &["logs", &id]).stdout, "started\n");
    let late = husk(&r, &["exec", &id, "true"]);
    assert_ne!(late.code, Some(0));
    assert!(late.stderr.contains("not running"), "{}", late.describe());
    let rm = husk(&r, &["rm", &id]);
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
    assert_eq!(husk(&r, &["ps", "-a", "-q"]).stdout, "");

    // A husk process that dies (SIGKILL) takes its VM with it; the record
    // says so, and nothing blocks the next run.
    let started = r.run(&["-d"], &["sleep", "1000"]);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    // One husk process owns the VM, jailed under a keeper as root.
    let owners = husk_processes(&r);
    assert_eq!(
        owners.len(),
        2,
        "the keeper and the jailed husk: {owners:?}"
    );
    // SAFETY: kill(2) with a pid read from /proc just now: the keeper (the
    // first), whose jailed child dies with it.
    unsafe { libc::kill(*owners.iter().min().unwrap(), libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(500));
    wait_status(&r, &id, "Dead (its husk process is gone)");
    let again = r.run(&["--rm"], &["echo", "next"]);
    assert_eq!(again.stdout, "next\n", "{}", again.describe());
    assert_eq!(husk(&r, &["rm", &id]).code, Some(0));
    assert_eq!(entries(r.runtime.path()), Vec::<String>::new());
    assert_eq!(husk_processes(&r), Vec::<i32>::new());
}

#[test]
fn oci_and_docker_archives_run_like_the_layout() {
    require_linux_kvm();
    let r = Run::new();
    let layout = r.run(&["--rm"], &["cat", "/etc/husk-test-image"]);
    assert_eq!(layout.code, Some(0), "{}", layout.describe());
    for name in ["husk-test-image.oci.tar", "husk-test-image.docker.tar"] {
        let archive = husk_tests::guest_dir().join(name);
        assert!(
            archive.is_file(),
            "{} is missing: scripts/build-guest",
            archive.display()
        );
        let mut c = Command::new(husk_tests::husk::binary());
        c.args(["run", "--rm"])
            .arg(&archive)
            .args([
                "sh",
                "-c",
                "cat /etc/husk-test-image; test -e /etc/motd-to-delete || echo whiteout-ok",
            ])
            .env("HUSK_IMAGE_CACHE", r.cache.path())
            .env("HUSK_RUNTIME_DIR", r.runtime.path());
        let out = husk_tests::process::run(c, TIMEOUT);
        assert_eq!(out.code, Some(0), "{name}: {}", out.describe());
        assert!(
            out.stdout.ends_with("whiteout-ok\n"),
            "{name}: {}",
            out.describe()
        );
        assert!(
            out.stdout.starts_with(&layout.stdout),
            "{name}: {}",
            out.describe()
        );
    }
}

#[test]
fn a_scratch_disk_holds_the_writable_layer() {
    require_linux_kvm();
    let r = Run::new();
    // 100 MiB written by a container limited to 64 MiB: the changes are on
    // the scratch disk, not in memory.
    let out = r.run(
        &["--rm", "--memory", "64m", "--scratch", "256m"],
        &[
            "sh",
            "-c",
            "grep -o 'upperdir=[^,]*' /proc/mounts; \
             dd if=/dev/zero of=/big bs=1M count=100 2>/dev/null && echo wrote; \
             wc -c </big",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.contains("/scratch/")),
        "{}",
        out.describe()
    );
    assert_eq!(lines[1..], ["wrote", "104857600"], "{}", out.describe());
    let bad = r.run(&["--scratch", "1k"], &["true"]);
    assert_eq!(bad.code, Some(2), "{}", bad.describe());
    assert!(bad.stderr.contains("--scratch"), "{}", bad.describe());
}

#[test]
fn net_gives_the_container_the_vms_interface() {
    require_linux_kvm();
    let r = Run::new();
    let _tap = crate::net::Tap::with_address("husk-run0", "10.0.7.1/24");
    let listener = std::net::TcpListener::bind("10.0.7.1:7070").unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = String::new();
        std::io::Read::read_to_string(&mut s, &mut got).unwrap();
        got
    });
    let out = r.run(
        &["--rm", "--net", "tap=husk-run0,ip=10.0.7.2/24"],
        &[
            "sh",
            "-c",
            "ip -4 -o addr show eth0 | grep -o 'inet [0-9./]*'; \
             echo hello-from-the-container | nc 10.0.7.1 7070 && echo sent",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "inet 10.0.7.2/24\nsent\n", "{}", out.describe());
    assert_eq!(server.join().unwrap(), "hello-from-the-container\n");
    // SIGUSR1 asks husk where the virtio-net queues stand (for a stall):
    // one line on stderr, and the run goes on.
    let mut run = husk_tests::process::Running::spawn(r.command(
        &["--rm", "--net", "tap=husk-run0,ip=10.0.7.2/24"],
        &[
            "sh",
            "-c",
            "ping -c 1 -W 5 10.0.7.1 >/dev/null; echo ready; sleep 2; echo done",
        ],
    ));
    assert!(run.wait_for_line("ready", TIMEOUT), "never ready");
    run.signal(husk_vmm::REPORT_SIGNAL);
    let out = run.finish(TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "ready\ndone\n", "{}", out.describe());
    let report = out
        .stderr
        .lines()
        .find(|l| l.starts_with("husk: virtio-net eth0: rx avail="))
        .unwrap_or_else(|| panic!("no queue report: {}", out.describe()));
    // The ping went out on tx and its answer came in on rx.
    assert!(!report.contains("tx avail=0 "), "{report}");
    // And the VM's own line: running, exits counted.
    let vm = out
        .stderr
        .lines()
        .find(|l| l.starts_with("husk: vm: 1 vCPU(s), "))
        .unwrap_or_else(|| panic!("no VM report: {}", out.describe()));
    assert!(
        vm.contains("paused false") && vm.contains("stopping false"),
        "{vm}"
    );
    assert!(!vm.contains(", 0 exits handled"), "{vm}");
    assert!(!vm.contains("event loop 0 passes"), "{vm}");
    // Where the vCPU was (the VM paused for a moment to read it), and
    // every thread's state.
    let stderr = &out.stderr;
    assert!(
        stderr.lines().any(|l| l.starts_with("husk: vCPU 0 rip 0x")),
        "no vCPU position: {}",
        out.describe()
    );
    assert!(
        stderr.lines().any(|l| l.starts_with("husk: threads: ")),
        "no threads: {}",
        out.describe()
    );
    let rx = report.split("; ").next().unwrap_or_default();
    assert!(!rx.ends_with("interrupts=0"), "{report}");
    // With --network none: the container's own namespace, with no NIC of
    // the VM.
    let out = r.run(
        &["--rm", "--network", "none"],
        &[
            "sh",
            "-c",
            "test -e /sys/class/net/lo && ls /sys/class/net | grep -c eth",
        ],
    );
    assert_eq!(out.stdout, "0\n", "{}", out.describe());
}

/// `--log-opt max-size/max-file`: a detached container that prints more
/// than its logs hold keeps only the newest, in that many files; a
/// foreground run, which keeps no logs, refuses the flag.
#[test]
fn a_detached_containers_logs_rotate_at_their_size() {
    require_linux_kvm();
    let r = Run::new();
    let refused = r.run(&["--rm", "--log-opt", "max-size=4k"], &["true"]);
    assert_eq!(refused.code, Some(2), "{}", refused.describe());
    assert!(
        refused.stderr.contains("--log-opt"),
        "{}",
        refused.describe()
    );
    let started = r.run(
        &[
            "-d",
            "--network",
            "none",
            "--log-opt",
            "max-size=4k",
            "--log-opt",
            "max-file=2",
        ],
        &["seq", "1", "5000"],
    );
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    wait_status(&r, &id, "Exited (0)");
    let logs = husk(&r, &["logs", &id]);
    assert_eq!(logs.code, Some(0), "{}", logs.describe());
    // 5000 numbers are 23893 bytes; two files of 4 KiB keep the last of
    // them, whole lines but for the oldest, which a rotation may cut.
    let out = &logs.stdout;
    assert!(
        out.len() > 4096 && out.len() <= 8192,
        "{} bytes kept",
        out.len()
    );
    let numbers: Vec<u64> = out.lines().skip(1).map(|l| l.parse().unwrap()).collect();
    let first = numbers[0];
    let expected: Vec<u64> = (first..=5000).collect();
    assert_eq!(numbers, expected);
    let files: Vec<String> = std::fs::read_dir(r.runtime.path().join(&id))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("stdout.log"))
        .collect();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(husk(&r, &["rm", &id]).code, Some(0));
}

/// `--cpu-shares`: the run's husk, and with it its VM's threads, sits in a
/// host cgroup of its own whose `cpu.weight` is runc's conversion of the
/// shares (512 → 20); shares out of Docker's range are refused.
#[test]
fn cpu_shares_put_the_vm_in_a_host_cgroup_of_that_weight() {
    require_linux_kvm();
    husk_compare::runner::ensure_cgroup2();
    let r = Run::new();
    let mut running = husk_tests::process::Running::spawn(r.command(
        &["--rm", "--network", "none", "--cpu-shares", "512"],
        &["sh", "-c", "echo started; sleep 5"],
    ));
    assert!(running.wait_for_line("started", TIMEOUT));
    let cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", running.pid())).unwrap();
    let path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or_default()
        .to_owned();
    let weight = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cpu.weight"));
    let vcpus_there = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/cgroup.threads"))
        .map(|t| t.lines().count())
        .unwrap_or(0);
    let out = running.finish(TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(path.starts_with("/husk/"), "{cgroup}");
    assert_eq!(weight.unwrap().trim(), "20");
    assert!(vcpus_there > 2, "the VM's threads are elsewhere");
    let bad = r.run(&["--cpu-shares", "1"], &["true"]);
    assert_eq!(bad.code, Some(2), "{}", bad.describe());
    assert!(bad.stderr.contains("--cpu-shares 1:"), "{}", bad.describe());
}

/// The reader of the agent connection, the first host code to parse what
/// the guest sends, runs under its own seccomp filter: a call outside it
/// (`HUSK_SECCOMP_DENY=agent-reader:recvfrom` takes recvfrom out of that
/// list only, so the reader's first receive is refused) does not run, and
/// the run ends naming the thread and the call. The same
/// run without the denial prints the output (the filter lets a run be).
#[test]
fn the_agent_readers_forbidden_call_ends_the_run_naming_it() {
    require_linux_kvm();
    let r = Run::new();
    let ok = r.run(
        &["--rm", "--network", "none"],
        &["echo", "through the reader"],
    );
    assert_eq!(ok.code, Some(0), "{}", ok.describe());
    assert_eq!(ok.stdout, "through the reader\n", "{}", ok.describe());
    let mut c = r.command(&["--rm", "--network", "none"], &["echo", "never shown"]);
    c.env("HUSK_SECCOMP_DENY", "agent-reader:recvfrom");
    let out = husk_tests::process::run(c, TIMEOUT);
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(!out.stdout.contains("never shown"), "{}", out.describe());
    assert!(
        out.stderr
            .contains("the agent connection's reader (the guest's frames) made a system call outside its filter: recvfrom"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("panicked"), "{}", out.describe());

    // `husk exec` (a host process with no VM of its own) reads the guest's
    // frames under the same filter: the call is refused and named.
    let detached = r.run(&["-d", "--network", "none"], &["sleep", "600"]);
    assert_eq!(detached.code, Some(0), "{}", detached.describe());
    let id = detached.stdout.trim();
    let exec = |deny: Option<&str>| {
        let mut c = r.husk_command(&["exec", id, "echo", "from exec"]);
        if let Some(d) = deny {
            c.env("HUSK_SECCOMP_DENY", d);
        }
        husk_tests::process::run(c, TIMEOUT)
    };
    let ok = exec(None);
    assert_eq!(ok.code, Some(0), "{}", ok.describe());
    assert_eq!(ok.stdout, "from exec\n", "{}", ok.describe());
    let out = exec(Some("agent-reader:recvfrom"));
    assert_ne!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stderr.contains(
            "the agent connection's reader (the guest's frames) made a system call outside its filter: recvfrom (number 45); it did not run"
        ) && !out.stderr.contains("VM was stopped"),
        "{}",
        out.describe()
    );
    let rm = husk_tests::process::run(r.husk_command(&["rm", "-f", id]), TIMEOUT);
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
}

/// `husk run --jail`: once the VM is built, the process that runs it and
/// the session (a child of the husk the user started, which stays root to
/// tear the network down) sees only the run's directory, in a mount
/// namespace of its own, as the jail's user, with no capability left and
/// no way back; the container still reads and writes its volume, and its
/// status comes through. From the pool too (the clone's restore enters
/// the jail the same way). A SIGTERM sent to the run's pid reaches the
/// container. (Detached and checkpointed: tests/e2e/checkpoint.rs.)
#[test]
fn a_jailed_run_sees_only_its_directory_as_its_own_user() {
    require_linux_kvm();
    let r = Run::new();
    let host = tempfile::tempdir().unwrap();
    let volume = format!("{}:/vol", host.path().display());
    let script = "cat /vol/in; echo out > /vol/out; echo ready; \
                  while [ ! -e /vol/go ]; do sleep 0.2; done; exit 3";
    std::fs::write(host.path().join("in"), "from the host\n").unwrap();
    let mut run = husk_tests::process::Running::spawn(r.command(
        &[
            "--jail",
            "--jail-user",
            "4242:4343",
            "--rm",
            "--network",
            "none",
            "-v",
            &volume,
        ],
        &["sh", "-c", script],
    ));
    assert!(run.wait_for_line("ready", TIMEOUT), "never ready");
    let keeper = run.pid();
    let jailed = children_of(keeper);
    assert_eq!(jailed.len(), 1, "the keeper's children: {jailed:?}");
    let jailed = jailed[0];
    let status = |pid: i32| std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |text: &str, name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    };
    let (k, j) = (status(keeper), status(jailed));
    assert_eq!(field(&k, "Uid"), "0 0 0 0", "the keeper stays root");
    assert_eq!(field(&j, "Uid"), "4242 4242 4242 4242");
    assert_eq!(field(&j, "Gid"), "4343 4343 4343 4343");
    assert_eq!(field(&j, "Groups"), "");
    for caps in ["CapEff", "CapPrm", "CapBnd", "CapAmb"] {
        assert_eq!(field(&j, caps), "0000000000000000", "{caps}");
    }
    assert_eq!(field(&j, "NoNewPrivs"), "1");
    // PID 1 of a pid namespace of its own.
    assert_eq!(field(&j, "NSpid"), format!("{jailed} 1"));
    let ns = |pid: &str, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    // And, with no published port, a network namespace of its own.
    for kind in ["mnt", "pid", "net"] {
        assert_ne!(
            ns(&jailed.to_string(), kind),
            ns("self", kind),
            "the host's {kind}"
        );
    }
    // Its root holds the run's directory, at its path, and nothing else.
    let root = std::path::PathBuf::from(format!("/proc/{jailed}/root"));
    let runtime = r.runtime.path().canonicalize().unwrap();
    let top: Vec<String> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let first = runtime.components().nth(1).unwrap();
    assert_eq!(top, [first.as_os_str().to_string_lossy()], "{root:?}");
    let runs: Vec<_> = std::fs::read_dir(root.join(runtime.strip_prefix("/").unwrap()))
        .unwrap()
        .collect();
    assert_eq!(runs.len(), 1, "only this run's directory: {runs:?}");
    std::fs::write(host.path().join("go"), "").unwrap();
    let out = run.finish(TIMEOUT);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    assert_eq!(out.stdout, "from the host\nready\n", "{}", out.describe());
    assert_eq!(
        std::fs::read_to_string(host.path().join("out")).unwrap(),
        "out\n"
    );
    r.assert_runtime_empty();

    // This run makes the template, in the jailed process before the jail:
    // the threads of the template's VM (its report thread too) end before
    // the jail, so every thread of the run is in the jail's namespaces.
    let pool = tempfile::tempdir().unwrap();
    let mut c = r.command(
        &["--jail", "--rm", "--network", "none"],
        &[
            "sh",
            "-c",
            "trap 'exit 5' TERM; echo cloned; while :; do sleep 1; done",
        ],
    );
    c.env("HUSK_POOL", "on")
        .env("HUSK_POOL_DIR", pool.path())
        .env("HUSK_TIMINGS", "1");
    let mut run = husk_tests::process::Running::spawn(c);
    assert!(run.wait_for_line("cloned", TIMEOUT), "never ready");
    let jailed = vm_process(run.pid());
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{jailed}/task"))
        .unwrap()
        .map(|t| t.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(tasks.len() > 2, "{tasks:?}");
    for tid in &tasks {
        let comm = std::fs::read_to_string(format!("/proc/{jailed}/task/{tid}/comm"));
        for kind in ["mnt", "net"] {
            assert_eq!(
                ns(&format!("{jailed}/task/{tid}"), kind),
                ns(&jailed.to_string(), kind),
                "{kind} namespace of thread {tid} ({comm:?})"
            );
        }
    }
    assert_ne!(ns(&jailed.to_string(), "mnt"), ns("self", "mnt"));
    run.signal(libc::SIGTERM);
    let cloned = run.finish(TIMEOUT);
    assert_eq!(cloned.code, Some(5), "{}", cloned.describe());
    assert_eq!(cloned.stdout, "cloned\n", "{}", cloned.describe());
    assert!(
        cloned.stderr.contains("template_ready"),
        "{}",
        cloned.describe()
    );

    // A stop signal sent to the run's pid (the keeper) reaches the
    // container once, through the jailed process.
    let mut run = husk_tests::process::Running::spawn(r.command(
        &["--jail", "--rm", "--network", "none"],
        &[
            "sh",
            "-c",
            "trap 'echo got-TERM; exit 4' TERM; echo ready; while :; do sleep 1; done",
        ],
    ));
    assert!(run.wait_for_line("ready", TIMEOUT), "never ready");
    run.signal(libc::SIGTERM);
    let out = run.finish(TIMEOUT);
    assert_eq!(out.code, Some(4), "{}", out.describe());
    assert_eq!(out.stdout, "ready\ngot-TERM\n", "{}", out.describe());
}

/// The process that runs the VM of the `husk run` with pid `pid`: its
/// jailed child (the default as root), or itself.
pub(crate) fn vm_process(pid: i32) -> i32 {
    let husk = std::fs::canonicalize(husk_tests::husk::binary()).unwrap();
    let jailed: Vec<i32> = children_of(pid)
        .into_iter()
        .filter(|c| std::fs::read_link(format!("/proc/{c}/exe")).is_ok_and(|e| e == husk))
        .collect();
    match jailed.as_slice() {
        [child] => *child,
        _ => pid,
    }
}

/// The pids whose parent is `pid`.
pub(crate) fn children_of(pid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    let after = &s[s.rfind(')')? + 2..];
                    after.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(pid)
        })
        .collect()
}
