//! The OCI runtime-spec validation, in the form of opencontainers'
//! runtime-tools suite. Debian ships runtime-tools as a Go library only
//! (golang-github-opencontainers-runtime-tools-dev: no `validation/`
//! programs, no in-container `runtimetest`), so its checks run here in an
//! equivalent form: each case is a change to the default config.json, made
//! as the suite's case of the same name makes it, and the container checks
//! itself from inside with a shell script printing TAP lines, as
//! `runtimetest` does; the lifecycle cases (state, start, delete, hooks,
//! pid file) drive the runtime's command line. The same cases run with
//! crun in the same run; husk may fail only checks crun fails too.

use super::oci::{bundle, runtime, try_create, wait};
use husk_tests::require_linux_kvm;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// Prepended to every case's checks: `t NAME CONDITION` prints a TAP line.
const TAP: &str = "t() { if eval \"$2\" >/dev/null 2>&1; then echo \"ok - $1\"; else echo \"not ok - $1\"; fi; }\n";

/// One case: what it changes in config.json, and the checks inside.
struct Case {
    name: &'static str,
    edit: fn(&mut Value),
    checks: &'static str,
}

fn process(s: &mut Value) -> &mut Value {
    &mut s["process"]
}

const CASES: &[Case] = &[
    Case {
        name: "default",
        edit: |_| {},
        checks: "t cwd '[ \"$(pwd)\" = / ]'
t pid-namespace '[ $$ = 1 ]'
for d in null zero full random urandom tty; do t dev-$d \"[ -c /dev/$d ]\"; done
t dev-ptmx '[ -e /dev/ptmx ]'
t dev-fd-link '[ \"$(readlink /dev/fd)\" = /proc/self/fd ]'
t dev-stdin-link '[ \"$(readlink /dev/stdin)\" = /proc/self/fd/0 ]'
t dev-stdout-link '[ \"$(readlink /dev/stdout)\" = /proc/self/fd/1 ]'
t dev-stderr-link '[ \"$(readlink /dev/stderr)\" = /proc/self/fd/2 ]'
t mount-proc 'grep -q \"^proc /proc proc \" /proc/mounts'
t mount-devpts 'grep -q \" /dev/pts devpts \" /proc/mounts'
t mount-shm 'grep -q \" /dev/shm tmpfs \" /proc/mounts'
t mount-mqueue 'grep -q \" /dev/mqueue mqueue \" /proc/mounts'
t sys-readonly '! touch /sys/husk-x'
t masked-kcore '[ ! -s /proc/kcore ]'
t readonly-proc-sys '! sh -c \"echo 1 >/proc/sys/kernel/domainname\"'
t root-writable 'touch /husk-rw && rm /husk-rw'",
    },
    Case {
        name: "process_cwd_env",
        edit: |s| {
            process(s)["cwd"] = json!("/tmp");
            process(s)["env"]
                .as_array_mut()
                .unwrap()
                .push(json!("HUSK_VALIDATION=yes"));
        },
        checks: "t cwd '[ \"$(pwd)\" = /tmp ]'
t env '[ \"$HUSK_VALIDATION\" = yes ]'",
    },
    Case {
        name: "process_user",
        edit: |s| {
            process(s)["user"] = json!({"uid": 1000, "gid": 1001, "additionalGids": [10, 20]});
        },
        checks: "t uid '[ \"$(id -u)\" = 1000 ]'
t gid '[ \"$(id -g)\" = 1001 ]'
t additional-gids 'id -G | tr \" \" \"\\n\" | grep -qx 20 && id -G | tr \" \" \"\\n\" | grep -qx 10'",
    },
    Case {
        name: "process_rlimits",
        edit: |s| {
            process(s)["rlimits"] = json!([
                {"type": "RLIMIT_NOFILE", "soft": 1000, "hard": 2000},
                {"type": "RLIMIT_CORE", "soft": 0, "hard": 4096}
            ]);
        },
        checks: "t nofile 'grep -Eq \"^Max open files +1000 +2000 \" /proc/self/limits'
t core 'grep -Eq \"^Max core file size +0 +4096 \" /proc/self/limits'",
    },
    Case {
        name: "process_capabilities",
        edit: |s| {
            let chown = json!(["CAP_CHOWN"]);
            for set in ["bounding", "effective", "permitted"] {
                process(s)["capabilities"][set] = chown.clone();
            }
        },
        checks: "t effective 'grep -q \"^CapEff:.*0000000000000001$\" /proc/self/status'
t bounding 'grep -q \"^CapBnd:.*0000000000000001$\" /proc/self/status'
t permitted 'grep -q \"^CapPrm:.*0000000000000001$\" /proc/self/status'",
    },
    Case {
        name: "process_no_new_privileges",
        edit: |s| process(s)["noNewPrivileges"] = json!(true),
        checks: "t no-new-privs 'grep -Eq \"^NoNewPrivs:\\s+1$\" /proc/self/status'",
    },
    Case {
        name: "process_oom_score_adj",
        edit: |s| process(s)["oomScoreAdj"] = json!(500),
        checks: "t oom-score-adj '[ \"$(cat /proc/self/oom_score_adj)\" = 500 ]'",
    },
    Case {
        name: "hostname",
        edit: |s| s["hostname"] = json!("husk-validation"),
        checks: "t hostname '[ \"$(hostname)\" = husk-validation ]'",
    },
    Case {
        name: "root_readonly_true",
        edit: |s| s["root"]["readonly"] = json!(true),
        checks: "t root-readonly '! touch /husk-ro'",
    },
    Case {
        name: "mounts",
        edit: |s| {
            s["mounts"].as_array_mut().unwrap().push(json!({
                "destination": "/husk-tmpfs", "type": "tmpfs", "source": "tmpfs",
                "options": ["nosuid", "nodev", "mode=700", "size=1m"]
            }));
        },
        checks: "t tmpfs 'grep -q \" /husk-tmpfs tmpfs \" /proc/mounts'
t tmpfs-mode '[ \"$(stat -c %a /husk-tmpfs)\" = 700 ]'
t tmpfs-size 'grep \" /husk-tmpfs tmpfs \" /proc/mounts | grep -q size=1024k'
t tmpfs-nosuid 'grep \" /husk-tmpfs tmpfs \" /proc/mounts | grep -q nosuid'",
    },
    Case {
        name: "linux_sysctl",
        edit: |s| s["linux"]["sysctl"] = json!({"net.ipv4.ip_forward": "1"}),
        checks: "t ip-forward '[ \"$(cat /proc/sys/net/ipv4/ip_forward)\" = 1 ]'",
    },
    Case {
        name: "linux_masked_paths",
        edit: |s| {
            s["linux"]["maskedPaths"]
                .as_array_mut()
                .unwrap()
                .push(json!("/etc/group"));
        },
        checks: "t masked-file '[ ! -s /etc/group ]'",
    },
    Case {
        name: "linux_readonly_paths",
        edit: |s| {
            s["linux"]["readonlyPaths"]
                .as_array_mut()
                .unwrap()
                .push(json!("/etc"));
        },
        checks: "t readonly-dir '! touch /etc/husk-x'",
    },
    Case {
        name: "linux_cgroups_memory",
        edit: |s| s["linux"]["resources"] = json!({"memory": {"limit": 67108864}}),
        checks: "t memory-max '[ \"$(cat /sys/fs/cgroup/memory.max)\" = 67108864 ]'",
    },
    Case {
        name: "linux_cgroups_pids",
        edit: |s| s["linux"]["resources"] = json!({"pids": {"limit": 99}}),
        checks: "t pids-max '[ \"$(cat /sys/fs/cgroup/pids.max)\" = 99 ]'",
    },
    Case {
        name: "linux_cgroups_cpus",
        edit: |s| {
            s["linux"]["resources"] = json!({"cpu": {"quota": 50000, "period": 100000}})
        },
        checks: "t cpu-max '[ \"$(cat /sys/fs/cgroup/cpu.max)\" = \"50000 100000\" ]'",
    },
    Case {
        name: "linux_seccomp",
        edit: |s| {
            s["linux"]["seccomp"] = json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO"}]
            })
        },
        checks: "t mkdir-denied '! mkdir /tmp/husk-m'
