//! The host's agent session under stress: a guest that floods a reader who
//! never reads, a terminal that changes size under `husk exec -t`, and two
//! exec clients at once on the same stream id.

use crate::run::{entries, husk, husk_processes, wait_status, Run, TIMEOUT};
use husk_tests::require_linux_kvm;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// VmRSS of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    husk_tests::vm_rss_kib(pid).unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// `husk run IMAGE cat /dev/zero | sleep 1d`: the container writes as fast
/// as it can and nobody reads husk's stdout. husk must stop reading the
/// agent (vsock credit then stops the guest) instead of queueing: its RSS
/// stays under the VM's memory (the guest's RAM is in husk's RSS) plus
/// 64 MiB. Then three Ctrl-Cs must end it although its output is stuck.
#[test]
fn a_flood_nobody_reads_keeps_husk_bounded_and_ctrl_c_still_works() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    let r = Run::new();
    // --memory 32m: a VM of 32 + 96 MiB (the guest's overhead).
    const VM_MIB: u64 = 128;
    let mut cmd = r.command(
        &["--rm", "--memory", "32m"],
        &["sh", "-c", "echo flooding >&2; cat /dev/zero"],
    );
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Held, never read: the pipe fills and stays full.
    let _stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let err_thread = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = stderr.read(&mut buf) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&buf[..n]);
            if all.windows(8).any(|w| w == b"flooding") {
                let _ = tx.send(());
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    assert!(
        rx.recv_timeout(TIMEOUT).is_ok(),
        "the container never started"
    );
    let pid = child.id();
    let mut peak = 0;
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_secs(30) {
        peak = peak.max(rss_kib(pid));
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("husk RSS peak while flooding: {} MiB", peak >> 10);
    let bound = (VM_MIB + 64) << 10;
    // Three Ctrl-Cs: the container's PID 1 (cat) ignores the first, the
    // second kills it (its exit cannot come back: our stdout is stuck), the
    // third stops the VM.
    for _ in 0..3 {
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe { libc::kill(pid as i32, libc::SIGINT) };
        std::thread::sleep(Duration::from_secs(2));
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let err = err_thread.join().unwrap();
    assert!(
        peak <= bound,
        "husk grew to {} MiB (bound {} MiB) while its output was not read",
        peak >> 10,
        bound >> 10
    );
    let status = status.unwrap_or_else(|| panic!("husk ignored three SIGINTs; stderr: {err}"));
    assert_eq!(status.code(), Some(130), "stderr: {err}");
    assert_eq!(
        entries(r.runtime.path()),
        Vec::<String>::new(),
        "run dirs left"
    );
    assert_eq!(husk_processes(&r), Vec::<i32>::new(), "husk processes left");
}

/// A pseudo-terminal of a size: the master, and the slave for a child.
fn pty(rows: u16, cols: u16) -> (OwnedFd, OwnedFd) {
    let (mut master, mut slave) = (-1, -1);
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the locals; the name pointer may
    // be null and the termios pointer too; the winsize lives for the call.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &ws,
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened for us and nothing else owns them.
    unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) }
}

fn set_size(master: &OwnedFd, rows: u16, cols: u16) {
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the winsize we pass; the kernel signals the
    // terminal's foreground process group (husk) with SIGWINCH.
    let r = unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
    assert_eq!(r, 0, "TIOCSWINSZ: {}", std::io::Error::last_os_error());
}

/// `husk exec -t` gives the process our terminal's size, and its changes.
#[test]
fn exec_with_a_tty_follows_the_terminal_size() {
    require_linux_kvm();
    let r = Run::new();
    let started = r.run(&["-d"], &["sh", "-c", "while :; do sleep 1; done"]);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    let (master, slave) = pty(40, 100);
    let mut cmd = Command::new(husk_tests::husk::binary());
    cmd.args(["exec", "-t", &id, "sh", "-c"])
        .arg(
            "echo size $(stty size); \
             while [ \"$(stty size)\" != \"50 120\" ]; do sleep 0.2; done; echo resized",
        )
        .env("HUSK_RUNTIME_DIR", r.runtime.path())
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave));
    // SAFETY: setsid and TIOCSCTTY are async-signal-safe; they make the
    // pty husk's controlling terminal, so resizes signal husk.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    let mut reader = std::fs::File::from(master.try_clone().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1024];
        // EIO once the last slave fd closes: the end of the output.
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0
                || tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
            {
                return;
            }
        }
    });
    let mut seen = String::new();
    let wait_for = |what: &str, seen: &mut String| {
        let deadline = Instant::now() + TIMEOUT;
        while !seen.contains(what) {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => seen.push_str(&s),
                Err(_) => panic!("never saw {what:?}; the terminal showed {seen:?}"),
            }
        }
    };
    wait_for("size ", &mut seen);
    wait_for("\n", &mut seen);
    assert!(seen.contains("size 40 100"), "{seen:?}");
    set_size(&master, 50, 120);
    wait_for("resized", &mut seen);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{seen:?}");
    assert_eq!(husk(&r, &["rm", "-f", &id]).code, Some(0));
}

/// Two `husk exec`s at once use the same stream id on their connections
/// (and the container's own connection uses it too): each gets its own
/// output and status.
#[test]
fn two_execs_at_once_on_the_same_stream_id() {
    require_linux_kvm();
    let r = Run::new();
    let started = r.run(&["-d"], &["sh", "-c", "while :; do sleep 1; done"]);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    let exec = |word: &str, code: u8| {
        let mut c = Command::new(husk_tests::husk::binary());
        c.args(["exec", &id, "sh", "-c"])
            .arg(format!(
                "echo {word}-started; sleep 3; echo {word}; exit {code}"
            ))
            .env("HUSK_RUNTIME_DIR", r.runtime.path());
        husk_tests::process::Running::spawn(c)
    };
    let mut one = exec("one", 3);
    assert!(
        one.wait_for_line("one-started", TIMEOUT),
        "first exec never ran"
    );
    // The first is still running (sleep 3) while the second starts.
    let two = exec("two", 4);
    let (one, two) = (one.finish(TIMEOUT), two.finish(TIMEOUT));
    assert_eq!(one.code, Some(3), "{}", one.describe());
    assert_eq!(two.code, Some(4), "{}", two.describe());
    assert_eq!(one.stdout, "one-started\none\n", "{}", one.describe());
    assert_eq!(two.stdout, "two-started\ntwo\n", "{}", two.describe());
    wait_status(&r, &id, "Up");
    assert_eq!(husk(&r, &["rm", "-f", &id]).code, Some(0));
}
