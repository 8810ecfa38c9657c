//! A WebSocket client for the `/spreed` endpoint, speaking raw JSON.
//!
//! The client reads the socket only while a test waits for something, so a
//! test that stops calling `recv` really stops reading (the server then sees
//! TCP back-pressure — what slow-client tests need). Messages read while
//! looking for a specific reply are buffered and handed out later by `recv`
//! in arrival order, so helpers like [`TestClient::join_room`] do not lose
//! events that arrive in between.

use std::collections::{HashSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::SinkExt;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::checksum::{internal_token, random_hex};
use crate::DEFAULT_TIMEOUT;

mod receive;

use receive::assert_type;

/// `ws://<addr>/spreed`.
pub fn spreed_url(addr: SocketAddr) -> String {
    format!("ws://{addr}/spreed")
}

/// Recipient object addressing one session.
pub fn recipient_session(sessionid: &str) -> Value {
    json!({"type": "session", "sessionid": sessionid})
}

/// Recipient object addressing all sessions of a user.
pub fn recipient_user(userid: &str) -> Value {
    json!({"type": "user", "userid": userid})
}

/// Recipient object addressing the current room.
pub fn recipient_room() -> Value {
    json!({"type": "room"})
}

/// The close frame the server sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CloseInfo {
    pub code: u16,
    pub reason: String,
}

/// One thing read from the socket, for tests that inspect raw traffic.
#[derive(Clone, Debug)]
pub enum Incoming {
    /// A text frame holding JSON.
    Json(Value),
    /// A text frame that is not JSON.
    Text(String),
    Binary(Vec<u8>),
    /// The connection ended: `Some` with the close frame's content, `None`
    /// if it ended without a close frame (EOF/reset/error).
    Closed(Option<CloseInfo>),
    /// Nothing arrived before the deadline.
    Timeout,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A signaling client for tests; see the module docs.
///
/// All receiving methods wait at most [`DEFAULT_TIMEOUT`] (change with
/// [`with_timeout`](Self::with_timeout)) and panic with the offending message
/// if the wrong thing arrives.
pub struct TestClient {
    ws: Ws,
    /// JSON messages already read but not yet handed out, in arrival order.
    pending: VecDeque<Value>,
    skip_types: HashSet<String>,
    next_id: u64,
    timeout: Duration,
    /// Set once the connection ended, so later waits report it instead of
    /// reading a dead stream.
    closed: Option<Option<CloseInfo>>,
    /// A close frame (possibly empty) ended the connection, not EOF or an
    /// error.
    close_frame: bool,
    session_id: Option<String>,
    resume_id: Option<String>,
    user_id: Option<String>,
}

impl TestClient {
    /// Connects to `url` (`ws://127.0.0.1:PORT/spreed`); panics on failure.
    pub async fn connect(url: &str) -> TestClient {
        Self::connect_with_headers(url, &[]).await
    }

    /// Connects with extra handshake headers (`X-Real-IP`, `Origin`, ...).
    pub async fn connect_with_headers(url: &str, headers: &[(&str, &str)]) -> TestClient {
        match Self::try_connect(url, headers).await {
            Ok(c) => c,
            Err(e) => panic!("TestClient: cannot connect to {url}: {e}"),
        }
    }

