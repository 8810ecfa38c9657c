//! End-to-end tests of rooms (ROOM-01..30) and permissions (PERM-01..03,
//! PERM-05 without an MCU): joining and leaving, the backend's room answer,
//! backend-driven room events, the room ping and display-name hiding.
// Test bodies are plain functions run by `both_topologies!`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;
use std::time::{Duration, Instant};

const BACKEND_PATH: &str = "/ocs/v2.php/apps/spreed/api/v1/signaling/backend";

// ----- helpers -------------------------------------------------------------

/// Everything that arrives until the client has been quiet for `SHORT`.
async fn drain(c: &mut TestClient) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(v) = c.recv_timeout(SHORT).await {
        out.push(v);
    }
    out
}

fn is_event(v: &Value, target: &str, kind: &str) -> bool {
    v["type"] == "event" && v["event"]["target"] == target && v["event"]["type"] == kind
}

/// A `join` event listing exactly the session `id`.
fn is_join_of(v: &Value, id: &str) -> bool {
    is_event(v, "room", "join")
        && v["event"]["join"]
            .as_array()
            .is_some_and(|l| l.len() == 1 && l[0]["sessionid"] == id)
}

/// The room answer Talk gives, with extra fields merged into `room`.
fn room_answer(roomid: &str, extra: Value) -> Value {
    let mut room = json!({
        "version": "1.0",
        "roomid": roomid,
        "properties": {"name": format!("Room {roomid}")},
    });
    if let (Some(r), Some(e)) = (room.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            r.insert(k.clone(), v.clone());
        }
    }
    json!({"type": "room", "room": room})
}

