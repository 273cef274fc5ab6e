//! OCI seccomp profiles → classic BPF programs (seccompiler), pure Rust.
//!
//! seccompiler builds filters with one "match" and one "mismatch" action, while
//! an OCI profile has a default action and one action per rule. The profile is
//! therefore split into several filters that the kernel combines by taking the
//! most restrictive result of all installed filters:
//!
//! - the *base* filter: every syscall named by any rule (with the rule's
//!   argument conditions) → ALLOW, anything else → the default action;
//! - one filter per other action A: the rules with action A → A, anything
//!   else → ALLOW.
//!
//! A call matching a rule gets ALLOW from the base and A from its action's
//! filter, so A; a call matching no rule gets the default from the base and
//! ALLOW from the others. Rules whose action equals the default are redundant
//! and skipped (as runc does). Conditions follow runc: conditions on distinct
//! arguments are ANDed; when one argument has several conditions, each
//! condition becomes a rule of its own (ORed).

use std::collections::BTreeMap;
use std::str::FromStr;

use oci_spec::runtime::{
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompFilterFlag, LinuxSeccompOperator,
};
use seccompiler::{
    sock_filter, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use crate::Error;

/// Compiled filters, installed in order just before the process's execve.
#[derive(Clone, Debug, Default)]
pub(crate) struct Programs {
    pub filters: Vec<BpfProgram>,
    /// `flags` argument of seccomp(SECCOMP_SET_MODE_FILTER).
    pub flags: libc::c_ulong,
}

impl Programs {
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }
}

fn arch() -> Result<TargetArch, Error> {
    TargetArch::try_from(std::env::consts::ARCH).map_err(|e| Error::Seccomp(e.to_string()))
}

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<SeccompAction, Error> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => SeccompAction::Allow,
        LinuxSeccompAction::ScmpActErrno => {
            SeccompAction::Errno(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            SeccompAction::KillThread
        }
        LinuxSeccompAction::ScmpActKillProcess => SeccompAction::KillProcess,
        LinuxSeccompAction::ScmpActTrap => SeccompAction::Trap,
        LinuxSeccompAction::ScmpActLog => SeccompAction::Log,
        LinuxSeccompAction::ScmpActTrace => {
            SeccompAction::Trace(errno.unwrap_or(libc::EPERM as u32))
        }
        LinuxSeccompAction::ScmpActNotify => {
            return Err(Error::Seccomp(
                "SCMP_ACT_NOTIFY is not supported (no seccomp agent)".into(),
            ))
        }
    })
}

fn condition(arg: &LinuxSeccompArg) -> Result<SeccompCondition, Error> {
    let index = u8::try_from(arg.index())
        .ok()
        .filter(|i| *i < 6)
        .ok_or_else(|| Error::Seccomp(format!("argument index {} out of range", arg.index())))?;
    let (op, value) = match arg.op() {
        LinuxSeccompOperator::ScmpCmpNe => (SeccompCmpOp::Ne, arg.value()),
        LinuxSeccompOperator::ScmpCmpLt => (SeccompCmpOp::Lt, arg.value()),
        LinuxSeccompOperator::ScmpCmpLe => (SeccompCmpOp::Le, arg.value()),
        LinuxSeccompOperator::ScmpCmpEq => (SeccompCmpOp::Eq, arg.value()),
        LinuxSeccompOperator::ScmpCmpGe => (SeccompCmpOp::Ge, arg.value()),
        LinuxSeccompOperator::ScmpCmpGt => (SeccompCmpOp::Gt, arg.value()),
        // libseccomp/OCI: value is the mask, valueTwo the datum.
        LinuxSeccompOperator::ScmpCmpMaskedEq => (
            SeccompCmpOp::MaskedEq(arg.value()),
            arg.value_two().unwrap_or(0),
        ),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Qword, op, value)
        .map_err(|e| Error::Seccomp(e.to_string()))
}

