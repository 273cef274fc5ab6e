//! `husk run` without root: passt's userspace network stack gives the
//! container outbound traffic and `-p`, with no TAP, bridge or rule, and
//! it goes when the run goes.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::process::Command;

use husk_tests::http::{get_tcp, HTTPD_SCRIPT, SERVED};
use husk_tests::process::{run, Finished};
use husk_tests::require_linux_kvm;

use crate::run::{Run, TIMEOUT};
use crate::z_bridge::{Outside, BRIDGE};

/// The unprivileged user the runs are made as (nobody).
const USER: u32 = 65534;

/// A [`Run`] whose husk runs as [`USER`], with `/dev/kvm` through its
/// group, as a user in the `kvm` group has it.
struct Rootless {
    r: Run,
    kvm_gid: u32,
}

impl Rootless {
    /// None (the test skips) when no group grants `/dev/kvm`.
    fn new() -> Option<Rootless> {
        let kvm = std::fs::metadata("/dev/kvm").unwrap();
        if kvm.gid() == 0 || kvm.mode() & 0o060 != 0o060 {
            if std::env::var_os("HUSK_TESTBED").is_none() {
                husk_skip::skip("no group grants /dev/kvm to an unprivileged user");
                return None;
            }
            // L1 has no udev to give /dev/kvm its kvm group (Debian's
            // 0660 root:kvm): give it one. L1 is this test's alone.
            std::os::unix::fs::chown("/dev/kvm", None, Some(USER)).unwrap();
            let mut perm = kvm.permissions();
            std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o660);
            std::fs::set_permissions("/dev/kvm", perm).unwrap();
        }
        let kvm_gid = std::fs::metadata("/dev/kvm").unwrap().gid();
        let r = Run::new();
        for d in [r.cache.path(), r.runtime.path()] {
            std::os::unix::fs::chown(d, Some(USER), Some(USER)).unwrap();
        }
        Some(Rootless { r, kvm_gid })
    }

    fn as_user(&self, mut c: Command) -> Command {
        let groups = [self.kvm_gid];
        c.env_remove("HOME");
        // Groups, then the gid, then the uid, by hand: std's uid() drops
        // privileges before pre_exec runs, and its groups() is unstable.
        // SAFETY: setgroups, setgid and setuid are async-signal-safe; the
        // array is the closure's own copy.
        unsafe {
            c.pre_exec(move || {
                if libc::setgroups(groups.len(), groups.as_ptr()) != 0
                    || libc::setgid(USER) != 0
                    || libc::setuid(USER) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }

    fn run(&self, flags: &[&str], cmd: &[&str]) -> Finished {
        run(self.as_user(self.r.command(flags, cmd)), TIMEOUT)
    }

    fn husk(&self, args: &[&str]) -> Finished {
        run(self.as_user(self.r.husk_command(args)), TIMEOUT)
    }
}

/// passt processes running now.
fn passts() -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let comm = std::fs::read_to_string(e.ok()?.path().join("comm")).ok()?;
            comm.starts_with("passt").then(|| comm.trim().to_string())
        })
        .collect()
}

/// Adds a default route through the other host while `self` lives, if
/// the host has none (passt needs one; the testbed's L1 has no network).
struct DefaultRoute(bool);

impl DefaultRoute {
    fn via(gateway: &str) -> DefaultRoute {
        if husk_tests::host_has_default_route() {
            return DefaultRoute(false);
        }
        let ok = Command::new("/usr/sbin/ip")
            .args(["route", "add", "default", "via", gateway])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip route add default via {gateway}");
        DefaultRoute(true)
    }
}

impl Drop for DefaultRoute {
    fn drop(&mut self) {
        if self.0 {
            let _ = Command::new("/usr/sbin/ip")
                .args(["route", "del", "default"])
                .status();
        }
    }
}

#[test]
fn without_root_passt_gives_outbound_traffic_and_published_ports() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let Some(user) = Rootless::new() else {
        return;
    };
    let _outside = Outside::start();
    let _route = DefaultRoute::via("10.91.0.2");

    // The default without root: passt's slirp-like address, and the other
    // host reached from the host's own address (passt's sockets are the
    // host's).
    let out = user.run(
        &["--rm"],
        &[
            "sh",
            "-c",
            "ip -4 -o addr show eth0; wget -q -O - http://10.91.0.2:8000/",
        ],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("inet 10.0.2.100/24"),
        "{}",
        out.describe()
    );
    assert!(
        out.stdout.contains("peer=10.91.0.1\n"),
        "{}",
        out.describe()
    );

    // Root may ask for it too (passt then runs as nobody).
    let as_root = user.r.run(
        &["--rm", "--network", "passt"],
        &["wget", "-q", "-O", "-", "http://10.91.0.2:8000/"],
    );
    assert_eq!(as_root.code, Some(0), "{}", as_root.describe());
    assert_eq!(as_root.stdout, "peer=10.91.0.1\n", "{}", as_root.describe());

    // A port in use: one line, before boot.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let refused = user.run(&["--rm", "-p", &format!("127.0.0.1:{busy}:80")], &["true"]);
    assert_eq!(refused.code, Some(1), "{}", refused.describe());
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.describe());

    // -p: the server in the container answers on the host's port.
    let port = std::net::TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = user.run(
        &["-d", "-p", &format!("127.0.0.1:{port}:80")],
        &["sh", "-c", HTTPD_SCRIPT],
    );
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_string();
    let body = get_tcp(&format!("127.0.0.1:{port}")).unwrap_or_else(|e| panic!("{e}"));
    assert!(body.ends_with(SERVED), "{body}");
    let shown = user.husk(&["port", &id]);
    assert_eq!(
        shown.stdout.trim(),
        format!("80/tcp -> 127.0.0.1:{port}"),
        "{}",
        shown.describe()
    );
    assert_eq!(passts().len(), 1, "{:?}", passts());
    let rm = user.husk(&["rm", "-f", &id]);
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
    // passt goes with its run: its socket closed.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !passts().is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(passts().is_empty(), "{:?}", passts());
    assert!(
        get_tcp_once(port).is_err(),
        "port {port} still answers after rm"
    );
}

fn get_tcp_once(port: u16) -> std::io::Result<std::net::TcpStream> {
    std::net::TcpStream::connect(("127.0.0.1", port))
}
