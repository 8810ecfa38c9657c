//! A fake Nextcloud server for end-to-end tests.
//!
//! It plays the part of the Talk app towards the signaling server: answers
//! `auth`, `room`, `ping` and `session` requests on the OCS signaling backend
//! path and the capabilities query, and checks what a real Nextcloud checks
//! (checksum headers, `OCS-APIRequest`). Every request is recorded so tests can
//! assert on exactly what the server sent, and any answer can be overridden
//! per test (errors, odd statuses, delays, dropped connections).
//!
//! Answers follow the shapes the Talk app sends (see upstream
//! `api_backend.go`), wrapped in the OCS envelope when the request carries
//! `OCS-APIRequest: true` — like Nextcloud, so a server that forgets the
//! header gets an unwrapped body and notices.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

use crate::checksum::{checksum, HEADER_CHECKSUM, HEADER_RANDOM};
use crate::http::{signed_room_request, HttpResponse};

/// Path of the signaling backend below the Nextcloud base URL (API v1).
const BACKEND_PATH_V1: &str = "ocs/v2.php/apps/spreed/api/v1/signaling/backend";
/// Same for API v3, used when `signaling-v3` is among the capabilities.
const BACKEND_PATH_V3: &str = "ocs/v2.php/apps/spreed/api/v3/signaling/backend";
const CAPABILITIES_SUFFIX: &str = "/ocs/v2.php/cloud/capabilities";

/// Upper bound for reading one request body; a stalled peer must not keep a
/// connection task alive forever.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A per-test answer for one kind of backend request.
///
/// Handlers get the full request body (`{"type": kind, kind: {...}}`; `Null`
/// for capabilities) and return one of these.
#[derive(Clone, Debug)]
pub enum Reply {
    /// What the fake answers without an override (see [`FakeBackend`]).
    Default,
    /// 200 with this JSON as OCS `data` (or bare if the request lacked
    /// `OCS-APIRequest`).
    Json(Value),
    /// 200 with `{"type":"error","error":{"code":..,"message":..}}` as OCS data:
    /// how Talk refuses e.g. an unknown room or a wrong ticket.
    Error { code: String, message: String },
    /// Exactly this status, content type (none if `None`) and body, no OCS
    /// wrapping.
    Raw {
        status: u16,
        content_type: Option<String>,
        body: Bytes,
    },
    /// Waits, then answers with the inner reply (slow-backend tests).
    Delay(Duration, Box<Reply>),
    /// Drops the connection without any response.
    Hangup,
}

impl Reply {
    pub fn json(body: Value) -> Reply {
        Reply::Json(body)
    }

    pub fn error(code: &str, message: &str) -> Reply {
        Reply::Error {
            code: code.to_owned(),
            message: message.to_owned(),
        }
    }

    pub fn raw(status: u16, content_type: Option<&str>, body: impl Into<Bytes>) -> Reply {
        Reply::Raw {
            status,
            content_type: content_type.map(str::to_owned),
            body: body.into(),
        }
    }

    /// This reply, sent only after `delay`.
    pub fn after(self, delay: Duration) -> Reply {
        Reply::Delay(delay, Box::new(self))
    }
}

/// Signature of a per-test handler.
pub type Handler = Arc<dyn Fn(&Value) -> Reply + Send + Sync + 'static>;

/// One request the fake received, recorded before it is answered (so a test
/// can see a request whose answer is still being delayed).
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    /// `auth`, `room`, `ping`, `session` (from the body's `type`), `invalid`
    /// (backend path, body without a string `type`), `capabilities`, or
    /// `unknown` (any other path or method; answered 404/405).
    pub kind: String,
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    /// Body parsed as JSON (`Null` if empty or not JSON).
    pub body: Value,
    pub raw_body: Bytes,
    /// Both checksum headers present, random non-empty, checksum valid.
    /// Only meaningful for backend requests; `false` for the others.
    pub checksum_ok: bool,
    pub received_at: Instant,
}

