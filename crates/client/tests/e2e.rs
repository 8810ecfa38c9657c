//! End to end: the `client` binary against our server, started in-process
//! with `allowall`, authenticating against the client's embedded backend.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use runtime::config::Ini;
use serde_json::Value;
use signaling::{bind_and_serve, ListenConfig, Server};

const SECRET: &str = "bench-backend-secret";
const HASH_KEY: &str = "0123456789abcdef0123456789abcdef";
const BLOCK_KEY: &str = "fedcba9876543210";

fn config_text() -> String {
    format!(
        "[http]\nlisten = 127.0.0.1:0\n\
         [sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
         [backend]\nallowall = true\nsecret = {SECRET}\ntimeout = 10\n\
         [nats]\nurl = :loopback:\n"
    )
}

/// Our server on a free loopback port; keep the handle for the test's length.
async fn start_server() -> (Arc<Server>, SocketAddr) {
    let ini = Ini::parse(&config_text()).expect("config parses");
    let server = Server::build(&ini).expect("server builds");
    let listen = ListenConfig::from_config(&ini).expect("listen config");
    let addrs = bind_and_serve(&server, &listen)
        .await
        .expect("listeners bind");
    (server, addrs[0])
}

/// The same configuration as a file, for the client's `-config`.
fn config_file(name: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("client-e2e-{}-{name}.conf", std::process::id()));
    std::fs::write(&path, config_text()).expect("write config");
    path
}

struct Run {
    code: Option<i32>,
    report: Value,
    stderr: String,
}

/// Runs the binary (blocking, off the runtime so the server keeps serving).
async fn client(args: Vec<String>) -> Run {
    let out = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_client"))
            .args(&args)
            .env("RUST_LOG", "warn")
            .output()
            .expect("client runs")
    })
    .await
    .expect("join");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("no JSON report ({e}); stdout: {stdout}\nstderr: {stderr}"));
    Run {
        code: out.status.code(),
        report,
        stderr,
    }
}

