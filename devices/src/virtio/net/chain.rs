//! Reading virtio-net descriptor chains.
//!
//! This is the code that reads guest-controlled structures, so it is pure
//! (memory and chain in, frame or segment list or error out), takes nothing
//! on trust and never panics.
//!
//! - A tx chain is device-readable descriptors only, holding the 12-byte
//!   header followed by the frame, split however the driver likes
//!   (`VIRTIO_F_ANY_LAYOUT` is implied by virtio 1.x).
//! - An rx chain is device-writable descriptors only; together they must at
//!   least hold the header (with `VIRTIO_NET_F_MRG_RXBUF` every buffer must,
//!   virtio 1.2 5.1.6.3.1, and without it a smaller chain is useless).
//!
//! Zero-length descriptors are legal and skipped.

use crate::virtio::GuestMemoryMmap;
use log::debug;
use virtio_queue::desc::split::Descriptor;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use super::{ETH_HLEN, VNET_HDR_LEN};

/// Why a chain cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The head index is outside the descriptor table, or its entry cannot
    /// be read.
    #[error("descriptor chain is empty")]
    EmptyChain,
    /// The chain was cut short: a `next` loop, more descriptors than the
    /// queue size, a `next` index outside the table, or an unreadable
    /// descriptor.
    #[error("descriptor chain does not terminate")]
    UnterminatedChain,
    /// A device-writable descriptor in a tx chain, or a device-readable one
    /// in an rx chain.
    #[error("descriptor {0} of the chain has the wrong direction")]
    WrongDirection(usize),
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
    /// Fewer bytes than the minimum: header plus an Ethernet header for tx,
    /// the header for rx.
    #[error("descriptor chain holds {len} bytes, at least {min} are needed")]
    TooShort {
        /// Bytes the chain holds.
        len: u64,
        /// Bytes it must hold.
        min: usize,
    },
    /// A tx chain longer than the largest packet the device sends.
    #[error("descriptor chain holds more than {max} bytes")]
    TooLong {
        /// The limit (the host buffer size).
        max: usize,
    },
}

/// Collects the chain's descriptors and checks that it terminates.
///
/// The chain iterator yields at most queue-size descriptors (its TTL) and
/// silently stops on a bad `next` index or an unreadable entry; in every
/// one of those cases the last descriptor it yielded still has NEXT set,
/// which is how truncation is told apart from a proper end.
fn descriptors(chain: DescriptorChain<&GuestMemoryMmap>) -> Result<Vec<Descriptor>, ChainError> {
    let descs: Vec<Descriptor> = chain.collect();
    match descs.last() {
        None => Err(ChainError::EmptyChain),
        Some(last) if last.has_next() => Err(ChainError::UnterminatedChain),
        Some(_) => Ok(descs),
    }
}

fn out_of_memory(index: usize, desc: &Descriptor) -> ChainError {
    ChainError::OutOfGuestMemory {
        index,
        addr: desc.addr().raw_value(),
        len: desc.len(),
    }
}

/// Copies the packet (header and frame) of a tx chain into `buf`; returns
/// its length.
///
/// Fails without reading further on the first bad descriptor, and when the
/// packet would not fit in `buf` (whose length is the device's limit).
pub fn read_tx_frame(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    buf: &mut [u8],
) -> Result<usize, ChainError> {
    let descs = descriptors(chain).inspect_err(|e| debug!("virtio-net: bad tx chain: {e}"))?;
    let mut len = 0usize;
    for (index, desc) in descs.iter().enumerate() {
        if desc.is_write_only() {
            return Err(ChainError::WrongDirection(index));
        }
        let desc_len = desc.len() as usize;
        if desc_len == 0 {
            continue;
        }
        let Some(dst) = len
            .checked_add(desc_len)
            .and_then(|end| buf.get_mut(len..end))
        else {
            return Err(ChainError::TooLong { max: buf.len() });
        };
        mem.read_slice(dst, desc.addr())
            .map_err(|_| out_of_memory(index, desc))?;
        len += desc_len;
    }
    let min = VNET_HDR_LEN + ETH_HLEN;
    if len < min {
        return Err(ChainError::TooShort {
            len: len as u64,
            min,
        });
    }
    Ok(len)
}

/// One guest-writable area of an rx chain, checked to lie in guest memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical address.
    pub addr: GuestAddress,
    /// Length in bytes, never 0.
    pub len: u32,
}

/// A validated rx chain: where a frame (or, with mergeable buffers, a part
/// of one) may be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RxChain {
    /// Head descriptor index, for the used entry.
    pub head: u16,
    /// The writable areas, in order.
    pub segments: Vec<Segment>,
    /// Sum of the segment lengths; at least [`VNET_HDR_LEN`].
    pub capacity: usize,
}

impl RxChain {
    /// Validates an rx chain. Needs only the descriptors, never the buffer
    /// contents, so the check stays true until the chain is used (guest
    /// memory does not shrink under a running VM).
    pub fn parse(
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Self, ChainError> {
        let head = chain.head_index();
        let descs = descriptors(chain).inspect_err(|e| debug!("virtio-net: bad rx chain: {e}"))?;
        let mut segments = Vec::with_capacity(descs.len());
        let mut capacity = 0usize;
        for (index, desc) in descs.iter().enumerate() {
            if !desc.is_write_only() {
                return Err(ChainError::WrongDirection(index));
            }
            if desc.len() == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), desc.len() as usize) {
                return Err(out_of_memory(index, desc));
            }
            segments.push(Segment {
                addr: desc.addr(),
                len: desc.len(),
            });
            // At most queue-size descriptors of < 4 GiB each: no overflow
            // on a 64-bit host, and saturation is harmless anyway.
            capacity = capacity.saturating_add(desc.len() as usize);
        }
        if capacity < VNET_HDR_LEN {
            return Err(ChainError::TooShort {
                len: capacity as u64,
                min: VNET_HDR_LEN,
            });
        }
        Ok(RxChain {
            head,
            segments,
            capacity,
        })
    }

    /// Writes `data` at the start of the chain's buffers; returns the bytes
    /// written (`min(data.len(), capacity)`).
    pub fn write(&self, mem: &GuestMemoryMmap, data: &[u8]) -> Result<usize, ChainError> {
        let mut written = 0usize;
        for (index, segment) in self.segments.iter().enumerate() {
            if written == data.len() {
                break;
            }
            let n = (segment.len as usize).min(data.len() - written);
            mem.write_slice(&data[written..written + n], segment.addr)
                .map_err(|_| ChainError::OutOfGuestMemory {
                    index,
                    addr: segment.addr.raw_value(),
                    len: segment.len,
                })?;
            written += n;
        }
        Ok(written)
    }
}
