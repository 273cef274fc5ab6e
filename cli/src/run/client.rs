//! The host end of the agent protocol: connects through the VM's vsock
//! Unix socket (Firecracker's hybrid model: `CONNECT <port>` first) and
//! turns the connection into messages on a channel.

use husk_agent_protocol::{read_frame, write_frame, Frame, Request, AGENT_PORT};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Opens a stream to the agent's port, retrying while the guest boots
/// (until then the VMM's muxer answers the CONNECT by closing). `alive`
/// says whether it is worth waiting: a VM that already ended never answers.
pub fn connect(
    uds: &Path,
    deadline: Instant,
    alive: &dyn Fn() -> bool,
) -> Result<UnixStream, String> {
    let mut last = String::from("no answer");
    while Instant::now() < deadline {
        if !alive() {
            return Err("the VM stopped before its agent answered".into());
        }
        match try_connect(uds) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Err(format!(
        "the guest agent did not answer on vsock port {AGENT_PORT}: {last}"
    ))
}

fn try_connect(uds: &Path) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).map_err(|e| format!("{}: {e}", uds.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("CONNECT {AGENT_PORT}\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut line = String::new();
    // Byte by byte: what follows the OK line is already protocol frames.
    let mut r = BufReader::with_capacity(1, &s);
    r.read_line(&mut line).map_err(|e| e.to_string())?;
    if !line.starts_with("OK ") {
        return Err(format!("CONNECT answered {:?}", line.trim_end()));
    }
    s.set_read_timeout(None).map_err(|e| e.to_string())?;
    Ok(s)
}

/// Writes frames; shared by the threads that produce them.
#[derive(Clone)]
pub struct AgentWriter {
    stream: Arc<Mutex<UnixStream>>,
    seq: Arc<std::sync::atomic::AtomicU64>,
}

impl AgentWriter {
    pub fn new(stream: UnixStream) -> AgentWriter {
        AgentWriter {
            stream: Arc::new(Mutex::new(stream)),
            seq: Arc::default(),
        }
    }

    pub fn frame(&self, frame: &Frame) -> Result<(), String> {
        let mut s = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        write_frame(&mut *s, frame).map_err(|e| format!("agent connection: {e}"))
    }

    /// Sends a request; its sequence number, to match the response.
    pub fn request(&self, request: Request) -> Result<u64, String> {
        let seq = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        self.frame(&Frame::Request { seq, request })?;
        Ok(seq)
    }
}

/// Forwards every frame from the agent to `tx`; `on_end` is sent when the
/// connection ends, with the reason.
pub fn spawn_reader<M: Send + 'static>(
    stream: UnixStream,
    tx: Sender<M>,
    on_frame: fn(Frame) -> M,
    on_end: fn(String) -> M,
) {
    std::thread::spawn(move || {
        let mut r = std::io::BufReader::new(stream);
        loop {
            match read_frame(&mut r) {
                Ok(Some(f)) => {
                    if tx.send(on_frame(f)).is_err() {
                        return;
                    }
                }
                Ok(None) => {
                    let _ = tx.send(on_end("the agent closed the connection".into()));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(on_end(format!("agent connection: {e}")));
                    return;
                }
            }
        }
    });
}