impl RecordedRequest {
    /// A header as text (case-insensitive name).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Whether `OCS-APIRequest: true` was sent.
    pub fn ocs_api_request(&self) -> bool {
        self.header("OCS-APIRequest")
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }

    /// The typed part of the body, e.g. `body["room"]` for a room request.
    pub fn payload(&self) -> &Value {
        &self.body[self.kind.as_str()]
    }

    fn is_backend(&self) -> bool {
        !matches!(self.kind.as_str(), "capabilities" | "unknown")
    }
}

struct State {
    handlers: HashMap<String, Handler>,
    requests: Vec<RecordedRequest>,
    features: Vec<String>,
    config: Value,
    /// `ETag` of the capabilities answer; a matching `If-None-Match` gets 304.
    caps_etag: Option<String>,
    /// `Cache-Control` of the capabilities answer.
    caps_cache_control: Option<String>,
}

struct Shared {
    secret: Vec<u8>,
    // Plain mutex: only held for short copies, never across an `.await`.
    state: Mutex<State>,
    /// Bumped after every recorded request; waiters watch it instead of polling.
    recorded: watch::Sender<u64>,
}

/// A fake Nextcloud server on `127.0.0.1:<random port>`.
///
/// One accept task serves all connections (each on a task of a `JoinSet`
/// owned by the accept task); dropping the value or calling
/// [`shutdown`](Self::shutdown) stops everything.
///
/// Default answers (override with [`set_handler`](Self::set_handler)):
/// * `auth` → `{"type":"auth","auth":{"version":"1.0","userid":<params.userid or "">,
///   "user":<params.user, if given>}}`
/// * `room` (join and leave) → `{"type":"room","room":{"version":"1.0","roomid":..,
///   "properties":{"name":"Room <roomid>"}}}`
/// * `ping` → `{"type":"room","room":{"version":"1.0","roomid":..}}` (what Talk
///   answers; the server ignores the content)
/// * `session` → `{"type":"session","session":{"version":"1.0","roomid":..}}`
/// * capabilities → Nextcloud 20 capabilities with `spreed.features`
///   ([`set_features`](Self::set_features), default without `signaling-v3`)
///   and `spreed.config` ([`set_config`](Self::set_config)).
///
/// A request with a missing or wrong checksum is recorded with
/// `checksum_ok == false` and answered 403 with an OCS-wrapped
/// `invalid_request` error.
pub struct FakeBackend {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        // Aborting the accept task drops its JoinSet, which aborts every
        // connection task, and closes the listener.
        self.task.abort();
    }
}

