//! virtio-mmio transport tests: the test plays the guest's virtio_mmio
//! driver, register by register.

use std::sync::{Arc, Mutex};

use crate::virtio::GuestMemoryMmap;
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use virtio_bindings::virtio_mmio::{VIRTIO_MMIO_INT_CONFIG, VIRTIO_MMIO_INT_VRING};
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::{Address, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};
use vmm_sys_util::tempfile::TempFile;

use super::*;
use crate::virtio::block::{Block, BlockConfig};
use crate::virtio::test_utils::{guest_memory, Buf, VirtQueueDriver};
use crate::virtio::{status, ActivateError};

const DUMMY_TYPE: u32 = 42;
/// A feature in the high page, to exercise the selectors.
const HIGH_FEATURE: u32 = 40;
/// A low-page feature the dummy offers.
const LOW_FEATURE: u32 = 3;
const DUMMY_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << HIGH_FEATURE) | (1 << LOW_FEATURE);
const QUEUE_SIZES: [u16; 2] = [16, 8];

/// A device that records what the transport does to it.
struct Dummy {
    sizes: Vec<u16>,
    evts: Vec<EventFd>,
    features: u64,
    config: [u8; 8],
    acked: Option<u64>,
    activated: Option<Vec<QueueState>>,
    resets: u32,
    refuse_activation: bool,
}

impl Dummy {
    fn new() -> Self {
        Dummy {
            sizes: QUEUE_SIZES.to_vec(),
            evts: QUEUE_SIZES
                .iter()
                .map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
                .collect(),
            features: DUMMY_FEATURES,
            config: [1, 2, 3, 4, 5, 6, 7, 8],
            acked: None,
            activated: None,
            resets: 0,
            refuse_activation: false,
        }
    }
}

impl VirtioDevice for Dummy {
    fn device_type(&self) -> u32 {
        DUMMY_TYPE
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &self.sizes
    }
    fn queue_events(&self) -> &[EventFd] {
        &self.evts
    }
    fn avail_features(&self) -> u64 {
        self.features
    }
    fn ack_features(&mut self, features: u64) {
        self.acked = Some(features);
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.config.get(o).copied())
                .unwrap_or(0);
        }
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if let Some(dst) = usize::try_from(offset)
            .ok()
            .and_then(|o| self.config.get_mut(o..o.checked_add(data.len())?))
        {
            dst.copy_from_slice(data);
        }
    }
    fn activate(
        &mut self,
        _mem: GuestMemoryMmap,
        _interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.refuse_activation {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.activated = Some(queues.iter().map(Queue::state).collect());
        Ok(())
    }
    fn is_activated(&self) -> bool {
        self.activated.is_some()
    }
    fn queue_states(&self) -> Option<Vec<QueueState>> {
        self.activated.clone()
    }
    fn reset(&mut self) {
        self.activated = None;
        self.acked = None;
        self.resets += 1;
    }
}

struct Bench {
    mmio: MmioTransport,
    dummy: Arc<Mutex<Dummy>>,
    mem: GuestMemoryMmap,
}

fn bench() -> Bench {
    bench_with(Dummy::new())
}

fn bench_with(dummy: Dummy) -> Bench {
    let mem = guest_memory();
    let dummy = Arc::new(Mutex::new(dummy));
    let mmio = MmioTransport::new(mem.clone(), dummy.clone()).unwrap();
    Bench { mmio, dummy, mem }
}

impl Bench {
    fn read32(&mut self, offset: u64) -> u32 {
        let mut data = [0xffu8; 4];
        self.mmio.read(offset, &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(&mut self, offset: u64, value: u32) {
        self.mmio.write(offset, &value.to_le_bytes());
    }

    fn set_status(&mut self, value: u32) {
        self.write32(STATUS, value);
    }

    fn status(&mut self) -> u32 {
        self.read32(STATUS)
    }

    /// ACKNOWLEDGE, DRIVER, features (VERSION_1 + `extra`), FEATURES_OK.
    fn negotiate(&mut self, extra: u64) {
        self.set_status(status::ACKNOWLEDGE);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER);
        let features = (1u64 << VIRTIO_F_VERSION_1) | extra;
        self.write32(DRIVER_FEATURES_SEL, 0);
        self.write32(DRIVER_FEATURES, features as u32);
        self.write32(DRIVER_FEATURES_SEL, 1);
        self.write32(DRIVER_FEATURES, (features >> 32) as u32);
        self.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);
    }

