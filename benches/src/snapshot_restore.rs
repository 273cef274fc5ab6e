//! Snapshot restore, natively, husk against Firecracker in the same run.
//!
//! Each VMM snapshots its own run of the counter guest (1 vCPU, 128 MiB,
//! counting in memory and printing each count on COM1), paused a few
//! counts in. Then, interleaved, each is launched with an API socket and
//! asked to `PUT /snapshot/load` the memory file (`File` backend, mapped
//! private) with `resume_vm`; measured: the load request's round trip
//! (what Firecracker's "restore time" is) and launch → the guest's next
//! byte on stdout (what a user waits for).
//!
//! Usage: snapshot-restore [--runs N] [--husk PATH] [--firecracker PATH]
//! (Firecracker's default: ../shared/bin/firecracker-v1.16.1/firecracker;
//! "not installed" when it is absent).

use husk_benches::{median, spread};
use husk_tests::http::{wait_for_socket, Client};
use husk_tests::null_guest;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The counter's limit: far enough that no run reaches it.
const LIMIT: u32 = 250;

#[derive(Clone, Copy, PartialEq)]
enum Vmm {
    Husk,
    Firecracker,
}

impl Vmm {
    fn name(self) -> &'static str {
        match self {
            Vmm::Husk => "husk",
            Vmm::Firecracker => "Firecracker",
        }
    }
}

/// A VMM process serving its API on `sock`, stdout piped.
fn launch(vmm: Vmm, bin: &Path, sock: &Path) -> Child {
    let _ = std::fs::remove_file(sock);
    let mut cmd = Command::new(bin);
    match vmm {
        Vmm::Husk => cmd.args(["vmm", "--allow-kvm-pvm", "--api-sock"]).arg(sock),
        Vmm::Firecracker => cmd.arg("--api-sock").arg(sock).args(["--level", "Error"]),
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
}

fn put(c: &mut Client, method: &str, path: &str, body: &str) {
    let r = c.request(method, path, body).unwrap();
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        r.body
    );
}

/// Boots the counter guest in `vmm`, pauses it once it printed a few
/// counts and writes its snapshot into `dir`; (state, memory) files.
fn make_snapshot(vmm: Vmm, bin: &Path, dir: &Path) -> (PathBuf, PathBuf) {
    let sock = dir.join(format!("{}-make.sock", vmm.name()));
    let mut child = launch(vmm, bin, &sock);
    assert!(
        wait_for_socket(&sock, Duration::from_secs(5)),
        "no API socket"
    );
    let mut c = Client::connect(&sock).unwrap();
    let kernel = dir.join("counter.elf");
    let boot = serde_json::json!({"kernel_image_path": kernel, "boot_args": "console=ttyS0"});
    put(&mut c, "PUT", "/boot-source", &boot.to_string());
    put(
        &mut c,
        "PUT",
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#,
    );
    put(
        &mut c,
        "PUT",
        "/actions",
        r#"{"action_type":"InstanceStart"}"#,
    );
    let mut out = child.stdout.take().unwrap();
    let mut counts = [0u8; 5];
    out.read_exact(&mut counts).expect("the guest counts");
    put(&mut c, "PATCH", "/vm", r#"{"state":"Paused"}"#);
    let (state, mem) = (
        dir.join(format!("{}.snap", vmm.name())),
        dir.join(format!("{}.mem", vmm.name())),
    );
    let create =
        serde_json::json!({"snapshot_type": "Full", "snapshot_path": state, "mem_file_path": mem});
    put(&mut c, "PUT", "/snapshot/create", &create.to_string());
    let _ = child.kill();
    let _ = child.wait();
    (state, mem)
}

/// One restore: (load request round trip, launch → next guest byte), ms.
fn restore(vmm: Vmm, bin: &Path, dir: &Path, files: &(PathBuf, PathBuf)) -> (f64, f64) {
    let sock = dir.join(format!("{}.sock", vmm.name()));
    let start = Instant::now();
    let mut child = launch(vmm, bin, &sock);
    let mut c = loop {
        if let Ok(c) = Client::connect(&sock) {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(5), "no API socket");
        std::thread::sleep(Duration::from_micros(50));
    };
    let load = serde_json::json!({"snapshot_path": files.0,
        "mem_backend": {"backend_type": "File", "backend_path": files.1}, "resume_vm": true});
    let asked = Instant::now();
    put(&mut c, "PUT", "/snapshot/load", &load.to_string());
    let loaded = asked.elapsed().as_secs_f64() * 1e3;
    let mut out = child.stdout.take().unwrap();
    let mut b = [0u8; 1];
    assert_eq!(
        out.read(&mut b).unwrap(),
        1,
        "no guest output after the restore"
    );
    let next = start.elapsed().as_secs_f64() * 1e3;
    let _ = child.kill();
    let _ = child.wait();
    (loaded, next)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 15;
    let mut husk = PathBuf::from("target/release/husk");
    let mut firecracker = PathBuf::from(husk_benches::FIRECRACKER);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = it.next().expect("--husk PATH").into(),
            "--firecracker" => firecracker = it.next().expect("--firecracker PATH").into(),
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("counter.elf"),
        null_guest::counter_elf(LIMIT),
    )
    .unwrap();
    let mut peers = vec![(Vmm::Husk, husk)];
    if firecracker.exists() {
        peers.push((Vmm::Firecracker, firecracker.clone()));
    }
    let files: Vec<_> = peers
        .iter()
        .map(|(vmm, bin)| make_snapshot(*vmm, bin, dir.path()))
        .collect();
    let mut results = vec![(Vec::new(), Vec::new()); peers.len()];
    for round in 0..=runs {
        for (i, (vmm, bin)) in peers.iter().enumerate() {
            let (loaded, next) = restore(*vmm, bin, dir.path(), &files[i]);
            // Round 0 warms the page cache of each memory file.
            if round > 0 {
                results[i].0.push(loaded);
                results[i].1.push(next);
            }
        }
    }
    println!("counter guest, 1 vCPU, 128 MiB, Full snapshot, File backend, {runs} interleaved runs (medians; min..max)");
    println!("| VMM | PUT /snapshot/load (ms) | launch → next guest byte (ms) |");
    println!("|---|---|---|");
    let mut meds = Vec::new();
    for ((vmm, _), (loaded, next)) in peers.iter().zip(results) {
        let (l, n) = (spread(&loaded), spread(&next));
        let (ml, mn) = (median(loaded), median(next));
        println!(
            "| {} | {ml:.2} ({:.2}..{:.2}) | {mn:.2} ({:.2}..{:.2}) |",
            vmm.name(),
            l.0,
            l.1,
            n.0,
            n.1
        );
        meds.push((ml, mn));
    }
    if meds.len() == 2 {
        println!(
            "| husk / Firecracker | {:.2}x | {:.2}x |",
            meds[0].0 / meds[1].0,
            meds[0].1 / meds[1].1
        );
    } else {
        println!(
            "| Firecracker | not installed ({}) | |",
            firecracker.display()
        );
    }
}
