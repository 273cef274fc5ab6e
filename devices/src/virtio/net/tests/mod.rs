//! virtio-net tests: the harness plays the guest driver of both queues, a
//! datagram socketpair plays the TAP (one packet per datagram, like a TAP
//! fd), and the tests run the device directly or through the event manager.
//!
//! - `tx`: frames from the guest to the backend, malformed tx chains,
//!   backend failures;
//! - `rx`: frames from the backend to the guest, mergeable buffers,
//!   malformed rx chains, header checks;
//! - `device`: features, config space, MAC, offload negotiation,
//!   activation, and the event loop (backpressure, backend failure);
//! - `event_idx`: interrupts and kicks as the driver's and the device's
//!   event indexes ask;
//! - `tap`: the real TAP backend (needs root and /dev/net/tun for most).

mod device;
mod event_idx;
mod limits;
mod rx;
mod tap;
mod tx;

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_bindings::virtio_net::*;
use virtio_queue::Queue;
use vm_memory::{Address, GuestAddress};

use super::device::{Net, RxState};
use super::handler::TxOutcome;
use super::metrics::NetMetrics;
use super::tap::NetBackend;
use super::{MAX_PACKET_LEN, NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use crate::virtio::test_utils::{guest_memory, Buf, RawDesc, VirtQueueDriver, F_NEXT, F_WRITE};
use crate::virtio::{IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};

/// Queue size for the tests: small, so wrap-around is cheap to hit.
const TEST_QUEUE_SIZE: u16 = 16;
/// The rx rings and buffers live in the first 2 MiB of guest memory, the
/// tx ones in the second.
const RX_BASE: GuestAddress = GuestAddress(0);
const TX_BASE: GuestAddress = GuestAddress(0x20_0000);
/// Written into `num_buffers` of packets the host sends, so a device that
/// forgets to set it is caught.
const GARBAGE_NUM_BUFFERS: u16 = 0xbeef;

fn bit(feature: u32) -> u64 {
    1u64 << feature
}

/// Features a minimal modern driver acks.
const BASE_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MAC);

/// An Ethernet frame of `len` bytes with deterministic contents.
fn frame(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 8) as u8)
        .collect()
}

/// A virtio-net packet: header (`flags`, `gso_type`, rest zero, garbage
/// `num_buffers`) followed by `frame`.
fn packet_with(flags: u8, gso_type: u8, frame: &[u8]) -> Vec<u8> {
    let mut packet = vec![0u8; VNET_HDR_LEN];
    packet[0] = flags;
    packet[1] = gso_type;
    packet[NUM_BUFFERS_OFFSET..].copy_from_slice(&GARBAGE_NUM_BUFFERS.to_le_bytes());
    packet.extend_from_slice(frame);
    packet
}

/// A plain packet (no offloads) carrying `frame`.
fn packet(frame: &[u8]) -> Vec<u8> {
    packet_with(0, 0, frame)
}

/// `packet` as the guest must see it: `num_buffers` set.
fn as_received(packet: &[u8], num_buffers: u16) -> Vec<u8> {
    let mut expected = packet.to_vec();
    expected[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&num_buffers.to_le_bytes());
    expected
}

/// Shared knobs of a [`FakeBackend`], kept by the test.
#[derive(Clone, Default)]
struct Knobs {
    /// Last offload flags set (`u32::MAX` until the first call).
    offload: Arc<AtomicU32>,
    /// Make writes fail with this kind.
    write_error: Arc<Mutex<Option<io::ErrorKind>>>,
    /// Ask the device to wait instead of dropping (as a stream does).
    backpressure: Arc<std::sync::atomic::AtomicBool>,
}

/// One end of a datagram socketpair standing in for the TAP.
struct FakeBackend {
    sock: UnixDatagram,
    knobs: Knobs,
}

impl AsRawFd for FakeBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.sock.as_raw_fd()
    }
}

impl NetBackend for FakeBackend {
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.sock.recv(buf)
    }

    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize> {
        if let Some(kind) = *self.knobs.write_error.lock().unwrap() {
            return Err(io::Error::from(kind));
        }
        self.sock.send(packet)
    }

    fn set_offload(&mut self, flags: u32) -> io::Result<()> {
        self.knobs.offload.store(flags, Ordering::SeqCst);
        Ok(())
    }

    fn backpressure(&self) -> bool {
        self.knobs.backpressure.load(Ordering::SeqCst)
    }
}

/// The other end: the host network as the test sees it.
struct Host {
    sock: UnixDatagram,
    knobs: Knobs,
}

impl Host {
    fn send(&self, packet: &[u8]) {
        assert_eq!(self.sock.send(packet).unwrap(), packet.len());
    }

    /// The next packet the device wrote, if any.
    fn recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; MAX_PACKET_LEN + 1];
        match self.sock.recv(&mut buf) {
            Ok(n) => {
                buf.truncate(n);
                Some(buf)
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
            Err(e) => panic!("host socket: {e}"),
        }
    }

    fn offload(&self) -> u32 {
        self.knobs.offload.load(Ordering::SeqCst)
    }

    fn fail_writes(&self, kind: Option<io::ErrorKind>) {
        *self.knobs.write_error.lock().unwrap() = kind;
    }
}

fn fake_backend() -> (FakeBackend, Host) {
    let (device_end, host_end) = UnixDatagram::pair().unwrap();
    device_end.set_nonblocking(true).unwrap();
    host_end.set_nonblocking(true).unwrap();
    let knobs = Knobs::default();
    knobs.offload.store(u32::MAX, Ordering::SeqCst);
    (
        FakeBackend {
            sock: device_end,
            knobs: knobs.clone(),
        },
        Host {
            sock: host_end,
            knobs,
        },
    )
}

