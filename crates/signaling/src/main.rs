//! `signaling`: standalone signaling server for Nextcloud Talk.
//! `signaling check --config FILE` tests the configuration and every
//! dependency instead of serving.

use clap::{Parser, Subcommand};
use runtime::cli::{CheckArgs, ConfigArgs};

const AFTER_HELP: &str = "\
Signals:
  SIGHUP           re-read the configuration (backends, log level, certificate,
                   allowed_ips, trustedproxies, MCU proxy URLs); the log says what
                   was applied, what needs a restart and what was refused
  SIGUSR1          drain: refuse new connections, exit when the last session ends
  SIGTERM, SIGINT  close every connection and exit

Exit status: 0 ok, 1 `check` found failures, 64 bad command line or configuration.
The Go server's flags (-config FILE, -version) work as well.
Environment: SIGNALING__SECTION__KEY=value overrides a key of the file
(e.g. SIGNALING__SESSIONS__HASHKEY); ${VAR} in a value is replaced by VAR.";

/// Standalone signaling server ("high-performance backend") for Nextcloud Talk
#[derive(Debug, Parser)]
#[command(name = "signaling", version = signaling::VERSION, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    config: ConfigArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check the configuration and try every dependency (listeners,
    /// certificate, backends, MCU, NATS), then exit: 0 if nothing failed
    Check(CheckArgs),
}

fn main() -> std::process::ExitCode {
    let cli: Cli = runtime::cli::parse("server.conf");
    // SIGNALING__SECTION__KEY=value overrides a key of the file (containers).
    runtime::config::set_env_prefix("SIGNALING");
    match cli.command {
        Some(Command::Check(args)) => {
            let path = cli.config.path();
            runtime::cli::check(|| async move { signaling::check::run(&path, &args).await })
        }
        None => runtime::cli::serve("signaling", &cli.config, signaling::run_from_config),
    }
}
