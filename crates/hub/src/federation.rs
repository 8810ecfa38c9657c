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

struct Task {
    id: u64,
    session: Weak<ClientSession>,
    local_id: String,
    /// `host/path` of the local and remote Nextcloud, for actor ids.
    local_cloud: String,
    remote_cloud: String,
    features: Vec<String>,
    fed: RoomFederationMessage,
    room_id: String,
    remote_room_id: String,
    room_session_id: String,
    /// Id of the client's join request until the remote answered it.
    join_id: Option<String>,
    resume_id: Option<String>,
    /// The remote session id, while the remote session is established.
    remote_id: Option<String>,
    reconnecting: bool,
    close_on_leave: bool,
    /// A message whose write failed, sent again after a resume.
    retry: Option<String>,
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let Some(url) = websocket_url(&self.fed.signaling) else {
            self.fail(federation_error("invalid_url", "Invalid signaling URL."));
            return;
        };
        let mut delay = INITIAL_RECONNECT;
        let mut connected_once = false;
        loop {
            let dial = tokio::time::timeout(CONNECT_TIMEOUT, connect(&url));
            let res = tokio::select! {
                _ = cancel.cancelled() => break,
                r = dial => r,
            };
            let res = match res {
                Ok(Ok(ws)) => Ok(ws),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnectError::Network("connection timed out".into())),
            };
            match res {
                Ok(ws) => {
                    connected_once = true;
                    match self.session_loop(ws, &mut rx, &cancel).await {
                        End::Closed => break,
                        End::Dropped => {}
                    }
                    if self.remote_id.take().is_some() {
                        delay = INITIAL_RECONNECT;
                        self.send_event("federation_interrupted", None);
                    }
                    self.reconnecting = true;
                }
                Err(ConnectError::Unsupported) => {
                    self.fail(err_federation_unsupported());
                    break;
                }
                Err(ConnectError::Network(e)) if !connected_once => {
                    info!(session = %self.local_id, url = %url, error = %e, "could not connect to federated server");
                    let mut err = federation_error("", "");
                    err.message = "Failed to create federation client.".into();
                    err.details = Some(json!({"code": "network_error", "message": e}));
                    self.fail(err);
                    break;
                }
                Err(ConnectError::Network(e)) => {
                    debug!(session = %self.local_id, url = %url, error = %e, "federated server still unreachable");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT);
        }
        if let Some(s) = self.session.upgrade() {
            s.federation_ended(self.id);
        }
    }

    /// One remote connection, from hello until it ends.
    async fn session_loop(
        &mut self,
        ws: Ws,
        rx: &mut mpsc::Receiver<Command>,
        cancel: &CancellationToken,
    ) -> End {
        let (mut sink, mut stream) = ws.split();
        let mut hello_id = String::new();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        let end = loop {
            let ready = self.remote_id.is_some();
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = sink.send(Message::text(r#"{"type":"bye","bye":{}}"#)).await;
                    break End::Closed;
                }
                cmd = rx.recv(), if ready => {
                    let text = match cmd {
                        None => {
                            let _ = sink.send(Message::text(r#"{"type":"bye","bye":{}}"#)).await;
                            break End::Closed;
                        }
                        Some(Command::Send(t)) => self.rewrite_outgoing(t),
                        Some(Command::Leave(t)) => {
                            self.close_on_leave = true;
                            t
                        }
                    };
                    if sink.send(Message::text(text.clone())).await.is_err() {
                        self.retry = Some(text);
                        break End::Dropped;
                    }
                }
                _ = ping.tick() => {
                    let now = crate::bus::now_nanos().to_string();
                    if sink.send(Message::Ping(now.into_bytes().into())).await.is_err() {
                        break End::Dropped;
                    }
                }
                frame = tokio::time::timeout(READ_TIMEOUT, stream.next()) => {
                    let text = match frame {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                            break End::Dropped;
                        }
                        Ok(Some(Ok(_))) => continue,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        debug!(session = %self.local_id, "undecodable message from federated server");
                        continue;
                    };
                    let step = if self.remote_id.is_some() {
                        self.process_message(v)
                    } else {
                        self.process_hello(v, &mut hello_id)
                    };
                    match step {
                        Step::Continue => {}
                        Step::Send(out) => {
                            for t in out {
                                if sink.send(Message::text(t)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Step::Close => {
                            let _ = sink.send(Message::text(r#"{"type":"bye","bye":{}}"#)).await;
                            break End::Closed;
                        }
                    }
                }
            }
        };
        let _ = sink.close().await;
        end
    }

    fn hello(&self, hello_id: &mut String) -> String {
        *hello_id = random_id();
        let mut hello =
            json!({"version": proto::client::HELLO_VERSION_V2, "features": self.features});
        match &self.resume_id {
            Some(r) => hello["resumeid"] = json!(r),
            None => {
                hello["auth"] = json!({"type": proto::client::CLIENT_TYPE_FEDERATION,
                    "url": self.fed.url, "params": {"token": self.fed.token}})
            }
        }
        json!({"id": hello_id, "type": "hello", "hello": hello}).to_string()
    }

    fn join(&self) -> String {
        let mut room = json!({"roomid": self.remote_room_id});
        if !self.room_session_id.is_empty() {
            room["sessionid"] = json!(self.room_session_id);
        }
        let mut m = json!({"type": "room", "room": room});
        if let Some(id) = self.join_id.as_ref().filter(|i| !i.is_empty()) {
            m["id"] = json!(id);
        }
        m.to_string()
    }

    fn process_hello(&mut self, v: Value, hello_id: &mut String) -> Step {
        let kind = v["type"].as_str().unwrap_or_default();
        if kind == "welcome" {
            let has = v["welcome"]["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == proto::client::FEATURE_FEDERATION));
            if !has {
                self.fail(err_federation_unsupported());
                return Step::Close;
            }
            return Step::Send(vec![self.hello(hello_id)]);
        }
        if v["id"].as_str() != Some(hello_id.as_str()) {
            return Step::Send(vec![self.hello(hello_id)]);
        }
        match kind {
            "error" => {
                let err: Error = serde_json::from_value(v["error"].clone())
                    .unwrap_or_else(|_| federation_error("", "Unknown error."));
                if err.code == "no_such_session" && self.resume_id.is_some() {
                    // The remote lost our session (restarted): start a new one.
                    self.resume_id = None;
                    self.retry = None;
                    return Step::Send(vec![self.hello(hello_id)]);
                }
                info!(session = %self.local_id, code = %err.code, "federated hello refused");
                self.fail(err);
                Step::Close
            }
            "hello" => {
                let remote = v["hello"]["sessionid"].as_str().unwrap_or_default();
                self.remote_id = Some(remote.to_owned());
                if self.resume_id.is_none() {
                    self.resume_id = v["hello"]["resumeid"].as_str().map(str::to_owned);
                    if self.reconnecting {
                        self.send_event("federation_resumed", Some(false));
                    }
                    info!(session = %self.local_id, remote = %remote, "federated session established");
                    Step::Send(vec![self.join()])
                } else {
                    self.send_event("federation_resumed", Some(true));
                    Step::Send(self.retry.take().into_iter().collect())
                }
            }
            _ => Step::Send(vec![self.hello(hello_id)]),
        }
    }

    fn send_event(&self, kind: &str, resumed: Option<bool>) {
        if let Some(s) = self.session.upgrade() {
            let mut ev = EventServerMessage::new("room", kind);
            ev.resumed = resumed;
            s.send_message(ServerMessage::event(ev));
        }
    }

    /// An error for the client, answering its join request if still open.
    fn fail(&mut self, err: Error) {
        if let Some(s) = self.session.upgrade() {
            let id = self.join_id.take().unwrap_or_default();
            s.send_message(ServerMessage::error(&id, err));
        }
    }

    fn rewrite_outgoing(&self, text: String) -> String {
        let (Some(remote), Ok(mut v)) = (&self.remote_id, serde_json::from_str::<Value>(&text))
        else {
            return text;
        };
        if v["type"] == "message" {
            let r = &mut v["message"]["recipient"];
            if r["type"] == "session" && r["sessionid"] == self.local_id.as_str() {
                r["sessionid"] = json!(remote);
                return v.to_string();
            }
        }
        text
    }

    /// Rewrite a message of the remote session for the local client and
    /// deliver it.
    fn process_message(&mut self, mut v: Value) -> Step {
        let remote = self.remote_id.clone().unwrap_or_default();
        let local = self.local_id.clone();
        let change_room = self.room_id != self.remote_room_id;
        let (room_id, remote_room_id) = (self.room_id.clone(), self.remote_room_id.clone());
        let fix_room = |x: &mut Value| {
            if change_room && x.as_str() == Some(remote_room_id.as_str()) {
                *x = json!(room_id);
            }
        };
        let fix_session = |x: &mut Value| {
            if !remote.is_empty() && x.as_str() == Some(remote.as_str()) {
                *x = json!(local);
            }
        };
        let mut close = false;
        let kind = v["type"].as_str().unwrap_or_default().to_owned();
        match kind.as_str() {
            "message" | "control" => {
                let body = &mut v[kind.as_str()];
                for who in ["recipient", "sender"] {
                    if body[who]["type"] == "session" {
                        fix_session(&mut body[who]["sessionid"]);
                    }
                }
                if let Some(Value::Object(data)) = body.get_mut("data") {
                    let offer = matches!(
                        data.get("type").and_then(Value::as_str),
                        Some("offer" | "answer")
                    );
                    if kind == "message" && offer {
                        data.get_mut("from").map(fix_session);
                        data.get_mut("to").map(fix_session);
                    }
                    if kind == "control"
                        && data.get("action").and_then(Value::as_str) == Some("forceMute")
                    {
                        data.get_mut("peerId").map(fix_session);
                    }
                }
            }
            "event" => {
                let target = v["event"]["target"].as_str().unwrap_or_default().to_owned();
                let ev_kind = v["event"]["type"].as_str().unwrap_or_default().to_owned();
                let ev = &mut v["event"];
                match (target.as_str(), ev_kind.as_str()) {
                    ("participants", "update") => {
                        fix_room(&mut ev["update"]["roomid"]);
                        let mut found = false;
                        for list in ["changed", "users"] {
                            if let Some(Value::Array(users)) = ev["update"].get_mut(list) {
                                for u in users.iter_mut().filter_map(Value::as_object_mut) {
                                    self.update_actor(u, "actorId", "actorType");
                                    for key in ["sessionId", "sessionid"] {
                                        if !found
                                            && u.get(key).and_then(Value::as_str)
                                                == Some(remote.as_str())
                                        {
                                            u.insert(key.into(), json!(local));
                                            found = true;
                                        }
                                    }
                                }
                            }
                            found = false;
                        }
                    }
                    ("participants", "flags") => {
                        fix_room(&mut ev["flags"]["roomid"]);
                        fix_session(&mut ev["flags"]["sessionid"]);
                    }
                    ("participants", "message") | ("room", "message") => {
                        fix_room(&mut ev["message"]["roomid"]);
                        if target == "room" {
                            self.update_chat(&mut ev["message"]["data"]);
                        }
                    }
                    ("room", "join") => {
                        if let Some(Value::Array(list)) = ev.get_mut("join") {
                            if let Some(e) =
                                list.iter_mut().find(|e| e["sessionid"] == remote.as_str())
                            {
                                e["sessionid"] = json!(local);
                            }
                        }
                    }
                    ("room", "leave") => {
                        if let Some(Value::Array(list)) = ev.get_mut("leave") {
                            if let Some(e) = list
                                .iter_mut()
                                .find(|e| e.as_str() == Some(remote.as_str()))
                            {
                                *e = json!(local);
                                close = self.close_on_leave;
                            }
                        }
                    }
                    ("roomlist", k @ ("invite" | "disinvite" | "update")) => {
                        fix_room(&mut ev[k]["roomid"]);
                    }
                    _ => {}
                }
            }
            "error" if v["error"]["code"] == "already_joined" => {
                fix_room(&mut v["error"]["details"]["room"]["roomid"]);
            }
            "room" => {
                if self.join_id.is_some() && v["id"].as_str() == self.join_id.as_deref() {
                    self.join_id = None;
                }
                if v["room"]["roomid"] == "" && self.close_on_leave {
                    close = true;
                } else {
                    fix_room(&mut v["room"]["roomid"]);
                }
            }
            _ => {}
        }
        let Some(session) = self.session.upgrade() else {
            return Step::Close;
        };
        match serde_json::from_value::<ServerMessage>(v.clone()) {
            Ok(msg) => session.send(&OutMsg::with_text(msg, v.to_string())),
            Err(e) => {
                debug!(session = %self.local_id, error = %e, "unexpected message from federated server")
            }
        }
        if close {
            Step::Close
        } else {
            Step::Continue
        }
    }

    /// Users of the remote Nextcloud become federated users here, federated
    /// users of ours become local users again.
    fn update_actor(&self, u: &mut Map<String, Value>, id_key: &str, type_key: &str) -> bool {
        let (Some(Value::String(kind)), Some(Value::String(id))) = (u.get(type_key), u.get(id_key))
        else {
            return false;
        };
        let local = format!("@{}", self.local_cloud);
        let (new_id, new_kind) = match kind.as_str() {
            "federated_users" if id.ends_with(&local) => {
                (id[..id.len() - local.len()].to_owned(), "users")
            }
            "users" => (format!("{id}@{}", self.remote_cloud), "federated_users"),
            _ => return false,
        };
        u.insert(id_key.into(), json!(new_id));
        u.insert(type_key.into(), json!(new_kind));
        true
    }

    fn update_chat(&self, data: &mut Value) {
        if data["type"] != "chat" {
            return;
        }
        let fix = |c: &mut Value| {
            let Some(c) = c.as_object_mut() else { return };
            self.update_actor(c, "actorId", "actorType");
            self.update_actor(c, "lastEditActorId", "lastEditActorType");
            if self.room_id != self.remote_room_id
                && c.get("token").and_then(Value::as_str) == Some(self.remote_room_id.as_str())
            {
                c.insert("token".into(), json!(self.room_id));
            }
            if let Some(p) = c.get_mut("parent").and_then(Value::as_object_mut) {
                self.update_actor(p, "actorId", "actorType");
                self.update_actor(p, "lastEditActorId", "lastEditActorType");
            }
        };
        if let Some(c) = data["chat"].get_mut("comment") {
            fix(c);
        }
        if let Some(Value::Array(list)) = data["chat"].get_mut("comments") {
            list.iter_mut().for_each(fix);
        }
    }
}

enum Step {
    Continue,
    Send(Vec<String>),
    Close,
}

enum ConnectError {
    /// The server does not list `federation` in its features.
    Unsupported,
    Network(String),
}

async fn connect(url: &str) -> Result<Ws, ConnectError> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (ws, response) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| ConnectError::Network(e.to_string()))?;
    let supported = response
        .headers()
        .get_all("x-spreed-signaling-features")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == proto::client::FEATURE_FEDERATION);
    if !supported {
        return Err(ConnectError::Unsupported);
    }
    Ok(ws)
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
