//! HTTP surface of the server: listeners (TCP, Unix socket, TLS), routing,
//! common response headers, the welcome page, statistics and metrics.
//!
//! Feature IDs: HTTP-01..03, BAPI-14/15, OBS-01/02.
// Single server only: one node's HTTP surface (listeners, routing, headers).
mod common;
use common::*;

use runtime::config::Ini;
use signaling::{bind_and_serve, ListenConfig, Server};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const VERSION: &str = env!("CARGO_PKG_VERSION");

// ----- helpers -----------------------------------------------------------------

/// Like `common::start_server`, but returns every bound TCP address (HTTP
/// listeners first, then HTTPS ones, each in configuration order).
async fn start_all(text: &str) -> (Arc<Server>, Vec<SocketAddr>) {
    runtime::logging::init("warn");
    let ini = Ini::parse(text).expect("config parses");
    let server = Server::build(&ini).expect("server builds");
    let listen = ListenConfig::from_config(&ini).expect("listen config");
    let addrs = bind_and_serve(&server, &listen)
        .await
        .expect("listeners bind");
    (server, addrs)
}

async fn get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    raw_request("GET", url, headers, "").await
}

/// One HTTP/1.1 request written by hand to a Unix socket; returns the raw answer.
async fn unix_http(path: &Path, request: &str) -> String {
    let fut = async {
        let mut s = UnixStream::connect(path)
            .await
            .expect("connect unix socket");
        s.write_all(request.as_bytes()).await.expect("write");
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.expect("read");
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(DEFAULT_TIMEOUT, fut)
        .await
        .expect("unix socket request timed out")
}

/// Status code and body of a raw HTTP/1.1 answer (`Content-Length` framed).
fn split_response(raw: &str) -> (u16, String, String) {
    let (head, body) = raw.split_once("\r\n\r\n").expect("complete HTTP answer");
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head.to_owned(), body.to_owned())
}

/// Value of one sample of `name` whose labels include all of `labels`
/// (summed if several series match); `None` if there is no such sample.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((key, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (n, label_text) = match key.find('{') {
            Some(i) => (&key[..i], key[i + 1..].trim_end_matches('}')),
            None => (key, ""),
        };
        if n != name {
            continue;
        }
        let have = parse_labels(label_text);
        if labels
            .iter()
            .all(|(k, v)| have.iter().any(|(hk, hv)| hk == k && hv == v))
        {
            let v: f64 = value.trim().parse().expect("numeric sample");
            found = Some(found.unwrap_or(0.0) + v);
        }
    }
    found
}

fn parse_labels(mut rest: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_owned();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap_or(after.len());
        out.push((key, after[..end].to_owned()));
        rest = &after[(end + 1).min(after.len())..];
    }
    out
}

async fn metrics_text(s: &TestServer) -> String {
    let r = get(&format!("{}metrics", s.base()), &[]).await;
    assert_eq!(r.status, 200, "metrics: {}", r.text());
    r.text()
}

async fn stats(s: &TestServer) -> Value {
    let r = get(&format!("{}api/v1/stats", s.base()), &[]).await;
    assert_eq!(r.status, 200, "stats: {}", r.text());
    r.json()
}

/// Features the server announces to clients (hello `server.features`).
async fn announced_features(s: &TestServer) -> Vec<String> {
    let mut c = s.client().await;
    let hello = c
        .hello_user(&s.backend.backend_url(), "feature-probe")
        .await;
    let list: Vec<String> = hello["hello"]["server"]["features"]
        .as_array()
        .expect("features in hello")
        .iter()
        .map(|f| f.as_str().expect("feature string").to_owned())
        .collect();
    c.bye().await;
    list
}

fn unique_socket_path(tag: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!(
        "sig-{tag}-{}-{}.sock",
        std::process::id(),
        random_hex(8)
    ))
}

struct RemoveOnDrop(std::path::PathBuf);
impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

