//! Issue 4, internal clients and virtual sessions after the reference
//! version: `internal-incall` (upstream 1.1.0, #421), virtual sessions hung
//! up when disinvited (1.2.2, #610), transient data TTL (1.2.0, #575) and
//! dial-out (1.2.0, #563; several bridges 2.0.4, #1005).
// Test bodies are plain functions run by `both_topologies!`.
mod common;
use common::*;
use std::time::Duration;

async fn drain(c: &mut TestClient) {
    while c.recv_timeout(SHORT).await.is_some() {}
}

/// An internal client announcing `features` (on the next node in turn), and
/// its session id.
async fn internal_with_id(s: &TestServer, features: &[&str]) -> (TestClient, String) {
    internal_client(s.next_addr(), &s.backend.url(), features).await
}

async fn internal_with(s: &TestServer, features: &[&str]) -> TestClient {
    internal_with_id(s, features).await.0
}

/// Upstream 1.1.0 (#421): an internal client with `internal-incall` starts
/// out of the call and sets its own flags with `internal/incall`; members
/// see them (and its features) in participants updates.
async fn internal_client_sets_its_own_incall_flags(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    drain(&mut a).await;
    let (mut i, i_id) = internal_with_id(&s, &["internal-incall"]).await;
    i.join_room("room1", "").await;
    let users = participants_of(&mut a, &i_id).await;
    assert_eq!(users["inCall"], 0, "{users}");
    assert_eq!(users["internal"], true);
    assert_eq!(users["features"], json!(["internal-incall"]));

    i.send_json(
        &json!({"type": "internal", "internal": {"type": "incall", "incall": {"incall": 3}}}),
    )
    .await;
    let users = participants_of(&mut a, &i_id).await;
    assert_eq!(users["inCall"], 3, "{users}");
    // The same value again changes nothing.
    drain(&mut a).await;
    i.send_json(
        &json!({"type": "internal", "internal": {"type": "incall", "incall": {"incall": 3}}}),
    )
    .await;
    a.expect_no_message(SHORT).await;
}

/// The entry of session `sid` in the next participants update.
async fn participants_of(c: &mut TestClient, sid: &str) -> Value {
    let want = sid.to_owned();
    let ev = c
        .recv_matching(move |v| {
            v["type"] == "event"
                && v["event"]["target"] == "participants"
                && v["event"]["type"] == "update"
                && v["event"]["update"]["users"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|e| e["sessionId"] == want.as_str()))
        })
        .await;
    ev["event"]["update"]["users"]
        .as_array()
        .and_then(|u| u.iter().find(|e| e["sessionId"] == sid).cloned())
        .unwrap_or(Value::Null)
}

/// Upstream 1.1.0 (#421): virtual sessions take `incall` from addsession and
/// updatesession.
async fn virtual_session_incall_flags(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    let mut i = internal_with(&s, &["internal-incall"]).await;
    i.join_room("room1", "").await;
    drain(&mut a).await;
    i.send_json(
        &json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "sip-1", "roomid": "room1", "userid": "phone", "incall": 1,
        }}}),
    )
    .await;
    let add = s.backend.wait_for_request("session", DEFAULT_TIMEOUT).await;
    let v_id = add.payload()["sessionid"].as_str().expect("id").to_owned();
    let entry = participants_of(&mut a, &v_id).await;
    assert_eq!(entry["inCall"], 1, "{entry}");
    assert_eq!(entry["virtual"], true);
    i.send_json(
        &json!({"type": "internal", "internal": {"type": "updatesession", "updatesession": {
            "sessionid": "sip-1", "roomid": "room1", "incall": 7,
        }}}),
    )
    .await;
    let entry = participants_of(&mut a, &v_id).await;
    assert_eq!(entry["inCall"], 7, "{entry}");
}

