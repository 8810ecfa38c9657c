//! [`ProxyMcu`]: the MCU through one or more MCU proxies (`[mcu] type =
//! proxy`, PXS-*). Each proxy fronts one Janus; publishers go to the
//! connected proxy with the lowest load that is not draining, subscribers to
//! the proxy of their publisher.
//!
//! One task per proxy owns its WebSocket: it says hello with an RS256 token
//! (`[mcu] token_id` / `token_key`), resumes its proxy session after a
//! reconnect, matches replies to requests by id and routes payloads and
//! events to the publisher or subscriber they name.

use futures_util::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use proto::proxy::{
    CommandProxyClientMessage, CommandProxyServerMessage, HelloProxyClientMessage,
    PayloadProxyClientMessage, ProxyClientMessage, ProxyServerMessage, HELLO_VERSION,
};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::McuMetrics;
use super::{
    BoxFuture, ClientInfo, Mcu, McuClient, McuError, McuListener, McuMessage, MediaTypes,
    PublisherParams, Responder, StreamType, SubscriberParams,
};

/// What `[mcu]` says about proxies.
#[derive(Clone)]
pub struct ProxySettings {
    pub urls: Vec<String>,
    /// `urltype = etcd`: the etcd client and the key prefix whose values
    /// (`{"address": "http://proxy:9090"}`) name the proxies.
    pub etcd: Option<(runtime::etcd::EtcdClient, String)>,
    /// `dnsdiscovery`: connect to every address a URL's host resolves to,
    /// following DNS changes.
    pub dns_discovery: bool,
    /// TLS for `wss://` proxies (`[mcu] skipverify` turns checks off).
    pub tls: Arc<rustls::ClientConfig>,
    pub token_id: String,
    pub token_key: EncodingKey,
    /// `[mcu] proxytimeout`: one request to a proxy (default 2 s).
    pub request_timeout: Duration,
    /// `[mcu] timeout`: creating a subscriber may wait this long for its
    /// publisher.
    pub timeout: Duration,
    pub max_stream_bitrate: u64,
    pub max_screen_bitrate: u64,
}

impl ProxySettings {
    /// Reads `[mcu]` for `type = proxy`. Errors name the key.
    pub fn from_config(
        ini: &runtime::config::Ini,
    ) -> Result<ProxySettings, (&'static str, String)> {
        let urltype = ini.get_string("mcu", "urltype", "static");
        let (urls, etcd) = match urltype.as_str() {
            "static" => {
                let urls = parse_urls(&ini.get_string("mcu", "url", "")).map_err(|e| ("url", e))?;
                if urls.is_empty() {
                    return Err(("url", "no proxy URL configured".into()));
                }
                (urls, None)
            }
            "etcd" => {
                let client =
                    runtime::etcd::EtcdClient::from_config(ini, "mcu").map_err(|e| match e {
                        runtime::etcd::EtcdError::Config { key, reason } => (key, reason),
                        e => ("endpoints", e.to_string()),
                    })?;
                let prefix = ini.get_string("mcu", "keyprefix", "");
                if prefix.is_empty() {
                    return Err(("keyprefix", "missing".into()));
                }
                (Vec::new(), Some((client, prefix)))
            }
            other => {
                return Err((
                    "urltype",
                    format!("{other:?} is not supported (static or etcd)"),
                ))
            }
        };
        let token_id = ini.get_string("mcu", "token_id", "");
        if token_id.is_empty() {
            return Err(("token_id", "missing".into()));
        }
        let file = ini.get_string("mcu", "token_key", "");
        let pem = std::fs::read(&file).map_err(|e| ("token_key", format!("{file:?}: {e}")))?;
        let token_key = EncodingKey::from_rsa_pem(&pem)
            .map_err(|e| ("token_key", format!("{file:?} is no RSA private key: {e}")))?;
        let secs = |key: &'static str, default: u64| -> Result<u64, (&'static str, String)> {
            let v = ini
                .get_int("mcu", key, 0)
                .map_err(|e| (key, e.to_string()))?;
            Ok(if v <= 0 { default } else { v as u64 })
        };
        let dns_discovery = ini
            .get_bool("mcu", "dnsdiscovery", false)
            .map_err(|e| ("dnsdiscovery", e.to_string()))?;
        let skip_verify = ini
            .get_bool("mcu", "skipverify", false)
            .map_err(|e| ("skipverify", e.to_string()))?;
        if skip_verify {
            warn!("proxy certificate verification is disabled ([mcu] skipverify)");
        }
        let tls = Arc::new(runtime::tls::tls_client_config(skip_verify));
        Ok(ProxySettings {
            urls,
            etcd,
            dns_discovery,
            tls,
            token_id,
            token_key,
            request_timeout: Duration::from_secs(secs("proxytimeout", 2)?),
            timeout: Duration::from_secs(secs("timeout", 10)?),
            max_stream_bitrate: secs("maxstreambitrate", super::janus::DEFAULT_MAX_STREAM_BITRATE)?,
            max_screen_bitrate: secs("maxscreenbitrate", super::janus::DEFAULT_MAX_SCREEN_BITRATE)?,
        })
    }

    fn token(&self) -> String {
        self.token_for("")
    }

    /// A token naming `sub` (remote streams: the publisher another proxy
    /// may fetch for us); without a subject for hellos.
    fn token_for(&self, sub: &str) -> String {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = if sub.is_empty() {
            json!({"iat": iat, "iss": self.token_id})
        } else {
            json!({"iat": iat, "iss": self.token_id, "sub": sub})
        };
        jsonwebtoken::encode(&Header::new(Algorithm::RS256), &claims, &self.token_key)
            .unwrap_or_default()
    }
}

