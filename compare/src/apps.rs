//! Real applications from Debian's packages, as the IBM study ran them:
//! Redis, its server in the environment, driven from the host by
//! `redis-benchmark` over the environment's network path.
//!
//! The server is Debian's `redis-tools` build (its `redis-check-rdb` is
//! the server when called `redis-server`): the host's copy for native
//! runs, and the same file with its libraries in the bench image
//! (scripts/build-guest) for crun, husk and QEMU's guest.

use crate::envs::{self, Needs, Setup, Tap};
use crate::results::Env;
use crate::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the bench image has the server.
pub const REDIS_IN_IMAGE: &str = "/usr/bin/redis-server";
/// The port the server listens on in every environment (native and crun
/// share the host's network: not Redis's default, which a host may use).
pub const REDIS_PORT: u16 = 16379;
/// What the server prints once it serves.
const REDIS_READY: &str = "Ready to accept connections";

/// The host's Redis programs.
#[derive(Debug, Clone)]
pub struct Redis {
    /// The server for native runs (a link named `redis-server`).
    pub server: PathBuf,
    pub benchmark: PathBuf,
    pub cli: PathBuf,
}

impl Redis {
    /// The host's Redis, or why there is none. `work` holds the link the
    /// server needs when only `redis-tools` is installed.
    pub fn find(work: &Path) -> Result<Redis, String> {
        let missing = |p: &str| format!("{p} is not installed (Debian: redis-tools)");
        let benchmark = envs::which("redis-benchmark").ok_or_else(|| missing("redis-benchmark"))?;
        let cli = envs::which("redis-cli").ok_or_else(|| missing("redis-cli"))?;
        let server = match envs::which("redis-server") {
            Some(p) => p,
            None => {
                let rdb = envs::which("redis-check-rdb").ok_or_else(|| missing("redis-server"))?;
                let link = work.join("redis-server");
                let _ = std::fs::remove_file(&link);
                std::os::unix::fs::symlink(&rdb, &link)
                    .map_err(|e| format!("{}: {e}", link.display()))?;
                link
            }
        };
        Ok(Redis {
            server,
            benchmark,
            cli,
        })
    }
}

/// The server's command in `env`: a config on the command line, nothing
/// saved to disk, reachable from the host.
fn redis_script(env: Env, server: &Path) -> String {
    let program = match env {
        Env::Native => server.display().to_string(),
        _ => REDIS_IN_IMAGE.to_owned(),
    };
    format!(
        "{program} --port {REDIS_PORT} --bind 0.0.0.0 --protected-mode no \
         --save \"\" --appendonly no"
    )
}

