//! Soak: containers started and stopped in a loop with I/O, for N minutes,
//! while one long-lived container takes an exec with I/O each round. What
//! the host keeps is sampled: the long container's husk process (RSS, open
//! fds: it serves every exec for the VM's whole life) and the host around
//! the short ones (husk processes, runtime entries, network interfaces).
//! A leak fails the run (exit 1): fds or leftovers that grow, or RSS that
//! keeps growing after the warm-up. Inside the testbed where /dev/kvm
//! cannot boot Linux: `benches/run soak --minutes N`.
//!
//! Usage: soak [--minutes N] [--husk PATH]

use husk_benches::median;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Each short container: 1 MiB written with fsync, read back and checked.
const SHORT_IO: &str =
    "head -c 1048576 /dev/urandom > /a && sync && cp /a /b && cmp /a /b && echo ok";
/// Each exec in the long one: the same on its writable layer.
const EXEC_IO: &str = "head -c 262144 /dev/urandom > /x && cp /x /y && cmp /x /y && echo ok";

/// RSS grows by less than this after the warm-up (allocator noise, lazily
/// touched code pages), or it is a leak.
const RSS_SLACK_KIB: u64 = 4096;

struct Husk<'a> {
    bin: &'a str,
    env: Vec<(&'static str, &'a Path)>,
    /// Each command's VMM log (HUSK_LOG), read when it fails.
    log: &'a Path,
}

/// Failed runs and execs: husk's, and the nested testbed's own (the
/// signatures of husk_tests::testbed, inside the testbed only).
#[derive(Default)]
struct Tally {
    failed: usize,
    testbed: usize,
}

impl Husk<'_> {
    /// Runs `husk ARGS`; true if it succeeded and printed `ok`, else
    /// counted in `tally` with its reason on stderr.
    fn ok(&self, args: &[&str], tally: &mut Tally) -> bool {
        let _ = std::fs::remove_file(self.log);
        let out = self
            .command(args)
            .env("HUSK_LOG", self.log)
            .output()
            .expect("husk runs");
        if out.status.success() && out.stdout == b"ok\n" {
            return true;
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let log = std::fs::read_to_string(self.log).unwrap_or_default();
        match husk_tests::testbed::corruption(&stderr, &log) {
            Some(why) => {
                eprintln!("husk {args:?} failed, the testbed's: {why}");
                tally.testbed += 1;
            }
            None => {
                eprintln!("husk {args:?} failed: {stderr}\n--- VMM log ---\n{log}");
                tally.failed += 1;
            }
        }
        false
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.bin);
        c.args(args)
            .envs(self.env.iter().copied())
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> (bool, String) {
        let out = self.command(args).output().expect("husk runs");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }
}

#[derive(Debug, Clone, Copy)]
struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: usize,
    husk_procs: usize,
    run_entries: usize,
    interfaces: usize,
}

/// Mappings this large are guest RAM (256 MiB for the long container), not
/// the VMM's own memory: the guest touching more of its RAM is no leak.
const GUEST_RAM_MIN_KIB: u64 = 128 << 10;

/// The resident KiB of `pid` outside guest RAM, from its smaps.
fn vmm_rss_kib(pid: i32) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .unwrap_or_else(|e| panic!("pid {pid}'s smaps: {e} (did it die?)"));
    let (mut total, mut guest_ram) = (0, false);
    for line in smaps.lines() {
        let kib = |key: &str| {
            line.strip_prefix(key)
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        };
        if let Some(size) = kib("Size:") {
            guest_ram = size >= GUEST_RAM_MIN_KIB;
        } else if let Some(rss) = kib("Rss:") {
            total += if guest_ram { 0 } else { rss };
        }
    }
    total
}

fn count(dir: &str) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| d.count())
}

