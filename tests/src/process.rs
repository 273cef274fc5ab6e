//! Runs a VMM process to completion with a deadline, collecting its output.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct Finished {
    pub stdout: String,
    pub stderr: String,
    /// `None` when killed (by the timeout or a signal).
    pub code: Option<i32>,
    pub timed_out: bool,
    pub elapsed: Duration,
}

fn drain(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Spawns `cmd` (stdin closed), waits at most `timeout`, kills it after.
pub fn run(mut cmd: Command, timeout: Duration) -> Finished {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let mut timed_out = false;
    let code = loop {
        if let Some(st) = child.try_wait().expect("waiting for the child") {
            break st.code();
        }
        if start.elapsed() > timeout {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Finished {
        elapsed: start.elapsed(),
        stdout: out.join().unwrap().replace('\r', ""),
        stderr: err.join().unwrap(),
        code,
        timed_out,
    }
}
