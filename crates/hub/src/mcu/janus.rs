//! [`JanusMcu`]: the MCU on one Janus gateway (`[mcu] type = janus`).
//!
//! Every published stream gets its own VideoRoom with one publisher (feed 1
//! for video, 2 for screen), as upstream does; subscribers join that room.
//!
//! # Tasks
//!
//! - A supervisor task owns the [`Gateway`]: it connects (retrying with
//!   backoff, so the server starts while Janus is down), creates one Janus
//!   session per connection epoch and publishes it on a watch channel.
//! - Each publisher and each subscriber is one task that owns its Janus
//!   handle. It handles commands from the hub (offers, answers, candidates,
//!   close) and the handle's events one at a time, so the answer to an offer
//!   always reaches the client before the candidates Janus trickles after it.
//!
//! # Janus restarts (better than upstream's JAN-03)
//!
//! When the connection breaks, every handle ends with
//! [`HandleEvent::Gone`]. Publishers and subscribers are *not* closed: they
//! wait for the next epoch's session, then
//! 1. a publisher creates a new room, joins it again and tells its session
//!    ([`McuListener::on_publisher_reset`]), which asks the client for a new
//!    offer; the publisher stays in the registry the whole time, so
//!    subscribers keep finding it;
//! 2. a subscriber attaches a new handle and joins the publisher's new room
//!    as soon as that publisher sends media again, then hands the fresh offer
//!    (with its new sid) to its session ([`McuListener::on_update_offer`]).
//!
//! A subscriber not rebuilt within [`super::STALL_NOTICE`] tells its
//! session ([`McuListener::subscriber_stalled`]), which tells the client the
//! way Talk acts on; it keeps waiting.
//! A subscriber that cannot be rebuilt within [`REBUILD_WAIT`], or whose
//! publisher ends or is replaced (the client offered again with a new sid),
//! ends with [`McuListener::subscriber_lost`]: its session follows the
//! publisher from there.

use parking_lot::Mutex;
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use ::janus::videoroom::{self, error_codes, CreateRoom, RoomId, StreamSelection};
use ::janus::{
    ApiGeneration, ConnectionState, Error as JanusError, Gateway, GatewayConfig, GoneReason,
    Handle, HandleEvent, HandleEvents, IceCandidate, Jsep, Session,
};

use super::metrics::McuMetrics;
use super::{
    BoxFuture, ClientInfo, CodecPrefs, Mcu, McuClient, McuError, McuListener, McuMessage,
    MediaTypes, PublisherParams, Responder, StreamType, SubscriberParams,
};

/// Upstream's default caps, bits/s.
pub const DEFAULT_MAX_STREAM_BITRATE: u64 = 1024 * 1024;
pub const DEFAULT_MAX_SCREEN_BITRATE: u64 = 2048 * 1024;
/// `[mcu] timeout` default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a subscriber waits for its publisher to come back after Janus
/// restarted (the publishing client has to send a new offer first).
pub const REBUILD_WAIT: Duration = Duration::from_secs(60);
/// Start-up connection attempts back off from 1 s to this.
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(16);
/// Commands queued per publisher/subscriber before the hub waits.
const COMMAND_QUEUE: usize = 64;
/// How often a subscriber retries joining another server's publisher that
/// is not sending yet.
const REMOTE_RETRY: Duration = Duration::from_millis(250);

/// What `[mcu]` says about a Janus MCU.
#[derive(Clone, Debug)]
pub struct JanusSettings {
    pub url: String,
    pub max_stream_bitrate: u64,
    pub max_screen_bitrate: u64,
    pub timeout: Duration,
    /// How long a new publisher or subscriber waits for a Janus that is
    /// away ([`super::DOWN_HOLD`]; zero in the proxy, whose signaling
    /// servers give up on a request after `proxytimeout`).
    pub down_hold: Duration,
    pub gateway: GatewayConfig,
}

impl JanusSettings {
    pub fn new(url: impl Into<String>) -> JanusSettings {
        JanusSettings {
            url: url.into(),
            max_stream_bitrate: DEFAULT_MAX_STREAM_BITRATE,
            max_screen_bitrate: DEFAULT_MAX_SCREEN_BITRATE,
            timeout: DEFAULT_TIMEOUT,
            down_hold: super::DOWN_HOLD,
            gateway: GatewayConfig::default(),
        }
    }

    /// `[mcu] url`, `maxstreambitrate`, `maxscreenbitrate` and `timeout`
    /// (the same keys in `server.conf` and `proxy.conf`). Errors name the key.
    pub fn from_config(
        ini: &runtime::config::Ini,
    ) -> Result<JanusSettings, (&'static str, String)> {
        fn positive(
            ini: &runtime::config::Ini,
            key: &'static str,
            default: u64,
        ) -> Result<u64, (&'static str, String)> {
            let v = ini
                .get_int("mcu", key, 0)
                .map_err(|e| (key, e.to_string()))?;
            if v < 0 {
                return Err((key, format!("{v} is negative")));
            }
            Ok(if v == 0 { default } else { v as u64 })
        }
        let url = ini.get_string("mcu", "url", "");
        let url = url.split_whitespace().next().unwrap_or_default().to_owned();
        if !(url.starts_with("ws://") || url.starts_with("wss://")) {
            return Err((
                "url",
                format!("{url:?} is not a ws:// or wss:// URL of a Janus gateway"),
            ));
        }
        let mut s = JanusSettings::new(url);
        s.max_stream_bitrate = positive(ini, "maxstreambitrate", DEFAULT_MAX_STREAM_BITRATE)?;
        s.max_screen_bitrate = positive(ini, "maxscreenbitrate", DEFAULT_MAX_SCREEN_BITRATE)?;
        s.timeout = Duration::from_secs(positive(ini, "timeout", DEFAULT_TIMEOUT.as_secs())?);
        s.gateway.request_timeout = s.timeout;
        Ok(s)
    }

    /// The cap of a stream type, bits/s.
    pub fn max_bitrate(&self, stream: StreamType) -> u64 {
        match stream {
            StreamType::Video => self.max_stream_bitrate,
            StreamType::Screen => self.max_screen_bitrate,
        }
    }
}

/// The Janus session of the current connection.
#[derive(Clone)]
struct Live {
    session: Session,
    generation: ApiGeneration,
    since: SystemTime,
    version: String,
    /// `add_remote_publisher` and `publish_remotely` exist (Janus >= 1.1).
    remote_publishers: bool,
}

type PubKey = (Arc<str>, StreamType);

#[derive(Default)]
struct Registry {
    publishers: HashMap<PubKey, Arc<ClientObj>>,
    subscribers: HashMap<u64, Arc<ClientObj>>,
}

struct Inner {
    settings: JanusSettings,
    metrics: McuMetrics,
    /// `None` while Janus is unreachable.
    live: watch::Sender<Option<Live>>,
    // Plain mutex: short map operations only, never held across `.await`.
    reg: Mutex<Registry>,
    /// Bumped whenever a publisher appears, starts sending, is rebuilt or
    /// goes away, so that waiting subscribers look again.
    changed: watch::Sender<u64>,
    next_id: AtomicU64,
    cancel: CancellationToken,
}

impl Inner {
    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn live(&self) -> Result<Live, McuError> {
        self.live.borrow().clone().ok_or(McuError::NotConnected)
    }

