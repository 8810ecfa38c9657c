//! Federation (upstream 2.0.0, #776): a client joins a room of another
//! Nextcloud through our server. We open our own WebSocket to that
//! Nextcloud's signaling server, say hello v2 there (client type
//! `federation`, the token from the join request) and relay the session both
//! ways, rewriting the remote session id and room id to the local ones.
//!
//! One task owns the remote connection ([`FederationClient`] is the handle):
//! it dials, reads and writes, pings, and reconnects with backoff (resuming
//! the remote session when it can) until the handle is closed or dropped.
//! Messages from the client wait in a bounded queue while the remote is away.

use futures_util::{SinkExt, StreamExt};
use proto::client::{
    ClientMessage, Error, EventServerMessage, RoomFederationMessage, ServerMessage,
};
use serde_json::{json, Map, Value};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::core::conn::OutMsg;
use crate::core::session::ClientSession;

mod rewrite;
mod task;

use task::{Step, Task};

const INITIAL_RECONNECT: Duration = Duration::from_millis(100);
const MAX_RECONNECT: Duration = Duration::from_secs(8);
/// Dial + handshake of the remote server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const PING_INTERVAL: Duration = Duration::from_secs(54);
/// Silence after which the remote connection counts as dead.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Client messages waiting for the remote (also while it reconnects).
const QUEUE: usize = 256;
const MAX_MESSAGE_SIZE: usize = 64 * 1024;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

enum Command {
    Send(String),
    /// The client left the room: tell the remote, close once it confirms.
    Leave(String),
}

/// Handle on the task owning one federated session's remote connection.
/// Dropping it (or [`close`](Self::close)) ends the task, saying `bye` to
/// the remote server.
#[derive(Debug)]
pub struct FederationClient {
    pub id: u64,
    /// The room id the local client uses.
    pub room_id: String,
    pub federation: RoomFederationMessage,
    /// The Talk session id of the local client (for room pings).
    pub room_session_id: String,
    tx: mpsc::Sender<Command>,
    cancel: CancellationToken,
}

impl crate::core::session::FederatedRoom for FederationClient {
    fn id(&self) -> u64 {
        self.id
    }

    fn close(&self) {
        FederationClient::close(self)
    }
}

impl Drop for FederationClient {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// What ended one remote connection.
enum End {
    /// Closed for good (asked to, fatal error, left the room).
    Closed,
    /// The remote went away: reconnect.
    Dropped,
}

/// The WebSocket URL of a signaling server given as `signaling` in a join.
pub fn websocket_url(signaling: &str) -> Option<String> {
    let mut u = url::Url::parse(signaling).ok()?;
    let scheme = match u.scheme() {
        "http" | "ws" => "ws",
        "https" | "wss" => "wss",
        _ => return None,
    };
    u.set_scheme(scheme).ok()?;
    let mut s = u.to_string();
    if s.ends_with("/spreed") {
        return Some(s);
    }
    if !s.ends_with('/') {
        s.push('/');
    }
    s.push_str("spreed");
    Some(s)
}

impl FederationClient {
    /// Start the task for `session` joining the room in `msg` (a `room`
    /// message with `federation`).
    pub(crate) fn start(session: &Arc<ClientSession>, msg: &ClientMessage) -> Arc<Self> {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let room = msg.room.as_ref().expect("caller checked: room message");
        let federation = room.federation.clone().expect("caller checked: federation");
        let remote_room_id = if federation.roomid.is_empty() {
            room.roomid.clone()
        } else {
            federation.roomid.clone()
        };
        let room_session_id = if room.sessionid.is_empty() {
            session.public_id.to_string()
        } else {
            room.sessionid.clone()
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let cancel = CancellationToken::new();
        let task = Task {
            id,
            session: Arc::downgrade(session),
            local_id: session.public_id.to_string(),
            local_cloud: cloud_url(session.backend_url.as_str()),
            remote_cloud: cloud_url(&federation.url),
            features: session.features.clone(),
            fed: federation.clone(),
            room_id: room.roomid.clone(),
            remote_room_id,
            room_session_id: room.sessionid.clone(),
            join_id: Some(msg.id.clone()),
            resume_id: None,
            remote_id: None,
            reconnecting: false,
            close_on_leave: false,
            retry: None,
        };
        tokio::spawn(task.run(rx, cancel.clone()));
        Arc::new(FederationClient {
            id,
            room_id: room.roomid.clone(),
            federation,
            room_session_id,
            tx,
            cancel,
        })
    }

    /// Relay a client message to the remote session. The local session id
    /// in a `session` recipient becomes the remote one on the way out.
    ///
    /// When the queue to the remote is full (it is slow or away) the
    /// message is not dropped: the returned future waits for room, and the
    /// client's connection task runs it before reading the next message, so
    /// the client itself is slowed down instead.
    pub fn proxy(&self, msg: ClientMessage) -> Option<crate::core::Pending> {
        match self.tx.try_send(Command::Send(to_text(&msg))) {
            Ok(()) => None,
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let tx = self.tx.clone();
                Some(Box::pin(async move {
                    let _ = tx.send(cmd).await;
                }))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                warn!(url = %self.federation.signaling, "federation closed, message not relayed");
                None
            }
        }
    }

    /// The client left the room.
    pub fn leave(&self, msg: ClientMessage) {
        self.queue(Command::Leave(to_text(&msg)));
    }

    fn queue(&self, cmd: Command) {
        if let Err(e) = self.tx.try_send(cmd) {
            let why = match e {
                mpsc::error::TrySendError::Full(_) => "queue full",
                mpsc::error::TrySendError::Closed(_) => "closed",
            };
            warn!(url = %self.federation.signaling, reason = why, "federated message dropped");
        }
    }

    pub fn close(&self) {
        self.cancel.cancel();
    }

    /// The federated connection `session` holds, if it is in a room of
    /// another server.
    pub fn of(session: &ClientSession) -> Option<Arc<FederationClient>> {
        let link: Arc<dyn std::any::Any + Send + Sync> = session.federation_link()?;
        link.downcast().ok()
    }

    pub fn is_closed(&self) -> bool {
        self.cancel.is_cancelled() || self.tx.is_closed()
    }
}

fn to_text(msg: &ClientMessage) -> String {
    serde_json::to_string(msg).unwrap_or_default()
}

/// `https://cloud.example.com/nextcloud/ocs/v2.php/...` -> `cloud.example.com/nextcloud`.
fn cloud_url(s: &str) -> String {
    let s = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"))
        .unwrap_or(s);
    match s.find("/ocs/v") {
        Some(pos) => s[..pos].to_owned(),
        None => s.trim_end_matches('/').to_owned(),
    }
}

pub fn err_federation_unsupported() -> Error {
    Error::new(
        "federation_unsupported",
        "The target server does not support federation.",
    )
}

fn federation_error(code: &str, message: &str) -> Error {
    let mut e = Error::new("federation_error", message);
    if !code.is_empty() {
        e.details = Some(json!({"code": code, "message": message}));
    }
    e
}

fn random_id() -> String {
    use rand::Rng;
    let mut rng = rand::thread_rng();
    (0..8)
        .map(|_| char::from(b'a' + rng.gen_range(0..26u8)))
        .collect()
}
