//! `HUSK_TIMINGS=1`: the run's phase marks on stderr (the startup bench's
//! breakdown), in milliseconds since the run began.

use std::time::Instant;

static TIMINGS: std::sync::Mutex<Vec<(&str, f64)>> = std::sync::Mutex::new(Vec::new());
static RUN_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub fn mark(phase: &'static str) {
    let ms = RUN_START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3;
    TIMINGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((phase, ms));
}

pub fn print() {
    if std::env::var_os("HUSK_TIMINGS").is_none() {
        return;
    }
    let t = TIMINGS.lock().unwrap_or_else(|p| p.into_inner());
    let fields: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
    eprintln!("husk-timings: {}", fields.join(" "));
}
