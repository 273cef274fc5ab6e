//! `VIRTIO_RING_F_EVENT_IDX`: the device interrupts only once the used
//! index passes the driver's `used_event`, and names in `avail_event` the
//! avail index past which it wants a kick.

use super::*;
use vm_memory::Bytes;

const EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// The driver's `used_event` (after the avail ring).
fn set_used_event(q: &VirtQueueDriver, idx: u16) {
    let at = q.avail_ring.unchecked_add(4 + 2 * u64::from(q.size));
    q.mem.write_obj(idx.to_le(), at).unwrap();
}

/// The device's `avail_event` (after the used ring).
fn avail_event(q: &VirtQueueDriver) -> u16 {
    let at = q.used_ring.unchecked_add(4 + 8 * u64::from(q.size));
    u16::from_le(q.mem.read_obj(at).unwrap())
}

#[test]
fn tx_interrupts_only_past_the_drivers_used_event_and_asks_for_the_next_kick() {
    let mut h = harness(BASE_FEATURES | EVENT_IDX);
    let p = packet(&frame(60, 7));
    // The driver wants an interrupt once the third chain is used (index 2).
    set_used_event(&h.driver.txq, 2);
    for sent in 1..=4u16 {
        h.driver.post_tx(&p, &[]);
        h.run_tx();
        assert_eq!(h.driver.txq.used_idx(), sent);
        assert_eq!(
            h.interrupted(),
            sent == 3,
            "used index {sent} against used_event 2"
        );
        // Kicks are wanted from the next chain on.
        assert_eq!(avail_event(&h.driver.txq), sent);
    }
    for _ in 0..4 {
        assert!(h.host.recv().is_some());
    }
}

#[test]
fn a_frame_over_several_rx_buffers_counts_every_buffer_for_the_interrupt() {
    let mut h = harness(BASE_FEATURES | EVENT_IDX | bit(VIRTIO_NET_F_MRG_RXBUF));
    h.driver.post_rx_buffers(4, 256);
    // used_event 1: the second buffer's use interrupts. The frame takes
    // three buffers (indexes 0..3), published together.
    set_used_event(&h.driver.rxq, 1);
    h.host.send(&packet(&frame(600, 9)));
    h.run_rx();
    assert_eq!(h.driver.rxq.used_idx(), 3);
    assert!(h.interrupted(), "used_event 1 lies within the frame's 3");

    // Past the driver's event: no interrupt for the next frame.
    set_used_event(&h.driver.rxq, 10);
    h.host.send(&packet(&frame(100, 10)));
    h.run_rx();
    assert_eq!(h.driver.rxq.used_idx(), 4);
    assert!(!h.interrupted());

    // Out of buffers: a held frame, and the device asks for a kick at the
    // next buffer posted.
    h.host.send(&packet(&frame(100, 11)));
    h.run_rx();
    assert_eq!(avail_event(&h.driver.rxq), 4);
}
