//! The hub's side of the MCU: which `message`s are MCU verbs, who may send
//! them, which publisher or subscriber they go to, and how the media
//! server's answers travel back (RTE-09/10, JAN-05..15, PERM-04..06).

use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

use proto::client::{Error, ServerMessage};

use super::objects::{get_or_create_publisher, get_or_create_subscriber};
use super::sdp::media_types;
use super::session::send_mcu_response;
use super::{McuClient, McuError, McuMessage, MediaTypes, StreamType};
use crate::core::session::{
    ClientSession, PERMISSION_PUBLISH_AUDIO, PERMISSION_PUBLISH_MEDIA, PERMISSION_PUBLISH_SCREEN,
    PERMISSION_PUBLISH_VIDEO,
};
use crate::{Hub, Pending};

/// Upstream closes a screen publisher this long after `unshareScreen`
/// (browsers do not always close the peer connection).
pub const UNSHARE_SCREEN_DELAY: Duration = Duration::from_secs(1);

fn err_not_allowed(reason: &str) -> Error {
    Error::new("not_allowed", reason)
}
fn err_client_not_found() -> Error {
    Error::new(
        "client_not_found",
        "No MCU client found to send message to.",
    )
}
fn err_processing_failed() -> Error {
    Error::new(
        "processing_failed",
        "Processing of the message failed, please check server logs.",
    )
}

/// The parts of a message's `data` the MCU reads (upstream
/// `MessageClientMessageData`). Data that does not have this shape is not an
/// MCU message and is forwarded like any other.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct McuData {
    #[serde(rename = "type", default)]
    pub kind: String,
    #[serde(default)]
    pub sid: String,
    #[serde(rename = "roomType", default)]
    pub room_type: String,
    #[serde(default)]
    pub payload: Option<Map<String, Value>>,
    #[serde(default)]
    pub bitrate: Option<f64>,
    #[serde(default)]
    pub audiocodec: Option<String>,
    #[serde(default)]
    pub videocodec: Option<String>,
    #[serde(default)]
    pub vp9profile: Option<String>,
    #[serde(default)]
    pub h264profile: Option<String>,
}

impl McuData {
    /// `None` unless `data` is an MCU verb, `sendoffer` or `unshareScreen`.
    /// Every session and room message passes here while an MCU is
    /// configured, so the type is read first without allocating, and only
    /// those few kinds are decoded in full (payload maps included).
    pub fn parse(data: Option<&proto::Raw>) -> Option<McuData> {
        #[derive(Deserialize)]
        struct Kind<'a> {
            #[serde(rename = "type", borrow, default)]
            kind: Option<std::borrow::Cow<'a, str>>,
        }
        let text = data?.get();
        let kind = serde_json::from_str::<Kind>(text).ok()?.kind?;
        if !(super::VERBS.contains(&&*kind) || kind == "unshareScreen") {
            return None;
        }
        serde_json::from_str(text).ok()
    }

    fn payload(&self) -> Map<String, Value> {
        self.payload.clone().unwrap_or_default()
    }

    fn candidate_line(&self) -> Option<&str> {
        self.payload
            .as_ref()?
            .get("candidate")?
            .get("candidate")?
            .as_str()
    }
}

/// Why a publish attempt is refused (PERM-05).
enum Deny {
    Permission(&'static str),
    Sdp(String),
}

impl std::fmt::Display for Deny {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Deny::Permission(p) => write!(f, "permission {p:?} missing"),
            Deny::Sdp(e) => write!(f, "{e}"),
        }
    }
}

