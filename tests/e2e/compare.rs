//! `husk compare --quick`: every workload in every environment produces
//! positive figures, the report parses, and a missing tool is loud.

use husk_tests::require_linux_kvm;
use std::process::Command;
use std::time::Duration;

const ENVS: [&str; 4] = ["native", "crun", "husk", "qemu"];

#[test]
fn quick_compare_reports_positive_figures_for_every_environment() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    let out = tempfile::tempdir().unwrap();
    let mut c = Command::new(husk_tests::husk::binary());
    c.args(["compare", "--quick", "--out"]).arg(out.path());
    // 446 s in a full local suite (2026-12-06), the suite's longest test;
    // CI's machines are slower.
    let run = husk_tests::process::run(c, Duration::from_secs(900));
    eprintln!("husk compare --quick took {:?}", run.elapsed);
    assert_eq!(run.code, Some(0), "{}", run.describe());
    let json = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    let report: serde_json::Value = serde_json::from_str(&json).unwrap();
    let workloads = report["workloads"].as_array().unwrap();
    assert_eq!(workloads.len(), 29, "{json}");
    for w in workloads {
        let id = w["id"].as_str().unwrap();
        for env in ENVS {
            if id == "memory_overhead" && env == "native" {
                continue; // the baseline it subtracts
            }
            let r = w["results"]
                .as_array()
                .unwrap()
                .iter()
                .find(|r| r["env"] == env)
                .unwrap_or_else(|| panic!("{id}: no {env} result"));
            assert!(r.get("skipped").is_none(), "{id} in {env}: {r}");
            let samples = r["samples"].as_array().unwrap();
            assert!(!samples.is_empty(), "{id} in {env}: no samples");
            for s in samples {
                let v = s.as_f64().unwrap();
                // An overhead is a difference: only the VMs' must be above 0.
                let positive = id != "memory_overhead" || env == "husk" || env == "qemu";
                assert!(
                    v.is_finite() && (v > 0.0 || !positive),
                    "{id} in {env}: {v}"
                );
            }
        }
        assert!(
            out.path().join(format!("charts/{id}.svg")).is_file(),
            "no chart for {id}"
        );
    }
    let md = std::fs::read_to_string(out.path().join("report.md")).unwrap();
    assert!(md.contains("nested"), "the report says the host is nested");
    // The study's section: a row for each workload it matches, each saying
    // whether husk agrees.
    let studies = md
        .split("## Against the studies")
        .nth(1)
        .and_then(|s| s.split("\n## ").next())
        .unwrap_or_else(|| panic!("no study section in {md}"));
    for study in [
        "Linpack",
        "STREAM",
        "RandomAccess",
        "fio, random 4 KiB",
        "netperf",
        "Redis",
        "MySQL",
    ] {
        let row = studies
            .lines()
            .find(|l| l.contains(study))
            .unwrap_or_else(|| panic!("no {study} row in {studies}"));
        assert!(
            row.contains("| Agrees: husk at ") || row.contains("| Differs: husk at "),
            "{row}"
        );
    }
}

#[test]
fn a_missing_tool_fails_loudly() {
    require_linux_kvm();
    let _heavy = husk_tests::heavy();
    // No crun on PATH: its environment is reported as skipped, by name.
    let out = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let mut c = Command::new(husk_tests::husk::binary());
    c.args(["compare", "--quick", "--envs", "native,crun", "--out"])
        .arg(out.path())
        .env(
            "PATH",
            format!("{}:/usr/sbin:/sbin", empty.path().display()),
        );
    let run = husk_tests::process::run(c, Duration::from_secs(300));
    assert!(
        run.stderr.contains("crun is not installed"),
        "{}",
        run.describe()
    );
    let json = std::fs::read_to_string(out.path().join("report.json")).unwrap();
    assert!(json.contains("crun is not installed"), "{json}");
    // Nor redis-benchmark: Redis's rows say so, skipped, not failed.
    let redis = "skipped: redis-benchmark is not installed (Debian: redis-tools)";
    assert!(
        run.stderr
            .contains(&format!("redis_set in native: {redis}")),
        "{}",
        run.describe()
    );
    assert!(json.contains(redis), "{json}");
    let sysbench = "skipped: sysbench is not installed (Debian: sysbench)";
    assert!(
        run.stderr
            .contains(&format!("mysql_tps in native: {sysbench}")),
        "{}",
        run.describe()
    );
    // No husk-bench where the guest artifacts are: an error naming it.
    let guest = tempfile::tempdir().unwrap();
    let mut c = Command::new(husk_tests::husk::binary());
    c.args(["compare", "--quick", "--out"])
        .arg(out.path())
        .env("HUSK_GUEST_DIR", guest.path());
    let run = husk_tests::process::run(c, Duration::from_secs(60));
    assert_eq!(run.code, Some(1), "{}", run.describe());
    assert!(run.stderr.contains("husk-bench"), "{}", run.describe());
}
