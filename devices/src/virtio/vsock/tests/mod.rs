//! virtio-vsock tests. No KVM, no root: the harness plays the guest's vsock
//! driver on three split virtqueues in plain guest memory, the device runs
//! under a real `EventManager`, and the host side is real Unix sockets in a
//! temporary directory.
//!
//! - `connection`: the state machine and credit over socketpairs;
//! - `host_to_guest`: `CONNECT <port>` connections, data, credit;
//! - `guest_to_host`: guest connections to `<uds_path>_<P>`;
//! - `lifecycle`: half-close, resets, many connections, backpressure;
//! - `malformed`: bad packets, bad rx buffers, bad `CONNECT` lines;
//! - `device`: features, config space, activation, reset, socket setup.

mod connection;
mod device;
mod guest_to_host;
mod host_to_guest;
mod lifecycle;
mod malformed;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::virtio::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use vm_memory::{Address, GuestAddress};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::tempdir::TempDir;

use super::metrics::VsockMetrics;
use super::packet::{
    parse_header, Op, PacketHeader, HEADER_SIZE, HOST_CID, SHUTDOWN_BOTH, SHUTDOWN_RCV,
    SHUTDOWN_SEND, TYPE_STREAM,
};
use super::{Vsock, VsockConfig, RX_QUEUE, TX_QUEUE};
use crate::virtio::test_utils::{guest_memory, Buf, VirtQueueDriver};
use crate::virtio::{IrqTrigger, VirtioDevice};

const GUEST_CID: u64 = 3;
/// Queue size the test driver picks (the device allows 256).
const TEST_QUEUE_SIZE: u16 = 128;
/// Payload room of an rx buffer: a page, like Linux's.
const RX_PAYLOAD: usize = 4096;
/// rx buffers the driver keeps posted.
const RX_BUFFERS: usize = 64;
/// Largest payload the test driver sends in one tx packet.
const TX_CHUNK: usize = 4096;
/// tx buffers (header + chunk), reused round-robin.
const TX_BUFFERS: usize = 32;
/// The guest's receive buffer (`buf_alloc`) in most tests: small, so
/// transfers run out of credit quickly.
const GUEST_BUF_ALLOC: u32 = 16 * 1024;
/// How long to wait for something that should happen.
const PATIENCE: Duration = Duration::from_secs(10);

type Manager = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// Deterministic test data.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 9) as u8)
        .collect()
}

/// A packet the guest received.
#[derive(Debug, Clone)]
struct Rx {
    hdr: PacketHeader,
    payload: Vec<u8>,
}

impl Rx {
    fn op(&self) -> Option<Op> {
        self.hdr.op()
    }
}

/// The guest's view of one connection, as its driver would track it.
#[derive(Debug, Clone)]
struct GuestConn {
    /// Guest-side port.
    port: u32,
    /// Host-side port.
    host_port: u32,
    /// Our receive buffer and how much of it the "application" consumed.
    buf_alloc: u32,
    fwd_cnt: u32,
    /// The fwd_cnt the device last saw from us.
    fwd_cnt_sent: u32,
    /// Payload bytes received.
    rx_cnt: u32,
    /// The device's credit.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Payload bytes sent.
    tx_cnt: u32,
    received: Vec<u8>,
    /// Shutdown flags the device sent.
    peer_shutdown: u32,
    reset: bool,
    credit_requests: usize,
    credit_updates: usize,
}

impl GuestConn {
    fn new(port: u32, host_port: u32) -> Self {
        GuestConn {
            port,
            host_port,
            buf_alloc: GUEST_BUF_ALLOC,
            fwd_cnt: 0,
            fwd_cnt_sent: 0,
            rx_cnt: 0,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            received: Vec::new(),
            peer_shutdown: 0,
            reset: false,
            credit_requests: 0,
            credit_updates: 0,
        }
    }

    /// A header from this connection's guest end.
    fn hdr(&mut self, op: Op) -> PacketHeader {
        self.fwd_cnt_sent = self.fwd_cnt;
        PacketHeader {
            buf_alloc: self.buf_alloc,
            fwd_cnt: self.fwd_cnt,
            ..PacketHeader::stream(op, (GUEST_CID, self.port), (HOST_CID, self.host_port))
        }
    }

    /// Whether a device packet belongs to this connection.
    fn owns(&self, rx: &Rx) -> bool {
        rx.hdr.src_port == self.host_port && rx.hdr.dst_port == self.port
    }