t others-allowed 'touch /tmp/husk-f'",
    },
    Case {
        name: "linux_devices",
        edit: |s| {
            s["linux"]["devices"] = json!([{
                "path": "/dev/husk-null", "type": "c", "major": 1, "minor": 3,
                "fileMode": 438, "uid": 0, "gid": 0
            }])
        },
        checks: "t device-node '[ -c /dev/husk-null ]'
t device-works 'echo x >/dev/husk-null'",
    },
];

/// One runtime's results: (case/check, passed).
type Results = Vec<(String, bool)>;

/// Runs every case with `program`; the TAP lines each container printed.
fn run_cases(program: &Path, dir: &Path) -> Results {
    let root = dir.join("root");
    let mut results = Vec::new();
    for (i, case) in CASES.iter().enumerate() {
        let work = dir.join(case.name);
        std::fs::create_dir_all(&work).unwrap();
        let b = bundle(&work, &format!("{TAP}{}", case.checks));
        let path = b.join("config.json");
        let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        (case.edit)(&mut spec);
        std::fs::write(&path, spec.to_string()).unwrap();
        let id = format!("v{i}");
        let ran = try_create(program, &root, &work, &b, &id, &[]).and_then(|c| {
            let (code, _, err) = runtime(program, &root, &["start", &id]);
            if code != Some(0) {
                return Err(format!("start: {err}"));
            }
            let status = wait(c.pid);
            let _ = runtime(program, &root, &["delete", "--force", &id]);
            Ok((status, std::fs::read_to_string(&c.out).unwrap_or_default()))
        });
        match ran {
            Ok((status, out)) => {
                results.push((format!("{}/ran", case.name), status == 0));
                for line in out.lines() {
                    if let Some(check) = line.strip_prefix("ok - ") {
                        results.push((format!("{}/{check}", case.name), true));
                    } else if let Some(check) = line.strip_prefix("not ok - ") {
                        results.push((format!("{}/{check}", case.name), false));
                    }
                }
            }
            Err(e) => {
                eprintln!("{}: {}: {e}", program.display(), case.name);
                // A VM the nested virtualization reset says so.
                husk_tests::testbed::flag(&e, "");
                results.push((format!("{}/ran", case.name), false));
            }
        }
    }
    results.extend(lifecycle(program, dir));
    results
}

