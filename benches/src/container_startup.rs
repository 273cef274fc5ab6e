//! Container startup, end to end: `husk run --rm TESTIMAGE true` (a fresh
//! microVM per container) vs `crun run` of the same image's root
//! filesystem on this host, vs the raw guest boot (`husk boot -- true`: the
//! kernel and init without agent or container), interleaved in one run
//! (inside the testbed where /dev/kvm cannot boot Linux:
//! `benches/run container-startup`). husk's own phase marks
//! (`HUSK_TIMINGS=1`) say where its time goes.
//!
//! Usage: container-startup [--runs N] [--husk PATH]

use husk_benches::{median, spread};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// husk's phases, in order, with what the step from the previous one is.
const PHASES: &[(&str, &str)] = &[
    ("start", "process start, argument parsing"),
    ("image_ready", "image lookup in the conversion cache"),
    ("vm_started", "VMM setup: KVM, memory, devices, kernel load"),
    ("agent_ready", "kernel boot, init, agent answers on vsock"),
    ("created", "container created (mounts, namespaces, cgroup)"),
    ("started", "container started"),
    ("exited", "process ran and exited, output drained"),
    ("vm_stopped", "guest shutdown (sync, unmount, power off)"),
    ("done", "host cleanup (run dir, sockets)"),
];

fn timed(cmd: &mut Command) -> (f64, String) {
    let start = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{:?} failed ({}): {}{stderr}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    (ms, stderr)
}

/// `husk-timings: start=0.1 image_ready=2.0 ...` → values by phase.
fn parse_timings(stderr: &str) -> Vec<f64> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("husk-timings: "))
        .unwrap_or_else(|| panic!("no husk-timings line in: {stderr}"));
    PHASES
        .iter()
        .map(|(name, _)| {
            line.split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("no {name} in: {line}"))
        })
        .collect()
}

/// An OCI bundle for crun: the test image unpacked, `crun spec`'s default
/// config with `true` as the process and no terminal.
fn crun_bundle(image: &Path, bundle: &Path) {
    let img = husk_image::Image::open(image).expect("open the test image");
    img.unpack(&bundle.join("rootfs"), &mut |_| {})
        .expect("unpack the test image");
    let st = Command::new("crun")
        .arg("spec")
        .current_dir(bundle)
        .status()
        .expect("crun is missing (Debian: apt-get install crun)");
    assert!(st.success(), "crun spec failed");
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["process"]["terminal"] = serde_json::json!(false);
    spec["process"]["args"] = serde_json::json!(["true"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 10;
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
    let guest = husk_tests::guest_artifacts();
    let image = husk_tests::guest_dir().join("husk-test-image");
    let work = tempfile::tempdir().unwrap();
    let cache = work.path().join("cache");
    let runtime = work.path().join("run");
    let bundle = work.path().join("bundle");
    let root = work.path().join("rootfs.ext4");
    std::fs::create_dir_all(&bundle).unwrap();
    husk_compare::runner::ensure_cgroup2();
    crun_bundle(&image, &bundle);

    let husk_run = || {
        let mut c = Command::new(&husk);
        c.args(["run", "--rm"])
            .arg(&image)
            .arg("true")
            .env("HUSK_IMAGE_CACHE", &cache)
            .env("HUSK_RUNTIME_DIR", &runtime)
            .env("HUSK_TIMINGS", "1");
        timed(&mut c)
    };
    let (mut h, mut c, mut b) = (vec![], vec![], vec![]);
    let mut phases: Vec<Vec<f64>> = vec![Vec::new(); PHASES.len()];
    let mut after_done = Vec::new();
    // Run 0 is the warm-up: it converts the image (timed on its own).
    let (convert_ms, _) = husk_run();
    for i in 1..=runs {
        let (hm, stderr) = husk_run();
        let t = parse_timings(&stderr);
        let mut prev = 0.0;
        for (k, v) in t.iter().enumerate() {
            phases[k].push(v - prev);
            prev = *v;
        }
        after_done.push(hm - prev);
        let (cm, _) = timed(
            Command::new("crun")
                .args(["run", "--bundle"])
                .arg(&bundle)
                .arg(format!("bench-{i}")),
        );
        std::fs::copy(&guest.rootfs_ext4, &root).unwrap();
        let (bm, _) = timed(
            Command::new(&husk)
                .args(["boot", "--memory", "256", "--console", "off", "--kernel"])
                .arg(&guest.vmlinux)
                .arg("--rootfs")
                .arg(&root)
                .args(["--", "true"]),
        );
        eprintln!("run {i}: husk run {hm:.0} ms, crun run {cm:.0} ms, raw boot {bm:.0} ms");
        h.push(hm);
        c.push(cm);
        b.push(bm);
    }
    let row = |name: &str, v: &[f64]| {
        let (lo, hi) = spread(v);
        println!("| {name} | {:.0} | {lo:.0}–{hi:.0} |", median(v.to_vec()));
    };
    println!(
        "`true` from the test image, launch → exit; {runs} interleaved runs, medians \
         (first husk run, which converted the image, excluded: {convert_ms:.0} ms)"
    );
    println!("| what | median (ms) | spread (ms) |");
    println!("|---|---|---|");
    row("husk run --rm IMAGE true (microVM + agent + container)", &h);
    row("crun run (container on this host)", &c);
    row("husk boot -- true (raw guest boot, no container)", &b);
    println!(
        "husk run / crun run: {:.1}x; husk run / raw boot: {:.2}x",
        median(h.clone()) / median(c.clone()),
        median(h.clone()) / median(b.clone())
    );
    println!();
    println!("Where `husk run` spends its time (medians of each step; they need not add up exactly to the total):");
    println!("| step | ends at | median (ms) |");
    println!("|---|---|---|");
    for (k, (name, what)) in PHASES.iter().enumerate() {
        let m = median(phases[k].clone());
        println!("| {what} | {name} | {m:.1} |");
    }
    println!(
        "| process exit (threads, unmapping guest memory) | (wall) | {:.1} |",
        median(after_done)
    );
}
