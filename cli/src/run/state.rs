//! A run's record in its runtime directory (`<root>/<id>/state.json`), so
//! `husk ps`, `exec`, `kill`, `logs` and `rm` can find it. The record names
//! the process that owns the VM by pid and start time: when that process is
//! gone (killed, crashed) the run is dead whatever the record says, and the
//! next husk command cleans up after it.

use serde::{Deserialize, Serialize};
use std::fs;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "state.json";
pub const STDOUT_LOG: &str = "stdout.log";
pub const STDERR_LOG: &str = "stderr.log";
pub const VSOCK_SOCKET: &str = "vsock.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Starting,
    Running,
    Exited { code: u8 },
}

/// What `husk exec` needs to know about the container's process.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessDefaults {
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    pub id: String,
    /// `--name`, which finds the container as its id does.
    #[serde(default)]
    pub name: Option<String>,
    /// The image's full name in the store, or its path as given.
    pub image: String,
    /// The manifest digest of the image it runs (what `husk commit` builds
    /// on, whatever the name points at by then).
    #[serde(default)]
    pub image_digest: Option<String>,
    pub command: Vec<String>,
    /// Seconds since the epoch.
    pub created: u64,
    pub detached: bool,
    /// The run's husk: for a jailed run, the keeper, whose child (the
    /// jailed process) runs the VM.
    pub owner_pid: i32,
    /// The owner's start time in clock ticks since boot (/proc/PID/stat
    /// field 22): a recycled pid has another.
    pub owner_start: u64,
    pub status: Status,
    pub process: ProcessDefaults,
    /// Published ports, `80/tcp -> 0.0.0.0:32768` (`husk port`).
    #[serde(default)]
    pub ports: Vec<String>,
}

/// A run directory read back, and whether its owner still lives.
#[derive(Debug)]
pub struct Found {
    pub dir: PathBuf,
    pub state: State,
    pub alive: bool,
}

impl Found {
    /// Docker's wording.
    pub fn describe_status(&self) -> String {
        match (&self.state.status, self.alive) {
            (Status::Exited { code }, _) => format!("Exited ({code})"),
            (_, false) => "Dead (its husk process is gone)".into(),
            (Status::Starting, true) => "Starting".into(),
            (Status::Running, true) => "Up".into(),
        }
    }

    pub fn running(&self) -> bool {
        self.alive && self.state.status == Status::Running
    }
}

/// Start time of `pid` in clock ticks since boot; None if it is gone. A
/// zombie is gone too: it has exited, and its parent (a subreaper such as
/// conmon, or whoever inherited it) may reap it late.
pub fn start_time(pid: i32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: fields
    // are counted after its closing parenthesis.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

impl State {
    pub fn save(&self, dir: &Path) -> Result<(), String> {
        let tmp = dir.join(".state.json.tmp");
        let text = serde_json::to_vec_pretty(self).map_err(|e| e.to_string())?;
        fs::write(&tmp, text).map_err(|e| format!("{}: {e}", tmp.display()))?;
        fs::rename(&tmp, dir.join(STATE_FILE)).map_err(|e| format!("{}: {e}", dir.display()))
    }

    pub fn owner_alive(&self) -> bool {
        start_time(self.owner_pid) == Some(self.owner_start)
    }
}

fn load(dir: &Path) -> Option<State> {
    serde_json::from_slice(&fs::read(dir.join(STATE_FILE)).ok()?).ok()
}

/// Every run under `root`, oldest first. Dead runs are tidied on the way:
/// a foreground run's directory goes; a detached run keeps its logs and
/// record (until `husk rm`) but loses its socket.
pub fn list(root: &Path) -> Vec<Found> {
    let mut out = Vec::new();
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let dir = e.path();
        let Some(state) = load(&dir) else {
            continue;
        };
        let alive = state.owner_alive();
        if !alive && !matches!(state.status, Status::Exited { .. }) {
            if !state.detached {
                let _ = fs::remove_dir_all(&dir);
                continue;
            }
            let _ = fs::remove_file(dir.join(VSOCK_SOCKET));
        }
        out.push(Found { dir, state, alive });
    }
    out.sort_by_key(|f| (f.state.created, f.state.id.clone()));
    out
}

