//! VMM start-up cost with the null guest (no Linux boot), husk vs QEMU
//! `-M microvm`, interleaved in one run:
//! - launch → first guest byte on the VMM's stdout,
//! - first byte → process exit (the guest resets right after printing, so
//!   this is reset → exit within microseconds),
//! - peak RSS of the VMM process (the null guest touches a few KiB of its
//!   128 MiB, so this is the VMM's own overhead).
//!
//! Usage: vmm-startup [--runs N] [--husk PATH] [--husk-cli PATH | --no-husk-cli]
//!        [--no-qemu] [--firecracker PATH | --no-firecracker] [--write-guests DIR]
//!        [--floor PATH | --no-floor]
//!
//! `--husk` is the `husk-vmm` executable (default target/release/husk-vmm),
//! booted from a config file as Firecracker is; `--husk-cli` the whole
//! `husk` (default target/release/husk, its `husk boot`; left out when
//! missing). Firecracker (default: `husk_benches::FIRECRACKER`) runs the
//! guest that ends as a foreign one does, with a plain reset; so does husk,
//! beside its own guest that reports a status first. `--floor` is
//! kvm-floor (default target/static/release/kvm-floor, which `benches/run
//! vmm-startup` builds): the least a VMM does, once with KVM's full irqchip
//! and once with the split one, so each VMM's figure reads as the floor
//! plus what the VMM adds.

