//! virtio-net over a TAP: the guest gets its address from `ip=` on the
//! kernel command line and talks to the host end of the TAP.

use husk_tests::process::Finished;
use husk_tests::require_linux_kvm;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let st = Command::new("ip").args(args).status().expect("run ip");
    assert!(st.success(), "ip {args:?} failed");
}

/// Deletes the link `name` if it exists (a previous run's leftover).
fn ip_link_del(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(std::process::Stdio::null())
        .status();
}

pub(crate) struct Tap(String);

impl Tap {
    /// A TAP with the host address 10.0.2.1/24 on `name`.
    fn up(name: &str) -> Tap {
        Tap::with_address(name, "10.0.2.1/24")
    }

    /// A TAP with the host address `cidr` on `name`.
    pub(crate) fn with_address(name: &str, cidr: &str) -> Tap {
        ip_link_del(name);
        ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
        ip(&["addr", "add", cidr, "dev", name]);
        ip(&["link", "set", name, "up"]);
        Tap(name.to_owned())
    }
}

impl Tap {
    pub(crate) fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        ip_link_del(&self.0);
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

/// xorshift noise, made a chunk at a time: content the network cannot
/// compress or mistake for a repeated pattern, in any amount without
/// holding it.
struct Noise(u64);

impl Noise {
    fn new() -> Noise {
        Noise(0x9e37_79b9_7f4a_7c15)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            *b = (self.0 >> 24) as u8;
        }
    }
}

/// MiB moved each way by the bulk test: `HUSK_E2E_BULK_MIB` (the issue's
/// full size is 1024), else 64, or 4 when this machine is itself a guest
/// (the nested testbed moves a few MB/s).
fn bulk_mib() -> usize {
    if let Some(v) = std::env::var("HUSK_E2E_BULK_MIB")
        .ok()
        .filter(|v| !v.is_empty())
    {
        return v.parse().expect("HUSK_E2E_BULK_MIB: a number of MiB");
    }
    if husk_tests::host_is_a_guest() {
        4
    } else {
        64
    }
}

/// Connects to the guest's `port`, retrying while its listener comes up.
fn connect_to_guest(port: u16) -> TcpStream {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(s) = TcpStream::connect(("10.0.2.15", port)) {
            return s;
        }
        assert!(Instant::now() < deadline, "guest never listened on {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends `bytes` of noise to the guest's port 8000; its checksum.
fn send_noise(bytes: usize) -> String {
    let mut s = connect_to_guest(8000);
    let (mut noise, mut sum) = (Noise::new(), Sha256::new());
    let mut buf = vec![0u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(buf.len());
        noise.fill(&mut buf[..n]);
        sum.update(&buf[..n]);
        s.write_all(&buf[..n]).expect("send to the guest");
        left -= n;
    }
    husk_tests::hex(&sum.finalize())
}

/// Reads `from` to its end: the byte count and checksum.
fn drain(mut from: TcpStream) -> (usize, String) {
    let (mut sum, mut len) = (Sha256::new(), 0);
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match from.read(&mut buf).expect("read from the guest") {
            0 => return (len, husk_tests::hex(&sum.finalize())),
            n => {
                sum.update(&buf[..n]);
                len += n;
            }
        }
    }
}

#[test]
fn bulk_tcp_both_ways_and_ping_from_the_host() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    let tap = Tap::up("husk-e2e1");
    let mib = bulk_mib();
    // The guest checksums what we send on 8000 while it sends it straight
    // back to our 7778 (a stream: nothing is kept, so any size fits), then
    // waits for our all-clear on 8001 so it does not reset with the tail
    // of the stream still in flight.
    let listener = TcpListener::bind("10.0.2.1:7778").unwrap();
    let host = std::thread::spawn(move || {
        let started = Instant::now();
        let sender = std::thread::spawn(move || send_noise(mib << 20));
        let (back, _) = listener.accept().unwrap();
        let (len, got) = drain(back);
        let sent = sender.join().unwrap();
        let took = started.elapsed();
        // busybox is there on the host (the rootfs is built from it) and in L1.
        let ping = Command::new("busybox")
            .args(["ping", "-c", "1", "-W", "5", "10.0.2.15"])
            .output()
            .expect("run busybox ping");
        drop(connect_to_guest(8001));
        (sent, len, got, took, ping)
    });
    let net = format!("tap={}", tap.0);
    let script = "mkfifo /tmp/f && { sha256sum < /tmp/f > /tmp/sum & } && \
                  nc -l -p 8000 | tee /tmp/f | nc 10.0.2.1 7778 && wait && \
                  cat /tmp/sum && nc -l -p 8001 && \
                  ping -c 1 -W 5 10.0.2.1 >/dev/null && echo ping-ok";
    // A few MB/s each way in the testbed: time in proportion.
    let timeout = Duration::from_secs(300 + 2 * mib as u64);
    let out = boot_with_nic(&net, GUEST_IP, script, timeout);
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let (want, len, got, took, ping) = host.join().unwrap();
    assert!(
        ping.status.success(),
        "host -> guest ping: {}",
        String::from_utf8_lossy(&ping.stdout)
    );
    assert!(
        out.stdout.contains(&want),
        "host -> guest: checksum {want} not in the guest's output: {}",
        out.describe()
    );
    assert_eq!(len, mib << 20, "guest -> host length");
    assert!(got == want, "guest -> host bytes differ");
    assert!(out.stdout.contains("ping-ok"), "{}", out.describe());
    eprintln!(
        "{mib} MiB each way over virtio-net at once: {:.1} s",
        took.as_secs_f64()
    );
}

/// Two TAPs enslaved to one bridge with no address of its own.
struct Bridge {
    name: String,
    taps: Vec<Tap>,
}

impl Bridge {
    fn up(name: &str, taps: &[&str]) -> Bridge {
        ip_link_del(name);
        ip(&["link", "add", name, "type", "bridge"]);
        ip(&["link", "set", name, "up"]);
        let taps = taps
            .iter()
            .map(|t| {
                ip_link_del(t);
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
        ip_link_del(&self.name);
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
    // The two boot at once, and under load the server's kernel (its
    // address) and then its `nc` (the port) can come seconds after the
    // client's: CI once saw "No route to host" from a client that gave it
    // two. The client waits for each, bounded, then checks.
    let client = boot(
        1,
        "10.0.3.3",
        "for i in $(seq 60); do ping -c 1 -W 1 10.0.3.2 >/dev/null && break; done; \
         ping -c 2 -W 5 10.0.3.2 >/dev/null && echo ping-ok; \
         for i in $(seq 30); do echo over-the-bridge | nc 10.0.3.2 9000 && break; sleep 1; done; \
         sleep 2",
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