    /// Programs queue `index` like Linux's vm_setup_vq.
    fn setup_queue(&mut self, index: u32, vq: &VirtQueueDriver) {
        self.write32(QUEUE_SEL, index);
        assert_eq!(self.read32(QUEUE_READY), 0);
        self.write32(QUEUE_NUM, u32::from(vq.size));
        for (low, high, addr) in [
            (QUEUE_DESC_LOW, QUEUE_DESC_HIGH, vq.desc_table),
            (QUEUE_DRIVER_LOW, QUEUE_DRIVER_HIGH, vq.avail_ring),
            (QUEUE_DEVICE_LOW, QUEUE_DEVICE_HIGH, vq.used_ring),
        ] {
            self.write32(low, addr.raw_value() as u32);
            self.write32(high, (addr.raw_value() >> 32) as u32);
        }
        self.write32(QUEUE_READY, 1);
        assert_eq!(self.read32(QUEUE_READY), 1);
    }

    const ALL_OK: u32 =
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK | status::DRIVER_OK;
}

#[test]
fn identification_registers() {
    let mut b = bench();
    assert_eq!(b.read32(MAGIC_VALUE), 0x7472_6976);
    assert_eq!(b.read32(VERSION), 2);
    assert_eq!(b.read32(DEVICE_ID), DUMMY_TYPE);
    assert_eq!(b.read32(VENDOR_ID_REG), 0);
    assert_eq!(b.read32(CONFIG_GENERATION), 0);
    assert_eq!(b.read32(SHM_LEN_LOW), u32::MAX);
    assert_eq!(b.read32(SHM_LEN_HIGH), u32::MAX);
    assert_eq!(b.status(), 0);
}

#[test]
fn device_features_are_paged_by_the_selector() {
    let mut b = bench();
    b.write32(DEVICE_FEATURES_SEL, 0);
    assert_eq!(b.read32(DEVICE_FEATURES), DUMMY_FEATURES as u32);
    b.write32(DEVICE_FEATURES_SEL, 1);
    assert_eq!(b.read32(DEVICE_FEATURES), (DUMMY_FEATURES >> 32) as u32);
    assert_eq!(b.read32(DEVICE_FEATURES), 1 | (1 << (HIGH_FEATURE - 32)));
    b.write32(DEVICE_FEATURES_SEL, 2);
    assert_eq!(b.read32(DEVICE_FEATURES), 0);
}

#[test]
fn negotiated_features_reach_the_device_on_features_ok() {
    let mut b = bench();
    b.set_status(status::ACKNOWLEDGE);
    b.set_status(status::ACKNOWLEDGE | status::DRIVER);
    // Page 0: LOW_FEATURE plus an unoffered bit, which must be dropped.
    b.write32(DRIVER_FEATURES_SEL, 0);
    b.write32(DRIVER_FEATURES, (1 << LOW_FEATURE) | (1 << 7));
    // Page 1: VERSION_1 only (HIGH_FEATURE declined).
    b.write32(DRIVER_FEATURES_SEL, 1);
    b.write32(DRIVER_FEATURES, 1);
    // A page that does not exist: ignored.
    b.write32(DRIVER_FEATURES_SEL, 5);
    b.write32(DRIVER_FEATURES, u32::MAX);
    assert_eq!(b.dummy.lock().unwrap().acked, None);

    b.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);

    assert_eq!(
        b.status(),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
    );
    assert_eq!(
        b.dummy.lock().unwrap().acked,
        Some((1 << VIRTIO_F_VERSION_1) | (1 << LOW_FEATURE))
    );
    // Features are frozen after FEATURES_OK.
    b.write32(DRIVER_FEATURES_SEL, 0);
    b.write32(DRIVER_FEATURES, 0);
    assert_eq!(
        b.mmio.driver_features,
        (1 << VIRTIO_F_VERSION_1) | (1 << LOW_FEATURE)
    );
}