use husk_benches::{config_boot_args, median, spread, ConfigVm, ConfigVmm};
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
    // The first byte must have been the guest's: a VMM that prints its
    // own error instead would be timed as fast.
    let mut said = first.to_vec();
    said.extend_from_slice(&rest);
    assert!(
        said.starts_with(null_guest::LINE),
        "{} printed {:?}, status {status}",
        argv[0],
        String::from_utf8_lossy(&said)
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
    let mut husk = String::from("target/release/husk-vmm");
    let mut husk_cli = Some(String::from("target/release/husk"));
    let mut qemu = true;
    let mut firecracker = Some(String::from(husk_benches::FIRECRACKER));
    let mut write_guests = None;
    let mut floor = Some(String::from("target/static/release/kvm-floor"));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = it.next().expect("--husk PATH").clone(),
            "--husk-cli" => husk_cli = Some(it.next().expect("--husk-cli PATH").clone()),
            "--no-husk-cli" => husk_cli = None,
            "--no-qemu" => qemu = false,
            "--firecracker" => firecracker = Some(it.next().expect("--firecracker PATH").clone()),
            "--no-firecracker" => firecracker = None,
            "--floor" => floor = Some(it.next().expect("--floor PATH").clone()),
            "--no-floor" => floor = None,
            "--write-guests" => write_guests = Some(it.next().expect("--write-guests DIR").clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let guests = write_guests
        .as_deref()
        .map_or(dir.path(), std::path::Path::new);
    // husk's own guest reports its status on port 0xf4 and then resets;
    // a foreign guest only resets (through the i8042), as Linux's
    // `reboot=k` does.
    let status = guests.join("null-status.elf");
    let plain = guests.join("null-reset.elf");
    null_guest::write(&status, true, Some(0)).unwrap();
    null_guest::write(&plain, true, None).unwrap();
    if write_guests.is_some() {
        println!("{} {}", status.display(), plain.display());
        return;
    }
    let root = dir.path().join("root.img");
    std::fs::write(&root, [0u8; 512]).unwrap();
    // husk-vmm boots from a config file, as Firecracker does below.
    let husk_argv = |kernel: &std::path::Path, name: &str| -> Vec<String> {
        let vm = ConfigVm {
            kernel,
            boot_args: "console=ttyS0",
            root: Some(&root),
            mem_mib: 128,
        };
        [husk.clone(), "--allow-kvm-pvm".into()]
            .into_iter()
            .chain(config_boot_args(ConfigVmm::HuskVmm, dir.path(), name, &vm))
            .collect()
    };
    let mut peers: Vec<(&'static str, Vec<String>)> = vec![
        ("husk-vmm, status port", husk_argv(&status, "status")),
        ("husk-vmm, plain reset", husk_argv(&plain, "plain")),
    ];
    // The whole command line's `husk boot`, for what the small executable
    // saves.
    if let Some(cli) = husk_cli.filter(|c| std::path::Path::new(c).is_file()) {
        let kernel = plain.display().to_string();
        let root = root.display().to_string();
        let argv = [
            &cli,
            "boot",
            "--allow-kvm-pvm",
            "--kernel",
            &kernel,
            "--rootfs",
            &root,
            "--memory",
            "128",
            "--",
            "x",
        ];
        peers.push(("husk boot, plain reset", argv.map(String::from).to_vec()));
    }
    let own = peers.len();
    // The least any VMM does (kvm_floor.rs): what husk-vmm and Firecracker
    // add to it is theirs.
    let floor = floor.filter(|f| std::path::Path::new(f).is_file());
    match &floor {
        Some(f) => {
            for (name, irqchip) in [
                ("kvm-floor, full irqchip, plain reset", "full"),
                ("kvm-floor, split irqchip, plain reset", "split"),
            ] {
                let argv = [f, "--irqchip", irqchip, &plain.display().to_string()];
                peers.push((name, argv.map(String::from).to_vec()));
            }
        }
        None => println!("kvm-floor: not built (benches/run vmm-startup builds it; --floor PATH)"),
    }
    match firecracker.filter(|f| std::path::Path::new(f).is_file()) {
        Some(fc) => peers.push((
            "firecracker, plain reset",
            firecracker_argv(&fc, dir.path(), &plain),
        )),
        None => println!("firecracker: not installed (--firecracker PATH)"),
    }
    if qemu {
        peers.push(("qemu -M microvm, status port", qemu_argv(&status)));
    }

    // One warm-up each, then interleave so drift hits all alike.
    for (_, argv) in &peers {
        one_in_fresh_process(argv);
    }
    let mut samples: Vec<Vec<Sample>> = peers.iter().map(|_| Vec::new()).collect();
    for _ in 0..runs {
        for (i, (_, argv)) in peers.iter().enumerate() {
            samples[i].push(one_in_fresh_process(argv));
        }
    }
    let rows: Vec<Summary> = peers
        .iter()
        .zip(&samples)
        .map(|((name, _), s)| summarize(name, s, 0.0))
        .collect();
    println!("null guest, 1 vCPU, 128 MiB, {runs} runs each (medians; launch→output min..max)");
    println!("| VMM, guest's end | launch → output (ms) | output → exit (ms) | peak RSS (MiB) |");
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
    // What each VMM adds to the floor it stands on: the split irqchip's
    // for husk, the full one's for Firecracker (read both rows).
    if let Some(f) = floor.and_then(|_| rows.get(own + 1)) {
        for r in rows.iter().filter(|r| !r.name.starts_with("kvm-floor")) {
            println!(
                "{} − {}: launch → output {:+.2} ms",
                r.name,
                f.name,
                r.output_ms - f.output_ms
            );
        }
    }
    for peer in rows.iter().skip(own) {
        for own in &rows[..own] {
            println!(
                "{} / {}: launch → output {:.2}x, output → exit {:.2}x, RSS {:.2}x",
                own.name,
                peer.name,
                own.output_ms / peer.output_ms,
                own.exit_after_output_ms / peer.exit_after_output_ms,
                own.rss_mib / peer.rss_mib
            );
        }
    }
}

/// Firecracker booting `kernel` from a config file, with no disk.
fn firecracker_argv(fc: &str, dir: &std::path::Path, kernel: &std::path::Path) -> Vec<String> {
    let vm = ConfigVm {
        kernel,
        boot_args: "console=ttyS0",
        root: None,
        mem_mib: 128,
    };
    std::iter::once(fc.to_string())
        .chain(config_boot_args(
            ConfigVmm::Firecracker,
            dir,
            "firecracker",
            &vm,
        ))
        .collect()
}

fn qemu_argv(kernel: &std::path::Path) -> Vec<String> {
    [
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
        &kernel.display().to_string(),
        // The null guest writes its status to 0xf4 before the i8042 reset;
        // QEMU microvm has no i8042 with -nodefaults, so it exits here.
        "-device",
        "isa-debug-exit,iobase=0xf4,iosize=0x01",
    ]
    .map(String::from)
    .to_vec()
}
