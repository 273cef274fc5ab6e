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
//! arguments). `husk checkpoint` makes the directory and its files itself
//! and hands them to the run as open descriptors with its request
//! (SCM_RIGHTS): the run writes into them, so a jailed run, which sees
//! nothing but its own directory, is checkpointed the same way. A restore is that command line run again, detached, with
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

/// One request on the control socket (a JSON line; the checkpoint's
/// files come with it as descriptors).
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub leave_running: bool,
}

/// A checkpoint the session is asked to take, into `files`; it answers on
/// `reply`.
#[derive(Debug)]
pub struct Asked {
    pub request: Request,
    pub files: Files,
    pub reply: mpsc::Sender<Result<(), String>>,
}

/// The checkpoint's files, made by `husk checkpoint`, in the order they
/// travel.
#[derive(Debug)]
pub struct Files {
    pub snapshot: husk_vmm::snapshot::SnapshotFiles,
    pub scratch: std::fs::File,
    pub meta: std::fs::File,
}

/// The checkpoint's files by name, in the order they travel.
const FILES: [&str; 4] = [STATE, MEM, SCRATCH, META];

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
    let result = match receive(&conn) {
        Ok((request, files)) => {
            let (reply, answer) = mpsc::channel();
            let asked = Asked {
                request,
                files,
                reply,
            };
            if events.send(Msg::Checkpoint(asked)).is_err() {
                return false;
            }
            answer
                .recv()
                .unwrap_or_else(|_| Err("the run ended before the checkpoint".into()))
        }
        Err(e) => Err(e),
    };
    let text = match result {
        Ok(()) => "ok\n".to_string(),
        Err(e) => format!("error: {e}\n"),
    };
    let _ = (&conn).write_all(text.as_bytes());
    true
}

/// The request line and the checkpoint's files that come with it.
fn receive(conn: &UnixStream) -> Result<(Request, Files), String> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let mut buf = vec![0u8; 64 * 1024];
    let mut cmsg = nix::cmsg_space!([std::os::fd::RawFd; 4]);
    let (n, fds) = {
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(|e| format!("reading the request: {e}"))?;
        let mut fds = Vec::new();
        for c in msg
            .cmsgs()
            .map_err(|e| format!("reading the request: {e}"))?
        {
            if let ControlMessageOwned::ScmRights(got) = c {
                // SAFETY: the kernel just installed these descriptors in
                // this process for us; nothing else owns them.
                fds.extend(
                    got.into_iter()
                        .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                );
            }
        }
        (msg.bytes, fds)
    };
    let mut line = buf[..n].to_vec();
    // The rest of the line, if the first read did not hold it all.
    if !line.ends_with(b"\n") {
        let mut more = String::new();
        BufReader::new(conn)
            .read_line(&mut more)
            .map_err(|e| format!("reading the request: {e}"))?;
        line.extend_from_slice(more.as_bytes());
    }
    let request: Request =
        serde_json::from_slice(&line).map_err(|e| format!("a bad request: {e}"))?;
    let [state, mem, scratch, meta]: [OwnedFd; 4] =
        fds.try_into().map_err(|got: Vec<OwnedFd>| {
            format!(
                "a request comes with the checkpoint's {} files, not {}",
                FILES.len(),
                got.len()
            )
        })?;
    Ok((
        request,
        Files {
            snapshot: husk_vmm::snapshot::SnapshotFiles {
                state: state.into(),
                mem: mem.into(),
            },
            scratch: scratch.into(),
            meta: meta.into(),
        },
    ))
}

