//! `husk compare`: the same workloads natively, in a crun container, in a
//! husk microVM and in QEMU microvm, with a Markdown report, SVG charts and
//! JSON (see the husk-compare crate).

use crate::Failure;
use clap::Args;
use husk_compare::results::Env;
use std::path::PathBuf;

#[derive(Args)]
pub struct CompareArgs {
    /// Small sizes and one run: under two minutes in the nested testbed.
    #[arg(long)]
    quick: bool,
    /// Measured repetitions per workload and environment (after a warm-up).
    #[arg(long, value_name = "N")]
    runs: Option<u32>,
    /// Only these environments (comma-separated: native,crun,husk,qemu;
    /// firecracker only when named).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    envs: Vec<String>,
    /// The Firecracker binary for `--envs ...,firecracker` (default:
    /// `firecracker` on PATH).
    #[arg(long, value_name = "PATH")]
    firecracker: Option<PathBuf>,
    /// Where report.md, report.json and charts/ go.
    #[arg(long, value_name = "DIR", default_value = "husk-compare")]
    out: PathBuf,
}

fn parse_env(s: &str) -> Result<Env, Failure> {
    Env::ALL.into_iter().find(|e| e.name() == s).ok_or_else(|| {
        Failure::usage(format!(
            "--envs: unknown environment {s:?} (native, crun, husk, qemu, firecracker)"
        ))
    })
}

pub fn run(args: CompareArgs) -> Result<u8, Failure> {
    let envs: Vec<Env> = if args.envs.is_empty() {
        Env::DEFAULT.to_vec()
    } else {
        args.envs
            .iter()
            .map(|e| parse_env(e))
            .collect::<Result<_, _>>()?
    };
    if args.firecracker.is_some() && !envs.contains(&Env::Firecracker) {
        return Err(Failure::usage(
            "--firecracker: name firecracker in --envs to measure it",
        ));
    }
    if let Some(fc) = args.firecracker.as_ref().filter(|p| !p.is_file()) {
        return Err(Failure::usage(format!(
            "--firecracker {}: no such file",
            fc.display()
        )));
    }
    let runs = args.runs.unwrap_or(if args.quick { 1 } else { 5 });
    if runs == 0 {
        return Err(Failure::usage("--runs: at least 1"));
    }
    let kvm = husk_vmm::kvm_kind::detect();
    if !kvm.runs_linux() {
        return Err(Failure::runtime(format!(
            "husk compare boots Linux guests, and here {kvm}"
        )));
    }
    let opts = husk_compare::runner::Options {
        quick: args.quick,
        runs,
        envs,
        husk: std::env::current_exe()
            .map_err(|e| Failure::runtime(format!("cannot find the husk binary: {e}")))?,
        guest_dir: crate::boot::guest_dir(),
        firecracker: args.firecracker.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
    };
    let bar = indicatif::ProgressBar::new(1);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    // Without a terminal (or with HUSK_PROGRESS=lines: a serial console is
    // a terminal whose reader wants lines) a line per step instead of the
    // bar, so a log shows where a long run is.
    let plain = !std::io::IsTerminal::is_terminal(&std::io::stderr())
        || std::env::var("HUSK_PROGRESS").is_ok_and(|v| v == "lines");
    if plain {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let started = std::time::Instant::now();
    let report = husk_compare::runner::run(&opts, &mut |step, done, total| {
        if plain {
            eprintln!(
                "husk: compare: [{:>5.0} s] {done}/{total} {step}",
                started.elapsed().as_secs_f64()
            );
        }
        bar.set_length(total);
        bar.set_position(done);
        bar.set_message(step.to_owned());
    })
    .map_err(|e| Failure::runtime(e.to_string()))?;
    bar.finish_and_clear();
    husk_compare::report::write(&report, &args.out).map_err(|e| {
        Failure::runtime(format!("writing the report to {}: {e}", args.out.display()))
    })?;
    println!("{}", args.out.join("report.md").display());
    let mut failed = false;
    for w in &report.workloads {
        for r in &w.results {
            if let Some(why) = &r.skipped {
                eprintln!("husk: compare: {} in {}: {why}", w.id, r.env.name());
                failed |= why.starts_with("failed");
            }
        }
    }
    Ok(u8::from(failed))
}
