//! One vsock stream connection: the state machine between a guest socket
//! (spoken to in packets) and a host stream (a Unix socket).
//!
//! Pure over its stream: a [`Connection`] never touches epoll or guest
//! memory. The muxer feeds it the guest's packets ([`Connection::send_pkt`])
//! and the host stream's readiness ([`Connection::notify`]), asks it for the
//! next packet to the guest ([`Connection::recv_pkt`]), and learns from
//! [`Connection::interest`] and [`Connection::has_rx`] which readiness and
//! which rx buffers it waits for. Tests drive it over socketpairs.
//!
//! # Credit (virtio 1.2, 5.10.6.3)
//! Each side advertises `buf_alloc` (its receive buffer) and `fwd_cnt` (bytes
//! it has consumed from it) in every header; a sender may have at most
//! `peer.buf_alloc - (tx_cnt - peer.fwd_cnt)` bytes in flight.
//!
//! - Toward the guest, the connection reads the host stream only while the
//!   guest has free credit, never more than that credit, and only into an rx
//!   buffer the muxer hands it; when credit runs out it sends one
//!   `CREDIT_REQUEST` and stops polling the stream for reads.
//! - From the guest, data goes straight to the host stream; what the stream
//!   does not take waits in a buffer bounded by our own `buf_alloc`, and
//!   `fwd_cnt` only advances as bytes reach the stream. A host that stops
//!   reading therefore stops the guest (no credit comes back) without the
//!   device dropping or buffering beyond `buf_alloc`. A guest that sends past
//!   its credit is reset.
//!
//! # Lifetime
//! `LocalInit` (host-initiated, `REQUEST` queued or sent) or `Established`
//! (guest-initiated, `RESPONSE` queued) → `Established` → `Closing` (a `RST`
//! is due) → `Closed` (the muxer drops the connection and its stream).

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;

use super::packet::{
    Op, PacketHeader, HOST_CID, MAX_PAYLOAD, SHUTDOWN_BOTH, SHUTDOWN_RCV, SHUTDOWN_SEND,
};

/// Receive buffer the device advertises per connection (`buf_alloc`): the
/// most guest data it holds for a host stream that does not read. Linux
/// uses the same default.
pub const DEFAULT_BUF_ALLOC: u32 = 256 * 1024;

/// A tx buffer this large is released when it empties, so hundreds of
/// mostly-idle connections do not each pin their high-water mark.
const TX_BUF_KEEP: usize = 64 * 1024;

/// The host side of a connection: a byte stream that can be half-closed.
pub trait HostStream: Read + Write {
    /// Shuts down the writing half (the host reads EOF).
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HostStream for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(Shutdown::Write)
    }
}

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Host-initiated: `REQUEST` queued or sent to the guest, waiting for
    /// its `RESPONSE` (or `RST`).
    LocalInit,
    /// Data flows (possibly half-closed). A guest-initiated connection
    /// starts here with its `RESPONSE` queued.
    Established,
    /// A `RST` to the guest is due; the connection is closed once it went.
    Closing,
    /// Finished: the muxer removes it (closing the host stream).
    Closed,
}

/// Why a connection ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The guest reset it (refused a host connection, or aborted).
    GuestReset,
    /// The guest shut down both directions; the device answered `RST`.
    GuestShutdown,
    /// The host stream went away before the connection was established.
    HostClosed,
    /// Reading or writing the host stream failed (e.g. it was closed while
    /// the guest still sent data).
    HostIo,
    /// The guest sent more than its credit allowed.
    CreditViolation,
    /// The guest sent a packet that makes no sense in the current state.
    Protocol,
    /// The device dropped it (reset, or a duplicate connection request).
    Aborted,
}

/// The epoll interest a connection wants on its host stream.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Interest {
    /// Wake up when the stream is readable.
    pub read: bool,
    /// Wake up when the stream is writable.
    pub write: bool,
}

