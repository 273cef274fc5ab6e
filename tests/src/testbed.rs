//! The nested testbed's own failures, told apart from husk's by their
//! signature (tests/testbed/README.md, "An L2 vCPU resumed at L1's
//! address"): only inside the testbed, and only what its evidence covers.

/// Whether this process runs in the testbed's L1 (tests/testbed/run sets
/// it; under hardware KVM nothing is excused).
pub fn inside() -> bool {
    std::env::var_os("HUSK_TESTBED").is_some()
}

/// Where L1's kvm_amd enters and leaves L2 (`__svm_vcpu_run`), from L1's
/// kallsyms: a stuck L2 vCPU reported there holds L1's RIP, not its own.
fn l1_vcpu_run() -> Option<u64> {
    let syms = std::fs::read_to_string("/proc/kallsyms").ok()?;
    syms.lines().find_map(|l| {
        let mut f = l.split_whitespace();
        let (addr, _, name) = (f.next()?, f.next()?, f.next()?);
        (name == "__svm_vcpu_run")
            .then(|| u64::from_str_radix(addr, 16).ok())
            .flatten()
    })
}

/// Why a failed `husk run` or `husk boot` is the testbed's, from its stderr
/// (the report's `vCPU N rip 0x…`) and its VMM log (HUSK_LOG); `None`
/// outside the testbed or for any other failure.
pub fn corruption(stderr: &str, log: &str) -> Option<String> {
    inside()
        .then(|| signature(stderr, log, l1_vcpu_run()))
        .flatten()
}

/// Says so on stderr (past libtest's capture) when a failed run's stderr
/// and VMM log carry the testbed's corruption signature: the testbed's
/// cargo-runner runs a failed test that said so once more, and says that
/// out loud (tests/testbed/README.md).
pub fn flag(stderr: &str, log: &str) {
    if let Some(why) = corruption(stderr, log) {
        let line = format!("\n{MARK} {why}\n");
        // SAFETY: write(2) of a live buffer to fd 2.
        unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
    }
}

/// What the runner looks for (tests/testbed/cargo-runner).
pub const MARK: &str = "[e2e] testbed corruption:";

fn signature(stderr: &str, log: &str, vcpu_run: Option<u64>) -> Option<String> {
    if let Some(start) = vcpu_run.filter(|a| *a != 0) {
        let stuck = stderr.lines().find_map(|l| {
            let hex = l.split(" rip 0x").nth(1)?.split_whitespace().next()?;
            u64::from_str_radix(hex, 16).ok()
        });
        if let Some(rip) = stuck.filter(|r| (start..start + 0x1000).contains(r)) {
            return Some(format!(
                "the guest's vCPU sat at {rip:#x}, in L1's kvm_amd __svm_vcpu_run ({start:#x})"
            ));
        }
    }
    // husk logs a triple fault at warn (HUSK_LOG), and names the reset in
    // the error of a run (`husk run`, `husk boot`, what `husk compare`
    // says of a failed husk run).
    let faulted = |text: &str| text.contains("triple fault (KVM_EXIT_SHUTDOWN)");
    if faulted(log) || faulted(stderr) {
        return Some(
            "the guest triple-faulted (QEMU microvm's guests reset the same way in L1)".to_string(),
        );
    }
    // The peer's side of the same reset: with -no-reboot QEMU exits on it,
    // and its guest says nothing of it (`husk compare` reports a failed
    // QEMU run with the console's last lines). A guest's own end says so
    // on the console: a panic ("Kernel panic", which `panic=1` then turns
    // into the reset), a dead init; husk plays no part in QEMU's run.
    stderr
        .lines()
        .any(|l| {
            l.contains(" in qemu: failed: ")
                && l.contains("the guest reported no exit status;")
                && !l.contains("Kernel panic")
                && !l.contains("Attempted to kill init")
        })
        .then(|| "QEMU microvm's guest reset without a word, as its guests do in L1".into())
        .or_else(|| qemu_stopped_answering(stderr))
}

/// A QEMU guest that stopped answering a host tool (`husk compare`'s
/// applications): what husk's guests do when their vCPU sits at L1's
/// `__svm_vcpu_run` (the full suite of 2026-12-07: sysbench against
/// QEMU's MariaDB, no answer for 240 s). QEMU's vCPU cannot be asked
/// where it sits; husk plays no part in QEMU's run.
fn qemu_stopped_answering(stderr: &str) -> Option<String> {
    stderr
        .lines()
        .any(|l| l.contains(" in qemu: failed: ") && l.contains("got no answer from the server in"))
        .then(|| "QEMU microvm's guest stopped answering under load, as husk's do in L1".into())
}

#[cfg(test)]
mod tests {
    use super::signature;

    #[test]
    fn signatures() {
        let at = Some(0xffff_ffff_c05a_9d30);
        let stuck = "husk: vm: ...\nhusk: vCPU 0 rip 0xffffffffc05a9dcc mp_state 0 rflags 0x10246";
        assert!(signature(stuck, "", at).unwrap().contains("__svm_vcpu_run"));
        // The guest's own address, or no kallsyms: not excused.
        let own = "husk: vCPU 0 rip 0xffffffff8102e08b mp_state 0";
        assert_eq!(signature(own, "", at), None);
        assert_eq!(signature(stuck, "", None), None);
        let log = "[WARN] vCPU 0: triple fault (KVM_EXIT_SHUTDOWN), the guest resets; 297 exits";
        assert!(signature("", log, None).unwrap().contains("triple"));
        let compare = "husk: compare: seq_write in husk: failed: disk: exited with exit status: 1: husk: the VM stopped | [WARN] vCPU 0: triple fault (KVM_EXIT_SHUTDOWN), the guest resets";
        assert!(signature(compare, "", None).unwrap().contains("triple"));
        assert_eq!(signature("husk: the VM stopped", "[INFO] reset", at), None);
        let qemu = "husk: compare: memory_pss in qemu: failed: memory: the guest reported no exit status; 0 console lines, ending []; stderr: ";
        assert!(signature(qemu, "", None).unwrap().contains("QEMU"));
        // Mid-workload too (CI, 2026-12-06: after the shared directory's
        // seq-read), but not a guest that said it panicked.
        let mid = "husk: compare: dir_create in qemu: failed: files: the guest reported no exit status; 2 console lines, ending [\"op=seq-write bytes=33554432\", \"op=seq-read bytes=33554432\"]; stderr: ";
        assert!(signature(mid, "", None).is_some());
        let panicked = mid.replace("op=seq-read", "Kernel panic - not syncing: Fatal exception");
        assert_eq!(signature(&panicked, "", None), None);
        // A QEMU guest's server that stopped answering; not husk's, whose
        // report must show the RIP.
        let silent = "husk: compare: mysql_tps in qemu: failed: sysbench run got no answer from the server in 240s:  [\"...\"]";
        assert!(signature(silent, "", None).unwrap().contains("QEMU"));
        let husk = silent.replace(" in qemu: ", " in husk: ");
        assert_eq!(signature(&husk, "", None), None);
    }
}
