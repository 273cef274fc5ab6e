//! `husk-bench`: the workload binary of `husk compare`.
//!
//! The same static binary runs natively, in a crun container, in a husk
//! microVM container and in a QEMU microvm guest; each run prints exactly one
//! line of space-separated `key=value` pairs (plain decimal numbers) that the
//! caller parses (see [`Report::parse`]).
//!
//! Disk subcommands use `O_DIRECT` with a 4096-aligned buffer so that the
//! figures measure the block path, not the page cache. A filesystem that
//! refuses `O_DIRECT` (`EINVAL`, e.g. an old tmpfs) is an error unless
//! `--buffered` allows the fallback; the output says which was used
//! (`direct=1` or `direct=0`).
//!
//! Every function here returns a [`Result`]; `main.rs` only turns argv into a
//! [`Command`], calls [`run`] and prints the error, if any.

pub mod compute;
pub mod files;

use std::alloc::{self, Layout};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One MiB: the unit of every size argument and the sequential block size.
pub const MIB: usize = 1 << 20;
/// Random I/O size and alignment, and the page size `hold` touches.
pub const PAGE: usize = 4096;
/// Size of one `tcp-rr` message.
pub const RR_MSG: usize = 64;
/// How long `tcp-send` and `tcp-rr` retry a refused connection.
pub const CONNECT_RETRY: Duration = Duration::from_secs(10);

/// The `--help` text.
pub const USAGE: &str = "\
usage: husk-bench SUBCOMMAND [ARGS]
Prints one line of space-separated key=value pairs (MB = 10^6 bytes).

  seq-write [--buffered] PATH MIB        create/truncate PATH, write MIB MiB in 1 MiB
                                         O_DIRECT blocks, fdatasync (timed)
  seq-read  [--buffered] PATH MIB        read MIB MiB in 1 MiB O_DIRECT blocks
  rand-read  [--buffered] PATH MIB SECS  4 KiB O_DIRECT reads at random offsets in the
                                         first MIB MiB of PATH, queue depth 1, for SECS s
  rand-write [--buffered] PATH MIB SECS  same with writes, then fdatasync (timed)
  tcp-sink PORT                          accept one connection on 0.0.0.0:PORT, read to EOF
  tcp-send HOST:PORT MIB                 send MIB MiB, shut down writing, wait for close
  tcp-echo PORT                          accept one connection, echo until EOF
  udp-echo PORT COUNT                    answer COUNT datagrams on 0.0.0.0:PORT with
                                         their own bytes, each to its sender
  tcp-rr HOST:PORT COUNT                 COUNT round trips of a 64-byte message
  hold MIB SECS|stdin                    allocate and touch MIB MiB, print a ready line,
                                         sleep SECS s (or until stdin reaches EOF)
  meta DIR COUNT                         create, stat and unlink COUNT empty files in a
                                         new directory under DIR (ops/s of each phase)
  fs-check DIR                           in DIR: a Unix socket carries a message, a shared
                                         mmap reaches read(2), an xattr (user.husk) reads
                                         back, a write is fsynced; leaves DIR/fs-check.*
  unsynced DIR                           DIR/unsynced.write by write(2), DIR/unsynced.mmap
                                         through a shared mapping, neither synced
  flops N THREADS                        blocked N x N f64 matrix multiply (GFLOPS)
  stream MIB THREADS                     STREAM copy/scale/add/triad over arrays of
                                         MIB MiB each, best of 5 passes (GB/s)
  gups MIB UPDATES THREADS               UPDATES random updates of a MIB MiB table
                                         (millions of updates/s)
  echo-ready                             print op=ready
  --help                                 this text

--buffered allows a buffered fallback where O_DIRECT is refused (output direct=0).
tcp-send and tcp-rr retry a refused connection for up to 10 s.
THREADS 0 is one thread per online CPU.
Exit status: 0 success, 1 I/O failure, 2 bad arguments.
";

/// What went wrong: bad arguments (exit 2) or an I/O failure (exit 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// The command line is wrong.
    Usage(String),
    /// A system call failed; the message names the path or address.
    Io(String),
}

impl Error {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Io(_) => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(m) | Error::Io(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for Error {}

fn usage(msg: impl Into<String>) -> Error {
    Error::Usage(msg.into())
}

/// `WHAT: STEP: os error` as an I/O failure.
fn io_fail(what: impl fmt::Display, step: &str, e: io::Error) -> Error {
    Error::Io(format!("{what}: {step}: {e}"))
}

/// How long `hold` keeps its memory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Wait {
    /// Sleep this long.
    For(Duration),
    /// Until standard input reaches end of file.
    StdinEof,
}

/// A parsed command line.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// `seq-write` (`write`) or `seq-read`.
    Seq {
        write: bool,
        path: PathBuf,
        mib: u64,
        buffered: bool,
    },
    /// `rand-write` (`write`) or `rand-read`.
    Rand {
        write: bool,
        path: PathBuf,
        mib: u64,
        secs: Duration,
        buffered: bool,
    },
    TcpSink {
        port: u16,
    },
    TcpSend {
        addr: String,
        mib: u64,
    },
    TcpEcho {
        port: u16,
    },
    UdpEcho {
        port: u16,
        count: u64,
    },
    TcpRr {
        addr: String,
        count: u64,
    },
    Hold {
        mib: u64,
        wait: Wait,
    },
    Meta {
        dir: PathBuf,
        count: u64,
    },
    FsCheck {
        dir: PathBuf,
    },
    Unsynced {
        dir: PathBuf,
    },
    Flops {
        n: u64,
        threads: u64,
    },
    Stream {
        mib: u64,
        threads: u64,
    },
    Gups {
        mib: u64,
        updates: u64,
        threads: u64,
    },
    EchoReady,
    Help,
}

