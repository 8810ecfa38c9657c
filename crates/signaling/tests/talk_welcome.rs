//! Issue 4, welcome: the `welcome` message on connect (upstream 1.0.0, #288),
//! the features on the WebSocket upgrade response (1.3.2, #755) and what the
//! current Talk's compatibility check reads from `/api/v1/welcome`
//! (`Manager::isCompatibleSignalingServer`: features header and `Date`).
// Test bodies are plain functions run by `both_topologies!`.
mod common;
use common::*;
use std::time::Duration;

/// Features this server implements that Talk asks for.
const IMPLEMENTED: &[&str] = &[
    "audio-video-permissions",
    "incall-all",
    "hello-v2",
    "switchto",
    "dialout",
    "join-features",
    "transient-data",
    "recipient-call",
    "welcome",
    "chat-relay",
    "federation",
    "changed-users",
];

fn header_features(v: Option<&str>) -> Vec<String> {
    v.unwrap_or_default()
        .split(',')
        .map(|f| f.trim().to_owned())
        .filter(|f| !f.is_empty())
        .collect()
}

/// Seconds since the epoch of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let day: i64 = parts[1].parse().ok()?;
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| *m == parts[2])? as i64
        + 1;
    let year: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4].split(':').filter_map(|x| x.parse().ok()).collect();
    if hms.len() != 3 {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146097 + doe - 719468;
    Some(days * 86400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

/// Upstream 1.0.0 (#288): the first message of a connection is `welcome`
/// with the server version and its (sorted) features; hello works after it.
async fn welcome_is_the_first_message(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = TestClient::connect(&s.ws_url()).await;
    let w = c.recv().await;
    assert_eq!(w["type"], "welcome", "{w}");
    assert_eq!(w["welcome"]["version"], json!(signaling::VERSION));
    let features: Vec<String> = w["welcome"]["features"]
        .as_array()
        .expect("features")
        .iter()
        .map(|f| f.as_str().expect("string").to_owned())
        .collect();
    let mut sorted = features.clone();
    sorted.sort();
    assert_eq!(features, sorted, "welcome features are sorted");
    for f in IMPLEMENTED.iter().chain(&["virtual-sessions"]) {
        assert!(
            features.iter().any(|x| x == f),
            "{f} missing in {features:?}"
        );
    }
    let h = c.hello_user(&s.backend.backend_url(), "alice").await;
    assert_eq!(h["hello"]["userid"], "alice");
    // Nothing else came before the hello reply.
    c.expect_no_message(Duration::from_millis(100)).await;
}

/// Upstream 1.3.2 (#755): the upgrade response carries `Server` and the
/// features, so federated peers learn them before the hello.
async fn upgrade_response_carries_features(t: Topology) {
    let s = TestServer::start_on(t).await;
    let req = format!(
        "GET /spreed HTTP/1.1\r\nHost: {}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        s.addr
    );
    let raw = raw_http(
        &s.addr.to_string(),
        req.as_bytes(),
        Duration::from_millis(500),
    )
    .await
    .expect("upgrade");
    let text = String::from_utf8_lossy(&raw);
    assert!(text.starts_with("HTTP/1.1 101"), "{text}");
    let head = &text[..text.find("\r\n\r\n").expect("end of headers")];
    let features = head
        .lines()
        .find_map(|l| l.strip_prefix("x-spreed-signaling-features: "))
        .expect("features header on the upgrade");
    let features = header_features(Some(features));
    for f in IMPLEMENTED {
        assert!(
            features.iter().any(|x| x == f),
            "{f} missing in {features:?}"
        );
    }
    assert!(head
        .lines()
        .any(|l| l.starts_with("server: nextcloud-spreed-signaling/")));
    // The welcome frame follows the handshake at once.
    assert!(text.contains(r#""type":"welcome""#), "{text}");
}

/// What Talk's compatibility check needs from `/api/v1/welcome` that we
/// have: every implemented required feature and a `Date` within seconds of
/// now ("TIME_OUT_OF_SYNC" otherwise).
async fn welcome_endpoint_has_features_and_a_correct_date(t: Topology) {
    let s = TestServer::start_on(t).await;
    let r = raw_request("GET", &format!("{}api/v1/welcome", s.base()), &[], "").await;
    assert_eq!(r.status, 200);
    let features = header_features(r.header("x-spreed-signaling-features"));
    for f in [
        "audio-video-permissions",
        "incall-all",
        "hello-v2",
        "switchto",
    ] {
        assert!(
            features.iter().any(|x| x == f),
            "{f} missing in {features:?}"
        );
    }
    for f in ["dialout", "join-features"] {
        assert!(features.iter().any(|x| x == f), "optional {f} missing");
    }
    let date = r.header("date").expect("Date header");
    let t = parse_http_date(date).expect("RFC 1123 date");
    assert!((t - unix_now()).abs() <= 5, "Date {date} is off");
}

/// The full check of the current Talk: all five required features, no
/// optional one missing.
async fn talk_compatibility_check_passes(t: Topology) {
    let s = TestServer::start_on(t).await;
    let r = raw_request("GET", &format!("{}api/v1/welcome", s.base()), &[], "").await;
    let features = header_features(r.header("x-spreed-signaling-features"));
    for f in [
        "audio-video-permissions",
        "incall-all",
        "hello-v2",
        "switchto",
        "federation",
        "dialout",
        "join-features",
        "chat-relay",
    ] {
        assert!(
            features.iter().any(|x| x == f),
            "{f} missing in {features:?}"
        );
    }
}

/// Talk's admin check of a signaling server ("Test server" in the admin
/// settings, `Manager::checkServerCompatibility` of current Talk), played
/// step by step against `/api/v1/welcome`: a JSON body with `version`, the
/// required features, a `Date` within Talk's allowed offset, then the
/// optional features; only with none missing does Talk store that the
/// server has `changed-users`. Returns Talk's verdict.
fn talk_admin_check(
    body: &[u8],
    features_header: Option<&str>,
    date_header: Option<&str>,
    before: i64,
    after: i64,
) -> Result<bool, String> {
    const REQUIRED: &[&str] = &[
        "audio-video-permissions",
        "federation",
        "incall-all",
        "hello-v2",
        "switchto",
    ];
    const OPTIONAL: &[&str] = &["dialout", "join-features", "chat-relay", "changed-users"];
    // Talk's Config::ALLOWED_BACKEND_TIMEOFFSET.
    const ALLOWED_OFFSET: i64 = 300;
    let body: Value = serde_json::from_slice(body).map_err(|_| "JSON_INVALID".to_owned())?;
    let Some(version) = body.get("version") else {
        return Err("UPDATE_REQUIRED (no version)".into());
    };
    let features = header_features(features_header);
    if !REQUIRED.iter().all(|f| features.iter().any(|x| x == f)) {
        return Err(format!("UPDATE_REQUIRED {version}: {features:?}"));
    }
    let date = date_header
        .and_then(parse_http_date)
        .ok_or("no Date header")?;
    if before - ALLOWED_OFFSET > date || after + ALLOWED_OFFSET < date {
        return Err("TIME_OUT_OF_SYNC".into());
    }
    let missing: Vec<&str> = OPTIONAL
        .iter()
        .copied()
        .filter(|f| !features.iter().any(|x| x == f))
        .collect();
    if !missing.is_empty() {
        return Err(format!("UPDATE_OPTIONAL: {missing:?}"));
    }
    Ok(features.iter().any(|f| f == "changed-users"))
}

/// The admin check reports nothing (no warning, nothing missing), and Talk
/// would switch to sending only changed participants. Every backend API
/// response announces it too (Talk learns it there as well).
async fn talk_admin_check_reports_nothing_missing(t: Topology) {
    let s = TestServer::start_on(t).await;
    let before = unix_now();
    let r = raw_request("GET", &format!("{}api/v1/welcome", s.base()), &[], "").await;
    let after = unix_now();
    assert_eq!(r.status, 200);
    let (features, date) = (r.header("x-spreed-signaling-features"), r.header("date"));
    assert_eq!(
        talk_admin_check(&r.body, features, date, before, after),
        Ok(true)
    );

    // The check itself is no rubber stamp: a server without `changed-users`
    // gets Talk's optional-update warning, one without `federation` the
    // required-update error.
    let without = |f: &str| {
        features
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|x| *x != f)
            .collect::<Vec<_>>()
            .join(", ")
    };
    assert_eq!(
        talk_admin_check(
            &r.body,
            Some(&without("changed-users")),
            date,
            before,
            after
        ),
        Err("UPDATE_OPTIONAL: [\"changed-users\"]".into())
    );
    assert!(
        talk_admin_check(&r.body, Some(&without("federation")), date, before, after)
            .is_err_and(|e| e.starts_with("UPDATE_REQUIRED")),
    );

    for body in [
        json!({"type": "incall", "incall": {"incall": 7, "changed": []}}),
        json!({"type": "delete", "delete": []}),
    ] {
        let r = s.backend_request("room1", body).await;
        assert_eq!(r.status, 200, "{}", r.text());
        let features = header_features(r.header("x-spreed-signaling-features"));
        assert!(
            features.iter().any(|f| f == "changed-users"),
            "{features:?}"
        );
    }
}

both_topologies!(
    welcome_is_the_first_message,
    upgrade_response_carries_features,
    welcome_endpoint_has_features_and_a_correct_date,
    talk_compatibility_check_passes,
    talk_admin_check_reports_nothing_missing,
);
