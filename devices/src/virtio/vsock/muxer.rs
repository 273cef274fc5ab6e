//! The host side of the device: Firecracker's "hybrid" vsock model, where
//! every vsock connection is bridged to a Unix stream.
//!
//! - Host → guest: a host program connects to the listening socket at
//!   `uds_path` and writes `CONNECT <port>\n`; the muxer picks a local
//!   (host-side) port, sends the guest a `REQUEST` from `(2, local)` to
//!   `(guest_cid, port)`, and on the guest's `RESPONSE` writes
//!   `OK <local>\n` to the host stream before bridging bytes. A `RST` from
//!   the guest closes the host stream without the `OK`.
//! - Guest → host: a guest `REQUEST` to `(2, P)` makes the muxer connect to
//!   `<uds_path>_<P>`; the guest gets a `RESPONSE` when that succeeded and a
//!   `RST` otherwise.
//!
//! The muxer owns every host fd (the listener, streams still in the
//! `CONNECT` handshake, connection streams) and a map from each to what it
//! belongs to. It never talks to epoll itself: registrations are queued as
//! [`FdChange`]s that the event handler applies through `EventOps`. A
//! `Remove` carries the stream it deregisters, so the fd is closed only
//! after epoll forgot it, and its number cannot be reused while the event
//! manager still maps it.
//!
//! Packets for the guest come from two places: a bounded queue of control
//! packets that belong to no connection (resets answering stray packets),
//! and a queue of connections that have something to send. A connection
//! produces its packet only when the device has an rx buffer to put it in,
//! so host streams are read only as fast as the guest takes the data; with
//! no rx buffers, nothing is read and readiness is not polled for (see
//! [`Connection::interest`]), so the event loop sleeps.

use std::collections::{HashMap, HashSet, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use event_manager::EventSet;
use log::{debug, warn};
use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockType, UnixAddr};

use super::connection::{CloseReason, Connection, HostStream, Interest, DEFAULT_BUF_ALLOC};
use super::metrics::VsockMetrics;
use super::packet::{Op, PacketHeader};

/// Most connections (including host connections still in the `CONNECT`
/// handshake) the device keeps; more are refused (guest: `RST`, host:
/// closed). Each holds one host fd.
pub const MAX_CONNECTIONS: usize = 1024;

/// Longest `CONNECT <port>\n` line accepted, newline included.
pub const MAX_CONNECT_LINE: usize = 32;

/// Most control packets (resets for stray guest packets) waiting for rx
/// buffers. When full, the device stops taking packets from the tx queue
/// until the guest makes room, so none is lost.
pub const MAX_PENDING_CONTROL: usize = 256;

/// First local port handed to host-initiated connections; far above the
/// ports guests listen on, like Firecracker's.
pub const EPHEMERAL_PORT_START: u32 = 1 << 30;

/// A connection's identity: (device-side port, guest-side port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Port on the host side (CID 2).
    pub local_port: u32,
    /// Port on the guest side.
    pub peer_port: u32,
}

/// Why a `CONNECT` line is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ConnectLineError {
    /// No newline within [`MAX_CONNECT_LINE`] bytes.
    #[error("line is longer than {MAX_CONNECT_LINE} bytes")]
    TooLong,
    /// The line does not end with a newline.
    #[error("line is not terminated by a newline")]
    Unterminated,
    /// The line is not `CONNECT <port>`.
    #[error("line is not `CONNECT <port>`")]
    NotConnect,
    /// The port is not a decimal u32.
    #[error("bad port number")]
    BadPort,
}

