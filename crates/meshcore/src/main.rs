//! The `meshcore` binary: parse the command line, run the command, report errors.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = meshcore::cli::Cli::parse();
    match meshcore::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("meshcore: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
