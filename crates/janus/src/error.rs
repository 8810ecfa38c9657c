//! One error type for everything the client can report, so the MCU can map
//! it to a client error code (`processing_failed`, `client_not_found`) in one
//! place.

use std::time::Duration;

/// Why a session or handle stopped existing in Janus without being detached
/// or destroyed by its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoneReason {
    /// The WebSocket to Janus broke (or Janus was restarted). Janus destroys
    /// the sessions of a transport connection when it closes, so nothing
    /// created on the old connection survives.
    ConnectionLost,
    /// Janus sent a `timeout` event for the session: it missed keepalives.
    SessionTimedOut,
    /// A keepalive was answered with "session not found".
    SessionNotFound,
    /// The session was destroyed (by [`crate::Session::destroy`] or by
    /// dropping it).
    SessionDestroyed,
    /// The gateway client was closed with [`crate::Gateway::close`].
    Closed,
}

impl std::fmt::Display for GoneReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            GoneReason::ConnectionLost => "connection to Janus lost",
            GoneReason::SessionTimedOut => "Janus session timed out",
            GoneReason::SessionNotFound => "Janus session not found",
            GoneReason::SessionDestroyed => "Janus session destroyed",
            GoneReason::Closed => "gateway client closed",
        })
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum Error {
    /// The first connection attempt failed (later ones are retried by the
    /// connection task and reported through the connection state).
    #[error("cannot connect to Janus at {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The request could not be sent: the client is between connections.
    #[error("not connected to Janus")]
    NotConnected,
    /// The connection broke while the request was waiting for its reply.
    #[error("connection to Janus lost before the reply to {request} arrived")]
    Disconnected { request: &'static str },
    /// Janus did not answer in time. The transaction is forgotten; a late
    /// reply is dropped (or, for plugin events, delivered to the handle).
    #[error("Janus did not answer {request} within {timeout:?}")]
    Timeout {
        request: &'static str,
        timeout: Duration,
    },
    /// Janus core rejected the request (`"janus": "error"`).
    #[error("Janus error {code} on {request}: {reason}")]
    Janus {
        request: &'static str,
        code: u64,
        reason: String,
    },
    /// The plugin answered with an error (`error_code` in the plugin data).
    #[error("plugin error {code}: {reason}")]
    Plugin { code: u64, reason: String },
    /// The session this request belongs to no longer exists.
    #[error("Janus session is gone ({0})")]
    SessionGone(GoneReason),
    /// The handle this request belongs to was detached.
    #[error("Janus handle is detached")]
    HandleGone,
    /// Janus answered something this client does not understand.
    #[error("unexpected reply to {request}: {detail}")]
    Protocol {
        request: &'static str,
        detail: String,
    },
    /// The server lacks something this client needs.
    #[error("unsupported Janus server: {0}")]
    Unsupported(String),
    /// [`crate::Gateway::close`] was called, or the connection task ended.
    #[error("Janus gateway client closed")]
    Closed,
}

impl Error {
    /// The Janus core or plugin error code, if Janus sent one.
    pub fn code(&self) -> Option<u64> {
        match self {
            Error::Janus { code, .. } | Error::Plugin { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// Whether the request failed because the connection or session went
    /// away (the MCU should wait for the reconnect and rebuild rather than
    /// report a client error).
    pub fn is_connection_error(&self) -> bool {
        matches!(
            self,
            Error::NotConnected
                | Error::Disconnected { .. }
                | Error::SessionGone(_)
                | Error::Closed
        )
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
