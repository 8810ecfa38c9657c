//! End-to-end tests of the client transport (WS-*), the message envelope
//! (MSG-*), hello and authentication (HEL-*), resume/bye (RES-*) and the
//! session id format (SID-*), against our server on a real socket with a
//! fake Nextcloud.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "robustness_rawws/mod.rs"]
mod rawws;

use common::*;
use rawws::{RawIncoming, RawWs, OP_CLOSE, OP_PING, OP_PONG, OP_TEXT};
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

// ---------------------------------------------------------------------------
// helpers

/// Sorted keys of a JSON object.
fn keys(v: &Value) -> Vec<String> {
    let mut k: Vec<String> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect();
    k.sort();
    k
}

fn hello_msg(url: &str, params: Value) -> Value {
    json!({"type": "hello", "hello": {"version": "1.0", "auth": {"url": url, "params": params}}})
}

fn user_params(user: &str) -> Value {
    json!({"userid": user, "ticket": format!("ticket-{user}")})
}

fn internal_hello(random: &str, token: &str, backend: &str) -> Value {
    json!({"type": "hello", "hello": {"version": "1.0", "auth": {
        "type": "internal",
        "params": {"random": random, "token": token, "backend": backend},
    }}})
}

fn assert_error(v: &Value, id: Option<&str>, code: &str) {
    assert_eq!(v["type"], "error", "expected error {code}: {v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    match id {
        Some(id) => assert_eq!(v["id"], id, "{v}"),
        None => assert!(v.get("id").is_none(), "error must not carry an id: {v}"),
    }
}

/// The exact error object upstream sends for the server-generated codes.
fn error_text(code: &str) -> &'static str {
    match code {
        "hello_expected" => "Expected Hello request.",
        "invalid_format" => "Invalid data format.",
        "auth_failed" => "The user could not be authenticated.",
        "invalid_client_type" => "The client type is not supported.",
        "invalid_backend" => "The backend URL is not supported.",
        "invalid_token" => "The passed token is invalid.",
        "no_such_session" => "The session to resume does not exist.",
        "session_limit_exceeded" => "Too many sessions connected for this backend.",
        other => panic!("no text known for {other}"),
    }
}

/// A client that said hello as an anonymous guest (backend answers userid "").
async fn guest(s: &TestServer, timeout: Duration) -> TestClient {
    let mut c = s.client().await.with_timeout(timeout);
    let h = c
        .hello_v1(&s.backend.backend_url(), json!({"ticket": "guest-ticket"}))
        .await;
    assert_eq!(h["type"], "hello", "{h}");
    assert_eq!(h["hello"]["userid"], "");
    c
}

/// Closes `c` cleanly and returns its resume id.
async fn disconnect(c: TestClient) -> String {
    let rid = c.resume_id().expect("had a session").to_owned();
    c.close().await;
    rid
}

/// Waits until the request with id `id` is answered; every message the
/// client sent before it has then been processed by the server.
async fn barrier(c: &mut TestClient, id: &str) {
    let r = c.request(json!({"id": id, "type": "room"})).await;
    assert_error(&r, Some(id), "invalid_format");
}

/// RFC 4648 base64url (with or without padding).
fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.trim_end_matches('=').bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        } as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

// ---------------------------------------------------------------------------
// WS: transport

/// WS-01: `/spreed` upgrades whatever `Origin` the browser sends.
async fn ws_01_spreed_accepts_any_origin(t: Topology) {
    let s = TestServer::start_on(t).await;
    for origin in ["https://evil.example", "null", "http://localhost:1234"] {
        let mut c = TestClient::connect_with_headers(&s.ws_url(), &[("Origin", origin)])
            .await
            .skip("welcome");
        let h = c.hello_user(&s.backend.backend_url(), "alice").await;
        assert_eq!(h["hello"]["userid"], "alice", "origin {origin}");
    }
}

/// WS-01: only the `/spreed` path upgrades.
async fn ws_01_other_paths_do_not_upgrade(t: Topology) {
    let s = TestServer::start_on(t).await;
    for path in ["/", "/spreed/x", "/api/v1/spreed"] {
        let r = TestClient::try_connect(&format!("ws://{}{path}", s.addr), &[]).await;
        assert!(r.is_err(), "{path} upgraded");
    }
}

/// WS-03: a binary frame is answered with `invalid_format` (no id), before and
/// after hello, and the connection stays usable.
async fn ws_03_binary_frame_is_invalid_format_and_connection_stays(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    c.send_binary(b"{\"type\":\"hello\"}".to_vec()).await;
    let e = c.recv().await;
    assert_eq!(
        e,
        json!({"type": "error", "error": {"code": "invalid_format", "message": "Invalid data format."}})
    );
    c.hello_user(&s.backend.backend_url(), "alice").await;
    c.send_binary(vec![0, 1, 2, 255]).await;
    let e = c.recv().await;
    assert_error(&e, None, "invalid_format");
    barrier(&mut c, "still-open").await;
}

