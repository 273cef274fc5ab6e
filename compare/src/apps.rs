//! Real applications from Debian's packages, as the IBM study ran them:
//! Redis, its server in the environment, driven from the host by
//! `redis-benchmark`; MariaDB, its server in the environment, driven from
//! the host by `sysbench`'s OLTP read-write; both over the environment's
//! network path.
//!
//! The server is Debian's `redis-tools` build (its `redis-check-rdb` is
//! the server when called `redis-server`): the host's copy for native
//! runs, and the same file with its libraries in the applications' image
//! (scripts/build-guest) for crun, husk and QEMU's guest.

use crate::envs::{self, Needs, Setup, Tap};
use crate::results::Env;
use crate::Error;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

/// The host's MariaDB programs: the server for native runs, and sysbench.
#[derive(Debug, Clone)]
pub struct MariaDb {
    pub server: PathBuf,
    pub sysbench: PathBuf,
    /// A sysbench script that asks the server to shut down.
    pub shutdown: PathBuf,
}

/// Where the applications' image has the server.
pub const MARIADB_IN_IMAGE: &str = "/usr/sbin/mariadbd";
/// The port it listens on everywhere (not MySQL's, which a host may use).
pub const MARIADB_PORT: u16 = 13306;
/// What the server prints once it serves.
const MARIADB_READY: &str = "ready for connections";
/// sysbench's Lua for a shutdown: one connection, one statement.
const SHUTDOWN_LUA: &str = "function thread_init()\n  \
    sysbench.sql.driver():connect():query(\"SHUTDOWN\")\nend\nfunction event() end\n";

impl MariaDb {
    /// The host's server and sysbench, or why not; `work` takes the
    /// shutdown script.
    pub fn find(work: &Path) -> Result<MariaDb, String> {
        let sysbench =
            envs::which("sysbench").ok_or("sysbench is not installed (Debian: sysbench)")?;
        let server = envs::which("mariadbd")
            .or_else(|| Some(PathBuf::from(MARIADB_IN_IMAGE)).filter(|p| p.is_file()))
            .ok_or("mariadbd is not installed (Debian: mariadb-server-core)")?;
        let shutdown = work.join("shutdown.lua");
        std::fs::write(&shutdown, SHUTDOWN_LUA)
            .map_err(|e| format!("{}: {e}", shutdown.display()))?;
        Ok(MariaDb {
            server,
            sysbench,
            shutdown,
        })
    }
}

/// sysbench's OLTP read-write: the table's rows, the seconds it runs,
/// its client threads.
#[derive(Debug, Clone, Copy)]
pub struct Oltp {
    pub rows: u32,
    pub secs: u32,
    pub threads: u32,
}

/// The server's command in `env`: a fresh data directory (an empty
/// `sbtest` database is a directory), no grant tables (sysbench connects
/// as root over TCP, with no password), a buffer pool that fits a 256 MiB
/// guest; its log (stderr) on stdout, where the ready line is looked for.
fn mariadb_script(env: Env, server: &Path, native_dir: &Path) -> String {
    let (program, dir) = match env {
        Env::Native => (
            server.display().to_string(),
            native_dir.display().to_string(),
        ),
        _ => (MARIADB_IN_IMAGE.to_owned(), "/tmp/husk-db".to_owned()),
    };
    format!(
        "rm -rf {dir} && mkdir -p {dir}/sbtest && exec {program} --no-defaults \
         --datadir={dir} --socket={dir}/sock --pid-file={dir}/pid --user=root \
         --lc-messages-dir=/usr/share/mysql --character-sets-dir=/usr/share/mysql/charsets \
         --skip-grant-tables --port={MARIADB_PORT} --bind-address=0.0.0.0 \
         --innodb-buffer-pool-size=32M --innodb-log-file-size=16M 2>&1"
    )
}

