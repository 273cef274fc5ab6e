//! A published port under load: TCP request rate and throughput from the
//! host to a container's echo server through `-p 127.0.0.1:P:7`, for
//!
//! - `husk run --network bridge -p` (husk's userspace proxy, then the
//!   microVM's virtio-net on husk's bridge),
//! - `podman --runtime crun run -p` (netavark's bridge and DNAT, a plain
//!   container: the peer),
//! - `podman --runtime husk run -p` (the same DNAT into the container's
//!   network namespace, then tc redirects into the microVM),
//! - `husk run --network passt -p` (the network without root: passt's
//!   userspace stack on a socket to the microVM's NIC),
//!
//! interleaved, one fresh container per runtime and run, medians. Per
//! container: 64-byte round trips one at a time (request rate), then MiB
//! written while their echo is read back (throughput, each byte crossing
//! the path both ways). Inside the testbed: `benches/run
//! publish-throughput`.
//!
//! Usage: publish-throughput [--runs N] [--mib M] [--rr COUNT] [--husk PATH]
//! [--only TEXT] (only the paths whose name has TEXT) [--port P] (one
//! measurement of an echo server already listening on 127.0.0.1:P)

use husk_benches::{median, spread};
use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The echo server's port in the container.
const PORT: u16 = 7;
const RR_MSG: usize = 64;

