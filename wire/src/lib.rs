//! What husk's host side and its guest side agree on, in one small leaf
//! crate that both depend on (and that depends on neither):
//!
//! - [`cmdline`]: the `husk.*` kernel command-line keys, their encoder (host)
//!   and parser (guest init), and the base command line every husk guest gets;
//! - [`status`]: the status port and the exit-status convention (128 + signal);
//! - [`agent`]: the framed protocol between husk and the guest agent over vsock;
//! - [`spec`]: the default OCI runtime spec (the host fills it in, the guest's
//!   container runtime applies it).
//!
//! The protocols are described for humans in rootfs/README.md.

pub mod agent;
pub mod cmdline;
pub mod spec;
pub mod status;

pub use oci_spec;
