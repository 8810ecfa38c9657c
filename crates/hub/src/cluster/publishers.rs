//! Publishers on other nodes: where a publisher streams from (so a
//! subscriber here can join it), and news that a publisher was replaced.

use super::*;

/// Tell the other nodes that `session` replaced its `stream` publisher,
/// so that their subscribers of it follow the new one (one Janus or
/// proxy tells a subscriber on another server nothing when the old
/// publisher's room goes away).
pub(crate) fn announce_publisher_replaced(
    hub: &Hub,
    session: &str,
    stream: crate::mcu::StreamType,
) {
    let Some(client) = hub.cluster.get().and_then(|c| c.client()) else {
        return;
    };
    let news = PublisherNews {
        node: hub.node_id.to_string(),
        session: session.to_owned(),
        stream: stream.as_str().to_owned(),
    };
    if let Ok(body) = serde_json::to_vec(&news) {
        tokio::spawn(async move {
            if let Err(e) = client.publish(PUBLISHER_NEWS_SUBJECT, body.into()).await {
                debug!(error = %e, "publisher news not shared with the cluster");
            }
        });
    }
}

/// Another node replaced `publisher`'s `stream` publisher: our sessions'
/// subscribers of it are dropped and follow the new one (a fresh offer
/// with a new sid is pushed to their clients).
pub(crate) fn remote_publisher_replaced(
    hub: &Arc<Hub>,
    publisher: &str,
    stream: crate::mcu::StreamType,
) {
    let key: crate::mcu::session::SubscriberKey = (publisher.into(), stream);
    for s in hub.client_sessions() {
        let Some(old) = s.with_mcu(|m| m.subscribers.remove(&key)) else {
            continue;
        };
        debug!(session = %s.public_id, publisher, stream = stream.as_str(), "remote publisher replaced, following it");
        crate::mcu::session::close_in_background(vec![old]);
        crate::mcu::recovery::follow_publisher(hub, &s, key.0.clone(), stream);
    }
}

/// Another server has a subscriber for a publisher that may be here.
pub(crate) async fn publisher_location(
    hub: &Hub,
    q: &PublisherRequest,
) -> Option<serde_json::Value> {
    let mcu = hub.mcu.clone()?;
    let stream = crate::mcu::StreamType::parse(&q.stream)?;
    match hub.session_by_public_id(&q.publisher)? {
        crate::core::session::AnySession::Client(_) => {}
        _ => return None,
    }
    mcu.publisher_location(&q.publisher, stream).await
}

/// Ask the cluster where `publisher` (not a session of this server)
/// streams. The holder waits for the publisher up to its MCU timeout.
pub(crate) async fn remote_publisher(
    hub: &Hub,
    publisher: &str,
    stream: crate::mcu::StreamType,
    mcu_timeout: Duration,
) -> Option<serde_json::Value> {
    let cluster = hub.cluster.get()?;
    let question = PublisherRequest {
        node: hub.node_id.to_string(),
        publisher: publisher.to_owned(),
        stream: stream.as_str().to_owned(),
    };
    cluster
        .ask(
            PUBLISHER_SUBJECT,
            &question,
            hub.live_nodes(),
            mcu_timeout + Duration::from_secs(1),
        )
        .await
}
