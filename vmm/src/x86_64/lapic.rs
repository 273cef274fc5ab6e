//! Local APIC wiring: LINT0 delivers the legacy PIC's ExtINT, LINT1 NMIs,
//! as on a PC; the MP table says the same.

use kvm_bindings::kvm_lapic_state;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const MODE_NMI: u32 = 0x4;
const MODE_EXTINT: u32 = 0x7;

fn get(state: &kvm_lapic_state, reg: usize) -> u32 {
    let b = &state.regs[reg..reg + 4];
    u32::from_le_bytes([b[0] as u8, b[1] as u8, b[2] as u8, b[3] as u8])
}

fn set(state: &mut kvm_lapic_state, reg: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        state.regs[reg + i] = byte as _;
    }
}

/// Delivery mode lives in bits 10:8 of an LVT entry.
fn with_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

pub fn configure_lint(state: &mut kvm_lapic_state) {
    let lvt0 = get(state, APIC_LVT0);
    set(state, APIC_LVT0, with_mode(lvt0, MODE_EXTINT));
    let lvt1 = get(state, APIC_LVT1);
    set(state, APIC_LVT1, with_mode(lvt1, MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_modes_are_set_and_other_bits_kept() {
        let mut s = kvm_lapic_state::default();
        set(&mut s, APIC_LVT0, 0x0001_0000); // masked
        configure_lint(&mut s);
        assert_eq!(get(&s, APIC_LVT0), 0x0001_0700);
        assert_eq!(get(&s, APIC_LVT1), 0x0000_0400);
    }
}