/// Parses the host handshake `CONNECT <port>\n` (a trailing `\r` before the
/// newline and extra spaces around the port are tolerated). `line` is
/// everything read from the host up to and including the first newline.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, ConnectLineError> {
    if line.len() > MAX_CONNECT_LINE {
        return Err(ConnectLineError::TooLong);
    }
    let Some(body) = line.strip_suffix(b"\n") else {
        return Err(ConnectLineError::Unterminated);
    };
    let body = body.strip_suffix(b"\r").unwrap_or(body);
    let Some(rest) = body.strip_prefix(b"CONNECT ") else {
        return Err(ConnectLineError::NotConnect);
    };
    let port = rest.trim_ascii();
    if port.is_empty() || port.len() > 10 || !port.iter().all(u8::is_ascii_digit) {
        return Err(ConnectLineError::BadPort);
    }
    port.iter()
        .try_fold(0u32, |acc, d| {
            acc.checked_mul(10)?.checked_add(u32::from(d - b'0'))
        })
        .ok_or(ConnectLineError::BadPort)
}

/// A host Unix stream. Writes use `MSG_NOSIGNAL`, so a host that closed its
/// end yields `EPIPE` instead of killing the VMM with `SIGPIPE`.
#[derive(Debug)]
pub struct HostSocket(UnixStream);

impl HostSocket {
    /// Wraps a non-blocking stream.
    pub fn new(stream: UnixStream) -> Self {
        HostSocket(stream)
    }
}

impl Read for HostSocket {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for HostSocket {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(socket::send(
            self.0.as_raw_fd(),
            buf,
            MsgFlags::MSG_NOSIGNAL,
        )?)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl HostStream for HostSocket {
    fn shutdown_write(&self) -> io::Result<()> {
        self.0.shutdown_write()
    }
}

impl AsRawFd for HostSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll registration change for the event handler to apply.
#[derive(Debug)]
pub enum FdChange {
    /// Start watching `fd`.
    Add {
        /// The fd.
        fd: RawFd,
        /// Readiness to watch.
        events: EventSet,
    },
    /// Watch `fd` for different readiness.
    Modify {
        /// The fd.
        fd: RawFd,
        /// Readiness to watch.
        events: EventSet,
    },
    /// Stop watching `fd`, then drop `stream` (closing `fd`) if given.
    Remove {
        /// The fd.
        fd: RawFd,
        /// The stream owning `fd`, when the muxer is done with it.
        stream: Option<HostSocket>,
    },
    /// Drop a stream epoll is not watching. Queued like the rest, so a
    /// `Remove` of its fd queued earlier is applied while the fd is open.
    Close(HostSocket),
}

/// Errors setting up the host side.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// `uds_path` exists and is not a socket; it is left alone.
    #[error("{0} exists and is not a Unix socket")]
    NotASocket(PathBuf),
    /// Another process listens on `uds_path`.
    #[error("{0} is in use by another process")]
    InUse(PathBuf),
    /// Probing or removing an existing `uds_path` failed.
    #[error("cannot replace the stale socket {0}")]
    Stale(PathBuf, #[source] io::Error),
    /// Binding or configuring the listener failed.
    #[error("cannot listen on {0}")]
    Bind(PathBuf, #[source] io::Error),
}

/// Where a connection's stream stands with epoll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Registration {
    /// Not added yet.
    New,
    /// Added, watching these events.
    Watching(EventSet),
    /// Removed for good (the host closed it, or the connection is ending).
    Gone,
}

struct MuxConn {
    conn: Connection<HostSocket>,
    /// In `rxq` already.
    queued: bool,
    reg: Registration,
    /// Its local port came from the ephemeral allocator.
    ephemeral: bool,
}

/// A host stream that has not finished its `CONNECT` line.
struct Handshake {
    stream: HostSocket,
    line: Vec<u8>,
}

#[derive(Debug, Clone, Copy)]
enum FdOwner {
    Handshake,
    Conn(ConnKey),
}

/// The connection multiplexer of one device.
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    /// (dev, ino) of the socket file we bound, to unlink only our own.
    socket_id: Option<(u64, u64)>,
    conns: HashMap<ConnKey, MuxConn>,
    handshakes: HashMap<RawFd, Handshake>,
    fds: HashMap<RawFd, FdOwner>,
    ephemeral: HashSet<u32>,
    next_ephemeral: u32,
    /// Connections with something for the guest, round-robin.
    rxq: VecDeque<ConnKey>,
    /// Control packets that belong to no connection.
    control: VecDeque<PacketHeader>,
    changes: Vec<FdChange>,
    /// The listener is out of epoll because `accept` failed (fd limit):
    /// back in when a connection goes away.
    listener_paused: bool,
    buf_alloc: u32,
    metrics: Arc<VsockMetrics>,
}

impl std::fmt::Debug for Muxer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Muxer")
            .field("uds_path", &self.uds_path)
            .field("connections", &self.conns.len())
            .field("handshakes", &self.handshakes.len())
            .finish_non_exhaustive()
    }
}

