//! `husk vmm`: the Firecracker-compatible API and config-file boot, driven
//! over a real Unix socket, with the null guest (runs on any /dev/kvm).

use husk_tests::http::{request, wait_for_socket, Client};
use husk_tests::null_guest;
use husk_tests::vmm_process::VmmProcess;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// A `husk vmm` with a guest ELF and a scratch root image in a temp dir.
struct Vmm {
    p: VmmProcess,
    socket: PathBuf,
    kernel: PathBuf,
    root: PathBuf,
    dir: tempfile::TempDir,
}

impl Vmm {
    fn start(guest: Vec<u8>) -> Vmm {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("guest.elf");
        std::fs::write(&kernel, guest).unwrap();
        let root = dir.path().join("root.img");
        std::fs::write(&root, [0u8; 4096]).unwrap();
        let p = VmmProcess::start(
            Path::new(env!("CARGO_BIN_EXE_husk")),
            dir.path(),
            &["--allow-kvm-pvm"],
        );
        Vmm {
            socket: p.socket.clone(),
            p,
            kernel,
            root,
            dir,
        }
    }

    fn req(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.p.req(method, path, body)
    }

    fn configure(&self) {
        self.p
            .configure(&self.kernel, "console=ttyS0", &self.root, 128);
    }

    fn start_instance(&self) -> (u16, serde_json::Value) {
        self.p.start_instance()
    }

    fn wait(self, timeout: Duration) -> (Option<i32>, Vec<u8>) {
        let (code, out) = self.p.wait(timeout);
        (code, out.into_bytes())
    }

    fn output_len(&self) -> usize {
        self.p.output().len()
    }
}

fn fault(v: &serde_json::Value) -> String {
    v["fault_message"].as_str().unwrap_or_default().to_owned()
}

#[test]
fn boot_through_the_api_alone() {
    let vmm = Vmm::start(null_guest::elf(true, Some(7)));
    let (s, info) = vmm.req("GET", "/", "");
    assert_eq!(s, 200);
    assert_eq!(info["state"], "Not started");
    assert_eq!(info["app_name"], "husk");
    vmm.configure();
    let (s, cfg) = vmm.req("GET", "/vm/config", "");
    assert_eq!(s, 200);
    assert_eq!(cfg["drives"][0]["drive_id"], "rootfs");
    assert_eq!(cfg["machine-config"]["mem_size_mib"], 128);
    assert_eq!(vmm.start_instance().0, 204);
    let (code, out) = vmm.wait(Duration::from_secs(20));
    assert_eq!(code, Some(7));
    assert_eq!(out, null_guest::LINE);
}

#[test]
fn bad_requests_get_400_and_leave_the_vmm_usable() {
    let vmm = Vmm::start(null_guest::elf(true, Some(0)));
    let (s, v) = vmm.start_instance();
    assert_eq!(s, 400);
    assert!(fault(&v).contains("boot source"), "{v}");
    for (method, path, body, needle) in [
        ("PUT", "/boot-source", "{not json", "key must be a string"),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":1,"mem_size_mib":128,"bogus":1}"#,
            "bogus",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count":"two","mem_size_mib":128}"#,
            "vcpu_count",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path":"/nonexistent/vmlinux"}"#,
            "/nonexistent/vmlinux",
        ),
        (
            "PUT",
            "/drives/a",
            r#"{"drive_id":"b","path_on_host":"/x","is_root_device":false}"#,
            "drive_id",
        ),
        ("PATCH", "/vm", r#"{"state":"Paused"}"#, "before starting"),
    ] {
        let (s, v) = vmm.req(method, path, body);
        assert_eq!(s, 400, "{method} {path} {body}: {v}");
        assert!(fault(&v).contains(needle), "{method} {path}: {v}");
    }
    assert_eq!(vmm.req("GET", "/no/such/path", "").0, 404);
    assert_eq!(vmm.req("DELETE", "/machine-config", "").0, 405);
    // Two root devices.
    vmm.configure();
    let other = vmm.dir.path().join("other.img");
    std::fs::write(&other, [0u8; 512]).unwrap();
    let d = format!(
        r#"{{"drive_id":"second","path_on_host":"{}","is_root_device":true}}"#,
        other.display()
    );
    let (s, v) = vmm.req("PUT", "/drives/second", &d);
    assert_eq!(s, 400);
    assert!(fault(&v).contains("root device"), "{v}");
    // Still usable: it boots.
    assert_eq!(vmm.start_instance().0, 204);
    let (code, _) = vmm.wait(Duration::from_secs(20));
    assert_eq!(code, Some(0));
}

