//! The VMM's log (`PUT /logger`, the config file's `logger`): a `log`
//! implementation writing lines to a file, installed once, retargeted by
//! each PUT. Levels follow Firecracker's (Error, Warning, Info, Debug,
//! Trace, Off); the default is Warning.
//!
//! A guest decides how often many of these lines are written (a malformed
//! request, a notification for a queue that does not exist), so the log is
//! bounded twice: each call site may write [`BURST`] lines per [`WINDOW`],
//! the rest are counted and reported as one "suppressed" line when it next
//! writes; and a file takes at most [`MAX_BYTES`], after which one last line
//! says so. A million bad notifications used to write 62 MB.

use husk_api::model::{LogLevel, Logger};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one call site may write per window.
const BURST: u32 = 10;
const WINDOW: Duration = Duration::from_secs(5);
/// The most a log file gets from one husk process.
const MAX_BYTES: u64 = 16 << 20;

/// What a call site may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// Write the line, after saying how many were suppressed before it.
    Write {
        suppressed: u64,
    },
    Suppress,
}

#[derive(Default)]
struct Site {
    window_start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

/// Per-call-site rate limiting (a call site is a file and line).
#[derive(Default)]
struct Throttle {
    sites: HashMap<(&'static str, u32), Site>,
}

impl Throttle {
    fn check(&mut self, site: (&'static str, u32), now: Instant) -> Verdict {
        let s = self.sites.entry(site).or_default();
        let fresh = s
            .window_start
            .is_none_or(|start| now.duration_since(start) >= WINDOW);
        if fresh {
            s.window_start = Some(now);
            s.written = 0;
        }
        if s.written >= BURST {
            s.suppressed += 1;
            return Verdict::Suppress;
        }
        s.written += 1;
        Verdict::Write {
            suppressed: std::mem::take(&mut s.suppressed),
        }
    }
}

struct Sink {
    file: Option<std::fs::File>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
    throttle: Option<Throttle>,
    /// Bytes written to `file`, and whether the cap's line is out.
    written: u64,
    capped: bool,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    show_level: false,
    show_origin: false,
    module: None,
    throttle: None,
    written: 0,
    capped: false,
});

impl Sink {
    /// Writes one line unless the file is full; the line that fills it is
    /// replaced by a note saying so.
    fn write_line(&mut self, line: &str) {
        let Some(f) = self.file.as_mut() else {
            return;
        };
        if self.capped {
            return;
        }
        let len = line.len() as u64 + 1;
        if self.written + len > MAX_BYTES {
            self.capped = true;
            let _ = writeln!(
                f,
                "husk: the log reached {MAX_BYTES} bytes; nothing more is written to it"
            );
            return;
        }
        self.written += len;
        let _ = writeln!(f, "{line}");
    }
}

struct FileLogger;

impl log::Log for FileLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(prefix) = &sink.module {
            if !record.target().starts_with(prefix.as_str()) {
                return;
            }
        }
        let site = (
            record.file_static().unwrap_or("?"),
            record.line().unwrap_or(0),
        );
        let verdict = sink
            .throttle
            .get_or_insert_with(Throttle::default)
            .check(site, Instant::now());
        let Verdict::Write { suppressed } = verdict else {
            return;
        };
        if suppressed > 0 {
            sink.write_line(&format!(
                "husk: {suppressed} more lines from {}:{} were suppressed",
                site.0, site.1
            ));
        }
        let mut line = String::new();
        if sink.show_level {
            line.push_str(&format!("[{}] ", record.level()));
        }
        if sink.show_origin {
            line.push_str(&format!(
                "{}:{} ",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&record.args().to_string());
        sink.write_line(&line);
    }

    fn flush(&self) {}
}

fn filter(level: Option<LogLevel>) -> log::LevelFilter {
    match level {
        Some(LogLevel::Off) => log::LevelFilter::Off,
        Some(LogLevel::Error) => log::LevelFilter::Error,
        None | Some(LogLevel::Warning) => log::LevelFilter::Warn,
        Some(LogLevel::Info) => log::LevelFilter::Info,
        Some(LogLevel::Debug) => log::LevelFilter::Debug,
        Some(LogLevel::Trace) => log::LevelFilter::Trace,
    }
}

/// Points the log at `config`'s file and level.
pub fn configure(config: &Logger) -> Result<(), String> {
    static LOGGER: FileLogger = FileLogger;
    // set_logger fails only when already installed, which is fine.
    let _ = log::set_logger(&LOGGER);
    let file = match &config.log_path {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("log_path {p}: {e}"))?,
        ),
        None => None,
    };
    let mut sink = SINK.lock().unwrap_or_else(|p| p.into_inner());
    sink.written = file
        .as_ref()
        .and_then(|f| f.metadata().ok())
        .map_or(0, |m| m.len());
    sink.capped = false;
    sink.file = file;
    sink.show_level = config.show_level.unwrap_or(false);
    sink.show_origin = config.show_log_origin.unwrap_or(false);
    sink.module = config.module.clone();
    log::set_max_level(filter(config.level));
    Ok(())
}

