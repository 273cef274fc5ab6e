//! Pulling a multi-layer image from a registry: `husk pull` into an empty
//! store against `skopeo copy docker://… oci:DIR`, interleaved, from
//! Debian's docker-registry on 127.0.0.1 (plain HTTP, so the figures are
//! the clients', not TLS's). Both verify every blob's digest. Native: no
//! VM is involved.
//!
//! Usage: registry-pull [--runs N] [--layers N] [--mib N] [--husk PATH]

use husk_benches::{median, spread};
use husk_tests::registry::{Registry, Setup, PROGRAM, SKOPEO};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

struct Args {
    runs: usize,
    layers: usize,
    mib: usize,
    husk: String,
}

fn args() -> Args {
    let mut a = Args {
        runs: 7,
        layers: 4,
        mib: 16,
        husk: "target/release/husk".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--runs" => a.runs = value().parse().expect("--runs N"),
            "--layers" => a.layers = value().parse().expect("--layers N"),
            "--mib" => a.mib = value().parse().expect("--mib N"),
            "--husk" => a.husk = value(),
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// The project's test image plus `layers` layers of `mib` MiB of
/// incompressible data each.
fn image(dir: &Path, layers: usize, mib: usize) -> std::path::PathBuf {
    use husk_image::testimage::{self, Compression, Entry, Layer};
    let mut image = testimage::husk_test_image(Path::new("/bin/busybox")).expect("busybox");
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for n in 0..layers {
        let data: Vec<u8> = (0..mib << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let entry = Entry::file(&format!("data{n}"), 0o644, data);
        image
            .layers
            .push(Layer::new(vec![entry], Compression::Gzip));
    }
    let out = dir.join("layout");
    image.build().unwrap().write_layout(&out).unwrap();
    out
}

fn timed(mut cmd: Command) -> f64 {
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("spawn");
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    start.elapsed().as_secs_f64() * 1e3
}

fn main() {
    let a = args();
    if !Path::new(PROGRAM).exists() {
        eprintln!("registry-pull: {PROGRAM}: not installed (apt-get install docker-registry)");
        std::process::exit(2);
    }
    let skopeo = Path::new(SKOPEO).exists();
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::start(&dir.path().join("registry"), Setup::default());
    let layout = image(dir.path(), a.layers, a.mib);
    if !skopeo {
        eprintln!("registry-pull: {SKOPEO}: not installed; it also pushes the image");
        std::process::exit(2);
    }
    registry.push_with_skopeo(&format!("oci:{}", layout.display()), "bench/pull:1");
    let name = format!("{}/bench/pull:1", registry.addr);
    let (mut husk, mut peer) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        let store = dir.path().join(format!("store{run}"));
        let mut cmd = Command::new(&a.husk);
        cmd.args(["pull", "-q", "--insecure-registry", &registry.addr, &name])
            .env("HUSK_STORE", &store);
        husk.push(timed(cmd));
        let target = dir.path().join(format!("skopeo{run}"));
        let mut cmd = Command::new(SKOPEO);
        cmd.args([
            "--insecure-policy",
            "copy",
            "--quiet",
            "--src-tls-verify=false",
        ])
        .arg(format!("docker://{name}"))
        .arg(format!("oci:{}:x", target.display()));
        peer.push(timed(cmd));
        let _ = std::fs::remove_dir_all(&store);
        let _ = std::fs::remove_dir_all(&target);
    }
    let total = a.layers * a.mib;
    println!(
        "registry-pull: {} layers of {} MiB (+ the test image's 2), {} runs, interleaved, medians",
        a.layers, a.mib, a.runs
    );
    for (who, v) in [("husk pull", &husk), ("skopeo copy", &peer)] {
        let m = median(v.clone());
        let (lo, hi) = spread(v);
        println!(
            "  {who:<12} {m:8.1} ms  ({lo:.1}–{hi:.1})  {:.0} MiB/s",
            total as f64 / (m / 1e3)
        );
    }
    println!(
        "  husk/skopeo  {:.2}× the time",
        median(husk.clone()) / median(peer.clone())
    );
}
