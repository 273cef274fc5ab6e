//! `podman run --rm IMAGE true` with husk as the OCI runtime against crun
//! and runc, interleaved in one run: launch → exit, medians. podman,
//! conmon, the image store (vfs) and the image are the same for all three,
//! so the differences are the runtimes'; `husk run --rm IMAGE true` (no
//! podman) and the raw boot come along to show where husk's time goes.
//! Inside the testbed where /dev/kvm cannot boot Linux:
//! `benches/run podman-startup`.
//!
//! Usage: podman-startup [--runs N] [--husk PATH] [--network bridge|none]
//! (podman's default network, bridge, unless told: netavark's setup is
//! then part of every runtime's figure).

use husk_benches::{median, spread};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use husk_tests::podman::IMAGE;

/// The runtimes podman is given, by path; a missing one is reported.
fn runtimes(husk: &Path) -> Vec<(&'static str, PathBuf)> {
    vec![
        ("husk", husk.to_owned()),
        ("crun", PathBuf::from("/usr/bin/crun")),
        ("runc", PathBuf::from("/usr/sbin/runc")),
    ]
}

/// Runs `cmd` to its end; milliseconds. A failure ends the bench loudly.
fn timed(cmd: &mut Command, what: &str) -> f64 {
    let t = Instant::now();
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        out.status.success(),
        "{what}: {}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    ms
}

fn main() {
    let mut runs = 10;
    let mut husk = PathBuf::from("target/release/husk");
    let mut network = "bridge".to_string();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = PathBuf::from(it.next().expect("--husk PATH")),
            "--network" => network = it.next().expect("--network bridge|none").clone(),
            other => {
                panic!("unknown argument {other} (usage: podman-startup [--runs N] [--husk PATH] [--network bridge|none])")
            }
        }
    }
    if !Path::new(husk_tests::podman::PROGRAM).is_file() {
        println!("podman: not installed");
        return;
    }
    husk_tests::require_linux_kvm();
    husk_compare::runner::ensure_cgroup2();
    let store = tempfile::tempdir().unwrap();
    std::fs::create_dir(store.path().join("tmp")).unwrap();
    let present: Vec<(&str, PathBuf)> = runtimes(&husk)
        .into_iter()
        .filter(|(name, p)| {
            let ok = p.is_file();
            if !ok {
                println!("{name}: not installed ({})", p.display());
            }
            ok
        })
        .collect();
    let tar = husk_tests::guest_dir().join("husk-test-image.docker.tar");
    timed(
        husk_tests::podman::command(store.path(), &present[0].1)
            .args(["load", "-q", "-i"])
            .arg(&tar),
        "podman load",
    );
    let cache = store.path().join("husk-cache");
    let image = husk_tests::guest_dir().join("husk-test-image");
    let husk_run = || {
        let mut c = Command::new(&husk);
        c.args(["run", "--rm"])
            .arg(&image)
            .arg("true")
            .env("HUSK_IMAGE_CACHE", &cache)
            .env("HUSK_RUNTIME_DIR", store.path().join("husk-run"));
        c
    };
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); present.len() + 1];
    // Run 0 warms up (podman's first container, husk's image conversion).
    for run in 0..=runs {
        for (i, (name, path)) in present.iter().enumerate() {
            let ms = timed(
                husk_tests::podman::command(store.path(), path).args([
                    "run",
                    "--rm",
                    "--network",
                    &network,
                    IMAGE,
                    "true",
                ]),
                name,
            );
            if run > 0 {
                times[i].push(ms);
            }
        }
        let ms = timed(&mut husk_run(), "husk run");
        if run > 0 {
            times[present.len()].push(ms);
        }
        eprintln!("run {run} done");
    }
    println!("`podman run --rm --network {network} IMAGE true`, launch → exit; {runs} interleaved runs after a warm-up, medians (min–max), ms");
    println!("| runtime | median | spread |");
    println!("|---|---|---|");
    for (i, (name, _)) in present.iter().enumerate() {
        let (lo, hi) = spread(&times[i]);
        println!(
            "| podman --runtime {name} | {:.0} | {lo:.0}–{hi:.0} |",
            median(times[i].clone())
        );
    }
    let own = &times[present.len()];
    let (lo, hi) = spread(own);
    println!(
        "| husk run --rm IMAGE true (no podman) | {:.0} | {lo:.0}–{hi:.0} |",
        median(own.clone())
    );
    let m = |name: &str| {
        present
            .iter()
            .position(|(n, _)| *n == name)
            .map(|i| median(times[i].clone()))
    };
    if let (Some(h), Some(c)) = (m("husk"), m("crun")) {
        println!(
            "husk / crun under podman: {:.1}x; what the microVM adds: {:.0} ms",
            h / c,
            h - c
        );
        println!(
            "podman's own share with husk (podman+husk minus husk run alone): {:.0} ms",
            h - median(own.clone())
        );
    }
    if let (Some(h), Some(r)) = (m("husk"), m("runc")) {
        println!("husk / runc under podman: {:.1}x", h / r);
    }
}
