//! Dial-out (upstream 1.2.0, #563; several bridges 2.0.4, #1005): Nextcloud
//! asks us (backend request `dialout`) to start a phone call; we forward it to
//! an internal client that announced `start-dialout` (the SIP bridge) and
//! answer Nextcloud with the call id, or the error, the bridge sends back.
//! Later status updates of the call become transient data of the room
//! (`callstatus_<callid>`), errors a `dialout` message to the room.

use parking_lot::Mutex;
use proto::client::{DialoutInternal, Error, ServerMessage};
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;
use tracing::{debug, info};

use crate::core::backends::Backend;
use crate::core::session::ClientSession;
use crate::Hub;

/// How long a bridge has to accept a call (upstream: 45 s).
pub const START_DIALOUT_TIMEOUT: Duration = Duration::from_secs(45);
/// A call status that ended the call stays this long (upstream: 5 s).
const ENDED_STATUS_TTL: Duration = Duration::from_secs(5);

/// Requests sent to bridges, by request id, waiting for their answer.
#[derive(Default)]
pub struct Dialouts {
    // Plain mutex: insert/remove only, never held across an `.await`.
    waiting: Mutex<HashMap<String, oneshot::Sender<DialoutInternal>>>,
}

/// Status and JSON body of the answer to Nextcloud.
pub type DialoutAnswer = (u16, Value);

fn answer_error(status: u16, e: &Error) -> DialoutAnswer {
    (status, json!({"type": "dialout", "dialout": {"error": e}}))
}

fn is_e164(n: &str) -> bool {
    n.len() >= 3 && n.starts_with('+') && n[1..].bytes().all(|b| b.is_ascii_digit())
}

/// Backend request `dialout`: try each bridge of the backend in turn.
pub async fn start_dialout(
    hub: &Hub,
    backend: &Arc<Backend>,
    roomid: &str,
    req: &proto::backend::RoomDialoutRequest,
) -> DialoutAnswer {
    if req.number.is_empty() {
        return answer_error(400, &Error::new("number_missing", "No number provided"));
    }
    if !is_e164(&req.number) {
        return answer_error(400, &Error::new("invalid_number", "Expected E.164 number."));
    }
    if roomid.is_empty() || !roomid.bytes().all(|b| b.is_ascii_digit()) {
        return answer_error(
            400,
            &Error::new("invalid_roomid", "The room id must be numeric."),
        );
    }
    // A refusal here is not the end: as one server tries every bridge, a
    // cluster goes on with the bridges of the other servers.
    let mut first_error: Option<DialoutAnswer> = None;
    match dialout_here(hub, backend, roomid, req).await {
        Some(answer) if answer.0 == 200 => return answer,
        Some(refused) => first_error = Some(refused),
        None => {}
    }
    // Clustering: a bridge connected to another server.
    if let Some(cluster) = hub.cluster.get() {
        for node in crate::cluster::nodes::nodes_with_bridges(hub, &backend.id) {
            let question = proto::cluster::DialoutRequest {
                node: hub.node_id.to_string(),
                target: node.clone(),
                backend: backend.id.clone(),
                roomid: roomid.to_owned(),
                request: req.clone(),
            };
            let answer: Option<proto::cluster::DialoutAnswer> = cluster
                .ask(
                    proto::cluster::DIALOUT_SUBJECT,
                    &question,
                    hub.live_nodes(),
                    START_DIALOUT_TIMEOUT + Duration::from_secs(5),
                )
                .await;
            match answer {
                Some(a) if a.status == 200 => return (a.status, a.body),
                Some(a) => {
                    debug!(node = %node, status = a.status, "dial-out refused on another server");
                    first_error.get_or_insert((a.status, a.body));
                }
                None => debug!(node = %node, "no dial-out answer from another server"),
            }
        }
    }
    first_error.unwrap_or_else(|| {
        answer_error(
            404,
            &Error::new(
                "no_client_available",
                "No available client found to trigger dialout.",
            ),
        )
    })
}

