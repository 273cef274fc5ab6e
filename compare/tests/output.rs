//! The report, the JSON and the charts from one sample comparison, with no
//! KVM involved: the figures are made up, the shapes are real.

use husk_compare::results::{Env, EnvResult, Machine, Report, Workload};
use husk_compare::{chart, report};

fn ran(env: Env, samples: &[f64]) -> EnvResult {
    EnvResult {
        env,
        samples: samples.to_vec(),
        skipped: None,
    }
}

fn skipped(env: Env, why: &str) -> EnvResult {
    EnvResult {
        env,
        samples: Vec::new(),
        skipped: Some(why.to_string()),
    }
}

fn workload(id: &str, unit: &str, higher: bool, results: Vec<EnvResult>) -> Workload {
    Workload {
        id: id.to_string(),
        title: format!("Title of {id}"),
        unit: unit.to_string(),
        higher_is_better: higher,
        detail: format!("What {id} ran."),
        results,
    }
}

fn sample(nested: bool) -> Report {
    Report {
        machine: Machine {
            cpu: "AMD EPYC 7B13".to_string(),
            cores: 2,
            mem_mib: 24_000,
            kernel: "6.12.0".to_string(),
            kvm: "kvm_amd (nested)".to_string(),
            nested,
            date: "2025-01-02T03:04:05Z".to_string(),
        },
        quick: true,
        runs: 3,
        command: "husk compare --quick --out /tmp/cmp".to_string(),
        husk_pool: true,
        workloads: vec![
            workload(
                "startup_output",
                "ms",
                false,
                vec![
                    // Out of report order on purpose: the table is not.
                    ran(Env::Husk, &[120.0, 125.0, 118.0]),
                    ran(Env::Native, &[1.0, 1.2, 1.1]),
                    ran(Env::Crun, &[40.0, 42.0, 41.0]),
                    skipped(Env::Qemu, "QEMU is not installed"),
                ],
            ),
            workload(
                "seq_write",
                "MB/s",
                true,
                vec![
                    ran(Env::Native, &[1000.0, 1100.0, 1050.0, 1020.0]),
                    ran(Env::Crun, &[990.0, 1000.0]),
                    ran(Env::Husk, &[600.0, 620.0, 610.0]),
                    ran(Env::Qemu, &[500.0, 520.0, 510.0]),
                ],
            ),
            workload(
                "density",
                "MiB",
                false,
                vec![
                    skipped(Env::Native, "no VM | no overhead"),
                    ran(Env::Husk, &[31.5]),
                ],
            ),
        ],
    }
}

#[test]
fn markdown_tables_have_medians_spreads_and_ratios() {
    let md = report::markdown(&sample(true));
    for row in [
        "| environment | median (ms) | min–max (ms) | vs native | vs crun |",
        "| native | 1.10 | 1.00–1.20 | 1.00× | 0.03× |",
        "| crun | 41.0 | 40.0–42.0 | 37.27× | 1.00× |",
        "| husk | 120 | 118–125 | 109.09× | 2.93× |",
        "| qemu | skipped: QEMU is not installed | — | — | — |",
        "| environment | median (MB/s) | min–max (MB/s) | vs native | vs crun |",
        "| husk | 610 | 600–620 | 0.59× | 0.61× |",
        "| qemu | 510 | 500–520 | 0.49× | 0.51× |",
        "| native | skipped: no VM \\| no overhead | — | — | — |",
        "| husk | 31.5 | 31.5–31.5 | — | — |",
    ] {
        assert!(md.contains(&format!("{row}\n")), "missing {row:?} in\n{md}");
    }
}

#[test]
fn markdown_rows_follow_report_order() {
    let md = report::markdown(&sample(true));
    let at = |s: &str| md.find(s).unwrap();
    assert!(at("| native | 1.10") < at("| crun | 41.0"));
    assert!(at("| crun | 41.0") < at("| husk | 120"));
    assert!(at("| husk | 120") < at("| qemu | skipped"));
}

#[test]
fn markdown_states_the_conditions_and_links_the_charts() {
    let md = report::markdown(&sample(true));
    for text in [
        "# husk compare",
        "- CPU: AMD EPYC 7B13, 2 cores",
        "- Memory: 24000 MiB",
        "- Kernel: 6.12.0",
        "- KVM: kvm_amd (nested)",
        "- Nested: yes",
        "- Date: 2025-01-02T03:04:05Z",
        "- Command: `husk compare --quick --out /tmp/cmp`",
        "- Mode: quick, 3 runs",
        "- husk: `husk run --rm`, each VM restored from the pool's template",
        "## Title of seq_write",
        "What seq_write ran. Higher is better.",
        "What startup_output ran. Lower is better.",
        "![Title of startup_output](charts/startup_output.svg)",
        "![Title of seq_write](charts/seq_write.svg)",
        "![Title of density](charts/density.svg)",
    ] {
        assert!(md.contains(text), "missing {text:?} in\n{md}");
    }
}

#[test]
fn the_conditions_say_whether_husk_booted_its_vms() {
    let booted = Report {
        husk_pool: false,
        ..sample(false)
    };
    let md = report::markdown(&booted);
    assert!(
        md.contains("- husk: `husk run --rm`, each VM booted (the pool is off)"),
        "{md}"
    );
}

#[test]
fn how_to_read_warns_about_nested_virtualization_only_when_nested() {
    let nested = report::markdown(&sample(true));
    assert!(nested.contains("## How to read this"));
    assert!(nested.contains("tens of microseconds"));
    assert!(nested.contains("pessimistic"));
    assert!(nested.contains("ratios between husk and qemu carry over"));

    let hardware = report::markdown(&sample(false));
    assert!(hardware.contains("## How to read this"));
    assert!(hardware.contains("- Nested: no"));
    assert!(!hardware.contains("tens of microseconds"));
}

