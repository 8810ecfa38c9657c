//! The `signaling` server: reads `server.conf`, builds the hub, serves HTTP
//! and WebSocket listeners, and handles reload and shutdown.
//!
//! `main.rs` only parses flags and calls [`run_from_config`]; tests call
//! [`Server::build`] and [`Server::serve`] with listeners on port 0.

pub mod check;
mod routes;
mod run;
pub mod schema;
pub mod status;
pub mod trim;
pub mod turn;
pub mod ws;

use http::HeaderValue;
use hub::bus::nats::{is_loopback_url, NatsBus};
use hub::bus::{Bus, LoopbackBus};
use hub::core::backends::Backends;
use hub::core::settings::HubSettings;
use hub::metrics::HubMetrics;
use hub::Hub;
use parking_lot::RwLock;
use runtime::config::{ConfigError, Ini};
use runtime::listen::{self, ListenAddr, ListenError, Listener, ServeOptions};
use runtime::net::IpNet;
use runtime::shutdown::Shutdown;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{info, warn};

pub use run::{bind_and_serve, run_from_config};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Listen(#[from] ListenError),
    #[error("{0}")]
    Hub(#[from] hub::HubError),
    #[error("[{section}] {key}: {reason}")]
    Invalid {
        section: &'static str,
        key: &'static str,
        reason: String,
    },
    /// Like `Invalid`, for sections named in the file (backend ids).
    #[error("[{section}] {key}: {reason}")]
    InvalidIn {
        section: String,
        key: String,
        reason: String,
    },
}

/// Listener settings from `[http]` and `[https]`.
#[derive(Clone, Debug)]
pub struct ListenConfig {
    pub http: Vec<ListenAddr>,
    pub https: Vec<ListenAddr>,
    pub certificate: String,
    pub key: String,
    pub read_timeout: Duration,
}

impl ListenConfig {
    pub fn from_config(ini: &Ini) -> Result<ListenConfig, StartError> {
        let http = listen::parse_listen(&ini.get_string("http", "listen", ""));
        let https = listen::parse_listen(&ini.get_string("https", "listen", ""));
        let (certificate, key) = if https.is_empty() {
            (String::new(), String::new())
        } else {
            (
                ini.require("https", "certificate")?.to_owned(),
                ini.require("https", "key")?.to_owned(),
            )
        };
        let rt = ini.get_int("http", "readtimeout", 15)?;
        if http.is_empty() && https.is_empty() {
            return Err(StartError::Invalid {
                section: "http",
                key: "listen",
                reason: "no [http] or [https] listen address configured".into(),
            });
        }
        Ok(ListenConfig {
            http,
            https,
            certificate,
            key,
            read_timeout: Duration::from_secs(if rt <= 0 { 15 } else { rt as u64 }),
        })
    }
}

/// A running signaling server (everything but the listeners).
pub struct Server {
    pub hub: Arc<Hub>,
    pub shutdown: Shutdown,
    pub(crate) server_header: HeaderValue,
    pub(crate) features_header: HeaderValue,
    pub(crate) welcome: bytes::Bytes,
    pub(crate) turn: turn::TurnConfig,
    stats_allowed: RwLock<Vec<IpNet>>,
    stats_refusals: runtime::net::StatsRefusals,
    trusted_proxies: RwLock<Arc<Vec<IpNet>>>,
    /// The NATS bus when clustering (also the hub's bus), for its state.
    pub nats: Option<Arc<NatsBus>>,
    /// For the uptime in `/api/v1/serverinfo`.
    pub(crate) started: std::time::Instant,
    /// `[app] draintimeout`: how long a drain may wait for the last session
    /// (None: as long as it takes, like upstream).
    pub drain_timeout: Option<Duration>,
    /// The HTTPS listeners' certificate, reloaded on SIGHUP.
    tls: parking_lot::Mutex<Option<listen::Tls>>,
    /// The configuration at start-up and at the last reload, to tell on
    /// SIGHUP what changed.
    config_started: Ini,
    config_current: parking_lot::Mutex<Ini>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").finish()
    }
}

