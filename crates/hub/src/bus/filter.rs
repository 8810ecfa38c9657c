//! Per-recipient rewrites of messages for sessions with `hide-displaynames`.
//! Only those sessions pay for a copy; everyone else shares the original.

use proto::client::{EventServerMessage, RoomEventMessage, ServerMessage, SessionEntry};
use serde_json::Value;
use std::sync::Arc;

use crate::bus::message::OutMsg;

/// A copy without display names, or `None` when nothing needed to change.
pub fn hide_display_names(msg: &Arc<OutMsg>) -> Option<Arc<OutMsg>> {
    let ev = msg.msg.event.as_ref()?;
    match ev.kind.as_str() {
        "join" => {
            let join = ev.join.as_ref()?;
            let mut changed = false;
            let entries: Vec<SessionEntry> = join
                .iter()
                .map(|e| {
                    let mut e = e.clone();
                    if let Some(user) = &e.user {
                        if let Ok(Value::Object(mut map)) =
                            serde_json::from_str::<Value>(user.get())
                        {
                            if map.remove("displayname").is_some() {
                                changed = true;
                                e.user = if map.is_empty() {
                                    None
                                } else {
                                    Some(Arc::from(proto::to_raw(&Value::Object(map))))
                                };
                            }
                        }
                    }
                    e
                })
                .collect();
            if !changed {
                return None;
            }
            let mut event = EventServerMessage::new(&ev.target, &ev.kind);
            event.join = Some(entries);
            Some(OutMsg::new(ServerMessage::event(event)))
        }
        "message" => {
            let m = ev.message.as_ref()?;
            let data = m.data.as_ref()?;
            let mut v: Value = serde_json::from_str(data.get()).ok()?;
            if v.get("type").and_then(Value::as_str) != Some("chat") {
                return None;
            }
            let comment = v.get_mut("chat")?.get_mut("comment")?.as_object_mut()?;
            match comment.get("actorDisplayName") {
                Some(Value::String(s)) if !s.is_empty() => {}
                Some(Value::String(_)) | None => return None,
                Some(_) => {}
            }
            comment.insert("actorDisplayName".into(), Value::String(String::new()));
            let mut event = EventServerMessage::new(&ev.target, &ev.kind);
            event.message = Some(RoomEventMessage {
                roomid: m.roomid.clone(),
                data: Some(proto::to_raw(&v)),
            });
            Some(OutMsg::new(ServerMessage::event(event)))
        }
        _ => None,
    }
}

/// `message` whose data is a `nickChanged` notification.
pub fn is_nick_changed(msg: &OutMsg) -> bool {
    let Some(data) = msg.msg.message.as_ref().and_then(|m| m.data.as_ref()) else {
        return false;
    };
    #[derive(serde::Deserialize)]
    struct D {
        #[serde(default, rename = "type")]
        kind: String,
    }
    serde_json::from_str::<D>(data.get()).is_ok_and(|d| d.kind == "nickChanged")
}

/// What a backend chat message (`event/room/message` with `chat.comment` or
/// `chat.comments`, upstream 2.0.3 `chat-relay`) becomes per client.
#[derive(Debug)]
pub struct ChatVariants {
    /// For clients that announced `chat-relay`: one message per comment.
    pub relay: Vec<Arc<OutMsg>>,
    /// For the others: the comments left out, only the refresh hint (or,
    /// for a message that never had the hint, the comments as well).
    pub plain: Vec<Arc<OutMsg>>,
}

/// `None` unless the message is a chat event with at least one comment.
pub fn chat_variants(msg: &ServerMessage) -> Option<ChatVariants> {
    let ev = msg.event.as_ref()?;
    if ev.target != "room" || ev.kind != "message" {
        return None;
    }
    let m = ev.message.as_ref()?;
    let v: Value = serde_json::from_str(m.data.as_ref()?.get()).ok()?;
    if v.get("type").and_then(Value::as_str) != Some("chat") {
        return None;
    }
    let chat = v.get("chat")?.as_object()?;
    let refresh = chat.get("refresh").and_then(Value::as_bool) == Some(true);
    let present = |c: &&Value| !c.is_null();
    let mut comments: Vec<Value> = chat
        .get("comment")
        .into_iter()
        .filter(present)
        .cloned()
        .collect();
    if let Some(Value::Array(list)) = chat.get("comments") {
        comments.extend(list.iter().filter(present).cloned());
    }
    if comments.is_empty() {
        return None;
    }
    let event_with = |data: Value| {
        let mut event = EventServerMessage::new(&ev.target, &ev.kind);
        event.message = Some(RoomEventMessage {
            roomid: m.roomid.clone(),
            data: Some(proto::to_raw(&data)),
        });
        OutMsg::new(ServerMessage {
            id: msg.id.clone(),
            ..ServerMessage::event(event)
        })
    };
    let relay: Vec<Arc<OutMsg>> = comments
        .into_iter()
        .map(|c| event_with(serde_json::json!({"type": "chat", "chat": {"comment": c}})))
        .collect();
    let plain = if refresh {
        vec![event_with(
            serde_json::json!({"type": "chat", "chat": {"refresh": true}}),
        )]
    } else {
        relay.clone()
    };
    Some(ChatVariants { relay, plain })
}
