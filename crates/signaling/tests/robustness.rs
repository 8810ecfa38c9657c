//! Robustness of the client WebSocket endpoint: garbage of every kind must be
//! answered or cut off without disturbing anybody else, and a client that
//! does not read must be disconnected (bounded memory) without losing the
//! messages meant for it.
//!
//! (The garbage storm with hundreds of connections is in survival.rs.)
//!
//! Feature ids: WS-03 (binary frames), WS-04 (read limit), WS-07 (ordering),
//! WS-09 (session kept after a cut connection), MSG-03/MSG-04 (invalid
//! messages), RES-05/RES-09 (queued messages after resume).
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Test bodies are plain functions run by `both_topologies!` (the two
// multi-threaded ones by their own wrappers).
mod common;
#[path = "robustness_rawws/mod.rs"]
mod rawws;

use common::*;
use rawws::{RawIncoming, RawWs, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT};
use std::time::Duration;
use tokio::time::Instant;

const INVALID_FORMAT: &str =
    r#"{"type":"error","error":{"code":"invalid_format","message":"Invalid data format."}}"#;

fn invalid_format() -> Value {
    serde_json::from_str(INVALID_FORMAT).unwrap()
}

/// Two users that can message each other, to show that others are unaffected.
struct Pair {
    a: TestClient,
    b: TestClient,
    a_id: String,
    b_id: String,
    round: u64,
}

impl Pair {
    async fn new(s: &TestServer) -> Pair {
        let a = s.user("monitor-a").await;
        let b = s.user("monitor-b").await;
        let a_id = a.session_id().unwrap().to_owned();
        let b_id = b.session_id().unwrap().to_owned();
        Pair {
            a,
            b,
            a_id,
            b_id,
            round: 0,
        }
    }

    /// One message each way, delivered and nothing else pending.
    async fn check(&mut self) {
        self.round += 1;
        let r = self.round;
        self.a
            .send_message(recipient_session(&self.b_id), json!({"ping": r}))
            .await;
        self.b
            .send_message(recipient_session(&self.a_id), json!({"pong": r}))
            .await;
        let m = self.b.recv().await;
        assert_eq!(m["message"]["data"], json!({"ping": r}), "{m}");
        let m = self.a.recv().await;
        assert_eq!(m["message"]["data"], json!({"pong": r}), "{m}");
        self.a.expect_no_message(Duration::from_millis(20)).await;
        self.b.expect_no_message(Duration::from_millis(20)).await;
    }
}

/// Request that must be answered; every earlier message of `c` has been
/// processed once it is.
async fn barrier(c: &mut TestClient, id: &str) {
    let r = c.request(json!({"id": id, "type": "room"})).await;
    assert_eq!(r["error"]["code"], "invalid_format", "{r}");
    assert_eq!(r["id"], id);
}

async fn raw_hello(s: &TestServer, user: &str, raw: &mut RawWs) -> Value {
    let h = raw
        .request(
            "hello",
            json!({"type": "hello", "hello": {"version": "1.0", "auth": {
                "url": s.backend.backend_url(),
                "params": {"userid": user, "ticket": format!("ticket-{user}")}}}}),
        )
        .await;
    assert_eq!(h["type"], "hello", "{h}");
    h
}

/// Value of an unlabelled metric from `/metrics` of the node at `addr`.
async fn metric(addr: std::net::SocketAddr, name: &str) -> Option<f64> {
    let resp = RawRequest::get(&format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?;
    resp.text().lines().find_map(|l| {
        l.strip_prefix(name)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Value of the first sample of `prefix` (e.g. `"name{"`) whose labels
/// contain `label`, added up over all nodes (what one server reports).
async fn metric_with(s: &TestServer, prefix: &str, label: &str) -> Option<f64> {
    let mut sum = None;
    for (_, addr) in &s.nodes {
        if let Some(v) = metric_with_at(*addr, prefix, label).await {
            *sum.get_or_insert(0.0) += v;
        }
    }
    sum
}

async fn metric_with_at(addr: std::net::SocketAddr, prefix: &str, label: &str) -> Option<f64> {
    let resp = RawRequest::get(&format!("http://{addr}/metrics"))
        .send()
        .await
        .ok()?;
    resp.text().lines().find_map(|l| {
        if !l.starts_with(prefix) || !l.contains(label) {
            return None;
        }
        l.rsplit(' ').next().and_then(|v| v.trim().parse().ok())
    })
}

fn deep(depth: usize, open: &str, close: &str) -> String {
    format!("{}{}", open.repeat(depth), close.repeat(depth))
}

// ---------------------------------------------------------------------------

/// MSG-04: malformed JSON of all kinds is answered with `invalid_format` and
/// the connection stays usable, before and after hello.
async fn malformed_json_is_answered_and_connection_stays(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut pair = Pair::new(&s).await;
    let mut c = s.client().await;
    let garbage: Vec<String> = vec![
        "".into(),
        " ".into(),
        "{".into(),
        "}".into(),
        "{{}}".into(),
        "{\"type\":".into(),
        "{\"type\":\"hello\"".into(),
        "{\"type\":\"hello\"}}".into(),
        "{\"type\":\"hello\"} trailing".into(),
        "\u{feff}{\"type\":\"hello\"}".into(),
        "{'type':'hello'}".into(),
        "{\"type\":\"hel\u{0}lo\"}".into(),
        "{\"type\":\"hello\",\"hello\":{\"version\":1e999999}}".into(),
        "{\"id\":\"\\ud800\\ud800\",\"type\":}".into(),
        "NaN".into(),
        "true".into(),
        "[]".into(),
        "{\"type\":[\"hello\"]}".into(),
        "{\"type\":{}}".into(),
        "{\"type\":\"room\",\"room\":\"r\"}".into(),
        "{\"type\":\"hello\",\"hello\":{\"version\":\"1.0\",\"auth\":[]}}".into(),
        "x".repeat(60_000),
    ];
    for round in 0..2 {
        for g in &garbage {
            c.send_text(g).await;
            let e = c.recv().await;
            assert_eq!(
                e["type"],
                "error",
                "round {round}, {:?}: {e}",
                &g[..g.len().min(60)]
            );
            assert_eq!(
                e["error"]["code"],
                "invalid_format",
                "{:?}: {e}",
                &g[..g.len().min(60)]
            );
        }
        if round == 0 {
            c.hello_user(&s.backend.backend_url(), "garbler").await;
        }
        pair.check().await;
    }
    barrier(&mut c, "alive").await;
}

/// MSG-03/MSG-07: unknown types are ignored once authenticated, missing
/// fields are `invalid_format`, nothing ends the connection.
async fn unknown_types_and_missing_fields(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut pair = Pair::new(&s).await;
    let mut c = s.user("carol").await;
    let ignored = [
        json!({"type": "unknown"}),
        json!({"type": "unknown", "unknown": {"x": [1, 2, 3]}}),
        json!({"type": "HELLO", "hello": {}}),
        json!({"type": " hello", "hello": {}}),
        json!({"type": "x".repeat(1000)}),
        json!({"type": "hello", "hello": {"version": "1.0", "resumeid": "abc"}}),
    ];
    for m in &ignored {
        c.send_json(m).await;
    }
    c.expect_no_message(SHORT).await;
    let invalid = [
        json!({"type": "room"}),
        json!({"type": "room", "room": null}),
        json!({"type": "message"}),
        json!({"type": "message", "message": {}}),
        json!({"type": "message", "message": {"recipient": {"type": "session"}, "data": 1}}),
        json!({"type": "message", "message": {"recipient": {"type": "user"}, "data": 1}}),
        json!({"type": "message", "message": {"recipient": {"type": "room"}}}),
        json!({"type": "control", "control": {"data": 1}}),
        json!({"type": "internal"}),
        json!({"type": "internal", "internal": {"type": "addsession"}}),
        json!({"type": "internal", "internal": {"type": "addsession", "addsession": {}}}),
        json!({"type": "transient"}),
        json!({"type": "id-less", "id": 5}),
    ];
    for (i, m) in invalid.iter().enumerate() {
        let mut m = m.clone();
        if m["id"].is_null() {
            m["id"] = json!(format!("m{i}"));
            let r = c.request(m.clone()).await;
            assert_eq!(r["error"]["code"], "invalid_format", "{m}: {r}");
        } else {
            // A non-string id cannot be decoded at all: no id in the answer.
            c.send_json(&m).await;
            assert_eq!(c.recv().await, invalid_format());
        }
    }
    pair.check().await;
    barrier(&mut c, "alive").await;
}

/// WS-03: binary frames (empty, large, fragmented) get `invalid_format`
/// without an id; the connection stays.
async fn binary_frames_are_refused_but_connection_stays(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut pair = Pair::new(&s).await;
    let mut raw = RawWs::connect(s.next_addr()).await.expect("connect");
    let frames: Vec<Vec<u8>> = vec![
        vec![],
        b"{\"type\":\"hello\"}".to_vec(),
        vec![0xff; 1000],
        vec![7; 65536],
    ];
    for round in 0..2 {
        for f in &frames {
            raw.send_frame(OP_BINARY, f, true).await.expect("send");
            let e = raw.recv_json(DEFAULT_TIMEOUT).await.expect("an answer");
            assert_eq!(e, invalid_format(), "round {round}, {} bytes", f.len());
        }
        // A binary message in two fragments is one message, one error.
        raw.send_frame(OP_BINARY, b"abc", false).await.unwrap();
        raw.send_frame(OP_CONT, b"def", true).await.unwrap();
        assert_eq!(raw.recv_json(DEFAULT_TIMEOUT).await, Some(invalid_format()));
        if round == 0 {
            raw_hello(&s, "binary", &mut raw).await;
        }
    }
    // Nothing else (the server's pings aside).
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
    // A text message split into fragments is processed normally.
    raw.send_frame(OP_TEXT, b"{\"id\":\"frag\",", false)
        .await
        .unwrap();
    raw.send_frame(OP_CONT, b"\"type\":", false).await.unwrap();
    raw.send_frame(OP_CONT, b"\"room\"}", true).await.unwrap();
    let r = raw.recv_json(DEFAULT_TIMEOUT).await.expect("answer");
    assert_eq!(r["id"], "frag", "{r}");
    assert_eq!(r["error"]["code"], "invalid_format");
    pair.check().await;
}

/// WS-04: a message over 64 KiB (one frame or several fragments) closes only
/// that connection; its session survives for resume; others carry on.
async fn oversized_messages_close_only_their_connection(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut pair = Pair::new(&s).await;
    for (name, fragments) in [
        ("one frame", vec![65537usize]),
        ("fragments", vec![40_000, 40_000]),
        ("many small fragments", vec![4096; 17]),
    ] {
        let mut raw = RawWs::connect(s.next_addr()).await.expect("connect");
        let h = raw_hello(&s, "big", &mut raw).await;
        let rid = h["hello"]["resumeid"].as_str().unwrap().to_owned();
        let n = fragments.len();
        for (i, len) in fragments.into_iter().enumerate() {
            let op = if i == 0 { OP_TEXT } else { OP_CONT };
            if raw
                .send_frame(op, &vec![b' '; len], i + 1 == n)
                .await
                .is_err()
            {
                break;
            }
        }
        let deadline = Instant::now() + DEFAULT_TIMEOUT;
        loop {
            match raw.read_frame(deadline).await {
                RawIncoming::Closed => break,
                RawIncoming::Frame { opcode, .. }
                    if opcode == OP_CLOSE || opcode == OP_PONG || opcode == OP_PING => {}
                other => panic!("{name}: expected the connection to close, got {other:?}"),
            }
        }
        pair.check().await;
        let mut c = s.client().await;
        let r = c.hello_resume(&rid).await;
        assert_eq!(r["type"], "hello", "{name}: session lost: {r}");
    }
}

/// Invalid UTF-8 in a text frame. RFC 6455 requires failing the connection;
/// upstream (gorilla) does not validate and lets the JSON decoder answer
/// `invalid_format`. Either is acceptable here; what must hold is that the
/// server answers one way or the other and nobody else notices.
async fn invalid_utf8_text_frame(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut pair = Pair::new(&s).await;
    for payload in [
        b"\xff\xfe\xfd".to_vec(),
        b"{\"type\":\"hello\",\"x\":\"\xc3\x28\"}".to_vec(),
        b"{\"type\":\"room\xed\xa0\x80\"}".to_vec(),
    ] {
        for authenticated in [false, true] {
            let mut raw = RawWs::connect(s.next_addr()).await.expect("connect");
            if authenticated {
                raw_hello(&s, "utf8", &mut raw).await;
            }
            raw.send_frame(OP_TEXT, &payload, true).await.expect("send");
            let deadline = Instant::now() + DEFAULT_TIMEOUT;
            loop {
                match raw.read_frame(deadline).await {
                    RawIncoming::Frame {
                        opcode: OP_TEXT,
                        payload,
                    } => {
                        let v: Value = serde_json::from_slice(&payload).expect("JSON");
                        assert_eq!(v["error"]["code"], "invalid_format", "{v}");
                        break;
                    }
                    RawIncoming::Frame {
                        opcode: OP_CLOSE, ..
                    }
                    | RawIncoming::Closed => break,
                    RawIncoming::Frame { .. } => {}
                    RawIncoming::Timeout => panic!("no reaction to invalid UTF-8"),
                }
            }
            pair.check().await;
        }
    }
}

/// Deeply nested JSON anywhere in a message is refused (`invalid_format`)
/// without harming the server; the connection stays.
async fn deeply_nested_json_does_not_crash(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut pair = Pair::new(&s).await;
    let mut c = s.user("nester").await;
    let b_id = pair.b_id.clone();
    let depth = 30_000;
    let texts = [
        deep(depth, "[", "]"),
        deep(depth / 4, "{\"a\":", "}").replace("{\"a\":}", "{\"a\":1}"),
        format!(
            "{{\"type\":\"message\",\"message\":{{\"recipient\":{{\"type\":\"session\",\"sessionid\":\"{b_id}\"}},\"data\":{}}}}}",
            deep(depth, "[", "]")
        ),
        format!("{{\"type\":\"unknown\",\"unknown\":{}}}", deep(depth, "[", "]")),
        format!(
            "{{\"type\":\"hello\",\"hello\":{{\"version\":\"1.0\",\"auth\":{{\"params\":{}}}}}}}",
            deep(depth, "[", "]")
        ),
        // Unbalanced: never closed.
        "[".repeat(60_000),
    ];
    for t in &texts {
        assert!(t.len() <= 65536, "{}", t.len());
        c.send_text(t).await;
        let e = c
            .recv_timeout(DEFAULT_TIMEOUT)
            .await
            .unwrap_or_else(|| panic!("no answer for {}...", &t[..60]));
        assert_eq!(e, invalid_format(), "for {}...", &t[..40]);
    }
    pair.check().await;
    barrier(&mut c, "alive").await;
}

/// The largest send buffer the kernel lets a TCP socket grow to (the last
/// field of `net.ipv4.tcp_wmem`; Linux's default 4 MiB if unreadable).
fn socket_send_buffer_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|s| s.split_whitespace().nth(2)?.parse().ok())
        .unwrap_or(4 << 20)
}

/// A client that never reads while a busy sender floods it is cut off by the
/// server (bounded per-connection queue), nobody else is affected, and after
/// resuming it gets exactly the messages it had not received, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_cut_off_and_loses_nothing() {
    slow_reader_loses_nothing(Topology::Single).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_reader_is_cut_off_and_loses_nothing_in_a_cluster() {
    slow_reader_loses_nothing(Topology::Cluster).await
}

async fn slow_reader_loses_nothing(t: Topology) {
    let s = TestServer::start_on(t).await;
    // Tiny receive window: the server's socket fills after a few frames.
    // (In a cluster the flood comes from another node.)
    let slow_addr = s.next_addr();
    let mut slow = RawWs::connect_small_rcvbuf(slow_addr, 4096)
        .await
        .expect("connect");
    let h = raw_hello(&s, "slow", &mut slow).await;
    let slow_id = h["hello"]["sessionid"].as_str().unwrap().to_owned();
    let slow_rid = h["hello"]["resumeid"].as_str().unwrap().to_owned();
    assert_eq!(
        metric(slow_addr, "signaling_server_client_queue_overflows_total").await,
        Some(0.0)
    );

    let mut fast = s.user("fast").await;
    let other = s.user("other").await;
    let other_id = other.session_id().unwrap().to_owned();
    // Enough to fill everything between the hub and the client and then
    // the session's backlog: the server's socket (loopback lets its send
    // buffer grow to `tcp_wmem`'s maximum, about 500 of these frames with
    // Linux's default 4 MiB; a fixed 2,000 was sometimes all absorbed when
    // the machine was busy), the connection's queue and the backlog, plus
    // a margin.
    // (Capped, so that what a cut session keeps stays below its limit of
    // 10,000 pending messages.)
    const EVERY: u64 = 20;
    let frames_in_socket = (socket_send_buffer_max() / 8000).min(4000);
    let n = (hub::core::conn::OUTBOUND_QUEUE
        + hub::core::settings::MAX_BACKLOG
        + frames_in_socket
        + 500) as u64;
    // A multiple of EVERY: the bystander gets every EVERY-th.
    let n = n.div_ceil(EVERY) * EVERY;
    // The bystander reads all the time.
    let bystander = tokio::spawn(async move {
        let mut other = other.with_timeout(Duration::from_secs(20));
        let mut got = Vec::new();
        while (got.len() as u64) < n / EVERY {
            let m = other.recv().await;
            got.push(m["message"]["data"]["seq"].as_u64().unwrap());
        }
        (other, got)
    });

    let pad = "p".repeat(8000);
    for i in 0..n {
        fast.send_message(recipient_session(&slow_id), json!({"seq": i, "pad": pad}))
            .await;
        if i % EVERY == 0 {
            fast.send_message(recipient_session(&other_id), json!({"seq": i}))
                .await;
        }
    }
    barrier(&mut fast, "flooded").await;

    // The server gives up on the slow connection by itself (we still do not read).
    assert_eventually!(
        Duration::from_secs(20),
        metric(slow_addr, "signaling_server_client_queue_overflows_total").await == Some(1.0)
    );
    let (mut other, got) = bystander.await.expect("bystander");
    assert_eq!(got, (0..n).step_by(EVERY as usize).collect::<Vec<_>>());
    barrier(&mut fast, "fast-alive").await;
    barrier(&mut other, "other-alive").await;

    // What reached the slow client's socket before the cut can still be read.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let end = loop {
        match slow.read_frame(deadline).await {
            RawIncoming::Frame {
                opcode: OP_TEXT,
                payload,
            } => {
                let v: Value = serde_json::from_slice(&payload).expect("JSON frame");
                seen.push(
                    v["message"]["data"]["seq"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("{v}")),
                );
            }
            RawIncoming::Frame { .. } => {}
            other => break other,
        }
    };
    assert!(
        matches!(end, RawIncoming::Closed),
        "slow connection not closed: {end:?}"
    );
    assert!((seen.len() as u64) < n, "the slow client was never cut off");

    // Resume: the rest follows, in order, nothing twice.
    let mut c = s.client().await;
    let r = c.hello_resume(&slow_rid).await;
    assert_eq!(r["hello"]["sessionid"], slow_id.as_str(), "{r}");
    let first_missing = seen.len() as u64;
    while (seen.len() as u64) < n {
        match c.recv_timeout(Duration::from_secs(5)).await {
            Some(m) => seen.push(
                m["message"]["data"]["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{m}")),
            ),
            None => break,
        }
    }
    let gaps: Vec<u64> = (0..n).filter(|i| !seen.contains(i)).collect();
    let dups: Vec<u64> = (0..n)
        .filter(|i| seen.iter().filter(|x| *x == i).count() > 1)
        .collect();
    assert!(
        dups.is_empty(),
        "duplicates {dups:?}; {first_missing} read before the cut"
    );
    assert!(
        gaps.is_empty(),
        "{} messages lost (first missing: {:?}); {first_missing} were read before the cut",
        gaps.len(),
        &gaps[..gaps.len().min(10)]
    );
    assert_eq!(
        seen,
        (0..n).collect::<Vec<_>>(),
        "order or duplicates wrong"
    );
    c.expect_no_message(SHORT).await;
}

/// Frames that come one by one, more than a millisecond apart, go straight
/// from the hub to an idle client's socket (direct writes). When the client
/// stops reading, its socket fills in the middle of such a frame: the rest
/// of that frame, and every frame after it, must still arrive whole and in
/// order once it reads again — a broken byte stream shows as a frame that
/// is not JSON, a wrong sequence or a closed connection. A `bye` sent
/// meanwhile is answered after all of them, then the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_gets_spaced_frames_whole_and_in_order() {
    stalled_reader_gets_spaced_frames(Topology::Single).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_reader_gets_spaced_frames_whole_and_in_order_in_a_cluster() {
    stalled_reader_gets_spaced_frames(Topology::Cluster).await
}

/// Between 3,000 and 15,000 bytes: every frame small enough to be written
/// directly.
fn pad_len(seq: u64) -> usize {
    3000 + (seq as usize * 997) % 12_000
}

/// Every attempt must deliver whole frames in order; at least one of three
/// must also have taken the path under test (on a busy machine frames can
/// bunch up and all go through the connection's queue instead).
async fn stalled_reader_gets_spaced_frames(t: Topology) {
    let mut taken = Vec::new();
    for _ in 0..3 {
        let (whole, partial) = stalled_reader_attempt(t).await;
        if whole > 0.0 && partial > 0.0 {
            return;
        }
        taken.push((whole, partial));
    }
    panic!("direct writes (whole, cut) per attempt: {taken:?}: no frame went out directly, or none was cut");
}

/// One run: checks the frames and the close; returns the counts of direct
/// writes (whole frames, cut frames).
async fn stalled_reader_attempt(t: Topology) -> (f64, f64) {
    let s = TestServer::start_on(t).await;
    let addr = s.next_addr();
    let mut slow = RawWs::connect_small_rcvbuf(addr, 4096)
        .await
        .expect("connect");
    let h = raw_hello(&s, "stalled", &mut slow).await;
    let slow_id = h["hello"]["sessionid"].as_str().unwrap().to_owned();
    // In a cluster the sender is on another node: frames cross NATS first.
    let mut sender = s.user("spaced").await;
    // About 3.6 MB: more than the server's socket takes on loopback (its
    // send buffer grows to about 1.3 MB), in sizes that do not divide it,
    // so that some frame is cut in the middle; below the queue's bound of
    // 512 frames (no overflow).
    const N: u64 = 400;
    for i in 0..N {
        let pad = "q".repeat(pad_len(i));
        sender
            .send_message(recipient_session(&slow_id), json!({"seq": i, "pad": pad}))
            .await;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    barrier(&mut sender, "spaced-done").await;
    // Still not reading: give the last frames time to reach the full socket.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The client says bye while the server's socket is full: the reply and
    // the close come after everything queued, the cut frame first.
    slow.send_json(&json!({"id": "leaving", "type": "bye", "bye": {}}))
        .await
        .expect("send bye");
    let mut seen = Vec::new();
    let mut bye = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match slow.read_frame(deadline).await {
            RawIncoming::Frame {
                opcode: OP_TEXT,
                payload,
            } => {
                let v: Value = serde_json::from_slice(&payload).unwrap_or_else(|e| {
                    panic!("frame {} is not JSON ({e}): the stream broke", seen.len())
                });
                assert!(!bye, "{v} after the bye reply");
                if v["type"] == "bye" {
                    assert_eq!(v["id"], "leaving", "{v}");
                    bye = true;
                    continue;
                }
                let seq = v["message"]["data"]["seq"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("{v}"));
                let pad = v["message"]["data"]["pad"].as_str().unwrap_or_default();
                assert_eq!(pad.len(), pad_len(seq), "seq {seq}");
                seen.push(seq);
            }
            RawIncoming::Frame {
                opcode: OP_CLOSE, ..
            } => break,
            RawIncoming::Frame { .. } => {}
            other => panic!("after {} frames, bye {bye}: {other:?}", seen.len()),
        }
    }
    assert_eq!(seen, (0..N).collect::<Vec<_>>());
    assert!(bye, "no bye reply before the close");
    assert_eq!(
        metric(addr, "signaling_server_client_queue_overflows_total").await,
        Some(0.0)
    );
    // Whether the path under test was taken: frames went out directly, and
    // one of them was cut by the full socket.
    let direct = |result: &'static str| {
        let label = format!("result=\"{result}\"");
        async move {
            metric_with_at(addr, "signaling_server_direct_writes_total{", &label)
                .await
                .unwrap_or(0.0)
        }
    };
    (direct("whole").await, direct("partial").await)
}