/// `[nats] url`: empty, `:loopback:` or `nats://loopback` select the
/// in-process bus (single server); anything else is a comma list of NATS
/// servers (credentials in the URL) that this server joins as a cluster node.
/// Upstream defaults to `nats://127.0.0.1:4222`; we default to the
/// in-process bus so that a single server needs no NATS.
/// The hub's bus, and the same bus as NATS when clustering.
type HubBus = (Arc<dyn Bus>, Option<Arc<NatsBus>>);

fn bus_from_config(ini: &Ini, registry: &runtime::metrics::Registry) -> Result<HubBus, StartError> {
    let url = ini.get_string("nats", "url", "");
    if is_loopback_url(&url) {
        info!("no NATS server configured, using the in-process bus (single server)");
        return Ok((LoopbackBus::new(), None));
    }
    let nats = NatsBus::connect(&url, registry).map_err(|e| StartError::Invalid {
        section: "nats",
        key: "url",
        reason: e.to_string(),
    })?;
    Ok((nats.clone(), Some(nats)))
}

/// `[mcu]`: `type = janus` (or only a `url`) drives one Janus gateway,
/// `type = proxy` a pool of them through MCU proxies.
fn mcu_from_config(
    ini: &Ini,
    registry: &runtime::metrics::Registry,
) -> Result<Option<hub::HubMcu>, StartError> {
    use hub::mcu::{janus, proxy, Mcu};
    let invalid = |(key, reason): (&'static str, String)| StartError::Invalid {
        section: "mcu",
        key,
        reason,
    };
    let url = ini.get_string("mcu", "url", "");
    let kind = match ini.get_string("mcu", "type", "") {
        k if k.is_empty() && !url.is_empty() => "janus".to_owned(),
        k => k,
    };
    if kind.is_empty() {
        info!("no MCU configured, audio/video goes peer to peer");
        return Ok(None);
    }
    let filter = hub::mcu::candidates::CandidateFilter::from_config(ini)
        .map_err(|reason| invalid(("allowedcandidates/blockedcandidates", reason)))?;
    let geoip = hub::geoip::GeoIp::from_config(ini).map_err(|e| StartError::Invalid {
        section: "geoip",
        key: "*",
        reason: e.to_string(),
    })?;
    let metrics = hub::mcu::metrics::McuMetrics::new(registry);
    let mcu: Arc<dyn Mcu> = match kind.as_str() {
        "janus" => {
            let settings = janus::JanusSettings::from_config(ini).map_err(invalid)?;
            info!(url = %settings.url, timeout = ?settings.timeout, "using Janus as MCU");
            janus::JanusMcu::start(settings, metrics.clone())
        }
        "proxy" => {
            let settings = proxy::ProxySettings::from_config(ini).map_err(invalid)?;
            info!(proxies = ?settings.urls, "using MCU proxies");
            proxy::ProxyMcu::start(settings, metrics.clone())
        }
        other => {
            return Err(invalid((
                "type",
                format!("unsupported MCU type {other:?} (janus or proxy)"),
            )))
        }
    };
    Ok(Some(hub::HubMcu {
        mcu,
        metrics,
        filter,
        geoip,
    }))
}

