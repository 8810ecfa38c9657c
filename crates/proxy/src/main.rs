//! `proxy`: the MCU proxy in front of one Janus gateway.
//! `proxy check --config FILE` tests the configuration and Janus instead.

use clap::{Parser, Subcommand};
use runtime::cli::{CheckArgs, ConfigArgs};

/// `proxy check`: the common flags, and key pairs to compare.
#[derive(Debug, clap::Args)]
struct ProxyCheckArgs {
    #[command(flatten)]
    common: CheckArgs,
    /// A signaling server's private key (its [mcu] token_key) to compare
    /// with this proxy's public key of token ID: ID=FILE (repeatable)
    #[arg(long, value_name = "ID=FILE", value_parser = parse_match_key)]
    match_key: Vec<(String, std::path::PathBuf)>,
}

fn parse_match_key(v: &str) -> Result<(String, std::path::PathBuf), String> {
    match v.split_once('=') {
        Some((id, file)) if !id.is_empty() && !file.is_empty() => Ok((id.to_owned(), file.into())),
        _ => Err("expected ID=FILE".into()),
    }
}

const AFTER_HELP: &str = "\
Signals:
  SIGHUP           re-read [tokens] and [stats] allowed_ips
  SIGUSR1          drain: tell signaling servers, refuse new publishers, exit
                   when the last publisher and subscriber are gone
  SIGTERM, SIGINT  close every connection and exit

Exit status: 0 ok, 1 `check` found failures, 64 bad command line or configuration.
The Go proxy's flags (-config FILE, -version) work as well.
Environment: SIGNALING_PROXY__SECTION__KEY=value overrides a key of the file
(e.g. SIGNALING_PROXY__MCU__URL); ${VAR} in a value is replaced by VAR.";

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
    Check(ProxyCheckArgs),
    /// Generate an RSA key pair for a signaling server's token: ID.key for
    /// its [mcu] token_key, ID.pub for the proxies' [tokens]
    Genkey(GenkeyArgs),
}

#[derive(Debug, clap::Args)]
struct GenkeyArgs {
    /// Token id of the signaling server ([mcu] token_id)
    #[arg(long, default_value = "server1")]
    id: String,
    /// Directory for ID.key and ID.pub (existing files are not overwritten)
    #[arg(long, value_name = "DIR", default_value = ".")]
    out: std::path::PathBuf,
    /// Key size
    #[arg(long, default_value_t = 2048, value_parser = clap::value_parser!(u16).range(2048..=8192))]
    bits: u16,
}

fn main() -> std::process::ExitCode {
    let cli: Cli = runtime::cli::parse("proxy.conf");
    // SIGNALING_PROXY__SECTION__KEY=value overrides a key of the file (containers).
    runtime::config::set_env_prefix("SIGNALING_PROXY");
    match cli.command {
        Some(Command::Check(args)) => {
            let path = cli.config.path();
            runtime::cli::check(|| async move {
                proxy::check::run(&path, &args.common, &args.match_key).await
            })
        }
        Some(Command::Genkey(args)) => {
            match proxy::keygen::generate(&args.id, &args.out, usize::from(args.bits)) {
                Ok((key, public)) => {
                    runtime::outln!(
                        "{}",
                        proxy::keygen::instructions(&args.id, &key, &public).trim_end()
                    );
                    std::process::ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("proxy genkey: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        None => runtime::cli::serve("proxy", &cli.config, proxy::run_from_config),
    }
}
