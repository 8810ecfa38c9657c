//! The signaling hub: sessions, rooms, message routing, resume, the client for
//! Nextcloud backends and the cluster bus.
//!
//! A connection task (in the `signaling` binary) owns each WebSocket and hands
//! text frames to [`Hub::process_text`]. See `ARCHITECTURE.md` for the whole
//! message flow.
//!
//! # Layers
//!
//! The modules form layers; a module imports only from layers below it
//! (`bus <- core <- {cluster, backend, mcu, federation, dialout} <- {handlers,
//! housekeeping, hub}`):
//!
//! 1. [`bus`]: how a message reaches a subscriber. The `Bus` trait, the
//!    in-process loopback bus of a single server, the NATS bus of a cluster,
//!    the envelope they carry ([`bus::OutMsg`]: a server message serialised
//!    once, with its per-recipient variants) and the NATS pipe of a relayed
//!    connection.
//! 2. [`core`]: the state of one server. Connections, sessions (client,
//!    internal, virtual), rooms with their local members and cluster
//!    presence, the registry type, configured backends, settings, the error
//!    codes clients see. Sessions and rooms are bus subscribers.
//! 3. The services: [`cluster`] (questions to other nodes, node counts,
//!    relayed connections), [`backend`] (the Nextcloud client, capabilities,
//!    tokens, the backend API), [`mcu`] (the media layer: MCU routing,
//!    per-session media objects, the Janus and proxy adapters),
//!    [`federation`] and [`dialout`]. `cluster` uses `mcu` types and
//!    `dialout` asks through `cluster`; nothing points back.
//! 4. [`handlers`] (one module per kind of client message, dispatched from
//!    one typed enum, [`handlers::MessageKind`]), [`housekeeping`], and
//!    [`Hub`] itself, which owns the registry and ties the layers together.
//!    [`metrics`], [`throttle`] and [`geoip`] are helpers of these.
//!
//! Where a lower layer needs something from a higher one it gets a trait
//! (a session's federated room is a `core::session::FederatedRoom`; rooms
//! and sessions reach the server holding them through `core::host::Host`,
//! which `Hub` implements, so `core` never names `Hub`) or calls a `Hub`
//! method (the cluster layer answers dial-out questions through
//! `Hub::dialout_for_cluster`). One known exception remains:
//! `core::session` stores the media layer's per-session objects, so `core`
//! and `mcu` import each other.
//!
//! A single server and a cluster run the same code; they differ only in the
//! `Bus` implementation given to [`Hub::new`] and in whether the cluster
//! layer is started ([`Hub::start_cluster`]).

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
