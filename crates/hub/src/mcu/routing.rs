//! The hub's side of the MCU: which `message`s are MCU verbs, who may send
//! them, which publisher or subscriber they go to, and how the media
//! server's answers travel back (RTE-09/10, JAN-05..15, PERM-04..06).

use serde::Deserialize;
use serde_json::{json, Map, Value};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

use proto::client::{Error, ServerMessage};

use super::sdp::media_types;
use super::session::{close_in_background, mcu_message, SessionListener};
use super::{
    CodecPrefs, McuClient, McuError, McuMessage, MediaTypes, PublisherParams, StreamType,
    SubscriberParams, STALL_NOTICE,
};
use crate::core::session::{
    ClientSession, PERMISSION_PUBLISH_AUDIO, PERMISSION_PUBLISH_MEDIA, PERMISSION_PUBLISH_SCREEN,
    PERMISSION_PUBLISH_VIDEO,
};
use crate::{Hub, Pending};

/// Upstream closes a screen publisher this long after `unshareScreen`
/// (browsers do not always close the peer connection).
pub const UNSHARE_SCREEN_DELAY: Duration = Duration::from_secs(1);

/// After asking a client with `requestoffer` to publish again, how long to
/// wait for its offer before nudging it the way Talk's web client reacts to
/// (see [`Hub::ask_to_publish_again`]).
pub const REPUBLISH_NUDGE_DELAY: Duration = Duration::from_millis(500);

/// A client is told that a publisher's media could not be restored at
/// most this often per publisher.
pub const STALL_NOTICE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a client may take to answer an offer the server pushed to it
/// before it is told that the publisher left and came back.
pub const OFFER_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// How long a session follows a publisher whose stream it lost (publisher
/// replaced, closed by its client, or its media server gone) before giving
/// up on it.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(60);

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

