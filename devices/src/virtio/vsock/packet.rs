//! The virtio-vsock packet header (virtio 1.2, 5.10.6) and the checks a
//! guest packet has to pass before the muxer looks at it.
//!
//! Pure byte-slice code: [`parse_header`] and [`parse_tx_packet`] take
//! whatever the guest put in its buffers, never panic and allocate nothing,
//! so they double as fuzz-target entry points.
//!
//! Every packet starts with a 44-byte little-endian header:
//!
//! ```text
//! 0  le64 src_cid     8  le64 dst_cid    16 le32 src_port   20 le32 dst_port
//! 24 le32 len         28 le16 type       30 le16 op         32 le32 flags
//! 36 le32 buf_alloc   40 le32 fwd_cnt
//! ```
//!
//! followed by `len` payload bytes (`OP_RW` only).

/// Size of `struct virtio_vsock_hdr`.
pub const HEADER_SIZE: usize = 44;

/// Largest payload the device accepts from the guest or puts in one rx
/// buffer. Linux never sends more (`VIRTIO_VSOCK_MAX_PKT_BUF_SIZE`).
pub const MAX_PAYLOAD: usize = 64 * 1024;

/// The only socket type the device speaks.
pub const TYPE_STREAM: u16 = 1;
/// `SOCK_SEQPACKET` (`VIRTIO_VSOCK_F_SEQPACKET`), which the device does not
/// offer; such packets are answered with a reset.
pub const TYPE_SEQPACKET: u16 = 2;

/// The host's CID: the device's side of every connection.
pub const HOST_CID: u64 = 2;

/// `VIRTIO_VSOCK_SHUTDOWN_F_RECEIVE`: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// `VIRTIO_VSOCK_SHUTDOWN_F_SEND`: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;
/// Both shutdown flags.
pub const SHUTDOWN_BOTH: u32 = SHUTDOWN_RCV | SHUTDOWN_SEND;

/// The operations of a stream socket (`VIRTIO_VSOCK_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Op {
    /// Connection request.
    Request = 1,
    /// Connection accepted.
    Response = 2,
    /// Connection reset (refused, aborted, or closed for good).
    Rst = 3,
    /// The sender stops receiving and/or sending (see `flags`).
    Shutdown = 4,
    /// Data.
    Rw = 5,
    /// The sender's `buf_alloc`/`fwd_cnt` changed.
    CreditUpdate = 6,
    /// Please send a credit update.
    CreditRequest = 7,
}

impl Op {
    /// The op for a wire value, if it is one.
    pub fn from_u16(value: u16) -> Option<Op> {
        Some(match value {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A decoded packet header. Fields hold the raw wire values; `type_` and
/// `op` are not checked by [`parse_header`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PacketHeader {
    /// Sender CID.
    pub src_cid: u64,
    /// Receiver CID.
    pub dst_cid: u64,
    /// Sender port.
    pub src_port: u32,
    /// Receiver port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type (`TYPE_STREAM`).
    pub type_: u16,
    /// Operation (`Op` as u16).
    pub op: u16,
    /// Shutdown flags for `OP_SHUTDOWN`, 0 otherwise.
    pub flags: u32,
    /// Sender's receive buffer size, for credit.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from its receive buffer, for credit.
    pub fwd_cnt: u32,
}

/// The header was shorter than [`HEADER_SIZE`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("packet header is {0} bytes, expected {HEADER_SIZE}")]
pub struct ShortHeader(pub usize);

/// Decodes the first [`HEADER_SIZE`] bytes of `bytes` (the rest is ignored).
pub fn parse_header(bytes: &[u8]) -> Result<PacketHeader, ShortHeader> {
    let Some(h) = bytes.get(..HEADER_SIZE) else {
        return Err(ShortHeader(bytes.len()));
    };
    // The slice is exactly HEADER_SIZE long, so every fixed range below is
    // in bounds and has the length of its array.
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[at..at + 8]);
        u64::from_le_bytes(b)
    };
    let u32_at = |at: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&h[at..at + 4]);
        u32::from_le_bytes(b)
    };
    let u16_at = |at: usize| u16::from_le_bytes([h[at], h[at + 1]]);
    Ok(PacketHeader {
        src_cid: u64_at(0),
        dst_cid: u64_at(8),
        src_port: u32_at(16),
        dst_port: u32_at(20),
        len: u32_at(24),
        type_: u16_at(28),
        op: u16_at(30),
        flags: u32_at(32),
        buf_alloc: u32_at(36),
        fwd_cnt: u32_at(40),
    })
}

