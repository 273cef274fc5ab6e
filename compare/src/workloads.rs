//! The workloads: each launches husk-bench scripts in an environment and
//! turns what they print (and what the host sees of them) into samples.

use crate::envs::{self, Needs, Setup, Tap, TOOL_IN_IMAGE};
use crate::results::Env;
use crate::Error;
use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Sizes and durations; `quick` keeps CI under two minutes.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    pub seq_mib: u64,
    pub rand_secs: f64,
    pub net_mib: u64,
    pub rr_count: u32,
    pub hold_mib: u64,
    pub density: usize,
    /// Files `meta` creates, stats and unlinks in a shared directory.
    pub files: u64,
    /// The matrices' order for `flops`.
    pub flops_n: u64,
    /// Each of STREAM's three arrays (the guest has 256 MiB).
    pub stream_mib: u64,
    /// GUPS's table and its updates.
    pub gups_mib: u64,
    pub gups_updates: u64,
    /// Requests of each kind `redis-benchmark` sends (50 clients).
    pub redis_requests: u32,
    /// sysbench's OLTP read-write against MariaDB.
    pub oltp: crate::apps::Oltp,
}

impl Sizes {
    pub fn full() -> Sizes {
        Sizes {
            seq_mib: 256,
            rand_secs: 5.0,
            net_mib: 64,
            rr_count: 2000,
            hold_mib: 16,
            density: 4,
            files: if nested() { NESTED_FILES } else { 10_000 },
            flops_n: 512,
            stream_mib: 32,
            gups_mib: 64,
            gups_updates: 1 << 24,
            redis_requests: 20_000,
            oltp: crate::apps::Oltp {
                rows: 10_000,
                secs: 30,
                threads: 4,
            },
        }
    }

    pub fn quick() -> Sizes {
        Sizes {
            seq_mib: 32,
            rand_secs: 0.5,
            net_mib: 8,
            rr_count: 200,
            hold_mib: 16,
            density: 2,
            files: 100,
            flops_n: 128,
            stream_mib: 8,
            gups_mib: 8,
            gups_updates: 2_000_000,
            redis_requests: 2_000,
            oltp: crate::apps::Oltp {
                rows: 1_000,
                secs: 5,
                threads: 4,
            },
        }
    }
}

/// Files for `meta` when this host is itself a VM: in the nested testbed,
/// L1's kernel crashed after a few thousand FUSE requests (once after
/// ~7,000 creates, once within 2,000: see tests/e2e/fs.rs), and the
/// request rate is bound by exits there anyway.
pub const NESTED_FILES: u64 = 300;

/// Whether this host is a VM (the CPU's `hypervisor` flag).
fn nested() -> bool {
    crate::machine::detect().nested
}

/// A launched instance's output as it comes, line by line.
pub(crate) struct Running {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
    err: std::thread::JoinHandle<String>,
    start: Instant,
    /// QEMU exits 0 whatever the guest's command did: the status is the
    /// guest init's console line, which must be there.
    status_on_console: bool,
}

/// Deadline for any one launch: a nested VM boot is seconds, I/O in it
/// can be slow, nothing should take minutes.
const LAUNCH_TIMEOUT: Duration = Duration::from_secs(240);

