//! What travels over the Janus WebSocket: the JSON shapes of the Janus API
//! (core and plugin envelope), kept apart from the connection logic so they
//! can be tested without sockets.
//!
//! Incoming messages are parsed leniently (unknown fields are ignored, most
//! fields are optional) because Janus 0.x and 1.x differ in details such as
//! `mid` on media events; a message that cannot be parsed at all is logged
//! and dropped by the connection task, never unwrapped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Error codes of the Janus core (`janus.h`), as found in `error.code` of a
/// reply with `"janus": "error"`.
pub mod codes {
    /// Unauthorized (API secret or token missing or wrong).
    pub const UNAUTHORIZED: u64 = 403;
    /// Unknown or undocumented error.
    pub const UNKNOWN: u64 = 490;
    /// The request is missing in the message.
    pub const MISSING_REQUEST: u64 = 452;
    /// Janus does not support this request.
    pub const UNKNOWN_REQUEST: u64 = 453;
    /// The payload is not valid JSON.
    pub const INVALID_JSON: u64 = 454;
    /// A mandatory element is missing in the message.
    pub const MISSING_MANDATORY_ELEMENT: u64 = 456;
    /// The session the request refers to does not exist (timed out, destroyed,
    /// or created on a previous connection).
    pub const SESSION_NOT_FOUND: u64 = 458;
    /// The handle the request refers to does not exist.
    pub const HANDLE_NOT_FOUND: u64 = 459;
    /// The plugin does not exist.
    pub const PLUGIN_NOT_FOUND: u64 = 460;
    /// Attaching to the plugin failed.
    pub const PLUGIN_ATTACH: u64 = 461;
    /// Sending the message to the plugin failed.
    pub const PLUGIN_MESSAGE: u64 = 462;
    /// Detaching from the plugin failed.
    pub const PLUGIN_DETACH: u64 = 463;
    /// Janus does not support this SDP type.
    pub const JSEP_UNKNOWN_TYPE: u64 = 464;
    /// The session description provided by the peer is invalid.
    pub const JSEP_INVALID_SDP: u64 = 465;
    /// The stream a trickle candidate is for does not exist.
    pub const TRICKLE_INVALID_STREAM: u64 = 466;
    /// A JSON element has the wrong type.
    pub const INVALID_ELEMENT_TYPE: u64 = 467;
    /// An answer was received for an offer Janus never made.
    pub const UNEXPECTED_ANSWER: u64 = 469;
}

/// A session description as Janus exchanges it (`{"type": "offer", "sdp": ...}`).
///
/// `kind` stays a string: Janus only produces `offer` and `answer`, but an
/// unexpected value must not make the whole message unreadable. Extra
/// members (e.g. `simulcast`, `e2ee`) are kept so they round-trip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Jsep {
    /// `offer` or `answer`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The SDP text.
    pub sdp: String,
    /// Any other members, passed through unchanged.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl Jsep {
    /// An SDP offer.
    pub fn offer(sdp: impl Into<String>) -> Jsep {
        Jsep {
            kind: "offer".to_owned(),
            sdp: sdp.into(),
            extra: Map::new(),
        }
    }

    /// An SDP answer.
    pub fn answer(sdp: impl Into<String>) -> Jsep {
        Jsep {
            kind: "answer".to_owned(),
            sdp: sdp.into(),
            extra: Map::new(),
        }
    }

    pub fn is_offer(&self) -> bool {
        self.kind == "offer"
    }

    pub fn is_answer(&self) -> bool {
        self.kind == "answer"
    }
}

/// One ICE candidate, in the shape browsers and Janus both use.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    /// The `candidate:...` line (without `a=`).
    pub candidate: String,
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_mline_index: Option<u32>,
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// `plugindata` of a plugin reply or event.
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
pub struct PluginData {
    #[serde(default)]
    pub plugin: String,
    #[serde(default)]
    pub data: Value,
}

/// `error` of a core error reply.
#[derive(Clone, Debug, Default, Deserialize)]
pub(crate) struct ErrorData {
    #[serde(default)]
    pub code: u64,
    #[serde(default)]
    pub reason: String,
}

