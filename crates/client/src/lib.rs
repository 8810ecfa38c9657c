//! Load and benchmark client for the signaling server (the `client` binary).
//!
//! It speaks to a server exactly like Talk clients do (WebSocket `/spreed`,
//! hello v1 with backend authentication) and authenticates them against a
//! fake Nextcloud it embeds on `127.0.0.1`, so the server under test must run
//! on the same machine with `[backend] allowall = true` and the same secret.
//!
//! Scenarios ([`args::Scenario`]): upstream's `messages` load, `connect`
//! (hello rate and latency), `idle` (memory per session), `room` (fan-out
//! latency at a fixed total rate) and `flood` (maximum throughput with a
//! window of messages in flight). Every message is its own write unless
//! `-batch` is given (see [`load`]). Every message carries its sender, a
//! sequence number and its addressee, so the [`ledger`] can tell delivered,
//! lost, duplicated and misdelivered apart;
//! latencies go into HDR histograms ([`stats`]); the server's CPU time and
//! RSS come from `/proc` ([`procstat`]). The result is a [`report::Report`]
//! (text or JSON) and optionally a PNG ([`plot`]).
//!
//! Layout: [`args`] parses the command line; [`mod@run`] drives one run:
//! [`setup`] connects the clients (and is the `connect` scenario),
//! [`measure`] runs the other scenarios' measured phase, draining and
//! closing, [`probe`] takes the readings. [`session`] sets one connection
//! up, [`load`] is its reader and writer tasks; [`world`] is the state the
//! clients share. Everything runs on one thread (`LocalSet`): a load
//! generator pinned to one core gains nothing from more, and shared state
//! stays free of locks.

pub mod args;
pub mod backend;
pub mod ledger;
pub mod limits;
pub mod load;
pub mod measure;
pub mod plot;
pub mod probe;
pub mod procstat;
pub mod receive;
pub mod report;
pub mod run;
pub mod session;
pub mod setup;
pub mod stats;
pub mod world;

pub use run::{run, RunError};