/// Redis in `env`: SET and GET requests per second and their p99
/// latencies (ms), from `redis-benchmark` on the host.
pub fn redis(
    s: &Setup,
    env: Env,
    id: &str,
    requests: u32,
    tap: Option<&Tap>,
) -> Result<[f64; 4], Error> {
    let redis = s
        .redis
        .as_ref()
        .map_err(|why| Error::NotMeasured(format!("skipped: {why}")))?;
    let addr = match (env, tap) {
        (Env::Native | Env::Crun, _) => "127.0.0.1".to_owned(),
        (_, Some(t)) => t.guest_ip.clone(),
        (_, None) => return Err(Error::Workload("no TAP for a VM's network".into())),
    };
    let needs = Needs {
        tap: tap
            .cloned()
            .filter(|_| matches!(env, Env::Husk | Env::Qemu)),
        image_root: env == Env::Qemu,
        ..Needs::default()
    };
    let script = redis_script(env, &redis.server);
    let mut server = crate::workloads::Running::start(s, env, id, &script, &needs)?;
    let ready = server.wait_line(REDIS_READY);
    let port = REDIS_PORT.to_string();
    let bench = ready.map(|_| {
        Command::new(&redis.benchmark)
            .args(["-h", &addr, "-p", &port, "-t", "set,get", "--csv", "-n"])
            .arg(requests.to_string())
            .output()
    });
    // The server's end is the environment's: stop it whatever happened.
    let _ = Command::new(&redis.cli)
        .args(["-h", &addr, "-p", &port, "shutdown", "nosave"])
        .output();
    let (_, lines) = server.finish("redis")?;
    let out = match bench {
        None => {
            let tail: Vec<&String> = lines.iter().rev().take(5).collect();
            return Err(Error::Workload(format!(
                "redis-server never said \"{REDIS_READY}\": {tail:?}"
            )));
        }
        Some(out) => out.map_err(|e| Error::Tool(format!("redis-benchmark: {e}")))?,
    };
    if !out.status.success() {
        return Err(Error::Workload(format!(
            "redis-benchmark against {addr}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    benchmark_figures(&String::from_utf8_lossy(&out.stdout))
}

/// SET and GET requests/s and p99 latencies (ms) from `redis-benchmark
/// --csv`, whose header names the columns.
pub fn benchmark_figures(csv: &str) -> Result<[f64; 4], Error> {
    let rows: Vec<Vec<String>> = csv
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            l.split(',')
                .map(|c| c.trim().trim_matches('"').to_owned())
                .collect()
        })
        .collect();
    let header = rows
        .first()
        .ok_or_else(|| Error::Workload("redis-benchmark printed nothing".into()))?;
    let column = |name: &str| {
        header
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| Error::Workload(format!("redis-benchmark: no {name} column: {csv}")))
    };
    let (rps, p99) = (column("rps")?, column("p99_latency_ms")?);
    let figure = |test: &str, col: usize| -> Result<f64, Error> {
        let row = rows
            .iter()
            .find(|r| r.first().map(String::as_str) == Some(test))
            .ok_or_else(|| Error::Workload(format!("redis-benchmark: no {test} row: {csv}")))?;
        let v = row.get(col).map(String::as_str).unwrap_or_default();
        match v.parse::<f64>() {
            Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
            _ => Err(Error::Workload(format!(
                "redis-benchmark: {test} {}={v:?} is not a positive number",
                header[col]
            ))),
        }
    };
    Ok([
        figure("SET", rps)?,
        figure("GET", rps)?,
        figure("SET", p99)?,
        figure("GET", p99)?,
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redis_benchmark_csv_gives_rates_and_p99s_by_column_name() {
        let csv = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\
            \"SET\",\"96618.36\",\"0.282\",\"0.080\",\"0.271\",\"0.407\",\"0.639\",\"1.615\"\n\
            \"GET\",\"89285.71\",\"0.290\",\"0.096\",\"0.279\",\"0.391\",\"0.495\",\"1.519\"\n";
        let f = benchmark_figures(csv).unwrap();
        assert_eq!(f, [96618.36, 89285.71, 0.639, 0.495]);
    }

    #[test]
    fn a_missing_row_or_a_zero_is_an_error_not_a_figure() {
        let header = "\"test\",\"rps\",\"p99_latency_ms\"\n";
        let only_set = format!("{header}\"SET\",\"100\",\"1.0\"\n");
        let e = benchmark_figures(&only_set).unwrap_err().to_string();
        assert!(e.contains("no GET row"), "{e}");
        let zero = format!("{header}\"SET\",\"100\",\"1.0\"\n\"GET\",\"0\",\"1.0\"\n");
        let e = benchmark_figures(&zero).unwrap_err().to_string();
        assert!(e.contains("GET rps"), "{e}");
        let e = benchmark_figures("").unwrap_err().to_string();
        assert!(e.contains("printed nothing"), "{e}");
        let e = benchmark_figures("\"test\",\"rps\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no p99_latency_ms column"), "{e}");
    }

    #[test]
    fn only_native_runs_the_hosts_server() {
        let host = Path::new("/w/redis-server");
        assert!(redis_script(Env::Native, host).starts_with("/w/redis-server --port 16379 "));
        for env in [Env::Crun, Env::Husk, Env::Qemu] {
            assert!(redis_script(env, host).starts_with(REDIS_IN_IMAGE));
        }
    }
}
