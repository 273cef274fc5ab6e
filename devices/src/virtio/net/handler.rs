//! Processing the virtio-net queues.
//!
//! Pure over its inputs: guest memory, a queue, a [`NetBackend`] (tx only)
//! and the metrics. It never signals anything itself; it reports what it
//! published so the caller decides on the interrupt. That keeps it testable
//! without an event loop and without KVM.
//!
//! A malformed chain is returned to the driver with length 0 and counted;
//! the queue moves on, so one bad chain cannot wedge the device.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;

use crate::virtio::queue::{pop, Popped};
use crate::virtio::GuestMemoryMmap;
use log::warn;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};

use super::chain::{read_tx_frame, RxChain};
use super::metrics::NetMetrics;
use super::tap::NetBackend;
use super::{NUM_BUFFERS_OFFSET, VNET_HDR_LEN};
use crate::rate_limiter::RateLimiter;

/// Result of one pass over the tx queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TxOutcome {
    /// Chains returned to the driver through the used ring.
    pub completed: u32,
    /// Whether the driver must be interrupted.
    pub notify: bool,
    /// The pass stopped at its budget; chains may be left.
    pub more: bool,
    /// The backend cannot take more now and wants the device to wait for
    /// it ([`NetBackend::backpressure`]): chains are left in the ring.
    pub blocked: bool,
    /// The rate limiter stopped the pass: chains may be left.
    pub limited: bool,
}

/// Sends every chain available in the tx queue (at most `budget`, and
/// while `limiter` lets frames go) through `backend` and returns them
/// through the used ring, each with length 0 (the device writes nothing
/// into tx buffers).
///
/// `buf` is the bounce buffer; its length is the largest packet accepted.
/// Frames the backend cannot take are dropped, as a NIC with a full queue
/// would: the guest is never blocked on the host.
pub fn process_tx<B: NetBackend>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    backend: &mut B,
    buf: &mut [u8],
    metrics: &NetMetrics,
    budget: u32,
    limiter: &mut RateLimiter,
) -> TxOutcome {
    let mut outcome = TxOutcome::default();
    loop {
        if outcome.completed >= budget {
            outcome.more = true;
            break;
        }
        // Asked before the pop: a frame's size is known only once read,
        // and a frame the bucket cannot cover whole is owed, not held.
        if !limiter.may_go() {
            outcome.limited = true;
            break;
        }
        // pop_descriptor_chain refuses an avail index more than a queue size
        // ahead of us, so a lying driver ends the loop instead of spinning it.
        let (head, frame) = match pop(queue, mem) {
            None => break,
            Some(Popped::Chain(chain)) => {
                let head = chain.head_index();
                (
                    head,
                    read_tx_frame(mem, chain, buf).map_err(|e| e.to_string()),
                )
            }
            Some(Popped::Refused { head, why }) => (head, Err(why.to_owned())),
        };
        match frame {
            Ok(len) => {
                if send(backend, &buf[..len], metrics) == Sent::Blocked {
                    // Taken again when the backend is writable.
                    queue.go_to_previous_position();
                    outcome.blocked = true;
                    break;
                }
                limiter.consume(1, len.saturating_sub(VNET_HDR_LEN) as u64);
            }
            Err(e) => {
                if let Some(n) = NetMetrics::inc_and_log(&metrics.tx_malformed) {
                    warn!("virtio-net: malformed tx chain {head}: {e} ({n} so far)");
                }
            }
        }
        match queue.add_used(mem, head, 0) {
            Ok(()) => outcome.completed += 1,
            // Only a head index outside the table gets here (its chain was
            // empty); there is no valid used entry to give back for it.
            Err(e) => warn!("virtio-net: cannot return tx descriptor {head}: {e}"),
        }
    }
    if backend.backpressure() && !outcome.blocked {
        // The end of the last frame may still be waiting to go.
        match backend.flush() {
            Ok(done) => outcome.blocked = !done,
            Err(e) => {
                if let Some(n) = NetMetrics::inc_and_log(&metrics.tx_errors) {
                    warn!("virtio-net: backend refused a tx frame: {e} ({n} errors so far)");
                }
            }
        }
    }
    outcome.notify = outcome.completed > 0 && needs_notification(mem, queue);
    outcome
}

/// What became of a packet offered to the backend.
#[derive(Debug, PartialEq, Eq)]
enum Sent {
    /// Sent, or dropped and counted.
    Done,
    /// Not taken; the backend wants it offered again later.
    Blocked,
}

