//! The MCU proxy (`proxy` binary): fronts one Janus gateway for signaling
//! servers, so that several Janus can serve one signaling cluster
//! (upstream `proxy/`, protocol PXP-*, server PXY-*).
//!
//! Signaling servers connect to `/proxy`, say hello with an RSA-signed
//! token ([`tokens`]), and create publishers and subscribers by command;
//! SDP and candidates travel as payloads. The Janus side is the same
//! [`hub::mcu::janus::JanusMcu`] the signaling server uses directly, so a
//! proxy also survives Janus restarts.
//!
//! ```text
//!  signaling ─ws─▶ conn task ─▶ ProxyServer::process ─▶ JanusMcu (one task per
//!                     ▲                                   publisher/subscriber)
//!                     └──── ProxySession (kept for resume) ◀── ProxyListener
//! ```

#![forbid(unsafe_code)]

pub mod check;
pub mod conn;
pub mod keygen;
pub mod remote;
pub mod schema;
pub mod session;
pub mod tokens;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use parking_lot::{Mutex, RwLock};
use proto::client::{Error, HelloServerInfo};
use proto::proxy::{
    ByeProxyServerMessage, CommandProxyClientMessage, CommandProxyServerMessage,
    EventProxyServerMessage, HelloProxyServerMessage, PayloadProxyClientMessage,
    PayloadProxyServerMessage, ProxyClientMessage, ProxyServerMessage, HELLO_VERSION,
};
use runtime::config::{ConfigError, Ini};
use runtime::listen::{self, Body, ListenError, Listener, PeerInfo, ServeOptions};
use runtime::metrics::{Counter, CounterVec, Gauge, GaugeVec, Registry};
use runtime::net::IpNet;
use runtime::shutdown::Shutdown;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{debug, info, warn};

use hub::mcu::janus::{JanusMcu, JanusSettings};
use hub::mcu::{
    CodecPrefs, Mcu, McuClient, McuError, McuMessage, MediaTypes, PublisherParams, StreamType,
    SubscriberParams,
};

use crate::conn::ConnState;
use crate::session::{Outgoing, ProxyListener, ProxySession};
use crate::tokens::Tokens;

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

pub fn err_invalid_format() -> Error {
    Error::new("invalid_format", "Invalid data format.")
}
fn err_hello_expected() -> Error {
    Error::new("hello_expected", "Expected Hello request.")
}
fn err_no_such_session() -> Error {
    Error::new("no_such_session", "The session to resume does not exist.")
}
fn err_unknown_client() -> Error {
    Error::new("unknown_client", "Unknown client id given.")
}
fn err_unsupported_command() -> Error {
    Error::new("bad_request", "Unsupported command received.")
}
fn err_unsupported_message() -> Error {
    Error::new("bad_request", "Unsupported message received.")
}
fn err_unsupported_payload() -> Error {
    Error::new("unsupported_payload", "Unsupported payload type.")
}
fn err_shutdown_scheduled() -> Error {
    Error::new("shutdown_scheduled", "The server is scheduled to shutdown.")
}
fn err_internal(e: impl std::fmt::Display) -> Error {
    Error::new("internal_error", e.to_string())
}

