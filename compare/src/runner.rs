//! Runs every workload in every environment, interleaved run by run so
//! slow drifts of the machine hit all environments alike.

use crate::envs::{self, Setup, Tap};
use crate::results::{Env, EnvResult, Report, Workload};
use crate::workloads::{self, Sizes};
use crate::Error;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    /// Measured repetitions (one warm-up run comes first).
    pub runs: u32,
    pub envs: Vec<Env>,
    pub husk: PathBuf,
    /// Directory with vmlinux, rootfs.ext4, husk-bench, husk-bench-image.
    pub guest_dir: PathBuf,
    /// Firecracker for the `firecracker` environment (default: on PATH).
    pub firecracker: Option<PathBuf>,
    /// The command line, for the report.
    pub command: String,
}

/// What the progress display is told: a step name, steps done, steps total.
pub type Progress<'a> = &'a mut dyn FnMut(&str, u64, u64);

/// Workload keys with their titles, units and direction.
const WORKLOADS: &[(&str, &str, &str, bool)] = &[
    (
        "startup_output",
        "Startup: launch → first output",
        "ms",
        false,
    ),
    ("startup_exit", "Startup: launch → exit", "ms", false),
    (
        "seq_write",
        "Sequential write, O_DIRECT, 1 MiB blocks",
        "MB/s",
        true,
    ),
    (
        "seq_read",
        "Sequential read, O_DIRECT, 1 MiB blocks",
        "MB/s",
        true,
    ),
    (
        "rand_read",
        "Random 4 KiB reads, O_DIRECT, QD1",
        "IOPS",
        true,
    ),
    (
        "rand_write",
        "Random 4 KiB writes, O_DIRECT, QD1",
        "IOPS",
        true,
    ),
    (
        "net_throughput",
        "TCP throughput, instance → host",
        "MB/s",
        true,
    ),
    (
        "net_rr",
        "TCP request/response round trip (64 B)",
        "µs",
        false,
    ),
    (
        "dir_seq_write",
        "Shared directory: sequential write, O_DIRECT, 1 MiB blocks",
        "MB/s",
        true,
    ),
    (
        "dir_seq_read",
        "Shared directory: sequential read, O_DIRECT, 1 MiB blocks",
        "MB/s",
        true,
    ),
    (
        "dir_create",
        "Shared directory: file creates",
        "files/s",
        true,
    ),
    ("dir_stat", "Shared directory: stats", "files/s", true),
    ("dir_unlink", "Shared directory: unlinks", "files/s", true),
    (
        "cpu_gflops",
        "CPU: f64 matrix multiply, 1 thread",
        "GFLOPS",
        true,
    ),
    (
        "mem_copy",
        "Memory bandwidth: STREAM copy, 1 thread",
        "GB/s",
        true,
    ),
    (
        "mem_triad",
        "Memory bandwidth: STREAM triad, 1 thread",
        "GB/s",
        true,
    ),
    (
        "mem_gups",
        "Random memory access: GUPS, 1 thread",
        "Mupdates/s",
        true,
    ),
    (
        "cpu_gflops_all",
        "CPU: f64 matrix multiply, all cores",
        "GFLOPS",
        true,
    ),
    (
        "mem_triad_all",
        "Memory bandwidth: STREAM triad, all cores",
        "GB/s",
        true,
    ),
    (
        "mem_gups_all",
        "Random memory access: GUPS, all cores",
        "Mupdates/s",
        true,
    ),
    (
        "redis_set",
        "Redis: SET requests/s (redis-benchmark, 50 clients)",
        "requests/s",
        true,
    ),
    (
        "redis_get",
        "Redis: GET requests/s (redis-benchmark, 50 clients)",
        "requests/s",
        true,
    ),
    ("redis_set_p99", "Redis: SET latency, p99", "ms", false),
    ("redis_get_p99", "Redis: GET latency, p99", "ms", false),
    (
        "mysql_tps",
        "MariaDB: sysbench OLTP read-write, transactions/s",
        "transactions/s",
        true,
    ),
    (
        "mysql_p95",
        "MariaDB: sysbench OLTP read-write, p95 latency",
        "ms",
        false,
    ),
    (
        "memory_pss",
        "Host memory per instance (PSS, holding 16 MiB)",
        "MiB",
        false,
    ),
    (
        "density_ready",
        "Density: N instances started at once → all ready",
        "ms",
        false,
    ),
];

