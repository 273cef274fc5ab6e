//! `husk run --network bridge`: each container's VM on husk's bridge with
//! an address of its own, reachable from the host and from other
//! containers; `-p` publishes a port on the host; nothing stays behind,
//! not even after a `kill -9`.

use husk_tests::http::{get_tcp, HTTPD_SCRIPT, SERVED};
use husk_tests::require_linux_kvm;
use std::net::TcpListener;

use crate::run::{husk, wait_status, Run};

const LEASES: &str = "/run/husk/network/bridge/leases";

/// The tests here look at the host's whole bridge (every TAP, every
/// lease): one at a time.
pub(crate) static BRIDGE: std::sync::Mutex<()> = std::sync::Mutex::new(());

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
    let unbridged = r.run(&["--rm", "--network", "none", "-p", "5000:80"], &["true"]);
    assert_eq!(unbridged.code, Some(2), "{}", unbridged.describe());
    // Root's default is the bridge; `none` is loopback only.
    let default = r.run(&["--rm"], &["ip", "-4", "-o", "addr", "show", "eth0"]);
    assert_eq!(default.code, Some(0), "{}", default.describe());
    assert!(
        default.stdout.contains("inet 10.90.0."),
        "{}",
        default.describe()
    );
    // Loopback, and at most the kernel's fallback IPv6-in-IPv4 tunnel
    // (sit0, in every namespace of a kernel with SIT; no address, no
    // route): no NIC.
    let none = r.run(&["--rm", "--network", "none"], &["ls", "/sys/class/net"]);
    let ifaces: Vec<&str> = none.stdout.lines().filter(|i| *i != "sit0").collect();
    assert_eq!(ifaces, ["lo"], "{}", none.describe());
    let host = r.run(&["--rm", "--network", "host"], &["true"]);
    assert_eq!(host.code, Some(2), "{}", host.describe());
    assert!(
        host.stderr.contains("cannot share the host's network"),
        "{}",
        host.describe()
    );

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
    assert!(
        !husk_table_exists(),
        "table ip huskbr0 outlived the last run"
    );
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
    assert!(
        !husk_table_exists(),
        "table ip huskbr0 outlived the last run"
    );
    assert_eq!(husk(&r, &["rm", &id]).code, Some(0));
}

/// The name the other host's DNS server knows (as itself).
const OUTSIDE_NAME: &str = "files.outside.test";

/// Another host for the containers to reach: a network namespace behind a
/// veth (10.91.0.1 here, 10.91.0.2 there) with an HTTP server that answers
/// with the address it saw the request come from, and a DNS server that
/// knows [`OUTSIDE_NAME`]. Removed when dropped.
pub(crate) struct Outside {
    ns: &'static str,
}

impl Outside {
    pub(crate) fn start() -> Outside {
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
            "link add outv0 type veth peer name outv1 netns {ns}"
        ));
        ip("addr add 10.91.0.1/24 dev outv0");
        ip("link set outv0 up");
        ip(&format!("-n {ns} addr add 10.91.0.2/24 dev outv1"));
        ip(&format!("-n {ns} link set outv1 up"));
        ip(&format!("-n {ns} link set lo up"));
        let (tx, rx) = std::sync::mpsc::channel();
        let (dns_tx, dns_rx) = std::sync::mpsc::channel();
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
        std::thread::spawn(move || {
            let f = std::fs::File::open(format!("/run/netns/{ns}")).unwrap();
            nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let socket = std::net::UdpSocket::bind("10.91.0.2:53").unwrap();
            let zone = [(OUTSIDE_NAME.to_string(), "10.91.0.2".parse().unwrap())];
            dns_tx.send(()).unwrap();
            husk_tests::dns::serve(socket, &zone);
        });
        dns_rx.recv().unwrap();
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
            .args(["link", "del", "outv0"])
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
        .any(|l| l.trim() == "table ip huskbr0")
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
    assert!(
        !husk_table_exists(),
        "table ip huskbr0 outlived the last run"
    );
    assert!(!std::path::Path::new("/sys/class/net/huskbr0").exists());
    assert_eq!(forwarding(), before, "IPv4 forwarding as it was found");
}

