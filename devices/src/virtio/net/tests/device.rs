//! The device: features, config space, MAC, offloads, activation, and the
//! event loop.

use std::os::unix::net::UnixStream;

use super::super::device::{format_mac, locally_administered_mac, NetError};
use super::super::tap::tap_offload_flags;
use super::super::{QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
use super::*;
use crate::virtio::ActivateError;
use virtio_queue::QueueT;

#[test]
fn features_and_config_space_describe_the_nic() {
    let (mut net, _host) = fake_net();
    let expected = [
        VIRTIO_F_VERSION_1,
        virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX,
        VIRTIO_NET_F_MAC,
        VIRTIO_NET_F_STATUS,
        VIRTIO_NET_F_MRG_RXBUF,
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_TSO6,
        VIRTIO_NET_F_HOST_UFO,
    ]
    .iter()
    .fold(0u64, |acc, &f| acc | bit(f));
    assert_eq!(net.avail_features(), expected);
    assert_eq!(net.device_type(), 1);
    assert_eq!(net.queue_max_sizes(), &[QUEUE_SIZE, QUEUE_SIZE]);
    assert_eq!(net.queue_events().len(), 2);

    let mut config = [0u8; 8];
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &[0x02, 0, 0, 0, 0, 0x01]);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    // Byte-wise reads agree; past the end and at absurd offsets: zeros.
    let mut byte = [0u8; 1];
    net.read_config(5, &mut byte);
    assert_eq!(byte[0], 0x01);
    let mut past = [0xffu8; 4];
    net.read_config(8, &mut past);
    assert_eq!(past, [0; 4]);
    net.read_config(u64::MAX - 1, &mut past);
    assert_eq!(past, [0; 4]);

    // Writes are ignored.
    net.write_config(0, &[0xff; 8]);
    net.read_config(0, &mut config);
    assert_eq!(&config[..6], &[0x02, 0, 0, 0, 0, 0x01]);

    // Acks are masked to what is offered.
    net.ack_features(u64::MAX);
    assert_eq!(net.acked_features(), expected);
}

#[test]
fn a_missing_mac_is_generated_locally_administered_and_unicast() {
    for random in [[0xff; 6], [0; 6], [0x01, 2, 3, 4, 5, 6]] {
        let mac = locally_administered_mac(random);
        assert_eq!(mac[0] & 0x03, 0x02, "{}", format_mac(&mac));
        assert_eq!(mac[1..], random[1..]);
    }
    let (backend, _host) = fake_backend();
    let net = Net::with_backend(backend, None, "eth0".into()).unwrap();
    let mac = net.mac();
    assert_eq!(mac[0] & 0x03, 0x02);
    let mut config = [0u8; 6];
    net.read_config(0, &mut config);
    assert_eq!(config, mac);
    // Two devices, two MACs (48 - 2 random bits).
    let (backend, _host) = fake_backend();
    let other = Net::with_backend(backend, None, "eth1".into()).unwrap();
    assert_ne!(other.mac(), mac);
}

#[test]
fn multicast_and_zero_macs_are_refused() {
    for (mac, text) in [
        ([0x01, 0, 0x5e, 0, 0, 1], "01:00:5e:00:00:01"),
        ([0; 6], "00:00:00:00:00:00"),
    ] {
        let (backend, _host) = fake_backend();
        let err = Net::with_backend(backend, Some(mac), "eth0".into()).unwrap_err();
        assert!(matches!(err, NetError::InvalidMac { .. }));
        assert!(err.to_string().contains(text), "{err}");
    }
}

