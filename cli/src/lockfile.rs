//! An exclusive flock on a file of its own, held as long as the value:
//! how husk's processes take turns at host-wide state (the bridges'
//! leases, the named networks' definitions).

use std::fs::{File, OpenOptions};
use std::path::Path;

pub type Held = nix::fcntl::Flock<File>;

/// Waits for and takes the lock on `path` (made if missing).
pub fn exclusive(path: &Path) -> Result<Held, String> {
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| format!("{}: {e}", path.display()))
}
