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
        "net_throughput" => format!("{} MiB", z.net_mib),
        "net_rr" => format!("median of {} round trips", z.rr_count),
        "memory_pss" => format!(
            "sum of the PSS of the instance's host processes / N, N = {}",
            z.density
        ),
        "density_ready" => format!("N = {}", z.density),
        _ => String::new(),
    }
}

/// Builds the shared setup; an environment that cannot run is skipped
/// with its reason, never silently.
fn setup(opts: &Options, work: PathBuf) -> Result<Setup, Error> {
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
        crun: envs::which("crun"),
        work,
    };
    std::fs::create_dir_all(s.work.join("native")).map_err(|e| Error::io(&s.work, e))?;
    if let Some(crun) = &s.crun {
        let dir = s.work.join("bundle");
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        s.bundle = Some(envs::make_bundle(&s.image, crun, &dir)?);
    }
    Ok(s)
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
        .filter(|e| matches!(e, Env::Husk | Env::Qemu) && !skipped.contains_key(e))
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

#[allow(clippy::too_many_arguments)]
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
    let mut samples: Samples = HashMap::new();
    let mut failures: HashMap<(&'static str, Env), String> = HashMap::new();
    let total = u64::from(opts.runs + 1) * envs.len() as u64 * 4;
    let mut done = 0;
    for run in 0..=opts.runs {
        let warm = run == 0;
        for &env in &envs {
            let id = format!("{}-{run}", env.name());
            let mut record = |keys: &[&'static str], r: Result<Vec<f64>, Error>| match r {
                Ok(vals) if !warm => {
                    for (k, v) in keys.iter().zip(vals) {
                        samples.entry((k, env)).or_default().push(v);
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    for k in keys {
                        failures.entry((k, env)).or_insert_with(|| e.to_string());
                    }
                }
            };
            progress(&format!("run {run}: {} startup", env.name()), done, total);
            record(
                &["startup_output", "startup_exit"],
                workloads::startup(s, env, &id).map(|(a, b)| vec![a, b]),
            );
            done += 1;
            progress(&format!("run {run}: {} block I/O", env.name()), done, total);
            record(
                &["seq_write", "seq_read", "rand_read", "rand_write"],
                workloads::disk(s, env, &id, z).map(|v| v.to_vec()),
            );
            done += 1;
            progress(&format!("run {run}: {} network", env.name()), done, total);
            if let Some(why) = net_skip.get(&env) {
                record(&["net_throughput", "net_rr"], Err(Error::Tool(why.clone())));
            } else {
                record(
                    &["net_throughput", "net_rr"],
                    workloads::net(s, env, &id, z, taps.get(&env)).map(|v| v.to_vec()),
                );
            }
            done += 1;
            progress(
                &format!("run {run}: {} memory and density", env.name()),
                done,
                total,
            );
            record(
                &["density_ready", "memory_pss"],
                workloads::density(s, env, &id, z, z.density).map(|(a, b)| vec![a, b]),
            );
            done += 1;
        }
    }
    progress("done", total, total);
    let mut workloads: Vec<Workload> = WORKLOADS
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
                        .or_else(|| failures.get(&(id, env)).map(|e| format!("failed: {e}")));
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
        .collect();
    if let Some(w) = overhead(&workloads) {
        workloads.push(w);
    }
    Ok(Report {
        machine: crate::machine::detect(),
        quick: opts.quick,
        runs: opts.runs,
        command: opts.command.clone(),
        workloads,
    })
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