type Reply = oneshot::Sender<ProxyServerMessage>;

/// How often proxy host names are resolved again (`dnsdiscovery`).
const DNS_INTERVAL: Duration = Duration::from_secs(30);

/// How often the proxy list is re-read from etcd.
const ETCD_POLL: Duration = Duration::from_secs(2);

/// Proxy URLs as the Go server takes them: `ws://`/`wss://` as they are,
/// `http://`/`https://` turned into those.
fn parse_urls(list: &str) -> Result<Vec<String>, String> {
    list.split_whitespace()
        .map(|u| {
            let u = u.trim_end_matches('/');
            if let Some(rest) = u.strip_prefix("http://") {
                Ok(format!("ws://{rest}"))
            } else if let Some(rest) = u.strip_prefix("https://") {
                Ok(format!("wss://{rest}"))
            } else if u.starts_with("ws://") || u.starts_with("wss://") {
                Ok(u.to_owned())
            } else {
                Err(format!(
                    "{u:?} is not a ws://, wss://, http:// or https:// URL"
                ))
            }
        })
        .collect()
}

/// A publisher or subscriber hosted on a proxy.
struct ProxyClient {
    info: ClientInfo,
    /// The proxy's id of it (`clientId`).
    proxy_id: String,
    conn: Weak<ProxyConn>,
    listener: Arc<dyn McuListener>,
    closed: AtomicBool,
    timeout: Duration,
}

/// One proxy and the connection to it.
struct ProxyConn {
    url: String,
    cmd: mpsc::Sender<(ProxyClientMessage, Option<Reply>)>,
    connected: AtomicBool,
    draining: AtomicBool,
    load: AtomicI64,
    /// The proxy's country (its hello), upper case, or empty.
    country: Mutex<String>,
    /// What its hello advertised (`remote-streams`).
    features: Mutex<Vec<String>>,
    /// Use of its `[bandwidth]` limits, from `update-load` (none: unlimited).
    bandwidth: Mutex<proto::proxy::EventProxyServerBandwidth>,
    next_msg: AtomicU64,
    clients: Mutex<HashMap<String, Arc<ProxyClient>>>,
    /// Publishers the proxy dropped when its media server went away (Go
    /// proxy `backend-disconnected`); their clients are asked to publish
    /// again on `backend-connected`.
    lost_publishers: Mutex<Vec<Arc<ProxyClient>>>,
    settings: Arc<ProxySettings>,
    shared: Arc<Shared>,
    /// Ends this connection (shutdown, or the URL was removed).
    cancel: CancellationToken,
}

type PublisherMap = HashMap<(Arc<str>, StreamType), (Arc<ProxyConn>, String)>;

/// Where a publisher of another signaling server streams: its proxy and
/// its id there.
struct ProxyLocation {
    url: String,
    id: String,
}

impl ProxyLocation {
    fn parse(v: &Value) -> Option<ProxyLocation> {
        Some(ProxyLocation {
            url: v.get("proxy")?.as_str()?.to_owned(),
            id: v.get("id")?.as_str()?.to_owned(),
        })
    }
}

/// What every proxy connection and the MCU share.
struct Shared {
    /// (publishing session, stream) -> (proxy, proxy client id): where
    /// subscribers of a publisher must go.
    publishers: Mutex<PublisherMap>,
    metrics: McuMetrics,
    changed: watch::Sender<u64>,
}

impl Shared {
    /// A client ended: forget it and count it.
    fn gone(&self, client: &ProxyClient) {
        let labels = [client.info.stream.as_str()];
        if client.info.publisher.is_some() {
            self.metrics.subscribers.dec(&labels);
        } else {
            self.metrics.publishers.dec(&labels);
            self.publishers
                .lock()
                .retain(|_, (_, id)| *id != client.proxy_id);
        }
    }
}

struct Inner {
    settings: Arc<ProxySettings>,
    shared: Arc<Shared>,
    /// Changed by SIGHUP (`[mcu] url`); plain lock, never held across `.await`.
    conns: parking_lot::RwLock<Vec<Arc<ProxyConn>>>,
    /// With `dnsdiscovery`: the configured URLs, resolved into `conns`.
    dns_urls: Mutex<Vec<String>>,
    dns_changed: tokio::sync::Notify,
    next_id: AtomicU64,
    cancel: CancellationToken,
}

/// The MCU through proxies.
pub struct ProxyMcu {
    inner: Arc<Inner>,
}

