//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::fs;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Once, OnceLock};
use std::time::{Duration, Instant};

use husk_container::oci_spec::runtime::{PosixRlimitBuilder, Process, Spec};
use husk_container::{default_spec, Container, ProcessIo, Rootfs, Stdio};

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn setup() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: prctl with integer arguments.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        assert_eq!(r, 0);
    });
}

/// The busybox image: bin/busybox + one symlink per applet, built once.
pub fn lower() -> &'static Path {
    static LOWER: OnceLock<PathBuf> = OnceLock::new();
    LOWER.get_or_init(|| {
        let busybox = fs::read("/bin/busybox").expect("/bin/busybox (busybox-static)");
        let dir = std::env::temp_dir().join(format!("husk-container-test-lower-{}", busybox.len()));
        if dir.join("bin/sh").exists() {
            return dir;
        }
        let tmp = std::env::temp_dir().join(format!(
            "husk-container-test-lower.tmp-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&tmp);
        for d in ["bin", "etc", "tmp", "proc", "sys", "dev", "mnt", "root"] {
            fs::create_dir_all(tmp.join(d)).unwrap();
        }
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(tmp.join("tmp"), fs::Permissions::from_mode(0o1777)).unwrap();
        fs::write(tmp.join("bin/busybox"), &busybox).unwrap();
        fs::set_permissions(tmp.join("bin/busybox"), fs::Permissions::from_mode(0o755)).unwrap();
        let list = std::process::Command::new("/bin/busybox")
            .arg("--list")
            .output()
            .unwrap();
        for name in String::from_utf8(list.stdout).unwrap().lines() {
            if name != "busybox" {
                std::os::unix::fs::symlink("busybox", tmp.join("bin").join(name)).unwrap();
            }
        }
        fs::write(tmp.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(tmp.join("etc/group"), "root:x:0:\n").unwrap();
        fs::write(tmp.join("etc/lower-file"), "from the image\n").unwrap();
        if fs::rename(&tmp, &dir).is_err() {
            // Another test process won the race.
            let _ = fs::remove_dir_all(&tmp);
        }
        dir
    })
}

/// This test process's state directory, under a base shared by runs; the
/// first test removes those of test processes that are gone.
pub fn state_dir() -> PathBuf {
    let base = std::env::temp_dir().join("husk-container-test-state");
    static CLEAN: Once = Once::new();
    CLEAN.call_once(|| {
        for e in fs::read_dir(&base).into_iter().flatten().flatten() {
            let pid: i32 = e
                .file_name()
                .to_str()
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            if pid > 0 && !Path::new(&format!("/proc/{pid}")).exists() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    });
    base.join(std::process::id().to_string())
}

pub fn rootfs() -> Rootfs {
    Rootfs::Layered {
        lower: lower().to_path_buf(),
        upper: None,
    }
}

/// The default spec; its RLIMIT_NOFILE hard limit is lowered to ours when a
/// sandbox without CAP_SYS_RESOURCE could not raise it.
pub fn spec(args: &[&str]) -> Spec {
    let mut s = default_spec(args.iter().map(|s| s.to_string()).collect());
    // SAFETY: getrlimit fills a local struct.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) };
    let p = process(&mut s);
    let mut limits = p.rlimits().clone().unwrap();
    for l in &mut limits {
        if l.hard() > rl.rlim_max as u64 {
            *l = PosixRlimitBuilder::default()
                .typ(l.typ())
                .soft(l.soft().min(rl.rlim_max as u64))
                .hard(rl.rlim_max as u64)
                .build()
                .unwrap();
        }
    }
    p.set_rlimits(Some(limits));
    s
}

pub fn process(spec: &mut Spec) -> &mut Process {
    spec.process_mut().as_mut().unwrap()
}

pub fn create(id: &str, spec: &Spec, stdio: Stdio) -> (Container, ProcessIo) {
    Container::create(id, spec, &rootfs(), &state_dir(), stdio)
        .unwrap_or_else(|e| panic!("create {id}: {e}"))
}

/// Reads until end of file (or EIO from a pty master), at most 10 s.
pub fn read_all(fd: &OwnedFd) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    loop {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timeout; so far: {:?}",
            String::from_utf8_lossy(&out)
        );
        // SAFETY: one pollfd.
        unsafe { libc::poll(&mut pfd, 1, left.as_millis() as i32) };
        let mut buf = [0u8; 4096];
        // SAFETY: read into a local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads one line, at most 10 s.
pub fn read_line(fd: &OwnedFd) -> String {
    let mut line = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "timeout reading a line");
        let mut b = [0u8; 1];
        // SAFETY: read into a local buffer.
        let n = unsafe { libc::read(fd.as_raw_fd(), b.as_mut_ptr().cast(), 1) };
        assert!(
            n == 1,
            "end of output after {:?}",
            String::from_utf8_lossy(&line)
        );
        if b[0] == b'\n' {
            return String::from_utf8_lossy(&line).into_owned();
        }
        line.push(b[0]);
    }
}

/// Reaps `pid` (at most 10 s, then SIGKILL and panic).
pub fn wait(pid: i32) -> i32 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut status = 0;
        // SAFETY: waitpid with a valid pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return status;
        }
        assert!(
            r == 0,
            "waitpid({pid}): {}",
            std::io::Error::last_os_error()
        );
        if Instant::now() > deadline {
            // SAFETY: killing our own child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("pid {pid} did not exit");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

pub fn exit_code(status: i32) -> Option<i32> {
    libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status))
}

pub fn term_signal(status: i32) -> Option<i32> {
    libc::WIFSIGNALED(status).then(|| libc::WTERMSIG(status))
}

/// Runs `spec` to the end: (stdout, stderr, wait status).
pub fn run(id: &str, spec: &Spec) -> (String, String, i32) {
    let (mut c, io) = create(id, spec, Stdio::Pipes { stdin: false });
    c.start().unwrap_or_else(|e| panic!("start {id}: {e}"));
    let out = read_all(&io.stdout);
    let err = read_all(io.stderr.as_ref().unwrap());
    let status = wait(c.init_pid());
    c.destroy().unwrap();
    (out, err, status)
}

pub fn mounts_mentioning(p: &Path) -> Vec<String> {
    let s = p.to_str().unwrap();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(s))
        .map(String::from)
        .collect()
}
