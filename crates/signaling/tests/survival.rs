//! Fault survival: the server is abused in one way per test while two
//! monitor sessions (`testkit::Monitors`) exchange numbered messages the
//! whole time. Each test fails if a monitor loses, reorders or receives a
//! stray message, or is disconnected — on top of its own checks.
//!
//! Tests that bound memory or send signals run the real `signaling` binary
//! (its RSS is read from `/proc`); the others run the server in-process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "robustness_rawws/mod.rs"]
mod rawws;

use common::*;
use futures_util::future::join_all;
use rawws::RawWs;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_signaling");
const PACE: Duration = Duration::from_millis(5);

async fn monitors(url: &str, backend_url: &str) -> Monitors {
    let mut a = TestClient::connect(url).await.skip("welcome");
    a.hello_user(backend_url, "monitor-a").await;
    let mut b = TestClient::connect(url).await.skip("welcome");
    b.hello_user(backend_url, "monitor-b").await;
    Monitors::start(a, b, PACE)
}

/// The two monitors on the next nodes in turn.
async fn monitors_of(s: &TestServer) -> Monitors {
    let a = s.user("monitor-a").await;
    let b = s.user("monitor-b").await;
    Monitors::start(a, b, PACE)
}

/// Sum of metric `name` over all nodes of `s` (what one server reports).
async fn metric_all(s: &TestServer, name: &str) -> f64 {
    let mut sum = 0.0;
    for (_, addr) in &s.nodes {
        sum += metric(&format!("http://{addr}/"), name).await;
    }
    sum
}

/// Sum of all samples of metric `name` (any labels) from `base`/metrics.
async fn metric(base: &str, name: &str) -> f64 {
    let resp = RawRequest::get(&format!("{base}metrics"))
        .send()
        .await
        .expect("metrics answer");
    resp.text()
        .lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with(' ') || rest.starts_with('{'))
        })
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<f64>().ok())
        .sum()
}

/// The real binary on a free port with `extra` config and one fake backend.
struct Binary {
    child: ChildGuard,
    port: u16,
    config: std::path::PathBuf,
    _dir: TempDir,
}

impl Binary {
    async fn start(backend: &FakeBackend, extra: &str) -> Binary {
        let dir = TempDir::new("survival").unwrap();
        let port = free_port();
        let text =
            config_for(&backend.url(), extra).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
        let config = dir.join("server.conf");
        std::fs::write(&config, text).unwrap();
        let mut cmd = Command::new(BIN);
        cmd.arg("--config").arg(&config).env("RUST_LOG", "warn");
        let mut child = ChildGuard::spawn("signaling", &mut cmd, Some(&dir.join("log"))).unwrap();
        wait_for_port(
            ([127, 0, 0, 1], port).into(),
            Duration::from_secs(10),
            Some(&mut child),
        )
        .await
        .unwrap();
        Binary {
            child,
            port,
            config,
            _dir: dir,
        }
    }

    fn url(&self) -> String {
        format!("ws://127.0.0.1:{}/spreed", self.port)
    }

    fn base(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    fn addr(&self) -> std::net::SocketAddr {
        ([127, 0, 0, 1], self.port).into()
    }

    /// Resident memory of the process in KiB.
    fn rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS")
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(pid.to_string())
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {pid}");
    }
}

/// Wait until the server counts exactly `n` sessions.
async fn sessions_become(base: &str, n: f64, within: Duration) {
    let mut last = -1.0;
    let ok = eventually(within, || {
        let base = base.to_owned();
        async move { metric(&base, "signaling_hub_sessions").await == n }
    })
    .await;
    if !ok {
        last = metric(base, "signaling_hub_sessions").await;
    }
    assert!(ok, "sessions stayed at {last}, expected {n}");
}

/// Wait until the servers of `s` count exactly `n` sessions in all.
async fn sessions_become_all(s: &TestServer, n: f64, within: Duration) {
    let mut last = -1.0;
    let ok = eventually(within, || async move {
        metric_all(s, "signaling_hub_sessions").await == n
    })
    .await;
    if !ok {
        last = metric_all(s, "signaling_hub_sessions").await;
    }
    assert!(ok, "sessions stayed at {last}, expected {n}");
}

