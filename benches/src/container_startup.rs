//! Container startup, end to end: `husk run --rm --network none TESTIMAGE
//! true` booting a fresh microVM per container (`HUSK_POOL=off`), the same
//! restored from the pool's template, `crun run` of the same image's root
//! filesystem on this host, and the raw guest boot (`husk boot -- true`:
//! the kernel and init without agent or container), interleaved in one run
//! (inside the testbed where /dev/kvm cannot boot Linux:
//! `benches/run container-startup`). husk's own phase marks
//! (`HUSK_TIMINGS=1`) say where its time goes, for both husk paths.
//!
//! Usage: container-startup [--runs N] [--husk PATH]

use husk_benches::kvm_stats::{self, Counters};
use husk_benches::{median, spread};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// husk's phases, in order, with what the step from the previous one is.
/// A phase a path does not have (a booted VM has no template or identity)
/// takes no time.
const PHASES: &[(&str, &str)] = &[
    ("start", "process start, argument parsing"),
    ("image_ready", "image lookup in the conversion cache"),
    (
        "template_ready",
        "pool: the template found (made by the warm-up)",
    ),
    (
        "vm_started",
        "VMM setup: KVM, memory, devices, kernel load (pool: restore)",
    ),
    (
        "agent_ready",
        "kernel boot, init, agent answers on vsock (pool: the agent answers)",
    ),
    ("identity", "pool: clock, entropy, hostname"),
    ("created", "container created (mounts, namespaces, cgroup)"),
    ("started", "container started"),
    ("exited", "process ran and exited, output drained"),
    (
        "vm_stopped",
        "the VM's end (--rm: the guest's sync, then a stop by husk)",
    ),
    ("done", "host cleanup (run dir, sockets)"),
];

/// husk's paths: booted, restored with the template's memory mapped,
/// restored with it copied (`HUSK_POOL_MEMORY`), booted without the jail
/// (`--no-jail`: what the jail of a root run costs), and restored with a
/// copy of the template's memory on hugetlbfs mapped (when the host has
/// huge pages to spare: [`huge_pages`]).
const PATHS: [(&str, Option<&str>); 5] = [
    ("booted", None),
    ("pooled", Some("map")),
    ("pooled, copied", Some("copy")),
    ("booted, --no-jail", Some("no-jail")),
    ("pooled, huge pages", Some("huge")),
];
/// `PATHS`' index of the hugetlbfs path.
const HUGE_PATH: usize = 4;
/// The 2 MiB huge pages a `husk run` of the bench takes at most on the
/// hugetlbfs path: its template's copy (its data only) and the clone's
/// reservation (256 MiB each).
const HUGE_PAGES_NEEDED: u64 = 2 * 128;
const HUGE_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

/// Whether the hugetlbfs path can run: a 2 MiB hugetlbfs mount and enough
/// free huge pages. With `reserve` (`--huge-pages N`, as root) the bench
/// makes them: it raises `vm.nr_hugepages` to N and mounts hugetlbfs in
/// `work` if none is mounted. Otherwise it changes nothing on the host.
fn huge_pages(reserve: Option<u64>, work: &Path) -> Result<(), String> {
    let read = husk_vmm::snapshot::hugetlb::count;
    let mounts = std::fs::read_to_string("/proc/self/mounts").map_err(|e| e.to_string())?;
    let mounted = husk_vmm::snapshot::hugetlb::mount_in(&mounts).is_some();
    if let Some(n) = reserve {
        if read("nr_hugepages")? < n {
            std::fs::write(format!("{HUGE_SYSFS}/nr_hugepages"), n.to_string())
                .map_err(|e| format!("vm.nr_hugepages = {n}: {e}"))?;
        }
        if !mounted {
            let dir = work.join("hugetlbfs");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let st = Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
                .arg(&dir)
                .status()
                .map_err(|e| format!("mount: {e}"))?;
            if !st.success() {
                return Err(format!("mount -t hugetlbfs on {}: {st}", dir.display()));
            }
        }
    } else if !mounted {
        return Err("no hugetlbfs with 2 MiB pages is mounted (--huge-pages N makes one)".into());
    }
    let free = husk_vmm::snapshot::hugetlb::free_pages()?;
    if free < HUGE_PAGES_NEEDED {
        return Err(format!(
            "{free} free 2 MiB huge pages, {HUGE_PAGES_NEEDED} needed (--huge-pages N reserves them)"
        ));
    }
    Ok(())
}

fn timed(cmd: &mut Command) -> (f64, String) {
    let (ms, stderr, _) = timed_counted(cmd, false);
    (ms, stderr)
}

/// [`timed`], with KVM's counters of the process's VM when `count`.
fn timed_counted(cmd: &mut Command, count: bool) -> (f64, String, Counters) {
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let watcher = count.then(|| kvm_stats::Watcher::start(child.id()));
    let out = child.wait_with_output().expect("wait for it");
    let ms = start.elapsed().as_secs_f64() * 1e3;
    let counters = watcher.map(|w| w.finish().counters).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "{:?} failed ({}): {}{stderr}",
        cmd.get_program(),
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    (ms, stderr, counters)
}