impl ProxyMcu {
    pub fn start(settings: ProxySettings, metrics: McuMetrics) -> Arc<ProxyMcu> {
        let settings = Arc::new(settings);
        let cancel = CancellationToken::new();
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            publishers: Mutex::new(HashMap::new()),
            metrics,
            changed,
        });
        let inner = Arc::new(Inner {
            settings: settings.clone(),
            shared,
            conns: parking_lot::RwLock::new(Vec::new()),
            dns_urls: Mutex::new(Vec::new()),
            dns_changed: tokio::sync::Notify::new(),
            next_id: AtomicU64::new(0),
            cancel,
        });
        if let Some((client, prefix)) = settings.etcd.clone() {
            tokio::spawn(inner.clone().discover(client, prefix));
        } else if settings.dns_discovery {
            *inner.dns_urls.lock() = settings.urls.clone();
            tokio::spawn(inner.clone().follow_dns());
        } else {
            inner.set_urls(&settings.urls);
        }
        Arc::new(ProxyMcu { inner })
    }

    /// Resolves once every proxy is connected (or after `timeout`).
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while tokio::time::Instant::now() < deadline {
            if self
                .inner
                .conns
                .read()
                .iter()
                .all(|c| c.connected.load(Ordering::Acquire))
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

impl ProxyConn {
    /// Sends a request and waits for the reply with its id.
    async fn request(&self, mut msg: ProxyClientMessage) -> Result<ProxyServerMessage, McuError> {
        if !self.connected.load(Ordering::Acquire) {
            return Err(McuError::NotConnected);
        }
        msg.id = (self.next_msg.fetch_add(1, Ordering::Relaxed) + 1).to_string();
        let (tx, rx) = oneshot::channel();
        self.cmd
            .send((msg, Some(tx)))
            .await
            .map_err(|_| McuError::Closed)?;
        match tokio::time::timeout(self.settings.request_timeout, rx).await {
            Ok(Ok(reply)) if reply.kind == "error" => Err(McuError::InvalidPayload(
                reply.error.map(|e| e.to_string()).unwrap_or_default(),
            )),
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(McuError::NotConnected),
            Err(_) => Err(McuError::Timeout("proxy request")),
        }
    }

    fn command(kind: &str) -> CommandProxyClientMessage {
        CommandProxyClientMessage {
            kind: kind.into(),
            ..Default::default()
        }
    }
}

/// One proxy's connection: connect, hello (or resume), relay, reconnect.
async fn run_conn(
    conn: Arc<ProxyConn>,
    mut rx: mpsc::Receiver<(ProxyClientMessage, Option<Reply>)>,
    cancel: CancellationToken,
) {
    let url = format!("{}/proxy", conn.url);
    let mut session_id = String::new();
    let mut delay = Duration::from_secs(1);
    loop {
        let attempt = tokio_tungstenite::connect_async_tls_with_config(
            &url,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(
                conn.settings.tls.clone(),
            )),
        );
        let ws = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(10), attempt) => r,
        };
        let mut ws = match ws {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                warn!(%url, error = %e, retry_in = ?delay, "cannot connect to MCU proxy");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(16));
                continue;
            }
            Err(_) => continue,
        };
        // Hello: resume the old session if there is one.
        let hello = ProxyClientMessage {
            id: "hello".into(),
            kind: "hello".into(),
            hello: Some(HelloProxyClientMessage {
                version: HELLO_VERSION.into(),
                resumeid: session_id.clone(),
                features: Vec::new(),
                token: if session_id.is_empty() {
                    conn.settings.token()
                } else {
                    String::new()
                },
            }),
            ..Default::default()
        };
        let text = serde_json::to_string(&hello).unwrap_or_default();
        if ws.send(Message::text(text)).await.is_err() {
            continue;
        }
        let reply = hello_reply(&mut ws, conn.settings.request_timeout * 5).await;
        match reply {
            Some(m) if m.kind == "hello" => {
                let country = m
                    .hello
                    .as_ref()
                    .and_then(|h| h.server.as_ref())
                    .map(|s| s.country.to_uppercase())
                    .unwrap_or_default();
                *conn.country.lock() = country;
                *conn.features.lock() = m
                    .hello
                    .as_ref()
                    .and_then(|h| h.server.as_ref())
                    .map(|s| s.features.clone())
                    .unwrap_or_default();
                let new_id = m.hello.map(|h| h.sessionid).unwrap_or_default();
                if new_id != session_id && !session_id.is_empty() {
                    lost_clients(&conn);
                }
                session_id = new_id;
                delay = Duration::from_secs(1);
                info!(%url, session = %session_id, "connected to MCU proxy");
            }
            Some(m) => {
                let code = m.error.as_ref().map(|e| e.code.clone()).unwrap_or_default();
                if code == "no_such_session" {
                    // The proxy forgot us: start a new session.
                    lost_clients(&conn);
                    session_id.clear();
                    continue;
                }
                warn!(%url, %code, "MCU proxy refused hello");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(delay) => {}
                }
                delay = (delay * 2).min(Duration::from_secs(16));
                continue;
            }
            None => continue,
        }
        conn.connected.store(true, Ordering::Release);
        let mut pending: HashMap<String, Reply> = HashMap::new();
        let mut ping = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = ws.send(Message::Close(None)).await;
                    conn.connected.store(false, Ordering::Release);
                    return;
                }
                _ = ping.tick() => {
                    if ws.send(Message::Ping(Default::default())).await.is_err() {
                        break;
                    }
                }
                cmd = rx.recv() => {
                    let Some((msg, reply)) = cmd else { return };
                    if !send_request(&mut ws, &mut pending, msg, reply).await {
                        break;
                    }
                }
                m = ws.next() => match m {
                    Some(Ok(Message::Text(t))) => {
                        let Ok(msg) = serde_json::from_str::<ProxyServerMessage>(t.as_str()) else {
                            debug!(%url, "undecodable message from proxy");
                            continue;
                        };
                        if !msg.id.is_empty() {
                            if let Some(r) = pending.remove(&msg.id) {
                                let _ = r.send(msg);
                                continue;
                            }
                        }
                        if msg.kind == "bye" {
                            break;
                        }
                        process_push(&conn, msg);
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
        conn.connected.store(false, Ordering::Release);
        warn!(%url, "lost the connection to the MCU proxy, reconnecting");
    }
}

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

