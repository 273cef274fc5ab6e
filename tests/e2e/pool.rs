//! The pool: `husk run` restores a template of a booted guest instead of
//! booting, and each clone is its own VM (its image, its scratch disk, its
//! clock, its randomness).

use crate::run::{Run, TIMEOUT};
use husk_tests::process::{self, Finished};
use husk_tests::require_linux_kvm;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Prints what a clone must not share with its template or its siblings,
/// and proves the image disk (the file) and the scratch disk (a write)
/// are the run's own.
const PROBE: &str = "cat /etc/husk-test-image; date +%s; \
    head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; \
    echo written > /probe && cat /probe; exit 3";

fn pooled_run(run: &Run, pool: &Path) -> Finished {
    let mut c = run.command(
        &["--rm", "--network", "none", "--scratch", "32m"],
        &["sh", "-c", PROBE],
    );
    c.env("HUSK_POOL", "on")
        .env("HUSK_POOL_DIR", pool)
        .env("HUSK_TIMINGS", "1");
    process::run(c, TIMEOUT)
}

/// The templates in the pool (one directory each).
fn templates(pool: &Path) -> usize {
    std::fs::read_dir(pool)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .count()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The probe's lines: the image's file, the guest's clock, its random
/// bytes, the scratch write.
fn probe_lines(out: &Finished) -> (u64, String) {
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{}", out.describe());
    assert!(!lines[0].is_empty(), "the image's file: {}", out.describe());
    assert_eq!(lines[3], "written", "{}", out.describe());
    let clock = lines[1]
        .parse()
        .unwrap_or_else(|_| panic!("date: {}", out.describe()));
    (clock, lines[2].to_string())
}

#[test]
fn runs_are_clones_of_one_template_each_with_its_own_identity() {
    require_linux_kvm();
    let run = Run::new();
    let pool = tempfile::tempdir().unwrap();

    // The first run makes the template (a boot), then restores it.
    let first = pooled_run(&run, pool.path());
    assert_eq!(first.code, Some(3), "{}", first.describe());
    assert!(
        first.stderr.contains("template_ready"),
        "not from the pool: {}",
        first.describe()
    );
    // The agent's own steps of creating the container, with HUSK_TIMINGS.
    let guest_steps = first
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("husk-timings-guest-create: "))
        .unwrap_or_else(|| panic!("no guest steps: {}", first.describe()));
    for step in ["mount_image=", "mount_scratch=", "clone=", "init_ready="] {
        assert!(guest_steps.contains(step), "{step} in {guest_steps}");
    }
    let (_, first_random) = probe_lines(&first);
    assert_eq!(templates(pool.path()), 1, "the first run made no template");
    let made = now();

    // Long enough after the snapshot that a clone keeping the template's
    // clock would be visibly behind.
    let wait = Duration::from_secs(12);
    std::thread::sleep(wait);
    let second = pooled_run(&run, pool.path());
    assert_eq!(second.code, Some(3), "{}", second.describe());
    let (clock, second_random) = probe_lines(&second);
    let host = now();
    // Clones start from one generator state; the reseed with the host's
    // bytes makes them differ at once. (This kernel also reseeds on its
    // own schedule, so without the identity step they differed here too:
    // the clock below is what proves the step ran.)
    assert_ne!(
        first_random, second_random,
        "two clones drew the same random bytes"
    );
    assert!(
        clock + 5 >= host && clock <= host + 1,
        "the clone's clock {clock} is not the host's {host} (template made at {made}): {}",
        second.describe()
    );
    assert_eq!(
        templates(pool.path()),
        1,
        "the second run made another template"
    );

    // Without the pool, the same run boots.
    let mut cold = run.command(
        &["--rm", "--network", "none", "--scratch", "32m"],
        &["sh", "-c", PROBE],
    );
    cold.env("HUSK_POOL", "off")
        .env("HUSK_POOL_DIR", pool.path())
        .env("HUSK_TIMINGS", "1");
    let cold = process::run(cold, TIMEOUT);
    assert_eq!(cold.code, Some(3), "{}", cold.describe());
    assert!(
        !cold.stderr.contains("template_ready"),
        "{}",
        cold.describe()
    );
    probe_lines(&cold);

    // `husk pool` lists the template and removes it.
    let pool_cmd = |args: &[&str]| {
        let mut c = run.husk_command(&[&["pool"], args].concat());
        c.env("HUSK_POOL_DIR", pool.path());
        process::run(c, TIMEOUT)
    };
    let ls = pool_cmd(&["ls"]);
    assert_eq!(ls.code, Some(0), "{}", ls.describe());
    let lines: Vec<&str> = ls.stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{}", ls.describe());
    assert!(lines[1].ends_with("this one"), "{}", ls.describe());
    let name = lines[1].split_whitespace().next().unwrap();
    let unknown = pool_cmd(&["rm", "no-such-template"]);
    assert_ne!(unknown.code, Some(0), "{}", unknown.describe());
    assert!(
        unknown.stderr.contains("no template"),
        "{}",
        unknown.describe()
    );
    let rm = pool_cmd(&["rm", "--all"]);
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
    assert_eq!(rm.stdout.trim(), name, "{}", rm.describe());
    assert_eq!(templates(pool.path()), 0, "{}", rm.describe());
}

