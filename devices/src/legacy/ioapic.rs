//! An IOAPIC (Intel 82093AA) as the guest programs it, for KVM's split
//! irqchip: the local APICs stay in the kernel, and this model turns each
//! pin the guest has set up into an MSI route (KVM_SET_GSI_ROUTING) for
//! the device interrupt eventfds on that pin (KVM_IRQFD), so an interrupt
//! still goes from a device's eventfd to a vCPU without leaving the kernel.
//!
//! Why not KVM's own IOAPIC: on kvm_pvm, KVM's in-kernel PIC and IOAPIC
//! make the first memory registration (or, registered before them, the
//! VM's teardown) 5-10 ms slower, most of a VMM's start
//! (docs/benchmarks.md, "kvm-floor").
//!
//! Every route is edge-triggered. husk's devices pulse their eventfds
//! (there is no resample fd), which a level-triggered pin would see as a
//! pulse too; and the MP table makes every ISA pin edge-triggered anyway.
//! No remote IRR, no EOI register (version 0x11 has none), no PIC behind
//! it: a guest that asks for ExtINT, SMI or INIT delivery gets no route.

use serde::{Deserialize, Serialize};

/// Pins, as the MP table announces them.
pub const PINS: usize = 24;
/// Register window offsets.
const IOREGSEL: u64 = 0x00;
const IOWIN: u64 = 0x10;
/// Indirect registers.
const REG_ID: u32 = 0x00;
const REG_VERSION: u32 = 0x01;
const REG_ARBITRATION: u32 = 0x02;
const REG_REDIRECTION: u32 = 0x10;
/// The 82093AA's version (no EOI register), as the MP table announces it.
pub const VERSION_ID: u8 = 0x11;
/// The version register: the version, the highest redirection entry in
/// bits 16-23.
const VERSION: u32 = VERSION_ID as u32 | ((PINS as u32 - 1) << 16);

/// Redirection entry fields.
const VECTOR: u64 = 0xff;
const MASKED: u64 = 1 << 16;
/// Bits the guest cannot write: delivery status and remote IRR.
const READ_ONLY: u64 = (1 << 12) | (1 << 14);
const DELIVERY_FIXED: u64 = 0;
const DELIVERY_LOWEST: u64 = 1;

/// The MSI address window of the local APICs.
const MSI_BASE: u32 = 0xfee0_0000;

/// An MSI the guest's setting of `pin` stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiRoute {
    pub pin: u32,
    pub address_lo: u32,
    pub address_hi: u32,
    pub data: u32,
}

/// What a snapshot keeps of the IOAPIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IoapicState {
    pub id: u32,
    pub select: u32,
    pub entries: Vec<u64>,
}

#[derive(Debug)]
pub struct Ioapic {
    id: u32,
    select: u32,
    entries: [u64; PINS],
}

impl Ioapic {
    /// An IOAPIC with APIC id `id` (the MP table's) and every pin masked,
    /// as after a reset.
    pub fn new(id: u8) -> Ioapic {
        Ioapic {
            id: u32::from(id),
            select: 0,
            entries: [MASKED; PINS],
        }
    }

    pub fn from_state(s: &IoapicState) -> Result<Ioapic, String> {
        let entries = <[u64; PINS]>::try_from(s.entries.as_slice())
            .map_err(|_| format!("an IOAPIC with {} pins, not {PINS}", s.entries.len()))?;
        Ok(Ioapic {
            id: s.id,
            select: s.select,
            entries,
        })
    }

    pub fn state(&self) -> IoapicState {
        IoapicState {
            id: self.id,
            select: self.select,
            entries: self.entries.to_vec(),
        }
    }

    /// A read of the register window; anything but an aligned 32-bit
    /// access to IOREGSEL or IOWIN reads as zeros.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let value = match (offset, data.len()) {
            (IOREGSEL, 4) => self.select,
            (IOWIN, 4) => self.register(self.select),
            _ => return,
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A write to the register window. True when the MSI routes changed:
    /// the caller then applies [`Ioapic::routes`].
    pub fn write(&mut self, offset: u64, data: &[u8]) -> bool {
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return false;
        };
        let value = u32::from_le_bytes(bytes);
        match offset {
            IOREGSEL => self.select = value & 0xff,
            IOWIN => {
                let before = self.routes();
                self.set_register(self.select, value);
                return self.routes() != before;
            }
            _ => {}
        }
        false
    }

    fn register(&self, reg: u32) -> u32 {
        match reg {
            REG_ID | REG_ARBITRATION => (self.id & 0xf) << 24,
            REG_VERSION => VERSION,
            r if (REG_REDIRECTION..REG_REDIRECTION + 2 * PINS as u32).contains(&r) => {
                let e = self.entries[((r - REG_REDIRECTION) / 2) as usize];
                if r % 2 == 0 {
                    e as u32
                } else {
                    (e >> 32) as u32
                }
            }
            _ => 0,
        }
    }

    fn set_register(&mut self, reg: u32, value: u32) {
        match reg {
            REG_ID => self.id = (value >> 24) & 0xf,
            r if (REG_REDIRECTION..REG_REDIRECTION + 2 * PINS as u32).contains(&r) => {
                let e = &mut self.entries[((r - REG_REDIRECTION) / 2) as usize];
                let v = u64::from(value);
                let new = if r % 2 == 0 {
                    (*e & !0xffff_ffff) | v
                } else {
                    (*e & 0xffff_ffff) | (v << 32)
                };
                *e = (new & !READ_ONLY) | (*e & READ_ONLY);
            }
            _ => {}
        }
    }

    /// The MSI route of every unmasked pin with fixed or lowest-priority
    /// delivery, in pin order.
    pub fn routes(&self) -> Vec<MsiRoute> {
        (0..PINS)
            .filter_map(|pin| route(pin as u32, self.entries[pin]))
            .collect()
    }
}

