//! The virtio-vsock device: config space, activation, and the queue passes
//! that move packets between the virtqueues and the [`Muxer`].

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

use crate::virtio::GuestMemoryMmap;
use log::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::metrics::VsockMetrics;
use super::muxer::{Muxer, MuxerError};
use super::packet::{parse_tx_packet, Op, HEADER_SIZE, MAX_PAYLOAD};
use super::{EVENT_QUEUE, NUM_QUEUES, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use crate::virtio::queue::{pop, Popped};
use crate::virtio::{ActivateError, IrqTrigger, IrqType, VirtioDevice, VIRTIO_F_VERSION_1};

/// Config space: `le64 guest_cid`.
const CONFIG_SPACE_SIZE: usize = 8;
/// Rounds of rx + tx in one pass; each round takes at most a queue's worth
/// of chains, so a pass is bounded whatever the guest posts.
const PASS_ROUNDS: u32 = 4;

/// CIDs 0-2 are reserved (hypervisor, local, host); `u32::MAX` is
/// `VMADDR_CID_ANY`. The spec keeps the upper 32 bits of the field zero.
const MIN_GUEST_CID: u64 = 3;
const MAX_GUEST_CID: u64 = u32::MAX as u64 - 1;

/// What the VMM configures for the vsock device (`PUT /vsock`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VsockConfig {
    /// The guest's CID, in `3..=0xffff_fffe`.
    pub guest_cid: u64,
    /// Host socket the device listens on; guest connections to port `P`
    /// go to `<uds_path>_<P>`.
    pub uds_path: PathBuf,
    /// Device id (`vsock_id`), for logs and metrics.
    pub id: String,
}

