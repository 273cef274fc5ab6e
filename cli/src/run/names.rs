//! `husk run --name NAME`: a name is one container's until `husk rm`
//! (Docker's rule), and other containers on a named network reach it by
//! it.
//!
//! A claim is a file `<runtime root>/names/<NAME>` made with O_EXCL,
//! holding the claiming process and the container's id. It stands while
//! that process lives (the run is starting or running) or the container's
//! record exists (it ran detached and was not removed); otherwise the next
//! claim of the name takes it over.

use std::fs;
use std::io::Write;
use std::path::Path;

use super::state;

const DIR: &str = "names";

/// Makes `name` container `id`'s, or says whose it is.
pub fn claim(root: &Path, name: &str, id: &str) -> Result<(), String> {
    crate::network::check_name(name).map_err(|e| format!("--name: {e}"))?;
    let dir = root.join(DIR);
    fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let path = dir.join(name);
    let me = std::process::id() as i32;
    let mine = format!("{id} {me} {}\n", state::start_time(me).unwrap_or(0));
    // Twice at most: once more after taking over a stale claim.
    for _ in 0..2 {
        match fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                return f
                    .write_all(mine.as_bytes())
                    .map_err(|e| format!("{}: {e}", path.display()));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let held = fs::read_to_string(&path).unwrap_or_default();
                if let Some(owner) = live_owner(root, &held) {
                    return Err(format!(
                        "the name {name:?} is container {owner}'s (husk rm {owner} frees it)"
                    ));
                }
                // Stale; a racing claimer may remove it first, which is
                // fine: one of us wins the create above.
                let _ = fs::remove_file(&path);
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Err(format!("the name {name:?} is being claimed by another run"))
}

/// The id in a claim (`ID PID START`) whose run still stands.
fn live_owner(root: &Path, held: &str) -> Option<String> {
    let mut f = held.split_whitespace();
    let id = f.next()?;
    let pid = f.next().and_then(|p| p.parse::<i32>().ok());
    let start = f.next().and_then(|s| s.parse::<u64>().ok());
    let process_alive =
        matches!((pid, start), (Some(p), Some(s)) if state::start_time(p) == Some(s));
    let recorded = root.join(id).join(state::STATE_FILE).is_file();
    (process_alive || recorded).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_is_one_containers_until_its_record_and_process_are_gone() {
        let root = tempfile::tempdir().unwrap();
        claim(root.path(), "web", "aaa").unwrap();
        // This process is the claimer, and alive.
        let e = claim(root.path(), "web", "bbb").unwrap_err();
        assert!(e.contains("container aaa's"), "{e}");
        // A claim of a dead process whose container has a record stands.
        fs::write(root.path().join("names/web"), "aaa 1 1\n").unwrap();
        fs::create_dir_all(root.path().join("aaa")).unwrap();
        fs::write(root.path().join("aaa").join(state::STATE_FILE), "{}").unwrap();
        assert!(claim(root.path(), "web", "bbb").is_err());
        // Without the record it is stale: taken over.
        fs::remove_dir_all(root.path().join("aaa")).unwrap();
        claim(root.path(), "web", "bbb").unwrap();
        let held = fs::read_to_string(root.path().join("names/web")).unwrap();
        assert!(held.starts_with("bbb "), "{held}");
        assert!(claim(root.path(), "a/b", "c")
            .unwrap_err()
            .contains("--name"));
    }
}
