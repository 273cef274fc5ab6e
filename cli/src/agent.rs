//! The host end of the agent protocol (`husk_wire::agent`), for every
//! command that talks to a guest agent: `husk run`'s session and `husk
//! exec`/`kill`/`rm`.
//!
//! A connection is three parties, so that nothing the guest does (or fails
//! to do) can make the command deaf to its user:
//! - a reader thread takes frames off the socket and writes process output
//!   straight into the command's sinks. It holds nothing: while a sink
//!   blocks (`husk run IMAGE cat /dev/zero | sleep 1d`), it stops reading,
//!   the VMM's vsock device stops returning credit and the guest's writer
//!   waits. Control frames (responses, exit events) go on to the caller as
//!   [`Msg`]s, after the output that preceded them.
//! - a writer thread owns the socket's sending side. A guest that withholds
//!   credit blocks that thread, never the caller: requests are queued and
//!   return at once, so signals keep being handled (and escalate) whatever
//!   the connection does. Stdin waits while too much of it is queued.
//! - the caller's loop, which reads [`Msg`]s: the agent's, and its own
//!   sources' (signals, terminal resizes) through [`Client::sender`].

use husk_vmm::VmControls;
use husk_wire::agent::{
    read_frame, Event, ExitStatus, Frame, Request, Response, AGENT_PORT, MAX_CHUNK, VERSION,
};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Stdin bytes queued for the writer beyond which the stdin reader waits.
const STDIN_WINDOW: usize = 4 * MAX_CHUNK;

/// What a silent guest's error says (the run then prints where its VM
/// stands).
pub const NO_ANSWER: &str = "agent did not answer";

/// What a connection's caller waits for.
#[derive(Debug)]
pub enum Msg {
    Response {
        seq: u64,
        response: Response,
    },
    /// A process on this connection ended (after its output was written).
    Exited {
        stream: u32,
        status: ExitStatus,
    },
    /// The connection ended; why.
    Closed(String),
    /// The caller's own sources.
    Signal(i32),
    Resize,
    /// A detached run is asked for a checkpoint (its control socket).
    Checkpoint(crate::run::checkpoint::Asked),
}

/// What the n-th stop signal (SIGINT/SIGTERM) does while a process runs,
/// as docker's sig-proxy does it: the first goes to the process, the
/// second is a SIGKILL, the third ends the wait (the process may ignore
/// us, or the guest may not take our requests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escalation {
    /// Pass the signal on.
    Pass(i32),
    /// SIGKILL.
    Kill,
    GiveUp,
}

/// Counts stop signals and says what each one does.
#[derive(Debug, Default)]
pub struct Escalator {
    seen: u32,
}

impl Escalator {
    pub fn next(&mut self, sig: i32) -> Escalation {
        self.seen += 1;
        match self.seen {
            1 => Escalation::Pass(sig),
            2 => Escalation::Kill,
            _ => Escalation::GiveUp,
        }
    }
}

/// Where process output goes: the command's stdout/stderr, or log files.
pub struct Sinks {
    pub out: Box<dyn Write + Send>,
    pub err: Box<dyn Write + Send>,
}

impl Sinks {
    /// Output nobody wants (a client that only sends signals).
    pub fn discard() -> Sinks {
        Sinks {
            out: Box::new(std::io::sink()),
            err: Box::new(std::io::sink()),
        }
    }

    pub fn stdio() -> Sinks {
        Sinks {
            out: Box::new(std::io::stdout()),
            err: Box::new(std::io::stderr()),
        }
    }
}

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
        "the guest {NO_ANSWER} on vsock port {AGENT_PORT}: {last}"
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

/// Queues frames for the writer thread; cheap to clone.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Frame>,
    seq: Arc<AtomicU64>,
    /// Stdin bytes queued and not yet written.
    stdin_queued: Arc<(Mutex<usize>, Condvar)>,
}

impl Writer {
    fn spawn(mut stream: UnixStream) -> Writer {
        let (tx, rx) = mpsc::channel::<Frame>();
        let stdin_queued: Arc<(Mutex<usize>, Condvar)> = Arc::default();
        let queued = stdin_queued.clone();
        std::thread::spawn(move || {
            for frame in rx {
                let ok = stream.write_all(&frame.encode()).is_ok();
                if let Frame::Stdin { data, .. } = &frame {
                    let (n, cv) = &*queued;
                    let mut n = n.lock().unwrap_or_else(|p| p.into_inner());
                    *n = n.saturating_sub(data.len());
                    cv.notify_all();
                }
                if !ok {
                    // The reader sees the connection end and says so.
                    return;
                }
            }
        });
        Writer {
            tx,
            seq: Arc::default(),
            stdin_queued,
        }
    }

