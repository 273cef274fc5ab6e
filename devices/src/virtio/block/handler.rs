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
//!
//! A pass is bounded by a [`Budget`] of requests and bytes, so no guest can
//! keep the event loop's thread (which also serves the API, the other
//! devices and the guest's own reset): a read whose data lands on the
//! queue's own avail ring publishes a new request with every completion,
//! and one chain may ask for gigabytes. A transfer larger than what is left
//! of the budget is done in pieces over several passes ([`InFlight`]), and
//! the outcome says when the device must come back ([`QueueOutcome::more`]).
//! Chunking rather than a worker thread: the disk is a local file, each
//! piece is a bounded `pread`/`pwrite`, and requests stay in order with no
//! locking of guest memory between threads. A FLUSH (one `fsync`) is the
//! one call a pass cannot bound.

use crate::virtio::GuestMemoryMmap;
use log::{error, warn};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryError};

use super::disk::{BlockBackend, DiskError};
use super::metrics::BlockMetrics;
use super::request::{parse_request, Request, RequestType};
use super::{ID_BYTES, SECTOR_SHIFT};
use crate::virtio::queue::{pop, Popped};

/// Result of one pass over a queue.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct QueueOutcome {
    /// Chains returned to the driver through the used ring.
    pub completed: u32,
    /// Whether the driver must be interrupted.
    pub notify: bool,
    /// The pass stopped at its budget: requests may be left, or one is half
    /// done. The device must run another pass after the event loop has
    /// served everything else.
    pub more: bool,
    /// Chains taken off the queue, and bytes moved: what a rate limiter
    /// counts.
    pub started: u32,
    pub bytes: u64,
    /// Reads and writes started and the bytes they moved, apart: what the
    /// read and write limits count (a request counts once it moves).
    pub reads: Amount,
    pub writes: Amount,
    /// The direction whose own share ran out and stopped the pass: what
    /// the device waits for.
    pub waiting: Option<Direction>,
}

/// A read (device to guest) or a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Read,
    Write,
}

/// Requests and bytes: a share of a pass, or what a pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Amount {
    pub requests: u64,
    pub bytes: u64,
}

impl Amount {
    /// No limit.
    pub const ALL: Amount = Amount {
        requests: u64::MAX,
        bytes: u64::MAX,
    };
}

/// What one pass may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Chains taken off the queue.
    pub requests: u32,
    /// Bytes moved between the disk and guest memory.
    pub bytes: u64,
    /// What reads and what writes may do within that (their own limits,
    /// `husk run --device-read-bps` ...). The queue is served in order, so
    /// a direction out of its share holds the requests behind it.
    pub read: Amount,
    pub write: Amount,
}

impl Budget {
    /// A pass's budget: 128 requests or 4 MiB, a few milliseconds of work
    /// (4 MiB is four of the 1 MiB requests Linux sends for sequential
    /// I/O; 128 of its 4 KiB random ones).
    pub const PASS: Budget = Budget {
        requests: 128,
        bytes: 4 << 20,
        read: Amount::ALL,
        write: Amount::ALL,
    };
}

/// A read or write taken off the queue and not finished: where it got to.
#[derive(Debug)]
pub struct InFlight {
    head: u16,
    request: Request,
    /// The data segment being transferred, and how far into it.
    segment: usize,
    done_in_segment: u32,
    /// The disk offset of the next byte.
    offset: u64,
    /// Whether its direction's share counted it yet.
    counted: bool,
}