/// Takes the checkpoint of the paused VM into `files` (made whole or not
/// at all: `husk checkpoint` removes them if this fails).
pub fn take(
    controls: &husk_vmm::VmControls,
    source: &Source,
    files: &mut Files,
) -> Result<(), String> {
    controls
        .snapshot_to(
            husk_vmm::snapshot::SnapshotTarget::Files(&files.snapshot),
            husk_vmm::snapshot::Kind::Full,
        )
        .map_err(|e| format!("the VM's snapshot: {e}"))?;
    if let Some(scratch) = &source.scratch {
        // The guest is paused and its writes are on the file (the disk
        // acknowledges only what reached it), so the copy is consistent
        // with the memory just saved.
        let mut from =
            std::fs::File::open(scratch).map_err(|e| format!("copying the scratch disk: {e}"))?;
        std::io::copy(&mut from, &mut files.scratch)
            .and_then(|_| files.scratch.sync_all())
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
    files
        .meta
        .write_all(&text)
        .and_then(|()| files.meta.sync_all())
        .map_err(|e| format!("{META}: {e}"))
}

/// The checkpoint's scratch disk, copied to `to` for the restored run.
pub fn copy_scratch(from: &Path, to: &Path) -> Result<(), String> {
    std::fs::copy(from.join(SCRATCH), to)
        .map(|_| ())
        .map_err(|e| format!("the checkpoint's scratch disk: {e}"))
}

/// The checkpoint's VM, running, on the run's files: its image and
/// scratch disks (by drive id), its vsock socket and its NIC.
pub fn restore(
    from: &Path,
    config: &husk_vmm::VmConfig,
    before: Option<husk_vmm::BeforeThreads>,
) -> Result<husk_vmm::RunningVm, String> {
    let ours = [super::serial::IMAGE, super::serial::SCRATCH];
    let disks = config
        .disks
        .iter()
        .filter(|d| ours.contains(&d.id.as_str()))
        .map(|d| (d.id.clone(), d.path.clone()))
        .collect();
    // A checkpoint's memory is mapped as Firecracker's `File` backend
    // does; the pool's other ways (HUSK_POOL_MEMORY) are for templates.
    let memory = (
        from.join(super::pool::MEM),
        husk_vmm::snapshot::memory::Backing::Mapped,
    );
    super::pool::restore_as(from, config, disks, memory, before)
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
    std::fs::create_dir_all(&dir)
        .map_err(|e| Failure::runtime(format!("{}: {e}", dir.display())))?;
    let files = FILES
        .iter()
        .map(|name| {
            let path = dir.join(name);
            std::fs::File::create(&path)
                .map_err(|e| Failure::runtime(format!("{}: {e}", path.display())))
        })
        .collect::<Result<Vec<_>, _>>();
    let asked = files.and_then(|files| ask(&socket, leave_running, &files));
    let remove = |names: &[&str]| {
        for name in names {
            let _ = std::fs::remove_file(dir.join(name));
        }
    };
    match asked {
        Ok(None) => {
            // A run without a scratch disk leaves its file empty.
            if !read(&dir).is_ok_and(|m| m.scratch) {
                remove(&[SCRATCH]);
            }
            Ok(())
        }
        Ok(Some(why)) => {
            remove(&FILES);
            Err(Failure::runtime(format!("checkpoint of {id}: {why}")))
        }
        Err(e) => {
            remove(&FILES);
            Err(e)
        }
    }
}

/// Sends the request with `files`; the run's refusal, if it refused.
fn ask(
    socket: &Path,
    leave_running: bool,
    files: &[std::fs::File],
) -> Result<Option<String>, Failure> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    use std::os::fd::AsRawFd;
    let fail = |e: &dyn std::fmt::Display| Failure::runtime(format!("{}: {e}", socket.display()));
    let request = Request { leave_running };
    let mut line = serde_json::to_vec(&request).expect("plain data");
    line.push(b'\n');
    let conn = UnixStream::connect(socket).map_err(|e| fail(&e))?;
    let fds: Vec<std::os::fd::RawFd> = files.iter().map(|f| f.as_raw_fd()).collect();
    let rights = [ControlMessage::ScmRights(&fds)];
    let iov = [std::io::IoSlice::new(&line)];
    let sent = sendmsg::<()>(conn.as_raw_fd(), &iov, &rights, MsgFlags::empty(), None)
        .map_err(|e| fail(&e))?;
    if sent != line.len() {
        (&conn).write_all(&line[sent..]).map_err(|e| fail(&e))?;
    }
    let mut answer = String::new();
    BufReader::new(&conn)
        .read_line(&mut answer)
        .map_err(|e| fail(&e))?;
    match answer.trim_end().strip_prefix("error: ") {
        None if answer.trim_end() == "ok" => Ok(None),
        None => Err(Failure::runtime(format!(
            "{}: the run's husk ended without an answer",
            socket.display()
        ))),
        Some(why) => Ok(Some(why.to_owned())),
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
