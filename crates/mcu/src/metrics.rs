//! MCU metrics with upstream's names (OBS-03, MCU part) plus the state of
//! the Janus connection and its rebuilds, which upstream does not expose.

use runtime::metrics::{Counter, CounterVec, Gauge, GaugeVec, Registry};
use std::sync::Arc;

#[derive(Clone)]
pub struct McuMetrics {
    pub publishers: Arc<GaugeVec>,
    pub publishers_total: Arc<CounterVec>,
    pub subscribers: Arc<GaugeVec>,
    pub subscribers_total: Arc<CounterVec>,
    pub no_publisher_total: Arc<CounterVec>,
    /// Subscribers served by a proxy other than their publisher's.
    pub remote_subscribers_total: Arc<CounterVec>,
    pub messages_total: Arc<CounterVec>,
    pub publisher_streams: Arc<GaugeVec>,
    pub subscriber_streams: Arc<GaugeVec>,
    pub janus_connected: Arc<Gauge>,
    pub janus_reconnects: Arc<Counter>,
    pub rebuilt_total: Arc<CounterVec>,
    pub candidates_filtered: Arc<Counter>,
    /// Clients nudged to publish again (no offer after `requestoffer`).
    pub republish_nudges_total: Arc<Counter>,
    /// Subscribers told their publisher left and came back (participants
    /// update to them alone) because their media could not be restored.
    pub stall_notices_total: Arc<Counter>,
    /// Subscribers re-created on their own after losing their publisher,
    /// their offer pushed to the client.
    pub followed_total: Arc<CounterVec>,
    /// Publishers replaced by an offer with a new sid.
    pub replaced_total: Arc<CounterVec>,
}

impl McuMetrics {
    pub fn new(registry: &Registry) -> McuMetrics {
        McuMetrics {
            publishers: registry.gauge_vec(
                "signaling_mcu_publishers",
                "The current number of publishers",
                &["type"],
            ),
            publishers_total: registry.counter_vec(
                "signaling_mcu_publishers_total",
                "The total number of created publishers",
                &["type"],
            ),
            subscribers: registry.gauge_vec(
                "signaling_mcu_subscribers",
                "The current number of subscribers",
                &["type"],
            ),
            subscribers_total: registry.counter_vec(
                "signaling_mcu_subscribers_total",
                "The total number of created subscribers",
                &["type"],
            ),
            no_publisher_total: registry.counter_vec(
                "signaling_mcu_nopublisher_total",
                "The total number of subscribe requests where no publisher exists",
                &["type"],
            ),
            remote_subscribers_total: registry.counter_vec(
                "signaling_mcu_remote_subscribers_total",
                "The total number of subscribers served through a remote stream by a proxy other than the publisher's",
                &["type"],
            ),
            messages_total: registry.counter_vec(
                "signaling_mcu_messages_total",
                "The total number of MCU messages",
                &["type"],
            ),
            publisher_streams: registry.gauge_vec(
                "signaling_mcu_publisher_streams",
                "The current number of published media streams",
                &["type"],
            ),
            subscriber_streams: registry.gauge_vec(
                "signaling_mcu_subscriber_streams",
                "The current number of subscribed media streams",
                &["type"],
            ),
            janus_connected: registry.gauge(
                "signaling_mcu_janus_connected",
                "Whether the connection to the Janus gateway is up (1) or not (0)",
            ),
            janus_reconnects: registry.counter(
                "signaling_mcu_janus_reconnects_total",
                "The total number of reconnections to the Janus gateway",
            ),
            rebuilt_total: registry.counter_vec(
                "signaling_mcu_rebuilt_total",
                "Publishers and subscribers re-created after Janus came back",
                &["kind"],
            ),
            candidates_filtered: registry.counter(
                "signaling_mcu_candidates_filtered_total",
                "ICE candidates from clients dropped by allowedcandidates/blockedcandidates",
            ),
            republish_nudges_total: registry.counter(
                "signaling_mcu_republish_nudges_total",
                "Clients made to publish again after their publisher was lost (Talk's web client ignores requestoffer to itself)",
            ),
            stall_notices_total: registry.counter(
                "signaling_mcu_stall_notices_total",
                "Subscribers whose media could not be restored within seconds, told with a participants update to them alone that the publisher left the call and came back (Talk then requests a new offer)",
            ),
            followed_total: registry.counter_vec(
                "signaling_mcu_followed_total",
                "Subscribers re-created on their own after their publisher was replaced, ended or lost, with the new offer pushed",
                &["type"],
            ),
            replaced_total: registry.counter_vec(
                "signaling_mcu_replaced_total",
                "Publishers replaced by an offer with a new sid",
                &["type"],
            ),
        }
    }
}