/// Every message Janus sends, as one lenient struct: which members are
/// present depends on `janus` (the message type).
#[derive(Debug, Default, Deserialize)]
pub(crate) struct Incoming {
    pub janus: String,
    #[serde(default)]
    pub transaction: Option<String>,
    #[serde(default)]
    pub session_id: Option<u64>,
    /// The handle a handle-scoped message is about.
    #[serde(default)]
    pub sender: Option<u64>,
    /// `success` replies to `create`/`attach`: `{"id": ...}`.
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub plugindata: Option<PluginData>,
    #[serde(default)]
    pub jsep: Option<Jsep>,
    #[serde(default)]
    pub error: Option<ErrorData>,
    /// `trickle`: one candidate or `{"completed": true}`.
    #[serde(default)]
    pub candidate: Option<Value>,
    /// `hangup`.
    #[serde(default)]
    pub reason: Option<String>,
    /// `media`: `audio` / `video`.
    #[serde(rename = "type", default)]
    pub media_type: Option<String>,
    /// `media` / `slowlink` in Janus 1.x: the stream the event is about.
    #[serde(default)]
    pub mid: Option<String>,
    #[serde(default)]
    pub receiving: Option<bool>,
    #[serde(default)]
    pub seconds: Option<u64>,
    /// `slowlink`: `audio` / `video`.
    #[serde(default)]
    pub media: Option<String>,
    #[serde(default)]
    pub uplink: Option<bool>,
    #[serde(default)]
    pub lost: Option<u64>,
}

impl Incoming {
    /// The `data.id` of a `success` reply to `create` or `attach`.
    pub fn data_id(&self) -> Option<u64> {
        self.data.as_ref()?.get("id")?.as_u64()
    }
}

/// Version number from which Janus speaks the multistream API (1.0.0 reports
/// `version: 1000`). Upstream's `isMultistream` uses the same threshold.
pub const MULTISTREAM_MIN_VERSION: u64 = 1000;

/// Version number from which the VideoRoom plugin supports remote publishers
/// (`add_remote_publisher`, Janus 1.1.0).
pub const REMOTE_PUBLISHER_MIN_VERSION: u64 = 1100;

/// Which VideoRoom API shape a Janus server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiGeneration {
    /// Janus 0.x: one subscription per publisher feed (`"feed": id`).
    Legacy,
    /// Janus 1.x: multistream subscriptions (`"streams": [{"feed": id}]`),
    /// `updated` events instead of a hangup when a publisher leaves.
    Multistream,
}

/// Description of a plugin, transport or event handler in `server_info`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct PluginInfo {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub version_string: String,
    #[serde(default)]
    pub version: u64,
}

/// Reply to `info`: what the Janus server is and can do.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct ServerInfo {
    #[serde(default)]
    pub name: String,
    /// e.g. `1102` for 1.1.2.
    #[serde(default)]
    pub version: u64,
    #[serde(default)]
    pub version_string: String,
    #[serde(default)]
    pub author: String,
    #[serde(default)]
    pub data_channels: bool,
    #[serde(rename = "full-trickle", default)]
    pub full_trickle: bool,
    #[serde(default)]
    pub ipv6: bool,
    #[serde(rename = "local-ip", default)]
    pub local_ip: String,
    #[serde(rename = "ice-tcp", default)]
    pub ice_tcp: bool,
    /// Seconds of inactivity after which Janus drops a session (0: never).
    #[serde(rename = "session-timeout", default)]
    pub session_timeout: Option<u64>,
    #[serde(default)]
    pub event_handlers: bool,
    #[serde(default)]
    pub plugins: BTreeMap<String, PluginInfo>,
    #[serde(default)]
    pub transports: BTreeMap<String, PluginInfo>,
    #[serde(default)]
    pub events: BTreeMap<String, PluginInfo>,
}

/// The VideoRoom plugin's name (re-exported as `videoroom::PLUGIN`); the
/// MCU requirements below look for it.
pub(crate) const VIDEOROOM_PLUGIN: &str = "janus.plugin.videoroom";

/// What [`ServerInfo::check_mcu_requirements`] found acceptable but worth a
/// warning.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InfoWarnings {
    /// Full trickle is off: Janus will hold back its candidates, which slows
    /// every call set-up.
    pub full_trickle_disabled: bool,
}

