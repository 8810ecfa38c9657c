//! One link's task: connect to the other proxy, say hello, then relay
//! requests and answers until cancelled or broken; and the requests sent
//! over it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proto::proxy::{
    CommandProxyClientMessage, HelloProxyClientMessage, ProxyClientMessage, ProxyServerMessage,
    HELLO_VERSION,
};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tracing::{info, warn};

use super::{end_feed, Feed, Link, Pending, RemoteError, Remotes, REQUEST_TIMEOUT};

impl Link {
    pub(super) async fn request(
        &self,
        mut cmd: CommandProxyClientMessage,
    ) -> Result<ProxyServerMessage, RemoteError> {
        let id = (self.next.fetch_add(1, Ordering::Relaxed) + 1).to_string();
        let kind = std::mem::take(&mut cmd.kind);
        cmd.kind = kind.clone();
        let msg = ProxyClientMessage {
            id,
            kind: "command".into(),
            command: Some(cmd),
            ..Default::default()
        };
        let (tx, rx) = oneshot::channel();
        let fail = |what: &str| RemoteError::Remote(self.url.clone(), format!("{kind}: {what}"));
        self.cmd
            .send((msg, Some(tx)))
            .await
            .map_err(|_| fail("connection closed"))?;
        match tokio::time::timeout(REQUEST_TIMEOUT, rx).await {
            Ok(Ok(reply)) if reply.kind == "error" => Err(fail(
                &reply.error.map(|e| e.to_string()).unwrap_or_default(),
            )),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(fail("connection closed")),
            Err(_) => Err(fail("timed out")),
        }
    }
}

/// The link's task: connect, hello, then relay until cancelled or broken.
pub(super) async fn run_link(
    remotes: Weak<Remotes>,
    link: Arc<Link>,
    mut rx: mpsc::Receiver<(ProxyClientMessage, Option<Pending>)>,
    token: String,
    tls: Arc<rustls::ClientConfig>,
    ready: oneshot::Sender<Result<(), String>>,
) {
    let mut ws = match open_link(&link, token, tls).await {
        Ok(ws) => {
            let _ = ready.send(Ok(()));
            ws
        }
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let mut pending: HashMap<String, Pending> = HashMap::new();
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = link.cancel.cancelled() => {
                let _ = ws.send(Message::Close(None)).await;
                break;
            }
            _ = ping.tick() => {
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            cmd = rx.recv() => {
                let Some((msg, reply)) = cmd else { break };
                if !mcu::proxy_ws::send_request(&mut ws, &mut pending, msg, reply).await {
                    break;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(msg) = serde_json::from_str::<ProxyServerMessage>(t.as_str()) else {
                        continue;
                    };
                    if let Some(r) = pending.remove(&msg.id) {
                        let _ = r.send(msg);
                        continue;
                    }
                    if let Some(e) = msg.event.filter(|e| e.kind == "publisher-closed") {
                        publisher_closed(&link, &e.client_id);
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            }
        }
    }
    // Gone: every feed through this link ends; requests still waiting fail
    // at once instead of at their timeout.
    drop(pending);
    rx.close();
    link.cancel.cancel();
    let feeds: Vec<Arc<Feed>> = link.feeds.lock().drain().map(|(_, f)| f).collect();
    if !feeds.is_empty() {
        warn!(url = %link.url, feeds = feeds.len(), "lost the remote proxy, ending its streams");
    }
    for f in feeds {
        end_feed(&link, &f, None, false).await;
    }
    if let Some(r) = remotes.upgrade() {
        r.links.lock().retain(|_, l| !Arc::ptr_eq(l, &link));
    }
}

type LinkWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects a link and says hello; the error is what `ready` reports.
async fn open_link(
    link: &Link,
    token: String,
    tls: Arc<rustls::ClientConfig>,
) -> Result<LinkWs, String> {
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        &link.url,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(tls)),
    );
    let mut ws = match tokio::time::timeout(REQUEST_TIMEOUT, connect).await {
        Ok(Ok((ws, _))) => ws,
        Ok(Err(e)) => return Err(e.to_string()),
        Err(_) => return Err("connect timed out".into()),
    };
    let hello = ProxyClientMessage {
        id: "hello".into(),
        kind: "hello".into(),
        hello: Some(HelloProxyClientMessage {
            version: HELLO_VERSION.into(),
            token,
            ..Default::default()
        }),
        ..Default::default()
    };
    let _ = ws
        .send(Message::text(
            serde_json::to_string(&hello).unwrap_or_default(),
        ))
        .await;
    let answer = mcu::proxy_ws::hello_reply(&mut ws, REQUEST_TIMEOUT).await;
    match answer {
        Some(m) if m.kind == "hello" => {
            info!(url = %link.url, "connected to remote proxy");
            Ok(ws)
        }
        Some(m) => {
            let e = m.error.map(|e| e.to_string()).unwrap_or_default();
            warn!(url = %link.url, error = %e, "remote proxy refused our hello");
            Err(e)
        }
        None => Err("no hello answer".into()),
    }
}

/// The remote proxy says one of its publishers is gone: end our feeds of it.
fn publisher_closed(link: &Arc<Link>, client_id: &str) {
    let ended: Vec<Arc<Feed>> = {
        let mut feeds = link.feeds.lock();
        let keys: Vec<_> = feeds
            .keys()
            .filter(|(id, _)| *id == client_id)
            .cloned()
            .collect();
        keys.iter().filter_map(|k| feeds.remove(k)).collect()
    };
    for f in ended {
        info!(url = %link.url, publisher = %f.publisher_id, "remote publisher closed");
        // Not inline: a set-up in progress may hold the
        // feed while it waits for a reply this task reads.
        let link = link.clone();
        tokio::spawn(async move { end_feed(&link, &f, None, false).await });
    }
}
