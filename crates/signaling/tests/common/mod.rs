//! Shared harness of the end-to-end tests: our server in-process on port 0,
//! with a fake Nextcloud backend from `testkit`.
#![allow(dead_code, unused_imports)]

pub mod media;

use runtime::config::Ini;
use signaling::{bind_and_serve, ListenConfig, Server};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

pub use serde_json::{json, Value};
pub use testkit::*;

pub const SECRET: &str = "the-backend-secret";
pub const INTERNAL_SECRET: &str = "the-internal-secret";
pub const HASH_KEY: &str = "0123456789abcdef0123456789abcdef";
pub const BLOCK_KEY: &str = "fedcba9876543210";

/// Which servers a test talks to: one, or three of ours joined by a real
/// `nats-server` (the same test, the same assertions: a cluster must behave
/// exactly like one server).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Topology {
    Single,
    Cluster,
}

/// Nodes of [`Topology::Cluster`].
pub const CLUSTER_NODES: usize = 3;

/// One server (or a cluster of three) plus the fake backend. `addr` and
/// `server` are the first node; clients from [`TestServer::client`] go to
/// the nodes in turn and backend requests to the node after the last
/// client's, so in a cluster they are never posted where the newest
/// session is.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub backend: FakeBackend,
    pub topology: Topology,
    /// Every node, the first one being `addr`/`server`.
    pub nodes: Vec<(Arc<Server>, SocketAddr)>,
    /// Clients handed out so far (the next one goes to node `n % nodes`).
    handed_out: std::sync::atomic::AtomicUsize,
    /// Dropped after the servers' fields (field order).
    nats: Option<NatsServer>,
}

/// Generate one `#[tokio::test]` per topology for each listed
/// `async fn name(t: Topology)`: `single::name` and `cluster::name`.
#[macro_export]
macro_rules! both_topologies {
    ($($name:ident),* $(,)?) => {
        mod single {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Topology::Single).await
                }
            )*
        }
        mod cluster {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::common::Topology::Cluster).await
                }
            )*
        }
    };
}

