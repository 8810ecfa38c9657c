//! Once a second: expire sessions and anonymous connections, ping
//! Nextcloud for the rooms' sessions, transient data expiry, the cluster's
//! node counts and room presence ticks, and shrinking of idle maps.

use crate::core::conn::Conn;
use crate::core::room::Room;
use crate::core::session::AnySession;
use crate::Hub;

/// A room id and the ping entries of its sessions.
pub(crate) type RoomPings = (String, Vec<PingEntry>);
use proto::backend::PingEntry;
use proto::client::ServerMessage;
use serde_json::Value;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use url::Url;

/// Run the periodic work (expiry, timeouts, room pings) until cancelled.
pub fn spawn_housekeeping(hub: &Arc<Hub>, token: CancellationToken) -> tokio::task::JoinHandle<()> {
    crate::cluster::nodes::subscribe_node_status(hub);
    let weak = Arc::downgrade(hub);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = token.cancelled() => break,
                _ = tick.tick() => {}
            }
            let Some(hub) = weak.upgrade() else { break };
            crate::housekeeping::housekeeping(&hub, Instant::now());
        }
    })
}

pub(crate) fn housekeeping(hub: &Arc<Hub>, now: Instant) {
    hub.throttler.cleanup(now);
    let tick = hub.ticks.fetch_add(1, Ordering::Relaxed);
    if tick.is_multiple_of(10) {
        // After a spike of connections, give the maps' memory back.
        hub.reg.lock().shrink();
        hub.bus.shrink();
    }
    if tick % 30 == 29 {
        // Decoded ids unused for 30-60 s are forgotten.
        hub.codec.age_caches();
    }
    crate::cluster::nodes::cluster_counts_tick(hub, now);
    let (expired, anonymous, rooms) = take_expired(hub, now);
    for s in expired {
        if let AnySession::Client(c) = s {
            info!(session = %c.public_id, "closing expired session");
            hub.close_session(&c);
        }
    }
    for conn in anonymous {
        if let Some(session) = conn.session() {
            if session.room().is_some() {
                continue;
            }
            info!(session = %session.public_id, "anonymous session did not join a room in time");
            session.send_message(ServerMessage::bye("room_join_timeout"));
            hub.close_session(&session);
        }
    }
    for room in &rooms {
        room.expire_transient(&**hub, now);
        room.cluster_tick(&**hub, now);
    }
    let ping_due = {
        let mut next = hub.next_ping.lock();
        if now >= *next {
            *next = now + crate::core::settings::ROOM_PING_INTERVAL;
            true
        } else {
            false
        }
    };
    if ping_due {
        send_room_pings(hub, rooms);
    }
}

/// Take the sessions whose resume time ran out and the anonymous
/// connections that did not join a room in time out of the registry; and
/// list the rooms.
fn take_expired(hub: &Hub, now: Instant) -> (Vec<AnySession>, Vec<Arc<Conn>>, Vec<Arc<Room>>) {
    let mut reg = hub.reg.lock();
    let expired: Vec<Arc<str>> = reg
        .expiring
        .iter()
        .filter(|(_, t)| **t <= now)
        .map(|(id, _)| id.clone())
        .collect();
    let expired: Vec<AnySession> = expired
        .iter()
        .filter_map(|id| {
            reg.expiring.remove(id);
            reg.sessions.get(id).cloned()
        })
        .collect();
    let timed_out: Vec<u64> = reg
        .anonymous
        .iter()
        .filter(|(_, (_, t))| *t <= now)
        .map(|(id, _)| *id)
        .collect();
    let anonymous: Vec<Arc<Conn>> = timed_out
        .iter()
        .filter_map(|id| reg.anonymous.remove(id))
        .filter_map(|(c, _)| c.upgrade())
        .collect();
    (
        expired,
        anonymous,
        reg.rooms.values().cloned().collect::<Vec<_>>(),
    )
}

/// The due room pings: one list per Nextcloud URL, holding the entries of
/// all rooms (and of federated sessions), each sent by its own task.
fn send_room_pings(hub: &Arc<Hub>, rooms: Vec<Arc<Room>>) {
    // One list per Nextcloud URL, holding the entries of all rooms.
    let mut by_url: Vec<(Url, Vec<RoomPings>)> = Vec::new();
    // Federated sessions are pinged here, at their own Nextcloud,
    // for the local id of the room they are in elsewhere.
    for s in hub.client_sessions() {
        let Some(f) = crate::federation::FederationClient::of(&s) else {
            continue;
        };
        let entry = PingEntry {
            userid: s.auth_user_id.clone(),
            sessionid: f.room_session_id.clone(),
        };
        let url = s.backend_url.clone();
        let list = match by_url.iter_mut().find(|(u, _)| *u == url) {
            Some((_, list)) => list,
            None => {
                by_url.push((url, Vec::new()));
                &mut by_url.last_mut().expect("just pushed").1
            }
        };
        match list.iter_mut().find(|(r, _)| *r == f.room_id) {
            Some((_, entries)) => entries.push(entry),
            None => list.push((f.room_id.clone(), vec![entry])),
        }
    }
    for room in rooms {
        for (url, entries) in room.ping_entries() {
            match by_url.iter_mut().find(|(u, _)| *u == url) {
                Some((_, list)) => list.push((room.id.clone(), entries)),
                None => by_url.push((url, vec![(room.id.clone(), entries)])),
            }
        }
    }
    for (url, rooms) in by_url {
        let hub = hub.clone();
        tokio::spawn(async move { crate::housekeeping::send_pings(hub, url, rooms).await });
    }
}

/// Room pings to one Nextcloud. When it announces
/// `signaling.session-ping-limit` (upstream 0.5.0, #250) the sessions of
/// all rooms go in combined requests (empty room id) of at most that many
/// entries; otherwise each room pings on its own.
pub(crate) async fn send_pings(hub: Arc<Hub>, url: Url, rooms: Vec<RoomPings>) {
    use crate::backend::capabilities::{CONFIG_GROUP_SIGNALING, CONFIG_SESSION_PING_LIMIT};
    let limit = hub
        .backend
        .capabilities(&url)
        .await
        .caps
        .and_then(|c| c.int_config(CONFIG_GROUP_SIGNALING, CONFIG_SESSION_PING_LIMIT))
        .filter(|l| *l > 0)
        .map(|l| l as usize);
    let requests: Vec<RoomPings> = match limit {
        None => rooms,
        Some(limit) => {
            let all: Vec<PingEntry> = rooms.into_iter().flat_map(|(_, e)| e).collect();
            all.chunks(limit)
                .map(|c| (String::new(), c.to_vec()))
                .collect()
        }
    };
    for (roomid, entries) in requests {
        let req = proto::backend::BackendClientRequest::ping(&roomid, entries);
        let res: Result<Value, _> = hub
            .backend_request("ping", &url, &req, hub.settings.backend_timeout)
            .await;
        if let Err(e) = res {
            debug!(room = %roomid, url = %url, error = %e, "room ping failed");
        }
    }
}
