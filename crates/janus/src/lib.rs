//! Client for the Janus WebRTC gateway, as the MCU of the signaling server
//! uses it. It knows nothing about rooms or sessions of the signaling
//! server: it speaks the Janus API over one WebSocket and offers typed
//! helpers for the VideoRoom plugin.
//!
//! # Shape
//!
//! ```text
//!  Gateway ──┐ (clone)                      connection task (one per Gateway)
//!  Session ──┼── bounded mpsc<Command> ──▶  owns the WebSocket, Core (pending
//!  Handle  ──┘   request + oneshot reply    transactions, sessions, handles)
//!                                              │ events per handle
//!  HandleEvents ◀── bounded mpsc<HandleEvent> ─┘ connection state ─▶ watch
//! ```
//!
//! - One task owns the socket (module `task`); the protocol state lives in a
//!   sans-I/O module `core` that unit tests drive without sockets.
//! - Modules from the bottom up: `wire` and `error`, `events`, `core`,
//!   `connection`, `task`, `client`, [`videoroom`]; each imports only from
//!   the ones below it.
//! - Every request carries a transaction id and waits on a oneshot for its
//!   reply, with a timeout ([`GatewayConfig::request_timeout`]). A plugin
//!   `message` is answered either synchronously (`success`) or by `ack`
//!   followed by an `event` with the same transaction; both come back as a
//!   [`PluginResponse`].
//! - The task sends a WebSocket ping and a Janus `keepalive` per session
//!   every 30 s. When the connection breaks (or Janus forgets a session) it
//!   fails everything in flight with [`Error::Disconnected`], ends every
//!   session and handle ([`HandleEvent::Gone`]), reconnects with backoff
//!   1 s → 32 s and publishes each step on [`Gateway::state`]. Janus
//!   destroys the sessions of a closed WebSocket, so after a reconnect
//!   (a new `epoch`) the user rebuilds its sessions and handles.
//! - Dropping the last clone of a [`Session`] or [`Handle`] destroys or
//!   detaches it in Janus, so error paths leak nothing.
//!
//! # Janus versions
//!
//! Every connection starts with `info`; [`ServerInfo::api_generation`]
//! tells 0.x from 1.x (multistream) and [`videoroom`] builds the right
//! requests for each.

#![forbid(unsafe_code)]

mod client;
mod connection;
mod core;
mod error;
mod events;
mod task;
pub mod videoroom;
mod wire;

pub use client::{Gateway, Handle, PluginResponse, Session};
pub use connection::{ConnectionState, GatewayConfig};
pub use error::{Error, GoneReason, Result};
pub use events::{HandleEvent, HandleEvents, MediaEvent, PluginEvent, SlowLinkEvent};
pub use task::SUBPROTOCOL;
pub use wire::{
    codes, ApiGeneration, IceCandidate, InfoWarnings, Jsep, PluginData, PluginInfo, ServerInfo,
    MULTISTREAM_MIN_VERSION, REMOTE_PUBLISHER_MIN_VERSION,
};
