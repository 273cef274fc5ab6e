//! Skipping a test honestly. Rust's test harness has no "skipped" result, so
//! a test that cannot run here (no root, no TAP, no cgroup2) calls [`skip`]
//! and returns:
//!
//! - it prints `SKIPPED <test>: <why>` on stderr and appends the same line
//!   to `$HUSK_SKIP_LOG` when that is set (`scripts/test` lists the file at
//!   the end of the suite);
//! - with `HUSK_NO_SKIP=1` it fails the test instead. `scripts/test` sets it
//!   when run as root, which is how CI runs it: there, `scripts/setup` has
//!   installed everything, so a test that would skip is a broken test.
//!
//! [`not_applicable`] is for the other kind: a test about one kind of host
//! (e.g. the kvm_pvm refusal) on a host of another kind. It is reported
//! the same way and never fails.

use std::io::Write;

/// Set to `1`: a skip fails the test.
pub const NO_SKIP_ENV: &str = "HUSK_NO_SKIP";
/// A file to append each skip to.
pub const LOG_ENV: &str = "HUSK_SKIP_LOG";

/// The test cannot run here for want of `why` (root, a device, a tool).
/// Panics under `HUSK_NO_SKIP=1`; otherwise reports and returns.
pub fn skip(why: &str) {
    let test = current_test();
    if std::env::var_os(NO_SKIP_ENV).is_some_and(|v| v == "1") {
        panic!("{test} cannot run here ({why}), and {NO_SKIP_ENV}=1 forbids skipping");
    }
    report(&test, why);
}

/// The test is about another kind of host; reported, never a failure.
pub fn not_applicable(why: &str) {
    report(&current_test(), &format!("not applicable: {why}"));
}

/// The harness names each test's thread after the test.
fn current_test() -> String {
    let crate_name = std::env::var("CARGO_CRATE_NAME").unwrap_or_default();
    let name = std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_owned();
    if crate_name.is_empty() {
        name
    } else {
        format!("{crate_name}::{name}")
    }
}

fn report(test: &str, why: &str) {
    let line = format!("SKIPPED {test}: {why}");
    eprintln!("{line}");
    if let Some(path) = std::env::var_os(LOG_ENV) {
        // One write per line with O_APPEND: lines of tests running at the
        // same time do not interleave.
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            eprintln!("husk-skip: {}: {e}", std::path::Path::new(&path).display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test touches the environment, so nothing races with it.
    #[test]
    fn skips_are_logged_and_fail_when_forbidden() {
        let log = std::env::temp_dir().join(format!("husk-skip-{}.log", std::process::id()));
        let _ = std::fs::remove_file(&log);
        // SAFETY (of the calls): this test is the only one in the binary
        // that reads or writes these variables.
        std::env::set_var(LOG_ENV, &log);
        std::env::remove_var(NO_SKIP_ENV);
        skip("needs a unicorn");
        not_applicable("another host");
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("tests::skips_are_logged_and_fail_when_forbidden: needs a unicorn\n"));
        assert!(text.contains(": not applicable: another host\n"));
        std::env::set_var(NO_SKIP_ENV, "1");
        let caught = std::panic::catch_unwind(|| skip("needs root"));
        not_applicable("still fine");
        std::env::remove_var(NO_SKIP_ENV);
        std::env::remove_var(LOG_ENV);
        let _ = std::fs::remove_file(&log);
        let message = caught.unwrap_err();
        let message = message.downcast_ref::<String>().unwrap();
        assert!(message.contains("needs root"), "{message}");
    }
}
