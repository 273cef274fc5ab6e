//! The IOAPIC's register window driven by the guest's reads and writes in
//! any order and size: select any register, write any value. Never a
//! panic, and every route it hands KVM is an MSI to the local APICs' window
//! for one of its pins.
#![no_main]
use husk_devices::legacy::ioapic::{Ioapic, PINS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut io = Ioapic::new(1);
    for step in data.chunks(6).take(512) {
        let [kind, reg, v0, v1, v2, v3] = <[u8; 6]>::try_from(step).unwrap_or([0; 6]);
        let offset = [0x00, 0x10, 0x20, 0x40][usize::from(kind >> 6)] + u64::from(kind & 3);
        let len = [4, 1, 2, 8][usize::from(kind >> 2) % 4];
        let value = if kind & 0x20 != 0 {
            [reg, 0, 0, 0, 0, 0, 0, 0]
        } else {
            [v0, v1, v2, v3, 0, 0, 0, 0]
        };
        if kind & 0x10 == 0 {
            io.write(offset, &value[..len]);
        } else {
            let mut out = [0u8; 8];
            io.read(offset, &mut out[..len]);
        }
    }
    for r in io.routes() {
        assert!((r.pin as usize) < PINS);
        assert_eq!(r.address_lo & 0xfff0_0000, 0xfee0_0000);
        assert_eq!(r.address_hi, 0);
    }
    let back = Ioapic::from_state(&io.state()).unwrap();
    assert_eq!(back.routes(), io.routes());
});