impl Hub {
    /// Called for every session-recipient `message` while an MCU is
    /// configured. `Some(pending)` (or `Some(None)` when handed to a task)
    /// means the message was an MCU verb and is consumed.
    pub(crate) fn intercept_mcu(
        self: &Arc<Self>,
        session: &Arc<ClientSession>,
        msg_id: &str,
        recipient: &str,
        data: &McuData,
    ) -> Option<Option<Pending>> {
        self.mcu.as_ref()?;
        match data.kind.as_str() {
            "requestoffer" => {
                // May wait for the publisher: never block the client's other
                // messages for that.
                let hub = self.clone();
                let fut = hub.process_mcu(
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
                let hub = self.clone();
                Some(Some(Box::pin(hub.process_mcu(
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
        self: &Arc<Self>,
        sender: &Arc<ClientSession>,
        recipient: &Arc<ClientSession>,
        msg_id: &str,
        data: &McuData,
    ) -> bool {
        if self.mcu.is_none() || data.kind != "sendoffer" {
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
        let hub = self.clone();
        tokio::spawn(hub.process_mcu(
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
    pub(crate) fn schedule_unshare_screen(&self, session: &Arc<ClientSession>) {
        if self.mcu.is_none() {
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
    fn is_in_same_call(&self, sender: &ClientSession, recipient: &str) -> bool {
        if sender.is_internal() {
            return true;
        }
        let Some(room) = sender.room() else {
            return false;
        };
        if !room.is_in_call(&sender.public_id) {
            return false;
        }
        let Some(other) = self.session_by_public_id(recipient) else {
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

    /// Upstream `processMcuMessage`: find or create the MCU object of
    /// `session` the verb is for and hand it over. Errors go to `sender`.
    async fn process_mcu(
        self: Arc<Self>,
        sender: Arc<ClientSession>,
        session: Arc<ClientSession>,
        msg_id: String,
        recipient: String,
        data: McuData,
    ) {
        if self.mcu.is_none() {
            return;
        }
        let own = *session.public_id == *recipient;
        let stream = StreamType::parse(&data.room_type);
        let mut payload = data.payload();
        let client: Result<Option<Arc<dyn McuClient>>, McuError> = match data.kind.as_str() {
            "requestoffer" | "sendoffer" => {
                if data.kind == "requestoffer" {
                    if own {
                        debug!(session = %session.public_id, "not requesting an offer from itself");
                        return;
                    }
                    if !self.settings.allow_subscribe_any
                        && !self.is_in_same_call(&sender, &recipient)
                    {
                        info!(session = %session.public_id, publisher = %recipient, "not in the same call, not requesting offer");
                        sender.send_message(ServerMessage::error(
                            &msg_id,
                            err_not_allowed("Not allowed to request offer."),
                        ));
                        return;
                    }
                }
                match stream {
                    Some(stream) => self
                        .get_or_create_subscriber(&session, Arc::from(recipient.as_str()), stream)
                        .await
                        .map(Some),
                    None => Ok(None),
                }
            }
            "offer" => {
                let Some(stream) = stream else {
                    sender.send_message(ServerMessage::error(&msg_id, err_client_not_found()));
                    return;
                };
                let media = match check_offer(&session, stream, &payload) {
                    Ok(m) => m,
                    Err(e) => {
                        info!(session = %session.public_id, stream = stream.as_str(), reason = %e, "offer refused");
                        sender.send_message(ServerMessage::error(
                            &msg_id,
                            err_not_allowed("Not allowed to publish."),
                        ));
                        return;
                    }
                };
                session.with_mcu(|m| m.offers += 1);
                let filter = self.candidate_filter.read().clone();
                if let Some(Value::String(sdp)) = payload.get("sdp") {
                    if let Some(filtered) = filter.filter_sdp(sdp) {
                        payload.insert("sdp".into(), Value::String(filtered));
                    }
                }
                self.get_or_create_publisher(&session, stream, &data, media)
                    .await
                    .map(Some)
            }
            "selectStream" => {
                if own {
                    debug!(session = %session.public_id, "not selecting a stream of its own");
                    return;
                }
                Ok(stream.and_then(|st| {
                    session.with_mcu(|m| {
                        m.subscribers
                            .get(&(Arc::from(recipient.as_str()), st))
                            .cloned()
                    })
                }))
            }
            _ => {
                if data.kind == "candidate" {
                    let filtered = match data.candidate_line() {
                        Some(line) => self.candidate_filter.read().is_filtered(line),
                        None => false,
                    };
                    if filtered {
                        debug!(session = %session.public_id, "candidate filtered");
                        self.metrics_mcu_candidate_filtered();
                        return;
                    }
                }
                if own {
                    if !may_send(&session, &data.room_type) {
                        info!(session = %session.public_id, "not allowed to send candidate");
                        sender.send_message(ServerMessage::error(
                            &msg_id,
                            err_not_allowed("Not allowed to send candidate."),
                        ));
                        return;
                    }
                    Ok(stream.and_then(|st| session.with_mcu(|m| m.publishers.get(&st).cloned())))
                } else {
                    Ok(stream.and_then(|st| {
                        session.with_mcu(|m| {
                            m.subscribers
                                .get(&(Arc::from(recipient.as_str()), st))
                                .cloned()
                        })
                    }))
                }
            }
        };
        let client = match client {
            Ok(Some(c)) => c,
            Ok(None) => {
                debug!(session = %session.public_id, kind = %data.kind, to = %recipient, "no MCU client for message");
                sender.send_message(ServerMessage::error(&msg_id, err_client_not_found()));
                return;
            }
            Err(e) => {
                warn!(session = %session.public_id, kind = %data.kind, to = %recipient, error = %e, "could not create MCU client");
                sender.send_message(ServerMessage::error(&msg_id, err_client_not_found()));
                return;
            }
        };
        if data.kind == "answer" && !own {
            session.with_mcu(|m| m.unanswered.remove(&client.id()));
        }
        let msg = McuMessage {
            kind: data.kind.clone(),
            sid: data.sid.clone(),
            payload,
        };
        let reply_client = client.clone();
        let kind = data.kind.clone();
        let reply = Box::new(move |res: Result<Option<Value>, McuError>| match res {
            Err(e) => {
                warn!(session = %session.public_id, kind = %kind, to = %recipient, error = %e, "MCU message failed");
                sender.send_message(ServerMessage::error(&msg_id, err_processing_failed()));
            }
            Ok(None) => {}
            Ok(Some(jsep)) => {
                // The reply to an offer or request that a newer one already
                // replaced would be applied to the client's newer peer.
                if !session.with_mcu(|m| m.is_current(&*reply_client)) {
                    debug!(session = %session.public_id, kind = %kind, "reply of a replaced MCU client dropped");
                    return;
                }
                send_mcu_response(&session, &*reply_client, &recipient, jsep)
            }
        });
        client.send_message(msg, reply).await;
    }

    /// The client's publisher of `stream` is gone or was rebuilt empty
    /// (its media server restarted or went away): ask the client to publish
    /// again. First with a `requestoffer` from its own session (clients that
    /// know it send a new offer); Talk's clients ignore that, so if no offer
    /// came after [`REPUBLISH_NUDGE_DELAY`], the web client is made to drop
    /// its own dead publisher peer (an `unshareScreen` for `video` from its
    /// own session ends the peer it matches) and is sent the participant
    /// list again, on which it creates a new publisher peer with a new sid
    /// and offers it, retrying every 10 s until answered. Only for `video`
    /// (nothing recreates a web client's screen peer; a failed screen
    /// publisher makes Talk reconnect anyway), only while another participant
    /// is in the call (Talk publishes only then).
    pub(crate) fn ask_to_publish_again(
        self: &Arc<Self>,
        session: &Arc<ClientSession>,
        stream: StreamType,
        sid: &str,
    ) {
        session.send_message(mcu_message(
            &session.public_id,
            &session.public_id,
            "",
            "requestoffer",
            stream,
            &Value::Object(Default::default()),
            sid,
        ));
        if stream != StreamType::Video {
            return;
        }
        let offers = session.with_mcu(|m| m.offers);
        let weak = Arc::downgrade(session);
        let hub = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(REPUBLISH_NUDGE_DELAY).await;
            let (Some(s), Some(hub)) = (weak.upgrade(), hub.upgrade()) else {
                return;
            };
            if s.is_closed() {
                return;
            }
            let (offered, sharing) = s.with_mcu(|m| {
                (
                    m.offers != offers,
                    m.publishers.contains_key(&StreamType::Screen),
                )
            });
            if offered || sharing {
                return;
            }
            let Some(room) = s.room() else { return };
            if !room.is_in_call(&s.public_id) || room.in_call_count() < 2 {
                return;
            }
            info!(session = %s.public_id, "no new offer after requestoffer, nudging the client to publish again");
            if let Some(m) = &hub.mcu_metrics {
                m.republish_nudges_total.inc();
            }
            s.send_message(own_message(
                &s.public_id,
                json!({"type": "unshareScreen", "roomType": "video"}),
            ));
            room.notify_session_resumed(&s);
        });
    }

    /// `session` has dead media from `publisher` that could not be restored
    /// within [`STALL_NOTICE`] (its media server or the publisher is not
    /// back). Errors make no Talk client act, and neither does silence
    /// (a subscriber's own ICE failure takes tens of seconds, and then
    /// only the web and iOS clients ask again), so the client alone is
    /// sent two participants updates with only `publisher`'s entry: out of
    /// the call, then back in. Talk's web client merges them into its list
    /// (the own entry is left out, so it never hangs up), drops the peer
    /// and requests a new offer, retrying every 10 s; iOS retries for 60 s,
    /// Android asks once. At most once per publisher per
    /// [`STALL_NOTICE_INTERVAL`].
    pub(crate) fn tell_media_stalled(&self, session: &Arc<ClientSession>, publisher: &str) {
        if *session.public_id == *publisher || !self.is_in_same_call(session, publisher) {
            return;
        }
        let now = std::time::Instant::now();
        let due = session.with_mcu(|m| {
            let due = m
                .stall_notices
                .get(publisher)
                .is_none_or(|at| now.duration_since(*at) >= STALL_NOTICE_INTERVAL);
            if due {
                m.stall_notices
                    .retain(|_, at| now.duration_since(*at) < STALL_NOTICE_INTERVAL);
                m.stall_notices.insert(publisher.into(), now);
            }
            due
        });
        if !due {
            return;
        }
        let Some(room) = session.room() else { return };
        if room.flap_participant(session, publisher) {
            info!(session = %session.public_id, publisher = %publisher, "media could not be restored, told the client the publisher left and came back");
            if let Some(m) = &self.mcu_metrics {
                m.stall_notices_total.inc();
            }
        }
    }

    /// An offer of `sub` was pushed to `session`'s client without it asking
    /// (its publisher was replaced or rebuilt). A client that does not
    /// answer within [`OFFER_ANSWER_WAIT`] (e.g. one that reuses its dead
    /// peer connection and fails on it) is told like one whose media could
    /// not be restored ([`Hub::tell_media_stalled`]), on which Talk asks for
    /// a new offer.
    pub(crate) fn watch_pushed_offer(
        self: &Arc<Self>,
        session: &Arc<ClientSession>,
        sub: &dyn McuClient,
    ) {
        let Some(publisher) = sub.publisher_id().map(Arc::<str>::from) else {
            return;
        };
        let id = sub.id();
        session.with_mcu(|m| m.unanswered.insert(id));
        let hub = Arc::downgrade(self);
        let weak = Arc::downgrade(session);
        tokio::spawn(async move {
            tokio::time::sleep(OFFER_ANSWER_WAIT).await;
            let (Some(hub), Some(s)) = (hub.upgrade(), weak.upgrade()) else {
                return;
            };
            let unanswered = s.with_mcu(|m| {
                m.unanswered.remove(&id) && m.subscribers.values().any(|c| c.id() == id)
            });
            if unanswered && !s.is_closed() {
                info!(session = %s.public_id, publisher = %publisher, "pushed offer not answered");
                hub.tell_media_stalled(&s, &publisher);
            }
        });
    }

    /// `session` lost its subscriber of `publisher`'s `stream` without
    /// asking (the publisher was replaced or ended, or the media server or
    /// proxy went away). While both stay in the call, subscribe again as
    /// soon as the publisher streams and push the new offer (new sid) to
    /// the client, as if it had asked: Talk's clients replace their peer on
    /// an offer with a new sid. Gives up after [`FOLLOW_WAIT`]; a
    /// `requestoffer` of the client meanwhile takes over.
    pub(crate) fn follow_publisher(
        self: &Arc<Self>,
        session: &Arc<ClientSession>,
        publisher: Arc<str>,
        stream: StreamType,
    ) {
        if self.mcu.is_none() {
            return;
        }
        let hub = Arc::downgrade(self);
        let weak = Arc::downgrade(session);
        tokio::spawn(async move {
            let start = tokio::time::Instant::now();
            let deadline = start + FOLLOW_WAIT;
            let mut told = false;
            let key = (publisher.clone(), stream);
            loop {
                let (Some(hub), Some(s)) = (hub.upgrade(), weak.upgrade()) else {
                    return;
                };
                if s.is_closed() || !hub.is_in_same_call(&s, &publisher) {
                    debug!(session = %s.public_id, publisher = %publisher, "not following a publisher out of the call");
                    return;
                }
                if s.with_mcu(|m| m.subscribers.contains_key(&key)) {
                    // The client asked for it again itself.
                    return;
                }
                let res: Result<(), McuError> = match hub
                    .get_or_create_subscriber(&s, publisher.clone(), stream)
                    .await
                {
                    Ok(sub) => {
                        let (tx, rx) = tokio::sync::oneshot::channel();
                        let msg = McuMessage {
                            kind: "requestoffer".into(),
                            sid: String::new(),
                            payload: Map::new(),
                        };
                        sub.send_message(
                            msg,
                            Box::new(move |r| {
                                let _ = tx.send(r);
                            }),
                        )
                        .await;
                        match rx.await {
                            Ok(Ok(Some(jsep))) => {
                                if s.with_mcu(|m| m.is_current(&*sub)) {
                                    info!(session = %s.public_id, publisher = %publisher, stream = stream.as_str(), sid = %sub.sid(), "following the publisher: new offer");
                                    hub.metrics_mcu_followed(stream);
                                    send_mcu_response(&s, &*sub, &publisher, jsep);
                                    hub.watch_pushed_offer(&s, &*sub);
                                }
                                return;
                            }
                            Ok(Ok(None)) => return,
                            Ok(Err(e)) => {
                                // Not joined: drop it, try again below.
                                let gone = s.with_mcu(|m| {
                                    if m.is_current(&*sub) {
                                        m.subscribers.remove(&key)
                                    } else {
                                        None
                                    }
                                });
                                close_in_background(gone.into_iter().collect());
                                Err(e)
                            }
                            Err(_) => Err(McuError::Closed),
                        }
                    }
                    Err(e) => Err(e),
                };
                if let Err(e) = res {
                    if tokio::time::Instant::now() >= deadline {
                        info!(session = %s.public_id, publisher = %publisher, stream = stream.as_str(), error = %e, "publisher did not come back, not following it any more");
                        return;
                    }
                    debug!(session = %s.public_id, publisher = %publisher, error = %e, "publisher not back yet");
                    if !told && start.elapsed() >= STALL_NOTICE {
                        told = true;
                        hub.tell_media_stalled(&s, &publisher);
                    }
                }
                drop((hub, s));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
    }

    fn metrics_mcu_followed(&self, stream: StreamType) {
        if let Some(m) = &self.mcu_metrics {
            m.followed_total.inc(&[stream.as_str()]);
        }
    }

    fn metrics_mcu_candidate_filtered(&self) {
        if let Some(m) = &self.mcu_metrics {
            m.candidates_filtered.inc();
        }
    }

    async fn get_or_create_publisher(
        &self,
        session: &Arc<ClientSession>,
        stream: StreamType,
        data: &McuData,
        media: MediaTypes,
    ) -> Result<Arc<dyn McuClient>, McuError> {
        let mut replaced = None;
        if let Some(p) = session.with_mcu(|m| m.publishers.get(&stream).cloned()) {
            if data.sid.is_empty() || data.sid == p.sid() {
                // Renegotiation on the same publisher (`update-sdp`, or a
                // client that sends no sid).
                p.set_media(media);
                return Ok(p);
            }
            // A new sid: the client made a new peer connection (Talk does
            // after ICE failed or when it could not get an answer). The old
            // publisher is replaced; out of the map first, so that nothing
            // it still says reaches the client.
            info!(session = %session.public_id, stream = stream.as_str(), old = %p.sid(), new = %data.sid, "offer with a new sid, replacing the publisher");
            session.with_mcu(|m| {
                if m.publishers.get(&stream).is_some_and(|c| c.id() == p.id()) {
                    m.publishers.remove(&stream);
                }
            });
            if let Some(m) = &self.mcu_metrics {
                m.replaced_total.inc(&[stream.as_str()]);
            }
            replaced = Some(p);
        }
        let mcu = self.mcu.clone().ok_or(McuError::NotConnected)?;
        let backend_cap = match stream {
            StreamType::Video => session.backend.max_stream_bitrate,
            StreamType::Screen => session.backend.max_screen_bitrate,
        }
        .max(0) as u64;
        let requested = data
            .bitrate
            .filter(|b| b.is_finite() && *b > 0.0)
            .map(|b| b as u64);
        let bitrate = match (requested, backend_cap) {
            (None, cap) => cap,
            (Some(b), 0) => b,
            (Some(b), cap) => b.min(cap),
        };
        let params = PublisherParams {
            id: session.public_id.clone(),
            sid: data.sid.clone(),
            stream,
            bitrate,
            media,
            codecs: CodecPrefs {
                audio: data.audiocodec.clone().filter(|s| !s.is_empty()),
                video: data.videocodec.clone().filter(|s| !s.is_empty()),
                vp9_profile: data.vp9profile.clone().filter(|s| !s.is_empty()),
                h264_profile: data.h264profile.clone().filter(|s| !s.is_empty()),
            },
            country: None,
            continents: Vec::new(),
        };
        let listener = Arc::new(SessionListener {
            session: Arc::downgrade(session),
        });
        let mut params = params;
        (params.country, params.continents) = self.location(session);
        let publisher = mcu.new_publisher(listener, params).await;
        let replaced_any = replaced.is_some();
        // The replaced one goes either way (its subscribers follow the new
        // one, or the client's next offer).
        close_in_background(replaced.into_iter().collect());
        let publisher = publisher?;
        let prev = session.with_mcu(|m| match m.publishers.get(&stream) {
            Some(prev) => Some(prev.clone()),
            None => {
                m.publishers.insert(stream, publisher.clone());
                None
            }
        });
        if let Some(prev) = prev {
            // Another offer created one meanwhile.
            close_in_background(vec![publisher]);
            return Ok(prev);
        }
        if session.is_closed() {
            let all = session.with_mcu(|m| m.take_all());
            close_in_background(all);
            return Err(McuError::Closed);
        }
        info!(session = %session.public_id, stream = stream.as_str(), "publishing");
        if replaced_any {
            self.announce_publisher_replaced(&session.public_id, stream);
        }
        Ok(publisher)
    }

    /// The client's country (GeoIP, overrides applied) and continents, to
    /// place its streams on a proxy near it.
    fn location(&self, session: &Arc<ClientSession>) -> (Option<String>, Vec<String>) {
        let geoip = self.geoip.read().clone();
        if !geoip.is_enabled() {
            return (None, Vec::new());
        }
        let ip = session
            .conn()
            .and_then(|c| c.remote_addr.parse::<std::net::IpAddr>().ok());
        let country = ip.and_then(|ip| geoip.lookup(ip));
        let continents = country
            .as_ref()
            .map(|c| geoip.client_continents(c))
            .unwrap_or_default();
        (country, continents)
    }

    async fn get_or_create_subscriber(
        &self,
        session: &Arc<ClientSession>,
        publisher: Arc<str>,
        stream: StreamType,
    ) -> Result<Arc<dyn McuClient>, McuError> {
        let key = (publisher.clone(), stream);
        if let Some(s) = session.with_mcu(|m| m.subscribers.get(&key).cloned()) {
            return Ok(s);
        }
        let mcu = self.mcu.clone().ok_or(McuError::NotConnected)?;
        let listener = Arc::new(SessionListener {
            session: Arc::downgrade(session),
        });
        let mut params = SubscriberParams::new(publisher.clone(), stream);
        (params.country, params.continents) = self.location(session);
        if self.session_by_public_id(&publisher).is_none() {
            // Clustering: maybe another server's publisher.
            params.location = self
                .remote_publisher(&publisher, stream, mcu.timeout())
                .await;
        }
        let subscriber = mcu.new_subscriber(listener, params).await?;
        let prev = session.with_mcu(|m| match m.subscribers.get(&key) {
            Some(prev) => Some(prev.clone()),
            None => {
                m.subscribers.insert(key.clone(), subscriber.clone());
                None
            }
        });
        if let Some(prev) = prev {
            close_in_background(vec![subscriber]);
            return Ok(prev);
        }
        if session.is_closed() {
            let all = session.with_mcu(|m| m.take_all());
            close_in_background(all);
            return Err(McuError::Closed);
        }
        debug!(session = %session.public_id, publisher = %key.0, stream = stream.as_str(), "subscribing");
        Ok(subscriber)
    }

    /// PERM-04: after a permission change, close the publishers the session
    /// may no longer feed.
    pub(crate) fn check_publisher_permissions(&self, session: &ClientSession) {
        if self.mcu.is_none() {
            return;
        }
        // Read the permissions first: `with_mcu` holds the state lock.
        let media = session.has_permission(PERMISSION_PUBLISH_MEDIA);
        let audio = session.has_permission(PERMISSION_PUBLISH_AUDIO);
        let video = session.has_permission(PERMISSION_PUBLISH_VIDEO);
        let screen = session.has_permission(PERMISSION_PUBLISH_SCREEN);
        let mut closing = Vec::new();
        session.with_mcu(|m| {
            if !media {
                if let Some(p) = m.publishers.get(&StreamType::Video) {
                    let sends = p.media();
                    if (sends.contains(MediaTypes::AUDIO) && !audio)
                        || (sends.contains(MediaTypes::VIDEO) && !video)
                    {
                        closing.extend(m.publishers.remove(&StreamType::Video));
                    }
                }
            }
            if !screen {
                closing.extend(m.publishers.remove(&StreamType::Screen));
            }
        });
        if !closing.is_empty() {
            info!(session = %session.public_id, count = closing.len(), "permissions revoked, closing publishers");
        }
        close_in_background(closing);
    }
}

/// A `message` to `session` from itself with `data` (no MCU verb).
fn own_message(session: &str, data: Value) -> ServerMessage {
    ServerMessage {
        kind: "message".into(),
        message: Some(proto::client::MessageServerMessage {
            sender: Some(proto::client::Sender {
                kind: proto::client::RECIPIENT_SESSION.into(),
                sessionid: session.to_owned(),
                userid: String::new(),
            }),
            recipient: None,
            data: Some(proto::to_raw(&data)),
        }),
        ..Default::default()
    }
}

/// Upstream `sendMcuMessageResponse`: an answer comes from the session
/// itself, an offer from the publisher it subscribes to.
fn send_mcu_response(
    session: &ClientSession,
    client: &dyn McuClient,
    recipient: &str,
    jsep: Value,
) {
    let kind = jsep.get("type").and_then(Value::as_str).unwrap_or_default();
    let msg = match kind {
        "answer" => mcu_message(
            &session.public_id,
            &session.public_id,
            &session.user_id(),
            "answer",
            client.stream_type(),
            &jsep,
            &client.sid(),
        ),
        "offer" => mcu_message(
            &session.public_id,
            recipient,
            "",
            "offer",
            client.stream_type(),
            &jsep,
            &client.sid(),
        ),
        other => {
            warn!(session = %session.public_id, kind = other, "unsupported MCU response");
            return;
        }
    };
    session.send_message(msg);
}
