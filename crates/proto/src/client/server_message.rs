//! Server -> client: [`ServerMessage`] and the parts it carries.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use super::{DialoutInternal, Recipient};
use crate::Raw;

/// Append `s` as a JSON string. Ids are base64url and need no escaping;
/// anything else goes through serde's escaper.
fn push_json_str(out: &mut String, s: &str) {
    const fn plain_table() -> [bool; 256] {
        let mut t = [false; 256];
        let mut i = 0;
        while i < 256 {
            let b = i as u8;
            t[i] = b.is_ascii_alphanumeric()
                || matches!(b, b'-' | b'_' | b'=' | b'.' | b'@' | b' ' | b'|');
            i += 1;
        }
        t
    }
    static PLAIN: [bool; 256] = plain_table();
    if s.bytes().all(|b| PLAIN[b as usize]) {
        out.push('"');
        out.push_str(s);
        out.push('"');
    } else if let Ok(escaped) = serde_json::to_string(s) {
        out.push_str(&escaped);
    } else {
        out.push_str("\"\"");
    }
}

/// The error object of an `error` message.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
pub struct Error {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Error {
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        Error {
            code: code.into(),
            message: message.into(),
            details: None,
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for Error {}

/// A message sent to a client. Built once and serialised once, whatever the
/// number of recipients.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ServerMessage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub welcome: Option<WelcomeServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<HelloServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bye: Option<ByeServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<MessageServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventServerMessage>,
    #[serde(default, rename = "transient", skip_serializing_if = "Option::is_none")]
    pub transient: Option<TransientDataServerMessage>,
    /// Requests to internal clients (dial-out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<serde_json::Value>,
    /// Dial-out status/error relayed to a room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialout: Option<DialoutInternal>,
}

/// Sent right after connecting (upstream 1.0.0, #288): clients learn the
/// features, e.g. `hello-v2`, before they authenticate.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct WelcomeServerMessage {
    pub version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
}

impl ServerMessage {
    pub fn error(id: &str, err: Error) -> Self {
        ServerMessage {
            id: id.to_owned(),
            kind: "error".into(),
            error: Some(err),
            ..Default::default()
        }
    }
    pub fn bye(reason: &str) -> Self {
        ServerMessage {
            kind: "bye".into(),
            bye: Some(ByeServerMessage {
                reason: reason.to_owned(),
            }),
            ..Default::default()
        }
    }
    pub fn room(id: &str, roomid: &str, properties: Option<Raw>) -> Self {
        ServerMessage {
            id: id.to_owned(),
            kind: "room".into(),
            room: Some(RoomServerMessage {
                roomid: roomid.to_owned(),
                properties,
                bandwidth: None,
            }),
            ..Default::default()
        }
    }
    pub fn event(event: EventServerMessage) -> Self {
        ServerMessage {
            kind: "event".into(),
            event: Some(event),
            ..Default::default()
        }
    }
    pub fn transient(t: TransientDataServerMessage) -> Self {
        ServerMessage {
            kind: "transient".into(),
            transient: Some(t),
            ..Default::default()
        }
    }

    /// Serialise to the text of one WebSocket frame.
    ///
    /// Session-to-session `message`/`control` frames are the bulk of all
    /// traffic; they are written by hand (byte-identical to serde's output,
    /// see the tests) because serde escapes every byte of the long session
    /// ids, which showed up as the largest single cost in profiles.
    pub fn to_text(&self) -> String {
        if let Some(text) = self.fast_text() {
            return text;
        }
        let mut buf = Vec::with_capacity(256);
        // Our own structures always serialise; the fallback keeps the wire valid.
        match serde_json::to_writer(&mut buf, self) {
            Ok(()) => String::from_utf8(buf).unwrap_or_default(),
            Err(_) => r#"{"type":"error","error":{"code":"internal_error","message":"could not serialize"}}"#
                .to_owned(),
        }
    }

    pub(super) fn fast_text(&self) -> Option<String> {
        let (key, body) = match (self.kind.as_str(), &self.message, &self.control) {
            ("message", Some(m), None) => ("message", m),
            ("control", None, Some(m)) => ("control", m),
            _ => return None,
        };
        if !self.id.is_empty()
            || self.error.is_some()
            || self.hello.is_some()
            || self.bye.is_some()
            || self.room.is_some()
            || self.event.is_some()
            || self.transient.is_some()
        {
            return None;
        }
        let sender = body.sender.as_ref()?;
        let data = body.data.as_ref().map_or("null", |d| d.get());
        let mut out =
            String::with_capacity(96 + sender.sessionid.len() + sender.userid.len() + data.len());
        out.push_str(r#"{"type":""#);
        out.push_str(key);
        out.push_str(r#"",""#);
        out.push_str(key);
        out.push_str(r#"":{"sender":{"type":"#);
        push_json_str(&mut out, &sender.kind);
        if !sender.sessionid.is_empty() {
            out.push_str(r#","sessionid":"#);
            push_json_str(&mut out, &sender.sessionid);
        }
        if !sender.userid.is_empty() {
            out.push_str(r#","userid":"#);
            push_json_str(&mut out, &sender.userid);
        }
        out.push('}');
        if let Some(r) = &body.recipient {
            out.push_str(r#","recipient":"#);
            out.push_str(&serde_json::to_string(r).ok()?);
        }
        out.push_str(r#","data":"#);
        out.push_str(data);
        out.push_str("}}");
        Some(out)
    }

    pub fn is_participants_update(&self) -> bool {
        self.kind == "event"
            && self
                .event
                .as_ref()
                .is_some_and(|e| e.target == "participants" && e.kind == "update")
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct HelloServerInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub country: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct HelloServerMessage {
    pub version: String,
    pub sessionid: String,
    pub resumeid: String,
    pub userid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<Arc<HelloServerInfo>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ByeServerMessage {
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomServerMessage {
    pub roomid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Raw>,
    /// Publishing limits of the backend (upstream 2.1.0, #1099).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<RoomBandwidth>,
}

/// Bits per second.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RoomBandwidth {
    pub maxstreambitrate: u64,
    pub maxscreenbitrate: u64,
}

/// Who sent a `message`/`control`.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sender {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sessionid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct MessageServerMessage {
    pub sender: Option<Sender>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipient: Option<Recipient>,
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct EventServerMessage {
    pub target: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<SessionEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leave: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Vec<SessionEntry>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<RoomEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disinvite: Option<RoomDisinviteEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<RoomEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<RoomFlagsEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<RoomEventMessage>,
    /// `room/switchto` (breakout rooms; upstream 1.1.0, #409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchto: Option<SwitchToEvent>,
    /// `room/federation_resumed`: whether the remote session was resumed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resumed: Option<bool>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SwitchToEvent {
    pub roomid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Raw>,
}

impl EventServerMessage {
    pub fn new(target: &str, kind: &str) -> Self {
        EventServerMessage {
            target: target.into(),
            kind: kind.into(),
            ..Default::default()
        }
    }
}

/// One session in a `join` event.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionEntry {
    pub sessionid: String,
    pub userid: String,
    /// The client's hello features (`join-features`, upstream 2.0.2, #879).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Arc<crate::RawValue>>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub roomsessionid: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomEvent {
    pub roomid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Raw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incall: Option<Raw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<Vec<serde_json::Map<String, serde_json::Value>>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomDisinviteEvent {
    pub roomid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Raw>,
    pub reason: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomFlagsEvent {
    pub roomid: String,
    pub sessionid: String,
    pub flags: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomEventMessage {
    pub roomid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TransientDataServerMessage {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oldvalue: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<serde_json::Map<String, serde_json::Value>>,
}
