//! The virtio-fs device: config space, feature relay, and the hand-over of
//! memory and rings to the vhost-user backend.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;

use crate::virtio::GuestMemoryMmap;
use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, warn};
use vhost::vhost_user::message::{VhostUserProtocolFeatures, VhostUserVirtioFeatures};
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{NUM_QUEUES, QUEUE_SIZE, TAG_LEN};
use crate::virtio::{ActivateError, IrqTrigger, VirtioDevice, VIRTIO_F_VERSION_1};

const VIRTIO_ID_FS: u32 = 26;
/// `tag[36]` and `num_request_queues` (le32).
const CONFIG_SPACE_SIZE: usize = TAG_LEN + 4;

/// Transport features husk relays to the guest when the backend offers
/// them; everything else (device-specific bits such as the notification
/// queue, NOTIFICATION_DATA, ACCESS_PLATFORM) is not offered.
const RELAYED_FEATURES: u64 = (1 << VIRTIO_F_VERSION_1)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX)
    | (1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_INDIRECT_DESC);

/// What the VMM configures for a shared directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsConfig {
    /// The backend's vhost-user socket (virtiofsd `--socket-path`).
    pub socket: PathBuf,
    /// The mount tag the guest uses (`mount -t virtiofs TAG DIR`).
    pub tag: String,
    pub id: String,
}

