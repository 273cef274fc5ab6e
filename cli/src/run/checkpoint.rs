//! `husk checkpoint ID DIR` and `husk restore DIR`: a running container
//! saved and started again at the VM level (the seeds' "migration with
//! CRIU"): the VM's snapshot, its writable disk and the command line that
//! made the run.
//!
//! Only a detached run's husk owns its VM past the command, so only a
//! detached run can be checkpointed: it serves `control.sock` in its run
//! directory, and the session takes the request between the agent's
//! messages. The checkpoint is a directory: `vm.state` and `vm.mem` (a
//! Full snapshot), `scratch.img` (a `--scratch` layer, copied while the
//! VM is paused) and `checkpoint.json` (this husk's version and the run's
//! arguments). A restore is that command line run again, detached, with
//! the VM restored from the directory instead of booted (its own copy of
//! the scratch disk, the run's new socket, NIC and identity) and the
//! container's process taken over (`Attach`) instead of created.

use super::pool::{MEM, STATE};
use crate::agent::Msg;
use crate::Failure;
use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

/// The detached run's control socket, in its run directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Set for the background husk of a restore: the checkpoint directory.
pub const RESTORE_ENV: &str = "HUSK_RESTORE_FROM";
const META: &str = "checkpoint.json";
pub const SCRATCH: &str = "scratch.img";

/// What `checkpoint.json` holds.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
pub struct Meta {
    /// The husk that wrote it: a snapshot is this build's format.
    pub husk: String,
    /// `husk run` and its arguments, as the run was started.
    pub args: Vec<String>,
    /// The container had a `--scratch` disk (copied beside).
    pub scratch: bool,
}

/// One request on the control socket (a JSON line).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub dir: PathBuf,
    pub leave_running: bool,
}

/// A checkpoint the session is asked to take; it answers on `reply`.
#[derive(Debug)]
pub struct Asked {
    pub request: Request,
    pub reply: mpsc::Sender<Result<(), String>>,
}

/// What the session needs to take a checkpoint of its run.
#[derive(Clone)]
pub struct Source {
    pub args: Vec<std::ffi::OsString>,
    /// The run's scratch disk, if it has one.
    pub scratch: Option<PathBuf>,
}

/// Serves `dir/control.sock` on a thread: each request becomes a
/// [`Msg::Checkpoint`] for the session, and its answer goes back as one
/// line (`ok`, or `error: ...`).
pub fn serve(dir: &Path, events: mpsc::Sender<Msg>) -> Result<(), String> {
    let path = dir.join(CONTROL_SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            if !answer(conn, &events) {
                return;
            }
        }
    });
    Ok(())
}

/// One control connection; false once the session is gone.
fn answer(conn: UnixStream, events: &mpsc::Sender<Msg>) -> bool {
    let mut line = String::new();
    if BufReader::new(&conn).read_line(&mut line).is_err() {
        return true;
    }
    let result = match serde_json::from_str::<Request>(&line) {
        Ok(request) => {
            let (reply, answer) = mpsc::channel();
            if events
                .send(Msg::Checkpoint(Asked { request, reply }))
                .is_err()
            {
                return false;
            }
            answer
                .recv()
                .unwrap_or_else(|_| Err("the run ended before the checkpoint".into()))
        }
        Err(e) => Err(format!("a bad request: {e}")),
    };
    let text = match result {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!("error: {e}\n"),
    };
    let _ = (&conn).write_all(text.as_bytes());
    true
}

/// Takes the checkpoint of the paused VM into `dir` (made whole or not
/// at all: a failed one removes what it wrote).
pub fn take(controls: &husk_vmm::VmControls, source: &Source, dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let taken = write_all(controls, source, dir);
    if taken.is_err() {
        for f in [STATE, MEM, SCRATCH, META] {
            let _ = std::fs::remove_file(dir.join(f));
        }
    }
    taken
}

fn write_all(controls: &husk_vmm::VmControls, source: &Source, dir: &Path) -> Result<(), String> {
    let paths = husk_vmm::snapshot::SnapshotPaths {
        state: dir.join(STATE),
        mem: dir.join(MEM),
    };
    controls
        .snapshot(&paths, husk_vmm::snapshot::Kind::Full)
        .map_err(|e| format!("the VM's snapshot: {e}"))?;
    if let Some(scratch) = &source.scratch {
        // The guest is paused and its writes are on the file (the disk
        // acknowledges only what reached it), so the copy is consistent
        // with the memory just saved.
        std::fs::copy(scratch, dir.join(SCRATCH))
            .map_err(|e| format!("copying the scratch disk: {e}"))?;
    }
    let args = source
        .args
        .iter()
        .map(|a| a.clone().into_string())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|a| format!("the run's argument {a:?} is not UTF-8: it cannot be recorded"))?;
    let meta = Meta {
        husk: env!("CARGO_PKG_VERSION").into(),
        args,
        scratch: source.scratch.is_some(),
    };
    let text = serde_json::to_vec_pretty(&meta).expect("plain data");
    std::fs::write(dir.join(META), text).map_err(|e| format!("{META}: {e}"))
}