/// `cmd` run in a mount namespace of its own where the host's
/// /etc/resolv.conf reads `text` (bind-mounted over it; the real file is
/// untouched). A host without one (L1) gets an empty one for the test.
fn with_host_resolv_conf(
    mut cmd: std::process::Command,
    text: &str,
) -> husk_tests::process::Finished {
    use std::os::unix::process::CommandExt;
    let etc = std::path::Path::new("/etc/resolv.conf");
    let made = !etc.exists() && !etc.is_symlink();
    if made {
        std::fs::write(etc, "").unwrap();
    }
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let source = std::ffi::CString::new(file.path().as_os_str().as_encoded_bytes()).unwrap();
    let target = std::ffi::CString::new("/etc/resolv.conf").unwrap();
    let root = std::ffi::CString::new("/").unwrap();
    // SAFETY: between fork and exec only the unshare and mount system
    // calls run, on strings made before the fork.
    unsafe {
        cmd.pre_exec(move || {
            let fail = || Err(std::io::Error::last_os_error());
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return fail();
            }
            let private = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                private,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            if libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ) != 0
            {
                return fail();
            }
            Ok(())
        })
    };
    let out = husk_tests::process::run(cmd, crate::run::TIMEOUT);
    if made {
        let _ = std::fs::remove_file(etc);
    }
    out
}

#[test]
fn the_container_resolves_names_with_the_hosts_nameservers_and_its_hosts_file() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let _forwarding = crate::FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
    let _outside = Outside::start();
    let r = Run::new();
    // busybox's nslookup reads resolv.conf itself (its wget would need
    // glibc's NSS modules, which the busybox image has not).
    let script = "cat /etc/resolv.conf; echo ---; cat /etc/hosts; echo ---; \
                  cat /etc/hostname; hostname; echo ---; nslookup files";
    let cmd = r.command(
        &[
            "--rm",
            "--network",
            "bridge",
            "--hostname",
            "web",
            "--add-host",
            "db:192.0.2.7",
            "--add-host",
            "gw:host-gateway",
        ],
        &["sh", "-c", script],
    );
    // A local stub (the host's, not the VM's: dropped) and the other
    // host's server, with a search domain.
    let host = "nameserver 127.0.0.53\nnameserver 10.91.0.2\nsearch outside.test\noptions edns0\n";
    let out = with_host_resolv_conf(cmd, host);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let parts: Vec<&str> = out.stdout.split("---\n").collect();
    assert_eq!(parts.len(), 4, "{}", out.describe());
    let resolv: Vec<&str> = parts[0].lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        resolv,
        [
            "nameserver 10.91.0.2",
            "search outside.test",
            "options edns0"
        ],
        "{}",
        out.describe()
    );
    let hosts = parts[1];
    assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
    assert!(hosts.contains("192.0.2.7\tdb\n"), "{hosts}");
    assert!(hosts.contains("10.90.0.1\tgw\n"), "{hosts}");
    let own = hosts.lines().last().unwrap();
    assert!(
        own.starts_with("10.90.0.") && own.ends_with("\tweb"),
        "{hosts}"
    );
    assert_eq!(parts[2], "web\nweb\n", "{}", out.describe());
    // The search domain made the short name whole, and the answer came
    // from the other host's server through the NAT.
    assert!(
        parts[3].contains(&format!("Name:\t{OUTSIDE_NAME}"))
            && parts[3].contains("Address: 10.91.0.2"),
        "{}",
        out.describe()
    );
    assert!(!out.stderr.contains("8.8.8.8"), "{}", out.describe());

    // --dns and --dns-search replace the host's; no nameserver a container
    // reaches on the host means 8.8.8.8, said on stderr.
    let cmd = r.command(
        &[
            "--rm",
            "--network",
            "bridge",
            "--dns",
            "10.91.0.2",
            "--dns-search",
            "outside.test",
        ],
        &["nslookup", "files"],
    );
    let out = with_host_resolv_conf(cmd, "nameserver 127.0.0.1\n");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert!(
        out.stdout.contains("Address: 10.91.0.2"),
        "{}",
        out.describe()
    );
    let cmd = r.command(
        &["--rm", "--network", "bridge"],
        &["grep", "nameserver", "/etc/resolv.conf"],
    );
    let out = with_host_resolv_conf(cmd, "nameserver 127.0.0.1\n");
    assert_eq!(out.code, Some(0), "{}", out.describe());
    assert_eq!(
        out.stdout,
        "nameserver 8.8.8.8\nnameserver 8.8.4.4\n",
        "{}",
        out.describe()
    );
    let warned = out.stderr.lines().filter(|l| l.contains("8.8.8.8")).count();
    assert_eq!(warned, 1, "{}", out.describe());
}

