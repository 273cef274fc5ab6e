//! The cgroup paths against a real cgroup2 mount: processes join it, exec'd
//! processes too, signal(all) and destroy go through it, it is removed.
//!
//! Dev hosts with a hybrid hierarchy have a controller-less cgroup2 at
//! /sys/fs/cgroup/unified: enough for cgroup.procs, cgroup.kill and
//! cpu.stat, not for limits (the VM's e2e tests cover those). Skipped where
//! there is none. This binary points the runtime at it for all its tests.

mod common;

use std::fs;
use std::path::Path;

use common::*;
use husk_container::oci_spec::runtime::{LinuxMemoryBuilder, LinuxResourcesBuilder};
use husk_container::{set_cgroup_root, Container, Stdio};

const UNIFIED: &str = "/sys/fs/cgroup/unified";

/// Root, and a cgroup2 mount to use.
fn ready() -> bool {
    if !is_root() {
        husk_skip::skip("needs root");
        return false;
    }
    let is_cg2 = nix_statfs_is_cgroup2(Path::new(UNIFIED));
    if !is_cg2 {
        husk_skip::skip(&format!("no cgroup2 at {UNIFIED}"));
        return false;
    }
    setup();
    set_cgroup_root(UNIFIED);
    true
}

fn nix_statfs_is_cgroup2(p: &Path) -> bool {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: statfs into a local struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == 0x6367_7270 }
}

fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect()
}

#[test]
fn processes_live_in_the_container_cgroup() {
    if !ready() {
        return;
    }
    let id = format!("cg-{}", std::process::id());
    let (mut c, io) = create(
        &id,
        &spec(&["sh", "-c", "sleep 100 & echo ready; wait; echo waited"]),
        Stdio::Pipes { stdin: false },
    );
    let dir = c.cgroup_path().expect("a cgroup").to_path_buf();
    assert_eq!(dir, Path::new(UNIFIED).join("husk").join(&id));
    assert_eq!(procs(&dir), vec![c.init_pid()]);
    c.start().unwrap();
    assert_eq!(read_line(&io.stdout), "ready");
    assert_eq!(c.pids().len(), 2);

    // Inside, the cgroup namespace makes the container's cgroup the root.
    let p = spec(&["cat", "/proc/self/cgroup"])
        .process()
        .clone()
        .unwrap();
    let (pid, eio) = c.exec(&p, Stdio::Pipes { stdin: false }).unwrap();
    let out = read_all(&eio.stdout);
    assert_eq!(exit_code(wait(pid)), Some(0));
    assert!(out.lines().any(|l| l == "0::/"), "{out}");

    // An exec'd process joins the cgroup.
    let p = spec(&["sleep", "100"]).process().clone().unwrap();
    let (sleeper, _eio) = c.exec(&p, Stdio::Pipes { stdin: false }).unwrap();
    assert!(procs(&dir).contains(&sleeper));
    assert_eq!(c.pids().len(), 3);

    let stats = c.stats().unwrap();
    assert!(stats.cpu_usage_usec > 0, "{stats:?}");

    // SIGTERM to all: the sleeps die, PID 1 (no handler) survives it and
    // returns from wait. (The exec'd sleep may be SIGKILLed first by the
    // teardown of the pid namespace once PID 1 exits.)
    c.signal(libc::SIGTERM, true).unwrap();
    let sig = term_signal(wait(sleeper));
    assert!(
        matches!(sig, Some(libc::SIGTERM | libc::SIGKILL)),
        "{sig:?}"
    );
    assert_eq!(read_line(&io.stdout), "waited");
    assert!(exit_code(wait(c.init_pid())).is_some());
    c.destroy().unwrap();
    assert!(!dir.exists());
}

#[test]
fn destroy_kills_through_the_cgroup_and_removes_it() {
    if !ready() {
        return;
    }
    let id = format!("cgkill-{}", std::process::id());
    let (mut c, io) = create(
        &id,
        &spec(&["sh", "-c", "sleep 100 & sleep 100 & echo ready; wait"]),
        Stdio::Pipes { stdin: false },
    );
    c.start().unwrap();
    assert_eq!(read_line(&io.stdout), "ready");
    let p = spec(&["sleep", "100"]).process().clone().unwrap();
    let (exec_pid, _eio) = c.exec(&p, Stdio::Pipes { stdin: false }).unwrap();
    let dir = c.cgroup_path().unwrap().to_path_buf();
    assert_eq!(procs(&dir).len(), 4);
    let init = c.init_pid();
    // The exec'd process stays an unreaped zombie during destroy: the
    // cgroup empties anyway and is removed.
    c.destroy().unwrap();
    assert!(!dir.exists());
    assert_eq!(term_signal(wait(exec_pid)), Some(libc::SIGKILL));
    assert_eq!(term_signal(wait(init)), Some(libc::SIGKILL));
}

#[test]
fn a_limit_the_cgroup_cannot_take_fails_create_cleanly() {
    if !ready() {
        return;
    }
    let id = format!("cglimit-{}", std::process::id());
    let mut s = spec(&["true"]);
    s.linux_mut().as_mut().unwrap().set_resources(Some(
        LinuxResourcesBuilder::default()
            .memory(
                LinuxMemoryBuilder::default()
                    .limit(64i64 << 20)
                    .build()
                    .unwrap(),
            )
            .build()
            .unwrap(),
    ));
    // No memory controller on this mount: memory.max cannot be written.
    let e = Container::create(
        &id,
        &s,
        &rootfs(),
        &state_dir(),
        Stdio::Pipes { stdin: false },
    )
    .unwrap_err();
    assert!(e.to_string().contains("memory.max"), "{e}");
    assert!(!Path::new(UNIFIED).join("husk").join(&id).exists());
    assert!(!state_dir().join(&id).exists());
}