fn fake_net() -> (Net<FakeBackend>, Host) {
    let (backend, host) = fake_backend();
    let net = Net::with_backend(backend, Some([0x02, 0, 0, 0, 0, 0x01]), "eth0".into()).unwrap();
    (net, host)
}

/// The guest driver of both queues.
struct Driver {
    rxq: VirtQueueDriver,
    txq: VirtQueueDriver,
}

impl Driver {
    fn new() -> Self {
        let mem = guest_memory();
        Driver {
            rxq: VirtQueueDriver::new(&mem, RX_BASE, TEST_QUEUE_SIZE),
            txq: VirtQueueDriver::new(&mem, TX_BASE, TEST_QUEUE_SIZE),
        }
    }

    fn queues(&self) -> Vec<Queue> {
        vec![self.rxq.create_queue(), self.txq.create_queue()]
    }

    /// Posts one rx chain of writable descriptors of `lens` bytes; returns
    /// the head and the buffers.
    fn post_rx(&mut self, lens: &[u32]) -> (u16, Vec<GuestAddress>) {
        let addrs: Vec<_> = lens
            .iter()
            .map(|&len| self.rxq.alloc(len as usize))
            .collect();
        let bufs: Vec<_> = addrs
            .iter()
            .zip(lens)
            .map(|(&addr, &len)| Buf::writable(addr, len))
            .collect();
        (self.rxq.add_chain(&bufs), addrs)
    }

    /// Posts `count` single-descriptor rx chains of `len` bytes.
    fn post_rx_buffers(&mut self, count: usize, len: u32) -> Vec<(u16, GuestAddress)> {
        (0..count)
            .map(|_| {
                let (head, addrs) = self.post_rx(&[len]);
                (head, addrs[0])
            })
            .collect()
    }

    /// Posts `packet` on the tx queue, split into descriptors at `splits`
    /// (offsets); returns the head.
    fn post_tx(&mut self, packet: &[u8], splits: &[usize]) -> u16 {
        let mut bounds = vec![0];
        bounds.extend_from_slice(splits);
        bounds.push(packet.len());
        let bufs: Vec<_> = bounds
            .windows(2)
            .map(|w| {
                let part = &packet[w[0]..w[1]];
                let addr = self.txq.alloc(part.len());
                self.txq.write(addr, part);
                Buf::readable(addr, part.len() as u32)
            })
            .collect();
        self.txq.add_chain(&bufs)
    }

    /// Reads `len` bytes spread over `bufs` (address, length) in order.
    fn read_spread(&self, bufs: &[(GuestAddress, u32)], len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        for &(addr, buf_len) in bufs {
            let n = (buf_len as usize).min(len - out.len());
            out.extend(self.rxq.read(addr, n));
        }
        out
    }
}

/// A device driven directly (no event loop): activated with `features`.
struct Harness {
    driver: Driver,
    net: Net<FakeBackend>,
    host: Host,
    irq: Arc<IrqTrigger>,
}

fn harness(features: u64) -> Harness {
    let (mut net, host) = fake_net();
    let driver = Driver::new();
    let irq = Arc::new(IrqTrigger::new().unwrap());
    net.ack_features(features);
    net.activate(driver.rxq.mem.clone(), irq.clone(), driver.queues())
        .unwrap();
    Harness {
        driver,
        net,
        host,
        irq,
    }
}

impl Harness {
    fn run_tx(&mut self) -> TxOutcome {
        self.net.process_tx_queue_event()
    }

    /// One rx pass; returns whether the device wants the backend polled.
    fn run_rx(&mut self) -> bool {
        self.net.process_rx()
    }

    fn metric(&self, counter: impl Fn(&NetMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        NetMetrics::get(counter(self.net.metrics()))
    }

    /// Whether the interrupt fired since the last call (and clears it).
    fn interrupted(&self) -> bool {
        let fired = self.irq.event().read().is_ok();
        self.irq.ack(VIRTIO_MMIO_INT_VRING);
        fired
    }
}

type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A device on an event manager, as the VMM runs it.
struct LoopHarness<B: NetBackend + 'static> {
    driver: Driver,
    net: Arc<Mutex<Net<B>>>,
    manager: EventLoop,
    irq: Arc<IrqTrigger>,
}

fn loop_harness<B: NetBackend + 'static>(net: Net<B>) -> LoopHarness<B> {
    let net = Arc::new(Mutex::new(net));
    let mut manager: EventLoop = EventManager::new().unwrap();
    manager.add_subscriber(net.clone());
    LoopHarness {
        driver: Driver::new(),
        net,
        manager,
        irq: Arc::new(IrqTrigger::new().unwrap()),
    }
}

impl<B: NetBackend + 'static> LoopHarness<B> {
    fn activate(&mut self, features: u64) {
        let mut net = self.net.lock().unwrap();
        net.ack_features(features);
        net.activate(
            self.driver.rxq.mem.clone(),
            self.irq.clone(),
            self.driver.queues(),
        )
        .unwrap();
    }

    /// Runs the event loop once; returns the events dispatched.
    fn run(&mut self, timeout_ms: i32) -> usize {
        self.manager.run_with_timeout(timeout_ms).unwrap()
    }

    /// The guest's queue notification.
    fn notify(&self, queue: usize) {
        self.net.lock().unwrap().queue_events()[queue]
            .write(1)
            .unwrap();
    }

    fn state(&self) -> (RxState, bool) {
        let net = self.net.lock().unwrap();
        (net.rx_state(), net.is_polling_backend())
    }

    fn metric(&self, counter: impl Fn(&NetMetrics) -> &std::sync::atomic::AtomicU64) -> u64 {
        NetMetrics::get(counter(self.net.lock().unwrap().metrics()))
    }
}