fn detail(id: &str, z: Sizes) -> String {
    match id {
        "startup_output" | "startup_exit" => {
            "`husk-bench echo-ready`: prints one line and exits".into()
        }
        "seq_write" | "seq_read" => format!("{} MiB on /work", z.seq_mib),
        "rand_read" | "rand_write" => {
            format!("{} s within a {} MiB file on /work", z.rand_secs, z.seq_mib)
        }
        "dir_seq_write" | "dir_seq_read" => format!(
            "{} MiB in a host directory at /work: native uses it, crun bind-mounts it, \
             husk and QEMU share it with virtio-fs (virtiofsd)",
            z.seq_mib
        ),
        "dir_create" | "dir_stat" | "dir_unlink" => format!(
            "`husk-bench meta`: {} empty files in the shared directory",
            z.files
        ),
        "net_throughput" => format!("{} MiB", z.net_mib),
        "net_rr" => format!("median of {} round trips", z.rr_count),
        "memory_pss" => format!(
            "sum of the PSS of the instance's host processes / N, N = {}",
            z.density
        ),
        "density_ready" => format!("N = {}", z.density),
        "cpu_gflops" => format!("`husk-bench flops`: {0}×{0} matrices, blocked", z.flops_n),
        "cpu_gflops_all" | "mem_triad_all" | "mem_gups_all" => format!(
            "as the one-thread row, with a thread per CPU; the VMs get a vCPU per host core ({})",
            host_cores()
        ),
        "mem_copy" | "mem_triad" => format!(
            "`husk-bench stream`: three arrays of {} MiB, best of 5 passes",
            z.stream_mib
        ),
        "redis_set" | "redis_get" | "redis_set_p99" | "redis_get_p99" => format!(
            "Debian's redis-server in the environment (native: the host's; the others: \
             the bench image's copy), `redis-benchmark -t set,get -n {}` from the host \
             over the environment's network path (native and crun: loopback; husk and \
             QEMU: a TAP)",
            z.redis_requests
        ),
        "mysql_tps" | "mysql_p95" => format!(
            "Debian's mariadbd in the environment (native: the host's; the others: the \
             applications' image), a fresh database, `sysbench oltp_read_write` from the \
             host: one table of {} rows, {} threads, {} s, over the same network paths as Redis",
            z.oltp.rows, z.oltp.threads, z.oltp.secs
        ),
        "mem_gups" => format!(
            "`husk-bench gups`: {} updates of a {} MiB table",
            z.gups_updates, z.gups_mib
        ),
        _ => String::new(),
    }
}

/// The host's cores (what its scheduler gives this process): the threads
/// of the all-cores runs, and the VMs' vCPUs there.
fn host_cores() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// Builds the shared setup; an environment that cannot run is skipped
/// with its reason, never silently.
pub fn setup(opts: &Options, work: PathBuf) -> Result<Setup, Error> {
    let need = |name: &str| {
        let p = opts.guest_dir.join(name);
        if p.exists() {
            Ok(p)
        } else {
            Err(Error::Tool(format!(
                "{} is missing (scripts/build-guest builds it)",
                p.display()
            )))
        }
    };
    let mut s = Setup {
        husk: opts.husk.clone(),
        tool: need("husk-bench")?,
        image: need("husk-bench-image")?,
        bundle: None,
        kernel: need("vmlinux")?,
        rootfs: need("rootfs.ext4")?,
        qemu: envs::which("qemu-system-x86_64"),
        firecracker: opts
            .firecracker
            .clone()
            .or_else(|| envs::which("firecracker")),
        crun: envs::which("crun"),
        virtiofsd: envs::find_virtiofsd(),
        apps: Err(String::new()),
        redis: crate::apps::Redis::find(&work),
        mariadb: crate::apps::MariaDb::find(&work),
        work,
    };
    std::fs::create_dir_all(s.work.join("native")).map_err(|e| Error::io(&s.work, e))?;
    s.apps = match need(APPS_IMAGE) {
        Ok(image) => Ok(apps_setup(opts, &s, image)?),
        Err(e) => Err(e.to_string()),
    };
    // Only for a run with crun in it: `crun spec` needs cgroup2 mounted,
    // which the run mounts only then.
    if let (Some(crun), true) = (&s.crun, opts.envs.contains(&Env::Crun)) {
        let dir = s.work.join("bundle");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        s.bundle = Some(envs::make_bundle(&s.image, crun, &dir)?);
    }
    Ok(s)
}

