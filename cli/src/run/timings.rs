//! `HUSK_TIMINGS=1`: the run's phase marks on stderr (the startup bench's
//! breakdown), in milliseconds since the run began.

use std::time::Instant;

static TIMINGS: std::sync::Mutex<Vec<(&str, f64)>> = std::sync::Mutex::new(Vec::new());
/// The guest's steps of the container's creation, in milliseconds each.
static GUEST: std::sync::Mutex<Vec<(String, f64)>> = std::sync::Mutex::new(Vec::new());
static RUN_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

pub fn mark(phase: &'static str) {
    let ms = RUN_START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3;
    TIMINGS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push((phase, ms));
}

/// What the agent said each step of creating the container took.
pub fn guest_steps(steps: &[husk_wire::agent::Step]) {
    let mut g = GUEST.lock().unwrap_or_else(|p| p.into_inner());
    g.extend(
        steps
            .iter()
            .map(|s| (s.name.clone(), s.micros as f64 / 1e3)),
    );
}

/// The marks on one line, then the guest's steps (durations, not marks)
/// on another, `husk-timings-guest-create:`.
pub fn print() {
    if std::env::var_os("HUSK_TIMINGS").is_none() {
        return;
    }
    let t = TIMINGS.lock().unwrap_or_else(|p| p.into_inner());
    let fields: Vec<String> = t.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
    eprintln!("husk-timings: {}", fields.join(" "));
    let g = GUEST.lock().unwrap_or_else(|p| p.into_inner());
    if !g.is_empty() {
        let fields: Vec<String> = g.iter().map(|(k, v)| format!("{k}={v:.1}")).collect();
        eprintln!("husk-timings-guest-create: {}", fields.join(" "));
    }
}
