//! End-to-end tests of internal clients and virtual sessions (INT-01..06,
//! RTE-06) and of transient room data (TRN-01..04).
// Test bodies are plain functions run by `both_topologies!`.
#![allow(clippy::unwrap_used, clippy::expect_used)]
mod common;
use common::*;
use std::time::Duration;

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

fn is_join_of(v: &Value, id: &str) -> bool {
    is_event(v, "room", "join")
        && v["event"]["join"]
            .as_array()
            .is_some_and(|l| l.len() == 1 && l[0]["sessionid"] == id)
}

/// Internal hello with the documented params: `random` (64 chars), `token`
/// = hex HMAC-SHA256(random, internal secret), `backend` = Nextcloud URL.
async fn internal_client(s: &TestServer) -> TestClient {
    let mut c = s.client().await;
    let r = c.hello_internal(&s.backend.url(), INTERNAL_SECRET).await;
    assert_eq!(r["type"], "hello", "internal hello reply: {r}");
    c
}

/// An internal client in `room` (joined without a Talk session id).
async fn internal_in_room(s: &TestServer, room: &str) -> TestClient {
    let mut c = internal_client(s).await;
    let r = c
        .request(json!({"type": "room", "room": {"roomid": room}}))
        .await;
    assert_eq!(r["room"]["roomid"], room, "internal join reply: {r}");
    drain(&mut c).await;
    c
}

/// `user` alone in `room`, its own join event consumed.
async fn first_in_room(s: &TestServer, user: &str, room: &str, talk: &str) -> TestClient {
    let mut c = s.user_in_room(user, room, talk).await;
    c.expect_event("room", "join").await;
    c
}

fn add_session(sessionid: &str, extra: Value) -> Value {
    let mut add = json!({"sessionid": sessionid, "roomid": "room1"});
    if let (Some(a), Some(e)) = (add.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            a.insert(k.clone(), v.clone());
        }
    }
    json!({"type": "internal", "internal": {"type": "addsession", "addsession": add}})
}

fn remove_session(sessionid: &str) -> Value {
    json!({"type": "internal", "internal": {"type": "removesession", "removesession": {
        "sessionid": sessionid, "roomid": "room1"}}})
}

fn update_session(sessionid: &str, flags: u32) -> Value {
    json!({"type": "internal", "internal": {"type": "updatesession", "updatesession": {
        "sessionid": sessionid, "roomid": "room1", "flags": flags}}})
}

/// Waits for the join event of a virtual session (one entry, no Talk
/// session id) and returns its public id.
async fn virtual_join(c: &mut TestClient) -> (String, Value) {
    let ev = c
        .recv_matching(|v| {
            is_event(v, "room", "join")
                && v["event"]["join"].as_array().is_some_and(|l| l.len() == 1)
                && v["event"]["join"][0].get("roomsessionid").is_none()
        })
        .await;
    let id = ev["event"]["join"][0]["sessionid"]
        .as_str()
        .expect("valid")
        .to_owned();
    (id, ev)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("valid")
        .as_secs() as i64
}

/// The participants entry of `id` in an update event.
fn entry_of<'a>(up: &'a Value, id: &str) -> Option<&'a Value> {
    up["event"]["update"]["users"]
        .as_array()?
        .iter()
        .find(|u| u["sessionId"] == id)
}

// ----- INT-01: internal clients ----------------------------------------------------

/// INT-01: an internal hello needs no backend request; the internal session
/// joins any room without a backend check or Talk session id.
async fn int_01_internal_session_joins_without_backend(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut i = s.client().await;
    let hello = i.hello_internal(&s.backend.url(), INTERNAL_SECRET).await;
    assert_eq!(hello["type"], "hello", "{hello}");
    assert_eq!(hello["hello"]["userid"], "");
    assert!(hello["hello"]["sessionid"]
        .as_str()
        .is_some_and(|x| !x.is_empty()));
    assert!(hello["hello"]["server"]["features"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "virtual-sessions"));
    let reply = i
        .request(json!({"type": "room", "room": {"roomid": "any-room"}}))
        .await;
    // A room created by an internal client has no properties.
    assert_eq!(reply["room"], json!({"roomid": "any-room"}), "{reply}");
    let own = i.expect_event("room", "join").await;
    assert_eq!(
        own["event"]["join"],
        json!([{"sessionid": i.session_id().unwrap(), "userid": ""}])
    );
    tokio::time::sleep(SHORT).await;
    assert!(
        s.backend.requests().is_empty(),
        "no backend requests for internal clients: {:?}",
        s.backend
            .requests()
            .iter()
            .map(|r| r.body.clone())
            .collect::<Vec<_>>()
    );
}