/// The last `Address:` line of busybox nslookup's answer.
const LOOKUP: &str = "nslookup \"$1\" | awk '/^Address: /{a=$2} END{print a}'";

#[test]
fn containers_on_a_named_network_find_each_other_by_name_and_no_other_network() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let _forwarding = crate::FORWARDING.lock().unwrap_or_else(|p| p.into_inner());
    let _outside = Outside::start();
    let r = Run::new();
    let net = "e2e-net";
    let _ = husk(&r, &["network", "rm", net]);
    let made = husk(&r, &["network", "create", net]);
    assert_eq!(made.code, Some(0), "{}", made.describe());
    let ls = husk(&r, &["network", "ls"]);
    assert!(
        ls.stdout
            .lines()
            .any(|l| l.starts_with(&format!("{net}\t"))),
        "{}",
        ls.describe()
    );

    let web = r.run(
        &["-d", "--network", net, "--name", "web"],
        &["sh", "-c", HTTPD_SCRIPT],
    );
    assert_eq!(web.code, Some(0), "{}", web.describe());
    let taken = r.run(&["--rm", "--network", net, "--name", "web"], &["true"]);
    assert_ne!(taken.code, Some(0), "{}", taken.describe());
    assert!(
        taken.stderr.contains("the name \"web\" is container"),
        "{}",
        taken.describe()
    );
    // exec takes the name for the id.
    let address = address_of(&r, "web");

    // By name from another container on the network, then a name from
    // outside it through the container's own --dns.
    let script = format!(
        "lookup() {{ {LOOKUP}; }}; a=$(lookup web); echo web=$a; wget -q -O - http://$a/; \
         echo; echo outside=$(lookup {OUTSIDE_NAME})"
    );
    let peer = r.run(
        &["--rm", "--network", net, "--dns", "10.91.0.2"],
        &["sh", "-c", &script],
    );
    assert_eq!(peer.code, Some(0), "{}", peer.describe());
    assert!(
        peer.stdout.starts_with(&format!("web={address}\n")),
        "{}",
        peer.describe()
    );
    assert!(peer.stdout.contains(SERVED), "{}", peer.describe());
    assert!(
        peer.stdout.ends_with("outside=10.91.0.2\n"),
        "{}",
        peer.describe()
    );

    // The default bridge is another network: web is out of its reach, by
    // address and by name.
    let script = format!("echo name=$(timeout 8 nslookup web >/dev/null 2>&1 && echo found); wget -T 5 -q -O - http://{address}/ || echo unreachable");
    let stranger = r.run(&["--rm", "--network", "bridge"], &["sh", "-c", &script]);
    assert_eq!(
        stranger.stdout,
        "name=\nunreachable\n",
        "{}",
        stranger.describe()
    );

    let busy = husk(&r, &["network", "rm", net]);
    assert_ne!(busy.code, Some(0), "{}", busy.describe());
    assert!(busy.stderr.contains("in use"), "{}", busy.describe());
    assert_eq!(husk(&r, &["rm", "-f", "web"]).code, Some(0));
    let removed = husk(&r, &["network", "rm", net]);
    assert_eq!(removed.code, Some(0), "{}", removed.describe());
    assert!(husk_taps().is_empty(), "{:?}", husk_taps());
    assert!(!std::path::Path::new("/sys/class/net/huskbr1").exists());
}

