//! VMM start-up cost with the null guest (no Linux boot), husk vs QEMU
//! `-M microvm`, interleaved in one run:
//! - launch → first guest byte on the VMM's stdout,
//! - first byte → process exit (the guest resets right after printing, so
//!   this is reset → exit within microseconds),
//! - peak RSS of the VMM process (the null guest touches a few KiB of its
//!   128 MiB, so this is the VMM's own overhead).
//!
//! Usage: vmm-startup [--runs N] [--husk PATH] [--no-qemu]

use husk_benches::{median, spread};
use husk_tests::null_guest;
use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Sample {
    to_output: Duration,
    to_exit: Duration,
    max_rss_kib: i64,
}

fn max_rss_of_children() -> i64 {
    // SAFETY: getrusage writes into the zeroed struct we own.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u.ru_maxrss
    }
}

/// Runs `cmd` once. RUSAGE_CHILDREN's max RSS is a running maximum over all
/// children, so each measurement runs in a fresh helper process: ourselves
/// with `--one`.
fn measure(argv: &[String]) -> Sample {
    let start = Instant::now();
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", argv[0]));
    let mut out = child.stdout.take().unwrap();
    let mut first = [0u8; 1];
    let to_output = match out.read(&mut first) {
        Ok(1) => start.elapsed(),
        _ => {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("{} printed nothing: {err}", argv[0])
        }
    };
    let mut rest = Vec::new();
    let pid = child.id();
    let watchdog = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(10));
        // SAFETY: kill(2) with a pid we spawned; at worst it is already gone.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    });
    let _ = out.read_to_end(&mut rest);
    let status = child.wait().unwrap();
    drop(watchdog);
    let to_exit = start.elapsed();
    assert!(
        rest.len() + 1 >= null_guest::LINE.len(),
        "{} printed {} bytes, status {status}",
        argv[0],
        rest.len() + 1
    );
    Sample {
        to_output,
        to_exit,
        max_rss_kib: max_rss_of_children(),
    }
}

fn one_in_fresh_process(argv: &[String]) -> Sample {
    let out = Command::new(std::env::current_exe().unwrap())
        .arg("--one")
        .args(argv)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(
        v.len(),
        3,
        "helper said: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Sample {
        to_output: Duration::from_secs_f64(v[0]),
        to_exit: Duration::from_secs_f64(v[1]),
        max_rss_kib: v[2] as i64,
    }
}

struct Summary {
    name: &'static str,
    output_ms: f64,
    exit_after_output_ms: f64,
    rss_mib: f64,
    output_range: (f64, f64),
}

fn summarize(name: &'static str, samples: &[Sample], guest_mib: f64) -> Summary {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let out: Vec<f64> = samples.iter().map(|s| ms(s.to_output)).collect();
    Summary {
        name,
        output_ms: median(out.clone()),
        output_range: spread(&out),
        exit_after_output_ms: median(
            samples
                .iter()
                .map(|s| ms(s.to_exit - s.to_output))
                .collect(),
        ),
        // Peak RSS includes the few guest pages the null guest touches;
        // reported as is (not minus the guest's 128 MiB, which it never
        // touches).
        rss_mib: median(
            samples
                .iter()
                .map(|s| s.max_rss_kib as f64 / 1024.0)
                .collect(),
        ) - guest_mib,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--one") {
        let s = measure(&args[1..]);
        println!(
            "{} {} {}",
            s.to_output.as_secs_f64(),
            s.to_exit.as_secs_f64(),
            s.max_rss_kib
        );
        return;
    }
    let mut runs = 20;
    let mut husk = String::from("target/release/husk");
    let mut qemu = true;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = it.next().expect("--husk PATH").clone(),
            "--no-qemu" => qemu = false,
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("null.elf");
    null_guest::write(&kernel, true, Some(0)).unwrap();
    let root = dir.path().join("root.img");
    std::fs::write(&root, [0u8; 512]).unwrap();
    let k = kernel.display().to_string();
    let husk_argv: Vec<String> = [
        husk.as_str(),
        "boot",
        "--allow-kvm-pvm",
        "--kernel",
        &k,
        "--rootfs",
        &root.display().to_string(),
        "--memory",
        "128",
        "--",
        "x",
    ]
    .map(String::from)
    .to_vec();
    let qemu_argv: Vec<String> = [
        "qemu-system-x86_64",
        "-M",
        "microvm,x-option-roms=off,rtc=off,acpi=off",
        "-enable-kvm",
        "-cpu",
        "host,-arch-capabilities",
        "-m",
        "128",
        "-smp",
        "1",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
        "-kernel",
        &k,
        // The null guest writes its status to 0xf4 before the i8042 reset;
        // QEMU microvm has no i8042 with -nodefaults, so it exits here.
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x01",
    ]
    .map(String::from)
    .to_vec();

    // One warm-up each, then interleave so drift hits both alike.
    one_in_fresh_process(&husk_argv);
    if qemu {
        one_in_fresh_process(&qemu_argv);
    }
    let (mut h, mut q) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        h.push(one_in_fresh_process(&husk_argv));
        if qemu {
            q.push(one_in_fresh_process(&qemu_argv));
        }
    }
    let mut rows = vec![summarize("husk", &h, 0.0)];
    if qemu {
        rows.push(summarize("qemu -M microvm", &q, 0.0));
    }
    println!("null guest, 1 vCPU, 128 MiB, {runs} runs each (medians; launch→output min..max)");
    println!("| VMM | launch → output (ms) | output → exit (ms) | peak RSS (MiB) |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!(
            "| {} | {:.2} ({:.2}..{:.2}) | {:.2} | {:.1} |",
            r.name,
            r.output_ms,
            r.output_range.0,
            r.output_range.1,
            r.exit_after_output_ms,
            r.rss_mib
        );
    }
    if rows.len() == 2 {
        println!(
            "husk / qemu: launch → output {:.2}x, output → exit {:.2}x, RSS {:.2}x",
            rows[0].output_ms / rows[1].output_ms,
            rows[0].exit_after_output_ms / rows[1].exit_after_output_ms,
            rows[0].rss_mib / rows[1].rss_mib
        );
    }
}
