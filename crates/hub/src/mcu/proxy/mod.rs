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

mod clients;
mod conn;
mod discovery;

pub use ::mcu::proxy_ws::{hello_reply, send_request};
use conn::run_conn;

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
