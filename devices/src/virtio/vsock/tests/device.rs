//! The device: features, config space, activation, reset, and the host
//! socket's setup.

use std::os::unix::net::UnixListener;

use virtio_queue::{Queue, QueueT};

use super::*;
use crate::virtio::vsock::muxer::{MuxerError, EPHEMERAL_PORT_START};
use crate::virtio::vsock::{VsockError, EVENT_QUEUE, NUM_QUEUES, QUEUE_SIZE};
use crate::virtio::{ActivateError, VIRTIO_F_VERSION_1};

fn config(uds: PathBuf, guest_cid: u64) -> VsockConfig {
    VsockConfig {
        guest_cid,
        uds_path: uds,
        id: "vsock0".into(),
    }
}

#[test]
fn features_and_config_space() {
    let dir = TempDir::new_with_prefix("/tmp/husk-vsock-").unwrap();
    let mut dev = Vsock::new(&config(dir.as_path().join("v.sock"), 0x1234_5678)).unwrap();
    assert_eq!(dev.device_type(), 19);
    assert_eq!(dev.avail_features(), 1 << VIRTIO_F_VERSION_1);
    assert_eq!(dev.queue_max_sizes(), &[QUEUE_SIZE; NUM_QUEUES]);
    assert_eq!(dev.queue_events().len(), 3);
    dev.ack_features(u64::MAX);
    assert_eq!(dev.acked_features(), 1 << VIRTIO_F_VERSION_1);

    let mut cid = [0u8; 8];
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 0x1234_5678);
    let mut low = [0u8; 4];
    dev.read_config(0, &mut low);
    assert_eq!(u32::from_le_bytes(low), 0x1234_5678);
    let mut byte = [0u8; 1];
    dev.read_config(1, &mut byte);
    assert_eq!(byte[0], 0x56);
    // Past the end, and absurd offsets: zeros.
    let mut past = [0xffu8; 8];
    dev.read_config(8, &mut past);
    assert_eq!(past, [0; 8]);
    dev.read_config(u64::MAX - 3, &mut past);
    assert_eq!(past, [0; 8]);
    // Read-only.
    dev.write_config(0, &[0xff; 8]);
    dev.read_config(0, &mut cid);
    assert_eq!(u64::from_le_bytes(cid), 0x1234_5678);
    assert_eq!(dev.guest_cid(), 0x1234_5678);
    assert_eq!(dev.id(), "vsock0");
}

