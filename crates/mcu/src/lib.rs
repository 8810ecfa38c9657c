//! The media server side of the signaling server and the MCU proxy: the
//! traits a media server implements for the hub ([`Mcu`], [`McuClient`],
//! [`McuListener`]), the Janus implementation ([`janus::JanusMcu`]), the MCU
//! metrics, the SDP reading both need, and the proxy protocol's WebSocket
//! helpers ([`proxy_ws`]). The signaling server (crate `hub`) and the proxy
//! (crate `proxy`) build on it.
//!
//! Talk clients never talk to the media server; every SDP and candidate
//! travels as a signaling `message` whose `data.type` is one of the MCU
//! verbs ([`VERBS`]). Every publisher and subscriber is one task that owns
//! its Janus handle and works through its commands and the handle's events
//! in order. Replies that must reach the client in a fixed order (Janus's
//! SDP answer before the candidates Janus trickles right after it) are
//! delivered through a [`Responder`] that the task calls before it reads
//! the next event.

pub mod janus;
pub mod metrics;
pub mod proxy_ws;
pub mod sdp;

use serde_json::{Map, Value};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The `data.type` values of a `message` that belong to the MCU.
pub const VERBS: [&str; 7] = [
    "offer",
    "answer",
    "candidate",
    "endOfCandidates",
    "selectStream",
    "requestoffer",
    "sendoffer",
];

/// The two kinds of stream a session can publish (upstream knows no other).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StreamType {
    Video,
    Screen,
}

impl StreamType {
    pub fn parse(s: &str) -> Option<StreamType> {
        match s {
            "video" => Some(StreamType::Video),
            "screen" => Some(StreamType::Screen),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            StreamType::Video => "video",
            StreamType::Screen => "screen",
        }
    }

    /// The VideoRoom feed id of the (single) publisher in the stream's room.
    pub fn feed_id(self) -> u64 {
        match self {
            StreamType::Video => 1,
            StreamType::Screen => 2,
        }
    }

    pub const ALL: [StreamType; 2] = [StreamType::Video, StreamType::Screen];
}

/// Which media a publisher sends (a bit set, as upstream's `MediaType`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MediaTypes(pub u8);

impl MediaTypes {
    pub const AUDIO: MediaTypes = MediaTypes(1);
    pub const VIDEO: MediaTypes = MediaTypes(2);
    pub const SCREEN: MediaTypes = MediaTypes(4);

    pub fn contains(self, other: MediaTypes) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }

    pub fn insert(&mut self, other: MediaTypes) {
        self.0 |= other.0;
    }
}

/// Codec preferences a client may send with its offer (`offer-codecs`);
/// they shape the VideoRoom created for the publisher.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CodecPrefs {
    pub audio: Option<String>,
    pub video: Option<String>,
    pub vp9_profile: Option<String>,
    pub h264_profile: Option<String>,
}

