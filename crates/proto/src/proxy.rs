//! The protocol between signaling servers and MCU proxies (`/proxy`
//! WebSocket, upstream `api_proxy.go`, PXP-*): a signaling server says hello
//! with an RSA-signed token, then creates publishers and subscribers on the
//! proxy's Janus and exchanges SDP and candidates for them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::{Error, HelloServerInfo};

/// The only hello version.
pub const HELLO_VERSION: &str = "1.0";

/// A message from a signaling server to a proxy.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ProxyClientMessage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<HelloProxyClientMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bye: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandProxyClientMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadProxyClientMessage>,
}

impl ProxyClientMessage {
    /// Upstream's `CheckValid`: what must be present for each type.
    pub fn check_valid(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "" => Err("type missing".into()),
            "hello" => match &self.hello {
                None => Err("hello missing".into()),
                Some(h) if h.version != HELLO_VERSION => {
                    Err(format!("unsupported hello version: {}", h.version))
                }
                Some(h) if h.resumeid.is_empty() && h.token.is_empty() => {
                    Err("token missing".into())
                }
                Some(_) => Ok(()),
            },
            "command" => match &self.command {
                None => Err("command missing".into()),
                Some(c) => c.check_valid(),
            },
            "payload" => match &self.payload {
                None => Err("payload missing".into()),
                Some(p) => p.check_valid(),
            },
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct HelloProxyClientMessage {
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub resumeid: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<String>,
    #[serde(default)]
    pub token: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct CommandProxyClientMessage {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
    #[serde(
        default,
        rename = "streamType",
        skip_serializing_if = "String::is_empty"
    )]
    pub stream_type: String,
    #[serde(
        default,
        rename = "publisherId",
        skip_serializing_if = "String::is_empty"
    )]
    pub publisher_id: String,
    #[serde(default, rename = "clientId", skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub bitrate: u64,
    #[serde(default, skip_serializing_if = "is_zero_u32")]
    pub mediatypes: u32,
    /// Remote streams (`create-subscriber` on a proxy other than the
    /// publisher's): the publisher's proxy and a token for it whose `sub`
    /// is `publisherId`.
    #[serde(
        default,
        rename = "remoteUrl",
        skip_serializing_if = "String::is_empty"
    )]
    pub remote_url: String,
    #[serde(
        default,
        rename = "remoteToken",
        skip_serializing_if = "String::is_empty"
    )]
    pub remote_token: String,
    /// `publish-remote` / `unpublish-remote` (proxy to proxy): where the
    /// publisher's Janus sends RTP.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(default, skip_serializing_if = "is_zero_u16")]
    pub port: u16,
    #[serde(default, rename = "rtcpPort", skip_serializing_if = "is_zero_u16")]
    pub rtcp_port: u16,
}