/// INT-01: internal sessions may send `control` messages and set
/// transient data even when nobody else may.
async fn int_01_internal_session_may_control_and_set_transient_data(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_room_handler(|body| {
        if body["room"]["action"] == "leave" {
            return Reply::Default;
        }
        let roomid = body["room"]["roomid"].clone();
        Reply::json(
            json!({"type": "room", "room": {"version": "1.0", "roomid": roomid,
            "properties": {}, "permissions": []}}),
        )
    });
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let a_id = a.session_id().unwrap().to_owned();
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;

    // Alice has no permissions at all.
    let r = a
        .request(json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 1}}))
        .await;
    assert_eq!(r["error"]["code"], "not_allowed");

    i.send_control(recipient_session(&a_id), json!({"mute": "audio"}))
        .await;
    let c = a.expect_type("control").await;
    assert_eq!(c["control"]["data"], json!({"mute": "audio"}));
    assert_eq!(c["control"]["sender"]["sessionid"], i.session_id().unwrap());
    i.send_with_id(
        json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 2}}),
    )
    .await;
    let expected =
        json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 2}});
    assert_eq!(i.recv().await, expected);
    assert_eq!(a.recv().await, expected);
}

/// INT-01: internal sessions do not count against a backend's session limit.
async fn int_01_internal_sessions_exempt_from_session_limit(t: Topology) {
    let s = TestServer::start_on_with(t, "[backend1]\nsessionlimit = 1\n").await;
    let _a = s.user("alice").await;
    let mut b = s.client().await;
    let r = b
        .hello_v1(
            &s.backend.backend_url(),
            json!({"userid": "bob", "ticket": "t"}),
        )
        .await;
    assert_eq!(r["error"]["code"], "session_limit_exceeded", "{r}");
    let _i1 = internal_client(&s).await;
    let _i2 = internal_client(&s).await;
}

/// INT-01: internal sessions (user id "") are exempt from the anonymous
/// room-join timeout.
async fn int_01_internal_sessions_have_no_room_join_timeout(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut i = internal_client(&s).await;
    let mut j = internal_in_room(&s, "room1").await;
    j.leave_room().await;
    i.expect_no_message(Duration::from_millis(11_500)).await;
    j.expect_no_message(Duration::from_millis(10)).await;
    let r = i
        .request(json!({"type": "room", "room": {"roomid": "room2"}}))
        .await;
    assert_eq!(r["room"]["roomid"], "room2");
}

/// INT-01 (hello params): the token must be the HMAC of `random` (≥ 32
/// characters) with the internal secret, the backend must be configured.
async fn int_01_internal_hello_token_checks(t: Topology) {
    let s = TestServer::start_on(t).await;
    let hello = |random: &str, token: &str, backend: &str| {
        json!({"type": "hello", "hello": {"version": "1.0", "auth": {"type": "internal",
            "params": {"random": random, "token": token, "backend": backend}}}})
    };
    let random = random_hex(32);
    let good = internal_token(INTERNAL_SECRET, &random);
    let url = s.backend.url();
    let cases = [
        (
            random.clone(),
            internal_token("wrong", &random),
            url.clone(),
            "invalid_token",
        ),
        (
            random[..31].to_owned(),
            internal_token(INTERNAL_SECRET, &random[..31]),
            url.clone(),
            "invalid_token",
        ),
        (
            random.clone(),
            good.clone(),
            "http://127.0.0.1:1/".to_owned(),
            "invalid_backend",
        ),
    ];
    for (r, t, b, code) in cases {
        let mut c = s.client().await;
        let reply = c.request(hello(&r, &t, &b)).await;
        assert_eq!(reply["error"]["code"], code, "{reply}");
    }
    let mut c = s.client().await;
    let reply = c.request(hello(&random, &good, &url)).await;
    assert_eq!(reply["type"], "hello", "{reply}");
}

// ----- INT-02: addsession ----------------------------------------------------------

