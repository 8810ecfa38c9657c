//! The embedded fake Nextcloud the server authenticates the clients against.
//!
//! It listens on `127.0.0.1` only (never on another address: it answers
//! anybody who knows the secret with a valid user), checks the checksum of
//! every request with the backend secret, and answers inside the OCS
//! envelope:
//! * `auth` with user `sample-user`,
//! * `room` (join and leave) with the requested room id,
//! * `ping` and `session` with an empty success,
//! * the capabilities query (any path ending in
//!   `/ocs/v2.php/cloud/capabilities`) with a small feature list without
//!   `signaling-v3`, so servers cache it instead of asking on every request.
//!
//! The server therefore needs `[backend] allowall = true` and the same
//! `secret`, like with upstream's client.

use std::convert::Infallible;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use proto::backend::{validate_checksum, BackendClientRequest, HEADER_CHECKSUM, HEADER_RANDOM};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// The user every client is authenticated as.
pub const USER_ID: &str = "sample-user";
/// Path clients put into their hello (`auth.url`).
pub const AUTH_PATH: &str = "/auth";
const CAPABILITIES_SUFFIX: &str = "/ocs/v2.php/cloud/capabilities";
const MAX_BODY: usize = 1 << 20;

/// Requests answered, by kind.
#[derive(Debug, Default)]
pub struct Counts {
    pub auth: AtomicU64,
    pub room: AtomicU64,
    pub ping: AtomicU64,
    pub session: AtomicU64,
    pub capabilities: AtomicU64,
    /// Missing or wrong checksum, malformed body, unknown type.
    pub rejected: AtomicU64,
}

/// Snapshot of [`Counts`] for the report.
#[derive(Clone, Copy, Debug, Default, Serialize, PartialEq, Eq)]
pub struct CountsSnapshot {
    pub auth: u64,
    pub room: u64,
    pub ping: u64,
    pub session: u64,
    pub capabilities: u64,
    pub rejected: u64,
}

impl Counts {
    pub fn snapshot(&self) -> CountsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CountsSnapshot {
            auth: g(&self.auth),
            room: g(&self.room),
            ping: g(&self.ping),
            session: g(&self.session),
            capabilities: g(&self.capabilities),
            rejected: g(&self.rejected),
        }
    }
}

struct State {
    secret: Vec<u8>,
    counts: Arc<Counts>,
}

/// A running fake backend; stops when dropped.
pub struct FakeBackend {
    addr: SocketAddr,
    counts: Arc<Counts>,
    task: JoinHandle<()>,
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeBackend {
    /// Binds `127.0.0.1:0` and serves until dropped.
    pub async fn start(secret: &[u8]) -> std::io::Result<FakeBackend> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let addr = listener.local_addr()?;
        let counts = Arc::new(Counts::default());
        let state = Arc::new(State {
            secret: secret.to_vec(),
            counts: counts.clone(),
        });
        let task = tokio::spawn(accept_loop(listener, state));
        Ok(FakeBackend { addr, counts, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL clients send in their hello.
    pub fn auth_url(&self) -> String {
        format!("http://{}{AUTH_PATH}", self.addr)
    }

    pub fn counts(&self) -> CountsSnapshot {
        self.counts.snapshot()
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Typically EMFILE under a large run: back off instead of spinning.
                warn!(error = %e, "fake backend: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| handle(state.clone(), req));
            if let Err(e) = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "fake backend connection ended");
            }
        });
    }
}

fn respond(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

/// `data` inside the OCS envelope Nextcloud wraps answers in.
fn ocs(status: StatusCode, data: Value) -> Response<Full<Bytes>> {
    let ok = status.is_success();
    respond(
        status,
        json!({"ocs": {
            "meta": {
                "status": if ok { "ok" } else { "failure" },
                "statuscode": status.as_u16(),
                "message": status.canonical_reason().unwrap_or(""),
            },
            "data": data,
        }}),
    )
}

fn reject(state: &State, status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    state.counts.rejected.fetch_add(1, Ordering::Relaxed);
    warn!(code, message, "fake backend rejected a request");
    ocs(
        status,
        json!({"type": "error", "error": {"code": code, "message": message}}),
    )
}

async fn handle(
    state: Arc<State>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    if parts.method == Method::GET && parts.uri.path().ends_with(CAPABILITIES_SUFFIX) {
        state.counts.capabilities.fetch_add(1, Ordering::Relaxed);
        return Ok(ocs(StatusCode::OK, capabilities()));
    }
    if parts.method != Method::POST {
        return Ok(reject(
            &state,
            StatusCode::METHOD_NOT_ALLOWED,
            "invalid_request",
            "only POST is supported",
        ));
    }
    let body = match Limited::new(body, MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => {
            return Ok(reject(
                &state,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "unreadable body",
            ))
        }
    };
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let (random, checksum) = (header(HEADER_RANDOM), header(HEADER_CHECKSUM));
    if random.is_empty() || checksum.is_empty() {
        return Ok(reject(
            &state,
            StatusCode::FORBIDDEN,
            "invalid_request",
            "checksum headers missing",
        ));
    }
    if !validate_checksum(checksum, random, &body, &state.secret) {
        return Ok(reject(
            &state,
            StatusCode::FORBIDDEN,
            "invalid_request",
            "checksum does not match: is the backend secret the server's?",
        ));
    }
    let request: BackendClientRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(_) => {
            return Ok(reject(
                &state,
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "malformed body",
            ))
        }
    };
    Ok(ocs(StatusCode::OK, answer(&state.counts, &request)))
}