/// `HUSK_LOG=FILE [HUSK_LOG_LEVEL=debug]`: the log of any husk command
/// (a VMM can also set it through PUT /logger); nothing without HUSK_LOG.
pub fn configure_from_env() -> Result<(), String> {
    let Some(path) = std::env::var_os("HUSK_LOG") else {
        return Ok(());
    };
    let level = std::env::var("HUSK_LOG_LEVEL").unwrap_or_else(|_| "Info".into());
    let config = Logger {
        log_path: Some(path.to_string_lossy().into_owned()),
        level: serde_json::from_value(serde_json::Value::String(capitalize(&level))).ok(),
        show_level: Some(true),
        show_log_origin: None,
        module: None,
    };
    configure(&config)
}

/// "debug" → "Debug", the API's spelling of a level.
fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| {
            f.to_uppercase()
                .chain(c.flat_map(|x| x.to_lowercase()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_site_writes_a_burst_per_window_and_counts_the_rest() {
        let mut t = Throttle::default();
        let t0 = Instant::now();
        let site = ("devices/src/x.rs", 7);
        for i in 0..BURST {
            assert_eq!(t.check(site, t0), Verdict::Write { suppressed: 0 }, "{i}");
        }
        for _ in 0..1000 {
            assert_eq!(
                t.check(site, t0 + Duration::from_secs(1)),
                Verdict::Suppress
            );
        }
        // Another call site has its own budget.
        assert_eq!(
            t.check(("devices/src/y.rs", 1), t0),
            Verdict::Write { suppressed: 0 }
        );
        // The next window says how many were dropped.
        assert_eq!(
            t.check(site, t0 + WINDOW),
            Verdict::Write { suppressed: 1000 }
        );
        assert_eq!(t.check(site, t0 + WINDOW), Verdict::Write { suppressed: 0 });
    }

    /// A million guest-triggered lines from one call site, and a sweep over
    /// a thousand call sites, through the real logger into a real file.
    #[test]
    fn a_flood_of_lines_leaves_a_bounded_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vmm.log");
        configure(&Logger {
            log_path: Some(path.display().to_string()),
            level: Some(LogLevel::Warning),
            show_level: Some(true),
            show_log_origin: None,
            module: None,
        })
        .unwrap();
        for i in 0..1_000_000u32 {
            log::warn!("virtio-mmio: notification for queue {i}, which does not exist");
        }
        let after_flood = std::fs::metadata(&path).unwrap().len();
        assert!(after_flood < 4096, "{after_flood} bytes");
        // A different message from every call site still passes, but the
        // file never grows past its cap.
        let mut t = Throttle::default();
        let now = Instant::now();
        let passed = (0..1000u32)
            .filter(|&line| t.check(("sweep.rs", line), now) != Verdict::Suppress)
            .count();
        assert_eq!(passed, 1000);
        {
            let mut sink = SINK.lock().unwrap();
            let big = "x".repeat(1 << 20);
            for _ in 0..40 {
                sink.write_line(&big);
            }
        }
        let capped = std::fs::metadata(&path).unwrap().len();
        assert!(capped <= MAX_BYTES + 200, "{capped} bytes");
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.ends_with("nothing more is written to it\n"));
        // Nothing else lands once the cap is reached.
        log::error!("after the cap");
        assert_eq!(std::fs::metadata(&path).unwrap().len(), capped);
    }
}