/// The features a Talk of the upstream era advertised, minus `signaling-v3`
/// so the server uses the v1 backend path unless a test opts in.
fn default_features() -> Vec<String> {
    [
        "audio",
        "video",
        "chat-v2",
        "conversation-v4",
        "guest-signaling",
        "empty-group-room",
        "guest-display-names",
        "multi-room-users",
        "favorites",
        "last-room-activity",
        "no-ping",
        "system-messages",
        "mention-flag",
        "in-call-flags",
        "notification-levels",
        "invite-groups-and-mails",
        "locked-one-to-one-rooms",
        "read-only-rooms",
        "chat-read-marker",
        "webinary-lobby",
        "start-call-flag",
        "chat-replies",
        "circles-support",
        "force-mute",
        "sip-support",
        "chat-read-status",
        "phonebook-search",
        "raise-hand",
        "room-description",
        "rich-object-sharing",
        "temp-user-avatar-api",
        "geo-location-sharing",
        "voice-message-sharing",
        "publishing-permissions",
        "clear-history",
        "direct-mention-flag",
        "notification-calls",
        "conversation-permissions",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn default_config() -> Value {
    json!({
        "attachments": {"allowed": true, "folder": "/Talk"},
        "chat": {"max-length": 32000, "read-privacy": 0},
        "conversations": {"can-create": true},
        "previews": {"max-gif-size": 3_145_728},
        "signaling": {"session-ping-limit": 200},
    })
}

impl FakeBackend {
    /// Binds `127.0.0.1:0` and starts serving. Panics if binding fails.
    pub async fn start(secret: &str) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("FakeBackend: cannot bind 127.0.0.1:0: {e}"));
        let addr = listener
            .local_addr()
            .unwrap_or_else(|e| panic!("FakeBackend: no local address: {e}"));
        let (recorded, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            secret: secret.as_bytes().to_vec(),
            state: Mutex::new(State {
                handlers: HashMap::new(),
                requests: Vec::new(),
                features: default_features(),
                config: default_config(),
                caps_etag: None,
                caps_cache_control: None,
            }),
            recorded,
        });
        let task = tokio::spawn(accept_loop(listener, shared.clone()));
        FakeBackend { shared, addr, task }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL with trailing slash, `http://127.0.0.1:PORT/` (the Nextcloud
    /// URL a backend is configured with; also the `Spreed-Signaling-Backend`
    /// value this fake sends).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `<url>ocs/v2.php/apps/spreed/api/v1/signaling/backend`: what clients
    /// put in hello `auth.url`.
    pub fn backend_url(&self) -> String {
        format!("{}{BACKEND_PATH_V1}", self.url())
    }

    /// The v3 variant of [`backend_url`](Self::backend_url).
    pub fn backend_url_v3(&self) -> String {
        format!("{}{BACKEND_PATH_V3}", self.url())
    }

    pub fn secret(&self) -> String {
        String::from_utf8_lossy(&self.shared.secret).into_owned()
    }

    /// Overrides the answer for one request kind (`auth`, `room`, `ping`,
    /// `session`, `capabilities`). Return [`Reply::Default`] to fall back to the
    /// default answer for some requests only.
    pub fn set_handler(
        &self,
        kind: &str,
        handler: impl Fn(&Value) -> Reply + Send + Sync + 'static,
    ) {
        self.shared
            .state
            .lock()
            .handlers
            .insert(kind.to_owned(), Arc::new(handler));
    }

    pub fn set_auth_handler(&self, handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.set_handler("auth", handler);
    }

    pub fn set_room_handler(&self, handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.set_handler("room", handler);
    }

    pub fn set_ping_handler(&self, handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.set_handler("ping", handler);
    }

    pub fn set_session_handler(&self, handler: impl Fn(&Value) -> Reply + Send + Sync + 'static) {
        self.set_handler("session", handler);
    }

    /// Back to the default answer for `kind`.
    pub fn clear_handler(&self, kind: &str) {
        self.shared.state.lock().handlers.remove(kind);
    }

    /// Replaces `spreed.features` in the capabilities answer.
    pub fn set_features<S: Into<String>>(&self, features: impl IntoIterator<Item = S>) {
        self.shared.state.lock().features = features.into_iter().map(Into::into).collect();
    }

    /// Adds one feature (e.g. `"signaling-v3"`) to `spreed.features`.
    pub fn add_feature(&self, feature: &str) {
        let mut state = self.shared.state.lock();
        if !state.features.iter().any(|f| f == feature) {
            state.features.push(feature.to_owned());
        }
    }

    /// Replaces `spreed.config` in the capabilities answer.
    pub fn set_config(&self, config: Value) {
        self.shared.state.lock().config = config;
    }

    /// Replaces `spreed.config.signaling` only.
    pub fn set_signaling_config(&self, signaling: Value) {
        self.shared.state.lock().config["signaling"] = signaling;
    }

    /// Sends `ETag` (answering a matching `If-None-Match` with 304) and
    /// `Cache-Control` with the capabilities; `None` leaves a header out.
    pub fn set_capabilities_cache(&self, etag: Option<&str>, cache_control: Option<&str>) {
        let mut state = self.shared.state.lock();
        state.caps_etag = etag.map(str::to_owned);
        state.caps_cache_control = cache_control.map(str::to_owned);
    }

    /// Publishes `key` as `config.signaling.hello-v2-token-key` (keeping the
    /// other signaling settings).
    pub fn set_token_key(&self, key: &str) {
        let mut state = self.shared.state.lock();
        if !state.config["signaling"].is_object() {
            state.config["signaling"] = json!({});
        }
        state.config["signaling"]["hello-v2-token-key"] = Value::String(key.to_owned());
    }

    /// A hello v2 token for `user` (empty: guest) signed with `key`, with
    /// this backend as issuer.
    pub fn token(&self, key: crate::jwt::TokenKey, user: &str) -> String {
        key.sign(&crate::jwt::hello_claims(&self.url(), user))
    }

    /// All requests so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.clone()
    }

    /// Requests of one kind, oldest first.
    pub fn requests_of(&self, kind: &str) -> Vec<RecordedRequest> {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }

    /// Backend requests whose checksum did not verify (should stay empty).
    pub fn checksum_failures(&self) -> Vec<RecordedRequest> {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_backend() && !r.checksum_ok)
            .cloned()
            .collect()
    }

    /// Forgets all recorded requests (e.g. after the setup phase of a test).
    pub fn clear_requests(&self) {
        self.shared.state.lock().requests.clear();
    }

    /// The oldest recorded request matching `pred`, waiting up to `timeout`
    /// for one to arrive; `None` on timeout (for "no such request" checks).
    pub async fn try_wait_for(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
        timeout: Duration,
    ) -> Option<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.recorded.subscribe();
        loop {
            // Mark the current version seen *before* looking, so a request
            // recorded after the look wakes us up.
            rx.borrow_and_update();
            let found = self
                .shared
                .state
                .lock()
                .requests
                .iter()
                .find(|r| pred(r))
                .cloned();
            if found.is_some() {
                return found;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Sender lives in `shared`, which we hold; only the timeout ends this.
                _ => return None,
            }
        }
    }

    /// Like [`try_wait_for`](Self::try_wait_for) but panics (listing what was
    /// received) on timeout.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
        timeout: Duration,
    ) -> RecordedRequest {
        match self.try_wait_for(pred, timeout).await {
            Some(r) => r,
            None => panic!(
                "FakeBackend: no matching request within {timeout:?}; received: {}",
                self.summary()
            ),
        }
    }

    /// The oldest request of `kind`, waiting for it if needed; panics on timeout.
    pub async fn wait_for_request(&self, kind: &str, timeout: Duration) -> RecordedRequest {
        match self.try_wait_for(|r| r.kind == kind, timeout).await {
            Some(r) => r,
            None => panic!(
                "FakeBackend: no {kind:?} request within {timeout:?}; received: {}",
                self.summary()
            ),
        }
    }

    /// Waits until at least `n` requests of `kind` were received and returns
    /// them all; panics on timeout.
    pub async fn wait_for_count(
        &self,
        kind: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.recorded.subscribe();
        loop {
            rx.borrow_and_update();
            let got = self.requests_of(kind);
            if got.len() >= n {
                return got;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                panic!(
                    "FakeBackend: expected {n} {kind:?} requests within {timeout:?}, got {}; received: {}",
                    got.len(),
                    self.summary()
                );
            }
        }
    }

    fn summary(&self) -> String {
        let state = self.shared.state.lock();
        let items: Vec<String> = state
            .requests
            .iter()
            .map(|r| format!("{} {} ({}) {}", r.method, r.path, r.kind, r.body))
            .collect();
        format!("[{}]", items.join(", "))
    }

    /// Sends a signed backend → signaling request as this Nextcloud
    /// (`Spreed-Signaling-Backend: <url()>`) to
    /// `<signaling_base>api/v1/room/<roomid>`. Panics on transport failure.
    pub async fn send_room_request(
        &self,
        signaling_base: &str,
        roomid: &str,
        body: &Value,
    ) -> HttpResponse {
        let bytes = serde_json::to_vec(body).expect("serializing a Value cannot fail");
        signed_room_request(
            &self.secret(),
            Some(&self.url()),
            signaling_base,
            roomid,
            bytes,
        )
        .await
    }

    /// Stops serving and waits until the accept task (and with it every
    /// connection task) is gone.
    pub async fn shutdown(self) {
        self.task.abort();
        // The handle is still owned by `self`; wait on it through a reference.
        let mut this = self;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut this.task).await;
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        // Errors (peer gone, hangup replies) end just this connection.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // E.g. too many open files; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn ocs_wrap(data: Value, status: u16, message: &str) -> Value {
    let ok = status == 200;
    json!({
        "ocs": {
            "meta": {
                "status": if ok { "ok" } else { "failure" },
                "statuscode": status,
                "message": message,
            },
            "data": data,
        }
    })
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("serializing a Value cannot fail");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn is_backend_path(path: &str) -> bool {
    path.contains("/ocs/v2.php/apps/spreed/api/v") && path.ends_with("/signaling/backend")
}