/// Join requests of `userid` get `extra` merged into the answer; leave
/// notifications and other users get the default answer.
fn answer_for_user(s: &TestServer, answers: Vec<(&'static str, Value)>) {
    s.backend.set_room_handler(move |body| {
        let room = &body["room"];
        if room["action"] == "leave" {
            return Reply::Default;
        }
        let user = room["userid"].as_str().unwrap_or_default();
        match answers.iter().find(|(u, _)| *u == user) {
            Some((_, extra)) => Reply::json(room_answer(
                room["roomid"].as_str().unwrap_or_default(),
                extra.clone(),
            )),
            None => Reply::Default,
        }
    });
}

/// A client with hello `params` (e.g. with user data); panics unless hello succeeds.
async fn hello_with(s: &TestServer, params: Value) -> TestClient {
    let mut c = s.client().await;
    let r = c.hello_v1(&s.backend.backend_url(), params).await;
    assert_eq!(r["type"], "hello", "hello reply: {r}");
    c
}

/// `user` joins `room` as the first member; its own join event is consumed.
async fn first_in_room(s: &TestServer, user: &str, room: &str, talk: &str) -> TestClient {
    let mut c = s.user_in_room(user, room, talk).await;
    let own = c.expect_event("room", "join").await;
    assert_eq!(
        own["event"]["join"][0]["sessionid"],
        c.session_id().expect("hello done")
    );
    c
}

/// `c` (already hello'd) joins `room`; the other members in `present` see
/// its join event, and `c`'s own join events are consumed.
async fn join_with_others(
    c: &mut TestClient,
    room: &str,
    talk: &str,
    present: &mut [&mut TestClient],
) {
    let r = c.join_room(room, talk).await;
    assert_eq!(r["room"]["roomid"], room, "join reply: {r}");
    let me = c.session_id().expect("hello done").to_owned();
    c.recv_matching(|v| is_join_of(v, &me)).await;
    for p in present.iter_mut() {
        p.recv_matching(|v| is_join_of(v, &me)).await;
    }
}

async fn internal_client(s: &TestServer) -> TestClient {
    let mut c = s.client().await;
    let r = c.hello_internal(&s.backend.url(), INTERNAL_SECRET).await;
    assert_eq!(r["type"], "hello", "internal hello reply: {r}");
    c
}

async fn stats(s: &TestServer) -> Value {
    let r = raw_request("GET", &format!("{}api/v1/stats", s.base()), &[], "").await;
    assert_eq!(r.status, 200, "stats: {}", r.text());
    r.json()
}

/// Join requests (no `action`) for `roomid` the backend received.
fn join_requests(b: &FakeBackend, roomid: &str) -> Vec<RecordedRequest> {
    b.requests_of("room")
        .into_iter()
        .filter(|r| r.payload()["roomid"] == roomid && r.payload().get("action").is_none())
        .collect()
}

fn leave_requests(b: &FakeBackend) -> Vec<RecordedRequest> {
    b.requests_of("room")
        .into_iter()
        .filter(|r| r.payload()["action"] == "leave")
        .collect()
}

async fn wait_leave(b: &FakeBackend, talk: &str) -> RecordedRequest {
    let talk = talk.to_owned();
    b.wait_for(
        move |r| {
            r.kind == "room" && r.payload()["action"] == "leave" && r.payload()["sessionid"] == talk
        },
        DEFAULT_TIMEOUT,
    )
    .await
}

// ----- ROOM-01 / ROOM-08: join ------------------------------------------------

/// ROOM-01: the join is checked with Nextcloud by a signed room request to
/// the session's backend URL carrying the Talk session id.
async fn room_01_join_posts_room_request_with_talk_session_id(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user("alice").await;
    s.backend.clear_requests();
    let reply = a.join_room("room1", "talk-a").await;
    assert_eq!(reply["type"], "room", "{reply}");
    let reqs = join_requests(&s.backend, "room1");
    assert_eq!(reqs.len(), 1, "exactly one room request");
    let req = &reqs[0];
    assert!(req.checksum_ok, "room request must be signed");
    assert_eq!(req.method, "POST");
    assert_eq!(req.path, BACKEND_PATH);
    assert_eq!(
        req.body,
        json!({"type": "room", "room": {
            "version": "1.0", "roomid": "room1", "userid": "alice", "sessionid": "talk-a",
        }})
    );
}

/// ROOM-08: the reply echoes the request id and carries the room
/// properties; a room is created on first use, so a later joiner gets the
/// properties of the existing room object, not the backend's new answer.
async fn room_08_join_reply_echoes_id_and_room_properties(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_room_handler(|body| {
        if body["room"]["action"] == "leave" {
            return Reply::Default;
        }
        let user = body["room"]["userid"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        Reply::json(room_answer(
            "room1",
            json!({"properties": {"name": "by", "who": user}}),
        ))
    });
    let mut a = s.user("alice").await;
    let id = a
        .send_with_id(json!({"id": "join-1", "type": "room", "room": {"roomid": "room1", "sessionid": "talk-a"}}))
        .await;
    let reply = a.recv_reply(&id).await;
    assert_eq!(
        reply,
        json!({"id": "join-1", "type": "room", "room": {
            "roomid": "room1", "properties": {"name": "by", "who": "alice"},
        }})
    );
    // Bob's join is answered with other properties; the room already exists.
    let mut b = s.user("bob").await;
    let reply = b.join_room("room1", "talk-b").await;
    assert_eq!(
        reply["room"]["properties"],
        json!({"name": "by", "who": "alice"})
    );
    // Once everybody left, the room is created anew from the next answer.
    a.leave_room().await;
    b.leave_room().await;
    let mut c = s.user("carol").await;
    let reply = c.join_room("room1", "talk-c").await;
    assert_eq!(
        reply["room"]["properties"],
        json!({"name": "by", "who": "carol"})
    );
}

// ----- ROOM-02: join without Talk session id ------------------------------

/// ROOM-02: without `sessionid` the signaling public id is sent to the
/// backend and no Talk-session mapping is recorded (no `roomsessionid` in
/// the join event; backend requests naming that id are not translated; no
/// leave notification).
async fn room_02_join_without_sessionid_uses_public_id(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user("alice").await;
    let pub_id = a.session_id().unwrap().to_owned();
    let reply = a
        .request(json!({"type": "room", "room": {"roomid": "room1"}}))
        .await;
    assert_eq!(reply["room"]["roomid"], "room1", "{reply}");
    let req = s.backend.wait_for_request("room", DEFAULT_TIMEOUT).await;
    assert_eq!(req.payload()["sessionid"], pub_id.as_str());
    let own = a.expect_event("room", "join").await;
    let entry = &own["event"]["join"][0];
    assert_eq!(entry["sessionid"], pub_id.as_str());
    assert!(
        entry.get("roomsessionid").is_none(),
        "no room session id: {own}"
    );

    // The public id is not a known Talk session id: nothing to deliver.
    let r = s
        .backend_request(
            "room1",
            json!({"type": "participants", "participants": {
                "changed": [], "users": [{"sessionId": pub_id, "inCall": 1}],
            }}),
        )
        .await;
    assert_eq!(r.status, 200);
    a.expect_no_message(SHORT).await;

    let reply = a.leave_room().await;
    assert_eq!(reply["room"]["roomid"], "");
    tokio::time::sleep(SHORT).await;
    assert!(
        leave_requests(&s.backend).is_empty(),
        "no leave notification without Talk session"
    );
}

// ----- ROOM-03: backend room answers ----------------------------------------

/// ROOM-03: a backend `error` answer is forwarded verbatim to the client
/// (with the request id); the session stays in its previous room.
async fn room_03_backend_error_is_forwarded(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_room_handler(|body| {
        if body["room"]["roomid"] == "secret" {
            Reply::json(json!({"type": "error", "error": {
                "code": "no_such_room",
                "message": "The user is not invited to this room.",
                "details": {"hint": 1},
            }}))
        } else {
            Reply::Default
        }
    });
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let reply = a.join_room("secret", "talk-a2").await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(
        reply["error"],
        json!({"code": "no_such_room", "message": "The user is not invited to this room.", "details": {"hint": 1}})
    );
    assert!(reply["id"].is_string());
    // Still in room1: no leave was sent and room events still arrive.
    assert!(leave_requests(&s.backend).is_empty());
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": {"still": "here"}}}),
    )
    .await;
    let ev = a.expect_event("room", "message").await;
    assert_eq!(ev["event"]["message"]["roomid"], "room1");
}

/// ROOM-03: an answer of any other type than `room`/`error` → `room_join_failed`.
async fn room_03_unexpected_answer_type_is_room_join_failed(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_room_handler(|_| {
        Reply::json(json!({"type": "auth", "auth": {"version": "1.0", "userid": "alice"}}))
    });
    let mut a = s.user("alice").await;
    let reply = a.join_room("room1", "talk-a").await;
    assert_eq!(reply["type"], "error", "{reply}");
    assert_eq!(reply["error"]["code"], "room_join_failed");
    assert_eq!(reply["error"]["message"], "Could not join the room.");
    a.expect_no_message(SHORT).await;
    assert_eq!(stats(&s).await["rooms"], 0);
}

// ----- ROOM-04: room session data -----------------------------------------------

/// ROOM-04: `room.session.userid` from the backend names otherwise
/// anonymous sessions in join events (own, others' and the list a later
/// joiner gets) and fills `userId` in participants lists.
async fn room_04_session_userid_names_anonymous_session(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_room_handler(|body| {
        let room = &body["room"];
        if room["action"] != "leave" && room["sessionid"] == "talk-g" {
            Reply::json(room_answer(
                "room1",
                json!({"session": {"userid": "phone-guest"}}),
            ))
        } else {
            Reply::Default
        }
    });
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut g = s.client().await;
    let r = g
        .hello_v1(
            &s.backend.backend_url(),
            json!({"userid": "", "ticket": "t"}),
        )
        .await;
    assert_eq!(r["hello"]["userid"], "", "anonymous hello: {r}");
    let g_id = g.session_id().unwrap().to_owned();
    let reply = g.join_room("room1", "talk-g").await;
    assert_eq!(reply["room"]["roomid"], "room1");
    let own = g.recv_matching(|v| is_join_of(v, &g_id)).await;
    assert_eq!(own["event"]["join"][0]["userid"], "phone-guest");
    let seen = a.recv_matching(|v| is_join_of(v, &g_id)).await;
    assert_eq!(seen["event"]["join"][0]["userid"], "phone-guest");

    let mut c = s.user("carol").await;
    c.join_room("room1", "talk-c").await;
    let list = c.expect_event("room", "join").await;
    let entries = list["event"]["join"].as_array().unwrap();
    let ge = entries
        .iter()
        .find(|e| e["sessionid"] == g_id.as_str())
        .expect("guest listed");
    assert_eq!(ge["userid"], "phone-guest");

    // Participants entries for the guest without userId get it filled in.
    drain(&mut a).await;
    s.backend_request(
        "room1",
        json!({"type": "participants", "participants": {"changed": [], "users": [
            {"sessionId": "talk-g", "inCall": 0},
            {"sessionId": "talk-a", "userId": "alice", "inCall": 0},
        ]}}),
    )
    .await;
    let up = a.expect_event("participants", "update").await;
    let users = up["event"]["update"]["users"].as_array().unwrap();
    let gu = users
        .iter()
        .find(|u| u["sessionId"] == g_id.as_str())
        .expect("guest entry");
    assert_eq!(gu["userId"], "phone-guest");
}

// ----- ROOM-05 / PERM-01 / PERM-02 / PERM-03: permissions ------------------------

/// Sends a control message from `from` to `to` and reports whether it arrived.
async fn control_arrives(from: &mut TestClient, to: &mut TestClient, tag: &str) -> bool {
    let to_id = to.session_id().expect("hello done").to_owned();
    from.send_control(recipient_session(&to_id), json!({"action": tag}))
        .await;
    match to.recv_timeout(SHORT).await {
        None => false,
        Some(v) => {
            assert_eq!(v["type"], "control", "unexpected message: {v}");
            assert_eq!(v["control"]["data"]["action"], tag);
            assert_eq!(
                v["control"]["sender"]["sessionid"],
                from.session_id().expect("hello done")
            );
            true
        }
    }
}

/// Sets a transient key; returns the error code, or `None` if it was accepted
/// (the setter's own `set` notification is consumed).
async fn transient_set(c: &mut TestClient, key: &str, value: Value) -> Option<String> {
    let id = c
        .send_with_id(
            json!({"type": "transient", "transient": {"type": "set", "key": key, "value": value}}),
        )
        .await;
    let v = c.recv().await;
    if v["type"] == "error" {
        assert_eq!(v["id"], id.as_str(), "{v}");
        return Some(v["error"]["code"].as_str().expect("string").to_owned());
    }
    assert_eq!(v["type"], "transient", "{v}");
    assert_eq!(v["transient"]["key"], key);
    None
}

/// PERM-02 / ROOM-05: without a permission list from Nextcloud (also with
/// `permissions: null`) everything but `hide-displaynames` is allowed.
async fn perm_02_legacy_sessions_may_control_and_set_transient_data(t: Topology) {
    let s = TestServer::start_on(t).await;
    answer_for_user(&s, vec![("bob", json!({"permissions": null}))]);
    let mut a = hello_with(
        &s,
        json!({"userid": "alice", "ticket": "t", "user": {"displayname": "Alice"}}),
    )
    .await;
    a.join_room("room1", "talk-a").await;
    a.expect_event("room", "join").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;

    assert!(control_arrives(&mut a, &mut b, "a-to-b").await);
    assert!(control_arrives(&mut b, &mut a, "b-to-a").await);
    assert_eq!(transient_set(&mut b, "k", json!(1)).await, None);
    // The display name is not hidden from legacy sessions.
    let mut c = hello_with(
        &s,
        json!({"userid": "carol", "ticket": "t", "user": {"displayname": "Carol"}}),
    )
    .await;
    c.join_room("room1", "talk-c").await;
    let seen = b.recv_matching(|v| is_event(v, "room", "join")).await;
    assert_eq!(
        seen["event"]["join"][0]["user"],
        json!({"displayname": "Carol"})
    );
}

/// ROOM-05 / PERM-01: a permission list replaces the legacy defaults; each
/// permission string grants exactly its own right (`control`,
/// `transient-data`), an empty list grants nothing.
async fn perm_01_room_05_permission_list_from_room_answer(t: Topology) {
    let s = TestServer::start_on(t).await;
    answer_for_user(
        &s,
        vec![
            ("ctl", json!({"permissions": ["control", "publish-media"]})),
            ("trn", json!({"permissions": ["transient-data"]})),
            ("none", json!({"permissions": []})),
        ],
    );
    let mut ctl = first_in_room(&s, "ctl", "room1", "talk-ctl").await;
    let mut trn = s.user("trn").await;
    join_with_others(&mut trn, "room1", "talk-trn", &mut [&mut ctl]).await;
    let mut none = s.user("none").await;
    join_with_others(&mut none, "room1", "talk-none", &mut [&mut ctl, &mut trn]).await;
    for c in [&mut ctl, &mut trn, &mut none] {
        drain(c).await;
    }

    assert!(control_arrives(&mut ctl, &mut none, "ctl").await);
    assert!(!control_arrives(&mut trn, &mut none, "trn").await);
    assert!(!control_arrives(&mut none, &mut ctl, "none").await);
    // Refused control messages get no error either.
    trn.expect_no_message(Duration::from_millis(50)).await;

    assert_eq!(
        transient_set(&mut ctl, "k", json!(1)).await.as_deref(),
        Some("not_allowed")
    );
    assert_eq!(
        transient_set(&mut none, "k", json!(1)).await.as_deref(),
        Some("not_allowed")
    );
    assert_eq!(transient_set(&mut trn, "k", json!(1)).await, None);
}

/// PERM-03: per-session permission updates from backend `participants`
/// requests (entries in `changed`) replace the session's permissions.
async fn perm_03_participants_request_updates_permissions(t: Topology) {
    let s = TestServer::start_on(t).await;
    answer_for_user(&s, vec![("bob", json!({"permissions": []}))]);
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;
    assert!(!control_arrives(&mut b, &mut a, "before").await);

    let grant = json!({"type": "participants", "participants": {
        "changed": [{"sessionId": "talk-b", "permissions": ["control", "transient-data"], "inCall": 0}],
        "users": [{"sessionId": "talk-b", "permissions": ["control", "transient-data"], "inCall": 0}],
    }});
    assert_eq!(s.backend_request("room1", grant).await.status, 200);
    a.expect_event("participants", "update").await;
    b.expect_event("participants", "update").await;
    assert!(control_arrives(&mut b, &mut a, "granted").await);
    assert_eq!(transient_set(&mut b, "k", json!("v")).await, None);
    a.expect_type("transient").await;

    // Permissions only in `users` (not `changed`) do not change anything;
    // a `changed` entry with an empty list revokes everything.
    let users_only = json!({"type": "participants", "participants": {
        "changed": [],
        "users": [{"sessionId": "talk-b", "permissions": [], "inCall": 0}],
    }});
    s.backend_request("room1", users_only).await;
    a.expect_event("participants", "update").await;
    b.expect_event("participants", "update").await;
    assert!(control_arrives(&mut b, &mut a, "still").await);

    let revoke = json!({"type": "participants", "participants": {
        "changed": [{"sessionId": "talk-b", "permissions": [], "inCall": 0}],
        "users": [],
    }});
    s.backend_request("room1", revoke).await;
    a.expect_event("participants", "update").await;
    b.expect_event("participants", "update").await;
    assert!(!control_arrives(&mut b, &mut a, "revoked").await);
    assert_eq!(
        transient_set(&mut b, "k", json!("w")).await.as_deref(),
        Some("not_allowed")
    );
}

/// PERM-05 (no MCU configured): publishing permissions are not enforced on
/// peer-to-peer signaling; offers and candidates are forwarded like any
/// message even for sessions without any permission.
async fn perm_05_without_mcu_offers_are_forwarded_regardless_of_permissions(t: Topology) {
    let s = TestServer::start_on(t).await;
    answer_for_user(&s, vec![("bob", json!({"permissions": []}))]);
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;
    let a_id = a.session_id().unwrap().to_owned();
    let offer = json!({"type": "offer", "to": a_id, "roomType": "video",
        "payload": {"type": "offer", "sdp": "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"}});
    b.send_message(recipient_session(&a_id), offer.clone())
        .await;
    let m = a.expect_type("message").await;
    assert_eq!(m["message"]["data"], offer);
    let cand = json!({"type": "candidate", "to": a_id, "roomType": "screen",
        "payload": {"candidate": {"candidate": "candidate:0 1 UDP 1 127.0.0.1 9 typ host"}}});
    b.send_message(recipient_session(&a_id), cand.clone()).await;
    let m = a.expect_type("message").await;
    assert_eq!(m["message"]["data"], cand);
    b.expect_no_message(SHORT).await;
}

// ----- ROOM-06 / ROOM-09 / ROOM-10: leaving -----------------------------------

/// ROOM-06: re-joining the current room changes nothing (`already_joined`); joining another
/// room leaves the previous one first (leave notification + leave event).
async fn room_06_rejoin_is_noop_and_switch_leaves_previous_room(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;
    s.backend.clear_requests();

    // Upstream 1.2.0 answers a re-join with `already_joined` (talk_room.rs).
    let r = a
        .request(json!({"type": "room", "room": {"roomid": "room1", "sessionid": "talk-a"}}))
        .await;
    assert_eq!(r["error"]["code"], "already_joined", "{r}");
    a.expect_no_message(SHORT).await;
    b.expect_no_message(Duration::from_millis(10)).await;
    assert_eq!(
        s.backend.count("room"),
        0,
        "no backend request for a re-join"
    );

    let a_id = a.session_id().unwrap().to_owned();
    let reply = a.join_room("room2", "talk-a2").await;
    assert_eq!(reply["room"]["roomid"], "room2");
    let leave = wait_leave(&s.backend, "talk-a").await;
    assert_eq!(leave.payload()["roomid"], "room1");
    let ev = b.expect_event("room", "leave").await;
    assert_eq!(ev["event"]["leave"], json!([a_id]));
    // Messages to room1 no longer reach alice.
    b.send_message(recipient_room(), json!({"x": 1})).await;
    let own = a.expect_event("room", "join").await;
    assert_eq!(own["event"]["join"][0]["sessionid"], a_id.as_str());
    a.expect_no_message(SHORT).await;
}

/// ROOM-09: leaving answers `{roomid: ""}` with the request id; leaving
/// while in no room gets no reply.
async fn room_09_leave_reply_and_silent_leave_outside_room(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let id = a
        .send_with_id(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    let reply = a.recv().await;
    assert_eq!(
        reply,
        json!({"id": id, "type": "room", "room": {"roomid": ""}})
    );
    a.send_with_id(json!({"type": "room", "room": {"roomid": ""}}))
        .await;
    a.expect_no_message(SHORT).await;
    // Leaving the room really left it.
    let t = a
        .request(json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 1}}))
        .await;
    assert_eq!(t["error"]["code"], "not_in_room");
}