/// runtime-tools' lifecycle cases: state through create/start/exit,
/// errors for a taken id, a second start and an unknown id, the pid file,
/// and the prestart/poststart/poststop hooks with the state on stdin.
fn lifecycle(program: &Path, dir: &Path) -> Results {
    let root = dir.join("root");
    let work = dir.join("lifecycle");
    std::fs::create_dir_all(&work).unwrap();
    let log = work.join("hooks.log");
    let b = bundle(&work, "exit 0");
    let path = b.join("config.json");
    let mut spec: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    // The testbed's bare root has its shell elsewhere.
    let shell = ["/bin/sh", "/.testbed/bin/sh"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("a shell for the hooks");
    let hook = |name: &str| {
        json!({"path": shell, "args": ["sh", "-c",
            format!("id=$(cat | grep -o '\"id\": *\"[^\"]*\"'); echo \"{name} $id\" >>{}", log.display())],
            "env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin:/.testbed/bin"]})
    };
    spec["hooks"] = json!({
        "prestart": [hook("prestart")],
        "poststart": [hook("poststart")],
        "poststop": [hook("poststop")],
    });
    std::fs::write(&path, spec.to_string()).unwrap();
    let mut r = Results::new();
    let id = "life";
    let state = |id: &str| -> Option<Value> {
        let (code, out, _) = runtime(program, &root, &["state", id]);
        (code == Some(0))
            .then(|| serde_json::from_str(&out).ok())
            .flatten()
    };
    let c = match try_create(program, &root, &work, &b, id, &[]) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: lifecycle: {e}", program.display());
            r.push(("lifecycle/create".into(), false));
            return r;
        }
    };
    let s = state(id).unwrap_or_default();
    r.push(("lifecycle/state-created".into(), s["status"] == "created"));
    r.push(("lifecycle/state-pid".into(), s["pid"] == c.pid));
    let pid_file = work.join(format!("{id}.pid"));
    let written = std::fs::read_to_string(&pid_file).unwrap_or_default();
    r.push((
        "lifecycle/pid-file".into(),
        written.trim() == c.pid.to_string(),
    ));
    r.push((
        "lifecycle/state-bundle".into(),
        s["bundle"].as_str().map(PathBuf::from) == Some(b.canonicalize().unwrap()),
    ));
    let taken = try_create(program, &root, &work, &b, id, &[]);
    r.push(("lifecycle/create-taken-id-fails".into(), taken.is_err()));
    let (code, _, _) = runtime(program, &root, &["start", id]);
    r.push(("lifecycle/start".into(), code == Some(0)));
    r.push(("lifecycle/exit-status".into(), wait(c.pid) == 0));
    let s = state(id).unwrap_or_default();
    r.push(("lifecycle/state-stopped".into(), s["status"] == "stopped"));
    let (code, _, _) = runtime(program, &root, &["start", id]);
    r.push(("lifecycle/start-stopped-fails".into(), code != Some(0)));
    let (code, _, _) = runtime(program, &root, &["delete", id]);
    r.push(("lifecycle/delete".into(), code == Some(0)));
    r.push(("lifecycle/state-deleted-fails".into(), state(id).is_none()));
    let (code, _, _) = runtime(program, &root, &["kill", "nonexistent", "KILL"]);
    r.push(("lifecycle/kill-unknown-fails".into(), code != Some(0)));
    let hooks = std::fs::read_to_string(&log).unwrap_or_default();
    let order: Vec<&str> = hooks
        .lines()
        .map(|l| l.split(' ').next().unwrap_or(""))
        .collect();
    r.push((
        "lifecycle/hooks-order".into(),
        order == ["prestart", "poststart", "poststop"],
    ));
    r.push((
        "lifecycle/hooks-state-on-stdin".into(),
        !hooks.is_empty() && hooks.lines().all(|l| l.contains("\"life\"")),
    ));
    r
}

