//! The CPUID a guest vCPU sees: KVM's supported set, adjusted so the guest
//! finds the topology we give it (its APIC id, the vCPU count) and knows it
//! runs under a hypervisor.

use kvm_bindings::CpuId;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_TOPOLOGY: u32 = 0xb;
const LEAF_EXT_FEATURES: u32 = 0x8000_0001;
const LEAF_EXT_SIZES: u32 = 0x8000_0008;
const LEAF_EXT_TOPOLOGY: u32 = 0x8000_001e;

const ECX_HYPERVISOR: u32 = 1 << 31;
const ECX_TSC_DEADLINE: u32 = 1 << 24;
const EDX_HTT: u32 = 1 << 28;
/// AMD TOPOEXT: the kernel would trust leaf 0x8000001e, which we do not fill.
const ECX_TOPOEXT: u32 = 1 << 22;

/// Offers the LAPIC's TSC-deadline mode, which KVM emulates whatever the
/// host has but leaves out of KVM_GET_SUPPORTED_CPUID (the caller checks
/// KVM_CAP_TSC_DEADLINE_TIMER). Without it Linux calibrates the LAPIC
/// timer against PIT ticks; a vCPU starved while it counts (many VMs on
/// few CPUs) gets the PIT's backlog in a burst, computes a period far too
/// short and then spends all its time in timer interrupts, never booting.
pub fn offer_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice() {
        if e.function == LEAF_FEATURES {
            e.ecx |= ECX_TSC_DEADLINE;
        }
    }
}

/// Bits needed to number `n` things (ceil(log2(n))).
fn id_bits(n: u32) -> u32 {
    32 - n.saturating_sub(1).leading_zeros()
}

/// Adjusts KVM's supported CPUID for vCPU `id` of `count` (one thread per
/// core, all cores in one package).
pub fn for_vcpu(mut cpuid: CpuId, id: u8, count: u8) -> CpuId {
    let count32 = u32::from(count);
    for e in cpuid.as_mut_slice() {
        match e.function {
            LEAF_FEATURES => {
                // EBX[31:24] initial APIC id, EBX[23:16] logical processors.
                e.ebx = (e.ebx & 0xffff) | (u32::from(id) << 24) | (count32 << 16);
                e.ecx |= ECX_HYPERVISOR;
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // EAX[31:26]: cores per package - 1.
                e.eax = (e.eax & 0x03ff_ffff) | ((count32 - 1) << 26);
            }
            LEAF_TOPOLOGY => {
                e.edx = u32::from(id);
                match e.index {
                    0 => {
                        // SMT level: one thread per core.
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        // Core level: all vCPUs.
                        e.eax = id_bits(count32);
                        e.ebx = count32;
                        e.ecx = 1 | (2 << 8);
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            LEAF_EXT_FEATURES => e.ecx &= !ECX_TOPOEXT,
            LEAF_EXT_SIZES => {
                // ECX[15:12] APIC id bits for cores, ECX[7:0] cores - 1.
                e.ecx = (e.ecx & !0xf0ff) | (id_bits(count32) << 12) | (count32 - 1);
            }
            LEAF_EXT_TOPOLOGY => {
                e.eax = u32::from(id);
                e.ebx = 0;
                e.ecx = 0;
            }
            _ => {}
        }
    }
    cpuid
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            ..Default::default()
        }
    }

    #[test]
    fn topology_follows_the_vcpu() {
        let base = CpuId::from_entries(&[
            entry(LEAF_FEATURES, 0),
            entry(LEAF_TOPOLOGY, 0),
            entry(LEAF_TOPOLOGY, 1),
            entry(LEAF_EXT_SIZES, 0),
        ])
        .unwrap();
        let c = for_vcpu(base, 2, 3);
        let e = c.as_slice();
        assert_eq!(e[0].ebx, 0x0203_0800);
        assert_ne!(e[0].ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e[0].edx & EDX_HTT, 0);
        assert_eq!((e[2].eax, e[2].ebx, e[2].edx), (2, 3, 2));
        assert_eq!(e[3].ecx & 0xff, 2);
    }

    #[test]
    fn tsc_deadline_is_offered_in_leaf_1_only() {
        let mut c =
            CpuId::from_entries(&[entry(LEAF_FEATURES, 0), entry(LEAF_EXT_FEATURES, 0)]).unwrap();
        offer_tsc_deadline(&mut c);
        assert_ne!(c.as_slice()[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(c.as_slice()[1].ecx, 0);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!([1, 2, 3, 4, 5, 8, 9].map(id_bits), [0, 1, 2, 2, 3, 3, 4]);
    }
}