/// Parses the arguments after the program name.
pub fn parse_args(args: &[String]) -> Result<Command, Error> {
    let Some((sub, rest)) = args.split_first() else {
        return Err(usage("no subcommand (try --help)"));
    };
    let sub = sub.as_str();
    if matches!(sub, "--help" | "-h" | "help") {
        return Ok(Command::Help);
    }
    let mut buffered = false;
    let mut pos: Vec<&str> = Vec::new();
    for a in rest {
        match a.as_str() {
            "--help" | "-h" => return Ok(Command::Help),
            "--buffered" if pos.is_empty() => buffered = true,
            "--buffered" => {
                return Err(usage(format!(
                    "{sub}: --buffered must come before the positional arguments"
                )))
            }
            opt if opt.starts_with("--") => {
                return Err(usage(format!("{sub}: unknown option {opt}")))
            }
            p => pos.push(p),
        }
    }
    let disk = matches!(sub, "seq-write" | "seq-read" | "rand-read" | "rand-write");
    if buffered && !disk {
        return Err(usage(format!(
            "{sub}: --buffered applies only to seq-write, seq-read, rand-read and rand-write"
        )));
    }
    let arity = |names: &[&str]| -> Result<(), Error> {
        if pos.len() == names.len() {
            Ok(())
        } else {
            Err(usage(format!(
                "{sub}: expected {} argument(s) ({}), got {}",
                names.len(),
                names.join(" "),
                pos.len()
            )))
        }
    };
    match sub {
        "seq-write" | "seq-read" => {
            arity(&["PATH", "MIB"])?;
            Ok(Command::Seq {
                write: sub == "seq-write",
                path: parse_path(sub, pos[0])?,
                mib: parse_mib(sub, pos[1], false)?,
                buffered,
            })
        }
        "rand-read" | "rand-write" => {
            arity(&["PATH", "MIB", "SECS"])?;
            Ok(Command::Rand {
                write: sub == "rand-write",
                path: parse_path(sub, pos[0])?,
                mib: parse_mib(sub, pos[1], false)?,
                secs: parse_secs(sub, pos[2], false)?,
                buffered,
            })
        }
        "tcp-sink" | "tcp-echo" => {
            arity(&["PORT"])?;
            let port = parse_port(sub, pos[0])?;
            Ok(if sub == "tcp-sink" {
                Command::TcpSink { port }
            } else {
                Command::TcpEcho { port }
            })
        }
        "udp-echo" => {
            arity(&["PORT", "COUNT"])?;
            Ok(Command::UdpEcho {
                port: parse_port(sub, pos[0])?,
                count: parse_count(sub, pos[1])?,
            })
        }
        "tcp-send" => {
            arity(&["HOST:PORT", "MIB"])?;
            Ok(Command::TcpSend {
                addr: parse_addr(sub, pos[0])?,
                mib: parse_mib(sub, pos[1], false)?,
            })
        }
        "tcp-rr" => {
            arity(&["HOST:PORT", "COUNT"])?;
            Ok(Command::TcpRr {
                addr: parse_addr(sub, pos[0])?,
                count: parse_count(sub, pos[1])?,
            })
        }
        "hold" => {
            arity(&["MIB", "SECS|stdin"])?;
            let wait = if pos[1] == "stdin" {
                Wait::StdinEof
            } else {
                Wait::For(parse_secs(sub, pos[1], true)?)
            };
            Ok(Command::Hold {
                mib: parse_mib(sub, pos[0], true)?,
                wait,
            })
        }
        "meta" => {
            arity(&["DIR", "COUNT"])?;
            Ok(Command::Meta {
                dir: parse_path(sub, pos[0])?,
                count: parse_count(sub, pos[1])?,
            })
        }
        "fs-check" => {
            arity(&["DIR"])?;
            Ok(Command::FsCheck {
                dir: parse_path(sub, pos[0])?,
            })
        }
        "unsynced" => {
            arity(&["DIR"])?;
            Ok(Command::Unsynced {
                dir: parse_path(sub, pos[0])?,
            })
        }
        "flops" => {
            arity(&["N", "THREADS"])?;
            Ok(Command::Flops {
                n: parse_positive(sub, "N", pos[0])?,
                threads: parse_threads(sub, pos[1])?,
            })
        }
        "stream" => {
            arity(&["MIB", "THREADS"])?;
            Ok(Command::Stream {
                mib: parse_mib(sub, pos[0], false)?,
                threads: parse_threads(sub, pos[1])?,
            })
        }
        "gups" => {
            arity(&["MIB", "UPDATES", "THREADS"])?;
            Ok(Command::Gups {
                mib: parse_mib(sub, pos[0], false)?,
                updates: parse_positive(sub, "UPDATES", pos[1])?,
                threads: parse_threads(sub, pos[2])?,
            })
        }
        "echo-ready" => {
            arity(&[])?;
            Ok(Command::EchoReady)
        }
        other => Err(usage(format!("unknown subcommand {other:?} (try --help)"))),
    }
}

fn parse_count(sub: &str, s: &str) -> Result<u64, Error> {
    parse_positive(sub, "COUNT", s)
}

/// A positive integer argument called `name`.
fn parse_positive(sub: &str, name: &str, s: &str) -> Result<u64, Error> {
    s.parse::<u64>().ok().filter(|&c| c > 0).ok_or_else(|| {
        usage(format!(
            "{sub}: {name} must be a positive integer, got {s:?}"
        ))
    })
}

/// THREADS: 0 (one per online CPU) up to 1024.
fn parse_threads(sub: &str, s: &str) -> Result<u64, Error> {
    s.parse::<u64>().ok().filter(|&t| t <= 1024).ok_or_else(|| {
        usage(format!(
            "{sub}: THREADS must be 0 (one per CPU) to 1024, got {s:?}"
        ))
    })
}

fn parse_path(sub: &str, s: &str) -> Result<PathBuf, Error> {
    if s.is_empty() {
        return Err(usage(format!("{sub}: PATH is empty")));
    }
    Ok(PathBuf::from(s))
}

/// A size in MiB whose byte count fits in a u64 and a usize.
fn parse_mib(sub: &str, s: &str, allow_zero: bool) -> Result<u64, Error> {
    let what = if allow_zero {
        "a non-negative integer"
    } else {
        "a positive integer"
    };
    let mib = s
        .parse::<u64>()
        .ok()
        .filter(|&m| allow_zero || m > 0)
        .ok_or_else(|| usage(format!("{sub}: MIB must be {what}, got {s:?}")))?;
    mib.checked_mul(MIB as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| usage(format!("{sub}: MIB {mib} is too large")))?;
    Ok(mib)
}

