//! Load without leaks: 1000 requests in a row and 8 concurrent clients, with
//! the process's fds and threads counted before, during and after. Alone in
//! its test binary so no other test opens fds or threads meanwhile.

mod common;

use common::{count, request, Client, FakeVmm};
use husk_api::{start, ApiServer};
use std::time::{Duration, Instant};

/// Waits (up to 2 s) for the fd count to come back to `expected`: the
/// server closes a connection's fd once it has seen the client's EOF.
fn settle_fds(expected: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let now = count("fd");
        if now == expected || Instant::now() > deadline {
            return now;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn thousand_requests_and_concurrent_clients_leak_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api.sock");
    let fds_before = count("fd");
    let threads_before = count("task");

    let (vmm, end) = FakeVmm::spawn();
    let server: ApiServer = start(&path, end.to_vmm, end.wake).unwrap();
    let fds_running = count("fd");
    // The server's thread and the fake VMM's.
    assert_eq!(count("task"), threads_before + 2);

    // 1000 in a row: half on fresh connections, half on one kept alive.
    let t0 = Instant::now();
    for i in 0..500 {
        let r = request(&path, "GET", "/", None);
        assert_eq!(r.status, 200, "request {i}");
    }
    let mut c = Client::connect(&path).unwrap();
    for i in 0..500 {
        let body = format!(r#"{{"vcpu_count": {}, "mem_size_mib": 128}}"#, i % 8 + 1);
        let r = c.request("PUT", "/machine-config", Some(&body)).unwrap();
        assert_eq!(r.status, 204, "request {i}");
    }
    drop(c);
    println!("1000 requests in a row: {:?}", t0.elapsed());
    assert_eq!(
        settle_fds(fds_running),
        fds_running,
        "connection fds leaked"
    );

    // 8 clients at once, 100 requests each, some of them failing ones.
    let t0 = Instant::now();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut c = Client::connect(&path).unwrap();
                for j in 0..100 {
                    let r = match j % 4 {
                        0 => c.request("GET", "/machine-config", None),
                        1 => c.request("PATCH", "/vm", Some(r#"{"state": "Paused"}"#)),
                        2 => c.request("PUT", "/vm", Some("{}")),
                        _ => c.request("PUT", &format!("/drives/d{i}"), Some("{")),
                    }
                    .unwrap();
                    let expected = [200, 204, 405, 400][j % 4];
                    assert_eq!(r.status, expected, "client {i} request {j}: {r:?}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    println!("8 clients x 100 requests: {:?}", t0.elapsed());
    assert_eq!(
        settle_fds(fds_running),
        fds_running,
        "connection fds leaked"
    );
    assert_eq!(count("task"), threads_before + 2);

    server.shutdown();
    // 1000 + the 400 GET/PATCH of the concurrent clients reached the VMM.
    assert_eq!(vmm.join(), 1400);
    assert!(!path.exists());
    assert_eq!(count("fd"), fds_before, "fds leaked");
    assert_eq!(count("task"), threads_before, "threads leaked");
}