    /// Waits (until `deadline`) for a session of an epoch other than `not`.
    async fn wait_live(&self, not: Option<u64>, deadline: Instant) -> Result<Live, McuError> {
        let mut rx = self.live.subscribe();
        let wait = async {
            rx.wait_for(|l| {
                l.as_ref()
                    .is_some_and(|l| Some(l.session.epoch()) != not && l.session.gone().is_none())
            })
            .await
            .map(|live| live.clone())
        };
        match tokio::time::timeout_at(deadline, wait).await {
            Ok(Ok(live)) => live.ok_or(McuError::NotConnected),
            Ok(Err(_)) => Err(McuError::Closed),
            Err(_) => Err(McuError::Timeout("Janus connection")),
        }
    }
}

/// The MCU on one Janus gateway.
pub struct JanusMcu {
    inner: Arc<Inner>,
}

impl JanusMcu {
    /// Starts connecting in the background; until Janus answers, MCU
    /// requests fail with "not connected" (clients get `processing_failed`
    /// or `client_not_found`).
    pub fn start(settings: JanusSettings, metrics: McuMetrics) -> Arc<JanusMcu> {
        let (live, _) = watch::channel(None);
        let (changed, _) = watch::channel(0);
        let inner = Arc::new(Inner {
            settings,
            metrics,
            live,
            reg: Mutex::new(Registry::default()),
            changed,
            next_id: AtomicU64::new(0),
            cancel: CancellationToken::new(),
        });
        tokio::spawn(supervise(inner.clone()));
        Arc::new(JanusMcu { inner })
    }

    /// Resolves once connected to Janus (or after `timeout`): for tests and
    /// `signaling check`.
    pub async fn wait_connected(&self, timeout: Duration) -> bool {
        self.inner
            .wait_live(None, Instant::now() + timeout)
            .await
            .is_ok()
    }

    pub fn is_connected(&self) -> bool {
        self.inner.live.borrow().is_some()
    }
}

/// Owns the gateway: connects, keeps one session per epoch, publishes it.
async fn supervise(inner: Arc<Inner>) {
    let url = inner.settings.url.clone();
    let mut delay = Duration::from_secs(1);
    let gateway = loop {
        let attempt = Gateway::connect_with(&url, inner.settings.gateway.clone());
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            res = attempt => match res {
                Ok(g) => break g,
                Err(e) => {
                    warn!(%url, error = %e, retry_in = ?delay, "cannot connect to Janus");
                }
            }
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(CONNECT_BACKOFF_MAX);
    };
    let mut state = gateway.state();
    let mut current: Option<u64> = None;
    loop {
        let st = state.borrow_and_update().clone();
        match st {
            ConnectionState::Connected { epoch, info } if current != Some(epoch) => {
                match info.check_mcu_requirements() {
                    Err(e) => warn!(%url, error = %e, "Janus is not usable as MCU"),
                    Ok(w) if w.full_trickle_disabled => {
                        warn!(%url, "full-trickle is disabled in Janus, call set-up will be slow")
                    }
                    Ok(_) => {}
                }
                match gateway.create_session().await {
                    Ok(session) => {
                        info!(%url, epoch, version = %info.version_string, session = session.id(), "connected to Janus");
                        if current.is_some() {
                            inner.metrics.janus_reconnects.inc();
                        }
                        current = Some(epoch);
                        inner.metrics.janus_connected.set(1);
                        inner.live.send_replace(Some(Live {
                            session,
                            generation: info.api_generation(),
                            since: SystemTime::now(),
                            version: info.version_string.clone(),
                            remote_publishers: info.has_remote_publishers(),
                        }));
                    }
                    Err(e) => {
                        warn!(%url, error = %e, "cannot create Janus session, retrying");
                        tokio::select! {
                            _ = inner.cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            ConnectionState::Connected { .. } => {}
            ConnectionState::Disconnected {
                reason, retry_in, ..
            } => {
                if inner.live.borrow().is_some() {
                    warn!(%url, %reason, ?retry_in, "lost the connection to Janus");
                }
                inner.metrics.janus_connected.set(0);
                inner.live.send_replace(None);
            }
            ConnectionState::Closed => break,
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            r = state.changed() => if r.is_err() { break },
        }
    }
    inner.metrics.janus_connected.set(0);
    inner.live.send_replace(None);
    gateway.close().await;
}

enum Cmd {
    Message(McuMessage, Responder),
    Close(oneshot::Sender<()>),
    /// Subscribers: their publisher ended or was replaced; they close and
    /// their session may follow the publisher.
    PublisherGone,
    /// Remote streams: start or stop sending a publisher's media to a
    /// remote publisher on another Janus.
    Remote(RemoteOp, oneshot::Sender<Result<(), McuError>>),
}

/// What [`Cmd::Remote`] asks of a publisher.
#[derive(Debug)]
enum RemoteOp {
    Publish {
        remote_id: String,
        host: String,
        port: u16,
        rtcp_port: u16,
    },
    Unpublish {
        remote_id: String,
    },
}

/// A publisher or subscriber as the hub holds it; the task does the work.
struct ClientObj {
    /// The sid is the client's for publishers, the Janus handle id for
    /// subscribers.
    info: ClientInfo,
    /// Publishers: the room of the current epoch (0 while there is none)
    /// and whether Janus receives media in it.
    room: AtomicU64,
    sending: AtomicBool,
    /// Publishers: their streams in Janus's remote-publisher form, known
    /// once the first offer was answered.
    streams: Mutex<Option<Value>>,
    cmd: mpsc::Sender<Cmd>,
    timeout: Duration,
}

impl McuClient for ClientObj {
    fn info(&self) -> &ClientInfo {
        &self.info
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let (tx, rx) = oneshot::channel();
            if self.cmd.send(Cmd::Close(tx)).await.is_ok() {
                // Bounded: destroying a room and detaching are two requests.
                let _ = tokio::time::timeout(self.timeout * 2, rx).await;
            }
        })
    }
    fn send_message(&self, msg: McuMessage, reply: Responder) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Err(mpsc::error::SendError(Cmd::Message(_, reply))) =
                self.cmd.send(Cmd::Message(msg, reply)).await
            {
                reply(Err(McuError::Closed));
            }
        })
    }
}