/// The checkpoint's scratch disk, copied to `to` for the restored run.
pub fn copy_scratch(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from.join(SCRATCH), to)
        .map(|_| ())
        .map_err(|e| format!("the checkpoint's scratch disk: {e}"))
}

/// The checkpoint's VM, running, on the run's files: its image and
/// scratch disks (by drive id), its vsock socket and its NIC.
pub fn restore(from: &Path, config: &husk_vmm::VmConfig) -> Result<husk_vmm::RunningVm, String> {
    let ours = [super::serial::IMAGE, super::serial::SCRATCH];
    let disks = config
        .disks
        .iter()
        .filter(|d| ours.contains(&d.id.as_str()))
        .map(|d| (d.id.clone(), d.path.clone()))
        .collect();
    super::pool::restore_as(from, config, disks, None)
        .map_err(|e| format!("restoring {}: {e}", from.display()))
}

/// `husk restore DIR`: the checkpoint's command line again, detached, its
/// VM restored from DIR; prints the new container's id.
pub fn start_restored(dir: &Path) -> Result<u8, Failure> {
    let dir =
        std::path::absolute(dir).map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
    let meta = read(&dir).map_err(Failure::usage)?;
    super::detach::spawn(&meta.args, Some(&dir))
}

/// Reads a checkpoint's record, refusing one this husk cannot restore.
pub fn read(dir: &Path) -> Result<Meta, String> {
    let path = dir.join(META);
    let text = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let meta: Meta =
        serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.husk != env!("CARGO_PKG_VERSION") {
        return Err(format!(
            "{} was written by husk {}; this is husk {}",
            dir.display(),
            meta.husk,
            env!("CARGO_PKG_VERSION")
        ));
    }
    for f in [STATE, MEM] {
        if !dir.join(f).is_file() {
            return Err(format!("{} has no {f}", dir.display()));
        }
    }
    Ok(meta)
}

/// `husk checkpoint`: asks the run's husk for a checkpoint into `dir`.
pub fn request(id: &str, dir: &Path, leave_running: bool) -> Result<(), Failure> {
    let found = super::state::find(&super::runtime_root()?, id).map_err(Failure::usage)?;
    if !found.running() {
        return Err(Failure::runtime(format!(
            "container {id} is not running ({})",
            found.describe_status()
        )));
    }
    let socket = found.dir.join(CONTROL_SOCKET);
    if !found.state.detached || !socket.exists() {
        return Err(Failure::runtime(format!(
            "container {id} runs in the foreground: only a detached run (husk run -d) can be checkpointed"
        )));
    }
    let dir =
        std::path::absolute(dir).map_err(|e| Failure::usage(format!("{}: {e}", dir.display())))?;
    let line = serde_json::to_string(&Request { dir, leave_running }).expect("plain data");
    let mut conn = UnixStream::connect(&socket)
        .map_err(|e| Failure::runtime(format!("{}: {e}", socket.display())))?;
    writeln!(conn, "{line}").map_err(|e| Failure::runtime(format!("{}: {e}", socket.display())))?;
    let mut answer = String::new();
    BufReader::new(&conn)
        .read_line(&mut answer)
        .map_err(|e| Failure::runtime(format!("{}: {e}", socket.display())))?;
    match answer.trim_end().strip_prefix("error: ") {
        None if answer.trim_end() == "ok" => Ok(()),
        None => Err(Failure::runtime(format!(
            "container {id}'s husk ended without an answer"
        ))),
        Some(why) => Err(Failure::runtime(format!("checkpoint of {id}: {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_of_another_husk_or_without_its_files_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(read(dir.path()).unwrap_err().contains(META));
        let meta = |husk: &str| Meta {
            husk: husk.into(),
            args: vec!["run".into(), "-d".into(), "img".into()],
            scratch: false,
        };
        std::fs::write(
            dir.path().join(META),
            serde_json::to_vec(&meta("0.0.0-other")).unwrap(),
        )
        .unwrap();
        assert!(read(dir.path())
            .unwrap_err()
            .contains("written by husk 0.0.0-other"));
        let ours = meta(env!("CARGO_PKG_VERSION"));
        std::fs::write(dir.path().join(META), serde_json::to_vec(&ours).unwrap()).unwrap();
        assert!(read(dir.path()).unwrap_err().contains("has no vm.state"));
        std::fs::write(dir.path().join(STATE), b"").unwrap();
        std::fs::write(dir.path().join(MEM), b"").unwrap();
        assert_eq!(read(dir.path()).unwrap(), ours);
    }
}
