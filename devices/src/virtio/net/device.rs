//! The virtio-net device: features, config space, activation, and the rx
//! state machine the event loop drives.
//!
//! ## Receive backpressure
//!
//! The backend fd is polled level-triggered. Each readiness event reads
//! packets one at a time into a host buffer and offers each to the guest:
//!
//! - delivered (or dropped as undeliverable): read the next one, up to
//!   [`RX_BUDGET`] per event so tx and other devices get their turn; level
//!   triggering brings us back for the rest;
//! - the guest has not posted enough buffers: the packet stays in the
//!   buffer (the *pending* slot), and the event loop stops polling the
//!   backend fd ([`Net::is_polling_backend`] turns false,
//!   [`RxState::WaitingForBuffers`]). Further packets wait in the TAP's own
//!   queue, which drops at its limit like any NIC. Nothing spins: no fd we
//!   poll stays readable. When the driver posts buffers it notifies the rx
//!   queue; that event offers the pending packet again and, once it is
//!   delivered, resumes polling the backend.
//!
//! Without mergeable buffers a packet larger than the next chain is dropped
//! (the chain is kept); with them, a packet larger than a whole queue of
//! buffers is dropped.

use std::io::{self, Read};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use crate::virtio::GuestMemoryMmap;
use log::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::timerfd::TimerFd;

use super::handler::{self, check_rx_header, RxBuffers, RxDelivery, TxOutcome};
use super::metrics::NetMetrics;
use super::stream::Stream;
use super::tap::{tap_offload_flags, NetBackend, Tap, TapError};
use super::{ETH_HLEN, MAX_PACKET_LEN, QUEUE_SIZE, RX_QUEUE, TX_QUEUE, VNET_HDR_LEN};
use crate::rate_limiter::{self, Limits, RateLimiter};
use crate::virtio::{ActivateError, IrqTrigger, IrqType, VirtioDevice, VIRTIO_F_VERSION_1};

/// Event-loop token (`Events::data`) of the rx queue eventfd.
pub const RX_QUEUE_TOKEN: u32 = RX_QUEUE as u32;
/// Event-loop token of the tx queue eventfd.
pub const TX_QUEUE_TOKEN: u32 = TX_QUEUE as u32;
/// Event-loop token of the backend (TAP) fd.
pub const BACKEND_TOKEN: u32 = 2;
/// Event-loop token of the rx rate limiter's timer.
pub const RX_LIMIT_TOKEN: u32 = 3;
/// Event-loop token of the tx rate limiter's timer.
pub const TX_LIMIT_TOKEN: u32 = 4;

/// Packets read from the backend per readiness event, at most.
pub const RX_BUDGET: u32 = 64;
/// tx chains served per queue event, at most; past it the device kicks its
/// own tx eventfd and yields to the event loop.
pub const TX_BUDGET: u32 = QUEUE_SIZE as u32;

/// Size of the config space we expose: `mac` and `status` of
/// `struct virtio_net_config`. Later fields belong to features we do not
/// offer (MQ, MTU, SPEED_DUPLEX, RSS).
const CONFIG_SPACE_SIZE: usize = 8;

/// The checksum and segmentation offloads, both ways: only offered over a
/// backend that carries the virtio-net header (the TAP implements them).
const OFFLOAD_FEATURES: u64 = (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_GUEST_UFO)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_UFO);

/// Features offered: virtio 1.x, event indexes, a MAC, link status,
/// mergeable rx buffers, and the offloads where the backend has them.
///
/// Event indexes let the driver ask for an interrupt only past a used
/// index it names, and let the device say from which avail index on it
/// wants kicks: Linux then takes one tx interrupt per batch of completions
/// instead of one per frame, and kicks once per batch while the device is
/// sending. Each is an exit, tens of µs when nested.
const AVAIL_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    | (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_MRG_RXBUF)
    | OFFLOAD_FEATURES;

/// What the VMM configures for a network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// The host side.
    pub host: NetHost,
    /// The guest's MAC; a random locally administered one if `None`.
    pub mac: Option<[u8; 6]>,
    /// Interface id (for logs and metrics).
    pub id: String,
    /// Rate limits on what it receives and sends.
    pub limits: NetLimits,
}