/// Writes one packet to the backend and accounts for it.
fn send<B: NetBackend>(backend: &mut B, packet: &[u8], metrics: &NetMetrics) -> Sent {
    match backend.write_packet(packet) {
        Ok(n) if n == packet.len() => {
            NetMetrics::inc(&metrics.tx_packets);
            NetMetrics::add(&metrics.tx_bytes, (packet.len() - VNET_HDR_LEN) as u64);
        }
        Ok(written) => {
            if let Some(n) = NetMetrics::inc_and_log(&metrics.tx_errors) {
                warn!(
                    "virtio-net: short write to the backend ({written} of {} bytes; {n} errors so far)",
                    packet.len()
                );
            }
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
            if backend.backpressure() {
                NetMetrics::inc(&metrics.tx_blocked);
                return Sent::Blocked;
            }
            NetMetrics::inc(&metrics.tx_dropped);
        }
        Err(e) => {
            if let Some(n) = NetMetrics::inc_and_log(&metrics.tx_errors) {
                warn!("virtio-net: backend refused a tx frame: {e} ({n} errors so far)");
            }
        }
    }
    Sent::Done
}

/// Whether the driver wants an interrupt for what was just published.
pub(crate) fn needs_notification(mem: &GuestMemoryMmap, queue: &mut Queue) -> bool {
    queue.needs_notification(mem).unwrap_or_else(|e| {
        // When in doubt, interrupt: a spurious interrupt is harmless, a lost
        // one stalls the guest's network.
        warn!("virtio-net: cannot read the used event index: {e}");
        true
    })
}

/// Whether the driver wants an interrupt for the used entries published
/// since the used index was `old`. With `VIRTIO_RING_F_EVENT_IDX` it is
/// read from the driver's `used_event`, counted from `old` here and not
/// from the queue's own tally, which [`publish_used`] bypasses for a
/// frame of several buffers.
pub(crate) fn needs_notification_since(mem: &GuestMemoryMmap, queue: &mut Queue, old: u16) -> bool {
    if !queue.event_idx_enabled() {
        return needs_notification(mem, queue);
    }
    // The used entries and index are written before used_event is read.
    std::sync::atomic::fence(Ordering::SeqCst);
    let new = std::num::Wrapping(queue.next_used());
    // virtq_avail: flags, idx, ring[size], then used_event.
    let at = queue
        .avail_ring()
        .checked_add(4 + 2 * u64::from(queue.size()))
        .map(GuestAddress);
    let used_event = at.and_then(|a| mem.load::<u16>(a, Ordering::Relaxed).ok());
    match used_event {
        Some(e) => {
            let e = std::num::Wrapping(u16::from_le(e));
            new - e - std::num::Wrapping(1) < new - std::num::Wrapping(old)
        }
        None => {
            warn!("virtio-net: cannot read the used event index");
            true
        }
    }
}

/// What happened to a frame offered to the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxDelivery {
    /// Written to the guest's buffers and published in `buffers` used
    /// entries (more than one only with mergeable buffers).
    Delivered {
        /// Buffers (chains) the frame spans: the header's `num_buffers`.
        buffers: u16,
    },
    /// The guest has not posted enough buffers yet. Nothing was published
    /// for the frame; offer it again when the driver notifies the queue.
    NoBuffers,
    /// The frame can never be delivered (larger than the chain at the head
    /// of the queue without mergeable buffers, or than all the buffers a
    /// full queue holds with them), or writing it failed. It is gone; the
    /// guest's buffers are kept unless the write failed.
    Dropped,
}

/// Outcome of offering one frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RxOutcome {
    /// What happened to the frame.
    pub delivery: RxDelivery,
    /// Used entries published (frame buffers plus malformed chains
    /// returned on the way); the caller interrupts the guest if non-zero.
    pub published: u32,
}

/// The rx chains the device has popped from the queue but not used yet.
///
/// Chains are popped and validated as a frame needs them and kept here
/// while there are not enough for it, so nothing is ever pushed back into
/// the avail ring, and a malformed chain met on the way is returned at once
/// without disturbing the ones kept. At most a queue size of chains is
/// kept.
#[derive(Debug, Default)]
pub struct RxBuffers {
    chains: VecDeque<RxChain>,
    capacity: usize,
}

impl RxBuffers {
    /// Chains held.
    pub fn len(&self) -> usize {
        self.chains.len()
    }