impl PacketHeader {
    /// The wire encoding.
    pub fn to_bytes(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        b[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        b[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        b[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        b[24..28].copy_from_slice(&self.len.to_le_bytes());
        b[28..30].copy_from_slice(&self.type_.to_le_bytes());
        b[30..32].copy_from_slice(&self.op.to_le_bytes());
        b[32..36].copy_from_slice(&self.flags.to_le_bytes());
        b[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        b[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        b
    }

    /// The operation, if `op` is a known one.
    pub fn op(&self) -> Option<Op> {
        Op::from_u16(self.op)
    }

    /// A stream header for `op` with no payload, credit fields zero.
    pub fn stream(op: Op, src: (u64, u32), dst: (u64, u32)) -> Self {
        PacketHeader {
            src_cid: src.0,
            dst_cid: dst.0,
            src_port: src.1,
            dst_port: dst.1,
            type_: TYPE_STREAM,
            op: op as u16,
            ..PacketHeader::default()
        }
    }

    /// The reset answering this packet: addresses swapped, nothing else.
    pub fn reset_reply(&self) -> Self {
        // From the host's own CID whatever the packet claimed (packets for
        // another CID are dropped before it comes to this).
        PacketHeader::stream(
            Op::Rst,
            (HOST_CID, self.dst_port),
            (self.src_cid, self.src_port),
        )
    }
}

/// Why a guest packet is refused, and what the device does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// Fewer bytes than a header. Dropped: there is no address to answer.
    #[error("packet is {0} bytes, shorter than the {HEADER_SIZE}-byte header")]
    TooShort(usize),
    /// The source CID is not the guest's. Dropped: answering a spoofed
    /// address helps nobody.
    #[error("source CID {0} is not the guest's")]
    BadSrcCid(u64),
    /// Not addressed to the host. Dropped: husk answers only for its own CID.
    #[error("destination CID {0} is not the host")]
    BadDstCid(u64),
    /// Not `TYPE_STREAM`. Reset.
    #[error("socket type {0} is not supported")]
    UnsupportedType(u16),
    /// Not a known op. Reset.
    #[error("unknown op {0}")]
    UnknownOp(u16),
    /// `len` exceeds [`MAX_PAYLOAD`]. Reset.
    #[error("payload of {0} bytes exceeds the 64 KiB limit")]
    PayloadTooLarge(u32),
    /// `len` exceeds the bytes the descriptor chain carries. Reset.
    #[error("header announces {len} payload bytes, the buffer holds {available}")]
    PayloadTruncated {
        /// The header's `len`.
        len: u32,
        /// Bytes after the header.
        available: usize,
    },
    /// A payload on an op other than `OP_RW`. Reset.
    #[error("op {0:?} carries a payload")]
    UnexpectedPayload(Op),
}

impl PacketError {
    /// Whether the device answers the packet with a reset (it has a usable
    /// address pair) or silently drops it.
    pub fn wants_reset(&self) -> bool {
        !matches!(
            self,
            PacketError::TooShort(_) | PacketError::BadSrcCid(_) | PacketError::BadDstCid(_)
        )
    }
}

/// Parses and validates a packet the guest put on the tx queue: `bytes` is
/// the chain's device-readable content (header, then payload; anything past
/// `44 + len` is ignored).
///
/// On success the header is a well-formed stream packet from `guest_cid` to
/// the host, with a known op, and the payload slice has exactly `len` bytes.
/// On failure the header, when there is one, comes back too so the caller
/// can answer with [`PacketHeader::reset_reply`].
#[allow(clippy::type_complexity)]
pub fn parse_tx_packet(
    bytes: &[u8],
    guest_cid: u64,
) -> Result<(PacketHeader, Op, &[u8]), (Option<PacketHeader>, PacketError)> {
    let hdr = parse_header(bytes).map_err(|e| (None, PacketError::TooShort(e.0)))?;
    let fail = |e| Err((Some(hdr), e));
    if hdr.src_cid != guest_cid {
        return fail(PacketError::BadSrcCid(hdr.src_cid));
    }
    if hdr.dst_cid != HOST_CID {
        return fail(PacketError::BadDstCid(hdr.dst_cid));
    }
    if hdr.type_ != TYPE_STREAM {
        return fail(PacketError::UnsupportedType(hdr.type_));
    }
    let Some(op) = hdr.op() else {
        return fail(PacketError::UnknownOp(hdr.op));
    };
    let len = hdr.len as usize;
    if len > MAX_PAYLOAD {
        return fail(PacketError::PayloadTooLarge(hdr.len));
    }
    if len > 0 && op != Op::Rw {
        return fail(PacketError::UnexpectedPayload(op));
    }
    let available = bytes.len() - HEADER_SIZE;
    let Some(payload) = bytes.get(HEADER_SIZE..HEADER_SIZE + len) else {
        return fail(PacketError::PayloadTruncated {
            len: hdr.len,
            available,
        });
    };
    Ok((hdr, op, payload))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> PacketHeader {
        PacketHeader {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port: 0x1122_3344,
            dst_port: 52,
            len: 5,
            type_: TYPE_STREAM,
            op: Op::Rw as u16,
            flags: 0,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xdead_beef,
        }
    }

    #[test]
    fn header_round_trips_and_matches_the_spec_layout() {
        let hdr = sample();
        let bytes = hdr.to_bytes();
        assert_eq!(&bytes[0..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &0x1122_3344u32.to_le_bytes());
        assert_eq!(&bytes[28..30], &[1, 0]);
        assert_eq!(&bytes[30..32], &[5, 0]);
        assert_eq!(&bytes[40..44], &0xdead_beefu32.to_le_bytes());
        assert_eq!(parse_header(&bytes), Ok(hdr));
        // Trailing bytes are not the header's business.
        let mut longer = bytes.to_vec();
        longer.extend_from_slice(b"xyz");
        assert_eq!(parse_header(&longer), Ok(hdr));
    }

    #[test]
    fn short_headers_are_refused() {
        for len in [0, 1, 43] {
            assert_eq!(parse_header(&vec![0; len]), Err(ShortHeader(len)));
        }
    }

    #[test]
    fn ops_decode() {
        for v in 1..=7 {
            assert_eq!(Op::from_u16(v).map(|op| op as u16), Some(v));
        }
        assert_eq!(Op::from_u16(0), None);
        assert_eq!(Op::from_u16(8), None);
    }

    fn packet(hdr: &PacketHeader, payload: &[u8]) -> Vec<u8> {
        let mut v = hdr.to_bytes().to_vec();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn a_valid_rw_packet_parses_with_exactly_its_payload() {
        let bytes = packet(&sample(), b"hello, and more");
        let (hdr, op, payload) = parse_tx_packet(&bytes, 3).unwrap();
        assert_eq!((hdr, op, payload), (sample(), Op::Rw, &b"hello"[..]));
    }

    #[test]
    fn invalid_packets_say_whether_to_reset() {
        let check = |hdr: PacketHeader, payload: &[u8], want: PacketError| {
            let bytes = packet(&hdr, payload);
            let (got_hdr, err) = parse_tx_packet(&bytes, 3).unwrap_err();
            assert_eq!(err, want);
            assert_eq!(got_hdr, Some(hdr));
        };
        let base = sample();
        check(
            PacketHeader { src_cid: 4, ..base },
            b"hello",
            PacketError::BadSrcCid(4),
        );
        check(
            PacketHeader { dst_cid: 7, ..base },
            b"hello",
            PacketError::BadDstCid(7),
        );
        check(
            PacketHeader {
                type_: TYPE_SEQPACKET,
                ..base
            },
            b"hello",
            PacketError::UnsupportedType(2),
        );
        check(
            PacketHeader { op: 0, ..base },
            b"hello",
            PacketError::UnknownOp(0),
        );
        check(
            PacketHeader { len: 65537, ..base },
            b"",
            PacketError::PayloadTooLarge(65537),
        );
        check(
            base,
            b"hel",
            PacketError::PayloadTruncated {
                len: 5,
                available: 3,
            },
        );
        check(
            PacketHeader {
                op: Op::Request as u16,
                ..base
            },
            b"hello",
            PacketError::UnexpectedPayload(Op::Request),
        );
        assert_eq!(
            parse_tx_packet(&[0; 10], 3),
            Err((None, PacketError::TooShort(10)))
        );
        assert!(!PacketError::TooShort(0).wants_reset());
        assert!(!PacketError::BadSrcCid(9).wants_reset());
        // Only the host answers, and only for itself: a reset "from" another
        // CID would speak for a peer husk does not have.
        assert!(!PacketError::BadDstCid(9).wants_reset());
    }

    #[test]
    fn reset_reply_swaps_addresses() {
        let rst = sample().reset_reply();
        assert_eq!(
            (rst.src_cid, rst.src_port, rst.dst_cid, rst.dst_port),
            (HOST_CID, 52, 3, 0x1122_3344)
        );
        assert_eq!(
            (rst.op(), rst.len, rst.type_),
            (Some(Op::Rst), 0, TYPE_STREAM)
        );
    }
}
