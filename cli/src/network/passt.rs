//! `--network passt`: a network without root. passt (Debian's `passt`) is
//! a userspace TCP/IP stack: the VM's NIC hands it Ethernet frames on a
//! socket and it makes ordinary socket calls on the host for them, so no
//! TAP, bridge or nftables rule exists and no privilege is needed. It is
//! the default when husk is not root (podman's rootless default is its
//! sibling, pasta).
//!
//! The guest has slirp's well-known addresses: 10.0.2.100/24, gateway
//! 10.0.2.2, which passt maps to the host's loopback (so `host-gateway`
//! reaches a service the host runs on 127.0.0.1). `-p` is passt's own
//! forwarding (`-t`/`-u`): it listens on the host port and opens the
//! connection inside its stack, which is what the bridge's proxy does
//! with a socket towards the guest.
//!
//! husk hands passt one end of a socketpair (`--fd`), so there is no
//! socket path to race for; passt exits when that socket closes, so a
//! killed husk leaves nothing running.

use std::fs::File;
use std::io::{Read, Seek};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::run::publish::{Port, Proto};
use crate::run::spec::Net;

/// The name `--network` takes.
pub const NAME: &str = "passt";
/// The guest's address (slirp's).
pub const GUEST: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 100);
/// The gateway: the host, as passt maps it.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 0, 2, 2);
const PREFIX: u8 = 24;
/// The guest NIC's MTU.
const MTU: u16 = 1500;
/// How long passt may take to bind its ports and say it is ready.
const READY: Duration = Duration::from_secs(10);
/// Who passt runs as when started by root (it will not keep root):
/// nobody, as passt's own default, by number so the pid file's directory
/// can be given to it.
const RUN_AS: u32 = 65534;
/// The socket's number in passt's fd table.
const PASST_FD: i32 = 3;

/// A running passt serving one VM; stopped on drop.
pub struct Passt {
    pid: libc::pid_t,
    /// Says so if passt ends before the run does; hands passt back to be
    /// reaped.
    watcher: Option<std::thread::JoinHandle<Child>>,
    stopping: Arc<AtomicBool>,
    socket: Arc<OwnedFd>,
    _pid_dir: tempfile::TempDir,
}

impl Passt {
    /// The VM's NIC and the guest kernel's address.
    pub fn net(&self) -> Net {
        Net {
            device: String::new(),
            stream: Some(self.socket.clone()),
            addr: Some((GUEST, PREFIX)),
            gateway: Some(GATEWAY),
        }
    }
}

impl Drop for Passt {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::Release);
        // SAFETY: kill(2) on our own child, which nothing has reaped yet
        // (the watcher waits with WNOWAIT), so the pid is still passt's,
        // alive or a zombie.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        if let Some(mut child) = self.watcher.take().and_then(|w| w.join().ok()) {
            let _ = child.wait();
        }
    }
}

/// passt's path: `$HUSK_PASST`, else `passt` on `PATH`.
pub fn program() -> Result<PathBuf, String> {
    if let Some(p) = std::env::var_os("HUSK_PASST") {
        return Ok(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(NAME))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            "passt is not installed (Debian: apt install passt); it gives a container a network without root".into()
        })
}

/// Why passt cannot give this host's containers a network, if it cannot:
/// it is missing, or the host has no IPv4 default route for it to use.
pub fn unusable() -> Option<String> {
    if let Err(e) = program() {
        return Some(e);
    }
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    if !has_default_route(&routes) {
        return Some("the host has no IPv4 default route for passt to use".into());
    }
    None
}

/// Whether `/proc/net/route` lists a default route (destination and mask
/// 0).
fn has_default_route(routes: &str) -> bool {
    routes.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        f.get(1) == Some(&"00000000") && f.get(7) == Some(&"00000000")
    })
}

/// `$HUSK_PASST_LOG`: where passt writes its log (for a data path under
/// investigation; passt's errors reach the user either way). Not with
/// `--debug`: Debian 12's passt crashes logging a connection to a
/// forwarded port that comes before the guest has sent anything.
fn debug_log() -> Vec<std::ffi::OsString> {
    match std::env::var_os("HUSK_PASST_LOG") {
        Some(path) => vec!["--log-file".into(), path],
        None => Vec::new(),
    }
}

