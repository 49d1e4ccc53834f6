use std::process::ExitCode;

use clap::Parser as _;

fn main() -> ExitCode {
    conclave::cli::run(conclave::cli::Cli::parse())
}