#[derive(Debug, thiserror::Error)]
enum RemoteSubscribeError {
    #[error("remote token refused: {}", .0.reason)]
    Token(tokens::TokenError),
    #[error("remote streams not supported here")]
    Unsupported,
    #[error("{0}")]
    Failed(String),
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Listen(#[from] ListenError),
    #[error("[{section}] {key}: {reason}")]
    Invalid {
        section: &'static str,
        key: &'static str,
        reason: String,
    },
}

/// Metrics with upstream's names (`signaling_proxy_*`).
struct ProxyMetrics {
    sessions: Arc<Gauge>,
    sessions_total: Arc<Counter>,
    sessions_resumed: Arc<Counter>,
    publishers: Arc<GaugeVec>,
    publishers_total: Arc<CounterVec>,
    subscribers: Arc<GaugeVec>,
    subscribers_total: Arc<CounterVec>,
    commands: Arc<CounterVec>,
    payloads: Arc<CounterVec>,
    token_errors: Arc<CounterVec>,
    load: Arc<Gauge>,
    /// Closed connections waiting for the peer's close frame.
    pub(crate) lingering: Arc<Gauge>,
}

impl ProxyMetrics {
    fn new(r: &Registry) -> ProxyMetrics {
        ProxyMetrics {
            sessions: r.gauge("signaling_proxy_sessions", "The current number of sessions"),
            lingering: r.gauge(
                "signaling_proxy_lingering_connections",
                "Closed connections waiting for the signaling server's close frame",
            ),
            sessions_total: r.counter(
                "signaling_proxy_sessions_total",
                "The total number of created sessions",
            ),
            sessions_resumed: r.counter(
                "signaling_proxy_sessions_resumed_total",
                "The total number of resumed sessions",
            ),
            publishers: r.gauge_vec(
                "signaling_proxy_publishers",
                "The current number of publishers",
                &["type"],
            ),
            publishers_total: r.counter_vec(
                "signaling_proxy_publishers_total",
                "The total number of created publishers",
                &["type"],
            ),
            subscribers: r.gauge_vec(
                "signaling_proxy_subscribers",
                "The current number of subscribers",
                &["type"],
            ),
            subscribers_total: r.counter_vec(
                "signaling_proxy_subscribers_total",
                "The total number of created subscribers",
                &["type"],
            ),
            commands: r.counter_vec(
                "signaling_proxy_command_messages_total",
                "The total number of command messages",
                &["type"],
            ),
            payloads: r.counter_vec(
                "signaling_proxy_payload_messages_total",
                "The total number of payload messages",
                &["type"],
            ),
            token_errors: r.counter_vec(
                "signaling_proxy_token_errors_total",
                "The total number of token errors",
                &["reason"],
            ),
            load: r.gauge(
                "signaling_proxy_load",
                "The current load: Mbit/s of the hosted streams' bitrate caps",
            ),
        }
    }
}

/// A publisher or subscriber hosted here.
struct ClientEntry {
    client: Arc<dyn McuClient>,
    session: String,
    publisher: bool,
    /// Bits/s this client may move (the publisher's cap, for subscribers
    /// that of their publisher): the load.
    bitrate: u64,
    /// A subscriber of a remote stream: its share of the remote publisher.
    remote: Option<remote::FeedGuard>,
}

/// A proxy that receives a publisher's stream from us (`publish-remote`).
struct RemoteUse {
    /// Its proxy session here, told `publisher-closed`.
    session: String,
    remote_id: String,
}

#[derive(Default)]
struct Tables {
    sessions: HashMap<String, Arc<ProxySession>>,
    clients: HashMap<String, ClientEntry>,
}

pub struct ProxyServer {
    me: Weak<ProxyServer>,
    country: String,
    mcu: Arc<JanusMcu>,
    janus: JanusSettings,
    tokens: RwLock<Arc<Tokens>>,
    // Plain mutex, never held across `.await`.
    reg: Mutex<Tables>,
    load: AtomicI64,
    draining: AtomicBool,
    /// Woken when the last client goes while draining.
    clients_gone: tokio::sync::Notify,
    stats_allowed: RwLock<Vec<IpNet>>,
    stats_refusals: runtime::net::StatsRefusals,
    pub registry: Registry,
    pub(crate) metrics: ProxyMetrics,
    pub shutdown: Shutdown,
    server_header: HeaderValue,
    next_sid: AtomicU64,
    /// The `[https]` certificate, reloaded on SIGHUP.
    tls: Mutex<Option<listen::Tls>>,
    /// Remote streams we receive from other proxies.
    remotes: Arc<remote::Remotes>,
    /// `[bandwidth] incoming` / `outgoing` in bits/s (0: no limit).
    bandwidth_limits: (u64, u64),
    /// The bandwidth percentages last announced.
    bandwidth: Mutex<Option<proto::proxy::EventProxyServerBandwidth>>,
    /// Publisher client id -> proxies we send its stream to.
    remote_uses: Mutex<HashMap<String, Vec<RemoteUse>>>,
    /// The configuration at start-up and at the last reload, to tell on
    /// SIGHUP what changed.
    config_started: Ini,
    config_current: Mutex<Ini>,
}

fn stats_ips(ini: &Ini) -> Result<Vec<IpNet>, StartError> {
    runtime::net::stats_allowed(ini).map_err(|reason| StartError::Invalid {
        section: "stats",
        key: "allowed_ips",
        reason,
    })
}

fn random_id(bytes: usize) -> String {
    let data: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(data)
}

/// A UUID v4 in the usual text form (upstream's client ids).
fn uuid() -> String {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl ProxyServer {
    /// Build from `proxy.conf`. Must run inside a Tokio runtime (starts
    /// connecting to Janus in the background).
    pub fn build(ini: &Ini) -> Result<Arc<ProxyServer>, StartError> {
        let kind = ini.get_string("mcu", "type", "janus");
        if !kind.is_empty() && kind != "janus" {
            return Err(StartError::Invalid {
                section: "mcu",
                key: "type",
                reason: format!("unsupported MCU type {kind:?} (only janus)"),
            });
        }
        let mut janus =
            JanusSettings::from_config(ini).map_err(|(key, reason)| StartError::Invalid {
                section: "mcu",
                key,
                reason,
            })?;
        // The signaling server holds requests while we have no Janus.
        janus.down_hold = Duration::ZERO;
        let tokens = Tokens::load(ini, true).map_err(|reason| StartError::Invalid {
            section: "tokens",
            key: "*",
            reason,
        })?;
        let country = ini.get_string("app", "country", "").to_uppercase();
        let valid = country.len() == 2 && country.chars().all(|c| c.is_ascii_uppercase());
        if !country.is_empty() && !valid {
            return Err(StartError::Invalid {
                section: "app",
                key: "country",
                reason: format!("{country:?} is not an ISO 3166 country code"),
            });
        }
        let remote_settings =
            remote::RemoteSettings::from_config(ini).map_err(|(key, reason)| {
                StartError::Invalid {
                    section: "app",
                    key,
                    reason,
                }
            })?;
        let limit = |key: &'static str| -> Result<u64, StartError> {
            let v = ini.get_int("bandwidth", key, 0)?;
            if v < 0 {
                return Err(StartError::Invalid {
                    section: "bandwidth",
                    key,
                    reason: format!("{v} is negative"),
                });
            }
            Ok(v as u64 * 1024 * 1024)
        };
        let bandwidth_limits = (limit("incoming")?, limit("outgoing")?);
        let registry = Registry::new();
        registry.register_process_metrics();
        let mcu_metrics = hub::mcu::metrics::McuMetrics::new(&registry);
        let metrics = ProxyMetrics::new(&registry);
        info!(url = %janus.url, "using Janus");
        let mcu = JanusMcu::start(janus.clone(), mcu_metrics);
        let server = Arc::new_cyclic(|me| ProxyServer {
            me: me.clone(),
            country,
            mcu,
            janus,
            tokens: RwLock::new(Arc::new(tokens)),
            reg: Mutex::new(Tables::default()),
            load: AtomicI64::new(0),
            draining: AtomicBool::new(false),
            clients_gone: tokio::sync::Notify::new(),
            stats_allowed: RwLock::new(Vec::new()),
            stats_refusals: Default::default(),
            registry,
            metrics,
            shutdown: Shutdown::new(),
            server_header: HeaderValue::from_str(&format!(
                "nextcloud-spreed-signaling-proxy/{VERSION}"
            ))
            .unwrap_or(HeaderValue::from_static("nextcloud-spreed-signaling-proxy")),
            next_sid: AtomicU64::new(0),
            tls: Mutex::new(None),
            remotes: remote::Remotes::new(remote_settings),
            remote_uses: Mutex::new(HashMap::new()),
            bandwidth_limits,
            bandwidth: Mutex::new(None),
            config_started: ini.clone(),
            config_current: Mutex::new(ini.clone()),
        });
        *server.stats_allowed.write() = stats_ips(ini)?;
        server.spawn_housekeeping();
        Ok(server)
    }

    pub fn mcu(&self) -> &Arc<JanusMcu> {
        &self.mcu
    }

    /// What the hello tells signaling servers: `remote-streams` when this
    /// proxy can fetch streams from others (`[app] token_id`) and its
    /// Janus has remote publishers.
    fn features(&self) -> Vec<String> {
        if self.remotes.enabled() && self.mcu.supports_remote_streams() {
            vec!["remote-streams".into()]
        } else {
            Vec::new()
        }
    }

    /// Number of other proxies we receive remote streams from.
    pub fn remote_links(&self) -> usize {
        self.remotes.link_count()
    }

    /// SIGHUP: tokens and the stats IPs. Sessions stay.
    pub fn reload(&self, ini: &Ini) {
        runtime::logging::apply_config_level(ini);
        if let Some(tls) = self.tls.lock().clone() {
            tls.reload_from(ini);
        }
        match Tokens::load(ini, false) {
            Ok(t) => *self.tokens.write() = Arc::new(t),
            Err(e) => warn!(error = %e, "keeping the old tokens"),
        }
        match stats_ips(ini) {
            Ok(ips) => *self.stats_allowed.write() = ips,
            Err(e) => warn!(error = %e, "keeping the old allowed_ips"),
        }
        let report = {
            let mut current = self.config_current.lock();
            let r = runtime::reload::ReloadReport::new(
                &self.config_started,
                &current,
                ini,
                |section, key| {
                    matches!(
                        (section, key),
                        ("tokens", _)
                            | ("stats", "allowed_ips")
                            | ("app", "loglevel")
                            | ("https", "certificate" | "key")
                    )
                },
            );
            *current = ini.clone();
            r
        };
        info!(tokens = ?self.tokens.read().ids(), "token keys");
        report.log();
    }

    /// SIGUSR1: tell every signaling server, take no new publishers; see
    /// [`ProxyServer::drained`].
    pub fn start_drain(&self) -> bool {
        if self.draining.swap(true, Ordering::SeqCst) {
            return false;
        }
        let msg = ProxyServerMessage::event(EventProxyServerMessage {
            kind: "shutdown-scheduled".into(),
            ..Default::default()
        });
        for s in self.sessions() {
            s.send(&msg);
        }
        self.clients_gone.notify_waiters();
        true
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Resolves once draining and no publisher or subscriber is left.
    pub async fn drained(&self) {
        loop {
            let gone = self.clients_gone.notified();
            tokio::pin!(gone);
            gone.as_mut().enable();
            if self.is_draining() && self.reg.lock().clients.is_empty() {
                return;
            }
            gone.await;
        }
    }

    fn sessions(&self) -> Vec<Arc<ProxySession>> {
        self.reg.lock().sessions.values().cloned().collect()
    }

    fn spawn_housekeeping(&self) {
        let weak = self.me.clone();
        let token = self.shutdown.token.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(server) = weak.upgrade() else { return };
                server.update_load();
                n += 1;
                if n.is_multiple_of(10) {
                    server.expire_sessions();
                }
            }
        });
    }

    /// Load = Mbit/s of the bitrate caps of everything hosted (upstream
    /// 1.2.4 weighs by bandwidth too), so a screen share (2 Mbit/s) counts
    /// twice a camera, and each subscriber counts its publisher's rate.
    fn current_load(&self) -> i64 {
        let bits: u64 = self.reg.lock().clients.values().map(|c| c.bitrate).sum();
        bits.div_ceil(1024 * 1024) as i64
    }

    /// Use of the `[bandwidth]` limits (percent), if any is set: incoming
    /// counts the publishers' caps, outgoing the subscribers'.
    fn current_bandwidth(&self) -> Option<proto::proxy::EventProxyServerBandwidth> {
        let (limit_in, limit_out) = self.bandwidth_limits;
        if limit_in == 0 && limit_out == 0 {
            return None;
        }
        let (mut incoming, mut outgoing) = (0u64, 0u64);
        for c in self.reg.lock().clients.values() {
            if c.publisher {
                incoming += c.bitrate;
            } else {
                outgoing += c.bitrate;
            }
        }
        let pct = |used: u64, limit: u64| {
            (limit > 0).then(|| (used as f64 * 100.0 / limit as f64 * 1000.0).round() / 1000.0)
        };
        Some(proto::proxy::EventProxyServerBandwidth {
            incoming: pct(incoming, limit_in),
            outgoing: pct(outgoing, limit_out),
        })
    }

    fn update_load(&self) {
        let load = self.current_load();
        self.metrics.load.set(load);
        let bandwidth = self.current_bandwidth();
        let bandwidth_changed = {
            let mut last = self.bandwidth.lock();
            let changed = *last != bandwidth;
            *last = bandwidth;
            changed
        };
        if (self.load.swap(load, Ordering::SeqCst) == load && !bandwidth_changed)
            || self.is_draining()
        {
            return;
        }
        let msg = self.load_event();
        for s in self.sessions() {
            s.send(&msg);
        }
    }

    fn load_event(&self) -> ProxyServerMessage {
        ProxyServerMessage::event(EventProxyServerMessage {
            kind: "update-load".into(),
            load: self.load.load(Ordering::SeqCst),
            bandwidth: *self.bandwidth.lock(),
            ..Default::default()
        })
    }

    fn expire_sessions(&self) {
        let expired: Vec<Arc<ProxySession>> = self
            .reg
            .lock()
            .sessions
            .values()
            .filter(|s| s.is_expired())
            .cloned()
            .collect();
        for s in expired {
            info!(session = %s.id, "proxy session expired");
            self.delete_session(&s.id);
        }
    }

    fn delete_session(&self, id: &str) {
        self.end_remote_uses_of(id);
        let clients: Vec<(String, ClientEntry)> = {
            let mut reg = self.reg.lock();
            if reg.sessions.remove(id).is_none() {
                return;
            }
            let ids: Vec<String> = reg
                .clients
                .iter()
                .filter(|(_, c)| c.session == id)
                .map(|(k, _)| k.clone())
                .collect();
            ids.into_iter()
                .filter_map(|k| reg.clients.remove(&k).map(|c| (k, c)))
                .collect()
        };
        self.metrics.sessions.dec();
        for (_, c) in &clients {
            self.count_gone(c);
        }
        self.after_client_removal();
        tokio::spawn(async move {
            for (_, c) in clients {
                c.client.close().await;
            }
        });
    }

    fn count_gone(&self, c: &ClientEntry) {
        if let Some(guard) = c.remote.clone() {
            let remotes = self.remotes.clone();
            tokio::spawn(async move { remotes.release(&guard).await });
        }
        let labels = [c.client.stream_type().as_str()];
        if c.publisher {
            self.metrics.publishers.dec(&labels);
        } else {
            self.metrics.subscribers.dec(&labels);
        }
    }

    fn after_client_removal(&self) {
        if self.is_draining() && self.reg.lock().clients.is_empty() {
            self.clients_gone.notify_waiters();
        }
    }

    /// The MCU closed a client on its own (Janus hung up, room destroyed):
    /// true if it was still registered.
    pub(crate) fn forget_client(&self, id: &str) -> bool {
        let removed = self.reg.lock().clients.remove(id);
        match removed {
            Some(c) => {
                self.count_gone(&c);
                self.after_client_removal();
                true
            }
            None => false,
        }
    }

    pub(crate) fn reply(&self, conn: &ConnState, msg: ProxyServerMessage) {
        match &conn.session {
            Some(s) => s.send(&msg),
            None => {
                if let Ok(text) = serde_json::to_string(&msg) {
                    let _ = conn.tx.try_send(Outgoing::Text(text));
                }
            }
        }
    }

    /// One text message of a connection.
    pub(crate) async fn process(&self, conn: &mut ConnState, text: &str) {
        let msg: ProxyClientMessage = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(error = %e, "could not decode proxy message");
                self.reply(conn, ProxyServerMessage::error("", err_invalid_format()));
                return;
            }
        };
        if let Err(e) = msg.check_valid() {
            debug!(error = %e, "invalid proxy message");
            self.reply(
                conn,
                ProxyServerMessage::error(&msg.id, err_invalid_format()),
            );
            return;
        }
        let Some(session) = conn.session.clone() else {
            if msg.kind != "hello" {
                self.reply(
                    conn,
                    ProxyServerMessage::error(&msg.id, err_hello_expected()),
                );
                return;
            }
            self.process_hello(conn, msg).await;
            return;
        };
        match msg.kind.as_str() {
            "command" => self.process_command(&session, msg),
            "payload" => self.process_payload(&session, msg).await,
            "bye" => {
                info!(session = %session.id, "signaling server said bye");
                let bye = ProxyServerMessage {
                    id: msg.id.clone(),
                    kind: "bye".into(),
                    bye: Some(ByeProxyServerMessage {
                        reason: "bye".into(),
                    }),
                    ..Default::default()
                };
                if let Ok(text) = serde_json::to_string(&bye) {
                    let _ = conn.tx.try_send(Outgoing::Last(text));
                }
                conn.session = None;
                session.detach(&conn.tx);
                self.delete_session(&session.id);
            }
            _ => session.send(&ProxyServerMessage::error(
                &msg.id,
                err_unsupported_message(),
            )),
        }
    }

    async fn process_hello(&self, conn: &mut ConnState, msg: ProxyClientMessage) {
        let Some(hello) = msg.hello else { return };
        let session = if !hello.resumeid.is_empty() {
            let found = self.reg.lock().sessions.get(&hello.resumeid).cloned();
            let Some(session) = found else {
                self.reply(
                    conn,
                    ProxyServerMessage::error(&msg.id, err_no_such_session()),
                );
                return;
            };
            self.metrics.sessions_resumed.inc();
            info!(session = %session.id, "proxy session resumed");
            session
        } else {
            let tokens = self.tokens.read().clone();
            let issuer = match tokens.verify(&hello.token).await {
                Ok(iss) => iss,
                Err(e) => {
                    info!(reason = e.reason, "proxy hello refused");
                    self.metrics.token_errors.inc(&[e.reason]);
                    self.reply(conn, ProxyServerMessage::error(&msg.id, e.to_error()));
                    return;
                }
            };
            let sid = self.next_sid.fetch_add(1, Ordering::Relaxed) + 1;
            let session = ProxySession::new(format!("{}{sid:x}", random_id(24)));
            self.reg
                .lock()
                .sessions
                .insert(session.id.clone(), session.clone());
            self.metrics.sessions.inc();
            self.metrics.sessions_total.inc();
            info!(session = %session.id, token = %issuer, "proxy session created");
            session
        };
        let reply = ProxyServerMessage {
            id: msg.id.clone(),
            kind: "hello".into(),
            hello: Some(HelloProxyServerMessage {
                version: HELLO_VERSION.into(),
                sessionid: session.id.clone(),
                server: Some(HelloServerInfo {
                    version: VERSION.into(),
                    features: self.features(),
                    country: self.country.clone(),
                }),
            }),
            ..Default::default()
        };
        // The hello reply goes out before anything kept for the session.
        if let Ok(text) = serde_json::to_string(&reply) {
            let _ = conn.tx.try_send(Outgoing::Text(text));
        }
        if let Some(prev) = session.attach(conn.tx.clone()) {
            let bye = ProxyServerMessage {
                kind: "bye".into(),
                bye: Some(ByeProxyServerMessage {
                    reason: "session_resumed".into(),
                }),
                ..Default::default()
            };
            if let Ok(text) = serde_json::to_string(&bye) {
                let _ = prev.try_send(Outgoing::Last(text));
            }
        }
        conn.session = Some(session.clone());
        if self.is_draining() {
            session.send(&ProxyServerMessage::event(EventProxyServerMessage {
                kind: "shutdown-scheduled".into(),
                ..Default::default()
            }));
        } else {
            session.send(&self.load_event());
        }
    }

    fn process_command(&self, session: &Arc<ProxySession>, msg: ProxyClientMessage) {
        let Some(cmd) = msg.command else { return };
        self.metrics.commands.inc(&[&cmd.kind]);
        match cmd.kind.as_str() {
            "create-publisher" | "create-subscriber" => {
                if cmd.kind == "create-publisher" && self.is_draining() {
                    session.send(&ProxyServerMessage::error(
                        &msg.id,
                        err_shutdown_scheduled(),
                    ));
                    return;
                }
                // Creating may wait for Janus (and a subscriber for its
                // publisher): never hold up the connection's other messages.
                let Some(me) = self.me.upgrade() else { return };
                let session = session.clone();
                tokio::spawn(async move { me.create_client(&session, msg.id, cmd).await });
            }
            "delete-publisher" | "delete-subscriber" => {
                let want_publisher = cmd.kind == "delete-publisher";
                let removed = {
                    let mut reg = self.reg.lock();
                    let ok = reg
                        .clients
                        .get(&cmd.client_id)
                        .is_some_and(|c| c.session == session.id && c.publisher == want_publisher);
                    if ok {
                        reg.clients.remove(&cmd.client_id)
                    } else {
                        None
                    }
                };
                let Some(entry) = removed else {
                    session.send(&ProxyServerMessage::error(&msg.id, err_unknown_client()));
                    return;
                };
                self.count_gone(&entry);
                self.after_client_removal();
                tokio::spawn(async move { entry.client.close().await });
                session.send(&ProxyServerMessage {
                    id: msg.id,
                    kind: "command".into(),
                    command: Some(CommandProxyServerMessage {
                        id: cmd.client_id,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            "get-publisher-streams" | "publish-remote" | "unpublish-remote" => {
                let Some(me) = self.me.upgrade() else { return };
                let session = session.clone();
                tokio::spawn(async move { me.remote_command(&session, msg.id, cmd).await });
            }
            _ => session.send(&ProxyServerMessage::error(
                &msg.id,
                err_unsupported_command(),
            )),
        }
    }

    /// Remote streams, publisher side: another proxy (a session here like
    /// any signaling server's) fetches a publisher's streams and has them
    /// sent to its Janus. Any session may name any publisher: the proxy
    /// authenticated with a token of ours.
    async fn remote_command(
        &self,
        session: &Arc<ProxySession>,
        msg_id: String,
        cmd: CommandProxyClientMessage,
    ) {
        let stream = {
            let reg = self.reg.lock();
            reg.clients
                .get(&cmd.client_id)
                .filter(|c| c.publisher)
                .map(|c| c.client.stream_type())
        };
        let Some(stream) = stream else {
            session.send(&ProxyServerMessage::error(&msg_id, err_unknown_client()));
            return;
        };
        let remote_id = format!(
            "{}-{}@{}:{}:{}",
            cmd.client_id, session.id, cmd.hostname, cmd.port, cmd.rtcp_port
        );
        let mut reply = CommandProxyServerMessage {
            id: cmd.client_id.clone(),
            ..Default::default()
        };
        let res = match cmd.kind.as_str() {
            "get-publisher-streams" => self
                .mcu
                .publisher_streams(&cmd.client_id, stream)
                .await
                .map(|s| reply.streams = Some(s)),
            "publish-remote" => {
                let res = self
                    .mcu
                    .publish_remotely(
                        &cmd.client_id,
                        stream,
                        remote_id.clone(),
                        cmd.hostname.clone(),
                        cmd.port,
                        cmd.rtcp_port,
                    )
                    .await;
                let gone = {
                    let reg = self.reg.lock();
                    !reg.sessions.contains_key(&session.id)
                        || !reg.clients.contains_key(&cmd.client_id)
                };
                if res.is_ok() && gone {
                    // The asking proxy or the publisher went while Janus
                    // set it up: undo, nobody would stop it later.
                    let _ = self
                        .mcu
                        .unpublish_remotely(&cmd.client_id, stream, remote_id.clone())
                        .await;
                } else if res.is_ok() {
                    info!(publisher = %cmd.client_id, to = %format!("{}:{}", cmd.hostname, cmd.port), "publishing remotely");
                    let mut uses = self.remote_uses.lock();
                    let list = uses.entry(cmd.client_id.clone()).or_default();
                    if !list.iter().any(|u| u.remote_id == remote_id) {
                        list.push(RemoteUse {
                            session: session.id.clone(),
                            remote_id,
                        });
                    }
                }
                res
            }
            _ => {
                if let Some(list) = self.remote_uses.lock().get_mut(&cmd.client_id) {
                    list.retain(|u| u.remote_id != remote_id);
                }
                self.mcu
                    .unpublish_remotely(&cmd.client_id, stream, remote_id)
                    .await
            }
        };
        match res {
            Ok(()) => session.send(&ProxyServerMessage {
                id: msg_id,
                kind: "command".into(),
                command: Some(reply),
                ..Default::default()
            }),
            Err(e) => {
                warn!(kind = %cmd.kind, publisher = %cmd.client_id, error = %e, "remote stream command failed");
                session.send(&ProxyServerMessage::error(&msg_id, err_internal(e)));
            }
        }
    }

    /// A publisher ended: the proxies receiving it are told.
    pub(crate) fn publisher_gone(&self, client_id: &str) {
        let uses = self
            .remote_uses
            .lock()
            .remove(client_id)
            .unwrap_or_default();
        for u in uses {
            let session = self.reg.lock().sessions.get(&u.session).cloned();
            if let Some(s) = session {
                s.send(&ProxyServerMessage::event(EventProxyServerMessage {
                    kind: "publisher-closed".into(),
                    client_id: client_id.to_owned(),
                    ..Default::default()
                }));
            }
        }
    }

    /// A proxy's session ended: stop sending it what it asked for.
    fn end_remote_uses_of(&self, session: &str) {
        let ended: Vec<(String, String)> = {
            let mut uses = self.remote_uses.lock();
            let mut ended = Vec::new();
            for (publisher, list) in uses.iter_mut() {
                list.retain(|u| {
                    let mine = u.session == session;
                    if mine {
                        ended.push((publisher.clone(), u.remote_id.clone()));
                    }
                    !mine
                });
            }
            uses.retain(|_, l| !l.is_empty());
            ended
        };
        for (publisher, remote_id) in ended {
            let stream = self
                .reg
                .lock()
                .clients
                .get(&publisher)
                .map(|c| c.client.stream_type());
            if let (Some(stream), Some(me)) = (stream, self.me.upgrade()) {
                tokio::spawn(async move {
                    let _ = me
                        .mcu
                        .unpublish_remotely(&publisher, stream, remote_id)
                        .await;
                });
            }
        }
    }

    /// A subscriber of a publisher on another proxy (see [`remote`]).
    async fn remote_subscriber(
        &self,
        cmd: &CommandProxyClientMessage,
        stream: StreamType,
        listener: Arc<ProxyListener>,
    ) -> Result<(Arc<dyn McuClient>, remote::FeedGuard), RemoteSubscribeError> {
        if !self.remotes.enabled() || !self.mcu.supports_remote_streams() {
            return Err(RemoteSubscribeError::Unsupported);
        }
        let tokens = self.tokens.read().clone();
        let (_, subject) = tokens
            .verify_claims(&cmd.remote_token)
            .await
            .map_err(RemoteSubscribeError::Token)?;
        if subject != cmd.publisher_id {
            return Err(RemoteSubscribeError::Token(tokens::TokenError::auth(
                "wrong-subject",
            )));
        }
        let cap = self.janus.max_bitrate(stream);
        let guard = self
            .remotes
            .acquire(&self.mcu, &cmd.remote_url, &cmd.publisher_id, stream, cap)
            .await
            .map_err(|e| RemoteSubscribeError::Failed(e.to_string()))?;
        let params = SubscriberParams::new(guard.key(), stream);
        match self.mcu.new_subscriber(listener, params).await {
            Ok(c) => Ok((c, guard)),
            Err(e) => {
                self.remotes.release(&guard).await;
                Err(RemoteSubscribeError::Failed(e.to_string()))
            }
        }
    }

    async fn create_client(
        &self,
        session: &Arc<ProxySession>,
        msg_id: String,
        cmd: CommandProxyClientMessage,
    ) {
        let publisher = cmd.kind == "create-publisher";
        let Some(stream) = StreamType::parse(&cmd.stream_type) else {
            session.send(&ProxyServerMessage::error(
                &msg_id,
                err_internal(format!("Unsupported stream type {}", cmd.stream_type)),
            ));
            return;
        };
        let id = uuid();
        let mut remote_guard = None;
        let listener = Arc::new(ProxyListener {
            server: self.me.clone(),
            session: Arc::downgrade(session),
            client_id: id.clone(),
            sid: Mutex::new(String::new()),
        });
        let (result, bitrate) = if publisher {
            let cap = self.janus.max_bitrate(stream);
            let bitrate = hub::mcu::cap_bitrate(cmd.bitrate, cap);
            let params = PublisherParams {
                id: Arc::from(id.as_str()),
                sid: cmd.sid.clone(),
                stream,
                bitrate,
                media: MediaTypes(cmd.mediatypes as u8),
                codecs: CodecPrefs::default(),
                country: None,
                continents: Vec::new(),
            };
            (
                self.mcu.new_publisher(listener.clone(), params).await,
                bitrate,
            )
        } else if !cmd.remote_url.is_empty() {
            match self.remote_subscriber(&cmd, stream, listener.clone()).await {
                Ok((client, guard)) => {
                    remote_guard = Some(guard);
                    (Ok(client), self.janus.max_bitrate(stream))
                }
                Err(e) => {
                    warn!(session = %session.id, url = %cmd.remote_url, error = %e, "could not subscribe to a remote stream");
                    let error = match e {
                        RemoteSubscribeError::Token(t) => t.to_error(),
                        RemoteSubscribeError::Unsupported => Error::new(
                            "unsupported_subscriber",
                            "Remote subscribers are not supported.",
                        ),
                        RemoteSubscribeError::Failed(e) => err_internal(e),
                    };
                    session.send(&ProxyServerMessage::error(&msg_id, error));
                    return;
                }
            }
        } else {
            let bitrate = self
                .reg
                .lock()
                .clients
                .get(&cmd.publisher_id)
                .map(|c| c.bitrate)
                .unwrap_or_else(|| self.janus.max_bitrate(stream));
            (
                self.mcu
                    .new_subscriber(
                        listener.clone(),
                        SubscriberParams::new(Arc::from(cmd.publisher_id.as_str()), stream),
                    )
                    .await,
                bitrate,
            )
        };
        let client = match result {
            Ok(c) => c,
            Err(e) if remote_guard.is_some() => {
                // Not reached: remote failures return above.
                session.send(&ProxyServerMessage::error(&msg_id, err_internal(e)));
                return;
            }
            Err(McuError::Timeout(_)) => {
                let what = if publisher { "publisher" } else { "subscriber" };
                session.send(&ProxyServerMessage::error(
                    &msg_id,
                    Error::new("timeout", format!("Timeout creating {what}.")),
                ));
                return;
            }
            Err(e) => {
                warn!(session = %session.id, kind = %cmd.kind, error = %e, "could not create MCU client");
                session.send(&ProxyServerMessage::error(&msg_id, err_internal(e)));
                return;
            }
        };
        *listener.sid.lock() = client.sid();
        let sid = if publisher {
            String::new()
        } else {
            client.sid()
        };
        let still_there = {
            let mut reg = self.reg.lock();
            let alive = reg.sessions.contains_key(&session.id);
            if alive {
                reg.clients.insert(
                    id.clone(),
                    ClientEntry {
                        client: client.clone(),
                        session: session.id.clone(),
                        publisher,
                        bitrate,
                        remote: remote_guard.clone(),
                    },
                );
            }
            alive
        };
        if !still_there {
            client.close().await;
            if let Some(g) = remote_guard {
                self.remotes.release(&g).await;
            }
            return;
        }
        let labels = [stream.as_str()];
        if publisher {
            self.metrics.publishers.inc(&labels);
            self.metrics.publishers_total.inc(&labels);
        } else {
            self.metrics.subscribers.inc(&labels);
            self.metrics.subscribers_total.inc(&labels);
        }
        session.send(&ProxyServerMessage {
            id: msg_id,
            kind: "command".into(),
            command: Some(CommandProxyServerMessage {
                id,
                sid,
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    async fn process_payload(&self, session: &Arc<ProxySession>, msg: ProxyClientMessage) {
        let Some(p) = msg.payload else { return };
        let client = {
            let reg = self.reg.lock();
            reg.clients
                .get(&p.client_id)
                .filter(|c| c.session == session.id)
                .map(|c| c.client.clone())
        };
        let Some(client) = client else {
            session.send(&ProxyServerMessage::error(&msg.id, err_unknown_client()));
            return;
        };
        self.metrics.payloads.inc(&[&p.kind]);
        let PayloadProxyClientMessage {
            kind,
            client_id,
            sid,
            payload,
        } = p;
        let payload: Map<String, Value> = match kind.as_str() {
            "offer" | "answer" | "selectStream" | "candidate" => payload.unwrap_or_default(),
            "requestoffer" | "sendoffer" => Map::new(),
            "endOfCandidates" => {
                session.send(&payload_reply(&msg.id, kind, client_id, None));
                return;
            }
            _ => {
                session.send(&ProxyServerMessage::error(
                    &msg.id,
                    err_unsupported_payload(),
                ));
                return;
            }
        };
        let weak = Arc::downgrade(session);
        let id = msg.id;
        let reply_kind = kind.clone();
        let reply = Box::new(move |res: Result<Option<Value>, McuError>| {
            let Some(session) = weak.upgrade() else {
                return;
            };
            match res {
                Ok(v) => session.send(&payload_reply(&id, reply_kind, client_id, v)),
                Err(e) => session.send(&ProxyServerMessage::error(&id, err_internal(e))),
            }
        });
        client
            .send_message(McuMessage { kind, sid, payload }, reply)
            .await;
    }

    /// `/stats`.
    fn stats(&self) -> Value {
        let sessions = self.reg.lock().sessions.len();
        json!({
            "sessions": sessions,
            "load": self.load.load(Ordering::SeqCst),
            "bandwidth": *self.bandwidth.lock(),
            "mcu": self.mcu.stats(),
            "draining": self.is_draining(),
        })
    }

    fn stats_allowed(&self, peer: &PeerInfo) -> bool {
        match peer.addr {
            None => true,
            Some(a) => {
                let ip = runtime::net::canonical(a.ip());
                let allowed = runtime::net::contains_any(&self.stats_allowed.read(), ip);
                if !allowed {
                    self.stats_refusals.refused(ip, "/stats and /metrics");
                }
                allowed
            }
        }
    }

    /// Serve HTTP on a bound listener.
    pub fn serve(self: &Arc<Self>, listener: Listener, options: ServeOptions) {
        let server = self.clone();
        listen::serve(
            listener,
            options,
            move |req, peer| handle(server.clone(), req, peer),
            self.shutdown.clone(),
        );
    }

    /// Close every connection and release everything in Janus.
    pub async fn stop(&self, grace: Duration) {
        let ids: Vec<String> = self.reg.lock().sessions.keys().cloned().collect();
        for id in ids {
            self.delete_session(&id);
        }
        let _ = tokio::time::timeout(grace, self.mcu.stop()).await;
        self.shutdown.trigger();
        if !self.shutdown.wait(grace).await {
            warn!("some connections did not close within the grace period");
        }
    }
}

fn payload_reply(
    id: &str,
    kind: String,
    client_id: String,
    payload: Option<Value>,
) -> ProxyServerMessage {
    ProxyServerMessage {
        id: id.to_owned(),
        kind: "payload".into(),
        payload: Some(PayloadProxyServerMessage {
            kind,
            client_id,
            payload,
        }),
        ..Default::default()
    }
}

fn respond(
    server: &ProxyServer,
    status: StatusCode,
    kind: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::SERVER, server.server_header.clone());
    r
}

async fn handle(
    server: Arc<ProxyServer>,
    mut req: Request<Incoming>,
    peer: PeerInfo,
) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json; charset=utf-8";
    if req.method() != Method::GET {
        return respond(
            &server,
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            Bytes::from_static(b"Method Not Allowed\n"),
        );
    }
    match req.uri().path() {
        "/proxy" => {
            let (mut response, on_upgrade) = match runtime::upgrade::accept(&mut req) {
                Ok(v) => v,
                Err(r) => return r,
            };
            response
                .headers_mut()
                .insert(header::SERVER, server.server_header.clone());
            let addr = peer
                .addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unix".into());
            let token = server.shutdown.token.clone();
            let s = server.clone();
            server.shutdown.tracker.spawn(async move {
                match on_upgrade.await {
                    Ok(up) => conn::serve(s, TokioIo::new(up), addr, token).await,
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
            response
        }
        "/welcome" | "/api/v1/welcome" => {
            let body = json!({"nextcloud-spreed-signaling-proxy": "Welcome", "version": VERSION});
            respond(
                &server,
                StatusCode::OK,
                JSON,
                Bytes::from(format!("{body}\n")),
            )
        }
        "/stats" | "/metrics" if !server.stats_allowed(&peer) => respond(
            &server,
            StatusCode::FORBIDDEN,
            TEXT,
            Bytes::from_static(b"Authentication check failed\n"),
        ),
        "/stats" => {
            let body = serde_json::to_vec_pretty(&server.stats()).unwrap_or_default();
            respond(&server, StatusCode::OK, JSON, Bytes::from(body))
        }
        "/metrics" => respond(
            &server,
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(server.registry.render()),
        ),
        _ => respond(
            &server,
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"Not Found\n"),
        ),
    }
}

/// `[http] listen` (default `127.0.0.1:9090`, like upstream's sample) and
/// `[https] listen` with `certificate` and `key` (ours: upstream's proxy
/// has no TLS listener and needs a reverse proxy for `wss://`).
pub async fn bind_and_serve(
    server: &Arc<ProxyServer>,
    ini: &Ini,
) -> Result<Vec<SocketAddr>, StartError> {
    let read_timeout = Duration::from_secs(ini.get_int("http", "readtimeout", 15)?.max(1) as u64);
    let mut bound = Vec::new();
    for a in listen::parse_listen(&ini.get_string("http", "listen", "127.0.0.1:9090")) {
        bound.push((Listener::bind(&a).await?, None));
    }
    let https = listen::parse_listen(&ini.get_string("https", "listen", ""));
    if !https.is_empty() {
        let cert = ini.get_string("https", "certificate", "");
        let key = ini.get_string("https", "key", "");
        let tls = listen::Tls::new(listen::load_tls(cert.as_ref(), key.as_ref())?);
        *server.tls.lock() = Some(tls.clone());
        for a in https {
            bound.push((Listener::bind(&a).await?, Some(tls.clone())));
        }
    }
    let mut addrs = Vec::new();
    for (l, tls) in bound {
        if let Some(addr) = l.local_addr() {
            addrs.push(addr);
        }
        server.serve(l, ServeOptions { read_timeout, tls });
    }
    Ok(addrs)
}

/// Everything `main` does after parsing flags: serve, reload on SIGHUP,
/// drain on SIGUSR1, stop on SIGINT/SIGTERM.
pub async fn run_from_config(path: std::path::PathBuf) -> Result<(), StartError> {
    let ini = Ini::load(&path)?;
    for l in schema::SCHEMA.lint(&ini) {
        warn!("{}:{}: {}", path.display(), l.line, l.message);
    }
    let server = ProxyServer::build(&ini)?;
    bind_and_serve(&server, &ini).await?;
    info!(version = VERSION, "proxy started");
    let mut signals = runtime::signals::listen().map_err(|e| StartError::Invalid {
        section: "app",
        key: "signals",
        reason: e.to_string(),
    })?;
    loop {
        let sig = tokio::select! {
            sig = signals.recv() => sig,
            _ = server.drained(), if server.is_draining() => {
                info!("all publishers and subscribers are gone, shutting down");
                break;
            }
        };
        match sig {
            Some(runtime::signals::Signal::Reload) => match Ini::load(&path) {
                Ok(ini) => {
                    for l in schema::SCHEMA.lint(&ini) {
                        warn!("{}:{}: {}", path.display(), l.line, l.message);
                    }
                    server.reload(&ini)
                }
                Err(e) => warn!(error = %e, "could not reload configuration, keeping the old one"),
            },
            Some(runtime::signals::Signal::Drain) => {
                if server.start_drain() {
                    info!("received SIGUSR1: no new publishers, shutting down when the last client is gone");
                }
            }
            Some(runtime::signals::Signal::Stop) | None => break,
        }
    }
    info!("shutting down");
    server.stop(Duration::from_secs(10)).await;
    Ok(())
}
