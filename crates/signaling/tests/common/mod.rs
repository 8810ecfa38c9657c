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

/// One server plus its fake backend.
pub struct TestServer {
    pub addr: SocketAddr,
    pub server: Arc<Server>,
    pub backend: FakeBackend,
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
        let backend = FakeBackend::start(SECRET).await;
        let text = config_for(&backend.url(), extra);
        let server = start_server(&text).await;
        TestServer {
            addr: server.1,
            server: server.0,
            backend,
        }
    }

    pub fn ws_url(&self) -> String {
        spreed_url(self.addr)
    }

    /// Base URL of the server's HTTP API, with trailing slash.
    pub fn base(&self) -> String {
        format!("http://{}/", self.addr)
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

    /// Send a signed backend request to our `/api/v1/room/<room>`.
    pub async fn backend_request(&self, room: &str, body: Value) -> HttpResponse {
        self.backend
            .send_room_request(&self.base(), room, &body)
            .await
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
