//! OCI hooks that run on the host, in the runtime's namespace: prestart
//! and createRuntime once the container is created, poststart once it
//! runs, poststop when it is deleted. Each gets the container's state on
//! its stdin (the pid is the monitor's: the container's process is in the
//! VM). createContainer and startContainer hooks would have to run inside
//! the container, in the guest: they are refused (bundle.rs).

use husk_wire::oci_spec::runtime::Hook;
use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a hook without its own timeout may take.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `hooks` in order; the first failure is the error.
pub fn run(kind: &str, hooks: &[Hook], state: &serde_json::Value) -> Result<(), String> {
    for h in hooks {
        run_one(h, state).map_err(|e| format!("{kind} hook {}: {e}", h.path().display()))?;
    }
    Ok(())
}

/// Runs every one of `hooks` (poststart, poststop): as the runtime spec
/// says, a failure is a warning and the others run as if it had not
/// failed. The warnings, one per failed hook.
pub fn run_all(kind: &str, hooks: &[Hook], state: &serde_json::Value) -> Vec<String> {
    hooks
        .iter()
        .filter_map(|h| {
            run_one(h, state)
                .err()
                .map(|e| format!("{kind} hook {}: {e}", h.path().display()))
        })
        .collect()
}

fn run_one(h: &Hook, state: &serde_json::Value) -> Result<(), String> {
    let mut cmd = Command::new(h.path());
    if let Some(args) = h.args() {
        if let Some((arg0, rest)) = args.split_first() {
            std::os::unix::process::CommandExt::arg0(&mut cmd, arg0);
            cmd.args(rest);
        }
    }
    cmd.env_clear();
    for kv in h.env().iter().flatten() {
        if let Some((k, v)) = kv.split_once('=') {
            cmd.env(k, v);
        }
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    if let Some(mut stdin) = child.stdin.take() {
        // A hook that does not read its stdin is not a failure.
        let _ = stdin.write_all(state.to_string().as_bytes());
    }
    let limit = h
        .timeout()
        .filter(|&t| t > 0)
        .map_or(DEFAULT_TIMEOUT, |t| Duration::from_secs(t as u64));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!("timed out after {} s", limit.as_secs()));
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    if status.success() {
        return Ok(());
    }
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    Err(format!(
        "{status}{}",
        err.lines()
            .last()
            .map(|l| format!(": {l}"))
            .unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use husk_wire::oci_spec::runtime::HookBuilder;

    fn hook(script: &str) -> Hook {
        HookBuilder::default()
            .path("/bin/sh")
            .args(vec!["sh".to_string(), "-c".to_string(), script.to_string()])
            .env(vec!["WHO=hook".to_string()])
            .build()
            .unwrap()
    }

    #[test]
    fn hooks_get_the_state_on_stdin_and_their_env() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let h = hook(&format!("cat > {0}; echo \" $WHO\" >> {0}", out.display()));
        let state = serde_json::json!({"id": "c1", "pid": 42});
        run("prestart", &[h], &state).unwrap();
        let got = std::fs::read_to_string(&out).unwrap();
        assert!(got.starts_with("{\"id\":\"c1\""), "{got}");
        assert!(got.ends_with(" hook\n"), "{got}");
    }

    #[test]
    fn a_failing_or_slow_hook_is_an_error_naming_it() {
        let state = serde_json::json!({});
        let e = run("prestart", &[hook("echo nope >&2; exit 3")], &state).unwrap_err();
        assert!(
            e.contains("prestart hook /bin/sh") && e.contains("nope"),
            "{e}"
        );
        let mut slow = hook("sleep 5");
        slow.set_timeout(Some(1));
        let e = run("poststart", &[slow], &state).unwrap_err();
        assert!(e.contains("timed out after 1 s"), "{e}");
    }

    #[test]
    fn after_a_failed_poststart_hook_the_next_ones_run() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let hooks = [
            hook("exit 3"),
            hook(&format!("echo ran > {}", out.display())),
            hook("echo again >&2; exit 4"),
        ];
        let warned = run_all("poststart", &hooks, &serde_json::json!({}));
        assert_eq!(warned.len(), 2, "{warned:?}");
        assert!(warned[1].contains("again"), "{warned:?}");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "ran\n");
    }
}
