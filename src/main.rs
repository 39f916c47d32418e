//! maskd binary: parse arguments, dispatch, report errors and pick the exit code.

use std::process::ExitCode;

use clap::Parser;
use maskd::commands::{Cli, Command};

// Counting lets `maskd bench` report allocations per frame of the real binary.
#[global_allocator]
static ALLOCATOR: maskd::alloc::Counting = maskd::alloc::Counting;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Run(args) => maskd::daemon::main(&args.config),
        Command::Subscribe(args) => maskd::commands::subscribe::run(args),
        Command::Inspect(args) => maskd::commands::inspect::run(args),
        Command::Bench(args) => maskd::commands::bench::run(args),
        Command::Eval(args) => maskd::commands::eval::run(args),
        Command::Sparsify(args) => maskd::commands::sparsify::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // `{:#}` prints the whole context chain on one line: file, key, reason.
            eprintln!("maskd: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
