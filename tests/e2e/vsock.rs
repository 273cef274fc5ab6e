//! virtio-vsock with Firecracker's hybrid host side, through `husk vmm`
//! (PUT /vsock): host → guest through `CONNECT <port>` on the Unix socket,
//! guest → host through `<uds>_<port>`, refused ports, many connections.

use husk_tests::vmm_process::VmmProcess;
use husk_tests::{guest_artifacts, require_linux_kvm};
use husk_wire::cmdline::encode_command;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(120);

/// `CONNECT port` on the multiplexer; the stream after `OK`, or `None` if
/// the device closed it (nobody listens in the guest).
pub(crate) fn connect(uds: &Path, port: u32) -> Option<UnixStream> {
    try_connect(uds, port).ok()
}

/// [`connect`], saying why not: refused (closed without `OK`), or no
/// answer at all within 30 s (a stalled device or guest).
pub(crate) fn try_connect(uds: &Path, port: u32) -> Result<UnixStream, String> {
    let mut s = UnixStream::connect(uds).expect("connect to the vsock socket");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    writeln!(s, "CONNECT {port}").unwrap();
    let mut line = String::new();
    let mut r = BufReader::new(s.try_clone().unwrap());
    match r.read_line(&mut line) {
        Ok(_) if line.starts_with("OK ") => Ok(s),
        Ok(_) => Err(format!("refused (the device answered {line:?})")),
        Err(e) => Err(format!("no answer in 30 s ({e})")),
    }
}

pub(crate) fn round_trip(mut s: UnixStream, bytes: &[u8]) -> Vec<u8> {
    let mut w = s.try_clone().unwrap();
    let data = bytes.to_vec();
    let writer = std::thread::spawn(move || {
        w.write_all(&data).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut back = Vec::new();
    s.read_to_end(&mut back).unwrap();
    writer.join().unwrap();
    back
}

#[test]
fn host_and_guest_connect_both_ways() {
    require_linux_kvm();
    let dir = tempfile::tempdir().unwrap();
    let root = husk_tests::scratch_rootfs(dir.path(), "rootfs.ext4");
    let uds = dir.path().join("v.sock");
    // The guest → host listener must exist before the guest connects.
    let host_listener = UnixListener::bind(format!("{}_6000", uds.display())).unwrap();
    let host_side = std::thread::spawn(move || {
        let (mut s, _) = host_listener.accept().unwrap();
        let mut line = String::new();
        BufReader::new(s.try_clone().unwrap())
            .read_line(&mut line)
            .unwrap();
        s.write_all(b"pong\n").unwrap();
        line
    });

    // A stream the guest kills mid-way (to port 6001) before the checks
    // that prove the device still serves.
    let killed_listener = UnixListener::bind(format!("{}_6001", uds.display())).unwrap();
    let killed_side = std::thread::spawn(move || {
        let (mut s, _) = killed_listener.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut total = 0usize;
        let mut buf = vec![0u8; 65536];
        // Ends with EOF or a reset once the guest process dies; a hang
        // would hit the read timeout and fail below.
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => total += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Err(total),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Err(total),
                Err(_) => return Ok(total),
            }
        }
    });
    let script = "husk-vsock echo 5000 & \
                  cat /dev/zero | husk-vsock connect 2 6001 & sleep 1; kill -9 $!; \
                  echo hello-vsock | husk-vsock connect 2 6000; echo ready; sleep 600";
    let args = format!(
        "console=ttyS0 reboot=k panic=1 quiet husk.cmd={}",
        encode_command(&["sh", "-c", script])
    );
    let vmm = VmmProcess::start(&husk_tests::husk::binary(), dir.path(), &[]);
    vmm.configure(&guest_artifacts().vmlinux, &args, &root, 256);
    let v = serde_json::json!({"guest_cid": 3, "uds_path": uds});
    assert_eq!(vmm.req("PUT", "/vsock", &v.to_string()).0, 204);
    assert_eq!(vmm.start_instance().0, 204);
    assert!(vmm.wait_for_output("ready\n", TIMEOUT), "{}", vmm.output());

    // The killed stream ended on the host side, after some data.
    let killed = killed_side.join().unwrap();
    assert!(
        matches!(killed, Ok(n) if n > 0),
        "killed stream: {killed:?}"
    );

    // Guest → host: the guest's line arrived and our answer went back.
    assert_eq!(host_side.join().unwrap(), "hello-vsock\n");
    assert!(vmm.output().contains("pong\n"), "{}", vmm.output());

    // Host → guest: 4 MiB through the echo server, byte-exact.
    let payload: Vec<u8> = (0u32..4 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    let s = connect(&uds, 5000)
        .unwrap_or_else(|| panic!("no OK from the guest's echo server: {}", vmm.output()));
    assert!(round_trip(s, &payload) == payload, "echoed bytes differ");

    // A port nobody listens on: closed without OK; the device stays healthy.
    assert!(connect(&uds, 5999).is_none(), "a refused port answered OK");

    // 32 connections at once.
    let uds2 = uds.clone();
    let clients: Vec<_> = (0..32u32)
        .map(|i| {
            let uds = uds2.clone();
            std::thread::spawn(move || {
                let msg = format!("connection {i} ").repeat(500).into_bytes();
                let s = connect(&uds, 5000).expect("OK");
                assert!(round_trip(s, &msg) == msg, "connection {i} garbled");
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(vmm.req("GET", "/", "").1["state"], "Running");
}
