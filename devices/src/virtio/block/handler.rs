//! Processing a virtio-blk queue.
//!
//! Pure over its inputs: guest memory, the queue, a [`BlockBackend`] and the
//! metrics. It owns no fds (the backend may hold the disk file) and never
//! signals anything itself; it tells the caller whether the driver needs an
//! interrupt. That keeps it testable without an event loop and without KVM.
//!
//! Requests are executed synchronously and in order, and a used entry is
//! published only after the request's effect is complete; in particular a
//! FLUSH is answered after the backend's `flush` has returned, so the host
//! file holds everything the guest was told is done.

use log::{error, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::disk::{BlockBackend, DiskError};
use super::metrics::BlockMetrics;
use super::request::{parse_request, Request, RequestType};
use super::{ID_BYTES, SECTOR_SHIFT};

/// Result of one pass over a queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Chains returned to the driver through the used ring.
    pub completed: u32,
    /// Whether the driver must be interrupted.
    pub notify: bool,
}

/// Why a well-formed request failed.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    /// The request type is not implemented.
    #[error("request type {0} is not supported")]
    Unsupported(u32),
    /// `sector * 512 + len` overflows.
    #[error("sector {0} overflows the byte offset")]
    SectorOverflow(u64),
    /// The request reaches past the end of the disk.
    #[error("{len} bytes at sector {sector} end past the disk's {capacity} bytes")]
    OutOfRange {
        /// First sector.
        sector: u64,
        /// Request length in bytes.
        len: u64,
        /// Disk capacity in bytes.
        capacity: u64,
    },
    /// A write to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// The backend failed.
    #[error("disk access failed")]
    Disk(#[from] DiskError),
    /// Writing the serial to guest memory failed.
    #[error("cannot write the device id to guest memory")]
    GuestMemory(#[source] GuestMemoryError),
}

/// Serves every request available in `queue` and returns the chains through
/// the used ring.
///
/// Malformed chains are answered `VIRTIO_BLK_S_IOERR` when they end in a
/// usable status byte and returned with length 0 otherwise; either way the
/// queue moves on, so one bad request cannot wedge the device.
pub fn process_queue<B: BlockBackend>(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    disk: &mut B,
    disk_id: &[u8; ID_BYTES],
    metrics: &BlockMetrics,
) -> QueueOutcome {
    let mut completed = 0u32;
    // pop_descriptor_chain refuses an avail index more than a queue size
    // ahead of us, so a lying driver ends the loop instead of spinning it.
    while let Some(chain) = queue.pop_descriptor_chain(mem) {
        let head = chain.head_index();
        let used_len = handle_chain(mem, chain, disk, disk_id, metrics);
        match queue.add_used(mem, head, used_len) {
            Ok(()) => completed = completed.saturating_add(1),
            // Only a head index outside the table gets here (its chain was
            // empty); there is no valid used entry to give back for it.
            Err(e) => warn!("virtio-blk: cannot return descriptor {head}: {e}"),
        }
    }
    let notify = completed > 0
        && queue.needs_notification(mem).unwrap_or_else(|e| {
            // When in doubt, interrupt: a spurious interrupt is harmless, a
            // lost one hangs the guest's I/O.
            warn!("virtio-blk: cannot read the used event index: {e}");
            true
        });
    QueueOutcome { completed, notify }
}

/// Serves one chain; returns the number of bytes written into the chain's
/// device-writable buffers (the used entry's `len`).
fn handle_chain<B: BlockBackend>(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    disk: &mut B,
    disk_id: &[u8; ID_BYTES],
    metrics: &BlockMetrics,
) -> u32 {
    let request = match parse_request(mem, chain) {
        Ok(request) => request,
        Err(failure) => {
            warn!("virtio-blk: malformed request: {}", failure.error);
            BlockMetrics::inc(&metrics.invalid_requests);
            return failure
                .status_addr
                .map_or(0, |addr| write_status(mem, addr, VIRTIO_BLK_S_IOERR));
        }
    };
    let (status, data_written) = match execute(mem, &request, disk, disk_id, metrics) {
        Ok(written) => (VIRTIO_BLK_S_OK, written),
        Err(ExecuteError::Unsupported(request_type)) => {
            warn!("virtio-blk: unsupported request type {request_type}");
            BlockMetrics::inc(&metrics.unsupported);
            (VIRTIO_BLK_S_UNSUPP, 0)
        }
        Err(e) => {
            warn!("virtio-blk: {:?} request failed: {e}", request.request_type);
            BlockMetrics::inc(&metrics.io_errors);
            (VIRTIO_BLK_S_IOERR, 0)
        }
    };
    data_written.saturating_add(write_status(mem, request.status_addr, status))
}

/// Writes the status byte; returns how many bytes that wrote (0 or 1).
fn write_status(mem: &GuestMemoryMmap, addr: GuestAddress, status: u32) -> u32 {
    // Status values are all < 256; the field is a single byte.
    match mem.write_obj(status as u8, addr) {
        Ok(()) => 1,
        Err(e) => {
            error!("virtio-blk: cannot write the status byte: {e}");
            0
        }
    }
}

/// Executes a parsed request; returns the bytes written to the guest's data
/// buffers.
fn execute<B: BlockBackend>(
    mem: &GuestMemoryMmap,
    request: &Request,
    disk: &mut B,
    disk_id: &[u8; ID_BYTES],
    metrics: &BlockMetrics,
) -> Result<u32, ExecuteError> {
    match request.request_type {
        RequestType::In => {
            let mut offset = checked_offset(request, disk.capacity())?;
            for segment in &request.data {
                disk.read_to_guest(offset, mem, segment.addr, segment.len as usize)?;
                offset += u64::from(segment.len);
            }
            BlockMetrics::inc(&metrics.reads);
            BlockMetrics::add(&metrics.read_bytes, request.data_len);
            // The chain iterator caps a whole chain at u32::MAX bytes.
            Ok(u32::try_from(request.data_len).unwrap_or(u32::MAX))
        }
        RequestType::Out => {
            if disk.is_read_only() {
                return Err(ExecuteError::ReadOnly);
            }
            let mut offset = checked_offset(request, disk.capacity())?;
            for segment in &request.data {
                disk.write_from_guest(offset, mem, segment.addr, segment.len as usize)?;
                offset += u64::from(segment.len);
            }
            BlockMetrics::inc(&metrics.writes);
            BlockMetrics::add(&metrics.write_bytes, request.data_len);
            Ok(0)
        }
        RequestType::Flush => {
            disk.flush()?;
            BlockMetrics::inc(&metrics.flushes);
            Ok(0)
        }
        RequestType::GetId => {
            // The serial is ID_BYTES long; a shorter buffer gets a prefix
            // and a longer one is left untouched past it.
            let mut remaining: &[u8] = disk_id;
            let mut written = 0u32;
            for segment in &request.data {
                if remaining.is_empty() {
                    break;
                }
                let n = remaining.len().min(segment.len as usize);
                mem.write_slice(&remaining[..n], segment.addr)
                    .map_err(ExecuteError::GuestMemory)?;
                remaining = &remaining[n..];
                // n <= ID_BYTES.
                written += n as u32;
            }
            BlockMetrics::inc(&metrics.get_ids);
            Ok(written)
        }
        RequestType::Unsupported(request_type) => Err(ExecuteError::Unsupported(request_type)),
    }
}

/// The byte offset of an IN/OUT request, after checking that the whole
/// transfer lies inside the disk.
fn checked_offset(request: &Request, capacity: u64) -> Result<u64, ExecuteError> {
    let offset = request
        .sector
        .checked_mul(1 << SECTOR_SHIFT)
        .ok_or(ExecuteError::SectorOverflow(request.sector))?;
    let end = offset
        .checked_add(request.data_len)
        .ok_or(ExecuteError::SectorOverflow(request.sector))?;
    if end > capacity {
        return Err(ExecuteError::OutOfRange {
            sector: request.sector,
            len: request.data_len,
            capacity,
        });
    }
    Ok(offset)
}
