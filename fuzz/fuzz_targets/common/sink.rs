//! A network backend that takes every frame and has none to give: what the
//! net targets put behind a device.

use husk_devices::virtio::net::NetBackend;
use std::io;
use std::os::fd::{AsRawFd, RawFd};

pub struct Sink;

impl AsRawFd for Sink {
    fn as_raw_fd(&self) -> RawFd {
        -1
    }
}

impl NetBackend for Sink {
    fn read_packet(&mut self, _: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn write_packet(&mut self, packet: &[u8]) -> io::Result<usize> {
        Ok(packet.len())
    }
    fn set_offload(&mut self, _: u32) -> io::Result<()> {
        Ok(())
    }
}
