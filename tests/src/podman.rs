//! Debian's podman, as the tests and benches drive it: its store, run state
//! and temporary files under one directory of the caller's (vfs storage,
//! cgroupfs, file events: nothing of the host's podman is touched), and the
//! OCI runtime given by path.

use std::path::Path;
use std::process::Command;

pub const PROGRAM: &str = "/usr/bin/podman";
/// The test image once `podman load`ed from its `docker save` tar.
pub const IMAGE: &str = "localhost/husk-test:latest";

/// `podman` with its state in `store` (which must have a `tmp/`) and
/// `runtime` as the OCI runtime.
pub fn command(store: &Path, runtime: &Path) -> Command {
    let mut c = Command::new(PROGRAM);
    c.args(["--storage-driver", "vfs", "--root"])
        .arg(store.join("storage"))
        .arg("--runroot")
        .arg(store.join("run"))
        .args(["--cgroup-manager", "cgroupfs", "--events-backend", "file"])
        .arg("--runtime")
        .arg(runtime)
        // Image copies go here, not to /var/tmp (which a bare system such
        // as the testbed lacks).
        .env("TMPDIR", store.join("tmp"));
    c
}
