//! The API path's start-up cost with the null guest (native): launch of
//! `husk vmm --api-sock` → the socket accepts a connection, and launch →
//! first guest byte on stdout for a full API boot by an in-process client
//! (PUT boot-source, drives/rootfs, machine-config, InstanceStart).
//! Firecracker's figures on this machine kind (shared/notes/testbed.md):
//! 1.7 ms and 11.7 ms.
//!
//! Usage: api-startup [--runs N] [--husk PATH]

use husk_benches::median;
use husk_tests::http::Client;
use husk_tests::null_guest;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn one(husk: &str, dir: &std::path::Path, boot: bool) -> (f64, f64) {
    let sock = dir.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let start = Instant::now();
    let mut child = Command::new(husk)
        .args(["vmm", "--allow-kvm-pvm", "--api-sock"])
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start husk");
    let stream = loop {
        if let Ok(s) = UnixStream::connect(&sock) {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no socket");
        std::thread::sleep(Duration::from_micros(50));
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
            r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true}}"#,
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
    let mut husk = String::from("target/release/husk");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = it.next().expect("--husk PATH").clone(),
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    null_guest::write(&dir.path().join("null.elf"), true, Some(0)).unwrap();
    std::fs::write(dir.path().join("root.img"), [0u8; 512]).unwrap();
    one(&husk, dir.path(), true); // warm-up
    let (mut ready, mut boot) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        ready.push(one(&husk, dir.path(), false).0);
        boot.push(one(&husk, dir.path(), true).1);
    }
    println!("husk vmm, null guest, 1 vCPU, 128 MiB, {runs} runs (medians)");
    println!("| measure | husk (ms) | Firecracker, recorded (ms) | husk / Firecracker |");
    println!("|---|---|---|---|");
    let (r, b) = (median(ready), median(boot));
    println!(
        "| launch → API socket ready | {r:.2} | 1.7 | {:.2}x |",
        r / 1.7
    );
    println!(
        "| launch → first guest output (API boot) | {b:.2} | 11.7 | {:.2}x |",
        b / 11.7
    );
}