/// ROOM-09: an anonymous session that leaves its room must join a room
/// again within 10 s (the timer restarts at the leave), else it gets `bye`
/// with reason `room_join_timeout` and is closed.
async fn room_09_anonymous_leave_restarts_join_timer(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut g = s.client().await.with_timeout(Duration::from_secs(13));
    g.hello_v1(
        &s.backend.backend_url(),
        json!({"userid": "", "ticket": "t"}),
    )
    .await;
    g.join_room("room1", "talk-g").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let left = Instant::now();
    g.leave_room().await;
    drain(&mut g).await;
    let bye = g.recv_matching(|v| v["type"] == "bye").await;
    let after = left.elapsed();
    assert_eq!(
        bye,
        json!({"type": "bye", "bye": {"reason": "room_join_timeout"}})
    );
    assert!(
        after >= Duration::from_millis(9500),
        "timer must restart at the leave, fired after {after:?}"
    );
    g.expect_closed(DEFAULT_TIMEOUT).await;
}

/// ROOM-10: leaving (explicitly, by `bye`, or by switching rooms) sends an
/// async backend room request with `action: "leave"`.
async fn room_10_leave_notifies_backend(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    a.leave_room().await;
    let leave = wait_leave(&s.backend, "talk-a").await;
    assert!(leave.checksum_ok);
    assert_eq!(leave.path, BACKEND_PATH);
    assert_eq!(
        leave.body,
        json!({"type": "room", "room": {
            "version": "1.0", "roomid": "room1", "action": "leave",
            "userid": "alice", "sessionid": "talk-a",
        }})
    );

    // A guest that says bye while in a room.
    let mut g = s.client().await;
    g.hello_v1(
        &s.backend.backend_url(),
        json!({"userid": "", "ticket": "t"}),
    )
    .await;
    g.join_room("room2", "talk-g").await;
    g.bye().await;
    let leave = wait_leave(&s.backend, "talk-g").await;
    assert_eq!(
        leave.body,
        json!({"type": "room", "room": {
            "version": "1.0", "roomid": "room2", "action": "leave",
            "userid": "", "sessionid": "talk-g",
        }})
    );
}