/// `husk-timings: start=0.1 image_ready=2.0 ...` → each phase's step from
/// the one before (0 for a phase the run did not have), and the last mark.
fn parse_timings(stderr: &str) -> (Vec<f64>, f64) {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("husk-timings: "))
        .unwrap_or_else(|| panic!("no husk-timings line in: {stderr}"));
    let mut prev = 0.0;
    let steps = PHASES
        .iter()
        .map(|(name, _)| {
            let at: Option<f64> = line
                .split_whitespace()
                .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
                .and_then(|v| v.parse().ok());
            let at = at.unwrap_or(prev);
            let step = at - prev;
            prev = at;
            step
        })
        .collect();
    (steps, prev)
}

/// `husk-timings-guest-create: mount_image=1.2 ...` → the agent's steps of
/// the container's creation, in order, with their times.
fn parse_guest_steps(stderr: &str) -> Vec<(String, f64)> {
    stderr
        .lines()
        .find_map(|l| l.strip_prefix("husk-timings-guest-create: "))
        .map(|line| {
            line.split_whitespace()
                .filter_map(|kv| {
                    let (k, v) = kv.split_once('=')?;
                    Some((k.to_owned(), v.parse().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// A husk path's runs: wall times, each phase's steps, and the guest's
/// steps of creating the container (by name, in first-seen order).
#[derive(Default)]
struct HuskRuns {
    wall: Vec<f64>,
    phases: Vec<Vec<f64>>,
    after_done: Vec<f64>,
    guest: Vec<(String, Vec<f64>)>,
    /// KVM's counters of each run's VM (when debugfs can be read).
    kvm: Vec<Counters>,
}

impl HuskRuns {
    fn add(&mut self, (ms, stderr, counters): (f64, String, Counters)) -> f64 {
        if !counters.is_empty() {
            self.kvm.push(counters);
        }
        let (steps, done) = parse_timings(&stderr);
        if self.phases.is_empty() {
            self.phases = vec![Vec::new(); PHASES.len()];
        }
        for (k, v) in steps.into_iter().enumerate() {
            self.phases[k].push(v);
        }
        self.after_done.push(ms - done);
        self.wall.push(ms);
        for (name, v) in parse_guest_steps(&stderr) {
            match self.guest.iter_mut().find(|(n, _)| *n == name) {
                Some((_, vs)) => vs.push(v),
                None => self.guest.push((name, vec![v])),
            }
        }
        ms
    }

    /// The median of guest step `name`, if the runs had it.
    fn guest_median(&self, name: &str) -> Option<f64> {
        self.guest
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| median(v.clone()))
    }
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
    let mut reserve = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = Some(it.next().expect("--husk PATH").clone()),
            "--huge-pages" => {
                reserve = Some(
                    it.next()
                        .and_then(|v| v.parse().ok())
                        .expect("--huge-pages N"),
                )
            }
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

    let pool = work.path().join("pool");
    let count = kvm_stats::available();
    let husk_run = |path: Option<&str>| {
        let no_jail = path == Some("no-jail");
        let pool_memory = path.filter(|_| !no_jail);
        let mut c = Command::new(&husk);
        c.args(["run", "--rm", "--network", "none"]);
        if no_jail {
            c.arg("--no-jail");
        }
        c.arg(&image)
            .arg("true")
            .env("HUSK_IMAGE_CACHE", &cache)
            .env("HUSK_RUNTIME_DIR", &runtime)
            .env("HUSK_POOL_DIR", &pool)
            .env(
                "HUSK_POOL",
                if pool_memory.is_some() { "on" } else { "off" },
            )
            .env("HUSK_POOL_MEMORY", pool_memory.unwrap_or("map"))
            .env("HUSK_TIMINGS", "1");
        timed_counted(&mut c, count)
    };
    let mut husks: Vec<HuskRuns> = PATHS.iter().map(|_| HuskRuns::default()).collect();
    let (mut c, mut b) = (vec![], vec![]);
    // The warm-ups: the first converts the image, the second makes the
    // pool's template (each timed on its own).
    let (convert_ms, _, _) = husk_run(None);
    let (template_ms, _, _) = husk_run(Some("map"));
    let huge = huge_pages(reserve, work.path());
    if let Err(why) = &huge {
        eprintln!("container-startup: the hugetlbfs path is skipped: {why}");
    }
    for i in 1..=runs {
        let walls: Vec<f64> = PATHS
            .iter()
            .zip(&mut husks)
            .enumerate()
            .filter(|(k, _)| *k != HUGE_PATH || huge.is_ok())
            .map(|(_, ((_, memory), r))| r.add(husk_run(*memory)))
            .collect();
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
        eprintln!(
            "run {i}: husk run {walls:.0?} ms (booted, pooled, pooled copied, --no-jail, huge pages), crun run {cm:.0} ms, raw boot {bm:.0} ms"
        );
        c.push(cm);
        b.push(bm);
    }
    report(&husks, &c, &b, runs, convert_ms, template_ms);
    if let Err(why) = huge {
        println!("\npooled, huge pages: not run: {why}");
    }
}

/// The tables: wall times, husk's phases, the agent's steps, KVM's
/// counters, for each husk path of `PATHS` (in `husks`), crun (`c`) and
/// the raw boot (`b`).
fn report(
    husks: &[HuskRuns],
    c: &[f64],
    b: &[f64],
    runs: usize,
    convert_ms: f64,
    template_ms: f64,
) {
    let m = |v: &[f64]| median(v.to_vec());
    let row = |name: &str, v: &[f64]| {
        let (lo, hi) = spread(v);
        println!("| {name} | {:.0} | {lo:.0}–{hi:.0} |", m(v));
    };
    println!(
        "`true` from the test image, launch → exit; {runs} interleaved runs, medians \
         (warm-ups excluded: the first husk run converted the image in {convert_ms:.0} ms, \
         the first pooled one made the template and ran in {template_ms:.0} ms)"
    );
    println!("| what | median (ms) | spread (ms) |");
    println!("|---|---|---|");
    row(
        "husk run --rm --network none IMAGE true, booted (HUSK_POOL=off)",
        &husks[0].wall,
    );
    row(
        "the same, restored from the pool's template (memory mapped)",
        &husks[1].wall,
    );
    row(
        "the same, the template's memory copied (HUSK_POOL_MEMORY=copy)",
        &husks[2].wall,
    );
    row(
        "booted, not jailed (--no-jail; the jail is the default as root)",
        &husks[3].wall,
    );
    if !husks[HUGE_PATH].wall.is_empty() {
        row(
            "the same, a copy of its memory on hugetlbfs mapped (HUSK_POOL_MEMORY=huge)",
            &husks[HUGE_PATH].wall,
        );
    }
    row("crun run (container on this host)", c);
    row("husk boot -- true (raw guest boot, no container)", b);
    let booted = m(&husks[0].wall);
    println!(
        "booted / crun: {:.1}x; pooled / crun: {:.1}x; pooled / booted: {:.2}x; copied / booted: {:.2}x; booted / raw boot: {:.2}x; jailed / --no-jail: {:.3}x",
        booted / m(c),
        m(&husks[1].wall) / m(c),
        m(&husks[1].wall) / booted,
        m(&husks[2].wall) / booted,
        booted / m(b),
        booted / m(&husks[3].wall)
    );
    let header = |first: &str| {
        let names: Vec<&str> = PATHS.iter().map(|(n, _)| *n).collect();
        println!("| {first} | {} |", names.join(" (ms) | "));
        println!("|---|{}", "---|".repeat(PATHS.len()));
    };
    println!();
    println!("Where `husk run` spends its time (medians of each step; they need not add up exactly to the total):");
    header("step (ends at)");
    for (k, (name, what)) in PHASES.iter().enumerate() {
        let cells: Vec<String> = husks
            .iter()
            .map(|r| format!("{:.1}", m(&r.phases[k])))
            .collect();
        println!("| {what} ({name}) | {} |", cells.join(" | "));
    }
    let cells: Vec<String> = husks
        .iter()
        .map(|r| format!("{:.1}", m(&r.after_done)))
        .collect();
    println!(
        "| process exit (threads, unmapping guest memory) | {} |",
        cells.join(" | ")
    );
    println!();
    println!("The container's creation in the guest, as the agent timed it (medians):");
    header("agent step");
    for (name, _) in &husks[0].guest {
        let cells: Vec<String> = husks
            .iter()
            .map(|r| {
                r.guest_median(name)
                    .map_or("–".into(), |v| format!("{v:.1}"))
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
    kvm_rows(husks);
}

/// KVM's counters for the husk paths' VMs (medians), the largest.
fn kvm_rows(husks: &[HuskRuns]) {
    if husks.iter().all(|r| r.kvm.is_empty()) {
        println!("\nKVM's counters: not readable here (debugfs)");
        return;
    }
    let all: Vec<&Counters> = husks.iter().flat_map(|r| &r.kvm).collect();
    println!("\nKVM's counters of the VM, whole run (medians):");
    let names: Vec<&str> = PATHS.iter().map(|(n, _)| *n).collect();
    println!("| counter | {} |", names.join(" | "));
    println!("|---|{}", "---|".repeat(PATHS.len()));
    for name in kvm_stats::largest(&all, 14) {
        let cells: Vec<String> = husks
            .iter()
            .map(|r| {
                let v: Vec<f64> = r
                    .kvm
                    .iter()
                    .map(|c| c.get(&name).copied().unwrap_or(0) as f64)
                    .collect();
                if v.is_empty() {
                    "–".to_string()
                } else {
                    format!("{:.0}", median(v))
                }
            })
            .collect();
        println!("| {name} | {} |", cells.join(" | "));
    }
}
