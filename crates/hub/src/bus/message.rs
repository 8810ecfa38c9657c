//! What the bus carries to a session: a server message, serialised into a
//! frame at most once however many sessions receive it.

use proto::client::ServerMessage;
use std::sync::{Arc, OnceLock};

/// A server message serialised at most once, however many sessions receive it.
#[derive(Debug)]
pub struct OutMsg {
    pub msg: ServerMessage,
    text: OnceLock<Frame>,
    /// The per-client variants of a backend chat message (`chat-relay`),
    /// worked out once for all recipients.
    chat: OnceLock<Option<Arc<super::filter::ChatVariants>>>,
}

impl OutMsg {
    pub fn new(msg: ServerMessage) -> Arc<OutMsg> {
        Arc::new(OutMsg {
            msg,
            text: OnceLock::new(),
            chat: OnceLock::new(),
        })
    }

    /// A message whose frame is already made (received from another server
    /// of the cluster, or relayed from a federated one: the text it sent,
    /// which may keep fields `msg` does not model).
    pub fn with_frame(msg: ServerMessage, frame: Frame) -> Arc<OutMsg> {
        Arc::new(OutMsg {
            msg,
            text: OnceLock::from(frame),
            chat: OnceLock::new(),
        })
    }

    /// For an `event/room/message` carrying chat comments: what clients with
    /// and without `chat-relay` get instead. `None` when everyone gets the
    /// message as it is.
    pub(crate) fn chat_variants(&self) -> Option<Arc<super::filter::ChatVariants>> {
        self.chat
            .get_or_init(|| super::filter::chat_variants(&self.msg).map(Arc::new))
            .clone()
    }

    /// The frame text, serialised on first use.
    pub fn frame(&self) -> Frame {
        self.text
            .get_or_init(|| Frame::from(self.msg.to_text()))
            .clone()
    }

    pub fn is_chat_refresh(&self) -> bool {
        let m = &self.msg;
        if m.kind != "message" {
            return false;
        }
        let Some(data) = m.message.as_ref().and_then(|mm| mm.data.as_ref()) else {
            return false;
        };
        #[derive(serde::Deserialize)]
        struct Chat {
            #[serde(default)]
            refresh: bool,
        }
        #[derive(serde::Deserialize)]
        struct Data {
            #[serde(default, rename = "type")]
            kind: String,
            chat: Option<Chat>,
        }
        match serde_json::from_str::<Data>(data.get()) {
            Ok(d) => d.kind == "chat" && d.chat.is_some_and(|c| c.refresh),
            Err(_) => false,
        }
    }
}

/// The text of one frame: shared, immutable, and known to be UTF-8 (built
/// from a `String`), so writing it needs no validation.
pub type Frame = tokio_tungstenite::tungstenite::Utf8Bytes;