impl Mcu for JanusMcu {
    fn new_publisher(
        &self,
        listener: Arc<dyn McuListener>,
        params: PublisherParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let cap = inner.settings.max_bitrate(params.stream);
            let bitrate = super::cap_bitrate(params.bitrate, cap);
            // Janus away (restarting): hold the offer a moment.
            let live = inner
                .wait_live(None, Instant::now() + inner.settings.down_hold)
                .await
                .map_err(|_| McuError::NotConnected)?;
            let setup = PublisherSetup {
                id: params.id.clone(),
                stream: params.stream,
                bitrate,
                codecs: params.codecs.clone(),
            };
            let conn = tokio::time::timeout(inner.settings.timeout, setup.run(&live))
                .await
                .map_err(|_| McuError::Timeout("publisher set-up"))??;
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let obj = Arc::new(ClientObj {
                info: ClientInfo::new(
                    inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                    params.stream,
                    params.sid.clone(),
                    None,
                    params.media,
                ),
                room: AtomicU64::new(conn.room),
                sending: AtomicBool::new(false),
                streams: Mutex::new(None),
                cmd: tx,
                timeout: inner.settings.timeout,
            });
            let key = (params.id.clone(), params.stream);
            let old = inner.reg.lock().publishers.insert(key.clone(), obj.clone());
            if let Some(old) = old {
                // The session replaced its publisher; the old one goes.
                let _ = old.cmd.try_send(Cmd::Close(oneshot::channel().0));
            }
            inner.bump();
            let labels = [params.stream.as_str()];
            inner.metrics.publishers.inc(&labels);
            inner.metrics.publishers_total.inc(&labels);
            info!(session = %params.id, stream = params.stream.as_str(), room = conn.room, handle = conn.handle.id(), bitrate, "publisher created");
            let task = PublisherTask {
                inner: inner.clone(),
                me: obj.clone(),
                listener: listener.clone(),
                key,
                setup,
                receiving: [false; 2],
            };
            tokio::spawn(task.run(conn, rx));
            Ok(obj as Arc<dyn McuClient>)
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
                location,
                ..
            } = params;
            let inner = &self.inner;
            let deadline = Instant::now() + inner.settings.timeout;
            let key = (publisher.clone(), stream);
            // Clustering: another signaling server's publisher, on this
            // same Janus (a different Janus cannot be reached).
            let known_room: RoomId = match &location {
                Some(loc) => {
                    if loc.get("janus").and_then(Value::as_str) != Some(inner.settings.url.as_str())
                    {
                        return Err(McuError::NotFound);
                    }
                    loc.get("room")
                        .and_then(Value::as_u64)
                        .ok_or(McuError::NotFound)?
                }
                None => 0,
            };
            // Wait for the publisher to exist (it may still be setting up).
            let mut changed = inner.changed.subscribe();
            let mut counted = false;
            if known_room == 0 {
                loop {
                    changed.borrow_and_update();
                    if inner.reg.lock().publishers.contains_key(&key) {
                        break;
                    }
                    if !counted {
                        counted = true;
                        inner.metrics.no_publisher_total.inc(&[stream.as_str()]);
                    }
                    match tokio::time::timeout_at(deadline, changed.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(McuError::Closed),
                        Err(_) => return Err(McuError::Timeout("publisher")),
                    }
                }
            }
            // Janus away (restarting): wait for it within the timeout.
            let live = inner
                .wait_live(
                    None,
                    deadline.min(Instant::now() + inner.settings.down_hold),
                )
                .await
                .map_err(|_| McuError::NotConnected)?;
            let (handle, events) =
                tokio::time::timeout_at(deadline, live.session.attach(videoroom::PLUGIN))
                    .await
                    .map_err(|_| McuError::Timeout("attach"))??;
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let obj = Arc::new(ClientObj {
                info: ClientInfo::new(
                    inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                    stream,
                    handle.id().to_string(),
                    Some(publisher.clone()),
                    MediaTypes::default(),
                ),
                room: AtomicU64::new(0),
                sending: AtomicBool::new(false),
                streams: Mutex::new(None),
                cmd: tx,
                timeout: inner.settings.timeout,
            });
            inner
                .reg
                .lock()
                .subscribers
                .insert(obj.info.id, obj.clone());
            let labels = [stream.as_str()];
            inner.metrics.subscribers.inc(&labels);
            inner.metrics.subscribers_total.inc(&labels);
            debug!(publisher = %publisher, stream = stream.as_str(), handle = handle.id(), "subscriber created");
            let task = SubscriberTask {
                inner: inner.clone(),
                me: obj.clone(),
                known_room,
                listener: listener.clone(),
                key,
                room: 0,
                joined: false,
                generation: live.generation,
            };
            tokio::spawn(task.run(SubConn { handle, events }, rx));
            Ok(obj as Arc<dyn McuClient>)
        })
    }

    fn publisher_location(
        &self,
        publisher: &str,
        stream: StreamType,
    ) -> BoxFuture<'_, Option<Value>> {
        let key: PubKey = (Arc::from(publisher), stream);
        Box::pin(async move {
            let inner = &self.inner;
            let deadline = Instant::now() + inner.settings.timeout;
            let mut changed = inner.changed.subscribe();
            loop {
                changed.borrow_and_update();
                let room = inner
                    .reg
                    .lock()
                    .publishers
                    .get(&key)
                    .map(|p| p.room.load(Ordering::Acquire))
                    .unwrap_or(0);
                if room != 0 {
                    return Some(json!({"janus": inner.settings.url, "room": room}));
                }
                tokio::time::timeout_at(deadline, changed.changed())
                    .await
                    .ok()?
                    .ok()?;
            }
        })
    }

    fn stats(&self) -> Value {
        let inner = &self.inner;
        let reg = inner.reg.lock();
        let mut out = Map::new();
        out.insert("url".into(), inner.settings.url.clone().into());
        let live = inner.live.borrow().clone();
        out.insert("connected".into(), live.is_some().into());
        out.insert("publishers".into(), reg.publishers.len().into());
        out.insert(
            "clients".into(),
            (reg.publishers.len() + reg.subscribers.len()).into(),
        );
        if let Some(live) = live {
            let nanos = live
                .since
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_nanos() as i64)
                .unwrap_or(0);
            out.insert("uptime".into(), crate::bus::rfc3339_nanos(nanos).into());
            out.insert("version".into(), live.version.into());
        }
        Value::Object(out)
    }

    fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<Arc<ClientObj>> = {
                let reg = self.inner.reg.lock();
                reg.subscribers
                    .values()
                    .chain(reg.publishers.values())
                    .cloned()
                    .collect()
            };
            for c in all {
                c.close().await;
            }
            self.inner.cancel.cancel();
        })
    }
}

/// A publisher in this Janus fed by another Janus (remote streams: a proxy
/// serving subscribers of a publisher hosted elsewhere). Subscribers find
/// it under its id like a local publisher. Ends with [`close`](Self::close)
/// or when Janus goes away; its subscribers are closed then.
pub struct RemotePublisher {
    obj: Arc<ClientObj>,
    pub endpoint: videoroom::RemoteEndpoint,
}

impl RemotePublisher {
    pub async fn close(&self) {
        self.obj.close().await;
    }

    /// Whether it ended (closed, or Janus went away).
    pub fn is_closed(&self) -> bool {
        self.obj.cmd.is_closed()
    }
}

impl JanusMcu {
    /// Whether the connected Janus can send and receive remote streams.
    pub fn supports_remote_streams(&self) -> bool {
        self.inner
            .live
            .borrow()
            .as_ref()
            .is_some_and(|l| l.remote_publishers)
    }

    fn publisher(&self, id: &str, stream: StreamType) -> Result<Arc<ClientObj>, McuError> {
        self.inner
            .reg
            .lock()
            .publishers
            .get(&(Arc::from(id), stream))
            .cloned()
            .ok_or(McuError::NotFound)
    }

