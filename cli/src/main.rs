//! `euglena`: parse the command line, run it, exit with its code (see `euglena --help`).

use clap::Parser;
use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = euglena_cli::args::Cli::parse();
    let interrupt = match euglena_cli::Interrupt::listen() {
        Ok(interrupt) => interrupt,
        Err(error) => {
            eprintln!("euglena: cannot listen for Ctrl-C: {error}");
            return ExitCode::from(4);
        }
    };
    match euglena_cli::run(cli, interrupt).await {
        Ok(code) => ExitCode::from(code),
        Err(error) => {
            eprintln!("euglena: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}
