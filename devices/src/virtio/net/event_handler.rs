//! Event-loop glue: the queue eventfds and the backend fd wake the event
//! manager, which calls into [`Net`].
//!
//! The VMM adds the device to its `EventManager` as `Arc<Mutex<Net>>`
//! (event-manager implements `MutEventSubscriber` for `Arc<Mutex<T>>`), the
//! same `Arc` it gave the MMIO transport. Registered fds, by token:
//!
//! - [`RX_QUEUE_TOKEN`]: the rx queue eventfd, from `init` on, for good;
//! - [`TX_QUEUE_TOKEN`]: the tx queue eventfd, likewise;
//! - [`RX_LIMIT_TOKEN`], [`TX_LIMIT_TOKEN`]: the rate limiters' timers,
//!   from `init` on; each fires once a direction its limit stopped may go
//!   on;
//! - [`BACKEND_TOKEN`]: the TAP fd (`EPOLLIN`, level-triggered), only while
//!   the device is active and has somewhere to put packets: added on the
//!   first rx queue event after activation (activation kicks that queue),
//!   removed while a packet waits for guest buffers, while inactive, and
//!   for good after the fd reports `EPOLLERR`/`EPOLLHUP`.

use std::io;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::{
    Net, BACKEND_TOKEN, RX_LIMIT_TOKEN, RX_QUEUE_TOKEN, TX_LIMIT_TOKEN, TX_QUEUE_TOKEN,
};
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

    /// Puts the backend fd in the epoll set for what the device waits
    /// for: packets to read (`rx`), room to write (a blocked tx), both,
    /// or neither (then it leaves the set).
    fn poll_backend(&mut self, ops: &mut EventOps, rx: bool) {
        let mut want = EventSet::empty();
        if rx {
            want |= EventSet::IN;
        }
        if self.tx_blocked {
            want |= EventSet::OUT;
        }
        let fd = self.backend().as_raw_fd();
        let result = match self.backend_interest {
            Some(have) if have == want => return,
            None if want.is_empty() => return,
            Some(have) if want.is_empty() => {
                ops.remove(Events::with_data_raw(fd, BACKEND_TOKEN, have))
            }
            Some(_) => ops.modify(Events::with_data_raw(fd, BACKEND_TOKEN, want)),
            None => ops.add(Events::with_data_raw(fd, BACKEND_TOKEN, want)),
        };
        match result {
            Ok(()) => self.backend_interest = (!want.is_empty()).then_some(want),
            // Retried on the next queue event; a failed remove leaves
            // level-triggered readiness to call us again.
            Err(e) => error!(
                "virtio-net {}: cannot poll the backend fd for {want:?}: {e}",
                self.id()
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
        let [rx, tx] = self.limit_timers();
        for (timer, token) in [(rx, RX_LIMIT_TOKEN), (tx, TX_LIMIT_TOKEN)] {
            if let Err(e) = ops.add(Events::with_data(timer, token, EventSet::IN)) {
                error!(
                    "virtio-net {}: cannot register a rate limiter's timer: {e}",
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
                let rx = self.process_rx();
                self.poll_backend(ops, rx);
            }
            RX_LIMIT_TOKEN => {
                self.clear_limit_timer(RX_QUEUE);
                let rx = self.process_rx();
                self.poll_backend(ops, rx);
            }
            TX_LIMIT_TOKEN => {
                self.clear_limit_timer(TX_QUEUE);
                self.process_tx_queue_event();
                let rx = self.is_polling_backend();
                self.poll_backend(ops, rx);
            }
            TX_QUEUE_TOKEN => {
                NetMetrics::inc(&self.metrics().queue_events);
                NetMetrics::inc(&self.metrics().tx_queue.notifications);
                self.drain_queue_event(TX_QUEUE);
                self.process_tx_queue_event();
                let rx = self.is_polling_backend();
                self.poll_backend(ops, rx);
            }
            BACKEND_TOKEN => {
                NetMetrics::inc(&self.metrics().backend_events);
                if event_set.intersects(EventSet::ERROR | EventSet::HANG_UP) {
                    // Level-triggered and never clearing (a deleted TAP
                    // polls EPOLLERR forever): stop watching it, or the
                    // event loop would spin.
                    self.fail_backend();
                    self.tx_blocked = false;
                    self.poll_backend(ops, false);
                    return;
                }
                if event_set.contains(EventSet::OUT) {
                    self.backend_writable();
                }
                let rx = if event_set.contains(EventSet::IN) {
                    self.process_rx()
                } else {
                    self.is_polling_backend()
                };
                self.poll_backend(ops, rx);
            }
            other => warn!("virtio-net {}: event with unknown token {other}", self.id()),
        }
    }
}
