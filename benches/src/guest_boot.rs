//! Linux boot to the guest's first command, husk (`husk boot` and the
//! `husk-vmm` executable) vs QEMU `-M microvm` and Firecracker,
//! interleaved in one run (inside the testbed where /dev/kvm cannot boot
//! Linux: `benches/run guest-boot`). Both boot the project's vmlinux and a
//! copy of rootfs.ext4 on virtio-blk, 1 vCPU, 256 MiB, `quiet`; the guest
//! runs `echo <marker>`.
//! - launch → marker on stdout: VMM start + kernel boot + init + exec;
//! - launch → exit: plus the init's shutdown (sync, remount, status).
//!
//! Usage: guest-boot [--runs N] [--husk PATH] [--husk-vmm PATH]
//!        [--firecracker PATH | --no-firecracker]
//! (`--husk-vmm` defaults to `husk-vmm` beside `--husk`; Firecracker to
//! `husk_benches::FIRECRACKER`, "not installed" without it.)

use husk_benches::kvm_stats::{self, Counters, Seen};
use husk_benches::{config_boot_args, median, ConfigVm, ConfigVmm};
use husk_tests::guest_artifacts;
use husk_tests::qemu::MicroVm;
use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const MARKER: &str = "husk-boot-marker";

/// How long one boot may take before it is killed and reported (a boot
/// takes 2-4 s in the testbed; a VM stuck in L1 would hold the run).
const BOOT_BOUND: Duration = Duration::from_secs(90);

/// What one boot gave: launch → marker and launch → exit (ms), the VMM's
/// resident memory when the marker came (KiB; the guest RAM it touched
/// and its own), and what KVM's debugfs showed of the VM.
struct Boot {
    marker_ms: f64,
    exit_ms: f64,
    rss_kib: Option<u64>,
    seen: Seen,
}

/// One boot (see [`Boot`]), KVM's counters read when `count` (see
/// `kvm_stats`); an error if it printed no marker or did not end within
/// [`BOOT_BOUND`].
fn time_to_marker(mut cmd: Command, count: bool) -> Result<Boot, String> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the VMM");
    let watcher = count.then(|| kvm_stats::Watcher::start(child.id()));
    let (ended, killed) = watchdog(child.id());
    let mut out = child.stdout.take().unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    let mut marker_at = None;
    let mut rss_kib = None;
    while let Ok(n) = out.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if marker_at.is_none() && String::from_utf8_lossy(&seen).contains(MARKER) {
            marker_at = Some(start.elapsed());
            rss_kib = husk_tests::vm_rss_kib(child.id());
        }
    }
    let _ = ended.send(());
    child.wait().unwrap();
    let exit = start.elapsed();
    let seen_vm = watcher.map(|w| w.finish()).unwrap_or_default();
    let output = String::from_utf8_lossy(&seen);
    if killed.join().unwrap_or(false) {
        return Err(format!(
            "did not end within {BOOT_BOUND:?} (killed); marker {}, output: {output}",
            if marker_at.is_some() {
                "seen"
            } else {
                "not seen"
            }
        ));
    }
    let marker = marker_at.ok_or_else(|| format!("no marker in: {output}"))?;
    Ok(Boot {
        marker_ms: marker.as_secs_f64() * 1e3,
        exit_ms: exit.as_secs_f64() * 1e3,
        rss_kib,
        seen: seen_vm,
    })
}

/// Kills `pid` unless told within [`BOOT_BOUND`] that it ended; the
/// thread says whether it killed.
fn watchdog(pid: u32) -> (mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let (tx, rx) = mpsc::channel::<()>();
    let thread = std::thread::spawn(move || {
        if rx.recv_timeout(BOOT_BOUND) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) on the bench's own child, not yet reaped
            // (the caller waits for it only after this thread is told).
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            return true;
        }
        false
    });
    (tx, thread)
}

/// How one VMM of the round is started, afresh each time.
type Launch<'a> = Box<dyn Fn() -> Command + 'a>;

/// The line husk-vmm and Firecracker both boot with: husk's own (reset
/// through the i8042, no probing of its absent AUX port, `quiet`), the
/// status on the console as QEMU's run has it. QEMU's microvm has no
/// i8042, so its line resets by triple fault and probes nothing.
fn shared_cmdline() -> String {
    use husk_wire::cmdline;
    format!(
        "{} root=/dev/vda rw husk.status=console {}",
        cmdline::BASE,
        cmdline::command_param(&["echo", MARKER])
    )
}