impl Server {
    /// Build the server from a parsed configuration. Must run inside a Tokio runtime.
    pub fn build(ini: &Ini) -> Result<Arc<Server>, StartError> {
        let settings = HubSettings::from_config(ini, VERSION)?;
        let turn = turn::TurnConfig::from_config(ini)?;
        let backends = Arc::new(Backends::from_config(ini)?);
        let registry = runtime::metrics::Registry::new();
        registry.register_process_metrics();
        let (bus, nats) = bus_from_config(ini, &registry)?;
        if let (Some(nats), Some(interval)) = (&nats, settings.presence_interval) {
            nats.set_presence_interval(interval);
        }
        let mcu = mcu_from_config(ini, &registry)?;
        let metrics = HubMetrics::new(registry);
        let hub = Hub::new(settings, backends, bus, metrics, mcu)?;
        let shutdown = Shutdown::new();
        hub.spawn_housekeeping(shutdown.token.clone());
        trim::spawn(hub.clone(), shutdown.token.clone());
        if let Some(nats) = &nats {
            hub.start_cluster(nats.clone(), shutdown.token.clone());
        }
        let features = hub.features().join(", ");
        let welcome =
            serde_json::json!({"nextcloud-spreed-signaling": "Welcome", "version": VERSION});
        let mut welcome = serde_json::to_vec(&welcome).unwrap_or_default();
        welcome.push(b'\n');
        Ok(Arc::new(Server {
            hub,
            shutdown,
            server_header: HeaderValue::from_str(&format!("nextcloud-spreed-signaling/{VERSION}"))
                .unwrap_or(HeaderValue::from_static("nextcloud-spreed-signaling")),
            features_header: HeaderValue::from_str(&features)
                .unwrap_or(HeaderValue::from_static("")),
            welcome: welcome.into(),
            turn,
            stats_allowed: RwLock::new(stats_ips(ini)?),
            stats_refusals: Default::default(),
            trusted_proxies: RwLock::new(Arc::new(trusted_proxies(ini)?)),
            nats,
            started: std::time::Instant::now(),
            drain_timeout: drain_timeout(ini)?,
            tls: parking_lot::Mutex::new(None),
            config_started: ini.clone(),
            config_current: parking_lot::Mutex::new(ini.clone()),
        }))
    }

    pub(crate) fn stats_allowed(&self, ip: &str) -> bool {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return false;
        };
        let allowed = runtime::net::contains_any(&self.stats_allowed.read(), ip);
        if !allowed {
            self.stats_refusals.refused(
                ip,
                "/api/v1/stats, /api/v1/serverinfo, /status and /metrics",
            );
        }
        allowed
    }

    pub(crate) fn trusted_proxies(&self) -> Arc<Vec<IpNet>> {
        self.trusted_proxies.read().clone()
    }

    /// Serve HTTP on already bound listeners.
    pub fn serve(self: &Arc<Self>, listener: Listener, options: ServeOptions) {
        let server = self.clone();
        listen::serve(
            listener,
            options,
            move |req, peer| crate::routes::handle(server.clone(), req, peer),
            self.shutdown.clone(),
        );
    }

    /// SIGHUP: re-read what can change without a restart. A configuration
    /// that would not start is refused as a whole (the running one is
    /// kept); otherwise the log names the changes applied and those that
    /// need a restart.
    pub fn reload(&self, ini: &Ini) {
        if let Err(e) = validate(ini) {
            warn!("configuration not reloaded, the running configuration is kept: {e}");
            return;
        }
        let mcu_proxy = ini.get_string("mcu", "type", "") == "proxy";
        let report = {
            let mut current = self.config_current.lock();
            let report = runtime::reload::ReloadReport::new(
                &self.config_started,
                &current,
                ini,
                |section, key| reloadable(ini, mcu_proxy, section, key),
            );
            *current = ini.clone();
            report
        };
        runtime::logging::apply_config_level(ini);
        self.hub.reload(ini);
        if let Some(tls) = self.tls.lock().clone() {
            tls.reload_from(ini);
        }
        match (stats_ips(ini), trusted_proxies(ini)) {
            (Ok(stats), Ok(proxies)) => {
                *self.stats_allowed.write() = stats;
                *self.trusted_proxies.write() = Arc::new(proxies);
            }
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "keeping the old allowed_ips/trustedproxies")
            }
        }
        report.log();
    }

    /// Stop accepting, say goodbye to clients, and wait for tasks up to `grace`.
    pub async fn stop(&self, grace: Duration) {
        self.hub.close_all_connections();
        tokio::time::sleep(Duration::from_millis(100)).await;
        // Rooms and handles in Janus go with us, not with Janus's timeout.
        let _ = tokio::time::timeout(grace, self.hub.stop_mcu()).await;
        self.shutdown.trigger();
        if !self.shutdown.wait(grace).await {
            warn!("some connections did not close within the grace period");
        }
    }
}