/// INT-02: `addsession` without `options` registers the virtual session at
/// the backend with a `session` request (`action: "add"`); room members get
/// its join event and a participants update listing it (`inCall: 9`,
/// `virtual: true`); no flags event for flags 0.
async fn int_02_addsession_without_options(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    let i_id = i.session_id().unwrap().to_owned();
    drain(&mut a).await;
    s.backend.clear_requests();

    i.send_with_id(add_session(
        "sip-1",
        json!({"userid": "phone-user", "user": {"displayname": "+49 30 1234"}}),
    ))
    .await;
    let req = s.backend.wait_for_request("session", DEFAULT_TIMEOUT).await;
    assert!(req.checksum_ok);
    assert_eq!(req.path, "/ocs/v2.php/apps/spreed/api/v1/signaling/backend");
    let v_id = req.payload()["sessionid"].as_str().unwrap().to_owned();
    assert!(!v_id.is_empty() && v_id != "sip-1" && v_id != i_id);
    assert_eq!(
        req.body,
        json!({"type": "session", "session": {"version": "1.0", "roomid": "room1", "action": "add",
            "sessionid": v_id, "userid": "phone-user", "user": {"displayname": "+49 30 1234"}}})
    );

    for c in [&mut a, &mut i] {
        let got = drain(c).await;
        assert_eq!(got.len(), 2, "join + participants update: {got:?}");
        assert_eq!(
            got[0],
            json!({"type": "event", "event": {"target": "room", "type": "join", "join": [
                {"sessionid": v_id, "userid": "phone-user", "user": {"displayname": "+49 30 1234"}}]}})
        );
        assert!(is_event(&got[1], "participants", "update"), "{}", got[1]);
        assert_eq!(got[1]["event"]["update"]["roomid"], "room1");
        let v = entry_of(&got[1], &v_id).expect("virtual entry");
        let last_ping = v["lastPing"].as_i64().expect("lastPing");
        assert!((last_ping - now_secs()).abs() <= 5);
        assert_eq!(
            *v,
            json!({"inCall": 9, "sessionId": v_id, "lastPing": last_ping, "virtual": true})
        );
        let ie = entry_of(&got[1], &i_id).expect("internal entry");
        assert_eq!(ie["internal"], true);
        assert_eq!(ie["inCall"], 3);
    }
    // No room request: that is only for sessions with options.
    assert_eq!(s.backend.count("room"), 0);
}

/// INT-02: with `options` the backend gets a `room` join request for the
/// virtual session with `actorid`, `actortype` and `incall: 9`; non-zero
/// flags are announced right after the join.
async fn int_02_addsession_with_options(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    s.backend.clear_requests();

    i.send_with_id(add_session(
        "sip-2",
        json!({"flags": 3, "options": {"actorId": "+4930555", "actorType": "phones"}}),
    ))
    .await;
    let req = s.backend.wait_for_request("room", DEFAULT_TIMEOUT).await;
    assert!(req.checksum_ok);
    let v_id = req.payload()["sessionid"].as_str().unwrap().to_owned();
    assert_eq!(
        req.body,
        json!({"type": "room", "room": {"version": "1.0", "roomid": "room1", "userid": "",
            "sessionid": v_id, "actorid": "+4930555", "actortype": "phones", "incall": 9}})
    );
    let got = drain(&mut a).await;
    assert_eq!(got.len(), 3, "{got:?}");
    assert!(is_join_of(&got[0], &v_id), "{}", got[0]);
    assert_eq!(
        got[0]["event"]["join"][0],
        json!({"sessionid": v_id, "userid": ""})
    );
    assert!(entry_of(&got[1], &v_id).is_some(), "{}", got[1]);
    assert_eq!(
        got[2],
        json!({"type": "event", "event": {"target": "participants", "type": "flags",
            "flags": {"roomid": "room1", "sessionid": v_id, "flags": 3}}})
    );
    assert_eq!(s.backend.count("session"), 0);
}

/// INT-02: failures are reported as `add_failed` (backend error message
/// with options; fixed texts when the backend cannot be reached) and no
/// virtual session appears.
async fn int_02_addsession_failures_are_add_failed(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    s.backend.set_room_handler(|body| {
        if body["room"]["actorid"] == "refused" {
            Reply::error("no_such_room", "The phone may not join.")
        } else if body["room"]["actorid"] == "hangup" {
            Reply::Hangup
        } else {
            Reply::Default
        }
    });
    s.backend.set_session_handler(|_| Reply::Hangup);

    let refused = add_session(
        "sip-1",
        json!({"options": {"actorId": "refused", "actorType": "phones"}}),
    );
    let r = i.request(refused).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(
        r["error"],
        json!({"code": "add_failed", "message": "The phone may not join."})
    );
    let hangup = add_session(
        "sip-2",
        json!({"options": {"actorId": "hangup", "actorType": "phones"}}),
    );
    let r = i.request(hangup).await;
    assert_eq!(
        r["error"],
        json!({"code": "add_failed", "message": "Could not join virtual session."})
    );
    let r = i.request(add_session("sip-3", json!({}))).await;
    assert_eq!(
        r["error"],
        json!({"code": "add_failed", "message": "Could not add virtual session."})
    );
    a.expect_no_message(SHORT).await;
    i.expect_no_message(Duration::from_millis(10)).await;
}

