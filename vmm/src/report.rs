//! Where the VMs and their virtio-net queues stand, on demand: SIGUSR1 to
//! the VMM's process prints a line per VM (vCPU exits so far, paused,
//! stopping: is the guest running at all?) and one per network interface
//! on stderr (avail.idx the
//! guest posted, what the device took and completed, notifications and
//! interrupts per queue, TAP EAGAINs and drops), so a stalled transfer
//! shows which side stopped. The signal handler only writes to an eventfd
//! that lives as long as the process; one thread reads it and prints, so a
//! report needs neither the event loop nor a lock a stuck device holds.

use husk_devices::virtio::net::NetMetrics;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use vmm_sys_util::eventfd::EventFd;

/// The signal that asks for a report.
pub const REPORT_SIGNAL: libc::c_int = libc::SIGUSR1;

/// The eventfd the handler writes to (-1 until the thread runs). Never
/// closed, so the handler never writes to a reused fd number.
static REPORT_FD: AtomicI32 = AtomicI32::new(-1);
/// The interfaces of the VMs alive in this process.
static NETS: Mutex<Vec<(String, Weak<NetMetrics>)>> = Mutex::new(Vec::new());
/// The VMs alive in this process.
static VMS: Mutex<Vec<Weak<crate::Shared>>> = Mutex::new(Vec::new());
/// The eventfd the handler writes to; None if it or the handler could not
/// be set up.
static EVENTS: OnceLock<Option<EventFd>> = OnceLock::new();
/// The thread that prints reports, while one runs.
static THREAD: Mutex<Option<std::thread::JoinHandle<()>>> = Mutex::new(None);
/// Tells the thread to end ([`end_thread`]).
static ENDING: AtomicBool = AtomicBool::new(false);
/// The report thread's watch while no report runs.
static IDLE: OnceLock<std::io::Result<crate::seccomp::Watch>> = OnceLock::new();

extern "C" fn on_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = REPORT_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a live u64, the
        // 8 bytes an eventfd takes. A failed write only loses a report.
        unsafe { libc::write(fd, std::ptr::addr_of!(one).cast(), 8) };
    }
}

/// Adds a VM's interfaces to the report (dropped with the VM's devices),
/// installing the handler the first time and starting the thread when none
/// runs. Without them (no eventfd, no thread) there is no report, and
/// nothing else changes.
pub fn watch(vm: &Arc<crate::Shared>, nets: &[(String, Arc<NetMetrics>)]) {
    let mut vms = VMS.lock().unwrap_or_else(|e| e.into_inner());
    vms.retain(|v| v.strong_count() > 0);
    vms.push(Arc::downgrade(vm));
    drop(vms);
    let mut list = NETS.lock().unwrap_or_else(|e| e.into_inner());
    list.retain(|(_, m)| m.strong_count() > 0);
    list.extend(nets.iter().map(|(id, m)| (id.clone(), Arc::downgrade(m))));
    drop(list);
    let Some(evt) = EVENTS.get_or_init(listen) else {
        return;
    };
    let mut thread = THREAD.lock().unwrap_or_else(|e| e.into_inner());
    if thread.is_none() {
        *thread = std::thread::Builder::new()
            .name("queue-report".into())
            .spawn(move || serve(evt))
            .ok();
    }
}

/// Ends the report thread, if one runs, and waits for it: called before
/// the process enters a jail. Namespaces are made per thread, so a thread
/// started before (by a pool template's VM) would stay in the host's; the
/// next VM's [`watch`] starts one inside. A report asked for meanwhile is
/// lost.
pub fn end_thread() {
    let Some(thread) = THREAD.lock().unwrap_or_else(|e| e.into_inner()).take() else {
        return;
    };
    ENDING.store(true, Ordering::Release);
    if let Some(Some(evt)) = EVENTS.get() {
        // A thread that ended on its own (no filter) reads nothing; the
        // next one then fails the same way, before it reads.
        let _ = evt.write(1);
    }
    let _ = thread.join();
    ENDING.store(false, Ordering::Release);
}

/// The eventfd and the handler that writes to it, once per process.
fn listen() -> Option<EventFd> {
    let evt = EventFd::new(0).ok()?;
    REPORT_FD.store(evt.as_raw_fd(), Ordering::Relaxed);
    vmm_sys_util::signal::register_signal_handler(REPORT_SIGNAL, on_signal).ok()?;
    Some(evt)
}

fn serve(evt: &EventFd) {
    // It may outlive any VM: a forbidden call outside a report has no VM
    // to stop (a report points the filter at a live one).
    let idle = match IDLE.get_or_init(crate::seccomp::Watch::new) {
        Ok(w) => w,
        Err(e) => return eprintln!("husk: no report thread: {e}"),
    };
    // Without its filter it does not run, quietly: the VM's own threads
    // meet the same error (a bad HUSK_SECCOMP_DENY) first and say it in
    // the one line the VM's failure gets.
    if crate::seccomp::guard(crate::seccomp::Kind::Report, idle).is_err() {
        return;
    }
    // Blocking reads: the thread sleeps until a report is asked for.
    while evt.read().is_ok() {
        if ENDING.load(Ordering::Acquire) {
            return;
        }
        print_now();
    }
}

/// Prints the report on stderr now: a caller that gives up on a guest
/// (its agent never answered) says where things stood.
pub fn print_now() {
    let vms = VMS.lock().unwrap_or_else(|e| e.into_inner());
    let live: Vec<_> = vms.iter().filter_map(Weak::upgrade).collect();
    drop(vms);
    // A call outside the report thread's filter stops a VM it reports on.
    match live.first().map(|vm| vm.seccomp.clone()) {
        Some(watch) => crate::seccomp::with_watch(&watch, || print_vms(live)),
        None => print_vms(live),
    }
}

fn print_vms(live: Vec<Arc<crate::Shared>>) {
    for vm in &live {
        eprintln!("husk: {}", vm.report());
        eprintln!("husk: {}", vm.vcpu_positions());
    }
    drop(live);
    let list = NETS.lock().unwrap_or_else(|e| e.into_inner());
    for (id, m) in list.iter() {
        if let Some(m) = m.upgrade() {
            eprintln!("husk: {}", m.report(id));
        }
    }
    drop(list);
    eprintln!("husk: threads: {}", threads());
}

/// Each thread of this process: name, scheduler state and, when it
/// sleeps, where in the kernel (a deadlock shows as threads parked on
/// futexes; a guest that runs as a vCPU thread in KVM).
fn threads() -> String {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return "unreadable".into();
    };
    let mut out: Vec<String> = tasks
        .filter_map(Result::ok)
        .map(|t| {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            let stat = read("stat");
            // The state follows the parenthesized name, which may hold spaces.
            let state = stat
                .rfind(')')
                .and_then(|i| stat[i + 1..].split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            let wchan = read("wchan");
            let wchan = if wchan.is_empty() || wchan == "0" {
                String::new()
            } else {
                format!(" {wchan}")
            };
            format!("{} {state}{wchan}", read("comm").trim())
        })
        .collect();
    out.sort();
    out.join(", ")
}