// ----- HTTP-01: listeners ------------------------------------------------------

/// HTTP-01: several space-separated listen addresses, one of them a Unix
/// socket; a stale file at the socket path is replaced.
#[tokio::test]
async fn http_01_several_listeners_including_unix_socket() {
    let backend = FakeBackend::start(SECRET).await;
    let sock = unique_socket_path("h01");
    let _cleanup = RemoveOnDrop(sock.clone());
    // A stale regular file where the socket goes must not prevent binding.
    std::fs::write(&sock, b"stale").expect("create stale file");
    let text = config_for(&backend.url(), "").replace(
        "listen = 127.0.0.1:0\n",
        &format!("listen = 127.0.0.1:0 {}  127.0.0.1:0\n", sock.display()),
    );
    let (_server, addrs) = start_all(&text).await;
    assert_eq!(addrs.len(), 2, "two TCP listeners: {addrs:?}");
    assert_ne!(addrs[0], addrs[1]);
    for a in &addrs {
        let r = get(&format!("http://{a}/api/v1/welcome"), &[]).await;
        assert_eq!(r.status, 200, "welcome on {a}");
        assert_eq!(r.json()["nextcloud-spreed-signaling"], "Welcome");
    }

    let raw = unix_http(
        &sock,
        "GET /api/v1/welcome HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    let (status, head, body) = split_response(&raw);
    assert_eq!(status, 200, "{raw}");
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains(&format!("server: nextcloud-spreed-signaling/{VERSION}")),
        "{raw}"
    );
    let v: Value = serde_json::from_str(body.trim()).expect("welcome JSON");
    assert_eq!(
        v,
        json!({"nextcloud-spreed-signaling": "Welcome", "version": VERSION})
    );
}

/// HTTP-03: the client WebSocket is served on a Unix socket listener too
/// (a full hello against the fake backend over it).
#[tokio::test]
async fn http_03_websocket_over_unix_socket() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let backend = FakeBackend::start(SECRET).await;
    let sock = unique_socket_path("h03");
    let _cleanup = RemoveOnDrop(sock.clone());
    let text = config_for(&backend.url(), "").replace(
        "listen = 127.0.0.1:0\n",
        &format!("listen = 127.0.0.1:0 {}\n", sock.display()),
    );
    let (_server, _addrs) = start_all(&text).await;

    let stream = UnixStream::connect(&sock).await.expect("connect");
    let (mut ws, resp) = tokio::time::timeout(
        DEFAULT_TIMEOUT,
        tokio_tungstenite::client_async("ws://localhost/spreed", stream),
    )
    .await
    .expect("handshake timeout")
    .expect("websocket handshake over unix socket");
    assert_eq!(resp.status().as_u16(), 101);
    let hello = json!({"id": "1", "type": "hello", "hello": {"version": "1.0",
        "auth": {"url": backend.backend_url(), "params": {"userid": "unix-user", "ticket": "t"}}}});
    ws.send(Message::text(hello.to_string()))
        .await
        .expect("send");
    let reply = tokio::time::timeout(DEFAULT_TIMEOUT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(t))) => {
                    let v: Value = serde_json::from_str(t.as_str()).expect("json");
                    if v["id"] == "1" {
                        return v;
                    }
                }
                Some(Ok(_)) => {}
                other => panic!("connection ended: {other:?}"),
            }
        }
    })
    .await
    .expect("hello reply");
    assert_eq!(reply["type"], "hello", "{reply}");
    assert_eq!(reply["hello"]["userid"], "unix-user");
    assert!(backend.requests_of("auth")[0].checksum_ok);
}

