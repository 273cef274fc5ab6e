//! KVM's own counters for one VMM's VM (exits by kind, halts, emulated
//! instructions...), read from debugfs: `/sys/kernel/debug/kvm/<pid>-<fd>/`
//! holds the VM's statistics and the sums of its vCPUs'. The directory goes
//! away with the VM, so a thread reads it every few milliseconds while the
//! VMM runs and keeps each counter's highest value: what the VM had
//! counted, to within one period. Any VMM's VM can be read this way,
//! husk's and its peers' alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const KVM_DEBUGFS: &str = "/sys/kernel/debug/kvm";
const PERIOD: Duration = Duration::from_millis(5);

/// Counter name → value.
pub type Counters = BTreeMap<String, u64>;

/// Whether KVM's debugfs directory can be read, mounting debugfs first
/// when it is not (as root; the testbed's L1 does not mount it).
pub fn available() -> bool {
    if Path::new(KVM_DEBUGFS).is_dir() {
        return true;
    }
    let _ = std::process::Command::new("mount")
        .args(["-t", "debugfs", "debugfs", "/sys/kernel/debug"])
        .status();
    Path::new(KVM_DEBUGFS).is_dir()
}

/// What a [`Watcher`] saw of one VMM's VM.
#[derive(Debug, Default)]
pub struct Seen {
    /// Each counter's highest value read (empty if the VM was never seen).
    pub counters: Counters,
    /// From the watcher's start (right after launch) to the first read
    /// that found the VM: the VMM's own start before KVM_CREATE_VM.
    pub vm_at: Option<Duration>,
    /// ...to the first read that found an exit: the VMM's setup until the
    /// guest first ran (to within one period).
    pub running_at: Option<Duration>,
}

/// Reads the VMs of process `pid` until [`Watcher::finish`].
pub struct Watcher {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Seen>,
}

impl Watcher {
    pub fn start(pid: u32) -> Watcher {
        let stop = Arc::new(AtomicBool::new(false));
        let done = stop.clone();
        let start = Instant::now();
        let thread = std::thread::spawn(move || {
            let mut seen = Seen::default();
            // One more read after the stop: the VM may still be there.
            loop {
                let stopping = done.load(Ordering::Acquire);
                // Counters only grow while the VM lives; a read as it is
                // torn down can find them zeroed, so each keeps its
                // highest value.
                if let Some(read) = read_vms_of(pid) {
                    seen.vm_at.get_or_insert_with(|| start.elapsed());
                    if read.get("exits").is_some_and(|&n| n > 0) {
                        seen.running_at.get_or_insert_with(|| start.elapsed());
                    }
                    for (name, v) in read {
                        let e = seen.counters.entry(name).or_default();
                        *e = (*e).max(v);
                    }
                }
                if stopping {
                    return seen;
                }
                std::thread::sleep(PERIOD);
            }
        });
        Watcher { stop, thread }
    }

    pub fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Release);
        self.thread.join().unwrap_or_default()
    }
}

/// The counters of every VM `pid` or one of its children has (a jailed
/// `husk run`'s VM is its child's), summed; `None` when they have none
/// (yet, or any more).
fn read_vms_of(pid: u32) -> Option<Counters> {
    let prefixes: Vec<String> = std::iter::once(pid)
        .chain(children(pid))
        .map(|p| format!("{p}-"))
        .collect();
    let dirs: Vec<PathBuf> = std::fs::read_dir(KVM_DEBUGFS)
        .ok()?
        .flatten()
        .filter(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            prefixes.iter().any(|p| name.starts_with(p))
        })
        .map(|e| e.path())
        .collect();
    let mut sum = Counters::new();
    for dir in &dirs {
        for (name, value) in read_dir_counters(dir)? {
            *sum.entry(name).or_default() += value;
        }
    }
    (!dirs.is_empty()).then_some(sum)
}

/// `pid`'s children, from each of its threads' `children` file.
pub fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The numeric files directly in `dir`; `None` if it went away meanwhile
/// (or nothing in it could be read). A file that cannot be read is left
/// out of this read, not allowed to void it.
fn read_dir_counters(dir: &Path) -> Option<Counters> {
    let mut out = Counters::new();
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        if !entry.file_type().is_ok_and(|t| t.is_file()) {
            continue;
        }
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        if let Ok(v) = text.trim().parse::<u64>() {
            out.insert(entry.file_name().to_string_lossy().into_owned(), v);
        }
    }
    (!out.is_empty()).then_some(out)
}

/// The counters worth a row: the largest `n` by their highest value over
/// `runs`, in that order.
pub fn largest(runs: &[&Counters], n: usize) -> Vec<String> {
    let mut names: BTreeMap<&str, u64> = BTreeMap::new();
    for c in runs {
        for (k, v) in c.iter() {
            let e = names.entry(k.as_str()).or_default();
            *e = (*e).max(*v);
        }
    }
    let mut v: Vec<(&str, u64)> = names.into_iter().filter(|(_, m)| *m > 0).collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    v.into_iter().take(n).map(|(k, _)| k.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_of_counters_is_read_and_sorted_by_size() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("exits"), "120\n").unwrap();
        std::fs::write(dir.path().join("io_exits"), "7\n").unwrap();
        std::fs::write(dir.path().join("not_a_number"), "x\n").unwrap();
        std::fs::create_dir(dir.path().join("vcpu0")).unwrap();
        let c = read_dir_counters(dir.path()).unwrap();
        assert_eq!(c.len(), 2);
        let mut other = Counters::new();
        other.insert("halt_exits".into(), 50);
        other.insert("zero".into(), 0);
        assert_eq!(
            largest(&[&c, &other], 5),
            ["exits", "halt_exits", "io_exits"]
        );
    }
}
