//! Native tests of the runtime: real namespaces, overlayfs and mounts, as
//! root (skipped otherwise). The image is a busybox tree built once per
//! machine under the temp dir. The test process is a child subreaper and
//! reaps the pids it is given by pid.
//!
//! /sys/fs/cgroup on a dev host may not be cgroup v2: these tests ask for no
//! resources, so the runtime runs without a cgroup there (see cgroup.rs for
//! the cgroup paths on a controller-less cgroup2 mount, the unit tests for
//! the file logic, and the VM's e2e tests for limits).

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use common::*;
use husk_container::oci_spec::runtime::{
    Capability, LinuxNamespaceType, LinuxSeccompAction, LinuxSeccompBuilder, MountBuilder,
};
use husk_container::{resize_tty, Container, Error, Rootfs, Stdio};

macro_rules! need_root {
    () => {
        if !is_root() {
            return husk_skip::skip("needs root");
        }
        setup();
    };
}

#[test]
fn echo_stdout_stderr_and_exit_code() {
    need_root!();
    let (out, err, status) = run(
        "echo",
        &spec(&["sh", "-c", "echo hello; echo oops >&2; exit 3"]),
    );
    assert_eq!(out, "hello\n");
    assert_eq!(err, "oops\n");
    assert_eq!(exit_code(status), Some(3));
}

#[test]
fn death_by_signal_is_seen_by_waitpid() {
    need_root!();
    let (mut c, _io) = create(
        "sig",
        &spec(&["sleep", "30"]),
        Stdio::Pipes { stdin: false },
    );
    c.start().unwrap();
    c.signal(libc::SIGKILL, false).unwrap();
    assert_eq!(term_signal(wait(c.init_pid())), Some(libc::SIGKILL));
    c.destroy().unwrap();
}

#[test]
fn env_cwd_user_caps_rlimits() {
    need_root!();
    let mut s = spec(&[
        "sh",
        "-c",
        "echo $FOO; pwd; id -u; id -g; id -G; ulimit -n; grep CapBnd /proc/self/status",
    ]);
    let p = process(&mut s);
    let mut env = p.env().clone().unwrap();
    env.push("FOO=bar baz".into());
    p.set_env(Some(env));
    p.set_cwd("/tmp".into());
    p.user_mut().set_uid(1000);
    p.user_mut().set_gid(1000);
    p.user_mut().set_additional_gids(Some(vec![1000, 2000]));
    let (out, err, status) = run("envuser", &s);
    assert_eq!(exit_code(status), Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..6],
        ["bar baz", "/tmp", "1000", "1000", "1000 2000", "1024"]
    );
    // Docker's 14 capabilities.
    assert_eq!(lines[6], "CapBnd:\t00000000a80425fb");
}

#[test]
fn root_gets_docker_capabilities() {
    need_root!();
    let (out, _, status) = run("caps", &spec(&["grep", "^Cap", "/proc/self/status"]));
    assert_eq!(exit_code(status), Some(0));
    for set in ["CapPrm", "CapEff", "CapBnd"] {
        assert!(out.contains(&format!("{set}:\t00000000a80425fb")), "{out}");
    }
    assert!(out.contains("CapInh:\t0000000000000000"), "{out}");
}

#[test]
fn hostname_and_domainname() {
    need_root!();
    let mut s = spec(&["sh", "-c", "hostname; cat /proc/sys/kernel/domainname"]);
    s.set_hostname(Some("box".into()));
    s.set_domainname(Some("example.org".into()));
    let (out, err, _) = run("host", &s);
    assert_eq!(out, "box\nexample.org\n", "{err}");
}

#[test]
fn pid_namespace_shows_only_the_container() {
    need_root!();
    let (out, err, status) = run(
        "pidns",
        &spec(&[
            "sh",
            "-c",
            "echo $$; for p in /proc/[0-9]*; do echo ${p#/proc/}; done; ps -o pid,comm | wc -l",
        ]),
    );
    assert_eq!(exit_code(status), Some(0), "{err}");
    // sh is PID 1; /proc lists it alone; ps sees sh + ps (+ header, wc).
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1");
    assert_eq!(lines[1], "1");
    let ps: usize = lines[2].trim().parse().unwrap();
    assert!(ps <= 4, "{out}");
}

