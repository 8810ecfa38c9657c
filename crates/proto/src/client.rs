//! The client API spoken over the `/spreed` WebSocket.
//!
//! Validation (`check_valid`) mirrors what the Go server rejects with
//! `invalid_format`; everything else is the hub's business.

use serde::{Deserialize, Serialize};

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

mod features;
mod parse;
mod server_message;

pub use features::*;
pub use parse::*;
pub use server_message::*;

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