/// What `session` may publish with this offer (PERM-05): screen needs
/// `publish-screen`; otherwise `publish-media` allows everything, or each
/// audio/video m-line needs its own permission. The SDP is checked for both
/// stream types, so garbage never reaches Janus.
fn check_offer(
    session: &ClientSession,
    stream: StreamType,
    payload: &Map<String, Value>,
) -> Result<MediaTypes, Deny> {
    let sdp = payload
        .get("sdp")
        .and_then(Value::as_str)
        .ok_or_else(|| Deny::Sdp("payload does not contain a valid sdp".into()))?;
    let media = media_types(sdp).map_err(|e| Deny::Sdp(e.to_string()))?;
    if stream == StreamType::Screen {
        if !session.has_permission(PERMISSION_PUBLISH_SCREEN) {
            return Err(Deny::Permission(PERMISSION_PUBLISH_SCREEN));
        }
        return Ok(MediaTypes::SCREEN);
    }
    if !session.has_permission(PERMISSION_PUBLISH_MEDIA) {
        if media.contains(MediaTypes::AUDIO) && !session.has_permission(PERMISSION_PUBLISH_AUDIO) {
            return Err(Deny::Permission(PERMISSION_PUBLISH_AUDIO));
        }
        if media.contains(MediaTypes::VIDEO) && !session.has_permission(PERMISSION_PUBLISH_VIDEO) {
            return Err(Deny::Permission(PERMISSION_PUBLISH_VIDEO));
        }
    }
    Ok(media)
}

/// Upstream's `IsAllowedToSend` for verbs other than offers (candidates,
/// `sendoffer`): screen needs `publish-screen`, anything else one of the
/// media permissions.
fn may_send(session: &ClientSession, stream: &str) -> bool {
    if stream == "screen" {
        return session.has_permission(PERMISSION_PUBLISH_SCREEN);
    }
    session.has_permission(PERMISSION_PUBLISH_MEDIA)
        || session.has_permission(PERMISSION_PUBLISH_AUDIO)
        || session.has_permission(PERMISSION_PUBLISH_VIDEO)
}

/// Called for every session-recipient `message` while an MCU is
/// configured. `Some(pending)` (or `Some(None)` when handed to a task)
/// means the message was an MCU verb and is consumed.
pub(crate) fn intercept_mcu(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    msg_id: &str,
    recipient: &str,
    data: &McuData,
) -> Option<Option<Pending>> {
    hub.mcu.as_ref()?;
    match data.kind.as_str() {
        "requestoffer" => {
            // May wait for the publisher: never block the client's other
            // messages for that.
            let hub = hub.clone();
            let fut = process_mcu(
                hub,
                session.clone(),
                session.clone(),
                msg_id.to_owned(),
                recipient.to_owned(),
                data.clone(),
            );
            tokio::spawn(fut);
            Some(None)
        }
        "offer" | "answer" | "endOfCandidates" | "selectStream" | "candidate" => {
            let hub = hub.clone();
            Some(Some(Box::pin(process_mcu(
                hub,
                session.clone(),
                session.clone(),
                msg_id.to_owned(),
                recipient.to_owned(),
                data.clone(),
            ))))
        }
        _ => None,
    }
}

/// `sendoffer` to a local session: the sender pushes its stream to the
/// recipient (JAN-10). Returns true when consumed.
pub(crate) fn intercept_sendoffer(
    hub: &Arc<Hub>,
    sender: &Arc<ClientSession>,
    recipient: &Arc<ClientSession>,
    msg_id: &str,
    data: &McuData,
) -> bool {
    if hub.mcu.is_none() || data.kind != "sendoffer" {
        return false;
    }
    if !may_send(sender, &data.room_type) {
        info!(session = %sender.public_id, stream = %data.room_type, "not allowed to send offer");
        sender.send_message(ServerMessage::error(
            msg_id,
            err_not_allowed("Not allowed to send offer"),
        ));
        return true;
    }
    let hub = hub.clone();
    tokio::spawn(process_mcu(
        hub,
        sender.clone(),
        recipient.clone(),
        msg_id.to_owned(),
        sender.public_id.to_string(),
        data.clone(),
    ));
    true
}