    /// Whether no chain is held.
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty()
    }

    /// Total bytes the held chains can take.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Pops chains until `needed` bytes are held (or one chain, if `needed`
    /// is 0), the queue is empty, or a queue size of chains is held. Returns
    /// the number of malformed chains returned to the driver.
    fn fill(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        needed: usize,
        metrics: &NetMetrics,
    ) -> u32 {
        let limit = usize::from(queue.size());
        let mut returned = 0;
        // Also bounds the pops of one call: a driver re-posting malformed
        // chains as fast as we return them cannot keep us here.
        let mut pops = 0;
        while (self.chains.is_empty() || self.capacity < needed)
            && self.chains.len() < limit
            && pops < limit
        {
            let (head, parsed) = match pop(queue, mem) {
                None => break,
                Some(Popped::Chain(chain)) => {
                    let head = chain.head_index();
                    (head, RxChain::parse(mem, chain).map_err(|e| e.to_string()))
                }
                Some(Popped::Refused { head, why }) => (head, Err(why.to_owned())),
            };
            pops += 1;
            match parsed {
                Ok(chain) => {
                    self.capacity += chain.capacity;
                    self.chains.push_back(chain);
                }
                Err(e) => {
                    if let Some(n) = NetMetrics::inc_and_log(&metrics.rx_malformed) {
                        warn!("virtio-net: malformed rx chain {head}: {e} ({n} so far)");
                    }
                    match queue.add_used(mem, head, 0) {
                        Ok(()) => returned += 1,
                        Err(e) => warn!("virtio-net: cannot return rx descriptor {head}: {e}"),
                    }
                }
            }
        }
        returned
    }

    /// Offers `packet` (header and frame) to the guest.
    ///
    /// Sets `num_buffers` in the packet's header. With `mergeable`
    /// (`VIRTIO_NET_F_MRG_RXBUF`) the packet is spread over as many chains
    /// as needed and their used entries are published together; without it
    /// it must fit in the next chain.
    pub fn deliver(
        &mut self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        packet: &mut [u8],
        mergeable: bool,
        metrics: &NetMetrics,
    ) -> RxOutcome {
        let needed = if mergeable { packet.len() } else { 0 };
        let mut published = self.fill(mem, queue, needed, metrics);
        let outcome = |delivery, published| RxOutcome {
            delivery,
            published,
        };

        let count = if mergeable {
            if self.capacity < packet.len() {
                // A full queue's worth of buffers cannot take it: waiting
                // would wait forever.
                let hopeless = self.chains.len() >= usize::from(queue.size());
                let delivery = if hopeless {
                    RxDelivery::Dropped
                } else {
                    RxDelivery::NoBuffers
                };
                return outcome(delivery, published);
            }
            let mut count = 0;
            let mut held = 0;
            while held < packet.len() {
                held += self.chains[count].capacity;
                count += 1;
            }
            count
        } else {
            match self.chains.front() {
                None => return outcome(RxDelivery::NoBuffers, published),
                Some(chain) if chain.capacity < packet.len() => {
                    return outcome(RxDelivery::Dropped, published)
                }
                Some(_) => 1,
            }
        };

        // At most a queue size (<= 32768) of chains.
        let buffers = u16::try_from(count).unwrap_or(u16::MAX);
        packet[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&buffers.to_le_bytes());

        let mut used = Vec::with_capacity(count);
        let mut offset = 0;
        let mut failed = false;
        for chain in self.chains.drain(..count) {
            self.capacity -= chain.capacity;
            let written = if failed {
                0
            } else {
                match chain.write(mem, &packet[offset..]) {
                    Ok(n) => n,
                    Err(e) => {
                        // Unreachable while guest memory stays as validated;
                        // if it happens, every buffer goes back empty so the
                        // driver drops each one rather than misparse a
                        // partial frame.
                        warn!("virtio-net: cannot write an rx frame: {e}");
                        failed = true;
                        0
                    }
                }
            };
            offset += written;
            // `written` is at most the packet length, far below 4 GiB.
            used.push((chain.head, u32::try_from(written).unwrap_or(u32::MAX)));
        }
        if failed {
            for entry in &mut used {
                entry.1 = 0;
            }
            NetMetrics::inc(&metrics.rx_errors);
        }
        match publish_used(mem, queue, &used) {
            Ok(()) => published += used.len() as u32,
            Err(e) => warn!("virtio-net: cannot publish rx buffers: {e}"),
        }
        let delivery = if failed {
            RxDelivery::Dropped
        } else {
            RxDelivery::Delivered { buffers }
        };
        outcome(delivery, published)
    }
}

