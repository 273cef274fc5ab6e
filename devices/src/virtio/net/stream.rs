//! A network backend on a connected Unix stream socket, framed as QEMU's
//! `-netdev stream` and passt speak it: every Ethernet frame is preceded by
//! its length as a 32-bit big-endian number, with no virtio-net header.
//!
//! This is how an unprivileged user gets a network: passt (a userspace
//! TCP/IP stack) holds the other end and turns frames into ordinary socket
//! calls on the host, so no TAP, bridge or root is needed.
//!
//! Frames carry no virtio-net header, so no checksum or segmentation
//! offload can cross: the device offers none of them over this backend
//! ([`NetBackend::offloads`] is false) and every frame is complete.
//!
//! Reading never takes more from the socket than the frame in progress,
//! so a frame the device has no room for stays in the socket and the fd's
//! level-triggered readiness still says so.
//!
//! Writing never blocks and never drops: a frame the socket takes only
//! part of is kept and finished before any other, and one it cannot take
//! at all is refused, so the device waits for the socket to be writable
//! ([`NetBackend::backpressure`]) with the guest's frames in its ring. A
//! dropped frame would be recovered by TCP in the guest, but a userspace
//! stack such as Debian 12's passt mishandles the reordering: a FIN that
//! overtakes a dropped segment ends the connection early.

use std::io::{self, IoSlice, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;

use super::tap::NetBackend;
use super::{ETH_HLEN, MAX_FRAME_LEN, VNET_HDR_LEN};

/// Bytes of the length that precedes each frame.
const LEN_BYTES: usize = 4;

/// The frame being read.
#[derive(Debug)]
enum RxFrame {
    /// Reading the length: bytes of it so far.
    Length { got: usize },
    /// Reading a frame of `len` bytes: `got` so far.
    Body { len: usize, got: usize },
    /// Discarding a frame too long for the device: `left` bytes to go.
    Discard { len: usize, left: usize },
}

/// A stream socket carrying length-prefixed Ethernet frames.
#[derive(Debug)]
pub struct Stream {
    socket: UnixStream,
    length: [u8; LEN_BYTES],
    rx: RxFrame,
    frame: Vec<u8>,
    /// The end of a frame the peer did not take yet: sent before anything
    /// else.
    tx_rest: Vec<u8>,
}

impl Stream {
    /// Takes over a connected stream socket (made non-blocking here).
    pub fn new(fd: OwnedFd) -> io::Result<Self> {
        let socket = UnixStream::from(fd);
        socket.set_nonblocking(true)?;
        Ok(Stream {
            socket,
            length: [0; LEN_BYTES],
            rx: RxFrame::Length { got: 0 },
            frame: vec![0; MAX_FRAME_LEN],
            tx_rest: Vec::new(),
        })
    }

    /// Reads into `buf`; 0 (the peer closed) is an error, a partial frame
    /// must not look like the end of input.
    fn read_some(&mut self, range: std::ops::Range<usize>, into_length: bool) -> io::Result<usize> {
        let buf = if into_length {
            &mut self.length[range]
        } else {
            &mut self.frame[range]
        };
        match self.socket.read(buf)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the network backend closed its socket",
            )),
            n => Ok(n),
        }
    }

    /// Sends what is left of the last frame, as much as the socket takes
    /// now. Returns whether all of it went.
    fn flush_rest(&mut self) -> io::Result<bool> {
        while !self.tx_rest.is_empty() {
            match self.socket.write(&self.tx_rest) {
                Ok(n) => {
                    self.tx_rest.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }
}

impl AsRawFd for Stream {
    fn as_raw_fd(&self) -> RawFd {
        self.socket.as_raw_fd()
    }
}

impl NetBackend for Stream {
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.rx {
                RxFrame::Length { got } => {
                    let n = self.read_some(got..LEN_BYTES, true)?;
                    got_more(&mut self.rx, n);
                    if let RxFrame::Length { got: LEN_BYTES } = self.rx {
                        let len = u32::from_be_bytes(self.length) as usize;
                        self.rx = if !(ETH_HLEN..=MAX_FRAME_LEN).contains(&len) {
                            RxFrame::Discard { len, left: len }
                        } else {
                            RxFrame::Body { len, got: 0 }
                        };
                    }
                }
                RxFrame::Body { len, got } if got == len => {
                    self.rx = RxFrame::Length { got: 0 };
                    let packet = VNET_HDR_LEN + len;
                    if buf.len() < packet {
                        // Truncated, as the trait says: the device sees
                        // the length and drops it.
                        return Ok(packet);
                    }
                    // No offload crosses a stream: a zero header says the
                    // frame is complete and checksummed.
                    buf[..VNET_HDR_LEN].fill(0);
                    buf[VNET_HDR_LEN..packet].copy_from_slice(&self.frame[..len]);
                    return Ok(packet);
                }
                RxFrame::Body { len, got } => {
                    let n = self.read_some(got..len, false)?;
                    got_more(&mut self.rx, n);
                }
                RxFrame::Discard { len, left: 0 } => {
                    self.rx = RxFrame::Length { got: 0 };
                    // The device counts it as too short or too long.
                    return Ok(if len < ETH_HLEN {
                        len.max(1)
                    } else {
                        VNET_HDR_LEN + len
                    });
                }
                RxFrame::Discard { left, .. } => {
                    let take = left.min(self.frame.len());
                    let n = self.read_some(0..take, false)?;
                    got_more(&mut self.rx, n);
                }
            }
        }
    }

    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize> {
        if !self.flush_rest()? {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let frame = packet.get(VNET_HDR_LEN..).unwrap_or_default();
        let length = (frame.len() as u32).to_be_bytes();
        let total = LEN_BYTES + frame.len();
        let sent = loop {
            match self
                .socket
                .write_vectored(&[IoSlice::new(&length), IoSlice::new(frame)])
            {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Nothing of this frame went: refusing it keeps the
                // stream whole.
                Err(e) => return Err(e),
            }
        };
        if sent < total {
            let mut rest = Vec::with_capacity(total - sent);
            rest.extend_from_slice(length.get(sent..).unwrap_or_default());
            rest.extend_from_slice(&frame[sent.saturating_sub(LEN_BYTES)..]);
            // The frame is committed: the rest goes before anything else
            // (flush, or the next write).
            self.tx_rest = rest;
        }
        Ok(packet.len())
    }

    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }

    fn offloads(&self) -> bool {
        false
    }

    fn backpressure(&self) -> bool {
        true
    }

    fn flush(&mut self) -> io::Result<bool> {
        self.flush_rest()
    }
}

