//! Transports: how a guest driver reaches a [`VirtioDevice`](super::VirtioDevice).
//!
//! Only virtio-mmio for now; a PCI transport would sit next to it and drive
//! the same trait.

pub mod mmio;

pub use mmio::{
    cmdline_token, MmioError, MmioState, MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
