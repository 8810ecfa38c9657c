//! `message`, `control` and `transient`: delivery to a session, a user, a
//! room or a call, through the bus.

use crate::bus::{BusMessage, BusPayload};
use crate::core::conn::OutMsg;
use crate::core::session::{
    AnySession, ClientSession, PERMISSION_CONTROL, PERMISSION_TRANSIENT_DATA,
};
use crate::core::Pending;
use crate::Hub;
use proto::client::{
    ClientMessage, Error, MessageServerMessage, Recipient, Sender, ServerMessage, RECIPIENT_CALL,
    RECIPIENT_ROOM, RECIPIENT_SESSION, RECIPIENT_USER,
};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

pub(crate) fn process_message(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    msg: ClientMessage,
    control: bool,
) -> Option<Pending> {
    let body = if control { msg.control } else { msg.message };
    let body = body?;
    // MCU verbs and `unshareScreen` only matter with a media server.
    let mcu_data = if hub.mcu.is_some() && !control {
        crate::mcu::routing::McuData::parse(body.data.as_ref())
    } else {
        None
    };
    if control && !(session.is_internal() || session.has_permission(PERMISSION_CONTROL)) {
        debug!(session = %session.public_id, "ignoring control message without permission");
        return None;
    }
    let (subject, local_only, server_recipient) = match body.recipient.kind.as_str() {
        RECIPIENT_SESSION => {
            let target = &body.recipient.sessionid;
            match route_to_session(hub, session, &msg.id, target, &mcu_data) {
                Ok(r) => (r.subject, r.local_only, r.server_recipient),
                Err(work) => return work,
            }
        }
        RECIPIENT_USER => {
            if body.recipient.userid == session.auth_user_id {
                return None;
            }
            let subject = Arc::from(proto::cluster::encoded_subject(
                "user",
                &body.recipient.userid,
                session.backend.subject_suffix(),
            ));
            (subject, false, None)
        }
        // Call recipients get it on the room subject; sessions that are not
        // in the call drop it (see `ClientSession::on_bus_message`).
        RECIPIENT_ROOM | RECIPIENT_CALL => match session.room() {
            Some(room) => (
                room.subject.clone(),
                !room.reaches_other_nodes(&**hub),
                None,
            ),
            None => return None,
        },
        _ => return None,
    };
    if mcu_data.as_ref().is_some_and(|d| d.kind == "unshareScreen") {
        crate::mcu::routing::schedule_unshare_screen(hub, session);
    }
    let payload = MessageServerMessage {
        sender: Some(Sender {
            kind: body.recipient.kind.clone(),
            sessionid: session.public_id.to_string(),
            userid: session.user_id(),
        }),
        recipient: server_recipient,
        data: body.data,
    };
    let out = if control {
        ServerMessage {
            kind: "control".into(),
            control: Some(payload),
            ..Default::default()
        }
    } else {
        ServerMessage {
            kind: "message".into(),
            message: Some(payload),
            ..Default::default()
        }
    };
    let msg = BusMessage::new(BusPayload::Message(OutMsg::new(out)));
    let sent = if local_only {
        hub.bus.publish_local(&subject, msg)
    } else {
        hub.bus.publish(&subject, msg)
    };
    if let Err(e) = sent {
        warn!(error = %e, "could not publish message");
    }
    None
}

/// Where a message to one session is published.
struct Route {
    subject: Arc<str>,
    /// A session of this server: nobody elsewhere listens on its subject.
    local_only: bool,
    /// Set for a virtual session: its owner (the bridge) gets the message
    /// with the virtual session named as recipient.
    server_recipient: Option<Recipient>,
}

/// Resolve a `session` recipient. `Err(work)` when the message ends here:
/// dropped, or taken by the media layer (which may leave work to run).
fn route_to_session(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    id: &str,
    target: &str,
    mcu_data: &Option<crate::mcu::routing::McuData>,
) -> Result<Route, Option<Pending>> {
    if let Some(data) = mcu_data {
        if let Some(pending) = crate::mcu::routing::intercept_mcu(hub, session, id, target, data) {
            return Err(pending);
        }
    }
    if *target == *session.public_id {
        return Err(None);
    }
    match hub.session_by_public_id(target) {
        Some(AnySession::Client(c)) => {
            if c.backend.id != session.backend.id {
                return Err(None);
            }
            if let Some(data) = mcu_data {
                if crate::mcu::routing::intercept_sendoffer(hub, session, &c, id, data) {
                    return Err(None);
                }
            }
            Ok(Route {
                subject: c.subject.clone(),
                local_only: true,
                server_recipient: None,
            })
        }
        Some(AnySession::Virtual(v)) => {
            if v.backend.id != session.backend.id {
                return Err(None);
            }
            Ok(Route {
                subject: v.owner_subject.clone(),
                local_only: false,
                server_recipient: Some(Recipient {
                    kind: RECIPIENT_SESSION.into(),
                    sessionid: v.session_id.clone(),
                    userid: String::new(),
                }),
            })
        }
        None => match hub.codec.decode_public(target) {
            // A valid id of a session elsewhere in the cluster.
            Ok(data) if data.backend_id == session.backend.id => {
                if mcu_data.as_ref().is_some_and(|d| d.kind == "sendoffer") {
                    debug!(session = %session.public_id, "sendoffer to a session on another server is not supported");
                    return Err(None);
                }
                Ok(Route {
                    subject: Arc::from(proto::cluster::session_subject(target)),
                    local_only: false,
                    server_recipient: None,
                })
            }
            _ => {
                debug!(session = %session.public_id, "message to unknown session dropped");
                Err(None)
            }
        },
    }
}

pub(crate) fn process_transient(hub: &Hub, session: &Arc<ClientSession>, msg: ClientMessage) {
    let Some(t) = msg.transient else { return };
    let Some(room) = session.room() else {
        session.send_message(ServerMessage::error(
            &msg.id,
            Error::new("not_in_room", "No room joined yet."),
        ));
        return;
    };
    let allowed = session.is_internal() || session.has_permission(PERMISSION_TRANSIENT_DATA);
    match t.kind.as_str() {
        "set" | "remove" if !allowed => {
            session.send_message(ServerMessage::error(
                &msg.id,
                Error::new("not_allowed", "Not allowed to update transient data."),
            ));
        }
        "set" => {
            let value = t
                .value
                .and_then(|v| serde_json::from_str::<Value>(v.get()).ok());
            // Go's `time.Duration`: nanoseconds.
            let ttl = t
                .ttl
                .filter(|n| *n > 0)
                .map(|n| Duration::from_nanos(n as u64));
            room.set_transient(hub, &t.key, value, ttl);
        }
        "remove" => room.remove_transient(hub, &t.key),
        _ => session.send_message(ServerMessage::error(
            &msg.id,
            Error::new("ignored", "Unsupported message type."),
        )),
    }
}
