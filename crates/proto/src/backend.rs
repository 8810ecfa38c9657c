//! The HTTP API between the signaling server and Nextcloud, both directions,
//! and the checksum that authenticates every request.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::client::Error;
use crate::Raw;

pub const BACKEND_VERSION: &str = "1.0";
pub const HEADER_RANDOM: &str = "spreed-signaling-random";
pub const HEADER_CHECKSUM: &str = "spreed-signaling-checksum";
pub const HEADER_BACKEND: &str = "spreed-signaling-backend";
pub const HEADER_FEATURES: &str = "x-spreed-signaling-features";

/// Hex HMAC-SHA256 over `random` followed by the body, keyed with the secret.
pub fn checksum(random: &str, body: &[u8], secret: &[u8]) -> String {
    // HMAC accepts keys of any length, so construction cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(random.as_bytes());
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// Constant-time check of a checksum received from a peer.
pub fn validate_checksum(checksum_hex: &str, random: &str, body: &[u8], secret: &[u8]) -> bool {
    let Ok(expected) = hex::decode(checksum_hex) else {
        return false;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("hmac takes any key length");
    mac.update(random.as_bytes());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// 64 random hex characters for the `Spreed-Signaling-Random` header.
pub fn random_hex(chars: usize) -> String {
    use rand::RngCore;
    let mut bytes = vec![0u8; chars.div_ceil(2)];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut s = hex::encode(bytes);
    s.truncate(chars);
    s
}

// ---------------------------------------------------------------------------
// Nextcloud -> signaling (`POST /api/v1/room/{roomid}`)

/// A room request from Nextcloud. `received` is stamped by the receiving node
/// (nanoseconds) so that late copies can be recognised when relayed.
#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct BackendServerRoomRequest {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<RoomInviteRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disinvite: Option<RoomDisinviteRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<RoomUpdateRequest>,
    /// Talk with `changed-users` may send `{}`, `[]` (PHP's empty array),
    /// `null` or nothing at all: each means "delete".
    #[serde(
        default,
        deserialize_with = "lenient_delete",
        skip_serializing_if = "Option::is_none"
    )]
    pub delete: Option<RoomDeleteRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incall: Option<RoomInCallRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub participants: Option<RoomParticipantsRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<RoomMessageRequest>,
    /// Move sessions to another room (breakout rooms; upstream 1.1.0, #409).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switchto: Option<RoomSwitchToRequest>,
    /// Start a phone call through a SIP bridge (upstream 1.2.0, #563).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialout: Option<RoomDialoutRequest>,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub received: i64,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomSwitchToRequest {
    /// Target room id.
    #[serde(default)]
    pub roomid: String,
    /// Talk session ids: a list, or a map of session id to details (or null).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomDialoutRequest {
    /// E.164 number.
    #[serde(default)]
    pub number: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Raw>,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

pub type JsonMap = serde_json::Map<String, serde_json::Value>;

/// A list of strings as PHP may encode it: a JSON array, an object (an
/// array whose keys are no longer 0..n, e.g. after `array_diff`; its values
/// in key order) or `null`.
fn string_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    php_list(d)
}

/// A list of objects as PHP may encode it (see [`string_list`]).
fn map_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<JsonMap>, D::Error> {
    php_list(d)
}

/// Like [`string_list`], keeping "absent" (or `null`) apart from "present":
/// old Talk versions send the list of every user, Talk with `changed-users`
/// leaves it out.
fn opt_string_list<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Vec<String>>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(v) => php_list(v).map(Some).map_err(D::Error::custom),
    }
}

/// Like [`map_list`], keeping "absent" apart from "present": old Talk
/// versions send the whole list (`users`), Talk with `changed-users` leaves
/// it out.
fn opt_map_list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<JsonMap>>, D::Error> {
    use serde::de::Error as _;
    match Option::<serde_json::Value>::deserialize(d)? {
        None => Ok(None),
        Some(v) => php_list(v).map(Some).map_err(D::Error::custom),
    }
}