    /// Queues a request; its sequence number, to match the response.
    pub fn request(&self, request: Request) -> Result<u64, String> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        self.tx
            .send(Frame::Request { seq, request })
            .map_err(|_| "the agent connection is closed".to_owned())?;
        Ok(seq)
    }

    /// Queues stdin data (empty: end of input), waiting while too much is
    /// queued already: the guest's credit paces whoever feeds us.
    pub fn stdin(&self, stream: u32, data: Vec<u8>) -> Result<(), String> {
        let (n, cv) = &*self.stdin_queued;
        let mut queued = n.lock().unwrap_or_else(|p| p.into_inner());
        while *queued >= STDIN_WINDOW {
            queued = cv.wait(queued).unwrap_or_else(|p| p.into_inner());
        }
        *queued += data.len();
        drop(queued);
        self.tx
            .send(Frame::Stdin { stream, data })
            .map_err(|_| "the agent connection is closed".to_owned())
    }
}

/// One connection to an agent, past the version handshake.
pub struct Client {
    pub writer: Writer,
    events: mpsc::Receiver<Msg>,
    events_tx: mpsc::Sender<Msg>,
}

impl Client {
    /// Connects, starts the reader (output into `sinks`) and the writer, and
    /// says hello. `alive` and `deadline` as for [`connect`]; the handshake
    /// itself must answer within `deadline` too.
    pub fn open(
        uds: &Path,
        deadline: Instant,
        alive: &dyn Fn() -> bool,
        sinks: Sinks,
    ) -> Result<Client, String> {
        Client::open_with(uds, deadline, alive, sinks, None)
    }

    /// [`open`](Client::open) for the process that runs the guest's VM:
    /// the reader, which parses what the guest sends, runs under its
    /// seccomp filter, and a call outside it stops the VM.
    pub fn open_guarded(
        uds: &Path,
        deadline: Instant,
        alive: &dyn Fn() -> bool,
        sinks: Sinks,
        vm: VmControls,
    ) -> Result<Client, String> {
        Client::open_with(uds, deadline, alive, sinks, Some(vm))
    }

    fn open_with(
        uds: &Path,
        deadline: Instant,
        alive: &dyn Fn() -> bool,
        sinks: Sinks,
        vm: Option<VmControls>,
    ) -> Result<Client, String> {
        let stream = connect(uds, deadline, alive)?;
        Client::over(stream, deadline, alive, sinks, vm)
    }

    /// [`open`](Client::open) on a stream from [`connect`]: the threads
    /// start here (a process that changes its namespaces between the two
    /// has its reader and writer in the new ones).
    pub fn over(
        stream: UnixStream,
        deadline: Instant,
        alive: &dyn Fn() -> bool,
        sinks: Sinks,
        vm: Option<VmControls>,
    ) -> Result<Client, String> {
        let reader = stream
            .try_clone()
            .map_err(|e| format!("agent connection: {e}"))?;
        let (events_tx, events) = mpsc::channel();
        spawn_reader(reader, sinks, events_tx.clone(), vm);
        let client = Client {
            writer: Writer::spawn(stream),
            events,
            events_tx,
        };
        let seq = client.writer.request(Request::Hello { version: VERSION })?;
        let left = deadline.saturating_duration_since(Instant::now());
        match client.response(seq, left.max(Duration::from_secs(5)), alive)? {
            Response::Hello { .. } => Ok(client),
            Response::Error { message } => Err(format!("agent handshake: {message}")),
            other => Err(format!("agent handshake: unexpected answer {other:?}")),
        }
    }

    /// Where the caller's own sources (signals, resizes) send their [`Msg`]s.
    pub fn sender(&self) -> mpsc::Sender<Msg> {
        self.events_tx.clone()
    }

    /// The next message; `Ok(None)` after `timeout` without one.
    pub fn next(&self, timeout: Duration) -> Result<Option<Msg>, String> {
        match self.events.recv_timeout(timeout) {
            Ok(m) => Ok(Some(m)),
            Err(mpsc::RecvTimeoutError::Timeout) => Ok(None),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err("lost every event source".into()),
        }
    }