/// Bridged runs from one template: the TAP is the run's, and the clone
/// takes the run's MAC and address (set by the agent, as `ip=` does in a
/// booted VM), and reaches the host through the bridge.
#[test]
fn bridged_clones_take_the_runs_mac_and_address() {
    require_linux_kvm();
    let _one = crate::z_bridge::BRIDGE
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let run = Run::new();
    let pool = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        (0..2)
            .map(|_| {
                let (s, _) = listener.accept().unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut line = String::new();
                std::io::BufRead::read_line(&mut std::io::BufReader::new(s), &mut line).unwrap();
                line
            })
            .collect::<Vec<_>>()
    });
    let script = format!(
        "cat /sys/class/net/eth0/address; ip -4 -o addr show eth0 | awk '{{print $4}}'; \
         gw=$(ip route | awk '/^default/ {{print $3}}'); \
         echo from-$(cat /sys/class/net/eth0/address) | nc $gw {port} && echo tcp-ok"
    );
    let clone = || {
        let mut c = run.command(&["--rm", "--network", "bridge"], &["sh", "-c", &script]);
        c.env("HUSK_POOL", "on")
            .env("HUSK_POOL_DIR", pool.path())
            .env("HUSK_TIMINGS", "1");
        let out = process::run(c, TIMEOUT);
        assert_eq!(out.code, Some(0), "{}", out.describe());
        assert!(
            out.stderr.contains("template_ready"),
            "not from the pool: {}",
            out.describe()
        );
        let lines: Vec<String> = out.stdout.lines().map(str::to_owned).collect();
        assert_eq!(lines.len(), 3, "{}", out.describe());
        assert_eq!(lines[2], "tcp-ok", "{}", out.describe());
        assert!(lines[1].starts_with("10.90.0."), "{}", out.describe());
        (lines[0].clone(), lines[1].clone())
    };
    // The template booted with no address and the first run's MAC (the
    // bridge derives MACs from addresses). A container that keeps running
    // holds the first address again, so the next clone gets another
    // address and MAC than its template: without its identity it would
    // have the template's MAC and no address at all (no connection).
    let (mac1, addr1) = clone();
    let mut holder = run.command(&["-d", "--network", "bridge"], &["sleep", "600"]);
    holder
        .env("HUSK_POOL", "on")
        .env("HUSK_POOL_DIR", pool.path());
    let holder = process::run(holder, TIMEOUT);
    assert_eq!(holder.code, Some(0), "{}", holder.describe());
    let (mac2, addr2) = clone();
    let rm = process::run(
        {
            let mut c = run.husk_command(&["rm", "-f", holder.stdout.trim()]);
            c.env("HUSK_POOL_DIR", pool.path());
            c
        },
        TIMEOUT,
    );
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
    assert_ne!(addr1, addr2, "the second clone's address");
    assert_ne!(mac1, mac2, "the second clone kept its template's MAC");
    let heard = server.join().unwrap();
    assert_eq!(
        heard,
        [format!("from-{mac1}\n"), format!("from-{mac2}\n")],
        "what the host heard"
    );
    assert_eq!(templates(pool.path()), 1);
}