/// The run named `id`, or whose id is `id` or starts with it (docker
/// accepts a prefix).
pub fn find(root: &Path, id: &str) -> Result<Found, String> {
    if id.is_empty() {
        return Err("no container id given".into());
    }
    let runs = list(root);
    if runs.iter().any(|f| f.state.name.as_deref() == Some(id)) {
        return Ok(runs
            .into_iter()
            .find(|f| f.state.name.as_deref() == Some(id))
            .expect("just seen"));
    }
    let mut hits: Vec<Found> = runs
        .into_iter()
        .filter(|f| f.state.id.starts_with(id))
        .collect();
    match hits.len() {
        0 => Err(format!("no container {id}")),
        1 => Ok(hits.remove(0)),
        n => Err(format!("{id} matches {n} containers: give more of the id")),
    }
}

/// A signal by name (`TERM`, `SIGTERM`, case-insensitive) or number.
pub fn parse_signal(s: &str) -> Result<i32, String> {
    if let Ok(n) = s.parse::<i32>() {
        return if (1..=64).contains(&n) {
            Ok(n)
        } else {
            Err(format!("signal {n}: expected 1 to 64"))
        };
    }
    let upper = s.to_ascii_uppercase();
    let name = upper.strip_prefix("SIG").unwrap_or(&upper);
    let full = format!("SIG{name}");
    full.parse::<nix::sys::signal::Signal>()
        .map(|sig| sig as i32)
        .map_err(|_| format!("unknown signal {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(id: &str, pid: i32, start: u64, status: Status, detached: bool) -> State {
        State {
            id: id.into(),
            name: None,
            image: "img".into(),
            image_digest: None,
            command: vec!["true".into()],
            created: 1,
            detached,
            owner_pid: pid,
            owner_start: start,
            status,
            process: ProcessDefaults::default(),
            ports: Vec::new(),
        }
    }

    #[test]
    fn signals_by_name_and_number() {
        assert_eq!(parse_signal("TERM"), Ok(libc::SIGTERM));
        assert_eq!(parse_signal("sigkill"), Ok(libc::SIGKILL));
        assert_eq!(parse_signal("10"), Ok(10));
        assert!(parse_signal("0").is_err());
        assert!(parse_signal("NOPE").unwrap_err().contains("NOPE"));
    }

    #[test]
    fn own_start_time_is_read_and_a_zombie_has_none() {
        let me = std::process::id() as i32;
        assert!(start_time(me).is_some());
        assert_eq!(start_time(i32::MAX), None);
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        // Not waited for yet: a zombie once it has exited.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while start_time(pid).is_some() {
            assert!(std::time::Instant::now() < deadline, "a zombie looks alive");
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let mut child = child;
        child.wait().unwrap();
    }

    #[test]
    fn dead_runs_are_tidied_and_prefixes_found() {
        let root = tempfile::tempdir().unwrap();
        let me = std::process::id() as i32;
        let now = start_time(me).unwrap();
        let runs = [
            state("aaa111", me, now, Status::Running, true),
            // A dead owner: a recycled pid has another start time.
            state("aaa222", me, now + 1, Status::Running, true),
            state("bbb333", me, now + 1, Status::Starting, false),
            state("ccc444", i32::MAX, 0, Status::Exited { code: 3 }, true),
        ];
        for s in &runs {
            let d = root.path().join(&s.id);
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join(VSOCK_SOCKET), "").unwrap();
            s.save(&d).unwrap();
        }
        let found = list(root.path());
        let ids: Vec<&str> = found.iter().map(|f| f.state.id.as_str()).collect();
        assert_eq!(ids, ["aaa111", "aaa222", "ccc444"]);
        assert!(found[0].running());
        assert_eq!(
            found[1].describe_status(),
            "Dead (its husk process is gone)"
        );
        assert!(!root.path().join("aaa222").join(VSOCK_SOCKET).exists());
        assert!(!root.path().join("bbb333").exists());
        assert_eq!(found[2].describe_status(), "Exited (3)");
        assert_eq!(find(root.path(), "c").unwrap().state.id, "ccc444");
        let mut named = runs[0].clone();
        named.name = Some("web".into());
        named.save(&root.path().join("aaa111")).unwrap();
        assert_eq!(find(root.path(), "web").unwrap().state.id, "aaa111");
        assert!(find(root.path(), "aaa")
            .unwrap_err()
            .contains("2 containers"));
        assert!(find(root.path(), "zzz")
            .unwrap_err()
            .contains("no container"));
    }
}
