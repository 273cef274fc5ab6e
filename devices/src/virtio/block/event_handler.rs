//! Event-loop glue: the queue eventfd wakes the event manager, which calls
//! into [`Block`] to serve the queue.
//!
//! The VMM adds the device to its `EventManager` as
//! `Arc<Mutex<Block>>` (event-manager implements `MutEventSubscriber` for
//! `Arc<Mutex<T>>`), the same `Arc` it gave the MMIO transport.

use std::io;

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};

use super::device::Block;
use crate::virtio::VirtioDevice;

/// The rate limiter's timer among the device's events (queues are 0..).
const LIMIT_TIMER: u32 = u32::MAX;

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        // Registered once for the device's lifetime: the eventfds outlive
        // resets, and notifications while inactive are drained and ignored.
        for (index, evt) in self.queue_events().iter().enumerate() {
            let Ok(data) = u32::try_from(index) else {
                continue;
            };
            if let Err(e) = ops.add(Events::with_data(evt, data, EventSet::IN)) {
                error!("virtio-blk: cannot register queue {index} eventfd: {e}");
            }
        }
        let timer = Events::with_data(self.limit_timer(), LIMIT_TIMER, EventSet::IN);
        if let Err(e) = ops.add(timer) {
            error!("virtio-blk: cannot register the rate limiter's timer: {e}");
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        if events.data() == LIMIT_TIMER {
            self.clear_limit_timer();
            self.process_queue_event();
            return;
        }
        let index = events.data() as usize;
        let Some(evt) = self.queue_events().get(index) else {
            warn!("virtio-blk: event for unknown queue {index}");
            return;
        };
        if !events.event_set().contains(EventSet::IN) {
            warn!(
                "virtio-blk: unexpected events {:?} on queue {index}",
                events.event_set()
            );
            return;
        }
        // Drain the counter before serving the queue: a notification that
        // lands during processing then wakes us again instead of being
        // swallowed.
        if let Err(e) = evt.read() {
            if e.kind() != io::ErrorKind::WouldBlock {
                error!("virtio-blk: cannot read queue {index} eventfd: {e}");
            }
        }
        self.process_queue_event();
    }
}
