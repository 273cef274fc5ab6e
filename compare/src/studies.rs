//! The report's comparison with the studies people cite when they choose
//! between a container and a VM: IBM's "An Updated Performance Comparison
//! of Virtual Machines and Linux Containers" (Felter, Ferreira, Rajamony,
//! Rubio; IBM Research Report RC25482, 2014; ISPASS 2015), Docker against
//! KVM on the same host. For each workload of this run that one of theirs
//! matches: the ratios to native, what the study found for containers and
//! for KVM, and whether husk's microVM agrees, with the likely reason when
//! it does not.

use std::fmt::Write as _;

use crate::results::{Env, Report, Workload};

/// How far from native a study or this run places an environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Within [`NEAR`] of native.
    AboutNative,
    /// Slower than native by more than [`NEAR`].
    Slower,
}

/// Within this fraction of native counts as "about native" (the studies
/// call a few percent "negligible"; one run of a handful of samples on a
/// shared host moves by about this much).
pub const NEAR: f64 = 0.10;

/// What the study found for one of its workloads.
#[derive(Debug, Clone, Copy)]
pub struct Finding {
    /// The study's workload.
    pub study: &'static str,
    /// Containers (Docker) against native, in the study's words.
    pub containers: &'static str,
    /// KVM against native, in the study's words.
    pub kvm: &'static str,
    /// Where the study placed KVM.
    pub kvm_verdict: Verdict,
    /// Why a microVM can land elsewhere than the study's KVM here.
    pub why: &'static str,
}

/// The study's finding for this run's workload `id`, if it measured one
/// like it.
pub fn finding(id: &str) -> Option<Finding> {
    let f = match id {
        "cpu_gflops" | "cpu_gflops_all" => Finding {
            study: "Linpack",
            containers: "same as native",
            kvm: "−2% tuned (vCPUs pinned, cache topology exposed); −17% untuned",
            kvm_verdict: Verdict::AboutNative,
            why: "guest code runs on the CPU unchanged; only exits cost, and a \
                  compute loop makes almost none",
        },
        "mem_copy" | "mem_triad" | "mem_triad_all" => Finding {
            study: "STREAM",
            containers: "negligible overhead",
            kvm: "−1% to −3%",
            kvm_verdict: Verdict::AboutNative,
            why: "sequential access walks few pages, so two-level address \
                  translation costs little; a smaller guest heap or other \
                  huge-page backing shows here",
        },
        "mem_gups" | "mem_gups_all" => Finding {
            study: "RandomAccess (GUPS)",
            containers: "negligible overhead",
            kvm: "−1%",
            kvm_verdict: Verdict::AboutNative,
            why: "every random access can miss the TLB, and a miss walks the \
                  guest's page tables and the host's (two levels; three under \
                  nesting), so random access is where backing guest memory \
                  with huge pages matters most",
        },
        "seq_read" | "seq_write" => Finding {
            study: "fio, sequential",
            containers: "about native",
            kvm: "about native",
            kvm_verdict: Verdict::AboutNative,
            why: "large requests make few exits per byte, but each virtio \
                  request is still a notification and an interrupt",
        },
        "rand_read" | "rand_write" => Finding {
            study: "fio, random 4 KiB",
            containers: "no overhead",
            kvm: "half native's IOPS (each I/O goes through QEMU)",
            kvm_verdict: Verdict::Slower,
            why: "each 4 KiB request crosses the VM boundary (a notification \
                  exit, the VMM's I/O, an interrupt), a fixed cost per request",
        },
        "net_throughput" => Finding {
            study: "nuttcp (bandwidth)",
            containers: "line rate (9.3 Gbit/s); NAT costs CPU",
            kvm: "line rate; more CPU per byte, receiving above all",
            kvm_verdict: Verdict::AboutNative,
            why: "the bytes cross a virtio queue and the host's TAP or \
                  socket: more copies and exits per packet than a container's \
                  veth",
        },
        "net_rr" => Finding {
            study: "netperf request/response (latency)",
            containers: "native without NAT; NAT doubles the latency",
            kvm: "+80% (about 30 µs more per transaction)",
            kvm_verdict: Verdict::Slower,
            why: "each message crosses the VM boundary twice (a notification \
                  exit out, an interrupt in)",
        },
        "redis_set" | "redis_get" | "redis_set_p99" | "redis_get_p99" => Finding {
            study: "Redis (redis-benchmark)",
            containers: "native with host networking; NAT costs throughput and latency",
            kvm: "lower throughput and higher latency, the gap closing as clients are added",
            kvm_verdict: Verdict::Slower,
            why: "every request and reply is a small packet through the virtual \
                  NIC: an exit and an interrupt each, which 50 clients' \
                  pipelines only partly amortize",
        },
        "mysql_tps" | "mysql_p95" => Finding {
            study: "MySQL (sysbench OLTP)",
            containers: "native with host networking and a volume; NAT and AUFS cost",
            kvm: "well below native at every concurrency",
            kvm_verdict: Verdict::Slower,
            why: "each query is a round trip through the virtual NIC, and \
                  each commit a write and flush through the virtual disk",
        },
        _ => return None,
    };
    Some(f)
}

