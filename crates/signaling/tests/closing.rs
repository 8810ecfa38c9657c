//! Every close the server starts follows the WebSocket closing handshake, so
//! the frames written before it always reach the client, even while the
//! client's own frames (pings, pongs, messages) are still on their way to
//! the server. Without it the server dropped its socket with unread client
//! data, the kernel answered with a reset and the client lost the last
//! frames (the `bye` reply, the takeover `bye`, ...).
//!
//! Each kind of close is repeated a few hundred times, some loops at once so
//! the machine is busy, on one server and on three servers joined by a real
//! `nats-server` (clients and backend requests spread over the nodes).

mod common;

use common::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

/// Closes per kind and topology, spread over `LOOPS` concurrent loops.
const ROUNDS: usize = 240;
const LOOPS: usize = 6;

/// One server, or three on one `nats-server`.
struct Topology {
    nodes: Vec<SocketAddr>,
    servers: Vec<Arc<signaling::Server>>,
    backend: FakeBackend,
    _nats: Option<NatsServer>,
}

impl Topology {
    async fn single() -> Topology {
        let s = TestServer::start().await;
        Topology {
            nodes: vec![s.addr],
            servers: vec![s.server],
            backend: s.backend,
            _nats: None,
        }
    }

    async fn cluster() -> Topology {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let backend = FakeBackend::start(SECRET).await;
        let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
        let mut nodes = Vec::new();
        let mut servers = Vec::new();
        for _ in 0..3 {
            let (s, addr) = start_server(&config_for(&backend.url(), &extra)).await;
            let bus = s.nats.clone().expect("a NATS bus");
            tokio::time::timeout(Duration::from_secs(10), bus.wait_connected(true))
                .await
                .expect("connected to NATS");
            nodes.push(addr);
            servers.push(s);
        }
        Topology {
            nodes,
            servers,
            backend,
            _nats: Some(nats),
        }
    }

    fn node(&self, i: usize) -> SocketAddr {
        self.nodes[i % self.nodes.len()]
    }

    async fn user(&self, i: usize, user: &str) -> TestClient {
        let mut c = TestClient::connect(&spreed_url(self.node(i)))
            .await
            .skip("welcome");
        c.hello_user(&self.backend.backend_url(), user).await;
        c
    }

    /// A backend request to the node after the one of client `i`.
    async fn backend_request(&self, i: usize, room: &str, body: Value) -> HttpResponse {
        let base = format!("http://{}/", self.node(i + 1));
        self.backend.send_room_request(&base, room, &body).await
    }
}

/// Send a few frames without waiting for anything, as a busy client does
/// while the server decides to close, and only then read (a slow reader:
/// whatever reset the server's side caused has arrived by then). Errors are
/// expected once the server closed. `i` varies the timing.
async fn chatter_then_read(c: &mut TestClient, i: usize) {
    tokio::time::sleep(Duration::from_millis((i % 8) as u64 * 2)).await;
    chatter(c, 3).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
}

async fn chatter(c: &mut TestClient, n: usize) {
    for k in 0..n {
        let _ = c.try_send(Message::Ping(vec![k as u8; 8].into())).await;
        let _ = c
            .try_send(Message::Text(
                r#"{"type":"message","message":{"recipient":{"type":"session","sessionid":"x"},"data":{}}}"#
                    .into(),
            ))
            .await;
    }
}

/// Read until the connection ends. Ok when a frame matching `last` arrived
/// and the connection then ended with a close frame with `code` (`None`:
/// an empty close frame, as upstream sends after a `bye`).
async fn ends_with(
    c: &mut TestClient,
    last: impl Fn(&Value) -> bool,
    code: Option<u16>,
) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = false;
    loop {
        match c.next_incoming(deadline).await {
            Incoming::Json(v) => seen |= last(&v),
            Incoming::Text(_) | Incoming::Binary(_) => {}
            Incoming::Timeout => {
                return Err(format!("connection still open (final frame seen: {seen})"))
            }
            Incoming::Closed(info) => {
                if !seen {
                    return Err(format!("final frame lost (close: {info:?})"));
                }
                if !c.got_close_frame() {
                    return Err("close frame lost".into());
                }
                return match info.as_ref().map(|i| i.code) == code {
                    true => Ok(()),
                    false => Err(format!("close frame {info:?}, expected code {code:?}")),
                };
            }
        }
    }
}

fn is_bye(reason: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["type"] == "bye" && (reason.is_empty() || v["bye"]["reason"] == reason)
}