/// Volumes in clones. The template's guest probed two virtio-fs devices
/// it never mounted and an empty disk; each clone's shares connect to the
/// run's own virtiofsd and its disk is the run's file, so a clone reads and
/// writes the run's directories (read-only where asked) and disk image,
/// and the next run of the same shape, from the same template, sees its
/// own directories and what the first wrote on the disk. Once mounted, a
/// share cannot be checkpointed (virtiofsd holds the session): one line
/// says so.
#[test]
fn clones_take_the_runs_volumes() {
    require_linux_kvm();
    let run = Run::new();
    let pool = tempfile::tempdir().unwrap();
    let pooled = |c: &mut std::process::Command| {
        c.env("HUSK_POOL", "on")
            .env("HUSK_POOL_DIR", pool.path())
            .env("HUSK_TIMINGS", "1");
    };
    let script = "cat /in/from-host; touch /in/nope 2>/dev/null && echo ro-broken; \
                  echo from-guest > /out/written; ls /out; \
                  cat /disk/f 2>/dev/null || echo none; cat /in/from-host > /disk/f";
    let disk_dir = tempfile::tempdir().unwrap();
    let disk = disk_dir.path().join("disk.ext4");
    husk_image::mkfs::Ext4::new(32 << 20).make(&disk).unwrap();
    for (round, on_disk) in [("first", "none"), ("second", "first")] {
        let (input, output) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        std::fs::write(input.path().join("from-host"), format!("{round}\n")).unwrap();
        let volumes = [
            format!("{}:/in:ro", input.path().display()),
            format!("{}:/out", output.path().display()),
            format!("{}:/disk", disk.display()),
        ];
        let mut c = run.command(
            &[
                "--rm",
                "--network",
                "none",
                "-v",
                &volumes[0],
                "-v",
                &volumes[1],
                "-v",
                &volumes[2],
            ],
            &["sh", "-c", script],
        );
        pooled(&mut c);
        let out = process::run(c, TIMEOUT);
        assert_eq!(out.code, Some(0), "{round}: {}", out.describe());
        assert!(
            out.stderr.contains("template_ready"),
            "{round}: not from the pool: {}",
            out.describe()
        );
        assert_eq!(
            out.stdout,
            format!("{round}\nwritten\n{on_disk}\n"),
            "{round}: {}",
            out.describe()
        );
        assert_eq!(
            std::fs::read_to_string(output.path().join("written")).unwrap(),
            "from-guest\n",
            "{round}: the clone's write is not in the run's directory"
        );
        assert!(!input.path().join("nope").exists(), "{round}");
    }
    assert_eq!(templates(pool.path()), 1, "a template per run");

    let dir = tempfile::tempdir().unwrap();
    let volume = format!("{}:/data", dir.path().display());
    let mut c = run.command(
        &["-d", "--network", "none", "-v", &volume],
        &["sh", "-c", "echo up > /data/up; sleep 600"],
    );
    pooled(&mut c);
    let started = process::run(c, TIMEOUT);
    assert_eq!(started.code, Some(0), "{}", started.describe());
    let id = started.stdout.trim().to_owned();
    let deadline = std::time::Instant::now() + TIMEOUT;
    while !dir.path().join("up").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the container never wrote"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let saved = tempfile::tempdir().unwrap();
    let cp = crate::run::husk(&run, &["checkpoint", &id, saved.path().to_str().unwrap()]);
    let rm = crate::run::husk(&run, &["rm", "-f", &id]);
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
    assert_ne!(cp.code, Some(0), "{}", cp.describe());
    assert!(
        cp.stderr.contains("shared directory") && cp.stderr.trim().lines().count() == 1,
        "{}",
        cp.describe()
    );
}

