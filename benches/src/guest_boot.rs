//! Linux boot to the guest's first command, husk vs QEMU `-M microvm`,
//! interleaved in one run (inside the testbed where /dev/kvm cannot boot
//! Linux: `benches/run guest-boot`). Both boot the project's vmlinux and a
//! copy of rootfs.ext4 on virtio-blk, 1 vCPU, 256 MiB, `quiet`; the guest
//! runs `echo <marker>`.
//! - launch → marker on stdout: VMM start + kernel boot + init + exec;
//! - launch → exit: plus the init's shutdown (sync, remount, status).
//!
//! Usage: guest-boot [--runs N] [--husk PATH]

use husk_benches::median;
use husk_tests::guest_artifacts;
use husk_tests::qemu::MicroVm;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const MARKER: &str = "husk-boot-marker";

fn time_to_marker(mut cmd: Command) -> (f64, f64) {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the VMM");
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut marker_at = None;
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if marker_at.is_none() && String::from_utf8_lossy(&seen).contains(MARKER) {
            marker_at = Some(start.elapsed());
        }
    }
    child.wait().unwrap();
    let exit = start.elapsed();
    let marker =
        marker_at.unwrap_or_else(|| panic!("no marker in: {}", String::from_utf8_lossy(&seen)));
    (marker.as_secs_f64() * 1e3, exit.as_secs_f64() * 1e3)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 5;
    let mut husk = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = Some(it.next().expect("--husk PATH").clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    let husk = husk.unwrap_or_else(|| husk_tests::husk::binary().display().to_string());
    husk_tests::require_linux_kvm();
    let a = guest_artifacts();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs.ext4");
    let (mut hm, mut he, mut qm, mut qe) = (vec![], vec![], vec![], vec![]);
    for i in 0..=runs {
        std::fs::copy(&a.rootfs_ext4, &root).unwrap();
        let mut h = Command::new(&husk);
        h.args(["boot", "--memory", "256", "--kernel"])
            .arg(&a.vmlinux);
        h.arg("--rootfs").arg(&root).args(["--", "echo", MARKER]);
        let (m, e) = time_to_marker(h);
        std::fs::copy(&a.rootfs_ext4, &root).unwrap();
        let mut vm = MicroVm::new(a.vmlinux.clone(), root.clone()).command(&["echo", MARKER]);
        vm.timeout = Duration::from_secs(120);
        let mut q = Command::new(husk_tests::qemu::QEMU);
        q.args(vm.qemu_args());
        let (qm1, qe1) = time_to_marker(q);
        if i == 0 {
            continue; // warm-up: page cache, first-run costs
        }
        hm.push(m);
        he.push(e);
        qm.push(qm1);
        qe.push(qe1);
        eprintln!("run {i}: husk {m:.0}/{e:.0} ms, qemu {qm1:.0}/{qe1:.0} ms");
    }
    println!("Linux guest (vmlinux + ext4 root on virtio-blk), 1 vCPU, 256 MiB, quiet; {runs} runs each, medians");
    println!("| VMM | launch → first command output (ms) | launch → exit (ms) |");
    println!("|---|---|---|");
    println!(
        "| husk | {:.0} | {:.0} |",
        median(hm.clone()),
        median(he.clone())
    );
    println!(
        "| qemu -M microvm | {:.0} | {:.0} |",
        median(qm.clone()),
        median(qe.clone())
    );
    println!(
        "husk / qemu: {:.2}x to output, {:.2}x to exit",
        median(hm) / median(qm),
        median(he) / median(qe)
    );
}
