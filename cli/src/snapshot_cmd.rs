//! `husk snapshot create|restore|merge`: Firecracker-style snapshots of a
//! raw VM from the command line. `create` drives a running `husk vmm`
//! through its API socket (pause, snapshot, resume if asked); `restore` is
//! `husk vmm` loading the snapshot instead of being configured; `merge`
//! puts a Diff snapshot's pages onto the memory file it was taken after.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::Failure;

#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Pause a `husk vmm` and write its snapshot (a state file and a
    /// memory file); it stays paused unless --resume.
    Create(CreateArgs),
    /// Run a VM from a snapshot, as `husk vmm` would after `PUT
    /// /snapshot/load`; exits with the guest's status.
    Restore(RestoreArgs),
    /// Copy a Diff snapshot's pages onto the memory file of the snapshot
    /// it was taken after, which then restores as the Diff (with the
    /// Diff's state file).
    Merge(MergeArgs),
}

#[derive(clap::Args, Debug)]
pub struct MergeArgs {
    /// The Diff snapshot's memory file.
    #[arg(long, value_name = "FILE")]
    diff: PathBuf,
    /// The memory file it goes onto (changed in place).
    #[arg(long, value_name = "FILE")]
    base: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct CreateArgs {
    /// The `husk vmm`'s API socket.
    #[arg(long, value_name = "PATH")]
    api_sock: PathBuf,
    /// Where the VM's state goes.
    #[arg(long, value_name = "FILE")]
    state: PathBuf,
    /// Where guest memory goes.
    #[arg(long, value_name = "FILE")]
    mem: PathBuf,
    /// Resume the VM once the snapshot is written.
    #[arg(long)]
    resume: bool,
    /// Only the pages written since the last snapshot (the VM must track
    /// dirty pages: `track_dirty_pages` in its machine config, or
    /// `restore --track-dirty-pages`). Onto an existing memory file of
    /// this VM the pages are written in place; a new file gets only them.
    #[arg(long)]
    diff: bool,
}

#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// The state file.
    #[arg(long, value_name = "FILE")]
    state: PathBuf,
    /// The memory file.
    #[arg(long, value_name = "FILE")]
    mem: PathBuf,
    /// Also serve the API on this socket (pause, resume, a new snapshot).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,
    /// Start paused (resume through the API).
    #[arg(long, requires = "api_sock")]
    paused: bool,
    /// Track dirty pages from the restore on, for a later `create --diff`.
    #[arg(long, requires = "api_sock")]
    track_dirty_pages: bool,
    /// Run on kvm_pvm anyway (only tiny test guests survive it).
    #[arg(long, hide = true)]
    allow_kvm_pvm: bool,
}

pub fn run(command: SnapshotCommand) -> Result<u8, Failure> {
    match command {
        SnapshotCommand::Create(args) => create(&args).map(|()| 0),
        SnapshotCommand::Restore(args) => restore(args),
        SnapshotCommand::Merge(args) => merge(&args).map(|()| 0),
    }
}

fn create(args: &CreateArgs) -> Result<(), Failure> {
    let api = &args.api_sock;
    call(api, "PATCH", "/vm", r#"{"state":"Paused"}"#)?;
    let body = serde_json::json!({
        "snapshot_type": if args.diff { "Diff" } else { "Full" },
        "snapshot_path": absolute(&args.state)?,
        "mem_file_path": absolute(&args.mem)?,
    });
    call(api, "PUT", "/snapshot/create", &body.to_string())?;
    if args.resume {
        call(api, "PATCH", "/vm", r#"{"state":"Resumed"}"#)?;
    }
    Ok(())
}

fn restore(args: RestoreArgs) -> Result<u8, Failure> {
    let load = husk_api::model::SnapshotLoad {
        snapshot_path: absolute(&args.state)?.display().to_string(),
        mem_file_path: None,
        mem_backend: Some(husk_api::model::MemBackend {
            backend_type: husk_api::model::MemBackendType::File,
            backend_path: absolute(&args.mem)?.display().to_string(),
        }),
        enable_diff_snapshots: None,
        track_dirty_pages: args.track_dirty_pages.then_some(true),
        resume_vm: !args.paused,
    };
    husk_vmm_bin::run_restored(args.api_sock, args.allow_kvm_pvm, load)
}

fn merge(args: &MergeArgs) -> Result<(), Failure> {
    husk_vmm::snapshot::memory::merge(&args.diff, &args.base)
        .map(|_| ())
        .map_err(|e| {
            Failure::runtime(format!(
                "merging {} onto {}: {e}",
                args.diff.display(),
                args.base.display()
            ))
        })
}

/// The VMM resolves paths from its own directory: send absolute ones.
fn absolute(path: &Path) -> Result<PathBuf, Failure> {
    std::path::absolute(path).map_err(|e| Failure::usage(format!("{}: {e}", path.display())))
}

/// One API request; a 4xx or 5xx is the command's failure, with the
/// VMM's fault message.
fn call(socket: &Path, method: &str, path: &str, body: &str) -> Result<(), Failure> {
    let (status, text) = request(socket, method, path, body)
        .map_err(|e| Failure::runtime(format!("the API at {}: {e}", socket.display())))?;
    if (200..300).contains(&status) {
        return Ok(());
    }
    let fault = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["fault_message"].as_str().map(str::to_owned))
        .unwrap_or(text);
    Err(Failure::runtime(format!(
        "{method} {path}: {status}: {fault}"
    )))
}

/// HTTP/1.1 over the Unix socket, one request per connection (what
/// Firecracker's own tooling does with curl --unix-socket).
fn request(socket: &Path, method: &str, path: &str, body: &str) -> std::io::Result<(u16, String)> {
    let mut s = UnixStream::connect(socket)?;
    // A snapshot of a large guest takes a while to write.
    s.set_read_timeout(Some(Duration::from_secs(600)))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    parse_reply(&reply)
}

fn parse_reply(reply: &str) -> std::io::Result<(u16, String)> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP reply");
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_give_their_status_and_body() {
        let r = "HTTP/1.1 400 Bad Request\r\nContent-Length: 20\r\n\r\n{\"fault_message\":\"x\"}";
        assert_eq!(
            parse_reply(r).unwrap(),
            (400, "{\"fault_message\":\"x\"}".into())
        );
        assert_eq!(
            parse_reply("HTTP/1.1 204 No Content\r\n\r\n").unwrap(),
            (204, String::new())
        );
        assert!(parse_reply("garbage").is_err());
    }
}
