//! The hub: the registry of sessions and rooms, and the handlers for every
//! client message kind. Connection tasks feed it text frames; it answers
//! through the connections' queues and the bus.

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use proto::backend::PingEntry;
use proto::client::{
    ClientMessage, Error, EventServerMessage, HelloServerInfo, HelloServerMessage,
    MessageServerMessage, Recipient, Sender, ServerMessage, SessionEntry, RECIPIENT_CALL,
    RECIPIENT_ROOM, RECIPIENT_SESSION, RECIPIENT_USER,
};
use serde_json::Value;
use sha2::Sha256;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use url::Url;

use crate::backend::client::{BackendClient, BackendError};
use crate::bus::{Bus, BusHandler, BusMessage, BusPayload, Subscription};
use crate::core::backends::Backends;
use crate::core::conn::{Conn, OutMsg};
use crate::core::room::{room_key, Room};
use crate::core::session::{
    session_backend_url, virtual_session_key, AnySession, ClientSession, ClientType, NewSession,
    VirtualSession, PERMISSION_CONTROL, PERMISSION_TRANSIENT_DATA,
};
use crate::core::settings::{HubSettings, ANONYMOUS_JOIN_TIMEOUT};
use crate::metrics::HubMetrics;
use proto::sessionid::{SessionIdCodec, SessionIdData};

/// A room id and the ping entries of its sessions.
type RoomPings = (String, Vec<PingEntry>);

pub use crate::core::Pending;

pub fn err_invalid_format() -> Error {
    Error::new("invalid_format", "Invalid data format.")
}
fn err_hello_expected() -> Error {
    Error::new("hello_expected", "Expected Hello request.")
}
fn err_auth_failed() -> Error {
    Error::new("auth_failed", "The user could not be authenticated.")
}
fn err_room_join_failed() -> Error {
    Error::new("room_join_failed", "Could not join the room.")
}
fn err_invalid_client_type() -> Error {
    Error::new("invalid_client_type", "The client type is not supported.")
}
fn err_invalid_backend() -> Error {
    Error::new("invalid_backend", "The backend URL is not supported.")
}
fn err_invalid_token() -> Error {
    Error::new("invalid_token", "The passed token is invalid.")
}
fn err_no_such_session() -> Error {
    Error::new("no_such_session", "The session to resume does not exist.")
}
fn err_too_many_requests() -> Error {
    Error::new("too_many_requests", "Too many requests.")
}
fn err_internal(e: impl std::fmt::Display) -> Error {
    Error::new("internal_error", e.to_string())
}

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid session keys: {0}")]
    SessionKeys(String),
    #[error("could not create backend client: {0}")]
    Backend(#[from] BackendError),
}

type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Shrink `map` when it holds far fewer entries than it has room for.
fn shrink_map<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(map: &mut HashMap<K, V, S>) {
    if map.capacity() > 64 && map.capacity() > 4 * map.len() {
        map.shrink_to(map.len() * 2);
    }
}

#[derive(Default)]
struct Registry {
    // foldhash instead of SipHash for the maps hit on every message:
    // session ids are ~200 bytes and SipHash showed up in profiles.
    sessions: FastMap<Arc<str>, AnySession>,
    /// Session number -> public id: any valid encoding of a session's id
    /// reaches it (upstream looks sessions up by this number).
    by_sid: FastMap<u64, Arc<str>>,
    by_private: HashMap<String, Arc<ClientSession>>,
    rooms: HashMap<String, Arc<Room>>,
    /// Talk session id -> signaling public id.
    room_sessions: HashMap<String, Arc<str>>,
    room_session_of: HashMap<Arc<str>, String>,
    virtual_sessions: HashMap<String, Arc<VirtualSession>>,
    /// Disconnected sessions and when they expire.
    expiring: HashMap<Arc<str>, Instant>,
    /// Anonymous connections that must join a room, and until when.
    anonymous: HashMap<u64, (Weak<Conn>, Instant)>,
}

impl Registry {
    fn shrink(&mut self) {
        shrink_map(&mut self.sessions);
        shrink_map(&mut self.by_sid);
        shrink_map(&mut self.by_private);
        shrink_map(&mut self.rooms);
        shrink_map(&mut self.room_sessions);
        shrink_map(&mut self.room_session_of);
        shrink_map(&mut self.virtual_sessions);
        shrink_map(&mut self.expiring);
        shrink_map(&mut self.anonymous);
    }
}

/// Statistics for `/api/v1/stats`.
#[derive(Debug, serde::Serialize)]
pub struct HubStats {
    pub rooms: usize,
    pub sessions: usize,
    /// SIGUSR1 received: no new connections, exit when the sessions are gone.
    /// Only listed while true, so the usual answer stays as before.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
    /// The media server's figures, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcu: Option<Value>,
}

/// Session counts per backend id, then per client type (`/api/v1/serverinfo`).
pub type SessionCounts =
    std::collections::BTreeMap<String, std::collections::BTreeMap<String, usize>>;

pub struct Hub {
    me: Weak<Hub>,
    pub settings: HubSettings,
    /// This process in the cluster (random; in room presence messages).
    pub node_id: Arc<str>,
    /// Clustering: the other nodes' session counts per backend, and when
    /// each last reported.
    node_counts: Mutex<HashMap<String, (Instant, Arc<proto::cluster::NodeStatus>)>>,
    /// What this node last reported (counts, backends with a dial-out
    /// bridge), and when.
    counts_sent: Mutex<(Option<Instant>, proto::cluster::NodeStatus)>,
    nodes_subscription: Mutex<Option<Subscription>>,
    /// Questions to the other servers (NATS only).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    pub(crate) codec: SessionIdCodec,
    pub bus: Arc<dyn Bus>,
    pub backend: BackendClient,
    pub backends: Arc<Backends>,
    /// Randoms of accepted backend API requests (`crate::backend::replay`).
    pub(crate) replays: crate::backend::replay::ReplayGuard,
    pub metrics: HubMetrics,
    info: Arc<HelloServerInfo>,
    info_internal: Arc<HelloServerInfo>,
    features: Vec<String>,
    /// The `welcome` frame every new connection gets first, serialised once.
    welcome: crate::core::conn::Frame,
    /// When the next combined room ping is due.
    next_ping: Mutex<Instant>,
    pub(crate) dialouts: crate::dialout::Dialouts,
    sid: AtomicU64,
    conn_ids: AtomicU64,
    /// Housekeeping rounds so far.
    ticks: AtomicU64,
    reg: Mutex<Registry>,
    throttler: crate::throttle::Throttler,
    /// Set once by SIGUSR1 (upstream `ScheduleShutdown`), never cleared.
    draining: AtomicBool,
    /// Woken whenever a session goes away, so [`Hub::drained`] can re-check.
    session_gone: tokio::sync::Notify,
    /// The media server, when `[mcu]` configures one.
    pub(crate) mcu: Option<Arc<dyn crate::mcu::Mcu>>,
    pub(crate) mcu_metrics: Option<crate::mcu::metrics::McuMetrics>,
    /// `[mcu] allowedcandidates` / `blockedcandidates`, reloadable.
    pub(crate) candidate_filter: parking_lot::RwLock<crate::mcu::candidates::CandidateFilter>,
    /// Client locations for publisher placement, reloadable.
    pub(crate) geoip: parking_lot::RwLock<Arc<crate::geoip::GeoIp>>,
}

/// What the hub needs of a configured MCU.
pub struct HubMcu {
    pub mcu: Arc<dyn crate::mcu::Mcu>,
    pub metrics: crate::mcu::metrics::McuMetrics,
    pub filter: crate::mcu::candidates::CandidateFilter,
    pub geoip: crate::geoip::GeoIp,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").finish()
    }
}

