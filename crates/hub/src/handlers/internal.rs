//! `internal`: what internal clients (the Talk recording and SIP bridges)
//! may do: virtual sessions, in-call flags, dial-out answers.

use crate::core::session::{virtual_session_key, AnySession, ClientSession, VirtualSession};
use crate::core::Pending;
use crate::Hub;
use proto::client::{ClientMessage, Error, ServerMessage};
use serde_json::Value;
use std::sync::Arc;
use tracing::{debug, info, warn};

pub(crate) fn process_internal(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    msg: ClientMessage,
) -> Option<Pending> {
    if !session.is_internal() {
        debug!(session = %session.public_id, "ignoring internal message from non-internal session");
        return None;
    }
    let internal = msg.internal.as_ref()?;
    match internal.kind.as_str() {
        "addsession" | "removesession" => {
            let hub = hub.clone();
            let session = session.clone();
            Some(Box::pin(async move {
                process_internal_async(&hub, &session, msg).await
            }))
        }
        "updatesession" => {
            let m = internal.updatesession.as_ref()?;
            let room = hub.room_for(&session.backend, &m.roomid)?;
            let key = virtual_session_key(&session.public_id, &m.sessionid);
            let v = hub.reg.lock().virtual_sessions.get(&key).cloned()?;
            if let Some(flags) = m.flags {
                if v.set_flags(flags) {
                    room.publish_flags(&**hub, &v);
                }
            }
            if let Some(incall) = m.incall {
                if v.set_incall(incall) {
                    room.publish_users_changed_with_internal(&**hub);
                }
            }
            None
        }
        "incall" => {
            // Upstream 1.1.0 (#421): the internal client's own call state.
            let flags = internal.incall.as_ref()?.incall;
            if session.set_internal_incall(flags.max(0)) {
                if let Some(room) = session.room() {
                    room.publish_users_changed_with_internal(&**hub);
                }
            }
            None
        }
        "dialout" => {
            crate::dialout::process_dialout_answer(
                hub,
                session,
                &msg.id,
                internal.dialout.clone()?,
            );
            None
        }
        other => {
            debug!(session = %session.public_id, kind = %other, "ignoring unsupported internal message");
            None
        }
    }
}

pub(crate) async fn process_internal_async(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    msg: ClientMessage,
) {
    let Some(internal) = msg.internal else { return };
    if let Some(add) = internal
        .addsession
        .filter(|_| internal.kind == "addsession")
    {
        let Some(room) = hub.room_for(&session.backend, &add.roomid) else {
            debug!(room = %add.roomid, "ignoring addsession for unknown room");
            return;
        };
        let (sid, public_id, private_id) =
            crate::handlers::hello::mint_ids(hub, &session.backend.id);
        if !add_virtual_at_backend(hub, session, &add, &room, &public_id, &msg.id).await {
            return;
        }
        if session.is_closed() {
            return;
        }
        let v = VirtualSession::new(session, sid, public_id.clone(), private_id, &add);
        if let Err(e) = v.subscribe(&**hub) {
            warn!(session = %public_id, error = %e, "virtual session not reachable from other servers");
        }
        {
            let mut reg = hub.reg.lock();
            reg.sessions
                .insert(public_id.clone(), AnySession::Virtual(v.clone()));
            reg.by_sid.insert(sid, public_id.clone());
            reg.virtual_sessions.insert(
                virtual_session_key(&session.public_id, &add.sessionid),
                v.clone(),
            );
        }
        hub.metrics.sessions.inc(&[&session.backend.id, "virtual"]);
        hub.metrics
            .sessions_total
            .inc(&[&session.backend.id, "virtual"]);
        info!(owner = %session.public_id, session = %public_id, flags = v.flags(), "virtual session added");
        session.add_virtual_session(v.clone());
        v.set_room(Some(room.clone()));
        room.add_session(&**hub, AnySession::Virtual(v), None, |_| {});
    } else if let Some(remove) = internal
        .removesession
        .filter(|_| internal.kind == "removesession")
    {
        if hub.room_for(&session.backend, &remove.roomid).is_none() {
            return;
        }
        let key = virtual_session_key(&session.public_id, &remove.sessionid);
        let v = hub.reg.lock().virtual_sessions.remove(&key);
        if let Some(v) = v {
            info!(owner = %session.public_id, session = %v.public_id, "virtual session removed");
            session.remove_virtual_session(&v);
            close_virtual_session(hub, &v, Some((session.clone(), msg.id.clone())));
        }
    }
}