/// `<uds_path>_<port>`, where guest connections to `port` go.
pub fn host_port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = OsString::from(uds_path.as_os_str());
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

/// Connects to a Unix stream socket without blocking: a listener whose
/// backlog is full fails with `WouldBlock` instead of stalling the event
/// loop. The stream is non-blocking and close-on-exec.
pub fn connect_nonblocking(path: &Path) -> io::Result<UnixStream> {
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    socket::connect(fd.as_raw_fd(), &addr)?;
    Ok(UnixStream::from(fd))
}

/// Binds `path`, replacing a stale socket file left by a dead process.
fn bind_listener(path: &Path) -> Result<UnixListener, MuxerError> {
    match fs::symlink_metadata(path) {
        Ok(meta) if !meta.file_type().is_socket() => {
            return Err(MuxerError::NotASocket(path.to_path_buf()));
        }
        Ok(_) => match connect_nonblocking(path) {
            // Somebody accepts (or would, with a full backlog): alive.
            Ok(_) => return Err(MuxerError::InUse(path.to_path_buf())),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(MuxerError::InUse(path.to_path_buf()));
            }
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => match fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(MuxerError::Stale(path.to_path_buf(), e)),
            },
            Err(e) => return Err(MuxerError::Stale(path.to_path_buf(), e)),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(MuxerError::Stale(path.to_path_buf(), e)),
    }
    let listener = UnixListener::bind(path).map_err(|e| MuxerError::Bind(path.to_path_buf(), e))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| MuxerError::Bind(path.to_path_buf(), e))?;
    Ok(listener)
}

fn event_set(interest: Interest) -> EventSet {
    let mut set = EventSet::empty();
    if interest.read {
        set |= EventSet::IN;
    }
    if interest.write {
        set |= EventSet::OUT;
    }
    set
}