/// `unshareScreen` (RTE-09): close the sender's screen publisher a
/// moment later, in case the browser keeps the peer connection open.
pub(crate) fn schedule_unshare_screen(hub: &Hub, session: &Arc<ClientSession>) {
    if hub.mcu.is_none() {
        return;
    }
    let weak = Arc::downgrade(session);
    tokio::spawn(async move {
        tokio::time::sleep(UNSHARE_SCREEN_DELAY).await;
        let Some(s) = weak.upgrade() else { return };
        let publisher = s.with_mcu(|m| m.publishers.remove(&StreamType::Screen));
        if let Some(p) = publisher {
            info!(session = %s.public_id, "closing screen publisher after unshareScreen");
            p.close().await;
        }
    });
}

/// Upstream `isInSameCall` (PERM-06).
pub(super) fn is_in_same_call(hub: &Hub, sender: &ClientSession, recipient: &str) -> bool {
    if sender.is_internal() {
        return true;
    }
    let Some(room) = sender.room() else {
        return false;
    };
    if !room.is_in_call(&sender.public_id) {
        return false;
    }
    let Some(other) = hub.session_by_public_id(recipient) else {
        // Clustering: a member of the room through another server.
        return room.is_remote_member(recipient) && room.is_in_call(recipient);
    };
    let Some(other_room) = other.room() else {
        return false;
    };
    if !Arc::ptr_eq(&room, &other_room) {
        return false;
    }
    other.is_internal() || other_room.is_in_call(other.public_id())
}

/// One MCU verb of `session` for `recipient` (errors go to `sender`).
struct Verb {
    hub: Arc<Hub>,
    sender: Arc<ClientSession>,
    session: Arc<ClientSession>,
    msg_id: String,
    recipient: String,
    data: McuData,
}

impl Verb {
    fn own(&self) -> bool {
        *self.session.public_id == *self.recipient
    }

    fn stream(&self) -> Option<StreamType> {
        StreamType::parse(&self.data.room_type)
    }

    fn fail(&self, error: Error) {
        self.sender
            .send_message(ServerMessage::error(&self.msg_id, error));
    }

    /// The session's subscriber of the recipient's stream.
    fn subscriber(&self) -> Option<Arc<dyn McuClient>> {
        let key = (Arc::from(self.recipient.as_str()), self.stream()?);
        self.session.with_mcu(|m| m.subscribers.get(&key).cloned())
    }

    /// `requestoffer` / `sendoffer`: the subscriber, created if needed.
    /// `None`: answered already (refused or ignored).
    async fn offer_request_target(&self) -> Option<Result<Option<Arc<dyn McuClient>>, McuError>> {
        let (hub, session, recipient) = (&self.hub, &self.session, &self.recipient);
        if self.data.kind == "requestoffer" {
            if self.own() {
                debug!(session = %session.public_id, "not requesting an offer from itself");
                return None;
            }
            if !hub.settings.allow_subscribe_any && !is_in_same_call(hub, &self.sender, recipient) {
                info!(session = %session.public_id, publisher = %recipient, "not in the same call, not requesting offer");
                self.fail(err_not_allowed("Not allowed to request offer."));
                return None;
            }
        }
        Some(match self.stream() {
            Some(stream) => {
                get_or_create_subscriber(hub, session, Arc::from(recipient.as_str()), stream)
                    .await
                    .map(Some)
            }
            None => Ok(None),
        })
    }

    /// `offer`: the session's publisher, created (or replaced, with a new
    /// sid) if needed; the SDP in `payload` is filtered.
    async fn offer_target(
        &self,
        payload: &mut Map<String, Value>,
    ) -> Option<Result<Option<Arc<dyn McuClient>>, McuError>> {
        let (hub, session) = (&self.hub, &self.session);
        let Some(stream) = self.stream() else {
            self.fail(err_client_not_found());
            return None;
        };
        let media = match check_offer(session, stream, payload) {
            Ok(m) => m,
            Err(e) => {
                info!(session = %session.public_id, stream = stream.as_str(), reason = %e, "offer refused");
                self.fail(err_not_allowed("Not allowed to publish."));
                return None;
            }
        };
        session.with_mcu(|m| m.offers += 1);
        let filter = hub.candidate_filter.read().clone();
        if let Some(Value::String(sdp)) = payload.get("sdp") {
            if let Some(filtered) = filter.filter_sdp(sdp) {
                payload.insert("sdp".into(), Value::String(filtered));
            }
        }
        Some(
            get_or_create_publisher(hub, session, stream, &self.data, media)
                .await
                .map(Some),
        )
    }

