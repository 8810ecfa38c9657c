//! Reading from a [`TestClient`]: the next message or close, waiting for a
//! reply, an event or an error, and asserting that nothing (more) arrives.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use super::{CloseInfo, Incoming, TestClient};

impl TestClient {
    /// Reads the next frame (or the end of the connection), waiting until
    /// `deadline`. Bypasses the queue and `skip` types; ping/pong frames are
    /// handled by tungstenite and never returned.
    pub async fn next_incoming(&mut self, deadline: Instant) -> Incoming {
        if let Some(info) = &self.closed {
            return Incoming::Closed(info.clone());
        }
        loop {
            let item = match tokio::time::timeout_at(deadline, self.ws.next()).await {
                Err(_) => return Incoming::Timeout,
                Ok(item) => item,
            };
            let incoming = match item {
                Some(Ok(Message::Text(t))) => match serde_json::from_str(t.as_str()) {
                    Ok(v) => Incoming::Json(v),
                    Err(_) => Incoming::Text(t.as_str().to_owned()),
                },
                Some(Ok(Message::Binary(b))) => Incoming::Binary(b.to_vec()),
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Close(frame))) => {
                    self.close_frame = true;
                    Incoming::Closed(frame.map(|f| CloseInfo {
                        code: u16::from(f.code),
                        reason: f.reason.as_str().to_owned(),
                    }))
                }
                Some(Err(_)) | None => Incoming::Closed(None),
            };
            if let Incoming::Closed(info) = &incoming {
                self.closed = Some(info.clone());
            }
            return incoming;
        }
    }

    /// Next JSON message (queued first), skipping `skip` types. `None` on
    /// timeout; panics if the connection closes or a non-JSON frame arrives.
    async fn read_json(&mut self, deadline: Instant, waiting_for: &str) -> Option<Value> {
        if let Some(v) = self.pending.pop_front() {
            return Some(v);
        }
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Json(v) => {
                    if self.is_skipped(&v) {
                        continue;
                    }
                    return Some(v);
                }
                Incoming::Timeout => return None,
                Incoming::Closed(info) => {
                    panic!(
                        "TestClient: connection closed ({info:?}) while waiting for {waiting_for}"
                    )
                }
                Incoming::Text(t) => {
                    panic!("TestClient: non-JSON text frame while waiting for {waiting_for}: {t:?}")
                }
                Incoming::Binary(b) => panic!(
                    "TestClient: binary frame ({} bytes) while waiting for {waiting_for}",
                    b.len()
                ),
            }
        }
    }

    fn is_skipped(&self, v: &Value) -> bool {
        v["type"]
            .as_str()
            .is_some_and(|t| self.skip_types.contains(t))
    }

    /// The next message, waiting up to the default timeout; panics on timeout.
    pub async fn recv(&mut self) -> Value {
        let timeout = self.timeout;
        match self.recv_timeout(timeout).await {
            Some(v) => v,
            None => panic!("TestClient: no message received within {timeout:?}"),
        }
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub async fn recv_timeout(&mut self, timeout: Duration) -> Option<Value> {
        self.read_json(Instant::now() + timeout, "a message").await
    }

    /// The first message (queued or new) satisfying `pred`; others stay
    /// queued in order. Panics on timeout, listing what arrived instead.
    pub async fn recv_matching(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(pos) = self.pending.iter().position(&pred) {
            return self.pending.remove(pos).expect("position is in range");
        }
        let deadline = Instant::now() + self.timeout;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Json(v) if self.is_skipped(&v) => {}
                Incoming::Json(v) if pred(&v) => return v,
                Incoming::Json(v) => self.pending.push_back(v),
                Incoming::Timeout => panic!(
                    "TestClient: no matching message within {:?}; queued instead: {:?}",
                    self.timeout, self.pending
                ),
                other => panic!(
                    "TestClient: {other:?} while waiting for a matching message; queued: {:?}",
                    self.pending
                ),
            }
        }
    }

    /// The reply with request id `id` (see [`recv_matching`](Self::recv_matching)).
    pub async fn recv_reply(&mut self, id: &str) -> Value {
        self.recv_matching(|v| v["id"] == id).await
    }

    /// The next message, which must have `type == message_type`.
    pub async fn expect_type(&mut self, message_type: &str) -> Value {
        let v = self.recv().await;
        assert_type(&v, message_type);
        v
    }

    /// The next message, which must be an `error` with this `code`.
    pub async fn expect_error(&mut self, code: &str) -> Value {
        let v = self.recv().await;
        assert!(
            v["type"] == "error" && v["error"]["code"] == code,
            "TestClient: expected error {code:?}, got {v}"
        );
        v
    }

    /// The next message, which must be an `event` with this target and type.
    pub async fn expect_event(&mut self, target: &str, event_type: &str) -> Value {
        let v = self.recv().await;
        assert!(
            v["type"] == "event"
                && v["event"]["target"] == target
                && v["event"]["type"] == event_type,
            "TestClient: expected event {target}/{event_type}, got {v}"
        );
        v
    }

    /// Asserts that nothing (not even a close) arrives within `duration`.
    pub async fn expect_no_message(&mut self, duration: Duration) {
        if let Some(v) = self.pending.pop_front() {
            panic!("TestClient: expected no message, but had queued {v}");
        }
        let deadline = Instant::now() + duration;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Timeout => return,
                Incoming::Json(v) if self.is_skipped(&v) => {}
                other => panic!("TestClient: expected no message, got {other:?}"),
            }
        }
    }

    /// Waits up to `timeout` for the connection to end and returns the close
    /// frame (`None`: ended without one). Panics if a message arrives first
    /// or if the connection stays open.
    pub async fn expect_closed(&mut self, timeout: Duration) -> Option<CloseInfo> {
        if let Some(v) = self.pending.pop_front() {
            panic!("TestClient: expected close, but had queued {v}");
        }
        let deadline = Instant::now() + timeout;
        loop {
            match self.next_incoming(deadline).await {
                Incoming::Closed(info) => {
                    // Let tungstenite flush its close reply; errors just mean
                    // the server already dropped the socket.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), self.ws.close(None)).await;
                    return info;
                }
                Incoming::Timeout => {
                    panic!("TestClient: connection still open after {timeout:?}")
                }
                Incoming::Json(v) if self.is_skipped(&v) => {}
                other => panic!("TestClient: expected close, got {other:?}"),
            }
        }
    }

    /// Closes the connection cleanly (close frame 1000, then waits briefly
    /// for the server's close). Never panics.
    pub async fn close(mut self) {
        if self.closed.is_some() {
            return;
        }
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), self.ws.close(Some(frame))).await;
        let deadline = Instant::now() + Duration::from_secs(1);
        while !matches!(
            self.next_incoming(deadline).await,
            Incoming::Closed(_) | Incoming::Timeout
        ) {}
    }
}

pub(super) fn assert_type(v: &Value, message_type: &str) {
    assert!(
        v["type"] == message_type,
        "TestClient: expected a {message_type:?} message, got {v}"
    );
}