/// Everything that can go wrong between the hub and the media server.
#[derive(Debug, thiserror::Error)]
pub enum McuError {
    #[error("not connected to the media server")]
    NotConnected,
    #[error("timed out: {0}")]
    Timeout(&'static str),
    #[error("message sid {got:?} does not match {expected:?}")]
    SidMismatch { got: String, expected: String },
    #[error("unsupported message type {0:?}")]
    Unsupported(String),
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    #[error("the publisher or subscriber is closed")]
    Closed,
    #[error("no such publisher")]
    NotFound,
    #[error(transparent)]
    Janus(#[from] ::janus::Error),
}

/// One MCU verb from a client, already checked for shape.
#[derive(Clone, Debug)]
pub struct McuMessage {
    /// One of [`VERBS`].
    pub kind: String,
    /// The publisher/subscriber id the client refers to (may be empty).
    pub sid: String,
    pub payload: Map<String, Value>,
}

/// Where the result of [`McuClient::send_message`] goes: `Ok(Some(jsep))`
/// for an SDP (answer or offer) to forward, `Ok(None)` when there is
/// nothing to tell the client.
pub type Responder = Box<dyn FnOnce(Result<Option<Value>, McuError>) + Send>;

/// How long a subscriber may be without media it cannot get back (its
/// media server or publisher not back) before its client is told (issue
/// 19: Talk's clients act on the publisher leaving the call and coming
/// back, not on errors).
pub const STALL_NOTICE: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a request that needs the media server waits for it while it is
/// away (Janus or every proxy disconnected, a publisher being rebuilt)
/// before it fails: a Janus that restarts is usually back within this, and
/// Talk's clients act on no error (Android and iOS send one offer and one
/// offer request only). Offers hold the client's later messages (its
/// candidates belong behind the offer), so this stays short.
pub const DOWN_HOLD: std::time::Duration = std::time::Duration::from_secs(5);

/// Receives what the media server does on its own for one session.
pub trait McuListener: Send + Sync {
    /// A new offer for a subscriber: Janus renegotiated (the publisher
    /// changed its streams), or the subscriber was rebuilt after the media
    /// server came back (then with a new sid).
    fn on_update_offer(&self, client: &dyn McuClient, offer: Value);
    /// A local candidate of the media server for one of the session's
    /// publishers or subscribers.
    fn on_ice_candidate(&self, client: &dyn McuClient, candidate: Value);
    /// A publisher was rebuilt after the media server restarted: the client
    /// must send a new offer for it.
    fn on_publisher_reset(&self, client: &dyn McuClient);
    fn publisher_closed(&self, client: &dyn McuClient);
    fn subscriber_closed(&self, client: &dyn McuClient);
    /// A publisher ended without its session asking (its media server or
    /// proxy went away): the client must publish again.
    fn publisher_lost(&self, client: &dyn McuClient) {
        self.publisher_closed(client);
    }
    /// A subscriber ended because its publisher ended or was replaced, or
    /// its media server or proxy went away: the session may follow the
    /// publisher once it streams again.
    fn subscriber_lost(&self, client: &dyn McuClient) {
        self.subscriber_closed(client);
    }
    /// A subscriber lost its media (the media server went away) and could
    /// not be rebuilt within [`STALL_NOTICE`]: its client has
    /// dead media and must be told (the subscriber keeps trying).
    fn subscriber_stalled(&self, _client: &dyn McuClient) {}
}

/// What every publisher and subscriber object knows about itself, whatever
/// media server hosts it.
#[derive(Debug)]
pub struct ClientInfo {
    /// Unique per MCU client object (never reused).
    pub id: u64,
    pub stream: StreamType,
    /// What clients send back as `sid`: chosen by the publishing client, or
    /// the Janus handle id for subscribers.
    pub sid: parking_lot::Mutex<String>,
    /// The publishing session for a subscriber, `None` for a publisher.
    pub publisher: Option<Arc<str>>,
    /// Media the publisher sends (empty for subscribers).
    pub media: std::sync::atomic::AtomicU8,
}

impl ClientInfo {
    pub fn new(
        id: u64,
        stream: StreamType,
        sid: String,
        publisher: Option<Arc<str>>,
        media: MediaTypes,
    ) -> ClientInfo {
        ClientInfo {
            id,
            stream,
            sid: parking_lot::Mutex::new(sid),
            publisher,
            media: std::sync::atomic::AtomicU8::new(media.0),
        }
    }
}

/// A publisher or a subscriber.
pub trait McuClient: Send + Sync {
    fn info(&self) -> &ClientInfo;
    fn id(&self) -> u64 {
        self.info().id
    }
    fn sid(&self) -> String {
        self.info().sid.lock().clone()
    }
    fn stream_type(&self) -> StreamType {
        self.info().stream
    }
    fn publisher_id(&self) -> Option<&str> {
        self.info().publisher.as_deref()
    }
    fn media(&self) -> MediaTypes {
        MediaTypes(self.info().media.load(std::sync::atomic::Ordering::Relaxed))
    }
    fn set_media(&self, media: MediaTypes) {
        self.info()
            .media
            .store(media.0, std::sync::atomic::Ordering::Relaxed);
    }
    /// Release everything on the media server. Idempotent; resolves once
    /// released (or given up on).
    fn close(&self) -> BoxFuture<'_, ()>;
    /// Queue a client verb for the media server. Resolves once queued (so
    /// that the next verb of the client is queued behind it); `reply` is
    /// called exactly once, later, also on error.
    fn send_message(&self, msg: McuMessage, reply: Responder) -> BoxFuture<'_, ()>;
}

/// A publisher's bitrate: what was asked for (0: nothing), at most `cap`.
pub fn cap_bitrate(requested: u64, cap: u64) -> u64 {
    if requested == 0 {
        cap
    } else {
        requested.min(cap)
    }
}

/// Parameters of a new publisher.
#[derive(Clone, Debug)]
pub struct PublisherParams {
    /// Public id of the publishing session.
    pub id: Arc<str>,
    pub sid: String,
    pub stream: StreamType,
    /// Requested bitrate, already capped by the backend; 0 = the MCU's cap.
    pub bitrate: u64,
    pub media: MediaTypes,
    pub codecs: CodecPrefs,
    /// Where the publishing client is (GeoIP), to prefer proxies in the
    /// same country, then on these continents (overrides applied).
    pub country: Option<String>,
    pub continents: Vec<String>,
}

/// Parameters of a new subscriber.
#[derive(Clone, Debug)]
pub struct SubscriberParams {
    /// Public id of the publishing session.
    pub publisher: Arc<str>,
    pub stream: StreamType,
    /// Where the subscribing client is (GeoIP): with proxies, a proxy near
    /// it may serve the stream instead of the publisher's (remote streams).
    pub country: Option<String>,
    pub continents: Vec<String>,
    /// Clustering: the publisher is on another signaling server, which
    /// says where it streams ([`Mcu::publisher_location`] there).
    pub location: Option<Value>,
}

impl SubscriberParams {
    pub fn new(publisher: Arc<str>, stream: StreamType) -> SubscriberParams {
        SubscriberParams {
            publisher,
            stream,
            country: None,
            continents: Vec::new(),
            location: None,
        }
    }
}

/// A media server.
pub trait Mcu: Send + Sync {
    fn new_publisher(
        &self,
        listener: Arc<dyn McuListener>,
        params: PublisherParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>>;

    /// A subscriber of `publisher`'s stream; waits (up to the MCU timeout)
    /// for the publisher to appear.
    fn new_subscriber(
        &self,
        listener: Arc<dyn McuListener>,
        params: SubscriberParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>>;

    /// Clustering: where local publisher `publisher` streams, for a
    /// subscriber on another signaling server (which passes it as
    /// [`SubscriberParams::location`]). Waits (up to the MCU timeout) for
    /// the publisher to appear; `None` when it does not, or when this kind
    /// of media server cannot be shared.
    fn publisher_location(
        &self,
        _publisher: &str,
        _stream: StreamType,
    ) -> BoxFuture<'_, Option<Value>> {
        Box::pin(async { None })
    }

    /// The `mcu` part of `/api/v1/stats`.
    fn stats(&self) -> Value;

    /// Bounds every MCU operation (`[mcu] timeout`).
    fn timeout(&self) -> std::time::Duration;

    /// Release everything (server shutdown).
    fn stop(&self) -> BoxFuture<'_, ()>;

    /// SIGHUP: take what can change without a restart.
    fn reload(&self, _ini: &runtime::config::Ini) {}
}
