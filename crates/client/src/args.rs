//! Command line: a scenario word and Go-style flags.
//!
//! Flags may be written `-flag` or `--flag`, with the value after `=` or as
//! the next argument; names are matched ignoring case, `-` and `_`, so
//! `-maxClients`, `--max-clients` and `--maxclients` are the same flag. The
//! scenario may stand anywhere among the flags; without one the upstream
//! behaviour (`messages`) runs.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// What the run exercises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    /// Upstream's load: every client sends to a random other client every 1 ms.
    Messages,
    /// Hello rate and hello latency (with backend auth), in rounds.
    Connect,
    /// N authenticated sessions held open; server RSS per session.
    Idle,
    /// N clients in rooms of size K, sending to their room at a fixed total rate.
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

    fn parse(word: &str) -> Option<Scenario> {
        Some(match word {
            "messages" => Scenario::Messages,
            "connect" => Scenario::Connect,
            "idle" => Scenario::Idle,
            "room" | "rooms" => Scenario::Room,
            "flood" => Scenario::Flood,
            _ => return None,
        })
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
    /// Extra bytes of padding in every message payload.
    pub payload: usize,
    /// Connections being set up at the same time.
    pub concurrency: usize,
    pub server_pid: Option<u32>,
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
            window: 32,
            payload: 0,
            concurrency: 100,
            server_pid: None,
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

/// What the parser found.
#[derive(Debug)]
pub enum Parsed {
    Run(Box<Options>),
    Help,
}

/// A command line that cannot be used.
#[derive(Debug, PartialEq, Eq)]
pub struct UsageError(pub String);

impl fmt::Display for UsageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

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

fn parse_secs(flag: &str, v: &str) -> Result<Duration, UsageError> {
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
        _ => err(format!(
            "-{flag}: expected seconds (e.g. 10, 2.5, 500ms, 1m), got {v:?}"
        )),
    }
}

fn parse_num<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, UsageError> {
    v.trim()
        .parse()
        .or_else(|_| err(format!("-{flag}: expected a number, got {v:?}")))
}

fn parse_bool(flag: &str, v: &str) -> Result<bool, UsageError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "off" => Ok(false),
        _ => err(format!("-{flag}: expected true or false, got {v:?}")),
    }
}

/// Flags that take no value (a value may still be given as `-flag=false`).
const BOOL_FLAGS: &[&str] = &["json", "deriveids", "progress", "noprogress", "help", "h"];

/// Parses the arguments after the program name.
pub fn parse<I, S>(args: I) -> Result<Parsed, UsageError>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut o = Options::default();
    let mut scenario_seen = false;
    let mut it = args.into_iter().map(Into::into);
    while let Some(arg) = it.next() {
        let Some(stripped) = arg.strip_prefix('-') else {
            let Some(s) = Scenario::parse(&arg) else {
                return err(format!(
                    "unknown scenario {arg:?} (expected messages, connect, idle, room or flood)"
                ));
            };
            if scenario_seen {
                return err(format!(
                    "more than one scenario given ({} and {arg})",
                    o.scenario
                ));
            }
            o.scenario = s;
            scenario_seen = true;
            continue;
        };
        let stripped = stripped.strip_prefix('-').unwrap_or(stripped);
        let (raw_name, inline) = match stripped.split_once('=') {
            Some((n, v)) => (n, Some(v.to_owned())),
            None => (stripped, None),
        };
        let name = normalize(raw_name);
        if name.is_empty() {
            return err(format!("malformed flag {arg:?}"));
        }
        let value = if BOOL_FLAGS.contains(&name.as_str()) {
            inline.unwrap_or_else(|| "true".to_owned())
        } else {
            match inline.or_else(|| it.next()) {
                Some(v) => v,
                None => return err(format!("flag -{raw_name} needs a value")),
            }
        };
        let f = raw_name;
        match name.as_str() {
            "help" | "h" => {
                if parse_bool(f, &value)? {
                    return Ok(Parsed::Help);
                }
            }
            "addr" => {
                o.addrs = value
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
                if o.addrs.is_empty() {
                    return err("-addr: no address given");
                }
            }
            "config" => o.config = PathBuf::from(value),
            "secret" => o.secret = Some(value),
            "maxclients" | "clients" => o.max_clients = parse_num(f, &value)?,
            "duration" => o.duration = Some(parse_secs(f, &value)?),
            "rate" => {
                let r: f64 = parse_num(f, &value)?;
                if !(r.is_finite() && r > 0.0) {
                    return err("-rate: must be a positive number of messages per second");
                }
                o.rate = Some(r);
            }
            "roomsize" => o.room_size = parse_num(f, &value)?,
            "window" => o.window = parse_num(f, &value)?,
            "payload" => o.payload = parse_num(f, &value)?,
            "concurrency" => o.concurrency = parse_num(f, &value)?,
            "serverpid" | "pid" => o.server_pid = Some(parse_num(f, &value)?),
            "json" => o.json = parse_bool(f, &value)?,
            "plot" => o.plot = Some(PathBuf::from(value)),
            "drain" => o.drain = parse_secs(f, &value)?,
            "hellotimeout" => o.hello_timeout = parse_secs(f, &value)?,
            "deriveids" => o.derive_ids = parse_bool(f, &value)?,
            "statsinterval" => o.stats_interval = parse_secs(f, &value)?,
            "progress" => o.progress = Some(parse_bool(f, &value)?),
            "noprogress" => o.progress = Some(!parse_bool(f, &value)?),
            "settle" => o.settle = parse_secs(f, &value)?,
            "sourceaddrs" => {
                let n: usize = parse_num(f, &value)?;
                if !(1..=254).contains(&n) {
                    return err("-source-addrs: between 1 and 254");
                }
                o.source_addrs = Some(n);
            }
            _ => return err(format!("unknown flag -{raw_name}")),
        }
    }
    validate(&o)?;
    Ok(Parsed::Run(Box::new(o)))
}