/// HTTP-02: an `[https]` listener with a certificate and key generated by the
/// `openssl` CLI serves the same routes over TLS (checked with `curl -k`).
#[tokio::test]
async fn http_02_https_listener_serves_routes() {
    let have = |tool: &str| {
        std::process::Command::new("which")
            .arg(tool)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    assert!(
        have("openssl") && have("curl"),
        "this test needs the openssl and curl command line tools"
    );
    let dir = TempDir::new("sig-https").expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let (c2, k2) = (cert.clone(), key.clone());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .arg("ec_paramgen_curve:prime256v1")
            .args(["-nodes", "-days", "1", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1"])
            .arg("-keyout")
            .arg(&k2)
            .arg("-out")
            .arg(&c2)
            .output()
    })
    .await
    .expect("join")
    .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let backend = FakeBackend::start(SECRET).await;
    let extra = format!(
        "[https]\nlisten = 127.0.0.1:0\ncertificate = {}\nkey = {}\n",
        cert.display(),
        key.display()
    );
    let (_server, addrs) = start_all(&config_for(&backend.url(), &extra)).await;
    assert_eq!(addrs.len(), 2, "http + https: {addrs:?}");
    let https = addrs[1];

    let curl = |path: &'static str| async move {
        let url = format!("https://{https}{path}");
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new("curl")
                .args(["-k", "-s", "-i", "--http1.1", "--max-time", "5", &url])
                .output()
        })
        .await
        .expect("join")
        .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let raw = curl("/api/v1/welcome").await;
    let (status, head, body) = split_response(&raw);
    assert_eq!(status, 200, "{raw}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("server: nextcloud-spreed-signaling/{VERSION}")),
        "{raw}"
    );
    let v: Value = serde_json::from_str(body.trim()).expect("welcome JSON");
    assert_eq!(v["nextcloud-spreed-signaling"], "Welcome");

    let raw = curl("/api/v1/stats").await;
    let (status, _, body) = split_response(&raw);
    assert_eq!(status, 200, "{raw}");
    let v: Value = serde_json::from_str(body.trim()).expect("stats JSON");
    assert!(v["sessions"].is_u64(), "{v}");

    let (status, _, _) = split_response(&curl("/nope").await);
    assert_eq!(status, 404);

    // The TLS port does not speak plain HTTP.
    let plain = RawRequest::get(&format!("http://{https}/api/v1/welcome"))
        .timeout(Duration::from_secs(3))
        .send()
        .await;
    assert!(
        !matches!(plain, Ok(ref r) if r.status == 200),
        "plain HTTP on the TLS port: {plain:?}"
    );
}

// ----- HTTP-03: routing --------------------------------------------------------

/// HTTP-03: unknown paths are 404, wrong methods on known routes are 405.
#[tokio::test]
async fn http_03_unknown_paths_404_and_wrong_methods_405() {
    let s = TestServer::start().await;
    for path in [
        "nope",
        "api/v1/nope",
        "api/v2/welcome",
        "spreed/x",
        "api/v1/room/",
    ] {
        let r = get(&format!("{}{path}", s.base()), &[]).await;
        assert_eq!(r.status, 404, "GET /{path}: {}", r.text());
    }
    for (method, path) in [
        ("POST", "api/v1/welcome"),
        ("PUT", "api/v1/welcome"),
        ("GET", "api/v1/room/room1"),
        ("DELETE", "api/v1/room/room1"),
        ("POST", "api/v1/stats"),
        ("POST", "metrics"),
        ("POST", "spreed"),
    ] {
        let r = raw_request(method, &format!("{}{path}", s.base()), &[], "").await;
        assert_eq!(r.status, 405, "{method} /{path}: {}", r.text());
    }
}

/// HTTP-03: `/turn/credentials` is one of the routes (TURN REST API for
/// Janus); without a key upstream answers 400 "Invalid service and/or key
/// sent.", never 404.
#[tokio::test]
async fn http_03_turn_credentials_route_exists() {
    let s = TestServer::start().await;
    let r = get(&format!("{}turn/credentials?service=turn", s.base()), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.text().trim(), "Invalid service and/or key sent.");
}