    /// The streams of local publisher `id` in the form
    /// [`add_remote_publisher`](Self::add_remote_publisher) takes, waiting
    /// (up to the MCU timeout) for its first offer.
    pub async fn publisher_streams(&self, id: &str, stream: StreamType) -> Result<Value, McuError> {
        let deadline = Instant::now() + self.inner.settings.timeout;
        let mut changed = self.inner.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Some(streams) = self.publisher(id, stream)?.streams.lock().clone() {
                return Ok(streams);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(McuError::Closed),
                Err(_) => return Err(McuError::Timeout("publisher offer")),
            }
        }
    }

    async fn remote_op(&self, id: &str, stream: StreamType, op: RemoteOp) -> Result<(), McuError> {
        let p = self.publisher(id, stream)?;
        let (tx, rx) = oneshot::channel();
        p.cmd
            .send(Cmd::Remote(op, tx))
            .await
            .map_err(|_| McuError::Closed)?;
        rx.await.map_err(|_| McuError::Closed)?
    }

    /// Start sending local publisher `id`'s media to a remote publisher at
    /// `host`:`port` (another Janus), under `remote_id`.
    pub async fn publish_remotely(
        &self,
        id: &str,
        stream: StreamType,
        remote_id: String,
        host: String,
        port: u16,
        rtcp_port: u16,
    ) -> Result<(), McuError> {
        let op = RemoteOp::Publish {
            remote_id,
            host,
            port,
            rtcp_port,
        };
        self.remote_op(id, stream, op).await
    }

    pub async fn unpublish_remotely(
        &self,
        id: &str,
        stream: StreamType,
        remote_id: String,
    ) -> Result<(), McuError> {
        self.remote_op(id, stream, RemoteOp::Unpublish { remote_id })
            .await
    }

    /// A publisher `id` in a room of its own in this Janus, fed with RTP by
    /// another Janus: `streams` as [`publisher_streams`](Self::publisher_streams)
    /// returned them there.
    pub async fn add_remote_publisher(
        &self,
        id: Arc<str>,
        stream: StreamType,
        streams: Value,
        bitrate: u64,
    ) -> Result<RemotePublisher, McuError> {
        let inner = &self.inner;
        let live = inner.live()?;
        if !live.remote_publishers {
            return Err(McuError::Unsupported("remote streams (Janus < 1.1)".into()));
        }
        let timeout = inner.settings.timeout;
        let (handle, events) =
            bounded(timeout, "attach", live.session.attach(videoroom::PLUGIN)).await?;
        let mut create =
            CreateRoom::for_stream(format!("{id}|{}|remote", stream.as_str()), bitrate);
        let codecs = |kind: &str| {
            let list: Vec<&str> = streams
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|s| s["type"] == kind)
                .filter_map(|s| s["codec"].as_str())
                .collect();
            (!list.is_empty()).then(|| list.join(","))
        };
        create.audiocodec = codecs("audio");
        create.videocodec = codecs("video");
        let made = async {
            let room = videoroom::create_room(&handle, &create).await?;
            match videoroom::add_remote_publisher(&handle, room, stream.feed_id(), &streams).await {
                Ok(endpoint) => Ok((room, endpoint)),
                Err(e) => {
                    let _ = videoroom::destroy_room(&handle, room).await;
                    Err(e)
                }
            }
        };
        let (room, endpoint) = match bounded(timeout, "add_remote_publisher", made).await {
            Ok(r) => r,
            Err(e) => {
                let _ = bounded(timeout, "detach", handle.detach()).await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let obj = Arc::new(ClientObj {
            info: ClientInfo::new(
                inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                stream,
                String::new(),
                None,
                MediaTypes::default(),
            ),
            room: AtomicU64::new(room),
            // Subscribers may join at once: Janus announces the remote
            // publisher before any RTP arrives.
            sending: AtomicBool::new(true),
            streams: Mutex::new(Some(streams)),
            cmd: tx,
            timeout,
        });
        let key = (id.clone(), stream);
        let old = inner.reg.lock().publishers.insert(key.clone(), obj.clone());
        if let Some(old) = old {
            let _ = old.cmd.try_send(Cmd::Close(oneshot::channel().0));
        }
        inner.bump();
        info!(publisher = %id, stream = stream.as_str(), room, port = endpoint.port, "remote publisher created");
        let task = RemotePublisherTask {
            inner: inner.clone(),
            me: obj.clone(),
            key,
        };
        tokio::spawn(task.run(
            PubConn {
                handle,
                events,
                room,
            },
            rx,
        ));
        Ok(RemotePublisher { obj, endpoint })
    }
}

struct RemotePublisherTask {
    inner: Arc<Inner>,
    me: Arc<ClientObj>,
    key: PubKey,
}

impl RemotePublisherTask {
    async fn run(self, mut conn: PubConn, mut rx: mpsc::Receiver<Cmd>) {
        let mut done = None;
        let mut lost = false;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Close(tx)) => { done = Some(tx); break }
                    Some(Cmd::PublisherGone) => {}
                    Some(Cmd::Message(_, reply)) => reply(Err(McuError::Unsupported("messages to a remote publisher".into()))),
                    Some(Cmd::Remote(_, reply)) => {
                        let _ = reply.send(Err(McuError::Unsupported("remote publishing of a remote publisher".into())));
                    }
                },
                ev = conn.events.recv() => match ev {
                    None | Some(HandleEvent::Gone(_)) => { lost = true; break }
                    Some(HandleEvent::Detached) => break,
                    Some(HandleEvent::Event(e)) if matches!(videoroom::VideoRoomEvent::parse(&e), Some(videoroom::VideoRoomEvent::Destroyed)) => break,
                    Some(_) => {}
                },
            }
        }
        rx.close();
        if !lost {
            let timeout = self.inner.settings.timeout;
            let feed = self.key.1.feed_id();
            let _ = bounded(
                timeout,
                "remove_remote_publisher",
                videoroom::remove_remote_publisher(&conn.handle, conn.room, feed),
            )
            .await;
            let _ = bounded(
                timeout,
                "destroy",
                videoroom::destroy_room(&conn.handle, conn.room),
            )
            .await;
            let _ = bounded(timeout, "detach", conn.handle.detach()).await;
        }
        release_publisher(&self.inner, &self.key, &self.me);
        info!(publisher = %self.key.0, stream = self.key.1.as_str(), "remote publisher closed");
        if let Some(tx) = done {
            let _ = tx.send(());
        }
    }
}

/// A publisher ended: out of the registry (unless replaced) and its
/// subscribers closed, since Janus does not tell them.
fn release_publisher(inner: &Inner, key: &PubKey, me: &Arc<ClientObj>) {
    let subscribers: Vec<Arc<ClientObj>> = {
        let mut reg = inner.reg.lock();
        if reg.publishers.get(key).is_some_and(|p| Arc::ptr_eq(p, me)) {
            reg.publishers.remove(key);
        }
        reg.subscribers
            .values()
            .filter(|s| s.info.stream == key.1 && s.info.publisher.as_deref() == Some(&*key.0))
            .cloned()
            .collect()
    };
    me.room.store(0, Ordering::Release);
    inner.bump();
    for s in subscribers {
        let _ = s.cmd.try_send(Cmd::PublisherGone);
    }
}

/// What creating (or re-creating) a publisher's room needs.
#[derive(Clone)]
struct PublisherSetup {
    id: Arc<str>,
    stream: StreamType,
    bitrate: u64,
    codecs: CodecPrefs,
}

struct PubConn {
    handle: Handle,
    events: HandleEvents,
    room: RoomId,
}

