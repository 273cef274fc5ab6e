//! virtio-net backed by a host TAP device.
//!
//! Layers, from pure to glue (the same split as `block`):
//! - `chain` reads guest descriptor chains: a tx chain into a host buffer
//!   (pure: memory and chain in, frame length or error out), an rx chain into
//!   the list of guest segments a frame may be written to;
//! - `handler` runs the queues: `process_tx` sends every tx chain through a
//!   [`NetBackend`], [`RxBuffers`] collects rx chains and writes one frame
//!   into them (across several with `VIRTIO_NET_F_MRG_RXBUF`). No fds besides
//!   the backend's, no event loop;
//! - `tap` is the TAP backend (the ioctls) and the [`NetBackend`] trait that
//!   lets tests use a socketpair instead;
//! - `stream` is the backend for a userspace network (passt): frames with
//!   a length prefix on a stream socket, no header, so no offloads;
//! - `device` holds [`Net`], the [`VirtioDevice`](super::VirtioDevice) impl,
//!   features and config space, and the rx state machine;
//! - `event_handler` is the `event-manager` subscriber: queue eventfds and the
//!   TAP fd in, handler calls and interrupts out;
//! - `metrics` holds the counters.
//!
//! Every frame crossing the device (in the guest's buffers, and on the TAP
//! fd, which is opened with `IFF_VNET_HDR`) starts with the 12-byte
//! `struct virtio_net_hdr_v1` (virtio 1.x always has `num_buffers`).
//!
//! ## Wiring it into the VMM
//!
//! Exactly like block (`devices/README.md`): the user creates the TAP
//! (`ip tuntap add dev tap0 mode tap`, then addresses, a bridge, NAT...)
//! and names it.
//!
//! ```text
//! let config = NetConfig { host: NetHost::Tap("tap0".into()), mac: None, id: "eth0".into() };
//! let net = Net::new("tap0", &config)?;
//! let metrics: Arc<NetMetrics> = net.metrics().clone();
//! let net = Arc::new(Mutex::new(net));
//! // transport, one ioeventfd per queue (2: rx = 0, tx = 1, datamatch =
//! // index), the irqfd, then:
//! event_manager.add_subscriber(net.clone());
//! ```
//!
//! The subscriber registers its two queue eventfds in `init`, and adds or
//! removes the TAP fd itself as receiving starts and pauses (see
//! `event_handler`); the VMM never touches the TAP fd. The guest kernel
//! needs `CONFIG_VIRTIO_NET`; the interface shows up as `eth0` with the MAC
//! from config space.

pub mod chain;
pub mod device;
pub mod event_handler;
pub mod handler;
pub mod metrics;
pub mod stream;
pub mod tap;

#[cfg(test)]
mod tests;

pub use chain::{read_tx_frame, ChainError, RxChain};
pub use device::{
    format_mac, locally_administered_mac, random_mac, Net, NetConfig, NetError, NetHost, NetLimits,
    RxState, BACKEND_TOKEN, RX_BUDGET, RX_LIMIT_TOKEN, RX_QUEUE_TOKEN, TX_BUDGET, TX_LIMIT_TOKEN,
    TX_QUEUE_TOKEN,
};
pub use handler::{process_tx, RxBuffers, RxDelivery, TxOutcome};
pub use metrics::NetMetrics;
pub use stream::Stream;
pub use tap::{create_persistent, tap_offload_flags, NetBackend, Tap, TapError};

/// Size of `struct virtio_net_hdr_v1` (with `num_buffers`): what the guest
/// puts before every tx frame, what the device puts before every rx frame,
/// and what the TAP is told to use (`TUNSETVNETHDRSZ`).
pub const VNET_HDR_LEN: usize = 12;
/// Offset of `num_buffers` (le16) in the header.
pub const NUM_BUFFERS_OFFSET: usize = 10;
/// Length of an Ethernet header; a frame shorter than this is not a frame.
pub const ETH_HLEN: usize = 14;
/// Largest Ethernet frame the device moves, header excluded: a 64 KiB GSO
/// packet (Linux's legacy GSO limit) plus an Ethernet header and a VLAN tag.
pub const MAX_FRAME_LEN: usize = 65_536 + ETH_HLEN + 4;
/// Largest virtio-net packet: header plus frame. The host buffers for tx and
/// rx have this size.
pub const MAX_PACKET_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Size of both queues. 256 is what Firecracker and QEMU use.
pub const QUEUE_SIZE: u16 = 256;
/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
