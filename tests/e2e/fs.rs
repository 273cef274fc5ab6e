//! virtio-fs: a host directory, live in the guest, through virtiofsd (the
//! vhost-user backend a user installs) and `husk boot --fs`.

use husk_tests::require_linux_kvm;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(120);

/// virtiofsd, as scripts/setup installs it.
fn virtiofsd() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("HUSK_VIRTIOFSD").unwrap_or_else(|| "/usr/local/bin/virtiofsd".into()),
    );
    assert!(
        p.is_file(),
        "{} is missing: scripts/setup installs virtiofsd (cargo install virtiofsd)",
        p.display()
    );
    p
}

/// A virtiofsd serving `shared` on `socket`; killed on drop.
struct Backend(Child);

impl Backend {
    fn start(shared: &Path, socket: &Path) -> Backend {
        let child = Command::new(virtiofsd())
            .arg(format!("--socket-path={}", socket.display()))
            .arg(format!("--shared-dir={}", shared.display()))
            .arg("--cache=never")
            .stdin(Stdio::null())
            .spawn()
            .expect("start virtiofsd");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "virtiofsd made no socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Backend(child)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn boot(root: &Path, socket: &Path, script: &str) -> Command {
    let mut c = Command::new(husk_tests::husk::binary());
    c.arg("boot")
        .arg("--rootfs")
        .arg(root)
        .arg("--fs")
        .arg(format!("tag=share,socket={}", socket.display()))
        .args(["--", "sh", "-c", script]);
    c
}

/// Files go both ways, and a change the host makes while the guest runs is
/// seen by the guest (a copied-in snapshot would never see it).
#[test]
fn a_host_directory_is_shared_live_with_the_guest() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "from the host\n").unwrap();
    let socket = dir.path().join("fs.sock");
    let _backend = Backend::start(&shared, &socket);
    let script = "mount -t virtiofs share /mnt || exit 9; cat /mnt/hello; \
                  echo from-guest >/mnt/out; mkdir /mnt/d; echo ready; \
                  while [ ! -e /mnt/go ]; do sleep 0.2; done; cat /mnt/go; \
                  umount /mnt";
    let mut run = husk_tests::process::Running::spawn(boot(&root, &socket, script));
    assert!(
        run.wait_for_line("ready", TIMEOUT),
        "the guest never got ready"
    );
    // Written by the guest, on the host's disk while the guest still runs.
    assert_eq!(
        std::fs::read_to_string(shared.join("out")).unwrap(),
        "from-guest\n"
    );
    assert!(shared.join("d").is_dir());
    std::fs::write(shared.join("go"), "host wrote this while the guest ran\n").unwrap();
    let out = run.finish(TIMEOUT);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "from the host\nready\nhost wrote this while the guest ran\n",
        "{}",
        out.describe()
    );
}

/// Small files the guest creates and lists: 10,000 on a hardware host, 1,000
/// when this host is itself a VM. In the nested testbed, L1's kernel (Debian
/// 6.1, nested SVM under TCG) crashed twice in ~7,000 creates ("stack guard
/// page was hit" in a vCPU thread, then "corrupted stack end detected
/// inside scheduler"), the crash `husk compare`'s 256 MiB write also
/// provokes: a testbed failure to chase in the reliability issue, not a
/// husk one, and not what this test is about.
fn small_files() -> u32 {
    if husk_tests::host_is_a_guest() {
        1_000
    } else {
        10_000
    }
}