/// passt's `-t`/`-u` for one published port bound at `at`.
fn forward(port: &Port, at: SocketAddr) -> [String; 2] {
    let flag = if port.proto == Proto::Udp { "-u" } else { "-t" };
    let host = if at.ip().is_unspecified() {
        at.port().to_string()
    } else {
        format!("{}/{}", at.ip(), at.port())
    };
    [flag.into(), format!("{host}:{}", port.container_port)]
}

/// Starts passt for one VM, forwarding `ports` (each with the address
/// husk found free for it). Returns once passt has bound every port.
pub fn start(ports: &[(Port, SocketAddr)]) -> Result<Passt, String> {
    let program = program()?;
    let (ours, theirs) =
        UnixStream::pair().map_err(|e| format!("passt: cannot make a socketpair: {e}"))?;
    let pid_dir = tempfile::tempdir().map_err(|e| format!("passt: temporary dir: {e}"))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if root {
        // passt refuses to keep root and writes its pid file as the user
        // it becomes: that user must own the directory.
        std::os::unix::fs::chown(pid_dir.path(), Some(RUN_AS), Some(RUN_AS))
            .map_err(|e| format!("passt: temporary dir: {e}"))?;
    }
    let pid_file = pid_dir.path().join("passt.pid");
    let log = tempfile::tempfile().map_err(|e| format!("passt: log file: {e}"))?;
    let mut command = Command::new(&program);
    command
        .args(["--foreground", "--ipv4-only"])
        .args(
            std::env::var_os("HUSK_PASST_LOG")
                .is_none()
                .then_some("--quiet"),
        )
        .args(["--fd", &PASST_FD.to_string()])
        .arg("--pid")
        .arg(&pid_file)
        .args(["--address", &GUEST.to_string()])
        .args(["--netmask", &PREFIX.to_string()])
        .args(["--gateway", &GATEWAY.to_string()])
        // The guest's MTU (its kernel's default; husk's ip= sets none):
        // passt would otherwise size what it sends for 65520.
        .args(["--mtu", &MTU.to_string()])
        .args(ports.iter().flat_map(|(p, at)| forward(p, *at)))
        .args(debug_log())
        .args(
            root.then(|| ["--runas".to_string(), format!("{RUN_AS}:{RUN_AS}")])
                .into_iter()
                .flatten(),
        )
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| format!("passt: {e}"))?)
        .stderr(log.try_clone().map_err(|e| format!("passt: {e}"))?);
    let theirs_fd = theirs.as_raw_fd();
    // SAFETY: only async-signal-safe calls between fork and exec: dup2 of
    // an fd the parent keeps open until spawn returns, and prctl.
    unsafe {
        command.pre_exec(move || {
            if libc::dup2(theirs_fd, PASST_FD) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // passt goes with the process that runs the VM, even if that
            // one is killed before it can stop it.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", program.display()))?;
    drop(theirs);
    let mut child = child;
    if let Err(e) = wait_ready(&mut child, &pid_file, log) {
        let _ = child.kill();
        let _ = child.wait();
        return Err(e);
    }
    let stopping = Arc::new(AtomicBool::new(false));
    let pid = child.id() as libc::pid_t;
    let watcher = {
        let stopping = stopping.clone();
        std::thread::spawn(move || {
            // Waits for passt's end without reaping it: its pid stays
            // taken until Drop has sent its kill (`child` is reaped there).
            // SAFETY: an all-zero siginfo_t is a valid value of the C
            // struct.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            // SAFETY: `info` is a live siginfo_t on this stack; waitid
            // writes only into it, and `pid` is our unreaped child.
            let ended = unsafe {
                libc::waitid(
                    libc::P_PID,
                    pid as libc::id_t,
                    &mut info,
                    libc::WEXITED | libc::WNOWAIT,
                )
            } == 0;
            if ended && !stopping.load(Ordering::Acquire) {
                // SAFETY: waitid filled `info` for a child's end, where
                // si_status is the field in use.
                let code = unsafe { info.si_status() };
                let how = if info.si_code == libc::CLD_EXITED {
                    format!("exit status {code}")
                } else {
                    format!("signal {code}")
                };
                log::error!("passt, the container's network, stopped ({how}): the container has no network now");
            }
            child
        })
    };
    Ok(Passt {
        pid,
        watcher: Some(watcher),
        stopping,
        socket: Arc::new(OwnedFd::from(ours)),
        _pid_dir: pid_dir,
    })
}

/// Waits until passt writes its pid file (it does once its ports are
/// bound) or exits (then its last words are the error).
fn wait_ready(child: &mut Child, pid_file: &Path, mut log: File) -> Result<(), String> {
    let deadline = Instant::now() + READY;
    loop {
        if std::fs::metadata(pid_file).is_ok_and(|m| m.len() > 0) {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            let mut said = String::new();
            let _ = log.rewind();
            let _ = log.read_to_string(&mut said);
            return Err(format!("passt failed ({status}): {}", last_words(&said)));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "passt did not get ready within {} s",
                READY.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// passt's error, on one line: what it said, minus its note about
/// dropping root and its complaints about a missing syslog (it logs there
/// as well as to stderr).
fn last_words(said: &str) -> String {
    let lines: Vec<&str> = said
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Don't run as root") && !l.starts_with("Failed to send")
        })
        .collect();
    if lines.is_empty() {
        "it said nothing".into()
    } else {
        lines.join("; ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_route_is_found_in_proc_net_route() {
        let header =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n";
        let default = "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n";
        let subnet = "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert!(has_default_route(&format!("{header}{subnet}{default}")));
        assert!(!has_default_route(&format!("{header}{subnet}")));
        assert!(!has_default_route(""));
    }

    #[test]
    fn published_ports_become_passt_forwards() {
        let tcp = Port {
            host_ip: Ipv4Addr::UNSPECIFIED,
            host_port: 8080,
            container_port: 80,
            proto: Proto::Tcp,
        };
        let udp = Port {
            proto: Proto::Udp,
            host_ip: Ipv4Addr::LOCALHOST,
            ..tcp
        };
        assert_eq!(
            forward(&tcp, "0.0.0.0:8080".parse().unwrap()),
            ["-t", "8080:80"]
        );
        assert_eq!(
            forward(&udp, "127.0.0.1:5353".parse().unwrap()),
            ["-u", "127.0.0.1/5353:80"]
        );
    }

    #[test]
    fn passts_last_words_make_one_line() {
        let said = "Don't run as root. Changing to nobody...\nFailed to send 62 bytes to syslog\nFailed to bind any port for '-t 80:80', exiting\n";
        assert_eq!(
            last_words(said),
            "Failed to bind any port for '-t 80:80', exiting"
        );
        assert_eq!(last_words(""), "it said nothing");
    }

    #[test]
    fn a_port_in_use_is_passts_error_before_boot() {
        if let Some(why) = unusable() {
            return husk_skip::skip(&why);
        }
        let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let at = taken.local_addr().unwrap();
        let port = Port {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port: at.port(),
            container_port: 80,
            proto: Proto::Tcp,
        };
        let err = start(&[(port, at)]).err().unwrap();
        assert!(err.starts_with("passt failed"), "{err}");
        assert!(err.contains("bind"), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }

    #[test]
    fn passt_starts_listens_and_goes_with_its_handle() {
        if let Some(why) = unusable() {
            return husk_skip::skip(&why);
        }
        let at = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let port = Port {
            host_ip: Ipv4Addr::LOCALHOST,
            host_port: at.port(),
            container_port: 80,
            proto: Proto::Tcp,
        };
        let passt = start(&[(port, at)]).unwrap_or_else(|e| panic!("{e}"));
        // A client before the guest has said anything.
        let client = std::net::TcpStream::connect(at);
        assert!(client.is_ok(), "passt listens");
        std::thread::sleep(std::time::Duration::from_millis(300));
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(passt.pid, 0) } == 0;
        let reaped = passt.watcher.as_ref().is_some_and(|w| w.is_finished());
        assert!(alive && !reaped, "passt died on an early client");
        let pid = passt.pid;
        drop(passt);
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "passt outlived its handle");
    }

    #[test]
    fn a_passt_that_dies_is_noticed_and_its_pid_stays_ours_until_drop() {
        if let Some(why) = unusable() {
            return husk_skip::skip(&why);
        }
        let passt = start(&[]).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: kill(2) on the passt this test started.
        unsafe { libc::kill(passt.pid, libc::SIGKILL) };
        let watcher = passt.watcher.as_ref().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !watcher.is_finished() {
            assert!(Instant::now() < deadline, "the watcher missed passt's end");
            std::thread::sleep(Duration::from_millis(10));
        }
        // A zombie until Drop reaps it: no other process can have its pid.
        // SAFETY: signal 0 only checks that the pid exists.
        assert_eq!(unsafe { libc::kill(passt.pid, 0) }, 0);
        let pid = passt.pid;
        drop(passt);
        // SAFETY: as above.
        assert_ne!(unsafe { libc::kill(pid, 0) }, 0, "reaped by Drop");
    }
}
