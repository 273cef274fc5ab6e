//! In-process boots of the null guest through husk's VMM library: the whole
//! VMM path (KVM setup, ELF loading, PVH and 64-bit entry, port exits, the
//! serial console, the status port, reset, teardown) on any /dev/kvm,
//! kvm_pvm included. No Linux: that is the e2e binary's job.

use husk_tests::null_guest;
use husk_vmm::{Console, Exit, VmConfig};

fn boot(pvh: bool, status: Option<u8>, vcpus: u8) -> (husk_vmm::Outcome, String) {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("null.elf");
    null_guest::write(&kernel, pvh, status).unwrap();
    let console = dir.path().join("console");
    let config = VmConfig {
        kernel,
        vcpus,
        mem_mib: 128,
        cmdline: "console=ttyS0".into(),
        disks: vec![],
        nets: vec![],
        vsock: None,
        fs: vec![],
        console: Console::File(console.clone()),
        stdin: false,
        allow_pvm: true,
    };
    let out = husk_vmm::run(&config, None).expect("the VM runs");
    let text = std::fs::read_to_string(console).unwrap_or_default();
    (out, text)
}

#[test]
fn pvh_entry_prints_and_resets() {
    let (out, console) = boot(true, None, 1);
    assert_eq!(out.exit, Exit::Reset);
    assert_eq!(out.guest_status, None);
    assert_eq!(console.as_bytes(), null_guest::LINE);
}

#[test]
fn long_mode_entry_prints_and_resets() {
    let (out, console) = boot(false, None, 1);
    assert_eq!(out.exit, Exit::Reset);
    assert_eq!(console.as_bytes(), null_guest::LINE);
}

#[test]
fn status_port_reaches_the_vmm() {
    let (out, _) = boot(true, Some(42), 1);
    assert_eq!(out.guest_status, Some(42));
    assert_eq!(out.exit, Exit::Reset);
}

#[test]
fn secondary_vcpus_are_torn_down() {
    // The APs never get a SIPI from the null guest: they sit in KVM_RUN
    // until the VMM kicks them out at reset.
    let (out, console) = boot(true, Some(0), 4);
    assert_eq!(out.exit, Exit::Reset);
    assert_eq!(console.as_bytes(), null_guest::LINE);
}

#[test]
fn pause_stops_progress_and_resume_continues() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("ticker.elf");
    std::fs::write(&kernel, null_guest::ticker_elf(true)).unwrap();
    let console = dir.path().join("console");
    let config = VmConfig {
        kernel,
        vcpus: 1,
        mem_mib: 128,
        cmdline: String::new(),
        disks: vec![],
        nets: vec![],
        vsock: None,
        fs: vec![],
        console: Console::File(console.clone()),
        stdin: false,
        allow_pvm: true,
    };
    let vm = husk_vmm::start(&config, None).expect("the VM starts");
    let controls = vm.controls();
    let size = move || std::fs::metadata(&console).map(|m| m.len()).unwrap_or(0);
    let driver = std::thread::spawn(move || {
        // Whatever the checks say, stop the VM so `wait` returns.
        struct StopOnDrop(husk_vmm::VmControls);
        impl Drop for StopOnDrop {
            fn drop(&mut self) {
                self.0.resume();
                self.0.stop(Exit::Stopped(0));
            }
        }
        let _stop = StopOnDrop(controls.clone());
        let grows = |what: &str| {
            let a = size();
            std::thread::sleep(Duration::from_millis(300));
            let b = size();
            assert!(b > a, "{what}: no progress ({a} -> {b})");
        };
        grows("running");
        controls.pause();
        assert!(controls.is_paused());
        let a = size();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(size(), a, "the guest ran while paused");
        controls.resume();
        grows("resumed");
    });
    let out = vm.wait();
    driver.join().expect("the checks passed");
    assert_eq!(out.exit, Exit::Stopped(0));
}