    /// Bytes the device may still send us (as the device should see it).
    fn free_for_device(&self) -> u32 {
        self.buf_alloc - self.rx_cnt.wrapping_sub(self.fwd_cnt_sent)
    }

    /// Credit the device gives us.
    fn credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Takes in a device packet for this connection; checks the device
    /// respected our credit.
    fn absorb(&mut self, rx: &Rx) {
        assert_eq!(rx.hdr.src_cid, HOST_CID);
        assert_eq!(rx.hdr.dst_cid, GUEST_CID);
        assert_eq!(rx.hdr.type_, TYPE_STREAM);
        self.peer_buf_alloc = rx.hdr.buf_alloc;
        self.peer_fwd_cnt = rx.hdr.fwd_cnt;
        match rx.op() {
            Some(Op::Rw) => {
                assert_eq!(rx.payload.len(), rx.hdr.len as usize);
                assert!(
                    rx.payload.len() as u32 <= self.free_for_device(),
                    "device sent {} bytes with only {} credit",
                    rx.payload.len(),
                    self.free_for_device()
                );
                self.rx_cnt = self.rx_cnt.wrapping_add(rx.hdr.len);
                self.received.extend_from_slice(&rx.payload);
            }
            Some(Op::Shutdown) => self.peer_shutdown |= rx.hdr.flags,
            Some(Op::Rst) => self.reset = true,
            Some(Op::CreditRequest) => self.credit_requests += 1,
            Some(Op::CreditUpdate) => self.credit_updates += 1,
            _ => {}
        }
    }
}

/// The driver side of a vsock device plus the event loop running it.
struct Harness {
    /// Keeps the socket directory alive.
    _dir: TempDir,
    uds: PathBuf,
    dev: Arc<Mutex<Vsock>>,
    manager: Manager,
    mem: GuestMemoryMmap,
    rx: VirtQueueDriver,
    tx: VirtQueueDriver,
    ev: VirtQueueDriver,
    irq: Arc<IrqTrigger>,
    kicks: [EventFd; 3],
    /// rx buffers not posted, and posted ones by head index.
    rx_free: Vec<GuestAddress>,
    /// (head, buffer to recycle); `None` for hand-made chains.
    rx_posted: VecDeque<(u16, Option<GuestAddress>)>,
    /// rx chains the device returned empty (unusable buffers).
    empty_rx: usize,
    /// Post rx buffers as they come back.
    pub auto_refill: bool,
    /// Post rx buffers as header + payload descriptors (older Linux)
    /// instead of one descriptor.
    pub split_rx: bool,
    tx_bufs: Vec<GuestAddress>,
    tx_next: usize,
    tx_outstanding: usize,
    /// Packets received and not yet taken by a test.
    inbox: VecDeque<Rx>,
}

impl Harness {
    /// An activated device with `RX_BUFFERS` rx buffers posted.
    fn new() -> Self {
        let mut h = Harness::inactive();
        h.activate();
        h.refill_rx();
        h.pump();
        h
    }

    /// A device wired into an event manager, not activated yet.
    fn inactive() -> Self {
        let dir = TempDir::new_with_prefix("/tmp/husk-vsock-").unwrap();
        let uds = dir.as_path().join("v.sock");
        let dev = Vsock::new(&VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
            id: "vsock0".into(),
        })
        .unwrap();
        let kicks = [
            dev.queue_events()[0].try_clone().unwrap(),
            dev.queue_events()[1].try_clone().unwrap(),
            dev.queue_events()[2].try_clone().unwrap(),
        ];
        let dev = Arc::new(Mutex::new(dev));
        let mut manager = Manager::new().unwrap();
        manager.add_subscriber(dev.clone());