#[test]
fn the_runtime_spec_validation_fails_nothing_crun_passes() {
    require_linux_kvm();
    let crun = Path::new("/usr/bin/crun");
    if !crun.is_file() {
        husk_skip::skip("crun is not installed (scripts/setup installs it)");
        return;
    }
    husk_compare::runner::ensure_cgroup2();
    let dir = tempfile::tempdir().unwrap();
    let husk = run_cases(&husk_tests::husk::binary(), &dir.path().join("husk"));
    let crun = run_cases(crun, &dir.path().join("crun"));
    let failed = |r: &Results| -> Vec<String> {
        r.iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n.clone())
            .collect()
    };
    let (husk_failed, crun_failed) = (failed(&husk), failed(&crun));
    println!(
        "runtime-spec validation: husk {} passed, {} failed {:?}; crun {} passed, {} failed {:?}",
        husk.len() - husk_failed.len(),
        husk_failed.len(),
        husk_failed,
        crun.len() - crun_failed.len(),
        crun_failed.len(),
        crun_failed
    );
    // Every check must have run on both: a case that printed fewer lines
    // under one runtime hides a failure.
    let names = |r: &Results| -> Vec<String> { r.iter().map(|(n, _)| n.clone()).collect() };
    let only_crun: Vec<String> = names(&crun)
        .into_iter()
        .filter(|n| !names(&husk).contains(n))
        .collect();
    let worse: Vec<&String> = husk_failed
        .iter()
        .filter(|n| !crun_failed.contains(n))
        .collect();
    assert!(
        worse.is_empty() && only_crun.is_empty(),
        "husk fails what crun passes: {worse:?}; checks husk never reached: {only_crun:?}"
    );
    assert!(husk.len() > 40, "too few checks ran: {husk:?}");
}
