//! Runs a VMM process to completion with a deadline, collecting its output.

use std::io::Read;
use std::process::{Child, Command, Stdio};
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

/// Spawns `cmd` (stdin closed) in a process group of its own, waits at
/// most `timeout`, then kills the whole group: whatever the command
/// started (a nested VM, a helper) holds its pipes too, and would keep the
/// test waiting for their end long after the timeout (a QEMU peer under
/// `husk compare` did, until the testbed's own timeout).
///
/// A husk that runs out of time is first asked where its VMs stand
/// (SIGUSR1, as [`run_asking`]): a hang then shows whether the guest ran
/// at all, and the testbed's stuck-vCPU signature is recognized.
pub fn run(cmd: Command, timeout: Duration) -> Finished {
    let husk = std::path::Path::new(cmd.get_program()).file_name() == Some("husk".as_ref());
    run_asking(cmd, timeout, husk.then_some(libc::SIGUSR1))
}

/// The VMM log the command writes (HUSK_LOG), whose warnings say how a
/// guest reset came about when its stderr does not.
fn vmm_log(cmd: &Command) -> Option<std::path::PathBuf> {
    cmd.get_envs()
        .find(|(k, _)| *k == "HUSK_LOG")
        .and_then(|(_, v)| v)
        .map(Into::into)
}

/// [`run`], and on a timeout first sends `report` to the command (husk's
/// SIGUSR1: where its VMs and queues stand) and gives it a second to say
/// so on stderr, which the result then carries.
pub fn run_asking(mut cmd: Command, timeout: Duration, report: Option<i32>) -> Finished {
    use std::os::unix::process::CommandExt;
    let start = Instant::now();
    let log = vmm_log(&cmd);
    let mut child = cmd
        .process_group(0)
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
            if let Some(sig) = report {
                // SAFETY: kill(2) on our own child, not reaped yet.
                unsafe { libc::kill(child.id() as i32, sig) };
                std::thread::sleep(Duration::from_secs(3));
            }
            // SAFETY: kill(2) on the process group this function made.
            unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    // After a timeout, a descendant in a session of its own (a sandboxed
    // virtiofsd) may still hold the pipes: their end is waited for only so
    // long.
    let deadline = Instant::now() + Duration::from_secs(5);
    let collect = |h: std::thread::JoinHandle<String>| {
        while timed_out && !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if h.is_finished() || !timed_out {
            h.join().unwrap()
        } else {
            "(its output never closed: a process it started still holds it)".to_string()
        }
    };
    let (stdout, stderr) = (collect(out).replace('\r', ""), collect(err));
    if code != Some(0) {
        let log = log.and_then(|p| std::fs::read_to_string(p).ok());
        crate::testbed::flag(&stderr, log.as_deref().unwrap_or(""));
    }
    Finished {
        elapsed: start.elapsed(),
        stdout,
        stderr,
        code,
        timed_out,
    }
}

/// A process whose stdout is watched while it runs, for tests that act on
/// what it printed (send a signal once it is ready).
///
/// Dropped while its test panics (a `wait_for` that timed out, an assert
/// between spawn and `finish`), it asks the process where it stands (husk's
/// SIGUSR1 report), kills it and prints the tail of what it said: a guest
/// that never got ready shows its console, not just "never ready".
pub struct Running {
    child: std::process::Child,
    start: Instant,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
    out: Option<std::thread::JoinHandle<()>>,
    err: Option<std::thread::JoinHandle<String>>,
    reaped: bool,
}

