//! Parsing a virtio-blk request out of a descriptor chain.
//!
//! This is the code that reads guest-controlled structures, so it is pure
//! (memory and chain in, [`Request`] or error out), takes nothing on trust
//! and never panics: it is the entry point for a future cargo-fuzz target.
//!
//! Accepted layout (what Linux, and every driver we know of, sends):
//! 1. one device-readable descriptor holding the 16-byte header
//!    (`le32 type, le32 reserved, le64 sector`);
//! 2. zero or more data descriptors, device-writable for IN and GET_ID,
//!    device-readable for OUT;
//! 3. a last, device-writable descriptor whose first byte receives the
//!    status.
//!
//! The header split across descriptors, or the status byte sharing a
//! descriptor with data, is legal under `VIRTIO_F_ANY_LAYOUT` but is
//! rejected here; no driver we serve does it.

use crate::virtio::GuestMemoryMmap;
use log::debug;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::SECTOR_SIZE;

/// Size of `struct virtio_blk_outhdr`.
pub const HEADER_SIZE: u32 = 16;

/// What the driver asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// `VIRTIO_BLK_T_IN`: read sectors into the data buffers.
    In,
    /// `VIRTIO_BLK_T_OUT`: write the data buffers to sectors.
    Out,
    /// `VIRTIO_BLK_T_FLUSH`: make completed writes durable.
    Flush,
    /// `VIRTIO_BLK_T_GET_ID`: return the 20-byte device serial.
    GetId,
    /// Anything else; answered with `VIRTIO_BLK_S_UNSUPP`.
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => RequestType::In,
            VIRTIO_BLK_T_OUT => RequestType::Out,
            VIRTIO_BLK_T_FLUSH => RequestType::Flush,
            VIRTIO_BLK_T_GET_ID => RequestType::GetId,
            other => RequestType::Unsupported(other),
        }
    }
}

/// One data buffer of a request, already checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataSegment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes, never 0.
    pub len: u32,
}

/// A well-formed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The operation.
    pub request_type: RequestType,
    /// First sector (meaningful for IN and OUT only).
    pub sector: u64,
    /// Data buffers, in order. Empty for FLUSH and unsupported types.
    pub data: Vec<DataSegment>,
    /// Sum of the data buffer lengths.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status_addr: GuestAddress,
}

/// Why a chain is not a valid request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The head index is outside the descriptor table, or the table entry
    /// cannot be read.
    #[error("descriptor chain is empty")]
    EmptyChain,
    /// The chain was cut short: a `next` loop, more descriptors than the
    /// queue size, a `next` index outside the table, or an unreadable
    /// descriptor.
    #[error("descriptor chain does not terminate")]
    UnterminatedChain,
    /// The last descriptor cannot take the status byte (it is
    /// device-readable, empty, or outside guest memory).
    #[error("last descriptor cannot hold the status byte")]
    BadStatusDescriptor,
    /// Fewer than the two descriptors (header, status) every request needs.
    #[error("descriptor chain has {0} descriptor(s), a request needs at least 2")]
    TooShort(usize),
    /// The header descriptor is device-writable.
    #[error("request header is not device-readable")]
    HeaderNotReadable,
    /// The header descriptor is shorter than 16 bytes.
    #[error("request header descriptor is {0} bytes, expected at least 16")]
    HeaderTooShort(u32),
    /// A descriptor has length 0.
    #[error("descriptor {0} of the chain is empty")]
    ZeroLengthDescriptor(usize),
    /// A descriptor points (partly) outside guest memory.
    #[error("descriptor {index} ({addr:#x}, {len} bytes) is outside guest memory")]
    OutOfGuestMemory {
        /// Position in the chain.
        index: usize,
        /// Guest-physical address.
        addr: u64,
        /// Length.
        len: u32,
    },
    /// A data descriptor is readable where it must be writable, or the
    /// other way around.
    #[error("data descriptor {0} has the wrong direction for this request")]
    WrongDirection(usize),
    /// IN or OUT data is not a whole number of sectors.
    #[error("data length {0} is not a multiple of 512")]
    UnalignedDataLength(u64),
    /// IN, OUT or GET_ID without a data buffer.
    #[error("request has no data buffer")]
    MissingData,
    /// FLUSH with data buffers.
    #[error("flush request carries data buffers")]
    UnexpectedData,
}

