//! The [`Hub`]: one server's registry of sessions and rooms, its stats,
//! drain and reload, and the entry points the `signaling` crate calls.
//! Connection tasks feed it text frames ([`Hub::process_text`], handled in
//! [`crate::handlers`]); it answers through the connections' queues and the
//! bus. All `impl Hub` blocks of the hub's own layers are in this file; the
//! other layers take the hub as a parameter.

use parking_lot::Mutex;
use proto::client::{HelloServerInfo, ServerMessage};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backend::client::{BackendClient, BackendError};
use crate::bus::{Bus, BusMessage, BusPayload, Subscription};
use crate::core::backends::Backends;
use crate::core::conn::{Conn, OutMsg};
use crate::core::room::{room_key, Room};
use crate::core::session::{AnySession, ClientSession};
use crate::core::settings::HubSettings;
use crate::metrics::HubMetrics;
use proto::sessionid::SessionIdCodec;

pub use crate::core::errors::err_invalid_format;
use crate::core::registry::Registry;
pub use crate::core::Pending;

#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error("invalid session keys: {0}")]
    SessionKeys(String),
    #[error("could not create backend client: {0}")]
    Backend(#[from] BackendError),
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
    pub(crate) me: Weak<Hub>,
    pub settings: HubSettings,
    /// This process in the cluster (random; in room presence messages).
    pub node_id: Arc<str>,
    /// Clustering: the other nodes' session counts per backend, and when
    /// each last reported.
    pub(crate) node_counts: Mutex<HashMap<String, (Instant, Arc<proto::cluster::NodeStatus>)>>,
    /// What this node last reported (counts, backends with a dial-out
    /// bridge), and when.
    pub(crate) counts_sent: Mutex<(Option<Instant>, proto::cluster::NodeStatus)>,
    pub(crate) nodes_subscription: Mutex<Option<Subscription>>,
    /// Questions to the other servers (NATS only).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::Cluster>>,
    pub(crate) codec: SessionIdCodec,
    pub bus: Arc<dyn Bus>,
    pub backend: BackendClient,
    pub backends: Arc<Backends>,
    /// Randoms of accepted backend API requests (`crate::backend::replay`).
    pub(crate) replays: crate::backend::replay::ReplayGuard,
    pub metrics: HubMetrics,
    pub(crate) info: Arc<HelloServerInfo>,
    pub(crate) info_internal: Arc<HelloServerInfo>,
    pub(crate) features: Vec<String>,
    /// The `welcome` frame every new connection gets first, serialised once.
    pub(crate) welcome: crate::core::conn::Frame,
    /// When the next combined room ping is due.
    pub(crate) next_ping: Mutex<Instant>,
    pub(crate) dialouts: crate::dialout::Dialouts,
    pub(crate) sid: AtomicU64,
    pub(crate) conn_ids: AtomicU64,
    /// Housekeeping rounds so far.
    pub(crate) ticks: AtomicU64,
    pub(crate) reg: Mutex<Registry>,
    pub(crate) throttler: crate::throttle::Throttler,
    /// Set once by SIGUSR1 (upstream `ScheduleShutdown`), never cleared.
    pub(crate) draining: AtomicBool,
    /// Woken whenever a session goes away, so [`Hub::drained`] can re-check.
    pub(crate) session_gone: tokio::sync::Notify,
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
        let welcome =
            crate::handlers::hello::welcome_frame(&settings.version, &features, &features_internal);
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

    pub(crate) fn arc(&self) -> Option<Arc<Hub>> {
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
    pub(crate) fn has_user_sessions(&self) -> bool {
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

    /// Start the once-a-second housekeeping task (see [`crate::housekeeping`]).
    pub fn spawn_housekeeping(
        self: &Arc<Self>,
        token: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        crate::housekeeping::spawn_housekeeping(self, token)
    }

    /// How many other nodes of the cluster are live (0 on a single server).
    pub fn live_nodes(&self) -> usize {
        crate::cluster::nodes::live_node_status(self).len()
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
        Conn::new(
            id,
            remote_addr,
            user_agent,
            kill,
            self.metrics.direct_writes.clone(),
        )
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

    /// A request to Nextcloud (`kind` labels the metric: auth, room,
    /// session, ping) with a bound on how long it may take.
    pub(crate) async fn backend_request<Req, Resp>(
        &self,
        kind: &str,
        url: &url::Url,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, BackendError>
    where
        Req: serde::Serialize,
        Resp: serde::de::DeserializeOwned,
    {
        let res = self
            .backend
            .perform_json_request(url, request, Some(timeout))
            .await;
        self.metrics.count_backend(kind, res.is_ok());
        res
    }

    pub(crate) fn reply(&self, conn: &Arc<Conn>, msg: ServerMessage) {
        match conn.session() {
            Some(s) => s.send_message(msg),
            None => {
                conn.send(OutMsg::new(msg).frame());
            }
        }
    }

    /// Handle one text frame (see `handlers::dispatch`). Returns
    /// the remaining work when the message needs a backend request; the
    /// caller runs it before the next message so that each client's messages
    /// are processed in order.
    pub fn process_text(self: &Arc<Self>, conn: &Arc<Conn>, text: &str) -> Option<Pending> {
        crate::handlers::dispatch(self, conn, text)
    }

    // ---------------------------------------------------------------------
    // hello / resume / bye

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
            crate::handlers::internal::close_virtual_session(self, &v, None);
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
                .backend_request("room", &url, &req, Duration::from_secs(60))
                .await;
            if let Err(e) = res {
                debug!(error = %e, "could not notify backend about room leave");
            }
        });
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
                        crate::handlers::room::send_room_reply(&c, "", None);
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

    // ---------------------------------------------------------------------
    // transient data

    // ---------------------------------------------------------------------
    // internal clients

    // ---------------------------------------------------------------------
    // backend API (Nextcloud -> signaling)

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

    /// Another server chose this one for a dial-out: the cluster layer
    /// answers its question through the hub, so it needs no import of the
    /// dial-out layer above it.
    pub(crate) async fn dialout_for_cluster(
        &self,
        q: &proto::cluster::DialoutRequest,
    ) -> Option<proto::cluster::DialoutAnswer> {
        crate::dialout::dialout_for_cluster(self, q).await
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

/// What rooms and sessions ask of the hub (see [`crate::core::host`]).
impl crate::core::host::Host for Hub {
    fn bus(&self) -> &dyn Bus {
        &*self.bus
    }

    fn presence_interval(&self) -> Option<Duration> {
        self.settings.presence_interval
    }

    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn session_by_public_id(&self, id: &str) -> Option<AnySession> {
        Hub::session_by_public_id(self, id)
    }

    fn session_for_room_session(&self, room_session_id: &str) -> Option<Arc<str>> {
        Hub::session_for_room_session(self, room_session_id)
    }

    fn remove_room_session(&self, public_id: &Arc<str>) {
        Hub::remove_room_session(self, public_id)
    }

    fn close_session(&self, session: &Arc<ClientSession>) {
        Hub::close_session(self, session)
    }

    fn notify_backend_leave(
        &self,
        session: &ClientSession,
        room_id: &str,
        room_session_id: String,
    ) {
        Hub::notify_backend_leave(self, session, room_id, room_session_id)
    }

    fn remove_room(&self, room: &Room) {
        Hub::remove_room(self, room)
    }

    fn room_deleted(&self, room: &Room, tell_members: bool) {
        Hub::room_deleted(self, room, tell_members)
    }

    fn room_sessions_metric(&self) -> &runtime::metrics::GaugeVec {
        &self.metrics.room_sessions
    }

    fn permissions_changed(&self, session: &ClientSession) {
        crate::mcu::objects::check_publisher_permissions(self, session)
    }
}