/// The applications' image in the guest directory.
const APPS_IMAGE: &str = "husk-apps-image";

/// The applications' image as the environments of this run take it: a
/// crun bundle, a disk for QEMU's guest.
fn apps_setup(opts: &Options, s: &Setup, image: PathBuf) -> Result<envs::Apps, Error> {
    let mut apps = envs::Apps {
        image,
        bundle: None,
        disk: None,
    };
    if let (Some(crun), true) = (&s.crun, opts.envs.contains(&Env::Crun)) {
        let dir = s.work.join("apps-bundle");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        apps.bundle = Some(envs::make_bundle(&apps.image, crun, &dir)?);
    }
    let peer = |env, found: bool| found && opts.envs.contains(&env);
    if peer(Env::Qemu, s.qemu.is_some()) || peer(Env::Firecracker, s.firecracker.is_some()) {
        let disk = s.work.join("apps.ext4");
        envs::make_image_disk(&apps.image, &disk)?;
        apps.disk = Some(disk);
    }
    Ok(apps)
}

/// crun needs cgroup2 at /sys/fs/cgroup; a bare (testbed) system has none.
pub fn ensure_cgroup2() {
    let mounted = std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split_whitespace().nth(1) == Some("/sys/fs/cgroup"));
    if !mounted {
        let _ = std::process::Command::new("mount")
            .args(["-t", "cgroup2", "none", "/sys/fs/cgroup"])
            .status();
    }
}

pub fn run(opts: &Options, progress: Progress) -> Result<Report, Error> {
    let z = if opts.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    let work = tempdir()?;
    let result = run_in(opts, z, &work, progress);
    let _ = std::fs::remove_dir_all(&work);
    result
}

