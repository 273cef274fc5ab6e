//! virtio-blk tests: the harness plays the guest driver, builds requests in
//! guest memory, runs the queue handler (or the whole device through the
//! event manager) and checks the used ring, the status byte and the host
//! file.
//!
//! - `io`: requests that succeed, and well-formed ones that fail (range,
//!   read-only, host errors);
//! - `malformed`: broken descriptor chains, each followed by a valid request;
//! - `device`: features, config space, activation, the event loop.

mod budget;
mod device;
mod io;
mod malformed;

use std::fs::File;
use std::io::Write;
use std::sync::{Arc, Mutex};

use crate::virtio::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID,
    VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::tempfile::TempFile;

use super::device::{Block, BlockConfig, BlockError};
use super::disk::{BlockBackend, DiskError, DiskFile};
use super::handler::{process_queue, Amount, Budget, Direction, InFlight, QueueOutcome};
use super::metrics::BlockMetrics;
use super::request::{parse_request, RequestError, RequestType};
use super::{ID_BYTES, QUEUE_SIZE, SECTOR_SIZE};
use crate::virtio::test_utils::{
    guest_memory, Buf, RawDesc, VirtQueueDriver, F_NEXT, F_WRITE, MEM_SIZE,
};
use crate::virtio::{ActivateError, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};

const OK: u8 = VIRTIO_BLK_S_OK as u8;
const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// What the harness leaves in a status byte, so "untouched" is visible.
const STATUS_SENTINEL: u8 = 0xff;
/// Queue size for the handler tests: small, so wrap-around is cheap to hit.
const TEST_QUEUE_SIZE: u16 = 16;
const SECTOR: usize = SECTOR_SIZE as usize;

/// Deterministic, position-dependent image contents.
fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i / SECTOR) as u8)
        .collect()
}

fn image_with(contents: &[u8]) -> TempFile {
    let image = TempFile::new().unwrap();
    image.as_file().write_all(contents).unwrap();
    image
}

fn host_bytes(image: &TempFile) -> Vec<u8> {
    // A separate open file description: what any other host process sees.
    std::fs::read(image.as_path()).unwrap()
}

/// A submitted request, as the driver remembers it.
struct Submitted {
    head: u16,
    status: GuestAddress,
}

/// The driver side of a virtio-blk queue plus the device-side pieces the
/// handler needs.
struct Harness<B: BlockBackend = DiskFile> {
    vq: VirtQueueDriver,
    queue: Queue,
    disk: B,
    id: [u8; ID_BYTES],
    metrics: BlockMetrics,
    /// Keeps the image alive (deleted on drop).
    image: TempFile,
    in_flight: Option<InFlight>,
    budget: Budget,
}

fn harness(contents: &[u8], read_only: bool) -> Harness {
    let image = image_with(contents);
    let disk = DiskFile::open(image.as_path(), read_only).unwrap();
    harness_with(image, disk)
}

fn harness_with<B: BlockBackend>(image: TempFile, disk: B) -> Harness<B> {
    let mem = guest_memory();
    let vq = VirtQueueDriver::new(&mem, GuestAddress(0), TEST_QUEUE_SIZE);
    let queue = vq.create_queue();
    let mut id = [0u8; ID_BYTES];
    id[..11].copy_from_slice(b"husk-disk-0");
    Harness {
        vq,
        queue,
        disk,
        id,
        metrics: BlockMetrics::default(),
        image,
        in_flight: None,
        budget: Budget::PASS,
    }
}

impl<B: BlockBackend> Harness<B> {
    /// Runs the device side over everything published so far.
    fn run(&mut self) -> QueueOutcome {
        process_queue(
            &self.vq.mem,
            &mut self.queue,
            &mut self.disk,
            &self.id,
            &self.metrics,
            &mut self.in_flight,
            self.budget,
        )
    }

    fn header(&mut self, request_type: u32, sector: u64) -> GuestAddress {
        let addr = self.vq.alloc(16);
        let mut bytes = [0u8; 16];
        bytes[0..4].copy_from_slice(&request_type.to_le_bytes());
        bytes[8..16].copy_from_slice(&sector.to_le_bytes());
        self.vq.write(addr, &bytes);
        addr
    }

    fn status_byte(&mut self) -> GuestAddress {
        let addr = self.vq.alloc(1);
        self.vq.write(addr, &[STATUS_SENTINEL]);
        addr
    }

    /// Header, `data`, status: the layout Linux uses.
    fn submit(&mut self, request_type: u32, sector: u64, data: &[Buf]) -> Submitted {
        let header = self.header(request_type, sector);
        let status = self.status_byte();
        let mut bufs = vec![Buf::readable(header, 16)];
        bufs.extend_from_slice(data);
        bufs.push(Buf::writable(status, 1));
        let head = self.vq.add_chain(&bufs);
        Submitted { head, status }
    }

    /// Submits a read of `len` bytes at `sector` into one fresh buffer.
    fn submit_read(&mut self, sector: u64, len: usize) -> (Submitted, GuestAddress) {
        let buf = self.vq.alloc(len);
        let sub = self.submit(VIRTIO_BLK_T_IN, sector, &[Buf::writable(buf, len as u32)]);
        (sub, buf)
    }

    /// Submits a write of `data` at `sector` from one fresh buffer.
    fn submit_write(&mut self, sector: u64, data: &[u8]) -> Submitted {
        let buf = self.vq.alloc(data.len());
        self.vq.write(buf, data);
        self.submit(
            VIRTIO_BLK_T_OUT,
            sector,
            &[Buf::readable(buf, data.len() as u32)],
        )
    }

    fn status_of(&self, sub: &Submitted) -> u8 {
        self.vq.read(sub.status, 1)[0]
    }

    /// Pops the next used element and checks it belongs to `sub`; returns
    /// its length.
    fn expect_used(&mut self, sub: &Submitted) -> u32 {
        let (id, len) = self.vq.pop_used().expect("no used entry");
        assert_eq!(id, u32::from(sub.head), "used entries out of order");
        len
    }

    /// A complete, valid read round trip; used after every malformed
    /// request to prove the device still works.
    fn assert_device_still_reads(&mut self) {
        let expected = host_bytes(&self.image)[..SECTOR].to_vec();
        let (sub, buf) = self.submit_read(0, SECTOR);
        let outcome = self.run();
        assert_eq!(outcome.completed, 1);
        assert!(outcome.notify);
        assert_eq!(self.expect_used(&sub), SECTOR as u32 + 1);
        assert_eq!(self.status_of(&sub), OK);
        assert_eq!(self.vq.read(buf, SECTOR), expected);
    }
}
