//! Issue 4, room behaviour added after the reference version: `already_joined`
//! (upstream 1.2.0, #547), combined room pings (0.5.0, #250), `switchto`
//! (1.1.0, #409), recipient `call` (2.0.2, #859), client features in join
//! events (2.0.2, #879) and bandwidth in room replies (2.1.0, #1099).
// Test bodies are plain functions run by `both_topologies!`.
mod common;
use common::*;
use std::time::Duration;

async fn drain(c: &mut TestClient) {
    while c.recv_timeout(SHORT).await.is_some() {}
}

/// Upstream 1.2.0 (#547): re-joining the current room is answered with
/// `already_joined` and the room's details, without a backend request.
async fn rejoin_answers_already_joined_with_room_details(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    drain(&mut a).await;
    let rooms = s.backend.count("room");
    let r = a.join_room("room1", "talk-a").await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "already_joined");
    assert_eq!(
        r["error"]["details"],
        json!({"room": {"roomid": "room1", "properties": {"name": "Room room1"}}})
    );
    assert_eq!(s.backend.count("room"), rooms);
    a.expect_no_message(SHORT).await;
}

/// Upstream 0.5.0 (#250): with `session-ping-limit` in the capabilities, the
/// sessions of all rooms of a backend are pinged together (empty room id),
/// in requests of at most that many entries.
// Single server only: each node pings Nextcloud for its own sessions (as upstream).
#[tokio::test]
async fn room_pings_are_combined_per_backend() {
    let s = TestServer::start().await;
    s.backend
        .set_signaling_config(json!({"session-ping-limit": 2}));
    let _a = s.user_in_room("alice", "room1", "talk-a").await;
    let _b = s.user_in_room("bob", "room1", "talk-b").await;
    let _c = s.user_in_room("carol", "room2", "talk-c").await;
    let pings = s
        .backend
        .wait_for_count("ping", 2, Duration::from_secs(15))
        .await;
    tokio::time::sleep(SHORT).await;
    assert_eq!(s.backend.count("ping"), 2, "three sessions, limit two");
    let mut sessions = Vec::new();
    for p in &pings {
        assert!(p.checksum_ok);
        assert_eq!(p.payload()["roomid"], "", "combined ping: {}", p.body);
        let entries = p.payload()["entries"].as_array().expect("entries");
        assert!(entries.len() <= 2);
        for e in entries {
            sessions.push(e["sessionid"].as_str().unwrap_or_default().to_owned());
        }
    }
    sessions.sort();
    assert_eq!(sessions, ["talk-a", "talk-b", "talk-c"]);
}

/// Upstream 1.1.0 (#409): `switchto` sends `event/room/switchto` to the
/// listed Talk sessions only; with a map, each gets its details.
async fn switchto_moves_only_the_listed_sessions(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    drain(&mut a).await;
    drain(&mut b).await;
    let r = s
        .backend_request(
            "room1",
            json!({"type": "switchto", "switchto": {"roomid": "breakout-1", "sessions": ["talk-a", "0", "unknown"]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = a.expect_event("room", "switchto").await;
    assert_eq!(ev["event"]["switchto"], json!({"roomid": "breakout-1"}));
    b.expect_no_message(SHORT).await;

    let r = s
        .backend_request(
            "room1",
            json!({"type": "switchto", "switchto": {"roomid": "breakout-2",
                "sessions": {"talk-b": {"reason": "moved"}}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let ev = b.expect_event("room", "switchto").await;
    assert_eq!(
        ev["event"]["switchto"],
        json!({"roomid": "breakout-2", "details": {"reason": "moved"}})
    );
    a.expect_no_message(SHORT).await;

    let r = s
        .backend_request("room1", json!({"type": "switchto"}))
        .await;
    assert_eq!(r.status, 400);
}

/// Upstream 2.0.2 (#859): a message to recipient `call` reaches only the
/// sessions in the call of the sender's room.
async fn recipient_call_reaches_only_sessions_in_the_call(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    let mut c = s.user_in_room("carol", "room1", "talk-c").await;
    let r = s
        .backend_request(
            "room1",
            json!({"type": "incall", "incall": {"incall": 1, "changed": [
                {"sessionId": "talk-a", "inCall": 1},
                {"sessionId": "talk-b", "inCall": 1},
            ], "users": []}}),
        )
        .await;
    assert_eq!(r.status, 200);
    drain(&mut a).await;
    drain(&mut b).await;
    drain(&mut c).await;
    let a_id = a.session_id().expect("hello").to_owned();
    a.send_json(
        &json!({"type": "message", "message": {"recipient": {"type": "call"}, "data": {"x": 1}}}),
    )
    .await;
    let m = b.expect_type("message").await;
    assert_eq!(m["message"]["sender"]["type"], "call");
    assert_eq!(m["message"]["sender"]["sessionid"], a_id.as_str());
    assert_eq!(m["message"]["data"], json!({"x": 1}));
    c.expect_no_message(SHORT).await;
    a.expect_no_message(Duration::from_millis(10)).await;
}

/// Upstream 2.0.2 (#879): join events list the client features of each session.
async fn join_events_carry_client_features(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.client().await;
    let r = a
        .request(json!({"type": "hello", "hello": {"version": "1.0",
            "features": ["chat-relay", "something"],
            "auth": {"url": s.backend.backend_url(), "params": {"userid": "alice", "ticket": "t"}}}}))
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    a.join_room("room1", "talk-a").await;
    let ev = a.expect_event("room", "join").await;
    assert_eq!(
        ev["event"]["join"][0]["features"],
        json!(["chat-relay", "something"])
    );
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    let list = b.expect_event("room", "join").await;
    assert_eq!(
        list["event"]["join"][0]["features"],
        json!(["chat-relay", "something"])
    );
    let own = b.expect_event("room", "join").await;
    assert!(own["event"]["join"][0].get("features").is_none(), "{own}");
}

/// Upstream 2.1.0 (#1099): the room reply carries the backend's bitrate limits.
async fn room_reply_carries_bandwidth(t: Topology) {
    let s = TestServer::start_on_with(
        t,
        "[backend1]\nmaxstreambitrate = 1048576\nmaxscreenbitrate = 2097152\n",
    )
    .await;
    let mut a = s.user("alice").await;
    let r = a.join_room("room1", "talk-a").await;
    assert_eq!(
        r["room"]["bandwidth"],
        json!({"maxstreambitrate": 1048576, "maxscreenbitrate": 2097152})
    );
    let plain = TestServer::start_on(t).await;
    let mut b = plain.user("bob").await;
    let r = b.join_room("room1", "talk-b").await;
    assert!(r["room"].get("bandwidth").is_none(), "{r}");
}

both_topologies!(
    rejoin_answers_already_joined_with_room_details,
    switchto_moves_only_the_listed_sessions,
    recipient_call_reaches_only_sessions_in_the_call,
    join_events_carry_client_features,
    room_reply_carries_bandwidth,
);
