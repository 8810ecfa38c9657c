//! The operator's first hour (issue 18), against the real binary: the
//! command line (help, version, flag order, Go's flags, errors once, a
//! closed stdout), strict configuration (unknown keys and sections with
//! their line, backends without section or secret, placeholder secrets),
//! `check` on a host where the server runs, and what SIGHUP reports.
// Single server only: the real binary as one process (command line, configuration).
#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_signaling");

fn run(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &TempDir, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// `signaling check` on a file, off the async runtime's threads.
async fn check(args: Vec<String>) -> (i32, String) {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(BIN)
            .arg("check")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (out.status.code().unwrap_or(-1), text(&out.stdout))
}

#[test]
fn help_exits_0_with_real_help() {
    for args in [&["--help"][..], &["-h"], &["help"], &["-help"]] {
        let out = run(args);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let help = text(&out.stdout);
        for needle in [
            "Usage: signaling",
            "check",
            "--config",
            "server.conf",
            "SIGHUP",
            "SIGUSR1",
        ] {
            assert!(
                help.contains(needle),
                "{args:?}: {needle:?} missing in\n{help}"
            );
        }
    }
    let out = run(&["help", "check"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).contains("--skip-bind"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn version_in_every_spelling() {
    for flag in ["-V", "--version", "-version"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(text(&out.stdout).contains(signaling::VERSION), "{flag}");
    }
}

#[test]
fn flags_in_any_order_and_go_style() {
    let missing = "/nonexistent/dir/x.conf";
    for args in [
        vec!["check", "--config", missing],
        vec!["--config", missing, "check"],
        vec!["-config", missing, "check"],
        vec!["check", &format!("-config={missing}")],
        vec!["-c", missing, "check"],
    ] {
        let out = run(&args);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains("FAIL  configuration") && stdout.contains(missing),
            "{args:?}: {stdout}"
        );
    }
    let out = run(&["--no-such-flag"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(text(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn start_without_arguments_says_it_once() {
    let dir = TempDir::new("op-noargs").unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = text(&out.stderr);
    assert_eq!(
        err.matches("cannot read configuration file").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("server.conf") && err.contains("--config"),
        "{err}"
    );
}

#[test]
fn closed_stdout_is_a_quiet_exit() {
    // The shell waits a moment before starting the binary, so the reading
    // end is closed (below) before the first line is written.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "sleep 0.3; exec \"$0\" check --config /nonexistent/x.conf",
            BIN,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Close the reading end before the child writes its first line.
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

/// A typo'd key, a typo'd section, a garbage line, a placeholder secret:
/// `check` warns with file:line, and the server logs the same at start.
#[tokio::test]
async fn config_mistakes_are_named_with_their_line() {
    let backend = FakeBackend::start(SECRET).await;
    let dir = TempDir::new("op-lint").unwrap();
    let port = free_port();
    let text = config_for(
        &backend.url(),
        "[backend]\nbackend = nc1\n[backends]\nnc1 = x\n[app]\nloglevel = info\nthis line is garbage\n[clients]\ninternalsecret = change-me-please\n",
    )
    .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let lines: Vec<&str> = text.lines().collect();
    let line_of = |needle: &str| 1 + lines.iter().position(|l| l.contains(needle)).unwrap();
    let path = write(&dir, "server.conf", &text);
    let expected = [
        format!(
            "{path}:{}: unknown key backend in [backend]",
            line_of("backend = nc1")
        ),
        format!(
            "{path}:{}: unknown section [backends]",
            line_of("[backends]")
        ),
        format!(
            "{path}:{}: line is not \"key = value\"; read as a continuation of [app] loglevel",
            line_of("garbage")
        ),
        format!(
            "{path}:{}: [clients] internalsecret is still the sample's placeholder",
            line_of("change-me-please")
        ),
    ];
    let (code, out) = check(vec!["--config".into(), path.clone()]).await;
    for e in &expected {
        assert!(
            out.contains(&format!("warn  {e}")),
            "{e:?} missing in\n{out}"
        );
    }
    assert!(out.contains("did you mean backends?"), "{out}");
    // The garbage made loglevel invalid ("info\nthis line is garbage").
    assert!(out.contains("warn  [app] loglevel"), "{out}");
    assert_eq!(code, 0, "{out}");

    let log = dir.join("log");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut child = ChildGuard::spawn("signaling", &mut cmd, Some(&log)).unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
        Some(&mut child),
    )
    .await
    .unwrap();
    let logged = std::fs::read_to_string(&log).unwrap();
    for e in &expected {
        assert!(logged.contains(e.as_str()), "{e:?} not logged:\n{logged}");
    }
}

/// `backends = nc1` without `[nc1]`, or without its url or secret: `check`
/// fails naming the key; the server (like Go's, so existing files keep
/// starting) skips that backend and logs the same text.
#[tokio::test]
async fn listed_backend_without_section_or_secret_is_an_error() {
    let dir = TempDir::new("op-backends").unwrap();
    for (extra, needle) in [
        (
            "",
            "[backend] backends: lists \"nc1\" (line 7), but there is no section [nc1]",
        ),
        (
            "[nc1]\nurl = http://127.0.0.1:9/\n",
            "[nc1] secret: missing",
        ),
        ("[nc1]\nsecret = s3cr3t-value\n", "[nc1] url: missing"),
    ] {
        let port = free_port();
        let base = format!(
            "[http]\nlisten = 127.0.0.1:{port}\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n[backend]\nbackends = nc1\n"
        );
        let path = write(&dir, "server.conf", &format!("{base}{extra}"));
        let (code, out) = check(vec!["--config".into(), path.clone()]).await;
        assert_eq!(code, 1, "{out}");
        assert!(
            out.contains(&format!("FAIL  configuration: {needle}")),
            "{out}"
        );
        let log = dir.join("log");
        let _ = std::fs::remove_file(&log);
        let mut child = start(&path, port, &log).await;
        let logged = std::fs::read_to_string(&log).unwrap();
        assert!(
            logged.contains(needle) && logged.contains("the backend is skipped"),
            "{needle:?} not logged:\n{logged}"
        );
        child.kill();
    }
}

/// The shipped sample as it is: `check` names its placeholder secrets.
#[tokio::test]
async fn shipped_sample_placeholders_are_named() {
    let dir = TempDir::new("op-sample").unwrap();
    let sample =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../server.conf.in"))
            .unwrap();
    let path = write(
        &dir,
        "server.conf",
        &sample.replace("127.0.0.1:8080", &format!("127.0.0.1:{}", free_port())),
    );
    let (_, out) = check(vec!["--config".into(), path]).await;
    for key in [
        "[sessions] hashkey is still the sample's placeholder",
        "[sessions] blockkey is still the sample's placeholder",
        "[clients] internalsecret is still the sample's placeholder",
    ] {
        assert!(out.contains(key), "{key:?} missing in\n{out}");
    }
    assert!(!out.contains("unknown"), "{out}");
}

/// `check` on a host where this server already listens on the address:
/// recognised by its welcome page; another listener still fails, and
/// `--skip-bind` does not try.
#[tokio::test]
async fn check_works_on_a_live_host() {
    let backend = FakeBackend::start(SECRET).await;
    let dir = TempDir::new("op-live").unwrap();
    let port = free_port();
    let text = config_for(&backend.url(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write(&dir, "server.conf", &text);
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path);
    let mut child = ChildGuard::spawn("signaling", &mut cmd, Some(&dir.join("log"))).unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
        Some(&mut child),
    )
    .await
    .unwrap();
    let (code, out) = check(vec!["--config".into(), path.clone()]).await;
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "ok    [http] listen 127.0.0.1:{port}: in use by a running nextcloud-spreed-signaling {}",
            signaling::VERSION
        )),
        "{out}"
    );
    child.kill();

    // Something else holds the port: still a failure, unless skipped.
    let other = std::net::TcpListener::bind(("127.0.0.1", 0)).unwrap();
    let port = other.local_addr().unwrap().port();
    let text = config_for(&backend.url(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write(&dir, "other.conf", &text);
    let accept = std::thread::spawn(move || {
        // Answer the probe with something that is not a welcome page.
        if let Ok((mut s, _)) = other.accept() {
            use std::io::Write;
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello\n");
        }
    });
    let (code, out) = check(vec!["--config".into(), path.clone()]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!(
            "FAIL  [http] listen 127.0.0.1:{port}: cannot bind"
        )),
        "{out}"
    );
    let _ = accept.join();
    let (code, out) = check(vec!["--skip-bind".into(), "--config".into(), path]).await;
    assert!(out.contains("not tried (--skip-bind)"), "{out}");
    assert_eq!(code, 0, "{out}");
}

/// SIGHUP names what it applied, what needs a restart, and refuses a file
/// that would not start.
#[tokio::test]
async fn sighup_reports_applied_restart_and_refused() {
    let backend = FakeBackend::start(SECRET).await;
    let dir = TempDir::new("op-hup").unwrap();
    let port = free_port();
    let text = config_for(&backend.url(), "[app]\nloglevel = info\n")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write(&dir, "server.conf", &text);
    let log = dir.join("log");
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(&path).env_remove("RUST_LOG");
    let mut child = ChildGuard::spawn("signaling", &mut cmd, Some(&log)).unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
        Some(&mut child),
    )
    .await
    .unwrap();
    let hup = |child: &ChildGuard| {
        let ok = Command::new("kill")
            .arg("-HUP")
            .arg(child.id().unwrap().to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();

    // An invalid blockkey: refused as a whole, named.
    std::fs::write(
        &path,
        text.replace(BLOCK_KEY, "short")
            .replace("loglevel = info", "loglevel = warn"),
    )
    .unwrap();
    hup(&child);
    assert_eventually!(logged().contains("configuration not reloaded"));
    assert!(logged().contains("[sessions] blockkey"), "{}", logged());
    assert!(!logged().contains("log level applied"), "{}", logged());

    // A changed listen address and log level: one applied, one for later.
    let other_port = free_port();
    std::fs::write(
        &path,
        text.replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{other_port}"),
        )
        .replace("loglevel = info", "loglevel = debug"),
    )
    .unwrap();
    hup(&child);
    assert_eventually!(logged().contains("need a restart"));
    let l = logged();
    assert!(
        l.contains("configuration reloaded, applied: [app] loglevel"),
        "{l}"
    );
    assert!(
        l.contains("configuration changes that need a restart (the running values are kept): [http] listen"),
        "{l}"
    );
    // Still serving on the old address.
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    child.kill();
}

/// Starts the binary on `text` (whose listen address is 127.0.0.1:`port`),
/// logging to `log`.
async fn start(path: &str, port: u16, log: &std::path::Path) -> ChildGuard {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(path).env("RUST_LOG", "info");
    let mut child = ChildGuard::spawn("signaling", &mut cmd, Some(log)).unwrap();
    wait_for_port(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(10),
        Some(&mut child),
    )
    .await
    .unwrap();
    child
}

/// `/status` from an address outside `[stats] allowed_ips`: 403, and one
/// log line naming the key (not one per request).
#[tokio::test]
async fn refused_statistics_name_allowed_ips() {
    let backend = FakeBackend::start(SECRET).await;
    let dir = TempDir::new("op-stats").unwrap();
    let port = free_port();
    let text = config_for(&backend.url(), "[stats]\nallowed_ips = 192.0.2.1\n")
        .replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write(&dir, "server.conf", &text);
    let log = dir.join("log");
    let _child = start(&path, port, &log).await;
    for p in ["/status", "/metrics", "/status"] {
        let r = RawRequest::get(&format!("http://127.0.0.1:{port}{p}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status, 403, "{p}");
    }
    assert_eventually!(std::fs::read_to_string(&log)
        .unwrap_or_default()
        .contains("not in [stats] allowed_ips"));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert_eq!(
        logged.matches("not in [stats] allowed_ips").count(),
        1,
        "{logged}"
    );
    assert!(
        logged.contains(
            "refused /api/v1/stats, /api/v1/serverinfo, /status and /metrics to 127.0.0.1"
        ),
        "{logged}"
    );
}

/// Nextcloud goes away: every hello's auth request fails, and the log has
/// one readable line for that backend and cause (no Debug dump of hyper's
/// error), not one per request.
#[tokio::test]
async fn backend_failures_are_one_readable_line() {
    let backend = FakeBackend::start(SECRET).await;
    let backend_url = backend.backend_url();
    let dir = TempDir::new("op-backend-down").unwrap();
    let port = free_port();
    let text = config_for(&backend.url(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    let path = write(&dir, "server.conf", &text);
    let log = dir.join("log");
    let _child = start(&path, port, &log).await;
    let url = format!("ws://127.0.0.1:{port}/spreed");
    let mut c = TestClient::connect(&url).await.skip("welcome");
    c.hello_user(&backend_url, "alice").await;
    drop(backend);
    for i in 0..4 {
        let mut c = TestClient::connect(&url).await.skip("welcome");
        let r = c
            .hello_v1(
                &backend_url,
                json!({"userid": format!("user{i}"), "ticket": "t"}),
            )
            .await;
        assert_eq!(r["type"], "error", "{r}");
    }
    let logged = || std::fs::read_to_string(&log).unwrap_or_default();
    assert_eventually!(logged().contains("requests to the backend fail"));
    let l = logged();
    let lines: Vec<&str> = l
        .lines()
        .filter(|l| l.contains("requests to the backend fail"))
        .collect();
    assert_eq!(lines.len(), 1, "{l}");
    assert!(lines[0].contains("Connection refused"), "{l}");
    assert!(
        !l.contains("hyper_util") && !l.contains("Error(Connect"),
        "{l}"
    );
    assert!(!l.contains("backend auth request failed"), "{l}");
}

/// `/api/v1/serverinfo` and `/status` list every configured backend, also
/// one without sessions.
#[tokio::test]
async fn status_lists_configured_backends_without_sessions() {
    let s = TestServer::start().await;
    let info = signaling::status::ServerInfo::collect(&s.server);
    let json = serde_json::to_value(&info).unwrap();
    assert_eq!(
        json["sessions"]["backends"]["backend1"],
        json!({}),
        "{json}"
    );
    let html = info.to_html();
    assert!(
        html.contains("<tr><td>backend1</td><td>-</td><td class=\"n\">0</td></tr>"),
        "{html}"
    );
}

/// `check` with `[mcu] type = proxy` reads the token key: its size and
/// encoding, or why it is not a usable RSA private key.
#[tokio::test]
async fn check_reports_the_proxy_token_key() {
    let backend = FakeBackend::start(SECRET).await;
    let dir = TempDir::new("op-token-key").unwrap();
    let (private, public) = runtime::keys::generate(2048).unwrap();
    let key = write(&dir, "server9.key", &private);
    let proxy = format!("ws://127.0.0.1:{}/", free_port());
    let config = |key: &str| {
        config_for(
            &backend.url(),
            &format!("[mcu]\ntype = proxy\nurl = {proxy}\ntoken_id = server9\ntoken_key = {key}\n"),
        )
        .replace("127.0.0.1:0", &format!("127.0.0.1:{}", free_port()))
    };
    let good = write(&dir, "good.conf", &config(&key));
    let (_, out) = check(vec!["--config".into(), good]).await;
    assert!(
        out.contains(&format!(
            "ok    [mcu] token_key: {key}: RSA 2048-bit private key (PKCS#8)"
        )),
        "{out}"
    );
    // A public key where the private one belongs.
    let wrong = write(&dir, "server9.pub", &public);
    let bad = write(&dir, "bad.conf", &config(&wrong));
    let (code, out) = check(vec!["--config".into(), bad]).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL  [mcu] token_key") && out.contains("not an RSA private key"),
        "{out}"
    );
}

/// `SIGNALING__SECTION__KEY` overrides a key of the file (containers): a
/// backend's secret and the session keys given only in the environment.
#[tokio::test]
async fn environment_overrides_keys_of_the_file() {
    let dir = TempDir::new("op-env").unwrap();
    let conf = format!(
        "[http]\nlisten = 127.0.0.1:{}\n[sessions]\nhashkey = change-me-session-hash-key-32chr\nblockkey = {BLOCK_KEY}\n[backend]\nbackends = nc1\n[nc1]\nurl = http://127.0.0.1:{}/\n",
        free_port(),
        free_port()
    );
    let path = write(&dir, "server.conf", &conf);
    let run_check = |env: Vec<(&'static str, &'static str)>| {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            let out = Command::new(BIN)
                .args(["check", "--skip-bind", "--config", &path])
                .envs(env)
                .stdin(Stdio::null())
                .output()
                .unwrap();
            text(&out.stdout)
        })
    };
    let out = run_check(vec![]).await.unwrap();
    assert!(
        out.contains("FAIL  configuration: [nc1] secret: missing"),
        "{out}"
    );
    let out = run_check(vec![
        ("SIGNALING__NC1__SECRET", "s3cr3t-from-env"),
        ("SIGNALING__SESSIONS__HASHKEY", HASH_KEY),
    ])
    .await
    .unwrap();
    assert!(out.contains("ok    configuration"), "{out}");
    assert!(!out.contains("placeholder"), "{out}");
}