/// A NIC's rate limits (Firecracker's `rx_rate_limiter` and
/// `tx_rate_limiter`), as configured and kept in a snapshot; none = no
/// limit. Bytes are Ethernet frames' (the virtio-net header not counted).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetLimits {
    pub rx: Option<Limits>,
    pub tx: Option<Limits>,
}

/// The host side of a network interface.
#[derive(Debug, Clone)]
pub enum NetHost {
    /// An existing TAP interface, by name.
    Tap(String),
    /// A connected stream socket to a userspace network stack (passt),
    /// framed as QEMU's `-netdev stream`; the device uses a duplicate.
    Stream(Arc<OwnedFd>),
}

impl PartialEq for NetHost {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (NetHost::Tap(a), NetHost::Tap(b)) => a == b,
            (NetHost::Stream(a), NetHost::Stream(b)) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Eq for NetHost {}

impl std::fmt::Display for NetHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetHost::Tap(name) => write!(f, "TAP {name}"),
            NetHost::Stream(fd) => write!(f, "stream socket (fd {})", fd.as_raw_fd()),
        }
    }
}

/// Errors creating a network device.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP cannot be used.
    #[error("cannot attach the TAP backend")]
    Tap(#[source] TapError),
    /// The stream socket cannot be used.
    #[error("cannot use the network stream socket")]
    Stream(#[source] io::Error),
    /// The MAC cannot be a station address.
    #[error("invalid guest MAC address {mac}: {reason}")]
    InvalidMac {
        /// The address, formatted.
        mac: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Creating a queue eventfd failed.
    #[error("cannot create the queue eventfds")]
    QueueEvent(#[source] io::Error),
    /// Creating a rate limiter's timer failed.
    #[error("cannot create the rate limiters' timers")]
    Timer(#[source] io::Error),
}

/// Where the receive side stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// Not activated (or reset): the backend is not read.
    Inactive,
    /// Reading packets from the backend as they come.
    Receiving,
    /// A packet is held until the guest posts rx buffers; the backend is not
    /// polled meanwhile.
    WaitingForBuffers,
    /// The backend reported an error condition (e.g. the TAP was deleted);
    /// nothing is received any more.
    BackendFailed,
}

/// `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Turns 6 random bytes into a unicast, locally administered MAC (the
/// first octet's low bits `10`), which cannot collide with a vendor's.
pub fn locally_administered_mac(random: [u8; 6]) -> [u8; 6] {
    let mut mac = random;
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// A random locally administered MAC.
pub fn random_mac() -> [u8; 6] {
    let mut random = [0u8; 6];
    let from_os = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut random));
    if let Err(e) = from_os {
        warn!("virtio-net: /dev/urandom unavailable ({e}), using a weaker random MAC");
        let bytes = vmm_sys_util::rand::rand_bytes(6);
        random.copy_from_slice(&bytes[..6]);
    }
    locally_administered_mac(random)
}

fn validate_mac(mac: &[u8; 6]) -> Result<(), NetError> {
    let invalid = |reason| {
        Err(NetError::InvalidMac {
            mac: format_mac(mac),
            reason,
        })
    };
    if mac[0] & 1 != 0 {
        return invalid("it is a multicast address");
    }
    if mac == &[0; 6] {
        return invalid("it is all zeros");
    }
    Ok(())
}

/// State that exists only between activation and reset.
struct Active {
    mem: GuestMemoryMmap,
    rx_queue: Queue,
    tx_queue: Queue,
    rx_buffers: RxBuffers,
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-net device with one rx and one tx queue over a [`NetBackend`]
/// (a [`Tap`] unless built with [`Net::with_backend`]).
pub struct Net<B: NetBackend = Tap> {
    id: String,
    backend: B,
    mac: [u8; 6],
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; 2],
    queue_evts: [EventFd; 2],
    active: Option<Active>,
    /// Host buffer for the packet being received.
    rx_buf: Vec<u8>,
    /// Length of the packet in `rx_buf` that is waiting for guest buffers.
    rx_pending: Option<usize>,
    /// Host buffer for the packet being sent.
    tx_buf: Vec<u8>,
    /// Whether the backend fd is in the event loop's epoll set, and for
    /// what.
    pub(crate) backend_interest: Option<event_manager::EventSet>,
    /// Sending waits for the backend to be writable (a stream backend
    /// with a full socket).
    pub(crate) tx_blocked: bool,
    backend_failed: bool,
    metrics: Arc<NetMetrics>,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
    /// Fire when a limiter lets the stopped direction go on.
    rx_limit_timer: TimerFd,
    tx_limit_timer: TimerFd,
}

impl<B: NetBackend> std::fmt::Debug for Net<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("id", &self.id)
            .field("mac", &format_mac(&self.mac))
            .field("acked_features", &self.acked_features)
            .field("rx_state", &self.rx_state())
            .finish_non_exhaustive()
    }
}

