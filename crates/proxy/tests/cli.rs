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
    let mut child = Command::new(BIN)
        .args(["check", "--config", "/nonexistent/proxy.conf"])
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
