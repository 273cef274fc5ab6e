//! A `husk vmm --api-sock` (or `husk-vmm --api-sock`) process under test:
//! started, its stdout collected as it comes, driven over the socket,
//! killed on drop.

use crate::http::{request, wait_for_socket};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct VmmProcess {
    child: Child,
    pub socket: PathBuf,
    stdout: Arc<Mutex<Vec<u8>>>,
}

impl VmmProcess {
    /// Starts `husk vmm --api-sock <dir>/api.sock EXTRA...` and waits for
    /// the socket.
    pub fn start(husk: &Path, dir: &Path, extra: &[&str]) -> VmmProcess {
        let mut with_vmm = vec!["vmm"];
        with_vmm.extend_from_slice(extra);
        Self::start_executable(husk, dir, &with_vmm)
    }

    /// Starts the `husk-vmm` executable (or any VMM that takes
    /// `--api-sock`): `VMM EXTRA... --api-sock <dir>/api.sock`.
    pub fn start_executable(vmm: &Path, dir: &Path, extra: &[&str]) -> VmmProcess {
        let socket = dir.join("api.sock");
        Self::spawn(vmm, extra, &socket, socket.clone())
    }

    /// A VMM jailed in `dir` (`--jail` and its flags are in `extra`): its
    /// `--api-sock` is `/api.sock` inside the jail, `dir/api.sock` here.
    pub fn start_jailed(vmm: &Path, dir: &Path, extra: &[&str]) -> VmmProcess {
        Self::spawn(vmm, extra, Path::new("/api.sock"), dir.join("api.sock"))
    }

    fn spawn(vmm: &Path, extra: &[&str], socket_arg: &Path, socket: PathBuf) -> VmmProcess {
        let mut child = Command::new(vmm)
            .args(extra)
            .arg("--api-sock")
            .arg(socket_arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", vmm.display()));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let (sink, mut out) = (stdout.clone(), child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        assert!(
            wait_for_socket(&socket, Duration::from_secs(10)),
            "no API socket"
        );
        VmmProcess {
            child,
            socket,
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One request: status and JSON body (Null when empty).
    pub fn req(&self, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
        let r = request(&self.socket, method, path, body).expect("API request");
        (r.status, r.json())
    }

    /// PUTs boot-source, a root drive and the machine config.
    pub fn configure(&self, kernel: &Path, boot_args: &str, root: &Path, mem_mib: u32) {
        let k = serde_json::json!({"kernel_image_path": kernel, "boot_args": boot_args});
        assert_eq!(self.req("PUT", "/boot-source", &k.to_string()).0, 204);
        let d = serde_json::json!({"drive_id": "rootfs", "path_on_host": root,
            "is_root_device": true, "is_read_only": false});
        assert_eq!(self.req("PUT", "/drives/rootfs", &d.to_string()).0, 204);
        let m = serde_json::json!({"vcpu_count": 1, "mem_size_mib": mem_mib});
        assert_eq!(self.req("PUT", "/machine-config", &m.to_string()).0, 204);
    }

    pub fn start_instance(&self) -> (u16, serde_json::Value) {
        self.req("PUT", "/actions", r#"{"action_type":"InstanceStart"}"#)
    }

    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).replace('\r', "")
    }

    /// Waits until stdout contains `needle`. On a timeout the VMM is asked
    /// for its report (vCPU exits, queue counters) on the inherited stderr
    /// first, so a silent guest shows whether it runs at all.
    pub fn wait_for_output(&self, needle: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.output().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.ask_for_report();
        false
    }

    fn ask_for_report(&self) {
        // SAFETY: kill(2) on our own child, which Drop reaps only later.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        // The report pauses the VM to read where its vCPUs are: in L1 that
        // takes a while.
        std::thread::sleep(Duration::from_secs(3));
    }

    /// Waits for the process to exit: its code and everything it printed.
    pub fn wait(mut self, timeout: Duration) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(50));
                return (st.code(), self.output());
            }
            if start.elapsed() >= timeout {
                self.ask_for_report();
                panic!(
                    "husk vmm did not exit in {timeout:?}; its console:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for VmmProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
