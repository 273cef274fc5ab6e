//! A hostile guest against the real `husk vmm` (natively, like the null
//! guest): a virtio-blk request loop that feeds itself. The API must keep
//! answering and SIGTERM must end the process while it runs.

use husk_tests::hostile_guest;
use husk_tests::vmm_process::VmmProcess;
use std::path::Path;
use std::time::{Duration, Instant};

fn block_reads(metrics: &Path) -> u64 {
    let text = std::fs::read_to_string(metrics).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["block"]["rootfs"]["read_count"].as_u64().unwrap_or(0)
}

#[test]
fn a_self_feeding_request_loop_leaves_the_api_and_sigterm_working() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("hostile.elf");
    std::fs::write(&kernel, hostile_guest::self_feeding_elf()).unwrap();
    let disk = dir.path().join("loop.img");
    std::fs::write(&disk, hostile_guest::self_feeding_disk()).unwrap();
    let metrics = dir.path().join("metrics.json");
    let vmm = VmmProcess::start_executable(
        Path::new(env!("CARGO_BIN_EXE_husk-vmm")),
        dir.path(),
        &["--allow-kvm-pvm"],
    );
    vmm.configure(&kernel, "console=ttyS0", &disk, 128);
    let m = serde_json::json!({ "metrics_path": metrics });
    assert_eq!(vmm.req("PUT", "/metrics", &m.to_string()).0, 204);
    assert_eq!(vmm.start_instance().0, 204);
    let notified = std::str::from_utf8(hostile_guest::NOTIFIED).unwrap();
    assert!(
        vmm.wait_for_output(notified.trim_end(), Duration::from_secs(30)),
        "the guest never notified: {:?}",
        vmm.output()
    );

    // The attack runs: the disk is read over and over...
    let flush = r#"{"action_type":"FlushMetrics"}"#;
    assert_eq!(vmm.req("PUT", "/actions", flush).0, 204);
    let before = block_reads(&metrics);
    // ...while every API request is answered (the client gives up after
    // 30 s; the worst latency is printed for docs/, not asserted).
    let mut worst = Duration::ZERO;
    for _ in 0..20 {
        let t = Instant::now();
        let (status, info) = vmm.req("GET", "/", "");
        worst = worst.max(t.elapsed());
        assert_eq!(status, 200, "{info}");
        assert_eq!(info["state"], "Running");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(vmm.req("PUT", "/actions", flush).0, 204);
    let after = block_reads(&metrics);
    assert!(
        after > before + 1000,
        "the request loop is not running ({before} then {after} reads)"
    );
    eprintln!(
        "API GET / under a self-feeding virtio-blk loop: worst {:.1} ms over 20 requests; {} reads meanwhile",
        worst.as_secs_f64() * 1e3,
        after - before
    );

    // SIGTERM: the guest ignores Ctrl-Alt-Del, so the grace period ends it.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(vmm.pid() as i32, libc::SIGTERM) };
    let (code, _) = vmm.wait(Duration::from_secs(60));
    assert_eq!(code, Some(128 + libc::SIGTERM));
}

/// 200,000 notifications of a queue the device does not have, each a log
/// line in a VMM that does not rate-limit (a million wrote 62 MB): the log
/// stays small, and the API answers throughout.
#[test]
fn a_flood_of_bad_notifications_leaves_a_bounded_log() {
    let dir = tempfile::tempdir().unwrap();
    let kernel = dir.path().join("flood.elf");
    std::fs::write(&kernel, hostile_guest::notify_flood_elf(200_000)).unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, [0u8; 4096]).unwrap();
    let log = dir.path().join("vmm.log");
    let vmm = VmmProcess::start_executable(
        Path::new(env!("CARGO_BIN_EXE_husk-vmm")),
        dir.path(),
        &["--allow-kvm-pvm"],
    );
    let l = serde_json::json!({ "log_path": log, "level": "Warning" });
    assert_eq!(vmm.req("PUT", "/logger", &l.to_string()).0, 204);
    vmm.configure(&kernel, "console=ttyS0", &disk, 128);
    assert_eq!(vmm.start_instance().0, 204);
    let flooded = std::str::from_utf8(hostile_guest::FLOODED)
        .unwrap()
        .trim_end();
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let mut polls = 0;
    while !vmm.output().contains(flooded) && start.elapsed() < Duration::from_secs(120) {
        let t = Instant::now();
        match husk_tests::http::request(&vmm.socket, "GET", "/", "") {
            // The guest resets once it is done: between its VM stopping
            // and the process exiting, the API says the VMM is gone.
            Ok(r) if r.status == 400 && r.body.contains("VMM is not running") => break,
            Ok(r) => {
                assert_eq!(r.status, 200, "{}", r.body);
                worst = worst.max(t.elapsed());
                polls += 1;
            }
            // ...and then husk vmm exits.
            Err(_) => break,
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let took = start.elapsed();
    let (_, out) = vmm.wait(Duration::from_secs(60));
    assert!(
        out.contains(flooded),
        "the guest did not finish its flood: {out:?}"
    );
    let text = std::fs::read_to_string(&log).unwrap();
    // At most a burst of 10 lines per call site per 5 s window, however
    // many notifications: bounded by how long the flood took, not by it.
    let windows = (took.as_secs() / 5 + 2) as usize;
    let flood_lines = text.lines().filter(|l| l.contains("queue 7")).count();
    assert!(
        (1..=10 * windows).contains(&flood_lines),
        "{flood_lines} lines in {took:?}: {text}"
    );
    assert!(
        text.len() < windows * (4 << 10),
        "the log grew to {} bytes",
        text.len()
    );
    eprintln!(
        "200,000 bad notifications in {:.1} s: log {} bytes; API GET / worst {:.1} ms over {polls} polls",
        took.as_secs_f64(),
        text.len(),
        worst.as_secs_f64() * 1e3
    );
}
