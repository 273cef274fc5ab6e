//! The default seccomp profile (the default spec itself is shared with the
//! host: `husk_wire::spec`).

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscall, LinuxSyscallBuilder,
};

/// Syscalls refused with EPERM by [`default_seccomp`].
pub const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "fanotify_init",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "ptrace",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "_sysctl",
    "syslog",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
    "vhangup",
];

/// The namespace flags a `clone` may not carry under [`default_seccomp`].
const CLONE_NS_FLAGS: [u64; 7] = [
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
];

fn syscall(names: &[&str], action: LinuxSeccompAction, errno: u32) -> LinuxSyscall {
    LinuxSyscallBuilder::default()
        .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
        .action(action)
        .errno_ret(errno)
        .build()
        .expect("static syscall rule")
}

/// The profile used when the spec has no `linux.seccomp`: Docker's intent as
/// a deny-list. Everything is allowed except [`DENIED_SYSCALLS`] (EPERM),
/// `clone` with a namespace flag (EPERM: several conditions on one argument
/// are ORed, as in runc) and `clone3` (ENOSYS, so libcs fall back to `clone`,
/// whose flags can be inspected). Unknown names (not on this architecture)
/// are skipped at compile time.
pub fn default_seccomp() -> LinuxSeccomp {
    let mut clone = syscall(
        &["clone"],
        LinuxSeccompAction::ScmpActErrno,
        libc::EPERM as u32,
    );
    clone.set_args(Some(
        CLONE_NS_FLAGS
            .iter()
            .map(|&f| {
                LinuxSeccompArgBuilder::default()
                    .index(0usize)
                    .value(f)
                    .value_two(f)
                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
                    .build()
                    .expect("static arg")
            })
            .collect(),
    ));
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .syscalls(vec![
            syscall(
                DENIED_SYSCALLS,
                LinuxSeccompAction::ScmpActErrno,
                libc::EPERM as u32,
            ),
            clone,
            syscall(
                &["clone3"],
                LinuxSeccompAction::ScmpActErrno,
                libc::ENOSYS as u32,
            ),
        ])
        .build()
        .expect("static seccomp profile")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_names_exist_mostly() {
        let known = DENIED_SYSCALLS
            .iter()
            .filter(|n| crate::seccomp::syscall_number(n).is_some())
            .count();
        assert!(known + 3 >= DENIED_SYSCALLS.len(), "{known}");
    }
}
