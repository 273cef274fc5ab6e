//! The connection state machine over socketpairs: no epoll, no queues.

use super::*;
use crate::virtio::vsock::connection::{CloseReason, ConnState, Connection, Interest};
use crate::virtio::vsock::muxer::HostSocket;

const LOCAL: u32 = 1 << 30;
const PEER: u32 = 52;

fn pair() -> (UnixStream, UnixStream) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    (a, b)
}

/// A guest header for the connection (guest port PEER, host port LOCAL).
fn guest(op: Op, buf_alloc: u32, fwd_cnt: u32) -> PacketHeader {
    PacketHeader {
        buf_alloc,
        fwd_cnt,
        ..PacketHeader::stream(op, (GUEST_CID, PEER), (HOST_CID, LOCAL))
    }
}

fn recv(
    conn: &mut Connection<impl crate::virtio::vsock::HostStream>,
) -> Option<(PacketHeader, Vec<u8>)> {
    let mut buf = vec![0u8; 4096];
    conn.recv_pkt(&mut buf)
        .map(|hdr| (hdr, buf[..hdr.len as usize].to_vec()))
}

/// An established host-initiated connection whose guest has `guest_buf`
/// bytes of buffer; the host end has read the OK line.
fn established(guest_buf: u32) -> (Connection<UnixStream>, UnixStream) {
    let (a, mut b) = pair();
    let mut conn = Connection::new_local_init(a, GUEST_CID, LOCAL, PEER, 64 * 1024);
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::Request));
    conn.send_pkt(&guest(Op::Response, guest_buf, 0), Op::Response, &[]);
    assert_eq!(read_exactly(&mut b, 14), b"OK 1073741824\n");
    (conn, b)
}

#[test]
fn host_initiated_handshake() {
    let (a, mut b) = pair();
    let mut conn = Connection::new_local_init(a, GUEST_CID, LOCAL, PEER, 64 * 1024);
    assert_eq!(conn.state(), ConnState::LocalInit);
    assert!(conn.has_rx());
    // Waiting for the guest: only a hang-up matters.
    assert_eq!(conn.interest(), Some(Interest::default()));

    let (req, _) = recv(&mut conn).unwrap();
    assert_eq!(req.op(), Some(Op::Request));
    assert_eq!(
        (req.src_cid, req.src_port, req.dst_cid, req.dst_port),
        (HOST_CID, LOCAL, GUEST_CID, PEER)
    );
    assert_eq!((req.buf_alloc, req.fwd_cnt, req.len), (64 * 1024, 0, 0));
    assert!(!conn.has_rx());
    assert!(recv(&mut conn).is_none());

    conn.send_pkt(&guest(Op::Response, 4096, 0), Op::Response, &[]);
    assert_eq!(conn.state(), ConnState::Established);
    assert_eq!(read_exactly(&mut b, 14), b"OK 1073741824\n");
    // The OK line is not guest data: fwd_cnt stays 0.
    assert_eq!(conn.fwd_cnt(), 0);
    assert_eq!(conn.peer_credit(), 4096);
    assert_eq!(
        conn.interest(),
        Some(Interest {
            read: true,
            write: false
        })
    );
}

#[test]
fn guest_refusal_closes_without_a_reset() {
    let (a, _b) = pair();
    let mut conn = Connection::new_local_init(a, GUEST_CID, LOCAL, PEER, 4096);
    recv(&mut conn).unwrap();
    conn.send_pkt(&guest(Op::Rst, 0, 0), Op::Rst, &[]);
    assert!(conn.is_closed());
    assert_eq!(conn.close_reason(), Some(CloseReason::GuestReset));
    assert!(!conn.has_rx());
}

#[test]
fn host_giving_up_before_the_guest_answers() {
    // REQUEST not sent yet: the guest never hears of it.
    let (a, _b) = pair();
    let mut conn = Connection::new_local_init(a, GUEST_CID, LOCAL, PEER, 4096);
    conn.notify(false, false, true);
    assert!(conn.is_closed());
    assert_eq!(conn.close_reason(), Some(CloseReason::HostClosed));

    // REQUEST sent: the guest gets a RST.
    let (a, _b) = pair();
    let mut conn = Connection::new_local_init(a, GUEST_CID, LOCAL, PEER, 4096);
    recv(&mut conn).unwrap();
    conn.notify(false, false, true);
    assert_eq!(conn.state(), ConnState::Closing);
    assert_eq!(conn.interest(), None);
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::Rst));
    assert!(conn.is_closed());
}

