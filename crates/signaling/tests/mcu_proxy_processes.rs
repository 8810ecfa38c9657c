//! The MCU proxy set-up as an operator runs it, all real processes: two
//! Janus, two `proxy` binaries, one `signaling` binary, clients with real
//! WebRTC peers. Publishers spread over both proxies with media flowing;
//! SIGUSR1 on one proxy sends new publishers to the other and that proxy
//! exits (code 0) once its last stream has ended.
//!
//! The `proxy` binary is the one cargo built next to `signaling` (a
//! workspace test run builds both).

mod common;

use common::media::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SIGNALING: &str = env!("CARGO_BIN_EXE_signaling");

fn proxy_binary() -> PathBuf {
    let p = Path::new(SIGNALING).with_file_name("proxy");
    assert!(
        p.exists(),
        "{} missing: build it first (cargo build -p proxy; cargo test --workspace does)",
        p.display()
    );
    p
}

struct Process {
    child: ChildGuard,
    port: u16,
}

async fn spawn(name: &str, bin: &Path, config: &Path, port: u16, log: PathBuf) -> Process {
    let mut cmd = Command::new(bin);
    cmd.arg("--config").arg(config).env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn(name, &mut cmd, Some(&log)).expect("spawn");
    wait_for_port(
        ([127, 0, 0, 1], port).into(),
        Duration::from_secs(15),
        Some(&mut child),
    )
    .await
    .unwrap_or_else(|e| panic!("{name} did not start: {e}"));
    Process { child, port }
}

fn signal(p: &Process, sig: &str) {
    let pid = p.child.id().expect("running");
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill")
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

async fn http_json(port: u16, path: &str) -> Value {
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let resp = raw_http(
        &format!("127.0.0.1:{port}"),
        req.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_default();
    let text = String::from_utf8_lossy(&resp).into_owned();
    text.find("\r\n\r\n")
        .and_then(|i| serde_json::from_str(&text[i + 4..]).ok())
        .unwrap_or(Value::Null)
}

async fn proxy_gauge(p: &Process, line: &str) -> i64 {
    let req = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    let resp = raw_http(
        &format!("127.0.0.1:{}", p.port),
        req.as_bytes(),
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_default();
    gauge(&String::from_utf8_lossy(&resp), line)
}

#[tokio::test]
async fn two_proxy_processes_spread_publishers_and_drain() {
    let dir = TempDir::new("mcu-processes").expect("dir");
    let proxy_bin = proxy_binary();
    let public = dir.join("server1.pem");
    std::fs::write(&public, TokenKey::Rsa.public_pem()).expect("key");
    let private = dir.join("server1.key");
    std::fs::write(&private, TokenKey::Rsa.private_pem()).expect("key");

    let mut janus = Vec::new();
    let mut proxies = Vec::new();
    for name in ["a", "b"] {
        let j = start_janus().await;
        let port = free_port();
        let config = dir.join(&format!("proxy-{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "[http]\nlisten = 127.0.0.1:{port}\n[tokens]\nserver1 = {}\n\
                 [mcu]\ntype = janus\nurl = {}\ntimeout = 5\n",
                public.display(),
                j.url()
            ),
        )
        .expect("config");
        proxies.push(
            spawn(
                name,
                &proxy_bin,
                &config,
                port,
                dir.join(&format!("proxy-{name}.log")),
            )
            .await,
        );
        janus.push(j);
    }

    let backend = FakeBackend::start(SECRET).await;
    let port = free_port();
    let mcu = format!(
        "[mcu]\ntype = proxy\nurl = ws://127.0.0.1:{} ws://127.0.0.1:{}\ntoken_id = server1\n\
         token_key = {}\ntimeout = 5\nproxytimeout = 5\n",
        proxies[0].port,
        proxies[1].port,
        private.display()
    );
    let config = dir.join("server.conf");
    std::fs::write(
        &config,
        config_for(&backend.url(), &mcu).replace("127.0.0.1:0", &format!("127.0.0.1:{port}")),
    )
    .expect("config");
    let signaling = spawn(
        "signaling",
        Path::new(SIGNALING),
        &config,
        port,
        dir.join("signaling.log"),
    )
    .await;
    assert_eventually!(
        Duration::from_secs(10),
        http_json(port, "/api/v1/stats").await["mcu"]["proxies"]
            .as_array()
            .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["connected"] == true))
    );

    let url = format!("ws://127.0.0.1:{port}/spreed");
    let join = |user: &'static str| {
        let (url, backend_url) = (url.clone(), backend.backend_url());
        async move {
            let mut ws = TestClient::connect(&url).await.skip("welcome");
            ws.hello_user(&backend_url, user).await;
            let r = ws.join_room("room1", &format!("talk-{user}")).await;
            assert_eq!(r["room"]["roomid"], "room1", "{r}");
            MediaClient::from_client(ws)
        }
    };
    let mut alice = join("alice").await;
    let mut bob = join("bob").await;
    let mut carol = join("carol").await;
    let r = backend
        .send_room_request(
            &format!("http://127.0.0.1:{port}/"),
            "room1",
            &json!({"type": "incall", "incall": {"incall": 7, "all": true}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let (alice_id, bob_id) = (alice.id.clone(), bob.id.clone());

    let publishers = |i: usize| {
        let p = &proxies[i];
        async move { proxy_gauge(p, "signaling_proxy_publishers{type=\"video\"}").await }
    };
    alice.publish("video", "alice-video").await;
    let alice_on = if publishers(0).await == 1 { 0 } else { 1 };
    let bob_on = 1 - alice_on;
    // The signaling server learns that proxy's new load...
    assert_eventually!(
        Duration::from_secs(5),
        http_json(port, "/api/v1/stats").await["mcu"]["proxies"][alice_on]["load"] == 1
    );
    // ... and bob goes to the other.
    bob.publish("video", "bob-video").await;
    assert_eq!((publishers(0).await, publishers(1).await), (1, 1));

    // Carol receives both, with media.
    carol.subscribe(&alice_id, "video").await;
    carol.subscribe(&bob_id, "video").await;
    assert_eq!(
        proxy_gauge(
            &proxies[bob_on],
            "signaling_proxy_subscribers{type=\"video\"}"
        )
        .await,
        1
    );

    // SIGUSR1 to bob's proxy: the next publisher goes to alice's.
    signal(&proxies[bob_on], "USR1");
    assert_eventually!(
        Duration::from_secs(5),
        http_json(port, "/api/v1/stats").await["mcu"]["proxies"][bob_on]["shutdown"] == true
    );
    carol.publish("screen", "carol-screen").await;
    let screens = proxy_gauge(
        &proxies[1 - bob_on],
        "signaling_proxy_publishers{type=\"screen\"}",
    )
    .await;
    assert_eq!(
        screens, 1,
        "the screen went to the proxy that is not draining"
    );

    // Bob leaves: his proxy has nothing left and exits with code 0.
    bob.ws.leave_room().await;
    let mut drained = proxies.remove(bob_on);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = drained.child.exited() {
            break s;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "drained proxy still running: {}",
            drained.child.log_tail(4000)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.contains("exit status: 0"), "{status}");
    // The other proxy and the signaling server go on.
    let mut signaling = signaling;
    assert!(signaling.child.exited().is_none(), "signaling exited");
    assert_eq!(
        proxy_gauge(&proxies[0], "signaling_proxy_publishers{type=\"screen\"}").await,
        1
    );
    assert_eq!(
        proxy_gauge(&proxies[0], "signaling_proxy_publishers{type=\"video\"}").await,
        1,
        "alice still publishes"
    );
}
