//! What every benchmark shares: the statistics it reports.

pub mod kvm_stats;

/// Where Firecracker, the peer, is by default (relative to the checkout:
/// the workplace's static build); a bench says "not installed" without it.
pub const FIRECRACKER: &str = "../shared/bin/firecracker-v1.16.1/firecracker";

/// The VMMs that boot from a Firecracker-style config file.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ConfigVmm {
    HuskVmm,
    Firecracker,
}

/// A VM for [`config_boot_args`]: one vCPU.
pub struct ConfigVm<'a> {
    pub kernel: &'a std::path::Path,
    pub boot_args: &'a str,
    /// The root drive, if any.
    pub root: Option<&'a std::path::Path>,
    pub mem_mib: u32,
}

/// Writes `DIR/NAME.json`, booting `vm`, and returns the arguments that
/// boot it without an API (after the program's name). Firecracker also
/// wants a socket path, which it never binds, and a log level (its log
/// goes to stdout with the guest's console).
pub fn config_boot_args(
    vmm: ConfigVmm,
    dir: &std::path::Path,
    name: &str,
    vm: &ConfigVm,
) -> Vec<String> {
    let config = dir.join(format!("{name}.json"));
    let drives: Vec<serde_json::Value> = vm
        .root
        .map(|root| {
            serde_json::json!({"drive_id": "rootfs", "path_on_host": root,
                               "is_root_device": true, "is_read_only": false})
        })
        .into_iter()
        .collect();
    let file = serde_json::json!({
        "boot-source": {"kernel_image_path": vm.kernel, "boot_args": vm.boot_args},
        "drives": drives,
        "machine-config": {"vcpu_count": 1, "mem_size_mib": vm.mem_mib},
    });
    std::fs::write(&config, file.to_string()).unwrap();
    let mut args = vec![
        "--no-api".to_string(),
        "--config-file".to_string(),
        config.display().to_string(),
    ];
    if vmm == ConfigVmm::Firecracker {
        let sock = dir.join(format!("{name}.sock"));
        args.extend(["--api-sock".into(), sock.display().to_string()]);
        args.extend(["--level".into(), "Error".into()]);
    }
    args
}

/// The median of `v` (the mean of the middle two for an even count).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (min, max) of `v`.
pub fn spread(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_and_spread() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(vec![]).is_nan());
        assert_eq!(spread(&[2.0, -1.0, 5.0]), (-1.0, 5.0));
    }
}
