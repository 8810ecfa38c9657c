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
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::HeaderMap;
use parking_lot::Mutex;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::http::{signed_room_request, HttpResponse};

mod requests;
mod server;

use server::{accept_loop, default_config, default_features};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checksum::{checksum, random_hex, HEADER_CHECKSUM, HEADER_RANDOM};
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