/// Seconds, fractional allowed; zero only if `allow_zero`.
fn parse_secs(sub: &str, s: &str, allow_zero: bool) -> Result<Duration, Error> {
    s.parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && (*v > 0.0 || (allow_zero && *v == 0.0)))
        .and_then(|v| Duration::try_from_secs_f64(v).ok())
        .ok_or_else(|| {
            let what = if allow_zero {
                "a non-negative number"
            } else {
                "a positive number"
            };
            usage(format!("{sub}: SECS must be {what} of seconds, got {s:?}"))
        })
}

fn parse_port(sub: &str, s: &str) -> Result<u16, Error> {
    s.parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| usage(format!("{sub}: PORT must be 1-65535, got {s:?}")))
}

/// `HOST:PORT` (IPv6 hosts in brackets); the host is resolved when connecting.
fn parse_addr(sub: &str, s: &str) -> Result<String, Error> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => {
            parse_port(sub, port)?;
            Ok(s.to_string())
        }
        _ => Err(usage(format!("{sub}: expected HOST:PORT, got {s:?}"))),
    }
}

/// One output line: `key=value` pairs in insertion order, `op` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    fields: Vec<(String, String)>,
}

impl Report {
    /// A report for operation `op` (`op=<op>`).
    pub fn new(op: &str) -> Self {
        Report {
            fields: vec![("op".to_string(), op.to_string())],
        }
    }

    /// Appends an integer field.
    pub fn int(mut self, key: &str, v: u64) -> Self {
        self.fields.push((key.to_string(), v.to_string()));
        self
    }

    /// Appends a decimal field with `decimals` digits after the point (a
    /// non-finite value, which only a zero-length run could produce, is 0).
    pub fn num(mut self, key: &str, v: f64, decimals: usize) -> Self {
        let v = if v.is_finite() { v } else { 0.0 };
        self.fields
            .push((key.to_string(), format!("{v:.decimals$}")));
        self
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `key` as a number.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key)?.parse().ok()
    }

    /// All fields in order.
    pub fn fields(&self) -> &[(String, String)] {
        &self.fields
    }

    /// Parses a line this tool printed: space-separated `key=value` pairs with
    /// non-empty keys, the first one `op`. `None` for anything else.
    pub fn parse(line: &str) -> Option<Report> {
        let fields = line
            .split_whitespace()
            .map(|tok| {
                let (k, v) = tok.split_once('=')?;
                (!k.is_empty()).then(|| (k.to_string(), v.to_string()))
            })
            .collect::<Option<Vec<_>>>()?;
        (fields.first()?.0 == "op").then_some(Report { fields })
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (k, v)) in self.fields.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{k}={v}")?;
        }
        Ok(())
    }
}

/// Runs `cmd`, printing its one line (or the help text) on `out`; `input` is
/// what `hold … stdin` waits on.
pub fn run(cmd: &Command, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    let report = match cmd {
        Command::Help => {
            return out
                .write_all(USAGE.as_bytes())
                .and_then(|()| out.flush())
                .map_err(|e| io_fail("stdout", "write", e));
        }
        Command::EchoReady => Report::new("ready"),
        Command::Seq {
            write,
            path,
            mib,
            buffered,
        } => seq(*write, path, *mib, *buffered)?,
        Command::Rand {
            write,
            path,
            mib,
            secs,
            buffered,
        } => rand(*write, path, *mib, *secs, *buffered)?,
        Command::TcpSink { port } => tcp_sink(&listen(*port)?)?,
        Command::TcpEcho { port } => tcp_echo(&listen(*port)?)?,
        Command::UdpEcho { port, count } => {
            let socket = std::net::UdpSocket::bind(("0.0.0.0", *port))
                .map_err(|e| io_fail(format!("0.0.0.0:{port}"), "bind", e))?;
            udp_echo(&socket, *count)?
        }
        Command::TcpSend { addr, mib } => tcp_send(addr, *mib)?,
        Command::TcpRr { addr, count } => tcp_rr(addr, *count)?,
        Command::Hold { mib, wait } => return hold(*mib, *wait, input, out),
        Command::Meta { dir, count } => files::meta(dir, *count)?,
        Command::FsCheck { dir } => files::check(dir)?,
        Command::Unsynced { dir } => files::unsynced(dir)?,
        Command::Flops { n, threads } => compute::flops(*n as usize, compute::threads(*threads))?,
        Command::Stream { mib, threads } => compute::stream(*mib, compute::threads(*threads))?,
        Command::Gups {
            mib,
            updates,
            threads,
        } => compute::gups(*mib, *updates, compute::threads(*threads))?,
    };
    emit(out, &report)
}

/// Prints `report` as one line and flushes.
fn emit(out: &mut dyn Write, report: &Report) -> Result<(), Error> {
    writeln!(out, "{report}")
        .and_then(|()| out.flush())
        .map_err(|e| io_fail("stdout", "write", e))
}

// ---------------------------------------------------------------- disk

/// A zero-initialised heap buffer aligned to [`PAGE`], as `O_DIRECT` needs.
struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: Layout,
}

