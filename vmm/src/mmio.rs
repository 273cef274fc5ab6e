//! Dispatch of vCPU MMIO exits to the devices mapped in the MMIO gap.

use std::sync::{Arc, Mutex};

/// A device behind an MMIO window; offsets are relative to its base.
pub trait MmioDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

pub type SharedMmioDevice = Arc<Mutex<dyn MmioDevice>>;

#[derive(Default)]
pub struct MmioBus {
    /// (base, length, device)
    devices: Vec<(u64, u64, SharedMmioDevice)>,
}

impl MmioBus {
    /// Maps `device` at [base, base + len). Windows must not overlap; the
    /// device manager allocates them from a counter, so they cannot.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedMmioDevice) {
        self.devices.push((base, len, device));
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedMmioDevice)> {
        self.devices
            .iter()
            .find(|(base, len, _)| addr >= *base && addr - base < *len)
            .map(|(base, _, d)| (addr - base, d))
    }

    /// Reads from nowhere return all ones, as on real hardware.
    pub fn read(&self, addr: u64, data: &mut [u8]) {
        match self.find(addr) {
            Some((off, d)) => crate::pio::lock(d).read(off, data),
            None => data.fill(0xff),
        }
    }

    pub fn write(&self, addr: u64, data: &[u8]) {
        if let Some((off, d)) = self.find(addr) {
            crate::pio::lock(d).write(off, data);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(Vec<u64>);
    impl MmioDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, _: &[u8]) {
            self.0.push(offset);
        }
    }

    #[test]
    fn routes_by_window() {
        let dev = Arc::new(Mutex::new(Echo(vec![])));
        let mut bus = MmioBus::default();
        bus.insert(0x1000, 0x100, dev.clone());
        let mut b = [0u8; 4];
        bus.read(0x1010, &mut b);
        assert_eq!(b, [0x10; 4]);
        bus.read(0x1100, &mut b);
        assert_eq!(b, [0xff; 4]);
        bus.write(0x10ff, &b);
        bus.write(0x0fff, &b);
        assert_eq!(dev.lock().unwrap().0, vec![0xff]);
    }
}
