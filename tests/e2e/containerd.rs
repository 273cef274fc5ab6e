//! Debian's containerd with husk as the runc binary of its runc shim
//! (`ctr run --runc-binary husk`): the shim calls `husk create/start/
//! delete` as it calls runc, and the container runs in a microVM.

use husk_tests::process::Daemon;
use husk_tests::require_linux_kvm;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(180);

/// A containerd of its own (root, state, socket in a temporary directory,
/// no config file), killed on drop.
struct Containerd {
    dir: tempfile::TempDir,
    _daemon: Daemon,
}

impl Containerd {
    fn start() -> Option<Containerd> {
        for p in ["/usr/bin/containerd", "/usr/bin/ctr"] {
            if !Path::new(p).is_file() {
                husk_skip::skip("containerd is not installed (scripts/setup installs it)");
                return None;
            }
        }
        husk_compare::runner::ensure_cgroup2();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("config.toml"), "version = 2\n").unwrap();
        let mut cmd = Command::new("/usr/bin/containerd");
        cmd.arg("--config")
            .arg(d.join("config.toml"))
            .arg("--root")
            .arg(d.join("root"))
            .arg("--state")
            .arg(d.join("state"))
            .arg("--address")
            .arg(d.join("sock"));
        let daemon = Daemon::start(cmd, &d.join("sock"), &d.join("containerd.log"));
        Some(Containerd {
            dir,
            _daemon: daemon,
        })
    }

    fn ctr(&self, args: &[&str]) -> husk_tests::process::Finished {
        let mut c = Command::new("/usr/bin/ctr");
        c.arg("--address")
            .arg(self.dir.path().join("sock"))
            .args(args);
        husk_tests::process::run(c, TIMEOUT)
    }
}

#[test]
fn ctr_runs_a_container_in_a_microvm_with_husk_as_the_runc_binary() {
    require_linux_kvm();
    let Some(c) = Containerd::start() else { return };
    let tar = husk_tests::guest_dir().join("husk-test-image.docker.tar");
    let tar = tar.display().to_string();
    let out = c.ctr(&["images", "import", "--snapshotter", "native", &tar]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let husk = husk_tests::husk::binary().display().to_string();
    let out = c.ctr(&[
        "run",
        "--snapshotter",
        "native",
        "--runc-binary",
        &husk,
        "--rm",
        "docker.io/library/husk-test:latest",
        "t1",
        "sh",
        "-c",
        "uname -r; exit 3",
    ]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(out.stdout.trim(), host.trim(), "{}", out.describe());
    assert!(!out.stdout.trim().is_empty(), "{}", out.describe());
    // The shim deleted it: nothing is left in containerd's runc root.
    let tasks = c.ctr(&["tasks", "ls", "-q"]);
    assert_eq!(tasks.stdout.trim(), "", "{}", tasks.describe());
}