/// The rules of one OCI syscall entry: `None` = unconditional.
fn rules(args: &[LinuxSeccompArg]) -> Result<Option<Vec<SeccompRule>>, Error> {
    if args.is_empty() {
        return Ok(None);
    }
    let mut counts = [0usize; 6];
    let mut conds = Vec::with_capacity(args.len());
    for a in args {
        let c = condition(a)?;
        counts[a.index()] += 1;
        conds.push(c);
    }
    let rule =
        |c: Vec<SeccompCondition>| SeccompRule::new(c).map_err(|e| Error::Seccomp(e.to_string()));
    if counts.iter().any(|&n| n > 1) {
        Ok(Some(
            conds
                .into_iter()
                .map(|c| rule(vec![c]))
                .collect::<Result<_, _>>()?,
        ))
    } else {
        Ok(Some(vec![rule(conds)?]))
    }
}

/// Syscall number → rules (empty = unconditional), merged over entries.
type RuleMap = BTreeMap<i64, Vec<SeccompRule>>;

fn merge(map: &mut RuleMap, unconditional: &mut Vec<i64>, nr: i64, r: &Option<Vec<SeccompRule>>) {
    match r {
        None => {
            unconditional.push(nr);
            map.insert(nr, Vec::new());
        }
        Some(rs) => {
            if !unconditional.contains(&nr) {
                map.entry(nr).or_default().extend(rs.iter().cloned());
            }
        }
    }
}

fn action_key(a: &SeccompAction) -> u32 {
    u32::from(a.clone())
}

/// Looks a syscall name up for the running architecture.
pub(crate) fn syscall_number(name: &str) -> Option<i64> {
    syscalls::Sysno::from_str(name).ok().map(|s| s.id() as i64)
}

/// Compiles an OCI seccomp profile.
pub(crate) fn compile(profile: &LinuxSeccomp) -> Result<Programs, Error> {
    let arch = arch()?;
    let default = action(profile.default_action(), profile.default_errno_ret())?;

    let mut flags: libc::c_ulong = 0;
    for f in profile.flags().iter().flatten() {
        match f {
            LinuxSeccompFilterFlag::SeccompFilterFlagLog => flags |= 2,
            LinuxSeccompFilterFlag::SeccompFilterFlagSpecAllow => flags |= 4,
            other => log::debug!("seccomp: ignoring flag {other:?}"),
        }
    }

    // Base filter rules and per-action filters.
    let mut base: RuleMap = BTreeMap::new();
    let mut base_uncond = Vec::new();
    let mut per_action: BTreeMap<u32, (SeccompAction, RuleMap, Vec<i64>)> = BTreeMap::new();

    for sc in profile.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        if act == default {
            log::debug!(
                "seccomp: rule for {:?} has the default action, skipped",
                sc.names()
            );
            continue;
        }
        let r = rules(sc.args().as_deref().unwrap_or(&[]))?;
        for name in sc.names() {
            let Some(nr) = syscall_number(name) else {
                log::debug!("seccomp: unknown syscall {name:?} skipped");
                continue;
            };
            merge(&mut base, &mut base_uncond, nr, &r);
            if act != SeccompAction::Allow {
                let entry = per_action
                    .entry(action_key(&act))
                    .or_insert_with(|| (act.clone(), BTreeMap::new(), Vec::new()));
                merge(&mut entry.1, &mut entry.2, nr, &r);
            }
        }
    }

    let build = |rules: RuleMap, mismatch: SeccompAction, on_match: SeccompAction| {
        let filter = SeccompFilter::new(rules, mismatch, on_match, arch)
            .map_err(|e| Error::Seccomp(e.to_string()))?;
        BpfProgram::try_from(filter).map_err(|e| Error::Seccomp(e.to_string()))
    };

    let mut filters = Vec::new();
    if default != SeccompAction::Allow {
        filters.push(build(base, default.clone(), SeccompAction::Allow)?);
    }
    for (_, (act, rules, _)) in per_action {
        if rules.is_empty() {
            continue;
        }
        filters.push(build(rules, SeccompAction::Allow, act)?);
    }
    if !filters.is_empty() && arch == TargetArch::x86_64 {
        filters.insert(0, x32_guard());
    }
    Ok(Programs { filters, flags })
}

