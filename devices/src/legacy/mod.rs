//! PC legacy devices a microVM still needs.

pub mod i8042;
pub mod ioapic;