fn args(scenario: &str, addr: SocketAddr, config: &Path, extra: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = vec![
        scenario.into(),
        "-addr".into(),
        addr.to_string(),
        "-config".into(),
        config.display().to_string(),
        "--json".into(),
        "--server-pid".into(),
        std::process::id().to_string(),
    ];
    v.extend(extra.iter().map(|s| s.to_string()));
    v
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flood_delivers_everything() {
    let (_server, addr) = start_server().await;
    let config = config_file("flood");
    let plot = std::env::temp_dir().join(format!("client-e2e-{}-flood.png", std::process::id()));
    let run = client(args(
        "flood",
        addr,
        &config,
        &[
            "-maxClients",
            "20",
            "--duration",
            "1.5",
            "--window",
            "8",
            "--plot",
            &plot.display().to_string(),
        ],
    ))
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "report: {r:#}\nstderr: {}", run.stderr);
    assert_eq!(r["scenario"], "flood");
    // Tool version, start time and parameters, for comparing reports.
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        r["started_at"]
            .as_str()
            .is_some_and(|t| t.ends_with(" UTC")),
        "{r:#}"
    );
    assert_eq!(u(&r["parameters"]["clients"]), 20);
    assert_eq!(u(&r["parameters"]["window"]), 8);
    assert_eq!(f(&r["parameters"]["duration_s"]), 1.5);
    assert_eq!(u(&r["clients"]["ready"]), 20, "{r:#}");
    assert_eq!(u(&r["clients"]["failed"]), 0);
    assert_eq!(u(&r["backend"]["auth"]), 20, "one auth request per hello");
    let m = &r["messages"];
    assert!(u(&m["sent"]) > 0, "{m:#}");
    assert_eq!(u(&m["lost"]), 0, "{m:#}");
    assert_eq!(u(&m["duplicated"]), 0, "{m:#}");
    assert_eq!(u(&m["unknown"]), 0, "{m:#}");
    assert_eq!(u(&m["delivered"]), u(&m["sent"]), "{m:#}");
    assert!(f(&m["delivered_per_s"]) > 0.0, "{m:#}");
    assert!(f(&m["latency"]["p99_ms"]) > 0.0, "{m:#}");
    assert!(f(&r["server"]["delivered_per_cpu_s"]) > 0.0, "{r:#}");
    assert!(f(&r["setup"]["server_cpu_ms_per_hello"]) > 0.0, "{r:#}");
    assert!(!r["timeline"].as_array().expect("timeline").is_empty());
    let png = std::fs::read(&plot).expect("plot written");
    assert_eq!(&png[1..4], b"PNG");
    let _ = std::fs::remove_file(&plot);
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_fan_out_delivers_to_every_member() {
    let (_server, addr) = start_server().await;
    let config = config_file("room");
    let run = client(args(
        "room",
        addr,
        &config,
        &[
            "-maxClients",
            "20",
            "--room-size",
            "5",
            "--rate",
            "400",
            "--duration",
            "1.5",
        ],
    ))
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "report: {r:#}\nstderr: {}", run.stderr);
    assert_eq!(u(&r["clients"]["ready"]), 20, "{r:#}");
    assert_eq!(u(&r["setup"]["rooms"]), 4);
    // Joining asks the backend once per client.
    assert!(u(&r["backend"]["room"]) >= 20, "{r:#}");
    let m = &r["messages"];
    let sent = u(&m["sent"]);
    assert!(sent > 0, "{m:#}");
    assert_eq!(
        u(&m["expected"]),
        sent * 4,
        "each message goes to the 4 others: {m:#}"
    );
    assert_eq!(u(&m["lost"]), 0, "{m:#}");
    assert_eq!(u(&m["duplicated"]), 0, "{m:#}");
    assert_eq!(u(&m["delivered"]), sent * 4, "{m:#}");
    assert!(f(&m["delivered_per_s"]) > 0.0, "{m:#}");
    assert!(f(&r["server"]["delivered_per_cpu_s"]) > 0.0, "{r:#}");
    assert!(
        r["setup"]["server_cpu_ms_per_hello_and_join"].is_number(),
        "{r:#}"
    );
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_and_idle_report_per_session_costs() {
    let (_server, addr) = start_server().await;
    let config = config_file("connect");
    let run = client(args("connect", addr, &config, &["-maxClients", "10"])).await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "report: {r:#}\nstderr: {}", run.stderr);
    assert_eq!(u(&r["setup"]["hellos"]), 10, "{r:#}");
    assert!(f(&r["setup"]["hellos_per_s"]) > 0.0);
    assert_eq!(u(&r["setup"]["hello_latency"]["count"]), 10);
    assert!(r["setup"]["server_cpu_ms_per_hello"].is_number(), "{r:#}");
    assert!(r.get("messages").is_none());

    let run = client(args(
        "idle",
        addr,
        &config,
        &["-maxClients", "10", "--duration", "0.3", "--settle", "0.2"],
    ))
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(0), "report: {r:#}\nstderr: {}", run.stderr);
    assert_eq!(u(&r["idle"]["sessions"]), 10, "{r:#}");
    assert_eq!(u(&r["idle"]["alive_at_end"]), 10, "{r:#}");
    assert!(r["idle"]["rss_kib_per_session"].is_number(), "{r:#}");
    let _ = std::fs::remove_file(&config);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_fails_loudly() {
    let (_server, addr) = start_server().await;
    let config = config_file("secret");
    let run = client(args(
        "flood",
        addr,
        &config,
        &[
            "-maxClients",
            "2",
            "--secret",
            "not-the-secret",
            "--duration",
            "0.2",
        ],
    ))
    .await;
    let r = &run.report;
    assert_eq!(run.code, Some(1), "report: {r:#}\nstderr: {}", run.stderr);
    assert!(r["error"].is_string(), "{r:#}");
    assert_eq!(u(&r["clients"]["ready"]), 0, "{r:#}");
    assert_eq!(u(&r["clients"]["failed"]), 2, "{r:#}");
    assert!(u(&r["backend"]["rejected"]) >= 2, "{r:#}");
    let _ = std::fs::remove_file(&config);
}

fn client_sync(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_client"))
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("client runs")
}

/// Help and version exit 0 (`-h`, `--help`, `help`, `-V`, `--version`,
/// Go's `-version`); a wrong flag exits 64.
#[test]
fn help_version_and_usage_errors() {
    for args in [&["--help"][..], &["-h"], &["help"], &["-help"]] {
        let out = client_sync(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        let help = String::from_utf8_lossy(&out.stdout);
        for needle in ["Usage: client", "--max-clients", "flood", "Exit status"] {
            assert!(
                help.contains(needle),
                "{args:?}: {needle:?} missing in\n{help}"
            );
        }
    }
    for flag in ["-V", "--version", "-version"] {
        let out = client_sync(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")),
            "{flag}"
        );
    }
    for args in [&["-nosuchflag"][..], &["dance"], &["-maxClients", "1"]] {
        assert_eq!(client_sync(args).status.code(), Some(64), "{args:?}");
    }
}

/// No server listening: exit 1 with a line saying so, not a report of
/// refused clients with exit 0.
#[test]
fn no_server_exits_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let out = client_sync(&[
        "-addr",
        &format!("127.0.0.1:{port}"),
        "-secret",
        "x",
        "-maxClients",
        "4",
        "-duration",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no signaling server reachable"), "{err}");
}
