//! A real systemd for tests that need one (`--systemd-cgroup`), on a host
//! that was not booted with it, such as the testbed's L1: Debian's
//! `/lib/systemd/systemd` as PID 1 of new pid, mount and cgroup namespaces
//! ("systemd in a container"), its cgroup a child of the caller's
//! hierarchy, and one empty target as its only unit file. Commands enter
//! its namespaces with nsenter, so that the pids they hand systemd are its
//! pids and its private socket is theirs.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const PROGRAM: &str = "/lib/systemd/systemd";
const TARGET: &str = "husk-test.target";

/// A running systemd; killed, with everything it started, on drop.
pub struct Systemd {
    /// `unshare`, whose child is systemd; killing it kills systemd
    /// (`--kill-child`), and with PID 1 its whole pid namespace.
    unshare: Child,
    /// systemd's pid as this process sees it.
    pub pid: i32,
    /// Its cgroup, as this process sees it: its `/` from inside.
    pub cgroup: PathBuf,
    dir: tempfile::TempDir,
}

impl Systemd {
    /// systemd, up and answering on its private socket; None (the test
    /// is skipped, which fails it under HUSK_NO_SKIP) without it.
    pub fn start() -> Option<Systemd> {
        if !Path::new(PROGRAM).is_file() {
            husk_skip::skip("systemd is not installed (scripts/setup installs it)");
            return None;
        }
        husk_compare::runner::ensure_cgroup2();
        let dir = tempfile::tempdir().unwrap();
        let units = dir.path().join("units");
        std::fs::create_dir(&units).unwrap();
        std::fs::write(units.join(TARGET), "[Unit]\nDescription=husk test\n").unwrap();
        let cgroup =
            Path::new("/sys/fs/cgroup").join(format!("husk-systemd-{}", std::process::id()));
        std::fs::create_dir_all(&cgroup).unwrap();
        // Inside the new namespaces, cgroup2 mounted again shows the new
        // cgroup namespace's root (our cgroup), which systemd takes over.
        // systemd as PID 1 writes to /dev/console: in its mount namespace
        // that is the log file, not the testbed's console.
        let log_path = dir.path().join("systemd.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let inner = format!(
            "umount /sys/fs/cgroup 2>/dev/null; mount -t cgroup2 none /sys/fs/cgroup || exit 1; \
             mount --bind {} /dev/console || exit 1; \
             exec env -i container=husk-test SYSTEMD_UNIT_PATH={} {PROGRAM} --unit={TARGET} --log-target=console",
            log_path.display(),
            units.display()
        );
        let procs = cgroup.join("cgroup.procs");
        let mut c = Command::new("unshare");
        c.args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount",
            "--cgroup",
            "--mount-proc",
        ])
        .args(["sh", "-c", &inner])
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
        let unshare = {
            use std::os::unix::process::CommandExt;
            let procs = std::ffi::CString::new(procs.display().to_string()).unwrap();
            // SAFETY: between fork and exec, only open/write/close on a
            // path made before the fork: into the new cgroup before the
            // cgroup namespace is made, so that it is its root.
            unsafe {
                c.pre_exec(move || {
                    let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                    if fd < 0 || libc::write(fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                    libc::close(fd);
                    Ok(())
                })
            };
            c.spawn().expect("unshare (util-linux)")
        };
        let mut sd = Systemd {
            unshare,
            pid: 0,
            cgroup,
            dir,
        };
        sd.wait_until_up();
        Some(sd)
    }

    /// Waits for systemd's private socket, as its own mount namespace has
    /// it.
    fn wait_until_up(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(pid) = child_of(self.unshare.id()) {
                self.pid = pid;
                let socket = format!("/proc/{pid}/root/run/systemd/private");
                if Path::new(&socket).exists() {
                    return;
                }
            }
            if let Ok(Some(status)) = self.unshare.try_wait() {
                panic!("systemd ended ({status}): {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "systemd did not come up in 60 s: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What systemd printed.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("systemd.log")).unwrap_or_default()
    }

    /// `c` (program, arguments, environment, directory) run in systemd's
    /// namespaces.
    pub fn enter(&self, c: &Command) -> Command {
        let mut n = Command::new("nsenter");
        n.args(["-t", &self.pid.to_string(), "-a", "--"])
            .arg(c.get_program())
            .args(c.get_args());
        for (k, v) in c.get_envs() {
            match v {
                Some(v) => n.env(k, v),
                None => n.env_remove(k),
            };
        }
        if let Some(d) = c.get_current_dir() {
            n.current_dir(d);
        }
        n
    }

    /// `systemctl show -p PROPERTY UNIT`'s value.
    pub fn unit_property(&self, unit: &str, property: &str) -> String {
        let mut c = Command::new("systemctl");
        c.args(["show", "--value", "-p", property, unit]);
        let out = crate::process::run(self.enter(&c), Duration::from_secs(30));
        assert_eq!(
            out.code,
            Some(0),
            "systemctl show {unit}: {}",
            out.describe()
        );
        out.stdout.trim().to_owned()
    }
}

impl Drop for Systemd {
    fn drop(&mut self) {
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        // The pid namespace's processes die with its PID 1, a moment
        // later; then its cgroups can go, deepest first.
        let deadline = Instant::now() + Duration::from_secs(10);
        while remove_tree(&self.cgroup).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The first child of `pid` (its only one, for unshare --fork).
fn child_of(pid: u32) -> Option<i32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

fn remove_tree(dir: &Path) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        if e.file_type()?.is_dir() {
            remove_tree(&e.path())?;
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