impl PublisherSetup {
    /// Attach, create the stream's room, join it as its publisher.
    async fn run(&self, live: &Live) -> Result<PubConn, McuError> {
        let (handle, events) = live.session.attach(videoroom::PLUGIN).await?;
        let mut create = CreateRoom::for_stream(
            format!("{}|{}", self.id, self.stream.as_str()),
            self.bitrate,
        );
        create.audiocodec = self.codecs.audio.clone();
        create.videocodec = self.codecs.video.clone();
        create.vp9_profile = self.codecs.vp9_profile.clone();
        create.h264_profile = self.codecs.h264_profile.clone();
        let room = videoroom::create_room(&handle, &create).await?;
        if let Err(e) = videoroom::join_publisher(&handle, room, self.stream.feed_id(), None).await
        {
            let _ = videoroom::destroy_room(&handle, room).await;
            return Err(e.into());
        }
        Ok(PubConn {
            handle,
            events,
            room,
        })
    }
}

/// Waits for the next event of the current handle; never resolves without one.
async fn next_event(events: Option<&mut HandleEvents>) -> Option<HandleEvent> {
    match events {
        Some(e) => e.recv().await,
        None => std::future::pending().await,
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

async fn poll_opt<T>(f: &mut Option<BoxFuture<'static, T>>) -> T {
    match f {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// What a handle event means for the object.
enum Flow {
    Continue,
    /// The connection to Janus is gone: rebuild on the next epoch.
    Lost,
    /// Janus ended it (hangup, detach): close.
    Close,
    /// Subscribers: the publisher's room or feed went away.
    PublisherGone,
}

fn gone_flow(reason: GoneReason) -> Flow {
    match reason {
        GoneReason::ConnectionLost | GoneReason::SessionTimedOut | GoneReason::SessionNotFound => {
            Flow::Lost
        }
        GoneReason::SessionDestroyed | GoneReason::Closed => Flow::Close,
    }
}

fn candidate_json(c: &IceCandidate) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn jsep_json(j: Jsep) -> Value {
    serde_json::to_value(j).unwrap_or(Value::Null)
}

fn jsep_from_payload(payload: &Map<String, Value>, kind: &str) -> Result<Jsep, McuError> {
    let sdp = payload
        .get("sdp")
        .and_then(Value::as_str)
        .ok_or_else(|| McuError::InvalidPayload("payload does not contain an sdp".into()))?;
    Ok(Jsep {
        kind: kind.to_owned(),
        sdp: sdp.to_owned(),
        extra: Map::new(),
    })
}

fn candidate_from_payload(payload: &Map<String, Value>) -> Result<IceCandidate, McuError> {
    let c = payload
        .get("candidate")
        .ok_or_else(|| McuError::InvalidPayload("payload does not contain a candidate".into()))?;
    serde_json::from_value(c.clone())
        .map_err(|e| McuError::InvalidPayload(format!("invalid candidate: {e}")))
}

fn check_sid(msg: &McuMessage, me: &ClientObj) -> Result<(), McuError> {
    let expected = me.sid();
    if msg.sid.is_empty() || msg.sid == expected {
        Ok(())
    } else {
        Err(McuError::SidMismatch {
            got: msg.sid.clone(),
            expected,
        })
    }
}

/// Bounds one Janus operation by the MCU timeout.
async fn bounded<T>(
    timeout: Duration,
    what: &'static str,
    f: impl Future<Output = Result<T, JanusError>>,
) -> Result<T, McuError> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map_err(McuError::from),
        Err(_) => Err(McuError::Timeout(what)),
    }
}

/// A publisher's client messages held while Janus is away: the latest
/// offer and what came after it.
#[derive(Default)]
struct Held {
    msgs: Vec<(McuMessage, Responder)>,
    /// When they fail if Janus is not back.
    until: Option<Instant>,
}

impl Held {
    fn push(&mut self, msg: McuMessage, reply: Responder, hold: Duration) {
        if msg.kind == "offer" {
            // A newer offer: the older one and its candidates are moot (no
            // answer goes out for them).
            for (_, old) in self.msgs.drain(..) {
                old(Ok(None));
            }
        }
        self.msgs.push((msg, reply));
        self.until.get_or_insert_with(|| Instant::now() + hold);
    }

    fn has_offer(&self) -> bool {
        self.msgs.iter().any(|(m, _)| m.kind == "offer")
    }

    /// What to apply now that the publisher is back: from the latest offer
    /// on (candidates without one belong to a peer Janus never saw).
    fn take(&mut self) -> Vec<(McuMessage, Responder)> {
        self.until = None;
        let msgs = std::mem::take(&mut self.msgs);
        if msgs.iter().any(|(m, _)| m.kind == "offer") {
            return msgs;
        }
        for (_, reply) in msgs {
            reply(Ok(None));
        }
        Vec::new()
    }

    fn fail(&mut self) {
        self.until = None;
        for (_, reply) in self.msgs.drain(..) {
            reply(Err(McuError::NotConnected));
        }
    }
}

struct PublisherTask {
    inner: Arc<Inner>,
    me: Arc<ClientObj>,
    /// Strong: the listener itself only holds a weak reference to its
    /// session, so there is no cycle.
    listener: Arc<dyn McuListener>,
    key: PubKey,
    setup: PublisherSetup,
    /// Whether Janus receives audio / video: drives the stream gauges.
    receiving: [bool; 2],
}

impl PublisherTask {
    async fn run(mut self, conn: PubConn, mut rx: mpsc::Receiver<Cmd>) {
        let mut conn = Some(conn);
        let mut epoch = conn.as_ref().map(|c| c.handle.session().epoch());
        let mut rebuild: Option<BoxFuture<'static, Result<PubConn, McuError>>> = None;
        let mut done: Option<oneshot::Sender<()>> = None;
        // The client's messages while the publisher is being rebuilt (Janus
        // away), answered once it is back or failed after the hold.
        let mut held = Held::default();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Close(tx)) => { done = Some(tx); break }
                    Some(Cmd::PublisherGone) => {}
                    Some(Cmd::Message(msg, reply)) => match &conn {
                        Some(c) => reply(self.handle_message(c, msg).await),
                        None if rebuild.is_some() => held.push(msg, reply, self.inner.settings.down_hold),
                        None => reply(Err(McuError::NotConnected)),
                    },
                    Some(Cmd::Remote(op, reply)) => {
                        let res = match &conn {
                            Some(c) => self.remote(c, op).await,
                            None => Err(McuError::NotConnected),
                        };
                        let _ = reply.send(res);
                    }
                },
                ev = next_event(conn.as_mut().map(|c| &mut c.events)) => {
                    match self.handle_event(ev) {
                        Flow::Continue => {}
                        Flow::Close | Flow::PublisherGone => break,
                        Flow::Lost => {
                            warn!(session = %self.key.0, stream = self.key.1.as_str(), "publisher lost its Janus connection, will rebuild");
                            conn = None;
                            self.set_receiving(0, false);
                            self.set_receiving(1, false);
                            self.me.room.store(0, Ordering::Release);
                            self.me.sending.store(false, Ordering::Release);
                            self.inner.bump();
                            rebuild = Some(self.rebuild(epoch, Duration::ZERO));
                        }
                    }
                },
                _ = sleep_until_opt(held.until) => held.fail(),
                res = poll_opt(&mut rebuild) => {
                    rebuild = None;
                    match res {
                        Ok(c) => {
                            epoch = Some(c.handle.session().epoch());
                            self.me.room.store(c.room, Ordering::Release);
                            info!(session = %self.key.0, stream = self.key.1.as_str(), room = c.room, "publisher rebuilt after Janus reconnect");
                            self.inner.metrics.rebuilt_total.inc(&["publisher"]);
                            self.inner.bump();
                            let offered = held.has_offer();
                            for (msg, reply) in held.take() {
                                reply(self.handle_message(&c, msg).await);
                            }
                            conn = Some(c);
                            if !offered {
                                // Nothing to go on: ask the client.
                                self.listener.on_publisher_reset(&*self.me);
                            }
                        }
                        Err(e) => {
                            // Janus went away again (or never came back in
                            // time): wait for the next epoch.
                            warn!(session = %self.key.0, error = %e, "could not rebuild publisher");
                            rebuild = Some(self.rebuild(None, Duration::from_secs(1)));
                        }
                    }
                },
            }
        }
        self.shutdown(conn).await;
        if let Some(tx) = done {
            let _ = tx.send(());
        }
    }

    /// Re-creates the publisher's room once a Janus session of an epoch
    /// other than `old` exists (after `pause`); waits as long as it takes.
    fn rebuild(
        &self,
        old: Option<u64>,
        pause: Duration,
    ) -> BoxFuture<'static, Result<PubConn, McuError>> {
        let inner = self.inner.clone();
        let setup = self.setup.clone();
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            let forever = Instant::now() + Duration::from_secs(86400 * 365);
            let live = inner.wait_live(old, forever).await?;
            tokio::time::timeout(inner.settings.timeout, setup.run(&live))
                .await
                .map_err(|_| McuError::Timeout("publisher rebuild"))?
        })
    }

    async fn handle_message(
        &self,
        c: &PubConn,
        msg: McuMessage,
    ) -> Result<Option<Value>, McuError> {
        self.inner.metrics.messages_total.inc(&[&msg.kind]);
        let timeout = self.inner.settings.timeout;
        match msg.kind.as_str() {
            "offer" => {
                let offer = jsep_from_payload(&msg.payload, "offer")?;
                let offer_sdp = offer.sdp.clone();
                let config = videoroom::PublisherConfig::all_media();
                let r = bounded(
                    timeout,
                    "configure",
                    videoroom::configure_publisher(&c.handle, &config, Some(offer)),
                )
                .await?;
                if let Some(answer) = &r.jsep {
                    let streams = super::sdp::publisher_streams(&offer_sdp, &answer.sdp);
                    *self.me.streams.lock() = Some(Value::Array(streams));
                    self.inner.bump();
                }
                Ok(r.jsep.map(jsep_json))
            }
            "candidate" => {
                check_sid(&msg, &self.me)?;
                let cand = candidate_from_payload(&msg.payload)?;
                bounded(timeout, "trickle", c.handle.trickle(&cand)).await?;
                Ok(None)
            }
            "endOfCandidates" => Ok(None),
            other => Err(McuError::Unsupported(other.to_owned())),
        }
    }

    async fn remote(&self, c: &PubConn, op: RemoteOp) -> Result<(), McuError> {
        let timeout = self.inner.settings.timeout;
        let feed = self.key.1.feed_id();
        match op {
            RemoteOp::Publish {
                remote_id,
                host,
                port,
                rtcp_port,
            } => {
                let publish = || {
                    videoroom::publish_remotely(
                        &c.handle, c.room, feed, &remote_id, &host, port, rtcp_port,
                    )
                };
                match bounded(timeout, "publish_remotely", publish()).await {
                    // Already published under this id (a retry): start over.
                    Err(McuError::Janus(JanusError::Plugin { code, .. }))
                        if code == error_codes::ID_EXISTS =>
                    {
                        bounded(
                            timeout,
                            "unpublish_remotely",
                            videoroom::unpublish_remotely(&c.handle, c.room, feed, &remote_id),
                        )
                        .await?;
                        bounded(timeout, "publish_remotely", publish()).await
                    }
                    other => other,
                }
            }
            RemoteOp::Unpublish { remote_id } => {
                bounded(
                    timeout,
                    "unpublish_remotely",
                    videoroom::unpublish_remotely(&c.handle, c.room, feed, &remote_id),
                )
                .await
            }
        }
    }

    fn set_receiving(&mut self, idx: usize, on: bool) {
        if self.receiving[idx] == on {
            return;
        }
        self.receiving[idx] = on;
        let label = match (idx, self.key.1) {
            (0, _) => "audio",
            (_, StreamType::Screen) => "screen",
            _ => "video",
        };
        if on {
            self.inner.metrics.publisher_streams.inc(&[label]);
        } else {
            self.inner.metrics.publisher_streams.dec(&[label]);
        }
    }

    fn handle_event(&mut self, ev: Option<HandleEvent>) -> Flow {
        let Some(ev) = ev else { return Flow::Lost };
        tracing::trace!(session = %self.key.0, event = ?ev, "publisher event");
        match ev {
            HandleEvent::Trickle(c) => {
                self.listener
                    .on_ice_candidate(&*self.me, json!({ "candidate": candidate_json(&c) }));
                Flow::Continue
            }
            HandleEvent::TrickleCompleted => Flow::Continue,
            HandleEvent::WebrtcUp => {
                debug!(session = %self.key.0, stream = self.key.1.as_str(), "publisher connected");
                self.me.sending.store(true, Ordering::Release);
                self.inner.bump();
                Flow::Continue
            }
            HandleEvent::Media(m) => {
                let idx = if m.kind == "audio" { 0 } else { 1 };
                self.set_receiving(idx, m.receiving);
                Flow::Continue
            }
            HandleEvent::SlowLink(s) => {
                debug!(session = %self.key.0, uplink = s.uplink, lost = s.lost, "publisher slow link");
                Flow::Continue
            }
            HandleEvent::Event(e) => match videoroom::VideoRoomEvent::parse(&e) {
                Some(videoroom::VideoRoomEvent::Destroyed) => {
                    info!(session = %self.key.0, "publisher room destroyed, closing");
                    Flow::Close
                }
                other => {
                    debug!(session = %self.key.0, event = ?other, "publisher event");
                    Flow::Continue
                }
            },
            HandleEvent::Hangup { reason } => {
                info!(session = %self.key.0, stream = self.key.1.as_str(), %reason, "publisher hung up, closing");
                Flow::Close
            }
            HandleEvent::Detached => Flow::Close,
            HandleEvent::Gone(reason) => gone_flow(reason),
            HandleEvent::Lagged { missed } => {
                warn!(session = %self.key.0, missed, "publisher missed Janus events");
                Flow::Continue
            }
        }
    }

    async fn shutdown(mut self, conn: Option<PubConn>) {
        let timeout = self.inner.settings.timeout;
        if let Some(c) = conn {
            if let Err(e) = bounded(
                timeout,
                "destroy",
                videoroom::destroy_room(&c.handle, c.room),
            )
            .await
            {
                debug!(room = c.room, error = %e, "could not destroy publisher room");
            }
            let _ = bounded(timeout, "detach", c.handle.detach()).await;
        }
        self.set_receiving(0, false);
        self.set_receiving(1, false);
        release_publisher(&self.inner, &self.key, &self.me);
        self.inner.metrics.publishers.dec(&[self.key.1.as_str()]);
        info!(session = %self.key.0, stream = self.key.1.as_str(), "publisher closed");
        self.listener.publisher_closed(&*self.me);
    }
}

