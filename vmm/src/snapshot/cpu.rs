//! The KVM state of vCPUs and of the VM (irqchip, clock): taken from
//! a paused VM, put back into a new one in the order KVM needs.

use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry,
    kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES,
};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// What went wrong, as one line: the ioctl and KVM's error.
pub type Result<T> = std::result::Result<T, String>;

fn ioctl(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> String {
    move |e| format!("{what}: {e}")
}

/// One vCPU, as KVM reports it while the vCPU is out of KVM_RUN.
#[derive(Debug, Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub mp_state: kvm_mp_state,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    /// The legacy 4 KiB XSAVE area (KVM_GET_XSAVE).
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debug_regs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<kvm_msr_entry>,
    pub events: kvm_vcpu_events,
}

/// What KVM keeps VM-wide (the IOAPIC is husk's: `VmState::ioapic`).
#[derive(Debug, Serialize, Deserialize)]
pub struct VmKvmState {
    pub clock: kvm_clock_data,
}

/// The MSRs KVM can save for this host, as Firecracker and QEMU take
/// them: every index KVM_GET_MSR_INDEX_LIST names.
pub fn msr_indices(kvm: &Kvm) -> Result<Vec<u32>> {
    let list = kvm
        .get_msr_index_list()
        .map_err(ioctl("KVM_GET_MSR_INDEX_LIST"))?;
    Ok(list.as_slice().to_vec())
}

/// Reads the MSRs in `indices`. KVM stops at the first one it cannot read
/// (some listed ones depend on CPUID), so those are left out and the rest
/// read on.
fn read_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<kvm_msr_entry>> {
    let mut out = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(kvm_bindings::KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(|e| format!("MSR list: {e:?}"))?;
        let read = vcpu.get_msrs(&mut msrs).map_err(ioctl("KVM_GET_MSRS"))?;
        out.extend_from_slice(&msrs.as_slice()[..read]);
        // Skip the one that failed, if one did.
        let consumed = if read < chunk.len() { read + 1 } else { read };
        rest = &rest[consumed..];
    }
    Ok(out)
}

/// Takes a vCPU's state. The vCPU must be out of KVM_RUN and stay out.
pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState> {
    // mp_state first: it makes KVM finish pending INIT/SIPI handling, so
    // the registers read next are the ones a restore should set.
    let mp_state = vcpu.get_mp_state().map_err(ioctl("KVM_GET_MP_STATE"))?;
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(ioctl("KVM_GET_CPUID2"))?;
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        mp_state,
        regs: vcpu.get_regs().map_err(ioctl("KVM_GET_REGS"))?,
        sregs: vcpu.get_sregs().map_err(ioctl("KVM_GET_SREGS"))?,
        xsave: vcpu.get_xsave().map_err(ioctl("KVM_GET_XSAVE"))?,
        xcrs: vcpu.get_xcrs().map_err(ioctl("KVM_GET_XCRS"))?,
        debug_regs: vcpu.get_debug_regs().map_err(ioctl("KVM_GET_DEBUGREGS"))?,
        lapic: vcpu.get_lapic().map_err(ioctl("KVM_GET_LAPIC"))?,
        msrs: read_msrs(vcpu, msr_indices)?,
        events: vcpu
            .get_vcpu_events()
            .map_err(ioctl("KVM_GET_VCPU_EVENTS"))?,
    })
}

/// Puts a saved state into a new vCPU, in the order KVM needs: CPUID
/// before anything that depends on it, the LAPIC before MSRs that touch
/// it (TSC deadline), pending events last.
pub fn restore_vcpu(vcpu: &VcpuFd, state: &VcpuState) -> Result<()> {
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(|e| format!("CPUID: {e:?}"))?;
    vcpu.set_cpuid2(&cpuid).map_err(ioctl("KVM_SET_CPUID2"))?;
    vcpu.set_mp_state(state.mp_state)
        .map_err(ioctl("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs).map_err(ioctl("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(ioctl("KVM_SET_SREGS"))?;
    // SAFETY: the area came from KVM_GET_XSAVE, which fills exactly the
    // 4 KiB legacy struct; KVM_SET_XSAVE reads no more than that for it.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(ioctl("KVM_SET_XSAVE"))?;
    vcpu.set_xcrs(&state.xcrs).map_err(ioctl("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(ioctl("KVM_SET_DEBUGREGS"))?;
    vcpu.set_lapic(&state.lapic)
        .map_err(ioctl("KVM_SET_LAPIC"))?;
    for chunk in state.msrs.chunks(kvm_bindings::KVM_MAX_MSR_ENTRIES) {
        let msrs = Msrs::from_entries(chunk).map_err(|e| format!("MSR list: {e:?}"))?;
        let set = vcpu.set_msrs(&msrs).map_err(ioctl("KVM_SET_MSRS"))?;
        if set != chunk.len() {
            return Err(format!(
                "KVM_SET_MSRS: KVM refused MSR {:#x}",
                chunk[set].index
            ));
        }
    }
    vcpu.set_vcpu_events(&state.events)
        .map_err(ioctl("KVM_SET_VCPU_EVENTS"))
}

/// Takes KVM's clock (the only VM-wide state KVM holds: no PIT, and the
/// IOAPIC is husk's). The vCPUs must be paused.
pub fn save_vm(vm: &VmFd) -> Result<VmKvmState> {
    Ok(VmKvmState {
        clock: vm.get_clock().map_err(ioctl("KVM_GET_CLOCK"))?,
    })
}

/// Puts the VM-wide state back, before any vCPU is restored.
pub fn restore_vm(vm: &VmFd, state: &VmKvmState) -> Result<()> {
    // Only the time itself: the flags KVM reports (stable TSC, realtime)
    // are not ones it takes back.
    let clock = kvm_clock_data {
        clock: state.clock.clock,
        ..Default::default()
    };
    vm.set_clock(&clock).map_err(ioctl("KVM_SET_CLOCK"))
}
