//! The MCU as the hub sees it: which `message`s are MCU verbs and where
//! they go (`routing`), the session's publishers and subscribers
//! (`objects`, `session::McuObjects`), getting media back after losses
//! (`recovery`), and the proxy client ([`proxy::ProxyMcu`]). The media server
//! traits, the Janus MCU and the metrics come from the `mcu` crate and are
//! re-exported here.

pub use ::mcu::*;

pub mod candidates;
pub(crate) mod objects;
pub mod proxy;
pub(crate) mod recovery;
pub(crate) mod routing;
pub(crate) mod session;
