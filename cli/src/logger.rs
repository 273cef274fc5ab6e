//! The VMM's log (`PUT /logger`, the config file's `logger`): a `log`
//! implementation writing lines to a file, installed once, retargeted by
//! each PUT. Levels follow Firecracker's (Error, Warning, Info, Debug,
//! Trace, Off); the default is Warning.

use husk_api::model::{LogLevel, Logger};
use std::io::Write;
use std::sync::Mutex;

struct Sink {
    file: Option<std::fs::File>,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
}

static SINK: Mutex<Sink> = Mutex::new(Sink {
    file: None,
    show_level: false,
    show_origin: false,
    module: None,
});

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
        if let Some(f) = sink.file.as_mut() {
            let _ = writeln!(f, "{line}");
        }
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
    sink.file = file;
    sink.show_level = config.show_level.unwrap_or(false);
    sink.show_origin = config.show_log_origin.unwrap_or(false);
    sink.module = config.module.clone();
    log::set_max_level(filter(config.level));
    Ok(())
}
