//! The client API spoken over the `/spreed` WebSocket.
//!
//! Validation (`check_valid`) mirrors what the Go server rejects with
//! `invalid_format`; everything else is the hub's business.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

use crate::{raw_is_empty, Raw};

/// Hello with `auth.params` validated by the backend.
pub const HELLO_VERSION_V1: &str = "1.0";
/// Hello with `auth.params.token`, a JWT signed by Nextcloud (upstream 1.0.0, #251).
pub const HELLO_VERSION_V2: &str = "2.0";

pub const CLIENT_TYPE_CLIENT: &str = "client";
pub const CLIENT_TYPE_INTERNAL: &str = "internal";
pub const CLIENT_TYPE_VIRTUAL: &str = "virtual";
/// A signaling server relaying a client of another Nextcloud (upstream 2.0.0, #776).
pub const CLIENT_TYPE_FEDERATION: &str = "federation";

pub const FEATURE_MCU: &str = "mcu";
pub const FEATURE_SIMULCAST: &str = "simulcast";
pub const FEATURE_UPDATE_SDP: &str = "update-sdp";
pub const FEATURE_OFFER_CODECS: &str = "offer-codecs";
pub const FEATURE_AUDIO_VIDEO_PERMISSIONS: &str = "audio-video-permissions";
pub const FEATURE_TRANSIENT_DATA: &str = "transient-data";
pub const FEATURE_INCALL_ALL: &str = "incall-all";
pub const FEATURE_VIRTUAL_SESSIONS: &str = "virtual-sessions";
pub const FEATURE_WELCOME: &str = "welcome";
pub const FEATURE_HELLO_V2: &str = "hello-v2";
pub const FEATURE_SWITCHTO: &str = "switchto";
pub const FEATURE_DIALOUT: &str = "dialout";
pub const FEATURE_FEDERATION: &str = "federation";
pub const FEATURE_RECIPIENT_CALL: &str = "recipient-call";
pub const FEATURE_JOIN_FEATURES: &str = "join-features";
pub const FEATURE_CHAT_RELAY: &str = "chat-relay";
/// Talk may send only the changed participants (upstream PR #1175, not yet
/// released there): the server keeps the call state itself.
pub const FEATURE_CHANGED_USERS: &str = "changed-users";

/// Client features (hello `features`).
pub const CLIENT_FEATURE_CHAT_RELAY: &str = "chat-relay";
pub const CLIENT_FEATURE_INTERNAL_INCALL: &str = "internal-incall";
pub const CLIENT_FEATURE_START_DIALOUT: &str = "start-dialout";

/// Features added after the reference version, in upstream's order; each is
/// listed only once it works here (Talk refuses servers that claim more).
const LATER_FEATURES: &[&str] = &[
    FEATURE_WELCOME,
    FEATURE_HELLO_V2,
    FEATURE_SWITCHTO,
    FEATURE_DIALOUT,
    FEATURE_FEDERATION,
    FEATURE_RECIPIENT_CALL,
    FEATURE_JOIN_FEATURES,
    FEATURE_CHAT_RELAY,
    FEATURE_CHANGED_USERS,
];

/// Features announced only while an MCU is configured (`offer-codecs`:
/// codec preferences with offers, upstream 2.0.2).
pub const MCU_FEATURES: &[&str] = &[
    FEATURE_MCU,
    FEATURE_SIMULCAST,
    FEATURE_UPDATE_SDP,
    FEATURE_OFFER_CODECS,
];

/// Features every normal client is told about.
pub const DEFAULT_FEATURES: &[&str] = &[
    FEATURE_AUDIO_VIDEO_PERMISSIONS,
    FEATURE_TRANSIENT_DATA,
    FEATURE_INCALL_ALL,
    LATER_FEATURES[0],
    LATER_FEATURES[1],
    LATER_FEATURES[2],
    LATER_FEATURES[3],
    LATER_FEATURES[4],
    LATER_FEATURES[5],
    LATER_FEATURES[6],
    LATER_FEATURES[7],
    LATER_FEATURES[8],
];
/// Features internal clients are told about.
pub const DEFAULT_FEATURES_INTERNAL: &[&str] = &[
    FEATURE_VIRTUAL_SESSIONS,
    FEATURE_TRANSIENT_DATA,
    FEATURE_INCALL_ALL,
    LATER_FEATURES[0],
    LATER_FEATURES[1],
    LATER_FEATURES[2],
    LATER_FEATURES[3],
    LATER_FEATURES[4],
    LATER_FEATURES[5],
    LATER_FEATURES[6],
    LATER_FEATURES[7],
    LATER_FEATURES[8],
];

