//! Brute-force protection (upstream 1.2.x throttling): failed backend-API
//! checksums and failed resumes are answered late, then refused.
// Single server only: throttling state is per node (as upstream).
#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use hub::throttle::{ACTION_BACKEND_ROOM, ACTION_RESUME};
use std::time::Instant;

async fn bad_checksum(s: &TestServer) -> u16 {
    let body = r#"{"type":"message","message":{"data":{}}}"#;
    raw_request(
        "POST",
        &format!("{}api/v1/room/room1", s.base()),
        &[
            ("Content-Type", "application/json"),
            ("Spreed-Signaling-Random", &random_hex(64)),
            ("Spreed-Signaling-Checksum", &"0".repeat(64)),
        ],
        body,
    )
    .await
    .status
}

#[tokio::test]
async fn failed_backend_checksums_are_slowed_then_refused() {
    let s = TestServer::start().await;
    let t0 = Instant::now();
    assert_eq!(bad_checksum(&s).await, 403);
    let first = t0.elapsed();
    let t1 = Instant::now();
    assert_eq!(bad_checksum(&s).await, 403);
    let second = t1.elapsed();
    assert!(
        first.as_millis() >= 100,
        "first failure answered after {first:?}"
    );
    assert!(
        second.as_millis() >= 200,
        "second failure answered after {second:?}"
    );
    // Eight more failures (recorded directly, to skip the growing delays).
    for _ in 0..8 {
        s.server
            .hub
            .throttler()
            .failed("127.0.0.1", ACTION_BACKEND_ROOM);
    }
    // Now even a correctly signed request is refused.
    let r = s
        .backend_request("room1", json!({"type": "message", "message": {"data": {}}}))
        .await;
    assert_eq!(r.status, 429, "{}", r.text());
    // Other actions are not affected.
    let mut c = s.client().await;
    let h = c.hello_user(&s.backend.backend_url(), "alice").await;
    assert_eq!(h["type"], "hello");
}

#[tokio::test]
async fn failed_resumes_are_slowed_then_refused() {
    let s = TestServer::start().await;
    let mut c = s.client().await;
    let t0 = Instant::now();
    let r = c.hello_resume("not-a-resume-id").await;
    assert_eq!(r["error"]["code"], "no_such_session", "{r}");
    assert!(t0.elapsed().as_millis() >= 100);
    for _ in 0..9 {
        s.server.hub.throttler().failed("127.0.0.1", ACTION_RESUME);
    }
    let mut c = s.client().await;
    let r = c.hello_resume("another-guess").await;
    assert_eq!(r["error"]["code"], "too_many_requests", "{r}");
}