#[test]
fn guest_initiated_connection_answers_first() {
    let (a, mut b) = pair();
    let request = PacketHeader {
        buf_alloc: 1000,
        ..PacketHeader::stream(Op::Request, (GUEST_CID, 4000), (HOST_CID, 52))
    };
    let mut conn = Connection::new_peer_init(a, &request, 4096);
    assert_eq!((conn.local_port(), conn.peer_port()), (52, 4000));
    b.write_all(b"early").unwrap();
    conn.notify(true, false, false);
    // RESPONSE goes before any data.
    let (resp, _) = recv(&mut conn).unwrap();
    assert_eq!(resp.op(), Some(Op::Response));
    assert_eq!((resp.src_port, resp.dst_port), (52, 4000));
    let (rw, data) = recv(&mut conn).unwrap();
    assert_eq!((rw.op(), data.as_slice()), (Some(Op::Rw), &b"early"[..]));
}

#[test]
fn reads_never_exceed_the_guests_credit_or_the_buffer() {
    let (mut conn, mut b) = established(10);
    b.write_all(&pattern(100, 1)).unwrap();
    conn.notify(true, false, false);

    let (rw, data) = recv(&mut conn).unwrap();
    assert_eq!((rw.op(), rw.len), (Some(Op::Rw), 10));
    assert_eq!(data, pattern(100, 1)[..10]);
    assert_eq!(conn.peer_credit(), 0);
    // Out of credit: ask once, then stop reading and stop polling.
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::CreditRequest));
    assert!(!conn.has_rx());
    assert_eq!(conn.interest().map(|i| i.read), Some(false));

    // The guest consumed 4 bytes: 4 more may come.
    conn.send_pkt(&guest(Op::CreditUpdate, 10, 4), Op::CreditUpdate, &[]);
    assert!(conn.has_rx());
    let (rw, data) = recv(&mut conn).unwrap();
    assert_eq!(data, pattern(100, 1)[10..14]);
    assert_eq!(rw.len, 4);

    // A bigger guest buffer, but a small rx buffer: the buffer wins.
    conn.send_pkt(&guest(Op::CreditUpdate, 1000, 14), Op::CreditUpdate, &[]);
    recv(&mut conn); // the CREDIT_REQUEST owed from before
    let mut small = [0u8; 3];
    let hdr = conn.recv_pkt(&mut small).unwrap();
    assert_eq!((hdr.op(), hdr.len), (Some(Op::Rw), 3));
    assert_eq!(small, pattern(100, 1)[14..17]);
}

#[test]
fn a_guest_claiming_too_much_progress_gets_no_credit() {
    let (mut conn, mut b) = established(100);
    b.write_all(b"data").unwrap();
    conn.notify(true, false, false);
    recv(&mut conn).unwrap();
    // fwd_cnt ahead of what was sent: in-flight wraps; no credit.
    conn.send_pkt(&guest(Op::CreditUpdate, 100, 5), Op::CreditUpdate, &[]);
    assert_eq!(conn.peer_credit(), 0);
}

#[test]
fn guest_data_reaches_the_host_and_credit_comes_back() {
    let (mut conn, mut b) = established(4096);
    let data = pattern(3000, 2);
    let mut hdr = guest(Op::Rw, 4096, 0);
    hdr.len = 3000;
    conn.send_pkt(&hdr, Op::Rw, &data);
    assert_eq!(read_exactly(&mut b, 3000), data);
    assert_eq!(conn.fwd_cnt(), 3000);
    assert_eq!(conn.pending_to_host(), 0);
    // 3000 of 64 KiB used: no credit update needed yet.
    assert!(!conn.has_rx());
    // The guest asks anyway.
    conn.send_pkt(&guest(Op::CreditRequest, 4096, 0), Op::CreditRequest, &[]);
    let (upd, _) = recv(&mut conn).unwrap();
    assert_eq!(
        (upd.op(), upd.fwd_cnt, upd.buf_alloc),
        (Some(Op::CreditUpdate), 3000, 64 * 1024)
    );
    assert!(!conn.has_rx());
}

