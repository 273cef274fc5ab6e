//! TCP throughput between host and guest over virtio-net on a TAP, both
//! directions, husk vs QEMU `-M microvm` (virtio-net-device, vhost off),
//! interleaved in one run (inside the testbed here: `benches/run
//! net-throughput`). In one boot the guest
//! 1. receives: `nc -l -p 8000 | wc -c` while the host sends N MiB and
//!    half-closes; timed from the connection to the guest's connection back
//!    (step 2), which it only makes once `wc` has counted everything;
//! 2. sends: `dd if=/dev/zero bs=1M count=N | nc HOST 7000`, timed from the
//!    host's accept to end of stream;
//! 3. waits on `nc -l -p 8001` until the host says it has everything, so the
//!    VM does not reset with data still in flight.
//!
//! Usage: net-throughput [--runs N] [--mib M] [--husk PATH]

use husk_benches::median;
use husk_tests::qemu::MicroVm;
use husk_tests::{guest_artifacts, require_linux_kvm};
use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const GUEST: &str = "10.0.2.15";
const IP_ARG: &str = "ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off";

fn ip(args: &[&str]) {
    let st = Command::new("ip")
        .args(args)
        .stderr(Stdio::null())
        .status()
        .expect("run ip");
    assert!(st.success(), "ip {args:?}");
}

fn tap(name: &str) {
    let _ = Command::new("ip")
        .args(["link", "del", name])
        .stderr(Stdio::null())
        .status();
    ip(&["tuntap", "add", "dev", name, "mode", "tap"]);
    ip(&["addr", "add", "10.0.2.1/24", "dev", name]);
    ip(&["link", "set", name, "up"]);
}

/// Runs the exchange with the guest; returns (host->guest, guest->host)
/// in MB/s. `ok` is the VMM's exit code for a guest status of 0 (QEMU's
/// isa-debug-exit gives 1).
fn exchange(mut vmm: std::process::Child, back: &TcpListener, mib: usize, ok: i32) -> (f64, f64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut s = loop {
        if let Ok(s) = TcpStream::connect((GUEST, 8000)) {
            break s;
        }
        assert!(Instant::now() < deadline, "the guest never listened");
        std::thread::sleep(Duration::from_millis(100));
    };
    let start = Instant::now();
    let chunk = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        s.write_all(&chunk).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut r, _) = back.accept().unwrap();
    let to_guest = start.elapsed().as_secs_f64();
    let start = Instant::now();
    let got = std::io::copy(&mut r, &mut std::io::sink()).unwrap();
    let from_guest = start.elapsed().as_secs_f64();
    assert_eq!(got, (mib as u64) << 20, "bytes from the guest");
    // The guest's nc exits when we close too.
    drop(r);
    // The barrier: the guest may stop now.
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect((GUEST, 8001)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the guest never listened on 8001"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let status = vmm.wait().unwrap();
    assert_eq!(status.code(), Some(ok), "VMM exit {status}");
    let mb = mib as f64 * 1.048_576;
    (mb / to_guest, mb / from_guest)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut runs, mut mib, mut husk) = (3usize, 16usize, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--mib" => mib = it.next().and_then(|v| v.parse().ok()).expect("--mib M"),
            "--husk" => husk = Some(it.next().expect("--husk PATH").clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    let husk = husk.unwrap_or_else(|| husk_tests::husk::binary().display().to_string());
    require_linux_kvm();
    let a = guest_artifacts();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs.ext4");
    let script = format!(
        "nc -l -p 8000 | wc -c; dd if=/dev/zero bs=1M count={mib} 2>/dev/null | nc 10.0.2.1 7000; \\
         nc -l -p 8001"
    );
    let script = ["sh", "-c", &script];
    let (mut h, mut q) = (Vec::new(), Vec::new());
    for i in 0..runs {
        std::fs::copy(&a.rootfs_ext4, &root).unwrap();
        tap("bh0");
        let back = TcpListener::bind("10.0.2.1:7000").unwrap();
        let vmm = Command::new(&husk)
            .args([
                "boot",
                "--memory",
                "256",
                "--net",
                "tap=bh0",
                "--cmdline",
                IP_ARG,
                "--kernel",
            ])
            .arg(&a.vmlinux)
            .arg("--rootfs")
            .arg(&root)
            .arg("--")
            .args(script)
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        h.push(exchange(vmm, &back, mib, 0));
        drop(back);
        ip(&["link", "del", "bh0"]);

        std::fs::copy(&a.rootfs_ext4, &root).unwrap();
        tap("qt0");
        let back = TcpListener::bind("10.0.2.1:7000").unwrap();
        let mut vm = MicroVm::new(a.vmlinux.clone(), root.clone()).command(&script);
        vm.extra_cmdline = IP_ARG.into();
        let mut qargs = vm.qemu_args();
        qargs.extend(
            [
                "-netdev",
                "tap,id=n0,ifname=qt0,script=no,downscript=no,vhost=off",
                "-device",
                "virtio-net-device,netdev=n0",
            ]
            .map(String::from),
        );
        let vmm = Command::new(husk_tests::qemu::QEMU)
            .args(qargs)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        q.push(exchange(vmm, &back, mib, 1));
        drop(back);
        ip(&["link", "del", "qt0"]);
        eprintln!(
            "run {}: husk {:.1} / {:.1} MB/s, qemu {:.1} / {:.1} MB/s (to / from the guest)",
            i + 1,
            h[i].0,
            h[i].1,
            q[i].0,
            q[i].1
        );
    }
    let col = |v: &[(f64, f64)], to: bool| -> Vec<f64> {
        v.iter().map(|p| if to { p.0 } else { p.1 }).collect()
    };
    println!("TCP over virtio-net/TAP, {mib} MiB each way, {runs} runs each (medians, MB/s)");
    println!("| VMM | host -> guest | guest -> host |");
    println!("|---|---|---|");
    for (name, v) in [("husk", &h), ("qemu -M microvm (vhost off)", &q)] {
        println!(
            "| {name} | {:.1} | {:.1} |",
            median(col(v, true)),
            median(col(v, false))
        );
    }
    println!(
        "husk / qemu: host -> guest {:.2}x, guest -> host {:.2}x",
        median(col(&h, true)) / median(col(&q, true)),
        median(col(&h, false)) / median(col(&q, false))
    );
}
