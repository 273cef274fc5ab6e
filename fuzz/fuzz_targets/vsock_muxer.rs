//! The vsock muxer driven by a script the fuzzer writes: guest packets
//! (through `parse_tx_packet`, as the device takes them), host connections
//! with their `CONNECT` lines, host-side reads and writes, readiness of
//! every fd the muxer watches, and draining what it has for the guest.
//! Never a panic, and what it has for the guest always fits the buffer.
#![no_main]
use event_manager::EventSet;
use husk_devices::virtio::vsock::muxer::FdChange;
use husk_devices::virtio::vsock::{parse_tx_packet, Muxer, Op, PacketHeader, VsockMetrics};
use libfuzzer_sys::fuzz_target;
use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::Arc;

const GUEST_CID: u64 = 3;
/// The port a host service listens on (`<uds>_1024`).
const SERVICE: u32 = 1024;

/// Takes one byte (0 past the end).
fn byte(data: &mut &[u8]) -> u8 {
    let b = data.first().copied().unwrap_or(0);
    *data = data.get(1..).unwrap_or(&[]);
    b
}

/// A guest packet from the script: an op, small port numbers (so packets
/// meet the same connections), credit fields and a payload.
fn guest_packet(data: &mut &[u8]) -> Vec<u8> {
    let op = Op::from_u16(u16::from(byte(data) % 8)).unwrap_or(Op::Rw);
    let src = 2000 + u32::from(byte(data) % 4);
    let dst = match byte(data) % 4 {
        0 => SERVICE,
        1 => 1025,
        n => 49152 + u32::from(n),
    };
    let mut hdr = PacketHeader::stream(op, (GUEST_CID, src), (2, dst));
    hdr.buf_alloc = u32::from(byte(data)) << 8;
    hdr.fwd_cnt = u32::from(byte(data)) << 4;
    hdr.flags = u32::from(byte(data) % 4);
    let len = if op == Op::Rw { usize::from(byte(data)) } else { 0 };
    let payload: Vec<u8> = (0..len).map(|_| byte(data)).collect();
    hdr.len = payload.len() as u32;
    let mut bytes = hdr.to_bytes().to_vec();
    bytes.extend_from_slice(&payload);
    // Now and then a byte of it flipped: the checks see bad packets too.
    let flip = byte(data);
    if flip & 0x80 != 0 {
        let at = usize::from(flip & 0x3f) % bytes.len();
        bytes[at] ^= byte(data);
    }
    bytes
}

fuzz_target!(|input: &[u8]| {
    let mut data = input;
    let dir = tempfile::tempdir().unwrap();
    let uds = dir.path().join("v.sock");
    let service = UnixListener::bind(dir.path().join(format!("v.sock_{SERVICE}"))).unwrap();
    service.set_nonblocking(true).unwrap();
    let mut muxer = Muxer::new(GUEST_CID, &uds, Arc::new(VsockMetrics::default())).unwrap();
    let mut watched: BTreeSet<RawFd> = BTreeSet::new();
    let mut host: Vec<UnixStream> = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut steps = 0;
    while !data.is_empty() && steps < 256 {
        steps += 1;
        match byte(&mut data) % 6 {
            0 | 1 => {
                let bytes = guest_packet(&mut data);
                match parse_tx_packet(&bytes, GUEST_CID) {
                    Ok((hdr, op, payload)) => muxer.send_pkt(&hdr, op, payload),
                    Err((Some(hdr), _)) if !muxer.control_full() => {
                        muxer.queue_control(hdr.reset_reply())
                    }
                    Err(_) => {}
                }
            }
            2 => {
                // A host connection, with a CONNECT line or not.
                if let Ok(mut s) = UnixStream::connect(&uds) {
                    s.set_nonblocking(true).unwrap();
                    let line = match byte(&mut data) % 3 {
                        0 => format!("CONNECT {}\n", 1000 + u32::from(byte(&mut data) % 4)),
                        1 => "CONNECT 99999999999\n".to_string(),
                        _ => String::from_utf8_lossy(&[byte(&mut data), b'\n']).into_owned(),
                    };
                    let _ = s.write_all(line.as_bytes());
                    host.push(s);
                }
                muxer.on_listener_ready();
            }
            3 => {
                // The host side talks: the service accepts, every host
                // stream writes a little and reads what is there.
                while let Ok((s, _)) = service.accept() {
                    s.set_nonblocking(true).unwrap();
                    host.push(s);
                }
                let n = usize::from(byte(&mut data) % 64);
                let close = byte(&mut data);
                for (i, s) in host.iter_mut().enumerate() {
                    let _ = s.write(&input[..n.min(input.len())]);
                    let _ = s.read(&mut buf);
                    if close & (1 << (i % 8)) != 0 && close & 0x80 != 0 {
                        let _ = s.shutdown(std::net::Shutdown::Both);
                    }
                }
            }
            4 => {
                for fd in watched.clone() {
                    muxer.on_fd_event(fd, EventSet::IN | EventSet::OUT);
                }
            }
            _ => {
                while let Some(hdr) = muxer.recv_pkt(&mut buf) {
                    assert!(hdr.len as usize <= buf.len());
                }
            }
        }
        for change in muxer.take_fd_changes() {
            match change {
                FdChange::Add { fd, .. } => {
                    watched.insert(fd);
                }
                FdChange::Modify { .. } => {}
                FdChange::Remove { fd, .. } => {
                    watched.remove(&fd);
                }
                FdChange::Close(s) => {
                    watched.remove(&s.as_raw_fd());
                }
            }
        }
        watched.remove(&muxer.listener_fd());
    }
});
