//! virtio-net over a TAP: the guest gets its address from `ip=` on the
//! kernel command line and talks to the host end of the TAP.

use husk_tests::process::Finished;
use husk_tests::require_linux_kvm;
use std::io::Read;
use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

struct Tap(String);

impl Tap {
    /// A TAP with the host address 10.0.2.1/24 on `name`.
    fn up(name: &str) -> Tap {
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        let _ = Command::new("ip")
            .args(["link", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        ip(&["addr", "add", "10.0.2.1/24", "dev", name]);
        ip(&["link", "set", name, "up"]);
        Tap(name.to_owned())
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// The guest's address on the TAP network of the first two tests.
const GUEST_IP: &str = "ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off";

/// `husk boot` on a scratch root image with one NIC (`net`, a --net spec)
/// and the kernel's `ip=` configuration `ip`, running `sh -c script`.
fn boot_with_nic(net: &str, ip: &str, script: &str, timeout: Duration) -> Finished {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let args = [
        "boot",
        "--memory",
        "256",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--net",
        net,
        "--cmdline",
        ip,
        "--",
        "sh",
        "-c",
        script,
    ];
    husk_tests::husk::run(&args, timeout)
}

#[test]
fn guest_pings_and_talks_tcp_to_the_host() {
    require_linux_kvm();
    let tap = Tap::up("husk-e2e0");
    let listener = TcpListener::bind("10.0.2.1:7777").unwrap();
    let server = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        got
    });
    let net = format!("tap={},mac=02:00:0a:00:02:0f", tap.0);
    let out = boot_with_nic(
        &net,
        GUEST_IP,
        "cat /sys/class/net/eth0/address; ping -c 2 -W 5 10.0.2.1 >/dev/null && echo ping-ok; \
         echo hello-over-tcp | nc 10.0.2.1 7777 && echo tcp-ok",
        Duration::from_secs(120),
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    for want in ["02:00:0a:00:02:0f", "ping-ok", "tcp-ok"] {
        assert!(
            out.stdout.contains(want),
            "missing {want}: {}",
            out.describe()
        );
    }
    assert_eq!(server.join().unwrap(), "hello-over-tcp\n");
}

/// The text `seq 1 n` prints (the guest's busybox makes the same bytes).
fn seq_text(n: u32) -> Vec<u8> {
    let mut v = Vec::new();
    for i in 1..=n {
        v.extend_from_slice(format!("{i}\n").as_bytes());
    }
    v
}

fn sha256_hex(b: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(b)
        .iter()
        .map(|x| format!("{x:02x}"))
        .collect()
}

#[test]
#[ignore = "too slow for CI in the nested testbed (2026-11-22): 187 s when it passed, \
            ~0.7 MB/s guest->host, so the 90 s listen deadline below can expire; \
            one run also crashed L1; run with --ignored"]
fn bulk_tcp_both_ways_and_ping_from_the_host() {
    require_linux_kvm();
    let tap = Tap::up("husk-e2e1");
    // ~64 MiB of text each way: `seq 1 7900000` is 63.1 MB.
    const N: u32 = 7_900_000;
    let text = seq_text(N);
    let want = sha256_hex(&text);
    // guest -> host: the guest streams `seq` to us.
    let listener = TcpListener::bind("10.0.2.1:7778").unwrap();
    let receiver = std::thread::spawn(move || {
        let (mut s, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).unwrap();
        got
    });
    // host -> guest: once the guest listens on 8000, send the same text.
    let sender_text = text.clone();
    let sender = std::thread::spawn(move || {
        use std::io::Write;
        let deadline = std::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect("10.0.2.15:8000") {
                s.write_all(&sender_text).unwrap();
                return;
            }
            assert!(std::time::Instant::now() < deadline, "guest never listened");
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    let net = format!("tap={}", tap.0);
    let script = format!(
        "seq 1 {N} | nc 10.0.2.1 7778 && echo sent; \
         nc -l -p 8000 | sha256sum; \
         ping -c 1 -W 5 10.0.2.1 >/dev/null && echo ping-ok"
    );
    let start = std::time::Instant::now();
    let out = boot_with_nic(&net, GUEST_IP, &script, Duration::from_secs(300));
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let got = receiver.join().unwrap();
    assert_eq!(got.len(), text.len(), "guest -> host length");
    assert_eq!(sha256_hex(&got), want, "guest -> host bytes differ");
    sender.join().unwrap();
    assert!(
        out.stdout.contains(&want),
        "host -> guest checksum: {}",
        out.describe()
    );
    assert!(out.stdout.contains("ping-ok"), "{}", out.describe());
    eprintln!(
        "2 x {} MB over virtio-net in {secs:.1} s",
        text.len() / 1_000_000
    );
}

/// Two TAPs enslaved to one bridge with no address of its own.
struct Bridge {
    name: String,
    taps: Vec<Tap>,
}

impl Bridge {
    fn up(name: &str, taps: &[&str]) -> Bridge {
        let ip = |args: &[&str]| {
            let st = Command::new("ip").args(args).status().expect("run ip");
            assert!(st.success(), "ip {args:?} failed");
        };
        let _ = Command::new("ip")
            .args(["link", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        ip(&["link", "add", name, "type", "bridge"]);
        ip(&["link", "set", name, "up"]);
        let taps = taps
            .iter()
            .map(|t| {
                let _ = Command::new("ip")
                    .args(["link", "del", t])
                    .stderr(std::process::Stdio::null())
                    .status();
                ip(&["tuntap", "add", "dev", t, "mode", "tap"]);
                ip(&["link", "set", t, "master", name]);
                ip(&["link", "set", t, "up"]);
                Tap((*t).to_owned())
            })
            .collect();
        Bridge {
            name: name.to_owned(),
            taps,
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.taps.clear();
        let _ = Command::new("ip")
            .args(["link", "del", &self.name])
            .status();
    }
}

#[test]
fn two_vms_on_one_bridge_reach_each_other() {
    require_linux_kvm();
    let bridge = Bridge::up("husk-br0", &["husk-e2e2", "husk-e2e3"]);
    let boot = |n: usize, addr: &str, script: &str| {
        let net = format!("tap={}", bridge.taps[n].0);
        let ip = format!("ip={addr}:::255.255.255.0::eth0:off");
        let script = script.to_owned();
        std::thread::spawn(move || boot_with_nic(&net, &ip, &script, Duration::from_secs(120)))
    };
    let server = boot(0, "10.0.3.2", "nc -l -p 9000 > /tmp/got; cat /tmp/got");
    let client = boot(
        1,
        "10.0.3.3",
        "sleep 2; ping -c 2 -W 5 10.0.3.2 >/dev/null && echo ping-ok; \
         echo over-the-bridge | nc 10.0.3.2 9000; sleep 2",
    );
    let (s, c) = (server.join().unwrap(), client.join().unwrap());
    assert_eq!(c.code, Some(0), "client: {}", c.describe());
    assert!(c.stdout.contains("ping-ok"), "client: {}", c.describe());
    assert_eq!(s.code, Some(0), "server: {}", s.describe());
    assert!(
        s.stdout.contains("over-the-bridge"),
        "server: {}",
        s.describe()
    );
}
