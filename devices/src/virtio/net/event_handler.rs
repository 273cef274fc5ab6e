//! Event-loop glue: the queue eventfds and the backend fd wake the event
//! manager, which calls into [`Net`].
//!
//! The VMM adds the device to its `EventManager` as `Arc<Mutex<Net>>`
//! (event-manager implements `MutEventSubscriber` for `Arc<Mutex<T>>`), the
//! same `Arc` it gave the MMIO transport. Registered fds, by token:
//!
//! - [`RX_QUEUE_TOKEN`]: the rx queue eventfd, from `init` on, for good;
//! - [`TX_QUEUE_TOKEN`]: the tx queue eventfd, likewise;
//! - [`BACKEND_TOKEN`]: the TAP fd (`EPOLLIN`, level-triggered), only while
//!   the device is active and has somewhere to put packets: added on the
//!   first rx queue event after activation (activation kicks that queue),
//!   removed while a packet waits for guest buffers, while inactive, and
//!   for good after the fd reports `EPOLLERR`/`EPOLLHUP`.

use std::io;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::{Net, BACKEND_TOKEN, RX_QUEUE_TOKEN, TX_QUEUE_TOKEN};
use super::metrics::NetMetrics;
use super::tap::NetBackend;
use super::{RX_QUEUE, TX_QUEUE};
use crate::virtio::VirtioDevice;

impl<B: NetBackend> Net<B> {
    /// Drains a queue eventfd. Done before serving the queue, so a
    /// notification landing during processing wakes us again instead of
    /// being swallowed.
    fn drain_queue_event(&self, index: usize) {
        if let Err(e) = self.queue_events()[index].read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                error!(
                    "virtio-net {}: cannot read queue {index} eventfd: {e}",
                    self.id()
                );
            }
        }
    }

    /// Adds the backend fd to, or removes it from, the epoll set.
    fn poll_backend(&mut self, ops: &mut EventOps, poll: bool) {
        if poll == self.polling_backend {
            return;
        }
        let events = Events::with_data_raw(self.backend().as_raw_fd(), BACKEND_TOKEN, EventSet::IN);
        let result = if poll {
            ops.add(events)
        } else {
            ops.remove(events)
        };
        match result {
            Ok(()) => self.polling_backend = poll,
            // Adding is retried on the next rx queue event; a failed remove
            // leaves level-triggered readiness to call us again.
            Err(e) => error!(
                "virtio-net {}: cannot {} the backend fd: {e}",
                self.id(),
                if poll { "poll" } else { "stop polling" }
            ),
        }
    }
}

impl<B: NetBackend> MutEventSubscriber for Net<B> {
    fn init(&mut self, ops: &mut EventOps) {
        // Registered once for the device's lifetime: the eventfds outlive
        // resets, and notifications while inactive are drained and ignored.
        for (index, token) in [(RX_QUEUE, RX_QUEUE_TOKEN), (TX_QUEUE, TX_QUEUE_TOKEN)] {
            let evt = &self.queue_events()[index];
            if let Err(e) = ops.add(Events::with_data(evt, token, EventSet::IN)) {
                error!(
                    "virtio-net {}: cannot register queue {index} eventfd: {e}",
                    self.id()
                );
            }
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let event_set = events.event_set();
        match events.data() {
            RX_QUEUE_TOKEN => {
                NetMetrics::inc(&self.metrics().queue_events);
                NetMetrics::inc(&self.metrics().rx_queue.notifications);
                self.drain_queue_event(RX_QUEUE);
                // The guest posted rx buffers: offer the pending packet, and
                // read on while there is room.
                let poll = self.process_rx();
                self.poll_backend(ops, poll);
            }
            TX_QUEUE_TOKEN => {
                NetMetrics::inc(&self.metrics().queue_events);
                NetMetrics::inc(&self.metrics().tx_queue.notifications);
                self.drain_queue_event(TX_QUEUE);
                self.process_tx_queue_event();
            }
            BACKEND_TOKEN => {
                NetMetrics::inc(&self.metrics().backend_events);
                if event_set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // Level-triggered and never clearing (a deleted TAP
                    // polls EPOLLERR forever): stop watching it, or the
                    // event loop would spin.
                    self.fail_backend();
                    self.poll_backend(ops, false);
                    return;
                }
                let poll = self.process_rx();
                self.poll_backend(ops, poll);
            }
            other => warn!("virtio-net {}: event with unknown token {other}", self.id()),
        }
    }
}
