//! `room`: joining (asking the backend, replacing an older session of the
//! same Talk session, cluster wide), leaving, and federated rooms.

use crate::core::conn::Conn;
use crate::core::errors::*;
use crate::core::room::{room_key, Room};
use crate::core::session::{AnySession, ClientSession};
use crate::core::settings::ANONYMOUS_JOIN_TIMEOUT;
use crate::core::Pending;
use crate::Hub;
use proto::client::{ClientMessage, Error, EventServerMessage, ServerMessage, SessionEntry};
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info};

pub(crate) fn send_room_reply(session: &ClientSession, id: &str, room: Option<&Room>) {
    let msg = match room {
        Some(r) => {
            let mut m = ServerMessage::room(id, &r.id, r.properties());
            if let Some(body) = m.room.as_mut() {
                body.bandwidth = room_bandwidth(r);
            }
            m
        }
        None => ServerMessage::room(id, "", None),
    };
    session.send_message(msg);
}

pub(crate) fn process_room(
    hub: &Arc<Hub>,
    conn: &Arc<Conn>,
    session: &Arc<ClientSession>,
    msg: ClientMessage,
) -> Option<Pending> {
    let room_msg = msg.room.as_ref()?;
    if room_msg.roomid.is_empty() {
        if let Some(federation) = crate::federation::FederationClient::of(session) {
            // The remote server answers (and the connection then ends).
            federation.leave(msg);
            return None;
        }
        if session.leave_room(true).is_some() {
            send_room_reply(session, &msg.id, None);
        }
        if session.auth_user_id.is_empty() && !session.is_internal() {
            hub.reg.lock().anonymous.insert(
                conn.id,
                (
                    Arc::downgrade(conn),
                    Instant::now() + ANONYMOUS_JOIN_TIMEOUT,
                ),
            );
        }
        return None;
    }
    if room_msg.federation.is_some() {
        // Joined on the remote server; it must not time out here meanwhile.
        hub.reg.lock().anonymous.remove(&conn.id);
        session.leave_room(true);
        let client = crate::federation::FederationClient::start(session, &msg);
        session.set_federation(Some(client));
        return None;
    }
    if let Some(room) = hub.room_for(&session.backend, &room_msg.roomid) {
        if room.has_session(&session.public_id) {
            // Upstream 1.2.0 (#547): tell the client instead of ignoring it,
            // so its request gets an answer.
            let mut details = serde_json::json!({"room": {"roomid": room.id}});
            if let Some(p) = room.properties() {
                details["room"]["properties"] = serde_json::json!(p);
            }
            let mut err = Error::new("already_joined", "Already joined this room.");
            err.details = Some(details);
            session.send_message(ServerMessage::error(&msg.id, err));
            return None;
        }
    }
    let hub = hub.clone();
    let session = session.clone();
    let conn = conn.clone();
    Some(Box::pin(async move {
        join_room(&hub, &conn, &session, msg).await
    }))
}

pub(crate) async fn join_room(
    hub: &Arc<Hub>,
    conn: &Arc<Conn>,
    session: &Arc<ClientSession>,
    msg: ClientMessage,
) {
    let Some(room_msg) = msg.room else { return };
    let Some(response) = ask_backend_to_join(hub, session, &room_msg, &msg.id).await else {
        return;
    };
    if session.is_closed() {
        return;
    }
    if response.kind == "error" {
        session.send_message(ServerMessage::error(
            &msg.id,
            response.error.unwrap_or_else(err_room_join_failed),
        ));
        return;
    }
    let Some(room_resp) = response.room.filter(|_| response.kind == "room") else {
        session.send_message(ServerMessage::error(&msg.id, err_room_join_failed()));
        return;
    };
    if !room_msg.sessionid.is_empty() {
        disconnect_by_room_session(hub, &room_msg.sessionid, &session.public_id);
        // Clustering: the older session may be on another server.
        crate::cluster::replace_room_session_elsewhere(
            hub,
            &room_msg.sessionid,
            &session.public_id,
        )
        .await;
        if session.is_closed() {
            return;
        }
    }
    session.leave_room(true);
    let roomid = if room_resp.roomid.is_empty() {
        room_msg.roomid.clone()
    } else {
        room_resp.roomid.clone()
    };
    let room = match get_or_create_room(hub, &roomid, session, room_resp.properties.clone()) {
        Ok((r, created)) => {
            if created {
                // The room's subjects reach this node before the other
                // nodes are asked about it or anyone is told about it.
                subscriptions_active(hub).await;
                crate::cluster::learn_room(hub, &r).await;
            }
            r
        }
        Err(e) => {
            session.send_message(ServerMessage::error(&msg.id, err_internal(e)));
            send_room_reply(session, "", None);
            return;
        }
    };
    if let Err(e) = session.set_room(&**hub, &room, &room_msg.sessionid) {
        session.send_message(ServerMessage::error(&msg.id, err_internal(e)));
        send_room_reply(session, "", None);
        return;
    }
    if !room_msg.sessionid.is_empty() {
        let mut reg = hub.reg.lock();
        reg.room_sessions
            .insert(room_msg.sessionid.clone(), session.public_id.clone());
        reg.room_session_of
            .insert(session.public_id.clone(), room_msg.sessionid.clone());
    }
    hub.reg.lock().anonymous.remove(&conn.id);
    if let Some(perms) = &room_resp.permissions {
        session.set_permissions(perms);
    }
    info!(session = %session.public_id, room = %roomid, "joined room");
    send_room_reply(session, &msg.id, Some(&room));
    let joiner = session.clone();
    let room_id = room.id.clone();
    room.add_session(
        &**hub,
        AnySession::Client(session.clone()),
        room_resp.session.as_deref(),
        move |others| tell_joiner_about_others(&joiner, &room_id, others),
    );
}