// ----- ROOM-07: one connection per Talk session --------------------------------

/// ROOM-07: a second session joining with the same Talk session id closes
/// the first with `bye` reason `room_session_reconnected`; the old session
/// leaves the room (leave event) without a backend leave notification.
async fn room_07_same_talk_session_closes_older_session(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a1 = first_in_room(&s, "alice", "room1", "talk-a").await;
    let a1_id = a1.session_id().unwrap().to_owned();
    let mut c = s.user("carol").await;
    join_with_others(&mut c, "room1", "talk-c", &mut [&mut a1]).await;
    drain(&mut c).await;
    s.backend.clear_requests();

    let mut a2 = s.user("alice").await;
    let a2_id = a2.session_id().unwrap().to_owned();
    let reply = a2.join_room("room1", "talk-a").await;
    assert_eq!(reply["room"]["roomid"], "room1");

    let bye = a1.recv().await;
    assert_eq!(
        bye,
        json!({"type": "bye", "bye": {"reason": "room_session_reconnected"}})
    );
    a1.expect_closed(DEFAULT_TIMEOUT).await;

    let left = c.expect_event("room", "leave").await;
    assert_eq!(left["event"]["leave"], json!([a1_id]));
    c.recv_matching(|v| is_join_of(v, &a2_id)).await;
    // The new session does not see the old one in the room.
    let list = a2.expect_event("room", "join").await;
    let ids: Vec<&str> = list["event"]["join"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sessionid"].as_str().unwrap())
        .collect();
    assert!(
        !ids.contains(&a1_id.as_str()),
        "old session still listed: {list}"
    );

    tokio::time::sleep(SHORT).await;
    assert!(
        leave_requests(&s.backend).is_empty(),
        "no leave for a reconnected Talk session"
    );
    // The mapping now points at the new session.
    s.backend_request(
        "room1",
        json!({"type": "participants", "participants": {"changed": [],
            "users": [{"sessionId": "talk-a", "inCall": 0}]}}),
    )
    .await;
    let up = c.expect_event("participants", "update").await;
    assert_eq!(
        up["event"]["update"]["users"][0]["sessionId"],
        a2_id.as_str()
    );
}

// ----- ROOM-11: rooms are per backend ---------------------------------------------

/// ROOM-11: the same room id on two backends names two isolated rooms.
async fn room_11_same_room_id_on_two_backends_is_isolated(t: Topology) {
    let b2 = FakeBackend::start("second-secret").await;
    let s = TestServer::start_on_with(
        t,
        &format!(
        "[backend]\nbackends = backend1, backend2\n[backend2]\nurl = {}\nsecret = second-secret\n",
        b2.url()
    ),
    )
    .await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.client().await;
    b.hello_user(&b2.backend_url(), "bob").await;
    let reply = b.join_room("room1", "talk-b").await;
    assert_eq!(reply["room"]["roomid"], "room1");
    // Bob's join went to the second backend; he is alone in his room.
    assert_eq!(join_requests(&b2, "room1").len(), 1);
    let own = b.expect_event("room", "join").await;
    assert_eq!(own["event"]["join"].as_array().unwrap().len(), 1);
    assert_eq!(
        own["event"]["join"][0]["sessionid"],
        b.session_id().unwrap()
    );
    a.expect_no_message(SHORT).await;
    assert_eq!(s.stats_sum("rooms").await, 2);

    // Room messages and backend events stay on their backend.
    b.send_message(recipient_room(), json!({"from": "bob"}))
        .await;
    let r = b2
        .send_room_request(
            &s.base(),
            "room1",
            &json!({"type": "message", "message": {"data": {"from": "backend2"}}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let ev = b.expect_event("room", "message").await;
    assert_eq!(ev["event"]["message"]["data"], json!({"from": "backend2"}));
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": {"from": "backend1"}}}),
    )
    .await;
    let ev = a.expect_event("room", "message").await;
    assert_eq!(ev["event"]["message"]["data"], json!({"from": "backend1"}));
    a.expect_no_message(SHORT).await;
    b.expect_no_message(Duration::from_millis(10)).await;
}

// ----- ROOM-12 / ROOM-13 / ROOM-14: join and leave events --------------------------

/// ROOM-12: a joiner first gets one join event listing everyone already in
/// the room, then flags events of virtual sessions with non-zero flags, then
/// its own join event; the others get the joiner's join event.
async fn room_12_joiner_gets_member_list_flags_then_own_join(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let a_id = a.session_id().unwrap().to_owned();
    let mut i = internal_client(&s).await;
    let i_id = i.session_id().unwrap().to_owned();
    i.join_room("room1", "").await;
    i.send_with_id(
        json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "sip-1", "roomid": "room1", "userid": "phone", "flags": 2,
        }}}),
    )
    .await;
    let flags = a
        .recv_matching(|v| is_event(v, "participants", "flags"))
        .await;
    let v_id = flags["event"]["flags"]["sessionid"]
        .as_str()
        .unwrap()
        .to_owned();
    drain(&mut a).await;

    let mut b = s.user("bob").await;
    let b_id = b.session_id().unwrap().to_owned();
    let reply = b.join_room("room1", "talk-b").await;
    assert_eq!(reply["type"], "room");
    let list = b.recv().await;
    assert!(is_event(&list, "room", "join"), "{list}");
    let mut ids: Vec<String> = list["event"]["join"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["sessionid"].as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    let mut expected = vec![a_id.clone(), i_id, v_id.clone()];
    expected.sort();
    assert_eq!(ids, expected);
    let f = b.recv().await;
    assert_eq!(
        f,
        json!({"type": "event", "event": {"target": "participants", "type": "flags",
            "flags": {"roomid": "room1", "sessionid": v_id, "flags": 2}}})
    );
    let own = b.recv().await;
    assert!(is_join_of(&own, &b_id), "own join expected: {own}");
    let seen = a.recv().await;
    assert!(is_join_of(&seen, &b_id), "alice sees bob join: {seen}");
}

/// ROOM-13: join entries carry `sessionid`, `userid` (always), `user`
/// (auth user data, omitted without) and `roomsessionid`.
async fn room_13_join_entry_fields(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = hello_with(
        &s,
        json!({"userid": "alice", "ticket": "t", "user": {"displayname": "Alice"}}),
    )
    .await;
    let a_id = a.session_id().unwrap().to_owned();
    a.join_room("room1", "talk-a").await;
    let own = a.expect_event("room", "join").await;
    assert_eq!(
        own,
        json!({"type": "event", "event": {"target": "room", "type": "join", "join": [
            {"sessionid": a_id, "userid": "alice", "user": {"displayname": "Alice"}, "roomsessionid": "talk-a"},
        ]}})
    );
    let mut g = s.client().await;
    g.hello_v1(
        &s.backend.backend_url(),
        json!({"userid": "", "ticket": "t"}),
    )
    .await;
    let g_id = g.session_id().unwrap().to_owned();
    g.join_room("room1", "talk-g").await;
    let list = g.expect_event("room", "join").await;
    assert_eq!(
        list["event"]["join"],
        json!([{"sessionid": a_id, "userid": "alice", "user": {"displayname": "Alice"}, "roomsessionid": "talk-a"}])
    );
    let seen = a.expect_event("room", "join").await;
    assert_eq!(
        seen["event"]["join"],
        json!([{"sessionid": g_id, "userid": "", "roomsessionid": "talk-g"}])
    );
}

