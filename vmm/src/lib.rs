//! husk's virtual machine monitor.
//!
//! [`run`] is the whole life of a VM as one linear recipe: check KVM, map
//! guest memory, create the VM (irqchip; no PIT), load the kernel and its
//! command line, write the boot structures, attach devices, create and
//! configure the vCPUs, then run: one thread per vCPU, the device event loop
//! on the calling thread, until the guest resets, halts or fails, or the
//! VMM is told to stop. ARCHITECTURE.md walks through it.

pub mod console;
pub mod kvm_kind;
pub mod loader;
pub mod memory;
pub mod mmio;
pub mod pio;
mod report;
pub mod seccomp;
mod signals;
pub mod snapshot;
mod vcpu;
pub mod virtio;
pub mod x86_64;

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::{Kvm, VmFd};
use std::os::unix::thread::JoinHandleExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};
use x86_64::layout::{KEYBOARD_IRQ, SERIAL_IRQ};

pub use console::Console;
/// A disk's I/O limits, as `DiskConfig` and `VmControls::set_disk_limits` take them.
pub use husk_devices::rate_limiter;
pub use husk_devices::virtio::net::random_mac;
pub use report::{print_now as print_report, REPORT_SIGNAL};
pub use virtio::{DiskConfig, FsConfig, NetConfig, NetHost, NetLimits, VsockConfig};

/// Where KVM keeps its real-mode TSS (Intel needs three pages below 4 GiB
/// that nothing else uses; this is in the MMIO gap, above all devices).
const KVM_TSS_ADDRESS: usize = 0xfffb_d000;

/// A VM to run.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub vcpus: u8,
    pub mem_mib: u64,
    /// The kernel command line; device tokens are put in front of it.
    pub cmdline: String,
    /// virtio-blk disks, in order: /dev/vda, /dev/vdb, ...
    pub disks: Vec<DiskConfig>,
    /// virtio-net interfaces on host TAPs, in order: eth0, eth1, ...
    pub nets: Vec<virtio::NetConfig>,
    /// A virtio-vsock device with its host Unix socket.
    pub vsock: Option<virtio::VsockConfig>,
    /// Shared directories: virtio-fs devices served by vhost-user
    /// backends (virtiofsd). Any of them makes guest RAM a shared memfd.
    pub fs: Vec<virtio::FsConfig>,
    pub console: Console,
    /// Forward the VMM's stdin to the serial console.
    pub stdin: bool,
    /// Run even on kvm_pvm, which only tiny guests survive (tests, benches).
    pub allow_pvm: bool,
    /// Track dirty pages (KVM's dirty log and the devices' writes), for
    /// Diff snapshots.
    pub track_dirty_pages: bool,
}

/// Why the VM stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest reset (i8042, triple fault, `panic=1`).
    Reset,
    /// The guest halted with nothing left to wake it, or powered off.
    Halted,
    /// The VMM was asked to stop (signal number).
    Stopped(i32),
    /// KVM or a vCPU failed.
    Failed(String),
}

/// What [`run`] returns: the exit, and the status the guest init reported
/// on the status port before it (if it did).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit: Exit,
    pub guest_status: Option<u8>,
    /// The reason of a kernel panic the guest's console showed, if any.
    pub guest_panic: Option<String>,
    /// How a reset came about ([`RESET_TRIPLE_FAULT`], ...), for messages:
    /// a quiet guest's console says nothing of it.
    pub reset: Option<&'static str>,
}