impl AlignedBuf {
    /// `len` bytes (non-zero), filled with a non-zero pattern so that a
    /// compressing or deduplicating backend cannot shortcut the writes.
    fn new(len: usize) -> Result<Self, Error> {
        let layout = Layout::from_size_align(len, PAGE)
            .ok()
            .filter(|l| l.size() > 0)
            .ok_or_else(|| Error::Io(format!("bad buffer size {len}")))?;
        // SAFETY: `layout` has a non-zero size (checked just above), the only
        // requirement of `alloc_zeroed`.
        let raw = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(raw)
            .ok_or_else(|| Error::Io(format!("cannot allocate a {len}-byte buffer")))?;
        let mut buf = AlignedBuf { ptr, layout };
        let mut x = seed();
        for chunk in buf.as_mut_slice().chunks_mut(8) {
            let v = xorshift(&mut x).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        Ok(buf)
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` points to `layout.size()` bytes that this value owns
        // and that `alloc_zeroed` initialised; the shared borrow of `self`
        // rules out a simultaneous `&mut` slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size()) }
    }

    fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`; the exclusive borrow of `self` makes this
        // the only live slice of the allocation.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: `ptr` came from `alloc_zeroed` with exactly `layout` and is
        // freed only here, once.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// A 64-bit seed from the clock and the pid, never zero.
fn seed() -> u64 {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    let s = t ^ (u64::from(std::process::id()) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    if s == 0 {
        0x2545_f491_4f6c_dd1d
    } else {
        s
    }
}

/// Marsaglia's xorshift64 (state must be non-zero).
fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

#[derive(Clone, Copy)]
enum Access {
    Read,
    /// Existing file or device, written in place.
    Write,
    /// Create or truncate.
    Create,
}

fn open_disk(path: &Path, access: Access, direct: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    match access {
        Access::Read => o.read(true),
        Access::Write => o.write(true),
        Access::Create => o.write(true).create(true).truncate(true),
    };
    if direct {
        o.custom_flags(libc::O_DIRECT);
    }
    o.open(path)
}

/// Why a disk body failed: a system call (its name and error), or a message.
enum DiskFail {
    Os(&'static str, io::Error),
    Msg(String),
}

fn is_einval(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// Opens `path` with `O_DIRECT` and runs `body` on it. `EINVAL` from the
/// open or from the body means `O_DIRECT` is refused: an error, or with
/// `allow_buffered` a rerun of `body` on a buffered descriptor. Returns the
/// body's result and whether `O_DIRECT` was used.
fn with_direct<T>(
    path: &Path,
    access: Access,
    allow_buffered: bool,
    mut body: impl FnMut(&mut File) -> Result<T, DiskFail>,
) -> Result<(T, bool), Error> {
    let p = path.display();
    let refused = |step: &str, e: io::Error| {
        Error::Io(format!(
            "{p}: {step}: O_DIRECT refused ({e}); pass --buffered to allow buffered I/O"
        ))
    };
    let fail = |f: DiskFail| match f {
        DiskFail::Os(step, e) => io_fail(&p, step, e),
        DiskFail::Msg(m) => Error::Io(format!("{p}: {m}")),
    };
    match open_disk(path, access, true) {
        Ok(mut file) => match body(&mut file) {
            Ok(t) => return Ok((t, true)),
            Err(DiskFail::Os(step, e)) if is_einval(&e) => {
                if !allow_buffered {
                    return Err(refused(step, e));
                }
            }
            Err(f) => return Err(fail(f)),
        },
        Err(e) if is_einval(&e) => {
            if !allow_buffered {
                return Err(refused("open", e));
            }
        }
        Err(e) => return Err(io_fail(&p, "open", e)),
    }
    let mut file = open_disk(path, access, false).map_err(|e| io_fail(&p, "open", e))?;
    body(&mut file).map(|t| (t, false)).map_err(fail)
}

/// Size of a regular file or block device (seeks back to the start). A seek
/// failure is a plain message: its `EINVAL` (e.g. procfs) says nothing about
/// `O_DIRECT`.
fn disk_size(f: &mut File) -> Result<u64, DiskFail> {
    let seek = |f: &mut File, to| {
        f.seek(to)
            .map_err(|e| DiskFail::Msg(format!("cannot tell its size: seek: {e}")))
    };
    let size = seek(f, SeekFrom::End(0))?;
    seek(f, SeekFrom::Start(0))?;
    Ok(size)
}

fn need_size(f: &mut File, bytes: u64, op: &str, mib: u64) -> Result<(), DiskFail> {
    let size = disk_size(f)?;
    if size < bytes {
        return Err(DiskFail::Msg(format!(
            "{size} bytes long, but {op} needs at least {mib} MiB ({bytes} bytes); \
             write it first (e.g. with seq-write)"
        )));
    }
    Ok(())
}

/// Fills `buf` from the current position; short only at end of file.
fn read_full(f: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read(&mut buf[done..]) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

fn mb_per_s(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs / 1e6
    } else {
        0.0
    }
}

/// `seq-write` / `seq-read`: MIB MiB in 1 MiB blocks.
pub fn seq(write: bool, path: &Path, mib: u64, buffered: bool) -> Result<Report, Error> {
    let mut buf = AlignedBuf::new(MIB)?;
    let bytes = mib * MIB as u64;
    let (elapsed, direct) = if write {
        with_direct(path, Access::Create, buffered, |f| {
            let start = Instant::now();
            for _ in 0..mib {
                f.write_all(buf.as_slice())
                    .map_err(|e| DiskFail::Os("write", e))?;
            }
            f.sync_data().map_err(|e| DiskFail::Os("fdatasync", e))?;
            Ok(start.elapsed())
        })?
    } else {
        with_direct(path, Access::Read, buffered, |f| {
            need_size(f, bytes, "seq-read", mib)?;
            let start = Instant::now();
            for _ in 0..mib {
                let n = read_full(f, buf.as_mut_slice()).map_err(|e| DiskFail::Os("read", e))?;
                if n < MIB {
                    return Err(DiskFail::Msg("ended early (shrunk while reading?)".into()));
                }
            }
            Ok(start.elapsed())
        })?
    };
    let secs = elapsed.as_secs_f64();
    Ok(Report::new(if write { "seq-write" } else { "seq-read" })
        .int("bytes", bytes)
        .num("secs", secs, 6)
        .num("mb_per_s", mb_per_s(bytes, secs), 2)
        .int("direct", u64::from(direct)))
}

/// Nanoseconds of `d`, saturating at u32::MAX (4.3 s).
fn nanos_u32(d: Duration) -> u32 {
    u32::try_from(d.as_nanos()).unwrap_or(u32::MAX)
}

/// Median of sorted nanosecond samples, in µs (0 if empty).
fn median_us(sorted: &[u32]) -> f64 {
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let mid = if n % 2 == 1 {
        f64::from(sorted[n / 2])
    } else {
        (f64::from(sorted[n / 2 - 1]) + f64::from(sorted[n / 2])) / 2.0
    };
    mid / 1e3
}

/// Nearest-rank percentile `p` (0-100) of sorted nanosecond samples, in µs.
fn percentile_us(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1]) / 1e3
}

/// `rand-read` / `rand-write`: 4 KiB I/Os at random aligned offsets within
/// the first MIB MiB, queue depth 1, for `secs`.
pub fn rand(
    write: bool,
    path: &Path,
    mib: u64,
    secs: Duration,
    buffered: bool,
) -> Result<Report, Error> {
    let op = if write { "rand-write" } else { "rand-read" };
    let mut buf = AlignedBuf::new(PAGE)?;
    let bytes = mib * MIB as u64;
    let blocks = bytes / PAGE as u64;
    let mut rng = seed();
    let access = if write { Access::Write } else { Access::Read };
    let ((mut lats, elapsed), direct) = with_direct(path, access, buffered, |f| {
        need_size(f, bytes, op, mib)?;
        let mut lats: Vec<u32> = Vec::with_capacity(1 << 16);
        let start = Instant::now();
        let deadline = start + secs;
        let mut t0 = start;
        loop {
            let off = (xorshift(&mut rng) % blocks) * PAGE as u64;
            if write {
                f.write_all_at(buf.as_slice(), off)
                    .map_err(|e| DiskFail::Os("pwrite", e))?;
            } else {
                f.read_exact_at(buf.as_mut_slice(), off)
                    .map_err(|e| DiskFail::Os("pread", e))?;
            }
            let t1 = Instant::now();
            lats.push(nanos_u32(t1 - t0));
            t0 = t1;
            if t1 >= deadline {
                break;
            }
        }
        if write {
            f.sync_data().map_err(|e| DiskFail::Os("fdatasync", e))?;
        }
        Ok((lats, start.elapsed()))
    })?;
    lats.sort_unstable();
    let secs = elapsed.as_secs_f64();
    let ios = lats.len() as u64;
    Ok(Report::new(op)
        .int("ios", ios)
        .num("secs", secs, 6)
        .num("iops", if secs > 0.0 { ios as f64 / secs } else { 0.0 }, 1)
        .num("lat_us_median", median_us(&lats), 2)
        .int("direct", u64::from(direct)))
}

// ---------------------------------------------------------------- network

/// Listens on 0.0.0.0:`port` (what `tcp-sink` and `tcp-echo` do first).
pub fn listen(port: u16) -> Result<TcpListener, Error> {
    TcpListener::bind(("0.0.0.0", port)).map_err(|e| io_fail(format!("0.0.0.0:{port}"), "bind", e))
}

/// Connects to `addr`, retrying for up to [`CONNECT_RETRY`] while refused
/// (the peer may still be starting).
pub fn connect_retry(addr: &str) -> Result<TcpStream, Error> {
    let deadline = Instant::now() + CONNECT_RETRY;
    loop {
        match TcpStream::connect(addr) {
            Ok(s) => return Ok(s),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => return Err(io_fail(addr, "connect", e)),
        }
    }
}

/// Reads `s` to end of file into a scratch buffer; returns the byte count
/// and the instant the first byte arrived.
fn drain(s: &mut TcpStream, buf: &mut [u8]) -> io::Result<(u64, Option<Instant>)> {
    let mut total = 0u64;
    let mut first = None;
    loop {
        match s.read(buf) {
            Ok(0) => return Ok((total, first)),
            Ok(n) => {
                first.get_or_insert_with(Instant::now);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `tcp-sink`: accepts one connection on `listener` and reads it to EOF;
/// the time runs from the first byte to EOF.
pub fn tcp_sink(listener: &TcpListener) -> Result<Report, Error> {
    let (mut s, peer) = listener
        .accept()
        .map_err(|e| io_fail(local(listener), "accept", e))?;
    let mut buf = vec![0u8; MIB];
    let (bytes, first) = drain(&mut s, &mut buf).map_err(|e| io_fail(peer, "read", e))?;
    let secs = first.map_or(0.0, |t| t.elapsed().as_secs_f64());
    drop(s);
    Ok(Report::new("tcp-sink")
        .int("bytes", bytes)
        .num("secs", secs, 6)
        .num("mb_per_s", mb_per_s(bytes, secs), 2))
}

fn local(l: &TcpListener) -> String {
    l.local_addr()
        .map_or_else(|_| "listener".to_string(), |a| a.to_string())
}

/// `tcp-send`: sends MIB MiB of a repeated pattern to `addr`, shuts down
/// writing and waits for the peer to close; timed from the first write.
pub fn tcp_send(addr: &str, mib: u64) -> Result<Report, Error> {
    let mut s = connect_retry(addr)?;
    let mut buf: Vec<u8> = (0..MIB).map(|i| (i % 251) as u8).collect();
    let start = Instant::now();
    for _ in 0..mib {
        s.write_all(&buf).map_err(|e| io_fail(addr, "send", e))?;
    }
    s.shutdown(Shutdown::Write)
        .map_err(|e| io_fail(addr, "shutdown", e))?;
    drain(&mut s, &mut buf).map_err(|e| io_fail(addr, "read", e))?;
    let secs = start.elapsed().as_secs_f64();
    let bytes = mib * MIB as u64;
    Ok(Report::new("tcp-send")
        .int("bytes", bytes)
        .num("secs", secs, 6)
        .num("mb_per_s", mb_per_s(bytes, secs), 2))
}

/// `tcp-echo`: accepts one connection on `listener` and echoes everything
/// until EOF.
pub fn tcp_echo(listener: &TcpListener) -> Result<Report, Error> {
    let (mut s, peer) = listener
        .accept()
        .map_err(|e| io_fail(local(listener), "accept", e))?;
    s.set_nodelay(true)
        .map_err(|e| io_fail(peer, "setsockopt TCP_NODELAY", e))?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    loop {
        let n = match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_fail(peer, "read", e)),
        };
        s.write_all(&buf[..n])
            .map_err(|e| io_fail(peer, "write", e))?;
        bytes += n as u64;
    }
    drop(s);
    Ok(Report::new("tcp-echo").int("bytes", bytes))
}

/// `udp-echo`: sends `count` datagrams back to whoever sent them.
pub fn udp_echo(socket: &std::net::UdpSocket, count: u64) -> Result<Report, Error> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut bytes = 0u64;
    for _ in 0..count {
        let (n, from) = socket
            .recv_from(&mut buf)
            .map_err(|e| io_fail(local_udp(socket), "recv", e))?;
        socket
            .send_to(&buf[..n], from)
            .map_err(|e| io_fail(from, "send", e))?;
        bytes += n as u64;
    }
    Ok(Report::new("udp-echo")
        .int("datagrams", count)
        .int("bytes", bytes))
}

fn local_udp(s: &std::net::UdpSocket) -> String {
    s.local_addr()
        .map_or_else(|_| "udp socket".into(), |a| a.to_string())
}

/// `tcp-rr`: `count` round trips of a [`RR_MSG`]-byte message with
/// `TCP_NODELAY`, each waiting for the complete echo.
pub fn tcp_rr(addr: &str, count: u64) -> Result<Report, Error> {
    let mut s = connect_retry(addr)?;
    s.set_nodelay(true)
        .map_err(|e| io_fail(addr, "setsockopt TCP_NODELAY", e))?;
    let mut msg = [0x5au8; RR_MSG];
    let mut back = [0u8; RR_MSG];
    let mut rtts: Vec<u32> = Vec::with_capacity(usize::try_from(count.min(1 << 20)).unwrap_or(0));
    for i in 0..count {
        msg[..8].copy_from_slice(&i.to_le_bytes());
        let t0 = Instant::now();
        s.write_all(&msg).map_err(|e| io_fail(addr, "send", e))?;
        s.read_exact(&mut back)
            .map_err(|e| io_fail(addr, "receive", e))?;
        rtts.push(nanos_u32(t0.elapsed()));
        if back != msg {
            return Err(Error::Io(format!(
                "{addr}: round trip {i}: the echo differs from the message"
            )));
        }
    }
    // Let the echo server see EOF and finish cleanly; not timed.
    s.shutdown(Shutdown::Write)
        .map_err(|e| io_fail(addr, "shutdown", e))?;
    let mut rest = [0u8; 256];
    drain(&mut s, &mut rest).map_err(|e| io_fail(addr, "read", e))?;
    rtts.sort_unstable();
    Ok(Report::new("tcp-rr")
        .int("count", count)
        .num("rtt_us_median", median_us(&rtts), 2)
        .num("rtt_us_p99", percentile_us(&rtts, 99.0), 2))
}

// ---------------------------------------------------------------- memory

/// `hold`: allocates MIB MiB, writes one byte per page (and the last byte),
/// prints `op=hold mib=N ready=1` on `out` and flushes, then waits per `wait`
/// (`input` is standard input in the binary) before freeing the memory.
pub fn hold(mib: u64, wait: Wait, input: &mut dyn Read, out: &mut dyn Write) -> Result<(), Error> {
    let bytes = mib
        .checked_mul(MIB as u64)
        .and_then(|b| usize::try_from(b).ok())
        .ok_or_else(|| usage(format!("hold: MIB {mib} is too large")))?;
    let mut mem: Vec<u8> = Vec::new();
    mem.try_reserve_exact(bytes)
        .map_err(|e| Error::Io(format!("hold: cannot allocate {mib} MiB: {e}")))?;
    let spare = &mut mem.spare_capacity_mut()[..bytes];
    for i in (0..bytes).step_by(PAGE) {
        spare[i].write(1);
    }
    if let Some(last) = spare.last_mut() {
        last.write(1);
    }
    // Keep the stores: the memory is never read, so without this the
    // optimiser could drop them and leave the pages untouched.
    std::hint::black_box(spare.as_mut_ptr());
    emit(out, &Report::new("hold").int("mib", mib).int("ready", 1))?;
    match wait {
        Wait::For(d) => std::thread::sleep(d),
        Wait::StdinEof => {
            io::copy(input, &mut io::sink()).map_err(|e| io_fail("stdin", "read", e))?;
        }
    }
    std::hint::black_box(&mem);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

    fn usage_err(s: &str) -> String {
        match parse_args(&args(s)) {
            Err(Error::Usage(m)) => m,
            other => panic!("{s:?}: expected a usage error, got {other:?}"),
        }
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static N: AtomicUsize = AtomicUsize::new(0);
            let p = std::env::temp_dir().join(format!(
                "husk-bench-test-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&p).unwrap();
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `f(false)`; if O_DIRECT is refused there, checks the message and
    /// runs `f(true)` (buffered allowed), expecting `direct=0`.
    fn direct_or_buffered(f: impl Fn(bool) -> Result<Report, Error>) -> Report {
        match f(false) {
            Ok(r) => {
                assert_eq!(r.get("direct"), Some("1"), "{r}");
                r
            }
            Err(Error::Io(m)) if m.contains("O_DIRECT refused") => {
                assert!(m.contains("--buffered"), "{m}");
                let r = f(true).unwrap();
                assert_eq!(r.get("direct"), Some("0"), "{r}");
                r
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// The printed form parses back to the same report.
    fn roundtrip(r: &Report) {
        let line = r.to_string();
        assert!(!line.contains('\n'));
        assert_eq!(Report::parse(&line).as_ref(), Some(r), "{line}");
        for (_, v) in r.fields().iter().skip(1) {
            assert!(v.parse::<f64>().is_ok(), "not a plain number: {line}");
            assert!(!v.contains(['e', 'E']), "exponent in {line}");
        }
    }

    #[test]
    fn parses_good_arguments() {
        assert_eq!(
            parse_args(&args("seq-write --buffered /dev/vdb 64")).unwrap(),
            Command::Seq {
                write: true,
                path: "/dev/vdb".into(),
                mib: 64,
                buffered: true
            }
        );
        assert_eq!(
            parse_args(&args("rand-read f 8 0.5")).unwrap(),
            Command::Rand {
                write: false,
                path: "f".into(),
                mib: 8,
                secs: Duration::from_millis(500),
                buffered: false
            }
        );
        assert_eq!(
            parse_args(&args("tcp-rr [::1]:5000 100")).unwrap(),
            Command::TcpRr {
                addr: "[::1]:5000".into(),
                count: 100
            }
        );
        assert_eq!(
            parse_args(&args("hold 0 stdin")).unwrap(),
            Command::Hold {
                mib: 0,
                wait: Wait::StdinEof
            }
        );
        assert_eq!(
            parse_args(&args("tcp-sink 9000")).unwrap(),
            Command::TcpSink { port: 9000 }
        );
        assert_eq!(
            parse_args(&args("flops 1024 0")).unwrap(),
            Command::Flops {
                n: 1024,
                threads: 0
            }
        );
        assert_eq!(
            parse_args(&args("stream 512 2")).unwrap(),
            Command::Stream {
                mib: 512,
                threads: 2
            }
        );
        assert_eq!(
            parse_args(&args("gups 256 1000 1")).unwrap(),
            Command::Gups {
                mib: 256,
                updates: 1000,
                threads: 1
            }
        );
        assert_eq!(parse_args(&args("echo-ready")).unwrap(), Command::EchoReady);
        assert_eq!(parse_args(&args("--help")).unwrap(), Command::Help);
        assert_eq!(parse_args(&args("seq-read --help")).unwrap(), Command::Help);
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(usage_err("").contains("no subcommand"));
        assert!(usage_err("frobnicate").contains("unknown subcommand"));
        assert!(usage_err("seq-write f").contains("expected 2 argument"));
        assert!(usage_err("seq-write f 0").contains("MIB must be a positive integer"));
        assert!(usage_err("seq-write f -3").contains("MIB"));
        assert!(usage_err("seq-write f 99999999999999").contains("too large"));
        assert!(usage_err("seq-write f 1 --buffered").contains("before the positional"));
        assert!(usage_err("seq-write --direct f 1").contains("unknown option --direct"));
        assert!(usage_err("rand-read f 1 0").contains("SECS must be a positive"));
        assert!(usage_err("rand-read f 1 nan").contains("SECS"));
        assert!(usage_err("rand-write f 1 inf").contains("SECS"));
        assert!(usage_err("tcp-sink 0").contains("PORT must be 1-65535"));
        assert!(usage_err("tcp-sink 70000").contains("PORT"));
        assert!(usage_err("tcp-send --buffered h:1 1").contains("applies only"));
        assert!(usage_err("tcp-send localhost 1").contains("HOST:PORT"));
        assert!(usage_err("tcp-send :80 1").contains("HOST:PORT"));
        assert!(usage_err("tcp-rr h:1 0").contains("COUNT"));
        assert!(usage_err("hold 1 -1").contains("SECS must be a non-negative"));
        assert!(usage_err("echo-ready x").contains("expected 0 argument"));
        assert!(usage_err("flops 0 1").contains("N must be a positive integer"));
        assert!(usage_err("flops 64 -1").contains("THREADS must be 0"));
        assert!(usage_err("stream 0 1").contains("MIB must be a positive"));
        assert!(usage_err("gups 1 0 1").contains("UPDATES must be a positive"));
        assert!(usage_err("gups 1 10 2000").contains("THREADS"));
        assert_eq!(Error::Usage(String::new()).exit_code(), 2);
        assert_eq!(Error::Io(String::new()).exit_code(), 1);
    }

    #[test]
    fn report_format_and_parse() {
        let r = Report::new("x")
            .int("bytes", 1_048_576)
            .num("secs", 0.000_001_234, 6)
            .num("rate", 1e20, 2)
            .num("bad", f64::NAN, 1);
        assert_eq!(
            r.to_string(),
            "op=x bytes=1048576 secs=0.000001 rate=100000000000000000000.00 bad=0.0"
        );
        roundtrip(&r);
        assert_eq!(Report::parse("bytes=1 op=x"), None);
        assert_eq!(Report::parse("op=x junk"), None);
        assert_eq!(Report::parse("op=x =1"), None);
        assert_eq!(Report::parse(""), None);
    }

    #[test]
    fn percentiles() {
        assert_eq!(median_us(&[]), 0.0);
        assert_eq!(median_us(&[1000, 3000]), 2.0);
        assert_eq!(median_us(&[1000, 2000, 9000]), 2.0);
        let v: Vec<u32> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile_us(&v, 99.0), 99.0);
        assert_eq!(percentile_us(&v[..1], 99.0), 1.0);
    }

    #[test]
    fn seq_write_then_read_and_rand() {
        let dir = TempDir::new();
        let f = dir.0.join("disk.img");
        let w = direct_or_buffered(|b| seq(true, &f, 4, b));
        assert_eq!(w.get("op"), Some("seq-write"));
        assert_eq!(w.get("bytes"), Some("4194304"));
        assert!(w.get_f64("mb_per_s").unwrap() > 0.0, "{w}");
        roundtrip(&w);
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 4 * MIB as u64);

        let r = direct_or_buffered(|b| seq(false, &f, 4, b));
        assert_eq!(r.get("op"), Some("seq-read"));
        assert_eq!(r.get("bytes"), Some("4194304"));
        assert!(r.get_f64("mb_per_s").unwrap() > 0.0, "{r}");
        roundtrip(&r);

        let rr = direct_or_buffered(|b| rand(false, &f, 4, Duration::from_millis(200), b));
        assert_eq!(rr.get("op"), Some("rand-read"));
        assert!(rr.get_f64("iops").unwrap() > 0.0, "{rr}");
        assert!(rr.get_f64("ios").unwrap() >= 1.0, "{rr}");
        assert!(rr.get_f64("secs").unwrap() >= 0.2, "{rr}");
        assert!(rr.get_f64("lat_us_median").unwrap() > 0.0, "{rr}");
        roundtrip(&rr);

        let rw = direct_or_buffered(|b| rand(true, &f, 2, Duration::from_millis(100), b));
        assert_eq!(rw.get("op"), Some("rand-write"));
        assert!(rw.get_f64("iops").unwrap() > 0.0, "{rw}");
        roundtrip(&rw);
        // rand-write writes in place: the file keeps its size.
        assert_eq!(std::fs::metadata(&f).unwrap().len(), 4 * MIB as u64);
    }

    #[test]
    fn disk_errors_name_the_path() {
        let dir = TempDir::new();
        let small = dir.0.join("small");
        std::fs::write(&small, vec![1u8; PAGE]).unwrap();
        for res in [
            rand(false, &small, 1, Duration::from_millis(10), true),
            seq(false, &small, 1, true),
        ] {
            let e = res.unwrap_err();
            assert_eq!(e.exit_code(), 1);
            let m = e.to_string();
            assert!(
                m.contains("small") && m.contains("needs at least 1 MiB"),
                "{m}"
            );
        }
        let missing = dir.0.join("no/such/dir/f");
        let e = seq(true, &missing, 1, true).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        let m = e.to_string();
        assert!(m.contains("no/such/dir/f") && m.contains("os error"), "{m}");
    }

    #[test]
    fn o_direct_refusal_is_an_error_unless_buffered() {
        // procfs refuses O_DIRECT at open (EINVAL); here tmpfs and ext4 both
        // accept it, so this is the refusal path's test.
        let p = Path::new("/proc/self/status");
        if !p.exists() {
            return;
        }
        let m = seq(false, p, 1, false).unwrap_err().to_string();
        assert!(
            m.starts_with("/proc/self/status: open: O_DIRECT refused") && m.contains("--buffered"),
            "{m}"
        );
        // With --buffered the buffered open succeeds and the run goes on to
        // the size check, which procfs cannot answer (no SEEK_END).
        let m = seq(false, p, 1, true).unwrap_err().to_string();
        assert!(
            m.starts_with("/proc/self/status: cannot tell its size: seek:"),
            "{m}"
        );
    }

    fn ephemeral() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap().to_string();
        (l, a)
    }

    #[test]
    fn tcp_sink_and_send() {
        let (l, addr) = ephemeral();
        let sink = std::thread::spawn(move || tcp_sink(&l));
        let sent = tcp_send(&addr, 8).unwrap();
        let got = sink.join().unwrap().unwrap();
        assert_eq!(sent.get("bytes"), Some("8388608"));
        assert_eq!(got.get("bytes"), Some("8388608"));
        assert_eq!(got.get("op"), Some("tcp-sink"));
        assert!(sent.get_f64("mb_per_s").unwrap() > 0.0, "{sent}");
        assert!(got.get_f64("mb_per_s").unwrap() > 0.0, "{got}");
        roundtrip(&sent);
        roundtrip(&got);
    }

    #[test]
    fn tcp_send_retries_until_the_peer_listens() {
        // Find a free port, then start listening on it only after the
        // sender has begun connecting.
        let port = ephemeral().0.local_addr().unwrap().port();
        let sender = std::thread::spawn(move || tcp_send(&format!("127.0.0.1:{port}"), 1));
        std::thread::sleep(Duration::from_millis(300));
        let l = TcpListener::bind(("127.0.0.1", port)).unwrap();
        let got = tcp_sink(&l).unwrap();
        assert_eq!(got.get("bytes"), Some("1048576"));
        assert_eq!(
            sender.join().unwrap().unwrap().get("bytes"),
            Some("1048576")
        );
    }

    #[test]
    fn tcp_echo_and_rr() {
        let (l, addr) = ephemeral();
        let echo = std::thread::spawn(move || tcp_echo(&l));
        let rr = tcp_rr(&addr, 200).unwrap();
        let e = echo.join().unwrap().unwrap();
        assert_eq!(e.to_string(), format!("op=tcp-echo bytes={}", 200 * RR_MSG));
        assert_eq!(rr.get("count"), Some("200"));
        let med = rr.get_f64("rtt_us_median").unwrap();
        let p99 = rr.get_f64("rtt_us_p99").unwrap();
        assert!(med > 0.0 && p99 >= med, "{rr}");
        roundtrip(&rr);
    }

    #[test]
    fn udp_echo_answers_each_sender() {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let at = socket.local_addr().unwrap();
        let echo = std::thread::spawn(move || udp_echo(&socket, 2));
        for msg in [&b"one"[..], b"two!"] {
            let c = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            c.send_to(msg, at).unwrap();
            let mut buf = [0u8; 16];
            let n = c.recv(&mut buf).unwrap();
            assert_eq!(&buf[..n], msg);
        }
        let r = echo.join().unwrap().unwrap();
        assert_eq!(r.to_string(), "op=udp-echo datagrams=2 bytes=7");
        assert!(parse_args(&["udp-echo".into(), "7".into()]).is_err());
    }

    #[test]
    fn connect_errors_name_the_address() {
        let e = tcp_rr("no-such-host.invalid:1", 1).unwrap_err();
        assert_eq!(e.exit_code(), 1);
        assert!(
            e.to_string()
                .starts_with("no-such-host.invalid:1: connect:"),
            "{e}"
        );
    }

    #[test]
    fn hold_prints_ready_then_waits() {
        let mut out = Vec::new();
        hold(3, Wait::For(Duration::ZERO), &mut io::empty(), &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "op=hold mib=3 ready=1\n");
        let mut out = Vec::new();
        let mut input: &[u8] = b"some input then EOF";
        hold(0, Wait::StdinEof, &mut input, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "op=hold mib=0 ready=1\n");
    }

    #[test]
    fn run_prints_one_line() {
        let mut out = Vec::new();
        run(&Command::EchoReady, &mut io::empty(), &mut out).unwrap();
        assert_eq!(out, b"op=ready\n");
        let mut out = Vec::new();
        run(&Command::Help, &mut io::empty(), &mut out).unwrap();
        assert!(String::from_utf8(out)
            .unwrap()
            .starts_with("usage: husk-bench"));
    }

    #[test]
    fn aligned_buffer_is_aligned_and_patterned() {
        let b = AlignedBuf::new(MIB).unwrap();
        assert_eq!(b.as_slice().as_ptr() as usize % PAGE, 0);
        assert_eq!(b.as_slice().len(), MIB);
        assert!(b.as_slice().iter().any(|&x| x != 0));
        assert!(AlignedBuf::new(0).is_err());
    }
}
