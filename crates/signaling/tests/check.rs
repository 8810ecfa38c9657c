//! `signaling check`: the real binary against a fake Nextcloud and a real
//! Janus, once with everything right and once per typical mistake.
// Single server only: `signaling check` runs one binary against its own configuration.

mod common;

use common::media::start_janus;
use common::*;

async fn check(config: &str) -> (i32, String) {
    let dir = TempDir::new("check").expect("dir");
    let path = dir.join("server.conf");
    std::fs::write(&path, config).expect("write");
    // Blocking wait on its own thread; `check` bounds every step itself.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_signaling"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .output()
    })
    .await
    .expect("join")
    .expect("runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn with_port(config: String, port: u16) -> String {
    config.replace(
        "listen = 127.0.0.1:0",
        &format!("listen = 127.0.0.1:{port}"),
    )
}

#[tokio::test]
async fn check_passes_when_everything_is_right() {
    let backend = FakeBackend::start(SECRET).await;
    let janus = start_janus().await;
    let config = with_port(
        config_for(
            &backend.url(),
            &format!("[mcu]\ntype = janus\nurl = {}\n", janus.url()),
        ),
        free_port(),
    );
    let (code, out) = check(&config).await;
    assert_eq!(code, 0, "{out}");
    for line in [
        "ok    configuration",
        "ok    [http] listen",
        "capabilities answered, Talk installed",
        "signed request accepted",
        "clock in sync",
        "Janus 1.1",
        "in-process bus",
        "0 failed",
    ] {
        assert!(out.contains(line), "{line:?} missing in:\n{out}");
    }
}

#[tokio::test]
async fn check_names_each_typical_mistake() {
    let backend = FakeBackend::start(SECRET).await;
    // Wrong shared secret.
    let wrong = with_port(config_for(&backend.url(), ""), free_port())
        .replace(&format!("secret = {SECRET}"), "secret = not-the-secret");
    let (code, out) = check(&wrong).await;
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("FAIL") && out.contains("shared secret is refused"),
        "{out}"
    );

    // Nextcloud not reachable, Janus not reachable, port taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    // Ports that refuse connections for as long as the test runs.
    let (dead_http, dead_janus) = (
        DeadPort::new().expect("port"),
        DeadPort::new().expect("port"),
    );
    let dead = format!("http://127.0.0.1:{}/", dead_http.port());
    let config = with_port(
        config_for(
            &dead,
            &format!(
                "[mcu]\ntype = janus\nurl = ws://127.0.0.1:{}\n",
                dead_janus.port()
            ),
        ),
        port,
    );
    let (code, out) = check(&config).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("capabilities not reachable"), "{out}");
    assert!(out.contains("FAIL  janus"), "{out}");
    assert!(out.contains("FAIL  [http] listen"), "{out}");

    // A configuration error names the key.
    let (code, out) = check("[http]\nlisten = 127.0.0.1:0\n[sessions]\nhashkey = 0123456789abcdef0123456789abcdef\nblockkey = short\n").await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  configuration"), "{out}");
    assert!(out.contains("block"), "{out}");
}

/// A self-signed certificate valid for `days` (paths as strings).
fn certificate(dir: &TempDir, name: &str, days: u32) -> (String, String) {
    let (cert, key) = self_signed_cert(dir, name, days).expect("openssl makes a certificate");
    (cert.display().to_string(), key.display().to_string())
}

/// The HTTPS certificate's expiry: far away is ok with the date, within 14
/// days a warning (exit code still 0), a file that is no certificate fails.
#[tokio::test]
async fn check_reports_certificate_expiry() {
    let backend = FakeBackend::start(SECRET).await;
    let dir = TempDir::new("check-cert").expect("dir");
    let https = |(cert, key): (String, String)| {
        with_port(
            config_for(
                &backend.url(),
                &format!(
                    "[https]\nlisten = 127.0.0.1:{}\ncertificate = {cert}\nkey = {key}\n",
                    free_port()
                ),
            ),
            free_port(),
        )
    };
    let in_days = |days: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        runtime::dates::date(now + days * 86_400)
    };

    let (code, out) = check(&https(certificate(&dir, "long", 400))).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("ok    [https] certificate"), "{out}");
    assert!(
        out.contains(&format!("valid until {}", in_days(400))),
        "{out}"
    );

    let (code, out) = check(&https(certificate(&dir, "short", 5))).await;
    assert_eq!(code, 0, "a warning is no failure: {out}");
    assert!(out.contains("warn  [https] certificate"), "{out}");
    assert!(out.contains("expires soon"), "{out}");
    assert!(
        out.contains(&format!("valid until {}", in_days(5))),
        "{out}"
    );

    let (_, key) = certificate(&dir, "other", 400);
    let bogus = dir.join("bogus.crt");
    std::fs::write(
        &bogus,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .unwrap();
    let (code, out) = check(&https((bogus.display().to_string(), key))).await;
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL  [https] certificate"), "{out}");
}
