//! Rate limiters (Firecracker's token buckets): a disk's (`PUT /drives`,
//! `PATCH /drives`) and a NIC's both ways (`PUT` and `PATCH
//! /network-interfaces`): what the guest reads, sends and receives goes at
//! the limit, and a new limit takes hold while the VM runs.

use husk_tests::vmm_process::VmmProcess;
use husk_tests::{guest_artifacts, require_linux_kvm};
use husk_wire::cmdline::encode_command;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

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

/// `mib` MiB/s as a bandwidth bucket refilled every 100 ms.
fn mib_per_s(mib: f64) -> String {
    limit((mib * 1024.0 * 1024.0 / 10.0) as u64)
}

/// Reads a connection to its end; MiB/s from the first byte on.
fn sink(listener: &TcpListener) -> (usize, f64) {
    let (mut s, _) = listener.accept().unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut buf = vec![0u8; 1 << 16];
    let mut n = s.read(&mut buf).unwrap();
    let t = Instant::now();
    loop {
        match s.read(&mut buf).unwrap() {
            0 => break,
            k => n += k,
        }
    }
    (n, n as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64())
}

/// Connects to the guest's `port` once it listens.
fn connect(port: u16) -> TcpStream {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        if let Ok(s) = TcpStream::connect(("10.0.2.15", port)) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "the guest never listened on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The guest sends 3 MiB (tx), receives 3 MiB (rx), waits for the host's
/// go, then sends 2 MiB.
const NIC_SCRIPT: &str = "dd if=/dev/zero bs=64k count=48 2>/dev/null | nc 10.0.2.1 7781; \
    nc -l -p 8000 >/dev/null; echo received; \
    nc -l -p 8001 >/dev/null; \
    dd if=/dev/zero bs=64k count=32 2>/dev/null | nc 10.0.2.1 7782; echo sent";

#[test]
fn a_nic_sends_and_receives_at_its_limits_and_a_patch_changes_them_live() {
    require_linux_kvm();
    let tap = crate::net::Tap::with_address("husk-e2elim", "10.0.2.1/24");
    let first = TcpListener::bind("10.0.2.1:7781").unwrap();
    let second = TcpListener::bind("10.0.2.1:7782").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let vmm = VmmProcess::start(&husk_tests::husk::binary(), dir.path(), &[]);
    let args = format!(
        "console=ttyS0 reboot=k panic=1 quiet husk.status=console \
         ip=10.0.2.15::10.0.2.1:255.255.255.0::eth0:off husk.cmd={}",
        encode_command(&["sh", "-c", NIC_SCRIPT])
    );
    vmm.configure(&guest_artifacts().vmlinux, &args, &root, 128);
    // 1 MiB/s each way.
    let nic = format!(
        r#"{{"iface_id": "eth0", "host_dev_name": "{}", "rx_rate_limiter": {}, "tx_rate_limiter": {}}}"#,
        tap.name(),
        mib_per_s(1.0),
        mib_per_s(1.0)
    );
    let (s, v) = vmm.req("PUT", "/network-interfaces/eth0", &nic);
    assert_eq!(s, 204, "{v}");
    assert_eq!(vmm.start_instance().0, 204);

    let (n, sent) = sink(&first);
    assert_eq!(n, 3 << 20);
    let t = Instant::now();
    let mut s = connect(8000);
    s.write_all(&vec![7u8; 3 << 20]).unwrap();
    s.shutdown(std::net::Shutdown::Write).unwrap();
    s.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The guest's nc closes once it has it all.
    let _ = s.read(&mut [0u8; 16]);
    let received = 3.0 / t.elapsed().as_secs_f64();
    // Sending at half a MiB/s from here on; receiving stays as it was.
    let patch = format!(
        r#"{{"iface_id": "eth0", "tx_rate_limiter": {}}}"#,
        mib_per_s(0.5)
    );
    let (s, v) = vmm.req("PATCH", "/network-interfaces/eth0", &patch);
    assert_eq!(s, 204, "{v}");
    drop(connect(8001));
    let (n, patched) = sink(&second);
    assert_eq!(n, 2 << 20);
    let (_, out) = vmm.wait(TIMEOUT);
    eprintln!(
        "1 MiB/s limits: sent {sent:.2} MiB/s, received {received:.2} MiB/s; \
         tx patched to 0.5 MiB/s: sent {patched:.2} MiB/s"
    );
    assert!(out.contains("sent"), "{out}");
    for (what, got, want) in [
        ("sent", sent, 1.0),
        ("received", received, 1.0),
        ("sent after the patch", patched, 0.5),
    ] {
        assert!(
            got > want * 0.85 && got < want * 1.2,
            "{what}: {got:.2} MiB/s under a {want} MiB/s limit: {out}"
        );
    }
}

/// A block device node for the filesystem `dir` is on, made in `dir`
/// (what `--device-*-bps DEV` names; the testbed's /dev need not have it).
fn block_node(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::MetadataExt;
    let dev = std::fs::metadata(dir).unwrap().dev();
    assert_ne!(
        libc::major(dev),
        0,
        "{} is not on a block device (tmpfs, overlay?): this test needs one",
        dir.display()
    );
    let node = dir.join("dev");
    mknod_block(&node, dev);
    node
}

/// A block device node for device number `dev` at `node`.
fn mknod_block(node: &std::path::Path, dev: libc::dev_t) {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(node.as_os_str().as_bytes()).unwrap();
    // SAFETY: mknod(2) with a valid C string; it only makes the node.
    let rc = unsafe { libc::mknod(path.as_ptr(), libc::S_IFBLK | 0o600, dev) };
    assert_eq!(rc, 0, "mknod: {}", std::io::Error::last_os_error());
}

/// Docker's `--device-read-bps` and `--device-write-bps` on `husk run`:
/// a disk volume on the named device is read and written at the rates,
/// measured in the guest; a device none of the disks is on is refused.
#[test]
fn husk_run_device_limits_hold_a_volume_on_that_device_to_its_rates() {
    require_linux_kvm();
    let r = crate::run::Run::new();
    // In the working directory: on a disk (the testbed's payload disk),
    // where /tmp may be RAM.
    let host = tempfile::tempdir_in(".").unwrap();
    let tree = host.path().join("tree");
    std::fs::create_dir(&tree).unwrap();
    // Not zeros: the file is data on the disk, not holes.
    let big: Vec<u8> = (0..16u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(tree.join("big"), big).unwrap();
    let disk = host.path().join("vol.ext4");
    husk_image::mkfs::Ext4::new(96 << 20)
        .from_tree(&tree)
        .make(&disk)
        .unwrap();
    let dev = block_node(host.path());
    let flag = |rate: &str| format!("{}:{rate}", dev.display());
    // The write's rate is what the disks wrote in its time (sectors from
    // /sys/block): the guest's ext4 also zeroes its inode tables and
    // journals then, and the limit holds the disk, not the file. The
    // writes are direct: through the page cache, dd would first fill
    // memory while the disk idles (the bucket full, its tokens lost), and
    // the time would be the guest's CPU and the disk's in a row.
    let script = "t() { cut -d' ' -f1 /proc/uptime; }; \
        w() { cat /sys/block/vd*/stat | awk '{s+=$7} END {print s}'; }; \
        a=$(t); cat /data/big >/dev/null; b=$(t); echo read $a $b; \
        c=$(w); a=$(t); dd if=/dev/zero of=/data/new bs=1M count=24 oflag=direct 2>/dev/null; \
        b=$(t); d=$(w); echo write $a $b $c $d";
    let out = r.run(
        &[
            "--rm",
            "--device-read-bps",
            &flag("8mb"),
            "--device-write-bps",
            &flag("10mb"),
            "-v",
            &format!("{}:/data", disk.display()),
        ],
        &["sh", "-c", script],
    );
    assert_eq!(out.code, Some(0), "{}", out.describe());
    let fields = |what: &str| -> Vec<f64> {
        let line = out.stdout.lines().find(|l| l.starts_with(what));
        line.unwrap_or_else(|| panic!("no {what} line: {}", out.describe()))
            .split_whitespace()
            .skip(1)
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let (rd, wr) = (fields("read"), fields("write"));
    let written_mib = (wr[3] - wr[2]) * 512.0 / (1 << 20) as f64;
    assert!(
        written_mib >= 24.0,
        "{written_mib} MiB written: {}",
        out.describe()
    );
    let (read, write) = (16.0 / (rd[1] - rd[0]), written_mib / (wr[1] - wr[0]));
    eprintln!(
        "--device-read-bps 8mb: {read:.2} MiB/s; --device-write-bps 10mb: {write:.2} MiB/s \
         ({written_mib:.1} MiB written for 24)"
    );
    // A tenth of a second's worth goes at once, and ext4 writes its
    // journal too: within 10%.
    assert!(
        (7.2..8.8).contains(&read),
        "read {read:.2} MiB/s: {}",
        out.describe()
    );
    assert!(
        (9.0..11.0).contains(&write),
        "write {write:.2} MiB/s: {}",
        out.describe()
    );

    // Another device: none of the container's disks is on it.
    let other = host.path().join("other");
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(&dev).unwrap().rdev();
    mknod_block(
        &other,
        libc::makedev(libc::major(rdev), libc::minor(rdev) + 77),
    );
    let out = r.run(
        &[
            "--rm",
            "--device-read-bps",
            &format!("{}:1mb", other.display()),
            "-v",
            &format!("{}:/data", disk.display()),
        ],
        &["true"],
    );
    assert_eq!(out.code, Some(2), "{}", out.describe());
    assert!(
        out.stderr
            .contains("none of the container's disks is on it"),
        "{}",
        out.describe()
    );
}
