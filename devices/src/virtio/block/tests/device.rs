//! The device: features, config space, activation, the event loop.

use super::*;

fn block_config(image: &TempFile, read_only: bool) -> BlockConfig {
    BlockConfig {
        path: image.as_path().to_path_buf(),
        read_only,
        id: "rootfs".to_string(),
    }
}

#[test]
fn features_and_config_space_describe_the_disk() {
    let image = image_with(&pattern(10 * SECTOR + 7, 18));
    let rw = Block::new(&block_config(&image, false)).unwrap();
    let ro = Block::new(&block_config(&image, true)).unwrap();

    let base = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_BLK_F_FLUSH) | (1 << VIRTIO_BLK_F_SEG_MAX);
    assert_eq!(rw.avail_features(), base);
    assert_eq!(ro.avail_features(), base | (1 << VIRTIO_BLK_F_RO));
    assert_eq!(rw.device_type(), 2);
    assert_eq!(rw.queue_max_sizes(), &[QUEUE_SIZE]);
    assert_eq!(rw.queue_events().len(), 1);
    assert_eq!(rw.capacity_sectors(), 10);
    assert_eq!(rw.ignored_tail_bytes(), 7);

    let mut capacity = [0u8; 8];
    rw.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 10);
    let mut seg_max = [0u8; 4];
    rw.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), u32::from(QUEUE_SIZE) - 2);
    // Byte-wise reads agree with wide ones.
    let mut low = [0u8; 1];
    rw.read_config(0, &mut low);
    assert_eq!(low[0], 10);
    // Past the end, and at absurd offsets: zeros, no panic.
    let mut past = [0xffu8; 8];
    rw.read_config(20, &mut past);
    assert_eq!(past, [0; 8]);
    rw.read_config(u64::MAX - 2, &mut past);
    assert_eq!(past, [0; 8]);
}

#[test]
fn config_writes_are_ignored() {
    let image = image_with(&pattern(4 * SECTOR, 19));
    let mut dev = Block::new(&block_config(&image, false)).unwrap();
    dev.write_config(0, &[0xff; 8]);
    let mut capacity = [0u8; 8];
    dev.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), 4);
}

#[test]
fn missing_image_or_a_directory_is_an_error() {
    let config = BlockConfig {
        path: "/nonexistent/husk/disk.img".into(),
        read_only: true,
        id: String::new(),
    };
    assert!(Block::new(&config).is_err());
    // A directory opens read-only but is no disk.
    let dir = BlockConfig {
        path: std::env::temp_dir(),
        read_only: true,
        id: String::new(),
    };
    assert!(matches!(
        Block::new(&dir),
        Err(BlockError::Disk(DiskError::NotADisk { .. }))
    ));
}

#[test]
fn long_drive_ids_are_truncated_to_the_serial_size() {
    let image = image_with(&pattern(SECTOR, 20));
    let mut config = block_config(&image, false);
    config.id = "a-drive-id-longer-than-twenty-bytes".to_string();
    let dev = Block::new(&config).unwrap();
    assert_eq!(&dev.serial()[..], b"a-drive-id-longer-th");
}

#[test]
fn activation_checks_its_queues_and_reset_deactivates() {
    let image = image_with(&pattern(4 * SECTOR, 21));
    let mut dev = Block::new(&block_config(&image, false)).unwrap();
    let mem = guest_memory();
    let irq = Arc::new(IrqTrigger::new().unwrap());
    let vq = VirtQueueDriver::new(&mem, GuestAddress(0), QUEUE_SIZE);

    assert!(matches!(
        dev.activate(mem.clone(), irq.clone(), vec![]),
        Err(ActivateError::QueueCount {
            expected: 1,
            got: 0
        })
    ));
    assert!(matches!(
        dev.activate(
            mem.clone(),
            irq.clone(),
            vec![Queue::new(QUEUE_SIZE).unwrap()]
        ),
        Err(ActivateError::QueueNotReady(0))
    ));
    assert!(!dev.is_activated());

    dev.activate(mem.clone(), irq.clone(), vec![vq.create_queue()])
        .unwrap();
    assert!(dev.is_activated());
    assert!(matches!(
        dev.activate(mem.clone(), irq.clone(), vec![vq.create_queue()]),
        Err(ActivateError::AlreadyActive)
    ));

    dev.ack_features(u64::MAX);
    assert_eq!(dev.acked_features(), dev.avail_features());
    dev.reset();
    assert!(!dev.is_activated());
    assert_eq!(dev.acked_features(), 0);
    // Can be activated again after a reset.
    dev.activate(mem, irq, vec![vq.create_queue()]).unwrap();
}

#[test]
fn event_loop_serves_the_queue_and_interrupts_the_guest() {
    let contents = pattern(4 * SECTOR, 22);
    let image = image_with(&contents);
    let block = Arc::new(Mutex::new(
        Block::new(&block_config(&image, false)).unwrap(),
    ));
    let mut manager: EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>> =
        EventManager::new().unwrap();
    manager.add_subscriber(block.clone());

    let mem = guest_memory();
    let mut vq = VirtQueueDriver::new(&mem, GuestAddress(0), QUEUE_SIZE);
    let irq = Arc::new(IrqTrigger::new().unwrap());
    let notify = block.lock().unwrap().queue_events()[0].try_clone().unwrap();

    // A notification before activation is drained and ignored.
    notify.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(irq.status(), 0);
    assert_eq!(
        BlockMetrics::get(&block.lock().unwrap().metrics().queue_events),
        1
    );

    // Post a request before activating: the activation kick picks it up.
    let header = vq.alloc(16);
    vq.write(header, &[0; 16]); // IN, sector 0
    let data = vq.alloc(SECTOR);
    let status = vq.alloc(1);
    let head = vq.add_chain(&[
        Buf::readable(header, 16),
        Buf::writable(data, SECTOR as u32),
        Buf::writable(status, 1),
    ]);
    block
        .lock()
        .unwrap()
        .activate(mem.clone(), irq.clone(), vec![vq.create_queue()])
        .unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);

    assert_eq!(vq.pop_used(), Some((u32::from(head), SECTOR as u32 + 1)));
    assert_eq!(vq.read(status, 1)[0], OK);
    assert_eq!(vq.read(data, SECTOR), contents[..SECTOR]);
    assert_eq!(irq.status(), VIRTIO_MMIO_INT_VRING);
    assert_eq!(irq.event().read().unwrap(), 1);

    // And an ordinary notification after activation.
    let head = vq.add_chain(&[
        Buf::readable(header, 16),
        Buf::writable(data, SECTOR as u32),
        Buf::writable(status, 1),
    ]);
    notify.write(1).unwrap();
    assert_eq!(manager.run_with_timeout(100).unwrap(), 1);
    assert_eq!(vq.pop_used(), Some((u32::from(head), SECTOR as u32 + 1)));
    assert_eq!(irq.event().read().unwrap(), 1);
}
