//! The signaling hub: sessions, rooms, message routing, resume, the client for
//! Nextcloud backends and the cluster bus.
//!
//! A connection task (in the `signaling` binary) owns each WebSocket and hands
//! text frames to [`Hub::process_text`]. See `ARCHITECTURE.md` for the whole
//! message flow.
//!
//! # Layers
//!
//! The modules form layers; a module imports only from layers below it:
//!
//! 1. [`bus`]: how a message reaches a subscriber. The `Bus` trait, the
//!    in-process loopback bus of a single server, the NATS bus of a cluster,
//!    the envelope they carry ([`bus::OutMsg`]: a server message serialised
//!    once) and the per-recipient message variants.
//! 2. [`core`]: the state of one server. Connections, sessions, rooms with
//!    their local members, the configured backends, settings. Sessions and
//!    rooms are bus subscribers.
//! 3. The services, each using core and bus but not each other:
//!    [`cluster`] (questions to other nodes, room presence, node counts,
//!    relayed connections), [`backend`] (the Nextcloud client, tokens, the
//!    backend API), [`mcu`] (the media layer: MCU routing and the Janus and
//!    proxy adapters), [`federation`], [`dialout`].
//! 4. [`handlers`]: one module per kind of client message, dispatched from
//!    one typed enum, and [`housekeeping`]; and [`Hub`] itself, which owns
//!    the registry of sessions and rooms and ties the layers together.
//!
//! Leaf helpers usable from any layer: [`metrics`], [`throttle`], [`geoip`].
//!
//! A single server and a cluster run the same code; they differ only in the
//! `Bus` implementation given to [`Hub::new`] and in whether the cluster
//! layer is started.

pub mod backend;
pub mod bus;
pub mod cluster;
pub mod core;
pub mod dialout;
pub mod federation;
pub mod geoip;
pub mod handlers;
pub mod housekeeping;
mod hub;
pub mod mcu;
pub mod metrics;
pub mod throttle;

pub use hub::{err_invalid_format, Hub, HubError, HubMcu, HubStats, Pending, SessionCounts};
