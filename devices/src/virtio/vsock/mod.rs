//! virtio-vsock (virtio 1.2, 5.10) with Firecracker's hybrid host side: each
//! guest stream socket is bridged to a host Unix stream.
//!
//! - Host → guest: connect to `uds_path`, write `CONNECT <port>\n`, read
//!   `OK <host_port>\n`, then talk to the guest's listener on `port`.
//! - Guest → host: a guest connecting to `(CID 2, port P)` reaches whoever
//!   listens on `<uds_path>_<P>`.
//!
//! Layers, from pure to glue:
//! - `packet`: the 44-byte header and the checks on guest packets (pure
//!   byte slices; fuzz entry points [`parse_header`], [`parse_tx_packet`]);
//! - `connection`: one connection's state machine and credit accounting,
//!   pure over a `Read + Write` host stream;
//! - `muxer`: the listener, the `CONNECT` handshake
//!   ([`parse_connect_line`], also a fuzz entry point), port allocation,
//!   the connection map, and the epoll registrations the host fds need;
//! - `device`: [`Vsock`], the [`VirtioDevice`](super::VirtioDevice) impl,
//!   config space and the rx/tx queue passes;
//! - `event_handler`: the `event-manager` subscriber;
//! - `metrics`: the counters.

pub mod connection;
pub mod device;
pub mod event_handler;
pub mod metrics;
pub mod muxer;
pub mod packet;

#[cfg(test)]
mod tests;

pub use connection::{CloseReason, ConnState, Connection, HostStream, DEFAULT_BUF_ALLOC};
pub use device::{Vsock, VsockConfig, VsockError};
pub use metrics::VsockMetrics;
pub use muxer::{parse_connect_line, ConnectLineError, Muxer, MuxerError, MAX_CONNECTIONS};
pub use packet::{parse_header, parse_tx_packet, Op, PacketError, PacketHeader, HEADER_SIZE};

/// Size of each of the three queues (what Firecracker uses; Linux takes it
/// as is).
pub const QUEUE_SIZE: u16 = 256;
/// Number of queues: rx, tx, event.
pub const NUM_QUEUES: usize = 3;
/// Index of the rx queue (device → guest packets).
pub const RX_QUEUE: usize = 0;
/// Index of the tx queue (guest → device packets).
pub const TX_QUEUE: usize = 1;
/// Index of the event queue (transport resets; unused by the device).
pub const EVENT_QUEUE: usize = 2;