/// A rejected chain, with where (if anywhere) the device can still report
/// `VIRTIO_BLK_S_IOERR` to the driver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFailure {
    /// What is wrong.
    pub error: RequestError,
    /// The status byte, if the chain ends in a usable one.
    pub status_addr: Option<GuestAddress>,
}

/// Parses the chain popped from a virtio-blk queue.
pub fn parse_request(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
) -> Result<Request, ParseFailure> {
    // The chain iterator yields at most queue-size descriptors (its TTL) and
    // silently stops on a bad `next` index or an unreadable entry. In every
    // one of those cases the last descriptor it yielded still has NEXT set,
    // which is how truncation is told apart from a proper end.
    let descs: Vec<Descriptor> = chain.collect();
    let fail = |error, status_addr| {
        debug!("virtio-blk: rejecting request: {error}");
        ParseFailure { error, status_addr }
    };

    let Some(last) = descs.last() else {
        return Err(fail(RequestError::EmptyChain, None));
    };
    if last.has_next() {
        return Err(fail(RequestError::UnterminatedChain, None));
    }
    if !last.is_write_only() || last.len() == 0 || !mem.check_range(last.addr(), 1) {
        return Err(fail(RequestError::BadStatusDescriptor, None));
    }
    let status_addr = last.addr();
    let fail = |error| fail(error, Some(status_addr));

    if descs.len() < 2 {
        return Err(fail(RequestError::TooShort(descs.len())));
    }
    let header = descs[0];
    if header.is_write_only() {
        return Err(fail(RequestError::HeaderNotReadable));
    }
    if header.len() < HEADER_SIZE {
        return Err(fail(RequestError::HeaderTooShort(header.len())));
    }
    let out_of_memory = |index: usize, desc: &Descriptor| RequestError::OutOfGuestMemory {
        index,
        addr: desc.addr().raw_value(),
        len: desc.len(),
    };
    // Header fields are little endian in virtio 1.x.
    let read_header = || -> Option<(u32, u64)> {
        let request_type = mem.read_obj::<u32>(header.addr()).ok()?;
        let sector = mem.read_obj::<u64>(header.addr().checked_add(8)?).ok()?;
        Some((u32::from_le(request_type), u64::from_le(sector)))
    };
    let (request_type, sector) = read_header().ok_or_else(|| fail(out_of_memory(0, &header)))?;
    let request_type = RequestType::from(request_type);

    // Requests we will not execute are answered UNSUPP whatever their data
    // looks like, as the spec asks.
    let device_writes = match request_type {
        RequestType::In | RequestType::GetId => true,
        RequestType::Out | RequestType::Flush => false,
        RequestType::Unsupported(_) => {
            return Ok(Request {
                request_type,
                sector,
                data: Vec::new(),
                data_len: 0,
                status_addr,
            })
        }
    };

    let mut data = Vec::with_capacity(descs.len() - 2);
    let mut data_len = 0u64;
    for (offset, desc) in descs[1..descs.len() - 1].iter().enumerate() {
        let index = offset + 1;
        if desc.len() == 0 {
            return Err(fail(RequestError::ZeroLengthDescriptor(index)));
        }
        if desc.is_write_only() != device_writes {
            return Err(fail(RequestError::WrongDirection(index)));
        }
        if !mem.check_range(desc.addr(), desc.len() as usize) {
            return Err(fail(out_of_memory(index, desc)));
        }
        data.push(DataSegment {
            addr: desc.addr(),
            len: desc.len(),
        });
        data_len += u64::from(desc.len());
    }

    match request_type {
        RequestType::In | RequestType::Out if data.is_empty() => {
            return Err(fail(RequestError::MissingData))
        }
        RequestType::In | RequestType::Out if data_len % SECTOR_SIZE != 0 => {
            return Err(fail(RequestError::UnalignedDataLength(data_len)))
        }
        RequestType::GetId if data.is_empty() => return Err(fail(RequestError::MissingData)),
        RequestType::Flush if !data.is_empty() => return Err(fail(RequestError::UnexpectedData)),
        _ => {}
    }

    Ok(Request {
        request_type,
        sector,
        data,
        data_len,
        status_addr,
    })
}
