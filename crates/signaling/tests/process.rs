//! The `signaling` binary as an operator runs it: flags, configuration
//! errors (exit code 64), signals (SIGTERM shutdown, SIGHUP reload,
//! SIGUSR1 drain).
// Single server only: the real binary as one process (flags, exit codes, signals).
#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_signaling");

fn write_config(dir: &TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.join("server.conf");
    std::fs::write(&path, text).unwrap();
    path
}

fn run_to_exit(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill -{sig} {pid}");
}

/// HTTP-04: `--version` prints the version and exits 0.
#[test]
fn http_04_version_flag() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(signaling::VERSION), "{text}");
    // Go-style single dash works too.
    assert!(Command::new(BIN)
        .arg("-version")
        .output()
        .unwrap()
        .status
        .success());
}

/// A missing config file stops start-up with exit code 64 and names the file.
#[test]
fn config_missing_file_exits_64() {
    let (code, err) = run_to_exit(std::path::Path::new("/nonexistent/server.conf"));
    assert_eq!(code, 64);
    assert!(err.contains("/nonexistent/server.conf"), "{err}");
}

/// Invalid values that matter stop start-up with 64 and name section and key.
#[test]
fn config_errors_name_section_and_key() {
    let dir = TempDir::new("sig-cfg").unwrap();
    let base = "[http]\nlisten = 127.0.0.1:0\n[backend]\nallowall = true\nsecret = x\n";
    for (extra, needle) in [
        (
            "[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\nblockkey = short\n",
            "[sessions] blockkey",
        ),
        (
            "[sessions]\nblockkey = 0123456789abcdef\n",
            "[sessions] hashkey",
        ),
        (
            "[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\n[backend]\ntimeout = soon\n",
            "[backend] timeout",
        ),
        (
            "[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\nresumewindow = 0\n",
            "[sessions] resumewindow",
        ),
    ] {
        let path = write_config(&dir, &format!("{base}{extra}"));
        let (code, err) = run_to_exit(&path);
        assert_eq!(code, 64, "{extra}: {err}");
        assert!(err.contains(needle), "expected {needle:?} in {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    let path = write_config(&dir, &format!("[sessions]\nhashkey = {HASH_KEY}\n"));
    let (code, err) = run_to_exit(&path);
    assert_eq!(code, 64);
    assert!(err.contains("[http] listen"), "{err}");
}

struct Running {
    child: ChildGuard,
    addr: String,
}

async fn start_binary(config: &std::path::Path, port: u16, log: &std::path::Path) -> Running {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn("signaling", &mut cmd, Some(log)).unwrap();
    let addr = format!("127.0.0.1:{port}");
    wait_for_port(
        addr.parse().unwrap(),
        Duration::from_secs(10),
        Some(&mut child),
    )
    .await
    .unwrap();
    Running { child, addr }
}

/// The shipped `server.conf.in` starts as it is (only the port is changed so
/// tests can run in parallel) and serves the welcome page.
#[tokio::test]
async fn shipped_config_starts() {
    let dir = TempDir::new("sig-shipped").unwrap();
    let port = free_port();
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../server.conf.in"))
            .unwrap();
    assert!(
        text.contains("listen = 127.0.0.1:8080"),
        "shipped config listens on 127.0.0.1:8080"
    );
    let path = write_config(
        &dir,
        &text.replace("127.0.0.1:8080", &format!("127.0.0.1:{port}")),
    );
    let run = start_binary(&path, port, &dir.join("log")).await;
    let resp = RawRequest::get(&format!("http://{}/api/v1/welcome", run.addr))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.json()["nextcloud-spreed-signaling"], "Welcome");
}

/// SIGTERM: clients get a close frame and the process exits cleanly.
#[tokio::test]
async fn sigterm_closes_clients_and_exits() {
    let dir = TempDir::new("sig-term").unwrap();
    let backend = FakeBackend::start(SECRET).await;
    let port = free_port();
    let text = config_for(&backend.url(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write_config(&dir, &text);
    let mut run = start_binary(&path, port, &dir.join("log")).await;
    let mut client = TestClient::connect(&format!("ws://{}/spreed", run.addr))
        .await
        .skip("welcome");
    client.hello_user(&backend.backend_url(), "alice").await;
    signal(run.child.id().unwrap(), "TERM");
    client.expect_closed(Duration::from_secs(5)).await;
    assert_exits_0(&mut run, Duration::from_secs(10), "SIGTERM").await;
}

/// Wait up to `within` for the process to exit, and require exit code 0.
async fn assert_exits_0(run: &mut Running, within: Duration, after: &str) {
    let deadline = std::time::Instant::now() + within;
    let status = loop {
        if let Some(status) = run.child.exited() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit after {after}: {}",
            run.child.log_tail(2000)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        status.contains("exit status: 0") || status.contains("code: 0") || status == "0",
        "exit: {status}"
    );
}

/// Start the binary with the test backend and `extra` config.
async fn start_with_backend(
    dir: &TempDir,
    backend: &FakeBackend,
    extra: &str,
) -> (Running, String) {
    let port = free_port();
    let text =
        config_for(&backend.url(), extra).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write_config(dir, &text);
    let run = start_binary(&path, port, &dir.join("log")).await;
    let url = format!("ws://{}/spreed", run.addr);
    (run, url)
}

/// Whether a WebSocket connect to `url` fails with 503 (draining).
async fn upgrade_refused_503(url: &str) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    match TestClient::try_connect(url, &[]).await {
        Err(Error::Http(resp)) => resp.status() == 503,
        _ => false,
    }
}

/// SIGUSR1 drains (upstream 1.3.0): new connections are refused with 503,
/// existing sessions keep working, the state shows in the stats and server
/// info, and the process exits 0 once the last session said bye.
#[tokio::test]
async fn sigusr1_drains_then_exits_when_last_session_ends() {
    let dir = TempDir::new("sig-usr1").unwrap();
    let backend = FakeBackend::start(SECRET).await;
    let (mut run, url) = start_with_backend(&dir, &backend, "").await;
    let mut alice = TestClient::connect(&url).await.skip("welcome");
    alice.hello_user(&backend.backend_url(), "alice").await;
    let mut bob = TestClient::connect(&url).await.skip("welcome");
    bob.hello_user(&backend.backend_url(), "bob").await;

    signal(run.child.id().unwrap(), "USR1");
    assert!(
        eventually(Duration::from_secs(5), || upgrade_refused_503(&url)).await,
        "new connections still accepted after SIGUSR1: {}",
        run.child.log_tail(2000)
    );
    let stats = RawRequest::get(&format!("http://{}/api/v1/stats", run.addr))
        .send()
        .await
        .unwrap()
        .json();
    assert_eq!(stats["draining"], true, "{stats}");
    assert_eq!(stats["sessions"], 2, "{stats}");

    // The sessions already here are served as before.
    let alice_id = alice.session_id().unwrap().to_owned();
    bob.send_message(recipient_session(&alice_id), json!("draining?"))
        .await;
    let m = alice.expect_type("message").await;
    assert_eq!(m["message"]["data"], "draining?");

    alice.bye().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(run.child.exited().is_none(), "exited with bob still there");
    bob.bye().await;
    assert_exits_0(&mut run, Duration::from_secs(10), "the last bye").await;
}

/// `[app] draintimeout`: a drain that outlasts it ends like SIGTERM (clients
/// get a close frame) and the process exits 0.
#[tokio::test]
async fn sigusr1_drain_timeout_closes_remaining_clients() {
    let dir = TempDir::new("sig-usr1-timeout").unwrap();
    let backend = FakeBackend::start(SECRET).await;
    let (mut run, url) = start_with_backend(&dir, &backend, "[app]\ndraintimeout = 1\n").await;
    let mut alice = TestClient::connect(&url).await.skip("welcome");
    alice.hello_user(&backend.backend_url(), "alice").await;
    let started = std::time::Instant::now();
    signal(run.child.id().unwrap(), "USR1");
    alice.expect_closed(Duration::from_secs(5)).await;
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "closed before the drain timeout"
    );
    assert_exits_0(&mut run, Duration::from_secs(10), "the drain timeout").await;
}

/// A drain with no session but an internal client's exits at once: like
/// upstream, internal clients (Nextcloud itself) do not hold it up.
#[tokio::test]
async fn sigusr1_without_user_sessions_exits_at_once() {
    let dir = TempDir::new("sig-usr1-idle").unwrap();
    let backend = FakeBackend::start(SECRET).await;
    let (mut run, url) = start_with_backend(&dir, &backend, "").await;
    let mut internal = TestClient::connect(&url).await.skip("welcome");
    internal
        .hello_internal(&backend.backend_url(), INTERNAL_SECRET)
        .await;
    signal(run.child.id().unwrap(), "USR1");
    assert_exits_0(&mut run, Duration::from_secs(5), "SIGUSR1 without sessions").await;
}

/// BCFG-06 / HTTP-05: SIGHUP re-reads the backends without dropping clients.
#[tokio::test]
async fn sighup_reloads_backends_without_dropping_clients() {
    let dir = TempDir::new("sig-hup").unwrap();
    let b1 = FakeBackend::start(SECRET).await;
    let b2 = FakeBackend::start("second-secret").await;
    let port = free_port();
    let text = config_for(&b1.url(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write_config(&dir, &text);
    let run = start_binary(&path, port, &dir.join("log")).await;
    let url = format!("ws://{}/spreed", run.addr);

    let mut alice = TestClient::connect(&url).await.skip("welcome");
    alice.hello_user(&b1.backend_url(), "alice").await;

    let mut bob = TestClient::connect(&url).await.skip("welcome");
    let reply = bob
        .hello_v1(&b2.backend_url(), json!({"userid": "bob", "ticket": "t"}))
        .await;
    assert_eq!(reply["error"]["code"], "invalid_backend", "{reply}");

    let reloaded = text.replace("backends = backend1", "backends = backend1, backend2")
        + &format!("[backend2]\nurl = {}\nsecret = second-secret\n", b2.url());
    std::fs::write(&path, reloaded).unwrap();
    signal(run.child.id().unwrap(), "HUP");

    let ok = eventually(Duration::from_secs(5), || {
        let url = url.clone();
        let b2_url = b2.backend_url();
        async move {
            let mut c = TestClient::connect(&url).await.skip("welcome");
            let r = c
                .hello_v1(&b2_url, json!({"userid": "bob", "ticket": "t"}))
                .await;
            r["type"] == "hello"
        }
    })
    .await;
    assert!(ok, "backend2 not accepted after SIGHUP");
    // alice was not disturbed
    let alice_id = alice.session_id().unwrap().to_owned();
    let mut carol = TestClient::connect(&url).await.skip("welcome");
    carol.hello_user(&b1.backend_url(), "carol").await;
    carol
        .send_message(recipient_session(&alice_id), json!("still there?"))
        .await;
    let m = alice.expect_type("message").await;
    assert_eq!(m["message"]["data"], "still there?");
}

/// SIGHUP applies a changed `[app] loglevel` (without `RUST_LOG`): a hello
/// is not logged at `warn`, and is after the reload to `info`.
#[tokio::test]
async fn sighup_applies_the_log_level() {
    let dir = TempDir::new("sig-loglevel").unwrap();
    let backend = FakeBackend::start(SECRET).await;
    let port = free_port();
    let text = config_for(&backend.url(), "[app]\nloglevel = warn\n")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write_config(&dir, &text);
    let log = dir.join("log");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path).env_remove("RUST_LOG");
    let mut child = ChildGuard::spawn("signaling", &mut cmd, Some(&log)).unwrap();
    let addr = format!("127.0.0.1:{port}");
    wait_for_port(
        addr.parse().unwrap(),
        Duration::from_secs(10),
        Some(&mut child),
    )
    .await
    .unwrap();
    let url = format!("ws://{addr}/spreed");
    let mut alice = TestClient::connect(&url).await.skip("welcome");
    alice.hello_user(&backend.backend_url(), "alice").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        !before.contains("register user"),
        "logged at warn: {before}"
    );

    std::fs::write(&path, text.replace("loglevel = warn", "loglevel = info")).unwrap();
    signal(child.id().unwrap(), "HUP");
    assert_eventually!(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("log level applied"));
    let mut bob = TestClient::connect(&url).await.skip("welcome");
    bob.hello_user(&backend.backend_url(), "bob").await;
    assert_eventually!(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("register user"));
    // alice is still connected.
    let alice_id = alice.session_id().unwrap().to_owned();
    bob.send_message(recipient_session(&alice_id), json!("hi"))
        .await;
    assert_eq!(alice.expect_type("message").await["message"]["data"], "hi");
}