        let mem = guest_memory();
        // Rings low, buffers (all allocated through `rx`) above them.
        let ev = VirtQueueDriver::new(&mem, GuestAddress(0), TEST_QUEUE_SIZE);
        let tx = VirtQueueDriver::new(&mem, GuestAddress(0x4000), TEST_QUEUE_SIZE);
        let mut rx = VirtQueueDriver::new(&mem, GuestAddress(0x8000), TEST_QUEUE_SIZE);
        let rx_free = (0..RX_BUFFERS)
            .map(|_| rx.alloc(HEADER_SIZE + RX_PAYLOAD))
            .collect();
        let tx_bufs = (0..TX_BUFFERS)
            .map(|_| rx.alloc(HEADER_SIZE + TX_CHUNK))
            .collect();
        Harness {
            _dir: dir,
            uds,
            dev,
            manager,
            mem,
            rx,
            tx,
            ev,
            irq: Arc::new(IrqTrigger::new().unwrap()),
            kicks,
            rx_free,
            rx_posted: VecDeque::new(),
            empty_rx: 0,
            auto_refill: true,
            split_rx: false,
            tx_bufs,
            tx_next: 0,
            tx_outstanding: 0,
            inbox: VecDeque::new(),
        }
    }

    fn activate(&mut self) {
        let queues = vec![
            self.rx.create_queue(),
            self.tx.create_queue(),
            self.ev.create_queue(),
        ];
        let mut dev = self.dev.lock().unwrap();
        let features = dev.avail_features();
        dev.ack_features(features);
        dev.activate(self.mem.clone(), self.irq.clone(), queues)
            .unwrap();
    }

    fn metrics(&self) -> Arc<VsockMetrics> {
        self.dev.lock().unwrap().metrics().clone()
    }

    fn metric(&self, pick: impl Fn(&VsockMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        VsockMetrics::get(pick(&self.metrics()))
    }

    fn connection_count(&self) -> usize {
        self.dev.lock().unwrap().connection_count()
    }

    /// `<uds>_<port>`.
    fn port_path(&self, port: u32) -> PathBuf {
        super::muxer::host_port_path(&self.uds, port)
    }

    /// Posts up to `n` free rx buffers and notifies the device.
    fn post_rx(&mut self, n: usize) {
        let mut posted = 0;
        while posted < n {
            let Some(buf) = self.rx_free.pop() else {
                break;
            };
            let head = if self.split_rx {
                let payload = buf.unchecked_add(HEADER_SIZE as u64);
                self.rx.add_chain(&[
                    Buf::writable(buf, HEADER_SIZE as u32),
                    Buf::writable(payload, RX_PAYLOAD as u32),
                ])
            } else {
                self.rx
                    .add_chain(&[Buf::writable(buf, (HEADER_SIZE + RX_PAYLOAD) as u32)])
            };
            self.rx_posted.push_back((head, Some(buf)));
            posted += 1;
        }
        if posted > 0 {
            self.kicks[RX_QUEUE].write(1).unwrap();
        }
    }

    /// Posts a hand-made rx chain (not recycled).
    fn post_rx_chain(&mut self, bufs: &[Buf]) {
        let head = self.rx.add_chain(bufs);
        self.rx_posted.push_back((head, None));
        self.kicks[RX_QUEUE].write(1).unwrap();
    }

    fn refill_rx(&mut self) {
        self.post_rx(RX_BUFFERS);
    }

    /// Runs the event loop until nothing is ready, collecting rx packets.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let n = self.manager.run_with_timeout(0).unwrap();
            let got = self.collect_rx();
            if n == 0 && !got {
                return;
            }
        }
        panic!("the event loop never went idle");
    }

    /// Runs the event loop (waiting up to `PATIENCE`) until `done` holds.
    fn pump_until(&mut self, what: &str, mut done: impl FnMut(&mut Harness) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.pump();
            if done(self) {
                return;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            self.manager.run_with_timeout(10).unwrap();
        }
    }

    /// Moves used rx buffers into the inbox (recycling the buffers). Returns
    /// whether there were any.
    fn collect_rx(&mut self) -> bool {
        let mut got = false;
        while let Some((id, len)) = self.rx.pop_used() {
            got = true;
            let (head, buf) = self
                .rx_posted
                .pop_front()
                .expect("used rx buffer never posted");
            assert_eq!(u32::from(head), id, "rx buffers used out of order");
            let Some(buf) = buf else {
                assert_eq!(len, 0, "the device wrote into an unusable rx chain");
                self.empty_rx += 1;
                continue;
            };
            if len == 0 {
                self.empty_rx += 1;
                self.rx_free.push(buf);
                continue;
            }
            let bytes = self.rx.read(buf, len as usize);
            let hdr = parse_header(&bytes).expect("rx packet shorter than a header");
            assert_eq!(
                len as usize,
                HEADER_SIZE + hdr.len as usize,
                "used length disagrees with the header"
            );
            self.inbox.push_back(Rx {
                hdr,
                payload: bytes[HEADER_SIZE..].to_vec(),
            });
            self.rx_free.push(buf);
        }
        // Reclaim tx buffers.
        while self.tx.pop_used().is_some() {
            self.tx_outstanding -= 1;
        }
        if got && self.auto_refill {
            self.refill_rx();
        }
        got
    }

    /// Takes every received packet.
    fn take_rx(&mut self) -> Vec<Rx> {
        self.pump();
        self.inbox.drain(..).collect()
    }

    /// Takes received packets of `conn` (updating its state); others stay.
    fn take_for(&mut self, conn: &mut GuestConn) -> Vec<Rx> {
        self.pump();
        let (mine, others): (Vec<Rx>, Vec<Rx>) = self.inbox.drain(..).partition(|rx| conn.owns(rx));
        self.inbox = others.into();
        for rx in &mine {
            conn.absorb(rx);
        }
        mine
    }

    /// Waits for a packet of `conn` with `op`, absorbing everything of
    /// `conn` on the way. Returns the packets taken.
    fn wait_for(&mut self, conn: &mut GuestConn, op: Op) -> Vec<Rx> {
        self.wait_for_any(conn, &[op])
    }

    /// Waits for a packet of `conn` with one of `ops`.
    fn wait_for_any(&mut self, conn: &mut GuestConn, ops: &[Op]) -> Vec<Rx> {
        let mut taken = Vec::new();
        let deadline = Instant::now() + PATIENCE;
        loop {
            taken.extend(self.take_for(conn));
            if taken
                .iter()
                .any(|rx| rx.op().is_some_and(|op| ops.contains(&op)))
            {
                return taken;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {ops:?}; got {taken:?}"
            );
            self.manager.run_with_timeout(10).unwrap();
        }
    }

    /// Puts one packet on the tx queue (header and payload in separate
    /// descriptors, like Linux) and notifies the device.
    fn send_raw(&mut self, hdr: &PacketHeader, payload: &[u8]) {
        assert!(payload.len() <= TX_CHUNK);
        self.collect_rx();
        assert!(self.tx_outstanding < TX_BUFFERS, "tx buffers exhausted");
        let buf = self.tx_bufs[self.tx_next];
        self.tx_next = (self.tx_next + 1) % TX_BUFFERS;
        self.rx.write(buf, &hdr.to_bytes());
        let mut chain = vec![Buf::readable(buf, HEADER_SIZE as u32)];
        if !payload.is_empty() {
            let data = buf.unchecked_add(HEADER_SIZE as u64);
            self.rx.write(data, payload);
            chain.push(Buf::readable(data, payload.len() as u32));
        }
        self.tx.add_chain(&chain);
        self.tx_outstanding += 1;
        self.kicks[TX_QUEUE].write(1).unwrap();
        self.pump();
    }

    /// Puts a hand-made chain on the tx queue and notifies the device.
    fn send_tx_chain(&mut self, bufs: &[Buf]) {
        self.collect_rx();
        self.tx.add_chain(bufs);
        self.tx_outstanding += 1;
        self.kicks[TX_QUEUE].write(1).unwrap();
        self.pump();
    }

    /// A fresh guest buffer holding `bytes`.
    fn guest_bytes(&mut self, bytes: &[u8]) -> GuestAddress {
        let addr = self.rx.alloc(bytes.len());
        self.rx.write(addr, bytes);
        addr
    }

    /// Proves the device still works: a full host connection with data.
    fn assert_still_serving(&mut self, port: u32) {
        let (mut host, mut conn) = self.connected(port);
        host.write_all(b"still here").unwrap();
        assert_eq!(self.receive(&mut conn, 10), b"still here");
        self.send(&mut conn, Op::Rw, b"yes");
        assert_eq!(read_exactly(&mut host, 3), b"yes");
    }

    /// Joins a host-side thread, running the event loop meanwhile (the
    /// thread may be waiting for the device).
    fn join<T>(&mut self, thread: std::thread::JoinHandle<T>) -> T {
        self.pump_until("a host thread", |_| thread.is_finished());
        thread.join().unwrap()
    }

    /// Sends `op` on `conn` with its current credit.
    fn send(&mut self, conn: &mut GuestConn, op: Op, payload: &[u8]) {
        let mut hdr = conn.hdr(op);
        hdr.len = payload.len() as u32;
        if op == Op::Rw {
            conn.tx_cnt = conn.tx_cnt.wrapping_add(payload.len() as u32);
        }
        self.send_raw(&hdr, payload);
    }

    fn send_shutdown(&mut self, conn: &mut GuestConn, flags: u32) {
        let mut hdr = conn.hdr(Op::Shutdown);
        hdr.flags = flags;
        self.send_raw(&hdr, &[]);
    }

    /// The "application" read everything received; tell the device.
    fn consume_and_update(&mut self, conn: &mut GuestConn) {
        conn.fwd_cnt = conn.rx_cnt;
        self.send(conn, Op::CreditUpdate, &[]);
    }

    /// A host program connects to `uds_path` and asks for guest `port`;
    /// returns its stream and the guest's view after the REQUEST arrived.
    fn host_connect(&mut self, port: u32) -> (UnixStream, GuestConn) {
        let mut stream = UnixStream::connect(&self.uds).unwrap();
        stream
            .write_all(format!("CONNECT {port}\n").as_bytes())
            .unwrap();
        let req = self.wait_request_to(port);
        let mut conn = GuestConn::new(port, req.hdr.src_port);
        conn.absorb(&req);
        (stream, conn)
    }

    /// Waits for the next REQUEST to guest `port`.
    fn wait_request_to(&mut self, port: u32) -> Rx {
        let mut found = None;
        self.pump_until("a REQUEST", |h| {
            if let Some(i) = h
                .inbox
                .iter()
                .position(|rx| rx.op() == Some(Op::Request) && rx.hdr.dst_port == port)
            {
                found = h.inbox.remove(i);
            }
            found.is_some()
        });
        found.unwrap()
    }

    /// The guest accepts a host connection; the host reads `OK <port>\n`.
    fn accept(&mut self, stream: &mut UnixStream, conn: &mut GuestConn) {
        self.send(conn, Op::Response, &[]);
        let expected = format!("OK {}\n", conn.host_port);
        assert_eq!(read_exactly(stream, expected.len()), expected.as_bytes());
    }

    /// A full host-initiated connection, ready for data.
    fn connected(&mut self, port: u32) -> (UnixStream, GuestConn) {
        let (mut stream, mut conn) = self.host_connect(port);
        self.accept(&mut stream, &mut conn);
        (stream, conn)
    }

    /// Receives `len` bytes on `conn`, giving credit back like Linux does
    /// (when less than half the buffer looks free to the device).
    fn receive(&mut self, conn: &mut GuestConn, len: usize) -> Vec<u8> {
        let start = conn.received.len();
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.take_for(conn);
            assert!(!conn.reset, "connection reset while receiving");
            if conn.free_for_device() < conn.buf_alloc / 2 || conn.credit_requests > 0 {
                conn.credit_requests = 0;
                self.consume_and_update(conn);
            }
            if conn.received.len() - start >= len {
                break;
            }
            assert!(Instant::now() < deadline, "timed out receiving");
            self.manager.run_with_timeout(10).unwrap();
        }
        conn.received[start..start + len].to_vec()
    }

    /// Sends `data` on `conn`, never exceeding the device's credit.
    fn transmit(&mut self, conn: &mut GuestConn, data: &[u8]) {
        let mut sent = 0;
        let deadline = Instant::now() + PATIENCE;
        while sent < data.len() {
            self.take_for(conn);
            assert!(!conn.reset, "connection reset while sending");
            let credit = conn.credit() as usize;
            if credit == 0 {
                assert!(Instant::now() < deadline, "timed out waiting for credit");
                self.manager.run_with_timeout(10).unwrap();
                continue;
            }
            let n = credit.min(TX_CHUNK).min(data.len() - sent);
            self.send(conn, Op::Rw, &data[sent..sent + n]);
            sent += n;
        }
    }
}

/// Reads exactly `len` bytes (the stream may be non-blocking).
fn read_exactly(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = vec![0; len];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Reads until EOF (with a timeout).
fn read_to_end(stream: &mut UnixStream) -> Vec<u8> {
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut buf = Vec::new();
    stream.read_to_end(&mut buf).unwrap();
    buf
}

/// Whether the peer closed `stream` (EOF, or reset) within a short wait,
/// with no data first.
fn is_closed_without_data(stream: &mut UnixStream) -> bool {
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => true,
        Ok(n) => panic!("unexpected data: {:?}", String::from_utf8_lossy(&buf[..n])),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => true,
        Err(_) => false,
    }
}