/// husk-vmm or Firecracker booting `vm`'s kernel and disk from a config
/// file, with [`shared_cmdline`].
fn config_file_boot(vmm: ConfigVmm, program: &str, dir: &std::path::Path, vm: &MicroVm) -> Command {
    let line = shared_cmdline();
    let config = ConfigVm {
        kernel: &vm.kernel,
        boot_args: &line,
        root: Some(&vm.rootfs),
        mem_mib: 256,
    };
    let name = match vmm {
        ConfigVmm::HuskVmm => "husk-vmm",
        ConfigVmm::Firecracker => "firecracker",
    };
    let mut cmd = Command::new(program);
    cmd.args(config_boot_args(vmm, dir, name, &config));
    cmd
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut runs = 5;
    let mut husk = None;
    let mut husk_vmm = None;
    let mut firecracker = Some(String::from(husk_benches::FIRECRACKER));
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--runs" => runs = it.next().and_then(|v| v.parse().ok()).expect("--runs N"),
            "--husk" => husk = Some(it.next().expect("--husk PATH").clone()),
            "--husk-vmm" => husk_vmm = Some(it.next().expect("--husk-vmm PATH").clone()),
            "--firecracker" => firecracker = Some(it.next().expect("--firecracker PATH").clone()),
            "--no-firecracker" => firecracker = None,
            other => panic!("unknown argument {other}"),
        }
    }
    let husk = husk.unwrap_or_else(|| husk_tests::husk::binary().display().to_string());
    let husk_vmm = husk_vmm.unwrap_or_else(|| {
        let p = std::path::Path::new(&husk).with_file_name("husk-vmm");
        p.display().to_string()
    });
    husk_tests::require_linux_kvm();
    let a = guest_artifacts();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("rootfs.ext4");
    let vm = MicroVm::new(a.vmlinux.clone(), root.clone()).command(&["echo", MARKER]);
    let firecracker = firecracker.filter(|f| std::path::Path::new(f).is_file());
    if firecracker.is_none() {
        println!("Firecracker: not installed (--firecracker PATH)");
    }
    // The same vmlinux and root disk for all; husk-vmm and Firecracker
    // the same kernel command line too (`shared_cmdline`); `husk boot`
    // writes its own (the status on its port instead of the console).
    let mut peers: Vec<(&str, Launch)> = vec![
        (
            "husk boot",
            Box::new(|| {
                let mut h = Command::new(&husk);
                h.args(["boot", "--memory", "256", "--kernel"])
                    .arg(&a.vmlinux)
                    .arg("--rootfs")
                    .arg(&root)
                    .args(["--", "echo", MARKER]);
                h
            }),
        ),
        (
            "husk-vmm",
            Box::new(|| config_file_boot(ConfigVmm::HuskVmm, &husk_vmm, dir.path(), &vm)),
        ),
        (
            "qemu -M microvm",
            Box::new(|| {
                let mut q = Command::new(husk_tests::qemu::QEMU);
                q.args(vm.qemu_args());
                q
            }),
        ),
    ];
    if let Some(fc) = &firecracker {
        peers.push((
            "firecracker",
            Box::new(|| config_file_boot(ConfigVmm::Firecracker, fc, dir.path(), &vm)),
        ));
    }
    let count = kvm_stats::available();
    if !count {
        println!("KVM's counters: not readable (no /sys/kernel/debug/kvm)");
    }
    let mut marks: Vec<Vec<(f64, f64)>> = peers.iter().map(|_| Vec::new()).collect();
    let mut rss: Vec<Vec<f64>> = peers.iter().map(|_| Vec::new()).collect();
    let mut counted: Vec<Vec<Counters>> = peers.iter().map(|_| Vec::new()).collect();
    let mut setup: Vec<Vec<(f64, f64)>> = peers.iter().map(|_| Vec::new()).collect();
    let mut failures = Vec::new();
    warm_host_memory();
    for i in 0..=runs {
        // Each round starts with the next VMM: which one runs after which
        // changes what memory it finds (see `warm_host_memory`).
        for j in 0..peers.len() {
            let k = (i + j) % peers.len();
            let (name, cmd) = &peers[k];
            std::fs::copy(&a.rootfs_ext4, &root).unwrap();
            let boot = match time_to_marker(cmd(), count) {
                Ok(r) => r,
                Err(why) => {
                    eprintln!("run {i}: {name} FAILED: {why}");
                    failures.push(format!("round {i}, {name}: {why}"));
                    continue;
                }
            };
            let (m, e, seen) = (boot.marker_ms, boot.exit_ms, boot.seen);
            let c = seen.counters;
            eprintln!(
                "run {i}: {name} {m:.0}/{e:.0} ms, {} exits",
                c.get("exits").copied().unwrap_or(0)
            );
            // The first round warms the page cache and first-run costs.
            if i > 0 {
                marks[k].push((m, e));
                if let Some(kib) = boot.rss_kib {
                    rss[k].push(kib as f64 / 1024.0);
                }
                // A VM never read (it came and went between two reads, or
                // debugfs did not show it) is missing, not a row of zeros.
                if c.is_empty() && count {
                    eprintln!("run {i}: {name}: KVM's counters were not seen");
                } else {
                    counted[k].push(c);
                }
                if let (Some(vm), Some(run)) = (seen.vm_at, seen.running_at) {
                    setup[k].push((vm.as_secs_f64() * 1e3, run.as_secs_f64() * 1e3));
                }
            }
        }
    }
    println!("Linux guest (vmlinux + ext4 root on virtio-blk), 1 vCPU, 256 MiB, quiet; {runs} rounds, interleaved, medians");
    for f in &failures {
        println!("FAILED (left out of the medians): {f}");
    }
    println!("| VMM | launch → first command output (ms) | launch → exit (ms) | VmRSS at the output (MiB) |");
    println!("|---|---|---|---|");
    let medians: Vec<(f64, f64)> = marks
        .iter()
        .map(|v| {
            (
                median(v.iter().map(|x| x.0).collect()),
                median(v.iter().map(|x| x.1).collect()),
            )
        })
        .collect();
    let rss: Vec<Option<f64>> = rss
        .into_iter()
        .map(|v| (!v.is_empty()).then(|| median(v)))
        .collect();
    for (((name, _), (m, e)), r) in peers.iter().zip(&medians).zip(&rss) {
        let r = r.map_or("–".to_string(), |r| format!("{r:.1}"));
        println!("| {name} | {m:.0} | {e:.0} | {r} |");
    }
    if count {
        print_setup(&peers, &setup);
        print_counters(&peers, &counted);
    }
    for ((own, own_rss), (oname, _)) in medians.iter().zip(&rss).zip(&peers).take(2) {
        for ((peer, peer_rss), (pname, _)) in medians.iter().zip(&rss).zip(&peers).skip(2) {
            let rss_ratio = match (own_rss, peer_rss) {
                (Some(o), Some(p)) => format!(", RSS {:.2}x", o / p),
                _ => String::new(),
            };
            println!(
                "{oname} / {pname}: {:.2}x to output, {:.2}x to exit{rss_ratio}",
                own.0 / peer.0,
                own.1 / peer.1
            );
        }
    }
}

