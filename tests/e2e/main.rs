//! End-to-end tests: real guests under real KVM.
//!
//! On a host without hardware virtualization, `cargo test` runs this binary
//! inside the nested testbed (tests/testbed/cargo-runner), so every test here
//! may assume a working /dev/kvm and fails with a one-line reason otherwise.

mod api;
mod boot;
mod bridge;
mod compare;
mod containerd;
mod docker;
mod fs;
mod guest;
mod net;
mod oci;
mod podman;
mod registry;
mod run;
mod session;
mod validation;
mod vsock;

/// Tests that change or depend on the host's IPv4 forwarding take turns:
/// Docker's bridge sets iptables' FORWARD policy to DROP, which drops what
/// husk's bridge forwards (see cli/src/run/nat.rs).
pub(crate) static FORWARDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