/// The proxy session is gone (proxy restarted): its clients are too.
fn lost_clients(conn: &ProxyConn) {
    let mut clients: Vec<Arc<ProxyClient>> = conn.clients.lock().drain().map(|(_, c)| c).collect();
    // Lost already; asked to publish again now, wherever there is room.
    for c in std::mem::take(&mut *conn.lost_publishers.lock()) {
        c.listener.publisher_lost(&*c);
    }
    clients.retain(|c| !c.closed.load(Ordering::Acquire));
    for c in clients {
        c.closed.store(true, Ordering::Release);
        conn.shared.gone(&c);
        if c.info.publisher.is_some() {
            c.listener.subscriber_lost(&*c);
        } else {
            c.listener.publisher_lost(&*c);
        }
    }
}

/// Payloads and events the proxy sends on its own.
fn process_push(conn: &ProxyConn, msg: ProxyServerMessage) {
    match (msg.kind.as_str(), msg.payload, msg.event) {
        ("payload", Some(p), _) => {
            let client = conn.clients.lock().get(&p.client_id).cloned();
            let Some(client) = client else { return };
            let payload = p.payload.unwrap_or(Value::Null);
            match p.kind.as_str() {
                "offer" => {
                    let offer = payload.get("offer").cloned().unwrap_or(Value::Null);
                    client.listener.on_update_offer(&*client, offer);
                }
                // `{"candidate": {...}}`, what the listener wants.
                "candidate" => client.listener.on_ice_candidate(&*client, payload),
                other => debug!(kind = other, "unsupported payload from proxy"),
            }
        }
        ("event", _, Some(e)) => match e.kind.as_str() {
            "update-load" => {
                conn.load.store(e.load, Ordering::Relaxed);
                *conn.bandwidth.lock() = e.bandwidth.unwrap_or_default();
            }
            "shutdown-scheduled" => {
                info!(url = %conn.url, "MCU proxy is draining: no new publishers there");
                conn.draining.store(true, Ordering::Release);
            }
            "backend-disconnected" => {
                // The Go proxy dropped all our publishers and subscribers
                // (its Janus went away) without telling about each.
                // Subscribers follow their publishers from now on; the
                // publishers' clients are asked to publish again once the
                // proxy has its media server back.
                info!(url = %conn.url, "MCU proxy lost its media server");
                let clients: Vec<Arc<ProxyClient>> =
                    conn.clients.lock().drain().map(|(_, c)| c).collect();
                for c in clients {
                    c.closed.store(true, Ordering::Release);
                    conn.shared.gone(&c);
                    if c.info.publisher.is_some() {
                        c.listener.subscriber_lost(&*c);
                    } else {
                        conn.lost_publishers.lock().push(c);
                    }
                }
            }
            "backend-connected" => {
                info!(url = %conn.url, "MCU proxy has its media server again");
                for c in std::mem::take(&mut *conn.lost_publishers.lock()) {
                    c.listener.publisher_lost(&*c);
                }
            }
            "subscriber-sid-updated" => {
                if let Some(c) = conn.clients.lock().get(&e.client_id) {
                    *c.info.sid.lock() = e.sid;
                }
            }
            "publisher-reset" => {
                let client = conn.clients.lock().get(&e.client_id).cloned();
                if let Some(c) = client {
                    c.listener.on_publisher_reset(&*c);
                }
            }
            "publisher-closed" | "subscriber-closed" => {
                let client = conn.clients.lock().remove(&e.client_id);
                if let Some(c) = client {
                    c.closed.store(true, Ordering::Release);
                    conn.shared.gone(&c);
                    if e.kind == "publisher-closed" {
                        c.listener.publisher_closed(&*c);
                    } else {
                        // Its publisher ended (or was replaced), or the
                        // proxy lost it: the session may follow.
                        c.listener.subscriber_lost(&*c);
                    }
                }
            }
            other => debug!(kind = other, "unsupported event from proxy"),
        },
        _ => {}
    }
}