    /// Waits for the response to `seq`. Exit events and signals that come
    /// first are an error: nothing runs yet that they could be about.
    /// `alive` is polled while waiting (a VM that stopped never answers).
    pub fn response(
        &self,
        seq: u64,
        timeout: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<Response, String> {
        let deadline = Instant::now() + timeout;
        loop {
            if Instant::now() >= deadline {
                return Err(format!("the {NO_ANSWER}"));
            }
            match self.next(Duration::from_millis(200))? {
                Some(Msg::Response { seq: s, response }) if s == seq => return Ok(response),
                Some(Msg::Closed(why)) => return Err(why),
                Some(Msg::Signal(sig)) => {
                    return Err(format!("interrupted by signal {sig} while starting"))
                }
                Some(_) => {}
                None if !alive() => return Err("the VM stopped before the agent answered".into()),
                None => {}
            }
        }
    }

    /// Sends a request and waits for an `ok`; `what` names it in the error.
    pub fn call(
        &self,
        request: Request,
        what: &str,
        timeout: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<(), String> {
        match self.ask(request, what, timeout, alive)? {
            Response::Ok => Ok(()),
            other => Err(format!("cannot {what}: unexpected answer {other:?}")),
        }
    }

    /// Sends `request` and waits for its answer; an error answer is an
    /// error.
    pub fn ask(
        &self,
        request: Request,
        what: &str,
        timeout: Duration,
        alive: &dyn Fn() -> bool,
    ) -> Result<Response, String> {
        let seq = self.writer.request(request)?;
        match self.response(seq, timeout, alive)? {
            Response::Error { message } => Err(format!("cannot {what}: {message}")),
            other => Ok(other),
        }
    }
}

/// The reader thread; under the VM's filter for its kind when `vm` is
/// given (the VM's watch, which the filter reports to, is kept to the
/// thread's end; the VM itself is not: the thread may outlive it).
fn spawn_reader(
    stream: UnixStream,
    mut sinks: Sinks,
    tx: mpsc::Sender<Msg>,
    vm: Option<VmControls>,
) {
    // Every reader parses what a guest sends under its filter. In a VM's
    // process a call outside it stops the VM; elsewhere (husk exec, kill,
    // rm; the OCI exec proxy) it ends the connection, naming the call.
    let has_vm = vm.is_some();
    let watch = match vm {
        Some(vm) => Ok(vm.seccomp_watch()),
        None => husk_vmm::seccomp::Watch::new().map(Arc::new),
    };
    std::thread::spawn(move || {
        let guarded = watch.map_err(|e| e.to_string()).and_then(|w| {
            husk_vmm::seccomp::guard(husk_vmm::seccomp::Kind::AgentReader, &w)
                .map(|()| w)
                .map_err(|e| e.to_string())
        });
        let watch = match guarded {
            Ok(w) => w,
            Err(e) => {
                let _ = tx.send(Msg::Closed(format!("the agent connection's reader: {e}")));
                return;
            }
        };
        let mut r = BufReader::new(stream);
        loop {
            let frame = read_frame(&mut r);
            if let Some(call) = watch.refused().filter(|_| !has_vm) {
                let _ = tx.send(Msg::Closed(call));
                return;
            }
            let msg = match frame {
                Ok(Some(Frame::Stdout { data, .. })) => {
                    write_out(&mut sinks.out, &data);
                    continue;
                }
                Ok(Some(Frame::Stderr { data, .. })) => {
                    write_out(&mut sinks.err, &data);
                    continue;
                }
                Ok(Some(Frame::Response { seq, response })) => Msg::Response { seq, response },
                Ok(Some(Frame::Event(Event::Exited { stream, status, .. }))) => {
                    Msg::Exited { stream, status }
                }
                Ok(Some(other)) => {
                    log::warn!("agent sent a frame for the guest side: {other:?}");
                    continue;
                }
                Ok(None) => Msg::Closed("the agent closed the connection".into()),
                Err(e) if e.is_recoverable() => {
                    log::warn!("agent: {e}");
                    continue;
                }
                Err(e) => Msg::Closed(format!("agent connection: {e}")),
            };
            let end = matches!(msg, Msg::Closed(_));
            if tx.send(msg).is_err() || end {
                return;
            }
        }
    });
}

/// A sink that fails (a closed pipe) loses the output, as a shell's would;
/// the process keeps running.
fn write_out(sink: &mut Box<dyn Write + Send>, data: &[u8]) {
    if !data.is_empty() {
        let _ = sink.write_all(data);
        let _ = sink.flush();
    }
}

/// Reads our stdin and queues it for `stream`; an empty chunk is the end of
/// input, which the agent passes on.
pub fn spawn_stdin_thread(writer: Writer, stream: u32) {
    std::thread::spawn(move || {
        let mut buf = vec![0u8; MAX_CHUNK];
        let stdin = std::io::stdin();
        loop {
            let n = match std::io::Read::read(&mut stdin.lock(), &mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => 0,
            };
            if writer.stdin(stream, buf[..n].to_vec()).is_err() || n == 0 {
                return;
            }
        }
    });
}

/// Passes each signal the signalfd reads on as [`Msg::Signal`].
pub fn spawn_signal_thread(signals: nix::sys::signalfd::SignalFd, tx: mpsc::Sender<Msg>) {
    std::thread::spawn(move || loop {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let mut fds = [PollFd::new(signals.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::NONE).is_err() {
            continue;
        }
        while let Ok(Some(info)) = signals.read_signal() {
            if tx.send(Msg::Signal(info.ssi_signo as i32)).is_err() {
                return;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_signals_escalate_like_docker() {
        let mut e = Escalator::default();
        assert_eq!(e.next(libc::SIGINT), Escalation::Pass(libc::SIGINT));
        assert_eq!(e.next(libc::SIGTERM), Escalation::Kill);
        assert_eq!(e.next(libc::SIGINT), Escalation::GiveUp);
        assert_eq!(e.next(libc::SIGINT), Escalation::GiveUp);
    }
}

/// The terminal side of `-t`: resizes of our terminal reach the process's.
pub mod tty {
    use super::{Msg, Writer};
    use husk_wire::agent::Request;
    use std::sync::mpsc;

    fn winch_set() -> nix::sys::signal::SigSet {
        let mut set = nix::sys::signal::SigSet::empty();
        set.add(nix::sys::signal::Signal::SIGWINCH);
        set
    }

    /// Blocks SIGWINCH in this thread; call it before any other thread
    /// exists (they inherit the mask), so a resize reaches the one thread
    /// [`spawn_winch_thread`] starts.
    pub fn block_winch() -> Result<(), String> {
        winch_set()
            .thread_block()
            .map_err(|e| format!("cannot block SIGWINCH: {e}"))
    }

    /// Sends [`Msg::Resize`] on every SIGWINCH.
    pub fn spawn_winch_thread(tx: mpsc::Sender<Msg>) {
        let set = winch_set();
        std::thread::spawn(move || loop {
            if set.wait().is_err() || tx.send(Msg::Resize).is_err() {
                return;
            }
        });
    }

    /// Our terminal's size as (rows, cols), if stdin is a terminal.
    pub fn size() -> Option<(u16, u16)> {
        let mut ws = libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ writes a winsize into the struct we pass, which
        // lives for the call.
        let r = unsafe { libc::ioctl(libc::STDIN_FILENO, libc::TIOCGWINSZ, &mut ws) };
        (r == 0 && ws.ws_row > 0).then_some((ws.ws_row, ws.ws_col))
    }

    /// Gives a process that wants a terminal our terminal's size as its
    /// `consoleSize`, unless it has one: the guest sizes the pty before
    /// the process starts (a ResizeTty comes after, and a program that
    /// asks at once would see 0x0).
    pub fn size_process(p: &mut husk_wire::oci_spec::runtime::Process) {
        if p.terminal() != Some(true) || p.console_size().is_some() {
            return;
        }
        let Some((rows, cols)) = size() else { return };
        let b = husk_wire::oci_spec::runtime::BoxBuilder::default()
            .height(u64::from(rows))
            .width(u64::from(cols))
            .build();
        p.set_console_size(b.ok());
    }

    /// Tells the agent our terminal's size for `stream` (nothing without a
    /// terminal); the answer is not awaited.
    pub fn send_size(writer: &Writer, stream: u32) {
        if let Some((rows, cols)) = size() {
            let _ = writer.request(Request::ResizeTty { stream, rows, cols });
        }
    }
}