/// Where this run places `env` on workload `w`, from its median against
/// native's; None when either did not run.
pub fn verdict(w: &Workload, env: Env) -> Option<Verdict> {
    let ratio = w.ratio(env, Env::Native)?;
    // Slower means below native where higher is better, above it where
    // lower is better.
    let slowdown = if w.higher_is_better {
        1.0 - ratio
    } else {
        ratio - 1.0
    };
    Some(if slowdown > NEAR {
        Verdict::Slower
    } else {
        Verdict::AboutNative
    })
}

/// The sentence beside a row: husk against the study's KVM, why where it
/// is slower, and whether QEMU's microVM lands alike (then the cost is the
/// virtualization's, not husk's).
pub fn agreement(w: &Workload, f: &Finding, nested: bool) -> String {
    let (Some(ratio), Some(ours)) = (w.ratio(Env::Husk, Env::Native), verdict(w, Env::Husk)) else {
        return "husk did not run this workload here".into();
    };
    let at = format!("husk at {ratio:.2}× native");
    let why = if nested {
        format!("{}; nested here, each exit costs tens of µs", f.why)
    } else {
        f.why.to_string()
    };
    let mut s = match (ours, f.kvm_verdict) {
        (Verdict::AboutNative, Verdict::AboutNative) => {
            format!("Agrees: {at}, as the study found for KVM.")
        }
        (Verdict::Slower, Verdict::Slower) => {
            format!("Agrees: {at}, slower as the study found for KVM: {why}.")
        }
        (Verdict::Slower, Verdict::AboutNative) => {
            format!("Differs: {at}, where the study found KVM about native: {why}.")
        }
        (Verdict::AboutNative, Verdict::Slower) => {
            format!(
                "Differs: {at}, where the study found KVM slower ({}).",
                f.why
            )
        }
    };
    if let Some(q) = w.ratio(Env::Qemu, Env::Native) {
        let alike = verdict(w, Env::Qemu) == Some(ours);
        let _ = write!(
            s,
            " QEMU's microVM: {q:.2}×{}",
            if alike { ", alike." } else { ", unlike husk." }
        );
    }
    s
}

