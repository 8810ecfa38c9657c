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

mod gateway;
mod publisher;
mod remote;
mod subscriber;

use gateway::supervise;
use publisher::{release_publisher, PubConn, PublisherSetup, PublisherTask};
pub use remote::RemotePublisher;
use subscriber::{SubConn, SubscriberTask};

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