/// INT-02: an answer to the `session` request is not inspected (as
/// upstream): even an error answer adds the virtual session. Any room that
/// exists on the server can be used, also one the internal client is not in.
// Single server only: an `addsession` for a room hosted only on other nodes is ignored (as upstream).
#[tokio::test]
async fn int_02_addsession_session_answer_not_inspected_and_any_existing_room() {
    let s = TestServer::start().await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_client(&s).await;
    s.backend
        .set_session_handler(|_| Reply::error("invalid_request", "nope"));
    i.send_with_id(add_session("sip-1", json!({"userid": "u"})))
        .await;
    let (_, ev) = virtual_join(&mut a).await;
    assert_eq!(ev["event"]["join"][0]["userid"], "u");
    i.expect_no_message(SHORT).await;
}

// ----- INT-03: updatesession ----------------------------------------------------------

/// INT-03: `updatesession` changes a virtual session's flags and emits a
/// flags event only when they changed.
async fn int_03_updatesession_flags(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    i.send_with_id(add_session("sip-1", json!({}))).await;
    let (v_id, _) = virtual_join(&mut a).await;
    drain(&mut a).await;
    drain(&mut i).await;

    let flags = |f: u32| {
        json!({"type": "event", "event": {"target": "participants", "type": "flags",
            "flags": {"roomid": "room1", "sessionid": v_id, "flags": f}}})
    };
    i.send_with_id(update_session("sip-1", 1)).await;
    assert_eq!(a.recv().await, flags(1));
    assert_eq!(i.recv().await, flags(1));
    i.send_with_id(update_session("sip-1", 1)).await;
    a.expect_no_message(SHORT).await;
    i.send_with_id(update_session("sip-1", 4 | 1)).await;
    assert_eq!(a.recv().await, flags(5));
    i.send_with_id(update_session("sip-1", 0)).await;
    assert_eq!(a.recv().await, flags(0));
    // Unknown virtual session: ignored.
    i.send_with_id(update_session("sip-unknown", 2)).await;
    a.expect_no_message(SHORT).await;

    // A later joiner gets the current flags (non-zero only) after the member list.
    i.send_with_id(update_session("sip-1", 2)).await;
    assert_eq!(a.recv().await, flags(2));
    let mut b = s.user("bob").await;
    b.join_room("room1", "talk-b").await;
    b.expect_event("room", "join").await;
    assert_eq!(b.recv().await, flags(2));
}

// ----- INT-04: removesession ------------------------------------------------------------

/// INT-04: `removesession` removes the virtual session (leave event) and
/// tells the backend with a `session` request `action: "remove"`.
async fn int_04_removesession_without_options(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    i.send_with_id(add_session("sip-1", json!({"userid": "phone-user"})))
        .await;
    let (v_id, _) = virtual_join(&mut a).await;
    drain(&mut a).await;
    drain(&mut i).await;
    s.backend.clear_requests();

    i.send_with_id(remove_session("sip-1")).await;
    let got = drain(&mut a).await;
    assert_eq!(
        got,
        vec![
            json!({"type": "event", "event": {"target": "room", "type": "leave", "leave": [v_id]}})
        ]
    );
    let req = s.backend.wait_for_request("session", DEFAULT_TIMEOUT).await;
    assert!(req.checksum_ok);
    assert_eq!(
        req.body,
        json!({"type": "session", "session": {"version": "1.0", "roomid": "room1",
            "action": "remove", "sessionid": v_id}})
    );
    // The session is gone: a second remove does nothing.
    i.send_with_id(remove_session("sip-1")).await;
    tokio::time::sleep(SHORT).await;
    assert_eq!(s.backend.count("session"), 1);
    let got = drain(&mut i).await;
    assert_eq!(got.len(), 1, "only the leave event: {got:?}");
    assert!(is_event(&got[0], "room", "leave"));
}

