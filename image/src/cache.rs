//! The block image cache: each image's root filesystem converted once to a
//! read-only erofs image named by the image's manifest digest.

use std::ffi::OsString;
use std::fs::{self, File, Permissions};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::{Error, Image, Progress};

const MKFS_EROFS: &str = crate::mkfs::EROFS;

/// Where block images are kept, and how they are made.
#[derive(Clone, Debug)]
pub struct Cache {
    dir: PathBuf,
    mkfs_erofs: Option<PathBuf>,
}

/// A block image ready to attach to a VM as a read-only disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockImage {
    pub path: PathBuf,
    /// The filesystem in it, as `mount -t` and the kernel name it.
    pub fs_type: &'static str,
    /// True if this call made it, false if it was already in the cache.
    pub converted: bool,
}

impl Cache {
    pub fn new(dir: PathBuf) -> Cache {
        Cache {
            dir,
            mkfs_erofs: None,
        }
    }

    /// `$HUSK_IMAGE_CACHE`, else `$XDG_CACHE_HOME/husk/images`, else
    /// `~/.cache/husk/images`.
    pub fn default_dir() -> PathBuf {
        default_dir_from(|name| std::env::var_os(name))
    }

    /// Uses this `mkfs.erofs` instead of the one on `PATH`.
    pub fn with_mkfs_erofs(mut self, program: PathBuf) -> Cache {
        self.mkfs_erofs = Some(program);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Deletes every block image except those of the manifests in `keep`
    /// (`sha256:<hex>`); returns how many files and bytes went. A VM that
    /// has one open keeps reading it: the file goes when it closes.
    pub fn remove_except(
        &self,
        keep: &std::collections::HashSet<String>,
    ) -> Result<(usize, u64), Error> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((0, 0)),
            Err(e) => return Err(Error::io(&self.dir, e)),
        };
        let (mut files, mut bytes) = (0, 0);
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".erofs")) else {
                continue;
            };
            if crate::Digest::from_hex(hex).is_none() || keep.contains(&format!("sha256:{hex}")) {
                continue;
            }
            let len = entry.metadata().map(|m| m.len()).unwrap_or(0);
            fs::remove_file(entry.path()).map_err(|e| Error::io(entry.path(), e))?;
            files += 1;
            bytes += len;
        }
        Ok((files, bytes))
    }

    /// Where the block image of `image` is (or will be) kept.
    pub fn path_for(&self, image: &Image) -> PathBuf {
        let digest = image.manifest_digest();
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        self.dir.join(format!("{hex}.erofs"))
    }

    /// Returns the image's erofs block image, converting it first unless
    /// the cache has it. The conversion unpacks into a temporary tree in the
    /// cache directory, runs `mkfs.erofs` into a temporary file and renames
    /// that into place, so a reader never sees a partial image and
    /// concurrent conversions of one image just both rename a complete one.
    /// The tree is removed afterwards, on errors too.
    pub fn block_image(
        &self,
        image: &Image,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<BlockImage, Error> {
        let path = self.path_for(image);
        if path.is_file() {
            log::info!(
                "block image of {} is cached: {}",
                image.manifest_digest(),
                path.display()
            );
            return Ok(BlockImage {
                path,
                fs_type: "erofs",
                converted: false,
            });
        }
        // Before the unpack, which can take minutes.
        let mkfs = self.find_mkfs()?;
        let started = Instant::now();
        fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let work = WorkDir(
            tempfile::Builder::new()
                .prefix(".unpack-")
                .tempdir_in(&self.dir)
                .map_err(|e| Error::io(&self.dir, e))?
                .keep(),
        );
        // The tree's root is the filesystem's root directory: 0755, not
        // the 0700 of a private temporary directory.
        let tree = work.0.join("rootfs");
        fs::create_dir(&tree).map_err(|e| Error::io(&tree, e))?;
        fs::set_permissions(&tree, Permissions::from_mode(0o755))
            .map_err(|e| Error::io(&tree, e))?;
        image.unpack(&tree, progress)?;

        let file_name = path.file_name().unwrap_or_default().to_string_lossy();
        let out = tempfile::Builder::new()
            .prefix(&format!(".{file_name}."))
            .suffix(".tmp")
            .tempfile_in(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?;
        run_mkfs(&mkfs, out.path(), &tree)?;
        let file = out.as_file();
        file.set_permissions(Permissions::from_mode(0o644))
            .and_then(|()| file.sync_all())
            .map_err(|e| Error::io(out.path(), e))?;
        out.persist(&path).map_err(|e| Error::io(&path, e.error))?;
        // The rename is durable once the directory is.
        if let Err(e) = File::open(&self.dir).and_then(|d| d.sync_all()) {
            log::debug!("syncing {}: {e}", self.dir.display());
        }
        drop(work);
        log::info!(
            "converted {} into {} in {:.1}s",
            image.manifest_digest(),
            path.display(),
            started.elapsed().as_secs_f64()
        );
        Ok(BlockImage {
            path,
            fs_type: "erofs",
            converted: true,
        })
    }

    fn find_mkfs(&self) -> Result<PathBuf, Error> {
        match &self.mkfs_erofs {
            Some(program) if program.components().count() > 1 => {
                is_executable(program).then(|| program.clone())
            }
            Some(program) => find_in_path(program.as_os_str()),
            None => find_in_path(MKFS_EROFS.as_ref()),
        }
        .ok_or(Error::MkfsMissing)
    }
}

/// The unpacked tree, removed when dropped, whether the conversion worked
/// or not.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        if fs::remove_dir_all(&self.0).is_ok() {
            return;
        }
        // Unprivileged, the image's read-only directories (0555) keep us
        // from deleting their entries until they are made writable.
        make_dirs_writable(&self.0);
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("removing {}: {e}", self.0.display());
        }
    }
}

