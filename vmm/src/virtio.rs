//! Attaches virtio-mmio devices: a 4 KiB window and an IOAPIC pin each,
//! queue notifications as ioeventfds, interrupts as irqfds, the queue work
//! on the event loop, and a `virtio_mmio.device=` token for the kernel.

use crate::memory::GuestMemory;
use crate::mmio::{MmioBus, MmioDevice};
use crate::snapshot::devices::{DeviceSpec, SavedNetHost};
use crate::x86_64::layout::{FIRST_DEVICE_IRQ, LAST_DEVICE_IRQ, VIRTIO_MMIO_START};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use husk_devices::rate_limiter::{RateLimiter, ReadWriteLimits};
use husk_devices::virtio::block::{Block, BlockConfig, BlockMetrics, Budget};
use husk_devices::virtio::fs::Fs;
pub use husk_devices::virtio::fs::FsConfig;
pub use husk_devices::virtio::net::{
    create_persistent as create_tap, NetConfig, NetHost, NetLimits,
};
use husk_devices::virtio::net::{Net, NetBackend, NetError, NetMetrics};
use husk_devices::virtio::transport::{
    cmdline_token, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use husk_devices::virtio::vsock::Vsock;
pub use husk_devices::virtio::vsock::VsockConfig;
use husk_devices::virtio::VirtioDevice;
use kvm_ioctls::{IoEventAddress, VmFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

pub type EventLoop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

/// A disk for the guest, in attachment order: the first is /dev/vda.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Reported to the guest as the disk's serial.
    pub id: String,
    /// I/O limits (bytes and operations); none = no limit.
    pub rate_limiter: Option<husk_devices::rate_limiter::Limits>,
    /// Limits on reads and on writes apart, on top (`husk run
    /// --device-read-bps` ...; not in Firecracker's API).
    pub read_write: ReadWriteLimits,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("disk {0}: {1}")]
    Disk(String, String),
    #[error("network interface on {0}: {1}")]
    Net(String, String),
    #[error("vsock on {0}: {1}")]
    Vsock(String, String),
    #[error("shared directory {0}: {1}")]
    Fs(String, String),
    #[error("too many devices: the guest has IOAPIC pins for {0}")]
    OutOfIrqs(u32),
    #[error("attaching a virtio device: {0} failed: {1}")]
    Attach(&'static str, String),
}

/// Where a NIC goes and what it is called.
struct Nic<'a> {
    vm: &'a Arc<VmFd>,
    mem: &'a GuestMemory,
    id: &'a str,
    limits: NetLimits,
}

/// The whole chain of an error on one line: device errors keep their
/// cause in `source()`, and the user needs the cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// A device's MMIO window: its transport, and its queues' notify address
/// made a KVM ioeventfd at the driver's first notification. Not before:
/// registering an ioeventfd starts an SRCU grace period of KVM's (a normal
/// one, several ms on kvm_pvm) that the next memory-slot change or the
/// VM's teardown waits out, and a VM that never uses the device (the null
/// guest, or one that ends early) then pays it (docs/benchmarks.md). The
/// first notification itself reaches the queue through the transport.
struct Window {
    transport: Arc<Mutex<MmioTransport>>,
    notify: Option<LazyNotify>,
}

struct LazyNotify {
    vm: Arc<VmFd>,
    base: u64,
    queue_evts: Vec<EventFd>,
}

impl LazyNotify {
    fn register(self) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            let at = IoEventAddress::Mmio(self.base + QUEUE_NOTIFY_OFFSET);
            // Without it the queue still works, through this window: one
            // exit to here per notification, which the log says.
            if let Err(e) = self.vm.register_ioevent(evt, &at, i as u32) {
                log::warn!(
                    "virtio-mmio at {:#x}: KVM_IOEVENTFD for queue {i}: {e}",
                    self.base
                );
            }
        }
    }
}

impl MmioDevice for Window {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        crate::pio::lock(&self.transport).read(offset, data)
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        crate::pio::lock(&self.transport).write(offset, data);
        if offset == QUEUE_NOTIFY_OFFSET {
            if let Some(n) = self.notify.take() {
                n.register();
            }
        }
    }
}

