//! The disk behind a virtio-blk device.
//!
//! [`BlockBackend`] is the narrow interface the request handler needs, so the
//! handler stays testable with a backend that fails or records call order.
//! [`DiskFile`] is the real one: a host file (or block device) accessed with
//! plain synchronous I/O.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use crate::virtio::GuestMemoryMmap;
use log::warn;
use vm_memory::{Bytes, GuestAddress, GuestMemoryError};

use super::SECTOR_SIZE;

/// Disk errors.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// Opening the backing file failed.
    #[error("failed to open disk image {}", path.display())]
    Open {
        /// The image path.
        path: PathBuf,
        /// What `open(2)` said.
        #[source]
        source: io::Error,
    },
    /// The path is neither a regular file nor a block device (a directory
    /// opens fine read-only, and then fails every read).
    #[error("{} is not a regular file or block device", path.display())]
    NotADisk {
        /// The image path.
        path: PathBuf,
    },
    /// Finding the size of the backing file failed.
    #[error("failed to find the size of the disk image")]
    Size(#[source] io::Error),
    /// A write to a read-only disk.
    #[error("disk is read-only")]
    ReadOnly,
    /// Seeking or syncing the backing file failed.
    #[error("disk I/O failed")]
    Io(#[source] io::Error),
    /// Copying between the backing file and guest memory failed (this wraps
    /// host read/write errors and short reads too).
    #[error("transfer between disk and guest memory failed")]
    Transfer(#[source] GuestMemoryError),
}

/// What the request handler needs from a disk. Offsets and lengths are in
/// bytes; the handler has already checked `offset + len <= capacity()`.
pub trait BlockBackend {
    /// Usable size in bytes: a multiple of [`SECTOR_SIZE`], never past the
    /// end of the backing store.
    fn capacity(&self) -> u64;

    /// Whether writes are refused.
    fn is_read_only(&self) -> bool;

    /// Copies `len` bytes at disk `offset` into guest memory at `addr`.
    fn read_to_guest(
        &mut self,
        offset: u64,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), DiskError>;

    /// Copies `len` bytes of guest memory at `addr` to disk `offset`.
    fn write_from_guest(
        &mut self,
        offset: u64,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), DiskError>;

    /// Makes every completed write durable on the host. Returns only once
    /// it is: the handler publishes the flush's used entry after this.
    fn flush(&mut self) -> Result<(), DiskError>;
}

/// A disk image in a host file.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    capacity: u64,
    read_only: bool,
    ignored_tail: u64,
}

impl DiskFile {
    /// Opens the image at `path`; read-only images are opened `O_RDONLY`,
    /// so even a handler bug cannot write to them.
    ///
    /// The capacity is the file size rounded *down* to whole sectors: the
    /// guest can only address whole sectors, and rounding up would let it
    /// read or write past the end of the file. The ignored tail is logged
    /// and reported by [`ignored_tail_bytes`](Self::ignored_tail_bytes).
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|source| DiskError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let file_type = file.metadata().map_err(DiskError::Size)?.file_type();
        if !(file_type.is_file() || file_type.is_block_device()) {
            return Err(DiskError::NotADisk {
                path: path.to_path_buf(),
            });
        }
        // Seeking to the end works for block devices too, where the
        // metadata length is 0.
        let size = file.seek(SeekFrom::End(0)).map_err(DiskError::Size)?;
        let ignored_tail = size % SECTOR_SIZE;
        if ignored_tail != 0 {
            warn!(
                "virtio-blk: {} is {size} bytes, not a multiple of {SECTOR_SIZE}; \
                 the last {ignored_tail} bytes are not visible to the guest",
                path.display()
            );
        }
        Ok(DiskFile {
            file,
            capacity: size - ignored_tail,
            read_only,
            ignored_tail,
        })
    }

    /// Capacity in 512-byte sectors (what the config space reports).
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity / SECTOR_SIZE
    }

    /// Bytes at the end of the file beyond the last whole sector; the guest
    /// never sees or touches them.
    pub fn ignored_tail_bytes(&self) -> u64 {
        self.ignored_tail
    }
}

impl AsRawFd for DiskFile {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl BlockBackend for DiskFile {
    fn capacity(&self) -> u64 {
        self.capacity
    }

    fn is_read_only(&self) -> bool {
        self.read_only
    }

    fn read_to_guest(
        &mut self,
        offset: u64,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), DiskError> {
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(DiskError::Io)?;
        // Straight from the file into guest memory, no bounce buffer; a short
        // read (file shrunk under us) is an error, not zeros.
        mem.read_exact_volatile_from(addr, &mut self.file, len)
            .map_err(DiskError::Transfer)
    }

    fn write_from_guest(
        &mut self,
        offset: u64,
        mem: &GuestMemoryMmap,
        addr: GuestAddress,
        len: usize,
    ) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly);
        }
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(DiskError::Io)?;
        mem.write_all_volatile_to(addr, &mut self.file, len)
            .map_err(DiskError::Transfer)
    }

    fn flush(&mut self) -> Result<(), DiskError> {
        if self.read_only {
            // Nothing was written through this fd.
            return Ok(());
        }
        // sync_all rather than sync_data: the guest was promised durability,
        // and for a sparse image the allocation metadata matters too.
        self.file.sync_all().map_err(DiskError::Io)
    }
}
