//! Client message handlers, one module per kind of message.
//!
//! A text frame is parsed once, in `dispatch`, into a [`ClientMessage`]
//! and its [`MessageKind`]. Every place that treats kinds differently
//! matches on `MessageKind` exhaustively, so adding a kind makes the
//! compiler point at each of them: the wire name ([`MessageKind::parse`]),
//! validation ([`MessageKind::validate`]), the metric label
//! ([`MessageKind::label`]), whether a session in a federated room passes
//! it on to the remote server ([`MessageKind::to_federation`]) and the
//! handler (`dispatch`).

use proto::client::{ClientMessage, Error, ServerMessage};
use std::sync::Arc;
use tracing::debug;

use crate::bus::OutMsg;
use crate::core::conn::Conn;
use crate::core::errors::{err_hello_expected, err_invalid_format};
use crate::core::Pending;
use crate::Hub;

pub mod hello;
pub mod internal;
pub mod message;
pub mod room;

/// The kinds of client message (`type` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Hello,
    Bye,
    Room,
    Message,
    Control,
    Internal,
    Transient,
    /// Unknown (or missing) types: counted, then ignored.
    Other,
}

impl MessageKind {
    /// Every kind, in declaration order (`ALL[k as usize] == k`).
    pub const ALL: [MessageKind; 8] = [
        MessageKind::Hello,
        MessageKind::Bye,
        MessageKind::Room,
        MessageKind::Message,
        MessageKind::Control,
        MessageKind::Internal,
        MessageKind::Transient,
        MessageKind::Other,
    ];

    /// The kind of a message's `type` field.
    pub fn parse(kind: &str) -> MessageKind {
        match kind {
            "hello" => MessageKind::Hello,
            "bye" => MessageKind::Bye,
            "room" => MessageKind::Room,
            "message" => MessageKind::Message,
            "control" => MessageKind::Control,
            "internal" => MessageKind::Internal,
            "transient" => MessageKind::Transient,
            _ => MessageKind::Other,
        }
    }

    /// The `type` label of `signaling_hub_messages_total`.
    pub fn label(self) -> &'static str {
        match self {
            MessageKind::Hello => "hello",
            MessageKind::Bye => "bye",
            MessageKind::Room => "room",
            MessageKind::Message => "message",
            MessageKind::Control => "control",
            MessageKind::Internal => "internal",
            MessageKind::Transient => "transient",
            MessageKind::Other => "other",
        }
    }

    /// Structural validation of a message of this kind: its payload is
    /// there and well formed. The error text is only logged; the client
    /// gets `invalid_format`.
    pub fn validate(self, msg: &mut ClientMessage) -> Result<(), String> {
        fn need<T>(payload: Option<T>, what: &str) -> Result<T, String> {
            payload.ok_or_else(|| format!("{what} missing"))
        }
        match self {
            MessageKind::Hello => need(msg.hello.as_mut(), "hello")?.check_valid(),
            MessageKind::Bye => Ok(()),
            MessageKind::Room => need(msg.room.as_ref(), "room").map(|_| ()),
            MessageKind::Message => need(msg.message.as_ref(), "message")?.check_valid(),
            MessageKind::Control => need(msg.control.as_ref(), "control")?.check_valid(),
            MessageKind::Internal => need(msg.internal.as_ref(), "internal")?.check_valid(),
            MessageKind::Transient => need(msg.transient.as_ref(), "transient")?.check_valid(),
            MessageKind::Other if msg.kind.is_empty() => Err("type missing".into()),
            MessageKind::Other => Ok(()),
        }
    }

    /// Whether a session in a room of another server (federation) sends
    /// messages of this kind on to that server instead of handling them here.
    pub fn to_federation(self) -> bool {
        match self {
            MessageKind::Hello | MessageKind::Bye | MessageKind::Room => false,
            MessageKind::Message
            | MessageKind::Control
            | MessageKind::Internal
            | MessageKind::Transient
            | MessageKind::Other => true,
        }
    }
}

/// Handle one text frame of a client connection: parse, validate, count,
/// then hand it to its handler (or to the federated server).
/// An error answer straight on the connection (before a session exists,
/// or when the request is refused before it reaches one).
pub(crate) fn send_error(conn: &Conn, id: &str, e: Error) {
    conn.send(OutMsg::new(ServerMessage::error(id, e)).frame());
}