#[test]
fn a_host_that_does_not_read_stops_the_guest_and_overflow_resets() {
    let (mut conn, mut b) = established(4096);
    let chunk = pattern(4096, 3);
    let mut sent = 0usize;
    // Fill the socket, then our 64 KiB buffer.
    while conn.state() == ConnState::Established {
        let mut hdr = guest(Op::Rw, 4096, 0);
        hdr.len = 4096;
        conn.send_pkt(&hdr, Op::Rw, &chunk);
        sent += 4096;
        assert!(sent < 8 * 1024 * 1024, "never pushed back");
        assert!(conn.pending_to_host() <= 64 * 1024);
        if conn.state() == ConnState::Established && conn.pending_to_host() > 0 {
            // The host is not reading: no credit comes back, and we wait
            // for the stream to become writable.
            assert_eq!(conn.interest().map(|i| i.write), Some(true));
            assert!(u64::from(conn.fwd_cnt()) + conn.pending_to_host() as u64 == sent as u64);
        }
    }
    // The guest ignored its credit: reset.
    assert_eq!(conn.close_reason(), Some(CloseReason::CreditViolation));
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::Rst));
    let forwarded = conn.fwd_cnt() as usize;
    assert!(forwarded < sent - 4096, "the host was never full");
    drop(conn);
    // A reset drops what the host had not taken; what it took is intact.
    let got = read_to_end(&mut b);
    assert_eq!(got.len(), forwarded);
    assert!(got.chunks(4096).all(|c| c == chunk.as_slice()));
}

#[test]
fn draining_the_host_sends_credit_updates() {
    let (mut conn, mut b) = established(4096);
    let chunk = pattern(4096, 4);
    let mut sent = 0u32;
    // 60 KiB: the guest believes less than 32 KiB are free once the host
    // reads; until then no update.
    while sent < 60 * 1024 {
        let mut hdr = guest(Op::Rw, 4096, 0);
        hdr.len = 4096;
        conn.send_pkt(&hdr, Op::Rw, &chunk);
        sent += 4096;
    }
    b.set_nonblocking(true).unwrap();
    let mut host = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match b.read(&mut buf) {
            Ok(n) => host.extend_from_slice(&buf[..n]),
            Err(_) => {
                conn.notify(false, true, false);
                if conn.pending_to_host() == 0 && host.len() == sent as usize {
                    break;
                }
            }
        }
    }
    assert_eq!(conn.fwd_cnt(), sent);
    assert!(conn.has_rx());
    let (upd, _) = recv(&mut conn).unwrap();
    assert_eq!((upd.op(), upd.fwd_cnt), (Some(Op::CreditUpdate), sent));
    assert!(!conn.has_rx());
}

#[test]
fn guest_shutdown_half_closes_then_resets() {
    let (mut conn, mut b) = established(4096);
    let mut hdr = guest(Op::Rw, 4096, 0);
    hdr.len = 5;
    conn.send_pkt(&hdr, Op::Rw, b"bye!\n");
    let mut shut = guest(Op::Shutdown, 4096, 0);
    shut.flags = SHUTDOWN_SEND;
    conn.send_pkt(&shut, Op::Shutdown, &[]);
    // The host reads the data, then EOF; it can still write.
    assert_eq!(read_to_end(&mut b), b"bye!\n");
    b.write_all(b"reply").unwrap();
    conn.notify(true, false, false);
    assert_eq!(recv(&mut conn).unwrap().1, b"reply");
    // More data after SHUTDOWN_SEND is a protocol error... but first the
    // graceful end: both flags, and we answer RST.
    shut.flags = SHUTDOWN_BOTH;
    conn.send_pkt(&shut, Op::Shutdown, &[]);
    assert_eq!(conn.close_reason(), Some(CloseReason::GuestShutdown));
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::Rst));
    assert!(conn.is_closed());
}

#[test]
fn host_half_close_and_close() {
    let (mut conn, b) = established(4096);
    (&b).write_all(b"last words").unwrap();
    b.shutdown(std::net::Shutdown::Write).unwrap();
    conn.notify(true, false, false);
    assert_eq!(recv(&mut conn).unwrap().1, b"last words");
    // A short read: wait for epoll, which reports the EOF as readable.
    assert!(!conn.has_rx());
    assert_eq!(conn.interest().map(|i| i.read), Some(true));
    conn.notify(true, false, false);
    let (shut, _) = recv(&mut conn).unwrap();
    assert_eq!((shut.op(), shut.flags), (Some(Op::Shutdown), SHUTDOWN_SEND));
    // Nothing more to read: no read interest (no EOF spin).
    assert_eq!(conn.interest().map(|i| i.read), Some(false));
    // The guest still sends; the host still reads.
    let mut hdr = guest(Op::Rw, 4096, 0);
    hdr.len = 3;
    conn.send_pkt(&hdr, Op::Rw, b"ack");
    let mut b = b;
    assert_eq!(read_exactly(&mut b, 3), b"ack");
    // Now the host closes for good: the guest learns it cannot send.
    drop(b);
    conn.notify(false, false, true);
    assert_eq!(conn.interest(), None);
    let (shut, _) = recv(&mut conn).unwrap();
    assert_eq!((shut.op(), shut.flags), (Some(Op::Shutdown), SHUTDOWN_BOTH));
    assert!(!conn.has_rx());
}