fn make_dirs_writable(dir: &Path) {
    if fs::set_permissions(dir, Permissions::from_mode(0o700)).is_err() {
        return;
    }
    for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            make_dirs_writable(&entry.path());
        }
    }
}

fn run_mkfs(mkfs: &Path, out: &Path, tree: &Path) -> Result<(), Error> {
    crate::mkfs::erofs(mkfs, tree, out).map_err(|e| match e {
        crate::mkfs::Error::Missing { .. } => Error::MkfsMissing,
        crate::mkfs::Error::Failed { status, output, .. } => Error::Mkfs {
            tree: tree.to_path_buf(),
            status,
            stderr: output,
        },
        crate::mkfs::Error::Io { path, err, .. } => Error::io(path, err),
    })
}

fn default_dir_from(var: impl Fn(&str) -> Option<OsString>) -> PathBuf {
    user_dir(
        var,
        "HUSK_IMAGE_CACHE",
        ("XDG_CACHE_HOME", "husk/images"),
        ".cache/husk/images",
        "/var/cache/husk/images",
    )
}

/// A per-user directory: `$<own>` if set, else `$<xdg.0>/<xdg.1>` (an
/// absolute one: the XDG spec says to ignore a relative value), else
/// `$HOME/<home_sub>`, else `fallback`.
pub fn user_dir(
    var: impl Fn(&str) -> Option<OsString>,
    own: &str,
    xdg: (&str, &str),
    home_sub: &str,
    fallback: &str,
) -> PathBuf {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = set(own) {
        return dir;
    }
    if let Some(dir) = set(xdg.0).filter(|d| d.is_absolute()) {
        return dir.join(xdg.1);
    }
    match set("HOME") {
        Some(home) => home.join(home_sub),
        None => PathBuf::from(fallback),
    }
}

fn find_in_path(program: &std::ffi::OsStr) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    // erofs-utils installs to /usr/bin on Debian but sbin elsewhere, which
    // an unprivileged PATH may lack.
    let fallback = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from);
    std::env::split_paths(&path)
        .chain(fallback)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_dir_order() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        assert_eq!(
            default_dir_from(env(&[("HUSK_IMAGE_CACHE", "/c"), ("HOME", "/h")])),
            PathBuf::from("/c")
        );
        assert_eq!(
            default_dir_from(env(&[("XDG_CACHE_HOME", "/x"), ("HOME", "/h")])),
            PathBuf::from("/x/husk/images")
        );
        assert_eq!(
            default_dir_from(env(&[("XDG_CACHE_HOME", "rel"), ("HOME", "/h")])),
            PathBuf::from("/h/.cache/husk/images")
        );
        assert_eq!(
            default_dir_from(env(&[("HUSK_IMAGE_CACHE", "")])),
            PathBuf::from("/var/cache/husk/images")
        );
    }
}
