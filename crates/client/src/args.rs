//! Command line (on `clap`): a scenario word and Go-style flags.
//!
//! Flags may be written `-flag` or `--flag`, with the value after `=` or as
//! the next argument; names are matched ignoring case, `-` and `_`, so
//! `-maxClients`, `--max-clients` and `--maxclients` are the same flag (a
//! rewrite to clap's spelling before parsing). The scenario may stand
//! anywhere among the flags; without one the upstream behaviour
//! (`messages`) runs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What the run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Upstream's load: every client sends to a random other client every 1 ms.
    Messages,
    /// Hello rate and hello latency (with backend auth), in rounds.
    Connect,
    /// N authenticated sessions held open; server RSS per session.
    Idle,
    /// N clients in rooms of size K, sending to their room at a fixed total rate.
    #[value(alias = "rooms")]
    Room,
    /// Maximum session-to-session throughput with a window of messages in flight.
    Flood,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Messages => "messages",
            Scenario::Connect => "connect",
            Scenario::Idle => "idle",
            Scenario::Room => "room",
            Scenario::Flood => "flood",
        }
    }

    /// Whether the scenario sends messages between sessions.
    pub fn sends(self) -> bool {
        matches!(self, Scenario::Messages | Scenario::Room | Scenario::Flood)
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything a run needs from the command line.
#[derive(Clone, Debug)]
pub struct Options {
    pub scenario: Scenario,
    /// `host:port` of each server; clients are spread over them round robin.
    pub addrs: Vec<String>,
    /// Server configuration to read the backend secret and session keys from.
    pub config: PathBuf,
    /// Backend secret given on the command line (wins over the config file).
    pub secret: Option<String>,
    pub max_clients: usize,
    /// How long the measured phase lasts; `None` for the scenario's default.
    pub duration: Option<Duration>,
    /// Messages per second over all clients (`messages`, `room`).
    pub rate: Option<f64>,
    pub room_size: usize,
    /// Messages in flight per client (`flood`).
    pub window: usize,
    /// Let a client put everything due into one write (the older load);
    /// unbatched, every message is its own write, as from Talk clients.
    pub batch: bool,
    /// Extra bytes of padding in every message payload.
    pub payload: usize,
    /// Connections being set up at the same time.
    pub concurrency: usize,
    /// Server processes whose CPU time and RSS are read (and summed: a
    /// cluster's servers plus its nats-server).
    pub server_pids: Vec<u32>,
    pub json: bool,
    pub plot: Option<PathBuf>,
    /// How long to wait for messages still in flight after sending stopped.
    pub drain: Duration,
    pub hello_timeout: Duration,
    /// Address others by a public id derived from their private id with the
    /// session keys (what upstream's client does) instead of the `sessionid`
    /// of the hello answer.
    pub derive_ids: bool,
    /// Interval of the `stats:` log line.
    pub stats_interval: Duration,
    /// Live progress line: `None` means "when stdout and stderr are terminals".
    pub progress: Option<bool>,
    /// `idle`: pause between the last hello and the RSS sample.
    pub settle: Duration,
    /// Local source addresses (127.0.0.1, .2, ...) to spread connections to
    /// a loopback server over; `None`: only when one address has too few ports.
    pub source_addrs: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            scenario: Scenario::Messages,
            addrs: vec!["localhost:28080".to_owned()],
            config: PathBuf::from("server.conf"),
            secret: None,
            max_clients: 100,
            duration: None,
            rate: None,
            room_size: 10,
            window: 16,
            batch: false,
            payload: 0,
            concurrency: 100,
            server_pids: Vec::new(),
            json: false,
            plot: None,
            drain: Duration::from_secs(5),
            hello_timeout: Duration::from_secs(30),
            derive_ids: false,
            stats_interval: Duration::from_secs(10),
            progress: None,
            settle: Duration::from_secs(2),
            source_addrs: None,
        }
    }
}

impl Options {
    /// The measured phase: given, or the scenario's default. `None` means
    /// "until interrupted" (upstream's behaviour for `messages`).
    pub fn effective_duration(&self) -> Option<Duration> {
        self.duration.or(match self.scenario {
            Scenario::Messages | Scenario::Connect => None,
            Scenario::Idle | Scenario::Room | Scenario::Flood => Some(Duration::from_secs(10)),
        })
    }

    /// Per-client send rate in messages per second for rate-driven scenarios.
    pub fn per_client_rate(&self) -> f64 {
        match (self.scenario, self.rate) {
            (_, Some(total)) => total / self.max_clients as f64,
            // Upstream: one message, then a 1 ms pause, per client.
            (Scenario::Messages, None) => 1000.0,
            (_, None) => DEFAULT_ROOM_RATE / self.max_clients as f64,
        }
    }
}