impl Muxer {
    /// Listens on `uds_path` for host connections to the guest `guest_cid`.
    /// The first [`take_fd_changes`](Self::take_fd_changes) registers the
    /// listener.
    pub fn new(
        guest_cid: u64,
        uds_path: &Path,
        metrics: Arc<VsockMetrics>,
    ) -> Result<Self, MuxerError> {
        let listener = bind_listener(uds_path)?;
        let socket_id = fs::symlink_metadata(uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        let changes = vec![FdChange::Add {
            fd: listener.as_raw_fd(),
            events: EventSet::IN,
        }];
        Ok(Muxer {
            guest_cid,
            uds_path: uds_path.to_path_buf(),
            listener,
            socket_id,
            conns: HashMap::new(),
            handshakes: HashMap::new(),
            fds: HashMap::new(),
            ephemeral: HashSet::new(),
            next_ephemeral: EPHEMERAL_PORT_START,
            rxq: VecDeque::new(),
            control: VecDeque::new(),
            changes,
            listener_paused: false,
            buf_alloc: DEFAULT_BUF_ALLOC,
            metrics,
        })
    }

    /// The listening socket's path.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// The listener's fd (its events go to [`on_listener_ready`](Self::on_listener_ready)).
    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Live connections plus host streams still in the handshake.
    pub fn connection_count(&self) -> usize {
        self.conns.len() + self.handshakes.len()
    }

    /// The epoll changes to apply, in order.
    pub fn take_fd_changes(&mut self) -> Vec<FdChange> {
        std::mem::take(&mut self.changes)
    }

    /// The event handler could not add `fd` to epoll: give up on whatever
    /// it belongs to.
    pub fn register_failed(&mut self, fd: RawFd) {
        match self.fds.remove(&fd) {
            Some(FdOwner::Handshake) => {
                // Never watched: closing it is all there is to do.
                if let Some(hs) = self.handshakes.remove(&fd) {
                    self.changes.push(FdChange::Close(hs.stream));
                }
            }
            Some(FdOwner::Conn(key)) => {
                if let Some(mc) = self.conns.get_mut(&key) {
                    mc.reg = Registration::Gone;
                    mc.conn.kill(CloseReason::Aborted);
                }
                self.sync(key);
            }
            None => {}
        }
    }

    /// Accepts every pending host connection; each must then send its
    /// `CONNECT` line.
    pub fn on_listener_ready(&mut self) {
        loop {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    // EMFILE and friends: the connection stays in the
                    // backlog, and the level-triggered listener would wake
                    // us at once, forever. Stop watching it until a
                    // connection closes and frees an fd.
                    warn!(
                        "virtio-vsock: accept on {:?} failed, pausing the listener: {e}",
                        self.uds_path
                    );
                    self.listener_paused = true;
                    self.changes.push(FdChange::Modify {
                        fd: self.listener.as_raw_fd(),
                        events: EventSet::empty(),
                    });
                    return;
                }
            };
            if self.connection_count() >= MAX_CONNECTIONS {
                warn!("virtio-vsock: connection limit reached, closing a host connection");
                VsockMetrics::inc(&self.metrics.conn_limit_rejects);
                continue;
            }
            if let Err(e) = stream.set_nonblocking(true) {
                warn!("virtio-vsock: cannot make a host connection non-blocking: {e}");
                continue;
            }
            let fd = stream.as_raw_fd();
            self.fds.insert(fd, FdOwner::Handshake);
            self.handshakes.insert(
                fd,
                Handshake {
                    stream: HostSocket::new(stream),
                    line: Vec::with_capacity(MAX_CONNECT_LINE),
                },
            );
            self.changes.push(FdChange::Add {
                fd,
                events: EventSet::IN,
            });
        }
    }

    /// Readiness of a host stream. Returns false if the muxer does not know
    /// `fd` (the caller should then stop watching it).
    pub fn on_fd_event(&mut self, fd: RawFd, events: EventSet) -> bool {
        match self.fds.get(&fd).copied() {
            None => false,
            Some(FdOwner::Handshake) => {
                self.continue_handshake(fd);
                true
            }
            Some(FdOwner::Conn(key)) => {
                if let Some(mc) = self.conns.get_mut(&key) {
                    mc.conn.notify(
                        events.contains(EventSet::IN),
                        events.contains(EventSet::OUT),
                        events.intersects(EventSet::HANG_UP | EventSet::ERROR),
                    );
                }
                self.sync(key);
                true
            }
        }
    }

    /// Reads the `CONNECT` line one byte at a time: anything after the
    /// newline is connection data and must stay in the socket.
    fn continue_handshake(&mut self, fd: RawFd) {
        let Some(hs) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let outcome = loop {
            let mut byte = [0u8; 1];
            match hs.stream.read(&mut byte) {
                Ok(0) => break Err(ConnectLineError::Unterminated),
                Ok(_) => {
                    hs.line.push(byte[0]);
                    if byte[0] == b'\n' {
                        break parse_connect_line(&hs.line);
                    }
                    if hs.line.len() >= MAX_CONNECT_LINE {
                        break Err(ConnectLineError::TooLong);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) => {
                    debug!("virtio-vsock: host handshake read failed: {e}");
                    break Err(ConnectLineError::Unterminated);
                }
            }
        };
        let Some(hs) = self.handshakes.remove(&fd) else {
            return;
        };
        match outcome {
            Ok(port) => self.start_host_connection(fd, hs.stream, port),
            Err(e) => {
                warn!(
                    "virtio-vsock: closing host connection: {e} ({:?})",
                    String::from_utf8_lossy(&hs.line)
                );
                VsockMetrics::inc(&self.metrics.handshake_errors);
                self.resume_listener();
                self.fds.remove(&fd);
                self.changes.push(FdChange::Remove {
                    fd,
                    stream: Some(hs.stream),
                });
            }
        }
    }

    fn alloc_ephemeral(&mut self, peer_port: u32) -> Option<u32> {
        // At most MAX_CONNECTIONS ports are taken, so this finds one long
        // before giving up.
        for _ in 0..=2 * MAX_CONNECTIONS {
            let port = self.next_ephemeral;
            self.next_ephemeral = port.checked_add(1).unwrap_or(EPHEMERAL_PORT_START);
            let key = ConnKey {
                local_port: port,
                peer_port,
            };
            if !self.ephemeral.contains(&port) && !self.conns.contains_key(&key) {
                return Some(port);
            }
        }
        None
    }

    /// The host asked for guest port `port`: queue a `REQUEST`.
    fn start_host_connection(&mut self, fd: RawFd, stream: HostSocket, port: u32) {
        let Some(local_port) = self.alloc_ephemeral(port) else {
            warn!("virtio-vsock: no free local port, closing host connection");
            self.fds.remove(&fd);
            self.changes.push(FdChange::Remove {
                fd,
                stream: Some(stream),
            });
            return;
        };
        let key = ConnKey {
            local_port,
            peer_port: port,
        };
        debug!("virtio-vsock: host connects to guest port {port} from local port {local_port}");
        VsockMetrics::inc(&self.metrics.conns_host_initiated);
        self.ephemeral.insert(local_port);
        self.fds.insert(fd, FdOwner::Conn(key));
        let conn =
            Connection::new_local_init(stream, self.guest_cid, local_port, port, self.buf_alloc);
        self.conns.insert(
            key,
            MuxConn {
                conn,
                queued: false,
                // Still registered from the handshake.
                reg: Registration::Watching(EventSet::IN),
                ephemeral: true,
            },
        );
        self.sync(key);
    }

    /// The guest's `REQUEST` for a connection the muxer does not have.
    fn start_guest_connection(&mut self, hdr: &PacketHeader) {
        if self.connection_count() >= MAX_CONNECTIONS {
            warn!("virtio-vsock: connection limit reached, refusing a guest connection");
            VsockMetrics::inc(&self.metrics.conn_limit_rejects);
            self.queue_control(hdr.reset_reply());
            return;
        }
        let path = host_port_path(&self.uds_path, hdr.dst_port);
        let stream = match connect_nonblocking(&path) {
            Ok(stream) => stream,
            Err(e) => {
                debug!("virtio-vsock: guest connection to {path:?} refused: {e}");
                VsockMetrics::inc(&self.metrics.host_connect_failures);
                self.queue_control(hdr.reset_reply());
                return;
            }
        };
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        VsockMetrics::inc(&self.metrics.conns_guest_initiated);
        let conn = Connection::new_peer_init(HostSocket::new(stream), hdr, self.buf_alloc);
        self.conns.insert(
            key,
            MuxConn {
                conn,
                queued: false,
                reg: Registration::New,
                ephemeral: false,
            },
        );
        self.sync(key);
    }

    /// Routes a validated guest packet.
    pub fn send_pkt(&mut self, hdr: &PacketHeader, op: Op, payload: &[u8]) {
        let key = ConnKey {
            local_port: hdr.dst_port,
            peer_port: hdr.src_port,
        };
        if let Some(mc) = self.conns.get_mut(&key) {
            if op == Op::Request {
                // A second request for a live connection: the guest lost
                // track of it. Reset ours; the guest may retry.
                warn!("virtio-vsock: duplicate request for {key:?}, resetting it");
                mc.conn.kill(CloseReason::Aborted);
            } else {
                mc.conn.send_pkt(hdr, op, payload);
            }
            self.sync(key);
            return;
        }
        match op {
            Op::Request => self.start_guest_connection(hdr),
            // Nothing to reset.
            Op::Rst => {}
            _ => {
                debug!("virtio-vsock: {op:?} for unknown connection {key:?}");
                self.queue_control(hdr.reset_reply());
            }
        }
    }

    /// Queues a control packet that belongs to no connection (a reset for a
    /// malformed or stray packet). The caller checks
    /// [`control_full`](Self::control_full) first; past the bound the packet
    /// is dropped.
    pub fn queue_control(&mut self, hdr: PacketHeader) {
        if self.control.len() >= MAX_PENDING_CONTROL {
            warn!(
                "virtio-vsock: control queue full, dropping a {:?}",
                hdr.op()
            );
            return;
        }
        self.control.push_back(hdr);
    }

    /// Whether the control queue is full (stop taking guest packets).
    pub fn control_full(&self) -> bool {
        self.control.len() >= MAX_PENDING_CONTROL
    }

    /// Whether [`recv_pkt`](Self::recv_pkt) may have a packet.
    pub fn has_rx(&self) -> bool {
        !self.control.is_empty() || !self.rxq.is_empty()
    }

    /// The next packet for the guest; an `OP_RW` payload is in
    /// `buf[..hdr.len]`, never longer than `buf`.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if let Some(hdr) = self.control.pop_front() {
            return Some(hdr);
        }
        while let Some(key) = self.rxq.pop_front() {
            let Some(mc) = self.conns.get_mut(&key) else {
                continue;
            };
            mc.queued = false;
            let pkt = mc.conn.recv_pkt(buf);
            self.sync(key);
            if pkt.is_some() {
                return pkt;
            }
        }
        None
    }

    /// Brings a connection's epoll registration and rx queueing in line
    /// with its state, and removes it once closed.
    fn sync(&mut self, key: ConnKey) {
        let Some(mc) = self.conns.get_mut(&key) else {
            return;
        };
        if mc.conn.is_closed() {
            self.remove_conn(key);
            return;
        }
        let fd = mc.conn.stream().as_raw_fd();
        let want = mc.conn.interest().map(event_set);
        match (mc.reg, want) {
            (Registration::New, Some(events)) => {
                self.fds.insert(fd, FdOwner::Conn(key));
                self.changes.push(FdChange::Add { fd, events });
                mc.reg = Registration::Watching(events);
            }
            (Registration::New, None) => mc.reg = Registration::Gone,
            (Registration::Watching(current), Some(events)) if current != events => {
                self.changes.push(FdChange::Modify { fd, events });
                mc.reg = Registration::Watching(events);
            }
            (Registration::Watching(_), None) => {
                self.fds.remove(&fd);
                self.changes.push(FdChange::Remove { fd, stream: None });
                mc.reg = Registration::Gone;
            }
            _ => {}
        }
        if !mc.queued && mc.conn.has_rx() {
            mc.queued = true;
            self.rxq.push_back(key);
        }
    }

    /// Watches the listener again after a pause (an fd was freed).
    fn resume_listener(&mut self) {
        if self.listener_paused {
            self.listener_paused = false;
            self.changes.push(FdChange::Modify {
                fd: self.listener.as_raw_fd(),
                events: EventSet::IN,
            });
        }
    }

    fn remove_conn(&mut self, key: ConnKey) {
        let Some(mc) = self.conns.remove(&key) else {
            return;
        };
        self.resume_listener();
        VsockMetrics::inc(&self.metrics.conns_closed);
        match mc.conn.close_reason() {
            Some(CloseReason::CreditViolation) => {
                VsockMetrics::inc(&self.metrics.credit_violations)
            }
            Some(CloseReason::HostIo) => VsockMetrics::inc(&self.metrics.host_io_errors),
            _ => {}
        }
        debug!(
            "virtio-vsock: connection {key:?} closed: {:?}",
            mc.conn.close_reason()
        );
        if mc.ephemeral {
            self.ephemeral.remove(&key.local_port);
        }
        let fd = mc.conn.stream().as_raw_fd();
        let stream = mc.conn.into_stream();
        if let Registration::Watching(_) = mc.reg {
            self.fds.remove(&fd);
            self.changes.push(FdChange::Remove {
                fd,
                stream: Some(stream),
            });
        } else {
            // Its deregistration may still be queued: close it after that.
            self.changes.push(FdChange::Close(stream));
        }
    }

    /// Drops every connection and handshake (device reset). The host sees
    /// its streams closed once the removals are applied; the guest, being
    /// reset, forgets its side anyway. The listener stays.
    pub fn reset(&mut self) {
        for (_, mc) in self.conns.drain() {
            let fd = mc.conn.stream().as_raw_fd();
            let stream = mc.conn.into_stream();
            if let Registration::Watching(_) = mc.reg {
                self.changes.push(FdChange::Remove {
                    fd,
                    stream: Some(stream),
                });
            } else {
                self.changes.push(FdChange::Close(stream));
            }
        }
        for (fd, hs) in self.handshakes.drain() {
            self.changes.push(FdChange::Remove {
                fd,
                stream: Some(hs.stream),
            });
        }
        self.resume_listener();
        self.fds.clear();
        self.ephemeral.clear();
        self.rxq.clear();
        self.control.clear();
        // The guest keeps its sockets until its driver has reset them (and
        // a restored guest has the template's): new host connections start
        // at another port, so none takes an old one's address pair.
        self.next_ephemeral =
            EPHEMERAL_PORT_START + 1 + (vmm_sys_util::rand::xor_pseudo_rng_u32() & 0xf_ffff);
    }
}