/// Touches most of the free memory once and frees it. In the testbed the
/// first touch of an L1 page also faults in the host (QEMU's RAM is
/// populated on demand), and loading a 21 MB kernel into huge pages took
/// 70-650 ms depending on whether L1 handed out pages touched before (the
/// same number of huge-page faults each time): the VMM after a peer that
/// freed much memory (QEMU) started faster. Natively this costs a moment.
fn warm_host_memory() {
    let available = husk_tests::mem_available_kib().unwrap_or(0) as usize * 1024;
    let bytes = (available / 10 * 8).min(8 << 30);
    let mut buf = vec![0u8; bytes];
    for i in (0..bytes).step_by(4096) {
        // Volatile: the writes must reach memory, not be optimized away.
        // SAFETY: `i` is within `buf`.
        unsafe { std::ptr::write_volatile(buf.as_mut_ptr().add(i), 1) };
    }
    drop(buf);
}

/// The VMM's part of the boot, as KVM's debugfs shows it: launch → the VM
/// exists, launch → its first exit (the guest ran), medians.
fn print_setup(peers: &[(&str, Launch)], setup: &[Vec<(f64, f64)>]) {
    println!();
    println!("The VMM's setup, from KVM's debugfs read every 5 ms (medians; within ~5 ms)");
    println!("| VMM | launch → VM created (ms) | launch → guest's first exit (ms) |");
    println!("|---|---|---|");
    for ((name, _), v) in peers.iter().zip(setup) {
        if v.is_empty() {
            println!("| {name} | – | – |");
            continue;
        }
        let vm = median(v.iter().map(|x| x.0).collect());
        let run = median(v.iter().map(|x| x.1).collect());
        println!("| {name} | {vm:.0} | {run:.0} |");
    }
}

/// KVM's counters per VMM, medians over the rounds, the largest first.
fn print_counters(peers: &[(&str, Launch)], counted: &[Vec<Counters>]) {
    let all: Vec<&Counters> = counted.iter().flatten().collect();
    println!();
    println!("KVM's counters for the VM, launch → exit (medians over the rounds)");
    println!(
        "| counter | {} |",
        peers.iter().map(|p| p.0).collect::<Vec<_>>().join(" | ")
    );
    println!("|---|{}", "---|".repeat(peers.len()));
    for name in kvm_stats::largest(&all, 16) {
        let row: Vec<String> = counted
            .iter()
            .map(|runs| {
                let v = runs
                    .iter()
                    .map(|c| c.get(&name).copied().unwrap_or(0) as f64)
                    .collect();
                format!("{:.0}", median(v))
            })
            .collect();
        println!("| {name} | {} |", row.join(" | "));
    }
}