/// The backend's answer to a join (internal clients join without asking);
/// `None` after telling the client why the request failed.
async fn ask_backend_to_join(
    hub: &Hub,
    session: &ClientSession,
    room_msg: &proto::client::RoomClientMessage,
    id: &str,
) -> Option<proto::backend::BackendClientResponse> {
    Some(if session.is_internal() {
        proto::backend::BackendClientResponse {
            kind: "room".into(),
            room: Some(proto::backend::RoomResponse {
                roomid: room_msg.roomid.clone(),
                ..Default::default()
            }),
            ..Default::default()
        }
    } else {
        let talk_session = if room_msg.sessionid.is_empty() {
            debug!(session = %session.public_id, "no room session id sent, using the signaling session id");
            session.public_id.to_string()
        } else {
            room_msg.sessionid.clone()
        };
        let req = proto::backend::BackendClientRequest::room(proto::backend::RoomRequest {
            version: proto::backend::BACKEND_VERSION.into(),
            roomid: room_msg.roomid.clone(),
            userid: session.auth_user_id.clone(),
            sessionid: talk_session,
            ..Default::default()
        });
        let res = hub
            .backend_request(
                "room",
                &session.backend_url,
                &req,
                hub.settings.backend_timeout,
            )
            .await;
        match res {
            Ok(r) => r,
            Err(e) => {
                debug!(session = %session.public_id, error = %e, "room join request failed");
                session.send_message(ServerMessage::error(id, err_internal(e)));
                return None;
            }
        }
    })
}

/// A joiner learns who is in the room already (and the flags of virtual
/// sessions, such as a phone participant's mute state).
fn tell_joiner_about_others(joiner: &ClientSession, room_id: &str, others: &[AnySession]) {
    if others.is_empty() {
        return;
    }
    let entries: Vec<SessionEntry> = others
        .iter()
        .map(|s| SessionEntry {
            sessionid: s.public_id().to_string(),
            userid: s.user_id(),
            features: s.features(),
            user: s.user_data(),
            roomsessionid: match s {
                AnySession::Client(c) => c.room_session_id(),
                AnySession::Virtual(_) => String::new(),
            },
        })
        .collect();
    let mut event = EventServerMessage::new("room", "join");
    event.join = Some(entries);
    joiner.send_message(ServerMessage::event(event));
    for s in others {
        if let AnySession::Virtual(v) = s {
            if v.flags() != 0 {
                let mut ev = EventServerMessage::new("participants", "flags");
                ev.flags = Some(proto::client::RoomFlagsEvent {
                    roomid: room_id.to_string(),
                    sessionid: v.public_id.to_string(),
                    flags: v.flags(),
                });
                joiner.send_message(ServerMessage::event(ev));
            }
        }
    }
}

/// Wait until what this node subscribed so far receives the other
/// nodes' publishes (a round trip to NATS; at once on a single server;
/// bounded should NATS break meanwhile).
pub(crate) async fn subscriptions_active(hub: &Hub) {
    if let Some(active) = hub.bus.subscriptions_active() {
        let _ = tokio::time::timeout(crate::bus::SUBSCRIPTIONS_WAIT, active).await;
    }
}

pub(crate) fn get_or_create_room(
    hub: &Arc<Hub>,
    roomid: &str,
    session: &ClientSession,
    properties: Option<proto::Raw>,
) -> Result<(Arc<Room>, bool), crate::bus::BusError> {
    let key = room_key(&session.backend, roomid);
    if let Some(r) = hub.reg.lock().rooms.get(&key) {
        return Ok((r.clone(), false));
    }
    let room = Room::new(hub, roomid, session.backend.clone(), properties)?;
    let mut reg = hub.reg.lock();
    if let Some(r) = reg.rooms.get(&key) {
        return Ok((r.clone(), false));
    }
    reg.rooms.insert(key, room.clone());
    drop(reg);
    hub.metrics.rooms.inc(&[&session.backend.id]);
    Ok((room, true))
}

/// One Talk session, one signaling session: an older session with the same
/// Talk session id is told `room_session_reconnected` and closed.
pub(crate) fn disconnect_by_room_session(hub: &Hub, room_session_id: &str, except: &Arc<str>) {
    let Some(other) = hub.session_for_room_session(room_session_id) else {
        return;
    };
    if other == *except {
        return;
    }
    hub.send_bye_to(&other, "room_session_reconnected");
}

/// Publishing limits of the room's backend, if it sets any (upstream 2.1.0, #1099).
pub(crate) fn room_bandwidth(room: &Room) -> Option<proto::client::RoomBandwidth> {
    let stream = room.backend.max_stream_bitrate.max(0) as u64;
    let screen = room.backend.max_screen_bitrate.max(0) as u64;
    (stream != 0 || screen != 0).then_some(proto::client::RoomBandwidth {
        maxstreambitrate: stream,
        maxscreenbitrate: screen,
    })
}
