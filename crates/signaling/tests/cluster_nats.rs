//! Our servers sharing one real `nats-server` (issue 7): deliveries between
//! sessions on different nodes in each sender's order, room membership
//! across nodes (room presence: a joiner learns about members on other
//! nodes, internal members are listed everywhere, the members of a node that
//! dies leave), backend requests at any node, transient data, the session
//! limit of the whole cluster, resume on another node (the connection is
//! relayed to the session's node, nothing lost when either side dies) and
//! dial-out to a bridge on another node. Some nodes are real processes that
//! get killed.

mod common;

use common::*;
use std::time::Duration;

struct Cluster {
    // Field order: the servers' buses go before the nats-server.
    a: std::net::SocketAddr,
    b: std::net::SocketAddr,
    backend: FakeBackend,
    nats_url: String,
    servers: Vec<std::sync::Arc<signaling::Server>>,
    nats: NatsServer,
}

/// One fake Nextcloud, one nats-server, two signaling servers with the same
/// `[sessions]` keys (so each can decode the other's session ids).
async fn cluster() -> Cluster {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
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
        nats_url: nats.url(),
        servers: vec![sa, sb],
        nats,
    }
}

impl Cluster {
    /// Both servers' NATS buses, to wait for their connection state.
    fn buses(&self) -> Vec<std::sync::Arc<hub::bus::nats::NatsBus>> {
        self.servers
            .iter()
            .map(|s| s.nats.clone().expect("a NATS bus"))
            .collect()
    }

    /// A user with a session at `addr` (not in a room), patient enough for
    /// NATS outages.
    async fn patient_user(&self, addr: std::net::SocketAddr, name: &str) -> TestClient {
        self.user(addr, name)
            .await
            .with_timeout(Duration::from_secs(20))
    }

    /// alice on node A and bob on node B in `room1`, each told about both
    /// (their join events read).
    async fn pair_in_room(&self) -> (TestClient, TestClient, String, String) {
        let mut alice = self.user(self.a, "alice").await;
        alice.join_room("room1", "talk-a").await;
        let mut bob = self.user(self.b, "bob").await;
        bob.join_room("room1", "talk-b").await;
        let (alice_id, bob_id) = (id_of(&alice), id_of(&bob));
        joined_until(&mut bob, &[&alice_id, &bob_id]).await;
        joined_until(&mut alice, &[&alice_id, &bob_id]).await;
        (alice, bob, alice_id, bob_id)
    }

    /// An internal client with `features` at `addr`, and its session id.
    async fn internal(
        &self,
        addr: std::net::SocketAddr,
        features: &[&str],
    ) -> (TestClient, String) {
        internal_client(addr, &self.backend.url(), features).await
    }

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

/// Session ids listed by the room `join` events `c` receives until `want`
/// are all there (or the timeout).
async fn joined_until(c: &mut TestClient, want: &[&str]) -> std::collections::BTreeSet<String> {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !want.iter().all(|w| seen.contains(*w)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(m) = c.recv_timeout(left).await else {
            panic!("join events so far: {seen:?}, want {want:?}");
        };
        if m["type"] == "event" && m["event"]["target"] == "room" && m["event"]["type"] == "join" {
            for e in m["event"]["join"].as_array().unwrap_or(&Vec::new()) {
                assert!(
                    seen.insert(e["sessionid"].as_str().unwrap_or_default().to_owned()),
                    "listed twice: {m}"
                );
            }
        }
    }
    seen
}

async fn left_until(c: &mut TestClient, who: &str) {
    let m = c
        .recv_matching(|m| {
            m["type"] == "event"
                && m["event"]["type"] == "leave"
                && m["event"]["leave"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x == who))
        })
        .await;
    assert_eq!(m["event"]["target"], "room", "{m}");
}

/// A joiner on one node is told about the members on the other (their
/// node answers its presence request); a later joiner gets them at once;
/// the last member leaving a node is seen leaving on the other.
#[tokio::test]
async fn room_members_on_other_nodes_are_announced() {
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    alice.join_room("room1", "talk-a").await;
    let alice_id = id_of(&alice);
    let mut bob = c.user(c.b, "bob").await;
    bob.join_room("room1", "talk-b").await;
    let bob_id = id_of(&bob);
    let seen = joined_until(&mut bob, &[&alice_id, &bob_id]).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    // alice hears of bob through the room subject.
    joined_until(&mut alice, &[&bob_id]).await;

    let mut carol = c.user(c.b, "carol").await;
    carol.join_room("room1", "talk-c").await;
    let carol_id = id_of(&carol);
    let seen = joined_until(&mut carol, &[&alice_id, &bob_id, &carol_id]).await;
    assert_eq!(seen.len(), 3, "{seen:?}");

    // alice is node A's last member: B's members still see her leave.
    alice.leave_room().await;
    left_until(&mut bob, &alice_id).await;
    left_until(&mut carol, &alice_id).await;
    // ... and a newcomer on B is not told about her any more.
    let mut dave = c.user(c.b, "dave").await;
    dave.join_room("room1", "talk-d").await;
    let dave_id = id_of(&dave);
    let seen = joined_until(&mut dave, &[&bob_id, &carol_id, &dave_id]).await;
    assert!(!seen.contains(&alice_id), "{seen:?}");
    dave.expect_no_message(Duration::from_millis(1500)).await;
}

