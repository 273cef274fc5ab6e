//! Debian's podman with husk as its OCI runtime (`podman --runtime husk`),
//! podman itself unchanged: conmon calls `husk create/start/state/kill/
//! delete`, and each container runs in its own microVM.

use husk_tests::podman::{self, IMAGE};
use husk_tests::require_linux_kvm;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(180);

/// podman with its storage, run state and events in a directory of its
/// own, the test image loaded, and husk as the runtime.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    /// None (the test is skipped, which fails it under HUSK_NO_SKIP) when
    /// podman is not installed.
    fn new() -> Option<Podman> {
        if !Path::new(podman::PROGRAM).is_file() {
            husk_skip::skip("podman is not installed (scripts/setup installs it)");
            return None;
        }
        // conmon puts the container's pid in a cgroup v2 hierarchy.
        husk_compare::runner::ensure_cgroup2();
        let p = Podman {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir(p.dir.path().join("tmp")).unwrap();
        let tar = husk_tests::guest_dir().join("husk-test-image.docker.tar");
        let out = p.run(&["load", "-q", "-i", &tar.display().to_string()]);
        assert_eq!(out.code, Some(0), "podman load: {}", out.describe());
        Some(p)
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = podman::command(self.dir.path(), &husk_tests::husk::binary());
        c.args(args);
        c
    }

    fn run(&self, args: &[&str]) -> husk_tests::process::Finished {
        husk_tests::process::run(self.command(args), TIMEOUT)
    }
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap()
        .trim()
        .to_owned()
}

#[test]
fn podman_runs_each_container_in_its_own_microvm() {
    require_linux_kvm();
    let Some(p) = Podman::new() else { return };
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--cpus",
        "2",
        IMAGE,
        "sh",
        "-c",
        "uname -r; nproc; echo to-stderr >&2; exit 3",
    ]);
    assert_eq!(out.code, Some(3), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    // The project's guest kernel, not this host's: a VM.
    assert_ne!(lines[0], host_kernel(), "{}", out.describe());
    // --cpus 2 (a CPU quota) sized the VM: two vCPUs.
    assert_eq!(lines[1], "2", "{}", out.describe());
    assert!(out.stderr.contains("to-stderr"), "{}", out.describe());
    let out = p.run(&["run", "--rm", "--network", "none", IMAGE, "true"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    // -t: conmon takes the terminal through --console-socket; the
    // container's stdio is a pty in the guest.
    let out = p.run(&[
        "run",
        "--rm",
        "-t",
        "--network",
        "none",
        IMAGE,
        "sh",
        "-c",
        "tty; exit 4",
    ]);
    assert_eq!(out.code, Some(4), "{}", out.describe());
    assert!(out.stdout.contains("/dev/pts/"), "{}", out.describe());
    // --memory is the container's cgroup limit inside the VM (which gets
    // the limit plus its own overhead): the OOM killer's SIGKILL is 137.
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--memory",
        "64m",
        IMAGE,
        "awk",
        "BEGIN { s = \"x\"; while (1) s = s s }",
    ]);
    assert_eq!(out.code, Some(137), "{}", out.describe());
    // Nothing left: no container, no monitor.
    assert_eq!(p.run(&["ps", "-a", "-q"]).stdout, "");
}

