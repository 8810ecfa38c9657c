//! Backend layer: everything that talks to (or listens to) Nextcloud. The
//! HTTP client with its capabilities cache, hello tokens, replay protection
//! for signed backend requests, and the backend API (`/api/v1/room/...`)
//! applied to rooms.

pub mod api;
pub mod capabilities;
pub mod client;
pub mod replay;
pub mod token;