/// ROOM-14: a `leave` event with the public id goes to the remaining
/// members when a session leaves or is closed.
async fn room_14_leave_event_on_leave_and_bye(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    let mut c = s.user("carol").await;
    join_with_others(&mut c, "room1", "talk-c", &mut [&mut a, &mut b]).await;
    drain(&mut b).await;
    drain(&mut c).await;
    let b_id = b.session_id().unwrap().to_owned();
    let c_id = c.session_id().unwrap().to_owned();

    b.leave_room().await;
    for x in [&mut a, &mut c] {
        let ev = x.expect_event("room", "leave").await;
        assert_eq!(
            ev,
            json!({"type": "event", "event": {"target": "room", "type": "leave", "leave": [b_id]}})
        );
    }
    c.bye().await;
    let ev = a.expect_event("room", "leave").await;
    assert_eq!(ev["event"]["leave"], json!([c_id]));
    b.expect_no_message(SHORT).await;
}

// ----- ROOM-15 / ROOM-16 / ROOM-17: room updates and deletion ----------------

/// ROOM-16: backend `update` pushes the new properties as an unsolicited
/// `room` message to members, only when they changed; listed users also
/// get a roomlist `update`. ROOM-15: no `room/change` event is emitted.
async fn room_16_update_pushes_changed_properties(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;

    let update = json!({"type": "update", "update": {"userids": [], "properties": {"name": "New name", "type": 2}}});
    assert_eq!(s.backend_request("room1", update.clone()).await.status, 200);
    for x in [&mut a, &mut b] {
        let got = drain(x).await;
        assert_eq!(
            got,
            vec![
                json!({"type": "room", "room": {"roomid": "room1", "properties": {"name": "New name", "type": 2}}})
            ]
        );
    }
    // Same properties again: nothing.
    s.backend_request("room1", update).await;
    a.expect_no_message(SHORT).await;
    // A later joiner gets the updated properties.
    let mut c = s.user("carol").await;
    let r = c.join_room("room1", "talk-c").await;
    assert_eq!(
        r["room"]["properties"],
        json!({"name": "New name", "type": 2})
    );
    drain(&mut a).await;
    drain(&mut b).await;

    // With userids: members get the room update, listed users a roomlist update.
    let mut d = s.user("dave").await;
    s.backend_request(
        "room1",
        json!({"type": "update", "update": {"userids": ["alice", "dave"], "properties": {"name": "Third"}}}),
    )
    .await;
    let got = drain(&mut a).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.contains(
        &json!({"type": "room", "room": {"roomid": "room1", "properties": {"name": "Third"}}})
    ));
    assert!(got.contains(
        &json!({"type": "event", "event": {"target": "roomlist", "type": "update",
        "update": {"roomid": "room1", "properties": {"name": "Third"}}}})
    ));
    let got = drain(&mut d).await;
    assert_eq!(
        got,
        vec![
            json!({"type": "event", "event": {"target": "roomlist", "type": "update",
            "update": {"roomid": "room1", "properties": {"name": "Third"}}}})
        ]
    );
    let got = drain(&mut b).await;
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(
        !got.iter().any(|v| is_event(v, "room", "change")),
        "ROOM-15: no change events"
    );
}

/// ROOM-15: `event/room/change` is never emitted, also not for
/// participant and in-call changes.
async fn room_15_no_change_events(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    for body in [
        json!({"type": "participants", "participants": {"changed": [{"sessionId": "talk-b", "participantType": 1}], "users": []}}),
        json!({"type": "incall", "incall": {"incall": 7, "changed": [{"sessionId": "talk-b", "inCall": 7}], "users": []}}),
        json!({"type": "update", "update": {"properties": {"name": "x"}}}),
    ] {
        assert_eq!(s.backend_request("room1", body).await.status, 200);
    }
    let got = drain(&mut a).await;
    // participants, incall, the properties, and (an update without
    // `userids`, as Talk with `changed-users` sends it) the roomlist update.
    assert_eq!(got.len(), 4, "{got:?}");
    assert!(
        !got.iter().any(|v| is_event(v, "room", "change")),
        "{got:?}"
    );
}

/// ROOM-17: deletion sends members `{roomid: ""}`, internal sessions first
/// an `event/room/delete`; members are out of the room (leave notification
/// to the backend) and listed users get a roomlist `disinvite` (`deleted`).
async fn room_17_delete_removes_members(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_client(&s).await;
    i.join_room("room1", "").await;
    drain(&mut i).await;
    drain(&mut a).await;
    let mut d = s.user("dave").await;

    let r = s
        .backend_request(
            "room1",
            json!({"type": "delete", "delete": {"userids": ["dave"]}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let got = drain(&mut i).await;
    assert_eq!(
        got,
        vec![
            json!({"type": "event", "event": {"target": "room", "type": "delete"}}),
            json!({"type": "room", "room": {"roomid": ""}}),
        ]
    );
    let got = drain(&mut a).await;
    assert_eq!(got, vec![json!({"type": "room", "room": {"roomid": ""}})]);
    let got = drain(&mut d).await;
    assert_eq!(
        got,
        vec![
            json!({"type": "event", "event": {"target": "roomlist", "type": "disinvite",
            "disinvite": {"roomid": "room1", "reason": "deleted"}}})
        ]
    );
    let leave = wait_leave(&s.backend, "talk-a").await;
    assert_eq!(leave.payload()["roomid"], "room1");
    let t = a
        .request(json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 1}}))
        .await;
    assert_eq!(t["error"]["code"], "not_in_room");
    assert_eq!(stats(&s).await["rooms"], 0);
}

// ----- ROOM-18 / ROOM-19: participants updates --------------------------------

/// ROOM-18: participants updates translate Talk session ids, drop unknown
/// ones (and "0"), strip `permissions`, merge `changed` into `users` and
/// drop `changed`; nothing is sent when no entry is left.
async fn room_18_participants_update_translated_and_merged(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;
    let a_id = a.session_id().unwrap().to_owned();
    let b_id = b.session_id().unwrap().to_owned();

    let body = json!({"type": "participants", "participants": {
        "changed": [
            {"sessionId": "talk-b", "participantType": 3, "permissions": ["publish-media"], "inCall": 0},
            {"sessionId": "talk-a", "participantType": 9, "inCall": 0},
        ],
        "users": [
            {"sessionId": "talk-a", "userId": "alice", "participantType": 1, "permissions": ["control"], "inCall": 0},
            {"sessionId": "talk-unknown", "userId": "carol", "inCall": 0},
            {"sessionId": "0", "userId": "dave", "inCall": 0},
            {"userId": "eve", "inCall": 0},
        ],
    }});
    assert_eq!(s.backend_request("room1", body).await.status, 200);
    let expected = json!({"type": "event", "event": {"target": "participants", "type": "update",
    "update": {"roomid": "room1", "users": [
        {"sessionId": a_id, "userId": "alice", "participantType": 1, "inCall": 0},
        {"sessionId": b_id, "participantType": 3, "inCall": 0},
    ]}}});
    assert_eq!(a.expect_event("participants", "update").await, expected);
    assert_eq!(b.expect_event("participants", "update").await, expected);

    // Same for in-call changes.
    let body = json!({"type": "incall", "incall": {"incall": 7,
        "changed": [{"sessionId": "talk-a", "inCall": 7, "participantType": 1}],
        "users": [{"sessionId": "talk-b", "inCall": 0, "participantType": 3}],
    }});
    s.backend_request("room1", body).await;
    let got = a.expect_event("participants", "update").await;
    assert_eq!(
        got,
        json!({"type": "event", "event": {"target": "participants", "type": "update",
        "update": {"roomid": "room1", "users": [
            {"sessionId": b_id, "inCall": 0, "participantType": 3},
            {"sessionId": a_id, "inCall": 7, "participantType": 1},
        ]}}})
    );
    b.expect_event("participants", "update").await;

    // Only unknown sessions: nothing at all.
    for body in [
        json!({"type": "participants", "participants": {"changed": [{"sessionId": "nope"}], "users": [{"sessionId": "0"}]}}),
        json!({"type": "incall", "incall": {"incall": 1, "changed": [{"sessionId": "nope", "inCall": 1}], "users": []}}),
    ] {
        assert_eq!(s.backend_request("room1", body).await.status, 200);
    }
    a.expect_no_message(SHORT).await;
    b.expect_no_message(Duration::from_millis(10)).await;
}

