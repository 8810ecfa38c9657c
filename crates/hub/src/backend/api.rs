//! What the backend API (`POST /api/v1/room/{roomid}`) does once a request is
//! authenticated: roomlist events to users and sessions, and room-scoped
//! requests published to the room's backend subject so every server applies
//! them.

use proto::backend::BackendServerRoomRequest;
use proto::client::{EventServerMessage, RoomEvent, ServerMessage};
use std::collections::HashSet;
use std::sync::Arc;

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
                None => hub.publish_room_request(backend, roomid, req)?,
            }
        }
        "disinvite" => {
            let d = req.disinvite.as_ref().ok_or_else(|| missing("disinvite"))?;
            let (users, props) = (d.userids.clone(), d.properties.clone());
            let all = d.alluserids.clone();
            // The room sends its update first, then the disinvites of
            // its sessions named in `sessionids`.
            hub.publish_room_request(backend, roomid, req)?;
            send_disinvite(hub, backend, roomid, "disinvited", &users);
            if let Some(all) = all {
                send_roomlist_update(hub, backend, roomid, &users, &all, props);
            }
        }
        "update" => {
            let u = req.update.as_ref().ok_or_else(|| missing("update"))?;
            let (users, props) = (u.userids.clone(), u.properties.clone());
            hub.publish_room_request(backend, roomid, req)?;
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
            hub.publish_room_request(backend, roomid, req)?;
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
            hub.publish_room_request(backend, roomid, req)?;
        }
        "participants" => {
            req.participants
                .as_ref()
                .ok_or_else(|| missing("participants"))?;
            hub.publish_room_request(backend, roomid, req)?;
        }
        "message" => {
            // Like upstream: accepted even without data (the room ignores it).
            hub.publish_room_request(backend, roomid, req)?;
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
            hub.publish_room_request(backend, roomid, req)?;
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
        hub.publish_to_user(backend, u, &msg);
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
        hub.publish_to_user(backend, u, &msg);
    }
}