/// Probe from `x` to `y` (on another node) until one arrives.
async fn reach(x: &mut TestClient, y: &mut TestClient, y_id: &str, tag: &str) -> bool {
    for n in 0..100 {
        x.send_message(recipient_session(y_id), json!({"probe": tag, "n": n}))
            .await;
        if let Some(m) = y.recv_timeout(Duration::from_millis(100)).await {
            assert_eq!(m["message"]["data"]["probe"], tag, "{m}");
            while y.recv_timeout(Duration::from_millis(100)).await.is_some() {}
            return true;
        }
    }
    false
}

// ---------------------------------------------------------------------------

/// Hundreds of connections sending garbage of every kind (random bytes,
/// truncated and deeply nested JSON, huge frames, invalid UTF-8, bad
/// opcodes, half hellos) for three seconds: the monitors see nothing of it
/// and the server still takes new clients afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_storm_from_hundreds_of_connections() {
    garbage_storm_from_hundreds_of_connections_on(Topology::Single).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_storm_from_hundreds_of_connections_in_a_cluster() {
    garbage_storm_from_hundreds_of_connections_on(Topology::Cluster).await
}

async fn garbage_storm_from_hundreds_of_connections_on(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mon = monitors_of(&s).await;
    let until = Instant::now() + Duration::from_secs(3);
    let conns = Arc::new(AtomicUsize::new(0));
    let storm: Vec<_> = (0..300)
        .map(|n| {
            tokio::spawn(rawws::garbage_client(
                s.nodes[n % s.nodes.len()].1,
                s.backend.backend_url(),
                n * 7,
                until,
                conns.clone(),
            ))
        })
        .collect();
    for t in join_all(storm).await {
        t.expect("garbage task");
    }
    let (report, _a, _b) = mon.finish().await;
    // The storm shares two cores with the server: the monitors slow down.
    assert!(report.total() > 10, "monitors barely ran: {report:?}");
    assert!(
        conns.load(Ordering::Relaxed) >= 300,
        "storm too small: {} connections",
        conns.load(Ordering::Relaxed)
    );
    let mut c = s.client().await;
    c.hello_user(&s.backend.backend_url(), "after-storm").await;
    // Storm sessions that said hello expire; none of them is in a room.
    assert_eq!(metric_all(&s, "signaling_hub_rooms").await, 0.0);
}

/// 20,000 connections that say hello and drop without `bye`: once the
/// resume window (2 s here) has passed, the session count is back to the
/// monitors alone and the process has not grown beyond a fixed margin
/// over its size after two warm-up rounds of the same size.
// Single server only: bounds the memory of one server process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_disconnect_cycles_return_to_baseline() {
    let backend = FakeBackend::start(SECRET).await;
    let bin = Binary::start(&backend, "[sessions]\nresumewindow = 2\n").await;
    let mon = monitors(&bin.url(), &backend.backend_url()).await;

    async fn cycles(url: String, backend_url: String, n: usize, worker: usize) {
        for i in 0..n {
            let mut c = TestClient::connect(&url).await.skip("welcome");
            c.hello_user(&backend_url, &format!("cycler-{worker}-{i}"))
                .await;
            drop(c); // TCP closed, no bye
        }
    }
    async fn round(bin: &Binary, backend: &FakeBackend, total: usize) {
        const WORKERS: usize = 40;
        join_all(
            (0..WORKERS).map(|w| cycles(bin.url(), backend.backend_url(), total / WORKERS, w)),
        )
        .await;
    }

    // Warm-up with the same load, twice: the allocator keeps what the peak
    // number of sessions waiting in the resume window needed, and that peak
    // depends on how fast the cycles ran (a warm-up slowed by the tests
    // beside it reached a lower peak, and the difference showed as growth).
    // A leak grows with every round; a high-water mark does not.
    for _ in 0..2 {
        round(&bin, &backend, 20_000).await;
        sessions_become(&bin.base(), 2.0, Duration::from_secs(10)).await;
    }
    let baseline = bin.rss_kib();

    let started = Instant::now();
    round(&bin, &backend, 20_000).await;
    let took = started.elapsed();
    let peak = bin.rss_kib();
    sessions_become(&bin.base(), 2.0, Duration::from_secs(15)).await;
    assert_eq!(
        metric(&bin.base(), "signaling_server_connections").await,
        2.0
    );
    // The server gives freed memory back every 10 s once connections fell
    // (`trim.rs`): a leak never comes back down, retained free memory does.
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut after = bin.rss_kib();
    while after > baseline + 4 * 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        after = bin.rss_kib();
    }
    let (report, _a, _b) = mon.finish().await;
    eprintln!(
        "20000 cycles in {took:?}; RSS baseline {baseline} KiB, right after {peak} KiB, \
         after expiry {after} KiB; monitors {report:?}"
    );
    // A leak of 200 bytes per cycle (4 MB) would not fit.
    assert!(
        after <= baseline + 4 * 1024,
        "RSS grew from {baseline} KiB to {after} KiB"
    );
    assert!(backend.count("auth") >= 40_000);
}

