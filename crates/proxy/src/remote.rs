//! Remote streams, on the subscriber's side (upstream 1.3.0): a signaling
//! server asks this proxy for a subscriber of a publisher hosted by another
//! proxy (`create-subscriber` with `remoteUrl` and `remoteToken`). This
//! proxy then
//!
//! 1. connects to that proxy (one [`Link`] per URL, hello with a token of
//!    its own `[app] token_id` / `token_key`),
//! 2. asks it for the publisher's streams (`get-publisher-streams`),
//! 3. creates a remote publisher with those streams in its own Janus,
//! 4. asks the other proxy to `publish-remote` to it: the other Janus then
//!    sends the publisher's RTP to this Janus (`[app] hostname`),
//! 5. and subscribes to the remote publisher like to a local one.
//!
//! A remote publisher ([`Feed`]) is shared by all subscribers of that
//! publisher here and counted; with the last one it is unpublished and
//! removed, and a link without feeds is closed. When the other proxy says
//! `publisher-closed`, or the link breaks, the feeds end and with them
//! their subscribers (the signaling servers get `subscriber-closed` and can
//! subscribe again).

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use parking_lot::Mutex;
use proto::proxy::{CommandProxyClientMessage, ProxyClientMessage, ProxyServerMessage};
use runtime::config::Ini;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use mcu::janus::{JanusMcu, RemotePublisher};
use mcu::StreamType;

mod link;

use link::run_link;

static FEED_SEQ: AtomicU64 = AtomicU64::new(0);

/// One request to the other proxy (hello included).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `[app] hostname`, `token_id`, `token_key`, `skipverify`.
pub struct RemoteSettings {
    /// Where other Janus gateways send RTP for this proxy's Janus.
    pub hostname: String,
    token_id: String,
    token_key: EncodingKey,
    tls: Arc<rustls::ClientConfig>,
}

impl RemoteSettings {
    /// `None` without `[app] token_id`: remote streams are off.
    pub fn from_config(ini: &Ini) -> Result<Option<RemoteSettings>, (&'static str, String)> {
        let token_id = ini.get_string("app", "token_id", "");
        if token_id.is_empty() {
            return Ok(None);
        }
        let file = ini.get_string("app", "token_key", "");
        let pem = std::fs::read(&file).map_err(|e| ("token_key", format!("{file:?}: {e}")))?;
        let token_key = EncodingKey::from_rsa_pem(&pem)
            .map_err(|e| ("token_key", format!("{file:?} is no RSA private key: {e}")))?;
        let skip = ini
            .get_bool("app", "skipverify", false)
            .map_err(|e| ("skipverify", e.to_string()))?;
        let mut hostname = ini.get_string("app", "hostname", "");
        if hostname.is_empty() {
            hostname = detect_address();
            info!(%hostname, "remote streams: [app] hostname not set, using this address");
        }
        Ok(Some(RemoteSettings {
            hostname,
            token_id,
            token_key,
            tls: Arc::new(runtime::tls::tls_client_config(skip)),
        }))
    }

    fn token(&self) -> String {
        let iat = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        jsonwebtoken::encode(
            &Header::new(Algorithm::RS256),
            &json!({"iat": iat, "iss": self.token_id}),
            &self.token_key,
        )
        .unwrap_or_default()
    }
}

/// The address this host uses to reach the outside (no packet is sent:
/// connecting a UDP socket only picks the route); loopback if none.
fn detect_address() -> String {
    let probe = std::net::UdpSocket::bind("0.0.0.0:0")
        .and_then(|s| s.connect("192.0.2.1:9").map(|()| s))
        .and_then(|s| s.local_addr());
    match probe {
        Ok(a) if !a.ip().is_unspecified() => a.ip().to_string(),
        _ => "127.0.0.1".to_owned(),
    }
}

/// The WebSocket URL of a proxy's `/proxy` endpoint from the URL a
/// signaling server knows it by, resolved like a relative link `proxy`
/// (as the Go proxy does), `http(s)` turned into `ws(s)`.
pub fn proxy_ws_url(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme {
        "ws" | "http" => "ws",
        "wss" | "https" => "wss",
        _ => return None,
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return None;
    }
    let dir = &path[..=path.rfind('/').unwrap_or(0)];
    Some(format!("{scheme}://{authority}{dir}proxy"))
}

type Pending = oneshot::Sender<ProxyServerMessage>;

/// The connection to one other proxy.
pub struct Link {
    pub url: String,
    cmd: mpsc::Sender<(ProxyClientMessage, Option<Pending>)>,
    next: AtomicU64,
    feeds: Mutex<HashMap<(String, StreamType), Arc<Feed>>>,
    /// Its last feed is being released: new subscribers get a new link.
    /// Set and read under the `feeds` lock.
    closing: AtomicBool,
    cancel: CancellationToken,
}

impl Link {
    fn usable(&self) -> bool {
        !self.cancel.is_cancelled() && !self.closing.load(Ordering::Acquire)
    }
}