impl Running {
    /// Spawns `cmd` with stdin closed.
    pub fn spawn(mut cmd: Command) -> Running {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {:?}: {e}", cmd.get_program()));
        let (tx, lines) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        let out = std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                if tx.send(line.replace('\r', "")).is_err() {
                    return;
                }
            }
        });
        let err = drain(child.stderr.take().unwrap());
        Running {
            child,
            start: Instant::now(),
            lines,
            seen: Vec::new(),
            out: Some(out),
            err: Some(err),
            reaped: false,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    /// Waits until a stdout line equals `line`; false on timeout or exit.
    pub fn wait_for_line(&mut self, line: &str, timeout: Duration) -> bool {
        self.wait_for(|l| l == line, timeout).is_some()
    }

    /// Waits for the first stdout line `hit` accepts and returns it; `None`
    /// on timeout or exit.
    pub fn wait_for(&mut self, hit: impl Fn(&str) -> bool, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let l = self.lines.recv_timeout(left).ok()?;
            let found = hit(&l).then(|| l.clone());
            self.seen.push(l);
            if found.is_some() {
                return found;
            }
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child, which has not been waited for
        // (wait happens in `finish`, which consumes self).
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Waits for the exit (killing it after `timeout`) and collects output.
    pub fn finish(mut self, timeout: Duration) -> Finished {
        let deadline = Instant::now() + timeout;
        let mut timed_out = false;
        let code = loop {
            if let Some(st) = self.child.try_wait().expect("waiting for the child") {
                break st.code();
            }
            if Instant::now() > deadline {
                timed_out = true;
                let _ = self.child.kill();
                let _ = self.child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.reaped = true;
        let (stdout, stderr) = self.collect();
        Finished {
            elapsed: self.start.elapsed(),
            stdout,
            stderr,
            code,
            timed_out,
        }
    }

    /// Everything it printed, once it has exited.
    fn collect(&mut self) -> (String, String) {
        if let Some(out) = self.out.take() {
            let _ = out.join();
        }
        self.seen.extend(self.lines.try_iter());
        let mut stdout = self.seen.join("\n");
        if !stdout.is_empty() {
            stdout.push('\n');
        }
        let stderr = self
            .err
            .take()
            .map(|e| e.join().unwrap_or_default())
            .unwrap_or_default();
        (stdout, stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        let panicking = std::thread::panicking();
        if panicking && matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGUSR1);
            std::thread::sleep(Duration::from_secs(2));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !panicking {
            return;
        }
        // A grandchild still holding the pipes must not hang the unwinding
        // test: the output is read only if it ended.
        std::thread::sleep(Duration::from_millis(200));
        if self.out.as_ref().is_some_and(|h| !h.is_finished())
            || self.err.as_ref().is_some_and(|h| !h.is_finished())
        {
            return;
        }
        let (stdout, stderr) = self.collect();
        crate::testbed::flag(&stderr, "");
        let text = format!(
            "\n[e2e] {:?} after {:?}, stopped as its test failed; what it said last:\n--- stdout (tail) ---\n{}\n--- stderr (tail) ---\n{}\n",
            self.child.id(),
            self.start.elapsed(),
            tail(&stdout, 60),
            tail(&stderr, 60)
        );
        // SAFETY: write(2) of a live buffer to fd 2, past libtest's capture.
        unsafe { libc::write(2, text.as_ptr().cast(), text.len()) };
    }
}

/// The last `n` lines of `text`.
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A process other than this one whose command line contains `needle`.
pub fn find_by_cmdline(needle: &str) -> Option<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .find(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
}

/// A daemon the tests start (containerd, dockerd): its stderr in `log`,
/// ready once `socket` exists; killed when dropped.
pub struct Daemon(Child);

impl Daemon {
    pub fn start(mut cmd: Command, socket: &std::path::Path, log: &std::path::Path) -> Daemon {
        let log = std::fs::File::create(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        let daemon = Daemon(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !socket.exists() {
            assert!(Instant::now() < deadline, "{cmd:?} made no socket");
            std::thread::sleep(Duration::from_millis(50));
        }
        daemon
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timeout_ends_the_command_and_what_it_started() {
        // The background sleep holds stdout and stderr: without the group
        // kill, reading them would wait for it.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 30 & echo started; sleep 30"]);
        let out = run(cmd, Duration::from_millis(500));
        assert!(out.timed_out && out.code.is_none());
        assert_eq!(out.stdout, "started\n");
        assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
        // One in a session of its own escapes the group kill: the wait for
        // the output's end is bounded all the same.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "setsid sleep 60 & sleep 30"]);
        let out = run(cmd, Duration::from_millis(500));
        assert!(out.timed_out);
        assert!(out.elapsed < Duration::from_secs(10), "{:?}", out.elapsed);
    }
}
