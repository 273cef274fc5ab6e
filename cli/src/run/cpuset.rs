//! `--cpuset-cpus`: the host CPUs a container's VM may run on, as Docker
//! takes them (`0-3,6`). The calling thread's affinity is set before the
//! VM's threads exist, so every one of them (the vCPUs first) inherits it.

use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
use nix::unistd::Pid;

/// The CPUs a list names, in order, each once.
pub fn parse(list: &str) -> Result<Vec<usize>, String> {
    let bad = |why: String| format!("--cpuset-cpus {list:?}: {why}");
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let number = |s: &str| {
            s.parse::<usize>()
                .map_err(|_| bad(format!("{s:?} is not a CPU number")))
        };
        let (first, last) = match part.split_once('-') {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(part)?, number(part)?),
        };
        if first > last {
            return Err(bad(format!("{part} runs backwards")));
        }
        if last >= CpuSet::count() {
            return Err(bad(format!("CPU {last} is beyond what Linux numbers")));
        }
        for cpu in first..=last {
            if !cpus.contains(&cpu) {
                cpus.push(cpu);
            }
        }
    }
    Ok(cpus)
}

/// Confines the calling thread, and the threads it starts from now on, to
/// `cpus`, which must all be CPUs this process may use.
pub fn apply(cpus: &[usize]) -> Result<(), String> {
    let allowed = sched_getaffinity(Pid::from_raw(0))
        .map_err(|e| format!("--cpuset-cpus: cannot read this process's CPUs: {e}"))?;
    let mut set = CpuSet::new();
    for &cpu in cpus {
        if !allowed.is_set(cpu).unwrap_or(false) {
            return Err(format!(
                "--cpuset-cpus: CPU {cpu} is not one this host lets husk use ({})",
                describe(&allowed)
            ));
        }
        set.set(cpu)
            .map_err(|e| format!("--cpuset-cpus: CPU {cpu}: {e}"))?;
    }
    sched_setaffinity(Pid::from_raw(0), &set).map_err(|e| format!("--cpuset-cpus: {e}"))
}

/// `0, 1, 3`: the CPUs of a set.
fn describe(set: &CpuSet) -> String {
    let cpus: Vec<String> = (0..CpuSet::count())
        .filter(|&c| set.is_set(c).unwrap_or(false))
        .map(|c| c.to_string())
        .collect();
    format!("CPUs {}", cpus.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_and_ranges_as_docker_takes_them() {
        assert_eq!(parse("0-2,5").unwrap(), vec![0, 1, 2, 5]);
        assert_eq!(parse("1,1, 0").unwrap(), vec![1, 0]);
        for bad in ["", "a", "3-1", "1-", "99999", "-1"] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_cpu_the_process_may_not_use_is_refused() {
        // On a thread of its own, so the test harness keeps its CPUs.
        std::thread::spawn(|| {
            let err = apply(&[CpuSet::count() - 1]).unwrap_err();
            assert!(err.contains("is not one this host lets husk use"), "{err}");
            apply(&[0]).unwrap();
            let now = sched_getaffinity(Pid::from_raw(0)).unwrap();
            assert!(now.is_set(0).unwrap());
            assert_eq!(describe(&now), "CPUs 0");
        })
        .join()
        .unwrap();
    }
}