#[test]
fn json_round_trips() {
    let mut r = sample(true);
    // Figures that decimal printing cannot carry exactly without care.
    r.workloads[0].results[0].samples = vec![0.1 + 0.2, 1.0 / 3.0, 123.456_789_012_345_67];
    let text = report::json(&r);
    assert_eq!(report::parse_json(&text).unwrap(), r);
    // A skip keeps its reason, and a run carries no empty `skipped`.
    assert!(text.contains("\"skipped\": \"QEMU is not installed\""));
    assert_eq!(text.matches("\"skipped\"").count(), 2);
    assert!(text.contains("\"env\": \"qemu\""));
}

#[test]
fn parse_json_rejects_garbage() {
    assert!(report::parse_json("{\"quick\": true}").is_err());
}

const BAR_FILLS: [(Env, &str); 4] = [
    (Env::Native, "#7F7F7F"),
    (Env::Crun, "#1F77B4"),
    (Env::Husk, "#2CA02C"),
    (Env::Qemu, "#D62728"),
];

/// Checks the chart is well-formed XML with an <svg> root, and returns the
/// environments it has a bar for, in the order drawn.
fn bars_in(svg: &str) -> Vec<Env> {
    assert!(svg.starts_with("<svg"), "{svg}");
    let doc = roxmltree::Document::parse(svg).expect("well-formed SVG");
    assert_eq!(doc.root_element().tag_name().name(), "svg");
    doc.descendants()
        .filter(|n| n.has_tag_name("rect"))
        .filter_map(|n| {
            let fill = n.attribute("fill")?;
            BAR_FILLS.iter().find(|(_, f)| *f == fill).map(|(e, _)| *e)
        })
        .collect()
}

fn texts_in(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap();
    doc.descendants()
        .filter(|n| n.has_tag_name("text"))
        .filter_map(|n| n.text().map(|t| t.trim().to_string()))
        .collect()
}

#[test]
fn charts_have_a_labelled_bar_per_environment_that_ran() {
    let r = sample(true);
    let expected = [
        vec![Env::Native, Env::Crun, Env::Husk],
        vec![Env::Native, Env::Crun, Env::Husk, Env::Qemu],
        vec![Env::Husk],
    ];
    for (w, envs) in r.workloads.iter().zip(expected) {
        let svg = chart::svg(w).unwrap();
        assert_eq!(bars_in(&svg), envs, "{}", w.id);
        let texts = texts_in(&svg);
        for env in &envs {
            assert!(texts.iter().any(|t| t == env.name()), "{}: {texts:?}", w.id);
        }
        assert!(texts.contains(&w.title), "{texts:?}");
        assert!(texts.iter().any(|t| t.starts_with(&w.unit)), "{texts:?}");
    }
}

#[test]
fn charts_label_bars_with_medians_and_leave_out_skips() {
    let r = sample(true);
    let svg = chart::svg(&r.workloads[0]).unwrap();
    let texts = texts_in(&svg);
    for median in ["1.10", "41.0", "120"] {
        assert!(texts.iter().any(|t| t == median), "{median}: {texts:?}");
    }
    assert!(!texts.iter().any(|t| t == "qemu"), "{texts:?}");
    assert!(texts.contains(&"ms (lower is better)".to_string()));
}

#[test]
fn a_workload_where_nothing_ran_still_gets_a_chart() {
    let w = workload("nothing", "ms", false, vec![skipped(Env::Qemu, "absent")]);
    let svg = chart::svg(&w).unwrap();
    assert!(bars_in(&svg).is_empty());
    assert!(texts_in(&svg).contains(&"no environment produced figures".to_string()));
}

#[test]
fn write_creates_the_report_the_json_and_the_charts() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let r = sample(true);
    report::write(&r, &out).unwrap();

    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert_eq!(md, report::markdown(&r));
    let json = std::fs::read_to_string(out.join("report.json")).unwrap();
    assert_eq!(report::parse_json(&json).unwrap(), r);
    for w in &r.workloads {
        let svg = std::fs::read_to_string(out.join("charts").join(format!("{}.svg", w.id)));
        assert!(!bars_in(&svg.unwrap()).is_empty(), "{}", w.id);
    }
}

#[test]
fn write_all_returns_the_chart_paths() {
    let dir = tempfile::tempdir().unwrap();
    let paths = chart::write_all(&sample(true), dir.path()).unwrap();
    let names: Vec<_> = paths
        .iter()
        .map(|p| p.strip_prefix(dir.path()).unwrap().to_path_buf())
        .collect();
    assert_eq!(
        names,
        ["startup_output", "seq_write", "density"]
            .map(|id| { std::path::PathBuf::from("charts").join(format!("{id}.svg")) })
    );
}

#[test]
fn an_id_that_is_not_a_file_name_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut r = sample(true);
    r.workloads[1].id = "../escape".to_string();
    let err = report::write(&r, dir.path()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(!dir.path().join("escape.svg").exists());
    assert!(!dir.path().join("report.md").exists());
}

/// Renders the testbed report kept in docs/ (`HUSK_SHOW_STUDIES=1` prints
/// the study section, to read it).
#[test]
fn the_kept_testbed_report_gets_a_study_section() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/compare-testbed.json"
    ))
    .unwrap();
    let r = report::parse_json(&text).unwrap();
    let md = report::markdown(&r);
    let section = md.split("## Against the studies").nth(1).unwrap();
    let section = section.split("\n## ").next().unwrap();
    if std::env::var_os("HUSK_SHOW_STUDIES").is_some() {
        println!("{section}");
    }
    assert!(section.contains("| Random 4 KiB reads"), "{section}");
}