impl Net<Tap> {
    /// Attaches to a TAP and builds the (inactive) device.
    pub fn new(tap_name: &str, config: &NetConfig) -> Result<Self, NetError> {
        let tap = Tap::open(tap_name).map_err(NetError::Tap)?;
        let mut net = Net::with_backend(tap, config.mac, config.id.clone())?;
        net.set_rate_limiters(config.limits);
        Ok(net)
    }
}

impl Net<Stream> {
    /// Builds the (inactive) device on a duplicate of a stream socket.
    pub fn over_stream(socket: &OwnedFd, config: &NetConfig) -> Result<Self, NetError> {
        let socket = socket.try_clone().map_err(NetError::Stream)?;
        let stream = Stream::new(socket).map_err(NetError::Stream)?;
        let mut net = Net::with_backend(stream, config.mac, config.id.clone())?;
        net.set_rate_limiters(config.limits);
        Ok(net)
    }
}

impl<B: NetBackend> Net<B> {
    /// Builds the (inactive) device over any backend; `mac: None` picks a
    /// random locally administered address.
    pub fn with_backend(backend: B, mac: Option<[u8; 6]>, id: String) -> Result<Self, NetError> {
        let mac = match mac {
            Some(mac) => {
                validate_mac(&mac)?;
                mac
            }
            None => random_mac(),
        };
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[0..6].copy_from_slice(&mac);
        // The link is always up: the TAP's own state is the host's business.
        config_space[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        // Non-blocking: the event loop drains them and must never block on
        // a spurious wakeup.
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(NetError::QueueEvent);
        Ok(Net {
            id,
            backend,
            mac,
            acked_features: 0,
            config_space,
            queue_sizes: [QUEUE_SIZE; 2],
            queue_evts: [evt()?, evt()?],
            active: None,
            // One byte more than the largest packet: a read that fills it
            // was truncated, whatever the backend's truncation semantics.
            rx_buf: vec![0; MAX_PACKET_LEN + 1],
            rx_pending: None,
            tx_buf: vec![0; MAX_PACKET_LEN],
            backend_interest: None,
            tx_blocked: false,
            backend_failed: false,
            metrics: Arc::new(NetMetrics::default()),
            rx_limiter: RateLimiter::default(),
            tx_limiter: RateLimiter::default(),
            rx_limit_timer: rate_limiter::timer().map_err(NetError::Timer)?,
            tx_limit_timer: rate_limiter::timer().map_err(NetError::Timer)?,
        })
    }

    /// Sets both directions' limits, now and while it runs (`PATCH
    /// /network-interfaces`): a direction the old limits stopped goes on
    /// under the new ones.
    pub fn set_rate_limiters(&mut self, limits: NetLimits) {
        let limiter = |l: Option<Limits>| RateLimiter::new(l.unwrap_or_default());
        self.rx_limiter = limiter(limits.rx);
        self.tx_limiter = limiter(limits.tx);
        if self.active.is_none() {
            return;
        }
        for (index, what) in [(RX_QUEUE, "rx"), (TX_QUEUE, "tx")] {
            if let Err(e) = self.queue_evts[index].write(1) {
                error!(
                    "virtio-net {}: cannot re-kick the {what} queue: {e}",
                    self.id
                );
            }
        }
    }

    /// The rate limiters' timers (rx, tx), for the event loop.
    pub(crate) fn limit_timers(&self) -> [&TimerFd; 2] {
        [&self.rx_limit_timer, &self.tx_limit_timer]
    }

    /// Reads a fired timer (`RX_QUEUE` or `TX_QUEUE`'s), so it does not
    /// wake the loop again.
    pub(crate) fn clear_limit_timer(&mut self, queue: usize) {
        let timer = if queue == RX_QUEUE {
            &mut self.rx_limit_timer
        } else {
            &mut self.tx_limit_timer
        };
        rate_limiter::clear_timer(timer, "virtio-net");
    }

    /// The device's counters, to be exported by the VMM.
    pub fn metrics(&self) -> &Arc<NetMetrics> {
        &self.metrics
    }

    /// The interface id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The guest's MAC (as in config space).
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The negotiated features (0 before `FEATURES_OK`).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Where the receive side stands.
    pub fn rx_state(&self) -> RxState {
        if self.backend_failed {
            RxState::BackendFailed
        } else if self.active.is_none() {
            RxState::Inactive
        } else if self.rx_pending.is_some() {
            RxState::WaitingForBuffers
        } else {
            RxState::Receiving
        }
    }

    /// Whether the event loop currently polls the backend fd.
    pub fn is_polling_backend(&self) -> bool {
        self.backend_interest
            .is_some_and(|i| i.contains(event_manager::EventSet::IN))
    }

    fn acked(&self, bit: u32) -> bool {
        self.acked_features & (1u64 << bit) != 0
    }

    /// Serves the tx queue after a notification and interrupts the guest if
    /// anything completed. A no-op before activation.
    pub(crate) fn process_tx_queue_event(&mut self) -> TxOutcome {
        let Some(active) = self.active.as_mut() else {
            return TxOutcome::default();
        };
        if self.tx_blocked {
            // The backend's writability resumes sending.
            return TxOutcome {
                blocked: true,
                ..TxOutcome::default()
            };
        }
        let outcome = handler::process_tx(
            &active.mem,
            &mut active.tx_queue,
            &mut self.backend,
            &mut self.tx_buf,
            &self.metrics,
            TX_BUDGET,
            &mut self.tx_limiter,
        );
        if outcome.notify {
            NetMetrics::inc(&self.metrics.tx_queue.interrupts);
            if let Err(e) = active.interrupt.trigger(IrqType::Vring) {
                error!("virtio-net {}: cannot interrupt the guest: {e}", self.id);
            }
        }
        snapshot(&self.metrics.tx_queue, &active.tx_queue, &active.mem);
        self.tx_blocked = outcome.blocked;
        if outcome.limited {
            NetMetrics::inc(&self.metrics.tx_throttled);
            arm(&mut self.tx_limit_timer, self.tx_limiter.wait(), &self.id);
        } else if !outcome.blocked
            && (outcome.more || !rearm_kicks(&active.mem, &mut active.tx_queue))
        {
            // Come back after the event loop has served everyone else (or
            // at once for chains posted while kicks were off).
            if let Err(e) = self.queue_evts[TX_QUEUE].write(1) {
                error!("virtio-net {}: cannot re-kick the tx queue: {e}", self.id);
            }
        }
        outcome
    }

    /// Moves packets from the backend to the guest until the backend is
    /// drained, the guest is out of buffers, or the budget is spent.
    /// Returns whether the backend fd should be polled afterwards.
    pub(crate) fn process_rx(&mut self) -> bool {
        if self.backend_failed {
            return false;
        }
        let mergeable = self.acked(VIRTIO_NET_F_MRG_RXBUF);
        let acked_features = self.acked_features;
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let metrics = &*self.metrics;
        let used_before = active.rx_queue.next_used();
        let mut published = 0u32;
        let mut poll = true;
        let mut limited = false;
        for _ in 0..RX_BUDGET {
            // A limited device reads nothing more: packets wait in the
            // TAP's queue (which drops at its length, as a link would).
            if !self.rx_limiter.may_go() {
                limited = true;
                poll = false;
                break;
            }
            let (len, fresh) = match self.rx_pending.take() {
                Some(len) => (len, false),
                None => match read_packet(&mut self.backend, &mut self.rx_buf, metrics) {
                    ReadResult::Packet(len) => (len, true),
                    ReadResult::Skipped => continue,
                    ReadResult::Drained => break,
                },
            };
            let packet = &mut self.rx_buf[..len];
            // read_packet returns at least a header and an Ethernet header.
            let Some(header) = packet.first_chunk_mut::<VNET_HDR_LEN>() else {
                continue;
            };
            if !check_rx_header(header, acked_features) {
                if let Some(n) = NetMetrics::inc_and_log(&metrics.rx_dropped) {
                    warn!(
                        "virtio-net {}: dropping a host packet the guest did not negotiate (header {:02x?}; {n} dropped so far)",
                        self.id, header
                    );
                }
                continue;
            }
            let outcome = active.rx_buffers.deliver(
                &active.mem,
                &mut active.rx_queue,
                packet,
                mergeable,
                metrics,
            );
            published += outcome.published;
            match outcome.delivery {
                RxDelivery::Delivered { .. } => {
                    NetMetrics::inc(&metrics.rx_packets);
                    NetMetrics::add(&metrics.rx_bytes, (len - VNET_HDR_LEN) as u64);
                    self.rx_limiter.consume(1, (len - VNET_HDR_LEN) as u64);
                }
                RxDelivery::Dropped => {
                    NetMetrics::inc(&metrics.rx_dropped);
                }
                RxDelivery::NoBuffers => {
                    if fresh {
                        NetMetrics::inc(&metrics.rx_paused);
                    }
                    self.rx_pending = Some(len);
                    poll = false;
                    break;
                }
            }
        }
        if published > 0
            && handler::needs_notification_since(&active.mem, &mut active.rx_queue, used_before)
        {
            NetMetrics::inc(&metrics.rx_queue.interrupts);
            if let Err(e) = active.interrupt.trigger(IrqType::Vring) {
                error!("virtio-net {}: cannot interrupt the guest: {e}", self.id);
            }
        }
        snapshot(&metrics.rx_queue, &active.rx_queue, &active.mem);
        if limited {
            NetMetrics::inc(&metrics.rx_throttled);
            arm(&mut self.rx_limit_timer, self.rx_limiter.wait(), &self.id);
        }
        // Out of buffers, the device waits for the driver's kick; buffers
        // posted while kicks were off are taken at once.
        if self.rx_pending.is_some() && !rearm_kicks(&active.mem, &mut active.rx_queue) {
            if let Err(e) = self.queue_evts[RX_QUEUE].write(1) {
                error!("virtio-net {}: cannot re-kick the rx queue: {e}", self.id);
            }
        }
        poll
    }

    /// The backend is writable again: sends what it left pending, then
    /// the chains waiting in the tx queue.
    pub(crate) fn backend_writable(&mut self) {
        if !self.tx_blocked {
            return;
        }
        match self.backend.flush() {
            Ok(true) => {
                self.tx_blocked = false;
                self.process_tx_queue_event();
            }
            Ok(false) => {}
            Err(e) => {
                if let Some(n) = NetMetrics::inc_and_log(&self.metrics.tx_errors) {
                    warn!(
                        "virtio-net {}: backend refused a tx frame: {e} ({n} errors so far)",
                        self.id
                    );
                }
                self.tx_blocked = false;
                self.process_tx_queue_event();
            }
        }
    }

    /// The backend reported an error condition: stop receiving for good.
    pub(crate) fn fail_backend(&mut self) {
        if !self.backend_failed {
            error!(
                "virtio-net {}: the backend reported an error, receiving stops",
                self.id
            );
        }
        self.backend_failed = true;
    }
}

/// Arms a direction's rate limiter timer to fire in `wait` (at least 1 µs:
/// zero would disarm it).
/// Asks the driver for a kick when it posts past what the device has
/// taken (with event indexes the driver kicks only past the index the
/// device names; without, this clears nothing that was set). Returns false
/// when chains were posted meanwhile, which no kick will announce.
fn rearm_kicks(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    match queue.enable_notification(mem) {
        Ok(more) => !more,
        Err(e) => {
            warn!("virtio-net: cannot ask for notifications: {e}");
            false
        }
    }
}

fn arm(timer: &mut TimerFd, wait: std::time::Duration, id: &str) {
    let wait = wait.max(std::time::Duration::from_micros(1));
    if let Err(e) = timer.reset(wait, None) {
        error!("virtio-net {id}: cannot arm the rate limiter's timer: {e}");
    }
}

/// Records where `queue` stands in `counters` (avail.idx read from guest
/// memory: one load per pass).
fn snapshot(counters: &super::metrics::QueueCounters, queue: &Queue, mem: &GuestMemoryMmap) {
    let avail = queue
        .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
        .ok()
        .map(|w| w.0);
    counters.snapshot(avail, queue.next_avail(), queue.next_used());
}

enum ReadResult {
    /// A packet of this length is in the buffer.
    Packet(usize),
    /// A packet was read and dropped (too large or too short).
    Skipped,
    /// Nothing more to read now (or reading failed; the next readiness
    /// event retries).
    Drained,
}

fn read_packet<B: NetBackend>(backend: &mut B, buf: &mut [u8], metrics: &NetMetrics) -> ReadResult {
    match backend.read_packet(buf) {
        Ok(len) if len > MAX_PACKET_LEN => {
            if let Some(n) = NetMetrics::inc_and_log(&metrics.rx_dropped) {
                warn!("virtio-net: dropping a {len}-byte host packet, larger than the device's limit ({n} dropped so far)");
            }
            ReadResult::Skipped
        }
        Ok(len) if len < VNET_HDR_LEN + ETH_HLEN => {
            if len == 0 {
                // A datagram backend at EOF would read 0 forever; a TAP
                // never returns 0.
                return ReadResult::Drained;
            }
            if let Some(n) = NetMetrics::inc_and_log(&metrics.rx_dropped) {
                warn!("virtio-net: dropping a {len}-byte host packet, too short for a frame ({n} dropped so far)");
            }
            ReadResult::Skipped
        }
        Ok(len) => ReadResult::Packet(len),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ReadResult::Drained,
        Err(e) if e.kind() == io::ErrorKind::Interrupted => ReadResult::Skipped,
        Err(e) => {
            // A read consumes the packet it failed on (the TAP dequeues it
            // first), so this cannot repeat without new traffic.
            if let Some(n) = NetMetrics::inc_and_log(&metrics.rx_errors) {
                warn!("virtio-net: reading from the backend failed: {e} ({n} errors so far)");
            }
            ReadResult::Drained
        }
    }
}

impl<B: NetBackend> VirtioDevice for Net<B> {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        if self.backend.offloads() {
            AVAIL_FEATURES
        } else {
            AVAIL_FEATURES & !OFFLOAD_FEATURES
        }
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // mac is read-only in virtio 1.x (only legacy drivers write it, and
        // VIRTIO_NET_F_CTRL_MAC_ADDR is not offered); status is read-only.
        warn!(
            "virtio-net {}: guest write of {} bytes to config offset {offset:#x} ignored",
            self.id,
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let [mut rx_queue, mut tx_queue] =
            crate::virtio::activation_queues(self.active.is_some(), queues)?;
        let event_idx = self.acked(virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX);
        rx_queue.set_event_idx(event_idx);
        tx_queue.set_event_idx(event_idx);
        for (index, queue) in [(RX_QUEUE, &rx_queue), (TX_QUEUE, &tx_queue)] {
            if !queue.ready() {
                return Err(ActivateError::QueueNotReady(index));
            }
        }
        let offload = tap_offload_flags(self.acked_features);
        if let Err(e) = self.backend.set_offload(offload) {
            // The host then hands the guest fully checksummed, unsegmented
            // packets only: slower, still correct.
            warn!(
                "virtio-net {}: cannot set backend offloads {offload:#x}: {e}",
                self.id
            );
        }
        self.active = Some(Active {
            mem,
            rx_queue,
            tx_queue,
            rx_buffers: RxBuffers::default(),
            interrupt,
        });
        // Notifications that raced with activation were drained and dropped
        // by the event loop (we were not active yet). Kick both queues once:
        // tx chains already posted get sent, and the rx kick makes the event
        // loop start polling the backend.
        for (index, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = evt.write(1) {
                error!(
                    "virtio-net {}: cannot kick queue {index} after activation: {e}",
                    self.id
                );
            }
        }
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        self.active
            .as_ref()
            .map(|a| vec![a.rx_queue.state(), a.tx_queue.state()])
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        if self.rx_pending.take().is_some() {
            NetMetrics::inc(&self.metrics.rx_dropped);
        }
        // Packets queued in the TAP meanwhile are checked against the next
        // driver's features (check_rx_header); stop producing offloaded ones.
        if let Err(e) = self.backend.set_offload(0) {
            warn!("virtio-net {}: cannot clear backend offloads: {e}", self.id);
        }
    }
}