fn checksum_valid(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (get(HEADER_RANDOM), get(HEADER_CHECKSUM)) {
        (Some(random), Some(sum)) if !random.is_empty() => {
            checksum(secret, random, body).eq_ignore_ascii_case(sum)
        }
        _ => false,
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, io::Error> {
    let (parts, body) = req.into_parts();
    let raw_body = match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => return Err(io::Error::other(e)),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "body read timeout")),
    };
    let path = parts.uri.path().to_owned();
    let body: Value = serde_json::from_slice(&raw_body).unwrap_or(Value::Null);

    let backend_path = is_backend_path(&path);
    let (kind, checksum_ok) = if path.ends_with(CAPABILITIES_SUFFIX) && parts.method == Method::GET
    {
        ("capabilities".to_owned(), false)
    } else if backend_path && parts.method == Method::POST {
        let kind = body["type"].as_str().unwrap_or("invalid").to_owned();
        (
            kind,
            checksum_valid(&shared.secret, &parts.headers, &raw_body),
        )
    } else {
        ("unknown".to_owned(), false)
    };
    let ocs = parts
        .headers
        .get("OCS-APIRequest")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));

    let record = RecordedRequest {
        kind: kind.clone(),
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body: body.clone(),
        raw_body,
        checksum_ok,
        received_at: Instant::now(),
    };
    let handler = {
        let mut state = shared.state.lock();
        state.requests.push(record);
        state.handlers.get(&kind).cloned()
    };
    shared.recorded.send_modify(|n| *n += 1);

    match kind.as_str() {
        "unknown" if backend_path => {
            return Ok(text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ))
        }
        "unknown" => return Ok(text_response(StatusCode::NOT_FOUND, "not found")),
        "capabilities" => {}
        _ if !checksum_ok => {
            let err = json!({"type": "error", "error": {
                "code": "invalid_request",
                "message": "The request could not be authenticated.",
            }});
            let body = if ocs {
                ocs_wrap(err, 403, "Forbidden")
            } else {
                err
            };
            return Ok(json_response(403, &body));
        }
        _ => {}
    }

    let mut reply = match handler {
        Some(h) => h(&body),
        None => Reply::Default,
    };
    if kind == "capabilities" && matches!(reply, Reply::Default) {
        return Ok(capabilities_response(
            &shared,
            &headers_of_last(&shared),
            ocs,
        ));
    }
    loop {
        reply = match reply {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                *inner
            }
            Reply::Default => match default_reply(&shared, &kind, &body) {
                Some(v) => Reply::Json(v),
                None => Reply::raw(400, Some("text/plain"), "unsupported request type"),
            },
            Reply::Error { code, message } => Reply::Json(json!({
                "type": "error",
                "error": {"code": code, "message": message},
            })),
            Reply::Json(v) => {
                let body = if ocs { ocs_wrap(v, 200, "OK") } else { v };
                return Ok(json_response(200, &body));
            }
            Reply::Raw {
                status,
                content_type,
                body,
            } => {
                let mut resp = Response::new(Full::new(body));
                *resp.status_mut() =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if let Some(ct) = content_type.and_then(|ct| ct.parse().ok()) {
                    resp.headers_mut().insert(http::header::CONTENT_TYPE, ct);
                }
                return Ok(resp);
            }
            Reply::Hangup => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "hangup"))
            }
        };
    }
}