/// Configuration with one backend (`backend1`) pointing at `backend_url`.
pub fn config_for(backend_url: &str, extra: &str) -> String {
    format!(
        "[http]\nlisten = 127.0.0.1:0\n\
         [sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [clients]\ninternalsecret = {INTERNAL_SECRET}\n\
         [backend]\nbackends = backend1\ntimeout = 5\n\
         [backend1]\nurl = {backend_url}\nsecret = {SECRET}\n\
         [nats]\nurl = :loopback:\n\
         {extra}\n"
    )
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Start with extra config text appended (later keys override earlier ones).
    pub async fn start_with(extra: &str) -> TestServer {
        Self::start_on_with(Topology::Single, extra).await
    }

    pub async fn start_on(topology: Topology) -> TestServer {
        Self::start_on_with(topology, "").await
    }

    /// One server, or three on a fresh `nats-server` (presence reported
    /// every second), each with `extra` appended to its configuration.
    /// Returns once every node is connected to NATS and knows the others.
    pub async fn start_on_with(topology: Topology, extra: &str) -> TestServer {
        let backend = FakeBackend::start(SECRET).await;
        let (nats, nodes) = match topology {
            Topology::Single => {
                let server = start_server(&config_for(&backend.url(), extra)).await;
                (None, vec![server])
            }
            Topology::Cluster => {
                let nats = NatsServer::start().await.expect("nats-server starts");
                let extra = format!(
                    "[nats]\nurl = {}\npresenceinterval = 1\n{extra}",
                    nats.url()
                );
                let text = config_for(&backend.url(), &extra);
                let mut nodes = Vec::new();
                for _ in 0..CLUSTER_NODES {
                    nodes.push(start_server(&text).await);
                }
                wait_cluster_ready(&nodes).await;
                (Some(nats), nodes)
            }
        };
        TestServer {
            addr: nodes[0].1,
            server: nodes[0].0.clone(),
            backend,
            topology,
            nodes,
            handed_out: Default::default(),
            nats,
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.topology == Topology::Cluster
    }

    /// The node the next client goes to (counted as handed out).
    pub fn next_addr(&self) -> SocketAddr {
        let n = self
            .handed_out
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.nodes[n % self.nodes.len()].1
    }

    /// The node backend requests go to: the one after the last client's.
    pub fn backend_addr(&self) -> SocketAddr {
        let n = self.handed_out.load(std::sync::atomic::Ordering::Relaxed);
        self.nodes[n % self.nodes.len()].1
    }

    /// Websocket URL of the next node in turn.
    pub fn ws_url(&self) -> String {
        spreed_url(self.next_addr())
    }

    /// Base URL of the server's HTTP API, with trailing slash.
    /// (In a cluster: of the node backend requests go to.)
    pub fn base(&self) -> String {
        format!("http://{}/", self.backend_addr())
    }

    /// A connected client that ignores the `welcome` message (tests of the
    /// welcome itself use `TestClient::connect`).
    pub async fn client(&self) -> TestClient {
        TestClient::connect(&self.ws_url()).await.skip("welcome")
    }

    /// A client that said hello as `user`.
    pub async fn user(&self, user: &str) -> TestClient {
        let mut c = self.client().await;
        c.hello_user(&self.backend.backend_url(), user).await;
        c
    }

    /// A client joined to `room` with Talk session id `talk`.
    pub async fn user_in_room(&self, user: &str, room: &str, talk: &str) -> TestClient {
        let mut c = self.user(user).await;
        let r = c.join_room(room, talk).await;
        assert_eq!(r["room"]["roomid"], room, "join reply: {r}");
        c
    }

    /// `key` of `/api/v1/stats` (sessions, rooms, ...) added up over all
    /// nodes: what one server alone reports.
    pub async fn stats_sum(&self, key: &str) -> u64 {
        let mut sum = 0;
        for (_, addr) in &self.nodes {
            let r = raw_request("GET", &format!("http://{addr}/api/v1/stats"), &[], "").await;
            assert_eq!(r.status, 200, "stats: {}", r.text());
            sum += r.json()[key]
                .as_u64()
                .unwrap_or_else(|| panic!("no {key} in stats {}", r.text()));
        }
        sum
    }

    /// In a cluster: returns once everything any node published before the
    /// call has been delivered on every node (a no-op on one server, where
    /// delivery is done when the publisher's request is answered). Each node
    /// publishes a marker on a fresh subject all nodes subscribe; a node's
    /// NATS messages reach the others in publish order, so a node that got
    /// every node's marker has delivered what they published before it.
    pub async fn settle(&self) {
        if !self.is_cluster() {
            return;
        }
        let subject = format!("test-settle.{}", rand_suffix());
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut keep = Vec::new();
        for (i, (server, _)) in self.nodes.iter().enumerate() {
            let handler: Arc<dyn hub::bus::BusHandler> = Arc::new(SettleHandler {
                node: i,
                tx: tx.clone(),
            });
            let sub = server
                .hub
                .bus
                .subscribe(&subject, Arc::downgrade(&handler))
                .expect("settle subject");
            if let Some(active) = server.hub.bus.subscriptions_active() {
                let _ = tokio::time::timeout(Duration::from_secs(5), active).await;
            }
            keep.push((handler, sub));
        }
        for (i, (server, _)) in self.nodes.iter().enumerate() {
            let status = proto::cluster::NodeStatus {
                node: format!("settle-{i}"),
                ..Default::default()
            };
            let msg = hub::bus::BusMessage::new(hub::bus::BusPayload::Node(Arc::new(status)));
            server
                .hub
                .bus
                .publish(&subject, msg)
                .expect("settle publish");
        }
        let want = self.nodes.len() * self.nodes.len();
        let mut seen = std::collections::HashSet::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.len() < want {
            let got = tokio::time::timeout_at(deadline, rx.recv())
                .await
                .expect("cluster settles within 10 s")
                .expect("settle channel open");
            seen.insert(got);
        }
    }

    /// Send a signed backend request to our `/api/v1/room/<room>`.
    pub async fn backend_request(&self, room: &str, body: Value) -> HttpResponse {
        self.backend
            .send_room_request(&self.base(), room, &body)
            .await
    }
}

/// Every node connected to NATS and knowing all the others (their
/// `cluster.nodes` reports arrived), so cluster questions wait for exactly
/// the live nodes.
async fn wait_cluster_ready(nodes: &[(Arc<Server>, SocketAddr)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    for (s, _) in nodes {
        let bus = s.nats.clone().expect("a NATS bus, not the in-process one");
        tokio::time::timeout_at(deadline, bus.wait_connected(true))
            .await
            .expect("connected to NATS");
    }
    while nodes
        .iter()
        .any(|(s, _)| s.hub.live_nodes() + 1 < nodes.len())
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the nodes never learnt about each other"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Parse `text`, build the server and serve its listeners; returns the first TCP address.
pub async fn start_server(text: &str) -> (Arc<Server>, SocketAddr) {
    runtime::logging::init("warn");
    let ini = Ini::parse(text).expect("config parses");
    let server = Server::build(&ini).expect("server builds");
    let listen = ListenConfig::from_config(&ini).expect("listen config");
    let addrs = bind_and_serve(&server, &listen)
        .await
        .expect("listeners bind");
    (server, addrs[0])
}

pub const SHORT: Duration = Duration::from_millis(300);

/// An internal client (Nextcloud, the SIP bridge) of backend `backend_url`
/// at `addr`, announcing `features`, and its session id.
pub async fn internal_client(
    addr: SocketAddr,
    backend_url: &str,
    features: &[&str],
) -> (TestClient, String) {
    let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
    let random = random_hex(64);
    let token = internal_token(INTERNAL_SECRET, &random);
    let r = c
        .request(json!({"type": "hello", "hello": {
            "version": "1.0",
            "features": features,
            "auth": {"type": "internal", "params": {
                "random": random, "token": token, "backend": backend_url,
            }},
        }}))
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    let id = r["hello"]["sessionid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    (c, id)
}

/// Records which node got which node's settle marker.
struct SettleHandler {
    node: usize,
    tx: tokio::sync::mpsc::UnboundedSender<(usize, String)>,
}

impl hub::bus::BusHandler for SettleHandler {
    fn on_bus_message(&self, _subject: &str, msg: &hub::bus::BusMessage) {
        if let hub::bus::BusPayload::Node(status) = &msg.payload {
            let _ = self.tx.send((self.node, status.node.clone()));
        }
    }
}

fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}
