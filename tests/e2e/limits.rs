//! A disk's rate limiter (Firecracker's token buckets, `PUT /drives` and
//! `PATCH /drives`): what the guest reads goes at the limit, and a new
//! limit takes hold while the VM runs.

use husk_tests::vmm_process::VmmProcess;
use husk_tests::{guest_artifacts, require_linux_kvm};
use husk_wire::cmdline::encode_command;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(180);

/// The guest reads 24 MiB of its data disk twice, at two places it never
/// read (nothing comes from its page cache), timing each by its uptime.
const SCRIPT: &str = "t() { cut -d' ' -f1 /proc/uptime; }; \
    a=$(t); dd if=/dev/vdb of=/dev/null bs=1M count=24 2>/dev/null; b=$(t); echo phase1 $a $b; \
    sleep 3; \
    a=$(t); dd if=/dev/vdb of=/dev/null bs=1M count=24 skip=64 2>/dev/null; b=$(t); echo phase2 $a $b";

/// MiB/s of the phase's line `phaseN START END` (24 MiB read).
fn rate(out: &str, phase: &str) -> f64 {
    let line = out
        .lines()
        .find(|l| l.starts_with(phase))
        .unwrap_or_else(|| panic!("no {phase} line: {out}"));
    let t: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().expect("uptime"))
        .collect();
    24.0 / (t[1] - t[0])
}

/// A bandwidth bucket of `size` bytes refilled every 100 ms.
fn limit(size: u64) -> String {
    format!(r#"{{"bandwidth": {{"size": {size}, "refill_time": 100}}}}"#)
}

#[test]
fn a_disk_reads_at_its_limit_and_a_patch_changes_it_live() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let data = dir.path().join("data.img");
    std::fs::File::create(&data)
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    let vmm = VmmProcess::start(&husk_tests::husk::binary(), dir.path(), &[]);
    let args = format!(
        "console=ttyS0 reboot=k panic=1 quiet husk.status=console husk.cmd={}",
        encode_command(&["sh", "-c", SCRIPT])
    );
    vmm.configure(&guest_artifacts().vmlinux, &args, &root, 128);
    // 10 MiB/s: a 1 MiB bucket refilled every 100 ms.
    let drive = format!(
        r#"{{"drive_id": "data", "path_on_host": "{}", "is_root_device": false, "is_read_only": true, "rate_limiter": {}}}"#,
        data.display(),
        limit(1 << 20)
    );
    let (s, v) = vmm.req("PUT", "/drives/data", &drive);
    assert_eq!(s, 204, "{v}");
    assert_eq!(vmm.start_instance().0, 204);
    assert!(vmm.wait_for_output("phase1 ", TIMEOUT), "{}", vmm.output());
    // 20 MiB/s from here on, while the guest sleeps.
    let patch = format!(
        r#"{{"drive_id": "data", "rate_limiter": {}}}"#,
        limit(2 << 20)
    );
    let (s, v) = vmm.req("PATCH", "/drives/data", &patch);
    assert_eq!(s, 204, "{v}");
    let (_, out) = vmm.wait(TIMEOUT);
    // The first bucket's worth goes at once, so a little above the limit.
    let (first, second) = (rate(&out, "phase1"), rate(&out, "phase2"));
    eprintln!("10 MiB/s limit: {first:.2} MiB/s; 20 MiB/s limit: {second:.2} MiB/s");
    assert!(
        (9.0..11.5).contains(&first),
        "{first:.2} MiB/s under a 10 MiB/s limit: {out}"
    );
    assert!(
        (18.0..23.0).contains(&second),
        "{second:.2} MiB/s under a 20 MiB/s limit: {out}"
    );
}
