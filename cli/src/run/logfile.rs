//! A detached container's `stdout.log` and `stderr.log`, size-capped with
//! rotation, as Docker's `--log-opt max-size=... --log-opt max-file=...`:
//! a container that prints forever fills at most `max-size × max-file` of
//! the host's disk, and `husk logs` shows the newest of it.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// `--log-opt` as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogOpts {
    /// Bytes a file holds before it is rotated.
    pub max_size: u64,
    /// Files kept, the one written included.
    pub max_file: u32,
}

impl Default for LogOpts {
    /// Docker's `local` driver keeps 5 × 20 MiB; a microVM's logs are
    /// for `husk logs`, so less.
    fn default() -> Self {
        LogOpts {
            max_size: 10 << 20,
            max_file: 3,
        }
    }
}

/// Parses `--log-opt KEY=VALUE` flags (max-size, max-file); any other key
/// is refused, not ignored.
pub fn parse(opts: &[String]) -> Result<LogOpts, String> {
    let mut out = LogOpts::default();
    for opt in opts {
        let bad = |why: &str| format!("--log-opt {opt:?}: {why}");
        let (key, value) = opt
            .split_once('=')
            .ok_or_else(|| bad("expected KEY=VALUE"))?;
        match key {
            "max-size" => {
                out.max_size = super::spec::size(value)
                    .map_err(|_| bad("expected a size like 10m or 512k"))?;
            }
            "max-file" => {
                out.max_file = value
                    .parse()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or_else(|| bad("expected a number of files above 0"))?;
            }
            _ => return Err(bad("husk's logs take max-size and max-file only")),
        }
    }
    Ok(out)
}

/// A log file that rotates at its size: `NAME` is written, `NAME.1` is
/// the file before it, and so on up to `max_file - 1`.
pub struct Rotating {
    path: PathBuf,
    file: File,
    written: u64,
    opts: LogOpts,
}

fn numbered(path: &Path, n: u32) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(format!(".{n}"));
    PathBuf::from(p)
}

impl Rotating {
    pub fn create(path: &Path, opts: LogOpts) -> io::Result<Rotating> {
        Ok(Rotating {
            path: path.to_owned(),
            file: File::create(path)?,
            written: 0,
            opts,
        })
    }

    fn rotate(&mut self) -> io::Result<()> {
        if self.opts.max_file > 1 {
            for n in (1..self.opts.max_file - 1).rev() {
                let from = numbered(&self.path, n);
                if from.exists() {
                    std::fs::rename(&from, numbered(&self.path, n + 1))?;
                }
            }
            std::fs::rename(&self.path, numbered(&self.path, 1))?;
        }
        self.file = File::create(&self.path)?;
        self.written = 0;
        Ok(())
    }
}

impl Write for Rotating {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written > 0 && self.written + buf.len() as u64 > self.opts.max_size {
            self.rotate()?;
        }
        // A write larger than a whole file goes in pieces, each file at
        // most its size.
        let room = usize::try_from(self.opts.max_size.saturating_sub(self.written))
            .unwrap_or(usize::MAX)
            .max(1);
        let n = self.file.write(&buf[..buf.len().min(room)])?;
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// A log's whole kept text, oldest first: `NAME.N` … `NAME.1`, `NAME`.
pub fn read_all(path: &Path) -> io::Result<Vec<u8>> {
    let mut older = Vec::new();
    let mut n = 1;
    while numbered(path, n).exists() {
        older.push(numbered(path, n));
        n += 1;
    }
    let mut out = Vec::new();
    for p in older.iter().rev() {
        out.extend(std::fs::read(p)?);
    }
    out.extend(std::fs::read(path)?);
    Ok(out)
}

/// The log's files besides `NAME` (for the run directory's cleanup).
pub fn is_rotated_of(name: &str, base: &str) -> bool {
    name.strip_prefix(base)
        .and_then(|rest| rest.strip_prefix('.'))
        .is_some_and(|n| n.parse::<u32>().is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_opts_parse_and_refuse_what_they_do_not_know() {
        assert_eq!(parse(&[]).unwrap(), LogOpts::default());
        let o = parse(&["max-size=1k".into(), "max-file=2".into()]).unwrap();
        assert_eq!((o.max_size, o.max_file), (1024, 2));
        for bad in [
            "max-size",
            "max-size=big",
            "max-file=0",
            "mode=non-blocking",
        ] {
            assert!(parse(&[bad.into()]).unwrap_err().starts_with("--log-opt"));
        }
    }

    #[test]
    fn a_log_rotates_at_its_size_and_keeps_its_newest_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stdout.log");
        let opts = LogOpts {
            max_size: 10,
            max_file: 3,
        };
        let mut log = Rotating::create(&path, opts).unwrap();
        for i in 0..10 {
            writeln!(log, "line {i}").unwrap();
        }
        // 7 bytes a line, 10 a file: one line each; three files kept.
        assert_eq!(read_all(&path).unwrap(), b"line 7\nline 8\nline 9\n");
        assert!(!numbered(&path, 3).exists());
        // A write bigger than a file is split, never lost past the cap.
        log.write_all(&[b'x'; 25]).unwrap();
        assert_eq!(read_all(&path).unwrap(), vec![b'x'; 25]);
        assert!(is_rotated_of("stdout.log.2", "stdout.log"));
        assert!(!is_rotated_of("stdout.log.tmp", "stdout.log"));
        // One file: rotated in place.
        let one = dir.path().join("one.log");
        let mut log = Rotating::create(
            &one,
            LogOpts {
                max_size: 4,
                max_file: 1,
            },
        )
        .unwrap();
        log.write_all(b"abcdefgh").unwrap();
        assert_eq!(read_all(&one).unwrap(), b"efgh");
    }
}
