//! The real TAP backend. Tests that need to create interfaces run only as
//! root with /dev/net/tun (they print why they skip otherwise); each uses
//! its own interface names and deletes what it creates.

use std::path::Path;
use std::process::Command;

use super::super::device::{Net, NetConfig, NetError, NetHost};
use super::super::tap::{Tap, TapError};
use super::*;

/// A TAP (or TUN) created for one test, deleted on drop.
struct TestInterface {
    name: String,
}

impl TestInterface {
    /// `ip tuntap add dev NAME mode MODE [extra]`, or `None` (with a note)
    /// when the host does not let us.
    fn create(tag: &str, mode: &'static str, extra: &[&str]) -> Option<Self> {
        if !Path::new("/dev/net/tun").exists() {
            husk_skip::skip("no /dev/net/tun");
            return None;
        }
        let name = interface_name(tag);
        let status = Command::new("ip")
            .args(["tuntap", "add", "dev", &name, "mode", mode])
            .args(extra)
            .status();
        match status {
            Ok(s) if s.success() => Some(TestInterface { name }),
            other => {
                husk_skip::skip(&format!(
                    "cannot create {mode} {name} (not root?): {other:?}"
                ));
                None
            }
        }
    }

    fn set_up(&self) {
        let ok = Command::new("ip")
            .args(["link", "set", "dev", &self.name, "up"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set {} up", self.name);
    }

    fn sys_stat(&self, stat: &str) -> u64 {
        let path = format!("/sys/class/net/{}/statistics/{stat}", self.name);
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for TestInterface {
    fn drop(&mut self) {
        // `ip link del` removes any kind (`ip tuntap del` needs the
        // creation flags repeated, multi_queue included).
        let _ = Command::new("ip")
            .args(["link", "del", "dev", &self.name])
            .status();
    }
}

/// A name unique to this test process and tag, within IFNAMSIZ.
fn interface_name(tag: &str) -> String {
    let name = format!("hk{tag}{}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name}");
    name
}

fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

#[test]
fn a_missing_tap_is_a_clear_error_and_is_not_created() {
    let name = interface_name("nx");
    assert!(!exists(&name));

    let err = Tap::open(&name).unwrap_err();

    assert!(matches!(err, TapError::NotFound(ref n) if *n == name));
    assert_eq!(err.to_string(), format!("TAP device {name} does not exist"));
    assert!(!exists(&name), "husk must not create the TAP");

    // Through the device constructor, with the cause kept for the VMM.
    let config = NetConfig {
        host: NetHost::Tap(name.clone()),
        mac: None,
        id: "eth0".into(),
        limits: Default::default(),
    };
    let err = Net::new(&name, &config).unwrap_err();
    assert!(matches!(err, NetError::Tap(TapError::NotFound(_))));
    let cause = std::error::Error::source(&err).unwrap().to_string();
    assert_eq!(cause, format!("TAP device {name} does not exist"));
}

#[test]
fn an_interface_that_is_not_a_tap_is_refused() {
    // Loopback exists everywhere and is no tun/tap.
    assert!(matches!(Tap::open("lo"), Err(TapError::NotATap(_))));
    let Some(tun) = TestInterface::create("tn", "tun", &[]) else {
        return;
    };
    let err = Tap::open(&tun.name).unwrap_err();
    assert!(matches!(err, TapError::NotATap(_)), "{err}");
}

#[test]
fn a_multi_queue_tap_is_refused() {
    let Some(tap) = TestInterface::create("mq", "tap", &["multi_queue"]) else {
        return;
    };
    let err = Tap::open(&tap.name).unwrap_err();
    assert!(matches!(err, TapError::MultiQueue(_)), "{err}");
}

#[test]
fn a_tap_held_by_another_fd_is_in_use() {
    let Some(tap) = TestInterface::create("bz", "tap", &[]) else {
        return;
    };
    let first = Tap::open(&tap.name).unwrap();
    assert_eq!(first.name(), tap.name);

    let err = Tap::open(&tap.name).unwrap_err();
    assert!(matches!(err, TapError::Busy(_)), "{err}");
    assert_eq!(
        err.to_string(),
        format!("TAP device {} is in use", tap.name)
    );

    // Released with the fd.
    drop(first);
    Tap::open(&tap.name).unwrap();
}

#[test]
fn an_opened_tap_takes_offloads_and_virtio_net_packets() {
    let Some(tap) = TestInterface::create("io", "tap", &[]) else {
        return;
    };
    let mut t = Tap::open(&tap.name).unwrap();
    // Every offload combination the device can ask for is accepted.
    for acked in [0, bit(VIRTIO_NET_F_GUEST_CSUM), u64::MAX] {
        t.set_offload(super::super::tap_offload_flags(acked))
            .unwrap();
    }
    let tun_flags =
        std::fs::read_to_string(format!("/sys/class/net/{}/tun_flags", tap.name)).unwrap();
    let tun_flags = i32::from_str_radix(tun_flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(
        tun_flags & (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR),
        libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR
    );

    tap.set_up();
    // Nothing to read yet is WouldBlock, never a hang (the fd is
    // non-blocking). The kernel may send its own packets (IPv6 neighbour
    // discovery) once the link is up; those are fine too.
    let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
    match t.read_packet(&mut buf) {
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::WouldBlock),
        Ok(n) => assert!(n >= VNET_HDR_LEN + 14, "{n}"),
    }

    // A broadcast frame with a 12-byte header: the TAP parses the header
    // (a wrong header size would make it reject or garble the packet) and
    // the host counts it as received on the interface.
    let mut eth = vec![0xffu8; 6];
    eth.extend_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    eth.extend_from_slice(&[0x88, 0xb5]); // local experimental ethertype
    eth.extend_from_slice(&frame(100, 60));
    let p = packet(&eth);
    let (packets, bytes) = (tap.sys_stat("rx_packets"), tap.sys_stat("rx_bytes"));
    assert_eq!(t.write_packet(&p).unwrap(), p.len());
    assert_eq!(tap.sys_stat("rx_packets"), packets + 1);
    // Exactly the frame: the TAP took 12 header bytes (TUNSETVNETHDRSZ),
    // not its default 10.
    assert_eq!(tap.sys_stat("rx_bytes"), bytes + eth.len() as u64);

    // A header announcing more header than the packet holds is refused.
    let mut bad = p.clone();
    bad[2..4].copy_from_slice(&10_000u16.to_le_bytes()); // hdr_len
    bad[0] = VIRTIO_NET_HDR_F_NEEDS_CSUM as u8;
    bad[4..6].copy_from_slice(&0u16.to_le_bytes());
    bad[6..8].copy_from_slice(&20_000u16.to_le_bytes()); // csum_start
    assert!(t.write_packet(&bad).is_err());
}

#[test]
fn net_new_attaches_to_an_existing_tap() {
    let Some(tap) = TestInterface::create("nw", "tap", &[]) else {
        return;
    };
    let net = Net::new(
        &tap.name,
        &NetConfig {
            host: NetHost::Tap(tap.name.clone()),
            mac: Some([0x06, 0, 0xac, 0x10, 0, 2]),
            id: "eth0".into(),
            limits: Default::default(),
        },
    )
    .unwrap();
    assert_eq!(net.mac(), [0x06, 0, 0xac, 0x10, 0, 2]);
    assert_eq!(net.backend().name(), tap.name);
    // The fd holds the TAP: a second device on it is refused.
    let err = Net::new(
        &tap.name,
        &NetConfig {
            host: NetHost::Tap(tap.name.clone()),
            mac: None,
            id: "eth1".into(),
            limits: Default::default(),
        },
    )
    .unwrap_err();
    assert!(matches!(err, NetError::Tap(TapError::Busy(_))));
}

#[test]
fn host_traffic_reaches_guest_buffers_through_a_real_tap() {
    let Some(tap) = TestInterface::create("rx", "tap", &[]) else {
        return;
    };
    let net = Net::new(
        &tap.name,
        &NetConfig {
            host: NetHost::Tap(tap.name.clone()),
            mac: None,
            id: "eth0".into(),
            limits: Default::default(),
        },
    )
    .unwrap();
    let mut h = loop_harness(net);
    h.activate(BASE_FEATURES | bit(VIRTIO_NET_F_MRG_RXBUF));
    let bufs = h.driver.post_rx_buffers(8, 2048);
    h.run(100);
    assert_eq!(h.state(), (RxState::Receiving, true));

    // An address on the TAP's own little subnet, and a datagram to a
    // neighbour there: the host broadcasts an ARP request out of the TAP.
    let third = std::process::id() % 250;
    let ok = Command::new("ip")
        .args([
            "addr",
            "add",
            &format!("198.19.{third}.1/30"),
            "dev",
            &tap.name,
        ])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    tap.set_up();
    let sock = std::net::UdpSocket::bind(format!("198.19.{third}.1:0")).unwrap();
    sock.send_to(b"hello", format!("198.19.{third}.2:9"))
        .unwrap();

    // Whatever else the host sends (IPv6 neighbour discovery once the link
    // is up), the ARP request must land in a guest buffer, whole.
    let mut found = false;
    for _ in 0..20 {
        h.run(100);
        while let Some((id, len)) = h.driver.rxq.pop_used() {
            let addr = bufs
                .iter()
                .find(|(head, _)| u32::from(*head) == id)
                .unwrap()
                .1;
            let got = h.driver.rxq.read(addr, len as usize);
            assert_eq!(&got[NUM_BUFFERS_OFFSET..VNET_HDR_LEN], &1u16.to_le_bytes());
            let eth = &got[VNET_HDR_LEN..];
            if eth[12..14] == [0x08, 0x06] {
                assert_eq!(&eth[..6], &[0xff; 6], "broadcast");
                // ARP: request (1) for the neighbour's address.
                assert_eq!(&eth[20..22], &[0, 1]);
                assert_eq!(&eth[38..42], &[198, 19, third as u8, 2]);
                found = true;
            }
        }
        if found {
            break;
        }
    }
    assert!(found, "no ARP request reached the guest");
    assert!(h.metric(|m| &m.rx_packets) >= 1);
}
