//! Prometheus metrics of the proxy, with upstream's names
//! (`signaling_proxy_*`).

use std::sync::Arc;

use runtime::metrics::{Counter, CounterVec, Gauge, GaugeVec, Registry};

/// Metrics with upstream's names (`signaling_proxy_*`).
pub(crate) struct ProxyMetrics {
    pub(crate) sessions: Arc<Gauge>,
    pub(crate) sessions_total: Arc<Counter>,
    pub(crate) sessions_resumed: Arc<Counter>,
    pub(crate) publishers: Arc<GaugeVec>,
    pub(crate) publishers_total: Arc<CounterVec>,
    pub(crate) subscribers: Arc<GaugeVec>,
    pub(crate) subscribers_total: Arc<CounterVec>,
    pub(crate) commands: Arc<CounterVec>,
    pub(crate) payloads: Arc<CounterVec>,
    pub(crate) token_errors: Arc<CounterVec>,
    pub(crate) load: Arc<Gauge>,
    /// Closed connections waiting for the peer's close frame.
    pub(crate) lingering: Arc<Gauge>,
}

impl ProxyMetrics {
    pub(crate) fn new(r: &Registry) -> ProxyMetrics {
        ProxyMetrics {
            sessions: r.gauge("signaling_proxy_sessions", "The current number of sessions"),
            lingering: r.gauge(
                "signaling_proxy_lingering_connections",
                "Closed connections waiting for the signaling server's close frame",
            ),
            sessions_total: r.counter(
                "signaling_proxy_sessions_total",
                "The total number of created sessions",
            ),
            sessions_resumed: r.counter(
                "signaling_proxy_sessions_resumed_total",
                "The total number of resumed sessions",
            ),
            publishers: r.gauge_vec(
                "signaling_proxy_publishers",
                "The current number of publishers",
                &["type"],
            ),
            publishers_total: r.counter_vec(
                "signaling_proxy_publishers_total",
                "The total number of created publishers",
                &["type"],
            ),
            subscribers: r.gauge_vec(
                "signaling_proxy_subscribers",
                "The current number of subscribers",
                &["type"],
            ),
            subscribers_total: r.counter_vec(
                "signaling_proxy_subscribers_total",
                "The total number of created subscribers",
                &["type"],
            ),
            commands: r.counter_vec(
                "signaling_proxy_command_messages_total",
                "The total number of command messages",
                &["type"],
            ),
            payloads: r.counter_vec(
                "signaling_proxy_payload_messages_total",
                "The total number of payload messages",
                &["type"],
            ),
            token_errors: r.counter_vec(
                "signaling_proxy_token_errors_total",
                "The total number of token errors",
                &["reason"],
            ),
            load: r.gauge(
                "signaling_proxy_load",
                "The current load: Mbit/s of the hosted streams' bitrate caps",
            ),
        }
    }
}
