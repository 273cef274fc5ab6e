//! TCP throughput host → guest over virtio-net on a TAP, husk vs QEMU
//! `-M microvm` (virtio-net-device, vhost off), interleaved in one run
//! (inside the testbed here: `benches/run net-throughput`). The guest runs
//! `nc -l -p 8000 | wc -c`; the host sends N MiB and half-closes; the time
//! runs from the connection to the VMM's exit.
//!
//! Usage: net-throughput [--runs N] [--mib M] [--husk PATH]

use husk_benches::median;
use husk_tests::qemu::MicroVm;
use husk_tests::{guest_artifacts, require_linux_kvm};
use std::io::Write;
use std::net::TcpStream;
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

/// Sends `mib` MiB to the guest once it listens; returns MB/s. `ok` is the
/// VMM's exit code for a guest status of 0 (QEMU's isa-debug-exit gives 1).
fn send(mut vmm: std::process::Child, mib: usize, ok: i32) -> f64 {
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
    let status = vmm.wait().unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(status.code(), Some(ok), "VMM exit {status}");
    (mib as f64 * 1.048_576) / secs
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
    let script = ["sh", "-c", "nc -l -p 8000 | wc -c"];
    let (mut h, mut q) = (Vec::new(), Vec::new());
    for i in 0..runs {
        std::fs::copy(&a.rootfs_ext4, &root).unwrap();
        tap("bh0");
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
        h.push(send(vmm, mib, 0));
        ip(&["link", "del", "bh0"]);

        std::fs::copy(&a.rootfs_ext4, &root).unwrap();
        tap("qt0");
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
        q.push(send(vmm, mib, 1));
        ip(&["link", "del", "qt0"]);
        eprintln!(
            "run {}: husk {:.1} MB/s, qemu {:.1} MB/s",
            i + 1,
            h[i],
            q[i]
        );
    }
    println!("TCP host -> guest over virtio-net/TAP, {mib} MiB, {runs} runs each (medians)");
    println!("| VMM | MB/s |");
    println!("|---|---|");
    println!("| husk | {:.1} |", median(h.clone()));
    println!("| qemu -M microvm (vhost off) | {:.1} |", median(q.clone()));
    println!("husk / qemu: {:.2}x", median(h) / median(q));
}
