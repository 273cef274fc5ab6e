//! vCPU setup and the per-vCPU thread loop: run the guest, route its port
//! and MMIO exits to devices, and turn resets, shutdowns and failures into
//! the VM's exit.

use crate::loader::Entry;
use crate::x86_64::{cpuid, lapic, msr, regs};
use crate::{Exit, Shared};
use kvm_bindings::CpuId;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("configuring vCPU {0}: {1} failed: {2}")]
    Setup(u8, &'static str, kvm_ioctls::Error),
    #[error("vCPU {0}: KVM accepted only {1} of {2} boot MSRs")]
    Msrs(u8, usize, usize),
}

/// Loads CPUID, MSRs, LAPIC wiring, and on the boot vCPU the entry state.
pub fn configure(
    vcpu: &VcpuFd,
    id: u8,
    count: u8,
    base_cpuid: &CpuId,
    entry: &Entry,
) -> Result<(), Error> {
    let e = |what| move |err| Error::Setup(id, what, err);
    vcpu.set_cpuid2(&cpuid::for_vcpu(base_cpuid.clone(), id, count))
        .map_err(e("KVM_SET_CPUID2"))?;
    let msrs = msr::boot_msrs();
    let set = vcpu.set_msrs(&msrs).map_err(e("KVM_SET_MSRS"))?;
    if set != msrs.as_slice().len() {
        return Err(Error::Msrs(id, set, msrs.as_slice().len()));
    }
    let mut lapic_state = vcpu.get_lapic().map_err(e("KVM_GET_LAPIC"))?;
    lapic::configure_lint(&mut lapic_state);
    vcpu.set_lapic(&lapic_state).map_err(e("KVM_SET_LAPIC"))?;
    vcpu.set_fpu(&regs::fpu()).map_err(e("KVM_SET_FPU"))?;
    // Application processors wait for INIT/SIPI from the boot vCPU, which
    // resets their registers; only the boot vCPU needs an entry state.
    if id == 0 {
        let sregs = vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&regs::sregs(sregs, entry.mode))
            .map_err(e("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs::regs(entry.addr, entry.mode))
            .map_err(e("KVM_SET_REGS"))?;
    }
    Ok(())
}

thread_local! {
    /// This thread's `kvm_run`, for the kick signal's handler.
    static KVM_RUN: Cell<*mut kvm_bindings::kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The kick signal's handler: makes KVM_RUN return at once, whether the
/// signal lands while the vCPU is in the guest or just before it enters
/// (KVM checks `immediate_exit` on entry), so one signal is enough.
pub fn on_kick() {
    KVM_RUN.with(|p| {
        let run = p.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's kvm_run mapping, set by
            // `run` below and valid until the VcpuFd (owned by the same
            // thread) drops; a volatile byte store is signal-safe.
            unsafe { std::ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
        }
    });
}

/// Where a vCPU stood when it triple-faulted: enough to find the guest
/// code and the exception that could not be delivered. (kvm_intel leaves
/// the state as it was; kvm_amd re-initializes the VMCB on a shutdown, so
/// there it reads as the reset state, RIP 0xfff0.)
fn fault_state(vcpu: &VcpuFd) -> String {
    let (Ok(r), Ok(s)) = (vcpu.get_regs(), vcpu.get_sregs()) else {
        return "its registers could not be read".into();
    };
    let mut out = format!(
        "rip {:#x} rsp {:#x} rflags {:#x} cs {:#x} cr0 {:#x} cr2 {:#x} cr3 {:#x} cr4 {:#x} efer {:#x} idt {:#x}/{:#x} gdt {:#x}/{:#x} gs base {:#x}",
        r.rip, r.rsp, r.rflags, s.cs.selector, s.cr0, s.cr2, s.cr3, s.cr4, s.efer,
        s.idt.base, s.idt.limit, s.gdt.base, s.gdt.limit, s.gs.base
    );
    if let Ok(e) = vcpu.get_vcpu_events() {
        out.push_str(&format!(
            "; exception nr {} injected {} pending {} error code {:#x}; interrupt injected {} nr {}; nmi injected {} pending {}",
            e.exception.nr, e.exception.injected, e.exception.pending, e.exception.error_code,
            e.interrupt.injected, e.interrupt.nr, e.nmi.injected, e.nmi.pending
        ));
    }
    out
}

/// The vCPU thread: runs until the VM stops. Never panics on guest input.
pub fn run(mut vcpu: VcpuFd, id: u8, shared: Arc<Shared>, filter: &seccompiler::BpfProgram) {
    KVM_RUN.with(|p| p.set(vcpu.get_kvm_run() as *mut _));
    // Before the guest's first instruction.
    if let Err(e) = crate::seccomp::install(filter, crate::seccomp::Kind::Vcpu, &shared.seccomp) {
        shared.finish(Exit::Failed(format!("vCPU {id}: {e}")));
        return;
    }
    run_loop(&mut vcpu, id, &shared);
    KVM_RUN.with(|p| p.set(std::ptr::null_mut()));
}

fn run_loop(vcpu: &mut VcpuFd, id: u8, shared: &Shared) {
    loop {
        shared.park_if_paused(vcpu, usize::from(id));
        if shared.stopping() {
            return;
        }
        let result = vcpu.run();
        if result.is_ok() {
            shared.count_exit();
        }
        let exit = match result {
            Ok(VcpuExit::IoOut(port, data)) => {
                shared.pio.write(port, data);
                continue;
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                shared.pio.read(port, data);
                continue;
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                shared.mmio.read(addr, data);
                continue;
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                shared.mmio.write(addr, data);
                continue;
            }
            // The EOI of a level-triggered vector KVM told the split
            // irqchip's IOAPIC about: husk routes every pin edge-triggered
            // (no remote IRR to clear), so there is nothing to do.
            Ok(VcpuExit::IoapicEoi(_)) => continue,
            // Only without an in-kernel LAPIC; a halted guest with nothing
            // to wake it is done.
            Ok(VcpuExit::Hlt) => Exit::Halted,
            // A triple fault: the CPU resets, so does the VM. Said, since
            // a guest that asks for a reset looks the same afterwards.
            Ok(VcpuExit::Shutdown) => {
                log::warn!(
                    "vCPU {id}: triple fault (KVM_EXIT_SHUTDOWN), the guest resets; {} exits handled; {}",
                    shared.exits.load(std::sync::atomic::Ordering::Relaxed),
                    fault_state(vcpu)
                );
                shared.reset_by(crate::RESET_TRIPLE_FAULT);
                Exit::Reset
            }
            Ok(VcpuExit::SystemEvent(kind, _)) => match kind {
                kvm_bindings::KVM_SYSTEM_EVENT_RESET => {
                    log::warn!("vCPU {id}: the guest asked KVM for a reset");
                    shared.reset_by(crate::RESET_KVM);
                    Exit::Reset
                }
                kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => Exit::Halted,
                other => Exit::Failed(format!("vCPU {id}: system event {other}")),
            },
            Ok(VcpuExit::FailEntry(reason, cpu)) => Exit::Failed(format!(
                "vCPU {id}: KVM could not enter the guest (hardware reason {reason:#x}, cpu {cpu})"
            )),
            Ok(VcpuExit::InternalError) => Exit::Failed(format!(
                "vCPU {id}: KVM internal error (the guest did something KVM cannot emulate)"
            )),
            Ok(other) => Exit::Failed(format!("vCPU {id}: unexpected exit {other:?}")),
            // A kick from the VMM (stop, pause) or a spurious wakeup.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
                continue;
            }
            Err(e) => Exit::Failed(format!("vCPU {id}: KVM_RUN failed: {e}")),
        };
        shared.finish(exit);
        return;
    }
}
