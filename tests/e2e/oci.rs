//! husk as an OCI runtime, driven the way conmon and containerd's shim
//! drive runc: `create` with the caller's pipes as the container's stdio
//! and a pid file, `start`, `state`, `kill`, `delete`; the pid in the pid
//! file is waited for as a subreaper waits for it.

use husk_tests::require_linux_kvm;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

/// A bundle: the test image unpacked as `rootfs`, and the default spec
/// running `script`.
pub(crate) fn bundle(dir: &Path, script: &str) -> PathBuf {
    let b = dir.join("bundle");
    let image = husk_image::Image::open(&husk_tests::guest_dir().join("husk-test-image"))
        .expect("the test image (scripts/build-guest)");
    image.unpack(&b.join("rootfs"), &mut |_| {}).unwrap();
    let spec = husk_wire::spec::default_spec(vec!["sh".into(), "-c".into(), script.into()]);
    std::fs::write(b.join("config.json"), serde_json::to_vec(&spec).unwrap()).unwrap();
    b
}

/// `husk --root ROOT ARGS...`, waited for; (exit code, stdout, stderr).
fn husk(root: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    runtime(&husk_tests::husk::binary(), root, args)
}

/// `RUNTIME --root ROOT ARGS...` (husk, crun or runc), waited for.
pub(crate) fn runtime(program: &Path, root: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut c = Command::new(program);
    c.arg("--root").arg(root).args(args);
    let out = husk_tests::process::run(c, TIMEOUT);
    (out.code, out.stdout, out.stderr)
}

/// Becomes a subreaper once, as conmon is: a monitor whose `create` has
/// exited is then our child.
fn subreaper() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0);
    });
}

/// A created container: its pid (from the pid file) and where its stdout
/// and stderr go.
pub(crate) struct Created {
    pub pid: i32,
    pub out: PathBuf,
    pub err: PathBuf,
}

fn create(root: &Path, dir: &Path, bundle: &Path, id: &str) -> Created {
    create_with(root, dir, bundle, id, &[])
}

fn create_with(root: &Path, dir: &Path, bundle: &Path, id: &str, more: &[&str]) -> Created {
    let program = husk_tests::husk::binary();
    try_create(&program, root, dir, bundle, id, more).unwrap_or_else(|e| panic!("{e}"))
}

