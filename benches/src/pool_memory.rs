//! What N containers cost the host in memory, booted vs restored from the
//! pool's template: `husk run -d --network none TESTIMAGE sleep 600`, N at
//! a time, then the proportional set size of their husk processes (shared
//! pages divided among their users: clones of one template share its
//! memory file's page cache, booted VMs share nothing but the kernel and
//! image files). Interleaved rounds, medians. Inside the testbed where
//! /dev/kvm cannot boot Linux: `benches/run pool-memory`.
//!
//! Usage: pool-memory [--containers N] [--rounds R] [--husk PATH]

use husk_benches::{median, spread};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// One round: starts `n` containers, measures, removes them. The total PSS
/// in MiB and the seconds until all had started.
fn round(husk: &str, env: &[(&str, &Path)], pooled: bool, n: usize) -> (f64, f64) {
    let image = husk_tests::guest_dir().join("husk-test-image");
    let start = Instant::now();
    let mut ids = Vec::new();
    for _ in 0..n {
        let out = Command::new(husk)
            .args(["run", "-d", "--network", "none"])
            .arg(&image)
            .args(["sleep", "600"])
            .envs(env.iter().copied())
            .env("HUSK_POOL", if pooled { "on" } else { "off" })
            .stdin(Stdio::null())
            .output()
            .expect("husk runs");
        assert!(
            out.status.success(),
            "husk run -d failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        ids.push(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let started = start.elapsed().as_secs_f64();
    let runtime = env
        .iter()
        .find(|(k, _)| *k == "HUSK_RUNTIME_DIR")
        .map(|(_, v)| *v)
        .expect("a runtime dir");
    let kib: u64 = ids
        .iter()
        .map(|id| {
            let record = std::fs::read(runtime.join(id).join("state.json"))
                .unwrap_or_else(|e| panic!("{id}'s record: {e}"));
            let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
            let pid = record["owner_pid"].as_i64().expect("owner_pid") as i32;
            husk_compare::workloads::tree_pss_kib(pid)
        })
        .sum();
    let mut rm = Command::new(husk);
    rm.args(["rm", "-f"]).args(&ids).envs(env.iter().copied());
    let st = rm.stdout(Stdio::null()).status().expect("husk rm");
    assert!(st.success(), "husk rm -f failed");
    (kib as f64 / 1024.0, started)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut n, mut rounds, mut husk) = (10usize, 3usize, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--containers" => {
                n = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--containers N")
            }
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds R"),
            "--husk" => husk = Some(it.next().expect("--husk PATH").clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    let husk = husk.unwrap_or_else(|| husk_tests::husk::binary().display().to_string());
    husk_tests::require_linux_kvm();
    let work = tempfile::tempdir().unwrap();
    let (cache, runtime, pool) = (
        work.path().join("cache"),
        work.path().join("run"),
        work.path().join("pool"),
    );
    let env = [
        ("HUSK_IMAGE_CACHE", cache.as_path()),
        ("HUSK_RUNTIME_DIR", runtime.as_path()),
        ("HUSK_POOL_DIR", pool.as_path()),
    ];
    // Warm-up: the image converted, the template made.
    round(&husk, &env, true, 1);
    let (mut booted, mut pooled, mut t_booted, mut t_pooled) = (vec![], vec![], vec![], vec![]);
    for r in 1..=rounds {
        let (b, tb) = round(&husk, &env, false, n);
        let (p, tp) = round(&husk, &env, true, n);
        eprintln!("round {r}: booted {b:.0} MiB in {tb:.1} s, pooled {p:.0} MiB in {tp:.1} s");
        booted.push(b);
        pooled.push(p);
        t_booted.push(tb);
        t_pooled.push(tp);
    }
    let row = |name: &str, mib: &[f64], secs: &[f64]| {
        let (lo, hi) = spread(mib);
        println!(
            "| {name} | {:.0} | {lo:.0}–{hi:.0} | {:.1} | {:.1} |",
            median(mib.to_vec()),
            median(mib.to_vec()) / n as f64,
            median(secs.to_vec())
        );
    };
    println!("{n} containers `sleep 600` at once (husk run -d --network none); {rounds} interleaved rounds, medians");
    println!(
        "| VMs | host PSS, all (MiB) | spread (MiB) | per container (MiB) | all started in (s) |"
    );
    println!("|---|---|---|---|---|");
    row("booted (HUSK_POOL=off)", &booted, &t_booted);
    row("restored from one template", &pooled, &t_pooled);
    println!(
        "pooled / booted memory: {:.2}x",
        median(pooled.clone()) / median(booted.clone())
    );
}
