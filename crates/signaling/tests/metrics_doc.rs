//! Every metric family the servers expose at `/metrics` is listed in
//! `docs/metrics.md` with its type, and the `process_*` families of the Go
//! server are there (signaling server with Janus and with NATS, and proxy).
// Single server only: one process's `/metrics` families against the documentation.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

/// `(name, type)` of every family in a Prometheus text exposition.
fn families(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| {
            let (name, kind) = l.split_once(' ')?;
            Some((name.to_owned(), kind.to_owned()))
        })
        .collect()
}

fn doc() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/metrics.md"
    ))
    .unwrap()
}

fn assert_documented(what: &str, exposed: &str) {
    let doc = doc();
    let fams = families(exposed);
    assert!(fams.len() > 5, "{what}: {exposed}");
    for (name, kind) in fams {
        assert!(
            doc.contains(&format!("| `{name}` | {kind} |")),
            "{what}: {name} ({kind}) is not in docs/metrics.md"
        );
    }
}

/// What `/metrics` serves (the route renders this registry).
fn metrics_of(server: &TestServer) -> String {
    server.server.hub.metrics.registry.render()
}

#[tokio::test]
async fn every_exposed_metric_is_documented() {
    // Janus: the MCU families (connecting in the background is enough).
    let server = TestServer::start_with("[mcu]\ntype = janus\nurl = ws://127.0.0.1:9/\n").await;
    let text = metrics_of(&server);
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
        "signaling_mcu_janus_connected",
        "signaling_server_connections",
    ] {
        assert!(
            text.contains(&format!("\n{name} ")),
            "{name} missing:\n{text}"
        );
    }
    assert_documented("signaling with janus", &text);

    // NATS: the cluster families.
    let nats = testkit::NatsServer::start().await.unwrap();
    let server = TestServer::start_with(&format!("[nats]\nurl = {}\n", nats.url())).await;
    assert_documented("signaling with nats", &metrics_of(&server));

    // The proxy's registry.
    let dir = TempDir::new("metrics-doc").unwrap();
    let public = dir.join("key.pub");
    std::fs::write(&public, TokenKey::Rsa.public_pem()).unwrap();
    let ini = runtime::config::Ini::parse(&format!(
        "[http]\nlisten = 127.0.0.1:0\n[mcu]\nurl = ws://127.0.0.1:9/\n[tokens]\nserver1 = {}\n",
        public.display()
    ))
    .unwrap();
    let proxy = proxy::ProxyServer::build(&ini).unwrap();
    let text = proxy.registry.render();
    assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    assert_documented("proxy", &text);
}
