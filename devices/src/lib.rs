//! Emulated devices for husk microVMs.
//!
//! Everything here runs without KVM: devices see guest memory through
//! `vm-memory`, queues through `virtio-queue`, and talk to the VMM only through
//! eventfds (queue notifications in, interrupts out). The VMM wires those fds
//! to KVM (ioeventfd / irqfd); see `README.md` for the recipe.

pub mod legacy;
pub mod rate_limiter;
pub mod virtio;
