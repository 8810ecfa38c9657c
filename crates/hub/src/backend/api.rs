//! What the backend API (`POST /api/v1/room/{roomid}`) does once a request is
//! authenticated: roomlist events to users and sessions, and room-scoped
//! requests published to the room's backend subject so every server applies
//! them.

use proto::backend::BackendServerRoomRequest;
use proto::client::{EventServerMessage, RoomEvent, ServerMessage};
use std::collections::HashSet;
use std::sync::Arc;

use crate::bus::{BusMessage, BusPayload};
use crate::core::backends::Backend;
use crate::core::conn::OutMsg;
use crate::core::room::switchto_targets;
use crate::Hub;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Answered with 400.
    #[error("{0}")]
    BadRequest(String),
    /// Answered with 500.
    #[error("error while processing")]
    Publish(#[from] crate::bus::BusError),
}

/// Apply one backend room request. `req.received` must already be set.
pub fn handle_room_request(
    hub: &Hub,
    backend: &Arc<Backend>,
    roomid: &str,
    req: BackendServerRoomRequest,
) -> Result<(), ApiError> {
    let missing = |what: &str| ApiError::BadRequest(format!("{what} missing"));
    // Talk with `changed-users` leaves out the lists of every user
    // (`alluserids`, `userids` of update and delete): then the members
    // of the room are told, by every server hosting it.
    match req.kind.as_str() {
        "invite" => {
            let inv = req.invite.as_ref().ok_or_else(|| missing("invite"))?;
            let (users, props) = (inv.userids.clone(), inv.properties.clone());
            let all = inv.alluserids.clone();
            send_roomlist(hub, "invite", backend, roomid, &users, props.clone());
            match all {
                Some(all) => send_roomlist_update(hub, backend, roomid, &users, &all, props),
                None => publish_room_request(hub, backend, roomid, req)?,
            }
        }
        "disinvite" => {
            let d = req.disinvite.as_ref().ok_or_else(|| missing("disinvite"))?;
            let (users, props) = (d.userids.clone(), d.properties.clone());
            let all = d.alluserids.clone();
            // The room sends its update first, then the disinvites of
            // its sessions named in `sessionids`.
            publish_room_request(hub, backend, roomid, req)?;
            send_disinvite(hub, backend, roomid, "disinvited", &users);
            if let Some(all) = all {
                send_roomlist_update(hub, backend, roomid, &users, &all, props);
            }
        }
        "update" => {
            let u = req.update.as_ref().ok_or_else(|| missing("update"))?;
            let (users, props) = (u.userids.clone(), u.properties.clone());
            publish_room_request(hub, backend, roomid, req)?;
            if let Some(users) = users {
                send_roomlist_update(hub, backend, roomid, &[], &users, props);
            }
        }
        "delete" => {
            let mut req = req;
            let users = req
                .delete
                .get_or_insert_with(Default::default)
                .userids
                .clone();
            publish_room_request(hub, backend, roomid, req)?;
            send_disinvite(
                hub,
                backend,
                roomid,
                "deleted",
                users.as_deref().unwrap_or_default(),
            );
        }
        // Talk session ids are translated by the room on each server
        // (it knows its own sessions and, clustered, the others').
        "incall" => {
            req.incall.as_ref().ok_or_else(|| missing("incall"))?;
            publish_room_request(hub, backend, roomid, req)?;
        }
        "participants" => {
            req.participants
                .as_ref()
                .ok_or_else(|| missing("participants"))?;
            publish_room_request(hub, backend, roomid, req)?;
        }
        "message" => {
            // Like upstream: accepted even without data (the room ignores it).
            publish_room_request(hub, backend, roomid, req)?;
        }
        "dialout" => {
            // Answered by `start_dialout` (it waits for the bridge).
            return Err(ApiError::BadRequest(
                "dialout must be started asynchronously".into(),
            ));
        }
        "switchto" => {
            let sw = req.switchto.as_ref().ok_or_else(|| missing("switchto"))?;
            switchto_targets(sw).map_err(|e| ApiError::BadRequest(e.to_string()))?;
            publish_room_request(hub, backend, roomid, req)?;
        }
        other => {
            return Err(ApiError::BadRequest(format!(
                "Unsupported request type: {other}"
            )))
        }
    }
    Ok(())
}

/// `switchto`: each listed Talk session (a list, or a map to per-session
/// details) gets `event/room/switchto` on its own subject, so nobody
/// learns where the others go.
fn send_roomlist(
    hub: &Hub,
    kind: &str,
    backend: &Backend,
    roomid: &str,
    users: &[String],
    properties: Option<proto::Raw>,
) {
    if users.is_empty() {
        return;
    }
    let mut event = EventServerMessage::new("roomlist", kind);
    let body = RoomEvent {
        roomid: roomid.to_owned(),
        properties,
        ..Default::default()
    };
    match kind {
        "invite" => event.invite = Some(body),
        _ => event.update = Some(body),
    }
    let msg = OutMsg::new(ServerMessage::event(event));
    for u in users {
        publish_to_user(hub, backend, u, &msg);
    }
}

/// `update` to everyone in `all` who was not just notified otherwise.
fn send_roomlist_update(
    hub: &Hub,
    backend: &Backend,
    roomid: &str,
    notified: &[String],
    all: &[String],
    properties: Option<proto::Raw>,
) {
    let notified: HashSet<&String> = notified.iter().collect();
    let users: Vec<String> = all
        .iter()
        .filter(|u| !notified.contains(u))
        .cloned()
        .collect();
    send_roomlist(hub, "update", backend, roomid, &users, properties);
}

/// `roomlist`/`disinvite` to every session of `users` (sessions named
/// by Talk session id are handled by the room, on each server).
fn send_disinvite(hub: &Hub, backend: &Backend, roomid: &str, reason: &str, users: &[String]) {
    if users.is_empty() {
        return;
    }
    let msg = OutMsg::new(ServerMessage::event(crate::core::room::disinvite_event(
        roomid, reason,
    )));
    for u in users {
        publish_to_user(hub, backend, u, &msg);
    }
}

/// Publish a message to every session of a user.
pub fn publish_to_user(
    hub: &Hub,
    backend: &crate::core::backends::Backend,
    user_id: &str,
    msg: &Arc<OutMsg>,
) {
    let subject = proto::cluster::encoded_subject("user", user_id, backend.subject_suffix());
    let _ = hub
        .bus
        .publish(&subject, BusMessage::new(BusPayload::Message(msg.clone())));
}

pub fn publish_to_session(hub: &Hub, public_id: &str, payload: BusPayload) {
    let _ = hub.bus.publish(
        &proto::cluster::session_subject(public_id),
        BusMessage::new(payload),
    );
}

pub fn publish_room_request(
    hub: &Hub,
    backend: &crate::core::backends::Backend,
    roomid: &str,
    req: proto::backend::BackendServerRoomRequest,
) -> Result<(), crate::bus::BusError> {
    let subject = crate::core::room::backend_room_subject(backend, roomid);
    hub.bus
        .publish(&subject, BusMessage::new(BusPayload::Room(Arc::new(req))))
}