/// A path under test: its name and how to start its echo container on a
/// host port.
type Setup = (&'static str, Box<dyn Fn(u16) -> Command>);

struct Figures {
    rr_us: f64,
    mb_s: f64,
}

fn main() {
    let (mut runs, mut mib, mut rr) = (5usize, 64u64, 2000u64);
    let mut only: Option<String> = None;
    let mut port_only: Option<u16> = None;
    let mut husk = PathBuf::from("target/release/husk");
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .cloned()
                .unwrap_or_else(|| panic!("{a} needs a value"))
        };
        match a.as_str() {
            "--runs" => runs = value().parse().expect("--runs N"),
            "--mib" => mib = value().parse().expect("--mib M"),
            "--rr" => rr = value().parse().expect("--rr COUNT"),
            "--husk" => husk = PathBuf::from(value()),
            "--only" => only = Some(value()),
            "--port" => port_only = Some(value().parse().expect("--port PORT")),
            other => panic!(
                "unknown argument {other} (usage: publish-throughput [--runs N] [--mib M] [--rr COUNT] [--husk PATH] [--only TEXT])"
            ),
        }
    }
    if let Some(port) = port_only {
        // An echo server already running: one measurement, no container.
        let f = measure(port, rr, mib).unwrap_or_else(|e| panic!("{e}"));
        println!("round trip {:.0} µs, echo {:.1} MB/s", f.rr_us, f.mb_s);
        return;
    }
    husk_tests::require_linux_kvm();
    husk_compare::runner::ensure_cgroup2();
    let work = tempfile::tempdir().unwrap();
    let bench_image = husk_tests::guest_dir().join("husk-bench-image");
    let mut setups: Vec<Setup> = Vec::new();
    // husk run's own -p over a network: husk's bridge (its proxy) or passt.
    let husk_run = |network: &'static str| -> Box<dyn Fn(u16) -> Command> {
        let (husk, image) = (husk.clone(), bench_image.clone());
        let (cache, runtime) = (work.path().join("cache"), work.path().join("run"));
        Box::new(move |port| {
            let mut c = Command::new(&husk);
            c.args(["run", "-d", "--rm", "--network", network, "-p"])
                .arg(format!("127.0.0.1:{port}:{PORT}"))
                .arg(&image)
                .args(["husk-bench", "tcp-echo", &PORT.to_string()])
                .env("HUSK_IMAGE_CACHE", &cache)
                .env("HUSK_RUNTIME_DIR", &runtime);
            c
        })
    };
    setups.push(("husk run -p (proxy)", husk_run("bridge")));
    if Path::new(husk_tests::podman::PROGRAM).is_file() {
        let store = work.path().join("podman");
        std::fs::create_dir_all(store.join("tmp")).unwrap();
        load_bench_image(&store, &husk, work.path());
        for (name, runtime) in [
            (
                "podman --runtime crun -p (DNAT)",
                PathBuf::from("/usr/bin/crun"),
            ),
            ("podman --runtime husk -p (DNAT)", husk.clone()),
        ] {
            if !runtime.is_file() {
                println!("{name}: not installed ({})", runtime.display());
                continue;
            }
            let store = store.clone();
            setups.push((
                name,
                Box::new(move |port| {
                    let mut c = husk_tests::podman::command(&store, &runtime);
                    c.args(["run", "-d", "--rm", "--network", "bridge", "-p"])
                        .arg(format!("127.0.0.1:{port}:{PORT}"))
                        .arg(husk_tests::podman::IMAGE)
                        .args(["husk-bench", "tcp-echo", &PORT.to_string()]);
                    c
                }),
            ));
        }
    } else {
        println!("podman: not installed (no crun peer)");
    }
    match passt_here() {
        Ok(()) => setups.push(("husk run -p (passt, no root needed)", husk_run("passt"))),
        Err(why) => println!("husk run --network passt: {why}"),
    }
    if let Some(text) = &only {
        setups.retain(|(name, _)| name.contains(text.as_str()));
    }
    let mut figures: Vec<Vec<Figures>> = (0..setups.len()).map(|_| Vec::new()).collect();
    // A path that fails once is reported as failed, with why, and left
    // out of the later runs.
    let mut failed: Vec<Option<String>> = vec![None; setups.len()];
    // Run 0 warms up (image conversion, podman's first container).
    for run in 0..=runs {
        for (i, (name, start)) in setups.iter().enumerate() {
            if failed[i].is_some() {
                continue;
            }
            let port = free_port();
            let out = start(port)
                .stdin(Stdio::null())
                .output()
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(
                out.status.success(),
                "{name}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            match measure(port, rr, mib) {
                Ok(f) if run > 0 => figures[i].push(f),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("{name}: run {run}: {e}");
                    failed[i] = Some(format!("run {run}: {e}"));
                }
            }
        }
        eprintln!("run {run} done");
    }
    println!(
        "TCP from the host to a container's echo server through -p 127.0.0.1:P:{PORT}; \
         {runs} interleaved runs after a warm-up, medians (min–max)"
    );
    println!("| path | round trip, µs ({rr} × {RR_MSG} B) | requests/s | echo throughput, MB/s ({mib} MiB each way) |");
    println!("|---|---|---|---|");
    let mut medians = Vec::new();
    for (i, (name, _)) in setups.iter().enumerate() {
        if let Some(why) = &failed[i] {
            println!("| {name} | failed: {why} | | |");
            medians.push((f64::NAN, f64::NAN));
            continue;
        }
        let rtt: Vec<f64> = figures[i].iter().map(|f| f.rr_us).collect();
        let tput: Vec<f64> = figures[i].iter().map(|f| f.mb_s).collect();
        let (rlo, rhi) = spread(&rtt);
        let (tlo, thi) = spread(&tput);
        let (r, t) = (median(rtt), median(tput));
        medians.push((r, t));
        println!(
            "| {name} | {r:.0} ({rlo:.0}–{rhi:.0}) | {:.0} | {t:.1} ({tlo:.1}–{thi:.1}) |",
            1e6 / r
        );
    }
    let crun = setups.iter().position(|(n, _)| n.contains("crun"));
    if let Some(c) = crun.filter(|&c| failed[c].is_none()) {
        let (cr, ct) = medians[c];
        for (i, (name, _)) in setups.iter().enumerate() {
            if i != c && failed[i].is_none() {
                let (r, t) = medians[i];
                println!(
                    "{name} / crun under podman: round trip {:.1}×, throughput {:.2}×",
                    r / cr,
                    t / ct
                );
            }
        }
    }
}