/// ROOM-19: internal sessions are appended to participants lists as
/// `{inCall: 3, sessionId, lastPing, internal: true}` (published when an
/// internal session joins or leaves, and with every update).
async fn room_19_internal_sessions_in_participants_lists(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let a_id = a.session_id().unwrap().to_owned();
    let mut i = internal_client(&s).await;
    let i_id = i.session_id().unwrap().to_owned();
    i.join_room("room1", "").await;
    a.recv_matching(|v| is_join_of(v, &i_id)).await;
    let up = a.expect_event("participants", "update").await;
    let users = up["event"]["update"]["users"].as_array().unwrap().clone();
    assert_eq!(users.len(), 1, "{up}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let last_ping = users[0]["lastPing"]
        .as_i64()
        .expect("lastPing is an integer");
    assert!(
        (last_ping - now).abs() <= 5,
        "lastPing {last_ping} vs now {now}"
    );
    assert_eq!(
        users[0],
        json!({"inCall": 3, "sessionId": i_id, "lastPing": last_ping, "internal": true})
    );
    assert_eq!(up["event"]["update"]["roomid"], "room1");

    s.backend_request(
        "room1",
        json!({"type": "participants", "participants": {"changed": [],
            "users": [{"sessionId": "talk-a", "userId": "alice", "inCall": 0}]}}),
    )
    .await;
    let up = a.expect_event("participants", "update").await;
    let users = up["event"]["update"]["users"].as_array().unwrap();
    assert_eq!(users.len(), 2, "{up}");
    assert_eq!(
        users[0],
        json!({"sessionId": a_id, "userId": "alice", "inCall": 0})
    );
    assert_eq!(users[1]["sessionId"], i_id.as_str());
    assert_eq!(users[1]["internal"], true);

    // The internal session leaving publishes the list without it.
    i.leave_room().await;
    let ev = a.expect_event("room", "leave").await;
    assert_eq!(ev["event"]["leave"], json!([i_id]));
    // No list from an `incall` request yet and no internal session left:
    // the (empty) `users` list is omitted, as upstream's `omitempty` does.
    let up = a.expect_event("participants", "update").await;
    assert_eq!(
        up,
        json!({"type": "event", "event": {"target": "participants", "type": "update",
            "update": {"roomid": "room1"}}})
    );
}

// ----- ROOM-20 / ROOM-21 / ROOM-22: in call -------------------------------------

async fn incall_all(s: &TestServer, value: Value) {
    let r = s
        .backend_request(
            "room1",
            json!({"type": "incall", "incall": {"incall": value, "all": true}}),
        )
        .await;
    assert_eq!(r.status, 200);
}

fn all_event(flags: i64) -> Value {
    json!({"type": "event", "event": {"target": "participants", "type": "update",
        "update": {"roomid": "room1", "incall": flags, "all": true}}})
}

/// ROOM-20 / ROOM-21: `incall` changes update the room's in-call set from
/// `changed[].inCall` (bool or flags, bit 1 = in call); observed through
/// "all left the call", which is only announced when someone was in the call.
async fn room_20_21_incall_changes_track_in_call_sessions(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;

    // Nobody in the call yet: "all out" changes nothing.
    incall_all(&s, json!(0)).await;
    a.expect_no_message(SHORT).await;

    let incall = |changed: Value| {
        json!({"type": "incall", "incall": {"incall": 0, "changed": changed, "users": [
            {"sessionId": "talk-a", "inCall": 0}, {"sessionId": "talk-b", "inCall": 0}]}})
    };
    // Flags with audio/video but without the in-call bit: still not in the call.
    s.backend_request(
        "room1",
        incall(json!([{"sessionId": "talk-a", "inCall": 6}])),
    )
    .await;
    a.expect_event("participants", "update").await;
    b.expect_event("participants", "update").await;
    incall_all(&s, json!(0)).await;
    a.expect_no_message(SHORT).await;

    for joined in [json!(1 | 2 | 4), json!(true), json!(8 | 1)] {
        s.backend_request(
            "room1",
            incall(json!([{"sessionId": "talk-a", "inCall": joined}])),
        )
        .await;
        a.expect_event("participants", "update").await;
        b.expect_event("participants", "update").await;
        incall_all(&s, json!(0)).await;
        assert_eq!(a.recv().await, all_event(0), "after inCall {joined}");
        assert_eq!(b.recv().await, all_event(0));
    }

    // Leaving via `changed` (false or 0) removes the session from the call.
    for left in [json!(false), json!(0)] {
        s.backend_request(
            "room1",
            incall(json!([{"sessionId": "talk-b", "inCall": 1}])),
        )
        .await;
        s.backend_request(
            "room1",
            incall(json!([{"sessionId": "talk-b", "inCall": left}])),
        )
        .await;
        a.expect_event("participants", "update").await;
        a.expect_event("participants", "update").await;
        drain(&mut b).await;
        incall_all(&s, json!(0)).await;
        a.expect_no_message(SHORT).await;
    }
}

/// ROOM-22: `incall` with `all: true` puts all client sessions in/out of
/// the call and emits `{roomid, incall, all: true}`; nothing when nothing
/// changed; a bool `true` means flags 1.
async fn room_22_incall_all(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    let mut i = internal_client(&s).await;
    i.join_room("room1", "").await;
    drain(&mut a).await;
    drain(&mut b).await;
    drain(&mut i).await;

    incall_all(&s, json!(7)).await;
    for x in [&mut a, &mut b, &mut i] {
        assert_eq!(x.recv().await, all_event(7));
    }
    incall_all(&s, json!(7)).await;
    incall_all(&s, json!(true)).await;
    a.expect_no_message(SHORT).await;

    incall_all(&s, json!(0)).await;
    for x in [&mut a, &mut b, &mut i] {
        assert_eq!(x.recv().await, all_event(0));
    }
    incall_all(&s, json!(false)).await;
    a.expect_no_message(SHORT).await;

    incall_all(&s, json!(true)).await;
    assert_eq!(a.recv().await, all_event(1));
    incall_all(&s, json!(false)).await;
    assert_eq!(a.recv().await, all_event(0));
    // A new member makes "all in" a change again.
    incall_all(&s, json!(1)).await;
    assert_eq!(a.recv().await, all_event(1));
    let mut c = s.user("carol").await;
    join_with_others(&mut c, "room1", "talk-c", &mut [&mut a]).await;
    drain(&mut c).await;
    incall_all(&s, json!(1)).await;
    assert_eq!(a.recv().await, all_event(1));
    assert_eq!(c.recv().await, all_event(1));
}

// ----- ROOM-24 / ROOM-25: backend messages and room lists ----------------------

/// ROOM-24: backend `message` arrives as `event/room/message` with `data`
/// passed through.
async fn room_24_backend_message_event(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut outside = s.user("bob").await;
    let data = json!({"type": "chat", "chat": {"refresh": true}, "extra": [1, "two", null]});
    let r = s
        .backend_request(
            "room1",
            json!({"type": "message", "message": {"data": data}}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "{}");
    assert_eq!(
        a.recv().await,
        json!({"type": "event", "event": {"target": "room", "type": "message",
            "message": {"roomid": "room1", "data": data}}})
    );
    outside.expect_no_message(SHORT).await;
}

/// ROOM-25: roomlist `invite` to invited users and `update` to the other
/// users; `disinvite` (reason `disinvited`) to users and to sessions named
/// by Talk session id — whose connection closes when it is in that room.
async fn room_25_roomlist_invite_disinvite_update(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user("alice").await;
    let mut b = s.user("bob").await;
    let props = json!({"name": "Invited", "type": 3});
    s.backend_request(
        "room9",
        json!({"type": "invite", "invite": {"userids": ["bob"], "alluserids": ["alice", "bob"], "properties": props}}),
    )
    .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "event", "event": {"target": "roomlist", "type": "invite",
            "invite": {"roomid": "room9", "properties": props}}})
    );
    assert_eq!(
        a.recv().await,
        json!({"type": "event", "event": {"target": "roomlist", "type": "update",
            "update": {"roomid": "room9", "properties": props}}})
    );
    b.expect_no_message(SHORT).await;

    s.backend_request(
        "room9",
        json!({"type": "disinvite", "disinvite": {"userids": ["bob"], "alluserids": ["alice"], "properties": props}}),
    )
    .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "event", "event": {"target": "roomlist", "type": "disinvite",
            "disinvite": {"roomid": "room9", "reason": "disinvited"}}})
    );
    assert_eq!(a.recv().await["event"]["type"], "update");
    // Bob is in no room: his connection stays.
    b.expect_no_message(SHORT).await;

    // Disinvite by Talk session id of a session in that room closes it.
    let mut g = s.client().await;
    g.hello_v1(
        &s.backend.backend_url(),
        json!({"userid": "", "ticket": "t"}),
    )
    .await;
    g.join_room("room9", "talk-g").await;
    g.expect_event("room", "join").await;
    s.backend_request(
        "room9",
        json!({"type": "disinvite", "disinvite": {"userids": [], "sessionids": ["0", "talk-g", "talk-unknown"], "alluserids": []}}),
    )
    .await;
    assert_eq!(
        g.recv().await,
        json!({"type": "event", "event": {"target": "roomlist", "type": "disinvite",
            "disinvite": {"roomid": "room9", "reason": "disinvited"}}})
    );
    g.expect_closed(DEFAULT_TIMEOUT).await;
    a.expect_no_message(Duration::from_millis(10)).await;
}

