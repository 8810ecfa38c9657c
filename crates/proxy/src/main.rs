//! `proxy`: the MCU proxy in front of one Janus gateway.
//! `proxy check --config FILE` tests the configuration and Janus instead.

use clap::{Parser, Subcommand};
use runtime::cli::{CheckArgs, ConfigArgs};

const AFTER_HELP: &str = "\
Signals:
  SIGHUP           re-read [tokens] and [stats] allowed_ips
  SIGUSR1          drain: tell signaling servers, refuse new publishers, exit
                   when the last publisher and subscriber are gone
  SIGTERM, SIGINT  close every connection and exit

Exit status: 0 ok, 1 `check` found failures, 64 bad command line or configuration.
The Go proxy's flags (-config FILE, -version) work as well.";

/// MCU proxy for Nextcloud Talk signaling servers, in front of one Janus gateway
#[derive(Debug, Parser)]
#[command(name = "proxy", version = proxy::VERSION, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration, the token keys, the listeners and Janus,
    /// then exit: 0 if nothing failed
    Check(CheckArgs),
}

fn main() -> std::process::ExitCode {
    let cli: Cli = runtime::cli::parse("proxy.conf");
    match cli.command {
        Some(Command::Check(args)) => {
            let path = cli.config.path();
            runtime::cli::check(|| async move { proxy::check::run(&path, &args).await })
        }
        None => runtime::cli::serve("proxy", &cli.config, proxy::run_from_config),
    }
}