/// 1,000 sessions lose their connections at the same moment; messages sent
/// to each while away are delivered exactly once, in order, after all of
/// them resume at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sessions_drop_and_resume_at_once() {
    thousand_sessions_drop_and_resume_at_once_on(Topology::Single).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_sessions_drop_and_resume_at_once_in_a_cluster() {
    thousand_sessions_drop_and_resume_at_once_on(Topology::Cluster).await
}

async fn thousand_sessions_drop_and_resume_at_once_on(t: Topology) {
    const N: usize = 1000;
    let s = TestServer::start_on(t).await;
    let mon = monitors_of(&s).await;
    let url = s.ws_url();
    let backend_url = s.backend.backend_url();
    let mut ids = Vec::with_capacity(N);
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        let hellos = join_all(chunk.iter().map(|i| {
            let (url, backend_url) = (url.clone(), backend_url.clone());
            async move {
                let mut c = TestClient::connect(&url).await.skip("welcome");
                c.hello_user(&backend_url, &format!("dropper-{i}")).await;
                c
            }
        }))
        .await;
        ids.extend(hellos);
    }
    let ids: Vec<(String, String)> = ids
        .into_iter()
        .map(|c| {
            let pair = (
                c.session_id().unwrap().to_owned(),
                c.resume_id().unwrap().to_owned(),
            );
            drop(c); // all connections go at once
            pair
        })
        .collect();
    sessions_become_all(&s, (N + 2) as f64, Duration::from_secs(5)).await;
    assert_eventually!(
        Duration::from_secs(10),
        metric_all(&s, "signaling_server_connections").await == 2.0
    );

    let mut sender = s.user("sender").await;
    for (i, (sid, _)) in ids.iter().enumerate() {
        for k in 0..3 {
            sender
                .send_message(recipient_session(sid), json!({"to": i, "k": k}))
                .await;
        }
    }
    // Every message was routed once the sender's next request is answered
    // (and, in a cluster, delivered on the sessions' node once settled).
    let r = sender.request(json!({"id": "sync", "type": "room"})).await;
    assert_eq!(r["id"], "sync");
    s.settle().await;

    // In a cluster all of them resume on another node than their own.
    let resume_url = s.ws_url();
    let resumed = join_all(ids.iter().enumerate().map(|(i, (sid, rid))| {
        let url = resume_url.clone();
        async move {
            let mut c = TestClient::connect(&url).await.skip("welcome");
            let r = c.hello_resume(rid).await;
            assert_eq!(r["hello"]["sessionid"], sid.as_str(), "{r}");
            for k in 0..3 {
                let m = c.recv().await;
                assert_eq!(m["message"]["data"], json!({"to": i, "k": k}), "{m}");
            }
            c.expect_no_message(Duration::from_millis(200)).await;
            c
        }
    }))
    .await;
    assert_eq!(resumed.len(), N);
    assert_eq!(
        metric_all(&s, "signaling_hub_sessions_resume_total").await,
        N as f64
    );
    let (report, _a, _b) = mon.finish().await;
    assert!(report.total() > 0);
}