// ----- ROOM-26: room ping --------------------------------------------------------

/// ROOM-26: every 10 s a room pings its backend with the Talk session ids
/// (user ids for users) and virtual session ids; sessions without a Talk
/// session id are left out.
// Single server only: each node pings Nextcloud for its own members (as upstream's room.publishActiveSessions).
#[tokio::test]
async fn room_26_room_ping_lists_talk_sessions() {
    let s = TestServer::start().await;
    // Without `session-ping-limit` each room pings on its own (combined
    // pings: talk_room.rs).
    s.backend.set_signaling_config(json!({}));
    let created = Instant::now();
    let _a = s.user_in_room("alice", "room1", "talk-a").await;
    let mut g = s.client().await;
    g.hello_v1(
        &s.backend.backend_url(),
        json!({"userid": "", "ticket": "t"}),
    )
    .await;
    g.join_room("room1", "talk-g").await;
    let mut n = s.user("nobody").await;
    n.request(json!({"type": "room", "room": {"roomid": "room1"}}))
        .await;
    let mut i = internal_client(&s).await;
    i.join_room("room1", "").await;
    i.send_with_id(
        json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "sip-1", "roomid": "room1", "userid": "phone-user",
        }}}),
    )
    .await;
    let add = s.backend.wait_for_request("session", DEFAULT_TIMEOUT).await;
    let v_id = add.payload()["sessionid"].as_str().unwrap().to_owned();
    assert!(s.backend.count("ping") == 0, "no ping right after joining");

    let ping = s
        .backend
        .wait_for_request("ping", Duration::from_secs(14))
        .await;
    let after = created.elapsed();
    assert!(after >= Duration::from_secs(9), "ping too early: {after:?}");
    assert!(ping.checksum_ok);
    assert_eq!(ping.path, BACKEND_PATH);
    let p = ping.payload();
    assert_eq!(p["version"], "1.0");
    assert_eq!(p["roomid"], "room1");
    let mut entries = p["entries"].as_array().expect("entries").clone();
    entries.sort_by_key(|e| e["sessionid"].as_str().unwrap_or_default().to_owned());
    let mut expected = vec![
        json!({"userid": "alice", "sessionid": "talk-a"}),
        json!({"sessionid": "talk-g"}),
        json!({"userid": "phone-user", "sessionid": v_id}),
    ];
    expected.sort_by_key(|e| e["sessionid"].as_str().unwrap_or_default().to_owned());
    assert_eq!(entries, expected);
    tokio::time::sleep(SHORT).await;
    assert_eq!(
        s.backend.count("ping"),
        1,
        "one ping per room and backend URL"
    );
}

// ----- ROOM-27 / ROOM-28 / ROOM-29 ----------------------------------------------

/// ROOM-27: staleness is tracked per request type, so back-to-back requests
/// (also of different types) are all applied, in order.
async fn room_27_back_to_back_backend_requests_all_applied(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    for n in 0..5 {
        s.backend_request(
            "room1",
            json!({"type": "update", "update": {"properties": {"n": n}}}),
        )
        .await;
        s.backend_request(
            "room1",
            json!({"type": "message", "message": {"data": {"n": n}}}),
        )
        .await;
    }
    for n in 0..5 {
        assert_eq!(
            a.recv().await,
            json!({"type": "room", "room": {"roomid": "room1", "properties": {"n": n}}})
        );
        // Without `userids` (Talk with `changed-users`) the members also
        // get the roomlist update.
        assert_eq!(
            a.recv().await,
            json!({"type": "event", "event": {"target": "roomlist", "type": "update",
                "update": {"roomid": "room1", "properties": {"n": n}}}})
        );
        let m = a.expect_event("room", "message").await;
        assert_eq!(m["event"]["message"]["data"], json!({"n": n}));
    }
    a.expect_no_message(SHORT).await;
}

/// ROOM-28: room events from before a session joined are not delivered to
/// it (only the member list and its own join).
async fn room_28_no_room_events_from_before_join(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": {"early": true}}}),
    )
    .await;
    a.expect_event("room", "message").await;
    a.send_message(recipient_room(), json!({"early": "msg"}))
        .await;
    let mut b = s.user("bob").await;
    let b_id = b.session_id().unwrap().to_owned();
    b.join_room("room1", "talk-b").await;
    let got = drain(&mut b).await;
    assert_eq!(got.len(), 2, "only member list and own join: {got:?}");
    assert!(is_event(&got[0], "room", "join"));
    assert!(is_join_of(&got[1], &b_id));
}

/// ROOM-29: the last session leaving destroys the room: transient data is
/// gone for a later joiner and the room no longer counts.
async fn room_29_empty_room_is_destroyed(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    assert_eq!(transient_set(&mut a, "k", json!({"v": 1})).await, None);
    // Bob on Alice's node: each node counts its own room objects.
    let mut b = TestClient::connect(&spreed_url(s.addr))
        .await
        .skip("welcome");
    b.hello_user(&s.backend.backend_url(), "bob").await;
    b.join_room("room1", "talk-b").await;
    let initial = b.recv_matching(|v| v["type"] == "transient").await;
    assert_eq!(
        initial["transient"],
        json!({"type": "initial", "data": {"k": {"v": 1}}})
    );
    assert_eq!(s.stats_sum("rooms").await, 1);
    a.leave_room().await;
    b.leave_room().await;
    assert_eq!(s.stats_sum("rooms").await, 0);

    let mut c = s.user("carol").await;
    c.join_room("room1", "talk-c").await;
    let got = drain(&mut c).await;
    assert!(
        got.iter().all(|v| v["type"] != "transient"),
        "stale transient data: {got:?}"
    );
    assert_eq!(s.stats_sum("rooms").await, 1);
}

