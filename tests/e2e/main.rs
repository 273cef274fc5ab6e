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
