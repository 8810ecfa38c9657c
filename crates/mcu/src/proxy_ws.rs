//! WebSocket helpers of the MCU proxy protocol, for both of its ends.

use futures_util::{SinkExt, StreamExt};
use proto::proxy::{ProxyClientMessage, ProxyServerMessage};
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;

/// The answer to the hello sent with id `hello` (frames before it are
/// skipped), within `timeout`.
pub async fn hello_reply<S, E>(ws: &mut S, timeout: Duration) -> Option<ProxyServerMessage>
where
    S: futures_util::Stream<Item = Result<Message, E>> + Unpin,
{
    tokio::time::timeout(timeout, async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Text(t) = m {
                if let Ok(msg) = serde_json::from_str::<ProxyServerMessage>(t.as_str()) {
                    if msg.id == "hello" {
                        return Some(msg);
                    }
                }
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
}

/// Send a request to a proxy, its reply expected under its id in
/// `pending`; false when the socket failed.
pub async fn send_request<S>(
    ws: &mut S,
    pending: &mut HashMap<String, oneshot::Sender<ProxyServerMessage>>,
    msg: ProxyClientMessage,
    reply: Option<oneshot::Sender<ProxyServerMessage>>,
) -> bool
where
    S: futures_util::Sink<Message> + Unpin,
{
    if let Some(r) = reply {
        pending.insert(msg.id.clone(), r);
    }
    let text = serde_json::to_string(&msg).unwrap_or_default();
    ws.send(Message::text(text)).await.is_ok()
}