/// `RUNTIME create` as conmon runs it: the caller's files as stdio, a pid
/// file; the created container, or why not.
pub(crate) fn try_create(
    program: &Path,
    root: &Path,
    dir: &Path,
    bundle: &Path,
    id: &str,
    more: &[&str],
) -> Result<Created, String> {
    subreaper();
    let (out, err, pid_file) = (
        dir.join(format!("{id}.out")),
        dir.join(format!("{id}.err")),
        dir.join(format!("{id}.pid")),
    );
    let status = Command::new(program)
        .arg("--root")
        .arg(root)
        .args(["create", "--bundle"])
        .arg(bundle)
        .arg("--pid-file")
        .arg(&pid_file)
        .args(more)
        .arg(id)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    let said = std::fs::read_to_string(&err).unwrap_or_default();
    if !status.success() {
        return Err(format!("create {id}: {status}: {said}"));
    }
    let pid = std::fs::read_to_string(&pid_file)
        .map_err(|e| format!("create {id}: pid file: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("create {id}: pid file: {e}"))?;
    Ok(Created { pid, out, err })
}

/// Waits for the pid as its subreaper: the exit code, or 128 + signal.
pub(crate) fn wait(pid: i32) -> i32 {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let mut status = 0;
        // SAFETY: waitpid on a pid we inherited, into a local.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                128 + libc::WTERMSIG(status)
            };
        }
        assert!(r == 0, "waitpid {pid}: {}", std::io::Error::last_os_error());
        assert!(Instant::now() < deadline, "pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn state(root: &Path, id: &str) -> serde_json::Value {
    let (code, out, err) = husk(root, &["state", id]);
    assert_eq!(code, Some(0), "state {id}: {err}");
    serde_json::from_str(&out).unwrap()
}

#[test]
fn create_start_state_and_delete_like_runc() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        "echo out; echo err >&2; uname -r; echo written >/in-rootfs; exit 3",
    );
    let c = create(&root, dir.path(), &b, "c1");
    let s = state(&root, "c1");
    assert_eq!(
        (s["status"].as_str(), s["pid"].as_i64()),
        (Some("created"), Some(c.pid as i64))
    );
    assert_eq!(s["bundle"], b.canonicalize().unwrap().display().to_string());
    let (code, listed, _) = husk(&root, &["list", "--format", "json"]);
    assert_eq!(code, Some(0));
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed[0]["id"], "c1");
    assert_eq!(listed[0]["status"], "created");
    assert_eq!(husk(&root, &["start", "c1"]).0, Some(0));
    assert_eq!(wait(c.pid), 3);
    let s = state(&root, "c1");
    assert_eq!(
        (s["status"].as_str(), s["pid"].as_i64()),
        (Some("stopped"), Some(0))
    );
    let out = std::fs::read_to_string(&c.out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "out", "{out}");
    // The guest's kernel, not this host's: the container ran in a VM.
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(lines[1], host.trim(), "{out}");
    assert_eq!(std::fs::read_to_string(&c.err).unwrap(), "err\n");
    // The rootfs is the bundle's directory itself.
    assert_eq!(
        std::fs::read_to_string(b.join("rootfs/in-rootfs")).unwrap(),
        "written\n"
    );
    let (code, _, err) = husk(&root, &["start", "c1"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("stopped"), "{err}");
    assert_eq!(husk(&root, &["delete", "c1"]).0, Some(0));
    let (code, _, err) = husk(&root, &["state", "c1"]);
    assert_eq!(code, Some(1));
    assert_eq!(err.trim(), "husk: container c1 does not exist");
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

#[test]
fn kill_forwards_signals_and_kill_9_ends_the_vm() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        "trap 'echo got-term; exit 7' TERM; echo up; while :; do sleep 0.1; done",
    );
    let c = create(&root, dir.path(), &b, "term");
    assert_eq!(husk(&root, &["start", "term"]).0, Some(0));
    wait_for_file_line(&c.out, "up");
    assert_eq!(husk(&root, &["kill", "term", "TERM"]).0, Some(0));
    assert_eq!(wait(c.pid), 7);
    assert!(std::fs::read_to_string(&c.out)
        .unwrap()
        .contains("got-term"));
    assert_eq!(husk(&root, &["delete", "term"]).0, Some(0));

    let c = create(&root, dir.path(), &b, "nine");
    assert_eq!(husk(&root, &["start", "nine"]).0, Some(0));
    let (code, _, err) = husk(&root, &["delete", "nine"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("not stopped: running"), "{err}");
    assert_eq!(husk(&root, &["kill", "nine", "KILL"]).0, Some(0));
    assert_eq!(wait(c.pid), 128 + libc::SIGKILL);
    assert_eq!(state(&root, "nine")["status"], "stopped");
    assert_eq!(husk(&root, &["delete", "nine"]).0, Some(0));
    // Its virtiofsds went with it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while let Some(pid) = husk_tests::process::find_by_cmdline(&b.display().to_string()) {
        assert!(
            Instant::now() < deadline,
            "pid {pid} outlived its container"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

fn wait_for_file_line(path: &Path, line: &str) {
    let deadline = Instant::now() + TIMEOUT;
    while !std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .any(|l| l == line)
    {
        assert!(
            Instant::now() < deadline,
            "no {line:?} in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn bad_input_is_one_line_and_json_in_the_log() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let empty = dir.path().join("empty-bundle");
    std::fs::create_dir(&empty).unwrap();
    let log = dir.path().join("log.json");
    let mut c = Command::new(husk_tests::husk::binary());
    c.arg("--root")
        .arg(&root)
        .arg("--log")
        .arg(&log)
        .args(["--log-format", "json", "create", "--bundle"])
        .arg(&empty)
        .arg("x");
    let out = husk_tests::process::run(c, TIMEOUT);
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("config.json"), "{}", out.describe());
    let line: serde_json::Value =
        serde_json::from_str(std::fs::read_to_string(&log).unwrap().trim()).unwrap();
    assert_eq!(line["level"], "error");
    assert!(line["msg"].as_str().unwrap().contains("config.json"));
    let (code, _, err) = husk(&root, &["state", "nope"]);
    assert_eq!(
        (code, err.trim()),
        (Some(1), "husk: container nope does not exist")
    );
    let (code, _, err) = husk(&root, &["start", "nope"]);
    assert_eq!(
        (code, err.trim()),
        (Some(1), "husk: container nope does not exist")
    );
    // A terminal without a socket to hand it to.
    let b = terminal_bundle(dir.path(), "true");
    let bs = b.display().to_string();
    let (code, _, err) = husk(&root, &["create", "--bundle", &bs, "tty"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("--console-socket is needed"), "{err}");
    let (code, _, err) = husk(&root, &["--rootless", "true", "state", "x"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("--rootless=true"), "{err}");
    // systemd's slice:prefix:name, without --systemd-cgroup; then with it
    // where no systemd answers (podman's test has one that does).
    let b = bundle(&dir.path().join("sd"), "true");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["linux"]["cgroupsPath"] = serde_json::json!("machine.slice:libpod:sd");
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let bs = b.display().to_string();
    let (code, _, err) = husk(&root, &["create", "--bundle", &bs, "sd"]);
    assert_eq!(code, Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("pass --systemd-cgroup"), "{err}");
    if !Path::new("/run/systemd/private").exists() {
        let (code, _, err) = husk(
            &root,
            &["--systemd-cgroup", "create", "--bundle", &bs, "sd"],
        );
        assert_eq!(code, Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("cannot reach systemd"), "{err}");
    }
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);
}

/// A bundle whose process wants a terminal.
fn terminal_bundle(dir: &Path, script: &str) -> PathBuf {
    let b = bundle(dir, script);
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    spec["process"]["terminal"] = serde_json::json!(true);
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    b
}

/// Accepts one connection on `listener` and takes the fd it carries, as
/// conmon takes the terminal's master.
fn receive_fd(listener: std::os::unix::net::UnixListener) -> std::os::fd::OwnedFd {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, UnixAddr};
    use std::os::fd::{AsRawFd, FromRawFd};
    let (stream, _) = listener.accept().unwrap();
    let mut buf = [0u8; 64];
    let mut iov = [std::io::IoSliceMut::new(&mut buf)];
    let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
    let msg = recvmsg::<UnixAddr>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::empty(),
    )
    .unwrap();
    for c in msg.cmsgs().unwrap() {
        if let ControlMessageOwned::ScmRights(fds) = c {
            // SAFETY: a fd the kernel just gave us, owned by nobody else.
            return unsafe { std::os::fd::OwnedFd::from_raw_fd(fds[0]) };
        }
    }
    panic!("no fd came over the console socket");
}

/// Reads from the terminal's master until `what` has appeared.
fn read_until(master: &mut std::fs::File, seen: &mut String, what: &str) {
    use std::io::Read;
    let deadline = Instant::now() + TIMEOUT;
    let mut buf = [0u8; 1024];
    while !seen.contains(what) {
        assert!(Instant::now() < deadline, "never saw {what:?}: {seen:?}");
        match master.read(&mut buf) {
            Ok(0) => panic!("the terminal closed before {what:?}: {seen:?}"),
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) => panic!("reading the terminal: {e}; so far {seen:?}"),
        }
    }
}

#[test]
fn a_terminal_goes_to_the_console_socket() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = terminal_bundle(
        dir.path(),
        "tty; stty size; read line; echo got-$line; exit 5",
    );
    let socket = dir.path().join("console.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let taker = std::thread::spawn(move || receive_fd(listener));
    let s = socket.display().to_string();
    let c = create_with(&root, dir.path(), &b, "tty", &["--console-socket", &s]);
    let mut master = std::fs::File::from(taker.join().unwrap());
    let size = libc::winsize {
        ws_row: 30,
        ws_col: 90,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ on a terminal fd we own, from a local struct.
    let r = unsafe {
        libc::ioctl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::TIOCSWINSZ,
            &size,
        )
    };
    assert_eq!(r, 0);
    assert_eq!(husk(&root, &["start", "tty"]).0, Some(0));
    let mut seen = String::new();
    read_until(&mut master, &mut seen, "/dev/pts/");
    read_until(&mut master, &mut seen, "30 90");
    std::io::Write::write_all(&mut master, b"hello\n").unwrap();
    read_until(&mut master, &mut seen, "got-hello");
    assert_eq!(wait(c.pid), 5, "{seen:?}");
    assert_eq!(husk(&root, &["delete", "tty"]).0, Some(0));
}

#[test]
fn exec_runs_a_process_beside_the_container_and_reports_its_status() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        "echo up; while :; do echo tick; sleep 0.2; done",
    );
    let c = create(&root, dir.path(), &b, "ex");
    assert_eq!(husk(&root, &["start", "ex"]).0, Some(0));
    wait_for_file_line(&c.out, "up");
    // conmon's way: a process file, a pid file, detached; the pid is a
    // proxy that exits with the process's status.
    let process = dir.path().join("process.json");
    let mut p = husk_wire::spec::default_spec(vec![
        "sh".into(),
        "-c".into(),
        "echo in-exec; echo exec-err >&2; while [ ! -e /exec-go ]; do sleep 0.1; done; exit 6"
            .into(),
    ])
    .process()
    .clone()
    .unwrap();
    p.set_cwd("/tmp".into());
    std::fs::write(&process, serde_json::to_vec(&p).unwrap()).unwrap();
    let (out, err, pid_file) = (
        dir.path().join("exec.out"),
        dir.path().join("exec.err"),
        dir.path().join("exec.pid"),
    );
    let st = Command::new(husk_tests::husk::binary())
        .arg("--root")
        .arg(&root)
        .args(["exec", "--process"])
        .arg(&process)
        .arg("--pid-file")
        .arg(&pid_file)
        .args(["--detach", "ex"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert!(st.success(), "{}", std::fs::read_to_string(&err).unwrap());
    let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().parse().unwrap();
    // Set up, the proxy relays as the container's jail user, not root.
    wait_for_file_line(&out, "in-exec");
    let uid = || {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let uid = status.lines().find_map(|l| l.strip_prefix("Uid:")).unwrap();
        uid.split_whitespace()
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while uid() == 0 {
        assert!(Instant::now() < deadline, "the exec proxy stays root");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(uid() >= 3_000_000_000, "the proxy's uid: {}", uid());
    // In mount and network namespaces of its own, with nothing of the
    // host's files: its connection was open before.
    let ns = |p: &str, kind: &str| std::fs::read_link(format!("/proc/{p}/ns/{kind}")).unwrap();
    for kind in ["mnt", "net"] {
        assert_ne!(ns(&pid.to_string(), kind), ns("self", kind), "{kind}");
    }
    let seen: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .collect();
    assert!(seen.is_empty(), "in the exec proxy's root: {seen:?}");
    std::fs::write(b.join("rootfs/exec-go"), "").unwrap();
    assert_eq!(wait(pid), 6);
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "in-exec\n");
    assert_eq!(std::fs::read_to_string(&err).unwrap(), "exec-err\n");
    // runc's other form: the command on the line, attached; the pid file
    // is written from inside the proxy's jail.
    let attached = dir.path().join("attached.pid");
    let attached_s = attached.display().to_string();
    let (code, out, err) = husk(
        &root,
        &[
            "exec",
            "--pid-file",
            &attached_s,
            "ex",
            "sh",
            "-c",
            "pwd; exit 4",
        ],
    );
    assert_eq!((code, out.as_str()), (Some(4), "/\n"), "{err}");
    let written = std::fs::read_to_string(&attached).unwrap();
    assert!(written.parse::<i32>().is_ok_and(|p| p > 1), "{written:?}");
    // The container itself still runs.
    assert_eq!(state(&root, "ex")["status"], "running");
    // update: containerd's way, the resources on stdin; the guest's cgroup
    // takes them.
    let mut update = Command::new(husk_tests::husk::binary());
    update
        .arg("--root")
        .arg(&root)
        .args(["update", "--resources", "-", "ex"])
        .stdin(Stdio::piped());
    let mut child = update
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(
        &mut child.stdin.take().unwrap(),
        br#"{"memory":{"limit":67108864},"pids":{"limit":42}}"#,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (code, out, err) = husk(
        &root,
        &[
            "exec",
            "ex",
            "cat",
            "/sys/fs/cgroup/memory.max",
            "/sys/fs/cgroup/pids.max",
        ],
    );
    assert_eq!((code, out.as_str()), (Some(0), "67108864\n42\n"), "{err}");
    // More than the VM has is refused, not promised.
    let big = dir.path().join("big.json");
    std::fs::write(&big, r#"{"memory":{"limit":68719476736}}"#).unwrap();
    let (code, _, err) = husk(
        &root,
        &["update", "--resources", &big.display().to_string(), "ex"],
    );
    assert_eq!(code, Some(1));
    assert!(err.contains("keeps the size it was created with"), "{err}");
    // ps: json is the host pid standing for the container; table, the
    // processes in the VM.
    let (code, out, _) = husk(&root, &["ps", "--format", "json", "ex"]);
    assert_eq!(code, Some(0));
    let pids: Vec<i32> = serde_json::from_str(&out).unwrap();
    assert_eq!(pids, [c.pid]);
    let (code, out, _) = husk(&root, &["ps", "ex"]);
    assert_eq!(code, Some(0));
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("PID (in the VM)"));
    assert!(
        lines.next().is_some_and(|l| l.parse::<i32>().is_ok()),
        "{out}"
    );
    // pause parks the VM: no tick while paused; resume brings them back.
    assert_eq!(husk(&root, &["pause", "ex"]).0, Some(0));
    assert_eq!(state(&root, "ex")["status"], "paused");
    let frozen = std::fs::metadata(&c.out).unwrap().len();
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(std::fs::metadata(&c.out).unwrap().len(), frozen);
    let (code, _, err) = husk(&root, &["pause", "ex"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("paused"), "{err}");
    assert_eq!(husk(&root, &["resume", "ex"]).0, Some(0));
    assert_eq!(state(&root, "ex")["status"], "running");
    let deadline = Instant::now() + TIMEOUT;
    while std::fs::metadata(&c.out).unwrap().len() == frozen {
        assert!(Instant::now() < deadline, "no tick after resume");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(husk(&root, &["delete", "--force", "ex"]).0, Some(0));
    assert_eq!(wait(c.pid), 128 + libc::SIGKILL);
    let (code, _, err) = husk(&root, &["exec", "ex", "true"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("does not exist"), "{err}");
}

/// `ip ARGS...`, which must succeed.
fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A named network namespace holding one end of a veth, as podman's
/// netavark or a CNI bridge plugin leaves it; removed on drop.
struct Netns(&'static str, &'static str);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).status();
        let _ = Command::new("ip").args(["link", "del", self.1]).status();
    }
}

#[test]
fn a_prepared_network_namespace_is_the_vms_network() {
    require_linux_kvm();
    let ns = Netns("husk-oci-net", "husk-h0");
    let _ = Command::new("ip")
        .args(["netns", "del", ns.0])
        .stderr(Stdio::null())
        .status();
    ip(&["netns", "add", ns.0]);
    ip(&[
        "link", "add", ns.1, "type", "veth", "peer", "name", "husk-c0",
    ]);
    ip(&["link", "set", "husk-c0", "netns", ns.0]);
    ip(&["addr", "add", "10.99.0.1/24", "dev", ns.1]);
    ip(&["link", "set", ns.1, "up"]);
    let inside = |args: &[&str]| {
        let mut all = vec!["-n", ns.0];
        all.extend_from_slice(args);
        ip(&all);
    };
    inside(&["link", "set", "husk-c0", "address", "02:42:0a:63:00:02"]);
    inside(&["addr", "add", "10.99.0.2/24", "dev", "husk-c0"]);
    inside(&["link", "set", "husk-c0", "up"]);
    inside(&["route", "add", "default", "via", "10.99.0.1"]);
    // The container reaches the host end, then serves HTTP on its address.
    let listener = std::net::TcpListener::bind("10.99.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        &format!(
            "cat /sys/class/net/eth0/address; ip route | grep default; \
             echo from-guest | nc 10.99.0.1 {port}; \
             {}",
            husk_tests::http::HTTPD_SCRIPT
        ),
    );
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    for n in spec["linux"]["namespaces"].as_array_mut().unwrap() {
        if n["type"] == "network" {
            n["path"] = format!("/run/netns/{}", ns.0).into();
        }
    }
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let c = create(&root, dir.path(), &b, "net");
    assert_eq!(husk(&root, &["start", "net"]).0, Some(0));
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut conn, from) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "the guest never connected; its output: {:?} {:?}; the namespace: {}",
                    std::fs::read_to_string(&c.out),
                    std::fs::read_to_string(&c.err),
                    describe_netns(ns.0)
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert_eq!(from.ip().to_string(), "10.99.0.2");
    let mut got = String::new();
    std::io::Read::read_to_string(&mut conn, &mut got).unwrap();
    assert_eq!(got, "from-guest\n");
    // nc waits for our end to close before the script goes on.
    drop(conn);
    let body = husk_tests::http::get_tcp("10.99.0.2:80").unwrap_or_else(|e| {
        panic!(
            "{e}; the container's output: {:?} {:?}; in it: {:?}; the namespace: {}",
            std::fs::read_to_string(&c.out),
            std::fs::read_to_string(&c.err),
            husk(
                &root,
                &["exec", "net", "sh", "-c", "ps; netstat -ltn; ls -l /www"]
            ),
            describe_netns(ns.0)
        )
    });
    assert!(body.ends_with(husk_tests::http::SERVED), "{body}");
    let out = std::fs::read_to_string(&c.out).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("02:42:0a:63:00:02"), "{out}");
    assert!(
        lines
            .next()
            .unwrap_or_default()
            .contains("default via 10.99.0.1"),
        "{out}"
    );
    assert_eq!(husk(&root, &["delete", "--force", "net"]).0, Some(0));
    assert_eq!(wait(c.pid), 128 + libc::SIGKILL);
}