#[test]
fn reserved_and_oversized_cids_are_refused() {
    let dir = TempDir::new_with_prefix("/tmp/husk-vsock-").unwrap();
    for cid in [0, 1, 2, u64::from(u32::MAX), 1 << 32, u64::MAX] {
        let err = Vsock::new(&config(dir.as_path().join("v.sock"), cid)).unwrap_err();
        assert!(
            matches!(err, VsockError::InvalidCid(c) if c == cid),
            "{err}"
        );
    }
    // Nothing was bound for them.
    assert!(!dir.as_path().join("v.sock").exists());
    Vsock::new(&config(dir.as_path().join("v.sock"), 3)).unwrap();
    Vsock::new(&config(
        dir.as_path().join("w.sock"),
        u64::from(u32::MAX) - 1,
    ))
    .unwrap();
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_refused() {
    let dir = TempDir::new_with_prefix("/tmp/husk-vsock-").unwrap();
    let path = dir.as_path().join("v.sock");

    // Left behind by a dead process: the file exists, nobody listens.
    drop(UnixListener::bind(&path).unwrap());
    assert!(path.exists());
    let dev = Vsock::new(&config(path.clone(), 3)).unwrap();
    // The new socket accepts.
    UnixStream::connect(&path).unwrap();

    // A second device on the same live socket is refused, and the first
    // keeps its socket.
    let err = Vsock::new(&config(path.clone(), 4)).unwrap_err();
    assert!(
        matches!(&err, VsockError::Socket(MuxerError::InUse(p)) if *p == path),
        "{err:?}"
    );
    UnixStream::connect(&path).unwrap();

    // Dropping the device removes its socket file.
    drop(dev);
    assert!(!path.exists());
}

#[test]
fn a_path_that_is_not_a_socket_is_left_alone() {
    let dir = TempDir::new_with_prefix("/tmp/husk-vsock-").unwrap();
    let path = dir.as_path().join("precious.txt");
    std::fs::write(&path, b"do not delete").unwrap();
    let err = Vsock::new(&config(path.clone(), 3)).unwrap_err();
    assert!(matches!(err, VsockError::Socket(MuxerError::NotASocket(_))));
    assert_eq!(std::fs::read(&path).unwrap(), b"do not delete");

    let err = Vsock::new(&config(dir.as_path().join("no/such/dir/v.sock"), 3)).unwrap_err();
    assert!(matches!(err, VsockError::Socket(MuxerError::Bind(..))));
}

#[test]
fn activation_checks_its_queues() {
    let mut h = Harness::inactive();
    let mem = h.mem.clone();
    let irq = h.irq.clone();
    let mut dev = h.dev.lock().unwrap();
    assert!(matches!(
        dev.activate(mem.clone(), irq.clone(), vec![h.rx.create_queue()]),
        Err(ActivateError::QueueCount {
            expected: 3,
            got: 1
        })
    ));
    assert!(matches!(
        dev.activate(
            mem.clone(),
            irq.clone(),
            vec![
                h.rx.create_queue(),
                h.tx.create_queue(),
                Queue::new(QUEUE_SIZE).unwrap()
            ]
        ),
        Err(ActivateError::QueueNotReady(2))
    ));
    assert!(!dev.is_activated());
    drop(dev);
    h.activate();
    let mut dev = h.dev.lock().unwrap();
    assert!(dev.is_activated());
    assert!(matches!(
        dev.activate(
            mem,
            irq,
            vec![
                h.rx.create_queue(),
                h.tx.create_queue(),
                h.ev.create_queue()
            ]
        ),
        Err(ActivateError::AlreadyActive)
    ));
    // The event queue stays untouched by the device.
    drop(dev);
    h.refill_rx();
    h.assert_still_serving(1);
    assert_eq!(h.ev.used_idx(), 0);
}

#[test]
fn notifications_before_activation_are_ignored() {
    let mut h = Harness::inactive();
    for kick in &h.kicks {
        kick.write(1).unwrap();
    }
    h.pump();
    assert_eq!(h.metric(|m| &m.rx_queue_events), 1);
    assert_eq!(h.metric(|m| &m.tx_queue_events), 1);
    assert_eq!(h.metric(|m| &m.event_queue_events), 1);
    assert_eq!(h.irq.status(), 0);
}

#[test]
fn reset_closes_every_host_stream_and_the_device_starts_over() {
    let mut h = Harness::new();
    let (mut a, _) = h.connected(1);
    let (mut b, _) = h.host_connect(2);
    let mut half = UnixStream::connect(&h.uds).unwrap();
    half.write_all(b"CONN").unwrap();
    h.pump();
    assert_eq!(h.connection_count(), 3);

    h.dev.lock().unwrap().reset();
    assert!(!h.dev.lock().unwrap().is_activated());
    h.pump();
    assert_eq!(h.connection_count(), 0);
    for host in [&mut a, &mut b, &mut half] {
        assert!(is_closed_without_data(host));
    }

    // The driver sets the device up again, fresh rings and all.
    // (The buffers allocated above the old rings stay where they are.)
    h.rx = VirtQueueDriver::new(&h.mem, GuestAddress(0x8000), TEST_QUEUE_SIZE);
    h.tx = VirtQueueDriver::new(&h.mem, GuestAddress(0x4000), TEST_QUEUE_SIZE);
    h.ev = VirtQueueDriver::new(&h.mem, GuestAddress(0), TEST_QUEUE_SIZE);
    h.rx_free
        .extend(h.rx_posted.drain(..).filter_map(|(_, buf)| buf));
    h.tx_outstanding = 0;
    h.inbox.clear();
    h.activate();
    h.refill_rx();
    h.assert_still_serving(3);
}

#[test]
fn a_transport_reset_tells_the_guest_and_drops_every_connection() {
    let mut h = Harness::new();
    let (mut a, _) = h.connected(1);
    assert_eq!(h.connection_count(), 1);
    // No event buffer yet: nothing can be told.
    assert!(!h.dev.lock().unwrap().transport_reset());
    h.pump();
    assert!(is_closed_without_data(&mut a));

    let (mut b, _) = h.connected(2);
    let buf = h.ev.alloc(8);
    h.ev.write(buf, &[0xff; 8]);
    let head = h.ev.add_chain(&[Buf::writable(buf, 8)]);
    h.ev.publish(head);
    assert!(h.dev.lock().unwrap().transport_reset());
    assert_eq!(h.ev.pop_used(), Some((u32::from(head), 4)));
    assert_eq!(
        h.ev.read(buf, 4),
        [0, 0, 0, 0],
        "VIRTIO_VSOCK_EVENT_TRANSPORT_RESET"
    );
    assert_ne!(h.irq.status(), 0, "the guest was interrupted");
    h.pump();
    assert_eq!(h.connection_count(), 0);
    assert!(is_closed_without_data(&mut b));
}

/// After a transport reset the guest resets its sockets in a work item and
/// only then re-posts the event's buffer; a host connection made before
/// that (a run connecting to its restored VM at once) waits for it, or
/// the guest would reset it with the old ones.
#[test]
fn host_connections_wait_until_the_guest_has_handled_a_transport_reset() {
    let mut h = Harness::new();
    let buf = reset_with_one_event_buffer(&mut h);

    let mut stream = UnixStream::connect(&h.uds).unwrap();
    stream.write_all(b"CONNECT 1024\n").unwrap();
    for _ in 0..20 {
        h.pump();
        h.manager.run_with_timeout(5).unwrap();
    }
    assert!(
        h.inbox.iter().all(|rx| rx.op() != Some(Op::Request)),
        "a REQUEST reached the guest before it handled the reset"
    );

    // The guest has reset its sockets and gives the event buffer back.
    repost_event_buffer(&mut h, buf);
    let req = h.wait_request_to(1024);
    assert_eq!(req.hdr.dst_port, 1024);
}

/// A guest keeps its sockets until its driver has reset them (a restored
/// guest has its template's): the first host connection after a transport
/// reset must not take the address pair of one before it.
#[test]
fn after_a_transport_reset_host_connections_take_new_ports() {
    // A restored device is a new one: its first connection would take the
    // port its template's first one took.
    let mut h = Harness::new();
    let buf = reset_with_one_event_buffer(&mut h);
    repost_event_buffer(&mut h, buf);
    let (_b, after) = h.host_connect(1024);
    assert_ne!(after.host_port, EPHEMERAL_PORT_START);
}

/// Posts one event buffer and has the device send a transport reset into
/// it; the buffer, for the guest to post again.
fn reset_with_one_event_buffer(h: &mut Harness) -> GuestAddress {
    let buf = h.ev.alloc(8);
    let head = h.ev.add_chain(&[Buf::writable(buf, 8)]);
    h.ev.publish(head);
    assert!(h.dev.lock().unwrap().transport_reset());
    h.pump();
    buf
}

/// What Linux does once it has reset its sockets: the event's buffer back,
/// and a kick.
fn repost_event_buffer(h: &mut Harness, buf: GuestAddress) {
    let again = h.ev.add_chain(&[Buf::writable(buf, 8)]);
    h.ev.publish(again);
    h.kicks[EVENT_QUEUE].write(1).unwrap();
}