fn husk_processes(bin: &str) -> usize {
    let exe = std::fs::canonicalize(bin).unwrap_or_else(|_| bin.into());
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == exe))
        .count()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut minutes, mut bin) = (5.0f64, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--minutes" => minutes = it.next().and_then(|v| v.parse().ok()).expect("--minutes N"),
            "--husk" => bin = Some(it.next().expect("--husk PATH").clone()),
            other => panic!("unknown argument {other}"),
        }
    }
    let bin = bin.unwrap_or_else(|| husk_tests::husk::binary().display().to_string());
    husk_tests::require_linux_kvm();
    let work = tempfile::tempdir().unwrap();
    let (cache, runtime) = (work.path().join("cache"), work.path().join("run"));
    let log = work.path().join("husk.log");
    let husk = Husk {
        bin: &bin,
        env: vec![
            ("HUSK_IMAGE_CACHE", cache.as_path()),
            ("HUSK_RUNTIME_DIR", runtime.as_path()),
        ],
        log: &log,
    };
    let image = husk_tests::guest_dir().join("husk-test-image");
    let image = image.to_str().unwrap();
    let (ok, id) = husk.run(&["run", "-d", "--network", "none", image, "sleep", "1000000"]);
    assert!(ok, "the long container did not start");
    let id = id.trim().to_string();
    let record = std::fs::read(runtime.join(&id).join("state.json")).expect("its record");
    let record: serde_json::Value = serde_json::from_slice(&record).unwrap();
    let pid = record["owner_pid"].as_i64().expect("owner_pid") as i32;

    // The run's husk and, as root, its jailed child, which runs the VM.
    let family: Vec<i32> = std::iter::once(pid)
        .chain(
            husk_benches::kvm_stats::children(pid as u32)
                .into_iter()
                .map(|c| c as i32),
        )
        .collect();
    let sample = |start: Instant| Sample {
        secs: start.elapsed().as_secs_f64(),
        rss_kib: family.iter().map(|&p| vmm_rss_kib(p)).sum(),
        fds: family.iter().map(|p| count(&format!("/proc/{p}/fd"))).sum(),
        husk_procs: husk_processes(&bin),
        run_entries: count(runtime.to_str().unwrap()),
        interfaces: count("/sys/class/net"),
    };
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(minutes * 60.0);
    let mut samples = vec![sample(start)];
    let (mut rounds, mut tally) = (0usize, Tally::default());
    while Instant::now() < deadline {
        let short = [
            "run",
            "--rm",
            "--network",
            "none",
            image,
            "sh",
            "-c",
            SHORT_IO,
        ];
        husk.ok(&short, &mut tally);
        husk.ok(&["exec", &id, "sh", "-c", EXEC_IO], &mut tally);
        rounds += 1;
        samples.push(sample(start));
        if rounds % 10 == 0 {
            let s = samples.last().unwrap();
            eprintln!(
                "{:>6.0} s: {rounds} rounds, long container's husk RSS (outside guest RAM) {} KiB, {} fds",
                s.secs, s.rss_kib, s.fds
            );
        }
    }
    let (ok, _) = husk.run(&["rm", "-f", &id]);
    assert!(ok, "husk rm -f of the long container failed");
    std::thread::sleep(Duration::from_secs(1));
    let end = (
        husk_processes(&bin),
        count(runtime.to_str().unwrap()),
        count("/sys/class/net"),
    );
    std::process::exit(report(&samples, rounds, &tally, end));
}

/// Prints the figures and the verdict; the exit code.
fn report(samples: &[Sample], rounds: usize, tally: &Tally, end: (usize, usize, usize)) -> i32 {
    let first = samples[0];
    // The first fifth warms up (allocator arenas, first exec's buffers).
    let warm = &samples[samples.len() / 5..];
    let quarter = (warm.len() / 4).max(1);
    let rss = |s: &[Sample]| median(s.iter().map(|s| s.rss_kib as f64).collect());
    let (rss_early, rss_late) = (rss(&warm[..quarter]), rss(&warm[warm.len() - quarter..]));
    // An exec's connection may still be closing when a sample is taken:
    // a leak is a late quarter whose fewest fds exceed the early most.
    let early_most = warm[..quarter].iter().map(|s| s.fds).max().unwrap_or(0);
    let late_fewest = warm[warm.len() - quarter..]
        .iter()
        .map(|s| s.fds)
        .min()
        .unwrap_or(0);
    let last = *samples.last().unwrap();
    println!(
        "soak: {rounds} rounds in {:.0} s (a `husk run --rm` with 1 MiB of checked I/O and an exec into one long-lived container each)",
        last.secs
    );
    println!("| what | start | after warm-up | end |");
    println!("|---|---|---|---|");
    println!(
        "| long container's husk RSS outside guest RAM (KiB, medians of a quarter) | {} | {rss_early:.0} | {rss_late:.0} |",
        first.rss_kib
    );
    println!(
        "| its open fds (most of the early quarter, fewest of the late one) | {} | {} | {} |",
        first.fds, early_most, late_fewest
    );
    println!(
        "| husk processes / runtime entries / interfaces | {} / {} / {} | {} / {} / {} | {} / {} / {} (long one removed) |",
        first.husk_procs, first.run_entries, first.interfaces,
        warm[0].husk_procs, warm[0].run_entries, warm[0].interfaces, end.0, end.1, end.2
    );
    if tally.testbed > 0 {
        println!(
            "{} runs or execs failed the testbed's way (its nested virtualization, tests/testbed/README.md)",
            tally.testbed
        );
    }
    let mut leaks = Vec::new();
    if tally.failed > 0 {
        leaks.push(format!("{} runs or execs failed", tally.failed));
    }
    if late_fewest > early_most {
        leaks.push(format!(
            "fds grew from at most {early_most} to at least {late_fewest}"
        ));
    }
    if rss_late > rss_early + RSS_SLACK_KIB as f64 {
        leaks.push(format!("RSS grew from {rss_early:.0} to {rss_late:.0} KiB"));
    }
    // The long container and its husk are gone by now: one less of each
    // than after the warm-up, when only the long one ran.
    let base = warm[0];
    if end.0 >= base.husk_procs || end.1 >= base.run_entries || end.2 > base.interfaces {
        leaks.push(format!(
            "left behind (husk processes, runtime entries, interfaces): {end:?}, with the long container running {:?}",
            (base.husk_procs, base.run_entries, base.interfaces)
        ));
    }
    if leaks.is_empty() {
        println!("no leak");
        0
    } else {
        println!("LEAK: {}", leaks.join("; "));
        1
    }
}
