//! Guest connections to `(CID 2, P)`, bridged to `<uds_path>_<P>`.

use std::os::unix::net::UnixListener;

use super::*;

/// The guest's REQUEST from guest port `port` to host port `to`.
fn guest_connect(h: &mut Harness, port: u32, to: u32) -> GuestConn {
    let mut conn = GuestConn::new(port, to);
    h.send(&mut conn, Op::Request, &[]);
    conn
}

#[test]
fn connect_to_a_host_listener_then_bytes_both_ways() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.port_path(52)).unwrap();
    let mut conn = guest_connect(&mut h, 40000, 52);
    let got = h.wait_for(&mut conn, Op::Response);
    assert_eq!(got.len(), 1);
    let resp = &got[0].hdr;
    assert_eq!(
        (resp.src_cid, resp.src_port, resp.dst_cid, resp.dst_port),
        (HOST_CID, 52, GUEST_CID, 40000)
    );
    let (mut host, _) = listener.accept().unwrap();

    h.send(&mut conn, Op::Rw, b"hello host");
    assert_eq!(read_exactly(&mut host, 10), b"hello host");
    host.write_all(b"hello guest").unwrap();
    assert_eq!(h.receive(&mut conn, 11), b"hello guest");
    assert_eq!(h.metric(|m| &m.conns_guest_initiated), 1);

    // Larger than every buffer on the way, both directions.
    let up = pattern(400 * 1024, 3);
    let down = pattern(200 * 1024, 4);
    let peer = {
        let mut host = host.try_clone().unwrap();
        let (up_len, down) = (up.len(), down.clone());
        std::thread::spawn(move || {
            let writer = {
                let mut host = host.try_clone().unwrap();
                std::thread::spawn(move || host.write_all(&down).unwrap())
            };
            let got = read_exactly(&mut host, up_len);
            writer.join().unwrap();
            got
        })
    };
    // Interleave: send a chunk's worth, then receive what arrived.
    let mut sent = 0;
    let start = conn.received.len();
    let deadline = Instant::now() + PATIENCE;
    while sent < up.len() || conn.received.len() - start < down.len() {
        assert!(Instant::now() < deadline, "transfer stalled");
        if sent < up.len() {
            let n = (conn.credit() as usize).min(TX_CHUNK).min(up.len() - sent);
            if n > 0 {
                h.send(&mut conn, Op::Rw, &up[sent..sent + n]);
                sent += n;
            }
        }
        h.take_for(&mut conn);
        if conn.free_for_device() < conn.buf_alloc / 2 {
            h.consume_and_update(&mut conn);
        }
        h.manager.run_with_timeout(1).unwrap();
    }
    assert_eq!(h.join(peer), up);
    assert_eq!(conn.received[start..], down[..]);
}

#[test]
fn connect_without_a_listener_is_reset() {
    let mut h = Harness::new();
    let mut conn = guest_connect(&mut h, 40001, 53);
    let got = h.wait_for(&mut conn, Op::Rst);
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].hdr.src_port, got[0].hdr.dst_port), (53, 40001));
    assert_eq!(h.metric(|m| &m.host_connect_failures), 1);
    assert_eq!(h.connection_count(), 0);

    // A socket file nobody listens on any more: refused, same answer.
    drop(UnixListener::bind(h.port_path(54)).unwrap());
    let mut conn = guest_connect(&mut h, 40002, 54);
    h.wait_for(&mut conn, Op::Rst);
}

#[test]
fn a_full_backlog_does_not_block_the_event_loop() {
    let mut h = Harness::new();
    let path = h.port_path(60);
    // A listener that never accepts, with the smallest backlog.
    let fd = nix::sys::socket::socket(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        nix::sys::socket::SockFlag::empty(),
        None,
    )
    .unwrap();
    let addr = nix::sys::socket::UnixAddr::new(&path).unwrap();
    nix::sys::socket::bind(std::os::fd::AsRawFd::as_raw_fd(&fd), &addr).unwrap();
    nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(0).unwrap()).unwrap();
    // Keep connecting until the device starts refusing; each refusal must
    // come back promptly (the loop would hang on a blocking connect).
    let mut refused = false;
    for port in 0..64 {
        let mut conn = guest_connect(&mut h, 41000 + port, 60);
        let got = h.wait_for_any(&mut conn, &[Op::Response, Op::Rst]);
        if got.iter().any(|rx| rx.op() == Some(Op::Rst)) {
            refused = true;
            break;
        }
    }
    assert!(refused, "the backlog never filled");
}

#[test]
fn guest_close_resets_and_the_host_sees_eof() {
    let mut h = Harness::new();
    let listener = UnixListener::bind(h.port_path(52)).unwrap();
    let mut conn = guest_connect(&mut h, 40003, 52);
    h.wait_for(&mut conn, Op::Response);
    let (mut host, _) = listener.accept().unwrap();
    h.send(&mut conn, Op::Rw, b"last");
    // close() in the guest: SHUTDOWN with both flags, then wait for RST.
    h.send_shutdown(&mut conn, SHUTDOWN_BOTH);
    h.wait_for(&mut conn, Op::Rst);
    assert_eq!(read_to_end(&mut host), b"last");
    assert_eq!(h.connection_count(), 0);
}