#[test]
fn features_ok_is_refused_without_version_1() {
    let mut b = bench();
    b.set_status(status::ACKNOWLEDGE);
    b.set_status(status::ACKNOWLEDGE | status::DRIVER);
    b.write32(DRIVER_FEATURES_SEL, 0);
    b.write32(DRIVER_FEATURES, 1 << LOW_FEATURE);
    b.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK);

    // The driver reads Status back and sees FEATURES_OK missing.
    assert_eq!(b.status(), status::ACKNOWLEDGE | status::DRIVER);
    assert_eq!(b.dummy.lock().unwrap().acked, None);
    // Nor can it jump to DRIVER_OK from there.
    b.set_status(Bench::ALL_OK);
    assert_eq!(b.status(), status::ACKNOWLEDGE | status::DRIVER);
    assert!(!b.dummy.lock().unwrap().is_activated());
}

#[test]
fn status_only_moves_forward_in_order() {
    let mut b = bench();
    // DRIVER before ACKNOWLEDGE.
    b.set_status(status::DRIVER);
    assert_eq!(b.status(), 0);
    // Unknown bits.
    b.set_status(status::ACKNOWLEDGE | 0x10);
    assert_eq!(b.status(), 0);
    b.set_status(status::ACKNOWLEDGE);
    // Features cannot be written before DRIVER.
    b.write32(DRIVER_FEATURES, 1 << LOW_FEATURE);
    assert_eq!(b.mmio.driver_features, 0);
    // FEATURES_OK skipping DRIVER.
    b.set_status(status::ACKNOWLEDGE | status::FEATURES_OK);
    assert_eq!(b.status(), status::ACKNOWLEDGE);
    b.set_status(status::ACKNOWLEDGE | status::DRIVER);
    // Clearing a bit without a reset.
    b.set_status(status::DRIVER);
    assert_eq!(b.status(), status::ACKNOWLEDGE | status::DRIVER);
    // DRIVER_OK skipping FEATURES_OK.
    b.set_status(status::ACKNOWLEDGE | status::DRIVER | status::DRIVER_OK);
    assert_eq!(b.status(), status::ACKNOWLEDGE | status::DRIVER);
    // FAILED is always accepted.
    b.set_status(status::ACKNOWLEDGE | status::DRIVER | status::FAILED);
    assert_eq!(
        b.status(),
        status::ACKNOWLEDGE | status::DRIVER | status::FAILED
    );
}

#[test]
fn queue_registers_follow_the_selector() {
    let mut b = bench();
    for (index, &size) in QUEUE_SIZES.iter().enumerate() {
        b.write32(QUEUE_SEL, index as u32);
        assert_eq!(b.read32(QUEUE_NUM_MAX), u32::from(size));
        assert_eq!(b.read32(QUEUE_READY), 0);
    }
    // A queue that does not exist has size 0.
    b.write32(QUEUE_SEL, 7);
    assert_eq!(b.read32(QUEUE_NUM_MAX), 0);
    assert_eq!(b.read32(QUEUE_READY), 0);
}

