//! virtio-net over a TAP: the guest gets its address from `ip=` on the
//! kernel command line and talks to the host end of the TAP.

use husk_tests::{guest_artifacts, require_linux_kvm};
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
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("rootfs.ext4");
    std::fs::copy(guest_artifacts().rootfs_ext4, &rootfs).unwrap();
    let net = format!("tap={},mac=02:00:0a:00:02:0f", tap.0);
    let args = [
        "boot",
        "--rootfs",
        rootfs.to_str().unwrap(),
        "--net",
        &net,
        "--cmdline",
        "ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off",
        "--",
        "sh",
        "-c",
        "cat /sys/class/net/eth0/address; ping -c 2 -W 5 10.0.2.1 >/dev/null && echo ping-ok; \
         echo hello-over-tcp | nc 10.0.2.1 7777 && echo tcp-ok",
    ];
    let out = husk_tests::husk::run(&args, Duration::from_secs(120));
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