/// INT-04: with options the backend gets a room `leave` with the actor.
async fn int_04_removesession_with_options(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    i.send_with_id(add_session(
        "sip-1",
        json!({"userid": "phone-user", "options": {"actorId": "+4930555", "actorType": "phones"}}),
    ))
    .await;
    let (v_id, _) = virtual_join(&mut a).await;
    drain(&mut a).await;
    s.backend.clear_requests();

    i.send_with_id(remove_session("sip-1")).await;
    let leave = a.expect_event("room", "leave").await;
    assert_eq!(leave["event"]["leave"], json!([v_id]));
    let req = s
        .backend
        .wait_for(
            |r| r.kind == "room" && r.payload()["action"] == "leave",
            DEFAULT_TIMEOUT,
        )
        .await;
    assert_eq!(
        req.body,
        json!({"type": "room", "room": {"version": "1.0", "roomid": "room1", "action": "leave",
            "userid": "phone-user", "sessionid": v_id, "actorid": "+4930555", "actortype": "phones"}})
    );
}

/// INT-04: backend failures on removal → `remove_failed` (the backend's
/// message for room errors, a fixed text when unreachable); the virtual
/// session is removed from the room anyway.
async fn int_04_removesession_failures_are_remove_failed(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    i.send_with_id(add_session(
        "sip-1",
        json!({"options": {"actorId": "x", "actorType": "phones"}}),
    ))
    .await;
    virtual_join(&mut a).await;
    i.send_with_id(add_session("sip-2", json!({}))).await;
    virtual_join(&mut a).await;
    drain(&mut a).await;
    drain(&mut i).await;
    s.backend.set_room_handler(|body| {
        if body["room"]["action"] == "leave" {
            Reply::error("no_such_room", "Already gone.")
        } else {
            Reply::Default
        }
    });
    s.backend.set_session_handler(|_| Reply::Hangup);

    let r = i.request(remove_session("sip-1")).await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(
        r["error"],
        json!({"code": "remove_failed", "message": "Already gone."})
    );
    let r = i.request(remove_session("sip-2")).await;
    assert_eq!(
        r["error"],
        json!({"code": "remove_failed", "message": "Could not remove virtual session from backend."})
    );
    let got = drain(&mut a).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert!(got.iter().all(|v| is_event(v, "room", "leave")));
}

// ----- INT-05: lifetime and keys -----------------------------------------------------------

/// INT-05: virtual sessions are closed when their owner says bye (leave
/// events and backend removal).
async fn int_05_virtual_sessions_closed_with_owner(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    let i_id = i.session_id().unwrap().to_owned();
    drain(&mut a).await;
    i.send_with_id(add_session("sip-1", json!({}))).await;
    let (v1, _) = virtual_join(&mut a).await;
    i.send_with_id(add_session("sip-2", json!({}))).await;
    let (v2, _) = virtual_join(&mut a).await;
    drain(&mut a).await;
    s.backend.clear_requests();

    i.bye().await;
    let got = drain(&mut a).await;
    let left: Vec<Value> = got
        .iter()
        .filter(|v| is_event(v, "room", "leave"))
        .map(|v| v["event"]["leave"][0].clone())
        .collect();
    assert_eq!(left.len(), 3, "{got:?}");
    for id in [&i_id, &v1, &v2] {
        assert!(left.contains(&json!(id)), "no leave for {id}: {got:?}");
    }
    let removed = s
        .backend
        .wait_for_count("session", 2, DEFAULT_TIMEOUT)
        .await;
    let mut ids: Vec<String> = removed
        .iter()
        .map(|r| {
            assert_eq!(r.payload()["action"], "remove");
            r.payload()["sessionid"].as_str().unwrap().to_owned()
        })
        .collect();
    ids.sort();
    let mut expected = vec![v1, v2];
    expected.sort();
    assert_eq!(ids, expected);
}

/// INT-05: virtual sessions are keyed by owner and client-chosen id: two
/// internal clients may use the same id without touching each other's.
async fn int_05_virtual_session_ids_are_per_owner(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i1 = internal_in_room(&s, "room1").await;
    let mut i2 = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    i1.send_with_id(add_session("sip-1", json!({"userid": "one"})))
        .await;
    let (v1, _) = virtual_join(&mut a).await;
    i2.send_with_id(add_session("sip-1", json!({"userid": "two"})))
        .await;
    let (v2, _) = virtual_join(&mut a).await;
    assert_ne!(v1, v2);
    drain(&mut a).await;

    i2.send_with_id(update_session("sip-1", 2)).await;
    let f = a
        .recv_matching(|v| is_event(v, "participants", "flags"))
        .await;
    assert_eq!(f["event"]["flags"]["sessionid"], v2.as_str());
    i2.send_with_id(remove_session("sip-1")).await;
    let leave = a.expect_event("room", "leave").await;
    assert_eq!(leave["event"]["leave"], json!([v2]));
    a.expect_no_message(SHORT).await;

    // i1's virtual session is still there and reachable.
    a.send_message(recipient_session(&v1), json!({"still": "here"}))
        .await;
    let m = i1.recv_matching(|v| v["type"] == "message").await;
    assert_eq!(m["message"]["recipient"]["sessionid"], "sip-1");
}

