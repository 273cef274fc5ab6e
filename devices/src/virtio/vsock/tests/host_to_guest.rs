//! Host programs connecting to guest ports through `CONNECT <port>`.

use super::*;
use crate::virtio::vsock::muxer::EPHEMERAL_PORT_START;

#[test]
fn connect_handshake_then_bytes_both_ways() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.host_connect(1234);
    // The REQUEST came from the host CID and an ephemeral port.
    assert!(conn.host_port >= EPHEMERAL_PORT_START);
    assert_eq!(conn.peer_buf_alloc, super::super::DEFAULT_BUF_ALLOC);

    h.accept(&mut host, &mut conn);
    host.write_all(b"ping").unwrap();
    assert_eq!(h.receive(&mut conn, 4), b"ping");
    h.send(&mut conn, Op::Rw, b"pong");
    assert_eq!(read_exactly(&mut host, 4), b"pong");
    assert_eq!(h.metric(|m| &m.conns_host_initiated), 1);
    assert_eq!(h.connection_count(), 1);
    // The guest was interrupted for its rx packets.
    assert_ne!(h.irq.status(), 0);
}

#[test]
fn bytes_written_with_the_connect_line_are_not_lost() {
    let mut h = Harness::new();
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 77\nearly bird").unwrap();
    let req = h.wait_request_to(77);
    let mut conn = GuestConn::new(77, req.hdr.src_port);
    conn.absorb(&req);
    h.accept(&mut host, &mut conn);
    assert_eq!(h.receive(&mut conn, 10), b"early bird");
}

#[test]
fn large_transfers_both_ways_respect_credit() {
    let mut h = Harness::new();
    let (host, mut conn) = h.connected(5000);

    // Host -> guest: 300 KiB against a 16 KiB guest buffer, so the device
    // keeps running out of credit.
    let down = pattern(300 * 1024, 7);
    let writer = {
        let data = down.clone();
        let mut host = host.try_clone().unwrap();
        std::thread::spawn(move || host.write_all(&data).unwrap())
    };
    assert_eq!(h.receive(&mut conn, down.len()), down);
    h.join(writer);
    // Only credit the guest gave back let 300 KiB through a 16 KiB buffer.
    assert!(conn.fwd_cnt_sent as usize > down.len() - GUEST_BUF_ALLOC as usize);

    // Guest -> host: 600 KiB, more than twice the device's 256 KiB buffer:
    // only CREDIT_UPDATEs from the device let the guest finish.
    let up = pattern(600 * 1024, 8);
    let reader = {
        let mut host = host.try_clone().unwrap();
        let len = up.len();
        std::thread::spawn(move || read_exactly(&mut host, len))
    };
    h.transmit(&mut conn, &up);
    assert_eq!(h.join(reader), up);
    assert!(
        conn.credit_updates > 0,
        "the device never sent a credit update"
    );
    assert_eq!(h.metric(|m| &m.tx_bytes), up.len() as u64);
    assert_eq!(h.metric(|m| &m.rx_bytes), down.len() as u64);
}

#[test]
fn guest_refusal_closes_the_host_stream_without_ok() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.host_connect(4444);
    h.send(&mut conn, Op::Rst, &[]);
    assert!(is_closed_without_data(&mut host));
    assert_eq!(h.connection_count(), 0);
    // The ephemeral port is free again and the device keeps serving.
    let (mut host, mut conn) = h.connected(4444);
    host.write_all(b"again").unwrap();
    assert_eq!(h.receive(&mut conn, 5), b"again");
}

#[test]
fn a_host_giving_up_before_the_answer_resets_the_guest() {
    let mut h = Harness::new();
    let (host, mut conn) = h.host_connect(81);
    drop(host);
    let got = h.wait_for(&mut conn, Op::Rst);
    assert!(got.iter().all(|rx| rx.op() == Some(Op::Rst)));
    assert_eq!(h.connection_count(), 0);
}

#[test]
fn connections_before_activation_wait_for_the_driver() {
    let mut h = Harness::inactive();
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 9\n").unwrap();
    h.pump();
    assert_eq!(h.connection_count(), 1);
    h.activate();
    h.refill_rx();
    let req = h.wait_request_to(9);
    let mut conn = GuestConn::new(9, req.hdr.src_port);
    conn.absorb(&req);
    h.accept(&mut host, &mut conn);
}

#[test]
fn each_host_connection_gets_its_own_port() {
    let mut h = Harness::new();
    let (_a, a) = h.connected(10);
    let (_b, b) = h.connected(10);
    assert_ne!(a.host_port, b.host_port);
}