/// Whether passt can run here; in the testbed's L1, which has no network,
/// a veth pair gives it the default route it insists on.
fn passt_here() -> Result<(), String> {
    let on_path = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .any(|d| d.join("passt").is_file());
    if !on_path {
        return Err("not installed (passt)".into());
    }
    if husk_tests::host_has_default_route() {
        return Ok(());
    }
    if std::env::var_os("HUSK_TESTBED").is_none() {
        return Err("not measured: no IPv4 default route for passt".into());
    }
    for args in [
        "link add husk-bench0 type veth peer name husk-bench1",
        "addr add 10.93.0.1/24 dev husk-bench0",
        "link set husk-bench0 up",
        "link set husk-bench1 up",
        "route add default via 10.93.0.2 dev husk-bench0",
    ] {
        let ok = Command::new("/usr/sbin/ip")
            .args(args.split_whitespace())
            .status()
            .map_err(|e| e.to_string())?
            .success();
        if !ok {
            return Err(format!("not measured: ip {args} failed"));
        }
    }
    Ok(())
}

/// Loads the bench image (busybox and husk-bench) into podman's store as
/// the tests' image name.
fn load_bench_image(store: &Path, husk: &Path, work: &Path) {
    let busybox = husk_tests::busybox_on_path();
    let tar = work.join("bench.tar");
    let tool = husk_tests::guest_dir().join("husk-bench");
    let built = Command::new(husk)
        .args(["image", "build-test"])
        .arg(&tar)
        .arg("--busybox")
        .arg(&busybox)
        .args(["--format", "docker-archive", "--add"])
        .arg(format!("{}:/usr/bin/husk-bench", tool.display()))
        .output()
        .unwrap();
    assert!(built.status.success(), "{built:?}");
    let loaded = husk_tests::podman::command(store, Path::new("/usr/bin/crun"))
        .args(["load", "-q", "-i"])
        .arg(&tar)
        .output()
        .unwrap();
    assert!(loaded.status.success(), "podman load: {loaded:?}");
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Waits for the echo to answer, then measures: round trips, then
/// throughput; closing the connection ends the container.
fn measure(port: u16, rr: u64, mib: u64) -> Result<Figures, String> {
    let mut s = connect_echoing(port)?;
    let mut msg = [0x5au8; RR_MSG];
    let mut rtts = Vec::with_capacity(rr as usize);
    for i in 0..rr {
        msg[0] = i as u8;
        let t = Instant::now();
        s.write_all(&msg).map_err(|e| format!("write: {e}"))?;
        let mut back = [0u8; RR_MSG];
        s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
        rtts.push(t.elapsed().as_secs_f64() * 1e6);
        if back != msg {
            return Err("the echo differs".into());
        }
    }
    let total = mib << 20;
    let mut writer = s.try_clone().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let send = std::thread::spawn(move || {
        let chunk = vec![0xa5u8; 64 << 10];
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            writer.write_all(&chunk[..n])?;
            left -= n as u64;
        }
        writer.shutdown(Shutdown::Write)
    });
    let mut buf = vec![0u8; 64 << 10];
    let mut got = 0u64;
    while got < total {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err(format!("the echo ended after {got} of {total} bytes"));
        }
        got += n as u64;
    }
    let secs = t.elapsed().as_secs_f64();
    send.join()
        .map_err(|_| "sender panicked".to_string())?
        .map_err(|e| format!("write: {e}"))?;
    Ok(Figures {
        rr_us: median(rtts),
        mb_s: total as f64 / secs / 1e6,
    })
}

/// A connection whose one-byte probe comes back: before the server
/// listens, DNAT refuses and husk's proxy accepts and then closes.
fn connect_echoing(port: u16) -> Result<TcpStream, String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            let mut b = [0u8; 1];
            if s.write_all(b"p").is_ok() && s.read_exact(&mut b).is_ok() && b == *b"p" {
                let _ = s.set_read_timeout(None);
                return Ok(s);
            }
        }
        if Instant::now() > deadline {
            return Err(format!("nothing echoes on 127.0.0.1:{port} after 120 s"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
