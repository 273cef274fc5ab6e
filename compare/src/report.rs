//! The report a person reads (Markdown, linking the charts) and the one a
//! program reads (JSON), both from the same [`Report`].

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

use crate::chart;
use crate::results::{Env, EnvResult, Machine, Report, Workload};

/// Writes `report.md`, `report.json` and `charts/` into `out_dir`.
pub fn write(report: &Report, out_dir: &Path) -> io::Result<()> {
    fs::create_dir_all(out_dir)?;
    // Charts first: an id that cannot be a file name fails here, before a
    // report.md linking to a chart that does not exist is left behind.
    chart::write_all(report, out_dir)?;
    fs::write(out_dir.join("report.md"), markdown(report))?;
    fs::write(out_dir.join("report.json"), json(report) + "\n")?;
    Ok(())
}

pub fn json(report: &Report) -> String {
    serde_json::to_string_pretty(report)
        .expect("a Report has only string-keyed structs, so serializing cannot fail")
}

pub fn parse_json(text: &str) -> Result<Report, serde_json::Error> {
    serde_json::from_str(text)
}

pub fn markdown(report: &Report) -> String {
    let mut md = String::from("# husk compare\n\n");
    md.push_str(
        "The same workloads natively, in a crun container, in a husk microVM \
         and in a QEMU microvm, on one host.\n\n",
    );
    conditions(&mut md, report);
    how_to_read(&mut md, report);
    crate::studies::section(&mut md, report);
    for w in &report.workloads {
        section(&mut md, w);
    }
    md
}

fn conditions(md: &mut String, report: &Report) {
    let m = &report.machine;
    let mode = if report.quick { "quick" } else { "full" };
    md.push_str("## Machine and conditions\n\n");
    let _ = writeln!(md, "- CPU: {}, {} cores", m.cpu, m.cores);
    let _ = writeln!(md, "- Memory: {} MiB", m.mem_mib);
    let _ = writeln!(md, "- Kernel: {}", m.kernel);
    let _ = writeln!(md, "- KVM: {}", m.kvm);
    let _ = writeln!(md, "- Nested: {}", nested_line(m));
    let _ = writeln!(md, "- Date: {}", m.date);
    let _ = writeln!(md, "- Command: {}", code_span(&report.command));
    let _ = writeln!(
        md,
        "- husk: {}",
        if report.husk_pool {
            "`husk run --rm`, each VM restored from the pool's template of its shape (made in the warm-up)"
        } else {
            "`husk run --rm`, each VM booted (the pool is off)"
        }
    );
    let _ = writeln!(
        md,
        "- Mode: {mode}, {} runs per workload and environment after one warm-up\n",
        report.runs
    );
}

fn nested_line(m: &Machine) -> &'static str {
    if m.nested {
        "yes: the host is itself a virtual machine"
    } else {
        "no: KVM runs on the hardware"
    }
}

fn how_to_read(md: &mut String, report: &Report) {
    md.push_str("## How to read this\n\n");
    let _ = write!(
        md,
        "Each figure is the median of {} runs; min–max is their spread. \
         \"vs native\" and \"vs crun\" divide an environment's median by \
         native's or crun's: where lower is better, above 1× is slower; \
         where higher is better, above 1× is faster. ",
        report.runs
    );
    md.push_str(if report.machine.nested {
        "This host is itself a virtual machine, so the microVMs run under \
         nested virtualization on an emulated CPU, where every VM exit costs \
         tens of microseconds instead of about one. The VM-side figures \
         (husk, qemu) are therefore pessimistic: the ratios between husk and \
         qemu carry over to a hardware host better than their absolute \
         numbers do. Container and native figures take no VM exits and are \
         not penalized the same way, so the gap between them and the \
         microVMs is wider here than it would be on hardware.\n\n"
    } else {
        "KVM runs on the hardware here, so a VM exit costs on the order of \
         a microsecond and the microVM figures are what a deployment on \
         such a host would see.\n\n"
    });
}

fn section(md: &mut String, w: &Workload) {
    let _ = writeln!(md, "## {}\n", w.title);
    let better = if w.higher_is_better {
        "Higher is better."
    } else {
        "Lower is better."
    };
    if w.detail.is_empty() {
        let _ = writeln!(md, "{better}\n");
    } else {
        let _ = writeln!(md, "{}. {better}\n", w.detail.trim_end_matches('.'));
    }
    let _ = writeln!(
        md,
        "| environment | median ({u}) | min–max ({u}) | vs native | vs crun |",
        u = w.unit
    );
    md.push_str("|---|---:|---:|---:|---:|\n");
    for env in Env::ALL {
        if let Some(r) = w.result(env) {
            let _ = writeln!(md, "{}", row(w, r));
        }
    }
    let _ = writeln!(md, "\n![{}](charts/{}.svg)\n", w.title, w.id);
}

/// One table row; an environment without samples says why instead of
/// showing figures, so a skip never reads as a measurement.
fn row(w: &Workload, r: &EnvResult) -> String {
    let name = r.env.name();
    let (Some(median), Some(min), Some(max)) = (r.median(), r.min(), r.max()) else {
        let why = match &r.skipped {
            Some(reason) => format!("skipped: {}", cell(reason)),
            None => "no samples".to_string(),
        };
        return format!("| {name} | {why} | — | — | — |");
    };
    format!(
        "| {name} | {} | {}–{} | {} | {} |",
        format_value(median),
        format_value(min),
        format_value(max),
        ratio(w.ratio(r.env, Env::Native)),
        ratio(w.ratio(r.env, Env::Crun)),
    )
}

pub(crate) fn ratio(r: Option<f64>) -> String {
    r.map_or_else(|| "—".to_string(), |r| format!("{r:.2}×"))
}

/// Three significant figures or more: enough to tell environments apart
/// without pretending to a precision a handful of runs does not have.
pub fn format_value(v: f64) -> String {
    let a = v.abs();
    if a >= 100.0 || a == 0.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// Free text in a table cell must not end the cell or the row.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// A code span that survives backticks in the command line: the fence is
/// one backtick longer than the longest run inside.
fn code_span(text: &str) -> String {
    let longest = text.split(|c| c != '`').map(str::len).max().unwrap_or(0);
    let fence = "`".repeat(longest + 1);
    let pad = if longest > 0 { " " } else { "" };
    format!("{fence}{pad}{text}{pad}{fence}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_keep_three_significant_figures() {
        assert_eq!(format_value(0.0), "0");
        assert_eq!(format_value(0.51234), "0.512");
        assert_eq!(format_value(1.2345), "1.23");
        assert_eq!(format_value(12.345), "12.3");
        assert_eq!(format_value(1234.4), "1234");
    }

    #[test]
    fn ratios_have_two_decimals_or_a_dash() {
        assert_eq!(ratio(Some(1.2345)), "1.23×");
        assert_eq!(ratio(None), "—");
    }

    #[test]
    fn code_spans_outlast_inner_backticks() {
        assert_eq!(code_span("husk compare"), "`husk compare`");
        assert_eq!(code_span("a `b` c"), "`` a `b` c ``");
    }

    #[test]
    fn cells_cannot_break_the_table() {
        assert_eq!(cell("a|b\nc"), "a\\|b c");
    }
}
