//! The MCU objects of one session and the listener through which the media
//! server reaches the session's client.
//!
//! A session holds at most one publisher per stream type and one subscriber
//! per (publisher, stream type), as upstream does. The maps live in the
//! session's state; this module has the pieces that do not need the hub.

use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::{Arc, Weak};
use tracing::{debug, warn};

use proto::client::{MessageServerMessage, Sender, ServerMessage, RECIPIENT_SESSION};

use super::{McuClient, McuListener, StreamType};
use crate::core::session::ClientSession;

pub(crate) type SubscriberKey = (Arc<str>, StreamType);

/// Publishers and subscribers of one session. Empty maps do not allocate,
/// so sessions without media cost nothing here.
#[derive(Default)]
pub(crate) struct McuObjects {
    pub publishers: HashMap<StreamType, Arc<dyn McuClient>>,
    pub subscribers: HashMap<SubscriberKey, Arc<dyn McuClient>>,
    /// Offers the client sent (all streams): tells whether it published
    /// again after it was asked to.
    pub offers: u64,
    /// When the client was last told that a publisher (by session id) left
    /// the call and came back because its media could not be restored.
    pub stall_notices: HashMap<Arc<str>, std::time::Instant>,
    /// Subscribers (by object id) whose offer was pushed to the client
    /// without it asking and that it has not answered yet.
    pub unanswered: std::collections::HashSet<u64>,
    /// Publishers this session's subscribers follow (see
    /// `recovery::follow_publisher`), with the number of the newest follow: an
    /// older one gives way to it.
    pub follows: HashMap<SubscriberKey, u64>,
    pub follow_count: u64,
}

impl McuObjects {
    pub fn is_empty(&self) -> bool {
        self.publishers.is_empty() && self.subscribers.is_empty()
    }

    /// Everything, for closing.
    pub fn take_all(&mut self) -> Vec<Arc<dyn McuClient>> {
        let mut all: Vec<Arc<dyn McuClient>> = self.subscribers.drain().map(|(_, s)| s).collect();
        all.extend(self.publishers.drain().map(|(_, p)| p));
        all
    }

    fn has_subscriber(&self, client: &dyn McuClient) -> bool {
        self.subscribers.values().any(|s| s.id() == client.id())
    }

    fn has_publisher(&self, client: &dyn McuClient) -> bool {
        self.publishers.values().any(|p| p.id() == client.id())
    }

    /// Whether `client` is the session's current publisher or subscriber.
    pub fn is_current(&self, client: &dyn McuClient) -> bool {
        match client.publisher_id() {
            Some(_) => self.has_subscriber(client),
            None => self.has_publisher(client),
        }
    }
}

/// Close MCU objects off the caller's path (they talk to the media server).
pub(crate) fn close_in_background(objects: Vec<Arc<dyn McuClient>>) {
    if objects.is_empty() {
        return;
    }
    tokio::spawn(async move {
        for o in objects {
            o.close().await;
        }
    });
}

/// The `data` of MCU messages to clients (upstream `AnswerOfferMessage`).
#[derive(Serialize)]
struct AnswerOffer<'a> {
    to: &'a str,
    from: &'a str,
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(rename = "roomType")]
    room_type: &'a str,
    payload: &'a Value,
    #[serde(skip_serializing_if = "str::is_empty")]
    sid: &'a str,
}

/// A `message` from session `from` to `to` with MCU data.
pub(crate) fn mcu_message(
    to: &str,
    from: &str,
    from_user: &str,
    kind: &str,
    stream: StreamType,
    payload: &Value,
    sid: &str,
) -> ServerMessage {
    let data = AnswerOffer {
        to,
        from,
        kind,
        room_type: stream.as_str(),
        payload,
        sid,
    };
    ServerMessage {
        kind: "message".into(),
        message: Some(MessageServerMessage {
            sender: Some(Sender {
                kind: RECIPIENT_SESSION.into(),
                sessionid: from.to_owned(),
                userid: from_user.to_owned(),
            }),
            recipient: None,
            data: Some(proto::to_raw(&data)),
        }),
        ..Default::default()
    }
}

/// Routes what the media server does for a session to its client.
pub(crate) struct SessionListener {
    pub session: Weak<ClientSession>,
    /// For the recovery steps (asking to publish again, following a
    /// replaced publisher), which work with the whole hub.
    pub hub: Weak<crate::Hub>,
}

