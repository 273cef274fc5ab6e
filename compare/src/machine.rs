//! The machine and conditions the figures come from.

use crate::results::Machine;

fn cpuinfo_field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
}

/// Which KVM serves /dev/kvm, as the VMM detects it.
fn kvm_flavour(nested: bool) -> String {
    use husk_vmm::kvm_kind::{detect_at, KvmKind};
    match (detect_at(std::path::Path::new("/")), nested) {
        (KvmKind::Pvm, _) => "kvm_pvm (PVM, shadow paging; cannot boot Linux guests)".into(),
        (KvmKind::Hardware(how), false) => format!("{how} (hardware virtualization)"),
        (KvmKind::Hardware(how), true) => format!("{how} (nested: this host is itself a VM)"),
        (KvmKind::Missing, _) => "none (no /dev/kvm)".into(),
        (KvmKind::Unusable(why), _) => format!("unusable: {why}"),
    }
}

pub fn detect() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let nested = cpuinfo_field(&cpuinfo, "flags")
        .is_some_and(|f| f.split_whitespace().any(|x| x == "hypervisor"));
    let mem_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_owned();
    Machine {
        cpu: cpuinfo_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        mem_mib: mem_kib / 1024,
        kernel,
        kvm: kvm_flavour(nested),
        nested,
        date: now_rfc3339(),
    }
}

/// UTC, to the second.
fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_machine() {
        let m = super::detect();
        assert!(m.cores >= 1 && m.mem_mib > 0 && !m.kernel.is_empty());
    }
}
