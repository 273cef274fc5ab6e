//! The virtio-mmio register file driven by a sequence of the guest's
//! reads and writes (offset, size, value) in front of a virtio-net device
//! whose backend takes everything: feature negotiation, queue setup with
//! any addresses and sizes, status changes in any order, activation,
//! resets, config space and notifications. Never a panic.
#![no_main]
use husk_devices::virtio::net::Net;
use husk_devices::virtio::transport::mmio::MmioTransport;
use husk_devices::virtio::{GuestMemoryMmap, VirtioDevice};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, Mutex};
use vm_memory::GuestAddress;

#[path = "common/sink.rs"]
mod sink;
use sink::Sink;

/// The registers a driver touches, so most steps hit one (any offset is
/// also tried).
const REGISTERS: [u64; 24] = [
    0x000, 0x004, 0x008, 0x00c, 0x010, 0x014, 0x020, 0x024, 0x030, 0x034, 0x038, 0x044, 0x050,
    0x060, 0x064, 0x070, 0x080, 0x084, 0x090, 0x094, 0x0a0, 0x0a4, 0x0fc, 0x100,
];

fuzz_target!(|data: &[u8]| {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
    let net = Net::with_backend(Sink, Some([2, 0, 0, 0, 0, 1]), "eth0".into()).unwrap();
    let net: Arc<Mutex<dyn VirtioDevice>> = Arc::new(Mutex::new(net));
    let mut t = MmioTransport::new(mem, net).unwrap();
    for step in data.chunks(6).take(512) {
        let [kind, reg, v0, v1, v2, v3] = <[u8; 6]>::try_from(step).unwrap_or([0; 6]);
        let offset = if kind & 0x10 != 0 {
            u64::from(u16::from_le_bytes([reg, v3]) & 0x1ff)
        } else {
            REGISTERS[usize::from(reg) % REGISTERS.len()]
        };
        let len = [4, 1, 2, 8][usize::from(kind >> 5) % 4];
        let value = [v0, v1, v2, v3, 0, 0, 0, 0];
        if kind & 1 == 0 {
            t.write(offset, &value[..len]);
        } else {
            let mut out = [0u8; 8];
            t.read(offset, &mut out[..len]);
        }
    }
});
