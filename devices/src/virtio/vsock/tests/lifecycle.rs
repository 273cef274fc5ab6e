//! Half-close, resets, many connections, and backpressure.

use std::net::Shutdown;

use super::*;

#[test]
fn half_close_in_both_directions() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.connected(300);

    // The host is done sending: the guest reads the data, then SHUTDOWN_SEND.
    host.write_all(b"request").unwrap();
    host.shutdown(Shutdown::Write).unwrap();
    assert_eq!(h.receive(&mut conn, 7), b"request");
    h.pump_until("SHUTDOWN_SEND", |h| {
        h.take_for(&mut conn);
        conn.peer_shutdown != 0
    });
    assert_eq!(conn.peer_shutdown, SHUTDOWN_SEND);
    assert_eq!(conn.received, b"request");

    // The guest can still answer, and then half-closes too.
    h.send(&mut conn, Op::Rw, b"response");
    h.send_shutdown(&mut conn, SHUTDOWN_SEND);
    assert_eq!(read_to_end(&mut host), b"response");
    assert_eq!(h.connection_count(), 1);

    // The guest closes its socket: SHUTDOWN both, RST back, gone.
    h.send_shutdown(&mut conn, SHUTDOWN_BOTH);
    h.wait_for(&mut conn, Op::Rst);
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn host_close_tells_the_guest_and_the_guest_reset_ends_it() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.connected(301);
    host.write_all(b"goodbye").unwrap();
    drop(host);
    assert_eq!(h.receive(&mut conn, 7), b"goodbye");
    h.pump_until("SHUTDOWN with both flags", |h| {
        h.take_for(&mut conn);
        conn.peer_shutdown == SHUTDOWN_BOTH
    });
    // Linux answers a full shutdown with RST once it has read everything.
    h.send(&mut conn, Op::Rst, &[]);
    assert_eq!(h.connection_count(), 0);
    // Nothing else is owed to the guest: no RST for a RST.
    assert!(h.take_rx().is_empty());
}

#[test]
fn guest_reset_mid_stream_closes_the_host_and_the_device_carries_on() {
    let mut h = Harness::new();
    let (host, mut conn) = h.connected(302);
    let writer = {
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || {
            let chunk = pattern(8192, 1);
            // Until the device closes the stream.
            while host.write_all(&chunk).is_ok() {}
        })
    };
    h.receive(&mut conn, 20_000);
    // The guest process dies: its kernel resets the connection.
    h.send(&mut conn, Op::Rst, &[]);
    h.join(writer);
    // Closed: EOF, or ECONNRESET since the device had unread bytes.
    let mut host = host;
    assert!(is_closed_without_data(&mut host));
    assert_eq!(h.connection_count(), 0);
    // Data that was already in rx buffers is the guest's to discard.
    h.take_for(&mut conn);
    // Stale packets for the dead connection are answered with RST.
    h.send(&mut conn, Op::Rw, b"late");
    let got = h.take_rx();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].op(), Some(Op::Rst));

    let (mut host, mut conn) = h.connected(302);
    host.write_all(b"fresh").unwrap();
    assert_eq!(h.receive(&mut conn, 5), b"fresh");
}

#[test]
fn thirty_two_connections_at_once() {
    let mut h = Harness::new();
    let mut hosts = Vec::new();
    for i in 0..32u32 {
        let mut host = UnixStream::connect(&h.uds).unwrap();
        host.write_all(format!("CONNECT {}\n", 1000 + i).as_bytes())
            .unwrap();
        hosts.push(host);
    }
    let mut conns = Vec::new();
    for i in 0..32u32 {
        let req = h.wait_request_to(1000 + i);
        let mut conn = GuestConn::new(1000 + i, req.hdr.src_port);
        conn.absorb(&req);
        conns.push(conn);
    }
    for (host, conn) in hosts.iter_mut().zip(conns.iter_mut()) {
        h.accept(host, conn);
    }
    assert_eq!(h.connection_count(), 32);
    // Every host writes, then every guest end answers.
    for (i, host) in hosts.iter_mut().enumerate() {
        host.write_all(&pattern(3000, i as u8)).unwrap();
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        assert_eq!(h.receive(conn, 3000), pattern(3000, i as u8));
    }
    for (i, conn) in conns.iter_mut().enumerate() {
        h.send(conn, Op::Rw, &pattern(2000, 100 + i as u8));
    }
    for (i, host) in hosts.iter_mut().enumerate() {
        assert_eq!(read_exactly(host, 2000), pattern(2000, 100 + i as u8));
    }
}