/// HTTP-03: a plain GET of `/spreed` (no WebSocket upgrade headers) is
/// refused with 400; a proper upgrade request gets 101.
#[tokio::test]
async fn http_03_spreed_without_upgrade_is_400() {
    let s = TestServer::start().await;
    let r = get(&format!("{}spreed", s.base()), &[]).await;
    assert_eq!(r.status, 400, "{}", r.text());

    // Upgrade headers but an unsupported WebSocket version: still 400.
    let r = get(
        &format!("{}spreed", s.base()),
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());

    // The real thing works on the same path.
    let raw = raw_http(
        &s.addr.to_string(),
        b"GET /spreed HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        Duration::from_millis(500),
    )
    .await
    .expect("raw upgrade");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    // RFC 6455 example key/accept pair.
    assert!(
        text.to_ascii_lowercase()
            .contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{text}"
    );
}

// ----- BAPI-14 / BAPI-15 -------------------------------------------------------

/// BAPI-14: `GET /api/v1/welcome` answers the welcome JSON with the version.
#[tokio::test]
async fn bapi_14_welcome() {
    let s = TestServer::start().await;
    let r = get(&format!("{}api/v1/welcome", s.base()), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.json(),
        json!({"nextcloud-spreed-signaling": "Welcome", "version": VERSION})
    );
    // Same version the server announces to clients.
    let mut c = s.client().await;
    let hello = c.hello_user(&s.backend.backend_url(), "alice").await;
    assert_eq!(hello["hello"]["server"]["version"], VERSION);
}

/// BAPI-15: `Server` and `X-Spreed-Signaling-Features` (the features the
/// server announces to clients, joined with ", ") on the backend-API
/// responses: welcome, room requests (success and failure), stats, metrics.
#[tokio::test]
async fn bapi_15_common_headers_on_backend_api_responses() {
    let s = TestServer::start().await;
    let features = announced_features(&s).await;
    assert!(!features.is_empty());
    let expected_features = features.join(", ");
    let expected_server = format!("nextcloud-spreed-signaling/{VERSION}");

    let check = |what: &str, r: &HttpResponse| {
        assert_eq!(
            r.header("server"),
            Some(expected_server.as_str()),
            "{what}: {:?}",
            r.headers
        );
        assert_eq!(
            r.header("x-spreed-signaling-features"),
            Some(expected_features.as_str()),
            "{what}: {:?}",
            r.headers
        );
    };

    check(
        "welcome",
        &get(&format!("{}api/v1/welcome", s.base()), &[]).await,
    );
    let ok = s
        .backend_request(
            "room1",
            json!({"type": "message", "message": {"data": {"a": 1}}}),
        )
        .await;
    assert_eq!(ok.status, 200);
    check("room request", &ok);
    let bad = signed_room_request("wrong-secret", None, &s.base(), "room1", "{}").await;
    assert_eq!(bad.status, 403);
    check("refused room request", &bad);
    check(
        "stats",
        &get(&format!("{}api/v1/stats", s.base()), &[]).await,
    );
    let refused = get(
        &format!("{}api/v1/stats", s.base()),
        &[("X-Real-IP", "10.1.2.3")],
    )
    .await;
    assert_eq!(refused.status, 403);
    check("refused stats", &refused);
}

/// BAPI-15: `/metrics` and `/turn/credentials` are wrapped in the same
/// header-setting handler upstream (`setComonHeaders` in `Start`), so they
/// carry `Server` and `X-Spreed-Signaling-Features` as well.
#[tokio::test]
async fn bapi_15_common_headers_on_metrics_and_turn() {
    let s = TestServer::start().await;
    let expected_features = announced_features(&s).await.join(", ");
    for path in ["metrics", "turn/credentials?service=turn"] {
        let r = get(&format!("{}{path}", s.base()), &[]).await;
        assert_eq!(
            r.header("server"),
            Some(format!("nextcloud-spreed-signaling/{VERSION}").as_str()),
            "{path}: {:?}",
            r.headers
        );
        assert_eq!(
            r.header("x-spreed-signaling-features"),
            Some(expected_features.as_str()),
            "{path}: {:?}",
            r.headers
        );
    }
}