#[derive(Debug, thiserror::Error)]
pub enum FsError {
    #[error("tag {0:?}: 1 to {TAG_LEN} bytes expected")]
    BadTag(String),
    #[error("cannot reach the vhost-user backend at {0}")]
    Connect(String, #[source] vhost::Error),
    #[error("vhost-user {0} failed")]
    Backend(&'static str, #[source] vhost::Error),
    #[error("the backend does not offer VIRTIO_F_VERSION_1")]
    NoVersion1,
    #[error("cannot create an eventfd")]
    EventFd(#[source] io::Error),
}

/// Told once, with a one-line reason, when the backend goes away: the VM
/// cannot go on without it (its requests would never complete).
pub type BackendGone = Box<dyn FnMut(String) + Send>;

/// The event-loop data of the backend's socket (queues use 0 and 1).
const BACKEND_EVENT: u32 = u32::MAX;

/// A virtio-fs device whose queues virtiofsd serves.
pub struct Fs {
    id: String,
    frontend: Frontend,
    /// The backend takes vhost-user protocol features.
    protocol: bool,
    avail_features: u64,
    acked_features: u64,
    config_space: [u8; CONFIG_SPACE_SIZE],
    queue_sizes: [u16; NUM_QUEUES],
    /// The guest's notifications (ioeventfds), read by the backend.
    kick_evts: [EventFd; NUM_QUEUES],
    /// Between activation and reset: the guest's memory and the queues as
    /// the driver set them up (the backend holds its own copy of the
    /// irqfd). Kept for a snapshot, which can save the queues only while
    /// the guest has posted nothing on them.
    active: Option<(GuestMemoryMmap, [Queue; NUM_QUEUES])>,
    tag: String,
    on_gone: Option<BackendGone>,
}

impl Fs {
    /// Connects to the backend and learns what it offers.
    pub fn new(config: &FsConfig) -> Result<Fs, FsError> {
        let tag = config.tag.as_bytes();
        if tag.is_empty() || tag.len() > TAG_LEN {
            return Err(FsError::BadTag(config.tag.clone()));
        }
        let mut frontend = Frontend::connect(&config.socket, NUM_QUEUES as u64)
            .map_err(|e| FsError::Connect(config.socket.display().to_string(), e))?;
        frontend
            .set_owner()
            .map_err(|e| FsError::Backend("SET_OWNER", e))?;
        let backend = frontend
            .get_features()
            .map_err(|e| FsError::Backend("GET_FEATURES", e))?;
        if backend & (1 << VIRTIO_F_VERSION_1) == 0 {
            return Err(FsError::NoVersion1);
        }
        let protocol = backend & VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits() != 0;
        if protocol {
            let offered = frontend
                .get_protocol_features()
                .map_err(|e| FsError::Backend("GET_PROTOCOL_FEATURES", e))?;
            let wanted =
                offered & (VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK);
            frontend
                .set_protocol_features(wanted)
                .map_err(|e| FsError::Backend("SET_PROTOCOL_FEATURES", e))?;
        }
        let mut config_space = [0u8; CONFIG_SPACE_SIZE];
        config_space[..tag.len()].copy_from_slice(tag);
        config_space[TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(FsError::EventFd);
        Ok(Fs {
            id: config.id.clone(),
            frontend,
            protocol,
            avail_features: backend & RELAYED_FEATURES,
            acked_features: 0,
            config_space,
            queue_sizes: [QUEUE_SIZE; NUM_QUEUES],
            kick_evts: [evt()?, evt()?],
            active: None,
            tag: config.tag.clone(),
            on_gone: None,
        })
    }

    /// What to do when virtiofsd closes its connection (it died, or was
    /// killed).
    pub fn on_backend_gone(&mut self, f: BackendGone) {
        self.on_gone = Some(f);
    }

    /// Whether the backend's end of the socket is closed. Replies to our
    /// own requests (REPLY_ACK, GET_VRING_BASE) also make it readable, but
    /// the request's caller reads them, so by the time the event loop gets
    /// here they are gone: only a read of 0 bytes is an end.
    fn backend_closed(&self) -> bool {
        use std::os::fd::AsRawFd;
        let mut byte = 0u8;
        // SAFETY: a one-byte peek into a local; the socket stays untouched.
        let n = unsafe {
            libc::recv(
                self.frontend.as_raw_fd(),
                (&mut byte as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        n == 0
            || (n < 0
                && !matches!(
                    io::Error::last_os_error().raw_os_error(),
                    Some(libc::EAGAIN | libc::EINTR)
                ))
    }

    fn backend_gone(&mut self, ops: &mut EventOps) {
        use std::os::fd::AsRawFd;
        if !self.backend_closed() {
            return;
        }
        let _ = ops.remove(Events::empty_raw(self.frontend.as_raw_fd()));
        let why = format!(
            "virtio-fs {}: its backend (virtiofsd) closed the connection",
            self.tag
        );
        error!("{why}");
        if let Some(mut f) = self.on_gone.take() {
            f(why);
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Gives the backend the memory table and the rings, and starts them.
    /// Its completions signal `call`, the device's irqfd, directly: no
    /// hop through this process per request.
    fn start_backend(
        &mut self,
        mem: &GuestMemoryMmap,
        queues: &[Queue],
        call: &EventFd,
    ) -> Result<(), String> {
        let step = |what: &str, e: vhost::Error| format!("vhost-user {what}: {e}");
        let mut features = self.acked_features;
        if self.protocol {
            features |= VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
        }
        self.frontend
            .set_features(features)
            .map_err(|e| step("SET_FEATURES", e))?;
        // Only file-backed regions can be shared; the page-0 alias a
        // transport may add (virtio::queue) is a second name for RAM that
        // is in the table already.
        let regions: Vec<VhostUserMemoryRegionInfo> = mem
            .iter()
            .filter(|r| r.file_offset().is_some())
            .map(VhostUserMemoryRegionInfo::from_guest_region)
            .collect::<Result<_, _>>()
            .map_err(|e| step("memory table", e))?;
        if regions.is_empty() {
            return Err("guest memory is not file-backed: the backend cannot map it".into());
        }
        self.frontend
            .set_mem_table(&regions)
            .map_err(|e| step("SET_MEM_TABLE", e))?;
        for (i, q) in queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            let host = |addr: u64| {
                mem.get_host_address(GuestAddress(addr))
                    .map(|p| p as u64)
                    .map_err(|e| format!("queue {i}: ring at {addr:#x}: {e}"))
            };
            let rings = VringConfigData {
                queue_max_size: QUEUE_SIZE,
                queue_size: q.size(),
                flags: 0,
                desc_table_addr: host(q.desc_table())?,
                used_ring_addr: host(q.used_ring())?,
                avail_ring_addr: host(q.avail_ring())?,
                log_addr: None,
            };
            self.frontend
                .set_vring_num(i, q.size())
                .map_err(|e| step("SET_VRING_NUM", e))?;
            self.frontend
                .set_vring_addr(i, &rings)
                .map_err(|e| step("SET_VRING_ADDR", e))?;
            self.frontend
                .set_vring_base(i, q.next_avail())
                .map_err(|e| step("SET_VRING_BASE", e))?;
            self.frontend
                .set_vring_call(i, call)
                .map_err(|e| step("SET_VRING_CALL", e))?;
            self.frontend
                .set_vring_kick(i, &self.kick_evts[i])
                .map_err(|e| step("SET_VRING_KICK", e))?;
            if self.protocol {
                self.frontend
                    .set_vring_enable(i, true)
                    .map_err(|e| step("SET_VRING_ENABLE", e))?;
            }
        }
        Ok(())
    }
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.kick_evts
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features & self.avail_features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        crate::virtio::read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        warn!(
            "virtio-fs: guest write of {} bytes to read-only config offset {offset:#x} ignored",
            data.len()
        );
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        interrupt: Arc<IrqTrigger>,
        queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        let queues: [Queue; NUM_QUEUES] =
            crate::virtio::activation_queues(self.active.is_some(), queues)?;
        // Before the backend can signal: the guest must see used buffers.
        interrupt.report_vring_always();
        if let Err(e) = self.start_backend(&mem, &queues, interrupt.event()) {
            error!("virtio-fs {}: {e}", self.id);
            return Err(ActivateError::Backend(e));
        }
        self.active = Some((mem, queues));
        Ok(())
    }

    fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// A share the guest has never sent a request on has no FUSE session
    /// (FUSE_INIT is the first request of a mount): its queues are where
    /// the driver set them up, and a new backend can take them from there.
    /// Once the guest has mounted it, its open files and inodes live in
    /// virtiofsd, which no snapshot can keep.
    fn snapshot_refusal(&self) -> Option<String> {
        let (mem, queues) = self.active.as_ref()?;
        let posted = queues.iter().any(|q| {
            q.avail_idx(mem, std::sync::atomic::Ordering::Acquire)
                .map_or(true, |idx| idx.0 != 0)
        });
        posted.then(|| {
            format!(
                "the guest has used the shared directory {:?}: its session lives in virtiofsd, \
                 which a snapshot cannot keep",
                self.tag
            )
        })
    }

    fn queue_states(&self) -> Option<Vec<virtio_queue::QueueState>> {
        let (_, queues) = self.active.as_ref()?;
        Some(queues.iter().map(Queue::state).collect())
    }

    fn reset(&mut self) {
        if self.active.take().is_some() {
            // GET_VRING_BASE stops the backend's rings.
            for i in 0..NUM_QUEUES {
                if let Err(e) = self.frontend.get_vring_base(i) {
                    warn!("virtio-fs {}: stopping queue {i}: {e}", self.id);
                }
            }
        }
        self.acked_features = 0;
    }
}

impl MutEventSubscriber for Fs {
    fn init(&mut self, ops: &mut EventOps) {
        // The backend sends nothing unasked on this socket: anything on it
        // is its end (EOF, hang-up, error).
        let gone = EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP | EventSet::ERROR;
        if let Err(e) = ops.add(Events::with_data(&self.frontend, BACKEND_EVENT, gone)) {
            error!("virtio-fs: cannot watch the backend's socket: {e}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.data() == BACKEND_EVENT {
            self.backend_gone(ops);
        }
    }
}