/// A message received from a client.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ClientMessage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<HelloClientMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bye: Option<ByeClientMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomClientMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<MessageClientMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<MessageClientMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub internal: Option<InternalClientMessage>,
    #[serde(default, rename = "transient", skip_serializing_if = "Option::is_none")]
    pub transient: Option<TransientDataClientMessage>,
}

impl ClientMessage {
    /// Structural validation; the error text becomes the `invalid_format` message.
    pub fn check_valid(&mut self) -> Result<(), String> {
        match self.kind.as_str() {
            "" => Err("type missing".into()),
            "hello" => match &mut self.hello {
                None => Err("hello missing".into()),
                Some(h) => h.check_valid(),
            },
            "bye" => Ok(()),
            "room" => match &self.room {
                None => Err("room missing".into()),
                Some(_) => Ok(()),
            },
            "message" => match &self.message {
                None => Err("message missing".into()),
                Some(m) => m.check_valid(),
            },
            "control" => match &self.control {
                None => Err("control missing".into()),
                Some(m) => m.check_valid(),
            },
            "internal" => match &self.internal {
                None => Err("internal missing".into()),
                Some(m) => m.check_valid(),
            },
            "transient" => match &self.transient {
                None => Err("transient missing".into()),
                Some(m) => m.check_valid(),
            },
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct HelloClientMessageAuth {
    #[serde(default, rename = "type", skip_serializing_if = "String::is_empty")]
    pub kind: String,
    #[serde(default)]
    pub params: Option<Raw>,
    #[serde(default)]
    pub url: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct HelloClientMessage {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resumeid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    #[serde(default)]
    pub auth: HelloClientMessageAuth,
}

/// Parameters of an `internal` client's hello.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct InternalAuthParams {
    #[serde(default)]
    pub random: String,
    #[serde(default)]
    pub token: String,
    #[serde(default)]
    pub backend: String,
}

impl HelloClientMessage {
    pub fn check_valid(&mut self) -> Result<(), String> {
        if self.version != HELLO_VERSION_V1 && self.version != HELLO_VERSION_V2 {
            return Err(format!("unsupported hello version: {}", self.version));
        }
        if !self.resumeid.is_empty() {
            return Ok(());
        }
        match &self.auth.params {
            Some(p) if !p.get().trim().is_empty() => {}
            _ => return Err("params missing".into()),
        }
        if self.auth.kind.is_empty() {
            self.auth.kind = CLIENT_TYPE_CLIENT.to_owned();
        }
        match self.auth.kind.as_str() {
            CLIENT_TYPE_CLIENT | CLIENT_TYPE_FEDERATION => {
                if self.auth.kind == CLIENT_TYPE_FEDERATION && self.version != HELLO_VERSION_V2 {
                    return Err("federation requires hello v2".into());
                }
                if self.auth.url.is_empty() {
                    return Err("url missing".into());
                }
                if !is_request_uri(&self.auth.url) {
                    return Err(format!(
                        "parse \"{}\": invalid URI for request",
                        self.auth.url
                    ));
                }
                if self.version == HELLO_VERSION_V2 && self.v2_token()?.is_empty() {
                    return Err("token missing".into());
                }
                Ok(())
            }
            CLIENT_TYPE_INTERNAL => {
                let params = self.internal_params()?;
                if params.backend.is_empty() {
                    return Err("backend missing".into());
                }
                Ok(())
            }
            _ => Err("unsupported auth type".into()),
        }
    }

    /// The JWT of a v2 hello (`auth.params.token`); errors when params are not an object.
    pub fn v2_token(&self) -> Result<String, String> {
        #[derive(Deserialize)]
        struct Params {
            #[serde(default)]
            token: String,
        }
        let raw = self.auth.params.as_ref().ok_or("params missing")?;
        serde_json::from_str::<Params>(raw.get())
            .map(|p| p.token)
            .map_err(|e| e.to_string())
    }

    /// Parameters of an internal hello; errors when they are not an object.
    pub fn internal_params(&self) -> Result<InternalAuthParams, String> {
        let raw = self.auth.params.as_ref().ok_or("params missing")?;
        serde_json::from_str(raw.get()).map_err(|e| e.to_string())
    }
}

/// Go's `url.ParseRequestURI` accepts absolute URLs and absolute paths.
fn is_request_uri(s: &str) -> bool {
    if s.starts_with('/') {
        return true;
    }
    match s.find(':') {
        Some(pos) if pos > 0 => {
            let scheme = &s[..pos];
            scheme
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.')
                && !s.contains(' ')
        }
        _ => false,
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ByeClientMessage {}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RoomClientMessage {
    #[serde(default)]
    pub roomid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sessionid: String,
    /// Join a room on another signaling server (upstream 2.0.0, #776).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub federation: Option<RoomFederationMessage>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct RoomFederationMessage {
    #[serde(default)]
    pub signaling: String,
    #[serde(default)]
    pub url: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub roomid: String,
    #[serde(default)]
    pub token: String,
}

pub const RECIPIENT_SESSION: &str = "session";
pub const RECIPIENT_USER: &str = "user";
pub const RECIPIENT_ROOM: &str = "room";
/// Sessions in the call of the sender's room (upstream 2.0.2, #859).
pub const RECIPIENT_CALL: &str = "call";

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
pub struct Recipient {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sessionid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
}

/// Body of `message` and `control` requests (same shape).
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct MessageClientMessage {
    #[serde(default)]
    pub recipient: Recipient,
    #[serde(default)]
    pub data: Option<Raw>,
}

impl MessageClientMessage {
    pub fn check_valid(&self) -> Result<(), String> {
        if raw_is_empty(&self.data) {
            return Err("message empty".into());
        }
        match self.recipient.kind.as_str() {
            RECIPIENT_ROOM | RECIPIENT_CALL => Ok(()),
            RECIPIENT_SESSION if self.recipient.sessionid.is_empty() => {
                Err("session id missing".into())
            }
            RECIPIENT_SESSION => Ok(()),
            RECIPIENT_USER if self.recipient.userid.is_empty() => Err("user id missing".into()),
            RECIPIENT_USER => Ok(()),
            other => Err(format!("unsupported recipient type {other}")),
        }
    }
}

/// The parts of a message's `data` the server looks at (MCU verbs, chat refresh).
#[derive(Debug, Default, Deserialize)]
pub struct MessageData {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub sid: String,
    #[serde(default, rename = "roomType")]
    pub room_type: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct InternalClientMessage {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addsession: Option<AddSessionInternal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updatesession: Option<UpdateSessionInternal>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removesession: Option<RemoveSessionInternal>,
    /// An internal client's own in-call flags (upstream 1.1.0, #421).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incall: Option<InCallInternal>,
    /// Answer to a dial-out request (upstream 1.2.0, #563).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialout: Option<DialoutInternal>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct InCallInternal {
    #[serde(default)]
    pub incall: i64,
}

/// `internal/dialout` from the client: `{type: "error"|"status", roomid, error?, status?}`.
/// The same shape goes to the room as `dialout` message.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct DialoutInternal {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub roomid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

fn check_common(sessionid: &str, roomid: &str) -> Result<(), String> {
    if sessionid.is_empty() {
        return Err("sessionid missing".into());
    }
    if roomid.is_empty() {
        return Err("roomid missing".into());
    }
    Ok(())
}

impl InternalClientMessage {
    pub fn check_valid(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "addsession" => match &self.addsession {
                None => Err("addsession missing".into()),
                Some(m) => check_common(&m.sessionid, &m.roomid),
            },
            "updatesession" => match &self.updatesession {
                None => Err("updatesession missing".into()),
                Some(m) => check_common(&m.sessionid, &m.roomid),
            },
            "removesession" => match &self.removesession {
                None => Err("removesession missing".into()),
                Some(m) => check_common(&m.sessionid, &m.roomid),
            },
            "incall" if self.incall.is_none() => Err("incall missing".into()),
            "dialout" => match &self.dialout {
                None => Err("dialout missing".into()),
                Some(d) => match d.kind.as_str() {
                    "" => Err("type missing".into()),
                    "error" if d.error.is_none() => Err("error missing".into()),
                    "status" if d.status.is_none() => Err("status missing".into()),
                    _ => Ok(()),
                },
            },
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize, Clone)]
pub struct AddSessionOptions {
    #[serde(default, rename = "actorId", skip_serializing_if = "String::is_empty")]
    pub actor_id: String,
    #[serde(
        default,
        rename = "actorType",
        skip_serializing_if = "String::is_empty"
    )]
    pub actor_type: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct AddSessionInternal {
    #[serde(default)]
    pub sessionid: String,
    #[serde(default)]
    pub roomid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Raw>,
    #[serde(default)]
    pub flags: u32,
    /// In-call flags of the virtual session (upstream 1.1.0, #421).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incall: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<AddSessionOptions>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct UpdateSessionInternal {
    #[serde(default)]
    pub sessionid: String,
    #[serde(default)]
    pub roomid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flags: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incall: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct RemoveSessionInternal {
    #[serde(default)]
    pub sessionid: String,
    #[serde(default)]
    pub roomid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct TransientDataClientMessage {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<Raw>,
    /// Lifetime of the entry in nanoseconds (Go's `time.Duration`; upstream 1.2.0, #575).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<i64>,
}

impl TransientDataClientMessage {
    pub fn check_valid(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "set" | "remove" if self.key.is_empty() => Err("key missing".into()),
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// Server -> client

/// The error object of an `error` message.
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

    fn fast_text(&self) -> Option<String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ClientMessage {
        serde_json::from_str(s).expect("valid json")
    }

    #[test]
    fn hello_validation() {
        let mut m = parse(
            r#"{"type":"hello","hello":{"version":"1.0","auth":{"url":"https://cloud/ocs","params":{"userid":"a"}}}}"#,
        );
        assert!(m.check_valid().is_ok());
        assert_eq!(
            m.hello.as_ref().map(|h| h.auth.kind.as_str()),
            Some("client")
        );
        let mut m = parse(r#"{"type":"hello","hello":{"version":"3.0","auth":{"url":"x"}}}"#);
        assert!(m
            .check_valid()
            .unwrap_err()
            .contains("unsupported hello version"));
        let mut m =
            parse(r#"{"type":"hello","hello":{"version":"1.0","auth":{"url":"https://x/"}}}"#);
        assert_eq!(m.check_valid().unwrap_err(), "params missing");
        let mut m = parse(r#"{"type":"hello","hello":{"version":"1.0","resumeid":"abc"}}"#);
        assert!(m.check_valid().is_ok());
        let mut m = parse(
            r#"{"type":"hello","hello":{"version":"1.0","auth":{"type":"foo","params":{}}}}"#,
        );
        assert_eq!(m.check_valid().unwrap_err(), "unsupported auth type");
        let mut m = parse(r#"{"type":"hello"}"#);
        assert_eq!(m.check_valid().unwrap_err(), "hello missing");
    }

    #[test]
    fn message_validation() {
        let mut m =
            parse(r#"{"type":"message","message":{"recipient":{"type":"session"},"data":{}}}"#);
        assert_eq!(m.check_valid().unwrap_err(), "session id missing");
        let mut m = parse(r#"{"type":"message","message":{"recipient":{"type":"room"}}}"#);
        assert_eq!(m.check_valid().unwrap_err(), "message empty");
        let mut m = parse(r#"{"type":"message","message":{"recipient":{"type":"x"},"data":1}}"#);
        assert!(m
            .check_valid()
            .unwrap_err()
            .starts_with("unsupported recipient type"));
        let mut m = parse(r#"{"type":"unknown"}"#);
        assert!(m.check_valid().is_ok());
        let mut m = parse(r#"{}"#);
        assert_eq!(m.check_valid().unwrap_err(), "type missing");
    }

    #[test]
    fn fast_message_frames_match_serde() {
        for (kind, uid, recipient, data) in [
            ("message", "alice", None, r#"{"a":[1,2.50,"x"]}"#),
            ("control", "", None, "\"text\""),
            (
                "message",
                "weird \"user\"\n\u{e9}",
                Some(Recipient {
                    kind: "session".into(),
                    sessionid: "v1".into(),
                    userid: String::new(),
                }),
                "null",
            ),
        ] {
            let body = MessageServerMessage {
                sender: Some(Sender {
                    kind: "session".into(),
                    sessionid: "abc-_=DEF".into(),
                    userid: uid.into(),
                }),
                recipient,
                data: Some(crate::RawValue::from_string(data.to_owned()).unwrap()),
            };
            let mut m = ServerMessage {
                kind: kind.into(),
                ..Default::default()
            };
            if kind == "message" {
                m.message = Some(body)
            } else {
                m.control = Some(body)
            }
            let fast = m.fast_text().expect("fast path");
            assert_eq!(fast, serde_json::to_string(&m).unwrap());
            assert_eq!(m.to_text(), fast);
        }
        // Anything else takes the general path.
        assert!(ServerMessage::bye("x").fast_text().is_none());
    }

    #[test]
    fn server_message_omits_absent_parts() {
        let m = ServerMessage::bye("");
        assert_eq!(m.to_text(), r#"{"type":"bye","bye":{"reason":""}}"#);
        let m = ServerMessage::room("1", "", None);
        assert_eq!(
            m.to_text(),
            r#"{"id":"1","type":"room","room":{"roomid":""}}"#
        );
    }
}

/// Deepest JSON nesting accepted from clients (Go's decoder limit).
pub const MAX_JSON_DEPTH: usize = 10_000;

/// Errors of [`parse_client_message`].
#[derive(Debug)]
pub enum ParseError {
    TooDeep,
    Json(serde_json::Error),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooDeep => write!(f, "exceeded max depth of {MAX_JSON_DEPTH}"),
            ParseError::Json(e) => e.fmt(f),
        }
    }
}

/// Nesting depth of a JSON text, counting brackets outside strings.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Decode a client message the way Go's `encoding/json` does: nesting is
/// limited, and a repeated key keeps its last value (serde's derive would
/// refuse the message).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    // Depth over the limit needs at least that many bytes of brackets.
    if text.len() > MAX_JSON_DEPTH && json_depth(text.as_bytes()) > MAX_JSON_DEPTH {
        return Err(ParseError::TooDeep);
    }
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => Ok(m),
        Err(e) if e.to_string().starts_with("duplicate field") => {
            // Rare path: normalise through a map (last key wins), then decode again.
            let v: serde_json::Value = serde_json::from_str(text).map_err(ParseError::Json)?;
            let normal = serde_json::to_string(&v).map_err(ParseError::Json)?;
            serde_json::from_str(&normal).map_err(ParseError::Json)
        }
        Err(e) => Err(ParseError::Json(e)),
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn repeated_keys_keep_the_last_value() {
        let m =
            parse_client_message(r#"{"id":"d1","type":"hello","type":"room","room":{}}"#).unwrap();
        assert_eq!(m.kind, "room");
        assert_eq!(m.id, "d1");
    }

    #[test]
    fn nesting_is_limited() {
        let deep = format!(
            r#"{{"type":"message","message":{{"recipient":{{"type":"room"}},"data":{}{}}}}}"#,
            "[".repeat(10_001),
            "]".repeat(10_001)
        );
        assert!(matches!(
            parse_client_message(&deep),
            Err(ParseError::TooDeep)
        ));
        let ok = format!(
            r#"{{"type":"message","message":{{"recipient":{{"type":"room"}},"data":{}{}}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse_client_message(&ok).is_ok());
        assert_eq!(json_depth(br#"{"a":"[[[[","b":[1,{"c":"\"{"}]}"#), 3);
    }
}
