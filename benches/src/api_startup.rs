//! The API path's start-up cost with the null guest (native): launch of
//! `husk-vmm --api-sock` → the socket accepts a connection, and launch →
//! first guest byte on stdout for a full API boot by an in-process client
//! (PUT boot-source, drives/rootfs, machine-config, InstanceStart), husk
//! and Firecracker interleaved on the same guest (one that ends with a
//! plain reset), and SendCtrlAltDel → process exit for a guest that
//! resets on Ctrl-Alt-Del.
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

/// What one launch measures.
#[derive(Clone, Copy, PartialEq)]
enum Mode {
    /// Launch → the socket accepts; then the VMM is killed.
    Socket,
    /// Launch → the first guest byte of an API boot (the guest resets).
    Boot,
    /// An API boot of the guest that resets on Ctrl-Alt-Del; once it has
    /// printed, SendCtrlAltDel → the process is gone.
    CtrlAltDel,
}

/// One launch of `vmm`; the figure `mode` asks for, in ms.
fn one(vmm: &Vmm, dir: &std::path::Path, mode: Mode) -> f64 {
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
    if mode == Mode::Socket {
        let _ = child.kill();
        let _ = child.wait();
        return ready;
    }
    let mut c = Client::connect(&sock).unwrap();
    let kernel = match mode {
        Mode::CtrlAltDel => dir.join("cad.elf"),
        _ => dir.join("null.elf"),
    };
    api_boot(&mut c, &kernel, &dir.join("root.img"));
    let mut out = child.stdout.take().unwrap();
    if mode == Mode::Boot {
        let mut b = [0u8; 1];
        assert_eq!(out.read(&mut b).unwrap(), 1, "no guest output");
        let output = start.elapsed().as_secs_f64() * 1e3;
        let _ = child.wait();
        return output;
    }
    // The guest polls its keyboard controller once it has printed.
    let mut said = Vec::new();
    let mut b = [0u8; 256];
    while !said.ends_with(null_guest::LINE) {
        let n = out.read(&mut b).unwrap();
        assert!(n > 0, "{}: the guest ended before Ctrl-Alt-Del", vmm.name);
        said.extend_from_slice(&b[..n]);
    }
    let asked = Instant::now();
    let rep = c
        .request("PUT", "/actions", r#"{"action_type":"SendCtrlAltDel"}"#)
        .unwrap();
    assert_eq!(rep.status, 204, "SendCtrlAltDel: {}", rep.body);
    let _ = child.wait();
    asked.elapsed().as_secs_f64() * 1e3
}

/// Boots `kernel` through the API: boot source, root drive, machine
/// config, InstanceStart.
fn api_boot(c: &mut Client, kernel: &std::path::Path, root: &std::path::Path) {
    let mut put = |path: &str, body: String| {
        let rep = c.request("PUT", path, &body).unwrap();
        assert_eq!(rep.status, 204, "{path}: {}", rep.body);
    };
    put(
        "/boot-source",
        format!(
            r#"{{"kernel_image_path":"{}","boot_args":"console=ttyS0"}}"#,
            kernel.display()
        ),
    );
    put(
        "/drives/rootfs",
        format!(
            r#"{{"drive_id":"rootfs","path_on_host":"{}","is_root_device":true,"is_read_only":false}}"#,
            root.display()
        ),
    );
    put(
        "/machine-config",
        r#"{"vcpu_count":1,"mem_size_mib":128}"#.into(),
    );
    put("/actions", r#"{"action_type":"InstanceStart"}"#.into());
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
    std::fs::write(
        dir.path().join("cad.elf"),
        null_guest::ctrl_alt_del_elf(true),
    )
    .unwrap();
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
        one(v, dir.path(), Mode::Boot); // warm-up
    }
    // The socket rounds first, then the boot rounds: a launch right after
    // a VM ended pays for what that exit left the kernel to do (measured:
    // husk's socket 0.60 ms after its own boots, 0.88 after Firecracker's;
    // Firecracker's 0.43 after socket-only launches, 0.60 after husk's
    // boots), so each socket figure follows launches that made no VM.
    let rounds = |mode: Mode| -> Vec<f64> {
        let mut got: Vec<Vec<f64>> = vmms.iter().map(|_| Vec::new()).collect();
        for _ in 0..runs {
            for (i, v) in vmms.iter().enumerate() {
                got[i].push(one(v, dir.path(), mode));
            }
        }
        got.into_iter().map(median).collect()
    };
    let r = rounds(Mode::Socket);
    let b = rounds(Mode::Boot);
    let x = rounds(Mode::CtrlAltDel);
    println!("API start, null guest, 1 vCPU, 128 MiB, {runs} runs each, interleaved (medians, ms)");
    println!(
        "| measure | {} |",
        vmms.iter().map(|v| v.name).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(vmms.len()));
    let row = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" | ")
    };
    println!("| launch → API socket accepts | {} |", row(&r));
    println!("| launch → first guest output (API boot) | {} |", row(&b));
    println!("| SendCtrlAltDel → process exit | {} |", row(&x));
    if let Some(fc) = vmms.iter().position(|v| v.name == "Firecracker") {
        for (i, v) in vmms.iter().enumerate().filter(|(i, _)| *i != fc) {
            println!(
                "{} / Firecracker: socket {:.2}x, API boot {:.2}x, Ctrl-Alt-Del exit {:.2}x",
                v.name,
                r[i] / r[fc],
                b[i] / b[fc],
                x[i] / x[fc]
            );
        }
    }
}