#[test]
fn host_close_delivers_pending_data_then_shutdown() {
    let (mut conn, mut b) = established(4);
    b.write_all(b"0123456789").unwrap();
    drop(b);
    conn.notify(true, false, true);
    // Deregistered, yet the data still comes, as credit allows.
    assert_eq!(conn.interest(), None);
    assert_eq!(recv(&mut conn).unwrap().1, b"0123");
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::CreditRequest));
    assert!(!conn.has_rx());
    conn.send_pkt(&guest(Op::CreditUpdate, 100, 4), Op::CreditUpdate, &[]);
    assert_eq!(recv(&mut conn).unwrap().1, b"456789");
    let (shut, _) = recv(&mut conn).unwrap();
    assert_eq!((shut.op(), shut.flags), (Some(Op::Shutdown), SHUTDOWN_BOTH));
}

#[test]
fn writing_to_a_closed_host_resets() {
    let (a, mut b) = pair();
    let mut conn = Connection::new_local_init(HostSocket::new(a), GUEST_CID, LOCAL, PEER, 4096);
    recv(&mut conn).unwrap();
    conn.send_pkt(&guest(Op::Response, 4096, 0), Op::Response, &[]);
    read_exactly(&mut b, 14);
    drop(b);
    let mut hdr = guest(Op::Rw, 4096, 0);
    hdr.len = 4;
    conn.send_pkt(&hdr, Op::Rw, b"lost");
    assert_eq!(conn.close_reason(), Some(CloseReason::HostIo));
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::Rst));
}

#[test]
fn nonsense_from_the_guest_resets() {
    // Data before the RESPONSE.
    let (a, _b) = pair();
    let mut conn = Connection::new_local_init(a, GUEST_CID, LOCAL, PEER, 4096);
    recv(&mut conn).unwrap();
    conn.send_pkt(&guest(Op::Rw, 0, 0), Op::Rw, b"x");
    assert_eq!(conn.close_reason(), Some(CloseReason::Protocol));
    assert_eq!(recv(&mut conn).unwrap().0.op(), Some(Op::Rst));

    // A REQUEST or RESPONSE on an established connection.
    for op in [Op::Request, Op::Response] {
        let (mut conn, _b) = established(4096);
        conn.send_pkt(&guest(op, 0, 0), op, &[]);
        assert_eq!(conn.close_reason(), Some(CloseReason::Protocol));
    }

    // Data after SHUTDOWN_SEND.
    let (mut conn, _b) = established(4096);
    let mut shut = guest(Op::Shutdown, 4096, 0);
    shut.flags = SHUTDOWN_SEND;
    conn.send_pkt(&shut, Op::Shutdown, &[]);
    conn.send_pkt(&guest(Op::Rw, 4096, 0), Op::Rw, b"x");
    assert_eq!(conn.close_reason(), Some(CloseReason::Protocol));

    // A RST while closing ends it without our RST.
    assert_eq!(conn.state(), ConnState::Closing);
    conn.send_pkt(&guest(Op::Rst, 0, 0), Op::Rst, &[]);
    assert!(conn.is_closed());
    assert!(recv(&mut conn).is_none());
}

#[test]
fn guest_shutdown_rcv_stops_reading_the_host() {
    let (mut conn, mut b) = established(4096);
    let mut shut = guest(Op::Shutdown, 4096, 0);
    shut.flags = SHUTDOWN_RCV;
    conn.send_pkt(&shut, Op::Shutdown, &[]);
    b.write_all(b"ignored").unwrap();
    conn.notify(true, false, false);
    assert!(!conn.has_rx());
    assert_eq!(conn.interest().map(|i| i.read), Some(false));
}