impl Drop for Muxer {
    fn drop(&mut self) {
        // Unlink the socket file, but only if it is still the one we bound
        // (not a successor's).
        let ours = fs::symlink_metadata(&self.uds_path)
            .ok()
            .map(|m| (m.dev(), m.ino()));
        if ours.is_some() && ours == self.socket_id {
            let _ = fs::remove_file(&self.uds_path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines() {
        assert_eq!(parse_connect_line(b"CONNECT 52\n"), Ok(52));
        assert_eq!(parse_connect_line(b"CONNECT 0\n"), Ok(0));
        assert_eq!(parse_connect_line(b"CONNECT 4294967295\n"), Ok(u32::MAX));
        assert_eq!(parse_connect_line(b"CONNECT  1234 \r\n"), Ok(1234));
        assert_eq!(
            parse_connect_line(b"CONNECT 4294967296\n"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 99999999999\n"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT -1\n"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT +1\n"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT \n"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 12 34\n"),
            Err(ConnectLineError::BadPort)
        );
        assert_eq!(
            parse_connect_line(b"connect 52\n"),
            Err(ConnectLineError::NotConnect)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT52\n"),
            Err(ConnectLineError::NotConnect)
        );
        assert_eq!(
            parse_connect_line(b"CONNECT 52"),
            Err(ConnectLineError::Unterminated)
        );
        assert_eq!(parse_connect_line(b""), Err(ConnectLineError::Unterminated));
        let long = format!("CONNECT {}52\n", " ".repeat(30));
        assert_eq!(
            parse_connect_line(long.as_bytes()),
            Err(ConnectLineError::TooLong)
        );
        // Not UTF-8: just not a CONNECT line.
        assert_eq!(
            parse_connect_line(b"CONNECT \xff\n"),
            Err(ConnectLineError::BadPort)
        );
    }

    #[test]
    fn host_port_paths_append_the_port() {
        assert_eq!(
            host_port_path(Path::new("/run/v.sock"), 52),
            PathBuf::from("/run/v.sock_52")
        );
    }
}
