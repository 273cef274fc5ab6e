//! Debian's Docker with husk as an added runtime (`dockerd --add-runtime
//! husk=...`, `docker run --runtime husk`): dockerd's containerd shim calls
//! husk as it calls runc, and the container runs in a microVM.

use husk_tests::process::Daemon;
use husk_tests::require_linux_kvm;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(180);

/// A dockerd of its own (data, exec root and socket in a temporary
/// directory, vfs storage), killed on drop.
struct Dockerd {
    dir: tempfile::TempDir,
    _daemon: Daemon,
}

/// Docker without its bridge and iptables rules.
const NO_NETWORK: &[&str] = &["--bridge", "none", "--iptables=false", "--ip6tables=false"];

impl Dockerd {
    fn start(network: &[&str]) -> Option<Dockerd> {
        for p in [
            "/usr/sbin/dockerd",
            "/usr/bin/docker",
            "/usr/bin/containerd",
        ] {
            if !Path::new(p).is_file() {
                husk_skip::skip("docker.io is not installed (scripts/setup installs it)");
                return None;
            }
        }
        husk_compare::runner::ensure_cgroup2();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("daemon.json"), "{}").unwrap();
        let mut cmd = Command::new("/usr/sbin/dockerd");
        cmd.arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .arg("--pidfile")
            .arg(d.join("pid"))
            .arg("-H")
            .arg(format!("unix://{}", d.join("sock").display()))
            .args(network)
            .args(["--storage-driver", "vfs", "--add-runtime"])
            .arg(format!("husk={}", husk_tests::husk::binary().display()));
        let daemon = Daemon::start(cmd, &d.join("sock"), &d.join("dockerd.log"));
        Some(Dockerd {
            dir,
            _daemon: daemon,
        })
    }

    fn docker(&self, args: &[&str]) -> husk_tests::process::Finished {
        let mut c = Command::new("/usr/bin/docker");
        c.arg("-H")
            .arg(format!("unix://{}", self.dir.path().join("sock").display()))
            .args(args);
        husk_tests::process::run(c, TIMEOUT)
    }
}

#[test]
fn docker_runs_a_container_in_a_microvm_with_runtime_husk() {
    require_linux_kvm();
    let Some(d) = Dockerd::start(NO_NETWORK) else {
        return;
    };
    let tar = husk_tests::guest_dir().join("husk-test-image.docker.tar");
    let out = d.docker(&["load", "-q", "-i", &tar.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = d.docker(&[
        "run",
        "--rm",
        "--runtime",
        "husk",
        "--network",
        "none",
        "husk-test:latest",
        "sh",
        "-c",
        "uname -r; exit 3",
    ]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let host = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_ne!(out.stdout.trim(), host.trim(), "{}", out.describe());
    // The container's pid on the host (husk's monitor) has a network
    // namespace of its own: what Docker sets up there (its prestart hook)
    // cannot touch the host's.
    let out = d.docker(&[
        "run",
        "-d",
        "--runtime",
        "husk",
        "--network",
        "none",
        "husk-test:latest",
        "sleep",
        "600",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = out.stdout.trim().to_owned();
    let pid = d.docker(&["inspect", "--format", "{{.State.Pid}}", &id]);
    let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).unwrap();
    assert_ne!(ns(pid.stdout.trim()), ns("self"), "{}", pid.describe());
    assert_eq!(d.docker(&["rm", "-f", &id]).code, Some(0));
}

#[test]
fn dockers_bridge_and_a_published_port_reach_the_vm() {
    require_linux_kvm();
    // Docker's default network: docker0, a veth its prestart hook moves
    // into the monitor's namespace, NAT and docker-proxy for -p.
    let _forwarding = crate::FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
    let _policy = ForwardPolicyBack;
    let Some(d) = Dockerd::start(&[]) else { return };
    let tar = husk_tests::guest_dir().join("husk-test-image.docker.tar");
    let out = d.docker(&["load", "-q", "-i", &tar.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let script = husk_tests::http::HTTPD_SCRIPT;
    let out = d.docker(&[
        "run",
        "-d",
        "--runtime",
        "husk",
        "-p",
        "8081:80",
        "husk-test:latest",
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = out.stdout.trim().to_owned();
    let got = husk_tests::http::get_tcp("127.0.0.1:8081");
    let logs = d.docker(&["logs", &id]);
    let body = got.unwrap_or_else(|e| panic!("{e}; {}", logs.describe()));
    assert!(body.ends_with(husk_tests::http::SERVED), "{body}");
    assert_eq!(d.docker(&["rm", "-f", &id]).code, Some(0));
}

/// Puts iptables' FORWARD policy back to ACCEPT when the test ends, as it
/// was before dockerd set it to DROP (which dockerd leaves behind).
struct ForwardPolicyBack;

impl Drop for ForwardPolicyBack {
    fn drop(&mut self) {
        let _ = Command::new("/usr/sbin/iptables")
            .args(["-P", "FORWARD", "ACCEPT"])
            .status();
    }
}