#[test]
fn podman_detached_ps_logs_stop_and_rm() {
    require_linux_kvm();
    let Some(p) = Podman::new() else { return };
    let script = "echo started; trap 'echo bye; exit 0' TERM; while :; do sleep 0.2; done";
    let out = p.run(&["run", "-d", "--network", "none", IMAGE, "sh", "-c", script]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = out.stdout.trim().to_owned();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !p.run(&["logs", &id]).stdout.contains("started") {
        assert!(std::time::Instant::now() < deadline, "no output from {id}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ps = p.run(&["ps", "-q", "--no-trunc"]);
    assert_eq!(ps.stdout.trim(), id, "{}", ps.describe());
    // podman exec: conmon's `husk exec --process ... --detach`, in the
    // same VM (it sees the container's own shell as PID 1).
    let ex = p.run(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /proc/1/cmdline | tr '\\0' ' '; exit 3",
    ]);
    assert_eq!(ex.code, Some(3), "{}", ex.describe());
    assert!(
        ex.stdout.starts_with("sh -c echo started"),
        "{}",
        ex.describe()
    );
    // podman pause/unpause: the VM's vCPUs park and run again.
    assert_eq!(p.run(&["pause", &id]).code, Some(0));
    let st = p.run(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(st.stdout.trim(), "paused", "{}", st.describe());
    assert_eq!(p.run(&["unpause", &id]).code, Some(0));
    let st = p.run(&["inspect", "--format", "{{.State.Status}}", &id]);
    assert_eq!(st.stdout.trim(), "running", "{}", st.describe());
    let stop = p.run(&["stop", "-t", "20", &id]);
    assert_eq!(stop.code, Some(0), "{}", stop.describe());
    assert_eq!(p.run(&["logs", &id]).stdout, "started\nbye\n");
    let code = p.run(&["inspect", "--format", "{{.State.ExitCode}}", &id]);
    assert_eq!(code.stdout.trim(), "0", "{}", code.describe());
    assert_eq!(p.run(&["rm", &id]).code, Some(0));

    // A container that ignores SIGTERM: podman's SIGKILL after the
    // timeout ends its VM, and the status is 137.
    let script = "trap '' TERM; echo up; while :; do sleep 0.2; done";
    let out = p.run(&["run", "-d", "--network", "none", IMAGE, "sh", "-c", script]);
    let id = out.stdout.trim().to_owned();
    while !p.run(&["logs", &id]).stdout.contains("up") {
        assert!(std::time::Instant::now() < deadline, "no output from {id}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let stop = p.run(&["stop", "-t", "2", &id]);
    assert_eq!(stop.code, Some(0), "{}", stop.describe());
    let code = p.run(&["inspect", "--format", "{{.State.ExitCode}}", &id]);
    assert_eq!(code.stdout.trim(), "137", "{}", code.describe());
    assert_eq!(p.run(&["rm", &id]).code, Some(0));
    assert_eq!(p.run(&["ps", "-a", "-q"]).stdout, "");
}

#[test]
fn a_podman_volume_is_live_in_the_vm() {
    require_linux_kvm();
    let Some(p) = Podman::new() else { return };
    let host: PathBuf = p.dir.path().join("vol");
    std::fs::create_dir(&host).unwrap();
    std::fs::write(host.join("h"), "from the host\n").unwrap();
    let volume = format!("{}:/x", host.display());
    let out = p.run(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        &volume,
        IMAGE,
        "sh",
        "-c",
        "cat /x/h; echo from-the-container >/x/c",
    ]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(out.stdout, "from the host\n", "{}", out.describe());
    assert_eq!(
        std::fs::read_to_string(host.join("c")).unwrap(),
        "from-the-container\n"
    );
}

#[test]
fn a_published_port_reaches_the_server_in_the_vm() {
    require_linux_kvm();
    let Some(p) = Podman::new() else { return };
    // podman's default network (netavark: a bridge, a veth in the
    // container's namespace, NAT for -p), husk unchanged under it.
    let script = husk_tests::http::HTTPD_SCRIPT;
    let out = p.run(&["run", "-d", "-p", "8080:80", IMAGE, "sh", "-c", script]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let id = out.stdout.trim().to_owned();
    let got = husk_tests::http::get_tcp("127.0.0.1:8080");
    let logs = p.run(&["logs", &id]);
    let body = got.unwrap_or_else(|e| panic!("{e}; {}", logs.describe()));
    assert!(body.ends_with(husk_tests::http::SERVED), "{body}");
    assert_eq!(p.run(&["rm", "-f", &id]).code, Some(0));
}

#[test]
fn podman_build_runs_its_run_steps_in_microvms() {
    require_linux_kvm();
    let Some(p) = Podman::new() else { return };
    // buildah's image copies go to /var/tmp whatever TMPDIR says; every
    // host has it, the testbed's bare root does not.
    std::fs::create_dir_all("/var/tmp").unwrap();
    let ctx = p.dir.path().join("context");
    std::fs::create_dir(&ctx).unwrap();
    std::fs::write(
        ctx.join("Dockerfile"),
        format!(
            "FROM {IMAGE}\n\
             RUN uname -r >/built-on\n\
             RUN echo second-step >>/built-on\n\
             CMD [\"cat\", \"/built-on\"]\n"
        ),
    )
    .unwrap();
    let out = p.run(&["build", "-t", "husk-built", &ctx.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let out = p.run(&["run", "--rm", "--network", "none", "husk-built"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", out.describe());
    // The RUN step ran on the guest's kernel: in a microVM.
    assert_ne!(lines[0], host_kernel(), "{}", out.describe());
    assert_eq!(lines[1], "second-step", "{}", out.describe());
}

/// podman as on a host booted with systemd (its default cgroup manager
/// there): it passes husk `--systemd-cgroup` and `machine.slice:libpod:ID`,
/// and husk asks systemd for the scope, as runc and crun do.
#[test]
fn with_systemd_cgroups_the_container_gets_a_scope() {
    require_linux_kvm();
    let Some(sd) = husk_tests::systemd::Systemd::start() else {
        return;
    };
    let Some(p) = Podman::new() else { return };
    let run = |args: &[&str]| {
        let mut all = vec!["--cgroup-manager", "systemd"];
        all.extend_from_slice(args);
        husk_tests::process::run(sd.enter(&p.command(&all)), TIMEOUT)
    };
    let script = "cat /proc/self/cgroup; while :; do sleep 0.2; done";
    let out = run(&[
        "run",
        "-d",
        "--network",
        "none",
        "--cgroupns",
        "host",
        IMAGE,
        "sh",
        "-c",
        script,
    ]);
    assert_eq!(
        out.code,
        Some(0),
        "{}\nsystemd: {}",
        out.describe(),
        sd.log()
    );
    let id = out.stdout.trim().to_owned();
    let unit = format!("libpod-{id}.scope");
    let path = format!("/machine.slice/{unit}");
    // In the VM, the container's cgroup has the path systemd gave the
    // container on the host.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !run(&["logs", &id]).stdout.contains("0::") {
        assert!(std::time::Instant::now() < deadline, "no output from {id}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(run(&["logs", &id]).stdout, format!("0::{path}\n"));
    // On the host: systemd knows the scope, and the container's pid (husk's
    // monitor) is in it.
    assert_eq!(sd.unit_property(&unit, "ActiveState"), "active");
    assert_eq!(sd.unit_property(&unit, "ControlGroup"), path);
    let pid = run(&["inspect", "--format", "{{.State.Pid}}", &id]);
    let pid = pid.stdout.trim();
    let mut c = Command::new("cat");
    c.arg(format!("/proc/{pid}/cgroup"));
    let cgroup = husk_tests::process::run(sd.enter(&c), TIMEOUT);
    assert_eq!(
        cgroup.stdout,
        format!("0::{path}\n"),
        "{}",
        cgroup.describe()
    );
    let procs = sd
        .cgroup
        .join(path.trim_start_matches('/'))
        .join("cgroup.procs");
    let exes: Vec<PathBuf> = std::fs::read_to_string(&procs)
        .unwrap()
        .lines()
        .filter_map(|pid| std::fs::read_link(format!("/proc/{pid}/exe")).ok())
        .collect();
    assert!(
        exes.contains(&husk_tests::husk::binary()),
        "{}: {exes:?}",
        procs.display()
    );
    // podman rm -f: husk delete stops the scope; systemd forgets it.
    let rm = run(&["rm", "-f", &id]);
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
    assert_eq!(sd.unit_property(&unit, "LoadState"), "not-found");
    assert!(!procs.parent().unwrap().exists());
}
