//! virtio-blk backed by a host file.
//!
//! Layers, from pure to glue:
//! - `request` turns a descriptor chain into a [`Request`] (pure: memory
//!   and chain in, request or error out; the future fuzz target's entry point);
//! - `handler` runs a queue: pops chains, executes requests against a
//!   [`BlockBackend`], publishes used entries and says whether to interrupt.
//!   No fds besides the disk file's;
//! - `disk` is the file backend (capacity, read-only, flush);
//! - `device` holds [`Block`], the [`VirtioDevice`](super::VirtioDevice)
//!   impl and config space;
//! - `event_handler` is the `event-manager` subscriber gluing the queue
//!   eventfd to the handler and the interrupt;
//! - `metrics` holds the counters.

pub mod device;
pub mod disk;
pub mod event_handler;
pub mod handler;
pub mod metrics;
pub mod request;

#[cfg(test)]
mod tests;

pub use device::{Block, BlockConfig, BlockError};
pub use disk::{BlockBackend, DiskError, DiskFile};
pub use handler::{Amount, Budget, Direction};
pub use metrics::BlockMetrics;
pub use request::{parse_request, ParseFailure, Request, RequestError, RequestType};

/// Size of a virtio-blk sector; `sector` fields and the capacity count these,
/// whatever the host's block size.
pub const SECTOR_SIZE: u64 = 512;
/// `log2(SECTOR_SIZE)`.
pub const SECTOR_SHIFT: u32 = 9;
/// Length of the serial returned by `VIRTIO_BLK_T_GET_ID`.
pub const ID_BYTES: usize = virtio_bindings::virtio_blk::VIRTIO_BLK_ID_BYTES as usize;
/// Size of the single request queue. 256 is what Firecracker and QEMU use;
/// Linux happily uses it as is.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors a request may have (`seg_max` in the config space): a
/// chain also holds the header and the status. Enforced by construction: a
/// chain is never longer than the queue (the iterator's limit), and chains
/// that refer to indirect tables are refused (`virtio::queue::pop`).
pub const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
