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
        out.stderr.contains("both tag=TAG and socket=PATH"),
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