impl McuClient for ProxyClient {
    fn info(&self) -> &ClientInfo {
        &self.info
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            let Some(conn) = self.conn.upgrade() else {
                return;
            };
            conn.clients.lock().remove(&self.proxy_id);
            conn.shared.gone(self);
            let kind = if self.info.publisher.is_some() {
                "delete-subscriber"
            } else {
                "delete-publisher"
            };
            let mut command = ProxyConn::command(kind);
            command.client_id = self.proxy_id.clone();
            let msg = ProxyClientMessage {
                kind: "command".into(),
                command: Some(command),
                ..Default::default()
            };
            if let Err(e) = conn.request(msg).await {
                debug!(error = %e, "could not delete proxy client");
            }
            if self.info.publisher.is_some() {
                self.listener.subscriber_closed(self);
            } else {
                self.listener.publisher_closed(self);
            }
        })
    }
    fn send_message(&self, msg: McuMessage, reply: Responder) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(conn) = self.conn.upgrade() else {
                reply(Err(McuError::Closed));
                return;
            };
            let request = ProxyClientMessage {
                kind: "payload".into(),
                payload: Some(PayloadProxyClientMessage {
                    kind: msg.kind,
                    client_id: self.proxy_id.clone(),
                    sid: msg.sid,
                    payload: Some(msg.payload),
                }),
                ..Default::default()
            };
            let timeout = self.timeout;
            // Queued in order on the connection; the answer is awaited
            // apart so that the client's next message is not held up.
            let (tx, rx) = oneshot::channel();
            let mut request = request;
            request.id = (conn.next_msg.fetch_add(1, Ordering::Relaxed) + 1).to_string();
            if !conn.connected.load(Ordering::Acquire) {
                reply(Err(McuError::NotConnected));
                return;
            }
            if conn.cmd.send((request, Some(tx))).await.is_err() {
                reply(Err(McuError::Closed));
                return;
            }
            tokio::spawn(async move {
                let res = match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(m)) if m.kind == "error" => Err(McuError::InvalidPayload(
                        m.error.map(|e| e.to_string()).unwrap_or_default(),
                    )),
                    Ok(Ok(m)) => Ok(m.payload.and_then(|p| p.payload).filter(|v| !v.is_null())),
                    Ok(Err(_)) => Err(McuError::NotConnected),
                    Err(_) => Err(McuError::Timeout("proxy payload")),
                };
                reply(res);
            });
        })
    }
}

impl Inner {
    /// Make the proxy list `urls`: connect to new ones, drain removed ones.
    fn set_urls(&self, urls: &[String]) {
        let mut conns = self.conns.write();
        for url in urls {
            if !conns.iter().any(|c| &c.url == url) {
                info!(%url, "MCU proxy added");
                let conn = self.connect(url);
                conns.push(conn);
            }
        }
        let (keep, removed): (Vec<_>, Vec<_>) =
            conns.drain(..).partition(|c| urls.contains(&c.url));
        *conns = keep;
        drop(conns);
        for conn in removed {
            info!(url = %conn.url, "MCU proxy removed, draining it");
            conn.draining.store(true, Ordering::Release);
            tokio::spawn(async move {
                while !conn.clients.lock().is_empty() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                conn.cancel.cancel();
            });
        }
    }

