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

/// UTC time without a date crate: civil-from-days (Howard Hinnant's
/// algorithm) over the seconds since the epoch.
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    rfc3339(secs)
}

fn rfc3339(secs: i64) -> String {
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn dates() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_392_000), "2026-11-23T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400 + 3661), "2000-02-29T01:01:01Z");
    }

    #[test]
    fn this_machine() {
        let m = super::detect();
        assert!(m.cores >= 1 && m.mem_mib > 0 && !m.kernel.is_empty());
    }
}
