//! The API path's start-up cost with the null guest (native): launch of
//! `husk-vmm --api-sock` → the socket accepts a connection, and launch →
//! first guest byte on stdout for a full API boot by an in-process client
//! (PUT boot-source, drives/rootfs, machine-config, InstanceStart), husk
//! and Firecracker interleaved on the same guest (one that ends with a
//! plain reset).
//!
//! Usage: api-startup [--runs N] [--husk PATH] [--husk-cli PATH |
//! --no-husk-cli] [--firecracker PATH | --no-firecracker]. `--husk` is the
//! `husk-vmm` executable (default target/release/husk-vmm), `--husk-cli` the
//! whole `husk` (its `husk vmm`; default target/release/husk, left out
//! when missing); Firecracker's default is `husk_benches::FIRECRACKER`
//! ("not installed" without it).

use husk_benches::median;
use husk_tests::http::Client;
use husk_tests::null_guest;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A VMM with an API socket: husk's or Firecracker's.
struct Vmm {
    name: &'static str,
    bin: String,
    /// Arguments before the socket path.
    args: &'static [&'static str],
    /// Arguments after it.
    tail: &'static [&'static str],
}

fn one(vmm: &Vmm, dir: &std::path::Path, boot: bool) -> (f64, f64) {
    let sock = dir.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let start = Instant::now();
    let mut child = Command::new(&vmm.bin)
        .args(vmm.args)
        .arg(&sock)
        .args(vmm.tail)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", vmm.name));
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no socket");
        // No sleep between attempts: a sleep's timer slack (50 µs by
        // default, often more) would be most of what is measured.
        std::thread::yield_now();
    };
    let ready = start.elapsed().as_secs_f64() * 1e3;
    drop(stream);
    if !boot {
        let _ = child.kill();
        let _ = child.wait();
        return (ready, 0.0);
    }
    let mut c = Client::connect(&sock).unwrap();
    let k = dir.join("null.elf");
    let r = dir.join("root.img");
    let put = |c: &mut Client, path: &str, body: String| {
        let rep = c.request("PUT", path, &body).unwrap();
        assert_eq!(rep.status, 204, "{path}: {}", rep.body);
    };
    put(
        &mut c,
        "/boot-source",
        format!(
            r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#,
            k.display()
        ),
    );
    put(
        &mut c,
        "/drives/rootfs",
        format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,"is_read_only":false}}"#,
            r.display()
        ),
    );
    put(
        &mut c,
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#.into(),
    );
    put(
        &mut c,
        "/actions",
        r#"{"action_type":"InstanceStart"}"#.into(),
    );
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    assert_eq!(out.read(&mut b).unwrap(), 1, "no guest output");
    let output = start.elapsed().as_secs_f64() * 1e3;
    let _ = child.wait();
    (ready, output)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 20;
    let mut husk = String::from("target/release/husk-vmm");
    let mut husk_cli = Some(String::from("target/release/husk"));
    let mut firecracker = Some(String::from(husk_benches::FIRECRACKER));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = it.next().expect("--husk PATH").clone(),
            "--husk-cli" => husk_cli = Some(it.next().expect("--husk-cli PATH").clone()),
            "--no-husk-cli" => husk_cli = None,
            "--firecracker" => firecracker = Some(it.next().expect("--firecracker PATH").clone()),
            "--no-firecracker" => firecracker = None,
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    null_guest::write(&dir.path().join("null.elf"), true, None).unwrap();
    std::fs::write(dir.path().join("root.img"), [0u8; 512]).unwrap();
    let mut vmms = vec![Vmm {
        name: "husk-vmm",
        bin: husk,
        args: &["--allow-kvm-pvm", "--api-sock"],
        tail: &[],
    }];
    if let Some(bin) = husk_cli.filter(|c| std::path::Path::new(c).is_file()) {
        vmms.push(Vmm {
            name: "husk vmm",
            bin,
            args: &["vmm", "--allow-kvm-pvm", "--api-sock"],
            tail: &[],
        });
    }
    match firecracker.filter(|f| std::path::Path::new(f).is_file()) {
        Some(bin) => vmms.push(Vmm {
            name: "Firecracker",
            bin,
            args: &["--api-sock"],
            tail: &["--level", "Error"],
        }),
        None => println!("Firecracker: not installed (--firecracker PATH)"),
    }
    for v in &vmms {
        one(v, dir.path(), true); // warm-up
    }
    let mut ready: Vec<Vec<f64>> = vmms.iter().map(|_| Vec::new()).collect();
    let mut boot = ready.clone();
    // The socket rounds first, then the boot rounds: a launch right after
    // a VM ended pays for what that exit left the kernel to do (measured:
    // husk's socket 0.60 ms after its own boots, 0.88 after Firecracker's;
    // Firecracker's 0.43 after socket-only launches, 0.60 after husk's
    // boots), so each socket figure follows launches that made no VM.
    for _ in 0..runs {
        for (i, v) in vmms.iter().enumerate() {
            ready[i].push(one(v, dir.path(), false).0);
        }
    }
    for _ in 0..runs {
        for (i, v) in vmms.iter().enumerate() {
            boot[i].push(one(v, dir.path(), true).1);
        }
    }
    println!("API start, null guest, 1 vCPU, 128 MiB, {runs} runs each, interleaved (medians, ms)");
    println!(
        "| measure | {} |",
        vmms.iter().map(|v| v.name).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(vmms.len()));
    let r: Vec<f64> = ready.into_iter().map(median).collect();
    let b: Vec<f64> = boot.into_iter().map(median).collect();
    let row = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("| launch → API socket accepts | {} |", row(&r));
    println!("| launch → first guest output (API boot) | {} |", row(&b));
    if let Some(fc) = vmms.iter().position(|v| v.name == "Firecracker") {
        for (i, v) in vmms.iter().enumerate().filter(|(i, _)| *i != fc) {
            println!(
                "{} / Firecracker: socket {:.2}x, API boot {:.2}x",
                v.name,
                r[i] / r[fc],
                b[i] / b[fc]
            );
        }
    }
}