#[test]
fn queue_setup_then_driver_ok_activates_the_device() {
    let mut b = bench();
    let q0 = VirtQueueDriver::new(&b.mem, GuestAddress(0x1_0000), 16);
    let q1 = VirtQueueDriver::new(&b.mem, GuestAddress(0x2_0000), 8);

    // Queue registers are ignored before FEATURES_OK.
    b.write32(QUEUE_SEL, 0);
    b.write32(QUEUE_READY, 1);
    assert_eq!(b.read32(QUEUE_READY), 0);

    b.negotiate(0);
    b.setup_queue(0, &q0);
    b.setup_queue(1, &q1);
    // Invalid sizes are ignored: not a power of two, above the max, zero.
    b.write32(QUEUE_SEL, 1);
    for bad in [3, 16, 0, 0x1_0000] {
        b.mmio.queues[1].set_ready(false);
        b.write32(QUEUE_NUM, bad);
        assert_eq!(b.mmio.queues[1].size(), 8, "size {bad}");
    }
    b.mmio.queues[1].set_ready(true);
    // A ready queue cannot be reconfigured.
    b.write32(QUEUE_DESC_LOW, 0x9000);
    assert_eq!(b.mmio.queues[1].desc_table(), q1.desc_table.raw_value());

    b.set_status(Bench::ALL_OK);

    assert_eq!(b.status(), Bench::ALL_OK);
    let dummy = b.dummy.lock().unwrap();
    let queues = dummy.activated.as_ref().expect("device not activated");
    assert_eq!(queues.len(), 2);
    for (state, vq) in queues.iter().zip([&q0, &q1]) {
        assert!(state.ready);
        assert_eq!(state.size, vq.size);
        assert_eq!(state.desc_table, vq.desc_table.raw_value());
        assert_eq!(state.avail_ring, vq.avail_ring.raw_value());
        assert_eq!(state.used_ring, vq.used_ring.raw_value());
    }
    drop(dummy);

    // After DRIVER_OK the queue registers are frozen too.
    b.write32(QUEUE_SEL, 0);
    b.write32(QUEUE_READY, 0);
    assert_eq!(b.read32(QUEUE_READY), 1);
}

#[test]
fn high_address_registers_compose_64_bit_addresses() {
    let mut b = bench();
    b.negotiate(0);
    b.write32(QUEUE_SEL, 0);
    b.write32(QUEUE_DESC_HIGH, 0x1);
    b.write32(QUEUE_DESC_LOW, 0x2000);
    b.write32(QUEUE_DRIVER_LOW, 0x3000);
    b.write32(QUEUE_DRIVER_HIGH, 0x2);
    b.write32(QUEUE_DEVICE_HIGH, 0x3);
    b.write32(QUEUE_DEVICE_LOW, 0x4000);
    assert_eq!(b.mmio.queues[0].desc_table(), 0x1_0000_2000);
    assert_eq!(b.mmio.queues[0].avail_ring(), 0x2_0000_3000);
    assert_eq!(b.mmio.queues[0].used_ring(), 0x3_0000_4000);
    // Misaligned addresses are refused (descriptor table: 16 bytes).
    b.write32(QUEUE_DESC_LOW, 0x2008);
    assert_eq!(b.mmio.queues[0].desc_table(), 0x1_0000_2000);
}