// ----- OBS-01 / OBS-02 ---------------------------------------------------------

/// OBS-01: `/api/v1/stats` is indented JSON with the current numbers of rooms
/// and sessions, following sessions as they come and go.
#[tokio::test]
async fn obs_01_stats_follow_rooms_and_sessions() {
    let s = TestServer::start().await;
    let r = get(&format!("{}api/v1/stats", s.base()), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    assert!(r.text().contains("\n  \""), "indented JSON: {:?}", r.text());
    assert_eq!(r.json()["rooms"], 0);
    assert_eq!(r.json()["sessions"], 0);

    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    let v = stats(&s).await;
    assert_eq!(
        (v["rooms"].as_u64(), v["sessions"].as_u64()),
        (Some(1), Some(2)),
        "{v}"
    );

    b.join_room("room2", "talk-b").await;
    let v = stats(&s).await;
    assert_eq!(
        (v["rooms"].as_u64(), v["sessions"].as_u64()),
        (Some(2), Some(2)),
        "{v}"
    );

    a.bye().await;
    assert_eventually!(stats(&s).await["sessions"] == 1);
    assert_eventually!(stats(&s).await["rooms"] == 1);
    b.bye().await;
    assert_eventually!(stats(&s).await == json!({"rooms": 0, "sessions": 0}));
}

/// OBS-02: `/metrics` exposes the hub metrics under their upstream names, and
/// the values follow sessions, rooms, resumes and messages.
#[tokio::test]
async fn obs_02_metrics_names_and_values() {
    let s = TestServer::start_with("[backend1]\nsessionlimit = 2\n").await;
    let url = s.backend.backend_url();
    let r = get(&format!("{}metrics", s.base()), &[]).await;
    assert_eq!(r.status, 200);
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/plain")),
        "{:?}",
        r.headers
    );
    let m0 = r.text();
    assert_eq!(
        metric(&m0, "signaling_backend_current", &[]),
        Some(1.0),
        "{m0}"
    );
    let client = [("backend", "backend1"), ("clienttype", "client")];
    let sessions0 = metric(&m0, "signaling_hub_sessions", &client).unwrap_or(0.0);
    let total0 = metric(&m0, "signaling_hub_sessions_total", &client).unwrap_or(0.0);
    let hello0 =
        metric(&m0, "signaling_server_messages_total", &[("type", "hello")]).unwrap_or(0.0);
    assert_eq!(sessions0, 0.0);

    // Two sessions, one in a room.
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    let b = s.user("bob").await;
    let m1 = metrics_text(&s).await;
    assert_eq!(
        metric(&m1, "signaling_hub_sessions", &client),
        Some(2.0),
        "{m1}"
    );
    assert_eq!(
        metric(&m1, "signaling_hub_sessions_total", &client),
        Some(total0 + 2.0)
    );
    assert_eq!(
        metric(&m1, "signaling_hub_rooms", &[("backend", "backend1")]),
        Some(1.0),
        "{m1}"
    );
    assert_eq!(
        metric(
            &m1,
            "signaling_room_sessions",
            &[
                ("backend", "backend1"),
                ("room", "room1"),
                ("clienttype", "client")
            ]
        ),
        Some(1.0),
        "{m1}"
    );
    assert!(
        metric(&m1, "signaling_server_messages_total", &[("type", "hello")]).unwrap_or(0.0)
            >= hello0 + 2.0,
        "{m1}"
    );
    assert!(
        metric(&m1, "signaling_server_messages_total", &[("type", "room")]).unwrap_or(0.0) >= 1.0,
        "{m1}"
    );

    // Session limit of 2 reached: the third hello is refused and counted.
    let mut c = s.client().await;
    let err = c
        .hello_v1(&url, json!({"userid": "carol", "ticket": "t"}))
        .await;
    assert_eq!(err["error"]["code"], "session_limit_exceeded", "{err}");
    let m2 = metrics_text(&s).await;
    assert_eq!(
        metric(
            &m2,
            "signaling_backend_session_limit_exceeded_total",
            &[("backend", "backend1")]
        ),
        Some(1.0),
        "{m2}"
    );

    // Resume after a dropped connection, and a failed resume.
    let resume_id = b.resume_id().expect("resume id").to_owned();
    drop(b);
    let mut b2 = s.client().await;
    let r = b2.hello_resume(&resume_id).await;
    assert_eq!(r["type"], "hello", "{r}");
    let r = c.hello_resume("not-a-resume-id").await;
    assert_eq!(r["error"]["code"], "no_such_session", "{r}");
    let m3 = metrics_text(&s).await;
    assert_eq!(
        metric(&m3, "signaling_hub_sessions_resume_total", &client),
        Some(1.0),
        "{m3}"
    );
    assert_eq!(
        metric(&m3, "signaling_hub_sessions_resume_failed_total", &[]),
        Some(1.0),
        "{m3}"
    );

    // Sessions going away lower the gauges again.
    a.bye().await;
    b2.bye().await;
    assert_eventually!({
        let m = metrics_text(&s).await;
        metric(&m, "signaling_hub_sessions", &client).unwrap_or(0.0) == 0.0
            && metric(&m, "signaling_hub_rooms", &[("backend", "backend1")]).unwrap_or(0.0) == 0.0
            && metric(
                &m,
                "signaling_room_sessions",
                &[
                    ("backend", "backend1"),
                    ("room", "room1"),
                    ("clienttype", "client"),
                ],
            )
            .unwrap_or(0.0)
                == 0.0
    });
    let m4 = metrics_text(&s).await;
    assert_eq!(
        metric(&m4, "signaling_hub_sessions_total", &client),
        Some(total0 + 2.0),
        "totals never go down: {m4}"
    );
}