/// MariaDB in `env`: sysbench OLTP read-write transactions/s and their
/// p95 latency (ms), sysbench on the host.
pub fn mariadb(
    s: &Setup,
    env: Env,
    id: &str,
    oltp: Oltp,
    tap: Option<&Tap>,
) -> Result<[f64; 2], Error> {
    let db = installed(&s.mariadb)?;
    let script = mariadb_script(env, &db.server, &s.work.join(format!("db-{id}")));
    let server = Server::start(s, (env, id, tap), &script, MARIADB_READY)?;
    let sysbench = |args: &[&str]| {
        let mut c = Command::new(&db.sysbench);
        c.args(args)
            .args([
                "--db-driver=mysql",
                "--mysql-user=root",
                "--mysql-db=sbtest",
            ])
            .arg(format!("--mysql-host={}", server.addr))
            .arg(format!("--mysql-port={MARIADB_PORT}"));
        c
    };
    let rows = format!("--table-size={}", oltp.rows);
    let oltp_args = ["oltp_read_write", "--tables=1", &rows];
    let (time, threads) = (
        format!("--time={}", oltp.secs),
        format!("--threads={}", oltp.threads),
    );
    let run = server.ready.then(|| {
        match tool_run(
            "sysbench prepare",
            sysbench(&[&oltp_args[..], &["prepare"]].concat()),
        )? {
            Tool::Done(_) => tool_run(
                "sysbench run",
                sysbench(&[&oltp_args[..], &[&time, &threads, "run"]].concat()),
            ),
            stalled => Ok(stalled),
        }
    });
    if let Some(Ok(Tool::Stalled(what))) = run {
        return Err(server.stalled(what, env));
    }
    // The server's end is the environment's: stop it whatever happened.
    let shutdown = db.shutdown.display().to_string();
    let _ = bounded(sysbench(&[&shutdown, "--events=1", "run"]));
    server.finish("mariadb", MARIADB_READY)?;
    match run {
        Some(Ok(Tool::Done(report))) => oltp_figures(&report),
        Some(Err(e)) => Err(e),
        _ => Err(Error::Workload("mariadb: no figures".into())),
    }
}

/// What a host tool run against a ready server came to.
enum Tool {
    /// It ended well: its stdout.
    Done(String),
    /// It got no answer in [`TOOL_LIMIT`] (named) and was killed.
    Stalled(&'static str),
}

/// Runs a host tool against a server, bounded; its failure is an error.
fn tool_run(what: &'static str, cmd: Command) -> Result<Tool, Error> {
    match bounded(cmd) {
        Err(e) => Err(Error::Tool(format!("{what}: {e}"))),
        Ok(None) => Ok(Tool::Stalled(what)),
        Ok(Some(out)) => checked(what, Ok(out)).map(Tool::Done),
    }
}

/// A server in an environment, from the applications' image, and where
/// the host reaches it.
struct Server {
    running: crate::workloads::Running,
    addr: String,
    /// It printed its ready line.
    ready: bool,
}

impl Server {
    /// Launches `script` and waits for `ready_line`.
    fn start(
        s: &Setup,
        (env, id, tap): (Env, &str, Option<&Tap>),
        script: &str,
        ready_line: &str,
    ) -> Result<Server, Error> {
        s.apps()?;
        let addr = server_addr(env, tap)?;
        let needs = Needs {
            tap: tap.cloned().filter(|_| env.is_vm()),
            apps: true,
            ..Needs::default()
        };
        let mut running = crate::workloads::Running::start(s, env, id, script, &needs)?;
        let ready = running.wait_line(ready_line).is_some();
        Ok(Server {
            running,
            addr,
            ready,
        })
    }

    /// Ends a server the host tool `what` got no answer from, with husk's
    /// report of the VM (its vCPUs, its device queues) in the error.
    fn stalled(self, what: &str, env: Env) -> Error {
        let report = (env == Env::Husk).then_some(husk_vmm::REPORT_SIGNAL);
        self.running.abort(
            &format!("{what} got no answer from the server in {TOOL_LIMIT:?}"),
            report,
        )
    }

    /// Waits for its end (the host has asked it to stop): an error if it
    /// failed, or never printed `ready_line`.
    fn finish(self, what: &str, ready_line: &str) -> Result<(), Error> {
        let (_, lines) = self.running.finish(what)?;
        if self.ready {
            return Ok(());
        }
        let tail: Vec<&String> = lines.iter().rev().take(5).collect();
        Err(Error::Workload(format!(
            "{what} never said \"{ready_line}\": {tail:?}"
        )))
    }
}

/// A host program found, or the workload skipped with why not.
fn installed<T>(found: &Result<T, String>) -> Result<&T, Error> {
    found
        .as_ref()
        .map_err(|why| Error::NotMeasured(format!("skipped: {why}")))
}

/// How long a host tool may take against a server: the quick sizes take
/// seconds, the full ones under a minute, even nested.
const TOOL_LIMIT: Duration = Duration::from_secs(240);

/// Runs `cmd` to its end, or for [`TOOL_LIMIT`]: a tool that waits on a
/// server that stopped answering would wait for ever. Its output, or
/// `None` when it ran out of time (killed).
fn bounded(mut cmd: Command) -> std::io::Result<Option<std::process::Output>> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut v);
            }
            v
        })
    };
    let stdout = drain(out.map(|o| Box::new(o) as Box<dyn Read + Send>));
    let stderr = drain(err.map(|e| Box::new(e) as Box<dyn Read + Send>));
    let deadline = Instant::now() + TOOL_LIMIT;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (stdout, stderr) = (
        stdout.join().unwrap_or_default(),
        stderr.join().unwrap_or_default(),
    );
    Ok(status.map(|status| std::process::Output {
        status,
        stdout,
        stderr,
    }))
}

