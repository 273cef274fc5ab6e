//! Whatever the guest or a host program sends, the device answers sensibly
//! (RST or silence), never panics, and keeps serving.

use super::*;
use crate::virtio::test_utils::RawDesc;
use crate::virtio::vsock::packet::TYPE_SEQPACKET;

fn valid_hdr() -> PacketHeader {
    PacketHeader {
        buf_alloc: GUEST_BUF_ALLOC,
        ..PacketHeader::stream(Op::Rw, (GUEST_CID, 5555), (HOST_CID, 66))
    }
}

/// Sends `hdr` + `payload` as one readable buffer; returns the replies.
fn send_packet(h: &mut Harness, hdr: &PacketHeader, payload: &[u8]) -> Vec<Rx> {
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(payload);
    let addr = h.guest_bytes(&bytes);
    h.send_tx_chain(&[Buf::readable(addr, bytes.len() as u32)]);
    h.take_rx()
}

fn assert_single_rst_to(replies: &[Rx], hdr: &PacketHeader) {
    assert_eq!(replies.len(), 1, "{replies:?}");
    let rst = &replies[0].hdr;
    assert_eq!(rst.op(), Some(Op::Rst));
    assert_eq!(
        (rst.src_cid, rst.src_port, rst.dst_cid, rst.dst_port),
        (HOST_CID, hdr.dst_port, hdr.src_cid, hdr.src_port)
    );
}

#[test]
fn malformed_packets_are_reset_or_dropped() {
    let mut h = Harness::new();
    let base = valid_hdr();

    // Answered with RST.
    for (hdr, payload) in [
        (
            PacketHeader {
                type_: TYPE_SEQPACKET,
                op: Op::Request as u16,
                ..base
            },
            &b""[..],
        ),
        (PacketHeader { op: 0, ..base }, b""),
        (PacketHeader { op: 99, ..base }, b""),
        (
            PacketHeader {
                len: 64 * 1024 + 1,
                ..base
            },
            b"",
        ),
        (PacketHeader { len: 100, ..base }, b"only ten b"),
        (
            PacketHeader {
                op: Op::Request as u16,
                len: 3,
                ..base
            },
            b"abc",
        ),
        // Well-formed, but for no connection.
        (PacketHeader { len: 2, ..base }, b"hi"),
        (
            PacketHeader {
                op: Op::CreditUpdate as u16,
                ..base
            },
            b"",
        ),
        (
            PacketHeader {
                op: Op::Shutdown as u16,
                flags: SHUTDOWN_BOTH,
                ..base
            },
            b"",
        ),
    ] {
        let replies = send_packet(&mut h, &hdr, payload);
        assert_single_rst_to(&replies, &hdr);
    }

    // Dropped silently: a spoofed source, a destination that is not the
    // host (a reset would have to speak for that CID), a RST (even a
    // malformed one), and anything shorter than a header.
    for hdr in [
        PacketHeader { src_cid: 4, ..base },
        PacketHeader { dst_cid: 7, ..base },
        PacketHeader {
            op: Op::Rst as u16,
            ..base
        },
        PacketHeader {
            op: Op::Rst as u16,
            type_: 9,
            ..base
        },
    ] {
        assert!(send_packet(&mut h, &hdr, b"").is_empty());
    }
    let short = h.guest_bytes(&[0xab; 20]);
    h.send_tx_chain(&[Buf::readable(short, 20)]);
    assert!(h.take_rx().is_empty());

    assert_eq!(h.metric(|m| &m.tx_malformed), 10);
    assert_eq!(h.connection_count(), 0);
    h.assert_still_serving(1);
}

#[test]
fn broken_tx_chains_are_consumed_and_dropped() {
    let mut h = Harness::new();
    // Only a device-writable buffer: no bytes to read.
    let w = h.rx.alloc(64);
    h.send_tx_chain(&[Buf::writable(w, 64)]);
    // A descriptor outside guest memory.
    h.send_tx_chain(&[Buf::readable(GuestAddress(0x7fff_0000), 44)]);
    // A descriptor loop.
    let hdr = h.guest_bytes(&valid_hdr().to_bytes());
    let [a, b] = h.tx.reserve_descs(2)[..] else {
        unreachable!()
    };
    h.tx.write_desc(
        a,
        RawDesc {
            addr: hdr.raw_value(),
            len: 44,
            flags: crate::virtio::test_utils::F_NEXT,
            next: b,
        },
    );
    h.tx.write_desc(
        b,
        RawDesc {
            addr: hdr.raw_value(),
            len: 44,
            flags: crate::virtio::test_utils::F_NEXT,
            next: a,
        },
    );
    h.tx.publish(a);
    h.tx_outstanding += 1;
    h.kicks[TX_QUEUE].write(1).unwrap();
    h.pump();
    // Every chain came back; nothing was crashed or wedged.
    assert_eq!(h.tx.used_idx(), 3);
    h.take_rx();
    h.assert_still_serving(2);
}