/// A vCPU triple-faulted (the words the testbed's signature looks for).
pub const RESET_TRIPLE_FAULT: &str = "a triple fault (KVM_EXIT_SHUTDOWN)";
/// The guest reset through the i8042 (`reboot=k`, `panic=1`).
pub const RESET_I8042: &str = "the guest's reset through the i8042";
/// The guest asked KVM for a reset (a PSCI-style system event).
pub const RESET_KVM: &str = "the guest's reset request to KVM";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Kvm(kvm_kind::KvmKind),
    #[error("cannot open /dev/kvm: {0}")]
    KvmOpen(kvm_ioctls::Error),
    #[error("{0} vCPUs requested; this host allows 1 to {1}")]
    Vcpus(u8, usize),
    #[error(transparent)]
    Memory(#[from] memory::Error),
    #[error(transparent)]
    Seccomp(#[from] seccomp::Error),
    #[error(transparent)]
    Loader(#[from] loader::Error),
    #[error(transparent)]
    BootTables(#[from] x86_64::regs::Error),
    #[error(transparent)]
    BootParams(#[from] x86_64::boot::Error),
    #[error(transparent)]
    MpTable(#[from] x86_64::mptable::Error),
    #[error(transparent)]
    Vcpu(#[from] vcpu::Error),
    #[error(transparent)]
    Console(#[from] console::Error),
    #[error(transparent)]
    Device(#[from] virtio::Error),
    #[error("{0} failed: {1}")]
    Setup(&'static str, String),
    #[error("cannot restore the snapshot: {0}")]
    Restore(String),
    /// What the caller ran between the build and the threads refused.
    #[error("{0}")]
    BeforeThreads(String),
}

/// What a caller runs once its VM is built and before any of the VM's
/// threads exists: every file, socket and device the VM uses is open, so
/// this is where a caller gives up privileges (`husk run --jail`).
pub type BeforeThreads<'a> = &'a dyn Fn() -> Result<(), String>;

/// Runs the caller's `before`. The report thread a former VM of this
/// process started ends first: `before` may change the process's
/// namespaces, which only threads started afterwards are in.
fn run_before(before: Option<BeforeThreads>) -> Result<(), Error> {
    let Some(before) = before else {
        return Ok(());
    };
    report::end_thread();
    before().map_err(Error::BeforeThreads)
}

fn setup<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Error {
    move |e| Error::Setup(what, e.to_string())
}

/// The code at a vCPU's RIP and the top of its stack, read through the
/// guest's page tables: a silent guest's loop and its callers (the stack's
/// kernel addresses, looked up in System.map).
fn guest_view(mem: &memory::GuestMemory, s: &snapshot::cpu::VcpuState) -> String {
    use x86_64::paging::read_virt;
    let cr3 = s.sregs.cr3;
    // Paging off (CR0.PG): nothing to walk.
    if s.sregs.cr0 & (1 << 31) == 0 {
        return "; paging off".into();
    }
    let code = read_virt(mem, cr3, s.regs.rip, 16);
    let stack = read_virt(mem, cr3, s.regs.rsp, 8 * 16);
    let hex: String = code.iter().map(|b| format!("{b:02x}")).collect();
    let words: Vec<String> = stack
        .chunks_exact(8)
        .map(|w| {
            format!(
                "{:#x}",
                u64::from_le_bytes(w.try_into().unwrap_or_default())
            )
        })
        .collect();
    format!("\n  code at rip: {hex}\n  stack: {}", words.join(" "))
}

/// State the vCPU threads and the event loop share.
pub struct Shared {
    pub pio: pio::PioDevices,
    pub mmio: mmio::MmioBus,
    /// Also on `mmio`; here for snapshots.
    ioapic: Arc<Mutex<x86_64::irqchip::IoapicDevice>>,
    stop: AtomicBool,
    exit: Mutex<Option<Exit>>,
    /// Written when `exit` is set, to wake the event loop.
    exit_evt: EventFd,
    /// A stop signal that was passed to the guest as Ctrl-Alt-Del: which
    /// signal, and when the guest's grace period ends.
    stop_request: Mutex<Option<(i32, Instant)>>,
    pause: Mutex<PauseState>,
    unpause: std::sync::Condvar,
    /// The vCPU threads (pthread ids as integers: `pthread_t` is a pointer
    /// on musl, which is not Send), to kick them out of KVM_RUN.
    vcpu_threads: Mutex<Vec<usize>>,
    /// Exits handled by the vCPU threads (port and MMIO accesses).
    exits: std::sync::atomic::AtomicU64,
    /// Passes of the device event loop.
    loop_passes: std::sync::atomic::AtomicU64,
    /// When the last exit and the last pass happened, in ms after `born`
    /// (for the report: a stuck loop or vCPU shows as time since).
    last_exit_ms: std::sync::atomic::AtomicU64,
    last_pass_ms: std::sync::atomic::AtomicU64,
    born: Instant,
    disk_metrics: Vec<(String, Arc<husk_devices::virtio::block::BlockMetrics>)>,
    /// What the console showed of a guest kernel panic.
    panic: console::PanicNote,
    /// What a snapshot reads besides the vCPUs; taken out when the VM
    /// ends, so the VM fd and memory go in their order (RunningVm).
    source: Mutex<Option<Source>>,
    /// The virtio devices, in attachment order, for snapshots.
    devices: Vec<virtio::Attached>,
    /// Where a vCPU thread's forbidden system call is reported.
    /// Shared with threads of the caller's that serve this VM and may
    /// outlive it (`VmControls::seccomp_watch`).
    seccomp: Arc<seccomp::Watch>,
    /// How the guest reset, if it did (the first way seen).
    reset: Mutex<Option<&'static str>>,
}

/// The VM and its memory, for a snapshot.
struct Source {
    vm: Arc<VmFd>,
    mem: memory::GuestMemory,
    mem_mib: u64,
    /// Its memory slots log dirty pages.
    track: bool,
    /// The MSRs a snapshot saves, read while /dev/kvm could be opened (a
    /// jailed process has none).
    msr_indices: Result<Vec<u32>, String>,
}

/// Counters of a running VM, for metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmStats {
    pub vcpu_exits: u64,
    /// Per disk id: reads, writes, bytes read, bytes written, flushes, errors.
    pub disks: Vec<(String, DiskStats)>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub reads: u64,
    pub writes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub flushes: u64,
    pub errors: u64,
}

/// Whether the vCPUs should stay out of the guest, and how many do.
#[derive(Default)]
struct PauseState {
    paused: bool,
    parked: usize,
    /// Bumped to ask every parked vCPU thread for its state.
    save_gen: u64,
    /// The MSRs that request saves (KVM's list, read when a snapshot is
    /// made rather than at every start).
    msr_indices: Arc<Vec<u32>>,
    /// Per vCPU: the last generation it answered.
    answered: Vec<u64>,
    /// Per vCPU: its state, until the snapshot takes it.
    saved: Vec<Option<snapshot::cpu::Result<snapshot::cpu::VcpuState>>>,
}

/// How long a guest gets to stop cleanly after Ctrl-Alt-Del (its init gives
/// processes 3 s, then flushes disks).
const STOP_GRACE: Duration = Duration::from_secs(10);

impl Shared {
    /// SIGINT/SIGTERM: the first one asks the guest to stop (Ctrl-Alt-Del,
    /// so disks get flushed); a second one, or the grace period running out,
    /// stops the VM at once.
    fn request_stop(&self, signal: i32) {
        let mut pending = pio::lock(&self.stop_request);
        if pending.is_some() {
            drop(pending);
            self.finish(Exit::Stopped(signal));
        } else {
            *pending = Some((signal, Instant::now() + STOP_GRACE));
            drop(pending);
            self.pio.ctrl_alt_del();
        }
    }

    /// The signal a stop request came from, if the VM is stopping because
    /// of one.
    fn stop_signal(&self) -> Option<i32> {
        pio::lock(&self.stop_request).map(|(sig, _)| sig)
    }

    fn check_stop_deadline(&self) {
        let expired = pio::lock(&self.stop_request)
            .filter(|(_, deadline)| Instant::now() >= *deadline)
            .map(|(sig, _)| sig);
        if let Some(sig) = expired {
            self.finish(Exit::Stopped(sig));
        }
    }

    /// One line for the report on demand: is the guest running at all,
    /// and is the device loop?
    fn report(&self) -> String {
        let pause = pio::lock(&self.pause);
        let now = self.ms();
        let ago =
            |at: &std::sync::atomic::AtomicU64| now.saturating_sub(at.load(Ordering::Relaxed));
        format!(
            "vm: {} vCPU(s), {} exits handled (the last {} ms ago), event loop {} passes (the last {} ms ago), paused {} ({} parked), stopping {}",
            self.vcpu_count(),
            self.exits.load(Ordering::Relaxed),
            ago(&self.last_exit_ms),
            self.loop_passes.load(Ordering::Relaxed),
            ago(&self.last_pass_ms),
            pause.paused,
            pause.parked,
            self.stopping()
        )
    }

    /// Where each vCPU is: RIP and run state, read by pausing the VM for
    /// a moment (a guest that was already paused stays so). For a silent
    /// guest: the address says where its kernel sits (System.map).
    fn vcpu_positions(self: &Arc<Self>) -> String {
        if self.stopping() {
            return "stopping".into();
        }
        let controls = VmControls {
            shared: self.clone(),
        };
        let was_paused = controls.is_paused();
        controls.pause();
        let saved = self.save_vcpus(Vec::new());
        if !was_paused {
            controls.resume();
        }
        let source = pio::lock(&self.source);
        match saved {
            Ok(states) => states
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    let mut line = format!(
                        "vCPU {i} rip {:#x} mp_state {} rflags {:#x} rsp {:#x}",
                        s.regs.rip, s.mp_state.mp_state, s.regs.rflags, s.regs.rsp
                    );
                    if let Some(src) = source.as_ref() {
                        line.push_str(&guest_view(&src.mem, s));
                    }
                    line
                })
                .collect::<Vec<_>>()
                .join("\n"),
            Err(e) => format!("not read: {e}"),
        }
    }

    fn ms(&self) -> u64 {
        self.born.elapsed().as_millis() as u64
    }

    fn count_exit(&self) {
        self.exits.fetch_add(1, Ordering::Relaxed);
        self.last_exit_ms.store(self.ms(), Ordering::Relaxed);
    }

    fn count_pass(&self) {
        self.loop_passes.fetch_add(1, Ordering::Relaxed);
        self.last_pass_ms.store(self.ms(), Ordering::Relaxed);
    }

    fn vcpu_count(&self) -> usize {
        pio::lock(&self.vcpu_threads).len()
    }

    fn kick_vcpus(&self) {
        for &t in pio::lock(&self.vcpu_threads).iter() {
            // SAFETY: `t` is a vCPU thread that is joined only after the
            // loop that owns the pthread ids has ended (RunningVm::wait),
            // so the id is live; the signal's handler does nothing.
            unsafe { libc::pthread_kill(t as libc::pthread_t, kick_signal()) };
        }
    }

    /// Called by a vCPU thread outside KVM_RUN: blocks while paused, and
    /// saves the vCPU's state when a snapshot asks (only this thread may
    /// touch its vCPU, and it is out of KVM_RUN for as long as it is
    /// parked).
    fn park_if_paused(&self, vcpu: &kvm_ioctls::VcpuFd, id: usize) {
        let mut st = pio::lock(&self.pause);
        if !st.paused {
            return;
        }
        st.parked += 1;
        if st.answered.len() <= id {
            st.answered.resize(id + 1, 0);
            st.saved.resize_with(id + 1, || None);
        }
        while st.paused && !self.stopping() {
            // Also a request made before this vCPU parked.
            if st.save_gen != st.answered[id] {
                let (gen, msrs) = (st.save_gen, st.msr_indices.clone());
                drop(st);
                let state = snapshot::cpu::save_vcpu(vcpu, &msrs);
                st = pio::lock(&self.pause);
                st.answered[id] = gen;
                st.saved[id] = Some(state);
                self.unpause.notify_all();
                continue;
            }
            st = self.unpause.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.parked -= 1;
    }

    /// Asks every parked vCPU for its state (the MSRs in `msr_indices`)
    /// and waits for all of them.
    fn save_vcpus(
        &self,
        msr_indices: Vec<u32>,
    ) -> Result<Vec<snapshot::cpu::VcpuState>, snapshot::Error> {
        let count = self.vcpu_count();
        let mut st = pio::lock(&self.pause);
        if !st.paused {
            return Err(snapshot::Error::NotPaused);
        }
        st.msr_indices = Arc::new(msr_indices);
        st.save_gen += 1;
        let gen = st.save_gen;
        self.unpause.notify_all();
        let deadline = Instant::now() + Duration::from_secs(5);
        let waiting = |st: &PauseState| (0..count).find(|&i| st.answered.get(i) != Some(&gen));
        while let Some(busy) = waiting(&st) {
            if self.stopping() {
                return Err(snapshot::Error::Stopped);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(snapshot::Error::VcpuBusy(busy));
            }
            st = self
                .unpause
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        let mut states = Vec::with_capacity(count);
        for (i, slot) in st.saved.iter_mut().take(count).enumerate() {
            match slot.take() {
                Some(Ok(state)) => states.push(state),
                Some(Err(e)) => return Err(snapshot::Error::Vcpu(i, e)),
                None => return Err(snapshot::Error::VcpuBusy(i)),
            }
        }
        Ok(states)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Records why the VM stops (the first reason wins) and wakes the loop.
    /// Notes how the guest reset (before [`Shared::finish`]).
    pub(crate) fn reset_by(&self, how: &'static str) {
        pio::lock(&self.reset).get_or_insert(how);
    }

    fn finish(&self, exit: Exit) {
        let mut slot = pio::lock(&self.exit);
        if slot.is_none() {
            // A forbidden call is the cause of whatever failed after it
            // (its EPERM), even when that is seen first.
            *slot = Some(self.seccomp.describe().map_or(exit, Exit::Failed));
        }
        self.stop.store(true, Ordering::Release);
        let _ = self.exit_evt.write(1);
    }
}

/// The event-loop subscriber for VM lifecycle events: guest reset through
/// the i8042 and a vCPU finishing. (SIGINT/SIGTERM have a thread of their
/// own: `signals.rs`.)
struct Lifecycle {
    shared: Arc<Shared>,
    reset_evt: EventFd,
    fatal: Option<Arc<virtio::Fatal>>,
}

impl MutEventSubscriber for Lifecycle {
    fn init(&mut self, ops: &mut EventOps) {
        // Registration fails only on a closed fd or exhausted memory, and
        // then the VM could never be stopped: report it as the exit.
        let mut add = |fd: &dyn std::os::fd::AsRawFd| {
            if let Err(e) = ops.add(Events::new_raw(fd.as_raw_fd(), EventSet::IN)) {
                self.shared
                    .finish(Exit::Failed(format!("event loop registration: {e:?}")));
            }
        };
        add(&self.reset_evt);
        add(&self.shared.exit_evt);
        add(&self.shared.seccomp.evt);
        if let Some(f) = &self.fatal {
            add(&f.evt);
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let fd = events.fd();
        if fd == self.reset_evt.as_raw_fd() {
            let _ = self.reset_evt.read();
            // Said at warn: husk does not reboot a VM, so a reset ends it.
            log::warn!("the guest reset the CPU through the i8042 (reboot=k)");
            self.shared.reset_by(RESET_I8042);
            self.shared.finish(Exit::Reset);
        } else if fd == self.shared.seccomp.evt.as_raw_fd() {
            let _ = self.shared.seccomp.evt.read();
            let why = self.shared.seccomp.describe().unwrap_or_default();
            self.shared.finish(Exit::Failed(why));
        } else if let Some(f) = self.fatal.as_ref().filter(|f| f.evt.as_raw_fd() == fd) {
            let _ = f.evt.read();
            let why = pio::lock(&f.reason).clone().unwrap_or_default();
            self.shared.finish(Exit::Failed(why));
        } else {
            let _ = self.shared.exit_evt.read();
        }
    }
}

use std::os::fd::AsRawFd;

/// Blocks SIGINT and SIGTERM in this thread (and every thread it creates
/// later) and returns a descriptor that delivers them to the event loop.
/// Call before anything spawns threads.
pub fn take_stop_signals() -> nix::Result<nix::sys::signalfd::SignalFd> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block()?;
    nix::sys::signalfd::SignalFd::with_flags(
        &set,
        nix::sys::signalfd::SfdFlags::SFD_CLOEXEC | nix::sys::signalfd::SfdFlags::SFD_NONBLOCK,
    )
}

fn open_kvm(allow_pvm: bool) -> Result<Kvm, Error> {
    let kind = kvm_kind::host();
    match kind {
        kvm_kind::KvmKind::Hardware(_) => {}
        kvm_kind::KvmKind::Pvm if allow_pvm => {}
        other => return Err(Error::Kvm(other)),
    }
    Kvm::new().map_err(|e| match e.errno() {
        libc::EACCES | libc::EPERM => Error::Kvm(kvm_kind::KvmKind::Unusable(format!(
            "permission denied opening /dev/kvm ({e})"
        ))),
        libc::ENOENT => Error::Kvm(kvm_kind::KvmKind::Missing),
        _ => Error::KvmOpen(e),
    })
}

/// The vCPUs, made before the VM has memory. Measured on kvm_pvm (the
/// module's reasons are its own): a VM whose vCPUs came after its memory
/// slots takes 12-17 ms longer to tear down (the VM fd's close), one whose
/// vCPUs came first ~1 ms. KVM allows either order; nothing runs before
/// both exist (docs/benchmarks.md).
fn create_vcpus(vm: &VmFd, count: u8) -> Result<Vec<kvm_ioctls::VcpuFd>, Error> {
    (0..count)
        .map(|id| {
            vm.create_vcpu(u64::from(id))
                .map_err(setup("KVM_CREATE_VCPU"))
        })
        .collect()
}

/// The VM with its in-kernel devices; no memory yet.
fn create_bare_vm(kvm: &Kvm) -> Result<VmFd, Error> {
    let vm = kvm.create_vm().map_err(setup("KVM_CREATE_VM"))?;
    vm.set_tss_address(KVM_TSS_ADDRESS)
        .map_err(setup("KVM_SET_TSS_ADDR"))?;
    x86_64::irqchip::create(&vm).map_err(setup("KVM_CAP_SPLIT_IRQCHIP"))?;
    // No in-kernel PIT, as QEMU's microvm has none: a guest that is offered
    // the TSC-deadline timer and kvmclock (`cpuid::offer_tsc_deadline`)
    // neither calibrates nor ticks with it, and KVM's teardown of one waits
    // out SRCU grace periods and stops its thread: 15-17 ms of every VM's
    // exit (Firecracker, which makes one, pays them too; docs/benchmarks.md).
    // Its ports read as nothing, like any port without a device.
    Ok(vm)
}

/// `chip` as the VM's IOAPIC, on `bus` at the MP table's address.
fn ioapic_on(
    bus: &mut mmio::MmioBus,
    vm: &Arc<VmFd>,
    chip: husk_devices::legacy::ioapic::Ioapic,
) -> Arc<Mutex<x86_64::irqchip::IoapicDevice>> {
    let device = Arc::new(Mutex::new(x86_64::irqchip::IoapicDevice::new(
        vm.clone(),
        chip,
    )));
    bus.insert(
        u64::from(x86_64::mptable::IOAPIC_DEFAULT_BASE),
        x86_64::irqchip::IOAPIC_WINDOW,
        device.clone(),
    );
    device
}

/// Gives the VM its memory slots.
fn register_memory(vm: &VmFd, mem: &memory::GuestMemory, track: bool) -> Result<(), Error> {
    for (slot, region) in mem.iter().enumerate() {
        let r = kvm_bindings::kvm_userspace_memory_region {
            slot: slot as u32,
            guest_phys_addr: region.start_addr().0,
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
            flags: snapshot::dirty::slot_flags(track),
        };
        // SAFETY: the region is a live mapping owned by `mem`, which the
        // caller keeps alive until every vCPU has stopped and the VM fd is
        // closed; slots do not overlap because the regions do not.
        unsafe { vm.set_user_memory_region(r) }.map_err(setup("KVM_SET_USER_MEMORY_REGION"))?;
    }
    Ok(())
}

/// Interrupts KVM_RUN on the thread that receives it (see `vcpu::on_kick`).
extern "C" fn kick_handler(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    vcpu::on_kick();
}

fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

/// A VM whose vCPUs run. The caller drives the event loop with [`wait`]
/// (after adding its own subscribers, e.g. the API) and controls the VM
/// through [`RunningVm::controls`].
///
/// [`wait`]: RunningVm::wait
pub struct RunningVm {
    shared: Arc<Shared>,
    events: virtio::EventLoop,
    threads: Vec<std::thread::JoinHandle<()>>,
    input: Option<console::StdinPump>,
    watcher: Option<signals::Watcher>,
    // Declared last: dropped after the vCPU threads are joined, so no vCPU
    // runs on unmapped memory or a closed VM. (Shared's copies are taken
    // out when the VM ends.)
    _vm: Arc<VmFd>,
    _mem: memory::GuestMemory,
}

/// A handle that pauses, resumes and stops a running VM from any thread.
#[derive(Clone)]
pub struct VmControls {
    shared: Arc<Shared>,
}

impl VmControls {
    /// Stops every vCPU outside KVM_RUN; returns once all are parked.
    pub fn pause(&self) {
        pio::lock(&self.shared.pause).paused = true;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let parked = pio::lock(&self.shared.pause).parked;
            if parked == self.shared.vcpu_count() || self.shared.stopping() {
                return;
            }
            if Instant::now() > deadline {
                return; // a vCPU stuck in the kernel; report as paused anyway
            }
            self.shared.kick_vcpus();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn resume(&self) {
        pio::lock(&self.shared.pause).paused = false;
        self.shared.unpause.notify_all();
    }

    /// What a thread of the caller's that serves this VM reports to once
    /// under its seccomp filter ([`seccomp::guard`]): a call outside it
    /// stops this VM, naming the thread. The thread keeps it as long as it
    /// runs (not the VM: it may outlive the VM).
    pub fn seccomp_watch(&self) -> Arc<seccomp::Watch> {
        self.shared.seccomp.clone()
    }

    /// Whether the VM is ending or has ended.
    pub fn is_stopping(&self) -> bool {
        self.shared.stopping()
    }

    pub fn is_paused(&self) -> bool {
        pio::lock(&self.shared.pause).paused
    }

    /// Writes a snapshot of the paused VM: its state, then its memory
    /// (all of it, or for a Diff the pages written since the last one).
    pub fn snapshot(
        &self,
        to: &snapshot::SnapshotPaths,
        kind: snapshot::Kind,
    ) -> Result<(), snapshot::Error> {
        self.snapshot_to(snapshot::SnapshotTarget::Paths(to), kind)
    }

    /// [`snapshot`](VmControls::snapshot) into paths or open files (Full
    /// only).
    pub fn snapshot_to(
        &self,
        to: snapshot::SnapshotTarget,
        kind: snapshot::Kind,
    ) -> Result<(), snapshot::Error> {
        use snapshot::SnapshotTarget::{Files, Paths};
        if kind == snapshot::Kind::Diff && matches!(to, Files(_)) {
            return Err(snapshot::Error::DiffIntoFile);
        }
        if !self.is_paused() {
            return Err(snapshot::Error::NotPaused);
        }
        // The devices' event handlers still run while the vCPUs are parked
        // (a frame from the TAP, bytes from a vsock peer): every device is
        // held from its saved queues to the end of the memory dump, or the
        // memory could hold a used ring ahead of the saved queue.
        let transports: Vec<_> = self
            .shared
            .devices
            .iter()
            .map(|d| pio::lock(&d.transport))
            .collect();
        let held: Vec<_> = transports.iter().map(|t| t.lock_device()).collect();
        let devices = self.device_states(&transports, &held)?;
        let (vm, mem, mem_mib, track, msrs) = {
            let source = pio::lock(&self.shared.source);
            let s = source.as_ref().ok_or(snapshot::Error::Stopped)?;
            let msrs = s.msr_indices.clone().map_err(snapshot::Error::Kvm)?;
            (s.vm.clone(), s.mem.clone(), s.mem_mib, s.track, msrs)
        };
        if kind == snapshot::Kind::Diff && !track {
            return Err(snapshot::Error::NotTracking);
        }
        let vcpus = self.shared.save_vcpus(msrs)?;
        let kvm = snapshot::cpu::save_vm(&vm).map_err(snapshot::Error::Kvm)?;
        // Read (and so clear) the logs even for a Full snapshot: the next
        // Diff holds what changed after this one.
        let dirty = if track {
            Some(snapshot::dirty::take(&vm, &mem).map_err(snapshot::Error::DirtyLog)?)
        } else {
            None
        };
        let mem_name = match to {
            Paths(p) => p.mem.clone(),
            Files(_) => std::path::PathBuf::from("the memory file given"),
        };
        let ram = match (kind, &dirty, to) {
            (snapshot::Kind::Diff, Some(dirty), Paths(p)) => {
                snapshot::memory::dump_diff(&mem, dirty, &p.mem)
            }
            (_, _, Paths(p)) => snapshot::memory::dump(&mem, &p.mem),
            (_, _, Files(f)) => snapshot::memory::dump_to(&mem, &f.mem),
        }
        .map_err(|e| snapshot::Error::Memory(mem_name, e))?;
        let state = snapshot::VmState {
            mem_mib,
            ram,
            kvm,
            vcpus,
            pio: self.shared.pio.state(),
            ioapic: pio::lock(&self.shared.ioapic).state(),
            devices,
        };
        match to {
            Paths(p) => snapshot::file::write(&p.state, &state)?,
            Files(f) => snapshot::file::write_to(
                &f.state,
                std::path::Path::new("the state file given"),
                &state,
            )?,
        }
        Ok(())
    }

    /// Each virtio device's spec and transport state; a device that
    /// cannot be snapshotted refuses the whole snapshot, before anything
    /// is written.
    fn device_states(
        &self,
        transports: &[std::sync::MutexGuard<'_, husk_devices::virtio::transport::MmioTransport>],
        held: &[std::sync::MutexGuard<'_, dyn husk_devices::virtio::VirtioDevice + 'static>],
    ) -> Result<Vec<snapshot::devices::DeviceState>, snapshot::Error> {
        self.shared
            .devices
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let mut spec = d
                    .spec
                    .clone()
                    .map_err(|why| snapshot::Error::Device(i, why))?;
                if let (snapshot::devices::DeviceSpec::Disk { rate_limiter, .. }, Some(disk)) =
                    (&mut spec, &d.block)
                {
                    *rate_limiter = *pio::lock(&disk.limits);
                }
                if let (snapshot::devices::DeviceSpec::Net { limits, .. }, Some(nic)) =
                    (&mut spec, &d.nic)
                {
                    *limits = *pio::lock(&nic.limits);
                }
                let state = transports[i]
                    .state_with(&*held[i])
                    .map_err(|why| snapshot::Error::Device(i, why))?;
                Ok(snapshot::devices::DeviceState {
                    spec,
                    transport: state,
                })
            })
            .collect()
    }

    /// The first device whose spec `is` says is the one.
    fn device(
        &self,
        is: impl Fn(&snapshot::devices::DeviceSpec) -> bool,
    ) -> Option<&virtio::Attached> {
        self.shared
            .devices
            .iter()
            .find(|d| d.spec.as_ref().is_ok_and(&is))
    }

    /// Sets disk `id`'s I/O limits while it runs (`PATCH /drives`); a
    /// snapshot taken later keeps them.
    pub fn set_disk_limits(
        &self,
        id: &str,
        limits: husk_devices::rate_limiter::Limits,
    ) -> Result<(), String> {
        use snapshot::devices::DeviceSpec;
        let disk = self
            .device(|s| matches!(s, DeviceSpec::Disk { id: i, .. } if i == id))
            .and_then(|d| d.block.as_ref())
            .ok_or_else(|| format!("the VM has no disk {id}"))?;
        pio::lock(&disk.device)
            .set_rate_limiter(husk_devices::rate_limiter::RateLimiter::new(limits));
        *pio::lock(&disk.limits) = Some(limits);
        Ok(())
    }

    /// Sets NIC `id`'s limits while it runs (`PATCH /network-interfaces`):
    /// a direction given `None` keeps its limits. A snapshot taken later
    /// keeps them.
    pub fn set_net_limits(
        &self,
        id: &str,
        rx: Option<husk_devices::rate_limiter::Limits>,
        tx: Option<husk_devices::rate_limiter::Limits>,
    ) -> Result<(), String> {
        use snapshot::devices::DeviceSpec;
        let nic = self
            .device(|s| matches!(s, DeviceSpec::Net { id: i, .. } if i == id))
            .and_then(|d| d.nic.as_ref())
            .ok_or_else(|| format!("the VM has no network interface {id}"))?;
        // Not held while the device is locked: a snapshot takes the device
        // first.
        let limits = {
            let mut now = pio::lock(&nic.limits);
            now.rx = rx.or(now.rx);
            now.tx = tx.or(now.tx);
            *now
        };
        (nic.set_limits)(limits);
        Ok(())
    }

    /// Types Ctrl-Alt-Del into the guest's keyboard.
    pub fn ctrl_alt_del(&self) {
        self.shared.pio.ctrl_alt_del();
    }

    /// Ends the VM now with `exit` as its reason.
    pub fn stop(&self, exit: Exit) {
        self.shared.finish(exit);
    }

    pub fn stats(&self) -> VmStats {
        use husk_devices::virtio::block::BlockMetrics as M;
        VmStats {
            vcpu_exits: self.shared.exits.load(Ordering::Relaxed),
            disks: self
                .shared
                .disk_metrics
                .iter()
                .map(|(id, m)| {
                    let d = DiskStats {
                        reads: M::get(&m.reads),
                        writes: M::get(&m.writes),
                        read_bytes: M::get(&m.read_bytes),
                        write_bytes: M::get(&m.write_bytes),
                        flushes: M::get(&m.flushes),
                        errors: M::get(&m.io_errors) + M::get(&m.invalid_requests),
                    };
                    (id.clone(), d)
                })
                .collect(),
        }
    }
}

/// Builds the VM described by `config` and starts its vCPUs. `signals`
/// (from [`take_stop_signals`]) lets SIGINT/SIGTERM stop it cleanly.
pub fn start(
    config: &VmConfig,
    signals: Option<nix::sys::signalfd::SignalFd>,
) -> Result<RunningVm, Error> {
    start_with(config, signals, None)
}

/// [`start`], running `before` between the build and the VM's threads.
pub fn start_with(
    config: &VmConfig,
    signals: Option<nix::sys::signalfd::SignalFd>,
    before: Option<BeforeThreads>,
) -> Result<RunningVm, Error> {
    // 1. KVM and vCPU limits.
    let kvm = open_kvm(config.allow_pvm)?;
    check_vcpus(&kvm, config.vcpus)?;

    // 2. Guest memory and the VM.
    let mem = memory::create(config.mem_mib, !config.fs.is_empty())?;
    let vm = Arc::new(create_bare_vm(&kvm)?);
    // At once: with the split irqchip this takes ~0.1 ms on kvm_pvm, less
    // than starting a thread to overlap it (it took 4-7 ms with KVM's
    // in-kernel PIC and IOAPIC; docs/benchmarks.md).
    let vcpu_fds = create_vcpus(&vm, config.vcpus)?;
    // At once, before anything starts one of KVM's SRCU grace periods
    // (an in-kernel PIC or IOAPIC, an ioeventfd): its expedited one is
    // then ~0.1 ms on kvm_pvm, where waiting out a normal one took 4-10 ms
    // (docs/benchmarks.md). The devices' ioeventfds come at the driver's
    // first notification (virtio.rs).
    register_memory(&vm, &mem, config.track_dirty_pages)?;

    // 3. Devices, so their command-line tokens are known before the kernel
    //    command line is written.
    let frame = Frame::new(&vm)?;
    let (out, panic) = config.console.watched_writer()?;
    let mut events: virtio::EventLoop =
        EventManager::new().map_err(|e| Error::Setup("epoll", format!("{e:?}")))?;
    let mut mmio_bus = mmio::MmioBus::default();
    let ioapic = ioapic_on(
        &mut mmio_bus,
        &vm,
        husk_devices::legacy::ioapic::Ioapic::new(x86_64::mptable::ioapic_id(config.vcpus)),
    );
    let mut attacher = virtio::Attacher::default();
    for disk in &config.disks {
        attacher.attach_disk(&vm, &mem, &mut mmio_bus, &mut events, disk)?;
    }
    for net in &config.nets {
        attacher.attach_net(&vm, &mem, &mut mmio_bus, &mut events, net)?;
    }
    if let Some(vsock) = &config.vsock {
        attacher.attach_vsock(&vm, &mem, &mut mmio_bus, &mut events, vsock)?;
    }
    for fs in &config.fs {
        attacher.attach_fs(&vm, &mem, &mut mmio_bus, &mut events, fs)?;
    }
    let pio = pio::PioDevices::new(
        out,
        frame.serial_irq.try_clone().map_err(setup("eventfd"))?,
        frame.keyboard_irq.try_clone().map_err(setup("eventfd"))?,
        frame.reset_evt.try_clone().map_err(setup("eventfd"))?,
    );

    // 4. Kernel, command line, boot structures.
    let entry = loader::load_kernel(&mem, &config.kernel)?;
    // Device tokens first: everything after a `--` in the caller's part
    // belongs to init.
    let mut cmdline = attacher.cmdline_tokens.join(" ");
    cmdline.push(' ');
    cmdline.push_str(&config.cmdline);
    let cmdline_len = loader::load_cmdline(&mem, &cmdline)?;
    x86_64::regs::write_tables(&mem, entry.mode)?;
    match entry.mode {
        x86_64::regs::EntryMode::Pvh => x86_64::boot::write_pvh(&mem)?,
        x86_64::regs::EntryMode::Long => {
            x86_64::boot::write_zero_page(&mem, entry.setup_header, cmdline_len)?
        }
    }
    x86_64::mptable::write(&mem, config.vcpus)?;

    // 5. vCPUs.
    let mut base_cpuid = kvm
        .get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .map_err(setup("KVM_GET_SUPPORTED_CPUID"))?;
    if kvm.check_extension(kvm_ioctls::Cap::TscDeadlineTimer) {
        x86_64::cpuid::offer_tsc_deadline(&mut base_cpuid);
    }
    let vcpus = vcpu_fds;
    for (id, fd) in (0..config.vcpus).zip(&vcpus) {
        vcpu::configure(fd, id, config.vcpus, &base_cpuid, &entry)?;
    }

    log::info!(
        "starting a VM: kernel {} ({:?} entry), {} vCPU(s), {} MiB, {} disk(s), {} NIC(s), vsock {}",
        config.kernel.display(),
        entry.mode,
        config.vcpus,
        config.mem_mib,
        config.disks.len(),
        config.nets.len(),
        config.vsock.is_some()
    );

    // 6. Start: vCPU threads and console input; the caller runs the loop.
    run_before(before)?;
    let source = Source {
        vm,
        mem,
        mem_mib: config.mem_mib,
        track: config.track_dirty_pages,
        msr_indices: snapshot::cpu::msr_indices(&kvm),
    };
    let shared = Shared::new(pio, mmio_bus, ioapic, &mut attacher, source, panic)?;
    Launch {
        shared,
        vcpus,
        events,
        frame,
        attacher: Some(attacher),
        signals,
        stdin: config.stdin,
    }
    .go()
}

fn check_vcpus(kvm: &Kvm, vcpus: u8) -> Result<(), Error> {
    let max_vcpus = kvm
        .get_max_vcpus()
        .min(usize::from(x86_64::mptable::MAX_VCPUS));
    if vcpus == 0 || usize::from(vcpus) > max_vcpus {
        return Err(Error::Vcpus(vcpus, max_vcpus));
    }
    Ok(())
}

/// The eventfds the port devices signal through: their interrupts
/// (irqfds) and the reset the event loop waits for.
struct Frame {
    reset_evt: EventFd,
    serial_irq: EventFd,
    keyboard_irq: EventFd,
}

impl Frame {
    fn new(vm: &VmFd) -> Result<Frame, Error> {
        let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(setup("eventfd"));
        let frame = Frame {
            reset_evt: evt()?,
            serial_irq: evt()?,
            keyboard_irq: evt()?,
        };
        vm.register_irqfd(&frame.serial_irq, SERIAL_IRQ)
            .map_err(setup("KVM_IRQFD (serial)"))?;
        vm.register_irqfd(&frame.keyboard_irq, KEYBOARD_IRQ)
            .map_err(setup("KVM_IRQFD (keyboard)"))?;
        Ok(frame)
    }
}

impl Shared {
    /// The shared state of a built VM; the devices move out of
    /// `attacher` (its metrics stay for the launch).
    fn new(
        pio: pio::PioDevices,
        mmio: mmio::MmioBus,
        ioapic: Arc<Mutex<x86_64::irqchip::IoapicDevice>>,
        attacher: &mut virtio::Attacher,
        source: Source,
        panic: console::PanicNote,
    ) -> Result<Arc<Shared>, Error> {
        Ok(Arc::new(Shared {
            pio,
            mmio,
            ioapic,
            stop: AtomicBool::new(false),
            exit: Mutex::new(None),
            exit_evt: EventFd::new(libc::EFD_NONBLOCK).map_err(setup("eventfd"))?,
            stop_request: Mutex::new(None),
            pause: Mutex::new(PauseState::default()),
            unpause: std::sync::Condvar::new(),
            vcpu_threads: Mutex::new(Vec::new()),
            exits: std::sync::atomic::AtomicU64::new(0),
            loop_passes: std::sync::atomic::AtomicU64::new(0),
            last_exit_ms: std::sync::atomic::AtomicU64::new(0),
            last_pass_ms: std::sync::atomic::AtomicU64::new(0),
            born: Instant::now(),
            disk_metrics: attacher.disk_metrics.clone(),
            panic,
            source: Mutex::new(Some(source)),
            devices: std::mem::take(&mut attacher.devices),
            seccomp: Arc::new(seccomp::Watch::new().map_err(setup("eventfd"))?),
            reset: Mutex::new(None),
        }))
    }
}

/// What starting a built VM takes: its vCPU threads, the lifecycle
/// subscriber, the signal watcher and console input.
struct Launch {
    shared: Arc<Shared>,
    vcpus: Vec<kvm_ioctls::VcpuFd>,
    events: virtio::EventLoop,
    frame: Frame,
    attacher: Option<virtio::Attacher>,
    signals: Option<nix::sys::signalfd::SignalFd>,
    stdin: bool,
}

impl Launch {
    fn go(mut self) -> Result<RunningVm, Error> {
        let shared = self.shared;
        register_signal_handler(kick_signal(), kick_handler).map_err(setup("sigaction"))?;
        let fatal = self.attacher.as_ref().and_then(|a| a.fatal.clone());
        let nets = self
            .attacher
            .as_ref()
            .map(|a| a.net_metrics.as_slice())
            .unwrap_or_default();
        report::watch(&shared, nets);
        self.events.add_subscriber(Arc::new(Mutex::new(Lifecycle {
            shared: shared.clone(),
            reset_evt: self.frame.reset_evt,
            fatal,
        })));
        let watcher = self
            .signals
            .map(|s| signals::Watcher::start(shared.clone(), s))
            .transpose()
            .map_err(setup("spawning the signal thread"))?;
        let input = if self.stdin {
            Some(console::StdinPump::start(shared.clone())?)
        } else {
            None
        };
        let (vm, mem) = {
            let source = pio::lock(&shared.source);
            let source = source.as_ref().expect("a new VM has its source");
            (source.vm.clone(), source.mem.clone())
        };
        let filter = Arc::new(seccomp::vcpu_filter(&seccomp::denied())?);
        let mut threads = Vec::new();
        for (id, fd) in self.vcpus.into_iter().enumerate() {
            let for_vcpu = shared.clone();
            let filter = filter.clone();
            let t = std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || vcpu::run(fd, id as u8, for_vcpu, &filter))
                .map_err(setup("spawning a vCPU thread"))?;
            pio::lock(&shared.vcpu_threads).push(t.as_pthread_t() as usize);
            threads.push(t);
        }
        Ok(RunningVm {
            shared,
            events: self.events,
            threads,
            input,
            watcher,
            _vm: vm,
            _mem: mem,
        })
    }
}

/// Builds a VM from a snapshot and starts it, paused unless
/// `config.resume`.
pub fn restore(
    config: &snapshot::RestoreConfig,
    signals: Option<nix::sys::signalfd::SignalFd>,
) -> Result<RunningVm, Error> {
    restore_with(config, signals, None)
}

/// [`restore`], running `before` between the build and the VM's threads.
pub fn restore_with(
    config: &snapshot::RestoreConfig,
    signals: Option<nix::sys::signalfd::SignalFd>,
    before: Option<BeforeThreads>,
) -> Result<RunningVm, Error> {
    let kvm = open_kvm(config.allow_pvm)?;
    let state: snapshot::VmState =
        snapshot::file::read(&config.snapshot.state).map_err(|e| Error::Restore(e.to_string()))?;
    let vcpu_count = u8::try_from(state.vcpus.len())
        .map_err(|_| Error::Restore(format!("{} vCPUs in the snapshot", state.vcpus.len())))?;
    check_vcpus(&kvm, vcpu_count)?;
    // A virtiofsd maps guest memory from the fd it is handed.
    let shared_ram = state
        .devices
        .iter()
        .any(|d| matches!(d.spec, snapshot::devices::DeviceSpec::Fs { .. }));
    let mem = snapshot::memory::map(&config.snapshot.mem, &state.ram, shared_ram, config.memory)
        .map_err(Error::Restore)?;
    let vm = Arc::new(create_bare_vm(&kvm)?);
    let vcpu_fds = create_vcpus(&vm, vcpu_count)?;
    // Before any vCPU state: restoring kvmclock's MSR reads guest memory.
    register_memory(&vm, &mem, config.track_dirty_pages)?;
    let frame = Frame::new(&vm)?;
    let (out, panic) = config.console.watched_writer()?;
    let pio = pio::PioDevices::restored(
        &state.pio,
        out,
        frame.serial_irq.try_clone().map_err(setup("eventfd"))?,
        frame.keyboard_irq.try_clone().map_err(setup("eventfd"))?,
        frame.reset_evt.try_clone().map_err(setup("eventfd"))?,
    )
    .map_err(Error::Restore)?;
    snapshot::cpu::restore_vm(&vm, &state.kvm).map_err(Error::Restore)?;
    let chip =
        husk_devices::legacy::ioapic::Ioapic::from_state(&state.ioapic).map_err(Error::Restore)?;
    let mut events: virtio::EventLoop =
        EventManager::new().map_err(|e| Error::Setup("epoll", format!("{e:?}")))?;
    let (mut mmio_bus, mut attacher) =
        restore_devices(&vm, &mem, &mut events, &state.devices, &config.overrides)?;
    let ioapic = ioapic_on(&mut mmio_bus, &vm, chip);
    // The routes before the devices raise again what they had pending.
    pio::lock(&ioapic)
        .apply()
        .map_err(|e| Error::Restore(format!("KVM_SET_GSI_ROUTING: {e}")))?;
    let vcpus = vcpu_fds;
    for (id, (saved, fd)) in state.vcpus.iter().zip(&vcpus).enumerate() {
        snapshot::cpu::restore_vcpu(fd, saved)
            .map_err(|e| Error::Restore(format!("vCPU {id}: {e}")))?;
    }
    // What the devices raised while they were restored (a pending status,
    // a vsock transport reset, a disk's new size) reached LAPICs that
    // KVM_SET_LAPIC has overwritten since: raise it again.
    for (i, d) in attacher.devices.iter().enumerate() {
        pio::lock(&d.transport)
            .interrupt()
            .resend_pending()
            .map_err(|e| Error::Restore(format!("device {i}: interrupt: {e}")))?;
    }
    let source = Source {
        vm,
        mem,
        mem_mib: state.mem_mib,
        track: config.track_dirty_pages,
        msr_indices: snapshot::cpu::msr_indices(&kvm),
    };
    let shared = Shared::new(pio, mmio_bus, ioapic, &mut attacher, source, panic)?;
    pio::lock(&shared.pause).paused = !config.resume;
    log::info!(
        "restored a VM from {}: {} vCPU(s), {} MiB",
        config.snapshot.state.display(),
        vcpu_count,
        state.mem_mib
    );
    run_before(before)?;
    Launch {
        shared,
        vcpus,
        events,
        frame,
        attacher: Some(attacher),
        signals,
        stdin: config.stdin,
    }
    .go()
}

/// Attaches the snapshot's devices in their order (so each gets its
/// window and IRQ back), with the host resources `overrides` gives, and
/// puts their transports' state back: a device the driver had started
/// runs again on its queues. The vsock device's guest is told its
/// connections are gone, a disk on a new file that its size may have
/// changed. The caller then puts the IOAPIC's routes back, before the
/// devices raise again what they had pending.
fn restore_devices(
    vm: &Arc<VmFd>,
    mem: &memory::GuestMemory,
    events: &mut virtio::EventLoop,
    devices: &[snapshot::devices::DeviceState],
    overrides: &snapshot::Overrides,
) -> Result<(mmio::MmioBus, virtio::Attacher), Error> {
    let specs: Vec<_> = devices.iter().map(|d| &d.spec).collect();
    if let Some(why) = overrides.unmatched(&specs) {
        return Err(Error::Restore(why));
    }
    let mut bus = mmio::MmioBus::default();
    let mut attacher = virtio::Attacher::default();
    for (i, d) in devices.iter().enumerate() {
        let (spec, changed) = overrides.apply(&d.spec);
        let new_nic = match &spec {
            snapshot::devices::DeviceSpec::Net { id, limits, .. } => {
                overrides.net(id).map(|o| (o, *limits))
            }
            _ => None,
        };
        match new_nic {
            Some((o, limits)) => {
                let net = NetConfig {
                    host: o.host.clone(),
                    mac: Some(o.mac),
                    id: o.id.clone(),
                    limits,
                };
                attacher.attach_net(vm, mem, &mut bus, events, &net)?;
            }
            None => attacher.attach_spec(vm, mem, &mut bus, events, &spec)?,
        }
        let attached = attacher
            .devices
            .last()
            .ok_or_else(|| Error::Restore(format!("device {i} was not attached")))?;
        let mut transport = pio::lock(&attached.transport);
        transport
            .restore(&d.transport)
            .map_err(|e| Error::Restore(format!("device {i}: {e}")))?;
        if changed && matches!(spec, snapshot::devices::DeviceSpec::Disk { .. }) {
            transport
                .config_changed()
                .map_err(|e| Error::Restore(format!("device {i}: {e}")))?;
        }
        drop(transport);
        if let Some(vsock) = &attached.vsock {
            pio::lock(vsock).transport_reset();
        }
    }
    Ok((bus, attacher))
}

impl RunningVm {
    /// The event loop, to add subscribers (the API) before [`wait`].
    ///
    /// [`wait`]: RunningVm::wait
    pub fn events(&mut self) -> &mut virtio::EventLoop {
        &mut self.events
    }

    pub fn controls(&self) -> VmControls {
        VmControls {
            shared: self.shared.clone(),
        }
    }

    /// Runs the device event loop until the VM stops, then joins every
    /// thread and reports why it stopped.
    pub fn wait(mut self) -> Outcome {
        let shared = self.shared.clone();
        // On a thread of its own under its seccomp filter; this one, with
        // no filter, winds the VM down afterwards.
        let events = &mut self.events;
        let looped = std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name("events".into())
                .spawn_scoped(scope, || run_events(events, &shared))
                .map(|t| t.join())
        });
        match looped {
            Err(e) => shared.finish(Exit::Failed(format!("spawning the event loop: {e}"))),
            Ok(Err(_)) => shared.finish(Exit::Failed("the event loop panicked".into())),
            Ok(Ok(())) => {}
        }
        // Stop: wake paused vCPUs, kick running ones out of KVM_RUN.
        shared.unpause.notify_all();
        for t in std::mem::take(&mut self.threads) {
            // A kicked vCPU leaves KVM_RUN within microseconds: wait that
            // long first (the exit is timed), then longer between kicks.
            let mut wait = Duration::from_micros(20);
            while !t.is_finished() {
                shared.unpause.notify_all();
                let _ = t.kill(kick_signal());
                std::thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(2));
            }
            let _ = t.join();
        }
        // The VM fd and memory are this struct's alone from now on.
        pio::lock(&shared.source).take();
        if let Some(input) = self.input.take() {
            input.stop();
        }
        if let Some(w) = self.watcher.take() {
            w.stop();
        }
        let exit = pio::lock(&shared.exit)
            .clone()
            .unwrap_or(Exit::Failed("stopped without a reason".into()));
        let guest_status = shared.pio.reported_status();
        // A guest that reset without a status after a signal asked it to
        // stop (Ctrl-Alt-Del) was stopped by that signal: its caller sees
        // 128 + the signal, not the 0 of a guest that ended on its own.
        let exit = match (exit, shared.stop_signal()) {
            (Exit::Reset | Exit::Halted, Some(sig)) if guest_status.is_none() => Exit::Stopped(sig),
            (exit, _) => exit,
        };
        let _ = pio::lock(&shared.pio.serial).writer_mut().flush();
        let reset = *pio::lock(&shared.reset);
        Outcome {
            exit,
            guest_status,
            guest_panic: shared.panic.reason(),
            reset,
        }
    }
}

/// The device event loop until the VM stops.
fn run_events(events: &mut virtio::EventLoop, shared: &Shared) {
    if let Err(e) = seccomp::guard(seccomp::Kind::EventLoop, &shared.seccomp) {
        shared.finish(Exit::Failed(format!("event loop: {e}")));
        return;
    }
    while !shared.stopping() {
        // No timeout: every stop writes exit_evt, and the grace period
        // of a stop request is the signal thread's to watch.
        let ran = events.run();
        shared.count_pass();
        if let Err(e) = ran {
            shared.finish(Exit::Failed(format!("event loop: {e:?}")));
        }
    }
}

/// Builds and runs the VM described by `config` until it stops.
pub fn run(
    config: &VmConfig,
    signals: Option<nix::sys::signalfd::SignalFd>,
) -> Result<Outcome, Error> {
    Ok(start(config, signals)?.wait())
}

use std::io::Write;
