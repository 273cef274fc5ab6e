//! What the virtio-blk pass budget costs: the block workloads of `husk
//! compare` (husk-bench's O_DIRECT sequential 1 MiB and random 4 KiB I/O
//! on a disk-image volume) in `husk run` containers, with the default
//! budget (128 requests or 4 MiB a pass) and with
//! `HUSK_BLK_PASS_BUDGET=unlimited` (one pass serves all there is, as
//! before the budget), interleaved in one run. Inside the testbed where
//! /dev/kvm cannot boot Linux: `benches/run blk-budget`.
//!
//! Usage: blk-budget [--runs N] [--mib N] [--husk PATH]

use husk_benches::{median, spread};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// husk-bench's results we compare: (op line key, label, unit).
const MEASURES: &[(&str, &str, &str)] = &[
    ("seq-write", "sequential write", "MB/s"),
    ("seq-read", "sequential read", "MB/s"),
    ("rand-read", "random 4 KiB read", "IOPS"),
    ("rand-write", "random 4 KiB write", "IOPS"),
];

struct Args {
    runs: usize,
    mib: u64,
    husk: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        runs: 5,
        mib: 32,
        husk: PathBuf::from("target/release/husk"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--mib" => a.mib = value().parse().expect("--mib N"),
            "--husk" => a.husk = PathBuf::from(value()),
            other => panic!(
                "unknown argument {other} (usage: blk-budget [--runs N] [--mib N] [--husk PATH])"
            ),
        }
    }
    a
}

/// One container: the four workloads on a fresh ext4 volume; the figures.
fn one_run(a: &Args, image: &Path, disk: &Path, unlimited: bool) -> Vec<f64> {
    husk_image::mkfs::Ext4::new((a.mib * 2 + 64) << 20)
        .make(disk)
        .expect("make the volume");
    let mib = a.mib.to_string();
    let script = format!(
        "husk-bench seq-write /work/f {mib} && husk-bench seq-read /work/f {mib} && \
         husk-bench rand-read /work/f {mib} 2 && husk-bench rand-write /work/f {mib} 2"
    );
    let mut cmd = Command::new(&a.husk);
    cmd.args(["run", "--rm", "-v"])
        .arg(format!("{}:/work", disk.display()))
        .arg(image)
        .args(["sh", "-c", &script])
        .stdin(Stdio::null());
    if unlimited {
        cmd.env("HUSK_BLK_PASS_BUDGET", "unlimited");
    }
    let out = cmd.output().expect("start husk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "husk run failed ({}): {text}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    MEASURES
        .iter()
        .map(|(op, _, unit)| {
            let key = if *unit == "IOPS" {
                "iops="
            } else {
                "mb_per_s="
            };
            text.lines()
                .filter(|l| l.split_whitespace().any(|kv| kv == format!("op={op}")))
                .flat_map(|l| l.split_whitespace())
                .find_map(|kv| kv.strip_prefix(key)?.parse().ok())
                .unwrap_or_else(|| panic!("no {key} for {op} in: {text}"))
        })
        .collect()
}

fn main() {
    let a = args();
    let image = husk_tests::guest_dir().join("husk-bench-image");
    assert!(
        image.join("index.json").is_file(),
        "{} is missing: scripts/build-guest builds it",
        image.display()
    );
    let dir = std::env::temp_dir().join(format!("blk-budget-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("work.img");
    // A warm-up of each, then interleaved runs.
    one_run(&a, &image, &disk, false);
    one_run(&a, &image, &disk, true);
    let (mut with, mut without) = (Vec::new(), Vec::new());
    for i in 0..a.runs {
        // Alternate which goes first, so drift hits both alike.
        for unlimited in [i % 2 == 1, i % 2 == 0] {
            let r = one_run(&a, &image, &disk, unlimited);
            if unlimited {
                without.push(r)
            } else {
                with.push(r)
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "{} runs each, {} MiB, husk {}",
        a.runs,
        a.mib,
        a.husk.display()
    );
    println!("| workload | budget (default) | unlimited | budget / unlimited |");
    println!("|---|---|---|---|");
    for (i, (_, label, unit)) in MEASURES.iter().enumerate() {
        let b: Vec<f64> = with.iter().map(|r| r[i]).collect();
        let u: Vec<f64> = without.iter().map(|r| r[i]).collect();
        let (bl, bh) = spread(&b);
        let (ul, uh) = spread(&u);
        let (mb, mu) = (median(b), median(u));
        println!(
            "| {label} ({unit}) | {mb:.1} ({bl:.1}..{bh:.1}) | {mu:.1} ({ul:.1}..{uh:.1}) | {:.3} |",
            mb / mu
        );
    }
}