/// Upstream 1.2.2 (#610): a virtual session disinvited from its room makes
/// its internal client get a `hangup` control message for that session.
async fn disinvited_virtual_session_is_hung_up(t: Topology) {
    let s = TestServer::start_on(t).await;
    let _a = s.user_in_room("alice", "room1", "talk-a").await;
    let mut i = internal_with(&s, &[]).await;
    i.join_room("room1", "").await;
    i.send_json(
        &json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "sip-1", "roomid": "room1", "userid": "",
            "options": {"actorId": "phone-1", "actorType": "phones"},
        }}}),
    )
    .await;
    let join = s
        .backend
        .wait_for(
            |r| r.kind == "room" && r.payload()["actorid"] == "phone-1",
            DEFAULT_TIMEOUT,
        )
        .await;
    let v_id = join.payload()["sessionid"].as_str().expect("id").to_owned();
    drain(&mut i).await;
    let r = s
        .backend_request(
            "room1",
            json!({"type": "disinvite", "disinvite": {"userids": [], "sessionids": [v_id], "alluserids": []}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let m = i.expect_type("control").await;
    assert_eq!(m["control"]["recipient"]["sessionid"], "sip-1", "{m}");
    assert_eq!(
        m["control"]["data"],
        json!({"type": "hangup", "hangup": {"reason": "disinvited"}})
    );
}

/// Upstream 1.2.0 (#575): an entry set with `ttl` (nanoseconds) is removed
/// once it runs out.
async fn transient_entry_with_ttl_expires(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    drain(&mut a).await;
    drain(&mut b).await;
    a.send_json(&json!({"type": "transient", "transient": {
        "type": "set", "key": "status", "value": "ringing", "ttl": 500_000_000u64,
    }}))
    .await;
    let set = b.expect_type("transient").await;
    assert_eq!(set["transient"]["type"], "set");
    let removed = b
        .recv_timeout(Duration::from_secs(3))
        .await
        .expect("removal");
    assert_eq!(removed["transient"]["type"], "remove", "{removed}");
    assert_eq!(removed["transient"]["key"], "status");
    // Without a TTL an entry stays.
    a.send_json(
        &json!({"type": "transient", "transient": {"type": "set", "key": "k", "value": 1}}),
    )
    .await;
    b.expect_type("transient").await;
    b.expect_no_message(Duration::from_millis(1500)).await;
}

// ----- dial-out --------------------------------------------------------------

fn dialout_request(number: &str) -> Value {
    json!({"type": "dialout", "dialout": {"number": number, "options": {"actorId": "a1"}}})
}

/// A bridge that answers the next dial-out request with `answer`.
async fn answer_dialout(bridge: &mut TestClient, answer: Value) -> Value {
    let req = bridge.expect_type("internal").await;
    let id = req["id"].as_str().expect("request id").to_owned();
    bridge
        .send_json(&json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout": answer}}))
        .await;
    req
}

/// Upstream 1.2.0 (#563): the request reaches a bridge with `start-dialout`,
/// which answers with the call id; Nextcloud gets it back.
async fn dialout_is_forwarded_to_a_bridge(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut bridge = internal_with(&s, &["start-dialout"]).await;
    let (resp, req) = tokio::join!(
        s.backend_request("12345", dialout_request("+491234567")),
        answer_dialout(
            &mut bridge,
            json!({"type": "status", "status": {"callid": "call-1", "status": "accepted"}}),
        ),
    );
    assert_eq!(req["internal"]["type"], "dialout", "{req}");
    assert_eq!(
        req["internal"]["dialout"],
        json!({"roomid": "12345", "backend": s.backend.url(),
            "request": {"number": "+491234567", "options": {"actorId": "a1"}}})
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"type": "dialout", "dialout": {"callid": "call-1"}})
    );
}

/// Upstream 2.0.4 (#1005): with several bridges, one that refuses is skipped.
async fn dialout_tries_the_next_bridge(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut b1 = internal_with(&s, &["start-dialout"]).await;
    let mut b2 = internal_with(&s, &["start-dialout"]).await;
    let _other = internal_with(&s, &[]).await;
    let refuse = json!({"type": "error", "error": {"code": "busy", "message": "Busy."}});
    let accept = json!({"type": "status", "status": {"callid": "call-2", "status": "accepted"}});
    let answers = async {
        // Whichever bridge is asked first refuses, the second accepts.
        tokio::select! {
            r = b1.expect_type("internal") => {
                let id = r["id"].as_str().unwrap_or_default().to_owned();
                b1.send_json(&json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout": refuse}})).await;
                answer_dialout(&mut b2, accept).await;
            }
            r = b2.expect_type("internal") => {
                let id = r["id"].as_str().unwrap_or_default().to_owned();
                b2.send_json(&json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout": refuse}})).await;
                answer_dialout(&mut b1, accept).await;
            }
        }
    };
    let (resp, _) = tokio::join!(
        s.backend_request("12345", dialout_request("+491234567")),
        answers
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.json()["dialout"]["callid"], "call-2");
}

/// A bridge inside a room is no dial-out candidate: with no other bridge
/// the request is answered 404 `no_client_available` at once instead of
/// waiting for the bridge's answer that never comes.
async fn dialout_skips_a_bridge_in_a_room(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut bridge = internal_with(&s, &["start-dialout"]).await;
    let r = bridge
        .request(json!({"type": "room", "room": {"roomid": "12345", "sessionid": ""}}))
        .await;
    assert_eq!(r["room"]["roomid"], "12345", "{r}");
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(5),
        s.backend_request("12345", dialout_request("+491234567")),
    )
    .await
    .expect("answered without waiting for the bridge");
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["dialout"]["error"]["code"], "no_client_available");
    assert!(started.elapsed() < Duration::from_secs(5));
    // The bridge was not asked (it only hears about its own join).
    while let Some(m) = bridge.recv_timeout(Duration::from_millis(300)).await {
        assert_ne!(m["type"], "internal", "bridge in a room was asked: {m}");
    }
}

/// Errors: no bridge (404), a bad number or room id (400), every bridge
/// refusing (502 with the bridge's error).
async fn dialout_errors(t: Topology) {
    let s = TestServer::start_on(t).await;
    let r = s
        .backend_request("12345", dialout_request("+491234567"))
        .await;
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["dialout"]["error"]["code"], "no_client_available");
    let r = s.backend_request("12345", dialout_request("0049123")).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["dialout"]["error"]["code"], "invalid_number");
    let r = s.backend_request("12345", dialout_request("")).await;
    assert_eq!(r.json()["dialout"]["error"]["code"], "number_missing");
    let r = s
        .backend_request("abc", dialout_request("+491234567"))
        .await;
    assert_eq!(r.json()["dialout"]["error"]["code"], "invalid_roomid");

    let mut bridge = internal_with(&s, &["start-dialout"]).await;
    let (resp, _) = tokio::join!(
        s.backend_request("12345", dialout_request("+491234567")),
        answer_dialout(
            &mut bridge,
            json!({"type": "error", "error": {"code": "no_trunk", "message": "No SIP trunk."}}),
        ),
    );
    assert_eq!(resp.status, 502);
    assert_eq!(
        resp.json()["dialout"]["error"],
        json!({"code": "no_trunk", "message": "No SIP trunk."})
    );
}

both_topologies!(
    internal_client_sets_its_own_incall_flags,
    virtual_session_incall_flags,
    disinvited_virtual_session_is_hung_up,
    transient_entry_with_ttl_expires,
    dialout_is_forwarded_to_a_bridge,
    dialout_tries_the_next_bridge,
    dialout_skips_a_bridge_in_a_room,
    dialout_errors,
);
