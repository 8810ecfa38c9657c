//! Node counts: every node reports its sessions per backend (and the
//! backends it has a dial-out bridge for) on `cluster.nodes`, so session
//! limits and dial-outs work cluster wide.

use crate::bus::{BusHandler, BusMessage, BusPayload};
use crate::core::session::ClientSession;
use crate::Hub;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, warn};

/// Public id of the signaling session bound to a Talk session id.
/// Clustering: follow the other nodes' session counts.
pub(crate) fn subscribe_node_status(hub: &Arc<Hub>) {
    if hub.settings.presence_interval.is_none() {
        return;
    }
    let handler: Arc<dyn BusHandler> = hub.clone();
    match hub
        .bus
        .subscribe(proto::cluster::NODES_SUBJECT, Arc::downgrade(&handler))
    {
        Ok(sub) => *hub.nodes_subscription.lock() = Some(sub),
        Err(e) => warn!(error = %e, "cannot follow the cluster's session counts"),
    }
}

/// Report this node's counts when they changed or every interval;
/// forget nodes silent for three intervals.
pub(crate) fn cluster_counts_tick(hub: &Hub, now: Instant) {
    let Some(interval) = hub.settings.presence_interval else {
        return;
    };
    hub.node_counts
        .lock()
        .retain(|_, (t, _)| now.duration_since(*t) <= interval * 3);
    let status = proto::cluster::NodeStatus {
        node: hub.node_id.to_string(),
        sessions: hub
            .backends
            .all()
            .iter()
            .filter(|b| b.session_limit > 0)
            .map(|b| (b.id.clone(), b.counted_sessions()))
            .collect(),
        dialout: local_bridge_backends(hub),
    };
    {
        let mut sent = hub.counts_sent.lock();
        let due = sent.0.is_none_or(|t| now.duration_since(t) >= interval);
        if !due && sent.1 == status {
            return;
        }
        *sent = (Some(now), status.clone());
    }
    let msg = BusMessage::new(BusPayload::Node(Arc::new(status)));
    if let Err(e) = hub.bus.publish(proto::cluster::NODES_SUBJECT, msg) {
        debug!(error = %e, "could not report session counts");
    }
}

/// The other nodes that reported within the last three presence
/// intervals (`cluster.nodes`).
pub(crate) fn live_node_status(hub: &Hub) -> Vec<Arc<proto::cluster::NodeStatus>> {
    let Some(interval) = hub.settings.presence_interval else {
        return Vec::new();
    };
    let now = Instant::now();
    hub.node_counts
        .lock()
        .values()
        .filter(|(t, _)| now.duration_since(*t) <= interval * 3)
        .map(|(_, status)| status.clone())
        .collect()
}

/// The other live nodes to ask for a dial-out bridge of `backend`: those
/// that reported one first, then all the others. Reports come with the
/// presence interval, so a bridge that connected since its node's last one
/// is not in them yet; one server would use it at once, so the cluster asks
/// every node rather than trusting the reports alone.
pub(crate) fn nodes_with_bridges(hub: &Hub, backend: &str) -> Vec<String> {
    let (mut with, without): (Vec<_>, Vec<_>) = crate::cluster::nodes::live_node_status(hub)
        .into_iter()
        .partition(|s| s.dialout.iter().any(|b| b == backend));
    with.extend(without);
    with.into_iter().map(|s| s.node.clone()).collect()
}

/// The bridges connected here that can take a dial-out: internal
/// clients with `start-dialout` that are not in a room (a bridge's room
/// connections carry calls; as upstream, those are no candidates, and
/// asking one would only wait for an answer that never comes).
pub(crate) fn local_bridges(hub: &Hub) -> impl Iterator<Item = Arc<ClientSession>> {
    hub.internal_sessions().into_iter().filter(|s| {
        s.conn().is_some()
            && s.has_feature(proto::client::CLIENT_FEATURE_START_DIALOUT)
            && s.room().is_none()
    })
}

/// Backend ids with a bridge here, sorted (reported to the cluster).
pub(crate) fn local_bridge_backends(hub: &Hub) -> Vec<String> {
    let mut ids: Vec<String> = local_bridges(hub).map(|s| s.backend.id.clone()).collect();
    ids.sort();
    ids.dedup();
    ids
}

/// Other nodes' reports on `cluster.nodes` (see `subscribe_node_status`).
/// Clustering: the other nodes' session counts (`cluster.nodes`).
impl BusHandler for Hub {
    fn on_bus_message(&self, _subject: &str, msg: &BusMessage) {
        if let BusPayload::Node(n) = &msg.payload {
            if *n.node != *self.node_id {
                let known = self
                    .node_counts
                    .lock()
                    .insert(n.node.clone(), (Instant::now(), n.clone()))
                    .is_some();
                if !known {
                    // A node new to us (just started) missed our earlier
                    // reports: tell it about us now, not an interval later,
                    // so that its cluster questions wait for us at once.
                    *self.counts_sent.lock() = (None, Default::default());
                    crate::cluster::nodes::cluster_counts_tick(self, Instant::now());
                }
            }
        }
    }
}
