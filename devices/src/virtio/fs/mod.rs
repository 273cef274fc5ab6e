//! virtio-fs (device type 26) served by a vhost-user backend: virtiofsd.
//!
//! husk only relays: the transport negotiates with the guest as for any
//! device, and on DRIVER_OK this device hands the backend the guest's
//! memory (which must be file-backed so virtiofsd can map it: the VMM backs
//! guest RAM with a memfd when a virtio-fs device is attached) and the
//! rings; the guest's notifications (ioeventfds) go to virtiofsd directly,
//! and virtiofsd's completions signal the device's irqfd directly (its
//! `InterruptStatus` then always reports used buffers), so a request
//! crosses no husk thread at all. No request of the guest is parsed in
//! husk.
//!
//! No DAX window: it needs a shared-memory region on the transport
//! (virtio-mmio SHM registers) and page-cache-sized mappings into the
//! guest, and buys speed for mmap-heavy workloads, not correctness; the
//! guest reads through the FUSE protocol.

mod device;

pub use device::{Fs, FsConfig, FsError};

/// Queues: the high-priority queue and one request queue.
pub const NUM_QUEUES: usize = 2;
/// Ring size offered per queue (virtiofsd accepts up to 1024).
pub const QUEUE_SIZE: u16 = 512;
/// The tag is at most this long (`struct virtio_fs_config`).
pub const TAG_LEN: usize = 36;