/// OBS-02: by default only 127.0.0.1 may read the stats; proxy headers are
/// honoured from a loopback peer (our deliberate difference from upstream:
/// X-Real-IP / X-Forwarded-For are trusted only from loopback or Unix-socket
/// peers; the test connects from loopback, so they are trusted here).
#[tokio::test]
async fn obs_02_default_allows_only_localhost() {
    let s = TestServer::start().await;
    for path in ["api/v1/stats", "metrics"] {
        let url = format!("{}{path}", s.base());
        assert_eq!(get(&url, &[]).await.status, 200, "{path}");
        let r = get(&url, &[("X-Real-IP", "10.1.2.3")]).await;
        assert_eq!(r.status, 403, "{path} as 10.1.2.3");
        assert_eq!(r.text().trim(), "Authentication check failed");
        let r = get(&url, &[("X-Forwarded-For", "10.1.2.3, 127.0.0.1")]).await;
        assert_eq!(r.status, 403, "{path} forwarded for 10.1.2.3");
        let r = get(&url, &[("X-Forwarded-For", "127.0.0.1, 10.1.2.3")]).await;
        assert_eq!(r.status, 200, "{path} forwarded for 127.0.0.1");
    }
}

/// OBS-02: with `[stats] allowed_ips = 10.1.2.3` both endpoints refuse
/// 127.0.0.1 with 403 and accept the request when a (trusted, loopback)
/// proxy says it comes from 10.1.2.3 — X-Real-IP first, else the first
/// X-Forwarded-For entry.
#[tokio::test]
async fn obs_02_allowed_ips_restricts_stats_and_metrics() {
    let s = TestServer::start_with("[stats]\nallowed_ips = 10.1.2.3\n").await;
    for path in ["api/v1/stats", "metrics"] {
        let url = format!("{}{path}", s.base());
        let r = get(&url, &[]).await;
        assert_eq!(r.status, 403, "{path} from 127.0.0.1: {}", r.text());
        assert_eq!(r.text().trim(), "Authentication check failed");
        assert_eq!(
            get(&url, &[("X-Real-IP", "10.1.2.3")]).await.status,
            200,
            "{path} X-Real-IP"
        );
        assert_eq!(
            get(&url, &[("X-Forwarded-For", "10.1.2.3, 192.168.0.1")])
                .await
                .status,
            200,
            "{path} X-Forwarded-For"
        );
        // X-Real-IP wins over X-Forwarded-For.
        assert_eq!(
            get(
                &url,
                &[("X-Real-IP", "10.9.9.9"), ("X-Forwarded-For", "10.1.2.3")]
            )
            .await
            .status,
            403,
            "{path} X-Real-IP precedence"
        );
        assert_eq!(
            get(&url, &[("X-Real-IP", "10.1.2.4")]).await.status,
            403,
            "{path} other IP"
        );
    }
    // The welcome page is not restricted.
    assert_eq!(
        get(&format!("{}api/v1/welcome", s.base()), &[])
            .await
            .status,
        200
    );
}

