//! Two of our servers sharing one real `nats-server` (issue 7, first step):
//! deliveries between sessions on different nodes. Room *membership* is still
//! per node at this step (join/leave events and participant lists of remote
//! sessions are not shared); only the room subject's fan-out spans nodes.

mod common;

use common::*;
use std::time::Duration;

struct Cluster {
    // Field order: the servers' buses go before the nats-server.
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    backend: FakeBackend,
    _servers: Vec<std::sync::Arc<signaling::Server>>,
    _nats: NatsServer,
}

/// One fake Nextcloud, one nats-server, two signaling servers with the same
/// `[sessions]` keys (so each can decode the other's session ids).
async fn cluster() -> Cluster {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\n", nats.url());
    let (sa, a) = start_server(&config_for(&backend.url(), &extra)).await;
    let (sb, b) = start_server(&config_for(&backend.url(), &extra)).await;
    for s in [&sa, &sb] {
        let bus = s.nats.clone().expect("a NATS bus, not the in-process one");
        tokio::time::timeout(Duration::from_secs(10), bus.wait_connected(true))
            .await
            .expect("connected to NATS");
    }
    Cluster {
        a,
        b,
        backend,
        _servers: vec![sa, sb],
        _nats: nats,
    }
}

impl Cluster {
    async fn user(&self, addr: std::net::SocketAddr, user: &str) -> TestClient {
        let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
        c.hello_user(&self.backend.backend_url(), user).await;
        c
    }
}

fn id_of(c: &TestClient) -> String {
    c.session_id().expect("hello done").to_owned()
}

/// Send `probe` from `from` to `to` until it arrives: the receiving node's
/// NATS subscriptions are asynchronous, so make sure they are active.
async fn until_reachable(from: &mut TestClient, recipient: Value, to: &mut TestClient) {
    for _ in 0..50 {
        from.send_message(recipient.clone(), json!({"probe": true}))
            .await;
        if let Some(m) = to.recv_timeout(Duration::from_millis(200)).await {
            assert_eq!(m["message"]["data"]["probe"], true, "{m}");
            // A late answer to an earlier probe may still come.
            while to.recv_timeout(Duration::from_millis(300)).await.is_some() {}
            return;
        }
    }
    panic!("recipient never reachable");
}

#[tokio::test]
async fn message_to_a_session_on_another_node() {
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    let mut bob = c.user(c.b, "bob").await;
    let bob_id = id_of(&bob);
    let alice_id = id_of(&alice);
    until_reachable(&mut alice, recipient_session(&bob_id), &mut bob).await;

    for i in 0..20 {
        alice
            .send_message(recipient_session(&bob_id), json!({"n": i}))
            .await;
    }
    for i in 0..20 {
        let m = bob.recv().await;
        assert_eq!(
            m,
            json!({"type": "message", "message": {
                "sender": {"type": "session", "sessionid": alice_id, "userid": "alice"},
                "data": {"n": i},
            }})
        );
    }
    // And back.
    bob.send_message(recipient_session(&alice_id), json!({"reply": 1}))
        .await;
    assert_eq!(alice.recv().await["message"]["data"], json!({"reply": 1}));
}

#[tokio::test]
async fn message_to_a_user_on_another_node() {
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    // Two sessions of bob, one per node: both get user messages.
    let mut bob_b = c.user(c.b, "bob").await;
    let mut bob_a = c.user(c.a, "bob").await;
    until_reachable(&mut alice, recipient_user("bob"), &mut bob_b).await;
    while bob_a
        .recv_timeout(Duration::from_millis(100))
        .await
        .is_some()
    {}

    alice
        .send_message(recipient_user("bob"), json!({"to": "bob"}))
        .await;
    for bob in [&mut bob_b, &mut bob_a] {
        let m = bob.recv().await;
        assert_eq!(m["message"]["sender"]["userid"], "alice", "{m}");
        assert_eq!(m["message"]["data"], json!({"to": "bob"}));
    }
}

/// The room subject spans the nodes, so a room message reaches members on
/// both. Join events and participant lists stay per node at this step.
#[tokio::test]
async fn room_message_reaches_members_on_both_nodes() {
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    alice.join_room("room1", "talk-a").await;
    let mut bob = c.user(c.b, "bob").await;
    bob.join_room("room1", "talk-b").await;
    let mut carol = c.user(c.a, "carol").await;
    carol.join_room("room1", "talk-c").await;
    for x in [&mut alice, &mut bob, &mut carol] {
        while x.recv_timeout(Duration::from_millis(300)).await.is_some() {}
    }

    alice
        .send_message(recipient_room(), json!({"hello": "room"}))
        .await;
    let alice_id = id_of(&alice);
    for x in [&mut bob, &mut carol] {
        let m = x.recv_matching(|m| m["type"] == "message").await;
        assert_eq!(
            m["message"]["sender"],
            json!({"type": "room", "sessionid": alice_id, "userid": "alice"})
        );
        assert_eq!(m["message"]["data"], json!({"hello": "room"}));
    }
    // Not looped back to the sender, even though it went through NATS.
    alice.expect_no_message(SHORT).await;
}