/// Advances the frame in progress by `n` bytes read.
fn got_more(rx: &mut RxFrame, n: usize) {
    match rx {
        RxFrame::Length { got } | RxFrame::Body { got, .. } => *got += n,
        RxFrame::Discard { left, .. } => *left -= n,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    fn pair() -> (Stream, UnixStream) {
        let (a, b) = UnixStream::pair().unwrap();
        (Stream::new(a.into()).unwrap(), b)
    }

    fn frame(len: usize, fill: u8) -> Vec<u8> {
        vec![fill; len]
    }

    fn framed(f: &[u8]) -> Vec<u8> {
        let mut v = (f.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(f);
        v
    }

    #[test]
    fn frames_read_whole_even_when_they_arrive_in_pieces() {
        let (mut s, mut peer) = pair();
        let mut buf = vec![0xee; VNET_HDR_LEN + MAX_FRAME_LEN + 1];
        let wire = [framed(&frame(60, 1)), framed(&frame(1514, 2))].concat();
        let err = s.read_packet(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        // Byte by byte through the length, then the rest.
        for b in &wire[..3] {
            peer.write_all(&[*b]).unwrap();
            assert_eq!(
                s.read_packet(&mut buf).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
        }
        peer.write_all(&wire[3..40]).unwrap();
        assert!(s.read_packet(&mut buf).is_err());
        peer.write_all(&wire[40..]).unwrap();
        assert_eq!(s.read_packet(&mut buf).unwrap(), VNET_HDR_LEN + 60);
        assert_eq!(&buf[..VNET_HDR_LEN], &[0; VNET_HDR_LEN]);
        assert_eq!(&buf[VNET_HDR_LEN..VNET_HDR_LEN + 60], &frame(60, 1)[..]);
        assert_eq!(s.read_packet(&mut buf).unwrap(), VNET_HDR_LEN + 1514);
        assert!(buf[VNET_HDR_LEN..VNET_HDR_LEN + 1514]
            .iter()
            .all(|b| *b == 2));
    }

    #[test]
    fn a_read_leaves_the_next_frame_in_the_socket() {
        let (mut s, mut peer) = pair();
        peer.write_all(&framed(&frame(100, 3))).unwrap();
        peer.write_all(&framed(&frame(100, 4))).unwrap();
        let mut buf = vec![0; VNET_HDR_LEN + MAX_FRAME_LEN + 1];
        s.read_packet(&mut buf).unwrap();
        let mut waiting = 0;
        // SAFETY: FIONREAD writes one int through the pointer, which points
        // to a live c_int.
        let r = unsafe { libc::ioctl(s.as_raw_fd(), libc::FIONREAD, &mut waiting) };
        assert_eq!(r, 0);
        assert_eq!(waiting, (LEN_BYTES + 100) as libc::c_int);
    }

    #[test]
    fn bad_lengths_are_skipped_and_the_stream_stays_in_step() {
        let (mut s, mut peer) = pair();
        let mut buf = vec![0; VNET_HDR_LEN + MAX_FRAME_LEN + 1];
        peer.write_all(&framed(&frame(MAX_FRAME_LEN + 1, 5)))
            .unwrap();
        peer.write_all(&framed(&frame(3, 6))).unwrap();
        peer.write_all(&framed(&frame(64, 7))).unwrap();
        let mut lens = Vec::new();
        while lens.len() < 3 {
            match s.read_packet(&mut buf) {
                Ok(n) => lens.push(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(
            lens,
            [VNET_HDR_LEN + MAX_FRAME_LEN + 1, 3, VNET_HDR_LEN + 64]
        );
        assert_eq!(buf[VNET_HDR_LEN], 7);
    }

    #[test]
    fn writes_drop_the_header_and_prefix_the_length() {
        let (mut s, mut peer) = pair();
        let mut packet = vec![0u8; VNET_HDR_LEN];
        packet.extend_from_slice(&frame(80, 9));
        assert_eq!(s.write_packet(&packet).unwrap(), packet.len());
        let mut got = vec![0; LEN_BYTES + 80];
        peer.read_exact(&mut got).unwrap();
        assert_eq!(got, framed(&frame(80, 9)));
    }

    #[test]
    fn a_full_socket_refuses_whole_frames_only() {
        let (mut s, mut peer) = pair();
        let mut packet = vec![0u8; VNET_HDR_LEN];
        packet.extend_from_slice(&frame(9000, 1));
        let (mut accepted, mut dropped) = (0usize, 0usize);
        for _ in 0..400 {
            match s.write_packet(&packet) {
                Ok(_) => accepted += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => dropped += 1,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(dropped > 0, "the socket never filled");
        assert!(!s.flush().unwrap() || s.tx_rest.is_empty());
        // Whatever was accepted arrives whole, in order, nothing else.
        peer.set_nonblocking(true).unwrap();
        let mut wire = Vec::new();
        loop {
            let mut chunk = vec![0; 1 << 16];
            match peer.read(&mut chunk) {
                Ok(n) => wire.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if s.flush().unwrap() {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
        }
        // One more read for what the last flush sent.
        let mut chunk = vec![0; 1 << 16];
        while let Ok(n) = peer.read(&mut chunk) {
            wire.extend_from_slice(&chunk[..n]);
        }
        assert_eq!(wire.len(), accepted * (LEN_BYTES + 9000));
        for chunk in wire.chunks(LEN_BYTES + 9000) {
            assert_eq!(chunk, &framed(&frame(9000, 1))[..]);
        }
    }

    #[test]
    fn a_closed_peer_is_an_error_not_the_end_of_a_frame() {
        let (mut s, peer) = pair();
        drop(peer);
        // A test spawning a program at the same time may hold a copy of
        // the peer between its fork and exec: wait for the hang-up.
        let mut pfd = libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd on the stack; poll keeps no reference.
        let ready = unsafe { libc::poll(&mut pfd, 1, 5000) };
        assert_eq!(ready, 1);
        let mut buf = vec![0; 64];
        let e = s.read_packet(&mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}

#[cfg(test)]
mod passt_tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};

    /// An ARP request from 10.0.2.100 (MAC 02:..:01) for 10.0.2.2.
    fn arp_request() -> Vec<u8> {
        let mut f = vec![0xff; 6];
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
        f.extend_from_slice(&[0x08, 0x06]); // ARP
        f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 1]); // Ethernet/IPv4, request
        f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1, 10, 0, 2, 100]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[10, 0, 2, 2]);
        f.resize(60, 0);
        f
    }

    #[test]
    fn passt_answers_an_arp_request_over_the_stream() {
        let Some(passt) = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join("passt"))
            .find(|p| p.is_file())
        else {
            return husk_skip::skip("passt is not installed");
        };
        let (ours, theirs) = UnixStream::pair().unwrap();
        let fd = theirs.as_raw_fd();
        let mut cmd = std::process::Command::new(passt);
        cmd.args(["-f", "-q", "-4", "-F", "3", "-a", "10.0.2.100", "-n", "24"])
            .args(["-g", "10.0.2.2"])
            .stderr(std::process::Stdio::null());
        // SAFETY: dup2 is async-signal-safe; `fd` stays open until spawn
        // returns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().unwrap();
        drop(theirs);
        let mut s = Stream::new(ours.into()).unwrap();
        let mut packet = vec![0u8; VNET_HDR_LEN];
        packet.extend_from_slice(&arp_request());
        let mut buf = vec![0u8; VNET_HDR_LEN + MAX_FRAME_LEN + 1];
        let deadline = Instant::now() + Duration::from_secs(5);
        let reply = loop {
            let _ = s.write_packet(&packet);
            std::thread::sleep(Duration::from_millis(50));
            match s.read_packet(&mut buf) {
                Ok(n) => break buf[VNET_HDR_LEN..n].to_vec(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            assert!(Instant::now() < deadline, "no answer from passt");
        };
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(&reply[12..14], &[0x08, 0x06], "an ARP frame: {reply:02x?}");
        assert_eq!(&reply[20..22], &[0, 2], "a reply");
        assert_eq!(&reply[28..32], &[10, 0, 2, 2]);
    }
}