/// One connection; `S` is the host stream.
#[derive(Debug)]
pub struct Connection<S> {
    stream: S,
    state: ConnState,
    close_reason: Option<CloseReason>,
    peer_cid: u64,
    local_port: u32,
    peer_port: u32,

    // Control packets owed to the guest.
    request_pending: bool,
    response_pending: bool,
    credit_request_pending: bool,
    credit_update_forced: bool,
    /// Shutdown flags the guest must learn about / has been told.
    shutdown_due: u32,
    shutdown_sent: u32,

    // The host stream.
    /// The stream may have bytes (or EOF) for us.
    host_readable: bool,
    /// The host shut its writing half (we read EOF).
    host_eof: bool,
    /// The host closed its socket (HUP/ERR): deregistered, drained without
    /// waiting for readiness.
    host_gone: bool,
    /// We shut the stream's writing half (after the guest's SHUTDOWN_SEND).
    write_shut: bool,

    // Guest to host.
    /// Shutdown flags the guest sent.
    peer_shutdown: u32,
    /// Bytes not yet accepted by the host stream: first `tx_ctl` bytes of
    /// control text (`OK <port>\n`), then guest data.
    tx_buf: VecDeque<u8>,
    tx_ctl: usize,
    buf_alloc: u32,
    /// Guest bytes received / written to the host stream (wrapping).
    rx_cnt: u32,
    fwd_cnt: u32,
    /// The `fwd_cnt` the guest last saw from us.
    last_fwd_cnt_sent: u32,

    // Host to guest.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent to the guest (wrapping).
    tx_cnt: u32,
}

impl<S: HostStream> Connection<S> {
    fn new(stream: S, peer_cid: u64, local_port: u32, peer_port: u32, buf_alloc: u32) -> Self {
        Connection {
            stream,
            state: ConnState::LocalInit,
            close_reason: None,
            peer_cid,
            local_port,
            peer_port,
            request_pending: false,
            response_pending: false,
            credit_request_pending: false,
            credit_update_forced: false,
            shutdown_due: 0,
            shutdown_sent: 0,
            host_readable: false,
            host_eof: false,
            host_gone: false,
            write_shut: false,
            peer_shutdown: 0,
            tx_buf: VecDeque::new(),
            tx_ctl: 0,
            buf_alloc,
            rx_cnt: 0,
            fwd_cnt: 0,
            last_fwd_cnt_sent: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
        }
    }

    /// A host-initiated connection to guest port `peer_port`, from our
    /// `local_port`: a `REQUEST` is due.
    pub fn new_local_init(
        stream: S,
        peer_cid: u64,
        local_port: u32,
        peer_port: u32,
        buf_alloc: u32,
    ) -> Self {
        let mut conn = Connection::new(stream, peer_cid, local_port, peer_port, buf_alloc);
        conn.request_pending = true;
        conn
    }

    /// A guest-initiated connection whose host side is already connected:
    /// `request` is the guest's `REQUEST`; a `RESPONSE` is due.
    pub fn new_peer_init(stream: S, request: &PacketHeader, buf_alloc: u32) -> Self {
        let mut conn = Connection::new(
            stream,
            request.src_cid,
            request.dst_port,
            request.src_port,
            buf_alloc,
        );
        conn.state = ConnState::Established;
        conn.response_pending = true;
        conn.peer_buf_alloc = request.buf_alloc;
        conn.peer_fwd_cnt = request.fwd_cnt;
        conn
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// Why the connection is closing or closed.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
    }

    /// The device-side port.
    pub fn local_port(&self) -> u32 {
        self.local_port
    }

    /// The guest-side port.
    pub fn peer_port(&self) -> u32 {
        self.peer_port
    }

    /// The host stream.
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Consumes the connection, returning its host stream.
    pub fn into_stream(self) -> S {
        self.stream
    }

    /// Whether the muxer should drop the connection.
    pub fn is_closed(&self) -> bool {
        self.state == ConnState::Closed
    }