    /// `dnsdiscovery`: one connection per address of each URL's host,
    /// re-resolved every [`DNS_INTERVAL`] (and at once after a reload).
    async fn follow_dns(self: Arc<Self>) {
        loop {
            let urls = self.dns_urls.lock().clone();
            let mut resolved = Vec::new();
            for url in &urls {
                let Some((scheme, rest)) = url.split_once("://") else {
                    continue;
                };
                let (hostport, path) = rest.split_once('/').unwrap_or((rest, ""));
                let hostport = if hostport.contains(':') {
                    hostport.to_owned()
                } else if scheme == "wss" {
                    format!("{hostport}:443")
                } else {
                    format!("{hostport}:80")
                };
                let looked_up = tokio::net::lookup_host(hostport.clone()).await;
                match looked_up {
                    Ok(addrs) => {
                        for a in addrs {
                            let path = if path.is_empty() {
                                String::new()
                            } else {
                                format!("/{path}")
                            };
                            resolved.push(format!("{scheme}://{a}{path}"));
                        }
                    }
                    Err(e) => warn!(%url, error = %e, "cannot resolve proxy host"),
                }
            }
            resolved.sort();
            resolved.dedup();
            self.set_urls(&resolved);
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = self.dns_changed.notified() => {}
                _ = tokio::time::sleep(DNS_INTERVAL) => {}
            }
        }
    }

    /// `urltype = etcd`: follow the proxies listed under the key prefix.
    async fn discover(self: Arc<Self>, client: runtime::etcd::EtcdClient, prefix: String) {
        let mut known: Option<Vec<String>> = None;
        loop {
            match client.get_prefix(&prefix).await {
                Ok(kvs) => {
                    let mut urls: Vec<String> = kvs
                        .iter()
                        .filter_map(|(key, value)| {
                            let v: Value = serde_json::from_slice(value).ok()?;
                            let address = v["address"].as_str()?;
                            match parse_urls(address) {
                                Ok(mut u) => u.pop(),
                                Err(e) => {
                                    warn!(%key, error = %e, "ignoring proxy address from etcd");
                                    None
                                }
                            }
                        })
                        .collect();
                    urls.sort();
                    urls.dedup();
                    if known.as_ref() != Some(&urls) {
                        info!(?urls, "proxy list from etcd");
                        self.set_urls(&urls);
                        known = Some(urls);
                    }
                }
                Err(e) => warn!(error = %e, "cannot read proxy list from etcd"),
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                _ = tokio::time::sleep(ETCD_POLL) => {}
            }
        }
    }

    /// A new connection task for `url`.
    fn connect(&self, url: &str) -> Arc<ProxyConn> {
        let (tx, rx) = mpsc::channel(256);
        let conn = Arc::new(ProxyConn {
            url: url.to_owned(),
            cmd: tx,
            connected: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            load: AtomicI64::new(0),
            country: Mutex::new(String::new()),
            features: Mutex::new(Vec::new()),
            bandwidth: Mutex::new(Default::default()),
            next_msg: AtomicU64::new(0),
            clients: Mutex::new(HashMap::new()),
            lost_publishers: Mutex::new(Vec::new()),
            settings: self.settings.clone(),
            shared: self.shared.clone(),
            cancel: self.cancel.child_token(),
        });
        tokio::spawn(run_conn(conn.clone(), rx, conn.cancel.clone()));
        conn
    }

    /// Connected, not draining; by load (upstream's order), then proxies
    /// in the client's country first, then those on its continents.
    fn candidates(&self, country: Option<&str>, continents: &[String]) -> Vec<Arc<ProxyConn>> {
        let mut list: Vec<Arc<ProxyConn>> = self
            .conns
            .read()
            .iter()
            .filter(|c| c.connected.load(Ordering::Acquire) && !c.draining.load(Ordering::Acquire))
            .cloned()
            .collect();
        list.sort_by_key(|c| c.load.load(Ordering::Relaxed));
        // Proxies at their incoming bandwidth limit last (stable).
        list.sort_by_key(|c| !c.bandwidth.lock().allows_incoming());
        if let Some(country) = country {
            // Stable: within each group the load order stays.
            list.sort_by_key(|c| nearness(c, country, continents));
        }
        list
    }

    /// Remote streams: another proxy able to fetch the stream from the
    /// publisher's and to send more, when the publisher's proxy has used up
    /// its outgoing bandwidth (then the nearest such one), or when one is
    /// nearer to the subscriber (own country before own continent; among
    /// equally near ones the least loaded).
    fn remote_for(
        &self,
        publisher: &Arc<ProxyConn>,
        country: Option<&str>,
        continents: &[String],
    ) -> Option<Arc<ProxyConn>> {
        let others = self
            .candidates(country, continents)
            .into_iter()
            .filter(|c| !Arc::ptr_eq(c, publisher))
            .filter(|c| c.features.lock().iter().any(|f| f == "remote-streams"))
            .filter(|c| c.bandwidth.lock().allows_outgoing());
        if !publisher.bandwidth.lock().allows_outgoing() {
            return others.into_iter().next();
        }
        let country = country?;
        let theirs = nearness(publisher, country, continents);
        others
            .into_iter()
            .find(|c| nearness(c, country, continents) < theirs)
    }
}

/// 0: the proxy is in `country`, 1: on one of `continents`, 2: elsewhere.
fn nearness(c: &ProxyConn, country: &str, continents: &[String]) -> u8 {
    let theirs = c.country.lock().clone();
    if theirs == country {
        0
    } else if crate::geoip::continents(&theirs)
        .iter()
        .any(|t| continents.iter().any(|c| c == t))
    {
        1
    } else {
        2
    }
}

impl Inner {
    /// `create-subscriber` on `conn`, of the publisher `proxy_publisher`
    /// hosted by `home` (remote when they differ).
    /// Wait (up to the MCU timeout) for a local publisher.
    async fn wait_publisher(
        &self,
        publisher: &Arc<str>,
        stream: StreamType,
    ) -> Result<(Arc<ProxyConn>, String), McuError> {
        let key = (publisher.clone(), stream);
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let shared = &self.shared;
        let mut changed = shared.changed.subscribe();
        let mut counted = false;
        loop {
            changed.borrow_and_update();
            if let Some(found) = shared.publishers.lock().get(&key).cloned() {
                return Ok(found);
            }
            if !counted {
                counted = true;
                shared.metrics.no_publisher_total.inc(&[stream.as_str()]);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(McuError::Closed),
                Err(_) => return Err(McuError::Timeout("publisher")),
            }
        }
    }