/// What a `--rm` run wrote and never synced, through write(2) and through
/// a shared mapping, is on the host when husk returns, whichever way the
/// VM ended: with a share only, the guest syncs and husk stops it; with a
/// disk-image volume, the guest unmounts it and powers off, so the image
/// is clean (no journal to replay) and a later run reads the writes.
/// Booted and from the pool.
#[test]
fn a_runs_unsynced_writes_are_on_the_host_when_it_ends() {
    require_linux_kvm();
    let run = Run::new();
    let pool = tempfile::tempdir().unwrap();
    let bench = husk_tests::guest_dir().join("husk-bench-image");
    let logs = tempfile::tempdir().unwrap();
    for from_pool in [false, true] {
        let share = tempfile::tempdir().unwrap();
        let disk = logs.path().join(format!("disk-{from_pool}.ext4"));
        husk_image::mkfs::Ext4::new(32 << 20).make(&disk).unwrap();
        let log = logs.path().join(format!("husk-{from_pool}.log"));
        let unsynced = |volumes: &[String], cmd: &str| {
            let mut flags = vec!["--rm", "--network", "none"];
            for v in volumes {
                flags.extend(["-v", v.as_str()]);
            }
            let mut c = run.command_with_image(&bench, &flags, &["sh", "-c", cmd]);
            c.env("HUSK_POOL", if from_pool { "on" } else { "off" })
                .env("HUSK_POOL_DIR", pool.path())
                .env("HUSK_TIMINGS", "1")
                .env("HUSK_LOG", &log);
            let out = process::run(c, TIMEOUT);
            assert_eq!(out.code, Some(0), "pool {from_pool}: {}", out.describe());
            assert_eq!(
                out.stderr.contains("template_ready"),
                from_pool,
                "{}",
                out.describe()
            );
            out
        };
        let on_share = format!("{}:/data", share.path().display());
        let on_disk = format!("{}:/disk", disk.display());
        unsynced(&[on_share], "husk-bench unsynced /data >/dev/null");
        // Synced and stopped, not powered off (that is the fallback).
        let logged = std::fs::read_to_string(&log).unwrap_or_default();
        assert!(!logged.contains("powering the guest off"), "{logged}");
        let read = |name: &str| std::fs::read(share.path().join(name)).unwrap_or_default();
        assert_eq!(read("unsynced.write"), b"written and never synced\n");
        assert_eq!(read("unsynced.mmap"), b"written through a shared mapping\n");

        unsynced(
            std::slice::from_ref(&on_disk),
            "husk-bench unsynced /disk >/dev/null",
        );
        assert!(
            !ext4_needs_recovery(&disk),
            "pool {from_pool}: the image was not unmounted: its journal needs a replay"
        );
        let back = unsynced(&[on_disk], "cat /disk/unsynced.write /disk/unsynced.mmap");
        assert_eq!(
            back.stdout,
            "written and never synced\nwritten through a shared mapping\n",
            "pool {from_pool}: {}",
            back.describe()
        );
    }
}

/// Whether the ext4 image at `path` was left mounted (its superblock's
/// incompatible feature `needs_recovery`, set while mounted).
fn ext4_needs_recovery(path: &Path) -> bool {
    use std::os::unix::fs::FileExt;
    const SUPERBLOCK: u64 = 1024;
    const INCOMPAT: u64 = 0x60;
    const RECOVER: u32 = 0x4;
    let mut word = [0u8; 4];
    std::fs::File::open(path)
        .unwrap()
        .read_exact_at(&mut word, SUPERBLOCK + INCOMPAT)
        .unwrap();
    u32::from_le_bytes(word) & RECOVER != 0
}

/// The 2 MiB huge page pool's size (`vm.nr_hugepages`) and free pages.
const HUGE_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB";

fn huge_count(name: &str) -> u64 {
    husk_vmm::snapshot::hugetlb::count(name).unwrap()
}

fn set_huge_pages(n: u64) {
    std::fs::write(format!("{HUGE_SYSFS}/nr_hugepages"), n.to_string())
        .unwrap_or_else(|e| panic!("vm.nr_hugepages = {n}: {e}"));
}