/// Five readers that never read in a room of 10 while a member floods it:
/// each is cut off on its own (queue overflow), the server's memory stays
/// bounded, the readers of the room and the monitors miss nothing.
// Single server only: bounds the memory of one server process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_readers_in_a_busy_room() {
    let backend = FakeBackend::start(SECRET).await;
    let bin = Binary::start(&backend, "").await;
    let mon = monitors(&bin.url(), &backend.backend_url()).await;
    let url = bin.url();
    let backend_url = backend.backend_url();

    let mut slow = Vec::new();
    for i in 0..5 {
        let mut raw = RawWs::connect_small_rcvbuf(bin.addr(), 4096).await.unwrap();
        let h = raw
            .request(
                "hello",
                json!({"type": "hello", "hello": {"version": "1.0", "auth": {
                    "url": backend_url, "params": {"userid": format!("slow{i}"), "ticket": "t"}}}}),
            )
            .await;
        assert_eq!(h["type"], "hello", "{h}");
        let r = raw
            .request(
                "join",
                json!({"type": "room", "room": {"roomid": "busy", "sessionid": format!("talk-slow{i}")}}),
            )
            .await;
        assert_eq!(r["type"], "room", "{r}");
        slow.push(raw);
    }
    let mut readers = Vec::new();
    for i in 0..4 {
        let mut c = TestClient::connect(&url).await.skip("welcome");
        c.hello_user(&backend_url, &format!("reader{i}")).await;
        c.join_room("busy", &format!("talk-reader{i}")).await;
        readers.push(c.skip("event").with_timeout(Duration::from_secs(30)));
    }
    let mut flooder = TestClient::connect(&url)
        .await
        .skip("welcome")
        .skip("event");
    flooder.hello_user(&backend_url, "flooder").await;
    flooder.join_room("busy", "talk-flooder").await;
    let before = bin.rss_kib();

    const N: u64 = 2000;
    let pad = "x".repeat(6000);
    let read_all = join_all(readers.into_iter().map(|mut c| async move {
        for i in 0..N {
            let m = c.recv().await;
            assert_eq!(m["message"]["data"]["seq"], i, "{m}");
        }
        c
    }));
    let flood = async {
        for i in 0..N {
            flooder
                .send_message(recipient_room(), json!({"seq": i, "pad": pad}))
                .await;
            // Busy, but not faster than the readers of the room can read.
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    let (readers, ()) = tokio::join!(read_all, flood);
    let overflowed = eventually(Duration::from_secs(20), || async {
        metric(&bin.base(), "signaling_server_client_queue_overflows_total").await == 5.0
    })
    .await;
    assert!(
        overflowed,
        "{} connections overflowed, not the 5 stalled ones; log: {}",
        metric(&bin.base(), "signaling_server_client_queue_overflows_total").await,
        bin.child.log_tail(4000)
    );
    let grown = bin.rss_kib().saturating_sub(before);
    eprintln!("RSS grew by {grown} KiB while flooding 5 stalled readers");
    // A room message is encoded once and shared by all its receivers; the
    // stalled readers hold at most their bounded backlogs of it (1024 frames
    // of 6 KB) until they are cut off: far less than the 12 MB each was sent.
    assert!(grown < 48 * 1024, "RSS grew by {grown} KiB");
    drop(slow);
    drop(readers);
    let (report, _a, _b) = mon.finish().await;
    assert!(report.total() > 0);
}

/// The backend misbehaves in each way in turn — slower than the timeout,
/// HTTP 500, garbage, a JSON error, refusing connections — while 50 clients
/// at a time say hello: each gets the documented error, no session is left
/// half-registered, and hellos succeed again once the backend recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_leave_no_half_registered_sessions() {
    backend_failures_leave_no_half_registered_sessions_on(Topology::Single).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_failures_leave_no_half_registered_sessions_in_a_cluster() {
    backend_failures_leave_no_half_registered_sessions_on(Topology::Cluster).await
}

async fn backend_failures_leave_no_half_registered_sessions_on(t: Topology) {
    let refusing = free_port(); // nothing listens there
    let extra = format!(
        "[backend]\nbackends = backend1, dead\ntimeout = 1\n\
         [dead]\nurl = http://127.0.0.1:{refusing}/\nsecret = {SECRET}\n"
    );
    let s = TestServer::start_on_with(t, &extra).await;
    let mon = monitors_of(&s).await;
    let dead_url =
        format!("http://127.0.0.1:{refusing}/ocs/v2.php/apps/spreed/api/v1/signaling/backend");

    type Setup = Box<dyn Fn(&FakeBackend)>;
    let cases: Vec<(&str, Setup, &str, Option<&str>)> = vec![
        (
            "slow",
            Box::new(|b| b.set_auth_handler(|_| Reply::Default.after(Duration::from_millis(1500)))),
            "internal_error",
            None,
        ),
        (
            "http 500",
            Box::new(|b| b.set_auth_handler(|_| Reply::raw(500, Some("text/plain"), "oops"))),
            "internal_error",
            None,
        ),
        (
            "garbage json",
            Box::new(|b| {
                b.set_auth_handler(|_| Reply::raw(200, Some("application/json"), "{\"ocs\":[1,"))
            }),
            "internal_error",
            None,
        ),
        (
            "html",
            Box::new(|b| b.set_auth_handler(|_| Reply::raw(200, Some("text/html"), "<html>"))),
            "internal_error",
            Some("unsupported_content_type"),
        ),
        (
            "hangup",
            Box::new(|b| b.set_auth_handler(|_| Reply::Hangup)),
            "internal_error",
            None,
        ),
        (
            "error answer",
            Box::new(|b| b.set_auth_handler(|_| Reply::error("auth_failed", "no such user"))),
            "auth_failed",
            None,
        ),
    ];
    let hellos = |backend_url: String, tag: String| {
        let url = s.ws_url();
        join_all((0..50).map(move |i| {
            let (url, backend_url, tag) = (url.clone(), backend_url.clone(), tag.clone());
            async move {
                let mut c = TestClient::connect(&url).await.skip("welcome");
                let r = c
                    .hello_v1(
                        &backend_url,
                        json!({"userid": format!("{tag}{i}"), "ticket": "t"}),
                    )
                    .await;
                (c, r)
            }
        }))
    };
    for (what, setup, code, message) in &cases {
        setup(&s.backend);
        for (_c, r) in hellos(s.backend.backend_url(), what.to_string()).await {
            assert_eq!(r["error"]["code"], *code, "{what}: {r}");
            if let Some(m) = message {
                assert_eq!(r["error"]["message"], *m, "{what}: {r}");
            }
        }
        assert_eq!(
            metric_all(&s, "signaling_hub_sessions").await,
            2.0,
            "{what}"
        );
        s.backend.clear_handler("auth");
    }
    for (_c, r) in hellos(dead_url, "refused".into()).await {
        assert_eq!(r["error"]["code"], "internal_error", "refused: {r}");
    }
    // Late answers of the slow case must not register anything either.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(metric_all(&s, "signaling_hub_sessions").await, 2.0);
    for (_c, r) in hellos(s.backend.backend_url(), "fine".into()).await {
        assert_eq!(r["type"], "hello", "after recovery: {r}");
    }
    assert_eq!(metric_all(&s, "signaling_hub_sessions").await, 52.0);
    let (report, _a, _b) = mon.finish().await;
    assert!(report.total() > 0);
}

/// Forged resume ids, session ids and backend checksums, many of each, are
/// refused; the sessions they imitate notice nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ids_and_checksums_are_refused() {
    forged_ids_and_checksums_are_refused_on(Topology::Single).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_ids_and_checksums_are_refused_in_a_cluster() {
    forged_ids_and_checksums_are_refused_on(Topology::Cluster).await
}

async fn forged_ids_and_checksums_are_refused_on(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut victim = s
        .user_in_room("victim", "room1", "talk-victim")
        .await
        .skip("event");
    let victim_id = victim.session_id().unwrap().to_owned();
    let victim_rid = victim.resume_id().unwrap().to_owned();
    let mon = monitors_of(&s).await;

    let edit = |id: &str, at: usize| {
        let mut b = id.as_bytes().to_vec();
        let i = at % b.len();
        b[i] = if b[i] == b'A' { b'B' } else { b'A' };
        String::from_utf8(b).unwrap()
    };
    let mut attacker = s.user("attacker").await;
    // Each guess from its own address (behind the trusted local proxy), as a
    // distributed attacker would: the throttle then slows each only a little.
    let guesses = join_all((0..200usize).map(|at| {
        let forged = edit(&victim_rid, at * 7 + 3);
        let url = s.ws_url();
        async move {
            let ip = format!("198.51.{}.{}", at / 200, at % 200 + 1);
            let mut c = TestClient::connect_with_headers(&url, &[("X-Forwarded-For", &ip)])
                .await
                .skip("welcome");
            (forged.clone(), c.hello_resume(&forged).await)
        }
    }))
    .await;
    for (forged, r) in guesses {
        if forged != victim_rid {
            assert_eq!(r["error"]["code"], "no_such_session", "{forged}: {r}");
        }
    }
    for at in 0..200 {
        attacker
            .send_message(
                recipient_session(&edit(&victim_id, at * 5 + 1)),
                json!("forged"),
            )
            .await;
    }
    // The private id is no address either.
    attacker
        .send_message(recipient_session(&victim_rid), json!("private"))
        .await;

    let body =
        serde_json::to_vec(&json!({"type": "message", "message": {"data": {"x": 1}}})).unwrap();
    let url = format!("{}api/v1/room/room1", s.base());
    let statuses = join_all((0..100usize).map(|i| {
        let (url, body, backend) = (url.clone(), body.clone(), s.backend.url());
        async move {
            let random = random_hex(64);
            let good = checksum(SECRET, &random, &body);
            let forged = match i % 3 {
                0 => checksum("guessed-secret", &random, &body),
                1 => {
                    let mut b = good.clone().into_bytes();
                    let at = i % b.len();
                    b[at] = if b[at] == b'0' { b'1' } else { b'0' };
                    String::from_utf8(b).unwrap()
                }
                _ => good[..good.len() - 1].to_owned(),
            };
            let r = RawRequest::post(&url)
                .header("Content-Type", "application/json")
                .header("Spreed-Signaling-Random", &random)
                .header("Spreed-Signaling-Checksum", &forged)
                .header("Spreed-Signaling-Backend", &backend)
                .header("X-Forwarded-For", &format!("203.0.113.{}", i + 1))
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status, r.text())
        }
    }))
    .await;
    for (status, text) in statuses {
        assert_eq!(status, 403, "{text}");
    }
    victim.expect_no_message(SHORT).await;
    let r = victim.request(json!({"id": "alive", "type": "room"})).await;
    assert_eq!(r["id"], "alive");
    let (report, _a, _b) = mon.finish().await;
    assert!(report.total() > 0);
}