/// Errors creating a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The CID is reserved or does not fit the 32 bits guests use.
    #[error("guest CID {0} is invalid: it must be between 3 and 4294967294")]
    InvalidCid(u64),
    /// The host socket could not be set up.
    #[error("cannot set up the host socket")]
    Socket(#[source] MuxerError),
    /// Creating a queue eventfd failed.
    #[error("cannot create a queue eventfd")]
    QueueEvent(#[source] io::Error),
}

/// State that exists only between activation and reset.
struct Active {
    mem: GuestMemoryMmap,
    queues: [Queue; NUM_QUEUES],
    interrupt: Arc<IrqTrigger>,
}

/// A virtio-vsock device bridging guest stream sockets to host Unix
/// sockets.
pub struct Vsock {
    id: String,
    guest_cid: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; NUM_QUEUES],
    queue_evts: [EventFd; NUM_QUEUES],
    active: Option<Active>,
    pub(super) muxer: Muxer,
    /// One packet: header plus the largest payload.
    scratch: Vec<u8>,
    metrics: Arc<VsockMetrics>,
    /// After a transport reset: the event queue's avail index when the
    /// event went out. The guest resets its sockets in a work item, then
    /// re-posts the event's buffer; until the index moves, nothing goes to
    /// its rx queue, or a host connection made right after a restore could
    /// reach the guest first and be reset with the old ones.
    reset_pending: Option<u16>,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("id", &self.id)
            .field("guest_cid", &self.guest_cid)
            .field("muxer", &self.muxer)
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Vsock {
    /// Checks the CID and binds the host socket (replacing a stale socket
    /// file whose process is gone; refusing one that is alive, or a path that
    /// is not a socket).
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&config.guest_cid) {
            return Err(VsockError::InvalidCid(config.guest_cid));
        }
        let metrics = Arc::new(VsockMetrics::default());
        let muxer = Muxer::new(config.guest_cid, &config.uds_path, metrics.clone())
            .map_err(VsockError::Socket)?;
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(VsockError::QueueEvent);
        Ok(Vsock {
            id: config.id.clone(),
            guest_cid: config.guest_cid,
            acked_features: 0,
            config_space: config.guest_cid.to_le_bytes(),
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            queue_evts: [evt()?, evt()?, evt()?],
            active: None,
            muxer,
            scratch: vec![0; HEADER_SIZE + MAX_PAYLOAD],
            metrics,
            reset_pending: None,
        })
    }

    /// The device's counters, to be exported by the VMM.
    pub fn metrics(&self) -> &Arc<VsockMetrics> {
        &self.metrics
    }

    /// The device id from the config.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The guest's CID.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The negotiated features (0 before `FEATURES_OK`).
    pub fn acked_features(&self) -> u64 {
        self.acked_features
    }

    /// Open connections, including host connections still sending their
    /// `CONNECT` line.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Moves packets both ways until neither queue can make progress (or
    /// for at most [`PASS_ROUNDS`] rounds, after which the queues are
    /// re-armed so the event loop serves everything else first), then
    /// interrupts the guest once if it needs it. A no-op before activation.
    pub(crate) fn process_queues(&mut self) {
        let mut notify = false;
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > PASS_ROUNDS {
                self.rearm();
                break;
            }
            notify |= self.process_rx();
            let (tx_done, tx_progress) = self.process_tx();
            notify |= tx_done;
            // Taking tx packets may have queued replies (and freed control
            // space); go around until the tx queue is empty or blocked.
            if !tx_progress {
                break;
            }
        }
        if notify {
            if let Some(active) = &self.active {
                if let Err(e) = active.interrupt.trigger(IrqType::Vring) {
                    error!("virtio-vsock: cannot interrupt the guest: {e}");
                }
            }
        }
    }

    /// Has the event loop come back for the tx queue (which also moves rx)
    /// after it served everything else.
    fn rearm(&self) {
        if let Err(e) = self.queue_evts[TX_QUEUE].write(1) {
            error!("virtio-vsock: cannot re-arm the queues: {e}");
        }
    }

    /// Fills rx buffers with the muxer's packets. Returns whether the guest
    /// needs an interrupt.
    fn process_rx(&mut self) -> bool {
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let mem = &active.mem;
        if let Some(at) = self.reset_pending {
            let now = active.queues[EVENT_QUEUE]
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .map(|i| i.0);
            // An unreadable ring ends the wait: holding traffic forever
            // would be worse than the race.
            if matches!(now, Ok(i) if i == at) {
                return false;
            }
            self.reset_pending = None;
        }
        let queue = &mut active.queues[RX_QUEUE];
        let mut used = false;
        while self.muxer.has_rx() {
            let chain = match pop(queue, mem) {
                None => {
                    VsockMetrics::inc(&self.metrics.rx_queue_stalls);
                    break;
                }
                Some(Popped::Refused { head, why }) => {
                    warn!("virtio-vsock: refusing rx chain {head}: {why}");
                    VsockMetrics::inc(&self.metrics.rx_bad_buffers);
                    if let Err(e) = queue.add_used(mem, head, 0) {
                        warn!("virtio-vsock: cannot return rx descriptor {head}: {e}");
                    }
                    used = true;
                    continue;
                }
                Some(Popped::Chain(chain)) => chain,
            };
            let head = chain.head_index();
            let written = match chain.writer(mem) {
                Ok(mut writer) if writer.available_bytes() >= HEADER_SIZE => {
                    let room = (writer.available_bytes() - HEADER_SIZE).min(MAX_PAYLOAD);
                    let payload = &mut self.scratch[..room];
                    let Some(hdr) = self.muxer.recv_pkt(payload) else {
                        // Stale rx queue entries: nothing to send after all.
                        queue.go_to_previous_position();
                        break;
                    };
                    let len = hdr.len as usize;
                    // The writer's slices were checked when it was built
                    // and hold header + room >= header + len bytes.
                    if let Err(e) = writer
                        .write_all(&hdr.to_bytes())
                        .and_then(|()| writer.write_all(&payload[..len]))
                    {
                        error!("virtio-vsock: cannot write an rx packet: {e}");
                    }
                    VsockMetrics::inc(&self.metrics.rx_packets);
                    VsockMetrics::add(&self.metrics.rx_bytes, len as u64);
                    if hdr.op() == Some(Op::Rst) {
                        VsockMetrics::inc(&self.metrics.resets_sent);
                    }
                    writer.bytes_written()
                }
                Ok(_) | Err(_) => {
                    warn!("virtio-vsock: rx buffer {head} is unusable (too small or outside guest memory)");
                    VsockMetrics::inc(&self.metrics.rx_bad_buffers);
                    0
                }
            };
            // Bounded by the chain's length, itself a u32.
            let len = u32::try_from(written).unwrap_or(u32::MAX);
            if let Err(e) = queue.add_used(mem, head, len) {
                warn!("virtio-vsock: cannot return rx descriptor {head}: {e}");
            }
            used = true;
        }
        used && needs_notification(queue, mem)
    }

    /// Takes packets from the tx queue while there is room for the replies
    /// they may cause. Returns (guest needs an interrupt, any chain taken).
    fn process_tx(&mut self) -> (bool, bool) {
        let Some(active) = self.active.as_mut() else {
            return (false, false);
        };
        let mem = &active.mem;
        let queue = &mut active.queues[TX_QUEUE];
        let mut used = false;
        while !self.muxer.control_full() {
            let chain = match pop(queue, mem) {
                None => break,
                Some(Popped::Refused { head, why }) => {
                    warn!("virtio-vsock: refusing tx chain {head}: {why}");
                    VsockMetrics::inc(&self.metrics.tx_malformed);
                    if let Err(e) = queue.add_used(mem, head, 0) {
                        warn!("virtio-vsock: cannot return tx descriptor {head}: {e}");
                    }
                    used = true;
                    continue;
                }
                Some(Popped::Chain(chain)) => chain,
            };
            let head = chain.head_index();
            // Gather the chain's readable bytes: header and payload may be
            // split across descriptors in any way.
            let n = match chain.reader(mem) {
                Ok(mut reader) => read_up_to(&mut reader, &mut self.scratch),
                Err(e) => {
                    warn!("virtio-vsock: tx chain {head} is outside guest memory: {e}");
                    0
                }
            };
            VsockMetrics::inc(&self.metrics.tx_packets);
            match parse_tx_packet(&self.scratch[..n], self.guest_cid) {
                Ok((hdr, op, payload)) => {
                    VsockMetrics::add(&self.metrics.tx_bytes, payload.len() as u64);
                    self.muxer.send_pkt(&hdr, op, payload);
                }
                Err((hdr, e)) => {
                    warn!("virtio-vsock: malformed packet from the guest: {e}");
                    VsockMetrics::inc(&self.metrics.tx_malformed);
                    if let (Some(hdr), true) = (hdr, e.wants_reset()) {
                        // Resetting a reset would only start a ping-pong.
                        if hdr.op() != Some(Op::Rst) {
                            self.muxer.queue_control(hdr.reset_reply());
                        }
                    }
                }
            }
            if let Err(e) = queue.add_used(mem, head, 0) {
                warn!("virtio-vsock: cannot return tx descriptor {head}: {e}");
            }
            used = true;
        }
        (used && needs_notification(queue, mem), used)
    }
}