/// The MSI a redirection entry stands for (Intel SDM vol. 3, "Message
/// Signalled Interrupts": destination and mode in the address, vector and
/// delivery mode in the data; edge-triggered).
fn route(pin: u32, e: u64) -> Option<MsiRoute> {
    let delivery = (e >> 8) & 7;
    if e & MASKED != 0 || !(delivery == DELIVERY_FIXED || delivery == DELIVERY_LOWEST) {
        return None;
    }
    let logical = ((e >> 11) & 1) as u32;
    let destination = (e >> 56) as u32;
    let hint = u32::from(delivery == DELIVERY_LOWEST);
    Some(MsiRoute {
        pin,
        address_lo: MSI_BASE | (destination << 12) | (hint << 3) | (logical << 2),
        address_hi: 0,
        data: (e & VECTOR) as u32 | ((delivery as u32) << 8),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_reg(io: &mut Ioapic, reg: u32, value: u32) -> bool {
        io.write(IOREGSEL, &reg.to_le_bytes());
        io.write(IOWIN, &value.to_le_bytes())
    }

    fn read_reg(io: &mut Ioapic, reg: u32) -> u32 {
        io.write(IOREGSEL, &reg.to_le_bytes());
        let mut b = [0u8; 4];
        io.read(IOWIN, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn identifies_itself_as_the_mp_table_says() {
        let mut io = Ioapic::new(2);
        assert_eq!(read_reg(&mut io, REG_ID), 2 << 24);
        assert_eq!(read_reg(&mut io, REG_VERSION), 0x0017_0011);
        assert_eq!(read_reg(&mut io, REG_ARBITRATION), 2 << 24);
        // Every pin starts masked.
        for pin in 0..PINS as u32 {
            assert_eq!(read_reg(&mut io, REG_REDIRECTION + 2 * pin), 1 << 16);
        }
        assert!(io.routes().is_empty());
    }

    #[test]
    fn an_unmasked_pin_is_an_msi_to_its_destination() {
        let mut io = Ioapic::new(1);
        // Linux: the high half (destination) first, then the low half.
        assert!(!write_reg(&mut io, REG_REDIRECTION + 2 * 5 + 1, 3 << 24));
        assert!(write_reg(&mut io, REG_REDIRECTION + 2 * 5, 0x31));
        assert_eq!(
            io.routes(),
            vec![MsiRoute {
                pin: 5,
                address_lo: 0xfee0_3000,
                address_hi: 0,
                data: 0x31,
            }]
        );
        // Logical, lowest priority: mode and hint in the address.
        assert!(write_reg(
            &mut io,
            REG_REDIRECTION + 2 * 5,
            0x41 | (1 << 8) | (1 << 11)
        ));
        assert_eq!(io.routes()[0].address_lo, 0xfee0_300c);
        assert_eq!(io.routes()[0].data, 0x141);
        // Masking it again takes the route away; a rewrite that changes
        // nothing is not a change.
        assert!(write_reg(
            &mut io,
            REG_REDIRECTION + 2 * 5,
            0x41 | (1 << 16)
        ));
        assert!(io.routes().is_empty());
        assert!(!write_reg(
            &mut io,
            REG_REDIRECTION + 2 * 5,
            0x41 | (1 << 16)
        ));
    }

    #[test]
    fn other_delivery_modes_and_read_only_bits_get_no_route() {
        let mut io = Ioapic::new(1);
        // ExtINT (7): there is no PIC behind this IOAPIC.
        assert!(!write_reg(&mut io, REG_REDIRECTION, 0x30 | (7 << 8)));
        assert!(io.routes().is_empty());
        // Delivery status and remote IRR read as the model keeps them (0).
        write_reg(&mut io, REG_REDIRECTION + 2, 0x30 | (1 << 12) | (1 << 14));
        assert_eq!(read_reg(&mut io, REG_REDIRECTION + 2), 0x30);
    }

    #[test]
    fn odd_accesses_are_ignored_and_state_round_trips() {
        let mut io = Ioapic::new(1);
        write_reg(&mut io, REG_REDIRECTION + 8, 0x40);
        assert!(!io.write(IOWIN, &[1, 2]));
        assert!(!io.write(0x20, &0u32.to_le_bytes()));
        let mut b = [9u8; 2];
        io.read(IOWIN, &mut b);
        assert_eq!(b, [0, 0]);
        let s = io.state();
        let back = Ioapic::from_state(&s).unwrap();
        assert_eq!(back.routes(), io.routes());
        assert_eq!(back.state(), s);
        let short = IoapicState {
            entries: vec![0; 3],
            ..s
        };
        assert_eq!(
            Ioapic::from_state(&short).unwrap_err(),
            "an IOAPIC with 3 pins, not 24"
        );
    }
}
