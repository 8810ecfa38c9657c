//! What a [`crate::Gateway`] is configured with and the connection state it
//! publishes; shared by the public handles and the connection task.

use std::sync::Arc;
use std::time::Duration;

use crate::wire::ServerInfo;

/// Tunables of the client. The defaults follow upstream.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How long a request may wait for its reply (upstream `[mcu] timeout`,
    /// default 10 s).
    pub request_timeout: Duration,
    /// How long opening the WebSocket plus the initial `info` may take.
    pub connect_timeout: Duration,
    /// Interval of Janus `keepalive` requests per session. Must be well below
    /// Janus's `session_timeout` (60 s by default).
    pub keepalive_interval: Duration,
    /// Interval of WebSocket pings. A connection that sends nothing back for
    /// 1.5 intervals is considered dead and reconnected.
    pub ping_interval: Duration,
    /// First delay before reconnecting after the connection was lost.
    pub reconnect_initial: Duration,
    /// The delay doubles after every failed attempt up to this.
    pub reconnect_max: Duration,
    /// Capacity of the command queue to the connection task; callers wait
    /// when it is full.
    pub command_queue: usize,
    /// Capacity of each handle's event queue; see [`crate::HandleEvents`].
    pub handle_queue: usize,
    /// Largest WebSocket message accepted from Janus.
    pub max_message_size: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(32),
            command_queue: 256,
            handle_queue: 64,
            max_message_size: 4 << 20,
        }
    }
}

/// The state of the connection, published on a watch channel.
#[derive(Clone, Debug)]
pub enum ConnectionState {
    /// Connected; `epoch` counts connections (1 for the first). Every
    /// session and handle belongs to one epoch and dies with it: when the
    /// epoch changes, the MCU must rebuild its publishers and subscribers.
    Connected { epoch: u64, info: Arc<ServerInfo> },
    /// Between connections; the next attempt starts after `retry_in`.
    Disconnected {
        last_epoch: u64,
        reason: String,
        attempt: u32,
        retry_in: Duration,
    },
    /// [`crate::Gateway::close`] was called, or every handle was dropped.
    Closed,
}

impl ConnectionState {
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// The epoch of the current connection, if connected.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            ConnectionState::Connected { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }
}
