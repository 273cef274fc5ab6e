//! `husk run --network bridge`: each container's VM on husk's bridge with
//! an address of its own, reachable from the host and from other
//! containers; `-p` publishes a port on the host; nothing stays behind,
//! not even after a `kill -9`.

use husk_tests::http::{get_tcp, HTTPD_SCRIPT, SERVED};
use husk_tests::require_linux_kvm;
use std::net::TcpListener;

use crate::run::{husk, wait_status, Run};

const LEASES: &str = "/run/husk/network/leases";

/// The tests here look at the host's whole bridge (every TAP, every
/// lease): one at a time.
static BRIDGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The TAPs husk made for runs (`hk<id>`) that exist now.
fn husk_taps() -> Vec<String> {
    std::fs::read_dir("/sys/class/net")
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("hk"))
        .collect()
}

fn leases() -> Vec<String> {
    std::fs::read_dir(LEASES)
        .map(|d| {
            d.map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        })
        .unwrap_or_default()
}

/// eth0's IPv4 address in the container `id`.
fn address_of(r: &Run, id: &str) -> String {
    let out = husk(r, &["exec", id, "ip", "-4", "-o", "addr", "show", "eth0"]);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    out.stdout
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .unwrap_or_else(|| panic!("no address: {}", out.describe()))
        .to_string()
}

#[test]
fn the_bridge_gives_each_container_an_address_and_p_reaches_its_server() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let r = Run::new();
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().port();
    let refused = r.run(
        &[
            "--rm",
            "--network",
            "bridge",
            "-p",
            &format!("127.0.0.1:{busy}:80"),
        ],
        &["true"],
    );
    assert_eq!(refused.code, Some(1), "{}", refused.describe());
    assert_eq!(refused.stderr.lines().count(), 1, "{}", refused.describe());
    assert!(refused
        .stderr
        .contains(&format!("cannot listen on 127.0.0.1:{busy}")));
    let unbridged = r.run(&["--rm", "-p", "5000:80"], &["true"]);
    assert_eq!(unbridged.code, Some(2), "{}", unbridged.describe());

    // A port free now (5000, the seeds' port, may be a registry's here).
    let port = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let publish = format!("{port}:80");
    let started = r.run(
        &["-d", "--network", "bridge", "-p", &publish],
        &["sh", "-c", HTTPD_SCRIPT],
    );
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_string();
    let body = get_tcp(&format!("127.0.0.1:{port}")).unwrap_or_else(|e| panic!("{e}"));
    assert!(body.ends_with(SERVED), "{body}");
    let first = address_of(&r, &id);
    assert!(first.starts_with("10.90.0."), "{first}");

    // Another container: an address of its own, and it reaches the first.
    let script = format!("ip -4 -o addr show eth0; wget -q -O - http://{first}/");
    let second = r.run(&["--rm", "--network", "bridge"], &["sh", "-c", &script]);
    assert_eq!(second.code, Some(0), "{}", second.describe());
    assert!(
        second.stdout.contains("inet 10.90.0.")
            && !second.stdout.contains(&format!("inet {first}/")),
        "{}",
        second.describe()
    );
    assert!(second.stdout.ends_with(SERVED), "{}", second.describe());

    assert_eq!(husk(&r, &["rm", "-f", &id]).code, Some(0));
    assert!(husk_taps().is_empty(), "{:?}", husk_taps());
    assert!(leases().is_empty(), "{:?}", leases());
    assert!(!husk_table_exists(), "table ip husk outlived the last run");
}