/// Run `round` ROUNDS times over LOOPS concurrent loops; every round must
/// say Ok. Lists what went wrong otherwise.
async fn repeat<F, Fut>(t: &Arc<Topology>, round: F)
where
    F: Fn(Arc<Topology>, usize) -> Fut + Send + Sync + 'static + Clone,
    Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
{
    let mut loops = Vec::new();
    for l in 0..LOOPS {
        let (t, round) = (t.clone(), round.clone());
        loops.push(tokio::spawn(async move {
            let mut failed = Vec::new();
            for r in 0..ROUNDS / LOOPS {
                let i = l * (ROUNDS / LOOPS) + r;
                if let Err(e) = round(t.clone(), i).await {
                    failed.push(format!("round {i}: {e}"));
                }
            }
            failed
        }));
    }
    let mut failed = Vec::new();
    for l in loops {
        failed.extend(l.await.expect("loop runs"));
    }
    assert!(
        failed.is_empty(),
        "{} of {ROUNDS} closes lost frames: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}

async fn bye_round(t: Arc<Topology>, i: usize) -> Result<(), String> {
    let mut c = t.user(i, &format!("user{i}")).await;
    let id = c.send_with_id(json!({"type": "bye", "bye": {}})).await;
    chatter_then_read(&mut c, i).await;
    ends_with(
        &mut c,
        move |v| v["type"] == "bye" && v["id"] == id.as_str(),
        None,
    )
    .await
}

async fn takeover_round(t: Arc<Topology>, i: usize) -> Result<(), String> {
    let room = format!("room{i}");
    let talk = format!("talk{i}");
    let mut old = t.user(i, &format!("old{i}")).await;
    old.join_room(&room, &talk).await;
    let mut new = t.user(i + 1, &format!("new{i}")).await;
    let join = json!({"type": "room", "room": {"roomid": room, "sessionid": talk}});
    let id = new.send_with_id(join).await;
    chatter_then_read(&mut old, i).await;
    let res = ends_with(&mut old, is_bye("room_session_reconnected"), None).await;
    new.recv_matching(move |v| v["id"] == id.as_str()).await;
    new.close().await;
    res
}

async fn disinvite_round(t: Arc<Topology>, i: usize) -> Result<(), String> {
    let room = format!("room{i}");
    let user = format!("user{i}");
    let mut c = t.user(i, &user).await;
    c.join_room(&room, &format!("talk{i}")).await;
    let body = json!({"type": "disinvite", "disinvite": {"userids": [user]}});
    let (r, _) = tokio::join!(t.backend_request(i, &room, body), async {
        tokio::time::sleep(Duration::from_millis(2)).await;
        chatter_then_read(&mut c, i).await
    });
    if r.status != 200 {
        return Err(format!("disinvite answered {}", r.status));
    }
    ends_with(
        &mut c,
        |v| v["type"] == "event" && v["event"]["type"] == "disinvite",
        None,
    )
    .await
}

async fn hello_timeout_round(t: Arc<Topology>, i: usize) -> Result<(), String> {
    let mut c = TestClient::connect(&spreed_url(t.node(i)))
        .await
        .skip("welcome");
    // Keep frames coming without reading until well after the server gave
    // up on the hello (2 s), then read.
    let until = Instant::now() + Duration::from_millis(2200 + (i % 10) as u64 * 20);
    while Instant::now() < until {
        let _ = c
            .try_send(Message::Ping(b"still here".to_vec().into()))
            .await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    ends_with(&mut c, is_bye("hello_timeout"), None).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_reply_always_arrives() {
    repeat(&Arc::new(Topology::single().await), bye_round).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bye_reply_always_arrives_in_cluster() {
    repeat(&Arc::new(Topology::cluster().await), bye_round).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_bye_always_arrives() {
    repeat(&Arc::new(Topology::single().await), takeover_round).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn takeover_bye_always_arrives_in_cluster() {
    repeat(&Arc::new(Topology::cluster().await), takeover_round).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disinvite_always_arrives() {
    repeat(&Arc::new(Topology::single().await), disinvite_round).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disinvite_always_arrives_in_cluster() {
    repeat(&Arc::new(Topology::cluster().await), disinvite_round).await;
}

/// Hello timeouts take two seconds each: all rounds at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_timeout_always_arrives() {
    let t = Arc::new(Topology::single().await);
    let rounds: Vec<_> = (0..200)
        .map(|i| tokio::spawn(hello_timeout_round(t.clone(), i)))
        .collect();
    let mut failed = Vec::new();
    for (i, r) in rounds.into_iter().enumerate() {
        if let Err(e) = r.await.expect("round runs") {
            failed.push(format!("round {i}: {e}"));
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 lost: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}

/// A server shutting down closes every connection with a close frame; 40
/// servers in a row with 5 chatty clients each (4 with a session, one
/// without).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_close_always_arrives() {
    let mut failed = Vec::new();
    for round in 0..40 {
        let t = Topology::single().await;
        let mut clients = Vec::new();
        for i in 0..4 {
            clients.push(t.user(i, &format!("user{i}")).await);
        }
        clients.push(
            TestClient::connect(&spreed_url(t.node(0)))
                .await
                .skip("welcome"),
        );
        let server = t.servers[0].clone();
        let chatting: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                tokio::spawn(async move {
                    chatter(&mut c, 3).await;
                    let end = Instant::now() + Duration::from_secs(10);
                    loop {
                        chatter(&mut c, 1).await;
                        match c
                            .next_incoming(Instant::now() + Duration::from_millis(2))
                            .await
                        {
                            // Sessions get the empty close frame of a `bye`,
                            // connections without one 1001 "going away".
                            Incoming::Closed(_) if c.got_close_frame() => return Ok(()),
                            Incoming::Closed(other) => return Err(format!("close: {other:?}")),
                            _ if Instant::now() > end => return Err("still open".to_owned()),
                            _ => {}
                        }
                    }
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        server.stop(Duration::from_secs(5)).await;
        for c in chatting {
            if let Err(e) = c.await.expect("client runs") {
                failed.push(format!("round {round}: {e}"));
            }
        }
    }
    assert!(
        failed.is_empty(),
        "{} of 200 lost: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
}