    /// Like [`connect_with_headers`](Self::connect_with_headers) but returns the
    /// error (e.g. to assert a failed upgrade).
    pub async fn try_connect(url: &str, headers: &[(&str, &str)]) -> Result<TestClient, WsError> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            let name = http::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| WsError::HttpFormat(e.into()))?;
            let value =
                http::HeaderValue::from_str(value).map_err(|e| WsError::HttpFormat(e.into()))?;
            request.headers_mut().append(name, value);
        }
        let connect = tokio_tungstenite::connect_async_with_config(request, None, true);
        let (ws, _response) = match tokio::time::timeout(DEFAULT_TIMEOUT, connect).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(WsError::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "WebSocket handshake timed out",
                )))
            }
        };
        Ok(TestClient {
            ws,
            pending: VecDeque::new(),
            skip_types: HashSet::new(),
            next_id: 1,
            timeout: DEFAULT_TIMEOUT,
            closed: None,
            close_frame: false,
            session_id: None,
            resume_id: None,
            user_id: None,
        })
    }

    /// True once the connection ended with a close frame (empty or not);
    /// false after EOF, a reset or an error.
    pub fn got_close_frame(&self) -> bool {
        self.close_frame
    }

    /// Silently drops every received message of this `type` (e.g. `"welcome"`).
    pub fn skip(mut self, message_type: &str) -> Self {
        self.skip_types.insert(message_type.to_owned());
        self
    }

    /// Changes the default wait of all receiving helpers.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Public session id from the last successful hello.
    pub fn session_id(&self) -> Option<&str> {
        self.session_id.as_deref()
    }

    /// Resume id (private session id) from the last successful hello.
    pub fn resume_id(&self) -> Option<&str> {
        self.resume_id.as_deref()
    }

    /// User id from the last successful hello (may be `""` for guests).
    pub fn user_id(&self) -> Option<&str> {
        self.user_id.as_deref()
    }

    /// A fresh request id (`"1"`, `"2"`, ...).
    pub fn next_id(&mut self) -> String {
        let id = self.next_id;
        self.next_id += 1;
        id.to_string()
    }

    // ----- sending -----

    /// Sends a WebSocket message, returning transport errors (e.g. for
    /// oversize frames the server may cut off mid-write).
    pub async fn try_send(&mut self, msg: Message) -> Result<(), WsError> {
        match tokio::time::timeout(self.timeout, self.ws.send(msg)).await {
            Ok(r) => r,
            Err(_) => Err(WsError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "WebSocket send timed out",
            ))),
        }
    }

    /// Sends a WebSocket message; panics on failure.
    pub async fn send_ws(&mut self, msg: Message) {
        if let Err(e) = self.try_send(msg).await {
            panic!("TestClient: send failed: {e}");
        }
    }

    pub async fn send_json(&mut self, msg: &Value) {
        self.send_text(&msg.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.send_ws(Message::text(text)).await;
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.send_ws(Message::binary(data)).await;
    }

    /// Sends `base` (a JSON object) with an extra `"pad"` string field so the
    /// text frame is exactly `total_len` bytes, for testing size limits at
    /// the boundary. Panics if `base` is not an object or already too long.
    pub async fn send_padded_json(&mut self, base: &Value, total_len: usize) {
        let text = padded_json(base, total_len);
        self.send_text(&text).await;
    }

    /// Sends `msg` with an auto id (unless it has one) and returns the id.
    pub async fn send_with_id(&mut self, mut msg: Value) -> String {
        let id = match msg.get("id").and_then(Value::as_str) {
            Some(id) => id.to_owned(),
            None => {
                let id = self.next_id();
                msg["id"] = Value::String(id.clone());
                id
            }
        };
        self.send_json(&msg).await;
        id
    }

    /// Sends `msg` (auto id) and returns the reply carrying the same id;
    /// unrelated messages arriving meanwhile stay queued for `recv`.
    pub async fn request(&mut self, msg: Value) -> Value {
        let id = self.send_with_id(msg).await;
        self.recv_reply(&id).await
    }

    // ----- signaling helpers -----

    /// Hello v1 with `auth.url = backend_url` and the given `params`; returns
    /// the reply (a `hello` or an `error`). Remembers the session ids.
    pub async fn hello_v1(&mut self, backend_url: &str, params: Value) -> Value {
        let reply = self
            .request(json!({"type": "hello", "hello": {
                "version": "1.0",
                "auth": {"url": backend_url, "params": params},
            }}))
            .await;
        self.remember_hello(&reply);
        reply
    }

    /// Hello as a Talk user (`params = {userid, ticket}`, as Talk sends it);
    /// panics unless the reply is a `hello`.
    pub async fn hello_user(&mut self, backend_url: &str, userid: &str) -> Value {
        let params = json!({"userid": userid, "ticket": format!("ticket-{userid}")});
        let reply = self.hello_v1(backend_url, params).await;
        assert_type(&reply, "hello");
        reply
    }

    /// Hello resuming the session with private id `resumeid`; returns the reply.
    pub async fn hello_resume(&mut self, resumeid: &str) -> Value {
        let reply = self
            .request(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": resumeid}}))
            .await;
        self.remember_hello(&reply);
        reply
    }

    /// Hello as an internal client (`auth.type = "internal"`), authenticated
    /// with `internal_secret`; returns the reply.
    pub async fn hello_internal(&mut self, backend: &str, internal_secret: &str) -> Value {
        let random = random_hex(64);
        let token = internal_token(internal_secret, &random);
        let reply = self
            .request(json!({"type": "hello", "hello": {
                "version": "1.0",
                "auth": {"type": "internal", "params": {
                    "random": random, "token": token, "backend": backend,
                }},
            }}))
            .await;
        self.remember_hello(&reply);
        reply
    }

    fn remember_hello(&mut self, reply: &Value) {
        if reply["type"] == "hello" {
            let h = &reply["hello"];
            self.session_id = h["sessionid"].as_str().map(str::to_owned);
            self.resume_id = h["resumeid"].as_str().map(str::to_owned);
            self.user_id = h["userid"].as_str().map(str::to_owned);
        }
    }

    /// Joins `roomid` with the Talk session id `talk_session_id`; returns the
    /// reply with the request's id (`room` or `error`). Note the server sends
    /// no reply when the session already is in that room.
    pub async fn join_room(&mut self, roomid: &str, talk_session_id: &str) -> Value {
        self.request(json!({"type": "room", "room": {
            "roomid": roomid, "sessionid": talk_session_id,
        }}))
        .await
    }

    /// Leaves the current room (`roomid: ""`); returns the reply. The server
    /// sends none if the session is in no room.
    pub async fn leave_room(&mut self) -> Value {
        self.request(json!({"type": "room", "room": {"roomid": "", "sessionid": ""}}))
            .await
    }

    /// Sends a `message` (no reply expected on success); returns its id.
    pub async fn send_message(&mut self, recipient: Value, data: Value) -> String {
        self.send_with_id(json!({"type": "message", "message": {
            "recipient": recipient, "data": data,
        }}))
        .await
    }

    /// Sends a `control` message; returns its id.
    pub async fn send_control(&mut self, recipient: Value, data: Value) -> String {
        self.send_with_id(json!({"type": "control", "control": {
            "recipient": recipient, "data": data,
        }}))
        .await
    }

    /// Sends `bye` and returns the server's `bye` reply.
    pub async fn bye(&mut self) -> Value {
        self.request(json!({"type": "bye", "bye": {}})).await
    }

    // ----- receiving -----
}

/// `base` plus a `"pad"` field of `a`s, serialized to exactly `total_len` bytes.
fn padded_json(base: &Value, total_len: usize) -> String {
    let mut v = base.clone();
    assert!(v.is_object(), "padded_json: base must be a JSON object");
    v["pad"] = Value::String(String::new());
    let empty_len = v.to_string().len();
    assert!(
        total_len >= empty_len,
        "padded_json: {total_len} bytes is shorter than the unpadded message ({empty_len})"
    );
    v["pad"] = Value::String("a".repeat(total_len - empty_len));
    let text = v.to_string();
    debug_assert_eq!(text.len(), total_len);
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;
    use tokio::net::TcpListener;
    use tokio::time::Instant;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::protocol::CloseFrame;

    /// A tiny WebSocket server: answers each JSON message with
    /// `{"id": <same>, "type": "echo", "echo": <message>}`, answers
    /// `{"type":"burst"}` with three events and then the reply, and closes with
    /// 4000 "bye" on `{"type":"close"}`.
    async fn echo_server() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    ws.send(Message::text(r#"{"type":"welcome","welcome":{}}"#))
                        .await
                        .ok();
                    while let Some(Ok(msg)) = ws.next().await {
                        let Message::Text(t) = msg else {
                            if msg.is_binary() {
                                let _ = ws.send(Message::text("not json")).await;
                            }
                            continue;
                        };
                        let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                        if v["type"] == "close" {
                            let _ = ws
                                .close(Some(CloseFrame {
                                    code: CloseCode::from(4000),
                                    reason: "bye".into(),
                                }))
                                .await;
                            while ws.next().await.is_some() {}
                            return;
                        }
                        if v["type"] == "burst" {
                            for i in 0..3 {
                                let ev = json!({"type": "event", "event": {
                                    "target": "room", "type": "join", "n": i}});
                                let _ = ws.send(Message::text(ev.to_string())).await;
                            }
                        }
                        let reply = json!({"id": v["id"], "type": "echo", "echo": v});
                        if ws.send(Message::text(reply.to_string())).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, task)
    }

    #[tokio::test]
    async fn echo_roundtrip_and_skip() {
        let (addr, server) = echo_server().await;
        let mut c = TestClient::connect(&spreed_url(addr)).await;
        c.expect_type("welcome").await;
        c.send_json(&json!({"type": "x"})).await;
        let v = c.expect_type("echo").await;
        assert_eq!(v["echo"], json!({"type": "x"}));
        c.expect_no_message(Duration::from_millis(50)).await;
        c.close().await;

        let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
        let reply = c.request(json!({"type": "ping"})).await;
        assert_eq!(reply["id"], "1");
        assert_eq!(reply["echo"]["type"], "ping");
        server.abort();
    }

    #[tokio::test]
    async fn request_buffers_unrelated_messages_in_order() {
        let (addr, server) = echo_server().await;
        let mut c = TestClient::connect(&spreed_url(addr)).await;
        let reply = c.request(json!({"type": "burst"})).await;
        assert_eq!(reply["type"], "echo");
        // Welcome and the three events are still there, in order.
        c.expect_type("welcome").await;
        for i in 0..3 {
            let ev = c.expect_event("room", "join").await;
            assert_eq!(ev["event"]["n"], i);
        }
        assert!(c.recv_timeout(Duration::from_millis(50)).await.is_none());
        server.abort();
    }

    #[tokio::test]
    async fn close_frame_and_padded_json() {
        let (addr, server) = echo_server().await;
        let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
        c.send_padded_json(&json!({"type": "big"}), 1000).await;
        let v = c.expect_type("echo").await;
        assert_eq!(v["echo"].to_string().len(), 1000);

        c.send_binary(vec![1, 2, 3]).await;
        match c.next_incoming(Instant::now() + DEFAULT_TIMEOUT).await {
            Incoming::Text(t) => assert_eq!(t, "not json"),
            other => panic!("unexpected {other:?}"),
        }

        c.send_json(&json!({"type": "close"})).await;
        let info = c.expect_closed(Duration::from_secs(2)).await;
        assert_eq!(
            info,
            Some(CloseInfo {
                code: 4000,
                reason: "bye".into()
            })
        );
        // Once closed, further waits report the close again.
        assert!(matches!(
            c.next_incoming(Instant::now()).await,
            Incoming::Closed(Some(_))
        ));
        server.abort();
    }

    #[test]
    fn padded_json_has_exact_length() {
        for n in [25, 100, 65536] {
            assert_eq!(padded_json(&json!({"type": "hello"}), n).len(), n);
        }
    }

    #[tokio::test]
    async fn connect_failure_is_an_error() {
        let port = crate::free_port();
        let res = TestClient::try_connect(&format!("ws://127.0.0.1:{port}/spreed"), &[]).await;
        assert!(res.is_err());
    }
}