/// A device's report that the VM cannot go on (a vhost-user backend that
/// went away): the reason, and an eventfd that wakes the event loop to
/// stop the VM with it.
pub struct Fatal {
    pub evt: vmm_sys_util::eventfd::EventFd,
    pub reason: Mutex<Option<String>>,
}

impl Fatal {
    fn new() -> std::io::Result<Arc<Fatal>> {
        Ok(Arc::new(Fatal {
            evt: vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK)?,
            reason: Mutex::new(None),
        }))
    }

    fn report(&self, why: String) {
        crate::pio::lock(&self.reason).get_or_insert(why);
        let _ = self.evt.write(1);
    }
}

/// Hands out MMIO windows and IRQs in order, so they never overlap.
#[derive(Default)]
pub struct Attacher {
    next: u32,
    pub cmdline_tokens: Vec<String>,
    /// Each disk's id and counters, for metrics.
    pub disk_metrics: Vec<(String, Arc<BlockMetrics>)>,
    /// Each network interface's id and counters, for the queue report.
    pub net_metrics: Vec<(String, Arc<NetMetrics>)>,
    /// Set once a device needs it (virtio-fs).
    pub fatal: Option<Arc<Fatal>>,
    /// Every device, in attachment order, for snapshots.
    pub devices: Vec<Attached>,
}

/// A disk as `PATCH /drives` changes it: the device, and its limits now
/// (what a snapshot keeps).
pub struct AttachedDisk {
    pub device: Arc<Mutex<Block>>,
    pub limits: Mutex<Option<husk_devices::rate_limiter::Limits>>,
}

/// A NIC as `PATCH /network-interfaces` changes it: how to set its limits
/// (whatever its backend), and its limits now (what a snapshot keeps).
pub struct AttachedNic {
    pub set_limits: Box<dyn Fn(NetLimits) + Send + Sync>,
    pub limits: Mutex<NetLimits>,
}

/// A device as a snapshot sees it.
pub struct Attached {
    /// What it was made from, or why it cannot be snapshotted.
    pub spec: Result<DeviceSpec, String>,
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The vsock device, told of the lost connections at restore.
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    /// A disk, whose limits change while it runs.
    pub block: Option<AttachedDisk>,
    /// A NIC, likewise.
    pub nic: Option<AttachedNic>,
}

impl Attacher {
    fn attach(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        bus: &mut MmioBus,
        events: &mut EventLoop,
        device: Arc<Mutex<impl VirtioDevice + MutEventSubscriber + 'static>>,
    ) -> Result<Arc<Mutex<MmioTransport>>, Error> {
        let irq = FIRST_DEVICE_IRQ + self.next;
        if irq > LAST_DEVICE_IRQ {
            return Err(Error::OutOfIrqs(LAST_DEVICE_IRQ - FIRST_DEVICE_IRQ + 1));
        }
        let base = VIRTIO_MMIO_START + u64::from(self.next) * MMIO_WINDOW_SIZE;
        let attach = |what| move |e: kvm_ioctls::Error| Error::Attach(what, e.to_string());
        let transport = MmioTransport::new(mem.clone(), device.clone())
            .map_err(|e| Error::Attach("virtio-mmio transport", chain(&e)))?;
        let queue_evts = crate::pio::lock(&device)
            .queue_events()
            .iter()
            .map(EventFd::try_clone)
            .collect::<std::io::Result<Vec<_>>>()
            .map_err(|e| Error::Attach("eventfd", e.to_string()))?;
        vm.register_irqfd(transport.interrupt().event(), irq)
            .map_err(attach("KVM_IRQFD"))?;
        events.add_subscriber(device);
        let transport = Arc::new(Mutex::new(transport));
        let window = Window {
            transport: transport.clone(),
            notify: Some(LazyNotify {
                vm: vm.clone(),
                base,
                queue_evts,
            }),
        };
        bus.insert(base, MMIO_WINDOW_SIZE, Arc::new(Mutex::new(window)));
        self.cmdline_tokens
            .push(cmdline_token(base, MMIO_WINDOW_SIZE, irq));
        self.next += 1;
        Ok(transport)
    }

    fn record(
        &mut self,
        spec: Result<DeviceSpec, String>,
        transport: Arc<Mutex<MmioTransport>>,
        vsock: Option<Arc<Mutex<Vsock>>>,
    ) {
        self.devices.push(Attached {
            spec,
            transport,
            vsock,
            block: None,
            nic: None,
        });
    }

