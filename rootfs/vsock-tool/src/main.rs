//! `husk-vsock`: the guest's vsock tool (busybox has none).
//!
//! - `husk-vsock echo PORT`: accepts connections on vsock PORT and echoes
//!   every byte back, one thread per connection, until killed.
//! - `husk-vsock connect CID PORT`: connects to (CID, PORT), copies stdin to
//!   the socket (then shuts down writing) and the socket to stdout.

use nix::sys::socket::{
    accept, bind, connect, listen, socket, AddressFamily, Backlog, SockFlag, SockType, VsockAddr,
};
use std::io::{Read, Write};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;

/// A connected vsock socket as a std stream (same read/write/shutdown calls).
fn stream(fd: OwnedFd) -> UnixStream {
    // SAFETY: `fd` is a connected stream socket we own; UnixStream only
    // issues read/write/shutdown/close on it, which vsock supports.
    unsafe { UnixStream::from_raw_fd(fd.into_raw_fd()) }
}

fn vsock() -> nix::Result<OwnedFd> {
    socket(
        AddressFamily::Vsock,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
}

fn echo(port: u32) -> Result<(), String> {
    let s = vsock().map_err(|e| format!("socket: {e}"))?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&s),
        &VsockAddr::new(libc_vmaddr_cid_any(), port),
    )
    .map_err(|e| format!("bind port {port}: {e}"))?;
    listen(&s, Backlog::MAXCONN).map_err(|e| format!("listen: {e}"))?;
    loop {
        let fd = accept(std::os::fd::AsRawFd::as_raw_fd(&s)).map_err(|e| format!("accept: {e}"))?;
        // SAFETY: accept returned a fresh descriptor that nothing else owns.
        let conn = stream(unsafe { OwnedFd::from_raw_fd(fd) });
        std::thread::spawn(move || {
            let mut r = conn.try_clone().expect("dup");
            let mut w = conn;
            let _ = std::io::copy(&mut r, &mut w);
        });
    }
}

/// VMADDR_CID_ANY: bind on whatever CID the guest has.
fn libc_vmaddr_cid_any() -> u32 {
    u32::MAX
}

fn connect_to(cid: u32, port: u32) -> Result<(), String> {
    let s = vsock().map_err(|e| format!("socket: {e}"))?;
    connect(
        std::os::fd::AsRawFd::as_raw_fd(&s),
        &VsockAddr::new(cid, port),
    )
    .map_err(|e| format!("connect {cid}:{port}: {e}"))?;
    let conn = stream(s);
    let mut reader = conn.try_clone().map_err(|e| e.to_string())?;
    let out = std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = reader.read_to_end(&mut buf);
        let mut so = std::io::stdout().lock();
        let _ = so.write_all(&buf);
        let _ = so.flush();
    });
    let mut w = conn;
    std::io::copy(&mut std::io::stdin().lock(), &mut w).map_err(|e| format!("send: {e}"))?;
    let _ = w.shutdown(std::net::Shutdown::Write);
    out.join().map_err(|_| "receiver panicked".to_string())?;
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |s: &str| s.parse::<u32>().map_err(|_| format!("not a number: {s}"));
    let result = match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["echo", port] => num(port).and_then(echo),
        ["connect", cid, port] => num(cid).and_then(|c| num(port).and_then(|p| connect_to(c, p))),
        _ => Err("usage: husk-vsock echo PORT | husk-vsock connect CID PORT".into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-vsock: {e}");
            ExitCode::FAILURE
        }
    }
}
