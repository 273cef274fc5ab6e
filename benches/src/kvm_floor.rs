//! `kvm-floor [--irqchip full|split] ELF`: the least a VMM must do to run
//! the null guest, as the floor under every VMM's launch → first byte. It
//! opens /dev/kvm, makes the VM, its interrupt controllers and its vCPU,
//! registers 128 MiB of RAM, gives the vCPU KVM's CPUID, copies the ELF's
//! loadable segments in, sets flat 32-bit protected mode at the entry, and
//! runs: bytes to COM1 go to stdout, a write to the i8042's reset or to
//! husk's status port ends it. No threads, devices, API, config file or
//! checks beyond what running needs: a VMM can only add to this.
//!
//! `--irqchip` says which interrupt controllers KVM emulates. On kvm_pvm
//! the in-kernel PIC and IOAPIC (`full`, what husk and Firecracker make)
//! cost 5-10 ms of the start or of the exit, whatever the order of the
//! steps; with only the local APIC in the kernel (`split`) they do not.
//!
//! vmm-startup times it beside husk-vmm and Firecracker.

use kvm_bindings::{kvm_segment, kvm_userspace_memory_region, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit};
use std::io::Write;

const MEM: usize = 128 << 20;
const COM1: u16 = 0x3f8;
const I8042_COMMAND: u16 = 0x64;
const STATUS_PORT: u16 = 0xf4;

/// Which interrupt controllers KVM emulates.
#[derive(Clone, Copy, PartialEq)]
enum Irqchip {
    /// KVM_CREATE_IRQCHIP: PIC, IOAPIC and local APICs in the kernel, as
    /// husk and Firecracker have them.
    Full,
    /// KVM_CAP_SPLIT_IRQCHIP: only the local APICs in the kernel; a VMM
    /// then emulates the IOAPIC (and, if it offers one, the PIC) itself.
    Split,
}

fn main() {
    let mut irqchip = Irqchip::Full;
    let mut path = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--irqchip" => {
                irqchip = match args.next().as_deref() {
                    Some("full") => Irqchip::Full,
                    Some("split") => Irqchip::Split,
                    _ => panic!("--irqchip full|split"),
                }
            }
            p if !p.starts_with('-') => path = Some(p.to_owned()),
            _ => panic!("usage: kvm-floor [--irqchip full|split] ELF"),
        }
    }
    let elf = std::fs::read(path.expect("usage: kvm-floor [--irqchip full|split] ELF"))
        .expect("the guest ELF");
    let kvm = Kvm::new().expect("/dev/kvm");
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mem = anonymous(MEM);
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM as u64,
        userspace_addr: mem as u64,
    };
    // Each in its fastest order on kvm_pvm (docs/benchmarks.md): with the
    // full irqchip the vCPU before the memory (the other way round the
    // VM's teardown is ~15 ms slower), with the split one the memory first.
    let mut vcpu = match irqchip {
        Irqchip::Full => {
            vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
            let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
            // SAFETY: the region is our mapping of MEM bytes, which lives
            // until the process exits.
            unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
            vcpu
        }
        Irqchip::Split => {
            // SAFETY: as above.
            unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");
            let mut cap = kvm_bindings::kvm_enable_cap {
                cap: kvm_bindings::KVM_CAP_SPLIT_IRQCHIP,
                ..Default::default()
            };
            cap.args[0] = 24; // the IOAPIC's pins
            vm.enable_cap(&cap).expect("KVM_CAP_SPLIT_IRQCHIP");
            vm.create_vcpu(0).expect("KVM_CREATE_VCPU")
        }
    };
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
    let entry = load(&elf, mem);
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    let flat = |typ: u8, selector: u16| kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: typ,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    };
    sregs.cs = flat(11, 0x10);
    let data = flat(3, 0x18);
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.cr0 = 0x11; // PE | ET
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let regs = kvm_bindings::kvm_regs {
        rip: entry,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");
    let mut out = std::io::stdout().lock();
    loop {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(COM1, data) => {
                let _ = out.write_all(data);
                let _ = out.flush();
            }
            VcpuExit::IoOut(I8042_COMMAND, [0xfe]) => std::process::exit(0),
            VcpuExit::IoOut(STATUS_PORT, [status]) => std::process::exit(i32::from(*status)),
            VcpuExit::IoOut(..) | VcpuExit::IoIn(..) => {}
            other => panic!("unexpected exit {other:?}"),
        }
    }
}

/// `len` bytes of anonymous memory, as guest RAM.
fn anonymous(len: usize) -> *mut u8 {
    // SAFETY: a new private anonymous mapping; nothing else is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED, "mmap guest RAM");
    p.cast()
}

/// Copies a 64-bit ELF's PT_LOAD segments to their physical addresses;
/// the entry point.
fn load(elf: &[u8], mem: *mut u8) -> u64 {
    let u16_at = |o: usize| u16::from_le_bytes(elf[o..o + 2].try_into().unwrap());
    let u64_at = |o: usize| u64::from_le_bytes(elf[o..o + 8].try_into().unwrap());
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    let (phoff, phentsize, phnum) = (u64_at(32) as usize, u16_at(54) as usize, u16_at(56));
    for i in 0..phnum as usize {
        let ph = phoff + i * phentsize;
        if u32::from_le_bytes(elf[ph..ph + 4].try_into().unwrap()) != 1 {
            continue;
        }
        let (offset, paddr, filesz) = (
            u64_at(ph + 8) as usize,
            u64_at(ph + 24) as usize,
            u64_at(ph + 32) as usize,
        );
        assert!(paddr + filesz <= MEM, "segment outside guest RAM");
        // SAFETY: the destination lies inside the MEM-byte mapping (checked
        // above); the source is the file's bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                elf[offset..offset + filesz].as_ptr(),
                mem.add(paddr),
                filesz,
            )
        };
    }
    u64_at(24)
}