/// A remote publisher in our Janus, shared by its subscribers here.
pub struct Feed {
    /// The publisher's id at the other proxy.
    publisher_id: String,
    stream: StreamType,
    /// What subscribers here name as publisher in our Janus.
    pub key: Arc<str>,
    users: Mutex<usize>,
    /// Set once created; the async lock makes concurrent subscribers wait
    /// for the first one's set-up.
    state: tokio::sync::Mutex<Option<Published>>,
    ended: AtomicBool,
}

struct Published {
    publisher: RemotePublisher,
    port: u16,
    rtcp_port: u16,
}

/// One subscriber's share of a feed; [`Remotes::release`] gives it back.
#[derive(Clone)]
pub struct FeedGuard {
    link: Arc<Link>,
    feed: Arc<Feed>,
    released: Arc<AtomicBool>,
}

impl FeedGuard {
    pub fn key(&self) -> Arc<str> {
        self.feed.key.clone()
    }
}

/// Every link of this proxy.
pub struct Remotes {
    pub settings: Option<RemoteSettings>,
    links: Mutex<HashMap<String, Arc<Link>>>,
    me: Weak<Remotes>,
}

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("remote streams are not configured ([app] token_id)")]
    NotConfigured,
    #[error("invalid remote URL {0:?}")]
    BadUrl(String),
    #[error("remote proxy {0}: {1}")]
    Remote(String, String),
    #[error("{0}")]
    Mcu(#[from] mcu::McuError),
}

impl Remotes {
    pub fn new(settings: Option<RemoteSettings>) -> Arc<Remotes> {
        Arc::new_cyclic(|me| Remotes {
            settings,
            links: Mutex::new(HashMap::new()),
            me: me.clone(),
        })
    }

    pub fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// The link to the proxy at `url`, connected (hello done).
    async fn link(&self, url: &str) -> Result<Arc<Link>, RemoteError> {
        let settings = self.settings.as_ref().ok_or(RemoteError::NotConfigured)?;
        let ws = proxy_ws_url(url).ok_or_else(|| RemoteError::BadUrl(url.to_owned()))?;
        if let Some(l) = self.links.lock().get(&ws) {
            if l.usable() {
                return Ok(l.clone());
            }
        }
        let (tx, rx) = mpsc::channel(64);
        let link = Arc::new(Link {
            url: ws.clone(),
            cmd: tx,
            next: AtomicU64::new(0),
            feeds: Mutex::new(HashMap::new()),
            closing: AtomicBool::new(false),
            cancel: CancellationToken::new(),
        });
        let (ready_tx, ready_rx) = oneshot::channel();
        tokio::spawn(run_link(
            self.me.clone(),
            link.clone(),
            rx,
            settings.token(),
            settings.tls.clone(),
            ready_tx,
        ));
        match ready_rx.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(RemoteError::Remote(ws, e)),
            Err(_) => return Err(RemoteError::Remote(ws, "connection failed".into())),
        }
        // A concurrent first subscriber may have connected too: keep one.
        let mut links = self.links.lock();
        if let Some(existing) = links.get(&ws).filter(|l| l.usable()) {
            let existing = existing.clone();
            drop(links);
            link.cancel.cancel();
            return Ok(existing);
        }
        links.insert(ws, link.clone());
        Ok(link)
    }

    /// A share of the remote publisher of `publisher_id` (at the proxy
    /// `url`), creating it in `mcu` for the first subscriber.
    pub async fn acquire(
        &self,
        mcu: &JanusMcu,
        url: &str,
        publisher_id: &str,
        stream: StreamType,
        bitrate: u64,
    ) -> Result<FeedGuard, RemoteError> {
        let settings = self.settings.as_ref().ok_or(RemoteError::NotConfigured)?;
        let (link, feed) = loop {
            let link = self.link(url).await?;
            let mut feeds = link.feeds.lock();
            if link.closing.load(Ordering::Acquire) {
                // Its last feed went just now; the next try gets a new link.
                drop(feeds);
                tokio::task::yield_now().await;
                continue;
            }
            let feed = feeds
                .entry((publisher_id.to_owned(), stream))
                .or_insert_with(|| {
                    Arc::new(Feed {
                        publisher_id: publisher_id.to_owned(),
                        stream,
                        // Unique per feed: an old feed of the same publisher
                        // still closing must not take new subscribers along.
                        key: Arc::from(format!(
                            "remote|{}|{publisher_id}|{}",
                            link.url,
                            FEED_SEQ.fetch_add(1, Ordering::Relaxed)
                        )),
                        users: Mutex::new(0),
                        state: tokio::sync::Mutex::new(None),
                        ended: AtomicBool::new(false),
                    })
                })
                .clone();
            *feed.users.lock() += 1;
            drop(feeds);
            break (link, feed);
        };
        let guard = FeedGuard {
            link: link.clone(),
            feed: feed.clone(),
            released: Arc::new(AtomicBool::new(false)),
        };
        let mut state = feed.state.lock().await;
        if feed.ended.load(Ordering::Acquire) {
            drop(state);
            self.release(&guard).await;
            return Err(RemoteError::Remote(
                link.url.clone(),
                "publisher closed".into(),
            ));
        }
        if state.as_ref().is_some_and(|p| p.publisher.is_closed()) {
            // Our Janus lost it (restart): set it up again.
            *state = None;
        }
        if state.is_none() {
            match publish(&link, &feed, mcu, &settings.hostname, bitrate).await {
                Ok(p) => *state = Some(p),
                Err(e) => {
                    drop(state);
                    self.release(&guard).await;
                    return Err(e);
                }
            }
        }
        Ok(guard)
    }

    /// Give a share back; the last one unpublishes and removes the feed,
    /// and closes the link if it was its last feed.
    pub async fn release(&self, guard: &FeedGuard) {
        if guard.released.swap(true, Ordering::AcqRel) {
            return;
        }
        let (link, feed) = (&guard.link, &guard.feed);
        // Under the feeds lock, where `acquire` counts users too.
        let empty = {
            let mut feeds = link.feeds.lock();
            {
                let mut users = feed.users.lock();
                *users = users.saturating_sub(1);
                if *users > 0 {
                    return;
                }
            }
            let key = (feed.publisher_id.clone(), feed.stream);
            if feeds.get(&key).is_some_and(|f| Arc::ptr_eq(f, feed)) {
                feeds.remove(&key);
            }
            let empty = feeds.is_empty();
            if empty {
                link.closing.store(true, Ordering::Release);
            }
            empty
        };
        end_feed(link, feed, self.settings.as_ref(), true).await;
        if empty {
            debug!(url = %link.url, "last remote feed gone, closing the link");
            link.cancel.cancel();
            self.links.lock().retain(|_, l| !Arc::ptr_eq(l, link));
        }
    }

    pub fn link_count(&self) -> usize {
        self.links.lock().len()
    }
}

