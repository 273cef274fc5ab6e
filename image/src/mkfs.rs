//! The one way husk makes filesystem images on the host: `mkfs.erofs`
//! (read-only trees: image roots, read-only volumes) and `mkfs.ext4`
//! (writable disks: volumes, scratch layers, benchmark disks), with one
//! error type that names the tool, its package and its last words.

use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{tool} not found: apt-get install {package}")]
    Missing {
        tool: &'static str,
        package: &'static str,
    },
    #[error("{tool} failed on {target} ({status}): {output}")]
    Failed {
        tool: &'static str,
        target: PathBuf,
        status: String,
        output: String,
    },
    #[error("{tool}: {path}: {err}")]
    Io {
        tool: &'static str,
        path: PathBuf,
        err: std::io::Error,
    },
}

pub const EROFS: &str = "mkfs.erofs";
pub const EXT4: &str = "mkfs.ext4";

fn package(tool: &'static str) -> &'static str {
    if tool == EROFS {
        "erofs-utils"
    } else {
        "e2fsprogs"
    }
}

/// Runs a mkfs; `target` names what it works on in the error.
fn run(tool: &'static str, cmd: &mut Command, target: &Path) -> Result<(), Error> {
    let output = cmd.output().map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => Error::Missing {
            tool,
            package: package(tool),
        },
        _ => Error::Io {
            tool,
            path: target.to_path_buf(),
            err,
        },
    })?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let text: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    Err(Error::Failed {
        tool,
        target: target.to_path_buf(),
        status: output.status.to_string(),
        output: text[text.len().saturating_sub(3)..].join(" / "),
    })
}

/// Packs `tree` into an erofs image at `out` with `program` (`mkfs.erofs`,
/// or another path to it). No `--all-root` or `-T`: ownership and mtimes
/// come from the tree.
pub fn erofs(program: &Path, tree: &Path, out: &Path) -> Result<(), Error> {
    run(
        EROFS,
        Command::new(program).arg("--quiet").arg(out).arg(tree),
        tree,
    )
}

/// An ext4 image to make: a sparse file of a size, formatted.
#[derive(Debug, Clone)]
pub struct Ext4 {
    bytes: u64,
    journal: bool,
    tree: Option<PathBuf>,
}

impl Ext4 {
    pub fn new(bytes: u64) -> Ext4 {
        Ext4 {
            bytes,
            journal: true,
            tree: None,
        }
    }

    /// Without a journal: for disks that live as long as one run, or that
    /// the host reads back without replaying one.
    pub fn no_journal(mut self) -> Ext4 {
        self.journal = false;
        self
    }

    /// Filled with a copy of `dir` (`mkfs.ext4 -d`), its root owned by root.
    pub fn from_tree(mut self, dir: &Path) -> Ext4 {
        self.tree = Some(dir.to_path_buf());
        self
    }

    /// Creates (or truncates) `path` and formats it.
    pub fn make(&self, path: &Path) -> Result<(), Error> {
        let io = |err| Error::Io {
            tool: EXT4,
            path: path.to_path_buf(),
            err,
        };
        let f = std::fs::File::create(path).map_err(io)?;
        f.set_len(self.bytes).map_err(io)?;
        drop(f);
        let mut cmd = Command::new(EXT4);
        cmd.args(["-q", "-F"]);
        if !self.journal {
            cmd.args(["-O", "^has_journal"]);
        }
        if let Some(tree) = &self.tree {
            cmd.args(["-E", "root_owner=0:0", "-d"]).arg(tree);
        }
        cmd.arg(path);
        run(EXT4, &mut cmd, self.tree.as_deref().unwrap_or(path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let e = erofs(
            Path::new("/nonexistent/mkfs.erofs"),
            Path::new("/t"),
            Path::new("/o"),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "mkfs.erofs not found: apt-get install erofs-utils"
        );
    }

    #[test]
    fn a_failure_names_the_target_and_the_tool_output() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("x.erofs");
        // `false` exits 1 with nothing to say; the tree does not exist.
        let e = erofs(Path::new("false"), &dir.path().join("none"), &out).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("mkfs.erofs failed on "), "{text}");
        assert!(text.contains("none"), "{text}");
    }

    #[test]
    fn ext4_images_are_sparse_files_of_the_size() {
        if Command::new(EXT4).arg("-V").output().is_err() {
            panic!("mkfs.ext4 is needed for this test: apt-get install e2fsprogs");
        }
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        std::fs::write(tree.join("f"), "x").unwrap();
        let img = dir.path().join("d.img");
        Ext4::new(32 << 20)
            .no_journal()
            .from_tree(&tree)
            .make(&img)
            .unwrap();
        let m = std::fs::metadata(&img).unwrap();
        assert_eq!(m.len(), 32 << 20);
        let bad = Ext4::new(4096)
            .make(&dir.path().join("tiny.img"))
            .unwrap_err();
        assert!(bad.to_string().starts_with("mkfs.ext4 failed on "), "{bad}");
    }
}