/// Headers of the request just recorded (the capabilities query).
fn headers_of_last(shared: &Shared) -> HeaderMap {
    shared
        .state
        .lock()
        .requests
        .last()
        .map(|r| r.headers.clone())
        .unwrap_or_default()
}

/// The default capabilities answer with the configured cache headers.
fn capabilities_response(shared: &Shared, headers: &HeaderMap, ocs: bool) -> Response<Full<Bytes>> {
    let (etag, cc) = {
        let state = shared.state.lock();
        (state.caps_etag.clone(), state.caps_cache_control.clone())
    };
    let if_none_match = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let mut resp = match (&etag, if_none_match) {
        (Some(e), Some(m)) if e == m => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        }
        _ => {
            let v = default_reply(shared, "capabilities", &Value::Null).unwrap_or(Value::Null);
            let body = if ocs { ocs_wrap(v, 200, "OK") } else { v };
            json_response(200, &body)
        }
    };
    if let Some(e) = etag.and_then(|e| http::HeaderValue::from_str(&e).ok()) {
        resp.headers_mut().insert(http::header::ETAG, e);
    }
    if let Some(c) = cc.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(http::header::CACHE_CONTROL, c);
    }
    resp
}

/// The default answer for a request kind, `None` for kinds Talk does not know.
fn default_reply(shared: &Shared, kind: &str, body: &Value) -> Option<Value> {
    let payload = &body[kind];
    let roomid = payload["roomid"].as_str().unwrap_or_default();
    Some(match kind {
        "auth" => {
            let params = &payload["params"];
            let mut auth = json!({
                "version": "1.0",
                "userid": params["userid"].as_str().unwrap_or_default(),
            });
            if let Some(user) = params.get("user") {
                auth["user"] = user.clone();
            }
            json!({"type": "auth", "auth": auth})
        }
        "room" => json!({"type": "room", "room": {
            "version": "1.0",
            "roomid": roomid,
            "properties": {"name": format!("Room {roomid}")},
        }}),
        "ping" => json!({"type": "room", "room": {"version": "1.0", "roomid": roomid}}),
        "session" => json!({"type": "session", "session": {"version": "1.0", "roomid": roomid}}),
        "capabilities" => {
            let state = shared.state.lock();
            json!({
                "version": {
                    "major": 20, "minor": 0, "micro": 0, "string": "20.0.0",
                    "edition": "", "extendedSupport": false,
                },
                "capabilities": {
                    "spreed": {
                        "features": state.features,
                        "config": state.config,
                    }
                }
            })
        }
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::random_hex;
    use crate::http::RawRequest;

    const SECRET: &str = "backend-secret";

    async fn post_signed(
        backend: &FakeBackend,
        url: &str,
        body: &Value,
        good: bool,
    ) -> HttpResponse {
        let bytes = serde_json::to_vec(body).expect("serialize");
        let random = random_hex(64);
        let secret = if good { SECRET } else { "wrong" };
        RawRequest::post(url)
            .header("Content-Type", "application/json")
            .header("OCS-APIRequest", "true")
            .header(HEADER_RANDOM, &random)
            .header(HEADER_CHECKSUM, &checksum(secret, &random, &bytes))
            .body(bytes)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request to {} failed: {e}", backend.url()))
    }

    #[tokio::test]
    async fn auth_request_good_and_bad_checksum() {
        let backend = FakeBackend::start(SECRET).await;
        let body = json!({"type": "auth", "auth": {"version": "1.0",
            "params": {"userid": "alice", "ticket": "t", "user": {"displayname": "Alice"}}}});

        let resp = post_signed(&backend, &backend.backend_url(), &body, true).await;
        assert_eq!(resp.status, 200);
        assert!(resp
            .header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")));
        assert_eq!(
            resp.json(),
            json!({"ocs": {"meta": {"status": "ok", "statuscode": 200, "message": "OK"},
                "data": {"type": "auth", "auth": {"version": "1.0", "userid": "alice",
                    "user": {"displayname": "Alice"}}}}})
        );

        let resp = post_signed(&backend, &backend.backend_url(), &body, false).await;
        assert_eq!(resp.status, 403);

        let reqs = backend.requests_of("auth");
        assert_eq!(reqs.len(), 2);
        assert!(reqs[0].checksum_ok);
        assert!(!reqs[1].checksum_ok);
        assert!(reqs[0].ocs_api_request());
        assert_eq!(reqs[0].payload()["params"]["userid"], "alice");
        assert_eq!(backend.checksum_failures().len(), 1);
    }

    #[tokio::test]
    async fn missing_random_is_rejected_and_unwrapped_without_ocs_header() {
        let backend = FakeBackend::start(SECRET).await;
        let body = br#"{"type":"room","room":{"version":"1.0","roomid":"r1"}}"#.to_vec();
        let sum = checksum(SECRET, "", &body);
        let resp = RawRequest::post(&backend.backend_url())
            .header(HEADER_CHECKSUM, &sum)
            .body(body.clone())
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status, 403);
        assert_eq!(resp.json()["error"]["code"], "invalid_request");

        // Without OCS-APIRequest the answer is not wrapped (like Nextcloud).
        let random = random_hex(64);
        let resp = RawRequest::post(&backend.backend_url_v3())
            .header(HEADER_RANDOM, &random)
            .header(HEADER_CHECKSUM, &checksum(SECRET, &random, &body))
            .body(body)
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.json()["room"]["properties"]["name"], "Room r1");
        assert!(!backend.requests()[1].ocs_api_request());
    }

    #[tokio::test]
    async fn handlers_delay_and_wait_for() {
        let backend = FakeBackend::start(SECRET).await;
        backend.set_room_handler(|body| {
            if body["room"]["roomid"] == "slow" {
                Reply::Default.after(Duration::from_millis(300))
            } else if body["room"]["roomid"] == "missing" {
                Reply::error("no_such_room", "The user is not invited to this room.")
            } else {
                Reply::Default
            }
        });
        let url = backend.backend_url();
        let room = |id: &str| {
            json!({"type": "room", "room": {"version": "1.0", "roomid": id,
            "userid": "", "sessionid": "s"}})
        };

        let resp = post_signed(&backend, &url, &room("missing"), true).await;
        assert_eq!(
            resp.json()["ocs"]["data"],
            json!({"type": "error", "error": {"code": "no_such_room",
                "message": "The user is not invited to this room."}})
        );

        let slow = {
            let url = url.clone();
            let body = room("slow");
            let bytes = serde_json::to_vec(&body).expect("serialize");
            let random = random_hex(64);
            let sum = checksum(SECRET, &random, &bytes);
            tokio::spawn(async move {
                RawRequest::post(&url)
                    .header("OCS-APIRequest", "true")
                    .header(HEADER_RANDOM, &random)
                    .header(HEADER_CHECKSUM, &sum)
                    .body(bytes)
                    .send()
                    .await
            })
        };
        // Recorded before the delayed answer is sent.
        let r = backend
            .wait_for(|r| r.payload()["roomid"] == "slow", Duration::from_secs(2))
            .await;
        assert!(r.checksum_ok);
        assert!(!slow.is_finished());
        let resp = slow.await.expect("join").expect("request");
        assert_eq!(resp.json()["ocs"]["data"]["room"]["roomid"], "slow");

        assert!(backend
            .try_wait_for(|r| r.kind == "ping", Duration::from_millis(50))
            .await
            .is_none());
        assert_eq!(
            backend
                .wait_for_count("room", 2, Duration::from_secs(1))
                .await
                .len(),
            2
        );

        backend.set_handler("session", |_| Reply::Hangup);
        let body = json!({"type": "session", "session": {"roomid": "r"}});
        let bytes = serde_json::to_vec(&body).expect("serialize");
        let random = random_hex(64);
        let res = RawRequest::post(&url)
            .header(HEADER_RANDOM, &random)
            .header(HEADER_CHECKSUM, &checksum(SECRET, &random, &bytes))
            .body(bytes)
            .send()
            .await;
        assert!(res.is_err(), "hangup must not produce a response: {res:?}");
    }

    #[tokio::test]
    async fn capabilities_and_unknown_paths() {
        let backend = FakeBackend::start(SECRET).await;
        let caps_url = format!("{}ocs/v2.php/cloud/capabilities", backend.url());
        let resp = RawRequest::get(&caps_url)
            .header("OCS-APIRequest", "true")
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status, 200);
        let spreed = &resp.json()["ocs"]["data"]["capabilities"]["spreed"];
        let features = spreed["features"].as_array().expect("features array");
        assert!(!features.iter().any(|f| f == "signaling-v3"));
        assert_eq!(spreed["config"]["signaling"]["session-ping-limit"], 200);

        backend.add_feature("signaling-v3");
        backend.set_signaling_config(json!({"hello-v2-token-key": "x"}));
        let resp = RawRequest::get(&caps_url)
            .header("OCS-APIRequest", "true")
            .send()
            .await
            .expect("request");
        let spreed = &resp.json()["ocs"]["data"]["capabilities"]["spreed"];
        assert!(spreed["features"]
            .as_array()
            .expect("features array")
            .iter()
            .any(|f| f == "signaling-v3"));
        assert_eq!(spreed["config"]["signaling"]["hello-v2-token-key"], "x");
        assert_eq!(backend.count("capabilities"), 2);

        let resp = RawRequest::get(&format!("{}nope", backend.url()))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status, 404);
        assert_eq!(backend.count("unknown"), 1);
        assert!(backend.checksum_failures().is_empty());
    }

    #[tokio::test]
    async fn raw_request_controls_content_length() {
        let backend = FakeBackend::start(SECRET).await;
        let url = format!("{}x", backend.url());
        RawRequest::post(&url)
            .body("abc")
            .send()
            .await
            .expect("sized");
        RawRequest::post(&url)
            .body("abc")
            .chunked()
            .send()
            .await
            .expect("chunked");
        RawRequest::post(&url).send().await.expect("empty");
        let reqs = backend.requests();
        assert_eq!(reqs[0].header("content-length"), Some("3"));
        assert_eq!(reqs[1].header("content-length"), None);
        assert_eq!(reqs[1].header("transfer-encoding"), Some("chunked"));
        assert_eq!(&reqs[1].raw_body[..], b"abc");
        assert_eq!(reqs[2].header("transfer-encoding"), None);
        assert_eq!(reqs[2].header("content-length"), Some("0"));

        let resp = crate::http::raw_http(
            &backend.addr().to_string(),
            b"GET /nope HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            Duration::from_secs(2),
        )
        .await
        .expect("raw http");
        assert!(String::from_utf8_lossy(&resp).starts_with("HTTP/1.1 404"));
    }

    #[tokio::test]
    async fn drop_stops_the_server() {
        let backend = FakeBackend::start(SECRET).await;
        let addr = backend.addr();
        backend.shutdown().await;
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());

        let backend = FakeBackend::start(SECRET).await;
        let addr = backend.addr();
        drop(backend);
        assert!(
            crate::eventually(Duration::from_secs(2), || async {
                tokio::net::TcpStream::connect(addr).await.is_err()
            })
            .await
        );
    }
}
