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
use tracing::debug;

use proto::client::{MessageServerMessage, Sender, ServerMessage, RECIPIENT_SESSION};

use super::{McuClient, McuListener, StreamType};
use crate::session::ClientSession;

pub(crate) type SubscriberKey = (Arc<str>, StreamType);

/// Publishers and subscribers of one session. Empty maps do not allocate,
/// so sessions without media cost nothing here.
#[derive(Default)]
pub(crate) struct McuObjects {
    pub publishers: HashMap<StreamType, Arc<dyn McuClient>>,
    pub subscribers: HashMap<SubscriberKey, Arc<dyn McuClient>>,
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
        // Ask the client for a new offer on the rebuilt publisher: a
        // `requestoffer` from its own session (see ARCHITECTURE.md).
        s.send_message(mcu_message(
            &s.public_id,
            &s.public_id,
            "",
            "requestoffer",
            client.stream_type(),
            &Value::Object(Default::default()),
            &client.sid(),
        ));
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
}