/// A real `signaling` process with configuration `text` (its listen
/// address replaced by a free port), to be killed by a test.
async fn spawn_node(dir: &TempDir, text: &str) -> (ChildGuard, u16) {
    let port = free_port();
    let config = dir.join(&format!("server-{port}.conf"));
    std::fs::write(
        &config,
        text.replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .expect("config");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_signaling"));
    cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
    let mut node = ChildGuard::spawn(
        "signaling",
        &mut cmd,
        Some(&dir.join(&format!("log-{port}"))),
    )
    .expect("spawn");
    wait_for_port(
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(10),
        Some(&mut node),
    )
    .await
    .expect("node listens");
    (node, port)
}

/// Node failure: a real `signaling` process is killed (SIGKILL, no leave
/// sent); within three presence intervals its member leaves the room for
/// the members on the surviving node, and no ghost is announced later.
#[tokio::test]
async fn members_of_a_killed_node_leave_the_room() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
    let dir = TempDir::new("cluster-kill").expect("dir");
    let (mut node_a, port) = spawn_node(&dir, &config_for(&backend.url(), &extra)).await;
    let (sb, b) = start_server(&config_for(&backend.url(), &extra)).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        sb.nats.clone().expect("NATS bus").wait_connected(true),
    )
    .await
    .expect("node B connected");

    let mut alice = TestClient::connect(&format!("ws://127.0.0.1:{port}/spreed"))
        .await
        .skip("welcome");
    alice.hello_user(&backend.backend_url(), "alice").await;
    alice.join_room("room1", "talk-a").await;
    let alice_id = id_of(&alice);
    let mut bob = TestClient::connect(&spreed_url(b)).await.skip("welcome");
    bob.hello_user(&backend.backend_url(), "bob").await;
    bob.join_room("room1", "talk-b").await;
    let bob_id = id_of(&bob);
    joined_until(&mut bob, &[&alice_id, &bob_id]).await;

    let killed = std::time::Instant::now();
    node_a.kill();
    let mut bob = bob.with_timeout(Duration::from_secs(10));
    left_until(&mut bob, &alice_id).await;
    let took = killed.elapsed();
    assert!(took < Duration::from_secs(6), "left after {took:?}");
    // Nothing more: no ghost comes back.
    bob.expect_no_message(Duration::from_secs(3)).await;
    drop(sb);
}

