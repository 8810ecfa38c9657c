//! `client`: load and benchmark client for the signaling server. Thin: flags,
//! logging, a single-threaded runtime, then [`client::run()`].

use std::process::ExitCode;

use client::args::{self, ParseError};
use client::RunError;

/// Exit status when messages were lost, duplicated, misdelivered or unknown.
const EXIT_BAD_RUN: u8 = 3;

fn main() -> ExitCode {
    let opts = match args::parse(std::env::args()) {
        Ok(o) => o,
        Err(ParseError::Clap(e)) => runtime::cli::exit_with(e),
        Err(ParseError::Usage(e)) => {
            eprintln!("client: {e}\n(client --help lists the flags)");
            return ExitCode::from(runtime::EXIT_CONFIG as u8);
        }
    };
    runtime::logging::init("info");
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("client: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let json = opts.json;
    let local = tokio::task::LocalSet::new();
    match local.block_on(&rt, client::run(opts)) {
        Ok(report) => {
            if json {
                runtime::outln!("{}", report.to_json());
            } else {
                runtime::outln!("{}", report.to_text().trim_end());
            }
            if report.error.is_some() {
                ExitCode::FAILURE
            } else if report.bad() {
                ExitCode::from(EXIT_BAD_RUN)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(RunError::Config(e)) => {
            tracing::error!("{e}");
            ExitCode::from(runtime::EXIT_CONFIG as u8)
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::FAILURE
        }
    }
}