    /// Connects to the vhost-user backend and attaches a virtio-fs device.
    pub fn attach_fs(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        bus: &mut MmioBus,
        events: &mut EventLoop,
        fs: &FsConfig,
    ) -> Result<(), Error> {
        let mut device = Fs::new(fs).map_err(|e| Error::Fs(fs.tag.clone(), chain(&e)))?;
        let fatal = match &self.fatal {
            Some(f) => f.clone(),
            None => {
                let f = Fatal::new().map_err(|e| Error::Fs(fs.tag.clone(), e.to_string()))?;
                self.fatal = Some(f.clone());
                f
            }
        };
        device.on_backend_gone(Box::new(move |why| fatal.report(why)));
        let transport = self.attach(vm, mem, bus, events, Arc::new(Mutex::new(device)))?;
        let spec = DeviceSpec::Fs {
            socket: fs.socket.clone(),
            tag: fs.tag.clone(),
            id: fs.id.clone(),
        };
        self.record(Ok(spec), transport, None);
        Ok(())
    }

    /// Opens the host side (a TAP or a stream socket) and attaches a
    /// virtio-net device on it.
    pub fn attach_net(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        bus: &mut MmioBus,
        events: &mut EventLoop,
        net: &NetConfig,
    ) -> Result<(), Error> {
        let failed = |e: NetError| Error::Net(net.host.to_string(), chain(&e));
        let nic = Nic {
            vm,
            mem,
            id: &net.id,
            limits: net.limits,
        };
        match &net.host {
            NetHost::Tap(name) => {
                let device = Net::new(name, net).map_err(failed)?;
                self.attach_nic(nic, bus, events, device, SavedNetHost::Tap(name.clone()))
            }
            NetHost::Stream(socket) => {
                let device = Net::over_stream(socket, net).map_err(failed)?;
                self.attach_nic(nic, bus, events, device, SavedNetHost::Stream)
            }
        }
    }