fn tempdir() -> Result<PathBuf, Error> {
    // /var/tmp, not /tmp: the disk workloads need a filesystem that takes
    // O_DIRECT, and /tmp is often a tmpfs (which before Linux 6.6 does not).
    let base = std::env::var_os("HUSK_COMPARE_WORK")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let dir = base.join(format!("husk-compare-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    Ok(dir)
}

fn run_in(
    opts: &Options,
    z: Sizes,
    work: &std::path::Path,
    progress: Progress,
) -> Result<Report, Error> {
    if opts.envs.contains(&Env::Crun) {
        ensure_cgroup2();
    }
    let s = setup(opts, work.to_owned())?;
    let mut skipped: HashMap<Env, String> = HashMap::new();
    for &env in &opts.envs {
        if let Some(why) = envs::unavailable(&s, env) {
            skipped.insert(env, why);
        }
    }
    let vm_envs: Vec<Env> = opts
        .envs
        .iter()
        .copied()
        .filter(|e| e.is_vm() && !skipped.contains_key(e))
        .collect();
    let mut taps: HashMap<Env, Tap> = HashMap::new();
    let mut net_skip: HashMap<Env, String> = HashMap::new();
    for (i, &env) in vm_envs.iter().enumerate() {
        match Tap::create(&format!("husk-cmp{i}"), 60 + i as u8) {
            Ok(t) => {
                taps.insert(env, t);
            }
            Err(e) => {
                net_skip.insert(env, format!("no TAP: {e}"));
            }
        }
    }
    let result = measure(opts, z, &s, &skipped, &taps, &net_skip, progress);
    for t in taps.values() {
        t.remove();
    }
    result
}

type Samples = HashMap<(&'static str, Env), Vec<f64>>;
/// Why an environment has no figures for a workload key.
type Failures = HashMap<(&'static str, Env), String>;

/// One launch per environment and run: what it is called in the progress
/// display and which workload keys its figures are, in order.
const STEPS: &[(&str, &[&str])] = &[
    ("startup", &["startup_output", "startup_exit"]),
    (
        "block I/O",
        &["seq_write", "seq_read", "rand_read", "rand_write"],
    ),
    (
        "shared directory",
        &[
            "dir_seq_write",
            "dir_seq_read",
            "dir_create",
            "dir_stat",
            "dir_unlink",
        ],
    ),
    ("network", &["net_throughput", "net_rr"]),
    (
        "CPU and memory",
        &["cpu_gflops", "mem_copy", "mem_triad", "mem_gups"],
    ),
    (
        "CPU and memory, all cores",
        &["cpu_gflops_all", "mem_triad_all", "mem_gups_all"],
    ),
    (
        "Redis",
        &["redis_set", "redis_get", "redis_set_p99", "redis_get_p99"],
    ),
    ("MariaDB", &["mysql_tps", "mysql_p95"]),
    ("memory and density", &["density_ready", "memory_pss"]),
];

/// Where the VMs' networks are, or why there is none.
struct Nets<'a> {
    taps: &'a HashMap<Env, Tap>,
    skip: &'a HashMap<Env, String>,
}

/// Runs step `i` of [`STEPS`] once: its figures in the order of its keys.
fn step(i: usize, s: &Setup, env: Env, id: &str, z: Sizes, nets: &Nets) -> Result<Vec<f64>, Error> {
    match i {
        0 => workloads::startup(s, env, id).map(|(a, b)| vec![a, b]),
        1 => workloads::disk(s, env, id, z).map(|v| v.to_vec()),
        2 => workloads::shared_dir(s, env, id, z, workloads::Backing::Dir).map(|v| v.to_vec()),
        3 => match nets.skip.get(&env) {
            Some(why) => Err(Error::Tool(why.clone())),
            None => workloads::net(s, env, id, z, nets.taps.get(&env)).map(|v| v.to_vec()),
        },
        4 => workloads::compute(s, env, id, z).map(|v| v.to_vec()),
        5 => workloads::compute_all(s, env, id, z, host_cores()).map(|v| v.to_vec()),
        6 => match nets.skip.get(&env) {
            Some(why) => Err(Error::Tool(why.clone())),
            None => crate::apps::redis(s, env, id, z.redis_requests, nets.taps.get(&env))
                .map(|v| v.to_vec()),
        },
        7 => match nets.skip.get(&env) {
            Some(why) => Err(Error::Tool(why.clone())),
            None => {
                crate::apps::mariadb(s, env, id, z.oltp, nets.taps.get(&env)).map(|v| v.to_vec())
            }
        },
        _ => workloads::density(s, env, id, z, z.density).map(|(a, b)| vec![a, b]),
    }
}

/// Files a step's outcome: figures as samples (unless warming up), an
/// error as the reason its keys have none.
fn record(
    (samples, failures): (&mut Samples, &mut Failures),
    keys: &[&'static str],
    env: Env,
    warm: bool,
    r: Result<Vec<f64>, Error>,
) {
    match r {
        Ok(vals) if !warm => {
            for (k, v) in keys.iter().zip(vals) {
                samples.entry((k, env)).or_default().push(v);
            }
        }
        Ok(_) => {}
        Err(e) => {
            let why = match e {
                Error::NotMeasured(why) => why,
                e => format!("failed: {e}"),
            };
            for k in keys {
                failures.entry((k, env)).or_insert_with(|| why.clone());
            }
        }
    }
}

fn measure(
    opts: &Options,
    z: Sizes,
    s: &Setup,
    skipped: &HashMap<Env, String>,
    taps: &HashMap<Env, Tap>,
    net_skip: &HashMap<Env, String>,
    progress: Progress,
) -> Result<Report, Error> {
    let envs: Vec<Env> = opts
        .envs
        .iter()
        .copied()
        .filter(|e| !skipped.contains_key(e))
        .collect();
    let nets = Nets {
        taps,
        skip: net_skip,
    };
    let mut samples: Samples = HashMap::new();
    let mut failures: Failures = HashMap::new();
    let total = u64::from(opts.runs + 1) * (envs.len() * STEPS.len()) as u64;
    let mut done = 0;
    for run in 0..=opts.runs {
        for &env in &envs {
            let id = format!("{}-{run}", env.name());
            for (i, (label, keys)) in STEPS.iter().enumerate() {
                progress(&format!("run {run}: {} {label}", env.name()), done, total);
                let r = step(i, s, env, &id, z, &nets);
                record((&mut samples, &mut failures), keys, env, run == 0, r);
                done += 1;
            }
        }
    }
    progress("done", total, total);
    let mut workloads = collect(opts, z, skipped, samples, &failures);
    if let Some(w) = overhead(&workloads) {
        workloads.push(w);
    }
    Ok(Report {
        machine: crate::machine::detect(),
        quick: opts.quick,
        runs: opts.runs,
        command: opts.command.clone(),
        // `husk run`'s own rule: on with HUSK_POOL=on.
        husk_pool: std::env::var("HUSK_POOL").as_deref() == Ok("on"),
        workloads,
    })
}

/// Every workload of [`WORKLOADS`] with each environment's samples, or
/// the reason it has none.
fn collect(
    opts: &Options,
    z: Sizes,
    skipped: &HashMap<Env, String>,
    mut samples: Samples,
    failures: &Failures,
) -> Vec<Workload> {
    WORKLOADS
        .iter()
        .map(|&(id, title, unit, higher)| Workload {
            id: id.into(),
            title: title.into(),
            unit: unit.into(),
            higher_is_better: higher,
            detail: detail(id, z),
            results: opts
                .envs
                .iter()
                .map(|&env| {
                    let got = samples.remove(&(id, env)).unwrap_or_default();
                    let why = skipped
                        .get(&env)
                        .cloned()
                        .or_else(|| failures.get(&(id, env)).cloned());
                    EnvResult {
                        env,
                        skipped: if got.is_empty() {
                            Some(why.unwrap_or_else(|| "no samples".into()))
                        } else {
                            None
                        },
                        samples: got,
                    }
                })
                .collect(),
        })
        .collect()
}

/// Memory overhead: each instance's PSS minus native's median, the
/// workload's own memory; what the isolation costs. Absent without a
/// native figure to subtract.
fn overhead(workloads: &[Workload]) -> Option<Workload> {
    let pss = workloads.iter().find(|w| w.id == "memory_pss")?;
    let native = pss.result(Env::Native)?.median()?;
    let results = pss
        .results
        .iter()
        .filter(|r| r.env != Env::Native)
        // A thin runtime can come out at or just below native (its own
        // pages shared with the host's): reported as measured.
        .map(|r| EnvResult {
            env: r.env,
            skipped: r.skipped.clone(),
            samples: r.samples.iter().map(|v| v - native).collect(),
        })
        .collect();
    Some(Workload {
        id: "memory_overhead".into(),
        title: "Memory overhead per instance (PSS minus native's)".into(),
        unit: "MiB".into(),
        higher_is_better: false,
        detail: format!("memory_pss minus native's median ({native:.1} MiB)"),
        results,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pss(env: Env, v: &[f64]) -> EnvResult {
        EnvResult {
            env,
            samples: v.to_vec(),
            skipped: None,
        }
    }

    #[test]
    fn every_step_key_is_a_workload_and_every_workload_a_step_key() {
        let mut from_steps: Vec<&str> = STEPS.iter().flat_map(|(_, k)| k.iter().copied()).collect();
        let mut workloads: Vec<&str> = WORKLOADS.iter().map(|w| w.0).collect();
        from_steps.sort_unstable();
        workloads.sort_unstable();
        assert_eq!(from_steps, workloads);
    }

    #[test]
    fn a_workload_an_environment_does_not_run_is_not_a_failure() {
        let (mut samples, mut failures) = (Samples::new(), Failures::new());
        let keys = &["dir_stat"];
        let r = Err(Error::NotMeasured("not measured: no virtio-fs".into()));
        record((&mut samples, &mut failures), keys, Env::Qemu, false, r);
        let r = Err(Error::Workload("no op=meta".into()));
        record((&mut samples, &mut failures), keys, Env::Husk, false, r);
        record(
            (&mut samples, &mut failures),
            keys,
            Env::Crun,
            true,
            Ok(vec![1.0]),
        );
        record(
            (&mut samples, &mut failures),
            keys,
            Env::Crun,
            false,
            Ok(vec![2.0]),
        );
        assert_eq!(
            failures[&("dir_stat", Env::Qemu)],
            "not measured: no virtio-fs"
        );
        assert_eq!(failures[&("dir_stat", Env::Husk)], "failed: no op=meta");
        assert_eq!(samples[&("dir_stat", Env::Crun)], vec![2.0]);
    }

    #[test]
    fn overhead_subtracts_natives_median() {
        let w = Workload {
            id: "memory_pss".into(),
            title: String::new(),
            unit: "MiB".into(),
            higher_is_better: false,
            detail: String::new(),
            results: vec![
                pss(Env::Native, &[16.0, 17.0, 18.0]),
                pss(Env::Husk, &[60.0, 62.0]),
                pss(Env::Crun, &[16.5]),
            ],
        };
        let o = overhead(&[w]).unwrap();
        assert_eq!(o.result(Env::Husk).unwrap().samples, vec![43.0, 45.0]);
        assert!(o.result(Env::Native).is_none());
        assert_eq!(o.result(Env::Crun).unwrap().samples, vec![-0.5]);
    }
}
