//! A host directory in a container, five ways, interleaved in one run:
//! native (the directory itself), crun (a bind mount), husk with the
//! directory as a volume (virtio-fs through virtiofsd), husk with an
//! ext4 disk image as the volume (virtio-blk), and QEMU `-M microvm` with
//! the directory over virtio-fs through the same virtiofsd. Each does husk-bench's
//! O_DIRECT sequential write and read of 1 MiB blocks and `meta` (create,
//! stat, unlink N empty files). The same launches as `husk compare`'s
//! shared-directory workload. Inside the testbed where /dev/kvm cannot
//! boot Linux: `benches/run shared-dir`.
//!
//! Usage: shared-dir [--runs N] [--mib N] [--files N] [--husk PATH]
//! Defaults: 5 runs, 64 MiB, 10,000 files (300 on a nested host, see
//! `husk_compare::workloads::NESTED_FILES`).

use husk_benches::{median, spread};
use husk_compare::results::Env;
use husk_compare::runner::{self, Options};
use husk_compare::workloads::{self, Backing, Sizes};
use std::path::PathBuf;

/// husk-bench's figures, in `shared_dir`'s order: (label, unit).
const MEASURES: [(&str, &str); 5] = [
    ("sequential write", "MB/s"),
    ("sequential read", "MB/s"),
    ("creates", "files/s"),
    ("stats", "files/s"),
    ("unlinks", "files/s"),
];

/// The four ways, in table order.
const WAYS: [(&str, Env, Backing); 5] = [
    ("native (the directory)", Env::Native, Backing::Dir),
    ("crun, bind mount", Env::Crun, Backing::Dir),
    ("husk, virtio-fs", Env::Husk, Backing::Dir),
    ("husk, virtio-blk (ext4 image)", Env::Husk, Backing::Image),
    (
        "QEMU microvm, virtio-fs (same virtiofsd)",
        Env::Qemu,
        Backing::Dir,
    ),
];

struct Args {
    runs: usize,
    sizes: Sizes,
    husk: PathBuf,
}

fn args() -> Args {
    let mut a = Args {
        runs: 5,
        sizes: Sizes {
            seq_mib: 64,
            ..Sizes::full()
        },
        husk: PathBuf::from("target/release/husk"),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--mib" => a.sizes.seq_mib = value().parse().expect("--mib N"),
            "--files" => a.sizes.files = value().parse().expect("--files N"),
            "--husk" => a.husk = PathBuf::from(value()),
            other => panic!(
                "unknown argument {other} (usage: shared-dir [--runs N] [--mib N] [--files N] [--husk PATH])"
            ),
        }
    }
    a
}

fn main() {
    let a = args();
    husk_tests::require_linux_kvm();
    runner::ensure_cgroup2();
    // On a disk, not /tmp: O_DIRECT and user xattrs need more than an old
    // tmpfs gives (the testbed has no /var/tmp until this makes it).
    std::fs::create_dir_all("/var/tmp").expect("/var/tmp");
    let work = tempfile::tempdir_in("/var/tmp").expect("a work dir in /var/tmp");
    let opts = Options {
        quick: false,
        runs: a.runs as u32,
        envs: vec![Env::Native, Env::Crun, Env::Husk, Env::Qemu],
        husk: a.husk.clone(),
        guest_dir: husk_tests::guest_dir(),
        // Firecracker has no virtio-fs: nothing to share a directory with.
        firecracker: None,
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let setup = runner::setup(&opts, work.path().to_owned()).expect("set up the environments");
    let missing = |env: Env| match env {
        Env::Crun => setup.crun.is_none(),
        Env::Qemu => setup.qemu.is_none() || setup.virtiofsd.is_none(),
        _ => false,
    };
    for (name, env, _) in WAYS {
        if missing(env) {
            println!("{name}: not installed");
        }
    }
    // figures[way][measure] = samples
    let mut figures = vec![vec![Vec::new(); MEASURES.len()]; WAYS.len()];
    for run in 0..=a.runs {
        for (w, &(name, env, backing)) in WAYS.iter().enumerate() {
            if missing(env) {
                continue;
            }
            let id = format!("sd{w}-{run}");
            let got = workloads::shared_dir(&setup, env, &id, a.sizes, backing)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            eprintln!("run {run}: {name}: {got:?}");
            if run > 0 {
                for (m, v) in got.into_iter().enumerate() {
                    figures[w][m].push(v);
                }
            }
        }
    }
    report(&a, &figures);
}

fn report(a: &Args, figures: &[Vec<Vec<f64>>]) {
    println!(
        "{} MiB sequential (O_DIRECT, 1 MiB blocks), {} files; {} interleaved runs after a warm-up, medians (min–max)",
        a.sizes.seq_mib, a.sizes.files, a.runs
    );
    print!("| way |");
    for (label, unit) in MEASURES {
        print!(" {label} ({unit}) |");
    }
    println!();
    println!("|---|{}", "---|".repeat(MEASURES.len()));
    for (w, (name, _, _)) in WAYS.iter().enumerate() {
        print!("| {name} |");
        for samples in &figures[w] {
            if samples.is_empty() {
                print!(" not run |");
            } else {
                let (lo, hi) = spread(samples);
                print!(" {:.0} ({lo:.0}–{hi:.0}) |", median(samples.clone()));
            }
        }
        println!();
    }
    let m = |w: usize, k: usize| median(figures[w][k].clone());
    let (crun, fs, blk, qemu) = (1, 2, 3, 4);
    println!();
    for (k, what) in [(2, "creates"), (3, "stats"), (4, "unlinks")] {
        println!(
            "virtio-fs / crun bind mount, {what}: {:.2} (goal >= 0.5)",
            m(fs, k) / m(crun, k)
        );
    }
    println!(
        "virtio-fs / virtio-blk, sequential read: {:.2} (goal >= 0.8); write: {:.2}",
        m(fs, 1) / m(blk, 1),
        m(fs, 0) / m(blk, 0)
    );
    if !figures[qemu][0].is_empty() {
        let ratios: Vec<String> = (0..MEASURES.len())
            .map(|k| format!("{} {:.2}", MEASURES[k].0, m(fs, k) / m(qemu, k)))
            .collect();
        println!("husk / QEMU, both virtio-fs: {}", ratios.join(", "));
    }
}
