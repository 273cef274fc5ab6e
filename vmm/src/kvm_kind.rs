//! Which kind of `/dev/kvm` this host has, and whether an ordinary Linux
//! guest can run on it. Mirrors `tests/testbed/detect` (the shell runner
//! needs the answer before any Rust runs); both look at the same files.

use std::fmt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmKind {
    /// VT-x or AMD-V behind `/dev/kvm`: Linux guests boot.
    Hardware(String),
    /// The `kvm_pvm` module: tiny guests run, Linux does not.
    Pvm,
    /// No `/dev/kvm` at all.
    Missing,
    /// `/dev/kvm` exists but cannot be used (no permission, no module we know).
    Unusable(String),
}

impl KvmKind {
    pub fn runs_linux(&self) -> bool {
        matches!(self, KvmKind::Hardware(_))
    }
}

impl fmt::Display for KvmKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvmKind::Hardware(how) => write!(f, "/dev/kvm is hardware virtualization ({how})"),
            KvmKind::Pvm => write!(
                f,
                "/dev/kvm is the kvm_pvm module, not hardware virtualization: \
                 it cannot boot a Linux guest"
            ),
            KvmKind::Missing => write!(f, "/dev/kvm does not exist"),
            KvmKind::Unusable(why) => write!(f, "/dev/kvm cannot be used: {why}"),
        }
    }
}

/// Looks at `<root>/dev/kvm`, `<root>/sys/module` and `<root>/proc/cpuinfo`;
/// `root` is `/` except in tests.
pub fn detect_at(root: &Path) -> KvmKind {
    let under = |p: &str| -> PathBuf { root.join(p.trim_start_matches('/')) };
    if !under("/dev/kvm").exists() {
        return KvmKind::Missing;
    }
    if under("/sys/module/kvm_pvm").exists() {
        return KvmKind::Pvm;
    }
    for module in ["kvm_intel", "kvm_amd"] {
        if under(&format!("/sys/module/{module}")).exists() {
            return KvmKind::Hardware(module.to_owned());
        }
    }
    let cpuinfo = std::fs::read_to_string(under("/proc/cpuinfo")).unwrap_or_default();
    let has_flag = |flag: &str| {
        cpuinfo
            .lines()
            .filter(|l| l.starts_with("flags"))
            .any(|l| l.split_whitespace().any(|w| w == flag))
    };
    if has_flag("vmx") || has_flag("svm") {
        return KvmKind::Hardware("vmx/svm cpu flag".to_owned());
    }
    KvmKind::Unusable("no kvm_intel/kvm_amd module and no vmx/svm cpu flag".to_owned())
}

/// What `/dev/kvm` is on this host, found once and remembered: a jailed
/// VMM (`husk vmm --jail`) asks before it leaves the host's `/sys` and
/// `/proc` behind, and gets the same answer inside.
pub fn host() -> KvmKind {
    static KIND: std::sync::OnceLock<KvmKind> = std::sync::OnceLock::new();
    KIND.get_or_init(|| detect_at(Path::new("/"))).clone()
}

/// The answer for this host, including whether we may open the device.
pub fn detect() -> KvmKind {
    let kind = detect_at(Path::new("/"));
    if kind.runs_linux() {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            return KvmKind::Unusable(format!("opening /dev/kvm: {e}"));
        }
    }
    kind
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_host(files: &[&str], cpu_flags: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for f in files {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            if f.starts_with("sys/") {
                std::fs::create_dir_all(&p).unwrap();
            } else {
                std::fs::write(&p, "").unwrap();
            }
        }
        std::fs::create_dir_all(dir.path().join("proc")).unwrap();
        std::fs::write(
            dir.path().join("proc/cpuinfo"),
            format!("processor\t: 0\nflags\t\t: fpu {cpu_flags} sse\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn pvm_is_not_hardware_even_with_kvm_loaded() {
        let h = fake_host(&["dev/kvm", "sys/module/kvm", "sys/module/kvm_pvm"], "");
        assert_eq!(detect_at(h.path()), KvmKind::Pvm);
        assert!(!detect_at(h.path()).runs_linux());
    }

    #[test]
    fn vendor_module_means_hardware() {
        let h = fake_host(&["dev/kvm", "sys/module/kvm_amd"], "");
        assert_eq!(detect_at(h.path()), KvmKind::Hardware("kvm_amd".into()));
    }

    #[test]
    fn cpu_flag_means_hardware() {
        let h = fake_host(&["dev/kvm"], "vmx");
        assert!(detect_at(h.path()).runs_linux());
    }

    #[test]
    fn no_device_and_no_way_are_explained() {
        let h = fake_host(&[], "svm");
        assert_eq!(detect_at(h.path()), KvmKind::Missing);
        let h = fake_host(&["dev/kvm"], "");
        let k = detect_at(h.path());
        assert!(matches!(k, KvmKind::Unusable(_)));
        assert!(k.to_string().contains("no kvm_intel/kvm_amd module"));
        // The library names the problem; the way out is the CLI's to give.
        assert!(!k.to_string().contains("testbed"));
    }
}