    /// Subscribe to a publisher on `conn`: there, or through a remote
    /// stream on a proxy nearer the subscriber.
    async fn subscribe_at(
        &self,
        conn: &Arc<ProxyConn>,
        proxy_publisher: &str,
        publisher: &str,
        stream: StreamType,
        country: Option<&str>,
        continents: &[String],
    ) -> Result<(Arc<ProxyConn>, CommandProxyServerMessage), McuError> {
        if let Some(near) = self.remote_for(conn, country, continents) {
            match self
                .create_subscriber(&near, Some(&conn.url), proxy_publisher, stream)
                .await
            {
                Ok(c) => {
                    info!(publisher = %publisher, from = %conn.url, via = %near.url, "subscribing through a remote stream");
                    self.shared
                        .metrics
                        .remote_subscribers_total
                        .inc(&[stream.as_str()]);
                    return Ok((near, c));
                }
                Err(e) => {
                    warn!(url = %near.url, error = %e, "remote stream refused, subscribing at the publisher's proxy")
                }
            }
        }
        let c = self
            .create_subscriber(conn, None, proxy_publisher, stream)
            .await?;
        Ok((conn.clone(), c))
    }

    /// Clustering: the publisher is on another signaling server. Its proxy
    /// is usually in our pool too; if not, one of ours fetches the stream
    /// from it (remote streams).
    async fn subscribe_elsewhere(
        &self,
        loc: &ProxyLocation,
        publisher: &str,
        stream: StreamType,
        country: Option<&str>,
        continents: &[String],
    ) -> Result<(Arc<ProxyConn>, CommandProxyServerMessage), McuError> {
        let same = |u: &str| u.trim_end_matches('/') == loc.url.trim_end_matches('/');
        let mine = self.conns.read().iter().find(|c| same(&c.url)).cloned();
        if let Some(conn) = mine {
            return self
                .subscribe_at(&conn, &loc.id, publisher, stream, country, continents)
                .await;
        }
        let near = self
            .candidates(country, continents)
            .into_iter()
            .find(|c| c.features.lock().iter().any(|f| f == "remote-streams"))
            .ok_or(McuError::NotFound)?;
        let c = self
            .create_subscriber(&near, Some(&loc.url), &loc.id, stream)
            .await?;
        info!(publisher = %publisher, from = %loc.url, via = %near.url, "subscribing to another server's publisher through a remote stream");
        self.shared
            .metrics
            .remote_subscribers_total
            .inc(&[stream.as_str()]);
        Ok((near, c))
    }

    /// A subscriber on `conn` of `proxy_publisher`, which streams on `conn`
    /// itself or (a remote stream) on the proxy at `home_url`.
    async fn create_subscriber(
        &self,
        conn: &Arc<ProxyConn>,
        home_url: Option<&str>,
        proxy_publisher: &str,
        stream: StreamType,
    ) -> Result<CommandProxyServerMessage, McuError> {
        let mut command = ProxyConn::command("create-subscriber");
        command.publisher_id = proxy_publisher.to_owned();
        command.stream_type = stream.as_str().into();
        if let Some(home) = home_url {
            // Resolved like a relative link `proxy` by the other proxy.
            command.remote_url = format!("{}/", home.trim_end_matches('/'));
            command.remote_token = self.settings.token_for(proxy_publisher);
        }
        let msg = ProxyClientMessage {
            kind: "command".into(),
            command: Some(command),
            ..Default::default()
        };
        Ok(conn.request(msg).await?.command.unwrap_or_default())
    }
}