fn php_list<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    use serde::de::Error as _;
    let items = match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => return Ok(Vec::new()),
        serde_json::Value::Array(a) => a,
        serde_json::Value::Object(o) => o.into_iter().map(|(_, v)| v).collect(),
        other => {
            return Err(D::Error::custom(format!(
                "expected a list, got {}",
                json_kind(&other)
            )))
        }
    };
    items
        .into_iter()
        .map(|v| serde_json::from_value(v).map_err(D::Error::custom))
        .collect()
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "an object",
    }
}

/// `delete` as an object, or as `[]`/`null` (no details).
fn lenient_delete<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<RoomDeleteRequest>, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(Some(RoomDeleteRequest::default())),
        serde_json::Value::Array(a) if a.is_empty() => Ok(Some(RoomDeleteRequest::default())),
        v @ serde_json::Value::Object(_) => serde_json::from_value(v)
            .map(Some)
            .map_err(D::Error::custom),
        other => Err(D::Error::custom(format!(
            "delete: expected an object, got {}",
            json_kind(&other)
        ))),
    }
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomInviteRequest {
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub userids: Vec<String>,
    /// Old Talk only (without `changed-users`).
    #[serde(
        default,
        deserialize_with = "opt_string_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub alluserids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomDisinviteRequest {
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub userids: Vec<String>,
    #[serde(
        default,
        deserialize_with = "string_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub sessionids: Vec<String>,
    /// Old Talk only (without `changed-users`).
    #[serde(
        default,
        deserialize_with = "opt_string_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub alluserids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomUpdateRequest {
    /// Old Talk only (without `changed-users`).
    #[serde(
        default,
        deserialize_with = "opt_string_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub userids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomDeleteRequest {
    /// Old Talk only (without `changed-users`).
    #[serde(
        default,
        deserialize_with = "opt_string_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub userids: Option<Vec<String>>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomInCallRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incall: Option<Raw>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    #[serde(
        default,
        deserialize_with = "map_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub changed: Vec<JsonMap>,
    /// Old Talk only: every session in the call (`None` with `changed-users`).
    #[serde(
        default,
        deserialize_with = "opt_map_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub users: Option<Vec<JsonMap>>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomParticipantsRequest {
    #[serde(
        default,
        deserialize_with = "map_list",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub changed: Vec<JsonMap>,
    /// Old Talk only: every participant (`None` with `changed-users`).
    #[serde(
        default,
        deserialize_with = "opt_map_list",
        skip_serializing_if = "Option::is_none"
    )]
    pub users: Option<Vec<JsonMap>>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomMessageRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Raw>,
}

