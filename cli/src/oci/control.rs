//! The monitor's control socket (`control.sock` in the container's state
//! directory): `pause` and `resume` come in as lines; the monitor parks or
//! releases the VM's vCPUs, which freezes everything in the guest, and
//! records the state. One line back: `ok`, or why not.

use super::state::{Record, Status};
use husk_vmm::VmControls;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub const SOCKET: &str = "control.sock";

/// The record, shared by the monitor's threads, saved on every change.
#[derive(Clone)]
pub struct Shared {
    pub record: Arc<Mutex<Record>>,
    /// The record's directory.
    pub dir: PathBuf,
    /// The sockets' directory ([`Record::sock_dir`]).
    pub sock: PathBuf,
}

impl Shared {
    pub fn set(&self, status: Status, exit_status: Option<u8>) -> Result<(), String> {
        let mut r = self.record.lock().unwrap_or_else(|e| e.into_inner());
        r.status = status;
        if exit_status.is_some() {
            r.exit_status = exit_status;
        }
        r.save(&self.dir)
    }

    /// runc's `state` JSON of the container now.
    pub fn oci_state(&self) -> serde_json::Value {
        self.record
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .oci_state()
    }

    fn status(&self) -> Status {
        self.record.lock().unwrap_or_else(|e| e.into_inner()).status
    }
}

/// Serves the control socket on a thread of its own.
pub fn serve(shared: Shared, controls: VmControls) -> Result<(), String> {
    let path = shared.sock.join(SOCKET);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let answer = match read_line(&conn).as_deref() {
                Some("pause") => pause(&shared, &controls),
                Some("resume") => resume(&shared, &controls),
                Some(other) => Err(format!("unknown control request {other:?}")),
                None => continue,
            };
            let line = answer.map_or_else(|e| e, |()| "ok".into());
            let _ = writeln!(&conn, "{line}");
        }
    });
    Ok(())
}

fn read_line(conn: &UnixStream) -> Option<String> {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).ok()?;
    Some(line.trim().to_owned())
}

fn pause(shared: &Shared, controls: &VmControls) -> Result<(), String> {
    match shared.status() {
        Status::Running => {
            controls.pause();
            shared.set(Status::Paused, None)
        }
        s => Err(format!("cannot pause a container that is {}", s.as_str())),
    }
}

fn resume(shared: &Shared, controls: &VmControls) -> Result<(), String> {
    match shared.status() {
        Status::Paused => {
            controls.resume();
            shared.set(Status::Running, None)
        }
        s => Err(format!("cannot resume a container that is {}", s.as_str())),
    }
}

/// Sends `request` to the monitor whose sockets are in `sock`; its answer.
pub fn ask(sock: &Path, request: &str) -> Result<(), String> {
    let path = sock.join(SOCKET);
    let conn = UnixStream::connect(&path).map_err(|e| format!("the container's monitor: {e}"))?;
    let _ = conn.set_read_timeout(Some(Duration::from_secs(30)));
    writeln!(&conn, "{request}").map_err(|e| format!("the container's monitor: {e}"))?;
    match read_line(&conn).as_deref() {
        Some("ok") => Ok(()),
        Some(why) if !why.is_empty() => Err(why.to_owned()),
        _ => Err("the container's monitor did not answer".into()),
    }
}
