//! Event-loop glue: the three queue eventfds, the listening socket and every
//! host stream wake the event manager, which calls into [`Vsock`].
//!
//! The VMM adds the device as `Arc<Mutex<Vsock>>`, the same `Arc` it gave
//! the MMIO transport. The queue eventfds are registered once in `init`; the
//! listener and host streams come and go through the muxer's
//! [`FdChange`]s, applied with `EventOps` at the end of every `process`.
//! `reset` (on the vCPU thread) signals the event-queue eventfd so that the
//! streams it dropped are deregistered and closed promptly.

use std::io;
use std::os::fd::AsRawFd;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{debug, error, warn};

use super::device::Vsock;
use super::metrics::VsockMetrics;
use super::muxer::FdChange;
use super::{RX_QUEUE, TX_QUEUE};
use crate::virtio::VirtioDevice;

impl Vsock {
    /// Applies the muxer's pending registration changes. An fd epoll
    /// refuses is handed back to the muxer, which gives up on it (and may
    /// queue more changes, hence the loop).
    fn apply_fd_changes(&mut self, ops: &mut EventOps) {
        loop {
            let changes = self.muxer.take_fd_changes();
            if changes.is_empty() {
                return;
            }
            for change in changes {
                match change {
                    FdChange::Add { fd, events } => {
                        if let Err(e) = ops.add(Events::new_raw(fd, events)) {
                            error!("virtio-vsock: cannot watch fd {fd}: {e:?}");
                            self.muxer.register_failed(fd);
                        }
                    }
                    FdChange::Modify { fd, events } => {
                        if let Err(e) = ops.modify(Events::new_raw(fd, events)) {
                            error!("virtio-vsock: cannot change the events of fd {fd}: {e:?}");
                        }
                    }
                    FdChange::Remove { fd, stream } => {
                        if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                            error!("virtio-vsock: cannot stop watching fd {fd}: {e:?}");
                        }
                        // Closed only now that epoll forgot it.
                        drop(stream);
                    }
                    FdChange::Close(stream) => drop(stream),
                }
            }
        }
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        for (index, evt) in self.queue_events().iter().enumerate() {
            let Ok(data) = u32::try_from(index) else {
                continue;
            };
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                error!("virtio-vsock: cannot register queue {index} eventfd: {e:?}");
            }
        }
        // The listener.
        self.apply_fd_changes(ops);
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let fd = events.fd();
        let set = events.event_set();
        let queue = self
            .queue_events()
            .iter()
            .position(|evt| evt.as_raw_fd() == fd);
        if let Some(index) = queue {
            // Drain before serving, so a notification that lands meanwhile
            // wakes us again.
            if let Err(e) = self.queue_events()[index].read() {
                if e.kind() != io::ErrorKind::WouldBlock {
                    error!("virtio-vsock: cannot read queue {index} eventfd: {e}");
                }
            }
            let counter = match index {
                RX_QUEUE => &self.metrics().rx_queue_events,
                TX_QUEUE => &self.metrics().tx_queue_events,
                _ => &self.metrics().event_queue_events,
            };
            VsockMetrics::inc(counter);
        } else if fd == self.muxer.listener_fd() {
            VsockMetrics::inc(&self.metrics().muxer_events);
            self.muxer.on_listener_ready();
        } else {
            VsockMetrics::inc(&self.metrics().muxer_events);
            if !self.muxer.on_fd_event(fd, set) {
                // Not ours any more; never let a level-triggered fd spin.
                debug!("virtio-vsock: event {set:?} on unknown fd {fd}");
                if let Err(e) = ops.remove(Events::empty_raw(fd)) {
                    warn!("virtio-vsock: cannot stop watching unknown fd {fd}: {e:?}");
                }
            }
        }
        self.process_queues();
        self.apply_fd_changes(ops);
    }
}