#[test]
fn a_udp_port_is_published_and_each_client_hears_its_own_replies() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let r = Run::new();
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The bench image has a UDP echo server (busybox has none).
    let bench = husk_tests::guest_dir().join("husk-bench-image");
    let publish = format!("127.0.0.1:{port}:7/udp");
    let cmd = r.command_with_image(
        &bench,
        &["-d", "--network", "bridge", "-p", &publish],
        &["husk-bench", "udp-echo", "7", "1000"],
    );
    let started = husk_tests::process::run(cmd, crate::run::TIMEOUT);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_string();
    // Until the server listens, the guest refuses the port and the flow
    // starts over: ask again until an answer comes.
    let clients: Vec<std::net::UdpSocket> = (0..2)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    for (i, c) in clients.iter().enumerate() {
        c.set_read_timeout(Some(std::time::Duration::from_millis(500)))
            .unwrap();
        let msg = format!("ping{i}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let got = loop {
            c.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
            let mut buf = [0u8; 64];
            if let Ok(n) = c.recv(&mut buf) {
                break String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no echo on udp {port}"
            );
        };
        assert_eq!(got, msg);
    }
    assert_eq!(husk(&r, &["rm", "-f", &id]).code, Some(0));
    assert!(husk_taps().is_empty(), "{:?}", husk_taps());
}

#[test]
fn publish_all_publishes_what_the_image_exposes_and_port_says_where() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let r = Run::new();
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("exposing");
    let busybox = husk_tests::busybox_on_path();
    let built = std::process::Command::new(husk_tests::husk::binary())
        .args(["image", "build-test"])
        .arg(&image)
        .arg("--busybox")
        .arg(&busybox)
        .args(["--expose", "80/tcp"])
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let cmd = r.command_with_image(
        &image,
        &["-d", "--network", "bridge", "-P"],
        &["sh", "-c", HTTPD_SCRIPT],
    );
    let started = husk_tests::process::run(cmd, crate::run::TIMEOUT);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_string();
    let port = husk(&r, &["port", &id]);
    assert_eq!(port.code, Some(0), "{}", port.describe());
    let at = port
        .stdout
        .trim()
        .strip_prefix("80/tcp -> 0.0.0.0:")
        .unwrap_or_else(|| panic!("{}", port.describe()))
        .to_string();
    let body = get_tcp(&format!("127.0.0.1:{at}")).unwrap_or_else(|e| panic!("{e}"));
    assert!(body.ends_with(SERVED), "{body}");
    assert_eq!(husk(&r, &["rm", "-f", &id]).code, Some(0));
}

/// A container on the bridge, checkpointed and restored: the restored VM
/// has its new run's address and a default route through the bridge (the
/// guest had one already: it is replaced), and reaches the host.
#[test]
fn a_restored_checkpoint_takes_its_new_address_and_route_on_the_bridge() {
    require_linux_kvm();
    let _one = BRIDGE.lock().unwrap_or_else(|p| p.into_inner());
    let r = Run::new();
    let started = r.run(
        &["-d", "--network", "bridge"],
        &["sh", "-c", "while :; do sleep 1; done"],
    );
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    let before = address_of(&r, &id);
    let dir = tempfile::tempdir().unwrap();
    let saved = dir.path().join("cp");
    let cp = husk(&r, &["checkpoint", &id, saved.to_str().unwrap()]);
    assert_eq!(cp.code, Some(0), "{}", cp.describe());
    wait_status(&r, &id, "Exited (0)");
    let restored = husk(&r, &["restore", saved.to_str().unwrap()]);
    assert_eq!(restored.code, Some(0), "{}", restored.describe());
    let new = restored.stdout.trim().to_owned();
    let after = address_of(&r, &new);
    let route = husk(&r, &["exec", &new, "ip", "route"]);
    assert_eq!(route.code, Some(0), "{}", route.describe());
    let gateway = route
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("default via "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no default route: {}", route.describe()))
        .to_string();
    let ping = husk(&r, &["exec", &new, "ping", "-c", "1", "-W", "5", &gateway]);
    assert_eq!(ping.code, Some(0), "{}", ping.describe());
    eprintln!("checkpointed at {before}, restored at {after}, gateway {gateway}");
    assert_eq!(husk(&r, &["kill", &new]).code, Some(0));
    wait_status(&r, &new, "Exited (137)");
}