impl McuListener for SessionListener {
    fn on_update_offer(&self, client: &dyn McuClient, offer: Value) {
        let Some(s) = self.session.upgrade() else {
            return;
        };
        if !s.with_mcu(|m| m.has_subscriber(client)) {
            return;
        }
        let from = client.publisher_id().unwrap_or_default();
        s.send_message(mcu_message(
            &s.public_id,
            from,
            "",
            "offer",
            client.stream_type(),
            &offer,
            &client.sid(),
        ));
        if let Some(hub) = self.hub.upgrade() {
            super::recovery::watch_pushed_offer(&hub, &s, client);
        }
    }

    fn on_ice_candidate(&self, client: &dyn McuClient, candidate: Value) {
        let Some(s) = self.session.upgrade() else {
            return;
        };
        let from = match client.publisher_id() {
            Some(p) if s.with_mcu(|m| m.has_subscriber(client)) => p.to_owned(),
            None if s.with_mcu(|m| m.has_publisher(client)) => s.public_id.to_string(),
            _ => {
                debug!(session = %s.public_id, "candidate for an unknown MCU client dropped");
                return;
            }
        };
        s.send_message(mcu_message(
            &s.public_id,
            &from,
            "",
            "candidate",
            client.stream_type(),
            &candidate,
            &client.sid(),
        ));
    }

    fn on_publisher_reset(&self, client: &dyn McuClient) {
        let Some(s) = self.session.upgrade() else {
            return;
        };
        if !s.with_mcu(|m| m.has_publisher(client)) {
            return;
        }
        if let Some(hub) = self.hub.upgrade() {
            super::recovery::ask_to_publish_again(&hub, &s, client.stream_type(), &client.sid());
        }
    }

    fn publisher_closed(&self, client: &dyn McuClient) {
        if let Some(s) = self.session.upgrade() {
            s.with_mcu(|m| m.publishers.retain(|_, p| p.id() != client.id()));
        }
    }

    fn subscriber_closed(&self, client: &dyn McuClient) {
        if let Some(s) = self.session.upgrade() {
            s.with_mcu(|m| m.subscribers.retain(|_, c| c.id() != client.id()));
        }
    }

    fn publisher_lost(&self, client: &dyn McuClient) {
        let Some(s) = self.session.upgrade() else {
            return;
        };
        let was_current = s.with_mcu(|m| {
            let before = m.publishers.len();
            m.publishers.retain(|_, p| p.id() != client.id());
            m.publishers.len() != before
        });
        if !was_current || s.is_closed() {
            return;
        }
        if let Some(hub) = self.hub.upgrade() {
            // The next offer creates a new publisher wherever there is room.
            super::recovery::ask_to_publish_again(&hub, &s, client.stream_type(), &client.sid());
        }
    }

    fn subscriber_stalled(&self, client: &dyn McuClient) {
        let Some(s) = self.session.upgrade() else {
            return;
        };
        if !s.with_mcu(|m| m.has_subscriber(client)) || s.is_closed() {
            return;
        }
        let Some(publisher) = client.publisher_id() else {
            return;
        };
        if let Some(hub) = self.hub.upgrade() {
            super::recovery::tell_media_stalled(&hub, &s, publisher);
        }
    }

    fn subscriber_lost(&self, client: &dyn McuClient) {
        let Some(s) = self.session.upgrade() else {
            return;
        };
        let key = s.with_mcu(|m| {
            let key = m
                .subscribers
                .iter()
                .find(|(_, c)| c.id() == client.id())
                .map(|(k, _)| k.clone());
            if let Some(k) = &key {
                m.subscribers.remove(k);
            }
            key
        });
        // Not current: the session closed or replaced it itself.
        let Some((publisher, stream)) = key else {
            return;
        };
        if s.is_closed() {
            return;
        }
        if let Some(hub) = self.hub.upgrade() {
            super::recovery::follow_publisher(&hub, &s, publisher, stream);
        }
    }
}

/// A `message` to `session` from itself with `data` (no MCU verb).
pub(crate) fn own_message(session: &str, data: Value) -> ServerMessage {
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
pub(crate) fn send_mcu_response(
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