/// Why used entries could not be published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// `add_used` failed.
    #[error("cannot add a used entry")]
    Queue(#[source] virtio_queue::Error),
    /// Writing the used ring failed.
    #[error("cannot write the used ring")]
    Memory(#[source] vm_memory::GuestMemoryError),
    /// The used ring address overflows.
    #[error("used ring address overflows")]
    AddressOverflow,
}

/// Publishes `used` (head, length) entries with a single used-index update.
///
/// A mergeable rx frame spans several entries, and Linux drops the frame
/// when it finds fewer than `num_buffers` of them (`rx error: N buffers out
/// of M missing`); `add_used` moves the index once per entry, so a driver
/// polling concurrently could see a partial frame. The entries are written
/// first, then the index is stored with release ordering, as `add_used`
/// does for one.
///
/// This bypasses the queue's count of added entries, which its own
/// `needs_notification` uses with `VIRTIO_RING_F_EVENT_IDX`: the rx path
/// decides with [`needs_notification_since`] instead.
pub fn publish_used(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    used: &[(u16, u32)],
) -> Result<(), PublishError> {
    match used {
        [] => return Ok(()),
        [(head, len)] => {
            return queue
                .add_used(mem, *head, *len)
                .map_err(PublishError::Queue)
        }
        _ => {}
    }
    let size = queue.size();
    let ring = GuestAddress(queue.used_ring());
    let next_used = queue.next_used();
    let mut index = next_used;
    for &(head, len) in used {
        let slot = u64::from(index % size);
        // struct virtq_used_elem { le32 id; le32 len; } after flags and idx.
        let elem = ring
            .checked_add(4 + 8 * slot)
            .ok_or(PublishError::AddressOverflow)?;
        let elem_len = elem.checked_add(4).ok_or(PublishError::AddressOverflow)?;
        mem.write_obj(u32::from(head).to_le(), elem)
            .map_err(PublishError::Memory)?;
        mem.write_obj(len.to_le(), elem_len)
            .map_err(PublishError::Memory)?;
        index = index.wrapping_add(1);
    }
    let idx_addr = ring.checked_add(2).ok_or(PublishError::AddressOverflow)?;
    mem.store(index.to_le(), idx_addr, Ordering::Release)
        .map_err(PublishError::Memory)?;
    queue.set_next_used(index);
    Ok(())
}

/// Checks the header of a packet read from the backend against the
/// features the guest acked, fixing what can be fixed.
///
/// The TAP only produces what its offload flags allow, and those follow the
/// acked features ([`tap_offload_flags`](super::tap_offload_flags)); but
/// packets queued before a renegotiation, or a backend that ignores the
/// flags, must still not reach a driver that cannot parse them. Returns
/// false for a packet to drop: it needs checksum or segmentation offload
/// the guest did not accept. Without `VIRTIO_NET_F_GUEST_CSUM` the flags
/// are cleared (virtio 1.2 5.1.6.4.1: the device sets them to zero), which
/// drops a harmless `DATA_VALID` hint.
pub fn check_rx_header(header: &mut [u8; VNET_HDR_LEN], acked_features: u64) -> bool {
    use virtio_bindings::virtio_net::{
        VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_ECN, VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6, VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_HDR_F_NEEDS_CSUM,
        VIRTIO_NET_HDR_GSO_ECN, VIRTIO_NET_HDR_GSO_NONE, VIRTIO_NET_HDR_GSO_TCPV4,
        VIRTIO_NET_HDR_GSO_TCPV6, VIRTIO_NET_HDR_GSO_UDP,
    };
    let acked = |bit: u32| acked_features & (1u64 << bit) != 0;
    let flags = u32::from(header[0]);
    let gso_type = u32::from(header[1]);

    if !acked(VIRTIO_NET_F_GUEST_CSUM) {
        if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
            return false;
        }
        header[0] = 0;
    }
    if gso_type & VIRTIO_NET_HDR_GSO_ECN != 0 && !acked(VIRTIO_NET_F_GUEST_ECN) {
        return false;
    }
    match gso_type & !VIRTIO_NET_HDR_GSO_ECN {
        VIRTIO_NET_HDR_GSO_NONE => true,
        VIRTIO_NET_HDR_GSO_TCPV4 => acked(VIRTIO_NET_F_GUEST_TSO4),
        VIRTIO_NET_HDR_GSO_TCPV6 => acked(VIRTIO_NET_F_GUEST_TSO6),
        VIRTIO_NET_HDR_GSO_UDP => acked(VIRTIO_NET_F_GUEST_UFO),
        // UDP_L4 (USO) and anything newer: never offered.
        _ => false,
    }
}