/// x86_64: refuse the x32 ABI (syscall numbers with bit 30 set), which would
/// otherwise slip past rules keyed on the x86_64 numbers.
fn x32_guard() -> BpfProgram {
    const LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
    const JEQ_K: u16 = 0x05 | 0x10;
    const JGE_K: u16 = 0x05 | 0x30;
    const RET_K: u16 = 0x06;
    const AUDIT_ARCH_X86_64: u32 = 62 | 0x8000_0000 | 0x4000_0000;
    let st = |code, k| sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    };
    let jmp = |code, k, jt, jf| sock_filter { code, jt, jf, k };
    vec![
        st(LD_W_ABS, 4), // seccomp_data.arch
        jmp(JEQ_K, AUDIT_ARCH_X86_64, 1, 0),
        st(RET_K, libc::SECCOMP_RET_KILL_PROCESS),
        st(LD_W_ABS, 0), // seccomp_data.nr
        jmp(JGE_K, 0x4000_0000, 0, 1),
        st(RET_K, libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32),
        st(RET_K, libc::SECCOMP_RET_ALLOW),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{LinuxSeccompArgBuilder, LinuxSeccompBuilder, LinuxSyscallBuilder};

    fn sys(names: &[&str], action: LinuxSeccompAction) -> oci_spec::runtime::LinuxSyscall {
        LinuxSyscallBuilder::default()
            .names(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .action(action)
            .build()
            .unwrap()
    }

    #[test]
    fn default_profile_compiles() {
        let p = compile(&crate::default_seccomp()).unwrap();
        // guard + errno filter (EPERM) + clone3 ENOSYS filter
        assert!(p.filters.len() >= 2, "{}", p.filters.len());
        assert!(p.filters.iter().all(|f| !f.is_empty() && f.len() < 4096));
    }

    #[test]
    fn allow_all_profile_installs_nothing() {
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .build()
            .unwrap();
        assert!(compile(&p).unwrap().is_empty());
    }

    #[test]
    fn allow_list_profile_is_one_filter_plus_guard() {
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActErrno)
            .syscalls(vec![
                sys(
                    &["read", "write", "no_such_call"],
                    LinuxSeccompAction::ScmpActAllow,
                ),
                sys(&["exit_group"], LinuxSeccompAction::ScmpActErrno), // same as default
            ])
            .build()
            .unwrap();
        let c = compile(&p).unwrap();
        assert_eq!(c.filters.len(), 2);
    }

    #[test]
    fn conditions_and_actions() {
        let arg = |index: usize, value: u64, op| {
            LinuxSeccompArgBuilder::default()
                .index(index)
                .value(value)
                .op(op)
                .build()
                .unwrap()
        };
        let mut personality = sys(&["personality"], LinuxSeccompAction::ScmpActErrno);
        personality.set_args(Some(vec![
            arg(0, 8, LinuxSeccompOperator::ScmpCmpEq),
            arg(0, 0, LinuxSeccompOperator::ScmpCmpEq),
        ]));
        let mut masked = sys(&["clone"], LinuxSeccompAction::ScmpActKillProcess);
        let m = LinuxSeccompArgBuilder::default()
            .index(0usize)
            .value(0x1000_0000u64)
            .value_two(0x1000_0000u64)
            .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
            .build()
            .unwrap();
        masked.set_args(Some(vec![m, arg(1, 0, LinuxSeccompOperator::ScmpCmpNe)]));
        let p = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![
                personality,
                masked,
                sys(&["ptrace"], LinuxSeccompAction::ScmpActTrap),
                sys(&["getpid"], LinuxSeccompAction::ScmpActLog),
            ])
            .build()
            .unwrap();
        let c = compile(&p).unwrap();
        // guard + errno + kill + trap + log
        assert_eq!(c.filters.len(), 5);

        let bad = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActAllow)
            .syscalls(vec![{
                let mut s = sys(&["read"], LinuxSeccompAction::ScmpActErrno);
                s.set_args(Some(vec![arg(7, 0, LinuxSeccompOperator::ScmpCmpEq)]));
                s
            }])
            .build()
            .unwrap();
        assert!(compile(&bad).is_err());

        let notify = LinuxSeccompBuilder::default()
            .default_action(LinuxSeccompAction::ScmpActNotify)
            .build()
            .unwrap();
        assert!(compile(&notify).is_err());
    }

    #[test]
    fn syscall_names() {
        assert_eq!(syscall_number("read"), Some(libc::SYS_read));
        assert_eq!(syscall_number("unshare"), Some(libc::SYS_unshare));
        assert_eq!(syscall_number("bogus"), None);
    }
}