/// Backend requests with Talk session ids reach any node (BAPI-13 across
/// the cluster): each node translates them, also for members on other
/// nodes, and tells only its own members, so everyone gets exactly one
/// participants update listing both sessions by their signaling ids —
/// whichever node Nextcloud asked.
#[tokio::test]
async fn incall_request_to_any_node_reaches_everyone_once() {
    let c = cluster().await;
    let (mut alice, mut bob, alice_id, bob_id) = c.pair_in_room().await;
    for (n, node) in [c.a, c.b].into_iter().enumerate() {
        let flags = 3 + 4 * n as i64;
        let r = c
            .backend
            .send_room_request(
                &format!("http://{node}/"),
                "room1",
                &json!({"type": "incall", "incall": {"incall": flags,
                    "changed": [{"sessionId": "talk-a", "inCall": flags}, {"sessionId": "talk-b", "inCall": flags}],
                    "users": [{"sessionId": "talk-a", "inCall": flags}, {"sessionId": "talk-b", "inCall": flags}]}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        for x in [&mut alice, &mut bob] {
            let ev = x
                .recv_matching(|v| v["type"] == "event" && v["event"]["target"] == "participants")
                .await;
            let mut ids: Vec<&str> = ev["event"]["update"]["users"]
                .as_array()
                .expect("users")
                .iter()
                .map(|u| {
                    assert_eq!(u["inCall"], flags, "{ev}");
                    u["sessionId"].as_str().unwrap_or_default()
                })
                .collect();
            ids.sort();
            let mut want = vec![alice_id.as_str(), bob_id.as_str()];
            want.sort();
            assert_eq!(ids, want, "{ev}");
            // Exactly once.
            x.expect_no_message(Duration::from_millis(500)).await;
        }
    }
}

/// Transient data spans the nodes: a node that starts hosting the room
/// learns what was set before (from the other nodes' answers), later changes
/// travel on the room subject, and a newcomer's `initial` data on either
/// node has everything.
#[tokio::test]
async fn transient_data_is_shared_by_the_nodes() {
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    alice.join_room("room1", "talk-a").await;
    let set = |key: &str, value: i64| json!({"type": "transient", "transient": {"type": "set", "key": key, "value": value}});
    alice.send_json(&set("x", 1)).await;
    alice
        .recv_matching(|m| m["type"] == "transient" && m["transient"]["key"] == "x")
        .await;

    // The first joiner on B learns the room from A before it is told who
    // and what is there: `initial` data, as on one server.
    let mut bob = c.user(c.b, "bob").await;
    bob.join_room("room1", "talk-b").await;
    let m = bob.recv_matching(|m| m["type"] == "transient").await;
    assert_eq!(m["transient"]["type"], "initial", "{m}");
    assert_eq!(m["transient"]["data"], json!({"x": 1}), "{m}");

    bob.send_json(&set("y", 2)).await;
    let m = alice
        .recv_matching(|m| m["type"] == "transient" && m["transient"]["key"] == "y")
        .await;
    assert_eq!(m["transient"]["type"], "set", "{m}");
    bob.recv_matching(|m| m["type"] == "transient" && m["transient"]["key"] == "y")
        .await;

    for node in [c.a, c.b] {
        let mut carol = c.user(node, "carol").await;
        carol.join_room("room1", &format!("talk-c-{node}")).await;
        let m = carol
            .recv_matching(|m| m["type"] == "transient" && m["transient"]["type"] == "initial")
            .await;
        assert_eq!(m["transient"]["data"], json!({"x": 1, "y": 2}), "{m}");
        carol.leave_room().await;
    }
}

/// The cluster heals after a NATS outage longer than three presence
/// intervals: each side saw the other's members leave meanwhile (the other
/// server might have died) and sees them join again once the presence
/// flows; messages between the servers work again.
#[tokio::test]
async fn membership_heals_after_a_nats_outage() {
    let mut c = cluster().await;
    let buses = c.buses();
    let mut alice = c.patient_user(c.a, "alice").await;
    alice.join_room("room1", "talk-alice").await;
    let mut bob = c.patient_user(c.b, "bob").await;
    bob.join_room("room1", "talk-bob").await;
    let (alice_id, bob_id) = (id_of(&alice), id_of(&bob));
    joined_until(&mut bob, &[&alice_id, &bob_id]).await;
    joined_until(&mut alice, &[&bob_id]).await;

    c.nats.stop();
    left_until(&mut bob, &alice_id).await;
    left_until(&mut alice, &bob_id).await;
    c.nats.restart().await.expect("nats-server restarts");
    for bus in &buses {
        tokio::time::timeout(Duration::from_secs(20), bus.wait_connected(true))
            .await
            .expect("reconnected");
    }
    joined_until(&mut bob, &[&alice_id]).await;
    joined_until(&mut alice, &[&bob_id]).await;
    until_reachable(&mut alice, recipient_session(&bob_id), &mut bob).await;
}

/// Three servers, one member on each: every member is told about the two
/// others, a room message reaches both others exactly once, and a member
/// leaving is seen by both.
#[tokio::test]
async fn three_nodes_share_one_room() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
    let mut servers = Vec::new();
    let mut clients = Vec::new();
    for name in ["n0", "n1", "n2"] {
        let (s, addr) = start_server(&config_for(&backend.url(), &extra)).await;
        tokio::time::timeout(
            Duration::from_secs(10),
            s.nats.clone().expect("bus").wait_connected(true),
        )
        .await
        .expect("connected");
        let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
        c.hello_user(&backend.backend_url(), name).await;
        c.join_room("room1", &format!("talk-{name}")).await;
        servers.push(s);
        clients.push(c);
    }
    let ids: Vec<String> = clients.iter().map(id_of).collect();
    let all: Vec<&str> = ids.iter().map(String::as_str).collect();
    for c in clients.iter_mut() {
        joined_until(c, &all).await;
    }
    for c in clients.iter_mut() {
        while c.recv_timeout(Duration::from_millis(300)).await.is_some() {}
    }
    clients[0]
        .send_message(recipient_room(), json!({"from": "n0"}))
        .await;
    for c in clients[1..].iter_mut() {
        let m = c.recv_matching(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"], json!({"from": "n0"}), "{m}");
        c.expect_no_message(Duration::from_millis(300)).await;
    }
    clients[2].leave_room().await;
    for c in clients[..2].iter_mut() {
        left_until(c, &ids[2]).await;
    }
    drop(servers);
}

/// `switchto` sent to one node reaches the listed sessions on every node,
/// each with its own details.
#[tokio::test]
async fn switchto_reaches_sessions_on_every_node() {
    let c = cluster().await;
    let (mut alice, mut bob, _, _) = c.pair_in_room().await;
    let r = c
        .backend
        .send_room_request(
            &format!("http://{}/", c.a),
            "room1",
            &json!({"type": "switchto", "switchto": {"roomid": "breakout",
                "sessions": {"talk-a": {"n": 1}, "talk-b": {"n": 2}}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for (x, n) in [(&mut alice, 1), (&mut bob, 2)] {
        let m = x
            .recv_matching(|m| m["type"] == "event" && m["event"]["type"] == "switchto")
            .await;
        assert_eq!(
            m["event"]["switchto"],
            json!({"roomid": "breakout", "details": {"n": n}}),
            "{m}"
        );
        x.expect_no_message(Duration::from_millis(300)).await;
    }
}

/// `sessionlimit` holds for the whole cluster: with a limit of 2, one
/// session on each node fills it, a third is refused on either node, and a
/// place is free again once one of them ends.
#[tokio::test]
async fn session_limit_counts_every_node() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!(
        "[nats]\nurl = {}\npresenceinterval = 1\n[backend1]\nsessionlimit = 2\n",
        nats.url()
    );
    let (sa, a) = start_server(&config_for(&backend.url(), &extra)).await;
    let (sb, b) = start_server(&config_for(&backend.url(), &extra)).await;
    for s in [&sa, &sb] {
        tokio::time::timeout(
            Duration::from_secs(10),
            s.nats.clone().expect("bus").wait_connected(true),
        )
        .await
        .expect("connected");
    }
    let hello = |addr, user: &'static str| {
        let url = backend.backend_url();
        async move {
            let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
            let r = c
                .hello_v1(&url, json!({"userid": user, "ticket": "t"}))
                .await;
            (c, r)
        }
    };
    let (_alice, r) = hello(a, "alice").await;
    assert_eq!(r["type"], "hello", "{r}");
    let (mut bob, r) = hello(b, "bob").await;
    assert_eq!(r["type"], "hello", "{r}");
    // A hello asks the nodes it knows of for their counts at once.
    while sa.hub.live_nodes() == 0 || sb.hub.live_nodes() == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for node in [a, b] {
        let (_c, r) = hello(node, "carol").await;
        assert_eq!(r["error"]["code"], "session_limit_exceeded", "{r}");
    }
    bob.bye().await;
    bob.expect_closed(Duration::from_secs(5)).await;
    let (_c, r) = hello(a, "carol").await;
    assert_eq!(r["type"], "hello", "{r}");
}

/// `incall` with `all: true` (ending the call for everyone) is handled by
/// every node for its own members: one event each, not one per node.
#[tokio::test]
async fn incall_all_reaches_everyone_once() {
    let c = cluster().await;
    let (mut alice, mut bob, _, _) = c.pair_in_room().await;
    let r = c
        .backend
        .send_room_request(
            &format!("http://{}/", c.b),
            "room1",
            &json!({"type": "incall", "incall": {"incall": 7, "all": true}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for x in [&mut alice, &mut bob] {
        let ev = x
            .recv_matching(|v| v["type"] == "event" && v["event"]["target"] == "participants")
            .await;
        assert_eq!(ev["event"]["update"]["all"], true, "{ev}");
        x.expect_no_message(Duration::from_millis(500)).await;
    }
}

/// Wait until every server knows the other (their `cluster.nodes`
/// reports), so that cluster questions get all answers.
async fn nodes_known() {
    tokio::time::sleep(Duration::from_millis(2200)).await;
}

/// A client whose connection broke resumes on the other server: the same
/// session, what was sent to it meanwhile arrives in order, it goes on
/// talking through that server, and nobody sees it leave or join. It can
/// move again (back to its session's server) without losing anything.
#[tokio::test]
async fn resume_on_another_node() {
    let c = cluster().await;
    let (alice, mut bob, alice_id, bob_id) = c.pair_in_room().await;
    let mut alice = alice;
    until_reachable(&mut bob, recipient_session(&alice_id), &mut alice).await;
    let rid = alice.resume_id().expect("resume id").to_owned();
    // The socket just breaks (no close frame, no bye).
    drop(alice);
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..5 {
        bob.send_message(recipient_session(&alice_id), json!({"n": i}))
            .await;
    }

    let mut alice = TestClient::connect(&spreed_url(c.b)).await.skip("welcome");
    let r = alice.hello_resume(&rid).await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(r["hello"]["sessionid"], alice_id, "{r}");
    assert_eq!(r["hello"]["resumeid"], rid, "{r}");
    assert_eq!(r["hello"]["userid"], "alice", "{r}");
    for i in 0..5 {
        let m = alice.recv().await;
        assert_eq!(
            m,
            json!({"type": "message", "message": {
                "sender": {"type": "session", "sessionid": bob_id, "userid": "bob"},
                "data": {"n": i},
            }})
        );
    }
    // Both ways through the relay, room messages included.
    bob.send_message(recipient_room(), json!({"to": "room"}))
        .await;
    let m = alice.recv().await;
    assert_eq!(m["message"]["data"], json!({"to": "room"}), "{m}");
    alice
        .send_message(recipient_session(&bob_id), json!({"back": 1}))
        .await;
    let m = bob.recv().await;
    assert_eq!(m["message"]["sender"]["sessionid"], alice_id, "{m}");
    assert_eq!(m["message"]["data"], json!({"back": 1}));
    // The room never saw alice go.
    bob.expect_no_message(Duration::from_millis(500)).await;

    // Broken again; this time back at node A, where the session lives.
    drop(alice);
    tokio::time::sleep(Duration::from_millis(300)).await;
    bob.send_message(recipient_session(&alice_id), json!({"later": 1}))
        .await;
    let mut alice = TestClient::connect(&spreed_url(c.a)).await.skip("welcome");
    let r = alice.hello_resume(&rid).await;
    assert_eq!(r["hello"]["sessionid"], alice_id, "{r}");
    let m = alice.recv().await;
    assert_eq!(m["message"]["data"], json!({"later": 1}), "{m}");
    alice.expect_no_message(Duration::from_millis(300)).await;

    // A bye through the relay ends the session for everyone.
    let mut again = TestClient::connect(&spreed_url(c.b)).await.skip("welcome");
    let r = again.hello_resume(&rid).await;
    assert_eq!(r["hello"]["sessionid"], alice_id, "{r}");
    // The previous connection is told, as on a single server.
    let m = alice.recv().await;
    assert_eq!(m["type"], "bye", "{m}");
    assert_eq!(again.bye().await["type"], "bye");
    left_until(&mut bob, &alice_id).await;
}

/// A resume id no server knows gets `no_such_session` (every server
/// answers, so this does not wait for a timeout); garbage is refused
/// without asking anyone.
#[tokio::test]
async fn resume_of_an_unknown_session_in_a_cluster() {
    let c = cluster().await;
    nodes_known().await;
    let mut alice = c.user(c.a, "alice").await;
    let rid = alice.resume_id().expect("resume id").to_owned();
    alice.bye().await;
    let mut x = TestClient::connect(&spreed_url(c.b)).await.skip("welcome");
    let started = std::time::Instant::now();
    let r = x.hello_resume(&rid).await;
    assert_eq!(r["error"]["code"], "no_such_session", "{r}");
    // Not a timing assertion on the server: a bound well above the answer
    // time, well below the 2 s question timeout, shows nobody was waited for.
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    let mut y = TestClient::connect(&spreed_url(c.b)).await.skip("welcome");
    let r = y.hello_resume("not-a-resume-id").await;
    assert_eq!(r["error"]["code"], "no_such_session", "{r}");
}

/// Dial-out (upstream 1.2.0) with the bridge connected to the other
/// server: Nextcloud asks node A, node B's bridge gets the request and
/// its answer (the call id) goes back to Nextcloud through A.
#[tokio::test]
async fn dialout_reaches_a_bridge_on_another_node() {
    let c = cluster().await;
    let (mut bridge, _) = c.internal(c.b, &["start-dialout"]).await;
    // Node A learns of the bridge from B's next report.
    nodes_known().await;
    let request = json!({"type": "dialout", "dialout": {"number": "+491234567"}});
    let base = format!("http://{}/", c.a);
    let answer = async {
        let req = bridge.expect_type("internal").await;
        let id = req["id"].as_str().expect("request id").to_owned();
        bridge
            .send_json(
                &json!({"id": id, "type": "internal", "internal": {"type": "dialout", "dialout":
                {"type": "status", "status": {"callid": "call-7", "status": "accepted"}}}}),
            )
            .await;
        req
    };
    let (resp, req) = tokio::join!(
        c.backend.send_room_request(&base, "12345", &request),
        answer
    );
    assert_eq!(req["internal"]["dialout"]["roomid"], "12345", "{req}");
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(
        resp.json(),
        json!({"type": "dialout", "dialout": {"callid": "call-7"}})
    );
    // Without any bridge in the cluster: 404 as on one server.
    bridge.bye().await;
    nodes_known().await;
    let r = c.backend.send_room_request(&base, "12345", &request).await;
    assert_eq!(r.status, 404, "{}", r.text());
}

/// The session's server dies while a client is relayed to it: the server
/// with the socket closes it as "going away" (the client reconnects), and
/// the session is gone.
#[tokio::test]
async fn relayed_client_is_told_when_its_sessions_server_dies() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
    let dir = TempDir::new("cluster-relay-kill").expect("dir");
    let text = config_for(&backend.url(), &extra);
    let (mut node_a, port) = spawn_node(&dir, &text).await;
    let (sb, b) = start_server(&text).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        sb.nats.clone().expect("NATS bus").wait_connected(true),
    )
    .await
    .expect("node B connected");
    nodes_known().await;
    let mut alice = TestClient::connect(&format!("ws://127.0.0.1:{port}/spreed"))
        .await
        .skip("welcome");
    alice.hello_user(&backend.backend_url(), "alice").await;
    let rid = alice.resume_id().expect("resume id").to_owned();
    drop(alice);
    let mut alice = TestClient::connect(&spreed_url(b)).await.skip("welcome");
    let r = alice.hello_resume(&rid).await;
    assert_eq!(r["type"], "hello", "{r}");

    node_a.kill();
    let close = alice
        .expect_closed(Duration::from_secs(10))
        .await
        .expect("a close frame");
    assert_eq!(close.code, 1001, "{close:?}");
    let mut again = TestClient::connect(&spreed_url(b)).await.skip("welcome");
    let r = again.hello_resume(&rid).await;
    assert_eq!(r["error"]["code"], "no_such_session", "{r}");
    drop(sb);
}

/// The server with the socket dies while it relays a client: the session's
/// server notices (no acknowledgements), keeps what was not confirmed, and
/// the client resuming there gets it: nothing lost.
#[tokio::test]
async fn nothing_is_lost_when_the_relaying_server_dies() {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
    let dir = TempDir::new("cluster-relay-die").expect("dir");
    let text = config_for(&backend.url(), &extra);
    let (sa, a) = start_server(&text).await;
    let (mut node_b, port) = spawn_node(&dir, &text).await;
    tokio::time::timeout(
        Duration::from_secs(10),
        sa.nats.clone().expect("NATS bus").wait_connected(true),
    )
    .await
    .expect("node A connected");
    nodes_known().await;
    let user = |addr: std::net::SocketAddr, name: &'static str| {
        let url = backend.backend_url();
        async move {
            let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
            c.hello_user(&url, name).await;
            c
        }
    };
    let alice = user(a, "alice").await;
    let mut bob = user(a, "bob").await;
    let alice_id = id_of(&alice);
    let rid = alice.resume_id().expect("resume id").to_owned();
    drop(alice);
    let mut alice = TestClient::connect(&format!("ws://127.0.0.1:{port}/spreed"))
        .await
        .skip("welcome");
    let r = alice.hello_resume(&rid).await;
    assert_eq!(r["hello"]["sessionid"], alice_id, "{r}");
    bob.send_message(recipient_session(&alice_id), json!({"n": 1}))
        .await;
    assert_eq!(alice.recv().await["message"]["data"], json!({"n": 1}));

    node_b.kill();
    // Sent into the dead relay before A notices.
    bob.send_message(recipient_session(&alice_id), json!({"n": 2}))
        .await;
    // A gives the relay up after three silent keepalive intervals.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let mut alice = TestClient::connect(&spreed_url(a)).await.skip("welcome");
    let r = alice.hello_resume(&rid).await;
    assert_eq!(r["hello"]["sessionid"], alice_id, "{r}");
    // n = 1 may come again (written, not yet confirmed); n = 2 must come.
    let mut got = Vec::new();
    while let Some(m) = alice.recv_timeout(Duration::from_millis(700)).await {
        got.push(m["message"]["data"]["n"].clone());
    }
    assert!(got.contains(&json!(2)), "{got:?}");
    assert!(
        got.iter().all(|n| *n == json!(1) || *n == json!(2)),
        "{got:?}"
    );
}

/// Per-receiver order across subjects: what one client sends to the room
/// and directly to a member on another node, interleaved, arrives in the
/// order it was sent (on one server it trivially does).
#[tokio::test]
async fn room_and_direct_messages_keep_their_order_across_nodes() {
    let c = cluster().await;
    let (mut alice, mut bob, _, bob_id) = c.pair_in_room().await;
    until_reachable(&mut alice, recipient_session(&bob_id), &mut bob).await;
    const N: usize = 300;
    for i in 0..N {
        let to = if i % 2 == 0 {
            recipient_room()
        } else {
            recipient_session(&bob_id)
        };
        alice.send_message(to, json!({"n": i})).await;
    }
    for i in 0..N {
        let m = bob.recv_matching(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["n"], i, "{m}");
    }
}

/// Room messages of a room no other node has members in stay on their
/// node (nothing published to NATS); once a member joins elsewhere, they
/// reach it.
#[tokio::test]
async fn room_messages_stay_local_until_another_node_joins() {
    use futures_util::StreamExt;
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    alice.join_room("room1", "talk-a").await;
    let mut carol = c.user(c.a, "carol").await;
    carol.join_room("room1", "talk-c").await;
    let watcher = async_nats::connect(c.nats_url.as_str())
        .await
        .expect("watcher connects");
    let mut seen = watcher.subscribe("room.>").await.expect("subscribe");
    watcher.flush().await.expect("flush");
    while carol
        .recv_timeout(Duration::from_millis(200))
        .await
        .is_some()
    {}
    for i in 0..5 {
        alice.send_message(recipient_room(), json!({"n": i})).await;
        let m = carol.recv_matching(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["n"], i, "{m}");
    }
    // Only presence (every interval) went out, no message.
    let until = tokio::time::Instant::now() + Duration::from_millis(1200);
    while let Ok(Some(m)) = tokio::time::timeout_at(until, seen.next()).await {
        let v: Value = serde_json::from_slice(&m.payload).expect("json");
        assert_eq!(v["type"], "x-presence", "{v}");
    }

    let mut bob = c.user(c.b, "bob").await;
    bob.join_room("room1", "talk-b").await;
    let bob_id = id_of(&bob);
    joined_until(&mut alice, &[&bob_id]).await;
    alice
        .send_message(recipient_room(), json!({"after": "join"}))
        .await;
    let m = bob.recv_matching(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["data"], json!({"after": "join"}), "{m}");
}

/// Internal members (here one with `internal-incall`) on another node are
/// listed in participant updates everywhere, with their current flags,
/// also in the updates each node builds itself for a backend request.
#[tokio::test]
async fn internal_members_on_other_nodes_are_listed() {
    let c = cluster().await;
    let mut alice = c.user(c.b, "alice").await;
    alice.join_room("room1", "talk-a").await;
    let alice_id = id_of(&alice);
    let (mut internal, internal_id) = c.internal(c.a, &["internal-incall"]).await;
    internal.join_room("room1", "").await;
    internal
        .send_json(
            &json!({"type": "internal", "internal": {"type": "incall", "incall": {"incall": 3}}}),
        )
        .await;
    let listed = |m: &Value, flags: i64| {
        m["event"]["target"] == "participants"
            && m["event"]["update"]["users"].as_array().is_some_and(|u| {
                u.iter().any(|e| {
                    e["sessionId"] == internal_id.as_str()
                        && e["internal"] == true
                        && e["inCall"] == flags
                })
            })
    };
    // First listed as it joined (flags 0), then with its own flags.
    alice.recv_matching(|m| listed(m, 3)).await;
    // An update node B builds itself (Nextcloud asked B) lists A's member.
    let r = c
        .backend
        .send_room_request(
            &format!("http://{}/", c.b),
            "room1",
            &json!({"type": "incall", "incall": {"incall": 7,
                "changed": [{"sessionId": "talk-a", "inCall": 7}],
                "users": [{"sessionId": "talk-a", "inCall": 7}]}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = alice
        .recv_matching(|m| {
            m["event"]["target"] == "participants"
                && m["event"]["update"]["users"]
                    .as_array()
                    .is_some_and(|u| u.iter().any(|e| e["sessionId"] == alice_id.as_str()))
        })
        .await;
    assert!(listed(&m, 3), "{m}");
}

/// A guest (no user id; Nextcloud names it per room session) in a room
/// spanning nodes: announced on the other node, messages both ways.
#[tokio::test]
async fn guests_in_a_room_across_nodes() {
    let c = cluster().await;
    let mut bob = c.user(c.b, "bob").await;
    bob.join_room("room1", "talk-b").await;
    let mut guest = TestClient::connect(&spreed_url(c.a)).await.skip("welcome");
    let r = guest
        .hello_v1(
            &c.backend.backend_url(),
            json!({"userid": "", "ticket": "t"}),
        )
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    guest.join_room("room1", "talk-guest").await;
    let guest_id = id_of(&guest);
    joined_until(&mut bob, &[&guest_id]).await;
    let bob_id = id_of(&bob);
    joined_until(&mut guest, &[&bob_id]).await;
    guest
        .send_message(recipient_room(), json!({"from": "guest"}))
        .await;
    let m = bob.recv_matching(|m| m["type"] == "message").await;
    assert_eq!(m["message"]["sender"]["sessionid"], guest_id, "{m}");
}

/// `nats-server` restarts mid-conversation: what one server's client sends
/// to another server's client meanwhile waits and arrives, in order, once
/// both servers are back (nothing lost for sessions that stay connected).
#[tokio::test]
async fn messages_sent_while_nats_restarts_arrive() {
    let mut c = cluster().await;
    let buses = c.buses();
    let mut alice = c.patient_user(c.a, "alice").await;
    let mut bob = c.patient_user(c.b, "bob").await;
    let bob_id = id_of(&bob);
    until_reachable(&mut alice, recipient_session(&bob_id), &mut bob).await;

    c.nats.stop();
    for bus in &buses {
        tokio::time::timeout(Duration::from_secs(10), bus.wait_connected(false))
            .await
            .expect("disconnected");
    }
    for i in 0..5 {
        alice
            .send_message(recipient_session(&bob_id), json!({"n": i}))
            .await;
    }
    c.nats.restart().await.expect("nats-server restarts");
    for i in 0..5 {
        let m = bob.recv_matching(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["n"], i, "{m}");
    }
}

/// A backend request replayed to another node (same random, checksum and
/// body) is refused there too: the accepting node shares the random.
#[tokio::test]
async fn replay_to_another_node_is_refused() {
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    alice.join_room("room1", "talk-a").await;
    alice.expect_event("room", "join").await;
    let body = serde_json::to_vec(&json!({"type": "message", "message": {"data": {"n": 1}}}))
        .expect("json");
    let random = random_hex(64);
    let sum = checksum(SECRET, &random, &body);
    let post = |addr: std::net::SocketAddr| {
        let (body, random, sum) = (body.clone(), random.clone(), sum.clone());
        let backend = c.backend.url();
        async move {
            RawRequest::post(&format!("http://{addr}/api/v1/room/room1"))
                .header("Content-Type", "application/json")
                .header(HEADER_RANDOM, &random)
                .header(HEADER_CHECKSUM, &sum)
                .header(HEADER_BACKEND, &backend)
                .body(body)
                .send()
                .await
                .expect("request sent")
        }
    };
    assert_eq!(post(c.b).await.status, 200);
    // The news travels through NATS (well under a millisecond here).
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = post(c.a).await;
    assert_eq!(
        r.status,
        403,
        "replay accepted by the other node: {}",
        r.text()
    );
    let ev = alice
        .recv_matching(|v| v["type"] == "event" && v["event"]["type"] == "message")
        .await;
    assert_eq!(ev["event"]["message"]["data"]["n"], 1);
    alice.expect_no_message(Duration::from_millis(300)).await;
}

/// The cluster's only bridge is inside a room: no dial-out candidate, so a
/// request to the other node is answered 404 `no_client_available` at once
/// (not after the bridge's 45 s answer time), right after the join as well
/// as once the nodes exchanged their reports.
#[tokio::test]
async fn dialout_skips_a_bridge_in_a_room_on_another_node() {
    let c = cluster().await;
    let (mut bridge, _) = c.internal(c.b, &["start-dialout"]).await;
    nodes_known().await;
    let r = bridge
        .request(json!({"type": "room", "room": {"roomid": "12345", "sessionid": ""}}))
        .await;
    assert_eq!(r["room"]["roomid"], "12345", "{r}");
    let request = json!({"type": "dialout", "dialout": {"number": "+491234567"}});
    let base = format!("http://{}/", c.a);
    for _ in 0..2 {
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            c.backend.send_room_request(&base, "12345", &request),
        )
        .await
        .expect("answered without waiting for the bridge");
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(r.json()["dialout"]["error"]["code"], "no_client_available");
        nodes_known().await;
    }
    while let Some(m) = bridge.recv_timeout(Duration::from_millis(300)).await {
        assert_ne!(m["type"], "internal", "bridge in a room was asked: {m}");
    }
}

/// `signaling_nats_batches_total` of the server at `addr`.
async fn batches_sent(addr: std::net::SocketAddr) -> u64 {
    let text = common::media::metrics_at(addr).await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix("signaling_nats_batches_total ")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no batch counter in {text}"))
}

/// Bursts of direct messages from `from` to each of `to` (numbered per
/// addressee), until node A has sent batches or `rounds` bursts are out;
/// returns how many each addressee was sent.
async fn bursts(
    c: &Cluster,
    from: &mut TestClient,
    to: &[String],
    rounds: usize,
    until_batched: bool,
) -> usize {
    let mut sent = 0;
    for _ in 0..rounds {
        for _ in 0..30 {
            for id in to {
                from.send_message(recipient_session(id), json!({"n": sent}))
                    .await;
            }
            sent += 1;
        }
        if until_batched && batches_sent(c.a).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    sent
}

/// Every direct message arrives once and in order: `0..sent`.
async fn all_in_order(c: &mut TestClient, sent: usize) {
    for n in 0..sent {
        let m = c.recv_matching(|m| m["type"] == "message").await;
        assert_eq!(m["message"]["data"]["n"], n, "{m}");
    }
    assert!(c.recv_timeout(Duration::from_millis(300)).await.is_none());
}

/// Under load, direct messages from one server to sessions on the other
/// cross NATS in batches (several messages in one NATS message), and every
/// addressee still gets each of its messages once, in the order sent.
#[tokio::test]
async fn direct_messages_cross_in_batches_to_every_addressee() {
    let c = cluster().await;
    let mut alice = c.user(c.a, "alice").await;
    let mut bobs = Vec::new();
    for i in 0..3 {
        bobs.push(c.user(c.b, &format!("bob{i}")).await);
    }
    let ids: Vec<String> = bobs.iter().map(id_of).collect();
    for (id, bob) in ids.iter().zip(bobs.iter_mut()) {
        until_reachable(&mut alice, recipient_session(id), bob).await;
    }
    // A server batches once it has heard all others (2 s after it started).
    let sent = bursts(&c, &mut alice, &ids, 40, true).await;
    assert!(batches_sent(c.a).await > 0, "no batch after {sent} bursts");
    for bob in &mut bobs {
        all_in_order(bob, sent).await;
    }
}

/// While an older server is part of the cluster (its `cluster.nodes`
/// reports come from a sender id without the mark of a server that reads
/// batches), every direct message goes out on its own session subject,
/// where that server listens, and none in a batch.
#[tokio::test]
async fn an_older_server_gets_every_direct_message_on_its_subject() {
    use futures_util::StreamExt;
    let c = cluster().await;
    let old = async_nats::connect(c.nats_url.as_str())
        .await
        .expect("old server connects");
    let mut on_sessions = old.subscribe("session.*").await.expect("subscribe");
    old.flush().await.expect("flush");
    // Reports as often as the others do (`presenceinterval = 1`).
    let reporter = old.clone();
    let reports = tokio::spawn(async move {
        for seq in 1.. {
            let status = hub::bus::BusMessage::new(hub::bus::BusPayload::Node(
                std::sync::Arc::new(proto::cluster::NodeStatus {
                    node: "older-node".into(),
                    ..Default::default()
                }),
            ));
            let envelope = hub::bus::encode_envelope_from(&status, Some(("0123456789abcdef", seq)));
            let _ = reporter
                .publish(proto::cluster::NODES_SUBJECT, envelope.into())
                .await;
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut alice = c.user(c.a, "alice").await;
    let mut bob = c.user(c.b, "bob").await;
    let bob_id = id_of(&bob);
    until_reachable(&mut alice, recipient_session(&bob_id), &mut bob).await;
    // Past the time a server batches from (2 s after its start).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let mut seen = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(300), on_sessions.next()).await
    {
        seen += 1;
    }
    let sent = bursts(&c, &mut alice, std::slice::from_ref(&bob_id), 5, false).await;
    all_in_order(&mut bob, sent).await;
    let until = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut now_seen = 0;
    while now_seen < sent {
        match tokio::time::timeout_at(until, on_sessions.next()).await {
            Ok(Some(_)) => now_seen += 1,
            _ => break,
        }
    }
    assert_eq!(
        now_seen, sent,
        "the older server missed messages ({seen} before)"
    );
    assert_eq!(batches_sent(c.a).await, 0);
    reports.abort();
}
