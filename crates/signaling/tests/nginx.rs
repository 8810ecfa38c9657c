//! The shipped reverse-proxy example (`dist/nginx/signaling-upstream.conf`
//! in the http context, `signaling-location.conf` in a vhost), run through
//! Debian's real nginx in front of our server: a client's WebSocket hello
//! and Nextcloud's signed backend request both pass it.
//!
//! nginx runs in the foreground as a single process (`master_process off`,
//! so killing it leaves no workers behind) with every path it writes in a
//! temporary directory; `scripts/test.sh` installs the `nginx` package.
// Single server only: one server behind one nginx (the shipped proxy example).
#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

const NGINX: &str = "/usr/sbin/nginx";
const UPSTREAM: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../dist/nginx/signaling-upstream.conf"
);
const LOCATION: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../dist/nginx/signaling-location.conf"
);

/// A running nginx; the temp dir and the process go away on drop (fields
/// drop in order: the process first).
struct Nginx {
    child: ChildGuard,
    _dir: TempDir,
    addr: SocketAddr,
}

/// Replace `from` by `to`, insisting it is there, so the test notices when
/// the example changes shape.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in {UPSTREAM}");
    text.replacen(from, to, 1)
}

/// The upstream part with our server's address.
fn adapt_upstream(signaling: SocketAddr) -> String {
    let text = std::fs::read_to_string(UPSTREAM).unwrap();
    replace_once(
        &text,
        "server 127.0.0.1:8080;",
        &format!("server {signaling};"),
    )
}

impl Nginx {
    async fn start(signaling: SocketAddr) -> Nginx {
        assert!(
            Path::new(NGINX).exists(),
            "{NGINX} missing: apt-get install nginx (scripts/test.sh does)"
        );
        let dir = TempDir::new("nginx").unwrap();
        let port = free_port();
        // As an operator installs them: the upstream part in the http
        // context, the location part included by the Nextcloud vhost (here
        // a plain loopback listener instead of TLS).
        std::fs::write(dir.join("upstream.conf"), adapt_upstream(signaling)).unwrap();
        std::fs::copy(LOCATION, dir.join("location.conf")).unwrap();
        let p = dir.path().display();
        let conf = format!(
            "daemon off;\n\
             master_process off;\n\
             pid {p}/nginx.pid;\n\
             error_log {p}/error.log info;\n\
             events {{ worker_connections 64; }}\n\
             http {{\n\
               access_log {p}/access.log;\n\
               client_body_temp_path {p}/client_body;\n\
               proxy_temp_path {p}/proxy;\n\
               fastcgi_temp_path {p}/fastcgi;\n\
               uwsgi_temp_path {p}/uwsgi;\n\
               scgi_temp_path {p}/scgi;\n\
               include {p}/upstream.conf;\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 server_name cloud.example.com;\n\
                 include {p}/location.conf;\n\
               }}\n\
             }}\n"
        );
        let conf_path = dir.join("nginx.conf");
        std::fs::write(&conf_path, conf).unwrap();
        let mut cmd = Command::new(NGINX);
        // -e: the error log nginx opens before it has read the config.
        cmd.arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(&conf_path);
        let mut child =
            ChildGuard::spawn("nginx", &mut cmd, Some(&dir.join("stderr.log"))).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        if let Err(e) = wait_for_port(addr, Duration::from_secs(10), Some(&mut child)).await {
            let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
            panic!("nginx did not start: {e}\n{}\n{log}", child.log_tail(2000));
        }
        Nginx {
            child,
            _dir: dir,
            addr,
        }
    }

    /// What the Talk admin enters as the signaling server.
    fn base(&self) -> String {
        format!("http://{}/standalone-signaling/", self.addr)
    }
}

/// A client says hello and joins a room over a WebSocket through nginx; a
/// backend request signed by Nextcloud reaches it through nginx too.
#[tokio::test]
async fn nginx_example_proxies_websocket_and_backend_api() {
    let s = TestServer::start().await;
    let mut nginx = Nginx::start(s.addr).await;
    let ws = format!("ws://{}/standalone-signaling/spreed", nginx.addr);

    let mut alice = TestClient::connect(&ws).await.skip("welcome");
    alice.hello_user(&s.backend.backend_url(), "alice").await;
    let r = alice.join_room("room1", "talk-a").await;
    assert_eq!(r["room"]["roomid"], "room1", "{r}");

    let r = s
        .backend
        .send_room_request(
            &nginx.base(),
            "room1",
            &json!({"type": "message", "message": {"data": {"via": "nginx"}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = loop {
        let m = alice.expect_type("event").await;
        if m["event"]["type"] == "message" {
            break m;
        }
    };
    assert_eq!(
        m["event"]["message"]["data"],
        json!({"via": "nginx"}),
        "{m}"
    );

    // A forged request is still refused behind the proxy.
    let bad = signed_room_request("wrong-secret", None, &nginx.base(), "room1", "{}").await;
    assert_eq!(bad.status, 403);

    // The welcome page answers under the prefix, and nginx is still up.
    let w = RawRequest::get(&format!("{}api/v1/welcome", nginx.base()))
        .send()
        .await
        .unwrap();
    assert_eq!(w.json()["nextcloud-spreed-signaling"], "Welcome");
    assert!(nginx.child.exited().is_none());
}

/// The example leaves idle WebSockets open well past the server's 54 s
/// ping interval and passes the client's address on.
#[test]
fn nginx_example_has_the_essentials() {
    let text = std::fs::read_to_string(LOCATION).unwrap();
    // A snippet for the existing vhost, not a server of its own.
    let directives: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect();
    assert!(!directives.contains("server {"), "{LOCATION}");
    assert!(!directives.contains("listen "), "{LOCATION}");
    for needle in [
        "location /standalone-signaling/ {",
        "proxy_http_version 1.1;",
        "proxy_set_header Upgrade $http_upgrade;",
        "proxy_set_header Connection $connection_upgrade;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_read_timeout 3600s;",
    ] {
        assert!(text.contains(needle), "{needle} missing in {LOCATION}");
    }
}
