//! Issue 4, federation (upstream 2.0.0, #776; federation.go at HEAD): a join
//! with `federation` makes our server open its own connection to the remote
//! signaling server (hello v2, client type `federation`, the remote token)
//! and relay the session both ways, with the remote session and room ids
//! rewritten to the local ones. Two of our servers, each with its own fake
//! Nextcloud.
// Test bodies are plain functions run by `both_topologies!` (local and
// remote side are both clusters in the cluster variant, except where noted).
#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use std::time::Duration;

/// The remote server: accepts federated hellos signed with the EC key.
async fn remote_server(t: Topology) -> TestServer {
    let s = TestServer::start_on(t).await;
    s.backend.set_token_key(TokenKey::Ec.public_pem());
    s.backend.add_feature("federation-v2");
    s
}

fn federated_join(local_room: &str, remote: &TestServer, remote_room: &str, token: &str) -> Value {
    json!({"type": "room", "room": {"roomid": local_room, "sessionid": "talk-fed",
        "federation": {"signaling": remote.base(), "url": remote.backend.backend_url(),
            "roomid": remote_room, "token": token}}})
}

/// alice on the local server, joined to `remote-room` of the remote server
/// as `local-room`. Returns her client and her local session id.
async fn join_federated(local: &TestServer, remote: &TestServer) -> (TestClient, String) {
    let mut a = local.user("alice").await;
    let id = a.session_id().expect("session id").to_owned();
    let token = remote.backend.token(TokenKey::Ec, "alice@local");
    let r = a
        .request(federated_join("local-room", remote, "remote-room", &token))
        .await;
    assert_eq!(r["type"], "room", "{r}");
    assert_eq!(r["room"]["roomid"], "local-room", "room id rewritten: {r}");
    let ev = a.expect_event("room", "join").await;
    assert_eq!(ev["event"]["join"][0]["sessionid"], id.as_str(), "{ev}");
    (a, id)
}