#[test]
fn a_killed_husk_leaves_no_address_taken_and_no_tap_after_the_next_run() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let r = Run::new();
    let started = r.run(&["-d", "--network", "bridge"], &["sleep", "600"]);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_string();
    let address = address_of(&r, &id);
    let record: serde_json::Value = serde_json::from_slice(
        &std::fs::read(r.runtime.path().join(&id).join("state.json")).unwrap(),
    )
    .unwrap();
    let owner = record["owner_pid"].as_i64().unwrap() as i32;
    // SAFETY: kill(2) on the pid of the run's own husk process.
    assert_eq!(unsafe { libc::kill(owner, libc::SIGKILL) }, 0);
    wait_status(&r, &id, "Dead (its husk process is gone)");
    assert!(
        leases().contains(&address),
        "the dead run's lease is still there"
    );

    // The next run reclaims the address (no duplicate: its owner is gone)
    // and deletes the dead run's TAP.
    let next = r.run(
        &["--rm", "--network", "bridge"],
        &["ip", "-4", "-o", "addr", "show", "eth0"],
    );
    assert_eq!(next.code, Some(0), "{}", next.describe());
    assert!(husk_taps().is_empty(), "{:?}", husk_taps());
    assert!(leases().is_empty(), "{:?}", leases());
    assert!(!husk_table_exists(), "table ip husk outlived the last run");
    assert_eq!(husk(&r, &["rm", &id]).code, Some(0));
}

/// Another host for the containers to reach: a network namespace behind a
/// veth (10.91.0.1 here, 10.91.0.2 there) with an HTTP server that answers
/// with the address it saw the request come from. Removed when dropped.
struct Outside {
    ns: &'static str,
}

impl Outside {
    fn start() -> Outside {
        let ns = "husk-test-out";
        let ip = |args: &str| {
            let ok = std::process::Command::new("/usr/sbin/ip")
                .args(args.split_whitespace())
                .status()
                .unwrap()
                .success();
            assert!(ok, "ip {args}");
        };
        // What an earlier, killed run may have left.
        let _ = std::process::Command::new("/usr/sbin/ip")
            .args(["netns", "del", ns])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&format!("netns add {ns}"));
        ip(&format!(
            "link add hkt0 type veth peer name hkt1 netns {ns}"
        ));
        ip("addr add 10.91.0.1/24 dev hkt0");
        ip("link set hkt0 up");
        ip(&format!("-n {ns} addr add 10.91.0.2/24 dev hkt1"));
        ip(&format!("-n {ns} link set hkt1 up"));
        ip(&format!("-n {ns} link set lo up"));
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            // Only this thread enters the namespace: its listener is there.
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind("10.91.0.2:8000").unwrap();
            tx.send(()).unwrap();
            for conn in listener.incoming().flatten() {
                let peer = conn.peer_addr().unwrap().ip();
                let mut conn = conn;
                let mut buf = [0u8; 1024];
                let _ = std::io::Read::read(&mut conn, &mut buf);
                let body = format!("peer={peer}\n");
                let reply = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = std::io::Write::write_all(&mut conn, reply.as_bytes());
            }
        });
        rx.recv().unwrap();
        Outside { ns }
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = std::process::Command::new("/usr/sbin/ip")
            .args(["netns", "del", self.ns])
            .status();
        // Gone with the namespace (its peer was there); if not, now.
        let _ = std::process::Command::new("/usr/sbin/ip")
            .args(["link", "del", "hkt0"])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

fn husk_table_exists() -> bool {
    let out = std::process::Command::new("/usr/sbin/nft")
        .args(["list", "tables"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "table ip husk")
}

#[test]
fn outbound_traffic_leaves_masqueraded_and_the_last_run_takes_the_rules_with_it() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let _forwarding = crate::FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
    let _outside = Outside::start();
    let forwarding = || std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let before = forwarding();
    let r = Run::new();
    let out = r.run(
        &["--rm", "--network", "bridge"],
        &["wget", "-q", "-O", "-", "http://10.91.0.2:8000/"],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    // The other host saw the host's address on its link, not the
    // container's: masqueraded.
    assert_eq!(out.stdout, "peer=10.91.0.1\n", "{}", out.describe());
    assert!(!husk_table_exists(), "table ip husk outlived the last run");
    assert!(!std::path::Path::new("/sys/class/net/huskbr0").exists());
    assert_eq!(forwarding(), before, "IPv4 forwarding as it was found");
}