/// Steps 2–4 of the module docs.
async fn publish(
    link: &Link,
    feed: &Feed,
    mcu: &JanusMcu,
    hostname: &str,
    bitrate: u64,
) -> Result<Published, RemoteError> {
    let reply = link
        .request(CommandProxyClientMessage {
            kind: "get-publisher-streams".into(),
            client_id: feed.publisher_id.clone(),
            ..Default::default()
        })
        .await?;
    let streams = reply
        .command
        .and_then(|c| c.streams)
        .filter(|s| s.as_array().is_some_and(|a| !a.is_empty()))
        .ok_or_else(|| RemoteError::Remote(link.url.clone(), "no streams".into()))?;
    let publisher = mcu
        .add_remote_publisher(feed.key.clone(), feed.stream, streams, bitrate)
        .await?;
    let (port, rtcp_port) = (publisher.endpoint.port, publisher.endpoint.rtcp_port);
    let asked = link
        .request(CommandProxyClientMessage {
            kind: "publish-remote".into(),
            client_id: feed.publisher_id.clone(),
            hostname: hostname.to_owned(),
            port,
            rtcp_port,
            ..Default::default()
        })
        .await;
    if let Err(e) = asked {
        publisher.close().await;
        return Err(e);
    }
    info!(url = %link.url, publisher = %feed.publisher_id, port, "receiving remote stream");
    Ok(Published {
        publisher,
        port,
        rtcp_port,
    })
}

/// Stop the stream (asking the other proxy when `unpublish`) and remove
/// the remote publisher; its subscribers are closed with it.
async fn end_feed(link: &Link, feed: &Feed, settings: Option<&RemoteSettings>, unpublish: bool) {
    if feed.ended.swap(true, Ordering::AcqRel) {
        return;
    }
    let published = feed.state.lock().await.take();
    let Some(p) = published else { return };
    if let (true, Some(s)) = (unpublish, settings) {
        let asked = link
            .request(CommandProxyClientMessage {
                kind: "unpublish-remote".into(),
                client_id: feed.publisher_id.clone(),
                hostname: s.hostname.clone(),
                port: p.port,
                rtcp_port: p.rtcp_port,
                ..Default::default()
            })
            .await;
        if let Err(e) = asked {
            debug!(error = %e, "could not unpublish remote stream");
        }
    }
    p.publisher.close().await;
    info!(url = %link.url, publisher = %feed.publisher_id, "remote stream ended");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_urls_resolve_like_a_relative_link() {
        for (given, want) in [
            ("ws://a:9090", "ws://a:9090/proxy"),
            ("ws://a:9090/", "ws://a:9090/proxy"),
            ("http://a:9090/", "ws://a:9090/proxy"),
            ("https://a/mcu/", "wss://a/mcu/proxy"),
            ("wss://a/mcu", "wss://a/proxy"),
            ("ws://a/mcu/proxy", "ws://a/mcu/proxy"),
        ] {
            assert_eq!(proxy_ws_url(given).as_deref(), Some(want), "{given}");
        }
        assert_eq!(proxy_ws_url("ftp://a/"), None);
        assert_eq!(proxy_ws_url("ws:///x"), None);
        assert_eq!(proxy_ws_url("nonsense"), None);
    }
}