fn is_zero_u16(v: &u16) -> bool {
    *v == 0
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

fn is_zero_u32(v: &u32) -> bool {
    *v == 0
}

impl CommandProxyClientMessage {
    pub fn check_valid(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "" => Err("type missing".into()),
            "create-publisher" if self.stream_type.is_empty() => Err("stream type missing".into()),
            "create-subscriber" if self.publisher_id.is_empty() => {
                Err("publisher id missing".into())
            }
            "create-subscriber" if self.stream_type.is_empty() => Err("stream type missing".into()),
            "create-subscriber" if !self.remote_url.is_empty() && self.remote_token.is_empty() => {
                Err("remote token missing".into())
            }
            "create-subscriber"
                if !self.remote_url.is_empty()
                    && !["ws://", "wss://", "http://", "https://"]
                        .iter()
                        .any(|p| self.remote_url.starts_with(p)) =>
            {
                Err("invalid remote url".into())
            }
            "get-publisher-streams" if self.client_id.is_empty() => Err("client id missing".into()),
            "publish-remote" | "unpublish-remote"
                if self.client_id.is_empty() || self.hostname.is_empty() || self.port == 0 =>
            {
                Err("client id, hostname and port are required".into())
            }
            "delete-publisher" | "delete-subscriber" if self.client_id.is_empty() => {
                Err("client id missing".into())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct PayloadProxyClientMessage {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, rename = "clientId")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Map<String, Value>>,
}

impl PayloadProxyClientMessage {
    pub fn check_valid(&self) -> Result<(), String> {
        match self.kind.as_str() {
            "" => return Err("type missing".into()),
            "offer" | "answer" | "candidate"
                if self.payload.as_ref().is_none_or(|p| p.is_empty()) =>
            {
                return Err("payload missing".into())
            }
            _ => {}
        }
        if self.client_id.is_empty() {
            return Err("client id missing".into());
        }
        Ok(())
    }
}

/// A message from a proxy to a signaling server.
#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ProxyServerMessage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Error>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hello: Option<HelloProxyServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bye: Option<ByeProxyServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<CommandProxyServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<PayloadProxyServerMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<EventProxyServerMessage>,
}

impl ProxyServerMessage {
    pub fn error(id: &str, error: Error) -> ProxyServerMessage {
        ProxyServerMessage {
            id: id.to_owned(),
            kind: "error".into(),
            error: Some(error),
            ..Default::default()
        }
    }

    pub fn event(event: EventProxyServerMessage) -> ProxyServerMessage {
        ProxyServerMessage {
            kind: "event".into(),
            event: Some(event),
            ..Default::default()
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct HelloProxyServerMessage {
    pub version: String,
    pub sessionid: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<HelloServerInfo>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct ByeProxyServerMessage {
    pub reason: String,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct CommandProxyServerMessage {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// `get-publisher-streams`: the publisher's streams (Janus's
    /// remote-publisher form: `mid`, `mindex`, `type`, `codec`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub streams: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct PayloadProxyServerMessage {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, rename = "clientId")]
    pub client_id: String,
    #[serde(default)]
    pub payload: Option<Value>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct EventProxyServerMessage {
    #[serde(default, rename = "type")]
    pub kind: String,
    #[serde(default, rename = "clientId", skip_serializing_if = "String::is_empty")]
    pub client_id: String,
    #[serde(default, skip_serializing_if = "is_zero_i64")]
    pub load: i64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sid: String,
    /// `update-load` of a proxy with `[bandwidth]` limits: how much of them
    /// its publishers and subscribers use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<EventProxyServerBandwidth>,
}

/// Percentages of a proxy's `[bandwidth] incoming` / `outgoing` limits in
/// use (absent: no limit). At 100 a signaling server places no more
/// publishers (incoming) or subscribers (outgoing) there if it can avoid it.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq)]
pub struct EventProxyServerBandwidth {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incoming: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outgoing: Option<f64>,
}

impl EventProxyServerBandwidth {
    pub fn allows_incoming(&self) -> bool {
        self.incoming.is_none_or(|p| p < 100.0)
    }
    pub fn allows_outgoing(&self) -> bool {
        self.outgoing.is_none_or(|p| p < 100.0)
    }
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn validity_like_upstream() {
        let parse = |s: &str| serde_json::from_str::<ProxyClientMessage>(s).unwrap();
        assert!(
            parse(r#"{"type":"hello","hello":{"version":"1.0","token":"x"}}"#)
                .check_valid()
                .is_ok()
        );
        assert!(
            parse(r#"{"type":"hello","hello":{"version":"2.0","token":"x"}}"#)
                .check_valid()
                .is_err()
        );
        assert!(parse(r#"{"type":"hello","hello":{"version":"1.0"}}"#)
            .check_valid()
            .is_err());
        assert!(
            parse(r#"{"type":"command","command":{"type":"create-publisher"}}"#)
                .check_valid()
                .is_err()
        );
        assert!(parse(
            r#"{"type":"command","command":{"type":"delete-subscriber","clientId":"a"}}"#
        )
        .check_valid()
        .is_ok());
        assert!(
            parse(r#"{"type":"payload","payload":{"type":"offer","clientId":"a"}}"#)
                .check_valid()
                .is_err()
        );
        assert!(
            parse(r#"{"type":"payload","payload":{"type":"endOfCandidates","clientId":"a"}}"#)
                .check_valid()
                .is_ok()
        );
        assert!(parse(r#"{"type":""}"#).check_valid().is_err());
    }

    #[test]
    fn server_messages_omit_empty_parts() {
        let m = ProxyServerMessage::event(EventProxyServerMessage {
            kind: "update-load".into(),
            load: 3,
            ..Default::default()
        });
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            r#"{"type":"event","event":{"type":"update-load","load":3}}"#
        );
    }
}