#[test]
fn tap_offloads_follow_the_guest_features() {
    let csum = bit(VIRTIO_NET_F_GUEST_CSUM);
    let cases = [
        (0, 0),
        // TSO without checksum offload is meaningless: nothing.
        (
            bit(VIRTIO_NET_F_GUEST_TSO4) | bit(VIRTIO_NET_F_GUEST_UFO),
            0,
        ),
        (csum, libc::TUN_F_CSUM),
        (
            csum | bit(VIRTIO_NET_F_GUEST_TSO4),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4,
        ),
        (
            csum | bit(VIRTIO_NET_F_GUEST_TSO6),
            libc::TUN_F_CSUM | libc::TUN_F_TSO6,
        ),
        (
            csum | bit(VIRTIO_NET_F_GUEST_UFO),
            libc::TUN_F_CSUM | libc::TUN_F_UFO,
        ),
        (
            // Host-side (tx) offloads and other features change nothing.
            u64::MAX,
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6 | libc::TUN_F_UFO,
        ),
        (
            bit(VIRTIO_NET_F_CSUM)
                | bit(VIRTIO_NET_F_HOST_TSO4)
                | bit(VIRTIO_NET_F_HOST_TSO6)
                | bit(VIRTIO_NET_F_MRG_RXBUF),
            0,
        ),
    ];
    for (acked, flags) in cases {
        assert_eq!(tap_offload_flags(acked), flags, "acked {acked:#x}");
    }
}