// ----- INT-06: ignored internal messages ----------------------------------------------

/// INT-06: internal messages from normal clients, for unknown rooms or
/// unknown virtual sessions are ignored without a reply.
async fn int_06_invalid_internal_messages_are_ignored(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    s.backend.clear_requests();

    a.send_with_id(add_session("sip-1", json!({}))).await;
    a.send_with_id(update_session("sip-1", 1)).await;
    a.send_with_id(remove_session("sip-1")).await;
    let mut other_room = add_session("sip-2", json!({}));
    other_room["internal"]["addsession"]["roomid"] = json!("no-such-room");
    i.send_with_id(other_room).await;
    i.send_with_id(remove_session("sip-unknown")).await;
    i.send_with_id(json!({"type": "internal", "internal": {"type": "whatever"}}))
        .await;
    a.expect_no_message(SHORT).await;
    i.expect_no_message(Duration::from_millis(10)).await;
    assert!(s.backend.requests().is_empty(), "no backend requests");
}

// ----- RTE-06: messages to virtual sessions --------------------------------------------

/// RTE-06: a message to a virtual session's public id goes to the owning
/// internal client with `recipient` = the client-chosen session id.
async fn rte_06_message_to_virtual_session_reaches_owner(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = first_in_room(&s, "alice", "room1", "talk-a").await;
    let a_id = a.session_id().unwrap().to_owned();
    let mut i = internal_in_room(&s, "room1").await;
    let mut other = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    i.send_with_id(add_session("sip-7", json!({}))).await;
    let (v_id, _) = virtual_join(&mut a).await;
    drain(&mut a).await;
    drain(&mut i).await;
    drain(&mut other).await;

    let data = json!({"type": "offer", "payload": {"sdp": "x"}});
    a.send_message(recipient_session(&v_id), data.clone()).await;
    assert_eq!(
        i.recv().await,
        json!({"type": "message", "message": {
            "sender": {"type": "session", "sessionid": a_id, "userid": "alice"},
            "recipient": {"type": "session", "sessionid": "sip-7"},
            "data": data,
        }})
    );
    a.send_control(recipient_session(&v_id), json!({"mute": true}))
        .await;
    let c = i.expect_type("control").await;
    assert_eq!(
        c["control"]["recipient"],
        json!({"type": "session", "sessionid": "sip-7"})
    );
    a.expect_no_message(SHORT).await;
    other.expect_no_message(Duration::from_millis(10)).await;
}

// ----- TRN: transient data ---------------------------------------------------------------

fn tset(key: &str, value: Value) -> Value {
    json!({"type": "transient", "transient": {"type": "set", "key": key, "value": value}})
}

fn tremove(key: &str) -> Value {
    json!({"type": "transient", "transient": {"type": "remove", "key": key}})
}

/// Two legacy users in room1 with all their join events consumed.
async fn two_in_room(s: &TestServer) -> (TestClient, TestClient) {
    let mut a = first_in_room(s, "alice", "room1", "talk-a").await;
    let mut b = s.user("bob").await;
    b.join_room("room1", "talk-b").await;
    drain(&mut b).await;
    drain(&mut a).await;
    (a, b)
}

/// TRN-01: `set` stores a value and notifies (with `oldvalue` once there
/// was one); identical values are ignored; a null or missing value removes
/// the key.
async fn trn_01_set_values(t: Topology) {
    let s = TestServer::start_on(t).await;
    let (mut a, mut b) = two_in_room(&s).await;

    a.send_with_id(tset("foo", json!({"x": 1}))).await;
    let first =
        json!({"type": "transient", "transient": {"type": "set", "key": "foo", "value": {"x": 1}}});
    assert_eq!(a.recv().await, first);
    assert_eq!(b.recv().await, first);

    a.send_with_id(tset("foo", json!({"x": 1}))).await;
    b.send_with_id(tset("foo", json!({"x": 1}))).await;
    a.expect_no_message(SHORT).await;
    b.expect_no_message(Duration::from_millis(10)).await;

    b.send_with_id(tset("foo", json!([1, "two"]))).await;
    let second = json!({"type": "transient", "transient": {"type": "set", "key": "foo",
        "oldvalue": {"x": 1}, "value": [1, "two"]}});
    assert_eq!(a.recv().await, second);
    assert_eq!(b.recv().await, second);

    // Falsy values are values.
    a.send_with_id(tset("flag", json!(false))).await;
    let third =
        json!({"type": "transient", "transient": {"type": "set", "key": "flag", "value": false}});
    assert_eq!(b.recv().await, third);

    a.send_with_id(tset("foo", Value::Null)).await;
    let removed = json!({"type": "transient", "transient": {"type": "remove", "key": "foo", "oldvalue": [1, "two"]}});
    assert_eq!(b.recv().await, removed);
    a.send_with_id(json!({"type": "transient", "transient": {"type": "set", "key": "flag"}}))
        .await;
    assert_eq!(
        b.recv().await,
        json!({"type": "transient", "transient": {"type": "remove", "key": "flag", "oldvalue": false}})
    );
    // Removing via null when absent: nothing.
    a.send_with_id(tset("foo", Value::Null)).await;
    b.expect_no_message(SHORT).await;
}

