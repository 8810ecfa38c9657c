//! Core: the state of one server, with no knowledge of how it is connected
//! to others. Connections, sessions (client, internal, virtual), rooms with
//! their local members, the configured backends and the hub settings.
//!
//! Core sits directly on the [`crate::bus`] layer: sessions and rooms are bus
//! subscribers. What they need from the server holding them goes through
//! [`host::Host`]. Nothing here imports the layers above it (cluster,
//! backend, federation, handlers), except that sessions store their media
//! objects (`crate::mcu::session`).

pub mod backends;
pub mod conn;
pub mod errors;
pub mod host;
pub mod registry;
pub mod room;
pub mod session;
pub mod settings;

/// Work a message needs that cannot finish synchronously (backend requests).
pub type Pending = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>>;