/// Huge pages for one test: a hugetlbfs mount if the host has none, and
/// the pool's size as the test sets it; both as they were on drop.
struct HugePages {
    was: u64,
    mounted: Option<tempfile::TempDir>,
}

impl HugePages {
    fn new() -> Self {
        let was = huge_count("nr_hugepages");
        let mounted = husk_vmm::snapshot::hugetlb::mount().is_err().then(|| {
            let dir = tempfile::tempdir().unwrap();
            let st = std::process::Command::new("mount")
                .args(["-t", "hugetlbfs", "-o", "pagesize=2M", "none"])
                .arg(dir.path())
                .status()
                .expect("mount");
            assert!(st.success(), "mount -t hugetlbfs: {st}");
            dir
        });
        Self { was, mounted }
    }

    /// husk's copies of templates on the mount.
    fn copies(&self) -> Vec<String> {
        let dir = husk_vmm::snapshot::hugetlb::mount().unwrap();
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("husk-"))
            .collect()
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(dir) = self.mounted.take() {
            let _ = std::process::Command::new("umount")
                .arg(dir.path())
                .status();
        }
        set_huge_pages(self.was);
    }
}

/// `HUSK_POOL_MEMORY=huge`: clones map a copy of the template's memory on
/// hugetlbfs, private. They run as the others do; too few huge pages is a
/// clear error; removing the template gives the copy's pages back.
#[test]
fn huge_page_clones_run_and_their_template_gives_its_pages_back() {
    require_linux_kvm();
    let run = Run::new();
    let pool = tempfile::tempdir().unwrap();
    let huge = HugePages::new();
    // A 128 MiB VM (32 MiB + the guest's overhead): 64 pages for the copy,
    // 64 for a clone's reservation, with room for a second clone.
    let pages = 64;
    let used = huge_count("nr_hugepages") - huge_count("free_hugepages");
    set_huge_pages(used + 3 * pages);
    let huge_run = || {
        let mut c = run.command(
            &[
                "--rm",
                "--network",
                "none",
                "--memory",
                "32m",
                "--scratch",
                "32m",
            ],
            &["sh", "-c", PROBE],
        );
        c.env("HUSK_POOL", "on")
            .env("HUSK_POOL_DIR", pool.path())
            .env("HUSK_POOL_MEMORY", "huge")
            .env("HUSK_TIMINGS", "1");
        process::run(c, TIMEOUT)
    };
    let mut randoms = Vec::new();
    for _ in 0..2 {
        let out = huge_run();
        assert_eq!(out.code, Some(3), "{}", out.describe());
        assert!(out.stderr.contains("template_ready"), "{}", out.describe());
        randoms.push(probe_lines(&out).1);
    }
    assert_ne!(randoms[0], randoms[1], "two clones drew the same bytes");
    assert_eq!(huge.copies().len(), 1, "one copy per template");
    // The copy holds the pages of its data (the guest's untouched memory
    // is holes), nothing reserved; the clones gave theirs back.
    let copy = huge_count("nr_hugepages") - huge_count("free_hugepages") - used;
    assert!(copy > 0 && copy < pages, "the copy takes {copy} pages");
    assert_eq!(huge_count("resv_hugepages"), 0);

    // Fewer free pages than a clone's mapping reserves.
    set_huge_pages(used + copy + pages / 2);
    let short = huge_run();
    assert_ne!(short.code, Some(0), "{}", short.describe());
    assert_ne!(short.code, Some(3), "{}", short.describe());
    assert!(
        short.stderr.contains("too few free 2 MiB huge pages"),
        "{}",
        short.describe()
    );

    let mut rm = run.husk_command(&["pool", "rm", "--all"]);
    rm.env("HUSK_POOL_DIR", pool.path());
    let rm = process::run(rm, TIMEOUT);
    assert_eq!(rm.code, Some(0), "{}", rm.describe());
    assert!(huge.copies().is_empty(), "{:?}", huge.copies());
    assert_eq!(
        huge_count("free_hugepages"),
        huge_count("nr_hugepages") - used
    );
}