    /// The part of attaching a NIC its backend does not change.
    fn attach_nic<B: NetBackend + 'static>(
        &mut self,
        nic: Nic,
        bus: &mut MmioBus,
        events: &mut EventLoop,
        device: Net<B>,
        host: SavedNetHost,
    ) -> Result<(), Error>
    where
        Net<B>: MutEventSubscriber,
    {
        let spec = DeviceSpec::Net {
            host,
            mac: device.mac(),
            id: nic.id.to_owned(),
            limits: nic.limits,
        };
        self.net_metrics
            .push((nic.id.to_owned(), device.metrics().clone()));
        let device = Arc::new(Mutex::new(device));
        let transport = self.attach(nic.vm, nic.mem, bus, events, device.clone())?;
        self.record(Ok(spec), transport, None);
        if let Some(last) = self.devices.last_mut() {
            last.nic = Some(AttachedNic {
                set_limits: Box::new(move |l| crate::pio::lock(&device).set_rate_limiters(l)),
                limits: Mutex::new(nic.limits),
            });
        }
        Ok(())
    }

    /// Binds the host socket and attaches a virtio-vsock device.
    pub fn attach_vsock(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        bus: &mut MmioBus,
        events: &mut EventLoop,
        vsock: &VsockConfig,
    ) -> Result<(), Error> {
        let device = Vsock::new(vsock)
            .map_err(|e| Error::Vsock(vsock.uds_path.display().to_string(), chain(&e)))?;
        let device = Arc::new(Mutex::new(device));
        let transport = self.attach(vm, mem, bus, events, device.clone())?;
        let spec = DeviceSpec::Vsock {
            guest_cid: vsock.guest_cid,
            uds_path: vsock.uds_path.clone(),
            id: vsock.id.clone(),
        };
        self.record(Ok(spec), transport, Some(device));
        Ok(())
    }

    /// Opens and attaches a virtio-blk disk.
    pub fn attach_disk(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        bus: &mut MmioBus,
        events: &mut EventLoop,
        disk: &DiskConfig,
    ) -> Result<(), Error> {
        let mut block = Block::new(&BlockConfig {
            path: disk.path.clone(),
            read_only: disk.read_only,
            id: disk.id.clone(),
        })
        .map_err(|e| Error::Disk(disk.path.display().to_string(), chain(&e)))?;
        if let Some(budget) = budget_override()? {
            block.set_budget(budget);
        }
        if let Some(limits) = disk.rate_limiter {
            block.set_rate_limiter(RateLimiter::new(limits));
        }
        if disk.read_write.is_limited() {
            block.set_read_write_limits(disk.read_write);
        }
        self.disk_metrics
            .push((disk.id.clone(), block.metrics().clone()));
        let block = Arc::new(Mutex::new(block));
        let transport = self.attach(vm, mem, bus, events, block.clone())?;
        let spec = DeviceSpec::Disk {
            path: disk.path.clone(),
            read_only: disk.read_only,
            id: disk.id.clone(),
            rate_limiter: disk.rate_limiter,
            read_write: disk.read_write,
        };
        self.record(Ok(spec), transport, None);
        if let Some(last) = self.devices.last_mut() {
            last.block = Some(AttachedDisk {
                device: block,
                limits: Mutex::new(disk.rate_limiter),
            });
        }
        Ok(())
    }

    /// Attaches the device a snapshot describes, as it was made.
    pub fn attach_spec(
        &mut self,
        vm: &Arc<VmFd>,
        mem: &GuestMemory,
        bus: &mut MmioBus,
        events: &mut EventLoop,
        spec: &DeviceSpec,
    ) -> Result<(), Error> {
        match spec {
            DeviceSpec::Disk {
                path,
                read_only,
                id,
                rate_limiter,
                read_write,
            } => {
                let disk = DiskConfig {
                    path: path.clone(),
                    read_only: *read_only,
                    id: id.clone(),
                    rate_limiter: *rate_limiter,
                    read_write: *read_write,
                };
                self.attach_disk(vm, mem, bus, events, &disk)
            }
            DeviceSpec::Net {
                host: SavedNetHost::Tap(tap),
                mac,
                id,
                limits,
            } => {
                let net = NetConfig {
                    host: NetHost::Tap(tap.clone()),
                    mac: Some(*mac),
                    id: id.clone(),
                    limits: *limits,
                };
                self.attach_net(vm, mem, bus, events, &net)
            }
            DeviceSpec::Net {
                host: SavedNetHost::Stream,
                id,
                ..
            } => Err(Error::Net(
                "a userspace network (passt)".into(),
                format!("{id} needs a new host side: passt does not outlive its VM"),
            )),
            DeviceSpec::Vsock {
                guest_cid,
                uds_path,
                id,
            } => {
                let vsock = VsockConfig {
                    guest_cid: *guest_cid,
                    uds_path: uds_path.clone(),
                    id: id.clone(),
                };
                self.attach_vsock(vm, mem, bus, events, &vsock)
            }
            DeviceSpec::Fs { socket, tag, id } => {
                let fs = FsConfig {
                    socket: socket.clone(),
                    tag: tag.clone(),
                    id: id.clone(),
                };
                self.attach_fs(vm, mem, bus, events, &fs)
            }
        }
    }
}

/// `HUSK_BLK_PASS_BUDGET=REQUESTS,BYTES` (or `unlimited`): what one pass
/// over a virtio-blk queue may do, for measuring what the default budget
/// costs (docs/benchmarks.md). Unset: the default.
fn budget_override() -> Result<Option<Budget>, Error> {
    const VAR: &str = "HUSK_BLK_PASS_BUDGET";
    let Ok(value) = std::env::var(VAR) else {
        return Ok(None);
    };
    if value == "unlimited" {
        return Ok(Some(Budget {
            requests: u32::MAX,
            bytes: u64::MAX,
            ..Budget::PASS
        }));
    }
    let parsed = value
        .split_once(',')
        .and_then(|(r, b)| Some((r.parse().ok()?, b.parse().ok()?)))
        .filter(|&(r, b)| r > 0 && b > 0);
    match parsed {
        Some((requests, bytes)) => Ok(Some(Budget {
            requests,
            bytes,
            ..Budget::PASS
        })),
        None => Err(Error::Disk(
            VAR.into(),
            format!("{value:?}: expected REQUESTS,BYTES (both above 0) or unlimited"),
        )),
    }
}