struct SubConn {
    handle: Handle,
    events: HandleEvents,
}

/// Result of a (re)build of a subscriber: new handle, its offer, the room.
type Rebuilt = (SubConn, Jsep, RoomId);

struct SubscriberTask {
    inner: Arc<Inner>,
    me: Arc<ClientObj>,
    /// Clustering: the publisher's room when it is another signaling
    /// server's publisher on this same Janus (0: a local publisher).
    known_room: RoomId,
    /// Strong: the listener itself only holds a weak reference to its
    /// session, so there is no cycle.
    listener: Arc<dyn McuListener>,
    key: PubKey,
    /// The publisher room joined (0 before the first join).
    room: RoomId,
    joined: bool,
    generation: ApiGeneration,
}

/// Joins the room of publisher `key` once it sends media, retrying until
/// `deadline` (upstream: "publisher not sending yet, wait and retry").
/// `known_room` (not 0): the publisher is another signaling server's (same
/// Janus), in that room; nothing here tells when it is ready, so retry.
async fn join_when_ready(
    inner: &Inner,
    handle: &Handle,
    key: &PubKey,
    known_room: RoomId,
    generation: ApiGeneration,
    selection: &StreamSelection,
    deadline: Instant,
) -> Result<(Jsep, RoomId), McuError> {
    let mut changed = inner.changed.subscribe();
    let mut counted = false;
    loop {
        changed.borrow_and_update();
        let room = if known_room != 0 {
            known_room
        } else {
            inner
                .reg
                .lock()
                .publishers
                .get(key)
                .map(|p| p.room.load(Ordering::Acquire))
                .unwrap_or(0)
        };
        if room != 0 {
            let join =
                videoroom::join_subscriber(handle, room, key.1.feed_id(), generation, selection);
            match tokio::time::timeout_at(deadline, join).await {
                Err(_) => return Err(McuError::Timeout("join")),
                Ok(Ok(j)) => return Ok((j.jsep, room)),
                Ok(Err(JanusError::Plugin { code, .. }))
                    if code == error_codes::NO_SUCH_FEED || code == error_codes::NO_SUCH_ROOM => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        if !counted {
            counted = true;
            inner.metrics.no_publisher_total.inc(&[key.1.as_str()]);
            debug!(publisher = %key.0, stream = key.1.as_str(), "publisher not sending yet, waiting");
        }
        if known_room != 0 {
            if Instant::now() + REMOTE_RETRY >= deadline {
                return Err(McuError::Timeout("publisher"));
            }
            tokio::time::sleep(REMOTE_RETRY).await;
            continue;
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(McuError::Closed),
            Err(_) => return Err(McuError::Timeout("publisher")),
        }
    }
}

impl SubscriberTask {
    async fn run(mut self, conn: SubConn, mut rx: mpsc::Receiver<Cmd>) {
        let mut conn = Some(conn);
        let mut rebuild: Option<BoxFuture<'static, Result<Rebuilt, McuError>>> = None;
        // When a pending rebuild has taken long enough that the client must
        // be told (once per loss).
        let mut stall_at: Option<Instant> = None;
        let mut done: Option<oneshot::Sender<()>> = None;
        // Ended because the publisher did (or Janus stayed away), not at
        // the session's request.
        let mut lost = false;
        // An offer request that came during a rebuild: the rebuild's offer
        // answers it.
        let mut asked: Option<Responder> = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Close(tx)) => { done = Some(tx); break }
                    Some(Cmd::PublisherGone) => {
                        debug!(publisher = %self.key.0, stream = self.key.1.as_str(), "publisher of subscriber ended or was replaced");
                        lost = true;
                        break;
                    }
                    Some(Cmd::Message(msg, reply)) if rebuild.is_some() && matches!(msg.kind.as_str(), "requestoffer" | "sendoffer") => {
                        if let Some(older) = asked.replace(reply) {
                            older(Ok(None));
                        }
                    }
                    Some(Cmd::Message(msg, reply)) => {
                        let res = self.handle_message(&mut conn, msg).await;
                        reply(res);
                    }
                    Some(Cmd::Remote(_, reply)) => {
                        let _ = reply.send(Err(McuError::Unsupported("remote publishing".into())));
                    }
                },
                ev = next_event(conn.as_mut().map(|c| &mut c.events)) => {
                    match self.handle_event(ev) {
                        Flow::Continue => {}
                        Flow::Close => break,
                        Flow::PublisherGone => { lost = true; break }
                        Flow::Lost => {
                            let epoch = conn.as_ref().map(|c| c.handle.session().epoch());
                            conn = None;
                            self.joined = false;
                            if self.me.sending.swap(false, Ordering::AcqRel) {
                                self.inner.metrics.subscriber_streams.dec(&[self.key.1.as_str()]);
                            }
                            if !self.room_was_joined() {
                                // Never negotiated: nothing to restore.
                                break;
                            }
                            if self.known_room != 0 {
                                // Another server's publisher: its room is
                                // gone with Janus, and only that server
                                // knows the new one; the session follows
                                // the publisher from there.
                                lost = true;
                                break;
                            }
                            rebuild = Some(self.rebuild(epoch));
                            stall_at = Some(Instant::now() + super::STALL_NOTICE);
                        }
                    }
                },
                _ = sleep_until_opt(stall_at) => {
                    stall_at = None;
                    info!(publisher = %self.key.0, stream = self.key.1.as_str(), "subscriber not rebuilt yet, telling its client");
                    self.listener.subscriber_stalled(&*self.me);
                },
                res = poll_opt(&mut rebuild) => {
                    rebuild = None;
                    stall_at = None;
                    match res {
                        Ok((c, offer, room)) => {
                            *self.me.info.sid.lock() = c.handle.id().to_string();
                            self.room = room;
                            self.joined = true;
                            conn = Some(c);
                            info!(publisher = %self.key.0, stream = self.key.1.as_str(), sid = %self.me.sid(), "subscriber rebuilt after Janus reconnect");
                            self.inner.metrics.rebuilt_total.inc(&["subscriber"]);
                            match asked.take() {
                                Some(reply) => reply(Ok(Some(jsep_json(offer)))),
                                None => self.listener.on_update_offer(&*self.me, jsep_json(offer)),
                            }
                        }
                        Err(e) => {
                            warn!(publisher = %self.key.0, stream = self.key.1.as_str(), error = %e, "could not rebuild subscriber, closing");
                            if let Some(reply) = asked.take() {
                                reply(Err(e));
                            }
                            lost = true;
                            break;
                        }
                    }
                },
            }
        }
        self.shutdown(conn, lost).await;
        if let Some(tx) = done {
            let _ = tx.send(());
        }
    }

    fn room_was_joined(&self) -> bool {
        self.room != 0
    }

    fn rebuild(&self, old_epoch: Option<u64>) -> BoxFuture<'static, Result<Rebuilt, McuError>> {
        let inner = self.inner.clone();
        let key = self.key.clone();
        let known_room = self.known_room;
        Box::pin(async move {
            let deadline = Instant::now() + REBUILD_WAIT;
            let live = inner.wait_live(old_epoch, deadline).await?;
            let (handle, events) = live.session.attach(videoroom::PLUGIN).await?;
            let (offer, room) = join_when_ready(
                &inner,
                &handle,
                &key,
                known_room,
                live.generation,
                &StreamSelection::default(),
                deadline,
            )
            .await?;
            Ok((SubConn { handle, events }, offer, room))
        })
    }

    /// A fresh handle for a subscriber that must join again (Janus refuses a
    /// second `join` on a handle: "already joined").
    async fn replace_handle(&mut self, conn: &mut Option<SubConn>) -> Result<(), McuError> {
        let live = self.inner.live()?;
        let timeout = self.inner.settings.timeout;
        if let Some(old) = conn.take() {
            let _ = bounded(timeout, "detach", old.handle.detach()).await;
        }
        let (handle, events) =
            bounded(timeout, "attach", live.session.attach(videoroom::PLUGIN)).await?;
        *self.me.info.sid.lock() = handle.id().to_string();
        self.generation = live.generation;
        self.joined = false;
        *conn = Some(SubConn { handle, events });
        Ok(())
    }

    async fn join(
        &mut self,
        conn: &mut Option<SubConn>,
        selection: &StreamSelection,
    ) -> Result<Option<Value>, McuError> {
        if self.joined {
            self.replace_handle(conn).await?;
        }
        for attempt in 0..2 {
            let Some(c) = conn.as_ref() else {
                return Err(McuError::NotConnected);
            };
            let deadline = Instant::now() + self.inner.settings.timeout;
            match join_when_ready(
                &self.inner,
                &c.handle,
                &self.key,
                self.known_room,
                self.generation,
                selection,
                deadline,
            )
            .await
            {
                Ok((offer, room)) => {
                    self.room = room;
                    self.joined = true;
                    return Ok(Some(jsep_json(offer)));
                }
                Err(McuError::Janus(JanusError::Plugin { code, .. }))
                    if code == error_codes::ALREADY_JOINED && attempt == 0 =>
                {
                    self.replace_handle(conn).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(McuError::Closed)
    }

    async fn handle_message(
        &mut self,
        conn: &mut Option<SubConn>,
        msg: McuMessage,
    ) -> Result<Option<Value>, McuError> {
        self.inner.metrics.messages_total.inc(&[&msg.kind]);
        let timeout = self.inner.settings.timeout;
        match msg.kind.as_str() {
            "requestoffer" | "sendoffer" => {
                let selection = StreamSelection::from_payload(&msg.payload)
                    .map_err(McuError::InvalidPayload)?;
                if self.joined && !msg.sid.is_empty() && msg.sid == self.me.sid() {
                    let Some(c) = conn.as_ref() else {
                        return Err(McuError::NotConnected);
                    };
                    let offer = bounded(
                        timeout,
                        "configure",
                        videoroom::update_subscriber(&c.handle, &selection),
                    )
                    .await?;
                    return Ok(offer.map(jsep_json));
                }
                self.join(conn, &selection).await
            }
            "answer" => {
                check_sid(&msg, &self.me)?;
                let answer = jsep_from_payload(&msg.payload, "answer")?;
                let c = conn.as_ref().ok_or(McuError::NotConnected)?;
                bounded(
                    timeout,
                    "start",
                    videoroom::start_subscriber(&c.handle, self.room, answer),
                )
                .await?;
                Ok(None)
            }
            "candidate" => {
                check_sid(&msg, &self.me)?;
                let cand = candidate_from_payload(&msg.payload)?;
                let c = conn.as_ref().ok_or(McuError::NotConnected)?;
                bounded(timeout, "trickle", c.handle.trickle(&cand)).await?;
                Ok(None)
            }
            "endOfCandidates" => Ok(None),
            "selectStream" => {
                let selection = StreamSelection::from_payload(&msg.payload)
                    .map_err(McuError::InvalidPayload)?;
                if !selection.has_values() {
                    return Ok(None);
                }
                let c = conn.as_ref().ok_or(McuError::NotConnected)?;
                bounded(
                    timeout,
                    "configure",
                    videoroom::select_stream(&c.handle, &selection),
                )
                .await?;
                Ok(None)
            }
            other => Err(McuError::Unsupported(other.to_owned())),
        }
    }

    fn handle_event(&mut self, ev: Option<HandleEvent>) -> Flow {
        let Some(ev) = ev else { return Flow::Lost };
        match ev {
            HandleEvent::Trickle(c) => {
                self.listener
                    .on_ice_candidate(&*self.me, json!({ "candidate": candidate_json(&c) }));
                Flow::Continue
            }
            HandleEvent::TrickleCompleted => Flow::Continue,
            HandleEvent::WebrtcUp => {
                if !self.me.sending.swap(true, Ordering::AcqRel) {
                    self.inner
                        .metrics
                        .subscriber_streams
                        .inc(&[self.key.1.as_str()]);
                }
                Flow::Continue
            }
            HandleEvent::Media(_) | HandleEvent::SlowLink(_) => Flow::Continue,
            HandleEvent::Event(e) => match videoroom::VideoRoomEvent::parse(&e) {
                Some(videoroom::VideoRoomEvent::Destroyed) => Flow::PublisherGone,
                Some(videoroom::VideoRoomEvent::Updated {
                    media_gone: true, ..
                }) => {
                    debug!(publisher = %self.key.0, "publisher of subscriber left");
                    Flow::PublisherGone
                }
                Some(videoroom::VideoRoomEvent::Updated {
                    jsep: Some(offer), ..
                })
                | Some(videoroom::VideoRoomEvent::UpdateOffer(offer)) => {
                    self.listener.on_update_offer(&*self.me, jsep_json(offer));
                    Flow::Continue
                }
                other => {
                    debug!(publisher = %self.key.0, event = ?other, "subscriber event");
                    Flow::Continue
                }
            },
            HandleEvent::Hangup { reason } => {
                debug!(publisher = %self.key.0, %reason, "subscriber hung up, closing");
                Flow::Close
            }
            HandleEvent::Detached => Flow::Close,
            HandleEvent::Gone(reason) => gone_flow(reason),
            HandleEvent::Lagged { missed } => {
                warn!(publisher = %self.key.0, missed, "subscriber missed Janus events");
                Flow::Continue
            }
        }
    }

    async fn shutdown(self, conn: Option<SubConn>, lost: bool) {
        if let Some(c) = conn {
            let _ = bounded(self.inner.settings.timeout, "detach", c.handle.detach()).await;
        }
        if self.me.sending.swap(false, Ordering::AcqRel) {
            self.inner
                .metrics
                .subscriber_streams
                .dec(&[self.key.1.as_str()]);
        }
        self.inner.reg.lock().subscribers.remove(&self.me.info.id);
        self.inner.metrics.subscribers.dec(&[self.key.1.as_str()]);
        debug!(publisher = %self.key.0, stream = self.key.1.as_str(), lost, "subscriber closed");
        if lost {
            self.listener.subscriber_lost(&*self.me);
        } else {
            self.listener.subscriber_closed(&*self.me);
        }
    }
}
