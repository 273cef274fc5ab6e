//! `husk-bench`: the workload binary of `husk compare` (see the library docs
//! and `husk-bench --help`). This file only reads argv, runs the command and
//! prints the error: one line `husk-bench: <problem>` on stderr, exit 2 for
//! bad arguments and 1 for I/O failures.

use std::io;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Result<Vec<String>, _> = std::env::args_os()
        .skip(1)
        .map(|a| {
            a.into_string().map_err(|a| {
                husk_benchtool::Error::Usage(format!("argument {a:?} is not valid UTF-8"))
            })
        })
        .collect();
    let result = args
        .and_then(|args| husk_benchtool::parse_args(&args))
        .and_then(|cmd| {
            husk_benchtool::run(&cmd, &mut io::stdin().lock(), &mut io::stdout().lock())
        });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("husk-bench: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}