// ----- ROOM-30: hide-displaynames -----------------------------------------------

/// ROOM-30: sessions with `hide-displaynames` get `displayname` removed from
/// join entries (the `user` object dropped when it becomes empty).
async fn room_30_hide_displaynames_in_join_events(t: Topology) {
    let s = TestServer::start_on(t).await;
    answer_for_user(
        &s,
        vec![("bob", json!({"permissions": ["hide-displaynames"]}))],
    );
    let mut a = hello_with(
        &s,
        json!({"userid": "alice", "ticket": "t", "user": {"displayname": "Alice", "avatar": "a.png"}}),
    )
    .await;
    let a_id = a.session_id().unwrap().to_owned();
    a.join_room("room1", "talk-a").await;
    a.expect_event("room", "join").await;
    let mut g = hello_with(
        &s,
        json!({"userid": "", "ticket": "t", "user": {"displayname": "Guest"}}),
    )
    .await;
    let g_id = g.session_id().unwrap().to_owned();
    join_with_others(&mut g, "room1", "talk-g", &mut [&mut a]).await;

    let mut b = hello_with(
        &s,
        json!({"userid": "bob", "ticket": "t", "user": {"displayname": "Bob"}}),
    )
    .await;
    let b_id = b.session_id().unwrap().to_owned();
    b.join_room("room1", "talk-b").await;
    let list = b.expect_event("room", "join").await;
    let entries = list["event"]["join"].as_array().unwrap();
    let ae = entries
        .iter()
        .find(|e| e["sessionid"] == a_id.as_str())
        .unwrap();
    assert_eq!(
        *ae,
        json!({"sessionid": a_id, "userid": "alice", "user": {"avatar": "a.png"}, "roomsessionid": "talk-a"})
    );
    let ge = entries
        .iter()
        .find(|e| e["sessionid"] == g_id.as_str())
        .unwrap();
    assert_eq!(
        *ge,
        json!({"sessionid": g_id, "userid": "", "roomsessionid": "talk-g"})
    );
    let own = b.expect_event("room", "join").await;
    assert_eq!(
        own["event"]["join"],
        json!([{"sessionid": b_id, "userid": "bob", "roomsessionid": "talk-b"}])
    );
    // Legacy sessions still see display names.
    let seen = a.recv_matching(|v| is_join_of(v, &b_id)).await;
    assert_eq!(
        seen["event"]["join"][0]["user"],
        json!({"displayname": "Bob"})
    );
}

/// ROOM-30: chat comments in room messages have `actorDisplayName` blanked
/// and `nickChanged` messages are suppressed for sessions with
/// `hide-displaynames`; other sessions get them unchanged.
async fn room_30_hide_displaynames_in_chat_and_nick_changes(t: Topology) {
    let s = TestServer::start_on(t).await;
    answer_for_user(
        &s,
        vec![("bob", json!({"permissions": ["hide-displaynames"]}))],
    );
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    join_with_others(&mut b, "room1", "talk-b", &mut [&mut a]).await;
    drain(&mut b).await;

    let chat = json!({"type": "chat", "chat": {"comment": {
        "actorId": "alice", "actorType": "users", "actorDisplayName": "Alice", "message": "hi"}}});
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": chat}}),
    )
    .await;
    let m = a.expect_event("room", "message").await;
    assert_eq!(m["event"]["message"]["data"], chat);
    let m = b.expect_event("room", "message").await;
    assert_eq!(
        m["event"]["message"]["data"],
        json!({"type": "chat", "chat": {"comment": {
            "actorId": "alice", "actorType": "users", "actorDisplayName": "", "message": "hi"}}})
    );
    // Non-chat data is untouched.
    let other = json!({"type": "other", "chat": {"comment": {"actorDisplayName": "Alice"}}});
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": other}}),
    )
    .await;
    a.expect_event("room", "message").await;
    let m = b.expect_event("room", "message").await;
    assert_eq!(m["event"]["message"]["data"], other);

    let b_id = b.session_id().unwrap().to_owned();
    let a_id = a.session_id().unwrap().to_owned();
    let nick = json!({"type": "nickChanged", "data": {"name": "Alice 2"}});
    a.send_message(recipient_session(&b_id), nick.clone()).await;
    a.send_message(recipient_session(&b_id), json!({"type": "after"}))
        .await;
    let m = b.expect_type("message").await;
    assert_eq!(
        m["message"]["data"],
        json!({"type": "after"}),
        "nickChanged must be dropped"
    );
    b.send_message(recipient_session(&a_id), nick.clone()).await;
    let m = a.expect_type("message").await;
    assert_eq!(m["message"]["data"], nick);
}

// ----- ROOM-23: flags of virtual sessions (more in internal.rs) -----------

/// ROOM-23: `event/participants/flags` `{roomid, sessionid, flags}` for a
/// virtual session's flags, also when they change.
async fn room_23_virtual_session_flags_event(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_client(&s).await;
    i.join_room("room1", "").await;
    drain(&mut a).await;
    i.send_with_id(
        json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "sip-1", "roomid": "room1", "flags": 1,
        }}}),
    )
    .await;
    let f = a
        .recv_matching(|v| is_event(v, "participants", "flags"))
        .await;
    let v_id = f["event"]["flags"]["sessionid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        f,
        json!({"type": "event", "event": {"target": "participants", "type": "flags",
            "flags": {"roomid": "room1", "sessionid": v_id, "flags": 1}}})
    );
    drain(&mut a).await;
    i.send_with_id(
        json!({"type": "internal", "internal": {"type": "updatesession", "updatesession": {
            "sessionid": "sip-1", "roomid": "room1", "flags": 4,
        }}}),
    )
    .await;
    assert_eq!(
        a.recv().await,
        json!({"type": "event", "event": {"target": "participants", "type": "flags",
            "flags": {"roomid": "room1", "sessionid": v_id, "flags": 4}}})
    );
}

both_topologies!(
    room_01_join_posts_room_request_with_talk_session_id,
    room_02_join_without_sessionid_uses_public_id,
    room_03_backend_error_is_forwarded,
    room_03_unexpected_answer_type_is_room_join_failed,
    room_04_session_userid_names_anonymous_session,
    perm_02_legacy_sessions_may_control_and_set_transient_data,
    perm_01_room_05_permission_list_from_room_answer,
    perm_03_participants_request_updates_permissions,
    perm_05_without_mcu_offers_are_forwarded_regardless_of_permissions,
    room_06_rejoin_is_noop_and_switch_leaves_previous_room,
    room_08_join_reply_echoes_id_and_room_properties,
    room_07_same_talk_session_closes_older_session,
    room_09_leave_reply_and_silent_leave_outside_room,
    room_09_anonymous_leave_restarts_join_timer,
    room_10_leave_notifies_backend,
    room_11_same_room_id_on_two_backends_is_isolated,
    room_12_joiner_gets_member_list_flags_then_own_join,
    room_13_join_entry_fields,
    room_14_leave_event_on_leave_and_bye,
    room_15_no_change_events,
    room_16_update_pushes_changed_properties,
    room_17_delete_removes_members,
    room_18_participants_update_translated_and_merged,
    room_19_internal_sessions_in_participants_lists,
    room_20_21_incall_changes_track_in_call_sessions,
    room_22_incall_all,
    room_24_backend_message_event,
    room_25_roomlist_invite_disinvite_update,
    room_27_back_to_back_backend_requests_all_applied,
    room_28_no_room_events_from_before_join,
    room_29_empty_room_is_destroyed,
    room_30_hide_displaynames_in_join_events,
    room_30_hide_displaynames_in_chat_and_nick_changes,
    room_23_virtual_session_flags_event,
);