/// Default total send rate of `room` (messages per second, all clients).
pub const DEFAULT_ROOM_RATE: f64 = 1000.0;

/// A command line that cannot be used.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

fn err<T>(msg: impl Into<String>) -> Result<T, UsageError> {
    Err(UsageError(msg.into()))
}

/// `-maxClients`, `--max-clients`, `--max_clients` -> `maxclients`.
fn normalize(name: &str) -> String {
    name.chars()
        .filter(|c| *c != '-' && *c != '_')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Seconds with an optional unit: `10`, `2.5`, `500ms`, `3s`, `1m`.
fn parse_secs(v: &str) -> Result<Duration, String> {
    let (num, scale) = if let Some(ms) = v.strip_suffix("ms") {
        (ms, 0.001)
    } else if let Some(s) = v.strip_suffix('s') {
        (s, 1.0)
    } else if let Some(m) = v.strip_suffix('m') {
        (m, 60.0)
    } else {
        (v, 1.0)
    };
    match num.trim().parse::<f64>() {
        Ok(x) if x.is_finite() && x >= 0.0 => Ok(Duration::from_secs_f64(x * scale)),
        _ => Err(format!(
            "expected seconds (e.g. 10, 2.5, 500ms, 1m), got {v:?}"
        )),
    }
}

fn positive_rate(v: &str) -> Result<f64, String> {
    match v.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err("must be a positive number of messages per second".into()),
    }
}

const AFTER_HELP: &str = "\
Flags may also be written Go-style: -maxClients 100, -duration=5, -json.
The embedded fake Nextcloud backend listens on 127.0.0.1 only, so the server must run
on this machine with [backend] allowall = true and the same secret.
Every message is its own write unless -batch is given; -server-pid takes
several PIDs (a cluster's servers and nats-server), whose CPU time is summed.
Exit status: 0 ok, 1 failure (e.g. no server reachable), 3 messages were lost,
duplicated or misdelivered, 64 bad usage or config.";

/// Load and benchmark client for the Nextcloud Talk signaling server
#[derive(Debug, clap::Parser)]
#[command(name = "client", version, after_help = AFTER_HELP, args_override_self = true)]
struct Cli {
    /// What the run exercises
    #[arg(value_enum, default_value = "messages")]
    scenario: Scenario,
    /// Server host:port, comma separated, used round robin
    #[arg(
        long,
        value_name = "LIST",
        default_value = "localhost:28080",
        value_delimiter = ','
    )]
    addr: Vec<String>,
    /// Server config with [backend] secret and [sessions] keys
    #[arg(long, value_name = "FILE", default_value = "server.conf")]
    config: PathBuf,
    /// Backend secret, instead of reading it from --config
    #[arg(long)]
    secret: Option<String>,
    /// Number of client connections (at least 2 for scenarios that send)
    #[arg(long, value_name = "N", default_value_t = 100, alias = "clients")]
    max_clients: usize,
    /// Length of the measured phase [default: 10 for idle/room/flood, until
    /// Ctrl-C otherwise]
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    duration: Option<Duration>,
    /// Messages per second over all clients (messages, room) [room default: 1000]
    #[arg(long, value_name = "N", value_parser = positive_rate)]
    rate: Option<f64>,
    /// Members per room
    #[arg(long, value_name = "K", default_value_t = 10)]
    room_size: usize,
    /// flood: messages in flight per client
    #[arg(long, value_name = "N", default_value_t = 16)]
    window: usize,
    /// Coalesce each client's due messages into one write (default: every
    /// message in its own write, sent at random times)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    batch: bool,
    /// Extra bytes of padding in every message
    #[arg(long, value_name = "BYTES", default_value_t = 0)]
    payload: usize,
    /// Connections being set up at once
    #[arg(long, value_name = "N", default_value_t = 100)]
    concurrency: usize,
    /// Read the server's CPU time and RSS from /proc; comma separated for
    /// several processes (summed: a cluster's servers and nats-server)
    #[arg(long, value_name = "PID,...", alias = "pid", value_delimiter = ',')]
    server_pid: Vec<u32>,
    /// Print the report as JSON on stdout
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    json: bool,
    /// Draw throughput over time and the latency distribution into a PNG
    #[arg(long, value_name = "FILE.png")]
    plot: Option<PathBuf>,
    /// Wait for messages in flight after sending stops
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "5")]
    drain: Duration,
    /// Longest wait for a hello answer
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "30")]
    hello_timeout: Duration,
    /// Address sessions by public ids derived from the private ids with the
    /// [sessions] keys, like upstream's client
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          default_value = "false", value_parser = clap::builder::BoolishValueParser::new())]
    derive_ids: bool,
    /// Interval of the stats log line
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "10")]
    stats_interval: Duration,
    /// Force the live progress line on (default: when stdout and stderr are terminals)
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true",
          value_parser = clap::builder::BoolishValueParser::new())]
    progress: Option<bool>,
    /// Force the live progress line off
    #[arg(long, conflicts_with = "progress")]
    no_progress: bool,
    /// idle: wait before sampling the server's RSS
    #[arg(long, value_name = "SECS", value_parser = parse_secs, default_value = "2")]
    settle: Duration,
    /// Spread connections to a loopback server over 127.0.0.1..127.0.0.N
    /// [default: automatic above 28,000 connections per server]
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=254))]
    source_addrs: Option<u16>,
}