async fn federated_join_relays_both_ways(t: Topology) {
    let local = TestServer::start_on(t).await;
    let remote = remote_server(t).await;
    let (mut a, a_id) = join_federated(&local, &remote).await;
    // The remote Nextcloud saw the join of the federated session.
    let join = remote
        .backend
        .wait_for_request("room", Duration::from_secs(5))
        .await;
    assert_eq!(
        join.payload()["roomid"],
        "remote-room",
        "{:?}",
        join.payload()
    );
    assert_eq!(join.payload()["sessionid"], "talk-fed");
    assert_eq!(local.backend.count("room"), 0, "no local room join");

    // bob on the remote server sees alice under her remote id. (In a
    // cluster bob is on another node than alice's federated connection.)
    let _ = remote.next_addr();
    let mut b = remote.user("bob").await;
    let b_id = b.session_id().unwrap().to_owned();
    b.join_room("remote-room", "talk-b").await;
    let list = b.expect_event("room", "join").await;
    let a_remote = list["event"]["join"][0]["sessionid"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_ne!(a_remote, a_id);
    let ev = a.expect_event("room", "join").await;
    assert_eq!(ev["event"]["join"][0]["sessionid"], b_id.as_str());
    assert_eq!(ev["event"]["join"][0]["userid"], "bob");

    // remote -> local, addressed to alice's remote id: she sees her local id.
    b.send_message(
        recipient_session(&a_remote),
        json!({"type": "offer", "from": b_id, "to": a_remote}),
    )
    .await;
    let m = a.recv_matching(|v| v["type"] == "message").await;
    assert_eq!(m["message"]["sender"]["sessionid"], b_id.as_str(), "{m}");
    assert_eq!(m["message"]["data"]["to"], a_id.as_str(), "{m}");

    // local -> remote.
    a.send_message(recipient_session(&b_id), json!({"hi": "bob"}))
        .await;
    let m = b.recv_matching(|v| v["type"] == "message").await;
    assert_eq!(
        m["message"]["sender"]["sessionid"],
        a_remote.as_str(),
        "{m}"
    );
    assert_eq!(m["message"]["data"], json!({"hi": "bob"}));

    // Room messages and remote backend events reach alice with the local room id.
    b.send_message(recipient_room(), json!({"to": "room"}))
        .await;
    let m = a.recv_matching(|v| v["type"] == "message").await;
    assert_eq!(m["message"]["data"], json!({"to": "room"}));
    remote
        .backend_request("remote-room", json!({"type": "message", "message": {"data": {"type": "chat", "chat": {"refresh": true}}}}))
        .await;
    let ev = a
        .recv_matching(|v| v["type"] == "event" && v["event"]["type"] == "message")
        .await;
    assert_eq!(ev["event"]["message"]["roomid"], "local-room", "{ev}");

    // Leaving: the remote confirms, bob sees alice leave.
    let r = a.leave_room().await;
    assert_eq!(r["type"], "room", "{r}");
    assert_eq!(r["room"]["roomid"], "", "{r}");
    let ev = b
        .recv_matching(|v| v["type"] == "event" && v["event"]["type"] == "leave")
        .await;
    assert_eq!(ev["event"]["leave"][0], a_remote.as_str());
}

/// Pings for the federated session go to the local Nextcloud (combined
/// per Nextcloud: the fake one announces `session-ping-limit`).
async fn federated_session_pinged_locally(t: Topology) {
    let local = TestServer::start_on(t).await;
    let remote = remote_server(t).await;
    let (_a, _) = join_federated(&local, &remote).await;
    let ping = local
        .backend
        .wait_for_request("ping", Duration::from_secs(15))
        .await;
    let p = ping.payload();
    assert_eq!(p["entries"][0]["sessionid"], "talk-fed", "{p}");
    assert_eq!(p["entries"][0]["userid"], "alice", "{p}");
}

/// The remote server goes away: `federation_interrupted`; once it is back
/// (a new process, so the remote session is gone) `federation_resumed` with
/// `resumed: false`, and the room is joined again.
async fn remote_restart_interrupts_and_resumes(t: Topology) {
    let local = TestServer::start_on(t).await;
    // The remote is one process that is stopped and started again.
    let remote = remote_server(Topology::Single).await;
    let (mut a, _) = join_federated(&local, &remote).await;
    let addr = remote.addr;
    remote.server.stop(Duration::from_secs(2)).await;
    let ev = a
        .recv_matching(|v| v["type"] == "event" && v["event"]["type"] != "leave")
        .await;
    assert_eq!(ev["event"]["type"], "federation_interrupted", "{ev}");
    assert_eq!(ev["event"]["target"], "room");

    let text = config_for(&remote.backend.url(), &format!("[http]\nlisten = {addr}\n"));
    let (again, _) = start_server(&text).await;
    let ev = a
        .recv_matching(|v| v["type"] == "event" && v["event"]["type"] == "federation_resumed")
        .await;
    assert_eq!(ev["event"]["resumed"], false, "{ev}");
    let r = a.expect_type("room").await;
    assert_eq!(r["room"]["roomid"], "local-room", "{r}");
    again.stop(Duration::from_secs(1)).await;
}

/// Nothing listens at the signaling URL: `federation_error` with details.
async fn unreachable_remote_is_federation_error(t: Topology) {
    let local = TestServer::start_on(t).await;
    let mut a = local.user("alice").await;
    let r = a
        .request(
            json!({"type": "room", "room": {"roomid": "r", "sessionid": "t",
            "federation": {"signaling": "http://127.0.0.1:1/", "url": "http://127.0.0.1:1/",
                "roomid": "x", "token": "t"}}}),
        )
        .await;
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], "federation_error", "{r}");
    assert_eq!(r["error"]["details"]["code"], "network_error", "{r}");
}

/// A remote whose Nextcloud does not do federation, and a bad token.
async fn remote_refusals_reach_the_client(t: Topology) {
    let local = TestServer::start_on(t).await;
    let remote = TestServer::start_on(t).await;
    remote.backend.set_token_key(TokenKey::Ec.public_pem());
    let mut a = local.user("alice").await;
    let token = remote.backend.token(TokenKey::Ec, "alice@local");
    let r = a.request(federated_join("r", &remote, "x", &token)).await;
    assert_eq!(r["error"]["code"], "federation_unsupported", "{r}");

    // Capabilities are cached: a fresh remote that does support it.
    let remote = remote_server(t).await;
    let r = a
        .request(federated_join("r", &remote, "x", "garbage"))
        .await;
    assert_eq!(r["error"]["code"], "invalid_token", "{r}");
}

both_topologies!(
    federated_join_relays_both_ways,
    federated_session_pinged_locally,
    remote_restart_interrupts_and_resumes,
    unreachable_remote_is_federation_error,
    remote_refusals_reach_the_client,
);
