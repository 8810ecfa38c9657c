//! The backend API (Nextcloud → signaling, `POST /api/v1/room/<id>`), our
//! requests to Nextcloud (signaling → backend), and the backend
//! configuration (several backends, compat modes, limits, reload).
//!
//! Feature IDs: BAPI-01..13, BCL-01..06, BCFG-01..07. Room events are only
//! checked lightly here (one observable effect per request type); the
//! details of room events are tested in `rooms.rs`.
// Test bodies are plain functions run by `both_topologies!`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use runtime::config::Ini;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

const VERSION: &str = env!("CARGO_PKG_VERSION");
const MAX_BODY: usize = 256 * 1024;

// ----- helpers -----------------------------------------------------------------

fn room_url(s: &TestServer, room: &str) -> String {
    format!("{}api/v1/room/{room}", s.base())
}

/// A backend request with every part under the test's control.
struct Post<'a> {
    secret: &'a str,
    backend_header: Option<&'a str>,
    content_type: Option<&'a str>,
    random: Option<String>,
    checksum: Option<String>,
}

impl<'a> Post<'a> {
    fn signed(secret: &'a str) -> Self {
        Post {
            secret,
            backend_header: None,
            content_type: Some("application/json"),
            random: None,
            checksum: None,
        }
    }

    async fn send(&self, url: &str, body: &[u8]) -> HttpResponse {
        let random = self.random.clone().unwrap_or_else(|| random_hex(64));
        let sum = self
            .checksum
            .clone()
            .unwrap_or_else(|| checksum(self.secret, &random, body));
        let mut req = RawRequest::post(url).body(body.to_vec());
        if let Some(ct) = self.content_type {
            req = req.header("Content-Type", ct);
        }
        if !random.is_empty() {
            req = req.header(HEADER_RANDOM, &random);
        }
        if !sum.is_empty() {
            req = req.header(HEADER_CHECKSUM, &sum);
        }
        if let Some(b) = self.backend_header {
            req = req.header(HEADER_BACKEND, b);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
    }
}

fn room_message(data: Value) -> Value {
    json!({"type": "message", "message": {"data": data}})
}

/// The next room `message` event (other messages stay queued).
async fn room_event_message(c: &mut TestClient) -> Value {
    c.recv_matching(|v| {
        v["type"] == "event" && v["event"]["target"] == "room" && v["event"]["type"] == "message"
    })
    .await
}

fn is_room_message(v: &Value) -> bool {
    v["type"] == "event" && v["event"]["target"] == "room" && v["event"]["type"] == "message"
}

/// Reads until nothing arrives for `SHORT`, failing on any message matching
/// `pred` (other messages, e.g. join events, are ignored).
async fn expect_none(c: &mut TestClient, what: &str, pred: impl Fn(&Value) -> bool) {
    while let Some(v) = c.recv_timeout(SHORT).await {
        assert!(!pred(&v), "unexpected {what}: {v}");
    }
}

/// A request/reply round trip (an invalid message answered with
/// `invalid_format`): everything the client sent before has been processed.
async fn sync(c: &mut TestClient) {
    let r = c
        .request(json!({"type": "message", "message": {"recipient": {"type": "room"}}}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_format", "{r}");
}

/// Hello of `user` against `backend_url`; returns the reply (hello or error).
async fn hello_at(s_addr: SocketAddr, backend_url: &str, user: &str) -> (TestClient, Value) {
    let mut c = TestClient::connect(&spreed_url(s_addr))
        .await
        .skip("welcome");
    let r = c
        .hello_v1(
            backend_url,
            json!({"userid": user, "ticket": format!("t-{user}")}),
        )
        .await;
    (c, r)
}

/// A server with two backends on two fake Nextclouds (different ports, so
/// different hosts for the backend matching) with different secrets.
struct Two {
    addr: SocketAddr,
    _server: Arc<signaling::Server>,
    b1: FakeBackend,
    b2: FakeBackend,
}

const SECRET2: &str = "the-second-secret";

fn two_config(b1: &FakeBackend, b2: &FakeBackend, extra: &str) -> String {
    format!(
        "[http]\nlisten = 127.0.0.1:0\n\
         [sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [clients]\ninternalsecret = {INTERNAL_SECRET}\n\
         [backend]\nbackends = backend1, backend2\ntimeout = 5\n\
         [backend1]\nurl = {}\nsecret = {SECRET}\n\
         [backend2]\nurl = {}\nsecret = {SECRET2}\n\
         [nats]\nurl = :loopback:\n{extra}\n",
        b1.url().trim_end_matches('/'),
        b2.url()
    )
}

async fn start_two(extra: &str) -> Two {
    let b1 = FakeBackend::start(SECRET).await;
    let b2 = FakeBackend::start(SECRET2).await;
    let (server, addr) = start_server(&two_config(&b1, &b2, extra)).await;
    Two {
        addr,
        _server: server,
        b1,
        b2,
    }
}

/// A small HTTP front server in front of fake backends: per request path it
/// either forwards the request unchanged (method, path, headers, body) to a
/// fake backend, or answers with a redirect. Lets several backends share one
/// host (path prefixes) and lets tests produce redirects.
#[derive(Clone)]
enum FrontAction {
    Forward(String),
    Redirect(u16, String),
}

struct Front {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Front {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Front {
    fn url(&self, path: &str) -> String {
        format!("http://{}/{path}", self.addr)
    }
}

async fn start_front(route: impl Fn(&str) -> FrontAction + Send + Sync + 'static) -> Front {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind front");
    let addr = listener.local_addr().expect("addr");
    let route = Arc::new(route);
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let route = route.clone();
            conns.spawn(async move {
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let route = route.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let pq = parts
                            .uri
                            .path_and_query()
                            .map(|p| p.as_str().to_owned())
                            .unwrap_or_default();
                        let resp = match route(parts.uri.path()) {
                            FrontAction::Redirect(status, location) => http::Response::builder()
                                .status(status)
                                .header("Location", location)
                                .body(Full::new(Bytes::new()))
                                .expect("response"),
                            FrontAction::Forward(base) => {
                                let mut fwd = RawRequest::new(
                                    parts.method.as_str(),
                                    &format!("{}{pq}", base.trim_end_matches('/')),
                                )
                                .body(body);
                                for (name, value) in &parts.headers {
                                    if matches!(name.as_str(), "host" | "content-length") {
                                        continue;
                                    }
                                    if let Ok(v) = value.to_str() {
                                        fwd = fwd.header(name.as_str(), v);
                                    }
                                }
                                match fwd.send().await {
                                    Ok(r) => {
                                        let mut b = http::Response::builder().status(r.status);
                                        if let Some(ct) = r.header("content-type") {
                                            b = b.header("Content-Type", ct);
                                        }
                                        b.body(Full::new(r.body)).expect("response")
                                    }
                                    Err(_) => http::Response::builder()
                                        .status(502)
                                        .body(Full::new(Bytes::new()))
                                        .expect("response"),
                                }
                            }
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Front { addr, task }
}

const BACKEND_SUFFIX: &str = "ocs/v2.php/apps/spreed/api/v1/signaling/backend";

// ----- BAPI-01 / BAPI-02: request checks ---------------------------------------

/// BAPI-01: a body sent chunked (no `Content-Length`) is refused with 411,
/// even when correctly signed.
async fn bapi_01_chunked_body_without_content_length_is_411(t: Topology) {
    let s = TestServer::start_on(t).await;
    let body = serde_json::to_vec(&room_message(json!({"x": 1}))).expect("json");
    let random = random_hex(64);
    let r = RawRequest::post(&room_url(&s, "room1"))
        .header("Content-Type", "application/json")
        .header(HEADER_RANDOM, &random)
        .header(HEADER_CHECKSUM, &checksum(SECRET, &random, &body))
        .header(HEADER_BACKEND, &s.backend.url())
        .body(body)
        .chunked()
        .send()
        .await
        .expect("request");
    assert_eq!(r.status, 411, "{}", r.text());
    assert_eq!(r.text().trim(), "Length required");
}

/// BAPI-01: a declared body over 256 KiB is refused with 413 before it is
/// read; exactly 256 KiB is accepted.
async fn bapi_01_body_over_256k_is_413_and_256k_is_accepted(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;

    // Headers only: the server must answer from the declared length.
    let request = format!(
        "POST /api/v1/room/room1 HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
         {HEADER_RANDOM}: {}\r\n{HEADER_CHECKSUM}: {}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        s.addr,
        random_hex(64),
        "0".repeat(64),
        MAX_BODY + 1
    );
    let raw = raw_http(&s.addr.to_string(), request.as_bytes(), DEFAULT_TIMEOUT)
        .await
        .expect("raw request");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("Request entity too large"), "{text}");

    // A signed message padded to exactly the limit goes through.
    let base = room_message(json!({"pad": ""}));
    let empty_len = serde_json::to_vec(&base).expect("json").len();
    let body = room_message(json!({"pad": "p".repeat(MAX_BODY - empty_len)}));
    let bytes = serde_json::to_vec(&body).expect("json");
    assert_eq!(bytes.len(), MAX_BODY);
    let mut post = Post::signed(SECRET);
    let header = s.backend.url();
    post.backend_header = Some(&header);
    let r = post.send(&room_url(&s, "room1"), &bytes).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = room_event_message(&mut alice).await;
    assert_eq!(
        ev["event"]["message"]["data"]["pad"].as_str().map(str::len),
        Some(MAX_BODY - empty_len)
    );
}

/// BAPI-01: the content type must start with `application/json` (else 400
/// "Unsupported Content-Type"); parameters after it are fine.
async fn bapi_01_content_type_must_be_json(t: Topology) {
    let s = TestServer::start_on(t).await;
    let body = serde_json::to_vec(&room_message(json!({"x": 1}))).expect("json");
    let url = room_url(&s, "room1");
    let header = s.backend.url();
    for (ct, status) in [
        (Some("text/plain"), 400),
        (None, 400),
        (Some("application/x-www-form-urlencoded"), 400),
        (Some("application/json; charset=utf-8"), 200),
        (Some("application/json"), 200),
    ] {
        let mut post = Post::signed(SECRET);
        post.content_type = ct;
        post.backend_header = Some(&header);
        let r = post.send(&url, &body).await;
        assert_eq!(r.status, status, "content type {ct:?}: {}", r.text());
        if status == 400 {
            assert_eq!(r.text().trim(), "Unsupported Content-Type");
        }
    }
}

/// BAPI-01: both checksum headers must be present and non-empty (else 403).
async fn bapi_01_missing_checksum_headers_are_403(t: Topology) {
    let s = TestServer::start_on(t).await;
    let body = serde_json::to_vec(&room_message(json!({"x": 1}))).expect("json");
    let url = room_url(&s, "room1");
    let header = s.backend.url();

    let mut no_random = Post::signed(SECRET);
    no_random.random = Some(String::new());
    // Checksum computed over an empty random so only the header is missing.
    no_random.checksum = Some(checksum(SECRET, "", &body));
    no_random.backend_header = Some(&header);
    let r = no_random.send(&url, &body).await;
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(r.text().trim(), "Authentication check failed");

    let mut no_sum = Post::signed(SECRET);
    no_sum.checksum = Some(String::new());
    no_sum.backend_header = Some(&header);
    assert_eq!(no_sum.send(&url, &body).await.status, 403);

    let mut neither = Post::signed(SECRET);
    neither.random = Some(String::new());
    neither.checksum = Some(String::new());
    assert_eq!(neither.send(&url, &body).await.status, 403);
}

/// BAPI-02: the checksum is HMAC-SHA256(secret, random ++ body); any other
/// value is refused with 403 "Authentication check failed".
async fn bapi_02_checksum_must_match_random_body_and_secret(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let body = serde_json::to_vec(&room_message(json!({"n": 1}))).expect("json");
    let url = room_url(&s, "room1");
    let header = s.backend.url();
    let random = random_hex(64);

    let cases = [
        ("other secret", checksum("not-the-secret", &random, &body)),
        ("other body", checksum(SECRET, &random, b"{}")),
        ("other random", checksum(SECRET, &random_hex(64), &body)),
        ("garbage", "not-hex".to_owned()),
        (
            "truncated",
            checksum(SECRET, &random, &body)[..32].to_owned(),
        ),
    ];
    for (what, sum) in cases {
        let mut p = Post::signed(SECRET);
        p.random = Some(random.clone());
        p.checksum = Some(sum);
        p.backend_header = Some(&header);
        let r = p.send(&url, &body).await;
        assert_eq!(r.status, 403, "{what}: {}", r.text());
        assert_eq!(r.text().trim(), "Authentication check failed", "{what}");
    }

    let mut good = Post::signed(SECRET);
    good.random = Some(random.clone());
    good.backend_header = Some(&header);
    let r = good.send(&url, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Only the accepted request had an effect.
    let ev = room_event_message(&mut alice).await;
    assert_eq!(ev["event"]["message"]["data"], json!({"n": 1}));
    expect_none(&mut alice, "room message", is_room_message).await;
}

/// BAPI-01: a body that is not JSON (but correctly signed) is 400
/// "Could not read body".
async fn bapi_01_invalid_json_body_is_400(t: Topology) {
    let s = TestServer::start_on(t).await;
    let header = s.backend.url();
    let mut p = Post::signed(SECRET);
    p.backend_header = Some(&header);
    let r = p.send(&room_url(&s, "room1"), b"{not json").await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.text().trim(), "Could not read body");
}

// ----- BAPI-03: backend resolution ---------------------------------------------

/// BAPI-03: an unknown `Spreed-Signaling-Backend` is refused with 403 even if
/// the checksum is valid for a configured backend; a known header with the
/// secret of another backend is refused too.
#[tokio::test]
async fn bapi_03_unknown_or_mismatched_backend_header_is_403() {
    let t = start_two("").await;
    let base = format!("http://{}/", t.addr);
    let body = serde_json::to_vec(&room_message(json!({"x": 1}))).expect("json");
    let url = format!("{base}api/v1/room/room1");

    for header in [
        "https://unknown.example/",
        "http://127.0.0.1:1/",
        "not a url",
    ] {
        let mut p = Post::signed(SECRET);
        p.backend_header = Some(header);
        let r = p.send(&url, &body).await;
        assert_eq!(r.status, 403, "header {header:?}: {}", r.text());
        assert_eq!(r.text().trim(), "Authentication check failed");
    }

    // backend1's URL, signed with backend2's secret.
    let b1 = t.b1.url();
    let mut p = Post::signed(SECRET2);
    p.backend_header = Some(&b1);
    assert_eq!(p.send(&url, &body).await.status, 403);
    // ... and with its own secret it works.
    let mut p = Post::signed(SECRET);
    p.backend_header = Some(&b1);
    assert_eq!(p.send(&url, &body).await.status, 200);
}

/// BAPI-03: without the header, every configured secret is tried; the
/// request applies to the backend whose secret validates (and only to it).
#[tokio::test]
async fn bapi_03_without_header_the_matching_secret_picks_the_backend() {
    let t = start_two("").await;
    let base = format!("http://{}/", t.addr);
    let (mut a1, r) = hello_at(t.addr, &t.b1.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    a1.join_room("room1", "talk-a1").await;
    let (mut a2, r) = hello_at(t.addr, &t.b2.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    a2.join_room("room1", "talk-a2").await;

    let url = format!("{base}api/v1/room/room1");
    let body = serde_json::to_vec(&room_message(json!({"for": "backend2"}))).expect("json");
    let r = Post::signed(SECRET2).send(&url, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = room_event_message(&mut a2).await;
    assert_eq!(ev["event"]["message"]["data"]["for"], "backend2");

    let body = serde_json::to_vec(&room_message(json!({"for": "backend1"}))).expect("json");
    let r = Post::signed(SECRET).send(&url, &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // backend1's member sees only backend1's message.
    let ev = room_event_message(&mut a1).await;
    assert_eq!(ev["event"]["message"]["data"]["for"], "backend1");

    let r = Post::signed("no-such-secret").send(&url, &body).await;
    assert_eq!(r.status, 403, "{}", r.text());

    // Nothing more for either member.
    let marker = serde_json::to_vec(&room_message(json!({"marker": 2}))).expect("json");
    assert_eq!(Post::signed(SECRET2).send(&url, &marker).await.status, 200);
    assert_eq!(
        room_event_message(&mut a2).await["event"]["message"]["data"]["marker"],
        2
    );
    expect_none(&mut a1, "room message", is_room_message).await;
}

/// BAPI-03: in compat mode (`allowall`) the common secret is used with or
/// without a `Spreed-Signaling-Backend` header.
#[tokio::test]
async fn bapi_03_compat_backend_without_header() {
    let backend = FakeBackend::start("common-secret").await;
    let text = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [backend]\nallowall = true\nallowhttp = true\nsecret = common-secret\n[nats]\nurl = :loopback:\n"
    );
    let (_server, addr) = start_server(&text).await;
    let (mut a, r) = hello_at(addr, &backend.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    a.join_room("room1", "talk-a").await;
    let url = format!("http://{addr}/api/v1/room/room1");
    let body = serde_json::to_vec(&room_message(json!({"n": 1}))).expect("json");
    assert_eq!(
        Post::signed("common-secret").send(&url, &body).await.status,
        200
    );
    assert_eq!(
        room_event_message(&mut a).await["event"]["message"]["data"]["n"],
        1
    );
    let mut p = Post::signed("common-secret");
    p.backend_header = Some("https://any.example/");
    let body = serde_json::to_vec(&room_message(json!({"n": 2}))).expect("json");
    assert_eq!(p.send(&url, &body).await.status, 200);
    assert_eq!(
        room_event_message(&mut a).await["event"]["message"]["data"]["n"],
        2
    );
    assert_eq!(Post::signed(SECRET).send(&url, &body).await.status, 403);
}

// ----- BAPI-04: request types ---------------------------------------------------

/// BAPI-04: success is 200 with body `{}` (JSON); an unknown type is 400
/// "Unsupported request type: <type>".
async fn bapi_04_success_body_and_unknown_type(t: Topology) {
    let s = TestServer::start_on(t).await;
    let r = s
        .backend_request("room1", room_message(json!({"x": 1})))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(&r.body[..], b"{}");
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        r.headers
    );

    let r = s
        .backend_request("room1", json!({"type": "explode", "explode": {}}))
        .await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text().trim(), "Unsupported request type: explode");

    let r = s.backend_request("room1", json!({"type": ""})).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.text().trim(), "Unsupported request type:");

    for kind in [
        "invite",
        "disinvite",
        "update",
        "delete",
        "incall",
        "participants",
        "message",
    ] {
        let body = match kind {
            "incall" => json!({"type": kind, kind: {"incall": 0, "all": true}}),
            "message" => room_message(json!({})),
            _ => json!({"type": kind, kind: {"userids": [], "alluserids": []}}),
        };
        let r = s.backend_request("room-any", body).await;
        assert_eq!(r.status, 200, "{kind}: {}", r.text());
        assert_eq!(&r.body[..], b"{}", "{kind}");
    }
}

/// BAPI-05: `invite` sends roomlist `invite` to the invited users and
/// roomlist `update` to the other users of `alluserids`.
async fn bapi_05_invite(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let props = json!({"name": "Room 1", "type": 3});
    let r = s
        .backend_request(
            "room1",
            json!({"type": "invite", "invite": {"userids": ["alice"],
                "alluserids": ["alice", "bob"], "properties": props}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = alice.expect_event("roomlist", "invite").await;
    assert_eq!(ev["event"]["invite"]["roomid"], "room1");
    assert_eq!(ev["event"]["invite"]["properties"], props);
    let ev = bob.expect_event("roomlist", "update").await;
    assert_eq!(ev["event"]["update"]["roomid"], "room1");
    alice.expect_no_message(SHORT).await;
}

/// BAPI-06: `disinvite` sends roomlist `disinvite` (reason `disinvited`) to
/// the users and `update` to the remaining users.
async fn bapi_06_disinvite(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let r = s
        .backend_request(
            "room1",
            json!({"type": "disinvite", "disinvite": {"userids": ["alice"],
                "alluserids": ["bob"], "properties": {"name": "Room 1"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = alice.expect_event("roomlist", "disinvite").await;
    assert_eq!(ev["event"]["disinvite"]["roomid"], "room1");
    assert_eq!(ev["event"]["disinvite"]["reason"], "disinvited");
    let ev = bob.expect_event("roomlist", "update").await;
    assert_eq!(ev["event"]["update"]["roomid"], "room1");
}

/// Everything that arrives until the client has been quiet for `SHORT`.
async fn drain(c: &mut TestClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = c.recv_timeout(SHORT).await {
        out.push(v);
    }
    out
}

/// `c` receives room events until it was told about the session `id`.
async fn told_of(c: &mut TestClient, id: &str) {
    c.recv_matching(|v| {
        v["event"]["type"] == "join"
            && v["event"]["join"]
                .as_array()
                .is_some_and(|l| l.iter().any(|e| e["sessionid"] == id))
    })
    .await;
}

/// A `disinvite` naming Talk session ids (as Talk sends for guests) reaches
/// an anonymous session (in a cluster: on another node than the member
/// named by user id and than the node the request is posted to); the
/// member gets the roomlist update, nothing else.
async fn bapi_06_disinvite_by_talk_session_reaches_a_guest(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let mut guest = s.client().await;
    let r = guest
        .hello_v1(
            &s.backend.backend_url(),
            json!({"userid": "", "ticket": "t"}),
        )
        .await;
    assert_eq!(r["hello"]["userid"], "", "anonymous hello: {r}");
    let r = guest.join_room("room1", "talk-g").await;
    assert_eq!(r["room"]["roomid"], "room1", "{r}");
    let (alice_id, guest_id) = (
        alice.session_id().expect("id").to_owned(),
        guest.session_id().expect("id").to_owned(),
    );
    told_of(&mut alice, &guest_id).await;
    told_of(&mut guest, &alice_id).await;
    drain(&mut alice).await;
    drain(&mut guest).await;

    let r = s
        .backend_request(
            "room1",
            json!({"type": "disinvite", "disinvite": {"userids": [],
                "sessionids": ["talk-g"], "alluserids": ["alice"],
                "properties": {"name": "Room 1"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        guest.recv().await,
        json!({"type": "event", "event": {"target": "roomlist", "type": "disinvite",
            "disinvite": {"roomid": "room1", "reason": "disinvited"}}})
    );
    // The guest is out of the room; alice is told that and gets the
    // roomlist update (in a cluster from different nodes, in either order).
    let mut got = vec![alice.recv().await, alice.recv().await];
    got.sort_by_key(|v| v["event"]["target"].to_string());
    assert_eq!(
        got,
        vec![
            json!({"type": "event", "event": {"target": "room", "type": "leave",
                "leave": [guest_id]}}),
            json!({"type": "event", "event": {"target": "roomlist", "type": "update",
                "update": {"roomid": "room1", "properties": {"name": "Room 1"}}}}),
        ]
    );
    // A disinvited guest has nothing left to do: its connection ends.
    guest.expect_closed(Duration::from_secs(5)).await;
    assert_eq!(drain(&mut alice).await, Vec::<Value>::new());
}

/// BAPI-07: `update` changes the room properties for the members and sends
/// roomlist `update` to the listed users.
async fn bapi_07_update(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let mut bob = s.user("bob").await;
    let props = json!({"name": "Renamed"});
    let r = s
        .backend_request(
            "room1",
            json!({"type": "update", "update": {"userids": ["bob"], "properties": props}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = alice.recv_matching(|v| v["type"] == "room").await;
    assert_eq!(m["room"]["roomid"], "room1");
    assert_eq!(m["room"]["properties"], props);
    let ev = bob.expect_event("roomlist", "update").await;
    assert_eq!(ev["event"]["update"]["roomid"], "room1");
    assert_eq!(ev["event"]["update"]["properties"], props);
}

/// BAPI-08: `delete` closes the room for its members and sends roomlist
/// `disinvite` with reason `deleted` to the listed users.
async fn bapi_08_delete(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let mut bob = s.user("bob").await;
    let r = s
        .backend_request(
            "room1",
            json!({"type": "delete", "delete": {"userids": ["bob"]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = bob.expect_event("roomlist", "disinvite").await;
    assert_eq!(ev["event"]["disinvite"]["roomid"], "room1");
    assert_eq!(ev["event"]["disinvite"]["reason"], "deleted");
    let m = alice.recv_matching(|v| v["type"] == "room").await;
    assert_eq!(m["room"]["roomid"], "", "{m}");
    assert_eventually!(s.stats_sum("rooms").await == 0);
}

/// BAPI-09: `incall` translates Talk session ids to signaling session ids;
/// entries without a live mapping are dropped, and nothing is sent when
/// both lists end up empty.
async fn bapi_09_incall_translates_session_ids(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let alice_id = alice.session_id().expect("id").to_owned();

    // Only unknown/"0" ids: nothing to send.
    let r = s
        .backend_request(
            "room1",
            json!({"type": "incall", "incall": {"incall": 7,
                "changed": [{"sessionId": "talk-unknown", "inCall": 7}, {"sessionId": "0", "inCall": 7}],
                "users": [{"sessionId": "talk-unknown", "inCall": 7}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());

    let r = s
        .backend_request(
            "room1",
            json!({"type": "incall", "incall": {"incall": 7,
                "changed": [{"sessionId": "talk-a", "inCall": 7, "participantType": 1},
                            {"sessionId": "talk-gone", "inCall": 7}],
                "users": [{"sessionId": "talk-a", "inCall": 7, "participantType": 1}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = alice
        .recv_matching(|v| v["type"] == "event" && v["event"]["target"] == "participants")
        .await;
    assert_eq!(ev["event"]["type"], "update", "{ev}");
    let update = &ev["event"]["update"];
    assert_eq!(update["roomid"], "room1");
    let users = update["users"].as_array().expect("users");
    assert_eq!(users.len(), 1, "{ev}");
    assert_eq!(users[0]["sessionId"], alice_id.as_str());
    assert_eq!(users[0]["participantType"], 1);
    // Clients never see `changed`: upstream merges it into `users` when it
    // delivers the event (clientsession.go filterMessage), and the
    // translated entry for alice was already listed.
    assert!(update.get("changed").is_none(), "{ev}");
    // The first (all-unknown) request produced no event of its own.
    expect_none(&mut alice, "participants event", |v| {
        v["type"] == "event" && v["event"]["target"] == "participants"
    })
    .await;
}

/// BAPI-10: `participants` translates ids like `incall`, sends a
/// participants update to the room, and a changed entry with `permissions`
/// updates that session's permissions (observable: `control` becomes allowed).
async fn bapi_10_participants_update_and_permissions(t: Topology) {
    let s = TestServer::start_on(t).await;
    // Room answer with explicit permissions: no `control`.
    s.backend.set_room_handler(|body| {
        let room = body["room"]["roomid"].clone();
        Reply::json(
            json!({"type": "room", "room": {"version": "1.0", "roomid": room,
            "permissions": ["publish-audio"]}}),
        )
    });
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let mut bob = s.user_in_room("bob", "room1", "talk-b").await;
    let alice_id = alice.session_id().expect("id").to_owned();
    let bob_id = bob.session_id().expect("id").to_owned();

    alice
        .send_control(recipient_session(&bob_id), json!({"try": 1}))
        .await;
    // Round trip on alice's connection: the control above has been handled.
    sync(&mut alice).await;

    let r = s
        .backend_request(
            "room1",
            json!({"type": "participants", "participants": {
                "changed": [{"sessionId": "talk-a", "permissions": ["publish-audio", "control"],
                             "participantType": 1}],
                "users": [{"sessionId": "talk-a", "participantType": 1},
                          {"sessionId": "talk-b", "participantType": 3}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = bob
        .recv_matching(|v| v["type"] == "event" && v["event"]["target"] == "participants")
        .await;
    assert_eq!(ev["event"]["type"], "update");
    let users = ev["event"]["update"]["users"].as_array().expect("users");
    assert!(
        users.iter().any(|u| u["sessionId"] == alice_id.as_str()),
        "{ev}"
    );
    assert!(
        users.iter().any(|u| u["sessionId"] == bob_id.as_str()),
        "{ev}"
    );
    // Permissions are not forwarded to clients.
    assert!(users.iter().all(|u| u.get("permissions").is_none()), "{ev}");

    alice
        .send_control(recipient_session(&bob_id), json!({"try": 2}))
        .await;
    let c = bob.recv_matching(|v| v["type"] == "control").await;
    assert_eq!(
        c["control"]["data"],
        json!({"try": 2}),
        "first control must have been dropped"
    );
}

/// BAPI-11: `message` is forwarded to the room members as `event/room/message`.
async fn bapi_11_message(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let mut other = s.user_in_room("bob", "room2", "talk-b").await;
    let data = json!({"type": "chat", "chat": {"refresh": true}});
    let r = s.backend_request("room1", room_message(data.clone())).await;
    assert_eq!(r.status, 200);
    let ev = room_event_message(&mut alice).await;
    assert_eq!(ev["event"]["message"]["roomid"], "room1");
    assert_eq!(ev["event"]["message"]["data"], data);
    // A request for room2 reaches room2 only.
    let r = s
        .backend_request("room2", room_message(json!({"room": 2})))
        .await;
    assert_eq!(r.status, 200);
    let ev = room_event_message(&mut other).await;
    assert_eq!(ev["event"]["message"]["data"], json!({"room": 2}));
    expect_none(&mut alice, "room message", is_room_message).await;
}

/// BAPI-12: requests are applied to every matching session through the
/// message bus: a user-targeted event reaches all sessions of that user, a
/// room-scoped one every member (single node here; the bus is in-process).
async fn bapi_12_requests_fan_out_to_all_sessions(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a1 = s.user_in_room("alice", "room1", "talk-a1").await;
    let mut a2 = s.user("alice").await;
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    let r = s
        .backend_request(
            "room9",
            json!({"type": "invite", "invite": {"userids": ["alice"], "alluserids": ["alice"]}}),
        )
        .await;
    assert_eq!(r.status, 200);
    for c in [&mut a1, &mut a2] {
        let ev = c
            .recv_matching(|v| v["type"] == "event" && v["event"]["target"] == "roomlist")
            .await;
        assert_eq!(ev["event"]["invite"]["roomid"], "room9");
    }
    let r = s
        .backend_request("room1", room_message(json!({"all": true})))
        .await;
    assert_eq!(r.status, 200);
    for c in [&mut a1, &mut b] {
        assert_eq!(
            room_event_message(c).await["event"]["message"]["data"]["all"],
            true
        );
    }
}

/// BAPI-13: the Talk-session → signaling-session lookup follows the local
/// sessions: after the session leaves the room its Talk id no longer
/// translates (the entry is dropped).
async fn bapi_13_room_session_lookup_follows_local_sessions(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    let mut bob = s.user_in_room("bob", "room1", "talk-b").await;
    let bob_id = bob.session_id().expect("id").to_owned();
    // alice's server knows bob once she is told he joined (in a cluster
    // that news may come after the backend's request otherwise).
    alice
        .recv_matching(|v| {
            v["event"]["type"] == "join" && v["event"]["join"][0]["sessionid"] == bob_id
        })
        .await;
    let incall = json!({"type": "incall", "incall": {"incall": 1,
        "changed": [{"sessionId": "talk-a", "inCall": 1}, {"sessionId": "talk-b", "inCall": 1}],
        "users": [{"sessionId": "talk-a", "inCall": 1}, {"sessionId": "talk-b", "inCall": 1}]}});
    assert_eq!(s.backend_request("room1", incall.clone()).await.status, 200);
    let ev = alice
        .recv_matching(|v| v["type"] == "event" && v["event"]["target"] == "participants")
        .await;
    assert_eq!(
        ev["event"]["update"]["users"].as_array().map(Vec::len),
        Some(2),
        "{ev}"
    );

    bob.bye().await;
    assert_eventually!(s.stats_sum("sessions").await == 1);
    // In a cluster, alice's node must have the news of bob's leave before
    // the backend's request reaches it (one server: it has it at once).
    s.settle().await;
    assert_eq!(s.backend_request("room1", incall).await.status, 200);
    let ev = alice
        .recv_matching(|v| {
            v["type"] == "event"
                && v["event"]["target"] == "participants"
                && v["event"]["type"] == "update"
                && v["event"]["update"]["users"]
                    .as_array()
                    .is_some_and(|u| u.len() == 1)
        })
        .await;
    let users = ev["event"]["update"]["users"].as_array().expect("users");
    assert_ne!(users[0]["sessionId"], bob_id.as_str());
    assert_eq!(users[0]["sessionId"], alice.session_id().expect("id"));
}

// ----- BCL: our requests to the backend ------------------------------------------

/// BCL-01: headers of our requests (auth and room): JSON content type and
/// accept, `OCS-APIRequest: true`, our User-Agent, the features header, and a
/// fresh 64-hex-char random with a valid checksum.
async fn bcl_01_request_headers(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user("alice").await;
    let hello_features: Vec<String> = {
        let mut c = s.client().await;
        let h = c.hello_user(&s.backend.backend_url(), "probe").await;
        h["hello"]["server"]["features"]
            .as_array()
            .expect("features")
            .iter()
            .map(|f| f.as_str().expect("str").to_owned())
            .collect()
    };
    alice.join_room("room1", "talk-a").await;
    let auth = s.backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    let room = s.backend.wait_for_request("room", DEFAULT_TIMEOUT).await;
    let mut randoms = Vec::new();
    for r in [&auth, &room] {
        assert_eq!(r.method, "POST");
        assert_eq!(
            r.header("content-type"),
            Some("application/json"),
            "{:?}",
            r.headers
        );
        assert_eq!(r.header("accept"), Some("application/json"));
        assert!(r.ocs_api_request(), "{:?}", r.headers);
        assert_eq!(
            r.header("user-agent"),
            Some(format!("nextcloud-spreed-signaling/{VERSION}").as_str())
        );
        assert_eq!(
            r.header("x-spreed-signaling-features"),
            Some(hello_features.join(", ").as_str())
        );
        let random = r.header(HEADER_RANDOM).expect("random header");
        assert_eq!(random.len(), 64, "{random}");
        assert!(random.chars().all(|c| c.is_ascii_hexdigit()), "{random}");
        assert_eq!(
            r.header(HEADER_CHECKSUM),
            Some(checksum(SECRET, random, &r.raw_body).as_str())
        );
        assert!(r.checksum_ok);
        randoms.push(random.to_owned());
    }
    assert_ne!(randoms[0], randoms[1], "random must be fresh per request");
    assert!(s.backend.checksum_failures().is_empty());
}

/// BCL-02: an answer that is not `application/json` makes the hello fail
/// with `internal_error` / "unsupported_content_type" (what upstream sends).
async fn bcl_02_non_json_answer_fails_hello(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend
        .set_auth_handler(|_| Reply::raw(200, Some("text/html"), "<html>login</html>"));
    let mut c = s.client().await;
    let r = c
        .hello_v1(
            &s.backend.backend_url(),
            json!({"userid": "alice", "ticket": "t"}),
        )
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "internal_error");
    assert_eq!(r["error"]["message"], "unsupported_content_type");
    assert_eq!(s.stats_sum("sessions").await, 0);

    // The connection can still say hello once the backend behaves.
    s.backend.clear_handler("auth");
    let r = c
        .hello_v1(
            &s.backend.backend_url(),
            json!({"userid": "alice", "ticket": "t"}),
        )
        .await;
    assert_eq!(r["type"], "hello", "{r}");
}

/// BCL-02: the OCS envelope is unwrapped (the auth data and an error inside
/// it are used); a JSON answer without envelope or with `data: null` is an
/// incomplete OCS response.
async fn bcl_02_ocs_envelope_is_unwrapped(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_auth_handler(|body| {
        match body["auth"]["params"]["userid"].as_str().unwrap_or("") {
            "refused" => Reply::error("invalid_ticket", "The ticket is not valid."),
            "bare" => Reply::raw(
                200,
                Some("application/json"),
                r#"{"type":"auth","auth":{"version":"1.0","userid":"bare"}}"#,
            ),
            "null" => Reply::raw(
                200,
                Some("application/json; charset=utf-8"),
                r#"{"ocs":{"meta":{"status":"ok","statuscode":200,"message":"OK"},"data":null}}"#,
            ),
            "renamed" => Reply::json(json!({"type": "auth", "auth": {"version": "1.0",
                "userid": "real-user-id"}})),
            _ => Reply::Default,
        }
    });
    let url = s.backend.backend_url();
    let mut c = s.client().await;
    let r = c
        .hello_v1(&url, json!({"userid": "renamed", "ticket": "t"}))
        .await;
    assert_eq!(r["hello"]["userid"], "real-user-id", "{r}");

    for (user, code, message) in [
        (
            "refused",
            "invalid_ticket",
            Some("The ticket is not valid."),
        ),
        ("bare", "internal_error", Some("incomplete OCS response")),
        ("null", "internal_error", Some("incomplete OCS response")),
    ] {
        let mut c = s.client().await;
        let r = c
            .hello_v1(&url, json!({"userid": user, "ticket": "t"}))
            .await;
        assert_eq!(r["type"], "error", "{user}: {r}");
        assert_eq!(r["error"]["code"], code, "{user}: {r}");
        if let Some(m) = message {
            assert_eq!(r["error"]["message"], m, "{user}: {r}");
        }
    }
    assert_eq!(s.stats_sum("sessions").await, 1);
}

/// BCL-03: shapes of the auth request and of the room join/leave requests.
async fn bcl_03_auth_and_room_request_bodies(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    let params = json!({"userid": "alice", "ticket": "tkt", "extra": [1, 2]});
    let r = c.hello_v1(&s.backend.backend_url(), params.clone()).await;
    assert_eq!(r["type"], "hello");
    let auth = s.backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    assert_eq!(
        auth.body,
        json!({"type": "auth", "auth": {"version": "1.0", "params": params}})
    );
    assert_eq!(auth.path, format!("/{BACKEND_SUFFIX}"));

    c.join_room("room1", "talk-a").await;
    let join = s.backend.wait_for_request("room", DEFAULT_TIMEOUT).await;
    assert_eq!(join.body["type"], "room");
    let room = &join.body["room"];
    assert_eq!(room["version"], "1.0");
    assert_eq!(room["roomid"], "room1");
    assert_eq!(room["userid"], "alice");
    assert_eq!(room["sessionid"], "talk-a");
    assert!(room.get("action").is_none(), "join has no action: {room}");

    c.leave_room().await;
    let leave = s
        .backend
        .wait_for(
            |r| r.kind == "room" && r.payload()["action"] == "leave",
            DEFAULT_TIMEOUT,
        )
        .await;
    let room = leave.payload();
    assert_eq!(room["roomid"], "room1");
    assert_eq!(room["userid"], "alice");
    assert_eq!(room["sessionid"], "talk-a");
}

/// BCL-04: with `signaling-v3` among the capabilities, requests go to the v3
/// backend path although the client named the v1 URL; capabilities are
/// fetched once and cached.
// Single server only: capabilities are cached per server.
#[tokio::test]
async fn bcl_04_signaling_v3_capability_rewrites_path() {
    let s = TestServer::start().await;
    s.backend.add_feature("signaling-v3");
    let url = s.backend.backend_url();
    let _a = s.user("alice").await;
    let _b = s.user("bob").await;
    let auths = s.backend.requests_of("auth");
    assert_eq!(auths.len(), 2);
    for a in &auths {
        assert_eq!(
            a.path, "/ocs/v2.php/apps/spreed/api/v3/signaling/backend",
            "client sent {url}"
        );
        assert!(a.checksum_ok);
    }
    let caps = s.backend.requests_of("capabilities");
    assert_eq!(caps.len(), 1, "capabilities are cached");
    assert_eq!(caps[0].path, "/ocs/v2.php/cloud/capabilities");
    assert!(caps[0].ocs_api_request());
    assert!(caps[0].received_at <= auths[0].received_at);
}

/// BCL-04: without `signaling-v3` (or when the capabilities cannot be read)
/// the client's URL is used as is.
async fn bcl_04_without_v3_capability_path_is_kept(t: Topology) {
    let s = TestServer::start_on(t).await;
    let _a = s.user("alice").await;
    let auth = s.backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    assert_eq!(auth.path, format!("/{BACKEND_SUFFIX}"));

    let s = TestServer::start().await;
    s.backend.add_feature("signaling-v3");
    s.backend.set_handler("capabilities", |_| {
        Reply::raw(500, Some("text/plain"), "oops")
    });
    let _a = s.user("alice").await;
    let auth = s.backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    assert_eq!(auth.path, format!("/{BACKEND_SUFFIX}"));
}

/// BCL-05: `connectionsperhost` limits concurrent requests to one backend
/// host: with 1, a second auth request is only sent after the first answered.
#[tokio::test]
async fn bcl_05_connections_per_host_limits_concurrency() {
    let delay = Duration::from_millis(500);
    let s = TestServer::start_with("[backend]\nconnectionsperhost = 1\n").await;
    s.backend
        .set_auth_handler(move |_| Reply::Default.after(delay));
    let url = s.backend.backend_url();
    let mut a = s.client().await;
    let mut b = s.client().await;
    let (ra, rb) = tokio::join!(
        a.hello_v1(&url, json!({"userid": "alice", "ticket": "t"})),
        b.hello_v1(&url, json!({"userid": "bob", "ticket": "t"}))
    );
    assert_eq!(
        (ra["type"].as_str(), rb["type"].as_str()),
        (Some("hello"), Some("hello"))
    );
    let auths = s.backend.requests_of("auth");
    assert_eq!(auths.len(), 2);
    let gap = auths[1].received_at - auths[0].received_at;
    assert!(
        gap >= delay - Duration::from_millis(50),
        "second request after {gap:?}"
    );

    // Default (8): both requests are in flight at the same time.
    let s = TestServer::start().await;
    s.backend
        .set_auth_handler(move |_| Reply::Default.after(delay));
    let url = s.backend.backend_url();
    let mut a = s.client().await;
    let mut b = s.client().await;
    let (ra, rb) = tokio::join!(
        a.hello_v1(&url, json!({"userid": "alice", "ticket": "t"})),
        b.hello_v1(&url, json!({"userid": "bob", "ticket": "t"}))
    );
    assert_eq!(
        (ra["type"].as_str(), rb["type"].as_str()),
        (Some("hello"), Some("hello"))
    );
    let auths = s.backend.requests_of("auth");
    let gap = auths[1].received_at - auths[0].received_at;
    assert!(gap < delay, "requests were serialized: {gap:?}");
}

/// BCL-05: redirects are followed within the same scheme and host (the
/// request is re-sent with its checksum), never to another host.
#[tokio::test]
async fn bcl_05_redirects_only_within_the_same_host() {
    let backend = FakeBackend::start(SECRET).await;
    let backend_base = backend.url();
    let front = start_front({
        let backend_base = backend_base.clone();
        move |path: &str| {
            if let Some(rest) = path.strip_prefix("/same/") {
                FrontAction::Redirect(307, format!("/real/{rest}"))
            } else if let Some(rest) = path.strip_prefix("/other/") {
                FrontAction::Redirect(307, format!("{backend_base}{rest}"))
            } else {
                FrontAction::Forward(backend_base.clone())
            }
        }
    })
    .await;
    let text = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [backend]\nbackends = front\ntimeout = 5\n[front]\nurl = {}\nsecret = {SECRET}\n\
         [nats]\nurl = :loopback:\n",
        front.url("")
    );
    let (_server, addr) = start_server(&text).await;

    let (_a, r) = hello_at(addr, &front.url(&format!("same/{BACKEND_SUFFIX}")), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    let auth = backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    assert_eq!(auth.path, format!("/real/{BACKEND_SUFFIX}"));
    assert!(auth.checksum_ok);

    let (_b, r) = hello_at(addr, &front.url(&format!("other/{BACKEND_SUFFIX}")), "bob").await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "internal_error");
    assert!(
        r["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not redirecting to different host")),
        "{r}"
    );
    // The other host never saw the request.
    assert_eq!(
        backend.count("auth"),
        1,
        "{:?}",
        backend.requests_of("auth")
    );
}

/// BCL-06: a backend slower than `[backend] timeout` fails the hello with
/// `internal_error`; the late answer does not register a session, and the
/// connection can say hello again.
async fn bcl_06_backend_timeout_fails_hello_without_half_registered_session(t: Topology) {
    let s = TestServer::start_on_with(t, "[backend]\ntimeout = 1\n").await;
    let late = Duration::from_millis(2500);
    s.backend.set_auth_handler(move |body| {
        if body["auth"]["params"]["userid"] == "slow" {
            Reply::Default.after(late)
        } else {
            Reply::Default
        }
    });
    let url = s.backend.backend_url();
    let mut c = s.client().await;
    let start = Instant::now();
    let r = c
        .hello_v1(&url, json!({"userid": "slow", "ticket": "t"}))
        .await;
    let took = start.elapsed();
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "internal_error", "{r}");
    assert!(
        took >= Duration::from_millis(900) && took < late,
        "timed out after {took:?}"
    );
    assert_eq!(s.stats_sum("sessions").await, 0);

    // Hello again before the slow answer arrives; then let it arrive.
    let r = c
        .hello_v1(&url, json!({"userid": "alice", "ticket": "t"}))
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(r["hello"]["userid"], "alice");
    let remaining = late.saturating_sub(start.elapsed()) + Duration::from_millis(300);
    c.expect_no_message(remaining).await;
    assert_eq!(s.stats_sum("sessions").await, 1);
}

// ----- BCFG: backend configuration -----------------------------------------------

/// BCFG-01: several backends matched by host, each request signed with the
/// secret of the matching backend; a trailing slash is added to configured
/// URLs (backend1 is configured without one); unknown hosts are refused
/// without contacting them; backends missing url or secret are skipped.
#[tokio::test]
async fn bcfg_01_backends_by_host() {
    let b1 = FakeBackend::start(SECRET).await;
    let b2 = FakeBackend::start(SECRET2).await;
    let b3 = FakeBackend::start("third").await;
    let extra = format!(
        "[backend]\nbackends = backend1, backend2, backend3, backend4\n\
         [backend3]\nurl = {}\n[backend4]\nsecret = four\n",
        b3.url()
    );
    let (_server, addr) = start_server(&two_config(&b1, &b2, &extra)).await;

    let (_c1, r) = hello_at(addr, &b1.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    let (_c2, r) = hello_at(addr, &b2.backend_url(), "bob").await;
    assert_eq!(r["type"], "hello", "{r}");
    assert!(
        b1.wait_for_request("auth", DEFAULT_TIMEOUT)
            .await
            .checksum_ok
    );
    assert!(
        b2.wait_for_request("auth", DEFAULT_TIMEOUT)
            .await
            .checksum_ok
    );
    assert_eq!(b1.count("auth"), 1);
    assert_eq!(b2.count("auth"), 1);

    // backend3 has no secret: skipped.
    let (_c3, r) = hello_at(addr, &b3.backend_url(), "carol").await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");
    assert_eq!(r["error"]["message"], "The backend URL is not supported.");
    assert_eq!(b3.requests().len(), 0);

    let (_c4, r) = hello_at(addr, "http://unknown.invalid/ocs/v2.php/x", "dave").await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");
}

/// BCFG-01: an `http` URL is not accepted for a backend configured with
/// `https` (same host and port).
#[tokio::test]
async fn bcfg_01_http_url_refused_for_https_backend() {
    let backend = FakeBackend::start(SECRET).await;
    let https_url = backend.url().replacen("http://", "https://", 1);
    let text = config_for(&https_url, "");
    let (_server, addr) = start_server(&text).await;
    let (_c, r) = hello_at(addr, &backend.backend_url(), "alice").await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "invalid_backend");
    assert!(backend.requests().is_empty(), "backend was contacted");
}

/// BCFG-01: per-backend `sessionlimit`: further client sessions are refused
/// with `session_limit_exceeded`; a freed slot can be used again; internal
/// clients and other backends do not count.
#[tokio::test]
async fn bcfg_01_session_limit_per_backend() {
    let t = start_two("[backend1]\nsessionlimit = 2\n").await;
    let url1 = t.b1.backend_url();
    let (mut a, r) = hello_at(t.addr, &url1, "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    let (_b, r) = hello_at(t.addr, &url1, "bob").await;
    assert_eq!(r["type"], "hello", "{r}");
    let (mut c, r) = hello_at(t.addr, &url1, "carol").await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "session_limit_exceeded");
    assert_eq!(
        r["error"]["message"],
        "Too many sessions connected for this backend."
    );

    // Other backend: unaffected.
    for u in ["x", "y", "z"] {
        let (_c, r) = hello_at(t.addr, &t.b2.backend_url(), u).await;
        assert_eq!(r["type"], "hello", "{r}");
    }
    // Internal client on the full backend: not counted.
    let mut internal = TestClient::connect(&spreed_url(t.addr))
        .await
        .skip("welcome");
    let r = internal.hello_internal(&t.b1.url(), INTERNAL_SECRET).await;
    assert_eq!(r["type"], "hello", "{r}");

    a.bye().await;
    let r = c
        .hello_v1(&url1, json!({"userid": "carol", "ticket": "t"}))
        .await;
    assert_eq!(r["type"], "hello", "slot freed: {r}");
}

/// BCFG-02: several backends on one host, told apart by URL path prefix,
/// each with its own secret.
#[tokio::test]
async fn bcfg_02_backends_sharing_a_host_by_prefix() {
    let one = FakeBackend::start(SECRET).await;
    let two = FakeBackend::start(SECRET2).await;
    let (one_base, two_base) = (one.url(), two.url());
    let front = start_front(move |path: &str| {
        if path.starts_with("/two/") {
            FrontAction::Forward(two_base.clone())
        } else {
            FrontAction::Forward(one_base.clone())
        }
    })
    .await;
    let text = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [backend]\nbackends = one, two\ntimeout = 5\n\
         [one]\nurl = {}\nsecret = {SECRET}\n[two]\nurl = {}\nsecret = {SECRET2}\n\
         [nats]\nurl = :loopback:\n",
        front.url("one"),
        front.url("two/")
    );
    let (_server, addr) = start_server(&text).await;
    let base = format!("http://{addr}/");

    let (mut a, r) = hello_at(addr, &front.url(&format!("one/{BACKEND_SUFFIX}")), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    let (mut b, r) = hello_at(addr, &front.url(&format!("two/{BACKEND_SUFFIX}")), "bob").await;
    assert_eq!(r["type"], "hello", "{r}");
    let auth1 = one.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    let auth2 = two.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    assert!(
        auth1.checksum_ok && auth2.checksum_ok,
        "signed with each backend's secret"
    );
    assert_eq!(auth1.path, format!("/one/{BACKEND_SUFFIX}"));
    assert_eq!(auth2.path, format!("/two/{BACKEND_SUFFIX}"));

    let (_c, r) = hello_at(
        addr,
        &front.url(&format!("three/{BACKEND_SUFFIX}")),
        "carol",
    )
    .await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");

    // Backend API: the header's prefix picks the backend.
    a.join_room("room1", "talk-a").await;
    b.join_room("room1", "talk-b").await;
    let body = serde_json::to_vec(&room_message(json!({"to": "two"}))).expect("json");
    let header = front.url("two/");
    let mut p = Post::signed(SECRET2);
    p.backend_header = Some(&header);
    let r = p.send(&format!("{base}api/v1/room/room1"), &body).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        room_event_message(&mut b).await["event"]["message"]["data"]["to"],
        "two"
    );
    let mut p = Post::signed(SECRET);
    p.backend_header = Some(&header);
    assert_eq!(
        p.send(&format!("{base}api/v1/room/room1"), &body)
            .await
            .status,
        403
    );
    expect_none(&mut a, "room message", is_room_message).await;
}

/// BCFG-03: `allowall = true` accepts any backend URL with the common secret;
/// all sessions then belong to one backend (they can message each other).
#[tokio::test]
async fn bcfg_03_allowall_with_common_secret() {
    let h1 = FakeBackend::start("common").await;
    let h2 = FakeBackend::start("common").await;
    let text = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [backend]\nallowall = true\nallowhttp = true\nsecret = common\ntimeout = 5\n\
         [nats]\nurl = :loopback:\n"
    );
    let (_server, addr) = start_server(&text).await;
    let (mut a, r) = hello_at(addr, &h1.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    let (mut b, r) = hello_at(addr, &h2.backend_url(), "bob").await;
    assert_eq!(r["type"], "hello", "{r}");
    assert!(
        h1.wait_for_request("auth", DEFAULT_TIMEOUT)
            .await
            .checksum_ok
    );
    assert!(
        h2.wait_for_request("auth", DEFAULT_TIMEOUT)
            .await
            .checksum_ok
    );
    let b_id = b.session_id().expect("id").to_owned();
    a.send_message(recipient_session(&b_id), json!({"hi": 1}))
        .await;
    let m = b.recv_matching(|v| v["type"] == "message").await;
    assert_eq!(m["message"]["data"]["hi"], 1);

    // Upstream quirk kept: in `allowall` mode the compat backend is returned
    // for any host without checking the scheme, so `allowhttp` does not
    // matter here (it does for `allowed`, see BCFG-04).
    let text = text.replace("allowhttp = true\n", "");
    let (_server, addr) = start_server(&text).await;
    let (_c, r) = hello_at(addr, &h1.backend_url(), "carol").await;
    assert_eq!(r["type"], "hello", "{r}");
}

/// BCFG-04: the deprecated `allowed` host list with the common secret
/// (a path in an entry is ignored); `allowhttp` and the global
/// `sessionlimit` apply in this mode.
#[tokio::test]
async fn bcfg_04_allowed_hosts_compat_mode() {
    let ok = FakeBackend::start("common").await;
    let other = FakeBackend::start("common").await;
    let host = ok
        .url()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_owned();
    let text = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [backend]\nallowed = {host}/nextcloud, other.invalid\nallowhttp = true\nsecret = common\n\
         sessionlimit = 1\ntimeout = 5\n[nats]\nurl = :loopback:\n"
    );
    let (_server, addr) = start_server(&text).await;
    let (mut a, r) = hello_at(addr, &ok.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    assert!(
        ok.wait_for_request("auth", DEFAULT_TIMEOUT)
            .await
            .checksum_ok
    );
    let (_b, r) = hello_at(addr, &other.backend_url(), "bob").await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");
    assert!(other.requests().is_empty());
    let (mut c, r) = hello_at(addr, &ok.backend_url(), "carol").await;
    assert_eq!(r["error"]["code"], "session_limit_exceeded", "{r}");
    a.bye().await;
    let r = c
        .hello_v1(&ok.backend_url(), json!({"userid": "carol", "ticket": "t"}))
        .await;
    assert_eq!(r["type"], "hello", "{r}");

    // Without `allowhttp` the listed host is only accepted over https.
    let (_server, addr) = start_server(&text.replace("allowhttp = true\n", "")).await;
    let (_d, r) = hello_at(addr, &ok.backend_url(), "dave").await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");
}

/// BCFG-05: users and rooms are per backend: the same user id on two
/// backends are different recipients (user messages and backend events stay
/// on their backend).
#[tokio::test]
async fn bcfg_05_user_and_room_subjects_are_per_backend() {
    let t = start_two("").await;
    let (mut carol1, _) = hello_at(t.addr, &t.b1.backend_url(), "carol").await;
    let (mut carol2, _) = hello_at(t.addr, &t.b2.backend_url(), "carol").await;
    let (mut dave1, _) = hello_at(t.addr, &t.b1.backend_url(), "dave").await;
    let (mut dave2, _) = hello_at(t.addr, &t.b2.backend_url(), "dave").await;
    assert!(carol1.session_id().is_some() && carol2.session_id().is_some());

    dave1
        .send_message(recipient_user("carol"), json!({"from": "dave1"}))
        .await;
    let m = carol1.recv_matching(|v| v["type"] == "message").await;
    assert_eq!(m["message"]["data"]["from"], "dave1");

    // Backend event to "carol" via backend2 only.
    let body = json!({"type": "invite", "invite": {"userids": ["carol"], "alluserids": ["carol"]}});
    let bytes = serde_json::to_vec(&body).expect("json");
    let header = t.b2.url();
    let mut p = Post::signed(SECRET2);
    p.backend_header = Some(&header);
    let r = p
        .send(&format!("http://{}/api/v1/room/room1", t.addr), &bytes)
        .await;
    assert_eq!(r.status, 200);
    let ev = carol2.expect_event("roomlist", "invite").await;
    assert_eq!(ev["event"]["invite"]["roomid"], "room1");

    // Markers on backend2 after both: carol2 saw no user message from dave1.
    dave2
        .send_message(recipient_user("carol"), json!({"from": "dave2"}))
        .await;
    let m = carol2.recv_matching(|v| v["type"] == "message").await;
    assert_eq!(m["message"]["data"]["from"], "dave2");
    let m = carol1.recv_timeout(SHORT).await;
    assert!(m.is_none(), "carol1 got {m:?}");
}

/// BCFG-06: reload adds and removes backends: clients of an added backend can
/// say hello afterwards, clients of a removed one cannot; the backend gauge
/// follows.
async fn bcfg_06_reload_adds_and_removes_backends(t: Topology) {
    let s = TestServer::start_on(t).await;
    let b2 = FakeBackend::start(SECRET2).await;
    let url2 = b2.backend_url();
    let (_c, r) = hello_at(s.addr, &url2, "bob").await;
    assert_eq!(r["error"]["code"], "invalid_backend", "before reload: {r}");

    let metrics = || async {
        let r = raw_request("GET", &format!("{}metrics", s.base()), &[], "").await;
        r.text()
            .lines()
            .find_map(|l| l.strip_prefix("signaling_backend_current "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert_eq!(metrics().await, Some(1.0));

    let both = two_config(&s.backend, &b2, "");
    s.server.reload(&Ini::parse(&both).expect("ini"));
    let (_c, r) = hello_at(s.addr, &url2, "bob").await;
    assert_eq!(r["type"], "hello", "after adding: {r}");
    let (mut alice, r) = hello_at(s.addr, &s.backend.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(metrics().await, Some(2.0));

    // Remove backend1 (keep backend2).
    let only2 = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = {HASH_KEY}\n\
         [backend]\nbackends = backend2\n[backend2]\nurl = {}\nsecret = {SECRET2}\n",
        b2.url()
    );
    s.server.reload(&Ini::parse(&only2).expect("ini"));
    let (_c, r) = hello_at(s.addr, &s.backend.backend_url(), "carol").await;
    assert_eq!(r["error"]["code"], "invalid_backend", "after removing: {r}");
    let (_c, r) = hello_at(s.addr, &url2, "dave").await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(metrics().await, Some(1.0));
    // The existing session of the removed backend is not thrown out.
    let r = alice.request(json!({"type": "bye", "bye": {}})).await;
    assert_eq!(r["type"], "bye");

    // Changing a secret on reload takes effect.
    let changed = only2.replace(SECRET2, "rotated");
    s.server.reload(&Ini::parse(&changed).expect("ini"));
    let (_c, r) = hello_at(s.addr, &url2, "erin").await;
    // The fake still uses the old secret, so the signed auth is refused by it.
    assert_eq!(r["type"], "error", "{r}");
    let last = b2.requests_of("auth").pop().expect("auth");
    assert!(!last.checksum_ok);
    let random = last.header(HEADER_RANDOM).expect("random");
    assert_eq!(
        last.header(HEADER_CHECKSUM),
        Some(checksum("rotated", random, &last.raw_body).as_str())
    );
}

/// BCFG-06: in compat mode (`allowall`) reload does not change backends.
#[tokio::test]
async fn bcfg_06_reload_is_ignored_in_compat_mode() {
    let h = FakeBackend::start("common").await;
    let text = format!(
        "[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [backend]\nallowall = true\nallowhttp = true\nsecret = common\n[nats]\nurl = :loopback:\n"
    );
    let (server, addr) = start_server(&text).await;
    let other = FakeBackend::start(SECRET).await;
    server.reload(&Ini::parse(&config_for(&other.url(), "")).expect("ini"));
    let (_c, r) = hello_at(addr, &h.backend_url(), "alice").await;
    assert_eq!(r["type"], "hello", "compat backend still active: {r}");
    assert!(
        h.wait_for_request("auth", DEFAULT_TIMEOUT)
            .await
            .checksum_ok
    );
}

/// BCFG-07: per-backend `maxstreambitrate` / `maxscreenbitrate` are accepted
/// (negative values treated as unset). The caps themselves only act on MCU
/// publishers, which need an MCU; here we check that a backend configured
/// with them works normally.
#[tokio::test]
async fn bcfg_07_bitrate_settings_are_accepted() {
    let s =
        TestServer::start_with("[backend1]\nmaxstreambitrate = 1048576\nmaxscreenbitrate = -5\n")
            .await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    assert_eq!(
        a.expect_event("room", "join").await["event"]["join"][0]["userid"],
        "alice"
    );
}

/// A request posted again exactly as it was (same random, checksum and
/// body) is a replay: refused with 403, logged and counted, and carried out
/// once only. A fresh random with the same body is a new request.
async fn replayed_request_is_refused(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    alice.expect_event("room", "join").await;
    let body = serde_json::to_vec(&room_message(json!({"n": 1}))).expect("json");
    let url = room_url(&s, "room1");
    let header = s.backend.url();
    let mut p = Post::signed(SECRET);
    p.random = Some(random_hex(64));
    p.backend_header = Some(&header);
    assert_eq!(p.send(&url, &body).await.status, 200);
    for _ in 0..3 {
        let r = p.send(&url, &body).await;
        assert_eq!(r.status, 403, "{}", r.text());
        assert_eq!(r.text().trim(), "Authentication check failed");
    }
    let ev = room_event_message(&mut alice).await;
    assert_eq!(ev["event"]["message"]["data"]["n"], 1);
    alice.expect_no_message(SHORT).await;

    let mut fresh = Post::signed(SECRET);
    fresh.backend_header = Some(&header);
    assert_eq!(fresh.send(&url, &body).await.status, 200);
    room_event_message(&mut alice).await;

    let metrics = raw_request("GET", &format!("{}metrics", s.base()), &[], "")
        .await
        .text();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("signaling_backend_replays_total{"))
        .unwrap_or_else(|| panic!("no replay counter in {metrics}"));
    assert!(line.ends_with(" 3"), "{line}");
}

/// Legitimate traffic is never refused: many requests in a row, each with
/// its own random, all accepted.
async fn fresh_randoms_are_never_refused(t: Topology) {
    let s = TestServer::start_on(t).await;
    let body = serde_json::to_vec(&room_message(json!({"n": 1}))).expect("json");
    let url = room_url(&s, "room9");
    let header = s.backend.url();
    let mut p = Post::signed(SECRET);
    p.backend_header = Some(&header);
    for i in 0..300 {
        assert_eq!(p.send(&url, &body).await.status, 200, "request {i}");
    }
}

both_topologies!(
    bapi_01_chunked_body_without_content_length_is_411,
    bapi_01_body_over_256k_is_413_and_256k_is_accepted,
    bapi_01_content_type_must_be_json,
    bapi_01_missing_checksum_headers_are_403,
    bapi_02_checksum_must_match_random_body_and_secret,
    bapi_01_invalid_json_body_is_400,
    bapi_04_success_body_and_unknown_type,
    bapi_05_invite,
    bapi_06_disinvite,
    bapi_06_disinvite_by_talk_session_reaches_a_guest,
    bapi_07_update,
    bapi_08_delete,
    bapi_09_incall_translates_session_ids,
    bapi_10_participants_update_and_permissions,
    bapi_11_message,
    bapi_12_requests_fan_out_to_all_sessions,
    bapi_13_room_session_lookup_follows_local_sessions,
    bcl_01_request_headers,
    bcl_02_non_json_answer_fails_hello,
    bcl_02_ocs_envelope_is_unwrapped,
    bcl_03_auth_and_room_request_bodies,
    bcl_04_without_v3_capability_path_is_kept,
    bcl_06_backend_timeout_fails_hello_without_half_registered_session,
    bcfg_06_reload_adds_and_removes_backends,
    replayed_request_is_refused,
    fresh_randoms_are_never_refused,
);
