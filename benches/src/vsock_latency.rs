//! vsock request/response latency host ↔ guest through husk's hybrid
//! Unix-socket multiplexer: `CONNECT 5000` to the guest's `husk-vsock echo`,
//! then 1-byte round trips. No peer in the same run: QEMU's vsock needs
//! vhost-vsock, which the testbed's L1 does not have.
//!
//! Usage: vsock-latency [--rounds N] [--husk PATH]

use husk_benches::median;
use husk_tests::vmm_process::VmmProcess;
use husk_tests::{guest_artifacts, require_linux_kvm};
use husk_wire::cmdline::encode_command;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut rounds, mut husk) = (2000usize, None);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--rounds" => rounds = it.next().and_then(|v| v.parse().ok()).expect("--rounds N"),
            "--husk" => husk = Some(PathBuf::from(it.next().expect("--husk PATH"))),
            other => panic!("unknown argument {other}"),
        }
    }
    let husk = husk.unwrap_or_else(husk_tests::husk::binary);
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let uds = dir.path().join("v.sock");
    let boot_args = format!(
        "console=ttyS0 reboot=k panic=1 quiet husk.cmd={}",
        encode_command(&[
            "sh",
            "-c",
            "husk-vsock echo 5000 & sleep 1; echo ready; sleep 600"
        ])
    );
    let vmm = VmmProcess::start(&husk, dir.path(), &[]);
    vmm.configure(&guest_artifacts().vmlinux, &boot_args, &root, 256);
    let v = serde_json::json!({"guest_cid": 3, "uds_path": uds});
    assert_eq!(vmm.req("PUT", "/vsock", &v.to_string()).0, 204);
    assert_eq!(vmm.start_instance().0, 204);
    assert!(
        vmm.wait_for_output("ready\n", Duration::from_secs(120)),
        "{}",
        vmm.output()
    );

    let mut s = UnixStream::connect(&uds).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"CONNECT 5000\n").unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("OK "), "{line:?}");
    let mut times = Vec::with_capacity(rounds);
    let mut b = [0u8; 1];
    for i in 0..rounds {
        let t = Instant::now();
        s.write_all(&[i as u8]).unwrap();
        r.read_exact(&mut b).unwrap();
        assert_eq!(b[0], i as u8);
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let warm = times.split_off(rounds / 10); // drop the first 10 %
    println!(
        "vsock 1-byte round trip host <-> guest echo, {} rounds after warm-up",
        warm.len()
    );
    println!("| VMM | median (us) |");
    println!("|---|---|");
    println!("| husk | {:.0} |", median(warm));
}