/// Rewrites `-maxClients`, `--max_clients=5`, `-json` to clap's
/// `--max-clients`, `--max-clients=5`, `--json`.
fn canonical_args(cmd: &clap::Command, args: Vec<String>) -> Vec<String> {
    let mut names: Vec<(String, String)> = vec![
        ("help".into(), "help".into()),
        ("version".into(), "version".into()),
    ];
    for a in cmd.get_arguments() {
        if let Some(long) = a.get_long() {
            names.push((normalize(long), long.to_owned()));
            for alias in a.get_all_aliases().unwrap_or_default() {
                names.push((normalize(alias), long.to_owned()));
            }
        }
    }
    let mut rest = false;
    args.into_iter()
        .enumerate()
        .map(|(i, arg)| {
            if i == 0 || rest {
                return arg;
            }
            if arg == "help" {
                // `client help`, as for the servers' subcommands.
                return "--help".to_owned();
            }
            if !arg.starts_with('-') {
                return arg;
            }
            if arg == "--" {
                rest = true;
                return arg;
            }
            let body = arg.trim_start_matches('-');
            let (name, value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (body, None),
            };
            let n = normalize(name);
            match names.iter().find(|(k, _)| *k == n) {
                Some((_, long)) if n.len() > 1 => match value {
                    Some(v) => format!("--{long}={v}"),
                    None => format!("--{long}"),
                },
                _ => arg,
            }
        })
        .collect()
}

/// Parses the command line (the first argument is the program name).
/// Help and version come back as errors of their kind, as from clap.
pub fn parse<I, S>(args: I) -> Result<Options, ParseError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    use clap::{CommandFactory, FromArgMatches};
    let mut cmd = Cli::command();
    let args = canonical_args(&cmd, args.into_iter().map(Into::into).collect());
    let m = cmd.try_get_matches_from_mut(args)?;
    let c = Cli::from_arg_matches(&m)?;
    let o = Options {
        scenario: c.scenario,
        addrs: c
            .addr
            .iter()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .collect(),
        config: c.config,
        secret: c.secret,
        max_clients: c.max_clients,
        duration: c.duration,
        rate: c.rate,
        room_size: c.room_size,
        window: c.window,
        batch: c.batch,
        payload: c.payload,
        concurrency: c.concurrency,
        server_pids: c.server_pid,
        json: c.json,
        plot: c.plot,
        drain: c.drain,
        hello_timeout: c.hello_timeout,
        derive_ids: c.derive_ids,
        stats_interval: c.stats_interval,
        progress: if c.no_progress {
            Some(false)
        } else {
            c.progress
        },
        settle: c.settle,
        source_addrs: c.source_addrs.map(usize::from),
    };
    validate(&o)?;
    Ok(o)
}

/// Why the command line did not give a run.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// From clap: also `--help` and `--version` (not failures).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    Usage(#[from] UsageError),
}

fn validate(o: &Options) -> Result<(), UsageError> {
    if o.addrs.is_empty() {
        return err("--addr: no address given");
    }
    let min = if o.scenario.sends() { 2 } else { 1 };
    if o.max_clients < min {
        return err(format!(
            "need at least {min} clients for {}, got {}",
            o.scenario, o.max_clients
        ));
    }
    if o.scenario == Scenario::Room && o.room_size < 2 {
        return err("-room-size: rooms need at least 2 members");
    }
    if o.window == 0 {
        return err("-window: must be at least 1");
    }
    if o.concurrency == 0 {
        return err("-concurrency: must be at least 1");
    }
    if o.stats_interval.is_zero() {
        return err("-stats-interval: must be positive");
    }
    if o.payload > 60 * 1024 {
        return err("-payload: at most 61440 bytes (the server limits messages to 64 KiB)");
    }
    Ok(())
}

#[cfg(test)]
#[path = "args_tests.rs"]
mod tests;