/// The answer to a checked backend request.
fn answer(counts: &Counts, request: &BackendClientRequest) -> Value {
    let version = proto::backend::BACKEND_VERSION;
    match request.kind.as_str() {
        "auth" => {
            counts.auth.fetch_add(1, Ordering::Relaxed);
            json!({"type": "auth", "auth": {"version": version, "userid": USER_ID}})
        }
        "room" => {
            counts.room.fetch_add(1, Ordering::Relaxed);
            let roomid = request.room.as_ref().map_or("", |r| r.roomid.as_str());
            json!({"type": "room", "room": {
                "version": version,
                "roomid": roomid,
                "properties": {"name": format!("Benchmark {roomid}")},
            }})
        }
        "ping" => {
            counts.ping.fetch_add(1, Ordering::Relaxed);
            let roomid = request.ping.as_ref().map_or("", |p| p.roomid.as_str());
            json!({"type": "room", "room": {"version": version, "roomid": roomid}})
        }
        "session" => {
            counts.session.fetch_add(1, Ordering::Relaxed);
            let roomid = request.session.as_ref().map_or("", |s| s.roomid.as_str());
            json!({"type": "session", "session": {"version": version, "roomid": roomid}})
        }
        other => {
            counts.rejected.fetch_add(1, Ordering::Relaxed);
            warn!(kind = other, "fake backend: unsupported request type");
            json!({"type": "error", "error": {
                "code": "invalid_request",
                "message": format!("unsupported request type {other:?}"),
            }})
        }
    }
}

fn capabilities() -> Value {
    json!({
        "version": {"major": 24, "minor": 0, "micro": 0, "string": "24.0.0"},
        "capabilities": {"spreed": {
            "features": ["audio", "video", "chat-v2", "conversation-v4", "multi-room-users"],
            "config": {"signaling": {}},
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::backend::{checksum, RoomRequest};

    fn post(addr: SocketAddr, path: &str, headers: &[(&str, String)], body: &str) -> (u16, Value) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        let mut req = format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        req.push_str(body);
        s.write_all(req.as_bytes()).expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        let status: u16 = out[9..12].parse().expect("status");
        let json_start = out.find("\r\n\r\n").expect("header end") + 4;
        (
            status,
            serde_json::from_str(&out[json_start..]).expect("json body"),
        )
    }

    fn signed(secret: &[u8], body: &str) -> Vec<(&'static str, String)> {
        let random = "a".repeat(64);
        let sum = checksum(&random, body.as_bytes(), secret);
        vec![(HEADER_RANDOM, random), (HEADER_CHECKSUM, sum)]
    }

    #[tokio::test]
    async fn answers_auth_room_and_rejects_bad_checksum() {
        let b = FakeBackend::start(b"s3cret").await.expect("start");
        assert!(b.auth_url().starts_with("http://127.0.0.1:"));
        let addr = b.addr();
        let auth = serde_json::to_string(&BackendClientRequest::auth(None)).expect("json");
        let room = serde_json::to_string(&BackendClientRequest::room(RoomRequest {
            version: "1.0".into(),
            roomid: "r1".into(),
            action: "join".into(),
            userid: USER_ID.into(),
            sessionid: "talk".into(),
            ..Default::default()
        }))
        .expect("json");
        let (status, v, status2, v2, status3) = tokio::task::spawn_blocking(move || {
            let (s1, v1) = post(addr, AUTH_PATH, &signed(b"s3cret", &auth), &auth);
            let (s2, v2) = post(addr, AUTH_PATH, &signed(b"s3cret", &room), &room);
            let (s3, _) = post(addr, AUTH_PATH, &signed(b"wrong", &auth), &auth);
            (s1, v1, s2, v2, s3)
        })
        .await
        .expect("join");
        assert_eq!(status, 200);
        assert_eq!(v["ocs"]["meta"]["statuscode"], 200);
        assert_eq!(v["ocs"]["data"]["auth"]["userid"], USER_ID);
        assert_eq!(status2, 200);
        assert_eq!(v2["ocs"]["data"]["room"]["roomid"], "r1");
        assert_eq!(status3, 403);
        let c = b.counts();
        assert_eq!((c.auth, c.room, c.rejected), (1, 1, 1));
    }
}