impl InFlight {
    fn direction(&self) -> Direction {
        if self.request.request_type == RequestType::In {
            Direction::Read
        } else {
            Direction::Write
        }
    }
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

/// Serves the requests available in `queue`, up to `budget`, and returns
/// the chains through the used ring. `in_flight` carries a transfer that a
/// previous pass left half done; it is finished first.
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
    in_flight: &mut Option<InFlight>,
    budget: Budget,
) -> QueueOutcome {
    let mut out = QueueOutcome::default();
    let (mut requests, mut bytes) = (budget.requests, budget.bytes);
    let (mut read, mut write) = (budget.read, budget.write);
    loop {
        if in_flight.is_none() {
            if requests == 0 || bytes == 0 {
                out.more = crate::virtio::queue::has_available(queue, mem);
                break;
            }
            // pop refuses an avail index more than a queue size ahead of
            // us, so a lying driver ends the loop instead of spinning it.
            let Some(popped) = pop(queue, mem) else {
                break;
            };
            requests -= 1;
            match start(mem, popped, disk, disk_id, metrics) {
                Started::Done(head, used_len) => {
                    complete(mem, queue, head, used_len, &mut out);
                    continue;
                }
                Started::Transfer(f) => *in_flight = Some(f),
            }
        }
        let Some(f) = in_flight.as_mut() else {
            continue;
        };
        let dir = f.direction();
        let (share, done) = match dir {
            Direction::Read => (&mut read, &mut out.reads),
            Direction::Write => (&mut write, &mut out.writes),
        };
        if !f.counted {
            if share.requests == 0 {
                out.more = true;
                out.waiting = Some(dir);
                break;
            }
            share.requests -= 1;
            done.requests += 1;
            f.counted = true;
        }
        let may = bytes.min(share.bytes);
        let mut allowed = may;
        let moving = transfer(mem, f, disk, &mut allowed);
        let moved = may - allowed;
        bytes -= moved;
        share.bytes -= moved;
        done.bytes += moved;
        let status = match moving {
            Ok(false) => {
                out.more = true;
                if share.bytes == 0 {
                    out.waiting = Some(dir);
                }
                break;
            }
            Ok(true) => {
                account(&f.request, metrics);
                VIRTIO_BLK_S_OK
            }
            Err(e) => {
                warn!(
                    "virtio-blk: {:?} request failed: {e}",
                    f.request.request_type
                );
                BlockMetrics::inc(&metrics.io_errors);
                VIRTIO_BLK_S_IOERR
            }
        };
        let (head, request) = (f.head, &f.request);
        let data = if status == VIRTIO_BLK_S_OK && request.request_type == RequestType::In {
            // The chain iterator caps a whole chain at u32::MAX bytes.
            u32::try_from(request.data_len).unwrap_or(u32::MAX)
        } else {
            0
        };
        let used_len = data.saturating_add(write_status(mem, request.status_addr, status));
        complete(mem, queue, head, used_len, &mut out);
        *in_flight = None;
    }
    out.started = budget.requests - requests;
    out.bytes = budget.bytes - bytes;
    out.notify = out.completed > 0
        && queue.needs_notification(mem).unwrap_or_else(|e| {
            // When in doubt, interrupt: a spurious interrupt is harmless, a
            // lost one hangs the guest's I/O.
            warn!("virtio-blk: cannot read the used event index: {e}");
            true
        });
    out
}

fn complete(
    mem: &GuestMemoryMmap,
    queue: &mut Queue,
    head: u16,
    used_len: u32,
    out: &mut QueueOutcome,
) {
    match queue.add_used(mem, head, used_len) {
        Ok(()) => out.completed = out.completed.saturating_add(1),
        // Only a head index outside the table gets here (its chain was
        // empty); there is no valid used entry to give back for it.
        Err(e) => warn!("virtio-blk: cannot return descriptor {head}: {e}"),
    }
}

/// A chain taken off the queue: answered already, or a transfer to run.
enum Started {
    Done(u16, u32),
    Transfer(InFlight),
}