pub(crate) fn dispatch(hub: &Arc<Hub>, conn: &Arc<Conn>, text: &str) -> Option<Pending> {
    let mut msg: ClientMessage = match proto::client::parse_client_message(text) {
        Ok(m) => m,
        Err(e) => {
            debug!(conn = conn.id, error = %e, "could not decode client message");
            hub.reply(conn, ServerMessage::error("", err_invalid_format()));
            return None;
        }
    };
    let kind = MessageKind::parse(&msg.kind);
    if let Err(e) = kind.validate(&mut msg) {
        debug!(conn = conn.id, error = %e, "invalid client message");
        hub.reply(conn, ServerMessage::error(&msg.id, err_invalid_format()));
        return None;
    }
    hub.metrics.count_message(kind);
    let Some(session) = conn.session() else {
        if kind != MessageKind::Hello {
            send_error(conn, &msg.id, err_hello_expected());
            return None;
        }
        let hub = hub.clone();
        let conn = conn.clone();
        // A resume may have to be passed on to another server as it came.
        let text = msg
            .hello
            .as_ref()
            .is_some_and(|h| !h.resumeid.is_empty())
            .then(|| text.to_owned());
        return Some(Box::pin(async move {
            hello::process_hello(hub, &conn, msg, text).await
        }));
    };
    if kind.to_federation() {
        if let Some(federation) = crate::federation::FederationClient::of(&session) {
            return federation.proxy(msg);
        }
    }
    match kind {
        MessageKind::Room => room::process_room(hub, conn, &session, msg),
        MessageKind::Message => message::process_message(hub, &session, msg, false),
        MessageKind::Control => message::process_message(hub, &session, msg, true),
        MessageKind::Internal => internal::process_internal(hub, &session, msg),
        MessageKind::Transient => {
            message::process_transient(hub, &session, msg);
            None
        }
        MessageKind::Bye => {
            hello::process_bye(hub, conn, &session, &msg.id);
            None
        }
        MessageKind::Hello => {
            debug!(session = %session.public_id, "ignoring hello on authenticated connection");
            None
        }
        MessageKind::Other => {
            debug!(session = %session.public_id, kind = %msg.kind, "ignoring unknown message");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_listed_in_order_and_named_once() {
        for (i, k) in MessageKind::ALL.iter().enumerate() {
            assert_eq!(*k as usize, i);
            assert_eq!(MessageKind::parse(k.label()), *k);
        }
        assert_eq!(MessageKind::parse(""), MessageKind::Other);
        assert_eq!(MessageKind::parse("Hello"), MessageKind::Other);
    }

    /// The typed validation accepts and refuses exactly what the protocol
    /// crate's string-based `check_valid` does.
    #[test]
    fn validation_matches_the_protocol_crate() {
        let frames = [
            r#"{"type":"hello"}"#,
            r#"{"type":"hello","hello":{"version":"1.0","auth":{"params":{}}}}"#,
            r#"{"type":"hello","hello":{"version":"3.0","auth":{"params":{"t":1}}}}"#,
            r#"{"type":"hello","hello":{"version":"2.0","resumeid":"x"}}"#,
            r#"{"type":"bye"}"#,
            r#"{"type":"room"}"#,
            r#"{"type":"room","room":{"roomid":"r"}}"#,
            r#"{"type":"message"}"#,
            r#"{"type":"message","message":{"recipient":{"type":"session","sessionid":"s"},"data":{}}}"#,
            r#"{"type":"message","message":{"recipient":{"type":"nobody"},"data":{}}}"#,
            r#"{"type":"control","control":{"recipient":{"type":"room"},"data":{}}}"#,
            r#"{"type":"control"}"#,
            r#"{"type":"internal"}"#,
            r#"{"type":"internal","internal":{"type":"addsession"}}"#,
            r#"{"type":"internal","internal":{"type":"nonsense"}}"#,
            r#"{"type":"transient"}"#,
            r#"{"type":"transient","transient":{"type":"set","key":"k","value":1}}"#,
            r#"{"type":"transient","transient":{"type":"set"}}"#,
            r#"{"type":""}"#,
            r#"{"id":"1"}"#,
            r#"{"type":"unknown-kind"}"#,
        ];
        for f in frames {
            let mut a = proto::client::parse_client_message(f).unwrap();
            let mut b = proto::client::parse_client_message(f).unwrap();
            let kind = MessageKind::parse(&a.kind);
            assert_eq!(kind.validate(&mut a), b.check_valid(), "{f}");
        }
    }
}
