//! The hub's Prometheus metrics, named as upstream names them (OBS-03) so
//! existing dashboards keep working, plus a few of our own.

use runtime::metrics::{Counter, CounterVec, Gauge, GaugeVec, Registry};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::handlers::MessageKind;

pub struct HubMetrics {
    pub registry: Registry,
    pub rooms: Arc<GaugeVec>,
    pub sessions: Arc<GaugeVec>,
    pub sessions_total: Arc<CounterVec>,
    pub sessions_resumed: Arc<CounterVec>,
    pub resume_failed: Arc<Counter>,
    pub room_sessions: Arc<GaugeVec>,
    pub session_limit_exceeded: Arc<CounterVec>,
    pub backends_current: Arc<Gauge>,
    pub client_countries: Arc<CounterVec>,
    pub queue_overflows: Arc<Counter>,
    pub connections: Arc<Gauge>,
    /// Closed sockets waiting for the client's close frame
    /// (`runtime::closing`).
    pub lingering: Arc<Gauge>,
    pub backend_requests: Arc<CounterVec>,
    /// Backend API requests refused as replays, by backend.
    pub backend_replays: Arc<CounterVec>,
    /// Clustering: connections relayed to or from another server (a client
    /// resumed on a server other than its session's), by side.
    pub relays: Arc<GaugeVec>,
    /// Frames the hub wrote to a client's socket itself (`core::conn`).
    pub direct_writes: Arc<crate::core::conn::DirectCounts>,
    messages: [Arc<AtomicU64>; 8],
}

impl HubMetrics {
    pub fn new(registry: Registry) -> HubMetrics {
        let messages_vec = registry.counter_vec(
            "signaling_server_messages_total",
            "The total number of signaling messages",
            &["type"],
        );
        let messages = MessageKind::ALL.map(|k| messages_vec.handle(&[k.label()]));
        let direct_vec = registry.counter_vec(
            "signaling_server_direct_writes_total",
            "Frames written to an idle client's socket without waking its connection task, by whether the socket took the whole frame",
            &["result"],
        );
        let direct_writes = Arc::new(crate::core::conn::DirectCounts {
            whole: direct_vec.handle(&["whole"]),
            partial: direct_vec.handle(&["partial"]),
        });
        HubMetrics {
            rooms: registry.gauge_vec(
                "signaling_hub_rooms",
                "The current number of rooms per backend",
                &["backend"],
            ),
            sessions: registry.gauge_vec(
                "signaling_hub_sessions",
                "The current number of sessions per backend",
                &["backend", "clienttype"],
            ),
            sessions_total: registry.counter_vec(
                "signaling_hub_sessions_total",
                "The total number of sessions per backend",
                &["backend", "clienttype"],
            ),
            sessions_resumed: registry.counter_vec(
                "signaling_hub_sessions_resume_total",
                "The total number of resumed sessions per backend",
                &["backend", "clienttype"],
            ),
            resume_failed: registry.counter(
                "signaling_hub_sessions_resume_failed_total",
                "The total number of failed session resume requests",
            ),
            room_sessions: registry.gauge_vec(
                "signaling_room_sessions",
                "The current number of sessions in a room",
                &["backend", "room", "clienttype"],
            ),
            session_limit_exceeded: registry.counter_vec(
                "signaling_backend_session_limit_exceeded_total",
                "The number of times the session limit exceeded",
                &["backend"],
            ),
            backends_current: registry.gauge(
                "signaling_backend_current",
                "The current number of configured backends",
            ),
            client_countries: registry.counter_vec(
                "signaling_client_countries_total",
                "The total number of connections by country",
                &["country"],
            ),
            queue_overflows: registry.counter(
                "signaling_server_client_queue_overflows_total",
                "Clients disconnected because they did not read their messages fast enough",
            ),
            connections: registry.gauge(
                "signaling_server_connections",
                "The current number of client connections",
            ),
            lingering: registry.gauge(
                "signaling_server_lingering_connections",
                "Closed client connections waiting for the client's close frame",
            ),
            backend_replays: registry.counter_vec(
                "signaling_backend_replays_total",
                "Backend API requests refused because their random was used before",
                &["backend"],
            ),
            backend_requests: registry.counter_vec(
                "signaling_backend_requests_total",
                "Requests sent to Nextcloud backends by kind and outcome",
                &["kind", "result"],
            ),
            relays: registry.gauge_vec(
                "signaling_cluster_relayed_connections",
                "Client connections relayed between servers: side=client (the socket is here) or side=session (the session is here)",
                &["side"],
            ),
            direct_writes,
            messages,
            registry,
        }
    }

    /// One request to a Nextcloud backend, by kind (auth, room, ping,
    /// session) and outcome.
    pub fn count_backend(&self, kind: &str, ok: bool) {
        self.backend_requests
            .inc(&[kind, if ok { "ok" } else { "error" }]);
    }

    pub fn count_message(&self, kind: MessageKind) {
        self.messages[kind as usize].fetch_add(1, Ordering::Relaxed);
    }
}