/// The queue of a disconnected session is bounded: 10,000 messages are kept,
/// the 10,001st ends the session. (Deliberate difference: upstream keeps an
/// unbounded list; see `MAX_PENDING_MESSAGES` in crates/hub/src/core/settings.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_queue_of_disconnected_session_is_bounded() {
    pending_queue_is_bounded(Topology::Single).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_queue_of_disconnected_session_is_bounded_in_a_cluster() {
    pending_queue_is_bounded(Topology::Cluster).await
}

async fn pending_queue_is_bounded(t: Topology) {
    const LIMIT: u64 = 10_000;
    let s = TestServer::start_on(t).await;
    let mut sender = s.user("sender").await;
    for (user, count, kept) in [("kept", LIMIT, true), ("dropped", LIMIT + 1, false)] {
        let c = s.user(user).await;
        let id = c.session_id().unwrap().to_owned();
        let rid = c.resume_id().unwrap().to_owned();
        c.close().await;
        let sessions = metric_with(&s, "signaling_hub_sessions{", "clienttype=\"client\"").await;
        for i in 0..count {
            sender.send_message(recipient_session(&id), json!(i)).await;
        }
        barrier(&mut sender, user).await;
        s.settle().await;
        if !kept {
            // The session is closed asynchronously; wait until it is gone.
            assert_eventually!(
                metric_with(&s, "signaling_hub_sessions{", "clienttype=\"client\"").await
                    == sessions.map(|n| n - 1.0)
            );
        }
        let mut c = s.client().await;
        let r = c.hello_resume(&rid).await;
        if kept {
            assert_eq!(r["type"], "hello", "{r}");
            for i in 0..count {
                let m = c.recv().await;
                assert_eq!(m["message"]["data"], i, "{m}");
            }
            c.expect_no_message(SHORT).await;
        } else {
            assert_eq!(r["error"]["code"], "no_such_session", "{r}");
        }
    }
}

both_topologies!(
    malformed_json_is_answered_and_connection_stays,
    unknown_types_and_missing_fields,
    binary_frames_are_refused_but_connection_stays,
    oversized_messages_close_only_their_connection,
    invalid_utf8_text_frame,
    deeply_nested_json_does_not_crash,
);