/// The report's section: one row per workload the study matches.
pub fn section(md: &mut String, report: &Report) {
    let rows: Vec<(&Workload, Finding)> = report
        .workloads
        .iter()
        .filter_map(|w| finding(&w.id).map(|f| (w, f)))
        .collect();
    if rows.is_empty() {
        return;
    }
    md.push_str("## Against the studies\n\n");
    md.push_str(
        "IBM's \"An Updated Performance Comparison of Virtual Machines and \
         Linux Containers\" (Felter et al., 2014) ran Docker and KVM on one \
         host (10 Gbit/s Ethernet, SSD). Its finding: containers match \
         native almost everywhere (NAT and AUFS aside); KVM is within a few \
         percent on CPU and memory once tuned, and pays on random I/O and \
         network latency, \"less suitable for workloads that are \
         latency-sensitive or have high I/O rates\". The study's figures \
         below are as its report gives them. Each row: this run's medians as ratios \
         to native (above 1× is faster where higher is better), then the \
         study's direction, then where husk stands. \"About native\" is \
         within 10%.\n\n",
    );
    if report.machine.nested {
        md.push_str(
            "Here the VMs run nested, on an emulated CPU: every exit costs \
             tens of microseconds, so anything that exits per request is \
             slower than the study's KVM would be on hardware.\n\n",
        );
    }
    // Firecracker's column only when the run measured it (`--envs`).
    let fc = report
        .workloads
        .iter()
        .any(|w| w.result(Env::Firecracker).is_some());
    let (fc_head, fc_rule) = if fc {
        (" firecracker / native |", "---:|")
    } else {
        ("", "")
    };
    let _ = writeln!(
        md,
        "| workload | study's workload | crun / native | husk / native | qemu / native |{fc_head} study: containers | study: KVM | husk |\n\
         |---|---|---:|---:|---:|{fc_rule}---|---|---|"
    );
    for (w, f) in rows {
        let r = |env| crate::report::ratio(w.ratio(env, Env::Native));
        let fc_cell = if fc {
            format!(" {} |", r(Env::Firecracker))
        } else {
            String::new()
        };
        let _ = writeln!(
            md,
            "| {} | {} | {} | {} | {} |{fc_cell} {} | {} | {} |",
            w.title,
            f.study,
            r(Env::Crun),
            r(Env::Husk),
            r(Env::Qemu),
            f.containers,
            f.kvm,
            agreement(w, &f, report.machine.nested),
        );
    }
    md.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::results::EnvResult;

    fn workload(id: &str, higher: bool, native: f64, husk: Option<f64>) -> Workload {
        let mut results = vec![EnvResult {
            env: Env::Native,
            samples: vec![native],
            skipped: None,
        }];
        if let Some(h) = husk {
            results.push(EnvResult {
                env: Env::Husk,
                samples: vec![h],
                skipped: None,
            });
        }
        Workload {
            id: id.into(),
            title: id.into(),
            unit: "x".into(),
            higher_is_better: higher,
            detail: String::new(),
            results,
        }
    }

    #[test]
    fn a_verdict_follows_the_workloads_direction() {
        // Higher is better: 0.85× native is slower, 0.95× is about native.
        let w = workload("mem_gups", true, 100.0, Some(85.0));
        assert_eq!(verdict(&w, Env::Husk), Some(Verdict::Slower));
        let w = workload("mem_gups", true, 100.0, Some(95.0));
        assert_eq!(verdict(&w, Env::Husk), Some(Verdict::AboutNative));
        // Lower is better: 1.2× native's round trip is slower.
        let w = workload("net_rr", false, 100.0, Some(120.0));
        assert_eq!(verdict(&w, Env::Husk), Some(Verdict::Slower));
        // Faster than native is never "slower".
        let w = workload("net_rr", false, 100.0, Some(50.0));
        assert_eq!(verdict(&w, Env::Husk), Some(Verdict::AboutNative));
        assert_eq!(verdict(&w, Env::Qemu), None);
    }

    #[test]
    fn the_sentence_says_whether_husk_agrees_and_why_not() {
        let gups = finding("mem_gups").unwrap();
        let slow = workload("mem_gups", true, 100.0, Some(55.0));
        let s = agreement(&slow, &gups, false);
        assert!(s.starts_with("Differs: husk at 0.55× native"), "{s}");
        assert!(s.contains("page tables") && !s.contains("nested"), "{s}");
        assert!(agreement(&slow, &gups, true).contains("nested here"));
        let near = workload("mem_gups", true, 100.0, Some(97.0));
        assert_eq!(
            agreement(&near, &gups, true),
            "Agrees: husk at 0.97× native, as the study found for KVM."
        );
        let rr = finding("net_rr").unwrap();
        let mut slow_rr = workload("net_rr", false, 10.0, Some(30.0));
        assert!(agreement(&slow_rr, &rr, false)
            .starts_with("Agrees: husk at 3.00× native, slower as the study found"));
        slow_rr.results.push(EnvResult {
            env: Env::Qemu,
            samples: vec![40.0],
            skipped: None,
        });
        assert!(agreement(&slow_rr, &rr, false).ends_with(" QEMU's microVM: 4.00×, alike."));
        let missing = workload("net_rr", false, 10.0, None);
        assert_eq!(
            agreement(&missing, &rr, false),
            "husk did not run this workload here"
        );
    }

    #[test]
    fn firecracker_has_a_column_only_when_the_run_measured_it() {
        let mut w = workload("redis_set", true, 100.0, Some(20.0));
        let mut report = Report {
            machine: Default::default(),
            quick: true,
            runs: 1,
            command: String::new(),
            husk_pool: false,
            workloads: vec![w.clone()],
        };
        let mut md = String::new();
        section(&mut md, &report);
        assert!(md.contains("| qemu / native | study: containers"), "{md}");
        assert!(!md.contains("firecracker"), "{md}");
        w.results.push(EnvResult {
            env: Env::Firecracker,
            samples: vec![25.0],
            skipped: None,
        });
        report.workloads = vec![w];
        let mut md = String::new();
        section(&mut md, &report);
        assert!(
            md.contains("| qemu / native | firecracker / native |"),
            "{md}"
        );
        let row = md.lines().find(|l| l.starts_with("| redis_set |")).unwrap();
        assert!(row.contains("| 0.20× | — | 0.25× |"), "{row}");
    }

    #[test]
    fn only_workloads_the_study_measured_get_a_row() {
        assert!(finding("dir_create").is_none());
        assert!(finding("memory_pss").is_none());
        for id in [
            "cpu_gflops",
            "mem_copy",
            "mem_triad",
            "mem_gups",
            "rand_read",
            "net_rr",
            "redis_get",
            "redis_set_p99",
            "mysql_tps",
        ] {
            assert!(finding(id).is_some(), "{id}");
        }
    }
}