#[test]
fn headers_and_payloads_may_be_split_anywhere() {
    let mut h = Harness::new();
    let (mut host, mut conn) = h.connected(3);
    let mut hdr = conn.hdr(Op::Rw);
    hdr.len = 11;
    conn.tx_cnt += 11;
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(b"split bytes");
    let addr = h.guest_bytes(&bytes);
    // 10 + 30 + 8 + 7 bytes: the header straddles three descriptors.
    let cuts = [0u64, 10, 40, 48, bytes.len() as u64];
    let bufs: Vec<Buf> = cuts
        .windows(2)
        .map(|w| Buf::readable(addr.unchecked_add(w[0]), (w[1] - w[0]) as u32))
        .collect();
    h.send_tx_chain(&bufs);
    assert_eq!(read_exactly(&mut host, 11), b"split bytes");
}

#[test]
fn split_rx_buffers_work_like_single_ones() {
    let mut h = Harness::inactive();
    h.split_rx = true;
    h.activate();
    h.refill_rx();
    h.pump();
    h.assert_still_serving(4);
}

#[test]
fn unusable_rx_buffers_come_back_empty() {
    let mut h = Harness::inactive();
    h.activate();
    h.auto_refill = false;
    // Only bad buffers: too small for a header, and outside guest memory.
    let tiny = h.rx.alloc(16);
    h.post_rx_chain(&[Buf::writable(tiny, 16)]);
    h.post_rx_chain(&[Buf::writable(GuestAddress(0x7fff_0000), 4096)]);
    h.pump();
    // A host connection makes the device try them.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 5\n").unwrap();
    h.pump();
    assert_eq!(h.empty_rx, 2);
    assert_eq!(h.metric(|m| &m.rx_bad_buffers), 2);
    assert!(h.inbox.is_empty());
    // The REQUEST waited for real buffers.
    h.auto_refill = true;
    h.refill_rx();
    let req = h.wait_request_to(5);
    let mut conn = GuestConn::new(5, req.hdr.src_port);
    h.accept(&mut host, &mut conn);
}

#[test]
fn bad_connect_lines_close_the_host_stream() {
    let mut h = Harness::new();
    let too_long = [b'C'; 40];
    let long_digits = format!("CONNECT {}\n", "1".repeat(20));
    for line in [
        &b"CONNECT abc\n"[..],
        b"CONNECT 99999999999\n",
        b"CONNECT -5\n",
        b"HELLO\n",
        b"\n",
        b"\x00\xff\x10garbage\n",
        &too_long,
        long_digits.as_bytes(),
    ] {
        let mut host = UnixStream::connect(&h.uds).unwrap();
        host.write_all(line).unwrap();
        h.pump();
        assert!(
            is_closed_without_data(&mut host),
            "{:?} was not refused",
            String::from_utf8_lossy(line)
        );
    }
    // A connection that ends before its newline.
    let mut host = UnixStream::connect(&h.uds).unwrap();
    host.write_all(b"CONNECT 5").unwrap();
    host.shutdown(std::net::Shutdown::Write).unwrap();
    h.pump();
    assert!(is_closed_without_data(&mut host));
    // And one that goes away at once.
    drop(UnixStream::connect(&h.uds).unwrap());
    h.pump();

    assert!(h.take_rx().is_empty(), "the guest saw a bad connection");
    assert_eq!(h.metric(|m| &m.handshake_errors), 10);
    assert_eq!(h.connection_count(), 0);
    h.assert_still_serving(6);
}

#[test]
fn a_connect_line_may_arrive_byte_by_byte() {
    let mut h = Harness::new();
    let mut host = UnixStream::connect(&h.uds).unwrap();
    for byte in b"CONNECT 42\n" {
        host.write_all(std::slice::from_ref(byte)).unwrap();
        h.pump();
    }
    let req = h.wait_request_to(42);
    let mut conn = GuestConn::new(42, req.hdr.src_port);
    h.accept(&mut host, &mut conn);
}

#[test]
fn a_guest_ignoring_its_credit_is_reset() {
    let mut h = Harness::new();
    let (host, mut conn) = h.connected(7);
    // The host reads nothing. The guest sends far past the 256 KiB the
    // device advertised, ignoring credit.
    let chunk = pattern(TX_CHUNK, 2);
    let mut sent = 0;
    while !conn.reset {
        h.send(&mut conn, Op::Rw, &chunk);
        h.take_for(&mut conn);
        sent += TX_CHUNK;
        assert!(sent <= 4 * 1024 * 1024, "never reset");
    }
    assert_eq!(h.metric(|m| &m.credit_violations), 1);
    assert_eq!(h.connection_count(), 0);
    let mut host = host;
    host.set_nonblocking(false).unwrap();
    // The host gets what the device had forwarded, then EOF.
    let got = read_to_end(&mut host);
    assert!(got.len() < sent);
    assert!(got.chunks(TX_CHUNK).all(|c| c == &chunk[..c.len()]));
    h.assert_still_serving(8);
}

#[test]
fn a_duplicate_request_resets_the_live_connection() {
    let mut h = Harness::new();
    let listener = std::os::unix::net::UnixListener::bind(h.port_path(90)).unwrap();
    let mut conn = GuestConn::new(777, 90);
    h.send(&mut conn, Op::Request, &[]);
    h.wait_for(&mut conn, Op::Response);
    let (mut host, _) = listener.accept().unwrap();
    h.send(&mut conn, Op::Request, &[]);
    h.wait_for(&mut conn, Op::Rst);
    assert!(is_closed_without_data(&mut host));
    assert_eq!(h.connection_count(), 0);
}