/// Links with counters and tc filters in the namespace, for a failure.
fn describe_netns(ns: &str) -> String {
    let mut text = String::new();
    for cmd in [
        vec!["ip", "-n", ns, "-s", "link"],
        vec!["ip", "-n", ns, "addr"],
        vec![
            "tc", "-n", ns, "-s", "filter", "show", "dev", "husk-c0", "ingress",
        ],
        vec![
            "tc", "-n", ns, "-s", "filter", "show", "dev", "husk0", "ingress",
        ],
    ] {
        let out = Command::new(cmd[0]).args(&cmd[1..]).output();
        text.push_str(&format!("\n$ {}\n", cmd.join(" ")));
        match out {
            Ok(o) => {
                text.push_str(&String::from_utf8_lossy(&o.stdout));
                text.push_str(&String::from_utf8_lossy(&o.stderr));
            }
            Err(e) => text.push_str(&e.to_string()),
        }
    }
    text
}

/// As root the monitor is jailed as `husk run` is: the container's pid is
/// a keeper that stays root (the poststart hook runs as root, on the
/// host); the VM runs in its child, as a uid of its own, seeing only the
/// container's state and socket directories.
#[test]
fn the_vm_behind_a_containers_pid_runs_jailed() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let b = bundle(
        dir.path(),
        "echo up; while [ ! -e /go ]; do sleep 0.1; done; exit 4",
    );
    let hooked = dir.path().join("poststart");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(b.join("config.json")).unwrap()).unwrap();
    let shell = ["/bin/sh", "/.testbed/bin/sh"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a shell for the hook");
    // A poststart hook that fails is a warning; the next one runs.
    spec["hooks"] = serde_json::json!({"poststart": [
        {"path": shell, "args": ["sh", "-c", "echo hook-says-no >&2; exit 7"]},
        {"path": shell, "args": ["sh", "-c",
            format!("id -u >{}.tmp; mv {0}.tmp {0}", hooked.display())],
         "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin:/.testbed/bin"]}]});
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let c = create(&root, dir.path(), &b, "jailed");
    assert_eq!(husk(&root, &["start", "jailed"]).0, Some(0));
    wait_for_file_line(&c.out, "up");
    wait_for_file_line(&hooked, "0");
    let err = std::fs::read_to_string(&c.err).unwrap();
    assert!(
        err.contains("warning: poststart hook") && err.contains("hook-says-no"),
        "{err}"
    );
    let vm: Vec<i32> = crate::run::children_of(c.pid)
        .into_iter()
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "husk")
        })
        .collect();
    assert_eq!(vm.len(), 1, "the keeper's husk children: {vm:?}");
    let field = |pid: i32, name: &str| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .map(|v| v.split_whitespace().next().unwrap_or("").to_owned())
            .unwrap_or_default()
    };
    assert_eq!(field(c.pid, "Uid"), "0", "the keeper stays root");
    let uid: u64 = field(vm[0], "Uid").parse().unwrap();
    assert!(uid >= 3_000_000_000, "the VM's uid: {uid}");
    assert_eq!(field(vm[0], "CapEff"), "0000000000000000");
    assert_eq!(field(vm[0], "NoNewPrivs"), "1");
    let nspid = std::fs::read_to_string(format!("/proc/{}/status", vm[0])).unwrap();
    let nspid = nspid.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(
        nspid.split_whitespace().collect::<Vec<_>>(),
        ["NSpid:", &vm[0].to_string(), "1"],
        "PID 1 of a pid namespace of its own"
    );
    let seen = PathBuf::from(format!("/proc/{}/root", vm[0]));
    let record = root.canonicalize().unwrap().join("jailed");
    let inside = |p: &Path| seen.join(p.strip_prefix("/").unwrap());
    assert!(inside(&record).join("state.json").is_file());
    for host in ["/etc/passwd", "/dev/kvm", "/usr"] {
        assert!(!inside(Path::new(host)).exists(), "{host} in the jail");
    }
    assert!(!inside(&b).exists(), "the bundle in the jail");
    std::fs::write(b.join("rootfs/go"), "").unwrap();
    assert_eq!(wait(c.pid), 4);
    assert_eq!(husk(&root, &["delete", "jailed"]).0, Some(0));
    assert_eq!(std::fs::read_dir(&root).unwrap().count(), 0);

    // An annotation says otherwise, or is refused.
    spec["annotations"] = serde_json::json!({"husk.jail": "maybe"});
    std::fs::write(b.join("config.json"), spec.to_string()).unwrap();
    let bs = b.display().to_string();
    let (code, _, err) = husk(&root, &["create", "--bundle", &bs, "odd"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("husk.jail=\"maybe\""), "{err}");
}
