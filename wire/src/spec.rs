//! The default OCI runtime spec: what `husk run` starts from (the image's
//! and the command line's settings go on top) and what the guest's
//! container runtime assumes when a spec leaves something out.

use std::collections::HashSet;
use std::path::PathBuf;

use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespaceBuilder, LinuxNamespaceType,
    Mount, MountBuilder, PosixRlimitBuilder, PosixRlimitType, ProcessBuilder, RootBuilder, Spec,
    SpecBuilder, UserBuilder,
};

/// `PATH` used when the spec's environment has none.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Docker's 14 default capabilities.
pub const DEFAULT_CAPABILITIES: [Capability; 14] = [
    Capability::Chown,
    Capability::DacOverride,
    Capability::Fsetid,
    Capability::Fowner,
    Capability::Mknod,
    Capability::NetRaw,
    Capability::Setgid,
    Capability::Setuid,
    Capability::Setfcap,
    Capability::Setpcap,
    Capability::NetBindService,
    Capability::SysChroot,
    Capability::Kill,
    Capability::AuditWrite,
];

/// Docker's masked paths.
pub const MASKED_PATHS: [&str; 13] = [
    "/proc/asound",
    "/proc/acpi",
    "/proc/interrupts",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
    "/sys/kernel/security",
];

/// Docker's read-only paths.
pub const READONLY_PATHS: [&str; 5] = [
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

fn mount(dest: &str, typ: &str, source: &str, options: &[&str]) -> Mount {
    MountBuilder::default()
        .destination(dest)
        .typ(typ)
        .source(source)
        .options(options.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .build()
        .expect("static mount")
}

/// The default mounts: proc, /dev tmpfs, devpts, shm, mqueue, sysfs (ro),
/// cgroup2 (ro).
pub fn default_mounts() -> Vec<Mount> {
    vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount(
            "/dev",
            "tmpfs",
            "tmpfs",
            &["nosuid", "strictatime", "mode=755", "size=65536k"],
        ),
        mount(
            "/dev/pts",
            "devpts",
            "devpts",
            &[
                "nosuid",
                "noexec",
                "newinstance",
                "ptmxmode=0666",
                "mode=0620",
                "gid=5",
            ],
        ),
        mount(
            "/dev/shm",
            "tmpfs",
            "shm",
            &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"],
        ),
        mount(
            "/dev/mqueue",
            "mqueue",
            "mqueue",
            &["nosuid", "noexec", "nodev"],
        ),
        mount(
            "/sys",
            "sysfs",
            "sysfs",
            &["nosuid", "noexec", "nodev", "ro"],
        ),
        mount(
            "/sys/fs/cgroup",
            "cgroup2",
            "cgroup2",
            &["nosuid", "noexec", "nodev", "relatime", "ro"],
        ),
    ]
}

/// A sensible default spec, like `runc spec` / Docker's: new pid, mount, uts,
/// ipc, network and cgroup namespaces; Docker's 14 capabilities (bounding,
/// effective, permitted; no inheritable/ambient); the default mounts; Docker's
/// masked and read-only paths; `noNewPrivileges` false; `RLIMIT_NOFILE`
/// 1024:524288; uid/gid 0; cwd `/`; `PATH` set; no terminal; no seccomp entry
/// (so the guest runtime's default profile applies); no resource limits.
pub fn default_spec(args: Vec<String>) -> Spec {
    let caps: HashSet<Capability> = DEFAULT_CAPABILITIES.iter().copied().collect();
    let capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .inheritable(HashSet::new())
        .ambient(HashSet::new())
        .build()
        .expect("static capabilities");
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(
            UserBuilder::default()
                .uid(0u32)
                .gid(0u32)
                .build()
                .expect("user"),
        )
        .args(args)
        .env(vec![
            format!("PATH={DEFAULT_PATH}"),
            "TERM=xterm".to_string(),
        ])
        .cwd("/")
        .capabilities(capabilities)
        .rlimits(vec![PosixRlimitBuilder::default()
            .typ(PosixRlimitType::RlimitNofile)
            .soft(1024u64)
            .hard(524288u64)
            .build()
            .expect("rlimit")])
        .no_new_privileges(false)
        .build()
        .expect("static process");
    let namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Network,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
        LinuxNamespaceType::Cgroup,
    ]
    .into_iter()
    .map(|t| LinuxNamespaceBuilder::default().typ(t).build().expect("ns"))
    .collect::<Vec<_>>();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(
            MASKED_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .readonly_paths(
            READONLY_PATHS
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .build()
        .expect("static linux");
    let mut spec = SpecBuilder::default()
        .version("1.0.2")
        .root(
            RootBuilder::default()
                .path(PathBuf::from("rootfs"))
                .readonly(false)
                .build()
                .expect("root"),
        )
        .process(process)
        .mounts(default_mounts())
        .linux(linux)
        .build()
        .expect("static spec");
    // The builder's Linux default carries an (empty) resources section; none
    // is the honest default here.
    if let Some(l) = spec.linux_mut() {
        l.set_resources(None);
        l.set_seccomp(None);
    }
    spec.set_hostname(None);
    spec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_spec_shape() {
        let s = default_spec(vec!["sh".into()]);
        let p = s.process().as_ref().unwrap();
        assert_eq!(p.args().as_ref().unwrap(), &vec!["sh".to_string()]);
        assert_eq!(p.no_new_privileges(), Some(false));
        let caps = p.capabilities().as_ref().unwrap();
        assert_eq!(caps.bounding().as_ref().unwrap().len(), 14);
        assert!(caps.ambient().as_ref().unwrap().is_empty());
        let l = s.linux().as_ref().unwrap();
        assert_eq!(l.namespaces().as_ref().unwrap().len(), 6);
        assert!(l.resources().is_none());
        assert!(l.seccomp().is_none());
        let dests: Vec<_> = s
            .mounts()
            .as_ref()
            .unwrap()
            .iter()
            .map(|m| m.destination().to_str().unwrap().to_string())
            .collect();
        assert_eq!(
            dests,
            [
                "/proc",
                "/dev",
                "/dev/pts",
                "/dev/shm",
                "/dev/mqueue",
                "/sys",
                "/sys/fs/cgroup"
            ]
        );
        // Round trip through JSON, as the agent will.
        let json = serde_json::to_string(&s).unwrap();
        let back: Spec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
    }
}