fn validate(o: &Options) -> Result<(), UsageError> {
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

/// Text for `-help`.
pub const USAGE: &str = "\
Load and benchmark client for the Nextcloud Talk signaling server.

usage: client [SCENARIO] [flags]

Scenarios:
  messages   (default) every client sends a message to a random other client
             every 1 ms (upstream's load); runs until Ctrl-C unless -duration
  connect    hello rate and hello latency, with backend auth; -duration repeats rounds
  idle       hold -maxClients authenticated sessions; server RSS per session
  room       clients in rooms of -room-size, sending to their room at -rate in total
  flood      maximum session-to-session throughput, -window messages in flight per client

Flags (-flag and --flag both work; -flag=value or -flag value):
  -addr LIST          server host:port, comma separated, used round robin (localhost:28080)
  -config FILE        server config with [backend] secret and [sessions] keys (server.conf)
  -secret SECRET      backend secret, instead of reading it from -config
  -maxClients N       number of client connections (100, at least 2)
  -duration SECS      length of the measured phase (10 for idle/room/flood)
  -rate N             messages per second over all clients (messages, room; room: 1000)
  -room-size K        members per room (10)
  -window N           flood: messages in flight per client (32)
  -payload BYTES      extra padding in every message (0)
  -concurrency N      connections being set up at once (100)
  -server-pid PID     read the server's CPU time and RSS from /proc
  -json               print the report as JSON on stdout
  -plot FILE.png      draw throughput over time and the latency distribution
  -drain SECS         wait for messages in flight after sending stops (5)
  -hello-timeout SECS (30)
  -derive-ids         address sessions by public ids derived from the private ids
                      with the [sessions] keys, like upstream's client
  -stats-interval SECS  interval of the stats log line (10)
  -progress / -no-progress  force the live progress line on or off
  -settle SECS        idle: wait before sampling the server's RSS (2)
  -source-addrs N     spread connections to a loopback server over 127.0.0.1..127.0.0.N
                      (automatic above 28,000 connections per server)

The embedded fake Nextcloud backend listens on 127.0.0.1 only, so the server must run
on this machine with [backend] allowall = true and the same secret.
Exit status: 0 ok, 1 failure, 3 messages were lost or duplicated, 64 bad usage or config.
";

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Options {
        match parse(args.iter().copied()) {
            Ok(Parsed::Run(o)) => *o,
            other => panic!("unexpected parse result {other:?}"),
        }
    }

    #[test]
    fn defaults_match_upstream() {
        let o = run(&[]);
        assert_eq!(o.scenario, Scenario::Messages);
        assert_eq!(o.addrs, vec!["localhost:28080"]);
        assert_eq!(o.config, PathBuf::from("server.conf"));
        assert_eq!(o.max_clients, 100);
        assert_eq!(o.effective_duration(), None);
        assert_eq!(o.per_client_rate(), 1000.0);
    }

    #[test]
    fn single_and_double_dash_and_equals() {
        let o = run(&[
            "-addr",
            "a:1,b:2",
            "--maxClients=7",
            "flood",
            "--max-clients",
            "9",
            "-json",
            "--duration=1.5",
            "--server-pid",
            "42",
        ]);
        assert_eq!(o.addrs, vec!["a:1", "b:2"]);
        assert_eq!(o.max_clients, 9);
        assert_eq!(o.scenario, Scenario::Flood);
        assert!(o.json);
        assert_eq!(o.duration, Some(Duration::from_millis(1500)));
        assert_eq!(o.server_pid, Some(42));
    }

    #[test]
    fn durations_with_units() {
        assert_eq!(parse_secs("d", "500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_secs("d", "2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_secs("d", "3s"), Ok(Duration::from_secs(3)));
        assert!(parse_secs("d", "-1").is_err());
        assert!(parse_secs("d", "soon").is_err());
    }

    #[test]
    fn rejects_bad_input() {
        assert!(parse(["-maxClients", "1"]).is_err());
        assert!(parse(["-nosuchflag", "1"]).is_err());
        assert!(parse(["dance"]).is_err());
        assert!(parse(["flood", "room"]).is_err());
        assert!(parse(["-addr"]).is_err());
        assert!(parse(["room", "-room-size", "1"]).is_err());
        // A single idle session is fine.
        assert!(parse(["idle", "-maxClients", "1"]).is_ok());
    }

    #[test]
    fn help() {
        assert!(matches!(parse(["--help"]), Ok(Parsed::Help)));
        assert!(matches!(parse(["-h"]), Ok(Parsed::Help)));
    }

    #[test]
    fn room_rate_is_spread_over_clients() {
        let o = run(&["room", "-maxClients", "100"]);
        assert_eq!(o.per_client_rate(), DEFAULT_ROOM_RATE / 100.0);
        let o = run(&["room", "-maxClients", "100", "-rate", "5000"]);
        assert_eq!(o.per_client_rate(), 50.0);
    }
}
