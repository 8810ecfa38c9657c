//! Operator views: `/api/v1/serverinfo` (JSON), `/status` (HTML), and how
//! a drain shows in them and at the WebSocket endpoint. The SIGUSR1 signal
//! path and the exit are covered with the real binary in `process.rs`.
// Single server only: one node's operator views and drain.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

async fn get(url: &str, headers: &[(&str, &str)]) -> HttpResponse {
    raw_request("GET", url, headers, "").await
}

async fn serverinfo(s: &TestServer) -> Value {
    let r = get(&format!("{}api/v1/serverinfo", s.base()), &[]).await;
    assert_eq!(r.status, 200, "serverinfo: {}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("application/json")),
        "{:?}",
        r.headers
    );
    r.json()
}

/// `/api/v1/serverinfo` lists version, uptime, rooms, sessions per backend
/// and client type, the bus and the drain flag, following sessions.
#[tokio::test]
async fn serverinfo_fields_follow_sessions() {
    let s = TestServer::start().await;
    let v = serverinfo(&s).await;
    assert_eq!(v["version"], signaling::VERSION, "{v}");
    assert!(v["uptime"].is_u64(), "{v}");
    assert_eq!(v["draining"], false, "{v}");
    assert_eq!(v["rooms"], 0, "{v}");
    // Configured backends are listed without sessions too.
    assert_eq!(
        v["sessions"],
        json!({"total": 0, "backends": {"backend1": {}}}),
        "{v}"
    );
    assert_eq!(
        v["nats"],
        json!({"mode": "in-process", "connected": true}),
        "{v}"
    );

    let _alice = s.user_in_room("alice", "room1", "talk-a").await;
    let _bob = s.user("bob").await;
    let mut internal = s.client().await;
    internal
        .hello_internal(&s.backend.backend_url(), INTERNAL_SECRET)
        .await;
    let v = serverinfo(&s).await;
    assert_eq!(v["rooms"], 1, "{v}");
    assert_eq!(
        v["sessions"],
        json!({"total": 3, "backends": {"backend1": {"client": 2, "internal": 1}}}),
        "{v}"
    );
}

/// Served only to `[stats] allowed_ips`, like `/api/v1/stats`; GET only.
#[tokio::test]
async fn serverinfo_and_status_refuse_others() {
    let s = TestServer::start().await;
    for path in ["api/v1/serverinfo", "status"] {
        let url = format!("{}{path}", s.base());
        let r = get(&url, &[("X-Real-IP", "10.1.2.3")]).await;
        assert_eq!(r.status, 403, "{path}: {}", r.text());
        assert!(!r.text().contains("backend1"), "{path}: {}", r.text());
        let r = raw_request("POST", &url, &[], "").await;
        assert_eq!(r.status, 405, "{path}");
    }
    let s = TestServer::start_with("[stats]\nallowed_ips = 192.0.2.1\n").await;
    let r = get(&format!("{}status", s.base()), &[]).await;
    assert_eq!(r.status, 403);
}

