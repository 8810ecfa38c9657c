//! The `proxy` command line: help and version exit 0, Go's single-dash
//! flags and any order work, a wrong flag exits 64, a closed stdout is a
//! quiet exit, and a typo in `proxy.conf` is named with its line.
#![allow(clippy::unwrap_used)]
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_proxy");

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

#[test]
fn help_and_version() {
    for args in [&["--help"][..], &["-h"], &["help"], &["-help"]] {
        let out = run(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = text(&out.stdout);
        for needle in ["Usage: proxy", "check", "--config", "proxy.conf", "SIGUSR1"] {
            assert!(
                help.contains(needle),
                "{args:?}: {needle:?} missing in\n{help}"
            );
        }
    }
    for flag in ["-V", "--version", "-version"] {
        let out = run(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(text(&out.stdout).contains(proxy::VERSION), "{flag}");
    }
    let out = run(&["--bogus"]);
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn any_order_go_flags_and_lint() {
    let dir = testkit::TempDir::new("proxy-cli").unwrap();
    let path = dir.join("proxy.conf");
    std::fs::write(
        &path,
        "[http]\nlisten = 127.0.0.1:0\n[mcu]\nurl = ws://127.0.0.1:9/\n[tokenz]\nx = y\n",
    )
    .unwrap();
    let p = path.display().to_string();
    for args in [
        vec!["check", "--config", &p],
        vec!["-config", &p, "check"],
        vec!["check", "--skip-bind", &format!("-config={p}")],
    ] {
        let out = run(&args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let stdout = text(&out.stdout);
        assert!(
            stdout.contains(&format!("warn  {p}:5: unknown section [tokenz]")),
            "{args:?}: {stdout}"
        );
    }
}

#[test]
fn closed_stdout_is_a_quiet_exit() {
    // The shell waits a moment before starting the binary, so the reading
    // end is closed (below) before the first line is written.
    let mut child = Command::new("sh")
        .args([
            "-c",
            "sleep 0.3; exec \"$0\" check --config /nonexistent/proxy.conf",
            BIN,
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(141), "{err}");
}

/// `proxy genkey` writes a key pair (private 0600), says which lines go
/// where, refuses to overwrite, and the pair works for what the servers do
/// with it (RS256 tokens through jsonwebtoken); `proxy check` reports the
/// public key's size and encoding.
#[test]
fn genkey_writes_a_working_pair() {
    use std::os::unix::fs::PermissionsExt;
    let dir = testkit::TempDir::new("proxy-genkey").unwrap();
    let out_dir = dir.path().display().to_string();
    let out = run(&["genkey", "--id", "server9", "--out", &out_dir]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let key = dir.join("server9.key");
    let public = dir.join("server9.pub");
    assert!(stdout.contains("token_id = server9"), "{stdout}");
    assert!(
        stdout.contains(&format!("token_key = {}", key.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("server9 = {}", public.display())),
        "{stdout}"
    );
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let (private, _) = runtime::keys::load_private(&key).unwrap();
    let (public_key, _) = runtime::keys::load_public(&public).unwrap();
    assert!(runtime::keys::matches(&private, &public_key));
    assert_eq!(runtime::keys::bits(&public_key), 2048);
    let claims = serde_json::json!({"iss": "server9", "iat": 1, "sub": "x"});
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&key).unwrap()).unwrap(),
    )
    .unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    jsonwebtoken::decode::<serde_json::Value>(
        &token,
        &jsonwebtoken::DecodingKey::from_rsa_pem(&std::fs::read(&public).unwrap()).unwrap(),
        &validation,
    )
    .unwrap();

    // Not over an existing pair.
    let again = run(&["genkey", "--id", "server9", "--out", &out_dir]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("not overwritten"));
    assert_eq!(std::fs::read(&key).unwrap(), {
        let (p, _) = runtime::keys::load_private(&key).unwrap();
        assert!(runtime::keys::matches(&p, &public_key));
        std::fs::read(&key).unwrap()
    });

    let conf = dir.join("proxy.conf");
    std::fs::write(
        &conf,
        format!(
            "[http]\nlisten = 127.0.0.1:0\n[mcu]\nurl = ws://127.0.0.1:9/\n[tokens]\nserver9 = {}\n",
            public.display()
        ),
    )
    .unwrap();
    let conf_s = conf.display().to_string();
    let matching = format!("server9={}", key.display());
    let out = run(&["check", "--config", &conf_s, "--match-key", &matching]);
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains(&format!(
            "ok    [tokens] server9 and {}: one key pair",
            key.display()
        )),
        "{stdout}"
    );
    // Another server's key: refused tokens, said before they happen.
    let (other, _) = runtime::keys::generate(1024).unwrap();
    let other_path = dir.join("other.key");
    std::fs::write(&other_path, other).unwrap();
    let other_arg = format!("server9={}", other_path.display());
    let out2 = run(&["check", "--match-key", &other_arg, "--config", &conf_s]);
    let stdout2 = text(&out2.stdout);
    assert_eq!(out2.status.code(), Some(1), "{stdout2}");
    assert!(
        stdout2.contains("FAIL  [tokens] server9 and") && stdout2.contains("not one pair"),
        "{stdout2}"
    );
    assert!(
        stdout.contains(&format!(
            "ok    [tokens] server9: {}: RSA 2048-bit public key (PKCS#8)",
            public.display()
        )),
        "{stdout}"
    );
}