/// OBS-02: `allowed_ips` is a comma-separated list; the stats guard is
/// re-read on reload.
#[tokio::test]
async fn obs_02_allowed_ips_list_and_reload() {
    let s = TestServer::start_with("[stats]\nallowed_ips = 10.0.0.1, 127.0.0.1\n").await;
    let url = format!("{}api/v1/stats", s.base());
    assert_eq!(get(&url, &[]).await.status, 200);
    assert_eq!(get(&url, &[("X-Real-IP", "10.0.0.1")]).await.status, 200);
    assert_eq!(get(&url, &[("X-Real-IP", "10.0.0.2")]).await.status, 403);

    let text = config_for(&s.backend.url(), "[stats]\nallowed_ips = 10.0.0.2\n");
    s.server.reload(&Ini::parse(&text).expect("ini"));
    assert_eq!(get(&url, &[]).await.status, 403);
    assert_eq!(get(&url, &[("X-Real-IP", "10.0.0.2")]).await.status, 200);
}

/// A self-signed certificate for `CN=<cn>` into `cert`/`key`.
fn make_cert(cn: &str, cert: &std::path::Path, key: &std::path::Path) {
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-days", "1", "-subj", &format!("/CN={cn}")])
        .arg("-keyout")
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The subject of the certificate `addr` presents.
async fn served_subject(addr: std::net::SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "openssl s_client -connect {addr} </dev/null 2>/dev/null | openssl x509 -noout -subject"
            ))
            .output()
            .expect("run openssl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    })
    .await
    .expect("join")
}

/// SIGHUP (`Server::reload`) picks up a renewed certificate for new
/// connections; a broken one is refused and the old one kept.
#[tokio::test]
async fn https_certificate_is_reloaded() {
    let dir = TempDir::new("sig-tls-reload").expect("temp dir");
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    make_cert("first", &cert, &key);
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!(
        "[https]\nlisten = 127.0.0.1:0\ncertificate = {}\nkey = {}\n",
        cert.display(),
        key.display()
    );
    let text = config_for(&backend.url(), &extra);
    let (server, addrs) = start_all(&text).await;
    let https = addrs[1];
    assert!(served_subject(https).await.contains("CN = first"));

    make_cert("second", &cert, &key);
    server.reload(&runtime::config::Ini::parse(&text).expect("config"));
    assert!(served_subject(https).await.contains("CN = second"));

    std::fs::write(&cert, "not a certificate").expect("write");
    server.reload(&runtime::config::Ini::parse(&text).expect("config"));
    assert!(served_subject(https).await.contains("CN = second"));
}