/// `[app] draintimeout` (seconds): the longest a SIGUSR1 drain waits for
/// the last session before shutting down as on SIGTERM. Upstream has no such
/// key and waits forever; so do we when it is missing or 0.
fn drain_timeout(ini: &Ini) -> Result<Option<Duration>, StartError> {
    let secs = ini.get_int("app", "draintimeout", 0)?;
    if secs < 0 {
        return Err(StartError::Invalid {
            section: "app",
            key: "draintimeout",
            reason: format!("{secs} is negative"),
        });
    }
    Ok((secs > 0).then(|| Duration::from_secs(secs as u64)))
}

/// Whether a changed `[section] key` takes effect on SIGHUP.
fn reloadable(ini: &Ini, mcu_proxy: bool, section: &str, key: &str) -> bool {
    let backend_ids =
        runtime::config::split_list(ini.get("backend", "backends").unwrap_or_default(), ',');
    match (section, key) {
        ("backend", "backends") | ("app", "loglevel") | ("app", "trustedproxies") => true,
        ("https", "certificate" | "key") | ("stats", "allowed_ips") => true,
        ("mcu", "allowedcandidates" | "blockedcandidates") => true,
        ("mcu", "url") => mcu_proxy,
        ("geoip-overrides" | "continent-overrides", _) => true,
        (s, _) => backend_ids.iter().any(|id| id.eq_ignore_ascii_case(s)),
    }
}

/// Everything [`Server::build`] and [`ListenConfig::from_config`] would
/// refuse, without building anything (SIGHUP checks a new file with it).
pub fn validate(ini: &Ini) -> Result<(), StartError> {
    HubSettings::from_config(ini, VERSION)?;
    turn::TurnConfig::from_config(ini)?;
    ListenConfig::from_config(ini)?;
    stats_ips(ini)?;
    trusted_proxies(ini)?;
    drain_timeout(ini)?;
    hub::mcu::candidates::CandidateFilter::from_config(ini).map_err(|reason| {
        StartError::Invalid {
            section: "mcu",
            key: "allowedcandidates/blockedcandidates",
            reason,
        }
    })?;
    Ok(())
}

/// Every id in `[backend] backends` needs its section with a `url` and a
/// `secret` (unless `allowall` makes the list unused). Like the Go server,
/// the server skips such a backend (so existing files keep starting), but
/// says so with the key and line at start-up and on SIGHUP, and `check`
/// fails on it: its Nextcloud cannot connect.
pub fn validate_backends(ini: &Ini) -> Result<(), StartError> {
    if ini.get_bool("backend", "allowall", false)? {
        return Ok(());
    }
    let ids = runtime::config::split_list(ini.get("backend", "backends").unwrap_or_default(), ',');
    for id in ids {
        let line = ini
            .key_line("backend", "backends")
            .map(|l| format!(" (line {l})"))
            .unwrap_or_default();
        if !ini.has_section(&id) {
            return Err(StartError::InvalidIn {
                section: "backend".into(),
                key: "backends".into(),
                reason: format!(
                    "lists {id:?}{line}, but there is no section [{id}] with its url and secret"
                ),
            });
        }
        for key in ["url", "secret"] {
            if ini.get(&id, key).unwrap_or_default().is_empty() {
                return Err(StartError::InvalidIn {
                    section: id.clone(),
                    key: key.into(),
                    reason: format!(
                        "missing: backend {id:?} is listed in [backend] backends{line} and needs a url and a secret"
                    ),
                });
            }
        }
    }
    Ok(())
}

/// `[stats] allowed_ips`: addresses or CIDR networks; default 127.0.0.1.
fn stats_ips(ini: &Ini) -> Result<Vec<IpNet>, StartError> {
    runtime::net::stats_allowed(ini).map_err(|reason| StartError::Invalid {
        section: "stats",
        key: "allowed_ips",
        reason,
    })
}

/// `[app] trustedproxies`: who may tell us the client's address; default
/// loopback and private networks.
fn trusted_proxies(ini: &Ini) -> Result<Vec<IpNet>, StartError> {
    let v = ini.get_string("app", "trustedproxies", "");
    if v.trim().is_empty() {
        return Ok(runtime::net::local_networks());
    }
    runtime::net::parse_list(&v).map_err(|bad| StartError::Invalid {
        section: "app",
        key: "trustedproxies",
        reason: format!("{bad:?} is not an IP address or network"),
    })
}