/// Two nodes on one real nats-server, which is killed and restarted: the
/// monitors on each node (local traffic) never notice, the NATS state is
/// visible in the metrics, and messages between the nodes flow again after
/// the server is back.
// Own topology: its own two nodes; the test is about their NATS connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_and_return() {
    let mut nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\n", nats.url());
    let (sa, a) = start_server(&config_for(&backend.url(), &extra)).await;
    let (sb, b) = start_server(&config_for(&backend.url(), &extra)).await;
    let bus_a = sa.nats.clone().expect("NATS bus");
    let bus_b = sb.nats.clone().expect("NATS bus");
    for bus in [&bus_a, &bus_b] {
        tokio::time::timeout(Duration::from_secs(10), bus.wait_connected(true))
            .await
            .expect("connected");
    }
    let base_a = format!("http://{a}/");
    let mon_a = monitors(&spreed_url(a), &backend.backend_url()).await;
    let mon_b = monitors(&spreed_url(b), &backend.backend_url()).await;
    let mut x = TestClient::connect(&spreed_url(a)).await.skip("welcome");
    x.hello_user(&backend.backend_url(), "x").await;
    let mut y = TestClient::connect(&spreed_url(b)).await.skip("welcome");
    y.hello_user(&backend.backend_url(), "y").await;
    let y_id = y.session_id().unwrap().to_owned();
    assert!(
        reach(&mut x, &mut y, &y_id, "before").await,
        "cross-node before the outage"
    );
    assert_eq!(metric(&base_a, "signaling_nats_connected").await, 1.0);

    nats.stop();
    for bus in [&bus_a, &bus_b] {
        tokio::time::timeout(Duration::from_secs(10), bus.wait_connected(false))
            .await
            .expect("disconnect noticed");
    }
    assert_eq!(metric(&base_a, "signaling_nats_connected").await, 0.0);
    // Local traffic keeps flowing meanwhile (the monitors check it).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut local = TestClient::connect(&spreed_url(a)).await.skip("welcome");
    local
        .hello_user(&backend.backend_url(), "during-outage")
        .await;

    nats.restart().await.expect("nats-server restarts");
    for bus in [&bus_a, &bus_b] {
        tokio::time::timeout(Duration::from_secs(20), bus.wait_connected(true))
            .await
            .expect("reconnected");
    }
    assert!(
        reach(&mut x, &mut y, &y_id, "after").await,
        "cross-node after the outage"
    );
    assert_eq!(metric(&base_a, "signaling_nats_connected").await, 1.0);
    assert!(metric(&base_a, "signaling_nats_reconnects_total").await >= 1.0);
    for mon in [mon_a, mon_b] {
        let (report, _a, _b) = mon.finish().await;
        assert!(report.total() > 100, "{report:?}");
    }
    drop((sa, sb));
}