fn start<B: BlockBackend>(
    mem: &GuestMemoryMmap,
    popped: Popped<'_>,
    disk: &mut B,
    disk_id: &[u8; ID_BYTES],
    metrics: &BlockMetrics,
) -> Started {
    let chain = match popped {
        Popped::Chain(chain) => chain,
        Popped::Refused { head, why } => {
            warn!("virtio-blk: refusing chain {head}: {why}");
            BlockMetrics::inc(&metrics.invalid_requests);
            return Started::Done(head, 0);
        }
    };
    let head = chain.head_index();
    let request = match parse_chain(mem, chain, metrics) {
        Ok(request) => request,
        Err(used_len) => return Started::Done(head, used_len),
    };
    let checked = match request.request_type {
        RequestType::In | RequestType::Out => checked_transfer(&request, disk),
        _ => {
            let used_len = execute_other(mem, &request, disk, disk_id, metrics);
            return Started::Done(head, used_len);
        }
    };
    match checked {
        Ok(offset) => Started::Transfer(InFlight {
            head,
            request,
            segment: 0,
            done_in_segment: 0,
            offset,
            counted: false,
        }),
        Err(e) => {
            warn!("virtio-blk: {:?} request failed: {e}", request.request_type);
            BlockMetrics::inc(&metrics.io_errors);
            Started::Done(
                head,
                write_status(mem, request.status_addr, VIRTIO_BLK_S_IOERR),
            )
        }
    }
}

/// Parses a chain; a malformed one is answered here (IOERR when it ends in
/// a usable status byte) and its used length comes back as the error.
fn parse_chain(
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    metrics: &BlockMetrics,
) -> Result<Request, u32> {
    parse_request(mem, chain).map_err(|failure| {
        warn!("virtio-blk: malformed request: {}", failure.error);
        BlockMetrics::inc(&metrics.invalid_requests);
        failure
            .status_addr
            .map_or(0, |addr| write_status(mem, addr, VIRTIO_BLK_S_IOERR))
    })
}

/// The checks of a read or write before any byte moves: in range, and not
/// a write to a read-only disk. Its start offset.
fn checked_transfer<B: BlockBackend>(request: &Request, disk: &B) -> Result<u64, ExecuteError> {
    if request.request_type == RequestType::Out && disk.is_read_only() {
        return Err(ExecuteError::ReadOnly);
    }
    checked_offset(request, disk.capacity())
}

/// Moves the transfer on by at most `*bytes` (taken from it); true when it
/// is complete.
fn transfer<B: BlockBackend>(
    mem: &GuestMemoryMmap,
    f: &mut InFlight,
    disk: &mut B,
    bytes: &mut u64,
) -> Result<bool, ExecuteError> {
    while let Some(segment) = f.request.data.get(f.segment) {
        let left = segment.len - f.done_in_segment;
        if *bytes == 0 {
            return Ok(false);
        }
        // At most what is left of the budget (which is at least 1 here).
        let piece = u32::try_from(*bytes).unwrap_or(u32::MAX).min(left);
        let addr = segment
            .addr
            .checked_add(u64::from(f.done_in_segment))
            .ok_or(ExecuteError::SectorOverflow(f.request.sector))?;
        match f.request.request_type {
            RequestType::In => disk.read_to_guest(f.offset, mem, addr, piece as usize)?,
            _ => disk.write_from_guest(f.offset, mem, addr, piece as usize)?,
        }
        f.offset += u64::from(piece);
        *bytes -= u64::from(piece);
        f.done_in_segment += piece;
        if f.done_in_segment == segment.len {
            f.segment += 1;
            f.done_in_segment = 0;
        }
    }
    Ok(true)
}

/// Counts a completed read or write.
fn account(request: &Request, metrics: &BlockMetrics) {
    if request.request_type == RequestType::In {
        BlockMetrics::inc(&metrics.reads);
        BlockMetrics::add(&metrics.read_bytes, request.data_len);
    } else {
        BlockMetrics::inc(&metrics.writes);
        BlockMetrics::add(&metrics.write_bytes, request.data_len);
    }
}

/// Executes a request that moves no disk data (FLUSH, GET_ID, unsupported)
/// and answers it; the used length.
fn execute_other<B: BlockBackend>(
    mem: &GuestMemoryMmap,
    request: &Request,
    disk: &mut B,
    disk_id: &[u8; ID_BYTES],
    metrics: &BlockMetrics,
) -> u32 {
    let (status, data_written) = match execute(mem, request, disk, disk_id, metrics) {
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
        // Moved by `transfer`, in pieces; never executed here.
        RequestType::In | RequestType::Out => Ok(0),
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
