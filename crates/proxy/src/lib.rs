//! The MCU proxy (`proxy` binary): fronts one Janus gateway for signaling
//! servers, so that several Janus can serve one signaling cluster
//! (upstream `proxy/`, protocol PXP-*, server PXY-*).
//!
//! Signaling servers connect to `/proxy`, say hello with an RSA-signed
//! token ([`tokens`]), and create publishers and subscribers by command;
//! SDP and candidates travel as payloads. The Janus side is the same
//! [`mcu::janus::JanusMcu`] the signaling server uses directly, so a
//! proxy also survives Janus restarts.
//!
//! ```text
//!  signaling ─ws─▶ conn task ─▶ ProxyServer::process ─▶ JanusMcu (one task per
//!                     ▲                                   publisher/subscriber)
//!                     └──── ProxySession (kept for resume) ◀── ProxyListener
//! ```
//!
//! Where things live: [`ProxyServer`] and its start-up, reload and drain
//! here; `routes` (HTTP), [`conn`] (one signaling server's WebSocket),
//! `dispatch` (hello, payloads), `commands` (publishers, subscribers,
//! streams to and from other proxies), `housekeeping` (load, expiry,
//! removal), [`remote`] (links to other proxies), [`session`], [`tokens`]
//! and `metrics`.

#![forbid(unsafe_code)]

pub mod check;
mod commands;
pub mod conn;
mod dispatch;
mod housekeeping;
pub mod keygen;
mod metrics;
pub mod remote;
mod routes;
pub mod schema;
pub mod session;
pub mod tokens;

use http::HeaderValue;
use parking_lot::{Mutex, RwLock};
use proto::client::Error;
use proto::proxy::{EventProxyServerMessage, ProxyServerMessage};
use runtime::config::{ConfigError, Ini};
use runtime::listen::{self, ListenError, Listener, ServeOptions};
use runtime::metrics::Registry;
use runtime::net::IpNet;
use runtime::shutdown::Shutdown;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{info, warn};

use mcu::janus::{JanusMcu, JanusSettings};
use mcu::{Mcu, McuClient};

use crate::metrics::ProxyMetrics;
use crate::session::ProxySession;
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
        let mcu_metrics = mcu::metrics::McuMetrics::new(&registry);
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

    /// Serve HTTP on a bound listener.
    pub fn serve(self: &Arc<Self>, listener: Listener, options: ServeOptions) {
        let server = self.clone();
        listen::serve(
            listener,
            options,
            move |req, peer| routes::handle(server.clone(), req, peer),
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
