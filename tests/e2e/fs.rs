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

/// `PUT /fs/{id}` on the API socket attaches a running virtiofsd's share;
/// `GET /vm/config` shows it.
#[test]
fn the_api_attaches_a_shared_directory() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::write(shared.join("hello"), "through the api\n").unwrap();
    let socket = dir.path().join("fs.sock");
    let _backend = Backend::start(&shared, &socket);
    let vmm =
        husk_tests::vmm_process::VmmProcess::start(&husk_tests::husk::binary(), dir.path(), &[]);
    let script = "mount -t virtiofs data /mnt && cat /mnt/hello && echo back >/mnt/back";
    vmm.configure(
        &husk_tests::guest_artifacts().vmlinux,
        &format!(
            "console=ttyS0 reboot=k panic=1 quiet husk.cmd={}",
            husk_wire::cmdline::encode_command(&["sh", "-c", script])
        ),
        &root,
        128,
    );
    let body = serde_json::json!({"fs_id": "share", "tag": "data", "socket": socket});
    let (status, answer) = vmm.req("PUT", "/fs/share", &body.to_string());
    assert_eq!(status, 204, "{answer}");
    assert_eq!(vmm.req("GET", "/vm/config", "").1["fs"][0]["tag"], "data");
    assert_eq!(vmm.start_instance().0, 204);
    let (code, out) = vmm.wait(TIMEOUT);
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("through the api\n"), "{out}");
    assert_eq!(
        std::fs::read_to_string(shared.join("back")).unwrap(),
        "back\n"
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
/// files created and listed, a Unix socket, a shared mmap, an xattr
/// (`husk-bench fs-check`); `ro` refuses writes (EROFS); symlinks the guest
/// plants (`..`, absolute) resolve in the guest, never on the host.
#[test]
fn files_of_every_kind_go_through_the_share() {
    require_linux_kvm();
    let n = small_files();
    // On the build's disk, not /tmp: a tmpfs before Linux 6.6 (the
    // testbed's L1 runs 6.1) has no user.* extended attributes to share.
    let base = env!("CARGO_TARGET_TMPDIR");
    std::fs::create_dir_all(base).unwrap();
    let dir = tempfile::tempdir_in(base).unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let shared = dir.path().join("shared");
    std::fs::create_dir(&shared).unwrap();
    let ro = dir.path().join("ro");
    std::fs::create_dir(&ro).unwrap();
    std::fs::write(ro.join("keep"), "unchanged\n").unwrap();
    // Beside the share, where a link resolved on the host would land.
    let canary = dir.path().join("canary");
    std::fs::write(&canary, "host canary\n").unwrap();
    let script = format!("set -e; mount -t virtiofs share /mnt; mkdir -p /ro; mount -t virtiofs ro /ro; \
                  husk-bench fs-check /mnt >/dev/null; \
                  ln -s ../canary /mnt/up; ln -s {abs} /mnt/abs; mkdir -p {abs_dir}; \
                  echo guest >/mnt/up; echo guest >/mnt/abs; cat /canary {abs} | tr -d '\\n'; echo; \
                  dd if=/dev/zero of=/mnt/big bs=1 count=1 seek=5368709119 2>/dev/null; \
                  echo durable >/mnt/t.tmp; sync; mv /mnt/t.tmp /mnt/t; \
                  echo linked >/mnt/a; ln /mnt/a /mnt/b; \
                  echo owned >/mnt/o; chown 1234:5678 /mnt/o; \
                  mkdir /mnt/many; i=0; while [ $i -lt {n} ]; do : >/mnt/many/f$i; i=$((i+1)); done; \
                  ls /mnt/many | wc -l; \
                  if touch /ro/keep /ro/new 2>/tmp/err; then echo ro-written; else cat /tmp/err; fi",
                  abs = canary.display(), abs_dir = dir.path().display());
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
    assert_eq!(lines[0], "guestguest", "{}", out.describe());
    assert_eq!(lines[1].trim(), n.to_string(), "{}", out.describe());
    assert!(
        lines[2].contains("Read-only file system"),
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
    assert_eq!(std::fs::read(&canary).unwrap(), b"host canary\n");
    for link in ["up", "abs"] {
        let meta = std::fs::symlink_metadata(shared.join(link)).unwrap();
        assert!(meta.file_type().is_symlink(), "{link}");
    }
    fs_check_files_seen_from_the_host(&shared);
}

/// What `husk-bench fs-check` (rootfs/benchtool/src/files.rs, a guest
/// program this crate does not link) left in the share, seen from the host.
fn fs_check_files_seen_from_the_host(shared: &Path) {
    use std::os::unix::fs::FileTypeExt;
    let [sock, mapped, xattr, synced] =
        ["sock", "mmap", "xattr", "synced"].map(|s| shared.join(format!("fs-check.{s}")));
    let kind = std::fs::symlink_metadata(&sock).unwrap().file_type();
    assert!(kind.is_socket(), "{}: {kind:?}", sock.display());
    assert_eq!(
        std::fs::read(mapped).unwrap(),
        b"written through a shared mapping\n"
    );
    assert_eq!(std::fs::read(synced).unwrap(), b"synced\n");
    let path = std::ffi::CString::new(xattr.as_os_str().as_encoded_bytes()).unwrap();
    let name = std::ffi::CString::new("user.husk").unwrap();
    let mut value = [0u8; 64];
    // SAFETY: NUL-terminated strings and a 64-byte buffer.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    assert!(n >= 0, "getxattr: {}", std::io::Error::last_os_error());
    assert_eq!(&value[..n as usize], b"kept");
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