#[test]
fn writes_land_in_the_upper_layer() {
    need_root!();
    // tmpfs upper: the file is visible inside, not in the image.
    let (out, err, _) = run(
        "upper-tmpfs",
        &spec(&[
            "sh",
            "-c",
            "echo x > /newfile && cat /newfile /etc/lower-file",
        ]),
    );
    assert_eq!(out, "x\nfrom the image\n", "{err}");
    assert!(!lower().join("newfile").exists());

    // A caller's upper directory keeps the changes.
    let upper = state_dir().join("upper-dir-test");
    let r = Rootfs::Layered {
        lower: lower().to_path_buf(),
        upper: Some(upper.clone()),
    };
    let (mut c, io) = Container::create(
        "upper-dir",
        &spec(&["sh", "-c", "echo kept > /kept; rm /etc/lower-file"]),
        &r,
        &state_dir(),
        Stdio::Pipes { stdin: false },
    )
    .unwrap();
    c.start().unwrap();
    assert_eq!(read_all(&io.stdout), "");
    assert_eq!(exit_code(wait(c.init_pid())), Some(0));
    c.destroy().unwrap();
    assert_eq!(
        fs::read_to_string(upper.join("upper/kept")).unwrap(),
        "kept\n"
    );
    assert!(lower().join("etc/lower-file").exists());
    fs::remove_dir_all(&upper).unwrap();
}

#[test]
fn a_directory_root_is_used_as_it_is() {
    need_root!();
    let tree = state_dir().join("dir-root-test");
    let _ = fs::remove_dir_all(&tree);
    let st = std::process::Command::new("cp")
        .arg("-a")
        .arg(lower())
        .arg(&tree)
        .status()
        .unwrap();
    assert!(st.success());
    let (mut c, io) = Container::create(
        "dir-root",
        &spec(&["sh", "-c", "echo kept > /kept; cat /etc/lower-file"]),
        &Rootfs::Dir(tree.clone()),
        &state_dir(),
        Stdio::Pipes { stdin: false },
    )
    .unwrap();
    c.start().unwrap();
    assert_eq!(read_all(&io.stdout), "from the image\n");
    assert_eq!(exit_code(wait(c.init_pid())), Some(0));
    c.destroy().unwrap();
    assert_eq!(fs::read_to_string(tree.join("kept")).unwrap(), "kept\n");
    fs::remove_dir_all(&tree).unwrap();
}