/// TRN-01 / TRN-02: without the `transient-data` permission `set` and
/// `remove` fail with `not_allowed` and change nothing.
async fn trn_01_not_allowed_without_permission(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_room_handler(|body| {
        let room = &body["room"];
        if room["action"] != "leave" && room["userid"] == "bob" {
            Reply::json(
                json!({"type": "room", "room": {"version": "1.0", "roomid": room["roomid"],
                "properties": {}, "permissions": ["publish-media", "control"]}}),
            )
        } else {
            Reply::Default
        }
    });
    let (mut a, mut b) = two_in_room(&s).await;
    a.send_with_id(tset("k", json!(1))).await;
    a.recv().await;
    b.recv().await;

    for msg in [tset("k", json!(2)), tremove("k")] {
        let id = b.send_with_id(msg).await;
        assert_eq!(
            b.recv().await,
            json!({"id": id, "type": "error", "error": {"code": "not_allowed",
                "message": "Not allowed to update transient data."}})
        );
    }
    a.expect_no_message(SHORT).await;
    // The value is unchanged.
    let mut c = s.user("carol").await;
    c.join_room("room1", "talk-c").await;
    let init = c.recv_matching(|v| v["type"] == "transient").await;
    assert_eq!(init["transient"]["data"], json!({"k": 1}));
}

/// TRN-02: `remove` deletes a key (no-op when absent); unknown types are
/// `ignored`; outside a room → `not_in_room`; a missing key → `invalid_format`.
async fn trn_02_remove_and_errors(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut lonely = s.user("lonely").await;
    for msg in [tset("k", json!(1)), tremove("k")] {
        let id = lonely.send_with_id(msg).await;
        assert_eq!(
            lonely.recv().await,
            json!({"id": id, "type": "error", "error": {"code": "not_in_room", "message": "No room joined yet."}})
        );
    }

    let (mut a, mut b) = two_in_room(&s).await;
    a.send_with_id(tset("k", json!("v"))).await;
    a.recv().await;
    b.recv().await;
    b.send_with_id(tremove("k")).await;
    let removed =
        json!({"type": "transient", "transient": {"type": "remove", "key": "k", "oldvalue": "v"}});
    assert_eq!(a.recv().await, removed);
    assert_eq!(b.recv().await, removed);
    b.send_with_id(tremove("k")).await;
    a.expect_no_message(SHORT).await;
    b.expect_no_message(Duration::from_millis(10)).await;

    let id = a
        .send_with_id(json!({"type": "transient", "transient": {"type": "get", "key": "k"}}))
        .await;
    assert_eq!(
        a.recv().await,
        json!({"id": id, "type": "error", "error": {"code": "ignored", "message": "Unsupported message type."}})
    );
    for msg in [
        json!({"type": "transient", "transient": {"type": "set", "value": 1}}),
        json!({"type": "transient", "transient": {"type": "remove"}}),
        json!({"type": "transient", "transient": {"type": "set", "key": "", "value": 1}}),
    ] {
        let id = a.send_with_id(msg).await;
        let e = a.expect_error("invalid_format").await;
        assert_eq!(e["id"], id.as_str());
    }
    b.expect_no_message(SHORT).await;
}