/// Tell Nextcloud about a new virtual session (joining it to the room when
/// the bridge sent actor options, as upstream); `false` after telling the
/// bridge why that failed.
async fn add_virtual_at_backend(
    hub: &Hub,
    session: &ClientSession,
    add: &proto::client::AddSessionInternal,
    room: &crate::core::room::Room,
    public_id: &str,
    id: &str,
) -> bool {
    let add_failed = |m: String| ServerMessage::error(id, Error::new("add_failed", m));
    if let Some(options) = &add.options {
        let req = proto::backend::BackendClientRequest::room(proto::backend::RoomRequest {
            version: proto::backend::BACKEND_VERSION.into(),
            roomid: room.id.clone(),
            userid: add.userid.clone(),
            sessionid: public_id.to_string(),
            actorid: options.actor_id.clone(),
            actortype: options.actor_type.clone(),
            incall: (crate::core::room::FLAG_IN_CALL | crate::core::room::FLAG_WITH_PHONE) as i32,
            ..Default::default()
        });
        let res: Result<proto::backend::BackendClientResponse, _> = hub
            .backend_request(
                "room",
                &session.backend_url,
                &req,
                hub.settings.backend_timeout,
            )
            .await;
        match res {
            Err(e) => {
                debug!(error = %e, "could not join virtual session at backend");
                session.send_message(add_failed("Could not join virtual session.".into()));
                return false;
            }
            Ok(r) if r.kind == "error" => {
                let text = r.error.map(|e| e.message).unwrap_or_default();
                session.send_message(add_failed(text));
                return false;
            }
            Ok(_) => {}
        }
    } else {
        let req = proto::backend::BackendClientRequest::session(proto::backend::SessionRequest {
            version: proto::backend::BACKEND_VERSION.into(),
            roomid: room.id.clone(),
            action: "add".into(),
            sessionid: public_id.to_string(),
            userid: add.userid.clone(),
            user: add.user.as_ref().map(|u| u.to_owned()),
        });
        let res: Result<Value, _> = hub
            .backend_request(
                "session",
                &session.backend_url,
                &req,
                hub.settings.backend_timeout,
            )
            .await;
        if let Err(e) = res {
            debug!(error = %e, "could not add virtual session at backend");
            session.send_message(add_failed("Could not add virtual session.".into()));
            return false;
        }
    }
    true
}

/// Remove a virtual session and tell Nextcloud; errors go to `feedback`.
pub(crate) fn close_virtual_session(
    hub: &Hub,
    v: &Arc<VirtualSession>,
    feedback: Option<(Arc<ClientSession>, String)>,
) {
    let room = v.room();
    let removed = {
        let mut reg = hub.reg.lock();
        reg.virtual_sessions.retain(|_, s| !Arc::ptr_eq(s, v));
        reg.by_sid.remove(&v.sid);
        reg.sessions.remove(&v.public_id).is_some()
    };
    if !removed {
        return;
    }
    hub.metrics.sessions.dec(&[&v.backend.id, "virtual"]);
    hub.session_gone.notify_waiters();
    v.unsubscribe();
    v.set_room(None);
    let Some(room) = room else { return };
    room.remove_session(hub, &v.public_id);
    let Some(hub) = hub.arc() else { return };
    let v = v.clone();
    tokio::spawn(async move {
        let remove_failed = |m: &str| {
            if let Some((s, id)) = &feedback {
                s.send_message(ServerMessage::error(id, Error::new("remove_failed", m)));
            }
        };
        let timeout = hub.settings.backend_timeout;
        if let Some(options) = &v.options {
            let req = proto::backend::BackendClientRequest::room(proto::backend::RoomRequest {
                version: proto::backend::BACKEND_VERSION.into(),
                roomid: room.id.clone(),
                action: "leave".into(),
                userid: v.user_id.clone(),
                sessionid: v.public_id.to_string(),
                actorid: options.actor_id.clone(),
                actortype: options.actor_type.clone(),
                ..Default::default()
            });
            let res: Result<proto::backend::BackendClientResponse, _> = hub
                .backend_request("room", &v.backend_url, &req, timeout)
                .await;
            match res {
                Err(_) => remove_failed("Could not remove virtual session from backend."),
                Ok(r) if r.kind == "error" => {
                    remove_failed(&r.error.map(|e| e.message).unwrap_or_default())
                }
                Ok(_) => {}
            }
        } else {
            let req =
                proto::backend::BackendClientRequest::session(proto::backend::SessionRequest {
                    version: proto::backend::BACKEND_VERSION.into(),
                    roomid: room.id.clone(),
                    action: "remove".into(),
                    sessionid: v.public_id.to_string(),
                    ..Default::default()
                });
            let res: Result<Value, _> = hub
                .backend_request("session", &v.backend_url, &req, timeout)
                .await;
            if res.is_err() {
                remove_failed("Could not remove virtual session from backend.");
            }
        }
    });
}