#[test]
fn invalid_rings_make_driver_ok_fail_with_needs_reset() {
    let mut b = bench();
    b.negotiate(0);
    b.write32(QUEUE_SEL, 0);
    // Rings far outside guest memory.
    b.write32(QUEUE_DESC_HIGH, 0x10);
    b.write32(QUEUE_READY, 1);
    b.set_status(Bench::ALL_OK);

    assert_eq!(b.status(), Bench::ALL_OK | status::DEVICE_NEEDS_RESET);
    assert!(!b.dummy.lock().unwrap().is_activated());
    assert_eq!(b.read32(INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(b.mmio.interrupt().event().read().unwrap(), 1);

    // The driver resets and things work again.
    b.set_status(0);
    assert_eq!(b.status(), 0);
    assert_eq!(b.read32(INTERRUPT_STATUS), 0);
    let q0 = VirtQueueDriver::new(&b.mem, GuestAddress(0x1_0000), 16);
    b.negotiate(0);
    b.setup_queue(0, &q0);
    b.set_status(Bench::ALL_OK);
    assert_eq!(b.status(), Bench::ALL_OK);
    assert!(b.dummy.lock().unwrap().is_activated());
}

#[test]
fn device_refusing_activation_sets_needs_reset() {
    let mut dummy = Dummy::new();
    dummy.refuse_activation = true;
    let mut b = bench_with(dummy);
    b.negotiate(0);
    b.set_status(Bench::ALL_OK);
    assert_eq!(b.status(), Bench::ALL_OK | status::DEVICE_NEEDS_RESET);
    // Echoing NEEDS_RESET back in a read-modify-write is harmless.
    b.set_status(Bench::ALL_OK | status::DEVICE_NEEDS_RESET | status::FAILED);
    assert_eq!(
        b.status(),
        Bench::ALL_OK | status::DEVICE_NEEDS_RESET | status::FAILED
    );
}

#[test]
fn interrupt_status_and_ack() {
    let mut b = bench();
    let irq = b.mmio.interrupt().clone();
    irq.trigger(IrqType::Vring).unwrap();
    irq.trigger(IrqType::Config).unwrap();
    assert_eq!(
        b.read32(INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG
    );
    b.write32(INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(b.read32(INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
    b.write32(INTERRUPT_ACK, VIRTIO_MMIO_INT_CONFIG);
    assert_eq!(b.read32(INTERRUPT_STATUS), 0);
    // InterruptStatus is read-only.
    b.write32(INTERRUPT_STATUS, 3);
    assert_eq!(b.read32(INTERRUPT_STATUS), 0);
}

#[test]
fn writing_zero_to_status_resets_everything() {
    let mut b = bench();
    let q0 = VirtQueueDriver::new(&b.mem, GuestAddress(0x1_0000), 16);
    b.negotiate(1 << LOW_FEATURE);
    b.setup_queue(0, &q0);
    b.set_status(Bench::ALL_OK);
    b.mmio.interrupt().trigger(IrqType::Vring).unwrap();
    assert!(b.dummy.lock().unwrap().is_activated());

    b.set_status(0);

    assert_eq!(b.status(), 0);
    assert_eq!(b.read32(INTERRUPT_STATUS), 0);
    let dummy = b.dummy.lock().unwrap();
    assert!(!dummy.is_activated());
    assert_eq!(dummy.resets, 1);
    drop(dummy);
    assert_eq!(b.mmio.driver_features, 0);
    b.write32(QUEUE_SEL, 0);
    assert_eq!(b.read32(QUEUE_READY), 0);
    assert_eq!(b.mmio.queues[0].size(), 16);
    assert_eq!(b.mmio.queues[0].desc_table(), 0);
}

#[test]
fn queue_notify_signals_the_queue_eventfd() {
    let mut b = bench();
    let evts: Vec<EventFd> = b
        .dummy
        .lock()
        .unwrap()
        .evts
        .iter()
        .map(|e| e.try_clone().unwrap())
        .collect();
    b.write32(QUEUE_NOTIFY, 1);
    b.write32(QUEUE_NOTIFY, 1);
    assert_eq!(evts[1].read().unwrap(), 2);
    assert!(evts[0].read().is_err(), "queue 0 must not be signalled");
    // Nonexistent queue: ignored.
    b.write32(QUEUE_NOTIFY, 9);
    assert!(evts[0].read().is_err() && evts[1].read().is_err());
}

#[test]
fn config_space_goes_to_the_device() {
    let mut b = bench();
    let mut byte = [0u8; 1];
    b.mmio.read(CONFIG_SPACE_OFFSET + 2, &mut byte);
    assert_eq!(byte, [3]);
    let mut quad = [0u8; 8];
    b.mmio.read(CONFIG_SPACE_OFFSET, &mut quad);
    assert_eq!(quad, [1, 2, 3, 4, 5, 6, 7, 8]);

    // Writes before DRIVER are ignored...
    b.mmio.write(CONFIG_SPACE_OFFSET, &[0xaa, 0xbb]);
    assert_eq!(b.dummy.lock().unwrap().config[..2], [1, 2]);
    // ...and reach the device after.
    b.set_status(status::ACKNOWLEDGE);
    b.set_status(status::ACKNOWLEDGE | status::DRIVER);
    b.mmio.write(CONFIG_SPACE_OFFSET, &[0xaa, 0xbb]);
    assert_eq!(b.dummy.lock().unwrap().config[..2], [0xaa, 0xbb]);

    // Too wide: zero-filled, not forwarded.
    let mut wide = [0xffu8; 16];
    b.mmio.read(CONFIG_SPACE_OFFSET, &mut wide);
    assert_eq!(wide, [0; 16]);
}

#[test]
fn odd_accesses_are_ignored_without_panicking() {
    let mut b = bench();
    // Register reads of the wrong size or alignment read as zero.
    for (offset, len) in [
        (MAGIC_VALUE, 1),
        (MAGIC_VALUE, 2),
        (MAGIC_VALUE, 8),
        (MAGIC_VALUE + 1, 4),
        (VERSION, 3),
        (DEVICE_ID, 0),
    ] {
        let mut data = vec![0xffu8; len];
        b.mmio.read(offset, &mut data);
        assert!(
            data.iter().all(|&x| x == 0),
            "read {len} bytes at {offset:#x}"
        );
    }
    // Unknown and write-only registers read as zero.
    for offset in [0x018, QUEUE_NOTIFY, INTERRUPT_ACK, QUEUE_DESC_LOW, 0x0f8] {
        assert_eq!(b.read32(offset), 0, "{offset:#x}");
    }
    // A narrow write to Status does nothing.
    b.mmio.write(STATUS, &[status::ACKNOWLEDGE as u8]);
    assert_eq!(b.status(), 0);
    // Read-only registers ignore writes.
    b.write32(MAGIC_VALUE, 0);
    assert_eq!(b.read32(MAGIC_VALUE), MMIO_MAGIC_VALUE);

    // And nothing anywhere in (or past) the window panics, whatever the
    // size, alignment or value.
    let sizes = [0usize, 1, 2, 3, 4, 5, 8, 9, 64];
    for offset in (0..MMIO_WINDOW_SIZE + 16).chain([u64::MAX - 3, u64::MAX]) {
        for &len in &sizes {
            let mut data = vec![0xa5u8; len];
            b.mmio.read(offset, &mut data);
            b.mmio.write(offset, &data);
        }
    }
    for offset in [u64::MAX - 3, u64::MAX] {
        b.write32(offset, u32::MAX);
    }
}

#[test]
fn construction_checks_the_device() {
    let mut no_v1 = Dummy::new();
    no_v1.features = 1 << LOW_FEATURE;
    let mem = guest_memory();
    assert!(matches!(
        MmioTransport::new(mem.clone(), Arc::new(Mutex::new(no_v1))),
        Err(MmioError::NoVersion1)
    ));
    let mut bad_size = Dummy::new();
    bad_size.sizes[1] = 12;
    assert!(matches!(
        MmioTransport::new(mem.clone(), Arc::new(Mutex::new(bad_size))),
        Err(MmioError::InvalidQueueMaxSize { index: 1, size: 12 })
    ));
    let mut missing_evt = Dummy::new();
    missing_evt.evts.pop();
    assert!(matches!(
        MmioTransport::new(mem, Arc::new(Mutex::new(missing_evt))),
        Err(MmioError::QueueEventCount {
            queues: 2,
            events: 1
        })
    ));
}

#[test]
fn transport_can_move_to_a_vcpu_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<MmioTransport>();
    assert_eq!(QUEUE_NOTIFY_OFFSET, 0x50);
}

#[test]
fn cmdline_token_format() {
    assert_eq!(
        cmdline_token(0xd000_0000, MMIO_WINDOW_SIZE, 5),
        "virtio_mmio.device=4K@0xd0000000:5"
    );
    assert_eq!(
        cmdline_token(0xd000_1000, 2 << 20, 12),
        "virtio_mmio.device=2M@0xd0001000:12"
    );
    assert_eq!(
        cmdline_token(0x1000, 100, 1),
        "virtio_mmio.device=100@0x1000:1"
    );
}

/// A real block device over `contents` behind the transport, with an event
/// loop serving it: what a guest driver talks to.
struct BlockBench {
    b: Bench,
    block: Arc<Mutex<Block>>,
    manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>,
    mem: GuestMemoryMmap,
    /// Keeps the image alive (deleted on drop).
    _image: TempFile,
}

fn block_bench(contents: &[u8], read_only: bool) -> BlockBench {
    let image = TempFile::new().unwrap();
    std::io::Write::write_all(&mut image.as_file(), contents).unwrap();
    let block = Arc::new(Mutex::new(
        Block::new(&BlockConfig {
            path: image.as_path().to_path_buf(),
            read_only,
            id: "bench".into(),
        })
        .unwrap(),
    ));
    let mem = guest_memory();
    let mmio = MmioTransport::new(mem.clone(), block.clone()).unwrap();
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(block.clone());
    let b = Bench {
        mmio,
        dummy: Arc::new(Mutex::new(Dummy::new())), // unused here
        mem: mem.clone(),
    };
    BlockBench {
        b,
        block,
        manager,
        mem,
        _image: image,
    }
}

/// The whole path a guest takes with a real block device: probe, negotiate,
/// set up the queue, DRIVER_OK, post a read, notify through the register,
/// let the event loop serve it, take the interrupt.
#[test]
fn block_device_end_to_end_through_the_registers() {
    let contents: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
    let BlockBench {
        mut b,
        block,
        mut manager,
        mem,
        _image,
    } = block_bench(&contents, false);

    assert_eq!(b.read32(DEVICE_ID), 2);
    // Capacity from config space, as the guest reads it (two 32-bit reads).
    let capacity = u64::from(b.read32(CONFIG_SPACE_OFFSET))
        | (u64::from(b.read32(CONFIG_SPACE_OFFSET + 4)) << 32);
    assert_eq!(capacity, 8);

    b.negotiate(1 << virtio_bindings::virtio_blk::VIRTIO_BLK_F_FLUSH);
    let mut vq = VirtQueueDriver::new(&mem, GuestAddress(0x1_0000), 256);
    b.setup_queue(0, &vq);
    b.set_status(Bench::ALL_OK);
    assert_eq!(b.status(), Bench::ALL_OK);
    assert!(block.lock().unwrap().is_activated());
    // The activation kick.
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);

    let header = vq.alloc(16);
    vq.write(header, &[0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]); // IN, sector 2
    let data = vq.alloc(1024);
    let status_byte = vq.alloc(1);
    let head = vq.add_chain(&[
        Buf::readable(header, 16),
        Buf::writable(data, 1024),
        Buf::writable(status_byte, 1),
    ]);
    b.write32(QUEUE_NOTIFY, 0);
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);

    assert_eq!(vq.pop_used(), Some((u32::from(head), 1025)));
    assert_eq!(vq.read(status_byte, 1), [0]);
    assert_eq!(vq.read(data, 1024), contents[1024..2048]);
    assert_eq!(b.read32(INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    assert_eq!(b.mmio.interrupt().event().read().unwrap(), 1);
    b.write32(INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);
    assert_eq!(b.read32(INTERRUPT_STATUS), 0);

    // Reset deactivates the device; a later notification is drained and
    // ignored.
    b.set_status(0);
    assert!(!block.lock().unwrap().is_activated());
    b.write32(QUEUE_NOTIFY, 0);
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(b.read32(INTERRUPT_STATUS), 0);
}

/// The spec lets a driver put a ring at guest address 0; virtio-queue
/// takes 0 for "not set up" and would never serve it. The transport hands
/// such a queue the alias of page 0, and requests are served.
#[test]
fn an_avail_ring_at_guest_address_0_is_served() {
    let contents: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    let BlockBench {
        mut b,
        mut manager,
        mem,
        _image,
        ..
    } = block_bench(&contents, true);
    b.negotiate(0);
    let mut vq = VirtQueueDriver::new(&mem, GuestAddress(0x1_0000), 16);
    vq.avail_ring = GuestAddress(0);
    vm_memory::Bytes::write_slice(&mem, &[0u8; 64], GuestAddress(0)).unwrap();
    b.setup_queue(0, &vq);
    b.set_status(Bench::ALL_OK);
    assert_eq!(b.status(), Bench::ALL_OK, "DRIVER_OK refused");
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);

    for sector in [1u8, 3, 5] {
        let header = vq.alloc(16);
        vq.write(
            header,
            &[0, 0, 0, 0, 0, 0, 0, 0, sector, 0, 0, 0, 0, 0, 0, 0],
        );
        let data = vq.alloc(512);
        let status_byte = vq.alloc(1);
        let head = vq.add_chain(&[
            Buf::readable(header, 16),
            Buf::writable(data, 512),
            Buf::writable(status_byte, 1),
        ]);
        b.write32(QUEUE_NOTIFY, 0);
        assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
        assert_eq!(
            vq.pop_used(),
            Some((u32::from(head), 513)),
            "sector {sector}"
        );
        assert_eq!(vq.read(status_byte, 1), [0]);
        let at = usize::from(sector) * 512;
        assert_eq!(vq.read(data, 512), contents[at..at + 512]);
    }
}

#[test]
fn a_saved_transport_restores_into_a_new_one_with_its_device_running() {
    let mut b = bench();
    let q0 = VirtQueueDriver::new(&b.mem, GuestAddress(0x1_0000), 16);
    let q1 = VirtQueueDriver::new(&b.mem, GuestAddress(0x2_0000), 8);
    b.negotiate(1 << HIGH_FEATURE);
    b.setup_queue(0, &q0);
    b.setup_queue(1, &q1);
    b.set_status(Bench::ALL_OK);
    // The device has moved on in its rings since activation.
    {
        let mut d = b.dummy.lock().unwrap();
        let q = &mut d.activated.as_mut().unwrap()[0];
        q.next_avail = 5;
        q.next_used = 4;
    }
    b.mmio.interrupt().trigger(IrqType::Vring).unwrap();
    b.write32(QUEUE_SEL, 1);
    let saved = b.mmio.state().unwrap();
    assert_eq!(saved.status, Bench::ALL_OK);
    assert_eq!(saved.queues[0].next_avail, 5);

    let mut fresh = bench_with(Dummy::new());
    fresh.mmio.restore(&saved).unwrap();
    assert_eq!(fresh.status(), Bench::ALL_OK);
    assert_eq!(fresh.read32(QUEUE_READY), 1, "QueueSel came back (queue 1)");
    assert_eq!(fresh.read32(INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
    assert_eq!(
        fresh.mmio.interrupt().event().read().unwrap(),
        1,
        "re-raised"
    );
    let d = fresh.dummy.lock().unwrap();
    assert_eq!(
        d.acked,
        Some((1 << VIRTIO_F_VERSION_1) | (1 << HIGH_FEATURE))
    );
    let running = d.activated.as_ref().expect("started again");
    assert_eq!((running[0].next_avail, running[0].next_used), (5, 4));
    assert_eq!(running[1].desc_table, 0x2_0000);
}

#[test]
fn a_transport_saved_before_driver_ok_restores_without_starting_the_device() {
    let mut b = bench();
    b.negotiate(0);
    let saved = b.mmio.state().unwrap();
    let mut fresh = bench();
    fresh.mmio.restore(&saved).unwrap();
    assert_eq!(
        fresh.status(),
        status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK
    );
    assert!(fresh.dummy.lock().unwrap().activated.is_none());
    let mut wrong = saved.clone();
    wrong.queues.pop();
    let e = bench().mmio.restore(&wrong).unwrap_err();
    assert!(
        e.contains("has 1 queues") && e.contains("which has 2"),
        "{e}"
    );
}