/// SIGHUP five times (the backend list changing each time) while 60 clients
/// chat in rooms: nobody is disconnected, no chat message is lost, and the
/// monitors see nothing odd.
// Single server only: signals one server process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_under_load_drops_nobody() {
    let backend = FakeBackend::start(SECRET).await;
    let other = FakeBackend::start("other-secret").await;
    let bin = Binary::start(&backend, "").await;
    let mon = monitors(&bin.url(), &backend.backend_url()).await;
    let original = std::fs::read_to_string(&bin.config).unwrap();
    let with_other = original.replace("backends = backend1", "backends = backend1, other")
        + &format!("[other]\nurl = {}\nsecret = other-secret\n", other.url());

    const ROOMS: usize = 6;
    const PER_ROOM: usize = 10;
    const ROUNDS: u64 = 60;
    let mut members = Vec::new();
    for r in 0..ROOMS {
        for m in 0..PER_ROOM {
            let mut c = TestClient::connect(&bin.url())
                .await
                .skip("welcome")
                .skip("event");
            c.hello_user(&backend.backend_url(), &format!("u{r}-{m}"))
                .await;
            c.join_room(&format!("room{r}"), &format!("talk{r}-{m}"))
                .await;
            members.push((r, m, c.with_timeout(Duration::from_secs(20))));
        }
    }
    let chat = join_all(members.into_iter().map(|(r, m, mut c)| async move {
        // Member 0 of each room talks, the others listen.
        if m == 0 {
            for i in 0..ROUNDS {
                c.send_message(recipient_room(), json!({"room": r, "i": i}))
                    .await;
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        } else {
            for i in 0..ROUNDS {
                let msg = c.recv().await;
                assert_eq!(msg["message"]["data"], json!({"room": r, "i": i}), "{msg}");
            }
        }
        c
    }));
    let hups = async {
        for n in 0..5 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            let text = if n % 2 == 0 { &with_other } else { &original };
            std::fs::write(&bin.config, text).unwrap();
            bin.signal("HUP");
        }
    };
    let (clients, ()) = tokio::join!(chat, hups);
    assert_eq!(clients.len(), ROOMS * PER_ROOM);
    assert_eq!(
        metric(&bin.base(), "signaling_server_connections").await,
        (ROOMS * PER_ROOM + 2) as f64
    );
    // The last reload (with `other`) took effect.
    let mut c = TestClient::connect(&bin.url()).await.skip("welcome");
    let r = c
        .hello_v1(&other.backend_url(), json!({"userid": "o", "ticket": "t"}))
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    let (report, _a, _b) = mon.finish().await;
    assert!(report.total() > 100, "{report:?}");
}