/// WS-04: a 64 KiB text message is processed; one byte more closes the socket.
async fn ws_04_read_limit_is_64_kib(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    // Exactly 65536 bytes: processed (not a hello, so hello_expected with the id).
    c.send_padded_json(&json!({"id": "max", "type": "room", "room": {}}), 65536)
        .await;
    let r = c.recv().await;
    assert_error(&r, Some("max"), "hello_expected");
    // 65537 bytes: the server drops the connection without processing it.
    let text = {
        let base = json!({"id": "over", "type": "room", "room": {}, "pad": ""});
        let pad = 65537 - base.to_string().len();
        let mut v = base;
        v["pad"] = Value::String("a".repeat(pad));
        v.to_string()
    };
    assert_eq!(text.len(), 65537);
    let _ = c.try_send(WsMessage::text(text)).await;
    c.expect_closed(Duration::from_secs(5)).await;
    // On the wire: gorilla answers a frame over the read limit with a close
    // frame 1009 (message too big) without reason, then drops the socket.
    let mut raw = RawWs::connect(s.addr).await.expect("connect");
    let _ = raw.send_frame(OP_TEXT, &vec![b'a'; 65537], true).await;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        match raw.read_frame(deadline).await {
            RawIncoming::Frame {
                opcode: OP_PING, ..
            } => {}
            RawIncoming::Frame { opcode, payload } => {
                assert_eq!(opcode, OP_CLOSE);
                assert_eq!(payload, 1009u16.to_be_bytes(), "close status 1009 expected");
                break;
            }
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
    assert!(matches!(
        raw.read_frame(Instant::now() + Duration::from_secs(3))
            .await,
        RawIncoming::Closed
    ));

    // After hello too (with a session the limit is the same).
    let mut c = s.user("bob").await;
    c.send_padded_json(&json!({"id": "max", "type": "room"}), 65536)
        .await;
    assert_error(&c.recv().await, Some("max"), "invalid_format");
    let rid = c.resume_id().unwrap().to_owned();
    let _ = c.try_send(WsMessage::text("x".repeat(64 * 1024 + 1))).await;
    c.expect_closed(Duration::from_secs(5)).await;
    // WS-09: the read error ends the connection, not the session.
    let mut c = s.client().await;
    assert_eq!(c.hello_resume(&rid).await["type"], "hello");
}

/// WS-05: a client ping is answered with a pong carrying the same payload,
/// before and after hello, without any text reply. (The server's own 54 s
/// ping is not waited for here.)
async fn ws_05_client_ping_gets_pong(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut raw = RawWs::connect(s.addr).await.expect("connect");
    for (round, payload) in [b"ping-1".as_slice(), b"1652708000123456789"]
        .iter()
        .enumerate()
    {
        raw.send_frame(OP_PING, payload, true).await.expect("ping");
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match raw.read_frame(deadline).await {
                // The server's own ping (see below) may come first.
                RawIncoming::Frame {
                    opcode: OP_PING, ..
                } => {}
                RawIncoming::Frame { opcode, payload: p } => {
                    assert_eq!(opcode, OP_PONG, "round {round}");
                    assert_eq!(&p, payload);
                    break;
                }
                other => panic!("no pong: {other:?}"),
            }
        }
        if round == 0 {
            let h = raw
                .request(
                    "h",
                    hello_msg(&s.backend.backend_url(), user_params("alice")),
                )
                .await;
            assert_eq!(h["type"], "hello");
        }
    }
    // Nothing else arrives (a pong is not a message); the server's own
    // initial ping may still come, in any order relative to our pongs.
    let deadline = Instant::now() + SHORT;
    loop {
        match raw.read_frame(deadline).await {
            RawIncoming::Timeout => break,
            RawIncoming::Frame {
                opcode: OP_PING, ..
            } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// WS-05: the server pings right after the upgrade (upstream's `WritePump`
/// measures an initial RTT before anything else is sent), with the send time
/// in nanoseconds since the epoch as decimal text; then every 54 s (not
/// waited for here).
async fn ws_05_server_pings_on_connect(t: Topology) {
    let s = TestServer::start_on(t).await;
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let mut raw = RawWs::connect(s.addr).await.expect("connect");
    match raw
        .read_frame(Instant::now() + Duration::from_secs(1))
        .await
    {
        RawIncoming::Frame {
            opcode: OP_PING,
            payload,
        } => {
            let text = String::from_utf8(payload).expect("text payload");
            let sent: u128 = text
                .parse()
                .unwrap_or_else(|_| panic!("payload not decimal: {text:?}"));
            assert!(
                sent + 1_000_000_000 >= before && sent <= before + 60_000_000_000,
                "ping time {sent} vs connect time {before}"
            );
        }
        other => panic!("expected an initial ping, got {other:?}"),
    }
    // Answering it is all a client does; the connection carries on normally.
    raw.send_frame(OP_PONG, b"x", true).await.expect("pong");
    let h = raw
        .request(
            "h",
            hello_msg(&s.backend.backend_url(), user_params("alice")),
        )
        .await;
    assert_eq!(h["type"], "hello");
}

/// WS-07: messages of one connection are processed strictly in order, even
/// when an earlier one waits for the backend and more than 16 arrive meanwhile.
async fn ws_07_messages_processed_in_order_behind_slow_hello(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend
        .set_auth_handler(|_| Reply::Default.after(Duration::from_millis(500)));
    let mut c = s.client().await;
    let mut hello = hello_msg(&s.backend.backend_url(), user_params("alice"));
    hello["id"] = json!("h");
    c.send_json(&hello).await;
    // Sent while the hello waits: must be handled after it, as an
    // authenticated session (invalid_format, not hello_expected).
    for i in 0..20 {
        c.send_json(&json!({"id": format!("q{i}"), "type": "room"}))
            .await;
    }
    c.send_json(
        &json!({"id": "join", "type": "room", "room": {"roomid": "r1", "sessionid": "t1"}}),
    )
    .await;
    let h = c.recv().await;
    assert_eq!(h["type"], "hello", "{h}");
    assert_eq!(h["id"], "h");
    for i in 0..20 {
        let e = c.recv().await;
        assert_error(&e, Some(&format!("q{i}")), "invalid_format");
    }
    let r = c.recv().await;
    assert_eq!(r["id"], "join", "{r}");
    assert_eq!(r["room"]["roomid"], "r1");
}

/// WS-08: a disinvite for the room the session is in is followed by a close;
/// a disinvite for another room is not. The session is gone afterwards.
async fn ws_08_disinvite_from_current_room_closes_connection(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut alice = s.user_in_room("alice", "room1", "talk-a").await;
    alice.expect_event("room", "join").await;
    let mut bob = s.user_in_room("bob", "room3", "talk-b").await;
    bob.expect_event("room", "join").await;

    let r = s
        .backend_request(
            "room2",
            json!({"type": "disinvite", "disinvite": {"userids": ["bob"]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = bob.expect_event("roomlist", "disinvite").await;
    assert_eq!(ev["event"]["disinvite"]["roomid"], "room2");
    bob.expect_no_message(SHORT).await;
    barrier(&mut bob, "bob-alive").await;

    let rid = alice.resume_id().unwrap().to_owned();
    let r = s
        .backend_request(
            "room1",
            json!({"type": "disinvite", "disinvite": {"userids": ["alice"]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    // Without `alluserids` (Talk with `changed-users`) the members of the
    // room get the roomlist update first, the disinvited one included.
    let ev = alice.expect_event("roomlist", "update").await;
    assert_eq!(ev["event"]["update"]["roomid"], "room1");
    let ev = alice.expect_event("roomlist", "disinvite").await;
    assert_eq!(ev["event"]["disinvite"]["roomid"], "room1");
    alice.expect_closed(Duration::from_secs(5)).await;
    let mut again = s.client().await;
    assert_error(
        &again.hello_resume(&rid).await,
        Some("1"),
        "no_such_session",
    );
}

/// WS-09: when the socket closes (cleanly or abruptly) the session stays and
/// can be resumed.
async fn ws_09_closed_socket_keeps_session_for_resume(t: Topology) {
    let s = TestServer::start_on(t).await;
    let c = s.user("alice").await;
    let sid = c.session_id().unwrap().to_owned();
    let rid = disconnect(c).await;
    let mut c = s.client().await;
    let h = c.hello_resume(&rid).await;
    assert_eq!(h["hello"]["sessionid"], sid.as_str(), "{h}");

    // Abrupt: TCP goes away without a close frame.
    let mut raw = RawWs::connect(s.addr).await.expect("connect");
    let h = raw
        .request("h", hello_msg(&s.backend.backend_url(), user_params("bob")))
        .await;
    let rid = h["hello"]["resumeid"].as_str().unwrap().to_owned();
    let sid = h["hello"]["sessionid"].as_str().unwrap().to_owned();
    raw.shutdown().await;
    let mut c = s.client().await;
    let mut resumed = false;
    // The server may need a moment to notice the reset; a resume before that
    // still succeeds (and kicks the dead connection), so one try is enough.
    let h = c.hello_resume(&rid).await;
    if h["type"] == "hello" {
        resumed = true;
        assert_eq!(h["hello"]["sessionid"], sid.as_str());
    }
    assert!(resumed, "resume after abrupt close failed: {h}");
}

// ---------------------------------------------------------------------------
// MSG: envelope and errors

/// MSG-01: every known client type is recognised: without its sub-object it
/// is `invalid_format` (with the request id), except `bye`, which needs none.
async fn msg_01_known_types_require_their_payload(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.user("alice").await;
    for t in [
        "hello",
        "room",
        "message",
        "control",
        "internal",
        "transient",
    ] {
        let r = c.request(json!({"id": format!("x-{t}"), "type": t})).await;
        assert_error(&r, Some(&format!("x-{t}")), "invalid_format");
    }
    let r = c.request(json!({"id": "b", "type": "bye"})).await;
    assert_eq!(r["type"], "bye", "{r}");
    c.expect_closed(Duration::from_secs(5)).await;
}

/// MSG-01/02: `control` goes to its recipient as `control` with the sender.
async fn msg_01_control_message_is_delivered_as_control(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user("alice").await;
    let mut b = s.user("bob").await;
    let a_id = a.session_id().unwrap().to_owned();
    let b_id = b.session_id().unwrap().to_owned();
    a.send_control(recipient_session(&b_id), json!({"type": "mute", "n": 1}))
        .await;
    let m = b.recv().await;
    assert_eq!(m["type"], "control", "{m}");
    assert!(m.get("id").is_none(), "{m}");
    assert_eq!(m["control"]["data"], json!({"type": "mute", "n": 1}));
    assert_eq!(m["control"]["sender"]["sessionid"], a_id.as_str());
    assert_eq!(m["control"]["sender"]["type"], "session");
}

/// MSG-02: replies echo the request id, unsolicited messages have none, and
/// only the sub-object of the message's type is present.
async fn msg_02_server_envelope_fields(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.client().await;
    let h = a
        .request(hello_msg(&s.backend.backend_url(), user_params("alice")))
        .await;
    assert_eq!(keys(&h), ["hello", "id", "type"]);
    let e = a.request(json!({"type": "room"})).await;
    assert_eq!(keys(&e), ["error", "id", "type"]);
    assert_eq!(keys(&e["error"]), ["code", "message"]);
    // Without a request id there is no id field at all.
    a.send_json(&json!({"type": "room"})).await;
    let e = a.recv().await;
    assert_eq!(keys(&e), ["error", "type"]);

    let mut b = s.user("bob").await;
    let b_id = b.session_id().unwrap().to_owned();
    a.send_message(recipient_session(&b_id), json!("hi")).await;
    let m = b.recv().await;
    assert_eq!(keys(&m), ["message", "type"]);
    assert_eq!(m["message"]["data"], "hi");
}

/// MSG-03: missing type, and type without its payload, are `invalid_format`;
/// unknown types are `hello_expected` before hello and ignored after it.
async fn msg_03_validation_and_unknown_types(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    let r = c.request(json!({"hello": {"version": "1.0"}})).await;
    assert_error(&r, Some("1"), "invalid_format");
    let r = c.request(json!({"type": "", "x": 1})).await;
    assert_error(&r, Some("2"), "invalid_format");
    let r = c.request(json!({"type": "hello"})).await;
    assert_error(&r, Some("3"), "invalid_format");
    let r = c.request(json!({"type": "whatever", "whatever": {}})).await;
    assert_error(&r, Some("4"), "hello_expected");

    c.hello_user(&s.backend.backend_url(), "alice").await;
    for t in ["whatever", "ping", "welcome", "event", "error"] {
        c.send_json(&json!({"id": format!("u-{t}"), "type": t, t: {"a": 1}}))
            .await;
        c.send_json(&json!({"id": format!("n-{t}"), "type": t}))
            .await;
    }
    c.expect_no_message(SHORT).await;
    // A message with recipient/data problems is invalid, not ignored.
    let r = c
        .request(
            json!({"type": "message", "message": {"recipient": {"type": "session"}, "data": {}}}),
        )
        .await;
    assert_error(&r, Some("6"), "invalid_format");
    let r = c
        .request(json!({"type": "message", "message": {"recipient": {"type": "nobody", "sessionid": "x"}, "data": {}}}))
        .await;
    assert_error(&r, Some("7"), "invalid_format");
}

/// MSG-04: undecodable JSON is `invalid_format` without an id, even when the
/// text contains one; before and after hello.
async fn msg_04_malformed_json(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    let bad = [
        "",
        "{",
        "not json",
        "[1,2,3]",
        "\"hello\"",
        "42",
        "null",
        r#"{"id":"a","type":"hello",}"#,
        r#"{"id":"b","type":5}"#,
        r#"{"id":7,"type":"hello"}"#,
        r#"{"id":"c","type":"hello","hello":"1.0"}"#,
    ];
    for (round, _) in [0, 1].iter().enumerate() {
        for text in bad {
            c.send_text(text).await;
            let e = c.recv().await;
            assert_eq!(
                e,
                json!({"type": "error", "error": {"code": "invalid_format", "message": "Invalid data format."}}),
                "round {round} for {text:?}"
            );
        }
        if round == 0 {
            c.hello_user(&s.backend.backend_url(), "alice").await;
        }
    }
    barrier(&mut c, "alive").await;
}

/// MSG-04: JSON with a repeated key is decoded like Go's encoding/json
/// does it: the last value wins (verified against Go 0.4.1).
async fn msg_04_repeated_keys_last_one_wins(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    c.send_text(r#"{"id":"d1","type":"hello","type":"room","room":{}}"#)
        .await;
    assert_error(&c.recv().await, Some("d1"), "hello_expected");
    c.send_text(r#"{"id":"x","id":"d2","type":"room"}"#).await;
    assert_error(&c.recv().await, Some("d2"), "invalid_format");
}

/// MSG-05: errors from the backend reach the client unchanged; transport and
/// decoding failures become `internal_error`; a wrong answer type `auth_failed`.
async fn msg_05_backend_errors_forwarded(t: Topology) {
    let s = TestServer::start_on(t).await;
    let url = s.backend.backend_url();
    s.backend
        .set_auth_handler(|_| Reply::error("invalid_request", "Ticket is not valid (custom)."));
    let mut c = s.client().await;
    let r = c.hello_v1(&url, user_params("alice")).await;
    assert_eq!(
        r,
        json!({"id": "1", "type": "error", "error": {
            "code": "invalid_request", "message": "Ticket is not valid (custom)."}})
    );

    // Details are passed through as well.
    s.backend.set_auth_handler(|_| {
        Reply::json(json!({"type": "error", "error": {
            "code": "no_such_room", "message": "Nope.", "details": {"why": [1, 2]}}}))
    });
    let r = c.hello_v1(&url, user_params("alice")).await;
    assert_eq!(
        r["error"],
        json!({"code": "no_such_room", "message": "Nope.", "details": {"why": [1, 2]}})
    );

    s.backend.set_auth_handler(|_| {
        Reply::json(json!({"type": "room", "room": {"version": "1.0", "roomid": "x"}}))
    });
    let r = c.hello_v1(&url, user_params("alice")).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    assert_eq!(r["error"]["message"], error_text("auth_failed"));

    for reply in [
        Reply::raw(500, Some("text/html"), "<h1>boom</h1>"),
        Reply::raw(200, Some("application/json"), "{not json"),
        Reply::Hangup,
    ] {
        s.backend.set_auth_handler(move |_| reply.clone());
        let r = c.hello_v1(&url, user_params("alice")).await;
        assert_eq!(r["error"]["code"], "internal_error", "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{r}"
        );
    }
    // The connection is still waiting for a valid hello.
    s.backend.clear_handler("auth");
    assert_eq!(
        c.hello_v1(&url, user_params("alice")).await["type"],
        "hello"
    );
}

/// MSG-06: the server-generated errors of the hello phase carry upstream's
/// codes and message texts.
async fn msg_06_hello_phase_error_texts(t: Topology) {
    let s = TestServer::start_on_with(t, "[backend1]\nsessionlimit = 1\n").await;
    let url = s.backend.backend_url();
    let mut c = s.client().await;
    let check = |r: Value, code: &'static str| {
        assert_eq!(r["error"]["code"], code, "{r}");
        assert_eq!(r["error"]["message"], error_text(code), "{r}");
    };
    check(
        c.request(json!({"type": "room", "room": {}})).await,
        "hello_expected",
    );
    check(c.request(json!({"type": "hello"})).await, "invalid_format");
    check(
        c.hello_v1(
            "http://unknown.invalid/ocs/v2.php/apps/spreed/api/v1/signaling/backend",
            user_params("a"),
        )
        .await,
        "invalid_backend",
    );
    check(
        c.request(internal_hello(&"0".repeat(32), "bad", &url))
            .await,
        "invalid_token",
    );
    check(c.hello_resume("no-such-id").await, "no_such_session");
    s.backend
        .set_auth_handler(|_| Reply::json(json!({"type": "foo"})));
    check(c.hello_v1(&url, user_params("a")).await, "auth_failed");
    s.backend.clear_handler("auth");
    let _first = s.user("first").await;
    check(
        c.hello_v1(&url, user_params("a")).await,
        "session_limit_exceeded",
    );

    let s2 = TestServer::start_with("[clients]\ninternalsecret =\n").await;
    let mut c = s2.client().await;
    let random = random_hex(64);
    check(
        c.request(internal_hello(
            &random,
            &internal_token("", &random),
            &s2.backend.url(),
        ))
        .await,
        "invalid_client_type",
    );
}

/// MSG-07: before hello every other type is `hello_expected` (id echoed);
/// a second hello on an authenticated connection gets no answer at all.
async fn msg_07_hello_expected_and_second_hello_ignored(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    for (i, msg) in [
        json!({"type": "room", "room": {"roomid": "r", "sessionid": "t"}}),
        json!({"type": "message", "message": {"recipient": {"type": "room"}, "data": {}}}),
        json!({"type": "control", "control": {"recipient": {"type": "room"}, "data": {}}}),
        json!({"type": "bye", "bye": {}}),
        json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 1}}),
    ]
    .into_iter()
    .enumerate()
    {
        let mut m = msg;
        m["id"] = json!(format!("e{i}"));
        let r = c.request(m).await;
        assert_eq!(
            r,
            json!({"id": format!("e{i}"), "type": "error", "error": {
                "code": "hello_expected", "message": "Expected Hello request."}})
        );
    }
    let h = c.hello_user(&s.backend.backend_url(), "alice").await;
    let auths = s.backend.count("auth");
    let mut again = hello_msg(&s.backend.backend_url(), user_params("bob"));
    again["id"] = json!("again");
    c.send_json(&again).await;
    c.send_json(
        &json!({"id": "r2", "type": "hello", "hello": {"version": "1.0", "resumeid": "x"}}),
    )
    .await;
    c.expect_no_message(SHORT).await;
    assert_eq!(
        s.backend.count("auth"),
        auths,
        "second hello reached the backend"
    );
    // Still the same session.
    let mut b = s.user("bob").await;
    b.send_message(recipient_user("alice"), json!("to alice"))
        .await;
    let m = c.recv().await;
    assert_eq!(m["message"]["data"], "to alice");
    assert_eq!(
        c.session_id().unwrap(),
        h["hello"]["sessionid"].as_str().unwrap()
    );
}

// ---------------------------------------------------------------------------
// HEL: hello and authentication

/// HEL-01: only version "1.0" is accepted here ("2.0" needs a token, see
/// talk_hello_v2.rs).
async fn hel_01_only_version_1_0(t: Topology) {
    let s = TestServer::start_on(t).await;
    let url = s.backend.backend_url();
    let mut c = s.client().await;
    for version in [
        json!("2.0"),
        json!("1"),
        json!(""),
        json!("1.0 "),
        Value::Null,
    ] {
        let mut m = hello_msg(&url, user_params("alice"));
        m["hello"]["version"] = version.clone();
        if version.is_null() {
            m["hello"].as_object_mut().unwrap().remove("version");
        }
        let r = c.request(m).await;
        assert_eq!(
            r["error"]["code"], "invalid_format",
            "version {version}: {r}"
        );
    }
    assert_eq!(s.backend.count("auth"), 0);
    assert_eq!(
        c.hello_v1(&url, user_params("alice")).await["type"],
        "hello"
    );
}

/// HEL-02: validation of `auth`: params required, type defaults to client,
/// client needs a request-URI, internal needs an object with a backend,
/// other types are refused.
async fn hel_02_auth_validation(t: Topology) {
    let s = TestServer::start_on(t).await;
    let url = s.backend.backend_url();
    let mut c = s.client().await;
    let invalid = [
        json!({"version": "1.0"}),
        json!({"version": "1.0", "auth": {"url": url}}),
        json!({"version": "1.0", "auth": {"url": url, "params": null}}),
        json!({"version": "1.0", "auth": {"params": user_params("a")}}),
        json!({"version": "1.0", "auth": {"url": "", "params": user_params("a")}}),
        json!({"version": "1.0", "auth": {"url": "not a url", "params": user_params("a")}}),
        json!({"version": "1.0", "auth": {"url": "relative/path", "params": user_params("a")}}),
        json!({"version": "1.0", "auth": {"type": "foo", "url": url, "params": user_params("a")}}),
        json!({"version": "1.0", "auth": {"type": "virtual", "url": url, "params": user_params("a")}}),
        json!({"version": "1.0", "auth": {"type": "internal", "params": {"random": "x", "token": "y"}}}),
        json!({"version": "1.0", "auth": {"type": "internal", "params": "not an object"}}),
    ];
    for (i, hello) in invalid.iter().enumerate() {
        let r = c.request(json!({"type": "hello", "hello": hello})).await;
        assert_eq!(
            r["error"]["code"], "invalid_format",
            "case {i} {hello}: {r}"
        );
    }
    assert_eq!(s.backend.count("auth"), 0);
    // An absolute path is a valid request URI, but no backend has an empty host.
    let r = c
        .hello_v1(
            "/ocs/v2.php/apps/spreed/api/v1/signaling/backend",
            user_params("a"),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");
    // Explicit type "client" works like the default.
    let r = c
        .request(
            json!({"type": "hello", "hello": {"version": "1.0", "auth": {
            "type": "client", "url": url, "params": user_params("alice")}}}),
        )
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(r["hello"]["userid"], "alice");
}

/// HEL-03: explicit default ports are ignored when matching backends.
// Single server only: backend URL matching is one node's configuration.
#[tokio::test]
async fn hel_03_default_port_is_normalised() {
    // A second backend on the default HTTP port (nothing listens there).
    let s = TestServer::start_with(
        "[backend]\nbackends = backend1, backend2\n\
         [backend2]\nurl = http://127.0.0.1/\nsecret = other-secret\n",
    )
    .await;
    let mut c = s.client().await;
    let path = "ocs/v2.php/apps/spreed/api/v1/signaling/backend";
    // Matched (so the auth request is attempted and fails), not invalid_backend.
    for url in [
        format!("http://127.0.0.1:80/{path}"),
        format!("http://127.0.0.1/{path}"),
    ] {
        let r = c.hello_v1(&url, user_params("a")).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_ne!(r["error"]["code"], "invalid_backend", "{url}: {r}");
    }
    let r = c
        .hello_v1(&format!("http://127.0.0.1:81/{path}"), user_params("a"))
        .await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");
    // The fake backend with an explicit port still works.
    assert_eq!(
        c.hello_v1(&s.backend.backend_url(), user_params("a")).await["type"],
        "hello"
    );
}

/// HEL-04: the auth request goes to `auth.url` as a signed POST
/// `{type:"auth", auth:{version:"1.0", params}}`; the answered user id and
/// user data are used for the session.
async fn hel_04_auth_request_and_result(t: Topology) {
    let s = TestServer::start_on(t).await;
    let url = s.backend.backend_url();
    s.backend.set_auth_handler(|body| {
        let who = body["auth"]["params"]["userid"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        Reply::json(json!({"type": "auth", "auth": {
            "version": "1.0", "userid": format!("nc-{who}"),
            "user": {"displayname": format!("Display {who}")}}}))
    });
    let mut c = s.client().await;
    let h = c.hello_v1(&url, user_params("alice")).await;
    assert_eq!(h["hello"]["userid"], "nc-alice", "{h}");
    let req = s.backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, "/ocs/v2.php/apps/spreed/api/v1/signaling/backend");
    assert!(req.checksum_ok, "bad checksum");
    assert_eq!(
        req.body,
        json!({"type": "auth", "auth": {"version": "1.0", "params": user_params("alice")}})
    );
    // The user data shows up in room events.
    c.join_room("room1", "talk-a").await;
    let ev = c.expect_event("room", "join").await;
    assert_eq!(ev["event"]["join"][0]["userid"], "nc-alice");
    assert_eq!(
        ev["event"]["join"][0]["user"],
        json!({"displayname": "Display alice"})
    );

    // Unknown backend URL: refused without asking anyone.
    let before = s.backend.count("auth");
    let mut c = s.client().await;
    let other = url.replace("127.0.0.1", "localhost");
    let r = c.hello_v1(&other, user_params("bob")).await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");
    assert_eq!(s.backend.count("auth"), before);
}

/// HEL-05: `auth.params` reach the backend unchanged, whatever they contain.
async fn hel_05_params_passed_through_opaquely(t: Topology) {
    let s = TestServer::start_on(t).await;
    let params = json!({
        "userid": "alice", "ticket": "t-1",
        "extra": {"nested": [1, 2.5, null, true], "ünïcode": "✓ \u{1F600}", "big": 12345678901234567u64},
        "empty": {},
    });
    let mut c = s.client().await;
    let h = c.hello_v1(&s.backend.backend_url(), params.clone()).await;
    assert_eq!(h["type"], "hello");
    let req = s.backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    assert_eq!(req.body["auth"]["params"], params);

    // Non-object params are passed as they are too.
    let mut c = s.client().await;
    let r = c
        .hello_v1(&s.backend.backend_url(), json!("opaque-string"))
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    let reqs = s.backend.requests_of("auth");
    assert_eq!(reqs.last().unwrap().body["auth"]["params"], "opaque-string");
}

/// HEL-06: internal hello: HMAC token over a random of at least 32 chars,
/// backend must be configured, no backend auth request, internal features.
async fn hel_06_internal_hello(t: Topology) {
    let s = TestServer::start_on(t).await;
    let backend = s.backend.url();
    let mut c = s.client().await;

    let short = random_hex(31);
    let r = c
        .request(internal_hello(
            &short,
            &internal_token(INTERNAL_SECRET, &short),
            &backend,
        ))
        .await;
    assert_eq!(r["error"]["code"], "invalid_token", "short random: {r}");

    let random = random_hex(64);
    let r = c
        .request(internal_hello(
            &random,
            &internal_token("wrong-secret", &random),
            &backend,
        ))
        .await;
    assert_eq!(r["error"]["code"], "invalid_token", "wrong token: {r}");
    let r = c
        .request(internal_hello(
            &random,
            &internal_token(INTERNAL_SECRET, &random).to_uppercase(),
            &backend,
        ))
        .await;
    assert_eq!(r["error"]["code"], "invalid_token", "upper-case token: {r}");

    let r = c
        .request(internal_hello(
            &random,
            &internal_token(INTERNAL_SECRET, &random),
            "http://other.invalid/",
        ))
        .await;
    assert_eq!(r["error"]["code"], "invalid_backend", "{r}");

    let exact = random_hex(32);
    let h = c
        .request(internal_hello(
            &exact,
            &internal_token(INTERNAL_SECRET, &exact),
            &backend,
        ))
        .await;
    assert_eq!(h["type"], "hello", "{h}");
    assert_eq!(h["hello"]["userid"], "");
    assert_eq!(
        h["hello"]["server"]["features"],
        json!([
            "virtual-sessions",
            "transient-data",
            "incall-all",
            "welcome",
            "hello-v2",
            "switchto",
            "dialout",
            "federation",
            "recipient-call",
            "join-features",
            "chat-relay",
            "changed-users"
        ])
    );
    assert_eq!(
        s.backend.count("auth"),
        0,
        "internal hello asked the backend"
    );
}

/// HEL-06: without an internal secret, internal clients are refused.
async fn hel_06_internal_hello_without_secret(t: Topology) {
    let s = TestServer::start_on_with(t, "[clients]\ninternalsecret =\n").await;
    let mut c = s.client().await;
    let random = random_hex(64);
    for secret in ["", INTERNAL_SECRET] {
        let r = c
            .request(internal_hello(
                &random,
                &internal_token(secret, &random),
                &s.backend.url(),
            ))
            .await;
        assert_error(&r, r["id"].as_str(), "invalid_client_type");
    }
    // Normal clients still work.
    assert_eq!(
        c.hello_v1(&s.backend.backend_url(), user_params("a")).await["type"],
        "hello"
    );
}

/// HEL-07: with `sessionlimit = 1` a second client session is refused while
/// the first exists (also while it waits for resume); internal sessions are
/// not counted; after bye there is room again.
async fn hel_07_backend_session_limit(t: Topology) {
    let s = TestServer::start_on_with(t, "[backend1]\nsessionlimit = 1\n").await;
    let url = s.backend.backend_url();
    let first = s.user("alice").await;
    let mut c = s.client().await;
    let r = c.hello_v1(&url, user_params("bob")).await;
    assert_eq!(
        r,
        json!({"id": "1", "type": "error", "error": {
            "code": "session_limit_exceeded",
            "message": "Too many sessions connected for this backend."}})
    );
    let mut internal = s.client().await;
    let h = internal
        .hello_internal(&s.backend.url(), INTERNAL_SECRET)
        .await;
    assert_eq!(h["type"], "hello", "internal session refused: {h}");

    // A disconnected session still counts (it can be resumed).
    let rid = disconnect(first).await;
    let r = c.hello_v1(&url, user_params("bob")).await;
    assert_eq!(r["error"]["code"], "session_limit_exceeded", "{r}");
    let mut first = s.client().await;
    assert_eq!(first.hello_resume(&rid).await["type"], "hello");
    let bye = first.bye().await;
    assert_eq!(bye["type"], "bye");
    first.expect_closed(Duration::from_secs(5)).await;
    let r = c.hello_v1(&url, user_params("bob")).await;
    assert_eq!(r["type"], "hello", "limit not released after bye: {r}");
}

/// `sessionlimit` holds for all the servers at the moment of a hello: with
/// a limit of 2 and two sessions (in a cluster: on the two other nodes), a
/// third hello is refused at once, and accepted as soon as one of them said
/// bye.
async fn hel_07_session_limit_at_the_moment_of_hello(t: Topology) {
    let s = TestServer::start_on_with(t, "[backend1]\nsessionlimit = 2\n").await;
    let url = s.backend.backend_url();
    let _alice = s.user("alice").await;
    let mut bob = s.user("bob").await;
    let mut c = s.client().await;
    let r = c.hello_v1(&url, user_params("carol")).await;
    assert_eq!(
        r,
        json!({"id": "1", "type": "error", "error": {
            "code": "session_limit_exceeded",
            "message": "Too many sessions connected for this backend."}})
    );
    assert_eq!(bob.bye().await["type"], "bye");
    bob.expect_closed(Duration::from_secs(5)).await;
    let r = c.hello_v1(&url, user_params("carol")).await;
    assert_eq!(r["type"], "hello", "limit not released after bye: {r}");
}

/// HEL-08: the hello answer has exactly version, sessionid, resumeid, userid
/// and server {version, features}.
async fn hel_08_hello_response_shape(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    let h = c
        .request(
            json!({"id": "abc", "type": "hello", "hello": {"version": "1.0", "auth": {
            "url": s.backend.backend_url(), "params": user_params("alice")}}}),
        )
        .await;
    assert_eq!(keys(&h), ["hello", "id", "type"]);
    assert_eq!(h["id"], "abc");
    let hello = &h["hello"];
    assert_eq!(
        keys(hello),
        ["resumeid", "server", "sessionid", "userid", "version"]
    );
    assert_eq!(hello["version"], "1.0");
    assert_eq!(hello["userid"], "alice");
    assert!(hello["sessionid"].as_str().is_some_and(|x| !x.is_empty()));
    assert!(hello["resumeid"].as_str().is_some_and(|x| !x.is_empty()));
    assert_eq!(keys(&hello["server"]), ["features", "version"]);
    assert!(hello["server"]["version"]
        .as_str()
        .is_some_and(|v| !v.is_empty()));

    // Guests get the userid field too, empty.
    let g = guest(&s, DEFAULT_TIMEOUT).await;
    assert_eq!(g.user_id(), Some(""));
}

/// HEL-09: features of normal clients without MCU (with those of later
/// upstream versions this server implements, see talk_welcome.rs).
async fn hel_09_client_features(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    let h = c.hello_user(&s.backend.backend_url(), "alice").await;
    assert_eq!(
        h["hello"]["server"]["features"],
        json!([
            "audio-video-permissions",
            "transient-data",
            "incall-all",
            "welcome",
            "hello-v2",
            "switchto",
            "dialout",
            "federation",
            "recipient-call",
            "join-features",
            "chat-relay",
            "changed-users"
        ])
    );
}

/// HEL-10: features sent by the client are accepted and change nothing.
async fn hel_10_client_features_accepted(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    let h = c
        .request(json!({"type": "hello", "hello": {"version": "1.0",
            "features": ["mcu", "something-new"],
            "auth": {"url": s.backend.backend_url(), "params": user_params("alice")}}}))
        .await;
    assert_eq!(h["type"], "hello", "{h}");
    assert_eq!(
        h["hello"]["server"]["features"],
        json!([
            "audio-video-permissions",
            "transient-data",
            "incall-all",
            "welcome",
            "hello-v2",
            "switchto",
            "dialout",
            "federation",
            "recipient-call",
            "join-features",
            "chat-relay",
            "changed-users"
        ])
    );
}

/// HEL-11: no hello within 2 s: `bye` with reason `hello_timeout` (no id),
/// then the connection is closed.
async fn hel_11_hello_timeout_closes_connection(t: Topology) {
    let s = TestServer::start_on(t).await;
    let start = Instant::now();
    let mut c = s.client().await;
    // Messages other than a (valid) hello do not stop the timer.
    c.send_json(&json!({"id": "x", "type": "room", "room": {}}))
        .await;
    assert_error(&c.recv().await, Some("x"), "hello_expected");
    let bye = c.recv().await;
    let elapsed = start.elapsed();
    assert_eq!(
        bye,
        json!({"type": "bye", "bye": {"reason": "hello_timeout"}})
    );
    assert!(
        elapsed >= Duration::from_millis(1900),
        "too early: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_millis(4000),
        "too late: {elapsed:?}"
    );
    c.expect_closed(Duration::from_secs(2)).await;
}

/// HEL-11: the timer is suspended while the auth request is in flight.
async fn hel_11_slow_auth_is_not_a_hello_timeout(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend
        .set_auth_handler(|_| Reply::Default.after(Duration::from_millis(3000)));
    let mut c = s.client().await.with_timeout(Duration::from_secs(8));
    let mut m = hello_msg(&s.backend.backend_url(), user_params("alice"));
    m["id"] = json!("h");
    c.send_json(&m).await;
    let h = c.recv().await;
    assert_eq!(h["type"], "hello", "{h}");
    c.expect_no_message(Duration::from_millis(500)).await;
}

/// HEL-11: a failed hello re-arms the timer from the failure.
async fn hel_11_failed_hello_rearms_timer(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await.with_timeout(Duration::from_secs(5));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failed_at = Instant::now();
    let r = c
        .hello_v1(
            "http://unknown.invalid/ocs/v2.php/apps/spreed/api/v1/signaling/backend",
            user_params("a"),
        )
        .await;
    assert_eq!(r["error"]["code"], "invalid_backend");
    // The original deadline (2 s after connect) passes without a bye.
    c.expect_no_message(Duration::from_millis(1200)).await;
    let bye = c.recv().await;
    assert_eq!(
        bye,
        json!({"type": "bye", "bye": {"reason": "hello_timeout"}})
    );
    let elapsed = failed_at.elapsed();
    assert!(elapsed >= Duration::from_millis(1900), "{elapsed:?}");
    c.expect_closed(Duration::from_secs(2)).await;
}

/// HEL-12: a guest that does not join a room within 10 s gets `bye`
/// `room_join_timeout` and loses its session; guests in a room and users stay.
async fn hel_12_anonymous_must_join_room(t: Topology) {
    let s = TestServer::start_on(t).await;
    let long = Duration::from_secs(15);
    let start = Instant::now();
    let mut lazy = guest(&s, long).await;
    let rid = lazy.resume_id().unwrap().to_owned();
    let mut joined = guest(&s, long).await;
    let r = joined.join_room("room1", "talk-guest").await;
    assert_eq!(r["room"]["roomid"], "room1");
    joined.expect_event("room", "join").await;
    let mut user = s.user("carol").await;

    let bye = lazy.recv().await;
    let elapsed = start.elapsed();
    assert_eq!(
        bye,
        json!({"type": "bye", "bye": {"reason": "room_join_timeout"}})
    );
    assert!(
        elapsed >= Duration::from_millis(9500),
        "too early: {elapsed:?}"
    );
    lazy.expect_closed(Duration::from_secs(2)).await;
    joined.expect_no_message(SHORT).await;
    user.expect_no_message(Duration::from_millis(10)).await;
    let mut again = s.client().await;
    assert_error(
        &again.hello_resume(&rid).await,
        Some("1"),
        "no_such_session",
    );
}

/// HEL-12: leaving the room restarts the 10 s window.
async fn hel_12_anonymous_timer_restarts_after_leaving_room(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut g = guest(&s, Duration::from_secs(15)).await;
    g.join_room("room1", "talk-g").await;
    g.expect_event("room", "join").await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let r = g.leave_room().await;
    assert_eq!(r["room"]["roomid"], "", "{r}");
    let left = Instant::now();
    // 10 s after hello (7.5 s after leaving) nothing happens yet.
    g.expect_no_message(Duration::from_millis(9000)).await;
    let bye = g.recv().await;
    assert_eq!(bye["bye"]["reason"], "room_join_timeout", "{bye}");
    assert!(
        left.elapsed() >= Duration::from_millis(9500),
        "{:?}",
        left.elapsed()
    );
    g.expect_closed(Duration::from_secs(2)).await;
}

/// HEL-13: a client that goes away while its auth request is pending does
/// not get a session (observed through the session limit).
async fn hel_13_disconnect_during_auth_registers_nothing(t: Topology) {
    let s = TestServer::start_on_with(t, "[backend1]\nsessionlimit = 1\n").await;
    s.backend
        .set_auth_handler(|_| Reply::Default.after(Duration::from_millis(600)));
    let url = s.backend.backend_url();
    let mut gone = s.client().await;
    gone.send_json(&hello_msg(&url, user_params("gone"))).await;
    s.backend.wait_for_request("auth", DEFAULT_TIMEOUT).await;
    gone.close().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let mut c = s.client().await;
    let r = c.hello_v1(&url, user_params("bob")).await;
    assert_eq!(r["type"], "hello", "slot taken by the vanished client: {r}");
    // The limit itself is in force.
    let mut d = s.client().await;
    let r = d.hello_v1(&url, user_params("dave")).await;
    assert_eq!(r["error"]["code"], "session_limit_exceeded", "{r}");
}

/// A minimal Nextcloud on a sub path (`/nc/`), answering in OCS format and
/// recording the path of every POST, for URLs the fake backend does not serve.
async fn subpath_backend() -> (SocketAddr, Arc<parking_lot::Mutex<Vec<(String, Value)>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<parking_lot::Mutex<Vec<(String, Value)>>> = Default::default();
    let rec = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                let head_end = loop {
                    if let Some(p) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break p + 4;
                    }
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
                let mut lines = head.lines();
                let first = lines.next().unwrap_or("").to_owned();
                let len: usize = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, v)| v.trim().parse().ok())
                    .unwrap_or(0);
                while buf.len() < head_end + len {
                    match sock.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let body: Value =
                    serde_json::from_slice(&buf[head_end..head_end + len]).unwrap_or(Value::Null);
                let mut parts = first.split(' ');
                let method = parts.next().unwrap_or("").to_owned();
                let path = parts.next().unwrap_or("").to_owned();
                let (status, data) = if method != "POST" {
                    ("404 Not Found", None)
                } else {
                    rec.lock().push((path, body.clone()));
                    let roomid = body["room"]["roomid"].clone();
                    let data = match body["type"].as_str() {
                        Some("auth") => json!({"type": "auth", "auth": {"version": "1.0",
                            "userid": body["auth"]["params"]["userid"]}}),
                        Some("room") => json!({"type": "room", "room": {"version": "1.0",
                            "roomid": roomid}}),
                        _ => json!({"type": "error", "error": {"code": "x", "message": "x"}}),
                    };
                    ("200 OK", Some(data))
                };
                let body = match data {
                    Some(d) => json!({"ocs": {"meta": {"status": "ok", "statuscode": 200,
                        "message": "OK"}, "data": d}})
                    .to_string(),
                    None => "not found".to_owned(),
                };
                let ctype = if status.starts_with("200") {
                    "application/json"
                } else {
                    "text/plain"
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\
                     Connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (addr, seen)
}

/// HEL-14: room requests go to the hello `auth.url` when it is an OCS URL,
/// else to `auth.url` + `ocs/v2.php/apps/spreed/api/v1/signaling/backend`.
// Single server only: backend URL matching is one node's configuration.
#[tokio::test]
async fn hel_14_backend_url_of_session() {
    // OCS URL: used as it is.
    let s = TestServer::start().await;
    let mut c = s.client().await;
    c.hello_user(&s.backend.backend_url(), "alice").await;
    c.join_room("room1", "talk-a").await;
    let req = s.backend.wait_for_request("room", DEFAULT_TIMEOUT).await;
    assert_eq!(req.path, "/ocs/v2.php/apps/spreed/api/v1/signaling/backend");

    // Base URL without the OCS part: auth at the URL, rooms below it.
    let (addr, seen) = subpath_backend().await;
    let extra = format!(
        "[backend]\nbackends = backend1, sub\n[sub]\nurl = http://{addr}/nc/\nsecret = sub-secret\n"
    );
    let s = TestServer::start_with(&extra).await;
    for auth_url in [format!("http://{addr}/nc/"), format!("http://{addr}/nc")] {
        seen.lock().clear();
        let mut c = s.client().await;
        let h = c.hello_v1(&auth_url, user_params("bob")).await;
        assert_eq!(h["type"], "hello", "{auth_url}: {h}");
        let r = c.join_room("room1", "talk-b").await;
        assert_eq!(r["room"]["roomid"], "room1", "{r}");
        let paths: Vec<(String, String)> = seen
            .lock()
            .iter()
            // (a leave of the previous round may arrive late)
            .filter(|(_, b)| b["room"]["action"] != "leave")
            .map(|(p, b)| (p.clone(), b["type"].as_str().unwrap_or("").to_owned()))
            .collect();
        assert_eq!(
            paths[0],
            (
                auth_url.replace(&format!("http://{addr}"), ""),
                "auth".into()
            )
        );
        assert_eq!(
            paths[1],
            (
                "/nc/ocs/v2.php/apps/spreed/api/v1/signaling/backend".into(),
                "room".into()
            ),
            "{paths:?}"
        );
        c.bye().await;
    }
}

// ---------------------------------------------------------------------------
// RES: resume, bye, session lifetime

/// RES-01: resuming returns the same ids and user without a backend request,
/// and the session keeps its room.
async fn res_01_resume_returns_same_session(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    a.expect_event("room", "join").await;
    let sid = a.session_id().unwrap().to_owned();
    let rid = disconnect(a).await;
    let auths = s.backend.count("auth");
    let rooms = s.backend.count("room");

    let mut a = s.client().await;
    let h = a
        .request(json!({"id": "r", "type": "hello", "hello": {"version": "1.0", "resumeid": rid}}))
        .await;
    assert_eq!(h["type"], "hello", "{h}");
    assert_eq!(h["id"], "r");
    assert_eq!(h["hello"]["sessionid"], sid.as_str());
    assert_eq!(h["hello"]["resumeid"], rid.as_str());
    assert_eq!(h["hello"]["userid"], "alice");
    assert_eq!(h["hello"]["version"], "1.0");
    assert_eq!(
        h["hello"]["server"]["features"],
        json!([
            "audio-video-permissions",
            "transient-data",
            "incall-all",
            "welcome",
            "hello-v2",
            "switchto",
            "dialout",
            "federation",
            "recipient-call",
            "join-features",
            "chat-relay",
            "changed-users"
        ])
    );
    assert_eq!(s.backend.count("auth"), auths, "resume asked the backend");

    // Still in room1: a new member's join is seen, no rejoin happened.
    let _b = s.user_in_room("bob", "room1", "talk-b").await;
    let ev = a.expect_event("room", "join").await;
    assert_eq!(ev["event"]["join"][0]["userid"], "bob");
    assert_eq!(s.backend.count("room"), rooms + 1);
}

/// RES-01: the resume id works for internal sessions too.
async fn res_01_internal_session_can_resume(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut c = s.client().await;
    let h = c.hello_internal(&s.backend.url(), INTERNAL_SECRET).await;
    assert_eq!(h["type"], "hello");
    let sid = c.session_id().unwrap().to_owned();
    let rid = disconnect(c).await;
    let mut c = s.client().await;
    let h = c.hello_resume(&rid).await;
    assert_eq!(h["hello"]["sessionid"], sid.as_str(), "{h}");
    assert_eq!(
        h["hello"]["server"]["features"],
        json!([
            "virtual-sessions",
            "transient-data",
            "incall-all",
            "welcome",
            "hello-v2",
            "switchto",
            "dialout",
            "federation",
            "recipient-call",
            "join-features",
            "chat-relay",
            "changed-users"
        ])
    );
}

/// RES-02: unknown, malformed, public or already closed ids: `no_such_session`.
async fn res_02_resume_failures(t: Topology) {
    let s = TestServer::start_on(t).await;
    let a = s.user("alice").await;
    let sid = a.session_id().unwrap().to_owned();
    let rid = a.resume_id().unwrap().to_owned();
    let mut tampered = rid.clone().into_bytes();
    let mid = tampered.len() / 2;
    tampered[mid] = if tampered[mid] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();
    let mut c = s.client().await;
    for bad in [
        "does-not-exist",
        "x",
        "%%%",
        sid.as_str(),
        tampered.as_str(),
    ] {
        let r = c.hello_resume(bad).await;
        assert_eq!(
            r["error"],
            json!({"code": "no_such_session", "message": "The session to resume does not exist."}),
            "{bad}: {r}"
        );
    }
    // The connection may still say a proper hello afterwards.
    assert_eq!(c.hello_resume(&rid).await["type"], "hello");
    // After bye the id is dead.
    c.bye().await;
    let mut d = s.client().await;
    assert_error(&d.hello_resume(&rid).await, Some("1"), "no_such_session");
    drop(a);
}

/// RES-03: resuming from a second connection sends the first `bye`
/// `session_resumed` and closes it; messages go to the new connection.
async fn res_03_second_connection_takes_over(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut first = s.user("alice").await;
    let sid = first.session_id().unwrap().to_owned();
    let rid = first.resume_id().unwrap().to_owned();
    let mut second = s.client().await;
    let h = second.hello_resume(&rid).await;
    assert_eq!(h["hello"]["sessionid"], sid.as_str(), "{h}");
    let bye = first.recv().await;
    assert_eq!(
        bye,
        json!({"type": "bye", "bye": {"reason": "session_resumed"}})
    );
    first.expect_closed(Duration::from_secs(5)).await;

    let mut b = s.user("bob").await;
    b.send_message(recipient_session(&sid), json!({"n": 1}))
        .await;
    let m = second.recv().await;
    assert_eq!(m["message"]["data"], json!({"n": 1}));
    // The session survived the takeover and can be resumed once more.
    let rid2 = disconnect(second).await;
    let mut third = s.client().await;
    assert_eq!(
        third.hello_resume(&rid2).await["hello"]["sessionid"],
        sid.as_str()
    );
}

/// RES-04: a disconnected session is still resumable a few seconds later.
async fn res_04_session_survives_short_disconnect(t: Topology) {
    let s = TestServer::start_on(t).await;
    let a = s.user("alice").await;
    let sid = a.session_id().unwrap().to_owned();
    let rid = disconnect(a).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut a = s.client().await;
    let h = a.hello_resume(&rid).await;
    assert_eq!(h["hello"]["sessionid"], sid.as_str(), "{h}");
}

/// RES-05/RES-09: messages for a session without a connection are kept and
/// delivered in order after the resume, whatever the addressing.
async fn res_05_queued_messages_delivered_in_order_after_resume(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    a.expect_event("room", "join").await;
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    b.expect_event("room", "join").await;
    b.expect_event("room", "join").await;
    a.expect_event("room", "join").await;
    let a_id = a.session_id().unwrap().to_owned();
    let rid = disconnect(a).await;
    // alice is still in the room for bob: no leave event.
    b.expect_no_message(SHORT).await;

    let n = 60;
    for i in 0..n {
        let recipient = match i % 3 {
            0 => recipient_session(&a_id),
            1 => recipient_user("alice"),
            _ => recipient_room(),
        };
        b.send_message(recipient, json!({"seq": i})).await;
    }
    barrier(&mut b, "sent").await;

    let mut a = s.client().await;
    let h = a.hello_resume(&rid).await;
    assert_eq!(h["type"], "hello");
    for i in 0..n {
        let m = a.recv().await;
        assert_eq!(m["type"], "message", "{m}");
        assert_eq!(m["message"]["data"]["seq"], i, "{m}");
    }
    a.expect_no_message(SHORT).await;
}

/// RES-05: of the legacy chat-refresh `message`s only one is kept; backend
/// chat notifications (`event` room/message) are all kept. One server
/// delivers them in the order sent, a cluster in each sender's order.
async fn res_05_chat_refresh_deduplicated_while_away(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    a.expect_event("room", "join").await;
    let a_id = a.session_id().unwrap().to_owned();
    let mut b = s.user("bob").await;
    let rid = disconnect(a).await;

    let refresh = json!({"type": "chat", "chat": {"refresh": true}});
    b.send_message(recipient_session(&a_id), refresh.clone())
        .await;
    b.send_message(recipient_session(&a_id), json!({"seq": 1}))
        .await;
    b.send_message(recipient_session(&a_id), refresh.clone())
        .await;
    b.send_message(recipient_session(&a_id), refresh.clone())
        .await;
    barrier(&mut b, "sent").await;
    for i in 0..3 {
        let r = s
            .backend_request(
                "room1",
                json!({"type": "message", "message": {"data": {
                "type": "chat", "chat": {"refresh": true}, "n": i}}}),
            )
            .await;
        assert_eq!(r.status, 200);
    }
    // In a cluster, what b's and the backend's nodes published must have
    // reached alice's node before she resumes (as on one server).
    s.settle().await;

    let mut a = s.client().await;
    a.hello_resume(&rid).await;
    // Five frames: the one chat refresh kept of bob's, his `seq` message,
    // and the three backend events (all kept). A participants update may
    // follow (RES-06); nothing else, and nothing twice.
    let mut got = Vec::new();
    while got.len() < 5 {
        let m = a.recv().await;
        if m["type"] == "event" && m["event"]["target"] == "participants" {
            continue;
        }
        got.push(m);
    }
    while let Some(m) = a.recv_timeout(SHORT).await {
        assert!(
            m["type"] == "event" && m["event"]["target"] == "participants",
            "after {got:?}, more: {m}"
        );
    }
    let is_backend_event = |m: &Value| {
        m["type"] == "event" && m["event"]["target"] == "room" && m["event"]["type"] == "message"
    };
    for m in &got {
        assert!(
            m["type"] == "message" || is_backend_event(m),
            "{m} in {got:?}"
        );
    }
    let from_bob: Vec<&Value> = got
        .iter()
        .filter(|m| m["type"] == "message")
        .map(|m| &m["message"]["data"])
        .collect();
    assert_eq!(from_bob, [&refresh, &json!({"seq": 1})], "{got:?}");
    let from_backend: Vec<&Value> = got
        .iter()
        .filter(|m| is_backend_event(m))
        .map(|m| &m["event"]["message"]["data"]["n"])
        .collect();
    assert_eq!(from_backend, [0, 1, 2], "{got:?}");
    if !s.is_cluster() {
        // One server: in the order sent. In a cluster only per sender:
        // bob's node publishes to NATS after it answered him, the
        // backend's node on its own, and nothing orders the two.
        let kinds: Vec<&Value> = got.iter().map(|m| &m["type"]).collect();
        assert_eq!(
            kinds,
            ["message", "message", "event", "event", "event"],
            "{got:?}"
        );
    }
}

/// RES-06: on resume the session is sent the room's last participants list,
/// unless an update was among the queued messages.
async fn res_06_participants_update_on_resume(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    a.expect_event("room", "join").await;
    let a_id = a.session_id().unwrap().to_owned();
    let incall = |flags: i64| {
        json!({"type": "incall", "incall": {"incall": flags,
            "changed": [{"sessionId": "talk-a", "inCall": flags, "participantType": 3}],
            "users": [{"sessionId": "talk-a", "inCall": flags, "participantType": 3, "lastPing": 1}]}})
    };
    let r = s.backend_request("room1", incall(7)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = a.expect_event("participants", "update").await;
    assert_eq!(
        ev["event"]["update"]["users"][0]["sessionId"],
        a_id.as_str()
    );

    // Nothing queued: the last list is sent after the hello.
    let rid = disconnect(a).await;
    let mut a = s.client().await;
    a.hello_resume(&rid).await;
    let ev = a.expect_event("participants", "update").await;
    let users = ev["event"]["update"]["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 1, "{ev}");
    assert_eq!(users[0]["sessionId"], a_id.as_str());
    assert_eq!(users[0]["inCall"], 7);
    assert_eq!(ev["event"]["update"]["roomid"], "room1");
    a.expect_no_message(SHORT).await;

    // Other messages queued: they come first, then the list.
    let rid = disconnect(a).await;
    let r = s
        .backend_request(
            "room1",
            json!({"type": "message", "message": {"data": {"x": 1}}}),
        )
        .await;
    assert_eq!(r.status, 200);
    s.settle().await;
    let mut a = s.client().await;
    a.hello_resume(&rid).await;
    a.expect_event("room", "message").await;
    let ev = a.expect_event("participants", "update").await;
    assert_eq!(ev["event"]["update"]["users"][0]["inCall"], 7);
    a.expect_no_message(SHORT).await;

    // An update queued while away: only that one, no extra list.
    let rid = disconnect(a).await;
    let r = s.backend_request("room1", incall(3)).await;
    assert_eq!(r.status, 200);
    s.settle().await;
    let mut a = s.client().await;
    a.hello_resume(&rid).await;
    let ev = a.expect_event("participants", "update").await;
    assert_eq!(ev["event"]["update"]["users"][0]["inCall"], 3, "{ev}");
    a.expect_no_message(SHORT).await;
}

/// RES-07: `bye` is answered with a bye carrying the request id, the socket
/// is closed, the session is gone at once (leaves its room, cannot resume).
async fn res_07_bye_ends_session(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    a.expect_event("room", "join").await;
    let a_id = a.session_id().unwrap().to_owned();
    let rid = a.resume_id().unwrap().to_owned();
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    b.expect_event("room", "join").await;
    b.expect_event("room", "join").await;
    a.expect_event("room", "join").await;

    let r = a
        .request(json!({"id": "bye-1", "type": "bye", "bye": {}}))
        .await;
    // Upstream serialises ByeServerMessage{Reason: ""} with encoding/json and
    // no omitempty: the reason field is always there (RES-08).
    assert_eq!(
        r,
        json!({"id": "bye-1", "type": "bye", "bye": {"reason": ""}})
    );
    a.expect_closed(Duration::from_secs(5)).await;

    let ev = b.expect_event("room", "leave").await;
    assert_eq!(ev["event"]["leave"], json!([a_id]));
    let leave = s
        .backend
        .wait_for(
            |r| r.kind == "room" && r.body["room"]["action"] == "leave",
            DEFAULT_TIMEOUT,
        )
        .await;
    assert_eq!(leave.body["room"]["sessionid"], "talk-a");

    let mut c = s.client().await;
    assert_error(&c.hello_resume(&rid).await, Some("1"), "no_such_session");
    // Messages to the old id go nowhere.
    b.send_message(recipient_session(&a_id), json!("anyone?"))
        .await;
    c.expect_no_message(SHORT).await;
}

/// RES-08: the `room_session_reconnected` bye: a second session joining with
/// the same Talk session id replaces the first.
async fn res_08_room_session_reconnected(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-same").await;
    a.expect_event("room", "join").await;
    let rid = a.resume_id().unwrap().to_owned();
    let mut a2 = s.user("alice").await;
    let r = a2.join_room("room1", "talk-same").await;
    assert_eq!(r["room"]["roomid"], "room1");
    let bye = a.recv_matching(|m| m["type"] == "bye").await;
    assert_eq!(
        bye,
        json!({"type": "bye", "bye": {"reason": "room_session_reconnected"}})
    );
    a.expect_closed(Duration::from_secs(5)).await;
    let mut c = s.client().await;
    assert_error(&c.hello_resume(&rid).await, Some("1"), "no_such_session");
}

// ---------------------------------------------------------------------------
// SID: session ids

/// Splits a securecookie payload `"<ts>|<value>|<mac>"` (mac may contain `|`).
fn cookie_parts(raw: &[u8]) -> (String, String, Vec<u8>) {
    let p1 = raw.iter().position(|&b| b == b'|').expect("first |");
    let p2 = p1
        + 1
        + raw[p1 + 1..]
            .iter()
            .position(|&b| b == b'|')
            .expect("second |");
    (
        String::from_utf8(raw[..p1].to_vec()).expect("ts"),
        String::from_utf8(raw[p1 + 1..p2].to_vec()).expect("value"),
        raw[p2 + 1..].to_vec(),
    )
}

fn check_cookie(name: &str, raw: &[u8]) -> i64 {
    let (ts, value, mac) = cookie_parts(raw);
    let ts_n: i64 = ts
        .parse()
        .unwrap_or_else(|_| panic!("{name}: timestamp {ts:?}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (now - ts_n).abs() < 120,
        "{name}: timestamp {ts_n} vs now {now}"
    );
    let decoded = b64url_decode(&value).unwrap_or_else(|| panic!("{name}: value not base64"));
    // AES with a 16-byte IV in front (blockkey configured).
    assert!(decoded.len() > 16, "{name}: value too short");
    let expected = checksum(HASH_KEY, &format!("{name}|"), format!("{ts}|{value}"));
    assert_eq!(
        hex_encode(&mac),
        expected,
        "{name}: HMAC-SHA256 with hashkey"
    );
    ts_n
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// SID-01: ids are gorilla securecookie values (HMAC-SHA256 with the hash
/// key over `name|timestamp|value`) under the names `private-session` and
/// `public-session`, so servers sharing the keys can decode each other's.
async fn sid_01_ids_are_securecookies(t: Topology) {
    let s = TestServer::start_on(t).await;
    let c = s.user("alice").await;
    let private = c.resume_id().unwrap().to_owned();
    let public = c.session_id().unwrap().to_owned();
    assert_ne!(private, public);
    let raw = b64url_decode(&private).expect("private id is base64url");
    check_cookie("private-session", &raw);
    let mut raw = b64url_decode(&public).expect("public id is base64url");
    raw.reverse();
    check_cookie("public-session", &raw);
}

/// SID-01/02: ids are unique, long, URL-safe base64; public ids start with
/// the random MAC (reversed), private ids with the timestamp.
async fn sid_02_public_ids_lead_with_random_bytes(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut publics = Vec::new();
    let mut privates = Vec::new();
    for i in 0..8 {
        let c = s.user(&format!("user{i}")).await;
        publics.push(c.session_id().unwrap().to_owned());
        privates.push(c.resume_id().unwrap().to_owned());
    }
    let all: HashSet<&String> = publics.iter().chain(privates.iter()).collect();
    assert_eq!(all.len(), 16, "ids not unique");
    for id in publics.iter().chain(privates.iter()) {
        assert!(id.len() >= 64, "short id {id}");
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'='),
            "not URL-safe base64: {id}"
        );
        assert!(b64url_decode(id).is_some());
    }
    let heads: HashSet<&str> = publics.iter().map(|p| &p[..6]).collect();
    assert_eq!(
        heads.len(),
        publics.len(),
        "public ids share prefixes: {publics:?}"
    );
    // Private ids are not reversed: they start with the same timestamp digits.
    let heads: HashSet<&str> = privates.iter().map(|p| &p[..4]).collect();
    assert_eq!(heads.len(), 1, "{privates:?}");
}

/// SID-03: messages are routed by public id; private or altered ids reach nobody.
async fn sid_03_routing_by_public_id_only(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user("alice").await;
    let mut b = s.user("bob").await;
    let private = a.resume_id().unwrap().to_owned();
    let public = a.session_id().unwrap().to_owned();
    let mut altered = public.clone().into_bytes();
    altered[0] = if altered[0] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    b.send_message(recipient_session(&private), json!("private"))
        .await;
    b.send_message(recipient_session(&altered), json!("altered"))
        .await;
    b.send_message(recipient_session(&public), json!("public"))
        .await;
    let m = a.recv().await;
    assert_eq!(m["message"]["data"], "public", "{m}");
    a.expect_no_message(SHORT).await;
    b.expect_no_message(Duration::from_millis(10)).await;
}

/// SID-04: the block key must be 16, 24 or 32 bytes (or empty); the hash key
/// length only warns. Without a block key ids still work.
// Single server only: checks configuration at server build time.
#[tokio::test]
async fn sid_04_session_key_validation() {
    let backend = FakeBackend::start(SECRET).await;
    let build = |extra: &str| {
        let ini = runtime::config::Ini::parse(&config_for(&backend.url(), extra)).expect("parses");
        signaling::Server::build(&ini).map(|_| ())
    };
    assert!(build("[sessions]\nblockkey = 0123456789\n").is_err());
    assert!(build("[sessions]\nblockkey = 0123456789abcdef0\n").is_err());
    for ok in [
        "[sessions]\nblockkey = 0123456789abcdef01234567\n",
        "[sessions]\nblockkey = 0123456789abcdef0123456789abcdef\n",
        "[sessions]\nhashkey = short-hash-key\n",
    ] {
        assert!(build(ok).is_ok(), "{ok}");
    }
    // Without a block key: unencrypted ids that still resume.
    let s = TestServer::start_with("[sessions]\nblockkey =\n").await;
    let c = s.user("alice").await;
    let sid = c.session_id().unwrap().to_owned();
    let rid = disconnect(c).await;
    let mut c = s.client().await;
    assert_eq!(
        c.hello_resume(&rid).await["hello"]["sessionid"],
        sid.as_str()
    );
}

both_topologies!(
    hel_07_backend_session_limit,
    hel_07_session_limit_at_the_moment_of_hello,
    ws_01_spreed_accepts_any_origin,
    ws_01_other_paths_do_not_upgrade,
    ws_03_binary_frame_is_invalid_format_and_connection_stays,
    ws_04_read_limit_is_64_kib,
    ws_05_client_ping_gets_pong,
    ws_05_server_pings_on_connect,
    ws_07_messages_processed_in_order_behind_slow_hello,
    ws_08_disinvite_from_current_room_closes_connection,
    ws_09_closed_socket_keeps_session_for_resume,
    msg_01_known_types_require_their_payload,
    msg_01_control_message_is_delivered_as_control,
    msg_02_server_envelope_fields,
    msg_03_validation_and_unknown_types,
    msg_04_malformed_json,
    msg_04_repeated_keys_last_one_wins,
    msg_05_backend_errors_forwarded,
    msg_06_hello_phase_error_texts,
    msg_07_hello_expected_and_second_hello_ignored,
    hel_01_only_version_1_0,
    hel_02_auth_validation,
    hel_04_auth_request_and_result,
    hel_05_params_passed_through_opaquely,
    hel_06_internal_hello,
    hel_06_internal_hello_without_secret,
    hel_08_hello_response_shape,
    hel_09_client_features,
    hel_10_client_features_accepted,
    hel_11_hello_timeout_closes_connection,
    hel_11_slow_auth_is_not_a_hello_timeout,
    hel_11_failed_hello_rearms_timer,
    hel_12_anonymous_must_join_room,
    hel_12_anonymous_timer_restarts_after_leaving_room,
    hel_13_disconnect_during_auth_registers_nothing,
    res_01_resume_returns_same_session,
    res_01_internal_session_can_resume,
    res_02_resume_failures,
    res_03_second_connection_takes_over,
    res_04_session_survives_short_disconnect,
    res_06_participants_update_on_resume,
    res_05_queued_messages_delivered_in_order_after_resume,
    res_05_chat_refresh_deduplicated_while_away,
    res_07_bye_ends_session,
    res_08_room_session_reconnected,
    sid_01_ids_are_securecookies,
    sid_02_public_ids_lead_with_random_bytes,
    sid_03_routing_by_public_id_only,
);
