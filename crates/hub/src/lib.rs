//! The signaling hub: sessions, rooms, message routing, resume, the client for
//! Nextcloud backends and the cluster bus.
//!
//! A connection task (in the `signaling` binary) owns each WebSocket and hands
//! text frames to [`Hub::process_text`]. The hub routes every delivery between
//! sessions through the [`bus::Bus`], so that the in-process bus used on a
//! single server can be swapped for NATS to form a cluster. See
//! `ARCHITECTURE.md` for the whole message flow.

pub mod backend_api;
pub mod backend_client;
pub mod backends;
pub mod bus;
pub mod bus_nats;
pub mod capabilities;
pub mod cluster;
pub mod conn;
pub mod dialout;
pub mod dns_srv;
pub mod etcd;
pub mod federation;
mod filter;
pub mod geoip;
mod hub;
pub mod mcu;
pub mod metrics;
pub mod relay;
pub mod replay;
pub mod room;
pub mod session;
pub mod sessionid;
pub mod settings;
pub mod throttle;
pub mod token;

pub use hub::{err_invalid_format, Hub, HubError, HubMcu, HubStats, Pending, SessionCounts};