/// A host tool's stdout when it ran and succeeded; else an error with its
/// stderr.
fn checked(what: &str, out: std::io::Result<std::process::Output>) -> Result<String, Error> {
    let out = out.map_err(|e| Error::Tool(format!("{what}: {e}")))?;
    if !out.status.success() {
        // One line: what it said on both streams.
        let said: Vec<String> = [&out.stderr, &out.stdout]
            .iter()
            .flat_map(|b| {
                String::from_utf8_lossy(b)
                    .lines()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
            .filter(|l| !l.trim().is_empty())
            .collect();
        return Err(Error::Workload(format!(
            "{what}: {}: {}",
            out.status,
            said.join(" | ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Transactions per second and the 95th percentile latency (ms) from
/// sysbench's report.
pub fn oltp_figures(report: &str) -> Result<[f64; 2], Error> {
    let after = |label: &str| {
        report
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(label))
            .map(str::trim)
            .ok_or_else(|| Error::Workload(format!("sysbench: no \"{label}\" line: {report}")))
    };
    // "transactions:   4734   (945.59 per sec.)"
    let tps = after("transactions:")?
        .split_once('(')
        .and_then(|(_, r)| r.split_whitespace().next())
        .unwrap_or_default()
        .to_owned();
    let p95 = after("95th percentile:")?.to_owned();
    let positive = |what: &str, v: &str| match v.parse::<f64>() {
        Ok(x) if x.is_finite() && x > 0.0 => Ok(x),
        _ => Err(Error::Workload(format!(
            "sysbench: {what} {v:?} is not a positive number"
        ))),
    };
    Ok([positive("transactions/s", &tps)?, positive("p95", &p95)?])
}

/// Where the host reaches a server in `env`.
fn server_addr(env: Env, tap: Option<&Tap>) -> Result<String, Error> {
    match (env, tap) {
        (Env::Native | Env::Crun, _) => Ok("127.0.0.1".to_owned()),
        (_, Some(t)) => Ok(t.guest_ip.clone()),
        (_, None) => Err(Error::Workload("no TAP for a VM's network".into())),
    }
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
    let redis = installed(&s.redis)?;
    let script = redis_script(env, &redis.server);
    let server = Server::start(s, (env, id, tap), &script, REDIS_READY)?;
    let (addr, port) = (server.addr.clone(), REDIS_PORT.to_string());
    let redis_command = |args: &[&str]| {
        let mut c = Command::new(args[0]);
        c.args(["-h", &addr, "-p", &port]).args(&args[1..]);
        c
    };
    let (benchmark, cli) = (
        redis.benchmark.to_string_lossy(),
        redis.cli.to_string_lossy(),
    );
    let requests = requests.to_string();
    let bench = server.ready.then(|| {
        tool_run(
            "redis-benchmark",
            redis_command(&[&benchmark, "-t", "set,get", "--csv", "-n", &requests]),
        )
    });
    if let Some(Ok(Tool::Stalled(what))) = bench {
        return Err(server.stalled(what, env));
    }
    // The server's end is the environment's: stop it whatever happened.
    let _ = bounded(redis_command(&[&cli, "shutdown", "nosave"]));
    server.finish("redis-server", REDIS_READY)?;
    match bench {
        Some(Ok(Tool::Done(csv))) => benchmark_figures(&csv),
        Some(Err(e)) => Err(e),
        _ => Err(Error::Workload("redis: no figures".into())),
    }
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
    fn sysbench_reports_give_transactions_per_second_and_p95() {
        let report =
            "SQL statistics:\n    transactions:                        4734   (945.59 per sec.)\n\
            \x20   queries:                             95389  (19053.49 per sec.)\n\
            Latency (ms):\n         min:                                    0.73\n\
            \x20        95th percentile:                       10.27\n";
        assert_eq!(oltp_figures(report).unwrap(), [945.59, 10.27]);
        let e = oltp_figures("transactions: 0 (0.00 per sec.)\n95th percentile: 1.0\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("transactions/s"), "{e}");
        let e = oltp_figures("nothing\n").unwrap_err().to_string();
        assert!(e.contains("no \"transactions:\" line"), "{e}");
    }

    #[test]
    fn the_database_starts_empty_in_a_fresh_directory() {
        let native = mariadb_script(
            Env::Native,
            Path::new("/usr/sbin/mariadbd"),
            Path::new("/w/db-native-0"),
        );
        assert!(native.starts_with("rm -rf /w/db-native-0 && mkdir -p /w/db-native-0/sbtest && exec /usr/sbin/mariadbd --no-defaults "), "{native}");
        let vm = mariadb_script(Env::Husk, Path::new("/x"), Path::new("/w/db"));
        assert!(vm.contains("--datadir=/tmp/husk-db "), "{vm}");
        assert!(vm.contains(&format!("--port={MARIADB_PORT} ")), "{vm}");
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
