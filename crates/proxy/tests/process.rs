//! The `proxy` binary as operators run it: SIGHUP adds a token without
//! dropping the session already there; SIGUSR1 tells signaling servers,
//! refuses new publishers and exits (code 0) when the last one is gone.

#![allow(clippy::unwrap_used)]

use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;
use testkit::janus::{Janus, JanusOptions};
use testkit::{free_port, unix_now, wait_for_port, ChildGuard, TempDir, TestClient, TokenKey};

fn write_config(dir: &TempDir, port: u16, janus: &Janus, tokens: &[(&str, TokenKey)]) {
    let mut t = String::new();
    for (id, key) in tokens {
        let file = dir.join(&format!("{id}.pem"));
        std::fs::write(&file, key.public_pem()).unwrap();
        t.push_str(&format!("{id} = {}\n", file.display()));
    }
    std::fs::write(
        dir.join("proxy.conf"),
        format!(
            "[http]\nlisten = 127.0.0.1:{port}\n[tokens]\n{t}[mcu]\nurl = {}\n",
            janus.url()
        ),
    )
    .unwrap();
}

fn signal(child: &ChildGuard, sig: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success());
}

async fn hello(url: &str, id: &str, key: TokenKey) -> (TestClient, Value) {
    let mut c = TestClient::connect(url).await;
    let token = key.sign(&json!({"iss": id, "iat": unix_now()}));
    let r = c
        .request(json!({"type": "hello", "hello": {"version": "1.0", "token": token}}))
        .await;
    (c, r)
}

#[tokio::test]
async fn pxy_sighup_reloads_tokens_and_sigusr1_drains_then_exits() {
    let janus = Janus::start_with(JanusOptions {
        session_timeout: 60,
    })
    .await;
    let dir = TempDir::new("proxy-process").unwrap();
    let (mut child, port) = {
        let mut started = None;
        for _ in 0..3 {
            let port = free_port();
            write_config(&dir, port, &janus, &[("server1", TokenKey::Rsa)]);
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_proxy"));
            cmd.arg("--config").arg(dir.join("proxy.conf"));
            let mut c = ChildGuard::spawn("proxy", &mut cmd, Some(&dir.join("proxy.log"))).unwrap();
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            if wait_for_port(addr, Duration::from_secs(10), Some(&mut c))
                .await
                .is_ok()
            {
                started = Some((c, port));
                break;
            }
        }
        started.expect("proxy started")
    };
    let url = format!("ws://127.0.0.1:{port}/proxy");

    let (mut s1, r) = hello(&url, "server1", TokenKey::Rsa).await;
    assert_eq!(r["type"], "hello", "{r}");
    let (_, r) = hello(&url, "server2", TokenKey::Rsa2).await;
    assert_eq!(r["error"]["code"], "auth_failed");

    // SIGHUP with server2 added.
    write_config(
        &dir,
        port,
        &janus,
        &[("server1", TokenKey::Rsa), ("server2", TokenKey::Rsa2)],
    );
    signal(&child, "-HUP");
    testkit::assert_eventually!(
        Duration::from_secs(5),
        hello(&url, "server2", TokenKey::Rsa2).await.1["type"] == "hello"
    );
    // The log names what was applied.
    testkit::assert_eventually!(std::fs::read_to_string(dir.join("proxy.log"))
        .unwrap_or_default()
        .contains("configuration reloaded, applied: [tokens] server2"));
    // The first session is still there and can publish.
    let r = s1
        .request(json!({"type": "command", "command": {"type": "create-publisher", "streamType": "video"}}))
        .await;
    assert_eq!(r["type"], "command", "{r}");
    let publisher = r["command"]["id"].as_str().unwrap().to_owned();

    // SIGUSR1: told, no new publishers, still running while one is left.
    signal(&child, "-USR1");
    let ev = s1
        .recv_matching(|m| m["event"]["type"] == "shutdown-scheduled")
        .await;
    assert_eq!(ev["type"], "event");
    let r = s1
        .request(json!({"type": "command", "command": {"type": "create-publisher", "streamType": "screen"}}))
        .await;
    assert_eq!(r["error"]["code"], "shutdown_scheduled", "{r}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        child.exited(),
        None,
        "exits only when the last client is gone"
    );
    let r = s1
        .request(json!({"type": "command", "command": {"type": "delete-publisher", "clientId": publisher}}))
        .await;
    assert_eq!(r["type"], "command", "{r}");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.exited() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "proxy did not exit after the drain"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, "exit status: 0");
    testkit::assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 0);
    child.kill();
}

/// Runs `proxy check` (blocking) on the `proxy.conf` in `dir`.
fn proxy_check(dir: &std::path::Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_proxy"))
        .arg("check")
        .arg("--config")
        .arg(dir.join("proxy.conf"))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// `proxy check`: passes with Janus up and a token key, names what is wrong
/// otherwise.
#[tokio::test]
async fn pxy_check_reports_janus_tokens_and_listeners() {
    let janus = Janus::start_with(JanusOptions {
        session_timeout: 60,
    })
    .await;
    let dir = TempDir::new("proxy-check").unwrap();
    write_config(&dir, free_port(), &janus, &[("server1", TokenKey::Rsa)]);
    let path = dir.path().to_owned();
    let (code, out) = tokio::task::spawn_blocking(move || proxy_check(&path))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("ok    janus") && out.contains("server1"),
        "{out}"
    );

    // An HTTPS listener whose certificate expires in 3 days: a warning.
    let (cert, key) = testkit::self_signed_cert(&dir, "tls", 3).unwrap();

    let conf = std::fs::read_to_string(dir.join("proxy.conf")).unwrap()
        + &format!(
            "[https]\nlisten = 127.0.0.1:{}\ncertificate = {}\nkey = {}\n",
            free_port(),
            cert.display(),
            key.display()
        );
    std::fs::write(dir.join("proxy.conf"), conf).unwrap();
    let path = dir.path().to_owned();
    let (code, out) = tokio::task::spawn_blocking(move || proxy_check(&path))
        .await
        .unwrap();
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("warn  [https] certificate") && out.contains("expires soon"),
        "{out}"
    );

    // No tokens, Janus gone, port taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    std::fs::write(
        dir.join("proxy.conf"),
        format!(
            "[http]\nlisten = 127.0.0.1:{port}\n[mcu]\nurl = ws://127.0.0.1:{}\n",
            free_port()
        ),
    )
    .unwrap();
    let (code, out) = proxy_check(dir.path());
    assert_eq!(code, 1, "{out}");
    for want in ["FAIL  janus", "FAIL  [tokens]", "FAIL  [http] listen"] {
        assert!(out.contains(want), "{want:?} missing in {out}");
    }
}