    /// `answer`, `candidate`, `endOfCandidates`, `selectStream`: an
    /// existing publisher or subscriber.
    fn existing_target(&self) -> Option<Option<Arc<dyn McuClient>>> {
        let (hub, session) = (&self.hub, &self.session);
        if self.data.kind == "selectStream" {
            if self.own() {
                debug!(session = %session.public_id, "not selecting a stream of its own");
                return None;
            }
            return Some(self.subscriber());
        }
        if self.data.kind == "candidate" {
            let filtered = match self.data.candidate_line() {
                Some(line) => hub.candidate_filter.read().is_filtered(line),
                None => false,
            };
            if filtered {
                debug!(session = %session.public_id, "candidate filtered");
                metrics_mcu_candidate_filtered(hub);
                return None;
            }
        }
        if !self.own() {
            return Some(self.subscriber());
        }
        if !may_send(session, &self.data.room_type) {
            info!(session = %session.public_id, "not allowed to send candidate");
            self.fail(err_not_allowed("Not allowed to send candidate."));
            return None;
        }
        let stream = self.stream();
        Some(stream.and_then(|st| session.with_mcu(|m| m.publishers.get(&st).cloned())))
    }
}

/// Upstream `processMcuMessage`: find or create the MCU object of
/// `session` the verb is for and hand it over. Errors go to `sender`.
async fn process_mcu(
    hub: Arc<Hub>,
    sender: Arc<ClientSession>,
    session: Arc<ClientSession>,
    msg_id: String,
    recipient: String,
    data: McuData,
) {
    if hub.mcu.is_none() {
        return;
    }
    let mut payload = data.payload();
    let verb = Verb {
        hub,
        sender,
        session,
        msg_id,
        recipient,
        data,
    };
    let target = match verb.data.kind.as_str() {
        "requestoffer" | "sendoffer" => verb.offer_request_target().await,
        "offer" => verb.offer_target(&mut payload).await,
        _ => verb.existing_target().map(Ok),
    };
    let Some(client) = target else { return };
    let client = match client {
        Ok(Some(c)) => c,
        Ok(None) => {
            debug!(session = %verb.session.public_id, kind = %verb.data.kind, to = %verb.recipient, "no MCU client for message");
            verb.fail(err_client_not_found());
            return;
        }
        Err(e) => {
            warn!(session = %verb.session.public_id, kind = %verb.data.kind, to = %verb.recipient, error = %e, "could not create MCU client");
            verb.fail(err_client_not_found());
            return;
        }
    };
    if verb.data.kind == "answer" && !verb.own() {
        verb.session.with_mcu(|m| m.unanswered.remove(&client.id()));
    }
    let msg = McuMessage {
        kind: verb.data.kind.clone(),
        sid: verb.data.sid.clone(),
        payload,
    };
    let reply_client = client.clone();
    let reply = Box::new(move |res: Result<Option<Value>, McuError>| match res {
        Err(e) => {
            warn!(session = %verb.session.public_id, kind = %verb.data.kind, to = %verb.recipient, error = %e, "MCU message failed");
            verb.fail(err_processing_failed());
        }
        Ok(None) => {}
        Ok(Some(jsep)) => {
            // The reply to an offer or request that a newer one already
            // replaced would be applied to the client's newer peer.
            if !verb.session.with_mcu(|m| m.is_current(&*reply_client)) {
                debug!(session = %verb.session.public_id, kind = %verb.data.kind, "reply of a replaced MCU client dropped");
                return;
            }
            send_mcu_response(&verb.session, &*reply_client, &verb.recipient, jsep)
        }
    });
    client.send_message(msg, reply).await;
}

fn metrics_mcu_candidate_filtered(hub: &Hub) {
    if let Some(m) = &hub.mcu_metrics {
        m.candidates_filtered.inc();
    }
}