impl Running {
    pub(crate) fn start(
        s: &Setup,
        env: Env,
        id: &str,
        script: &str,
        needs: &Needs,
    ) -> Result<Running, Error> {
        let start = Instant::now();
        let mut child = envs::launch(s, env, id, script, needs)?;
        let (tx, lines) = mpsc::channel();
        let out = child.stdout.take().expect("piped");
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(l) = line else { return };
                if tx.send(l.replace('\r', "")).is_err() {
                    return;
                }
            }
        });
        let mut err = child.stderr.take().expect("piped");
        let err = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Ok(Running {
            child,
            lines,
            seen: Vec::new(),
            err,
            start,
            status_on_console: env.boots_the_guest(),
        })
    }

    /// Waits for a line containing `needle`; the time since launch.
    pub(crate) fn wait_line(&mut self, needle: &str) -> Option<Duration> {
        let deadline = self.start + LAUNCH_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.lines.recv_timeout(left).ok()?;
            let hit = l.contains(needle);
            self.seen.push(l);
            if hit {
                return Some(self.start.elapsed());
            }
        }
    }

    /// Waits for the exit; the time since launch and every output line.
    pub(crate) fn finish(mut self, what: &str) -> Result<(Duration, Vec<String>), Error> {
        let deadline = self.start + LAUNCH_TIMEOUT;
        let status = loop {
            if let Some(st) = self
                .child
                .try_wait()
                .map_err(|e| Error::Tool(e.to_string()))?
            {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                return Err(Error::Workload(format!(
                    "{what}: no exit after {LAUNCH_TIMEOUT:?}"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        let took = self.start.elapsed();
        // The reader ends at EOF, which follows the exit.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(l);
        }
        let stderr = self.err.join().unwrap_or_default();
        if !status.success() {
            let tail: Vec<&String> = self.seen.iter().rev().take(5).collect();
            // husk says what failed on its first line, logs how the VM
            // ended in between (a triple fault, a reset) and ends with the
            // guest console's tail: all of it, or the cause is lost.
            return Err(Error::Workload(format!(
                "{what}: exited with {status}: {} {tail:?}",
                said(&stderr)
            )));
        }
        if self.status_on_console {
            match console_status(&self.seen) {
                Some(0) => {}
                Some(n) => {
                    let tail: Vec<&String> = self.seen.iter().rev().take(5).collect();
                    return Err(Error::Workload(format!(
                        "{what}: the guest's command exited with {n}: {tail:?}"
                    )));
                }
                None => {
                    // The console's end says how the guest ended (a panic,
                    // a reset, an init that never ran the command).
                    let tail: Vec<&String> = self.seen.iter().rev().take(12).rev().collect();
                    return Err(Error::Workload(format!(
                        "{what}: the guest reported no exit status; {} console lines, ending {tail:?}; stderr: {}",
                        self.seen.len(),
                        said(&stderr)
                    )));
                }
            }
        }
        Ok((took, self.seen))
    }

    pub(crate) fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Ends an instance that is stuck: `signal` first (husk answers
    /// SIGUSR1 with its report of vCPUs and device queues on stderr),
    /// then a kill; the error says `why`, with what it printed.
    pub(crate) fn abort(mut self, why: &str, signal: Option<i32>) -> Error {
        if let Some(sig) = signal {
            // SAFETY: kill(2) of our own child, not yet reaped.
            unsafe { libc::kill(self.pid(), sig) };
            std::thread::sleep(Duration::from_secs(3));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            self.seen.push(l);
        }
        let stderr = self.err.join().unwrap_or_default();
        let tail: Vec<&String> = self.seen.iter().rev().take(5).collect();
        Error::Workload(format!("{why}: {} {tail:?}", said(&stderr)))
    }
}

/// A tool's stderr in one line: its first lines and its last, at most
/// [`SAID_LINES`] in all.
fn said(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.len() <= SAID_LINES {
        return lines.join(" | ");
    }
    let head = &lines[..4];
    let tail = &lines[lines.len() - (SAID_LINES - 4)..];
    format!("{} | … | {}", head.join(" | "), tail.join(" | "))
}

const SAID_LINES: usize = 24;

/// The exit status the guest init printed (`husk.status=console`).
fn console_status(lines: &[String]) -> Option<u8> {
    let prefix = husk_wire::status::CONSOLE_PREFIX;
    lines
        .iter()
        .rev()
        .find_map(|l| l.find(prefix).map(|i| &l[i + prefix.len()..]))
        .and_then(|n| n.trim().parse().ok())
}

/// husk-bench's `op=` lines, as key → value maps, in order. VM consoles
/// may prefix them; the `op=` onwards is the tool's.
pub fn ops(lines: &[String]) -> Vec<HashMap<String, String>> {
    lines
        .iter()
        .filter_map(|l| l.find("op=").map(|i| &l[i..]))
        .map(|l| {
            l.split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect()
        })
        .collect()
}

/// The numeric `key` of the first op named `op`: loud when missing.
pub fn value(ops: &[HashMap<String, String>], op: &str, key: &str) -> Result<f64, Error> {
    let v = ops
        .iter()
        .find(|m| m.get("op").map(String::as_str) == Some(op))
        .and_then(|m| m.get(key))
        .ok_or_else(|| Error::Workload(format!("no {key} from {op} in the output")))?;
    let x: f64 = v
        .parse()
        .map_err(|_| Error::Workload(format!("{op} {key}={v} is not a number")))?;
    if !(x.is_finite() && x > 0.0) {
        return Err(Error::Workload(format!("{op} {key}={v} is not positive")));
    }
    Ok(x)
}

/// Startup: launch → `op=ready` line, and launch → exit, in ms.
pub fn startup(s: &Setup, env: Env, id: &str) -> Result<(f64, f64), Error> {
    let mut r = Running::start(
        s,
        env,
        id,
        &format!("{TOOL_IN_IMAGE} echo-ready"),
        &Needs::default(),
    )?;
    let first = r.wait_line("op=ready");
    let (exit, lines) = r.finish("startup")?;
    let first =
        first.ok_or_else(|| Error::Workload(format!("startup: no op=ready in {lines:?}")))?;
    Ok((ms(first), ms(exit)))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Block I/O on /work: sequential write and read (MB/s), then random 4 KiB
/// read and write (IOPS), all with O_DIRECT.
pub fn disk(s: &Setup, env: Env, id: &str, z: Sizes) -> Result<[f64; 4], Error> {
    let dir = s.work.join(format!("disk-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let needs = match env {
        Env::Native | Env::Crun => Needs {
            disk: Some(dir.clone()),
            ..Needs::default()
        },
        Env::Husk | Env::Qemu | Env::Firecracker => {
            let img = dir.join("work.ext4");
            envs::make_disk(&img, z.seq_mib * 2 + 64)?;
            Needs {
                disk: Some(img),
                ..Needs::default()
            }
        }
    };
    let t = TOOL_IN_IMAGE;
    let (m, secs) = (z.seq_mib, z.rand_secs);
    let script = format!(
        "{t} seq-write /work/f {m} && {t} seq-read /work/f {m} && \
         {t} rand-read /work/f {m} {secs} && {t} rand-write /work/f {m} {secs}"
    );
    let r = Running::start(s, env, id, &script, &needs)?;
    let result = r.finish("disk");
    let _ = std::fs::remove_dir_all(&dir);
    let (_, lines) = result?;
    let o = ops(&lines);
    Ok([
        value(&o, "seq-write", "mb_per_s")?,
        value(&o, "seq-read", "mb_per_s")?,
        value(&o, "rand-read", "iops")?,
        value(&o, "rand-write", "iops")?,
    ])
}

/// What backs /work in the shared-directory workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backing {
    /// A host directory: native uses it, crun bind-mounts it, the VMs
    /// share it (virtio-fs through virtiofsd).
    Dir,
    /// For VMs an ext4 disk image (virtio-blk); a directory otherwise.
    Image,
}

/// A host directory at /work: sequential O_DIRECT write and read (MB/s)
/// and `meta`'s create, stat and unlink rates (per second).
pub fn shared_dir(
    s: &Setup,
    env: Env,
    id: &str,
    z: Sizes,
    backing: Backing,
) -> Result<[f64; 5], Error> {
    let dir = s.work.join(format!("dir-{id}"));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let work = match env {
        env if env.is_vm() && backing == Backing::Image => {
            let img = s.work.join(format!("dir-{id}.ext4"));
            envs::make_disk(&img, z.seq_mib * 2 + 64)?;
            img
        }
        _ => dir.clone(),
    };
    let needs = Needs {
        disk: Some(work.clone()),
        ..Needs::default()
    };
    let (t, m, n) = (TOOL_IN_IMAGE, z.seq_mib, z.files);
    // `/work/` with its slash: native runs rewrite it to the host path.
    let script =
        format!("{t} seq-write /work/f {m} && {t} seq-read /work/f {m} && {t} meta /work/ {n}");
    let result = Running::start(s, env, id, &script, &needs).and_then(|r| r.finish("files"));
    let _ = std::fs::remove_dir_all(&dir);
    if work != dir {
        let _ = std::fs::remove_file(&work);
    }
    let (_, lines) = result?;
    let o = ops(&lines);
    Ok([
        value(&o, "seq-write", "mb_per_s")?,
        value(&o, "seq-read", "mb_per_s")?,
        value(&o, "meta", "create_per_s")?,
        value(&o, "meta", "stat_per_s")?,
        value(&o, "meta", "unlink_per_s")?,
    ])
}

/// CPU and memory, one thread: `flops` (GFLOPS), STREAM's copy and triad
/// (GB/s) and GUPS (millions of updates/s). Nothing but the CPU, the
/// memory and its mapping (nested paging in a VM) is measured.
pub fn compute(s: &Setup, env: Env, id: &str, z: Sizes) -> Result<[f64; 4], Error> {
    let lines = compute_lines(s, env, id, z, 1)?;
    compute_figures(&lines)
}

/// The same over every core: husk-bench runs a thread per CPU it sees,
/// and a VM gets as many vCPUs as the host has cores (`cores`), as the
/// studies ran Linpack and STREAM. `flops` (GFLOPS), STREAM's triad
/// (GB/s), GUPS (millions of updates/s).
pub fn compute_all(s: &Setup, env: Env, id: &str, z: Sizes, cores: u32) -> Result<[f64; 3], Error> {
    let lines = compute_lines(s, env, id, z, cores)?;
    let o = ops(&lines);
    Ok([
        value(&o, "flops", "gflops")?,
        value(&o, "stream", "triad_gbs")?,
        value(&o, "gups", "mups")?,
    ])
}

/// Runs the three CPU and memory kernels, one thread (`cores` 1) or a
/// thread per CPU (husk-bench's 0) on `cores` vCPUs.
fn compute_lines(
    s: &Setup,
    env: Env,
    id: &str,
    z: Sizes,
    cores: u32,
) -> Result<Vec<String>, Error> {
    let needs = Needs {
        cpus: cores,
        ..Needs::default()
    };
    let t = TOOL_IN_IMAGE;
    let threads = if cores > 1 { 0 } else { 1 };
    let script = format!(
        "{t} flops {n} {threads} && {t} stream {m} {threads} && {t} gups {g} {u} {threads}",
        n = z.flops_n,
        m = z.stream_mib,
        g = z.gups_mib,
        u = z.gups_updates
    );
    let (_, lines) = Running::start(s, env, id, &script, &needs)?.finish("compute")?;
    Ok(lines)
}

/// `compute`'s four figures from what husk-bench printed.
fn compute_figures(lines: &[String]) -> Result<[f64; 4], Error> {
    let o = ops(lines);
    Ok([
        value(&o, "flops", "gflops")?,
        value(&o, "stream", "copy_gbs")?,
        value(&o, "stream", "triad_gbs")?,
        value(&o, "gups", "mups")?,
    ])
}

/// A husk-bench server on the host for the network workload.
fn host_tool(s: &Setup, args: &[&str]) -> Result<Child, Error> {
    Command::new(&s.tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::Tool(format!("{}: {e}", s.tool.display())))
}

/// Network: guest → host TCP throughput (MB/s) and request/response
/// round trip (µs) against husk-bench servers on the host.
pub fn net(s: &Setup, env: Env, id: &str, z: Sizes, tap: Option<&Tap>) -> Result<[f64; 2], Error> {
    let host = match (env, tap) {
        (Env::Native | Env::Crun, _) => "127.0.0.1".to_owned(),
        (_, Some(t)) => t.host_ip.clone(),
        (_, None) => return Err(Error::Workload("no TAP for a VM's network".into())),
    };
    // Launches run one at a time: fixed ports are free again by the next.
    let (p1, p2) = (17001u16, 17002u16);
    let mut sink = host_tool(s, &["tcp-sink", &p1.to_string()])?;
    let mut echo = host_tool(s, &["tcp-echo", &p2.to_string()])?;
    let t = TOOL_IN_IMAGE;
    let script = format!(
        "{t} tcp-send {host}:{p1} {} && {t} tcp-rr {host}:{p2} {}",
        z.net_mib, z.rr_count
    );
    let needs = Needs {
        disk: None,
        tap: tap.cloned().filter(|_| env.is_vm()),
        ..Needs::default()
    };
    let result = Running::start(s, env, id, &script, &needs).and_then(|r| r.finish("net"));
    for c in [&mut sink, &mut echo] {
        let _ = c.kill();
        let _ = c.wait();
    }
    let (_, lines) = result?;
    let o = ops(&lines);
    Ok([
        value(&o, "tcp-send", "mb_per_s")?,
        value(&o, "tcp-rr", "rtt_us_median")?,
    ])
}

/// Proportional set size of `pid` and its descendants, in KiB: what the
/// instance costs the host, shared pages divided among their users.
pub fn tree_pss_kib(pid: i32) -> u64 {
    let mut parents: HashMap<i32, Vec<i32>> = HashMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        let Some(ppid) = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().nth(1))
            .and_then(|v| v.parse::<i32>().ok())
        else {
            continue;
        };
        parents.entry(ppid).or_default().push(p);
    }
    let mut total = 0;
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        total += pss_kib(p);
        if let Some(kids) = parents.get(&p) {
            todo.extend(kids);
        }
    }
    total
}

fn pss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Memory: `n` instances, each holding `hold_mib` of touched memory,
/// started at once. The time until all are ready (ms) and the host's PSS
/// per instance (MiB) at that moment.
pub fn density(s: &Setup, env: Env, id: &str, z: Sizes, n: usize) -> Result<(f64, f64), Error> {
    let start = Instant::now();
    let script = format!("{TOOL_IN_IMAGE} hold {} 3", z.hold_mib);
    let mut runs = Vec::new();
    for i in 0..n {
        runs.push(Running::start(
            s,
            env,
            &format!("{id}-{i}"),
            &script,
            &Needs::default(),
        )?);
    }
    let mut ready = true;
    for r in &mut runs {
        ready &= r.wait_line("op=hold").is_some();
    }
    let all_ready = start.elapsed();
    let pss: u64 = runs.iter().map(|r| tree_pss_kib(r.pid())).sum();
    let mut err = None;
    for r in runs {
        if let Err(e) = r.finish("memory") {
            err.get_or_insert(e);
        }
    }
    if let Some(e) = err {
        return Err(e);
    }
    if !ready {
        return Err(Error::Workload(
            "memory: an instance never said it was ready".into(),
        ));
    }
    if pss == 0 {
        return Err(Error::Workload(
            "memory: no PSS readable (is /proc mounted?)".into(),
        ));
    }
    Ok((ms(all_ready), pss as f64 / 1024.0 / n as f64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_status_line_is_read_through_console_noise() {
        let lines = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let p = husk_wire::status::CONSOLE_PREFIX;
        assert_eq!(
            console_status(&lines(&["x", &format!("\r[ 1.2] {p}3")])),
            Some(3)
        );
        assert_eq!(console_status(&lines(&[&format!("{p}0")])), Some(0));
        assert_eq!(console_status(&lines(&["op=meta x=1"])), None);
    }

    /// What husk-bench's compute commands print (the lines of a real run)
    /// gives the four figures in the order of the step's keys; a missing
    /// command is an error naming what is missing.
    #[test]
    fn compute_figures_come_from_the_three_commands() {
        let lines: Vec<String> = [
            "op=flops n=512 threads=1 secs=0.038527 gflops=6.967 checksum=100662527.1",
            "op=stream mib=256 threads=1 copy_gbs=23.605 scale_gbs=13.043 add_gbs=14.934 triad_gbs=14.821 check=1113750.0",
            "op=gups mib=256 updates=4000000 threads=1 secs=0.052254 mups=76.549",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            compute_figures(&lines).unwrap(),
            [6.967, 23.605, 14.821, 76.549]
        );
        let err = compute_figures(&lines[..2]).unwrap_err().to_string();
        assert!(err.contains("mups from gups"), "{err}");
    }

    #[test]
    fn op_lines_parse_through_console_noise_and_missing_figures_are_errors() {
        let lines: Vec<String> = [
            "[    0.5] some kernel line",
            "op=seq-write bytes=1048576 secs=0.5 mb_per_s=2.09 direct=1",
            "\u{1b}[0mop=tcp-rr count=10 rtt_us_median=81.5 rtt_us_p99=90",
            "op=rand-read ios=0 secs=0.5 iops=0",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let o = ops(&lines);
        assert_eq!(o.len(), 3);
        assert_eq!(value(&o, "seq-write", "mb_per_s").unwrap(), 2.09);
        assert_eq!(value(&o, "tcp-rr", "rtt_us_median").unwrap(), 81.5);
        let zero = value(&o, "rand-read", "iops").unwrap_err().to_string();
        assert!(zero.contains("not positive"), "{zero}");
        let missing = value(&o, "seq-read", "mb_per_s").unwrap_err().to_string();
        assert!(missing.contains("no mb_per_s from seq-read"), "{missing}");
    }

    #[test]
    fn pss_of_this_process_tree_is_counted() {
        assert!(tree_pss_kib(std::process::id() as i32) > 0);
    }
}
