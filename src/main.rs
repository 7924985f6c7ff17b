//! The `tally` binary: parses arguments, runs a command, writes its output, exits with its
//! code (0 ok, 1 findings, 2 usage, 3 invalid definitions, 4 data or execution, 5 internal).

#![allow(clippy::result_large_err)]

mod cli;

use clap::Parser;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start: {e}");
            return ExitCode::from(5);
        }
    };
    let outcome = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| runtime.block_on(cli::run(cli)))) {
        Ok(o) => o,
        Err(_) => {
            eprintln!("error: internal error (a bug in tally); please report it with the command that caused it");
            return ExitCode::from(5);
        }
    };
    // A closed pipe (`tally query ... | head`) is not an error.
    let _ = std::io::stdout().write_all(outcome.stdout.as_bytes());
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().write_all(outcome.stderr.as_bytes());
    ExitCode::from(outcome.code.code())
}