/// Try the bridges connected here in turn; `None` when there is none.
async fn dialout_here(
    hub: &Hub,
    backend: &Backend,
    roomid: &str,
    req: &proto::backend::RoomDialoutRequest,
) -> Option<DialoutAnswer> {
    let bridges: Vec<Arc<ClientSession>> = crate::cluster::nodes::local_bridges(hub)
        .filter(|s| s.backend.id == backend.id)
        .collect();
    if bridges.is_empty() {
        return None;
    }
    let mut first_error: Option<Error> = None;
    for bridge in bridges {
        match dialout_in_session(hub, &bridge, backend, roomid, req).await {
            Ok(callid) => {
                return Some((
                    200,
                    json!({"type": "dialout", "dialout": {"callid": callid}}),
                ))
            }
            Err(e) => {
                debug!(session = %bridge.public_id, error = %e, "dial-out refused");
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map(|e| answer_error(502, &e))
}

/// Another server chose this one for a dial-out (it has a bridge).
pub(crate) async fn dialout_for_cluster(
    hub: &Hub,
    q: &proto::cluster::DialoutRequest,
) -> Option<proto::cluster::DialoutAnswer> {
    if *q.target != *hub.node_id {
        return None;
    }
    let backend = hub.backends.by_id(&q.backend)?;
    let (status, body) = dialout_here(hub, &backend, &q.roomid, &q.request).await?;
    Some(proto::cluster::DialoutAnswer { status, body })
}

async fn dialout_in_session(
    hub: &Hub,
    bridge: &ClientSession,
    backend: &Backend,
    roomid: &str,
    req: &proto::backend::RoomDialoutRequest,
) -> Result<String, Error> {
    let id = proto::backend::random_hex(32);
    let (tx, rx) = oneshot::channel();
    hub.dialouts.waiting.lock().insert(id.clone(), tx);
    let mut request = json!({"number": req.number});
    if let Some(o) = &req.options {
        request["options"] = json!(o);
    }
    bridge.send_message(ServerMessage {
        id: id.clone(),
        kind: "internal".into(),
        internal: Some(json!({"type": "dialout", "dialout": {
            "roomid": roomid,
            "backend": backend.url,
            "request": request,
        }})),
        ..Default::default()
    });
    info!(session = %bridge.public_id, room = %roomid, "dial-out requested");
    let answer = tokio::time::timeout(START_DIALOUT_TIMEOUT, rx).await;
    hub.dialouts.waiting.lock().remove(&id);
    let answer = match answer {
        Err(_) => {
            return Err(Error::new(
                "timeout",
                "Timeout while waiting for dialout to start.",
            ))
        }
        Ok(Err(_)) => return Err(Error::new("error_notify", "No dialout response received.")),
        Ok(Ok(a)) => a,
    };
    match answer.kind.as_str() {
        "error" => Err(answer
            .error
            .unwrap_or_else(|| Error::new("error_notify", "No dialout response received."))),
        "status" => {
            let status = answer.status.unwrap_or_default();
            if status["status"] != "accepted" {
                return Err(Error::new(
                    "unsupported_status",
                    format!("Unsupported dialout status received: {status}"),
                ));
            }
            Ok(status["callid"].as_str().unwrap_or_default().to_owned())
        }
        other => Err(Error::new(
            "unsupported_type",
            format!("Unsupported dialout type received: {other}"),
        )),
    }
}

/// `internal/dialout` from a bridge: the answer to a request (by message
/// id), and/or a status or error for the room.
pub(crate) fn process_dialout_answer(
    hub: &Hub,
    session: &ClientSession,
    msg_id: &str,
    mut dialout: DialoutInternal,
) {
    let waiter = hub.dialouts.waiting.lock().remove(msg_id);
    let is_error = dialout.kind == "error";
    if let Some(w) = waiter {
        let _ = w.send(dialout.clone());
        // Errors of a request only concern Nextcloud, not the room.
        if is_error {
            return;
        }
    }
    let roomid = std::mem::take(&mut dialout.roomid);
    let Some(room) = hub.room_for(&session.backend, &roomid) else {
        debug!(room = %roomid, "dial-out message for unknown room");
        return;
    };
    if dialout.kind == "status" {
        let Some(status) = dialout.status else { return };
        let callid = status["callid"].as_str().unwrap_or_default().to_owned();
        let ended = matches!(status["status"].as_str(), Some("cleared" | "rejected"));
        let ttl = ended.then_some(ENDED_STATUS_TTL);
        room.set_transient(hub, &format!("callstatus_{callid}"), Some(status), ttl);
    } else {
        room.publish_message(
            hub,
            ServerMessage {
                kind: "dialout".into(),
                dialout: Some(dialout),
                ..Default::default()
            },
        );
    }
}