/// `--fs tag=,dir=`: husk starts virtiofsd itself. Through the share:
/// a 5 GiB sparse file, fsync + rename, hard links, ownership, many small
/// files created and listed; `ro` refuses writes (EROFS).
#[test]
fn files_of_every_kind_go_through_the_share() {
    require_linux_kvm();
    let n = small_files();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("keep"), "unchanged\n").unwrap();
    let script = format!("set -e; mount -t virtiofs share /mnt; mkdir -p /ro; mount -t virtiofs ro /ro; \
                  dd if=/dev/zero of=/mnt/big bs=1 count=1 seek=5368709119 2>/dev/null; \
                  echo durable >/mnt/t.tmp; sync; mv /mnt/t.tmp /mnt/t; \
                  echo linked >/mnt/a; ln /mnt/a /mnt/b; \
                  echo owned >/mnt/o; chown 1234:5678 /mnt/o; \
                  mkdir /mnt/many; i=0; while [ $i -lt {n} ]; do : >/mnt/many/f$i; i=$((i+1)); done; \
                  ls /mnt/many | wc -l; \
                  if touch /ro/keep /ro/new 2>/tmp/err; then echo ro-written; else cat /tmp/err; fi");
    let r = root.display().to_string();
    let share = format!("tag=share,dir={}", shared.display());
    let ro_share = format!("tag=ro,dir={},ro", ro.display());
    let out = husk_tests::husk::run(
        &[
            "boot", "--rootfs", &r, "--fs", &share, "--fs", &ro_share, "--", "sh", "-c", &script,
        ],
        Duration::from_secs(600),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0].trim(), n.to_string(), "{}", out.describe());
    assert!(
        lines[1].contains("Read-only file system"),
        "{}",
        out.describe()
    );
    let big = std::fs::metadata(shared.join("big")).unwrap();
    assert_eq!(big.len(), 5 << 30);
    assert!(
        std::os::unix::fs::MetadataExt::blocks(&big) < 1024,
        "not sparse"
    );
    assert_eq!(
        std::fs::read_to_string(shared.join("t")).unwrap(),
        "durable\n"
    );
    assert!(!shared.join("t.tmp").exists());
    use std::os::unix::fs::MetadataExt;
    let (a, b) = (
        std::fs::metadata(shared.join("a")).unwrap(),
        std::fs::metadata(shared.join("b")).unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    let o = std::fs::metadata(shared.join("o")).unwrap();
    assert_eq!((o.uid(), o.gid()), (1234, 5678));
    assert_eq!(
        std::fs::read_dir(shared.join("many")).unwrap().count(),
        n as usize
    );
    assert_eq!(
        std::fs::read_to_string(ro.join("keep")).unwrap(),
        "unchanged\n"
    );
}

/// A virtiofsd that dies while the guest runs ends the VM with one line
/// saying so, never a hang.
#[test]
fn a_backend_that_dies_stops_the_vm_with_one_line() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let socket = dir.path().join("fs.sock");
    let backend = Backend::start(&shared, &socket);
    let script = "mount -t virtiofs share /mnt && echo ready; while :; do ls /mnt >/dev/null; sleep 0.2; done";
    let mut run = husk_tests::process::Running::spawn(boot(&root, &socket, script));
    assert!(
        run.wait_for_line("ready", TIMEOUT),
        "the guest never got ready"
    );
    drop(backend);
    let out = run.finish(TIMEOUT);
    assert!(
        !out.timed_out,
        "husk hung after its backend died: {}",
        out.describe()
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    let last = out.stderr.trim().lines().last().unwrap_or_default();
    assert!(
        last.contains("virtiofsd") && last.contains("share"),
        "{}",
        out.describe()
    );
}

/// virtiofsd missing: `husk run -v DIR` fails before any VM starts, with
/// one line that says how to get it.
#[test]
fn without_virtiofsd_a_directory_volume_is_a_clear_error() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let image = husk_tests::guest_dir().join("husk-test-image");
    let out = husk_tests::process::run(
        {
            let mut c = Command::new(husk_tests::husk::binary());
            c.args(["run", "--rm", "-v"])
                .arg(format!("{}:/x", dir.path().display()))
                .arg(&image)
                .arg("true")
                .env("HUSK_VIRTIOFSD", "/nonexistent/virtiofsd")
                .env("HUSK_IMAGE_CACHE", dir.path().join("cache"))
                .env("HUSK_RUNTIME_DIR", dir.path().join("run"));
            c
        },
        TIMEOUT,
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.trim().lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("virtiofsd"), "{}", out.describe());
}

/// A bad --fs is a one-line usage error; a socket nobody serves fails the
/// boot with one line naming it.
#[test]
fn a_bad_shared_directory_is_a_clear_error() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let r = root.display().to_string();
    let out = husk_tests::husk::run(
        &["boot", "--rootfs", &r, "--fs", "tag=x", "--", "true"],
        TIMEOUT,
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr.contains("one of socket=PATH and dir=DIR"),
        "{}",
        out.describe()
    );
    let nobody = dir.path().join("nobody.sock");
    let spec = format!("tag=share,socket={}", nobody.display());
    let out = husk_tests::husk::run(
        &["boot", "--rootfs", &r, "--fs", &spec, "--", "true"],
        TIMEOUT,
    );
    assert_eq!(out.code, Some(1), "{}", out.describe());
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.describe());
    assert!(out.stderr.contains("nobody.sock"), "{}", out.describe());
}
