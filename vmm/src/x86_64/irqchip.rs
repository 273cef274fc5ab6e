//! The VM's interrupt controllers: KVM's split irqchip (the local APICs in
//! the kernel) and husk's own IOAPIC in front of them
//! (`husk_devices::legacy::ioapic`), whose pins become MSI routes for the
//! devices' interrupt eventfds. There is no PIC: Linux reads its mask
//! register back as all ones and runs without one.
//!
//! Why not KVM_CREATE_IRQCHIP: on kvm_pvm the in-kernel PIC and IOAPIC
//! cost 5-10 ms of every start (the first memory registration) or exit
//! (docs/benchmarks.md, "kvm-floor").

use crate::mmio::MmioDevice;
use husk_devices::legacy::ioapic::{Ioapic, IoapicState, MsiRoute, PINS};
use kvm_bindings::{
    kvm_enable_cap, kvm_irq_routing_entry, kvm_irq_routing_entry__bindgen_ty_1,
    kvm_irq_routing_msi, KvmIrqRouting, KVM_CAP_SPLIT_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use std::sync::Arc;

/// The IOAPIC's register window (its base is the MP table's).
pub const IOAPIC_WINDOW: u64 = 0x1000;

/// Local APICs in the kernel, with GSIs 0..PINS for the IOAPIC's routes.
/// Before any vCPU exists.
pub fn create(vm: &VmFd) -> Result<(), kvm_ioctls::Error> {
    let mut cap = kvm_enable_cap {
        cap: KVM_CAP_SPLIT_IRQCHIP,
        ..Default::default()
    };
    cap.args[0] = PINS as u64;
    vm.enable_cap(&cap)
}

/// The IOAPIC on the MMIO bus: a write that changes what its pins route
/// is passed to KVM at once (on the vCPU thread that made it).
pub struct IoapicDevice {
    chip: Ioapic,
    vm: Arc<VmFd>,
}

impl IoapicDevice {
    pub fn new(vm: Arc<VmFd>, chip: Ioapic) -> IoapicDevice {
        IoapicDevice { chip, vm }
    }

    pub fn state(&self) -> IoapicState {
        self.chip.state()
    }

    /// Gives KVM the routes of the pins as they are set now.
    pub fn apply(&self) -> Result<(), kvm_ioctls::Error> {
        self.vm.set_gsi_routing(&table(&self.chip.routes()))
    }
}

impl MmioDevice for IoapicDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.chip.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if self.chip.write(offset, data) {
            // Only a closed VM fd or exhausted memory fail this; the pin
            // then stays silent, which the log says.
            if let Err(e) = self.apply() {
                log::error!("KVM_SET_GSI_ROUTING for the IOAPIC's pins: {e}");
            }
        }
    }
}

/// KVM's routing table for `routes`: one MSI route per pin, on the GSI of
/// the same number (the devices' irqfds use those).
fn table(routes: &[MsiRoute]) -> KvmIrqRouting {
    let mut t = KvmIrqRouting::new(routes.len()).expect("at most PINS routes fit");
    for (entry, r) in t.as_mut_slice().iter_mut().zip(routes) {
        *entry = kvm_irq_routing_entry {
            gsi: r.pin,
            type_: KVM_IRQ_ROUTING_MSI,
            u: kvm_irq_routing_entry__bindgen_ty_1 {
                msi: kvm_irq_routing_msi {
                    address_lo: r.address_lo,
                    address_hi: r.address_hi,
                    data: r.data,
                    ..Default::default()
                },
            },
            ..Default::default()
        };
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_route_is_an_msi_on_its_pins_gsi() {
        let routes = [
            MsiRoute {
                pin: 4,
                address_lo: 0xfee0_0000,
                address_hi: 0,
                data: 0x24,
            },
            MsiRoute {
                pin: 9,
                address_lo: 0xfee0_1000,
                address_hi: 0,
                data: 0x31,
            },
        ];
        let t = table(&routes);
        let entries = t.as_slice();
        assert_eq!(entries.len(), 2);
        assert_eq!((entries[1].gsi, entries[1].type_), (9, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entries were written as MSI routes just above.
        let msi = unsafe { entries[1].u.msi };
        assert_eq!((msi.address_lo, msi.data), (0xfee0_1000, 0x31));
        assert!(table(&[]).as_slice().is_empty());
    }
}
