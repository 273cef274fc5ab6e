//! The binary's contract: one stdout line on success, one stderr line and
//! exit 2 for bad arguments, exit 1 for I/O failures.

use std::process::{Command, Output};

fn bench(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_husk-bench"))
        .args(args)
        .output()
        .expect("run husk-bench")
}

fn text(b: &[u8]) -> String {
    String::from_utf8(b.to_vec()).unwrap()
}

#[test]
fn echo_ready_prints_one_line() {
    let o = bench(&["echo-ready"]);
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stdout), "op=ready\n");
    assert!(o.stderr.is_empty());
}

#[test]
fn help_exits_zero() {
    let o = bench(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(text(&o.stdout).contains("seq-write"));
}

#[test]
fn bad_arguments_exit_2_with_one_line() {
    for args in [
        &[][..],
        &["nope"][..],
        &["seq-write", "f"][..],
        &["tcp-rr", "host", "10"][..],
    ] {
        let o = bench(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let err = text(&o.stderr);
        assert!(err.starts_with("husk-bench: "), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn io_failure_exits_1_naming_the_path() {
    let o = bench(&["seq-read", "/nonexistent/husk-bench-file", "1"]);
    assert_eq!(o.status.code(), Some(1));
    let err = text(&o.stderr);
    assert!(
        err.starts_with("husk-bench: /nonexistent/husk-bench-file: open: "),
        "{err}"
    );
    assert!(err.contains("os error 2"), "{err}");
    assert_eq!(err.lines().count(), 1);
}

#[test]
fn hold_stdin_waits_for_eof() {
    let o = Command::new(env!("CARGO_BIN_EXE_husk-bench"))
        .args(["hold", "2", "stdin"])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(text(&o.stdout), "op=hold mib=2 ready=1\n");
}