impl Mcu for ProxyMcu {
    fn new_publisher(
        &self,
        listener: Arc<dyn McuListener>,
        params: PublisherParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let cap = match params.stream {
                StreamType::Video => inner.settings.max_stream_bitrate,
                StreamType::Screen => inner.settings.max_screen_bitrate,
            };
            let bitrate = super::cap_bitrate(params.bitrate, cap);
            let mut last = McuError::NotConnected;
            for conn in inner.candidates(params.country.as_deref(), &params.continents) {
                let mut command = ProxyConn::command("create-publisher");
                command.sid = params.sid.clone();
                command.stream_type = params.stream.as_str().into();
                command.bitrate = bitrate;
                command.mediatypes = params.media.0 as u32;
                let msg = ProxyClientMessage {
                    kind: "command".into(),
                    command: Some(command),
                    ..Default::default()
                };
                let reply = match conn.request(msg).await {
                    Ok(r) => r,
                    Err(e) => {
                        warn!(url = %conn.url, error = %e, "proxy could not create publisher, trying the next");
                        last = e;
                        continue;
                    }
                };
                let proxy_id = reply.command.map(|c| c.id).unwrap_or_default();
                let client = Arc::new(ProxyClient {
                    info: ClientInfo::new(
                        inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                        params.stream,
                        params.sid.clone(),
                        None,
                        params.media,
                    ),
                    proxy_id: proxy_id.clone(),
                    conn: Arc::downgrade(&conn),
                    listener: listener.clone(),
                    closed: AtomicBool::new(false),
                    timeout: inner.settings.timeout,
                });
                conn.clients.lock().insert(proxy_id.clone(), client.clone());
                let shared = &inner.shared;
                shared
                    .publishers
                    .lock()
                    .insert((params.id.clone(), params.stream), (conn.clone(), proxy_id));
                shared.changed.send_modify(|n| *n = n.wrapping_add(1));
                let labels = [params.stream.as_str()];
                shared.metrics.publishers.inc(&labels);
                shared.metrics.publishers_total.inc(&labels);
                info!(session = %params.id, url = %conn.url, "publishing through proxy");
                return Ok(client as Arc<dyn McuClient>);
            }
            Err(last)
        })
    }

    fn new_subscriber(
        &self,
        listener: Arc<dyn McuListener>,
        params: SubscriberParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>> {
        Box::pin(async move {
            let SubscriberParams {
                publisher,
                stream,
                country,
                continents,
                location,
            } = params;
            let inner = &self.inner;
            let shared = &inner.shared;
            let (conn, c) = match location.as_ref().and_then(ProxyLocation::parse) {
                Some(loc) => {
                    inner
                        .subscribe_elsewhere(
                            &loc,
                            &publisher,
                            stream,
                            country.as_deref(),
                            &continents,
                        )
                        .await?
                }
                None => {
                    let (conn, proxy_publisher) = inner.wait_publisher(&publisher, stream).await?;
                    inner
                        .subscribe_at(
                            &conn,
                            &proxy_publisher,
                            &publisher,
                            stream,
                            country.as_deref(),
                            &continents,
                        )
                        .await?
                }
            };
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            // Proxies before 11fa78b (Debian's Go 0.4.1) name no sid for a
            // subscriber; clients still need one to tell this subscriber's
            // offer from an earlier one's, so it gets one of ours (the
            // proxy ignores the sid of such a client's messages).
            let sid = if c.sid.is_empty() {
                format!("{}-{id}", c.id)
            } else {
                c.sid
            };
            let client = Arc::new(ProxyClient {
                info: ClientInfo::new(id, stream, sid, Some(publisher), MediaTypes::default()),
                proxy_id: c.id.clone(),
                conn: Arc::downgrade(&conn),
                listener,
                closed: AtomicBool::new(false),
                timeout: inner.settings.timeout,
            });
            conn.clients.lock().insert(c.id, client.clone());
            let labels = [stream.as_str()];
            shared.metrics.subscribers.inc(&labels);
            shared.metrics.subscribers_total.inc(&labels);
            Ok(client as Arc<dyn McuClient>)
        })
    }

    fn publisher_location(
        &self,
        publisher: &str,
        stream: StreamType,
    ) -> BoxFuture<'_, Option<Value>> {
        let publisher: Arc<str> = Arc::from(publisher);
        Box::pin(async move {
            let (conn, id) = self.inner.wait_publisher(&publisher, stream).await.ok()?;
            Some(json!({"proxy": conn.url, "id": id}))
        })
    }

    fn stats(&self) -> Value {
        let conns = self.inner.conns.read().clone();
        let proxies: Vec<Value> = conns
            .iter()
            .map(|c| {
                json!({
                    "url": c.url,
                    "connected": c.connected.load(Ordering::Acquire),
                    "load": c.load.load(Ordering::Relaxed),
                    "bandwidth": *c.bandwidth.lock(),
                    "country": c.country.lock().clone(),
                    "shutdown": c.draining.load(Ordering::Acquire),
                    "clients": c.clients.lock().len(),
                })
            })
            .collect();
        let mut out = Map::new();
        out.insert("type".into(), "proxy".into());
        out.insert(
            "connected".into(),
            conns
                .iter()
                .any(|c| c.connected.load(Ordering::Acquire))
                .into(),
        );
        out.insert(
            "publishers".into(),
            self.inner.shared.publishers.lock().len().into(),
        );
        out.insert("proxies".into(), Value::Array(proxies));
        Value::Object(out)
    }

    fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    /// SIGHUP: connect to added proxy URLs; removed ones get no new
    /// publishers and are disconnected once their last stream is gone.
    fn reload(&self, ini: &runtime::config::Ini) {
        if self.inner.settings.etcd.is_some() {
            return;
        }
        match parse_urls(&ini.get_string("mcu", "url", "")) {
            Ok(urls) if self.inner.settings.dns_discovery => {
                *self.inner.dns_urls.lock() = urls;
                self.inner.dns_changed.notify_one();
            }
            Ok(urls) => self.inner.set_urls(&urls),
            Err(e) => warn!(error = %e, "keeping the old proxy URLs"),
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let conns = self.inner.conns.read().clone();
            let all: Vec<Arc<ProxyClient>> = conns
                .iter()
                .flat_map(|c| c.clients.lock().values().cloned().collect::<Vec<_>>())
                .collect();
            for c in all {
                c.close().await;
            }
            self.inner.cancel.cancel();
        })
    }
}