impl Hub {
    pub fn new(
        settings: HubSettings,
        backends: Arc<Backends>,
        bus: Arc<dyn Bus>,
        metrics: HubMetrics,
        mcu: Option<HubMcu>,
    ) -> Result<Arc<Hub>, HubError> {
        let codec = SessionIdCodec::new(&settings.hash_key, &settings.block_key)
            .map_err(|e| HubError::SessionKeys(e.to_string()))?;
        // Media features only when there is a media server (as upstream).
        let media: &[&str] = if mcu.is_some() {
            proto::client::MCU_FEATURES
        } else {
            &[]
        };
        let features: Vec<String> = proto::client::DEFAULT_FEATURES
            .iter()
            .chain(media)
            .map(|s| s.to_string())
            .collect();
        let features_internal: Vec<String> = proto::client::DEFAULT_FEATURES_INTERNAL
            .iter()
            .chain(media)
            .map(|s| s.to_string())
            .collect();
        let (mcu, mcu_metrics, filter, geoip) = match mcu {
            Some(m) => (Some(m.mcu), Some(m.metrics), m.filter, m.geoip),
            None => (None, None, Default::default(), Default::default()),
        };
        let backend = BackendClient::new(
            backends.clone(),
            &settings.version,
            &features,
            settings.connections_per_host,
            settings.skip_verify,
        )?;
        metrics.backends_current.set(backends.all().len() as i64);
        // Like upstream's welcome features: what clients and internal
        // clients get, sorted.
        let mut welcome_features: Vec<String> = features
            .iter()
            .chain(features_internal.iter())
            .cloned()
            .collect();
        welcome_features.sort();
        welcome_features.dedup();
        let welcome = OutMsg::new(ServerMessage {
            kind: "welcome".into(),
            welcome: Some(proto::client::WelcomeServerMessage {
                version: settings.version.clone(),
                features: welcome_features,
            }),
            ..Default::default()
        })
        .frame();
        Ok(Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            info: Arc::new(HelloServerInfo {
                version: settings.version.clone(),
                features: features.clone(),
                country: String::new(),
            }),
            info_internal: Arc::new(HelloServerInfo {
                version: settings.version.clone(),
                features: features_internal,
                country: String::new(),
            }),
            settings,
            node_id: Arc::from(hex::encode(rand::random::<[u8; 8]>())),
            node_counts: Mutex::new(HashMap::new()),
            counts_sent: Mutex::new((None, Default::default())),
            nodes_subscription: Mutex::new(None),
            cluster: std::sync::OnceLock::new(),
            codec,
            bus,
            backend,
            backends,
            replays: crate::backend::replay::ReplayGuard::default(),
            metrics,
            features,
            welcome,
            next_ping: Mutex::new(Instant::now() + crate::core::settings::ROOM_PING_INTERVAL),
            dialouts: Default::default(),
            sid: AtomicU64::new(0),
            conn_ids: AtomicU64::new(0),
            ticks: AtomicU64::new(0),
            reg: Mutex::new(Registry::default()),
            throttler: crate::throttle::Throttler::new(),
            draining: AtomicBool::new(false),
            session_gone: tokio::sync::Notify::new(),
            mcu,
            mcu_metrics,
            candidate_filter: parking_lot::RwLock::new(filter),
            geoip: parking_lot::RwLock::new(Arc::new(geoip)),
        }))
    }

    fn arc(&self) -> Option<Arc<Hub>> {
        self.me.upgrade()
    }

    /// Brute-force protection shared with the backend API.
    pub fn throttler(&self) -> &crate::throttle::Throttler {
        &self.throttler
    }

    /// Features advertised to clients and in the `X-Spreed-Signaling-Features` header.
    pub fn features(&self) -> &[String] {
        &self.features
    }

    pub fn stats(&self) -> HubStats {
        let reg = self.reg.lock();
        HubStats {
            rooms: reg.rooms.len(),
            sessions: reg.sessions.len(),
            draining: self.is_draining(),
            mcu: self.mcu.as_ref().map(|m| m.stats()),
        }
    }

    /// Sessions per backend and client type (virtual sessions as `virtual`).
    pub fn session_counts(&self) -> SessionCounts {
        let reg = self.reg.lock();
        let mut counts = SessionCounts::new();
        for s in reg.sessions.values() {
            *counts
                .entry(s.backend().id.clone())
                .or_default()
                .entry(s.client_type().to_owned())
                .or_default() += 1;
        }
        counts
    }

    /// Start draining (SIGUSR1). Returns false when already draining.
    /// Refusing new connections is the HTTP layer's job; the hub only
    /// reports, through [`Hub::drained`], when the last session is gone.
    pub fn start_drain(&self) -> bool {
        let first = !self.draining.swap(true, Ordering::SeqCst);
        if first {
            self.session_gone.notify_waiters();
        }
        first
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Whether sessions other than internal clients' remain. Like upstream,
    /// internal clients (Nextcloud's own, the SIP bridge) do not hold up a
    /// drain; their virtual sessions do, as they stand for real participants.
    fn has_user_sessions(&self) -> bool {
        self.reg.lock().sessions.values().any(|s| !s.is_internal())
    }

    /// Resolves once draining and no session other than internal ones is left.
    pub async fn drained(&self) {
        loop {
            let gone = self.session_gone.notified();
            tokio::pin!(gone);
            // Register before checking, so a removal in between is not missed.
            gone.as_mut().enable();
            if self.is_draining() && !self.has_user_sessions() {
                return;
            }
            gone.await;
        }
    }

    /// Run the periodic work (expiry, timeouts, room pings) until cancelled.
    pub fn spawn_housekeeping(
        self: &Arc<Self>,
        token: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        self.subscribe_node_status();
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => break,
                    _ = tick.tick() => {}
                }
                let Some(hub) = weak.upgrade() else { break };
                hub.housekeeping(Instant::now());
            }
        })
    }

    fn housekeeping(self: &Arc<Self>, now: Instant) {
        self.throttler.cleanup(now);
        let tick = self.ticks.fetch_add(1, Ordering::Relaxed);
        if tick.is_multiple_of(10) {
            // After a spike of connections, give the maps' memory back.
            self.reg.lock().shrink();
            self.bus.shrink();
        }
        if tick % 30 == 29 {
            // Decoded ids unused for 30-60 s are forgotten.
            self.codec.age_caches();
        }
        self.cluster_counts_tick(now);
        let (expired, anonymous, rooms) = {
            let mut reg = self.reg.lock();
            let expired: Vec<Arc<str>> = reg
                .expiring
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(id, _)| id.clone())
                .collect();
            let expired: Vec<AnySession> = expired
                .iter()
                .filter_map(|id| {
                    reg.expiring.remove(id);
                    reg.sessions.get(id).cloned()
                })
                .collect();
            let timed_out: Vec<u64> = reg
                .anonymous
                .iter()
                .filter(|(_, (_, t))| *t <= now)
                .map(|(id, _)| *id)
                .collect();
            let anonymous: Vec<Arc<Conn>> = timed_out
                .iter()
                .filter_map(|id| reg.anonymous.remove(id))
                .filter_map(|(c, _)| c.upgrade())
                .collect();
            (
                expired,
                anonymous,
                reg.rooms.values().cloned().collect::<Vec<_>>(),
            )
        };
        for s in expired {
            if let AnySession::Client(c) = s {
                info!(session = %c.public_id, "closing expired session");
                self.close_session(&c);
            }
        }
        for conn in anonymous {
            if let Some(session) = conn.session() {
                if session.room().is_some() {
                    continue;
                }
                info!(session = %session.public_id, "anonymous session did not join a room in time");
                session.send_message(ServerMessage::bye("room_join_timeout"));
                self.close_session(&session);
            }
        }
        for room in &rooms {
            room.expire_transient(self, now);
            room.cluster_tick(self, now);
        }
        let ping_due = {
            let mut next = self.next_ping.lock();
            if now >= *next {
                *next = now + crate::core::settings::ROOM_PING_INTERVAL;
                true
            } else {
                false
            }
        };
        if ping_due {
            // One list per Nextcloud URL, holding the entries of all rooms.
            let mut by_url: Vec<(Url, Vec<RoomPings>)> = Vec::new();
            // Federated sessions are pinged here, at their own Nextcloud,
            // for the local id of the room they are in elsewhere.
            for s in self.client_sessions() {
                let Some(f) = crate::federation::FederationClient::of(&s) else {
                    continue;
                };
                let entry = PingEntry {
                    userid: s.auth_user_id.clone(),
                    sessionid: f.room_session_id.clone(),
                };
                let url = s.backend_url.clone();
                let list = match by_url.iter_mut().find(|(u, _)| *u == url) {
                    Some((_, list)) => list,
                    None => {
                        by_url.push((url, Vec::new()));
                        &mut by_url.last_mut().expect("just pushed").1
                    }
                };
                match list.iter_mut().find(|(r, _)| *r == f.room_id) {
                    Some((_, entries)) => entries.push(entry),
                    None => list.push((f.room_id.clone(), vec![entry])),
                }
            }
            for room in rooms {
                for (url, entries) in room.ping_entries() {
                    match by_url.iter_mut().find(|(u, _)| *u == url) {
                        Some((_, list)) => list.push((room.id.clone(), entries)),
                        None => by_url.push((url, vec![(room.id.clone(), entries)])),
                    }
                }
            }
            for (url, rooms) in by_url {
                let hub = self.clone();
                tokio::spawn(async move { hub.send_pings(url, rooms).await });
            }
        }
    }

    /// Room pings to one Nextcloud. When it announces
    /// `signaling.session-ping-limit` (upstream 0.5.0, #250) the sessions of
    /// all rooms go in combined requests (empty room id) of at most that many
    /// entries; otherwise each room pings on its own.
    async fn send_pings(self: Arc<Self>, url: Url, rooms: Vec<RoomPings>) {
        use crate::backend::capabilities::{CONFIG_GROUP_SIGNALING, CONFIG_SESSION_PING_LIMIT};
        let limit = self
            .backend
            .capabilities(&url)
            .await
            .caps
            .and_then(|c| c.int_config(CONFIG_GROUP_SIGNALING, CONFIG_SESSION_PING_LIMIT))
            .filter(|l| *l > 0)
            .map(|l| l as usize);
        let requests: Vec<RoomPings> = match limit {
            None => rooms,
            Some(limit) => {
                let all: Vec<PingEntry> = rooms.into_iter().flat_map(|(_, e)| e).collect();
                all.chunks(limit)
                    .map(|c| (String::new(), c.to_vec()))
                    .collect()
            }
        };
        for (roomid, entries) in requests {
            let req = proto::backend::BackendClientRequest::ping(&roomid, entries);
            let res: Result<Value, _> = self
                .backend
                .perform_json_request(&url, &req, Some(self.settings.backend_timeout))
                .await;
            self.count_backend("ping", res.is_ok());
            if let Err(e) = res {
                debug!(room = %roomid, url = %url, error = %e, "room ping failed");
            }
        }
    }

    fn count_backend(&self, kind: &str, ok: bool) {
        self.metrics
            .backend_requests
            .inc(&[kind, if ok { "ok" } else { "error" }]);
    }

    // ---------------------------------------------------------------------
    // Connections

    /// Clustering over NATS: answer the other servers' questions (resume,
    /// publishers, dial-out) and ask them ours, until `shutdown`.
    pub fn start_cluster(
        self: &Arc<Self>,
        nats: Arc<crate::bus::nats::NatsBus>,
        shutdown: CancellationToken,
    ) {
        let cluster = Arc::new(crate::cluster::Cluster::new(nats));
        if self.cluster.set(cluster.clone()).is_ok() {
            tokio::spawn(crate::cluster::serve(
                Arc::downgrade(self),
                cluster,
                shutdown,
            ));
        }
    }

    /// The other nodes that reported within the last three presence
    /// intervals (`cluster.nodes`).
    fn live_node_status(&self) -> Vec<Arc<proto::cluster::NodeStatus>> {
        let Some(interval) = self.settings.presence_interval else {
            return Vec::new();
        };
        let now = Instant::now();
        self.node_counts
            .lock()
            .values()
            .filter(|(t, _)| now.duration_since(*t) <= interval * 3)
            .map(|(_, status)| status.clone())
            .collect()
    }

    /// How many other nodes of the cluster are live (0 on a single server).
    pub fn live_nodes(&self) -> usize {
        self.live_node_status().len()
    }

    /// A session with this resume id is here and not closed.
    pub(crate) fn has_resumable(&self, resume_id: &str) -> bool {
        self.reg
            .lock()
            .by_private
            .get(resume_id)
            .is_some_and(|s| !s.is_closed())
    }

    /// A connection relayed from another server: like a socket's, without
    /// the `welcome` (the client had it from the server it reached).
    pub(crate) fn new_relayed_conn(
        &self,
        remote_addr: String,
        user_agent: String,
        kill: CancellationToken,
    ) -> Arc<Conn> {
        self.metrics.connections.inc();
        let id = self.conn_ids.fetch_add(1, Ordering::Relaxed) + 1;
        Conn::new(id, remote_addr, user_agent, kill)
    }

    /// Register a new WebSocket connection.
    pub fn new_conn(
        &self,
        remote_addr: String,
        user_agent: String,
        kill: CancellationToken,
    ) -> Arc<Conn> {
        let conn = self.new_relayed_conn(remote_addr, user_agent, kill);
        // Clients learn the features (e.g. hello v2) before they say hello.
        conn.send(self.welcome.clone());
        conn
    }

    /// The connection ended (socket closed or killed). The session stays
    /// resumable for a while; frames the connection had not written are kept.
    pub fn conn_closed(&self, conn: &Arc<Conn>, unsent: Vec<crate::core::conn::Frame>) {
        conn.kill();
        self.metrics.connections.dec();
        if conn.overflowed() {
            self.metrics.queue_overflows.inc();
        }
        let session = conn.session();
        let mut reg = self.reg.lock();
        reg.anonymous.remove(&conn.id);
        if let Some(s) = &session {
            if !s.is_closed() && reg.sessions.contains_key(&s.public_id) {
                reg.expiring.insert(
                    s.public_id.clone(),
                    Instant::now() + self.settings.resume_window,
                );
            }
        }
        drop(reg);
        if let Some(s) = session {
            if s.detach(conn, unsent) {
                info!(session = %s.public_id, "client disconnected, session kept for resume");
            }
        }
    }

    /// The connection did not send a hello in time.
    pub fn hello_timeout(&self, conn: &Arc<Conn>) {
        conn.send_and_close(OutMsg::new(ServerMessage::bye("hello_timeout")).frame());
    }

    /// The connection's queue drained: pull in the session's backlog.
    pub fn refill(&self, conn: &Arc<Conn>) {
        if let Some(s) = conn.session() {
            s.refill(conn);
        }
    }

    /// A binary frame: not part of the protocol.
    pub fn process_binary(&self, conn: &Arc<Conn>) {
        self.reply(conn, ServerMessage::error("", err_invalid_format()));
    }

    fn reply(&self, conn: &Arc<Conn>, msg: ServerMessage) {
        match conn.session() {
            Some(s) => s.send_message(msg),
            None => {
                conn.send(OutMsg::new(msg).frame());
            }
        }
    }

    /// Handle one text frame. Returns the remaining work when the message
    /// needs a backend request; the caller runs it before the next message so
    /// that each client's messages are processed in order.
    pub fn process_text(self: &Arc<Self>, conn: &Arc<Conn>, text: &str) -> Option<Pending> {
        let mut msg: ClientMessage = match proto::client::parse_client_message(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(conn = conn.id, error = %e, "could not decode client message");
                self.reply(conn, ServerMessage::error("", err_invalid_format()));
                return None;
            }
        };
        if let Err(e) = msg.check_valid() {
            debug!(conn = conn.id, error = %e, "invalid client message");
            self.reply(conn, ServerMessage::error(&msg.id, err_invalid_format()));
            return None;
        }
        self.metrics.count_message(&msg.kind);
        let Some(session) = conn.session() else {
            if msg.kind != "hello" {
                conn.send(OutMsg::new(ServerMessage::error(&msg.id, err_hello_expected())).frame());
                return None;
            }
            let hub = self.clone();
            let conn = conn.clone();
            // A resume may have to be passed on to another server as it came.
            let text = msg
                .hello
                .as_ref()
                .is_some_and(|h| !h.resumeid.is_empty())
                .then(|| text.to_owned());
            return Some(Box::pin(async move {
                hub.process_hello(&conn, msg, text).await
            }));
        };
        if !matches!(msg.kind.as_str(), "room" | "hello" | "bye") {
            if let Some(federation) = crate::federation::FederationClient::of(&session) {
                return federation.proxy(msg);
            }
        }
        match msg.kind.as_str() {
            "room" => self.process_room(conn, &session, msg),
            "message" => self.process_message(&session, msg, false),
            "control" => self.process_message(&session, msg, true),
            "internal" => self.process_internal(&session, msg),
            "transient" => {
                self.process_transient(&session, msg);
                None
            }
            "bye" => {
                self.process_bye(conn, &session, &msg.id);
                None
            }
            "hello" => {
                debug!(session = %session.public_id, "ignoring hello on authenticated connection");
                None
            }
            _ => {
                debug!(session = %session.public_id, kind = %msg.kind, "ignoring unknown message");
                None
            }
        }
    }

    // ---------------------------------------------------------------------
    // hello / resume / bye

    async fn process_hello(
        self: Arc<Self>,
        conn: &Arc<Conn>,
        mut msg: ClientMessage,
        text: Option<String>,
    ) {
        let Some(hello) = msg.hello.take() else {
            return;
        };
        if !hello.resumeid.is_empty() {
            // Resume ids are secrets: guessing is slowed down, then refused.
            use crate::throttle::ACTION_RESUME;
            if self
                .throttler
                .check(&conn.remote_addr, ACTION_RESUME)
                .is_err()
            {
                conn.send(
                    OutMsg::new(ServerMessage::error(&msg.id, err_too_many_requests())).frame(),
                );
                return;
            }
            if !self.process_resume(conn, &msg.id, &hello.resumeid) {
                let text = text.as_deref().unwrap_or_default();
                if crate::cluster::relay::resume_elsewhere(&self, conn, &hello.resumeid, text).await
                {
                    return;
                }
                self.metrics.resume_failed.inc();
                let delay = self.throttler.failed(&conn.remote_addr, ACTION_RESUME);
                tokio::time::sleep(delay).await;
                conn.send(
                    OutMsg::new(ServerMessage::error(&msg.id, err_no_such_session())).frame(),
                );
            }
            return;
        }
        match hello.auth.kind.as_str() {
            proto::client::CLIENT_TYPE_CLIENT | proto::client::CLIENT_TYPE_FEDERATION => {
                self.process_hello_client(conn, &msg.id, hello).await
            }
            proto::client::CLIENT_TYPE_INTERNAL => {
                self.process_hello_internal(conn, &msg.id, hello).await
            }
            _ => {
                conn.send(
                    OutMsg::new(ServerMessage::error(&msg.id, err_invalid_client_type())).frame(),
                );
            }
        }
    }

    /// Resume a session; false when there is none to resume (the caller
    /// answers `no_such_session` after the brute-force delay).
    fn process_resume(&self, conn: &Arc<Conn>, id: &str, resume_id: &str) -> bool {
        let session = self.reg.lock().by_private.get(resume_id).cloned();
        let Some(session) = session.filter(|s| !s.is_closed()) else {
            return false;
        };
        if !conn.is_connected() {
            return true;
        }
        if let Some(prev) = session.attach(conn) {
            info!(session = %session.public_id, previous = %prev.remote_addr, "closing previous connection of resumed session");
            prev.send_and_close(OutMsg::new(ServerMessage::bye("session_resumed")).frame());
        }
        self.reg.lock().expiring.remove(&session.public_id);
        info!(session = %session.public_id, peer = %conn.remote_addr, "session resumed");
        self.metrics
            .sessions_resumed
            .inc(&[&session.backend.id, session.client_type.as_str()]);
        self.send_hello_response(conn, &session, id);
        let had_participants = session.flush_pending(conn);
        if !had_participants {
            if let Some(room) = session.room() {
                room.notify_session_resumed(&session);
            }
        }
        true
    }

    fn send_hello_response(&self, conn: &Arc<Conn>, session: &ClientSession, id: &str) {
        let server = if session.is_internal() {
            self.info_internal.clone()
        } else {
            self.info.clone()
        };
        let msg = ServerMessage {
            id: id.to_owned(),
            kind: "hello".into(),
            hello: Some(HelloServerMessage {
                version: session.hello_version.into(),
                sessionid: session.public_id.to_string(),
                resumeid: session.private_id.clone(),
                userid: session.auth_user_id.clone(),
                server: Some(server),
            }),
            ..Default::default()
        };
        conn.send(OutMsg::new(msg).frame());
    }

    async fn process_hello_client(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        id: &str,
        hello: proto::client::HelloClientMessage,
    ) {
        let send_err = |e: Error| {
            conn.send(OutMsg::new(ServerMessage::error(id, e)).frame());
        };
        let Ok(url) = Url::parse(&hello.auth.url) else {
            send_err(err_invalid_backend());
            return;
        };
        let Some(backend) = self.backends.get(&url) else {
            send_err(err_invalid_backend());
            return;
        };
        let Some(backend_url) = session_backend_url(&hello.auth.url) else {
            send_err(err_invalid_backend());
            return;
        };
        if hello.auth.kind == proto::client::CLIENT_TYPE_FEDERATION {
            // A remote signaling server relaying one of its clients: only
            // when this Nextcloud supports it (upstream 2.0.0, #776).
            use crate::backend::capabilities::FEATURE_FEDERATION_V2;
            let caps = self.backend.capabilities(&backend_url).await.caps;
            if !caps.is_some_and(|c| c.has_feature(FEATURE_FEDERATION_V2)) {
                send_err(crate::federation::err_federation_unsupported());
                return;
            }
        }
        if hello.version == proto::client::HELLO_VERSION_V2 {
            let token = hello.v2_token().unwrap_or_default();
            let claims = match self.verify_hello_token(&backend_url, &token).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(peer = %conn.remote_addr, error = %e, "hello v2 token refused");
                    send_err(e);
                    return;
                }
            };
            if !conn.is_connected() {
                return;
            }
            self.register(
                conn,
                id,
                backend,
                backend_url,
                ClientType::Client,
                proto::client::HELLO_VERSION_V2,
                claims.subject,
                claims.userdata,
                hello.features.unwrap_or_default(),
            )
            .await;
            return;
        }
        let req = proto::backend::BackendClientRequest::auth(hello.auth.params.clone());
        let res: Result<proto::backend::BackendClientResponse, _> = self
            .backend
            .perform_json_request(&url, &req, Some(self.settings.backend_timeout))
            .await;
        self.count_backend("auth", res.is_ok());
        let auth = match res {
            Ok(a) => a,
            Err(e) => {
                debug!(peer = %conn.remote_addr, error = %e, "backend auth request failed");
                send_err(err_internal(e));
                return;
            }
        };
        if !conn.is_connected() {
            return;
        }
        if auth.kind == "error" {
            send_err(auth.error.unwrap_or_else(err_auth_failed));
            return;
        }
        if auth.kind != "auth" {
            send_err(err_auth_failed());
            return;
        }
        let a = auth.auth.unwrap_or_default();
        self.register(
            conn,
            id,
            backend,
            backend_url,
            ClientType::Client,
            proto::client::HELLO_VERSION_V1,
            a.userid,
            a.user.map(Arc::from),
            hello.features.unwrap_or_default(),
        )
        .await;
    }

    async fn process_hello_internal(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        id: &str,
        hello: proto::client::HelloClientMessage,
    ) {
        let send_err = |e: Error| {
            conn.send(OutMsg::new(ServerMessage::error(id, e)).frame());
        };
        if self.settings.internal_secret.is_empty() {
            send_err(err_invalid_client_type());
            return;
        }
        let Ok(params) = hello.internal_params() else {
            send_err(err_invalid_format());
            return;
        };
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.settings.internal_secret)
            .expect("any key length");
        mac.update(params.random.as_bytes());
        let expected = hex::encode(mac.finalize().into_bytes());
        if params.random.len() < 32
            || !constant_time_eq(expected.as_bytes(), params.token.as_bytes())
        {
            send_err(err_invalid_token());
            return;
        }
        let Some(backend) = Url::parse(&params.backend)
            .ok()
            .and_then(|u| self.backends.get(&u))
        else {
            send_err(err_invalid_backend());
            return;
        };
        let Some(backend_url) = session_backend_url(&params.backend) else {
            send_err(err_invalid_backend());
            return;
        };
        self.register(
            conn,
            id,
            backend,
            backend_url,
            ClientType::Internal,
            if hello.version == proto::client::HELLO_VERSION_V2 {
                proto::client::HELLO_VERSION_V2
            } else {
                proto::client::HELLO_VERSION_V1
            },
            String::new(),
            None,
            hello.features.unwrap_or_default(),
        )
        .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn register(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        id: &str,
        backend: Arc<crate::core::backends::Backend>,
        backend_url: Url,
        client_type: ClientType,
        hello_version: &'static str,
        user_id: String,
        user_data: Option<Arc<proto::RawValue>>,
        features: Vec<String>,
    ) {
        let (sid, public_id, private_id) = self.mint_ids(&backend.id);
        let anonymous = user_id.is_empty() && client_type == ClientType::Client;
        match &*user_id {
            "" => {
                info!(backend = %backend.id, peer = %conn.remote_addr, session = %public_id, kind = client_type.as_str(), "register anonymous")
            }
            u => {
                info!(user = %u, backend = %backend.id, peer = %conn.remote_addr, session = %public_id, "register user")
            }
        }
        let session = ClientSession::new(
            self,
            NewSession {
                sid,
                public_id: public_id.clone(),
                private_id: private_id.clone(),
                client_type,
                backend: backend.clone(),
                backend_url,
                user_id,
                user_data,
                features,
                hello_version,
            },
        );
        if client_type == ClientType::Client {
            if let Err(e) = crate::cluster::count_session(self, &backend, &public_id).await {
                self.metrics.session_limit_exceeded.inc(&[&backend.id]);
                warn!(backend = %backend.id, "session limit exceeded");
                conn.send(OutMsg::new(ServerMessage::error(id, e)).frame());
                return;
            }
        }
        if let Err(e) = session.subscribe(self) {
            backend.remove_session(&public_id);
            conn.send(OutMsg::new(ServerMessage::error(id, err_internal(e))).frame());
            return;
        }
        // In a cluster: reachable from every node before it is told its id.
        self.subscriptions_active().await;
        {
            let mut reg = self.reg.lock();
            if !conn.is_connected() {
                drop(reg);
                session.close_inner();
                return;
            }
            reg.sessions
                .insert(public_id.clone(), AnySession::Client(session.clone()));
            reg.by_sid.insert(sid, public_id.clone());
            reg.by_private.insert(private_id, session.clone());
            if anonymous {
                reg.anonymous.insert(
                    conn.id,
                    (
                        Arc::downgrade(conn),
                        Instant::now() + ANONYMOUS_JOIN_TIMEOUT,
                    ),
                );
            }
        }
        session.attach(conn);
        self.metrics
            .sessions
            .inc(&[&backend.id, client_type.as_str()]);
        self.metrics
            .sessions_total
            .inc(&[&backend.id, client_type.as_str()]);
        self.send_hello_response(conn, &session, id);
    }

    /// Check a hello v2 token against the key in the backend's capabilities.
    /// A missing key, or a signature that does not verify with a cached key,
    /// makes us ask Nextcloud again once (rate limited): the key may have
    /// been created or rotated since we cached it.
    async fn verify_hello_token(
        &self,
        backend_url: &Url,
        token: &str,
    ) -> Result<crate::backend::token::TokenClaims, Error> {
        use crate::backend::capabilities::{CONFIG_GROUP_SIGNALING, CONFIG_HELLO_V2_TOKEN_KEY};
        use crate::backend::token::TokenError;
        let map = |e: TokenError| match e {
            TokenError::Invalid(_) => err_invalid_token(),
            TokenError::Expired => Error::new("token_expired", "The token is expired."),
            TokenError::NotValidYet => {
                Error::new("token_not_valid_yet", "The token is not valid yet.")
            }
        };
        // Refuse garbage before asking Nextcloud anything.
        crate::backend::token::token_algorithm(token).map_err(map)?;
        let key_of = |l: &crate::backend::capabilities::Lookup| {
            l.caps
                .as_ref()
                .and_then(|c| c.string_config(CONFIG_GROUP_SIGNALING, CONFIG_HELLO_V2_TOKEN_KEY))
        };
        let lookup = self.backend.capabilities(backend_url).await;
        let now = unix_now();
        let first = match key_of(&lookup) {
            Some(key) => crate::backend::token::verify(token, &key, now).map(|c| (c, key)),
            None => Err(TokenError::Invalid("no key found for issuer".into())),
        };
        match first {
            Ok((claims, _)) => Ok(claims),
            Err(TokenError::Invalid(_))
                if lookup.cached && self.backend.invalidate_capabilities(backend_url) =>
            {
                let lookup = self.backend.capabilities(backend_url).await;
                let key = key_of(&lookup).ok_or_else(err_invalid_token)?;
                crate::backend::token::verify(token, &key, unix_now()).map_err(map)
            }
            Err(e) => Err(map(e)),
        }
    }

    fn mint_ids(&self, backend_id: &str) -> (u64, Arc<str>, String) {
        let sid = self.sid.fetch_add(1, Ordering::Relaxed) + 1;
        let data = SessionIdData {
            sid,
            created_unix_nanos: crate::bus::now_nanos(),
            backend_id: backend_id.to_owned(),
        };
        let private = self.codec.encode_private(&data);
        let public: Arc<str> = Arc::from(self.codec.encode_public(&data));
        (sid, public, private)
    }

    fn process_bye(&self, conn: &Arc<Conn>, session: &Arc<ClientSession>, id: &str) {
        let msg = ServerMessage {
            id: id.to_owned(),
            kind: "bye".into(),
            bye: Some(Default::default()),
            ..Default::default()
        };
        conn.send_and_close(OutMsg::new(msg).frame());
        info!(session = %session.public_id, "client said bye");
        self.close_session(session);
    }

    /// Destroy a session: leave its room, drop its subscriptions, close its
    /// virtual sessions and forget it.
    pub fn close_session(&self, session: &Arc<ClientSession>) {
        session.leave_room(true);
        let removed = {
            let mut reg = self.reg.lock();
            reg.by_private.remove(&session.private_id);
            reg.expiring.remove(&session.public_id);
            reg.by_sid.remove(&session.sid);
            reg.sessions.remove(&session.public_id).is_some()
        };
        if removed {
            self.metrics
                .sessions
                .dec(&[&session.backend.id, session.client_type.as_str()]);
            self.session_gone.notify_waiters();
        }
        let (conn, virtuals) = session.close_inner();
        if let Some(c) = conn {
            self.reg.lock().anonymous.remove(&c.id);
            c.close();
        }
        for v in virtuals {
            self.close_virtual_session(&v, None);
        }
    }

    // ---------------------------------------------------------------------
    // rooms

    pub fn session_by_public_id(&self, id: &str) -> Option<AnySession> {
        if let Some(s) = self.reg.lock().sessions.get(id) {
            return Some(s.clone());
        }
        // Another valid encoding of one of our ids (e.g. derived by a client
        // from the resume id, as upstream's benchmark client does).
        let data = self.codec.decode_public(id).ok()?;
        let reg = self.reg.lock();
        let public = reg.by_sid.get(&data.sid)?;
        let session = reg.sessions.get(public)?.clone();
        drop(reg);
        // Session numbers are per process: in a cluster another node's
        // session may carry the same number. Only the same creation time
        // makes it another encoding of *our* session.
        let ours = self.codec.decode_public(session.public_id()).ok()?;
        (ours.created_unix_nanos == data.created_unix_nanos && ours.backend_id == data.backend_id)
            .then_some(session)
    }

    pub fn room_for(
        &self,
        backend: &crate::core::backends::Backend,
        id: &str,
    ) -> Option<Arc<Room>> {
        self.reg.lock().rooms.get(&room_key(backend, id)).cloned()
    }

    pub(crate) fn remove_room(&self, room: &Room) {
        let mut reg = self.reg.lock();
        if reg
            .rooms
            .get(&room.key)
            .is_some_and(|r| std::ptr::eq(Arc::as_ptr(r), room))
        {
            reg.rooms.remove(&room.key);
            drop(reg);
            self.metrics.rooms.dec(&[&room.backend.id]);
        }
    }

    pub(crate) fn remove_room_session(&self, public_id: &Arc<str>) {
        let mut reg = self.reg.lock();
        if let Some(rs) = reg.room_session_of.remove(public_id) {
            if reg.room_sessions.get(&rs).is_some_and(|p| p == public_id) {
                reg.room_sessions.remove(&rs);
            }
        }
    }

    /// Public id of the signaling session bound to a Talk session id.
    /// Clustering: follow the other nodes' session counts.
    fn subscribe_node_status(self: &Arc<Self>) {
        if self.settings.presence_interval.is_none() {
            return;
        }
        let handler: Arc<dyn BusHandler> = self.clone();
        match self
            .bus
            .subscribe(proto::cluster::NODES_SUBJECT, Arc::downgrade(&handler))
        {
            Ok(sub) => *self.nodes_subscription.lock() = Some(sub),
            Err(e) => warn!(error = %e, "cannot follow the cluster's session counts"),
        }
    }

    /// The other live nodes with a dial-out bridge of `backend`.
    pub(crate) fn nodes_with_bridges(&self, backend: &str) -> Vec<String> {
        self.live_node_status()
            .into_iter()
            .filter(|s| s.dialout.iter().any(|b| b == backend))
            .map(|s| s.node.clone())
            .collect()
    }

    /// Report this node's counts when they changed or every interval;
    /// forget nodes silent for three intervals.
    fn cluster_counts_tick(&self, now: Instant) {
        let Some(interval) = self.settings.presence_interval else {
            return;
        };
        self.node_counts
            .lock()
            .retain(|_, (t, _)| now.duration_since(*t) <= interval * 3);
        let status = proto::cluster::NodeStatus {
            node: self.node_id.to_string(),
            sessions: self
                .backends
                .all()
                .iter()
                .filter(|b| b.session_limit > 0)
                .map(|b| (b.id.clone(), b.counted_sessions()))
                .collect(),
            dialout: crate::dialout::local_bridge_backends(self),
        };
        {
            let mut sent = self.counts_sent.lock();
            let due = sent.0.is_none_or(|t| now.duration_since(t) >= interval);
            if !due && sent.1 == status {
                return;
            }
            *sent = (Some(now), status.clone());
        }
        let msg = BusMessage::new(BusPayload::Node(Arc::new(status)));
        if let Err(e) = self.bus.publish(proto::cluster::NODES_SUBJECT, msg) {
            debug!(error = %e, "could not report session counts");
        }
    }

    pub fn session_for_room_session(&self, room_session_id: &str) -> Option<Arc<str>> {
        self.reg.lock().room_sessions.get(room_session_id).cloned()
    }

    pub(crate) fn notify_backend_leave(
        &self,
        session: &ClientSession,
        room_id: &str,
        room_session_id: String,
    ) {
        let Some(hub) = self.arc() else { return };
        let url = session.backend_url.clone();
        let req = proto::backend::BackendClientRequest::room(proto::backend::RoomRequest {
            version: proto::backend::BACKEND_VERSION.into(),
            roomid: room_id.to_owned(),
            action: "leave".into(),
            userid: session.auth_user_id.clone(),
            sessionid: room_session_id,
            ..Default::default()
        });
        tokio::spawn(async move {
            // Leave notifications get a generous bound rather than none, so a
            // dead backend cannot pin tasks forever.
            let res: Result<Value, _> = hub
                .backend
                .perform_json_request(&url, &req, Some(Duration::from_secs(60)))
                .await;
            hub.count_backend("room", res.is_ok());
            if let Err(e) = res {
                debug!(error = %e, "could not notify backend about room leave");
            }
        });
    }

    fn send_room_reply(session: &ClientSession, id: &str, room: Option<&Room>) {
        let msg = match room {
            Some(r) => {
                let mut m = ServerMessage::room(id, &r.id, r.properties());
                if let Some(body) = m.room.as_mut() {
                    body.bandwidth = room_bandwidth(r);
                }
                m
            }
            None => ServerMessage::room(id, "", None),
        };
        session.send_message(msg);
    }

    fn process_room(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        session: &Arc<ClientSession>,
        msg: ClientMessage,
    ) -> Option<Pending> {
        let room_msg = msg.room.as_ref()?;
        if room_msg.roomid.is_empty() {
            if let Some(federation) = crate::federation::FederationClient::of(session) {
                // The remote server answers (and the connection then ends).
                federation.leave(msg);
                return None;
            }
            if session.leave_room(true).is_some() {
                Self::send_room_reply(session, &msg.id, None);
            }
            if session.auth_user_id.is_empty() && !session.is_internal() {
                self.reg.lock().anonymous.insert(
                    conn.id,
                    (
                        Arc::downgrade(conn),
                        Instant::now() + ANONYMOUS_JOIN_TIMEOUT,
                    ),
                );
            }
            return None;
        }
        if room_msg.federation.is_some() {
            // Joined on the remote server; it must not time out here meanwhile.
            self.reg.lock().anonymous.remove(&conn.id);
            session.leave_room(true);
            let client = crate::federation::FederationClient::start(session, &msg);
            session.set_federation(Some(client));
            return None;
        }
        if let Some(room) = self.room_for(&session.backend, &room_msg.roomid) {
            if room.has_session(&session.public_id) {
                // Upstream 1.2.0 (#547): tell the client instead of ignoring it,
                // so its request gets an answer.
                let mut details = serde_json::json!({"room": {"roomid": room.id}});
                if let Some(p) = room.properties() {
                    details["room"]["properties"] = serde_json::json!(p);
                }
                let mut err = Error::new("already_joined", "Already joined this room.");
                err.details = Some(details);
                session.send_message(ServerMessage::error(&msg.id, err));
                return None;
            }
        }
        let hub = self.clone();
        let session = session.clone();
        let conn = conn.clone();
        Some(Box::pin(async move {
            hub.join_room(&conn, &session, msg).await
        }))
    }

    async fn join_room(
        self: &Arc<Self>,
        conn: &Arc<Conn>,
        session: &Arc<ClientSession>,
        msg: ClientMessage,
    ) {
        let Some(room_msg) = msg.room else { return };
        let response = if session.is_internal() {
            proto::backend::BackendClientResponse {
                kind: "room".into(),
                room: Some(proto::backend::RoomResponse {
                    roomid: room_msg.roomid.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            }
        } else {
            let talk_session = if room_msg.sessionid.is_empty() {
                debug!(session = %session.public_id, "no room session id sent, using the signaling session id");
                session.public_id.to_string()
            } else {
                room_msg.sessionid.clone()
            };
            let req = proto::backend::BackendClientRequest::room(proto::backend::RoomRequest {
                version: proto::backend::BACKEND_VERSION.into(),
                roomid: room_msg.roomid.clone(),
                userid: session.auth_user_id.clone(),
                sessionid: talk_session,
                ..Default::default()
            });
            let res = self
                .backend
                .perform_json_request(
                    &session.backend_url,
                    &req,
                    Some(self.settings.backend_timeout),
                )
                .await;
            self.count_backend("room", res.is_ok());
            match res {
                Ok(r) => r,
                Err(e) => {
                    debug!(session = %session.public_id, error = %e, "room join request failed");
                    session.send_message(ServerMessage::error(&msg.id, err_internal(e)));
                    return;
                }
            }
        };
        if session.is_closed() {
            return;
        }
        if response.kind == "error" {
            session.send_message(ServerMessage::error(
                &msg.id,
                response.error.unwrap_or_else(err_room_join_failed),
            ));
            return;
        }
        let Some(room_resp) = response.room.filter(|_| response.kind == "room") else {
            session.send_message(ServerMessage::error(&msg.id, err_room_join_failed()));
            return;
        };
        if !room_msg.sessionid.is_empty() {
            self.disconnect_by_room_session(&room_msg.sessionid, &session.public_id);
            // Clustering: the older session may be on another server.
            crate::cluster::replace_room_session_elsewhere(
                self,
                &room_msg.sessionid,
                &session.public_id,
            )
            .await;
            if session.is_closed() {
                return;
            }
        }
        session.leave_room(true);
        let roomid = if room_resp.roomid.is_empty() {
            room_msg.roomid.clone()
        } else {
            room_resp.roomid.clone()
        };
        let room = match self.get_or_create_room(&roomid, session, room_resp.properties.clone()) {
            Ok((r, created)) => {
                if created {
                    // The room's subjects reach this node before the other
                    // nodes are asked about it or anyone is told about it.
                    self.subscriptions_active().await;
                    crate::cluster::learn_room(self, &r).await;
                }
                r
            }
            Err(e) => {
                session.send_message(ServerMessage::error(&msg.id, err_internal(e)));
                Self::send_room_reply(session, "", None);
                return;
            }
        };
        if let Err(e) = session.set_room(self, &room, &room_msg.sessionid) {
            session.send_message(ServerMessage::error(&msg.id, err_internal(e)));
            Self::send_room_reply(session, "", None);
            return;
        }
        if !room_msg.sessionid.is_empty() {
            let mut reg = self.reg.lock();
            reg.room_sessions
                .insert(room_msg.sessionid.clone(), session.public_id.clone());
            reg.room_session_of
                .insert(session.public_id.clone(), room_msg.sessionid.clone());
        }
        self.reg.lock().anonymous.remove(&conn.id);
        if let Some(perms) = &room_resp.permissions {
            session.set_permissions(perms);
        }
        info!(session = %session.public_id, room = %roomid, "joined room");
        Self::send_room_reply(session, &msg.id, Some(&room));
        let joiner = session.clone();
        let room_id = room.id.clone();
        room.add_session(
            self,
            AnySession::Client(session.clone()),
            room_resp.session.as_deref(),
            move |others| {
                if others.is_empty() {
                    return;
                }
                let entries: Vec<SessionEntry> = others
                    .iter()
                    .map(|s| SessionEntry {
                        sessionid: s.public_id().to_string(),
                        userid: s.user_id(),
                        features: s.features(),
                        user: s.user_data(),
                        roomsessionid: match s {
                            AnySession::Client(c) => c.room_session_id(),
                            AnySession::Virtual(_) => String::new(),
                        },
                    })
                    .collect();
                let mut event = EventServerMessage::new("room", "join");
                event.join = Some(entries);
                joiner.send_message(ServerMessage::event(event));
                for s in others {
                    if let AnySession::Virtual(v) = s {
                        if v.flags() != 0 {
                            let mut ev = EventServerMessage::new("participants", "flags");
                            ev.flags = Some(proto::client::RoomFlagsEvent {
                                roomid: room_id.clone(),
                                sessionid: v.public_id.to_string(),
                                flags: v.flags(),
                            });
                            joiner.send_message(ServerMessage::event(ev));
                        }
                    }
                }
            },
        );
    }

    /// Wait until what this node subscribed so far receives the other
    /// nodes' publishes (a round trip to NATS; at once on a single server;
    /// bounded should NATS break meanwhile).
    async fn subscriptions_active(&self) {
        if let Some(active) = self.bus.subscriptions_active() {
            let _ = tokio::time::timeout(crate::bus::SUBSCRIPTIONS_WAIT, active).await;
        }
    }

    fn get_or_create_room(
        self: &Arc<Self>,
        roomid: &str,
        session: &ClientSession,
        properties: Option<proto::Raw>,
    ) -> Result<(Arc<Room>, bool), crate::bus::BusError> {
        let key = room_key(&session.backend, roomid);
        if let Some(r) = self.reg.lock().rooms.get(&key) {
            return Ok((r.clone(), false));
        }
        let room = Room::new(self, roomid, session.backend.clone(), properties)?;
        let mut reg = self.reg.lock();
        if let Some(r) = reg.rooms.get(&key) {
            return Ok((r.clone(), false));
        }
        reg.rooms.insert(key, room.clone());
        drop(reg);
        self.metrics.rooms.inc(&[&session.backend.id]);
        Ok((room, true))
    }

    /// One Talk session, one signaling session: an older session with the same
    /// Talk session id is told `room_session_reconnected` and closed.
    fn disconnect_by_room_session(&self, room_session_id: &str, except: &Arc<str>) {
        let Some(other) = self.session_for_room_session(room_session_id) else {
            return;
        };
        if other == *except {
            return;
        }
        self.send_bye_to(&other, "room_session_reconnected");
    }

    /// Tell session `public_id` (on any server) `bye` with `reason`; its
    /// connection is closed after it.
    pub(crate) fn send_bye_to(&self, public_id: &str, reason: &str) {
        let bye = OutMsg::new(ServerMessage::bye(reason));
        let _ = self.bus.publish(
            &proto::cluster::session_subject(public_id),
            BusMessage::new(BusPayload::Message(bye)),
        );
    }

    /// A room was deleted by Nextcloud: members leave it. With
    /// `tell_members` each client session is told first (`roomlist`/
    /// `disinvite`, reason `deleted`; sent once out of the room, so it does
    /// not end the connection); old Talk versions named the users to tell
    /// instead.
    pub(crate) fn room_deleted(&self, room: &Room, tell_members: bool) {
        let disinvite = OutMsg::new(ServerMessage::event(crate::core::room::disinvite_event(
            &room.id, "deleted",
        )));
        for s in room.close(self) {
            match s {
                AnySession::Client(c) => {
                    c.leave_room(true);
                    if tell_members {
                        c.send(&disinvite);
                    }
                    if c.conn().is_some() {
                        Self::send_room_reply(&c, "", None);
                    }
                }
                AnySession::Virtual(v) => {
                    v.set_room(None);
                }
            }
        }
    }

    // ---------------------------------------------------------------------
    // message / control

    fn process_message(
        self: &Arc<Self>,
        session: &Arc<ClientSession>,
        msg: ClientMessage,
        control: bool,
    ) -> Option<Pending> {
        let body = if control { msg.control } else { msg.message };
        let body = body?;
        // MCU verbs and `unshareScreen` only matter with a media server.
        let mcu_data = if self.mcu.is_some() && !control {
            crate::mcu::routing::McuData::parse(body.data.as_ref())
        } else {
            None
        };
        if control && !(session.is_internal() || session.has_permission(PERMISSION_CONTROL)) {
            debug!(session = %session.public_id, "ignoring control message without permission");
            return None;
        }
        let mut server_recipient: Option<Recipient> = None;
        // A session of this server: nobody elsewhere listens on its subject.
        let mut local_only = false;
        let subject = match body.recipient.kind.as_str() {
            RECIPIENT_SESSION => {
                let target = &body.recipient.sessionid;
                if let Some(data) = &mcu_data {
                    if let Some(pending) = self.intercept_mcu(session, &msg.id, target, data) {
                        return pending;
                    }
                }
                if **target == *session.public_id {
                    return None;
                }
                match self.session_by_public_id(target) {
                    Some(AnySession::Client(c)) => {
                        if c.backend.id != session.backend.id {
                            return None;
                        }
                        if let Some(data) = &mcu_data {
                            if self.intercept_sendoffer(session, &c, &msg.id, data) {
                                return None;
                            }
                        }
                        local_only = true;
                        c.subject.clone()
                    }
                    Some(AnySession::Virtual(v)) => {
                        if v.backend.id != session.backend.id {
                            return None;
                        }
                        server_recipient = Some(Recipient {
                            kind: RECIPIENT_SESSION.into(),
                            sessionid: v.session_id.clone(),
                            userid: String::new(),
                        });
                        v.owner_subject.clone()
                    }
                    None => match self.codec.decode_public(target) {
                        // A valid id of a session elsewhere in the cluster.
                        Ok(data) if data.backend_id == session.backend.id => {
                            if mcu_data.as_ref().is_some_and(|d| d.kind == "sendoffer") {
                                debug!(session = %session.public_id, "sendoffer to a session on another server is not supported");
                                return None;
                            }
                            Arc::from(proto::cluster::session_subject(target))
                        }
                        _ => {
                            debug!(session = %session.public_id, "message to unknown session dropped");
                            return None;
                        }
                    },
                }
            }
            RECIPIENT_USER => {
                if body.recipient.userid == session.auth_user_id {
                    return None;
                }
                Arc::from(proto::cluster::encoded_subject(
                    "user",
                    &body.recipient.userid,
                    session.backend.subject_suffix(),
                ))
            }
            // Call recipients get it on the room subject; sessions that are not
            // in the call drop it (see `ClientSession::on_bus_message`).
            RECIPIENT_ROOM | RECIPIENT_CALL => match session.room() {
                Some(room) => {
                    local_only = !room.reaches_other_nodes(self);
                    room.subject.clone()
                }
                None => return None,
            },
            _ => return None,
        };
        if mcu_data.as_ref().is_some_and(|d| d.kind == "unshareScreen") {
            self.schedule_unshare_screen(session);
        }
        let payload = MessageServerMessage {
            sender: Some(Sender {
                kind: body.recipient.kind.clone(),
                sessionid: session.public_id.to_string(),
                userid: session.user_id(),
            }),
            recipient: server_recipient,
            data: body.data,
        };
        let out = if control {
            ServerMessage {
                kind: "control".into(),
                control: Some(payload),
                ..Default::default()
            }
        } else {
            ServerMessage {
                kind: "message".into(),
                message: Some(payload),
                ..Default::default()
            }
        };
        let msg = BusMessage::new(BusPayload::Message(OutMsg::new(out)));
        let sent = if local_only {
            self.bus.publish_local(&subject, msg)
        } else {
            self.bus.publish(&subject, msg)
        };
        if let Err(e) = sent {
            warn!(error = %e, "could not publish message");
        }
        None
    }

    // ---------------------------------------------------------------------
    // transient data

    fn process_transient(&self, session: &Arc<ClientSession>, msg: ClientMessage) {
        let Some(t) = msg.transient else { return };
        let Some(room) = session.room() else {
            session.send_message(ServerMessage::error(
                &msg.id,
                Error::new("not_in_room", "No room joined yet."),
            ));
            return;
        };
        let allowed = session.is_internal() || session.has_permission(PERMISSION_TRANSIENT_DATA);
        match t.kind.as_str() {
            "set" | "remove" if !allowed => {
                session.send_message(ServerMessage::error(
                    &msg.id,
                    Error::new("not_allowed", "Not allowed to update transient data."),
                ));
            }
            "set" => {
                let value = t
                    .value
                    .and_then(|v| serde_json::from_str::<Value>(v.get()).ok());
                // Go's `time.Duration`: nanoseconds.
                let ttl = t
                    .ttl
                    .filter(|n| *n > 0)
                    .map(|n| Duration::from_nanos(n as u64));
                room.set_transient(self, &t.key, value, ttl);
            }
            "remove" => room.remove_transient(self, &t.key),
            _ => session.send_message(ServerMessage::error(
                &msg.id,
                Error::new("ignored", "Unsupported message type."),
            )),
        }
    }

    // ---------------------------------------------------------------------
    // internal clients

    fn process_internal(
        self: &Arc<Self>,
        session: &Arc<ClientSession>,
        msg: ClientMessage,
    ) -> Option<Pending> {
        if !session.is_internal() {
            debug!(session = %session.public_id, "ignoring internal message from non-internal session");
            return None;
        }
        let internal = msg.internal.as_ref()?;
        match internal.kind.as_str() {
            "addsession" | "removesession" => {
                let hub = self.clone();
                let session = session.clone();
                Some(Box::pin(async move {
                    hub.process_internal_async(&session, msg).await
                }))
            }
            "updatesession" => {
                let m = internal.updatesession.as_ref()?;
                let room = self.room_for(&session.backend, &m.roomid)?;
                let key = virtual_session_key(&session.public_id, &m.sessionid);
                let v = self.reg.lock().virtual_sessions.get(&key).cloned()?;
                if let Some(flags) = m.flags {
                    if v.set_flags(flags) {
                        room.publish_flags(self, &v);
                    }
                }
                if let Some(incall) = m.incall {
                    if v.set_incall(incall) {
                        room.publish_users_changed_with_internal(self);
                    }
                }
                None
            }
            "incall" => {
                // Upstream 1.1.0 (#421): the internal client's own call state.
                let flags = internal.incall.as_ref()?.incall;
                if session.set_internal_incall(flags.max(0)) {
                    if let Some(room) = session.room() {
                        room.publish_users_changed_with_internal(self);
                    }
                }
                None
            }
            "dialout" => {
                crate::dialout::process_dialout_answer(
                    self,
                    session,
                    &msg.id,
                    internal.dialout.clone()?,
                );
                None
            }
            other => {
                debug!(session = %session.public_id, kind = %other, "ignoring unsupported internal message");
                None
            }
        }
    }

    async fn process_internal_async(
        self: &Arc<Self>,
        session: &Arc<ClientSession>,
        msg: ClientMessage,
    ) {
        let Some(internal) = msg.internal else { return };
        if let Some(add) = internal
            .addsession
            .filter(|_| internal.kind == "addsession")
        {
            let Some(room) = self.room_for(&session.backend, &add.roomid) else {
                debug!(room = %add.roomid, "ignoring addsession for unknown room");
                return;
            };
            let (sid, public_id, private_id) = self.mint_ids(&session.backend.id);
            let add_failed = |m: String| ServerMessage::error(&msg.id, Error::new("add_failed", m));
            if let Some(options) = &add.options {
                let req = proto::backend::BackendClientRequest::room(proto::backend::RoomRequest {
                    version: proto::backend::BACKEND_VERSION.into(),
                    roomid: room.id.clone(),
                    userid: add.userid.clone(),
                    sessionid: public_id.to_string(),
                    actorid: options.actor_id.clone(),
                    actortype: options.actor_type.clone(),
                    incall: (crate::core::room::FLAG_IN_CALL | crate::core::room::FLAG_WITH_PHONE)
                        as i32,
                    ..Default::default()
                });
                let res: Result<proto::backend::BackendClientResponse, _> = self
                    .backend
                    .perform_json_request(
                        &session.backend_url,
                        &req,
                        Some(self.settings.backend_timeout),
                    )
                    .await;
                self.count_backend("room", res.is_ok());
                match res {
                    Err(e) => {
                        debug!(error = %e, "could not join virtual session at backend");
                        session.send_message(add_failed("Could not join virtual session.".into()));
                        return;
                    }
                    Ok(r) if r.kind == "error" => {
                        let text = r.error.map(|e| e.message).unwrap_or_default();
                        session.send_message(add_failed(text));
                        return;
                    }
                    Ok(_) => {}
                }
            } else {
                let req =
                    proto::backend::BackendClientRequest::session(proto::backend::SessionRequest {
                        version: proto::backend::BACKEND_VERSION.into(),
                        roomid: room.id.clone(),
                        action: "add".into(),
                        sessionid: public_id.to_string(),
                        userid: add.userid.clone(),
                        user: add.user.as_ref().map(|u| u.to_owned()),
                    });
                let res: Result<Value, _> = self
                    .backend
                    .perform_json_request(
                        &session.backend_url,
                        &req,
                        Some(self.settings.backend_timeout),
                    )
                    .await;
                self.count_backend("session", res.is_ok());
                if let Err(e) = res {
                    debug!(error = %e, "could not add virtual session at backend");
                    session.send_message(add_failed("Could not add virtual session.".into()));
                    return;
                }
            }
            if session.is_closed() {
                return;
            }
            let v = VirtualSession::new(session, sid, public_id.clone(), private_id, &add);
            {
                let mut reg = self.reg.lock();
                reg.sessions
                    .insert(public_id.clone(), AnySession::Virtual(v.clone()));
                reg.by_sid.insert(sid, public_id.clone());
                reg.virtual_sessions.insert(
                    virtual_session_key(&session.public_id, &add.sessionid),
                    v.clone(),
                );
            }
            self.metrics.sessions.inc(&[&session.backend.id, "virtual"]);
            self.metrics
                .sessions_total
                .inc(&[&session.backend.id, "virtual"]);
            info!(owner = %session.public_id, session = %public_id, flags = v.flags(), "virtual session added");
            session.add_virtual_session(v.clone());
            v.set_room(Some(room.clone()));
            room.add_session(self, AnySession::Virtual(v), None, |_| {});
        } else if let Some(remove) = internal
            .removesession
            .filter(|_| internal.kind == "removesession")
        {
            if self.room_for(&session.backend, &remove.roomid).is_none() {
                return;
            }
            let key = virtual_session_key(&session.public_id, &remove.sessionid);
            let v = self.reg.lock().virtual_sessions.remove(&key);
            if let Some(v) = v {
                info!(owner = %session.public_id, session = %v.public_id, "virtual session removed");
                session.remove_virtual_session(&v);
                self.close_virtual_session(&v, Some((session.clone(), msg.id.clone())));
            }
        }
    }

    /// Remove a virtual session and tell Nextcloud; errors go to `feedback`.
    fn close_virtual_session(
        &self,
        v: &Arc<VirtualSession>,
        feedback: Option<(Arc<ClientSession>, String)>,
    ) {
        let room = v.room();
        let removed = {
            let mut reg = self.reg.lock();
            reg.virtual_sessions.retain(|_, s| !Arc::ptr_eq(s, v));
            reg.by_sid.remove(&v.sid);
            reg.sessions.remove(&v.public_id).is_some()
        };
        if !removed {
            return;
        }
        self.metrics.sessions.dec(&[&v.backend.id, "virtual"]);
        self.session_gone.notify_waiters();
        v.set_room(None);
        let Some(room) = room else { return };
        room.remove_session(self, &v.public_id);
        let Some(hub) = self.arc() else { return };
        let v = v.clone();
        tokio::spawn(async move {
            let remove_failed = |m: &str| {
                if let Some((s, id)) = &feedback {
                    s.send_message(ServerMessage::error(id, Error::new("remove_failed", m)));
                }
            };
            let timeout = Some(hub.settings.backend_timeout);
            if let Some(options) = &v.options {
                let req = proto::backend::BackendClientRequest::room(proto::backend::RoomRequest {
                    version: proto::backend::BACKEND_VERSION.into(),
                    roomid: room.id.clone(),
                    action: "leave".into(),
                    userid: v.user_id.clone(),
                    sessionid: v.public_id.to_string(),
                    actorid: options.actor_id.clone(),
                    actortype: options.actor_type.clone(),
                    ..Default::default()
                });
                let res: Result<proto::backend::BackendClientResponse, _> = hub
                    .backend
                    .perform_json_request(&v.backend_url, &req, timeout)
                    .await;
                hub.count_backend("room", res.is_ok());
                match res {
                    Err(_) => remove_failed("Could not remove virtual session from backend."),
                    Ok(r) if r.kind == "error" => {
                        remove_failed(&r.error.map(|e| e.message).unwrap_or_default())
                    }
                    Ok(_) => {}
                }
            } else {
                let req =
                    proto::backend::BackendClientRequest::session(proto::backend::SessionRequest {
                        version: proto::backend::BACKEND_VERSION.into(),
                        roomid: room.id.clone(),
                        action: "remove".into(),
                        sessionid: v.public_id.to_string(),
                        ..Default::default()
                    });
                let res: Result<Value, _> = hub
                    .backend
                    .perform_json_request(&v.backend_url, &req, timeout)
                    .await;
                hub.count_backend("session", res.is_ok());
                if res.is_err() {
                    remove_failed("Could not remove virtual session from backend.");
                }
            }
        });
    }

    // ---------------------------------------------------------------------
    // backend API (Nextcloud -> signaling)

    /// Publish a message to every session of a user.
    pub fn publish_to_user(
        &self,
        backend: &crate::core::backends::Backend,
        user_id: &str,
        msg: &Arc<OutMsg>,
    ) {
        let subject = proto::cluster::encoded_subject("user", user_id, backend.subject_suffix());
        let _ = self
            .bus
            .publish(&subject, BusMessage::new(BusPayload::Message(msg.clone())));
    }

    pub fn publish_to_session(&self, public_id: &str, payload: BusPayload) {
        let _ = self.bus.publish(
            &proto::cluster::session_subject(public_id),
            BusMessage::new(payload),
        );
    }

    pub fn publish_room_request(
        &self,
        backend: &crate::core::backends::Backend,
        roomid: &str,
        req: proto::backend::BackendServerRoomRequest,
    ) -> Result<(), crate::bus::BusError> {
        let subject = crate::core::room::backend_room_subject(backend, roomid);
        self.bus
            .publish(&subject, BusMessage::new(BusPayload::Room(Arc::new(req))))
    }

    /// Re-read reloadable settings (SIGHUP).
    pub fn reload(&self, ini: &runtime::config::Ini) {
        self.backends.reload(ini);
        if let Some(mcu) = &self.mcu {
            mcu.reload(ini);
            match crate::mcu::candidates::CandidateFilter::from_config(ini) {
                Ok(f) => *self.candidate_filter.write() = f,
                Err(e) => warn!(error = %e, "keeping the old candidate filter"),
            }
            match crate::geoip::GeoIp::from_config(ini) {
                Ok(g) => *self.geoip.write() = Arc::new(g),
                Err(e) => warn!(error = %e, "keeping the old GeoIP settings"),
            }
        }
        self.metrics
            .backends_current
            .set(self.backends.all().len() as i64);
    }

    /// Every client and internal session.
    /// The internal clients connected here (Nextcloud, bridges): few, and
    /// found without cloning every session.
    pub(crate) fn internal_sessions(&self) -> Vec<Arc<ClientSession>> {
        self.reg
            .lock()
            .sessions
            .values()
            .filter_map(|s| match s {
                AnySession::Client(c) if c.is_internal() => Some(c.clone()),
                _ => None,
            })
            .collect()
    }

    pub(crate) fn client_sessions(&self) -> Vec<Arc<ClientSession>> {
        self.reg
            .lock()
            .sessions
            .values()
            .filter_map(|s| match s {
                AnySession::Client(c) => Some(c.clone()),
                AnySession::Virtual(_) => None,
            })
            .collect()
    }

    /// Release everything on the media server (shutdown).
    pub async fn stop_mcu(&self) {
        if let Some(mcu) = &self.mcu {
            mcu.stop().await;
        }
    }

    /// Say goodbye to every connected client (shutdown).
    pub fn close_all_connections(&self) {
        let sessions: Vec<Arc<ClientSession>> = self
            .reg
            .lock()
            .sessions
            .values()
            .filter_map(|s| match s {
                AnySession::Client(c) => Some(c.clone()),
                AnySession::Virtual(_) => None,
            })
            .collect();
        for s in sessions {
            if let Some(c) = s.conn() {
                c.close();
            }
        }
    }
}

/// Publishing limits of the room's backend, if it sets any (upstream 2.1.0, #1099).
fn room_bandwidth(room: &Room) -> Option<proto::client::RoomBandwidth> {
    let stream = room.backend.max_stream_bitrate.max(0) as u64;
    let screen = room.backend.max_screen_bitrate.max(0) as u64;
    (stream != 0 || screen != 0).then_some(proto::client::RoomBandwidth {
        maxstreambitrate: stream,
        maxscreenbitrate: screen,
    })
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Clustering: the other nodes' session counts (`cluster.nodes`).
impl BusHandler for Hub {
    fn on_bus_message(&self, _subject: &str, msg: &BusMessage) {
        if let BusPayload::Node(n) = &msg.payload {
            if *n.node != *self.node_id {
                let known = self
                    .node_counts
                    .lock()
                    .insert(n.node.clone(), (Instant::now(), n.clone()))
                    .is_some();
                if !known {
                    // A node new to us (just started) missed our earlier
                    // reports: tell it about us now, not an interval later,
                    // so that its cluster questions wait for us at once.
                    *self.counts_sent.lock() = (None, Default::default());
                    self.cluster_counts_tick(Instant::now());
                }
            }
        }
    }
}

/// Methods the `signaling` binary, the media layer and rooms call on the hub
/// by name; each hands over to the layer that does the work.
impl Hub {
    /// A backend room request (`POST /api/v1/room/<id>`).
    pub fn handle_room_request(
        &self,
        backend: &Arc<crate::core::backends::Backend>,
        roomid: &str,
        req: proto::backend::BackendServerRoomRequest,
    ) -> Result<(), crate::backend::api::ApiError> {
        crate::backend::api::handle_room_request(self, backend, roomid, req)
    }

    /// A backend `dialout` request: find a bridge (here or, clustered, on
    /// another node) and ask it to call out.
    pub async fn start_dialout(
        &self,
        backend: &Arc<crate::core::backends::Backend>,
        roomid: &str,
        req: &proto::backend::RoomDialoutRequest,
    ) -> crate::dialout::DialoutAnswer {
        crate::dialout::start_dialout(self, backend, roomid, req).await
    }

    /// Replay protection of signed backend requests, cluster wide.
    pub fn accept_backend_random(&self, backend: &str, random: &str) -> bool {
        crate::cluster::accept_backend_random(self, backend, random)
    }

    pub(crate) fn announce_publisher_replaced(
        &self,
        session: &str,
        stream: crate::mcu::StreamType,
    ) {
        crate::cluster::announce_publisher_replaced(self, session, stream)
    }

    pub(crate) async fn remote_publisher(
        &self,
        publisher: &str,
        stream: crate::mcu::StreamType,
        mcu_timeout: Duration,
    ) -> Option<serde_json::Value> {
        crate::cluster::remote_publisher(self, publisher, stream, mcu_timeout).await
    }
}