#[test]
fn activation_sets_the_backend_offloads_and_reset_clears_them() {
    let (mut net, host) = fake_net();
    let driver = Driver::new();
    let irq = Arc::new(IrqTrigger::new().unwrap());
    net.ack_features(BASE_FEATURES | bit(VIRTIO_NET_F_GUEST_CSUM) | bit(VIRTIO_NET_F_GUEST_TSO4));
    assert_eq!(host.offload(), u32::MAX, "untouched before activation");

    net.activate(driver.rxq.mem.clone(), irq, driver.queues())
        .unwrap();
    assert_eq!(host.offload(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);

    net.reset();
    assert_eq!(host.offload(), 0);
}

#[test]
fn activation_checks_its_queues_and_reset_deactivates() {
    let (mut net, _host) = fake_net();
    let driver = Driver::new();
    let mem = driver.rxq.mem.clone();
    let irq = Arc::new(IrqTrigger::new().unwrap());

    assert!(matches!(
        net.activate(mem.clone(), irq.clone(), vec![driver.rxq.create_queue()]),
        Err(ActivateError::QueueCount {
            expected: 2,
            got: 1
        })
    ));
    assert!(matches!(
        net.activate(
            mem.clone(),
            irq.clone(),
            vec![driver.rxq.create_queue(), Queue::new(QUEUE_SIZE).unwrap()]
        ),
        Err(ActivateError::QueueNotReady(1))
    ));
    assert!(!net.is_activated());
    assert_eq!(net.rx_state(), RxState::Inactive);

    net.activate(mem.clone(), irq.clone(), driver.queues())
        .unwrap();
    assert!(net.is_activated());
    assert_eq!(net.rx_state(), RxState::Receiving);
    // Activation kicks both queues.
    assert_eq!(net.queue_events()[RX_QUEUE].read().unwrap(), 1);
    assert_eq!(net.queue_events()[TX_QUEUE].read().unwrap(), 1);
    assert!(matches!(
        net.activate(mem.clone(), irq.clone(), driver.queues()),
        Err(ActivateError::AlreadyActive)
    ));

    net.ack_features(BASE_FEATURES);
    net.reset();
    assert!(!net.is_activated());
    assert_eq!(net.acked_features(), 0);
    assert_eq!(net.rx_state(), RxState::Inactive);
    net.activate(mem, irq, driver.queues()).unwrap();
}

#[test]
fn event_loop_sends_tx_and_interrupts_the_guest() {
    let (net, host) = fake_net();
    let mut h = loop_harness(net);

    // Before activation a notification is drained and ignored, and the
    // backend is not polled whatever arrives.
    h.notify(TX_QUEUE);
    host.send(&packet(&frame(60, 30)));
    assert_eq!(h.run(100), 1);
    assert_eq!(h.run(20), 0);
    assert_eq!(h.state(), (RxState::Inactive, false));

    // Posted before activation: the activation kick sends it.
    let p = packet(&frame(200, 31));
    let head = h.driver.post_tx(&p, &[VNET_HDR_LEN]);
    h.activate(BASE_FEATURES);
    h.run(100);
    assert_eq!(host.recv(), Some(p.clone()));
    assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
    assert_eq!(h.irq.status(), VIRTIO_MMIO_INT_VRING);

    // An ordinary notification.
    let head = h.driver.post_tx(&p, &[]);
    h.notify(TX_QUEUE);
    assert_eq!(h.run(100), 1);
    assert_eq!(host.recv(), Some(p));
    assert_eq!(h.driver.txq.pop_used(), Some((u32::from(head), 0)));
}

#[test]
fn rx_without_guest_buffers_waits_without_spinning_then_resumes() {
    let (net, host) = fake_net();
    let mut h = loop_harness(net);
    let p1 = packet(&frame(100, 40));
    let p2 = packet(&frame(200, 41));
    let p3 = packet(&frame(300, 42));
    host.send(&p1);
    host.send(&p2);

    // Activation kicks the rx queue: p1 is read, there is nowhere to put
    // it, so the device holds it and does not poll the backend.
    h.activate(BASE_FEATURES);
    h.run(100);
    assert_eq!(h.state(), (RxState::WaitingForBuffers, false));
    assert_eq!(h.metric(|m| &m.rx_paused), 1);

    // No spin: p2 keeps the backend readable, yet nothing wakes the loop.
    let events_before = h.metric(|m| &m.backend_events);
    for _ in 0..3 {
        assert_eq!(h.run(30), 0);
    }
    assert_eq!(h.metric(|m| &m.backend_events), events_before);

    // The guest posts buffers and notifies: p1, then p2, in order.
    let bufs = h.driver.post_rx_buffers(3, 2048);
    h.notify(RX_QUEUE);
    h.run(100);
    for (i, p) in [&p1, &p2].iter().enumerate() {
        assert_eq!(
            h.driver.rxq.pop_used(),
            Some((u32::from(bufs[i].0), p.len() as u32))
        );
        assert_eq!(h.driver.rxq.read(bufs[i].1, p.len()), as_received(p, 1));
    }
    assert_eq!(h.state(), (RxState::Receiving, true));
    assert_eq!(h.irq.event().read().unwrap(), 1);

    // Polling again: a new packet comes in through the backend fd alone.
    host.send(&p3);
    assert_eq!(h.run(100), 1);
    assert_eq!(
        h.driver.rxq.pop_used(),
        Some((u32::from(bufs[2].0), p3.len() as u32))
    );

    // Out of buffers while polling: the device stops polling again.
    host.send(&p1);
    assert_eq!(h.run(100), 1);
    assert_eq!(h.state(), (RxState::WaitingForBuffers, false));
    assert_eq!(h.run(30), 0);
    assert_eq!(h.metric(|m| &m.rx_paused), 2);
    assert_eq!(h.metric(|m| &m.rx_packets), 3);
    assert_eq!(h.metric(|m| &m.rx_dropped), 0);
}

#[test]
fn a_reset_drops_the_pending_frame_and_stops_polling() {
    let (net, host) = fake_net();
    let mut h = loop_harness(net);
    h.activate(BASE_FEATURES);
    h.run(100);
    assert_eq!(h.state(), (RxState::Receiving, true));

    host.send(&packet(&frame(100, 50)));
    h.run(100);
    assert_eq!(h.state(), (RxState::WaitingForBuffers, false));

    h.net.lock().unwrap().reset();
    assert_eq!(h.state(), (RxState::Inactive, false));
    assert_eq!(h.metric(|m| &m.rx_dropped), 1);
    host.send(&packet(&frame(100, 51)));
    assert_eq!(h.run(30), 0);
}

#[test]
fn a_reset_while_polling_stops_polling_at_the_next_packet() {
    let (net, host) = fake_net();
    let mut h = loop_harness(net);
    h.activate(BASE_FEATURES);
    h.run(100);
    h.net.lock().unwrap().reset();
    assert_eq!(h.state(), (RxState::Inactive, true));

    host.send(&packet(&frame(100, 52)));
    assert_eq!(h.run(100), 1);
    assert_eq!(h.state(), (RxState::Inactive, false));
    assert_eq!(h.run(30), 0);
}

/// A backend whose fd hangs up: a stream socket whose peer is gone.
struct HungUp(UnixStream);

impl AsRawFd for HungUp {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl NetBackend for HungUp {
    fn read_packet(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        io::Read::read(&mut self.0, buf)
    }
    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize> {
        io::Write::write(&mut self.0, packet)
    }
    fn set_offload(&mut self, _flags: u32) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_backend_error_condition_stops_receiving_instead_of_spinning() {
    let (ours, theirs) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let net = Net::with_backend(HungUp(ours), None, "eth0".into()).unwrap();
    let mut h = loop_harness(net);
    h.activate(BASE_FEATURES);
    h.run(100);
    assert_eq!(h.state(), (RxState::Receiving, true));

    drop(theirs);
    assert_eq!(h.run(100), 1);
    assert_eq!(h.state(), (RxState::BackendFailed, false));
    // EPOLLHUP is permanent, but the fd is out of the set now.
    assert_eq!(h.run(30), 0);
    // Even the guest posting buffers does not bring it back.
    h.driver.post_rx_buffers(1, 2048);
    h.notify(RX_QUEUE);
    assert_eq!(h.run(100), 1);
    assert_eq!(h.state(), (RxState::BackendFailed, false));
    assert_eq!(h.run(30), 0);
}

/// The guest's side of the virtio-mmio registers, over a real transport.
struct Registers(crate::virtio::transport::MmioTransport);

impl Registers {
    fn read32(&mut self, offset: u32) -> u32 {
        let mut data = [0u8; 4];
        self.0.read(u64::from(offset), &mut data);
        u32::from_le_bytes(data)
    }

    fn write32(&mut self, offset: u32, value: u32) {
        self.0.write(u64::from(offset), &value.to_le_bytes());
    }
}

/// The whole path a Linux guest takes: probe through the registers, read
/// the MAC, negotiate offloads and mergeable buffers, set up both queues,
/// DRIVER_OK, then send and receive through the event loop.
#[test]
fn net_device_end_to_end_through_the_mmio_registers() {
    use crate::virtio::status;
    use virtio_bindings::virtio_mmio as reg;

    let (net, host) = fake_net();
    let mut h = loop_harness(net);
    let transport =
        crate::virtio::transport::MmioTransport::new(h.driver.rxq.mem.clone(), h.net.clone())
            .unwrap();
    let mut regs = Registers(transport);

    assert_eq!(regs.read32(reg::VIRTIO_MMIO_DEVICE_ID), 1);
    let mac: Vec<u8> = (0..6)
        .map(|i| {
            let mut b = [0u8];
            regs.0.read(u64::from(reg::VIRTIO_MMIO_CONFIG) + i, &mut b);
            b[0]
        })
        .collect();
    assert_eq!(mac, [0x02, 0, 0, 0, 0, 0x01]);

    regs.write32(reg::VIRTIO_MMIO_STATUS, status::ACKNOWLEDGE);
    regs.write32(
        reg::VIRTIO_MMIO_STATUS,
        status::ACKNOWLEDGE | status::DRIVER,
    );
    let features = BASE_FEATURES
        | bit(VIRTIO_NET_F_STATUS)
        | bit(VIRTIO_NET_F_MRG_RXBUF)
        | bit(VIRTIO_NET_F_CSUM)
        | bit(VIRTIO_NET_F_GUEST_CSUM)
        | bit(VIRTIO_NET_F_GUEST_TSO4)
        | bit(VIRTIO_NET_F_HOST_TSO4);
    for page in 0..2 {
        regs.write32(reg::VIRTIO_MMIO_DRIVER_FEATURES_SEL, page);
        regs.write32(
            reg::VIRTIO_MMIO_DRIVER_FEATURES,
            (features >> (32 * page)) as u32,
        );
    }
    let ok = status::ACKNOWLEDGE | status::DRIVER | status::FEATURES_OK;
    regs.write32(reg::VIRTIO_MMIO_STATUS, ok);
    assert_eq!(regs.read32(reg::VIRTIO_MMIO_STATUS), ok);
    for (index, vq) in [(0, &h.driver.rxq), (1, &h.driver.txq)] {
        regs.write32(reg::VIRTIO_MMIO_QUEUE_SEL, index);
        assert_eq!(
            regs.read32(reg::VIRTIO_MMIO_QUEUE_NUM_MAX),
            u32::from(QUEUE_SIZE)
        );
        regs.write32(reg::VIRTIO_MMIO_QUEUE_NUM, u32::from(vq.size));
        for (low, high, addr) in [
            (
                reg::VIRTIO_MMIO_QUEUE_DESC_LOW,
                reg::VIRTIO_MMIO_QUEUE_DESC_HIGH,
                vq.desc_table,
            ),
            (
                reg::VIRTIO_MMIO_QUEUE_AVAIL_LOW,
                reg::VIRTIO_MMIO_QUEUE_AVAIL_HIGH,
                vq.avail_ring,
            ),
            (
                reg::VIRTIO_MMIO_QUEUE_USED_LOW,
                reg::VIRTIO_MMIO_QUEUE_USED_HIGH,
                vq.used_ring,
            ),
        ] {
            regs.write32(low, addr.raw_value() as u32);
            regs.write32(high, (addr.raw_value() >> 32) as u32);
        }
        regs.write32(reg::VIRTIO_MMIO_QUEUE_READY, 1);
    }
    // Linux fills the rx ring right after DRIVER_OK (ndo_open); here, before.
    let bufs = h.driver.post_rx_buffers(4, 1024);
    regs.write32(reg::VIRTIO_MMIO_STATUS, ok | status::DRIVER_OK);
    assert!(h.net.lock().unwrap().is_activated());
    assert_eq!(h.net.lock().unwrap().acked_features(), features);
    assert_eq!(host.offload(), libc::TUN_F_CSUM | libc::TUN_F_TSO4);
    h.run(100); // the activation kicks

    // tx, notified through the QueueNotify register.
    let out = packet_with(
        VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        &frame(3000, 70),
    );
    h.driver.post_tx(&out, &[VNET_HDR_LEN]);
    regs.write32(reg::VIRTIO_MMIO_QUEUE_NOTIFY, 1);
    h.run(100);
    assert_eq!(host.recv(), Some(out));
    assert_eq!(
        regs.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );
    regs.write32(reg::VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING);

    // rx: a 2000-byte segmented packet spans two 1024-byte buffers.
    let incoming = packet_with(
        VIRTIO_NET_HDR_F_NEEDS_CSUM as u8,
        VIRTIO_NET_HDR_GSO_TCPV4 as u8,
        &frame(2000, 71),
    );
    host.send(&incoming);
    h.run(100);
    assert_eq!(h.driver.rxq.pop_used(), Some((u32::from(bufs[0].0), 1024)));
    assert_eq!(
        h.driver.rxq.pop_used(),
        Some((u32::from(bufs[1].0), incoming.len() as u32 - 1024))
    );
    let spread: Vec<_> = bufs[..2].iter().map(|&(_, a)| (a, 1024)).collect();
    assert_eq!(
        h.driver.read_spread(&spread, incoming.len()),
        as_received(&incoming, 2)
    );
    assert_eq!(
        regs.read32(reg::VIRTIO_MMIO_INTERRUPT_STATUS),
        VIRTIO_MMIO_INT_VRING
    );

    // Reset through the status register: offloads cleared, receiving stops.
    regs.write32(reg::VIRTIO_MMIO_STATUS, 0);
    assert_eq!(host.offload(), 0);
    assert_eq!(h.state().0, RxState::Inactive);
}

#[test]
fn a_stream_backend_offers_no_offloads() {
    let (socket, _peer) = UnixStream::pair().unwrap();
    let config = super::super::NetConfig {
        host: super::super::NetHost::Stream(std::sync::Arc::new(socket.into())),
        mac: None,
        id: "eth0".into(),
        limits: Default::default(),
    };
    let super::super::NetHost::Stream(fd) = &config.host else {
        unreachable!()
    };
    let mut net = Net::over_stream(fd, &config).unwrap();
    let offloads = [
        VIRTIO_NET_F_CSUM,
        VIRTIO_NET_F_GUEST_CSUM,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
        VIRTIO_NET_F_HOST_UFO,
    ];
    for f in offloads {
        assert_eq!(net.avail_features() & bit(f), 0, "feature {f} offered");
    }
    assert_ne!(net.avail_features() & bit(VIRTIO_NET_F_MRG_RXBUF), 0);
    // A driver acking offloads anyway gets none of them.
    net.ack_features(u64::MAX);
    assert_eq!(net.acked_features() & bit(VIRTIO_NET_F_CSUM), 0);
}