/// TRN-03: notifications reach every session in the room (setter,
/// users, internal clients) and nobody outside it.
async fn trn_03_notifications_reach_room_members_only(t: Topology) {
    let s = TestServer::start_on(t).await;
    let (mut a, mut b) = two_in_room(&s).await;
    let mut i = internal_in_room(&s, "room1").await;
    drain(&mut a).await;
    drain(&mut b).await;
    let mut elsewhere = first_in_room(&s, "carol", "room2", "talk-c").await;
    let mut nowhere = s.user("alice").await;

    i.send_with_id(tset("k", json!({"deep": {"n": [1, 2]}})))
        .await;
    let ev = json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": {"deep": {"n": [1, 2]}}}});
    for c in [&mut i, &mut a, &mut b] {
        assert_eq!(c.recv().await, ev);
    }
    elsewhere.expect_no_message(SHORT).await;
    nowhere.expect_no_message(Duration::from_millis(10)).await;
    // Data is per room (no `oldvalue` from room1's key); notifications carry no id.
    elsewhere.send_with_id(tset("k", json!(2))).await;
    assert_eq!(
        elsewhere.recv().await,
        json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 2}})
    );
    a.expect_no_message(SHORT).await;
}

/// TRN-04: the `initial` data comes before the member list (upstream
/// sends it while registering the session with the room, before the list
/// of the sessions already there).
async fn trn_04_initial_data_precedes_member_list(t: Topology) {
    let s = TestServer::start_on(t).await;
    let (mut a, _b) = two_in_room(&s).await;
    a.send_with_id(tset("k", json!(1))).await;
    a.recv().await;
    let mut c = s.user("carol").await;
    c.join_room("room1", "talk-c").await;
    let first = c.recv().await;
    assert_eq!(
        first,
        json!({"type": "transient", "transient": {"type": "initial", "data": {"k": 1}}}),
        "expected initial data first"
    );
    let list = c.recv().await;
    assert!(is_event(&list, "room", "join"), "{list}");
}

/// TRN-04: a joiner gets `initial` with all data; nothing when the room has
/// none (any more); data dies with the room.
async fn trn_04_initial_data_on_join(t: Topology) {
    let s = TestServer::start_on(t).await;
    let (mut a, mut b) = two_in_room(&s).await;
    // No data: no initial message for a joiner.
    let mut c = s.user("carol").await;
    c.join_room("room1", "talk-c").await;
    let got = drain(&mut c).await;
    assert!(got.iter().all(|v| v["type"] != "transient"), "{got:?}");
    c.leave_room().await;

    a.send_with_id(tset("one", json!(1))).await;
    a.send_with_id(tset("two", json!({"x": "y"}))).await;
    drain(&mut a).await;
    drain(&mut b).await;
    c.join_room("room1", "talk-c").await;
    let init = c.recv_matching(|v| v["type"] == "transient").await;
    assert_eq!(
        init,
        json!({"type": "transient", "transient": {"type": "initial", "data": {"one": 1, "two": {"x": "y"}}}})
    );
    let rest = drain(&mut c).await;
    assert!(rest.iter().all(|v| v["type"] != "transient"), "{rest:?}");

    // Removed again: a joiner gets nothing.
    a.send_with_id(tremove("one")).await;
    a.send_with_id(tremove("two")).await;
    drain(&mut a).await;
    let mut d = s.user("dave").await;
    d.join_room("room1", "talk-d").await;
    let got = drain(&mut d).await;
    assert!(got.iter().all(|v| v["type"] != "transient"), "{got:?}");

    // Data dies with the room.
    a.send_with_id(tset("three", json!(3))).await;
    drain(&mut a).await;
    for x in [&mut a, &mut b, &mut c, &mut d] {
        x.leave_room().await;
    }
    let mut e = s.user("eve").await;
    e.join_room("room1", "talk-e").await;
    let got = drain(&mut e).await;
    assert!(got.iter().all(|v| v["type"] != "transient"), "{got:?}");
}

both_topologies!(
    int_05_virtual_session_ids_are_per_owner,
    rte_06_message_to_virtual_session_reaches_owner,
    int_01_internal_session_joins_without_backend,
    int_01_internal_session_may_control_and_set_transient_data,
    int_01_internal_sessions_exempt_from_session_limit,
    int_01_internal_sessions_have_no_room_join_timeout,
    int_01_internal_hello_token_checks,
    int_02_addsession_without_options,
    int_02_addsession_with_options,
    int_02_addsession_failures_are_add_failed,
    int_03_updatesession_flags,
    int_04_removesession_without_options,
    int_04_removesession_with_options,
    int_04_removesession_failures_are_remove_failed,
    int_05_virtual_sessions_closed_with_owner,
    int_06_invalid_internal_messages_are_ignored,
    trn_01_set_values,
    trn_01_not_allowed_without_permission,
    trn_02_remove_and_errors,
    trn_03_notifications_reach_room_members_only,
    trn_04_initial_data_precedes_member_list,
    trn_04_initial_data_on_join,
);