    /// Bytes the guest can take right now.
    pub fn peer_credit(&self) -> u32 {
        let in_flight = self.tx_cnt.wrapping_sub(self.peer_fwd_cnt);
        // A guest claiming to have consumed more than we sent (in_flight
        // wrapped) gets no credit rather than a lot of it.
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// Guest bytes waiting for the host stream to take them.
    pub fn pending_to_host(&self) -> usize {
        self.tx_buf.len() - self.tx_ctl
    }

    /// Our `fwd_cnt`: guest bytes written to the host stream.
    pub fn fwd_cnt(&self) -> u32 {
        self.fwd_cnt
    }

    /// Ends the connection: a `RST` goes to the guest, unless the guest never
    /// heard of it (a `REQUEST` still queued), in which case it is closed at
    /// once.
    pub fn kill(&mut self, reason: CloseReason) {
        match self.state {
            ConnState::Closing | ConnState::Closed => {}
            ConnState::LocalInit if self.request_pending => self.close(reason),
            _ => {
                self.state = ConnState::Closing;
                self.close_reason.get_or_insert(reason);
            }
        }
    }

    fn close(&mut self, reason: CloseReason) {
        self.state = ConnState::Closed;
        self.close_reason.get_or_insert(reason);
    }

    /// Handles a packet from the guest for this connection. `hdr` has passed
    /// [`parse_tx_packet`](super::packet::parse_tx_packet); `payload` is its
    /// data.
    pub fn send_pkt(&mut self, hdr: &PacketHeader, op: Op, payload: &[u8]) {
        match self.state {
            ConnState::Closing | ConnState::Closed => {
                // The RST we owe (or sent) settles it; a RST from the guest
                // means it need not go out any more.
                if op == Op::Rst {
                    self.state = ConnState::Closed;
                }
                return;
            }
            ConnState::LocalInit | ConnState::Established => {}
        }
        // Every header carries the sender's current credit.
        self.peer_buf_alloc = hdr.buf_alloc;
        self.peer_fwd_cnt = hdr.fwd_cnt;

        match (self.state, op) {
            (_, Op::Rst) => self.close(CloseReason::GuestReset),
            (ConnState::LocalInit, Op::Response) if !self.request_pending => {
                self.state = ConnState::Established;
                let line = format!("OK {}\n", self.local_port);
                self.tx_ctl = line.len();
                self.tx_buf.extend(line.as_bytes());
                self.flush_tx();
            }
            (ConnState::Established, Op::Rw) => self.on_rw(payload),
            (ConnState::Established, Op::CreditUpdate) => {}
            (ConnState::Established, Op::CreditRequest) => self.credit_update_forced = true,
            (ConnState::Established, Op::Shutdown) => {
                self.peer_shutdown |= hdr.flags & SHUTDOWN_BOTH;
                self.after_tx_progress();
            }
            _ => self.kill(CloseReason::Protocol),
        }
    }

    fn on_rw(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 {
            // Data after the guest said it sends no more.
            self.kill(CloseReason::Protocol);
            return;
        }
        if self.pending_to_host() + payload.len() > self.buf_alloc as usize {
            self.kill(CloseReason::CreditViolation);
            return;
        }
        // payload.len() <= MAX_PAYLOAD, far below u32::MAX.
        self.rx_cnt = self.rx_cnt.wrapping_add(payload.len() as u32);
        let mut written = 0;
        if self.tx_buf.is_empty() {
            match write_nonblocking(&mut self.stream, payload) {
                Ok(n) => written = n,
                Err(_) => {
                    self.kill(CloseReason::HostIo);
                    return;
                }
            }
            self.fwd_cnt = self.fwd_cnt.wrapping_add(written as u32);
        }
        self.tx_buf.extend(&payload[written..]);
    }

    /// Writes buffered bytes to the host stream until it would block.
    fn flush_tx(&mut self) {
        while !self.tx_buf.is_empty() {
            let (front, _) = self.tx_buf.as_slices();
            let n = match write_nonblocking(&mut self.stream, front) {
                Ok(0) => break,
                Ok(n) => n,
                Err(_) => {
                    self.kill(CloseReason::HostIo);
                    return;
                }
            };
            let ctl = n.min(self.tx_ctl);
            self.tx_ctl -= ctl;
            // n <= front.len() <= buf_alloc + a short control line.
            self.fwd_cnt = self.fwd_cnt.wrapping_add((n - ctl) as u32);
            self.tx_buf.drain(..n);
        }
        if self.tx_buf.is_empty() && self.tx_buf.capacity() > TX_BUF_KEEP {
            self.tx_buf = VecDeque::new();
        }
        self.after_tx_progress();
    }

    /// Acts on the guest's shutdown once everything it sent reached the host.
    fn after_tx_progress(&mut self) {
        if self.state != ConnState::Established || !self.tx_buf.is_empty() {
            return;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 && !self.write_shut {
            self.write_shut = true;
            // A host that already closed makes this fail; nothing to undo.
            let _ = self.stream.shutdown_write();
        }
        if self.peer_shutdown == SHUTDOWN_BOTH {
            // The guest closed its socket and waits for our RST.
            self.kill(CloseReason::GuestShutdown);
        }
    }

    /// Readiness of the host stream, as epoll reported it. `hangup` is
    /// EPOLLHUP or EPOLLERR: the host closed its socket (or it broke).
    pub fn notify(&mut self, readable: bool, writable: bool, hangup: bool) {
        match self.state {
            ConnState::Closing | ConnState::Closed => return,
            ConnState::LocalInit => {
                if hangup {
                    // The host gave up before the guest answered.
                    self.kill(CloseReason::HostClosed);
                }
                return;
            }
            ConnState::Established => {}
        }
        if hangup {
            self.host_gone = true;
            // Whatever the host wrote before closing is still readable,
            // then EOF; from now on reads are never blocked.
            self.host_readable = true;
            if self.host_eof {
                self.shutdown_due |= SHUTDOWN_RCV;
            }
        }
        if readable {
            self.host_readable = true;
        }
        if (writable || hangup) && !self.tx_buf.is_empty() {
            self.flush_tx();
        }
    }

    /// The readiness the connection waits for on its host stream; `None`
    /// when the stream should not be in epoll at all (the host closed it, or
    /// the connection is ending), so that a level-triggered HUP cannot wake
    /// the event loop again and again.
    pub fn interest(&self) -> Option<Interest> {
        match self.state {
            ConnState::Closing | ConnState::Closed => None,
            _ if self.host_gone => None,
            // Registered with no interest: only a HUP (the host giving up)
            // can wake us.
            ConnState::LocalInit => Some(Interest::default()),
            ConnState::Established => Some(Interest {
                read: !self.host_readable && self.may_read_host(),
                write: !self.tx_buf.is_empty(),
            }),
        }
    }

    /// Whether reading the host stream could produce something for the
    /// guest now (regardless of readiness).
    fn may_read_host(&self) -> bool {
        self.state == ConnState::Established
            && !self.host_eof
            && self.peer_shutdown & SHUTDOWN_RCV == 0
            && self.peer_credit() > 0
    }

    fn data_ready(&self) -> bool {
        self.host_readable && self.may_read_host()
    }

    fn needs_credit_update(&self) -> bool {
        if self.credit_update_forced {
            return true;
        }
        if self.peer_shutdown & SHUTDOWN_SEND != 0 || self.fwd_cnt == self.last_fwd_cnt_sent {
            return false;
        }
        // How much room the guest believes we have: it knows of rx_cnt
        // bytes sent and last_fwd_cnt_sent of them consumed.
        let believed_used = self.rx_cnt.wrapping_sub(self.last_fwd_cnt_sent);
        let believed_free = self.buf_alloc.saturating_sub(believed_used);
        let threshold = (self.buf_alloc / 2).min(MAX_PAYLOAD as u32);
        believed_free < threshold
    }

    /// Whether [`recv_pkt`](Self::recv_pkt) has something for the guest.
    pub fn has_rx(&self) -> bool {
        match self.state {
            ConnState::Closing => true,
            ConnState::Closed => false,
            ConnState::LocalInit => self.request_pending,
            ConnState::Established => {
                self.response_pending
                    || self.credit_request_pending
                    || self.data_ready()
                    || self.shutdown_due & !self.shutdown_sent != 0
                    || self.needs_credit_update()
            }
        }
    }

    fn header(&self, op: Op) -> PacketHeader {
        PacketHeader::stream(
            op,
            (HOST_CID, self.local_port),
            (self.peer_cid, self.peer_port),
        )
    }

    /// The next packet for the guest, if any. An `OP_RW` packet's payload
    /// is in `buf[..hdr.len]`; at most `buf.len()` bytes and never more than
    /// the guest's credit are read from the host stream.
    pub fn recv_pkt(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        let mut hdr = match self.state {
            ConnState::Closed => return None,
            ConnState::Closing => {
                self.state = ConnState::Closed;
                self.header(Op::Rst)
            }
            ConnState::LocalInit => {
                if !self.request_pending {
                    return None;
                }
                self.request_pending = false;
                self.header(Op::Request)
            }
            ConnState::Established => self.next_established(buf)?,
        };
        hdr.buf_alloc = self.buf_alloc;
        hdr.fwd_cnt = self.fwd_cnt;
        self.last_fwd_cnt_sent = self.fwd_cnt;
        Some(hdr)
    }

    fn next_established(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if self.response_pending {
            self.response_pending = false;
            return Some(self.header(Op::Response));
        }
        if self.credit_request_pending {
            self.credit_request_pending = false;
            return Some(self.header(Op::CreditRequest));
        }
        if let Some(hdr) = self.read_host(buf) {
            return Some(hdr);
        }
        if self.state == ConnState::Closing {
            // Reading the host failed.
            self.state = ConnState::Closed;
            return Some(self.header(Op::Rst));
        }
        let new_flags = self.shutdown_due & !self.shutdown_sent;
        if new_flags != 0 {
            self.shutdown_sent |= new_flags;
            let mut hdr = self.header(Op::Shutdown);
            hdr.flags = self.shutdown_sent;
            return Some(hdr);
        }
        if self.needs_credit_update() {
            self.credit_update_forced = false;
            return Some(self.header(Op::CreditUpdate));
        }
        None
    }

    /// Reads host bytes into `buf` as an `OP_RW` packet.
    fn read_host(&mut self, buf: &mut [u8]) -> Option<PacketHeader> {
        if !self.data_ready() {
            return None;
        }
        let max = buf.len().min(self.peer_credit() as usize);
        if max == 0 {
            return None;
        }
        loop {
            match self.stream.read(&mut buf[..max]) {
                Ok(0) => {
                    self.host_eof = true;
                    self.host_readable = false;
                    self.shutdown_due |= SHUTDOWN_SEND;
                    if self.host_gone {
                        self.shutdown_due |= SHUTDOWN_RCV;
                    }
                    return None;
                }
                Ok(n) => {
                    // A short read probably emptied the socket: wait for
                    // epoll again (unless the host is gone and epoll with
                    // it; then the next read returns data or EOF at once).
                    if n < max && !self.host_gone {
                        self.host_readable = false;
                    }
                    // n <= max <= peer credit (a u32).
                    self.tx_cnt = self.tx_cnt.wrapping_add(n as u32);
                    if self.peer_credit() == 0 {
                        self.credit_request_pending = true;
                    }
                    let mut hdr = self.header(Op::Rw);
                    hdr.len = n as u32;
                    return Some(hdr);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.host_readable = false;
                    return None;
                }
                Err(_) => {
                    self.kill(CloseReason::HostIo);
                    return None;
                }
            }
        }
    }
}

/// Writes as much of `data` as `stream` takes without blocking.
fn write_nonblocking<W: Write>(stream: &mut W, data: &[u8]) -> io::Result<usize> {
    let mut done = 0;
    while done < data.len() {
        match stream.write(&data[done..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}