// ---------------------------------------------------------------------------
// signaling -> Nextcloud

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BackendClientRequest {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<PingRequest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<SessionRequest>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AuthRequest {
    pub version: String,
    pub params: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct RoomRequest {
    pub version: String,
    pub roomid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    pub userid: String,
    pub sessionid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actorid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub actortype: String,
    #[serde(default, skip_serializing_if = "is_zero_i32")]
    pub incall: i32,
}

fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

#[derive(Debug, Default, Serialize, Deserialize, Clone)]
pub struct PingEntry {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
    pub sessionid: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct PingRequest {
    pub version: String,
    pub roomid: String,
    pub entries: Vec<PingEntry>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct SessionRequest {
    pub version: String,
    pub roomid: String,
    pub action: String,
    pub sessionid: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<Raw>,
}

impl BackendClientRequest {
    pub fn auth(params: Option<Raw>) -> Self {
        BackendClientRequest {
            kind: "auth".into(),
            auth: Some(AuthRequest {
                version: BACKEND_VERSION.into(),
                params,
            }),
            ..Default::default()
        }
    }
    pub fn room(room: RoomRequest) -> Self {
        BackendClientRequest {
            kind: "room".into(),
            room: Some(room),
            ..Default::default()
        }
    }
    pub fn ping(roomid: &str, entries: Vec<PingEntry>) -> Self {
        BackendClientRequest {
            kind: "ping".into(),
            ping: Some(PingRequest {
                version: BACKEND_VERSION.into(),
                roomid: roomid.into(),
                entries,
            }),
            ..Default::default()
        }
    }
    pub fn session(session: SessionRequest) -> Self {
        BackendClientRequest {
            kind: "session".into(),
            session: Some(session),
            ..Default::default()
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct BackendClientResponse {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomResponse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ping: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<serde_json::Value>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct AuthResponse {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub userid: String,
    #[serde(default)]
    pub user: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomResponse {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub roomid: String,
    #[serde(default)]
    pub properties: Option<Raw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<Raw>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
}

/// `room.session` data the backend may attach to a join answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RoomSessionData {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub userid: String,
}

/// The OCS envelope Nextcloud wraps its answers in.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OcsResponse {
    pub ocs: Option<OcsBody>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OcsBody {
    #[serde(default)]
    pub meta: OcsMeta,
    #[serde(default)]
    pub data: Option<Raw>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct OcsMeta {
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub statuscode: i64,
    #[serde(default)]
    pub message: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct TurnCredentials {
    pub username: String,
    pub password: String,
    pub ttl: i64,
    pub uris: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_known_vector() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"secret",b"random"+b"{}",hashlib.sha256).hexdigest())'
        let sum = checksum("random", b"{}", b"secret");
        assert_eq!(
            sum,
            "5137962bcf7efa7540d6020ad67a334ab62aea29c93f3d9367ec154e0c15635d"
        );
        assert!(validate_checksum(&sum, "random", b"{}", b"secret"));
        assert!(!validate_checksum(&sum, "random", b"{ }", b"secret"));
        assert!(!validate_checksum("zz", "random", b"{}", b"secret"));
        assert!(!validate_checksum(&sum, "random", b"{}", b"other"));
    }

    fn parse(body: &str) -> Result<BackendServerRoomRequest, serde_json::Error> {
        serde_json::from_str(body)
    }

    #[test]
    fn delete_in_every_shape_talk_may_send() {
        for body in [
            r#"{"type":"delete","delete":{}}"#,
            r#"{"type":"delete","delete":[]}"#,
            r#"{"type":"delete","delete":null}"#,
            r#"{"type":"delete","delete":{"userids":["a"]}}"#,
        ] {
            let req = parse(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert!(req.delete.is_some(), "{body}");
        }
        let req = parse(r#"{"type":"delete"}"#).expect("no delete object");
        assert!(req.delete.is_none());
        assert_eq!(
            parse(r#"{"type":"delete","delete":{"userids":{"0":"a","2":"b"}}}"#)
                .expect("object list")
                .delete
                .and_then(|d| d.userids),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        let req = parse(r#"{"type":"delete","delete":{}}"#).expect("new Talk");
        assert!(req.delete.is_some_and(|d| d.userids.is_none()));
        let err = parse(r#"{"type":"delete","delete":"x"}"#).expect_err("a string");
        assert!(err.to_string().contains("expected an object"), "{err}");
    }

    #[test]
    fn users_lists_keep_absent_apart_from_empty() {
        let req = parse(r#"{"type":"incall","incall":{"incall":7,"changed":[{"sessionId":"a"}]}}"#)
            .expect("new Talk");
        let incall = req.incall.expect("incall");
        assert_eq!(incall.changed.len(), 1);
        assert!(incall.users.is_none());
        for (body, want) in [
            (r#"{"users":[]}"#, Some(0)),
            (r#"{"users":null}"#, None),
            (r#"{"users":[{"sessionId":"a"}]}"#, Some(1)),
        ] {
            let p: RoomParticipantsRequest = serde_json::from_str(body).expect(body);
            assert_eq!(p.users.map(|u| u.len()), want, "{body}");
        }
        let err = serde_json::from_str::<RoomParticipantsRequest>(r#"{"changed":5}"#)
            .expect_err("a number");
        assert!(err.to_string().contains("expected a list"), "{err}");
        // Serialised (cluster bus) the way it came.
        let back = serde_json::to_string(&RoomInCallRequest {
            users: None,
            ..Default::default()
        })
        .expect("serialise");
        assert_eq!(back, "{}");
    }

    #[test]
    fn random_hex_has_requested_length() {
        let r = random_hex(64);
        assert_eq!(r.len(), 64);
        assert!(r.chars().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(r, random_hex(64));
    }
}