#[test]
fn readonly_root() {
    need_root!();
    let mut s = spec(&[
        "sh",
        "-c",
        "echo x > /f; echo rc=$?; echo y > /dev/shm/ok && echo shm",
    ]);
    s.root_mut().as_mut().unwrap().set_readonly(Some(true));
    let (out, err, _) = run("rootro", &s);
    assert!(out.contains("rc=1") || out.contains("rc=2"), "{out}");
    assert!(out.contains("shm"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");
}

#[test]
fn bind_mounts_read_only_and_read_write() {
    need_root!();
    let host = state_dir().join("bind-src");
    fs::create_dir_all(host.join("ro")).unwrap();
    fs::create_dir_all(host.join("rw")).unwrap();
    fs::write(host.join("ro/hello"), "hi from the host\n").unwrap();
    fs::write(host.join("file"), "single file\n").unwrap();
    let mut s = spec(&[
        "sh",
        "-c",
        "cat /data/hello; touch /data/x; echo rc=$?; touch /rw/y && echo rw-ok; cat /etc/single",
    ]);
    let mut mounts = s.mounts().clone().unwrap();
    let bind = |dest: &str, src: PathBuf, opts: &[&str]| {
        MountBuilder::default()
            .destination(dest)
            .typ("bind")
            .source(src)
            .options(opts.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .build()
            .unwrap()
    };
    mounts.push(bind("/data", host.join("ro"), &["rbind", "ro", "nosuid"]));
    mounts.push(bind("/rw", host.join("rw"), &["bind"]));
    mounts.push(bind("/etc/single", host.join("file"), &["bind", "ro"]));
    s.set_mounts(Some(mounts));
    let (out, err, _) = run("binds", &s);
    assert!(out.starts_with("hi from the host\n"), "{out} {err}");
    assert!(out.contains("rc=1"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(out.contains("rw-ok"), "{out} {err}");
    assert!(out.contains("single file"), "{out} {err}");
    assert!(host.join("rw/y").exists());
    assert!(!host.join("ro/x").exists());
    fs::remove_dir_all(&host).unwrap();
}

#[test]
fn stdin_pipe_is_read_by_cat() {
    need_root!();
    let (mut c, io) = create("stdin", &spec(&["cat"]), Stdio::Pipes { stdin: true });
    c.start().unwrap();
    let mut w = fs::File::from(io.stdin.unwrap());
    w.write_all(b"through the pipe\n").unwrap();
    drop(w);
    assert_eq!(read_all(&io.stdout), "through the pipe\n");
    assert_eq!(exit_code(wait(c.init_pid())), Some(0));
    c.destroy().unwrap();
}

#[test]
fn no_stdin_reads_dev_null() {
    need_root!();
    let (out, _, status) = run("nostdin", &spec(&["sh", "-c", "cat; echo done"]));
    assert_eq!(out, "done\n");
    assert_eq!(exit_code(status), Some(0));
}

#[test]
fn tty_and_resize() {
    need_root!();
    let (mut c, io) = create(
        "tty",
        &spec(&["sh", "-c", "tty; stty size; ls -l /dev/console | wc -l"]),
        Stdio::Tty,
    );
    assert!(io.stderr.is_none());
    resize_tty(io.stdout.as_fd(), 40, 100).unwrap();
    c.start().unwrap();
    let out = read_all(&io.stdout);
    assert_eq!(exit_code(wait(c.init_pid())), Some(0), "{out}");
    assert_eq!(out, "/dev/pts/0\r\n40 100\r\n1\r\n");
    c.destroy().unwrap();
}

#[test]
fn tty_input_goes_through_the_master() {
    need_root!();
    let (mut c, io) = create(
        "ttyin",
        &spec(&["sh", "-c", "read x; echo got:$x"]),
        Stdio::Tty,
    );
    c.start().unwrap();
    let mut w = fs::File::from(io.stdin.unwrap());
    w.write_all(b"abc\n").unwrap();
    let out = read_all(&io.stdout);
    assert!(out.contains("got:abc"), "{out:?}");
    assert_eq!(exit_code(wait(c.init_pid())), Some(0));
    c.destroy().unwrap();
}

#[test]
fn exec_joins_the_container() {
    need_root!();
    let (mut c, io) = create(
        "exec",
        &spec(&["sh", "-c", "echo hi > /x; echo ready; exec cat"]),
        Stdio::Pipes { stdin: true },
    );
    c.start().unwrap();
    assert_eq!(read_line(&io.stdout), "ready");
    // busybox's sh runs `cat` by re-executing /proc/self/exe: the name is
    // "exe" until busybox renames itself, after "ready" was written.
    wait_for_comm(c.init_pid(), "cat");

    // Same files, same pid namespace (PID 1 is the init, exec'd is not 1).
    let mut p = spec(&["sh", "-c", "cat /x; echo $$; cat /proc/1/comm; hostname"])
        .process()
        .clone()
        .unwrap();
    p.set_env(Some(vec!["PATH=/bin".into()]));
    let (pid, eio) = c.exec(&p, Stdio::Pipes { stdin: false }).unwrap();
    let out = read_all(&eio.stdout);
    assert_eq!(exit_code(wait(pid)), Some(0), "{out}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "hi");
    assert_ne!(lines[1], "1");
    assert_eq!(lines[2], "cat");

    // As another user, in another cwd.
    let mut p2 = p.clone();
    p2.set_args(Some(vec!["sh".into(), "-c".into(), "id -u; pwd".into()]));
    p2.user_mut().set_uid(1234);
    p2.set_cwd("/tmp".into());
    let (pid, eio) = c.exec(&p2, Stdio::Pipes { stdin: false }).unwrap();
    assert_eq!(read_all(&eio.stdout), "1234\n/tmp\n");
    assert_eq!(exit_code(wait(pid)), Some(0));

    // With a tty, sized by process.consoleSize before the process starts
    // (a size asked for at once is never 0x0).
    let mut p3 = p.clone();
    p3.set_args(Some(vec![
        "sh".into(),
        "-c".into(),
        "tty; stty size".into(),
    ]));
    p3.set_console_size(Some(
        husk_container::oci_spec::runtime::BoxBuilder::default()
            .height(33u64)
            .width(77u64)
            .build()
            .unwrap(),
    ));
    let (pid, eio) = c.exec(&p3, Stdio::Tty).unwrap();
    assert_eq!(read_all(&eio.stdout), "/dev/pts/0\r\n33 77\r\n");
    assert_eq!(exit_code(wait(pid)), Some(0));

    // Death by signal of an exec'd process.
    let mut p4 = p.clone();
    p4.set_args(Some(vec!["sh".into(), "-c".into(), "kill -TERM $$".into()]));
    let (pid, _eio) = c.exec(&p4, Stdio::Pipes { stdin: false }).unwrap();
    assert_eq!(term_signal(wait(pid)), Some(libc::SIGTERM));

    // Errors: missing executable, missing cwd; nothing left to reap.
    let mut p5 = p.clone();
    p5.set_args(Some(vec!["/bin/nope".into()]));
    let e = c.exec(&p5, Stdio::Pipes { stdin: false }).unwrap_err();
    assert_eq!(e.to_string(), "executable file not found: /bin/nope");
    let mut p6 = p.clone();
    p6.set_cwd("/does/not/exist".into());
    let e = c.exec(&p6, Stdio::Pipes { stdin: false }).unwrap_err();
    assert!(e.to_string().contains("/does/not/exist"), "{e}");

    // The init still runs; close its stdin and it ends.
    drop(io.stdin);
    assert_eq!(exit_code(wait(c.init_pid())), Some(0));
    let e = c.exec(&p, Stdio::Pipes { stdin: false }).unwrap_err();
    assert!(e.to_string().contains("not running"), "{e}");
    c.destroy().unwrap();
}

#[test]
fn signal_all_reaches_every_process() {
    need_root!();
    let (mut c, io) = create(
        "sigall",
        &spec(&[
            "sh",
            "-c",
            "sleep 100 & sleep 100 & echo ready; wait; echo waited",
        ]),
        Stdio::Pipes { stdin: false },
    );
    c.start().unwrap();
    assert_eq!(read_line(&io.stdout), "ready");
    assert_eq!(c.pids().len(), 3, "{:?}", c.pids());
    // PID 1 ignores SIGTERM (no handler); the sleeps die, so wait returns.
    c.signal(libc::SIGTERM, true).unwrap();
    assert_eq!(read_line(&io.stdout), "waited");
    assert!(exit_code(wait(c.init_pid())).is_some());
    c.destroy().unwrap();
}

#[test]
fn destroy_kills_everything_and_leaves_nothing() {
    need_root!();
    let (mut c, io) = create(
        "destroy",
        &spec(&["sh", "-c", "sleep 100 & sleep 100 & echo ready; wait"]),
        Stdio::Pipes { stdin: false },
    );
    c.start().unwrap();
    assert_eq!(read_line(&io.stdout), "ready");
    let pids = c.pids();
    assert_eq!(pids.len(), 3);
    let pid = c.init_pid();
    let dir = state_dir().join("destroy");
    assert!(dir.exists());
    c.destroy().unwrap();
    assert_eq!(term_signal(wait(pid)), Some(libc::SIGKILL));
    for p in pids {
        assert!(
            !Path::new(&format!("/proc/{p}")).exists(),
            "pid {p} is left"
        );
    }
    assert!(!dir.exists());
    assert!(mounts_mentioning(&dir).is_empty());
}

#[test]
fn destroy_before_start() {
    need_root!();
    let (c, _io) = create("unstarted", &spec(&["true"]), Stdio::Pipes { stdin: false });
    let pid = c.init_pid();
    c.destroy().unwrap();
    assert_eq!(term_signal(wait(pid)), Some(libc::SIGKILL));
}

#[test]
fn default_seccomp_blocks_namespaces_and_mounts_even_for_sys_admin() {
    need_root!();
    let script = "unshare -m true; echo unshare=$?; mount -t tmpfs x /mnt; echo mount=$?";
    let mut s = spec(&["sh", "-c", script]);
    let caps: HashSet<Capability> = [Capability::SysAdmin, Capability::Setpcap].into();
    let p = process(&mut s);
    let mut c = p.capabilities().clone().unwrap();
    c.set_bounding(Some(caps.clone()));
    c.set_effective(Some(caps.clone()));
    c.set_permitted(Some(caps));
    p.set_capabilities(Some(c));
    let (out, err, _) = run("seccomp", &s);
    assert!(out.contains("unshare=1"), "{out} {err}");
    assert!(
        out.contains("mount=255") || out.contains("mount=1"),
        "{out} {err}"
    );
    assert!(err.contains("Operation not permitted"), "{err}");

    // Control: the same with seccomp off mounts fine.
    let allow = LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .build()
        .unwrap();
    s.linux_mut().as_mut().unwrap().set_seccomp(Some(allow));
    let (out, err, _) = run("noseccomp", &s);
    assert!(out.contains("mount=0"), "{out} {err}");
}

#[test]
fn missing_cwd_is_a_clear_create_error() {
    need_root!();
    let mut s = spec(&["true"]);
    process(&mut s).set_cwd("/no/such/dir".into());
    let e = Container::create(
        "nocwd",
        &s,
        &rootfs(),
        &state_dir(),
        Stdio::Pipes { stdin: false },
    )
    .unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains("/no/such/dir") && msg.contains("No such file"),
        "{msg}"
    );
    assert!(!state_dir().join("nocwd").exists());
}

#[test]
fn missing_executable_is_a_clear_start_error() {
    need_root!();
    for (id, arg, want) in [
        ("noexe", "/bin/nope", "executable file not found: /bin/nope"),
        (
            "noexe-path",
            "nope",
            "executable file not found in $PATH: nope",
        ),
    ] {
        let (mut c, _io) = create(id, &spec(&[arg]), Stdio::Pipes { stdin: false });
        let e = c.start().unwrap_err();
        assert_eq!(e.to_string(), want);
        assert_eq!(exit_code(wait(c.init_pid())), Some(127));
        c.destroy().unwrap();
    }
    // Not executable → 126.
    let (mut c, _io) = create(
        "notexec",
        &spec(&["/etc/passwd"]),
        Stdio::Pipes { stdin: false },
    );
    let e = c.start().unwrap_err();
    assert!(matches!(e, Error::Exec { .. }), "{e}");
    assert!(
        e.to_string().starts_with("cannot execute /etc/passwd"),
        "{e}"
    );
    assert_eq!(exit_code(wait(c.init_pid())), Some(126));
    c.destroy().unwrap();
}

#[test]
fn setup_errors_name_the_step() {
    need_root!();
    // A mount that cannot work.
    let mut s = spec(&["true"]);
    let mut mounts = s.mounts().clone().unwrap();
    mounts.push(
        MountBuilder::default()
            .destination("/bad")
            .typ("no-such-fs")
            .source("x")
            .build()
            .unwrap(),
    );
    s.set_mounts(Some(mounts));
    let e = Container::create(
        "badmount",
        &s,
        &rootfs(),
        &state_dir(),
        Stdio::Pipes { stdin: false },
    )
    .unwrap_err();
    assert!(
        e.to_string().starts_with("mount no-such-fs on /bad: "),
        "{e}"
    );

    // Duplicate ids.
    let (c, _io) = create("dup", &spec(&["true"]), Stdio::Pipes { stdin: false });
    let e = Container::create(
        "dup",
        &spec(&["true"]),
        &rootfs(),
        &state_dir(),
        Stdio::Pipes { stdin: false },
    )
    .unwrap_err();
    assert!(e.to_string().contains("exists"), "{e}");
    let pid = c.init_pid();
    c.destroy().unwrap();
    wait(pid);

    // No mount namespace.
    let mut s = spec(&["true"]);
    s.linux_mut()
        .as_mut()
        .unwrap()
        .namespaces_mut()
        .as_mut()
        .unwrap()
        .retain(|n| n.typ() != LinuxNamespaceType::Mount);
    assert!(matches!(
        Container::create(
            "nomnt",
            &s,
            &rootfs(),
            &state_dir(),
            Stdio::Pipes { stdin: false }
        ),
        Err(Error::Spec(_))
    ));
}

#[test]
fn sysctl_masked_and_readonly_paths() {
    need_root!();
    let mut s = spec(&[
        "sh",
        "-c",
        "cat /proc/sys/net/ipv4/ip_forward; wc -c < /proc/timer_list; \
         echo 0 > /proc/sys/net/ipv4/ip_forward; echo rc=$?; ls /dev; grep -c ' / ' /proc/self/mountinfo",
    ]);
    s.linux_mut().as_mut().unwrap().set_sysctl(Some(
        [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
    ));
    let (out, err, _) = run("sysctl", &s);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "1", "{out} {err}");
    assert_eq!(lines[1].trim(), "0", "{out}");
    assert!(out.contains("rc=1"), "{out}");
    assert!(err.contains("Read-only file system"), "{err}");
    for dev in [
        "null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "mqueue", "ptmx", "fd",
    ] {
        assert!(lines.contains(&dev), "/dev lacks {dev}: {out}");
    }
}

#[test]
fn user_namespace_maps_root() {
    need_root!();
    let mut s = spec(&[
        "sh",
        "-c",
        "id -u; cat /proc/self/uid_map; echo x > /tmp/f && echo wrote",
    ]);
    let l = s.linux_mut().as_mut().unwrap();
    let mut ns = l.namespaces().clone().unwrap();
    ns.push(
        husk_container::oci_spec::runtime::LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::User)
            .build()
            .unwrap(),
    );
    l.set_namespaces(Some(ns));
    let map = husk_container::oci_spec::runtime::LinuxIdMappingBuilder::default()
        .container_id(0u32)
        .host_id(0u32)
        .size(65536u32)
        .build()
        .unwrap();
    l.set_uid_mappings(Some(vec![map]));
    l.set_gid_mappings(Some(vec![map]));
    let (out, err, status) = run("userns", &s);
    assert_eq!(exit_code(status), Some(0), "{out} {err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[0], "0");
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["0", "0", "65536"]
    );
    assert_eq!(lines[2], "wrote");
}

#[test]
fn many_containers_in_parallel_threads() {
    need_root!();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            std::thread::spawn(move || {
                let (out, _, status) = run(&format!("par{i}"), &spec(&["echo", &format!("n{i}")]));
                assert_eq!(out, format!("n{i}\n"));
                assert_eq!(exit_code(status), Some(0));
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

#[test]
fn stats_need_a_cgroup() {
    need_root!();
    let (c, _io) = create("stats", &spec(&["true"]), Stdio::Pipes { stdin: false });
    let pid = c.init_pid();
    match c.cgroup_path() {
        None => assert!(c.stats().is_err()),
        Some(_) => {
            let s = c.stats().unwrap();
            assert!(s.pids_current >= 1);
        }
    }
    c.destroy().unwrap();
    wait(pid);
}

#[test]
fn reading_stdout_to_the_end_after_exit() {
    need_root!();
    // Output larger than a pipe buffer is not lost.
    let (mut c, io) = create(
        "bigout",
        &spec(&[
            "sh",
            "-c",
            "i=0; while [ $i -lt 3000 ]; do echo line-$i; i=$((i+1)); done",
        ]),
        Stdio::Pipes { stdin: false },
    );
    c.start().unwrap();
    let mut s = String::new();
    fs::File::from(io.stdout).read_to_string(&mut s).unwrap();
    assert_eq!(s.lines().count(), 3000);
    assert_eq!(exit_code(wait(c.init_pid())), Some(0));
    c.destroy().unwrap();
}

#[test]
fn namespaces_joined_by_path() {
    need_root!();
    let (mut a, aio) = create(
        "join-a",
        &{
            let mut s = spec(&["sh", "-c", "echo ready; exec cat"]);
            s.set_hostname(Some("shared".into()));
            s
        },
        Stdio::Pipes { stdin: true },
    );
    a.start().unwrap();
    assert_eq!(read_line(&aio.stdout), "ready");
    let apid = a.init_pid();

    // B joins A's network, UTS and pid namespaces by path.
    let mut s = spec(&["sh", "-c", "readlink /proc/self/ns/net; hostname; echo $$"]);
    for ns in s
        .linux_mut()
        .as_mut()
        .unwrap()
        .namespaces_mut()
        .as_mut()
        .unwrap()
    {
        let name = match ns.typ() {
            LinuxNamespaceType::Network => "net",
            LinuxNamespaceType::Uts => "uts",
            LinuxNamespaceType::Pid => "pid",
            _ => continue,
        };
        ns.set_path(Some(PathBuf::from(format!("/proc/{apid}/ns/{name}"))));
    }
    let (out, err, status) = run("join-b", &s);
    assert_eq!(exit_code(status), Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let a_net = fs::read_link(format!("/proc/{apid}/ns/net")).unwrap();
    assert_eq!(lines[0], a_net.to_str().unwrap());
    assert_eq!(lines[1], "shared");
    assert_ne!(lines[2], "1", "B is not the init of A's pid namespace");

    drop(aio.stdin);
    assert_eq!(exit_code(wait(apid)), Some(0));
    a.destroy().unwrap();
}

/// Waits (at most 10 s) until process `pid` is named `name`.
fn wait_for_comm(pid: i32, name: &str) {
    let path = format!("/proc/{pid}/comm");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let comm = fs::read_to_string(&path).unwrap_or_default();
        if comm.trim_end() == name {
            return;
        }
        assert!(
            std::time::Instant::now() < until,
            "pid {pid} is still named {comm:?}, not {name:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}