impl ServerInfo {
    pub fn api_generation(&self) -> ApiGeneration {
        if self.version >= MULTISTREAM_MIN_VERSION {
            ApiGeneration::Multistream
        } else {
            ApiGeneration::Legacy
        }
    }

    /// Whether `add_remote_publisher` exists (Janus >= 1.1).
    pub fn has_remote_publishers(&self) -> bool {
        self.version >= REMOTE_PUBLISHER_MIN_VERSION
    }

    pub fn videoroom(&self) -> Option<&PluginInfo> {
        self.plugins.get(VIDEOROOM_PLUGIN)
    }

    /// The checks upstream's MCU start-up does (JAN-01): the VideoRoom plugin
    /// and data channels are required; full trickle only earns a warning.
    pub fn check_mcu_requirements(&self) -> Result<InfoWarnings, crate::Error> {
        if self.videoroom().is_none() {
            return Err(crate::Error::Unsupported(format!(
                "plugin {} is not available in Janus {}",
                VIDEOROOM_PLUGIN, self.version_string
            )));
        }
        if !self.data_channels {
            return Err(crate::Error::Unsupported(
                "Janus was built without data channel support".to_owned(),
            ));
        }
        Ok(InfoWarnings {
            full_trickle_disabled: !self.full_trickle,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn parses_trickle_and_event_messages() {
        let t: Incoming = serde_json::from_str(
            r#"{"janus":"trickle","session_id":1,"sender":2,"candidate":{"sdpMLineIndex":0,"candidate":"candidate:1 1 udp 1 127.0.0.1 4000 typ host"}}"#,
        )
        .unwrap();
        assert_eq!(t.janus, "trickle");
        assert_eq!(t.sender, Some(2));
        let c: IceCandidate = serde_json::from_value(t.candidate.unwrap()).unwrap();
        assert_eq!(c.sdp_mline_index, Some(0));
        assert_eq!(c.sdp_mid, None);

        let e: Incoming = serde_json::from_str(
            r#"{"janus":"event","session_id":1,"transaction":"6","sender":2,
                "plugindata":{"plugin":"janus.plugin.videoroom","data":{"videoroom":"event","configured":"ok"}},
                "jsep":{"type":"answer","sdp":"v=0\r\n","e2ee":false}}"#,
        )
        .unwrap();
        let jsep = e.jsep.unwrap();
        assert!(jsep.is_answer());
        assert_eq!(jsep.extra.get("e2ee"), Some(&Value::Bool(false)));
        assert_eq!(e.plugindata.unwrap().data["configured"], "ok");
    }

    #[test]
    fn unknown_fields_and_types_do_not_break_parsing() {
        let m: Incoming =
            serde_json::from_str(r#"{"janus":"media","sender":3,"mid":"1","type":"video","receiving":true,"seconds":1,"new":[1]}"#)
                .unwrap();
        assert_eq!(m.mid.as_deref(), Some("1"));
        assert_eq!(m.media_type.as_deref(), Some("video"));
        assert!(serde_json::from_str::<Incoming>(r#"{"no":"type"}"#).is_err());
    }

    #[test]
    fn server_info_generation_and_requirements() {
        let info: ServerInfo = serde_json::from_str(
            r#"{"janus":"server_info","name":"Janus WebRTC Server","version":1102,"version_string":"1.1.2",
                "data_channels":true,"full-trickle":false,"session-timeout":60,
                "plugins":{"janus.plugin.videoroom":{"name":"JANUS VideoRoom plugin","version":9,"version_string":"0.0.9"}}}"#,
        )
        .unwrap();
        assert_eq!(info.api_generation(), ApiGeneration::Multistream);
        assert!(info.has_remote_publishers());
        assert_eq!(
            info.check_mcu_requirements().unwrap(),
            InfoWarnings {
                full_trickle_disabled: true
            }
        );

        let old = ServerInfo {
            version: 15,
            data_channels: true,
            ..info.clone()
        };
        assert_eq!(old.api_generation(), ApiGeneration::Legacy);
        assert!(!old.has_remote_publishers());

        let no_dc = ServerInfo {
            data_channels: false,
            ..info.clone()
        };
        assert!(no_dc.check_mcu_requirements().is_err());
        let no_vr = ServerInfo {
            plugins: BTreeMap::new(),
            ..info
        };
        assert!(no_vr.check_mcu_requirements().is_err());
    }
}