#[test]
fn pause_stops_the_guest_and_resume_continues() {
    let vmm = Vmm::start(null_guest::ticker_elf(true));
    vmm.configure();
    assert_eq!(vmm.start_instance().0, 204);
    let grows = |what: &str| {
        let a = vmm.output_len();
        std::thread::sleep(Duration::from_millis(400));
        assert!(vmm.output_len() > a, "{what}: no progress");
    };
    grows("running");
    assert_eq!(vmm.req("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    assert_eq!(vmm.req("GET", "/", "").1["state"], "Paused");
    let a = vmm.output_len();
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(vmm.output_len(), a, "the guest ran while paused");
    assert_eq!(vmm.req("PATCH", "/vm", r#"{"state":"Resumed"}"#).0, 204);
    assert_eq!(vmm.req("GET", "/", "").1["state"], "Running");
    grows("resumed");
    // Pre-boot resources are refused now.
    let (s, v) = vmm.req(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":2,"mem_size_mib":128}"#,
    );
    assert_eq!(s, 400);
    assert!(fault(&v).contains("after starting"), "{v}");
}

fn count(pid: u32, what: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/{what}"))
        .unwrap()
        .count()
}

#[test]
fn a_thousand_requests_and_eight_clients_leak_nothing() {
    let vmm = Vmm::start(null_guest::ticker_elf(true));
    vmm.configure();
    assert_eq!(vmm.start_instance().0, 204);
    let pid = vmm.p.pid();
    // Warm up the server's connection path, then take the baseline.
    vmm.req("GET", "/", "");
    std::thread::sleep(Duration::from_millis(100));
    let (fds, threads) = (count(pid, "fd"), count(pid, "task"));
    let mut c = Client::connect(&vmm.socket).unwrap();
    for i in 0..1000 {
        let path = if i % 2 == 0 { "/" } else { "/machine-config" };
        assert_eq!(c.request("GET", path, "").unwrap().status, 200);
    }
    drop(c);
    let socket = vmm.socket.clone();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let socket = socket.clone();
            std::thread::spawn(move || {
                for _ in 0..50 {
                    let r = request(&socket, "GET", "/vm/config", "").unwrap();
                    assert_eq!(r.status, 200);
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(count(pid, "fd"), fds, "file descriptors leaked");
    assert_eq!(count(pid, "task"), threads, "threads leaked");
}

#[test]
fn config_file_boot_without_api() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("null.elf");
    null_guest::write(&kernel, true, Some(9)).unwrap();
    let root = dir.path().join("root.img");
    std::fs::write(&root, [0u8; 512]).unwrap();
    let metrics = dir.path().join("metrics.json");
    let config = dir.path().join("vm.json");
    std::fs::write(
        &config,
        serde_json::json!({
            "boot-source": {"kernel_image_path": kernel, "boot_args": "console=ttyS0"},
            "drives": [{"drive_id": "rootfs", "path_on_host": root, "is_root_device": true, "is_read_only": false}],
            "machine-config": {"vcpu_count": 1, "mem_size_mib": 128},
            "metrics": {"metrics_path": metrics},
        })
        .to_string(),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["vmm", "--allow-kvm-pvm", "--no-api", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(9),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, null_guest::LINE);
    // The final metrics line counts the guest's exits.
    let text = std::fs::read_to_string(&metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert!(last["vcpu"]["exits"].as_u64().unwrap() > 0, "{last}");

    // A broken file is a one-line usage error naming the key.
    std::fs::write(
        &config,
        r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "x": 1}}"#,
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["vmm", "--allow-kvm-pvm", "--no-api", "--config-file"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("machine-config") && err.contains('x'), "{err}");
}

#[test]
fn live_socket_is_refused_stale_one_replaced() {
    let vmm = Vmm::start(null_guest::elf(true, Some(0)));
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["vmm", "--api-sock"])
        .arg(&vmm.socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains(&vmm.socket.display().to_string()), "{err}");
    // The first VMM still answers.
    assert_eq!(vmm.req("GET", "/", "").0, 200);

    // A socket file left by a dead process is replaced.
    let dir = tempfile::tempdir().unwrap();
    let stale = dir.path().join("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(Path::new(&stale).exists());
    let mut second = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["vmm", "--api-sock"])
        .arg(&stale)
        .spawn()
        .unwrap();
    assert!(wait_for_socket(&stale, Duration::from_secs(10)));
    assert_eq!(request(&stale, "GET", "/", "").unwrap().status, 200);
    // SIGTERM before boot ends it at once.
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(second.id() as i32, libc::SIGTERM) };
    assert_eq!(second.wait().unwrap().code(), Some(143));
}

/// The counter guest's bytes as `output()` shows them (no `\r`).
fn counts(from: u8, to: u8) -> String {
    (from..=to)
        .filter(|b| *b != b'\r')
        .map(char::from)
        .collect()
}

/// A husk vmm booted (kernel only: no device) with the counter guest
/// counting to `limit`, once it has printed `printed` counts.
fn counting(limit: u8, printed: usize) -> Vmm {
    counting_with(limit, printed, false)
}

/// [`counting`], optionally tracking dirty pages.
fn counting_with(limit: u8, printed: usize, track_dirty_pages: bool) -> Vmm {
    let a = Vmm::start(null_guest::counter_elf(u32::from(limit)));
    let k = serde_json::json!({"kernel_image_path": a.kernel, "boot_args": ""});
    assert_eq!(a.req("PUT", "/boot-source", &k.to_string()).0, 204);
    if track_dirty_pages {
        let m = r#"{"track_dirty_pages": true}"#;
        assert_eq!(a.req("PATCH", "/machine-config", m).0, 204);
    }
    assert_eq!(a.start_instance().0, 204);
    wait_printed(&a, printed);
    a
}

fn wait_printed(a: &Vmm, printed: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while a.output_len() < printed {
        assert!(std::time::Instant::now() < deadline, "no progress");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_snapshot_made_through_the_api_loads_in_another_vmm_and_goes_on() {
    const LIMIT: u8 = 120;
    let a = counting(LIMIT, 20);
    let snap = a.dir.path().join("vm.snap");
    let mem = a.dir.path().join("vm.mem");
    let create =
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": snap, "mem_file_path": mem})
            .to_string();
    let (s, v) = a.req("PUT", "/snapshot/create", &create);
    assert_eq!(s, 400);
    assert!(fault(&v).contains("must be paused"), "{v}");
    assert_eq!(a.req("PATCH", "/vm", r#"{"state":"Paused"}"#).0, 204);
    let (s, v) = a.req("PUT", "/snapshot/create", &create);
    assert_eq!(s, 204, "{v}");
    std::thread::sleep(Duration::from_millis(200));
    let before = a.p.output();
    let last = *before.as_bytes().last().unwrap();
    assert_eq!(before, counts(1, last));
    // The first VMM goes; its directory (the snapshot) stays.
    let Vmm { p, dir: _kept, .. } = a;
    drop(p);

    // Another husk vmm, nothing configured: the snapshot brings its VM.
    let b = Vmm::start(Vec::new());
    let bad = b.dir.path().join("short.snap");
    let whole = std::fs::read(&snap).unwrap();
    std::fs::write(&bad, &whole[..whole.len() - 100]).unwrap();
    let load = |state: &Path| {
        serde_json::json!({"snapshot_path": state,
            "mem_backend": {"backend_type": "File", "backend_path": mem}, "resume_vm": true})
        .to_string()
    };
    let (s, v) = b.req("PUT", "/snapshot/load", &load(&bad));
    assert_eq!(s, 400);
    assert!(fault(&v).contains("truncated"), "{v}");
    let (s, v) = b.req("PUT", "/snapshot/load", &load(&snap));
    assert_eq!(s, 204, "{v}");
    let (_, info) = b.req("GET", "/", "");
    assert_eq!(info["state"], "Running");
    let (code, out) = b.wait(Duration::from_secs(30));
    assert_eq!(code, Some(0));
    let out = String::from_utf8(out).unwrap();
    assert_eq!(out, counts(last + 1, LIMIT));
}

#[test]
fn husk_snapshot_create_and_restore_on_the_command_line() {
    const LIMIT: u8 = 110;
    let a = counting(LIMIT, 10);
    let (snap, mem) = (a.dir.path().join("s"), a.dir.path().join("m"));
    let husk = env!("CARGO_BIN_EXE_husk");
    let create = Command::new(husk)
        .args(["snapshot", "create", "--api-sock"])
        .arg(&a.socket)
        .arg("--state")
        .arg(&snap)
        .arg("--mem")
        .arg(&mem)
        .output()
        .unwrap();
    assert!(create.status.success(), "{create:?}");
    let (_, info) = a.req("GET", "/", "");
    assert_eq!(info["state"], "Paused", "no --resume: it stays paused");
    std::thread::sleep(Duration::from_millis(200));
    let last = *a.p.output().as_bytes().last().unwrap();
    // A second snapshot to the same files over a missing directory: the
    // VMM's error, on one line.
    let refused = Command::new(husk)
        .args(["snapshot", "create", "--api-sock"])
        .arg(&a.socket)
        .args(["--state", "/no/such/dir/s", "--mem", "/no/such/dir/m"])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1), "{refused:?}");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        said.contains("PUT /snapshot/create: 400") && said.lines().count() == 1,
        "{said}"
    );
    let Vmm { p, dir: _kept, .. } = a;
    drop(p);

    let restored = Command::new(husk)
        .args(["snapshot", "restore", "--allow-kvm-pvm", "--state"])
        .arg(&snap)
        .arg("--mem")
        .arg(&mem)
        .output()
        .unwrap();
    assert_eq!(restored.status.code(), Some(0), "{restored:?}");
    let out = String::from_utf8_lossy(&restored.stdout).replace('\r', "");
    assert_eq!(out, counts(last + 1, LIMIT));
}

/// `husk snapshot create [--diff]` and `husk snapshot merge`: a Full
/// snapshot, the VM goes on, a Diff into a new file, merged onto the Full
/// one's memory; restored, the guest counts on from the Diff. A Diff of a
/// VM that does not track dirty pages, and a merge of files of two sizes,
/// are refused on one line.
#[test]
fn husk_snapshot_create_diff_and_merge_on_the_command_line() {
    const LIMIT: u8 = 120;
    let husk = env!("CARGO_BIN_EXE_husk");
    let untracked = counting(LIMIT, 5);
    let d = untracked.dir.path().to_owned();
    let create = |a: &Vmm, state: &str, mem: &str, extra: &[&str]| {
        Command::new(husk)
            .args(["snapshot", "create", "--api-sock"])
            .arg(&a.socket)
            .arg("--state")
            .arg(d.join(state))
            .arg("--mem")
            .arg(d.join(mem))
            .args(extra)
            .output()
            .unwrap()
    };
    let refused = create(&untracked, "x.snap", "x.mem", &["--diff"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("needs dirty-page tracking") && said.lines().count() == 1,
        "{said}"
    );
    drop(untracked.p);

    let a = counting_with(LIMIT, 5, true);
    let made = create(&a, "full.snap", "vm.mem", &["--resume"]);
    assert!(made.status.success(), "{made:?}");
    wait_printed(&a, 40);
    let made = create(&a, "diff.snap", "diff.mem", &["--diff"]);
    assert!(made.status.success(), "{made:?}");
    std::thread::sleep(Duration::from_millis(200));
    let last = *a.p.output().as_bytes().last().unwrap();
    drop(a.p);

    let merge = |diff: &Path, base: &Path| {
        Command::new(husk)
            .args(["snapshot", "merge", "--diff"])
            .arg(diff)
            .arg("--base")
            .arg(base)
            .output()
            .unwrap()
    };
    let small = d.join("small.mem");
    std::fs::write(&small, [0u8; 4096]).unwrap();
    let refused = merge(&d.join("diff.mem"), &small);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("not of one VM") && said.lines().count() == 1,
        "{said}"
    );
    let merged = merge(&d.join("diff.mem"), &d.join("vm.mem"));
    assert!(merged.status.success(), "{merged:?}");

    let restored = Command::new(husk)
        .args(["snapshot", "restore", "--allow-kvm-pvm", "--state"])
        .arg(d.join("diff.snap"))
        .arg("--mem")
        .arg(d.join("vm.mem"))
        .output()
        .unwrap();
    assert_eq!(restored.status.code(), Some(0), "{restored:?}");
    let out = String::from_utf8_lossy(&restored.stdout).replace('\r', "");
    assert_eq!(out, counts(last + 1, LIMIT));
}

/// `husk vmm --jail DIR --uid --gid`: the VMM runs as the unprivileged
/// user with no capabilities, its `/` is the jail (nothing else of the
/// host's tree), paths in requests are inside it, and the guest boots.
/// `husk vmm` with its API socket jailed in `dir` as nobody (root only).
fn jailed_vmm(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.args([
        "vmm",
        "--allow-kvm-pvm",
        "--api-sock",
        "/api.sock",
        "--jail",
    ])
    .arg(dir)
    .args(["--uid", "65534", "--gid", "65534"]);
    cmd
}

/// The one child of a jailed VMM's keeper: the VMM.
fn jailed_vmm_of(keeper: u32) -> u32 {
    let children = std::fs::read_to_string(format!("/proc/{keeper}/task/{keeper}/children"))
        .unwrap_or_default();
    let pids: Vec<u32> = children
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(pids.len(), 1, "the keeper's children: {children:?}");
    pids[0]
}

/// A jailed VMM joins the network namespace `--netns` names, and SIGTERM
/// to the process that was started reaches it (PID 1 of its namespace,
/// which takes only signals it handles): it stops as an unjailed one does.
#[test]
fn a_jailed_vmm_joins_its_netns_and_sigterm_reaches_it() {
    // SAFETY: geteuid(2) has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return husk_skip::skip("needs root to make a jail");
    }
    let name = format!("husk-jail-test-{}", std::process::id());
    let made = Command::new("ip").args(["netns", "add", &name]).status();
    assert!(made.is_ok_and(|s| s.success()), "ip netns add {name}");
    let netns = PathBuf::from("/var/run/netns").join(&name);
    let dir = tempfile::tempdir().unwrap();
    let mut child = jailed_vmm(dir.path())
        .arg("--netns")
        .arg(&netns)
        .spawn()
        .unwrap();
    assert!(wait_for_socket(
        &dir.path().join("api.sock"),
        Duration::from_secs(10)
    ));
    let vmm = jailed_vmm_of(child.id());
    let inode = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).unwrap());
    let joined = inode(Path::new(&format!("/proc/{vmm}/ns/net"))) == inode(&netns);
    let _ = Command::new("ip").args(["netns", "del", &name]).status();
    assert!(joined, "the VMM is not in {}", netns.display());
    // SAFETY: kill(2) on the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert!(
        !Path::new(&format!("/proc/{vmm}")).exists(),
        "the VMM lives on"
    );
}

#[test]
fn a_jailed_vmm_runs_as_its_user_inside_its_jail() {
    // SAFETY: geteuid(2) has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        return husk_skip::skip("needs root to make a jail");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("guest.elf"), null_guest::elf(true, Some(7))).unwrap();
    std::fs::write(dir.path().join("root.img"), [0u8; 4096]).unwrap();
    let child = jailed_vmm(dir.path())
        .arg("--new-netns")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let socket = dir.path().join("api.sock");
    assert!(
        wait_for_socket(&socket, Duration::from_secs(10)),
        "no API socket in the jail"
    );
    // The process started is the VMM's keeper, jailed like it; the VMM is
    // its one child, PID 1 of a pid namespace and in a network namespace
    // of its own.
    let keeper = child.id();
    let vmm = jailed_vmm_of(keeper);
    let status = std::fs::read_to_string(format!("/proc/{vmm}/status")).unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert_eq!(nspid.split_whitespace().last(), Some("1"), "{status}");
    for ns in ["pid", "net", "mnt"] {
        let link = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(link(&vmm.to_string()), link("self"), "{ns} namespace");
    }
    let pid = keeper;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(line("Uid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(line("Gid:"), "65534 65534 65534 65534", "{status}");
    assert_eq!(line("CapEff:"), "0000000000000000", "{status}");
    assert_eq!(line("NoNewPrivs:"), "1", "{status}");
    let mut root: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/root"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    root.sort();
    assert_eq!(root, ["api.sock", "dev", "guest.elf", "root.img"]);
    let req = |method: &str, path: &str, body: &str| {
        let r = request(&socket, method, path, body).unwrap();
        (r.status, r.body)
    };
    let boot = r#"{"kernel_image_path": "/guest.elf", "boot_args": "console=ttyS0"}"#;
    assert_eq!(req("PUT", "/boot-source", boot).0, 204);
    // A host path outside the jail does not exist in it.
    let outside = format!(
        r#"{{"kernel_image_path": "{}"}}"#,
        dir.path().join("guest.elf").display()
    );
    let (s, body) = req("PUT", "/boot-source", &outside);
    assert_eq!(s, 400, "{body}");
    assert_eq!(req("PUT", "/boot-source", boot).0, 204);
    let drive = r#"{"drive_id": "rootfs", "path_on_host": "/root.img", "is_root_device": true, "is_read_only": true}"#;
    assert_eq!(req("PUT", "/drives/rootfs", drive).0, 204);
    assert_eq!(
        req("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#).0,
        204
    );
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(7));
    assert_eq!(out.stdout, null_guest::LINE);
    // Refused before anything starts: root as the jail's user.
    let out = Command::new(env!("CARGO_BIN_EXE_husk"))
        .args(["vmm", "--api-sock", "/a.sock", "--jail"])
        .arg(dir.path())
        .args(["--uid", "0", "--gid", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("must not be 0"));
}

/// The API thread has a seccomp filter of its own: a call outside it
/// (accept4, taken out by `HUSK_SECCOMP_DENY`) does not run, and the VMM
/// stops naming the thread and the call, before any VM runs.
#[test]
fn the_api_threads_forbidden_call_stops_the_vmm_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("api.sock");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_husk"));
    cmd.args(["vmm", "--api-sock"])
        .arg(&sock)
        .env("HUSK_SECCOMP_DENY", "accept4");
    let running = husk_tests::process::Running::spawn(cmd);
    assert!(wait_for_socket(&sock, Duration::from_secs(10)));
    // The connection is queued by the kernel; the thread's accept is not
    // allowed to take it.
    let asked = std::thread::spawn(move || request(&sock, "GET", "/", ""));
    let out = running.finish(Duration::from_secs(20));
    let err = &out.stderr;
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert!(
        err.contains("the API thread made a system call outside its filter: accept4"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    assert!(asked.join().unwrap().is_err(), "a request was answered");
}