/// Reads from `reader` until `buf` is full or the reader is exhausted.
fn read_up_to<R: Read>(reader: &mut R, buf: &mut [u8]) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    n
}

fn needs_notification(queue: &mut Queue, mem: &GuestMemoryMmap) -> bool {
    queue.needs_notification(mem).unwrap_or_else(|e| {
        // A spurious interrupt is harmless; a lost one stalls the guest.
        warn!("virtio-vsock: cannot read the used event index: {e}");
        true
    })
}

impl Vsock {
    /// Tells the guest driver that every connection is gone, as
    /// Firecracker does after restoring a snapshot (the host ends of the
    /// guest's connections did not survive): a TRANSPORT_RESET event in
    /// the event queue's first buffer. Returns whether it was delivered
    /// (an inactive device or an empty event queue has no one to tell).
    pub fn transport_reset(&mut self) -> bool {
        self.muxer.reset();
        // The host streams are closed once the event loop deregistered
        // them; wake it.
        if let Err(e) = self.queue_evts[EVENT_QUEUE].write(1) {
            error!("virtio-vsock: cannot wake the event loop after a transport reset: {e}");
        }
        let Some(active) = self.active.as_mut() else {
            return false;
        };
        let (mem, queue) = (&active.mem, &mut active.queues[EVENT_QUEUE]);
        let (head, len) = match pop(queue, mem) {
            None => {
                warn!("virtio-vsock: no event buffer for the transport reset");
                return false;
            }
            Some(Popped::Refused { head, why }) => {
                warn!("virtio-vsock: refusing event chain {head}: {why}");
                (head, 0)
            }
            Some(Popped::Chain(chain)) => {
                let head = chain.head_index();
                let event = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET.to_le_bytes();
                let written = chain
                    .writer(mem)
                    .ok()
                    .filter(|w| w.available_bytes() >= event.len())
                    .is_some_and(|mut w| w.write_all(&event).is_ok());
                if !written {
                    warn!("virtio-vsock: event buffer {head} is unusable");
                }
                (head, if written { event.len() as u32 } else { 0 })
            }
        };
        if let Err(e) = queue.add_used(mem, head, len) {
            warn!("virtio-vsock: cannot return event descriptor {head}: {e}");
            return false;
        }
        if len > 0 {
            self.reset_pending = queue
                .avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .ok()
                .map(|i| i.0);
        }
        if needs_notification(queue, mem) {
            if let Err(e) = active.interrupt.trigger(IrqType::Vring) {
                error!("virtio-vsock: cannot interrupt the guest: {e}");
            }
        }
        len > 0
    }
}

/// `struct virtio_vsock_event`'s id for "all connections are gone".
const VIRTIO_VSOCK_EVENT_TRANSPORT_RESET: u32 = 0;

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn avail_features(&self) -> u64 {
        // Stream sockets only: no VIRTIO_VSOCK_F_SEQPACKET.
        1u64 << VIRTIO_F_VERSION_1
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features();
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "virtio-vsock: guest write of {} bytes to config offset {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let queues: [Queue; NUM_QUEUES] =
            crate::virtio::activation_queues(self.active.is_some(), queues)?;
        if let Some(index) = queues.iter().position(|q| !q.ready()) {
            return Err(ActivateError::QueueNotReady(index));
        }
        self.active = Some(Active {
            mem,
            queues,
            interrupt,
        });
        // Notifications that raced with activation were drained and ignored;
        // kick both data queues so buffers already posted are seen, and
        // packets queued by host connections meanwhile go out.
        for index in [RX_QUEUE, TX_QUEUE] {
            if let Err(e) = self.queue_evts[index].write(1) {
                error!("virtio-vsock: cannot kick queue {index} after activation: {e}");
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
            .map(|a| a.queues.iter().map(|q| q.state()).collect())
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.reset_pending = None;
        // Every connection dies with the guest driver's state. The host
        // streams are closed once the event loop deregistered them; wake it.
        self.muxer.reset();
        if let Err(e) = self.queue_evts[EVENT_QUEUE].write(1) {
            error!("virtio-vsock: cannot wake the event loop after reset: {e}");
        }
    }
}