#[test]
fn hundreds_of_connections_open_and_close() {
    let mut h = Harness::new();
    let mut pairs = Vec::new();
    for i in 0..300u32 {
        let (host, conn) = h.connected(20_000 + i);
        pairs.push((host, conn));
    }
    assert_eq!(h.connection_count(), 300);
    // Each says one thing, then half of them are closed by the host and
    // half by the guest.
    for (i, (host, _)) in pairs.iter_mut().enumerate() {
        host.write_all(format!("#{i}").as_bytes()).unwrap();
    }
    for (i, (_, conn)) in pairs.iter_mut().enumerate() {
        let expected = format!("#{i}");
        assert_eq!(h.receive(conn, expected.len()), expected.as_bytes());
    }
    for (i, (host, mut conn)) in pairs.into_iter().enumerate() {
        if i % 2 == 0 {
            drop(host);
            h.pump_until("the host close", |h| {
                h.take_for(&mut conn);
                conn.peer_shutdown == SHUTDOWN_BOTH
            });
            h.send(&mut conn, Op::Rst, &[]);
        } else {
            h.send_shutdown(&mut conn, SHUTDOWN_BOTH);
            h.wait_for(&mut conn, Op::Rst);
        }
    }
    assert_eq!(h.connection_count(), 0);
    assert_eq!(h.metric(|m| &m.conns_closed), 300);
}

#[test]
fn without_rx_buffers_bytes_wait_and_the_loop_sleeps() {
    let mut h = Harness::new();
    let (host, mut conn) = h.connected(303);
    // A big guest buffer: only rx buffers limit the device now.
    conn.buf_alloc = 4 * 1024 * 1024;
    h.send(&mut conn, Op::CreditUpdate, &[]);
    h.auto_refill = false;

    let data = pattern(RX_BUFFERS * RX_PAYLOAD + 50_000, 9);
    let writer = {
        let data = data.clone();
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || host.write_all(&data).unwrap())
    };
    // The device fills every posted buffer, then has nowhere to go.
    h.pump_until("the rx queue to run dry", |h| h.rx_posted.is_empty());
    h.take_for(&mut conn);
    let delivered = conn.received.len();
    // Every buffer holds one RW packet (short ones when the writer lagged).
    assert!(delivered > 0 && delivered <= RX_BUFFERS * RX_PAYLOAD);

    // Idle: no events for the device while the host's bytes wait (no
    // busy loop on a readable socket).
    std::thread::sleep(Duration::from_millis(50));
    h.pump();
    let stalls = h.metric(|m| &m.rx_queue_stalls);
    let mut events = 0;
    for _ in 0..10 {
        events += h.manager.run_with_timeout(20).unwrap();
    }
    assert_eq!(events, 0, "the event loop spins without rx buffers");
    assert_eq!(h.metric(|m| &m.rx_queue_stalls), stalls);
    assert_eq!(conn.received.len(), delivered);

    // Buffers arrive: the rest comes, byte-exact.
    h.auto_refill = true;
    h.refill_rx();
    let rest = h.receive(&mut conn, data.len() - delivered);
    h.join(writer);
    assert_eq!([&conn.received[..delivered], &rest[..]].concat(), data);
}

#[test]
fn control_packets_wait_for_rx_buffers_too() {
    let mut h = Harness::new();
    h.auto_refill = false;
    // Use up the posted buffers with stray packets (each gets a RST).
    let mut stray = GuestConn::new(7, 7);
    for _ in 0..RX_BUFFERS {
        h.send(&mut stray, Op::Rw, b"?");
    }
    assert!(h.rx_posted.is_empty());
    // With no buffers the RSTs queue up, bounded, and the tx queue keeps
    // being served.
    for _ in 0..10 {
        h.send(&mut stray, Op::Rw, b"?");
    }
    let before = h.take_rx().len();
    assert_eq!(before, RX_BUFFERS);
    h.refill_rx();
    let after = h.take_rx();
    assert_eq!(after.len(), 10);
    assert!(after.iter().all(|rx| rx.op() == Some(Op::Rst)));
}

#[test]
fn a_flood_of_stray_packets_pauses_the_tx_queue_instead_of_dropping_replies() {
    use crate::virtio::vsock::muxer::MAX_PENDING_CONTROL;

    let mut h = Harness::new();
    h.auto_refill = false;
    let stray = |h: &mut Harness, n: u32| {
        for port in 0..n {
            let hdr = PacketHeader {
                len: 1,
                ..PacketHeader::stream(Op::Rw, (GUEST_CID, port), (HOST_CID, 9))
            };
            let mut bytes = hdr.to_bytes().to_vec();
            bytes.push(b'?');
            let addr = h.guest_bytes(&bytes);
            h.send_tx_chain(&[Buf::readable(addr, bytes.len() as u32)]);
        }
    };
    // Use up the posted rx buffers.
    stray(&mut h, RX_BUFFERS as u32);
    assert!(h.rx_posted.is_empty());
    let first = h.take_rx().len();
    assert_eq!(first, RX_BUFFERS);

    // 50 more than the control queue holds, with no rx buffers at all.
    let total = MAX_PENDING_CONTROL + 50;
    for _ in 0..total / 100 {
        stray(&mut h, 100);
    }
    stray(&mut h, (total % 100) as u32);
    // The device took what it could answer and left the rest in the ring.
    assert_eq!(h.tx_outstanding, 50);
    assert_eq!(
        h.metric(|m| &m.tx_packets),
        (RX_BUFFERS + MAX_PENDING_CONTROL) as u64
    );

    // Buffers come back; every stray gets its RST, none lost.
    let mut resets = 0;
    h.pump_until("all the resets", |h| {
        resets += h.take_rx().len();
        if h.rx_posted.is_empty() {
            h.refill_rx();
        }
        resets == total
    });
    assert_eq!(h.tx_outstanding, 0);
}