/// `/status` is one self-contained HTML page that refreshes itself every
/// 10 s and shows the same numbers as the JSON.
#[tokio::test]
async fn status_page_is_self_contained_html() {
    let s = TestServer::start().await;
    let _alice = s.user("alice").await;
    let r = get(&format!("{}status", s.base()), &[]).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .is_some_and(|ct| ct.starts_with("text/html")),
        "{:?}",
        r.headers
    );
    assert_eq!(
        r.header("content-security-policy"),
        Some("default-src 'none'; style-src 'unsafe-inline'")
    );
    let html = r.text();
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(
        html.contains(r#"<meta http-equiv="refresh" content="10">"#),
        "{html}"
    );
    assert!(html.contains("<style>"), "inline CSS: {html}");
    for external in ["<link", "<script", "src=", "http://", "https://"] {
        assert!(!html.contains(external), "{external} in {html}");
    }
    assert!(html.contains(signaling::VERSION), "{html}");
    assert!(
        html.contains(r#"<td id="state" class="ok">running</td>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<td id="sessions" class="n">1</td>"#),
        "{html}"
    );
    assert!(
        html.contains(r#"<tr><td>backend1</td><td>client</td><td class="n">1</td></tr>"#),
        "{html}"
    );
    assert!(html.contains("in-process bus"), "{html}");
}

/// While draining, WebSocket upgrades get 503 with a readable reason, while
/// existing sessions, the backend API and the stats keep working; the flag
/// shows in stats, server info and the status page.
#[tokio::test]
async fn draining_refuses_upgrades_but_serves_sessions() {
    let s = TestServer::start().await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    assert!(
        stats_json(&s).await.get("draining").is_none(),
        "stats list draining only while draining"
    );
    assert!(s.server.hub.start_drain());
    assert!(!s.server.hub.start_drain(), "second drain is a no-op");

    let err = TestClient::try_connect(&s.ws_url(), &[])
        .await
        .err()
        .expect("upgrade refused");
    match err {
        tokio_tungstenite::tungstenite::Error::Http(resp) => {
            assert_eq!(resp.status(), 503);
            assert_eq!(
                resp.headers().get("retry-after").unwrap().to_str().unwrap(),
                "10"
            );
            let body = String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default());
            assert!(body.contains("scheduled to shutdown"), "{body}");
        }
        other => panic!("expected HTTP 503, got {other:?}"),
    }

    // The backend API still reaches the sessions that are here.
    let r = s
        .backend_request(
            "room1",
            json!({"type": "message", "message": {"data": {"still": "here"}}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let m = loop {
        let m = alice.expect_type("event").await;
        if m["event"]["type"] == "message" {
            break m;
        }
    };
    assert_eq!(
        m["event"]["message"]["data"],
        json!({"still": "here"}),
        "{m}"
    );

    assert_eq!(stats_json(&s).await["draining"], true);
    assert_eq!(serverinfo(&s).await["draining"], true);
    let html = get(&format!("{}status", s.base()), &[]).await.text();
    assert!(html.contains(r#"class="warn">draining"#), "{html}");
}

async fn stats_json(s: &TestServer) -> Value {
    get(&format!("{}api/v1/stats", s.base()), &[]).await.json()
}

/// `[app] draintimeout` must not be negative.
#[tokio::test]
async fn drain_timeout_config() {
    let backend = FakeBackend::start(SECRET).await;
    let ini =
        runtime::config::Ini::parse(&config_for(&backend.url(), "[app]\ndraintimeout = -1\n"))
            .unwrap();
    let err = signaling::Server::build(&ini).unwrap_err().to_string();
    assert!(err.contains("[app] draintimeout"), "{err}");
    let ini =
        runtime::config::Ini::parse(&config_for(&backend.url(), "[app]\ndraintimeout = 30\n"))
            .unwrap();
    let server = signaling::Server::build(&ini).unwrap();
    assert_eq!(
        server.drain_timeout,
        Some(std::time::Duration::from_secs(30))
    );
}

/// A request with a forged checksum: the server logs a warning.
async fn forged_backend_request(s: &TestServer) {
    let r = raw_request(
        "POST",
        &format!("{}api/v1/room/room1", s.base()),
        &[
            ("Content-Type", "application/json"),
            ("Spreed-Signaling-Random", &random_hex(64)),
            ("Spreed-Signaling-Checksum", &"0".repeat(64)),
        ],
        r#"{"type":"message","message":{"data":{}}}"#,
    )
    .await;
    assert_eq!(r.status, 403);
}

/// Warnings and errors are counted and the last ones kept, newest first,
/// with their fields; the status page lists them (escaped).
#[tokio::test]
async fn recent_warnings_show_in_serverinfo_and_status() {
    let s = TestServer::start().await;
    let before = serverinfo(&s).await["log"]["warnings"].as_u64().unwrap();
    forged_backend_request(&s).await;
    let info = serverinfo(&s).await;
    assert!(info["log"]["warnings"].as_u64().unwrap() > before, "{info}");
    let events = info["log"]["events"].as_array().unwrap();
    assert!(events.len() <= 20);
    let e = events
        .iter()
        .find(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("checksum matches no backend"))
        })
        .unwrap_or_else(|| panic!("{info}"));
    assert_eq!(e["level"], "WARN");
    assert!(
        e["message"].as_str().unwrap().contains("peer=127.0.0.1"),
        "{e}"
    );
    let age = info["now"].as_u64().unwrap() - e["time"].as_u64().unwrap();
    assert!(age < 10, "{e}");
    let html = get(&format!("{}status", s.base()), &[]).await.text();
    assert!(
        html.contains("<h2>Recent warnings and errors</h2>"),
        "{html}"
    );
    assert!(
        html.contains(
            "<td class=\"warn\">WARN</td><td>backend request whose checksum matches no backend"
        ),
        "{html}"
    );
}

/// The status page as a browser shows it: Debian's Chromium, headless,
/// loads `/status` (no request blocked by our CSP, no console error), its
/// rendered DOM carries the live values, and a screenshot is taken (kept
/// at `$CARGO_TARGET_TMPDIR/status.png` for a human to look at).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_page_renders_in_headless_chromium() {
    let s = TestServer::start().await;
    let _alice = s.user_in_room("alice", "room1", "talk-a").await;
    let _bob = s.user("bob").await;
    forged_backend_request(&s).await;
    let url = format!("{}status", s.base());
    let dir = TempDir::new("chromium").unwrap();
    let shot = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("status.png");
    let blank = dir.join("blank.png");
    let profile = dir.join("profile");

    let run = move |args: Vec<String>| {
        let out = std::process::Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-extensions",
                "--disable-background-networking",
                "--enable-logging=stderr",
                "--v=0",
                "--window-size=1000,700",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .args(args)
            .output()
            .expect("chromium runs (Debian package `chromium`; scripts/test.sh installs it)");
        assert!(out.status.success(), "chromium failed: {out:?}");
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (dom, log) = {
        let (run, url) = (run.clone(), url.clone());
        tokio::task::spawn_blocking(move || run(vec!["--dump-dom".into(), url]))
            .await
            .unwrap()
    };
    for bad in ["Refused to", "Content Security Policy", "Uncaught"] {
        assert!(!log.contains(bad), "{bad} in the browser log: {log}");
    }
    assert!(dom.contains(signaling::VERSION), "{dom}");
    assert!(
        dom.contains(r#"<td id="sessions" class="n">2</td>"#),
        "{dom}"
    );
    assert!(
        dom.contains(r#"<td id="state" class="ok">running</td>"#),
        "{dom}"
    );
    assert!(dom.contains("checksum matches no backend"), "{dom}");

    let args = |path: &std::path::Path, url: &str| {
        vec![format!("--screenshot={}", path.display()), url.to_owned()]
    };
    let (page_args, blank_args) = (args(&shot, &url), args(&blank, "about:blank"));
    {
        let run = run.clone();
        tokio::task::spawn_blocking(move || {
            run(page_args);
            run(blank_args);
        })
        .await
        .unwrap();
    }
    let png = std::fs::read(&shot).expect("screenshot written");
    let empty = std::fs::read(&blank).expect("blank screenshot written");
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "not a PNG");
    // IHDR: width and height as requested.
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), (1000, 700));
    // Text, tables and colours compress far worse than an empty page.
    assert!(
        png.len() > 3 * empty.len(),
        "screenshot {} bytes, blank page {} bytes: nothing rendered?",
        png.len(),
        empty.len()
    );
    eprintln!("status page screenshot: {}", shot.display());
}
