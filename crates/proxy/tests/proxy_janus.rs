//! The proxy against a real Janus, driven over its WebSocket the way a
//! signaling server drives it (raw JSON, PXP-01..11): token checks, media
//! between real WebRTC peers through the proxy, resume, reload and drain;
//! and Debian's Go signaling server 0.4.1 using our proxy as its MCU.

#![allow(clippy::unwrap_used)]

use proxy::ProxyServer;
use runtime::config::Ini;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use testkit::janus::{Janus, JanusOptions};
use testkit::webrtc::WebRtcPeer;
use testkit::{
    free_port, raw_http, unix_now, wait_for_port, ChildGuard, FakeBackend, TempDir, TestClient,
    TokenKey,
};

const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);

struct TestProxy {
    server: Arc<ProxyServer>,
    addr: SocketAddr,
    dir: TempDir,
    janus: Janus,
}

fn config(dir: &Path, janus: &Janus, tokens: &[(&str, TokenKey)]) -> String {
    let mut t = String::new();
    for (id, key) in tokens {
        let file = dir.join(format!("{id}.pem"));
        std::fs::write(&file, key.public_pem()).unwrap();
        t.push_str(&format!("{id} = {}\n", file.display()));
    }
    format!(
        "[http]\nlisten = 127.0.0.1:0\n[app]\ncountry = DE\ntokentype = static\n\
         [tokens]\n{t}[mcu]\ntype = janus\nurl = {}\ntimeout = 5\n",
        janus.url()
    )
}

impl TestProxy {
    async fn start() -> TestProxy {
        runtime::logging::init("warn");
        let janus = Janus::start_with(JanusOptions {
            session_timeout: 60,
        })
        .await;
        let dir = TempDir::new("proxy-test").unwrap();
        let ini = Ini::parse(&config(dir.path(), &janus, &[("server1", TokenKey::Rsa)])).unwrap();
        let server = ProxyServer::build(&ini).unwrap();
        let addr = proxy::bind_and_serve(&server, &ini).await.unwrap()[0];
        assert!(server.mcu().wait_connected(Duration::from_secs(10)).await);
        TestProxy {
            server,
            addr,
            dir,
            janus,
        }
    }

    fn url(&self) -> String {
        format!("ws://{}/proxy", self.addr)
    }

    async fn get(&self, path: &str) -> String {
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let resp = raw_http(
            &self.addr.to_string(),
            req.as_bytes(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        String::from_utf8_lossy(&resp).into_owned()
    }

    /// A connected, authenticated signaling-server connection.
    async fn session(&self) -> (TestClient, String) {
        let mut c = TestClient::connect(&self.url()).await;
        let hello = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
        assert_eq!(hello["type"], "hello", "{hello}");
        let id = hello["hello"]["sessionid"].as_str().unwrap().to_owned();
        let load = c.recv().await;
        assert_eq!(load["event"]["type"], "update-load", "{load}");
        (c, id)
    }
}

fn token(issuer: &str, key: TokenKey, iat: i64) -> String {
    key.sign(&json!({"iss": issuer, "iat": iat}))
}

async fn hello(c: &mut TestClient, token: &str) -> Value {
    c.request(json!({"type": "hello", "hello": {"version": "1.0", "token": token}}))
        .await
}

/// Reads until a message matches, forwarding candidate payloads to `peer`.
async fn recv_until(
    c: &mut TestClient,
    peer: Option<&WebRtcPeer>,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = c.recv_timeout(left).await.expect("message from the proxy");
        if pred(&m) {
            return m;
        }
        if m["type"] == "payload" && m["payload"]["type"] == "candidate" {
            if let (Some(p), Some(line)) = (
                peer,
                m["payload"]["payload"]["candidate"]["candidate"].as_str(),
            ) {
                p.add_remote_candidate(line).await;
            }
        }
    }
}

/// Reads messages until `peer` satisfies `until`, handing it the candidate
/// lines `candidate` finds in them (proxy payloads or client messages).
async fn pump_with(
    c: &mut TestClient,
    peer: &WebRtcPeer,
    until: impl Fn(&testkit::webrtc::PeerState) -> bool,
    candidate: impl Fn(&Value) -> Option<&str>,
) {
    let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
    while !until(&peer.state()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "peer: {:?}",
            peer.state()
        );
        if let Some(m) = c.recv_timeout(Duration::from_millis(50)).await {
            assert_ne!(m["type"], "error", "{m}");
            if let Some(line) = candidate(&m) {
                peer.add_remote_candidate(line).await;
            }
        }
    }
}

async fn pump(
    c: &mut TestClient,
    peer: &WebRtcPeer,
    until: impl Fn(&testkit::webrtc::PeerState) -> bool,
) {
    pump_with(c, peer, until, |m| {
        m["payload"]["payload"]["candidate"]["candidate"].as_str()
    })
    .await
}

fn candidate_payload(client_id: &str, sid: &str, peer: &WebRtcPeer) -> Value {
    json!({"type": "payload", "payload": {"type": "candidate", "clientId": client_id, "sid": sid,
           "payload": {"candidate": {"candidate": peer.local_candidate(), "sdpMid": "0", "sdpMLineIndex": 0}}}})
}

/// PXY tokens: every kind of bad token is refused with upstream's error and
/// counted under its reason; SIGHUP adds a token without touching sessions.
#[tokio::test]
async fn pxy_tokens_are_checked_and_reloaded() {
    let p = TestProxy::start().await;
    let now = unix_now();
    let cases: Vec<(String, &str, &str)> = vec![
        (
            token("server1", TokenKey::Rsa, now - 600),
            "token_expired",
            "expired",
        ),
        (
            token("server1", TokenKey::Rsa, now + 120),
            "token_not_valid_yet",
            "not-valid-yet",
        ),
        (
            token("nobody", TokenKey::Rsa, now),
            "auth_failed",
            "unsupported-issuer",
        ),
        (
            TokenKey::Ec.sign(&json!({"iss": "server1", "iat": now})),
            "auth_failed",
            "unsupported-signing-method",
        ),
        (
            testkit::sign_hmac(b"secret", &json!({"iss": "server1", "iat": now})),
            "auth_failed",
            "unsupported-signing-method",
        ),
        (
            token("server1", TokenKey::Rsa2, now),
            "auth_failed",
            "auth-failed",
        ),
        (
            TokenKey::Rsa.sign(&json!({"iss": "server1", "iat": now, "exp": now - 10})),
            "auth_failed",
            "auth-failed",
        ),
        ("garbage".to_owned(), "auth_failed", "auth-failed"),
    ];
    for (tok, code, _) in &cases {
        let mut c = TestClient::connect(&p.url()).await;
        let r = hello(&mut c, tok).await;
        assert_eq!(r["type"], "error", "{r}");
        assert_eq!(r["error"]["code"], *code, "{tok}: {r}");
    }
    let metrics = p.get("/metrics").await;
    for reason in [
        "expired",
        "not-valid-yet",
        "unsupported-issuer",
        "unsupported-signing-method",
        "auth-failed",
    ] {
        assert!(
            metrics.contains(&format!(
                "signaling_proxy_token_errors_total{{reason=\"{reason}\"}}"
            )),
            "{reason} not counted: {metrics}"
        );
    }
    // Messages before hello, bad hellos.
    let mut c = TestClient::connect(&p.url()).await;
    let r = c
        .request(json!({"type": "command", "command": {"type": "create-publisher", "streamType": "video"}}))
        .await;
    assert_eq!(r["error"]["code"], "hello_expected");
    c.send_text("{not json").await;
    assert_eq!(c.recv().await["error"]["code"], "invalid_format");
    let r = c
        .request(json!({"type": "hello", "hello": {"version": "2.0", "token": "x"}}))
        .await;
    assert_eq!(r["error"]["code"], "invalid_format");

    // A session, then a reload that adds server2: the session stays.
    let (mut s1, id1) = p.session().await;
    let mut c2 = TestClient::connect(&p.url()).await;
    let r = hello(&mut c2, &token("server2", TokenKey::Rsa2, unix_now())).await;
    assert_eq!(r["error"]["code"], "auth_failed");
    let text = config(
        p.dir.path(),
        &p.janus,
        &[("server1", TokenKey::Rsa), ("server2", TokenKey::Rsa2)],
    );
    p.server.reload(&Ini::parse(&text).unwrap());
    let mut c2 = TestClient::connect(&p.url()).await;
    let r = hello(&mut c2, &token("server2", TokenKey::Rsa2, unix_now())).await;
    assert_eq!(r["type"], "hello", "{r}");
    let r = s1
        .request(
            json!({"type": "payload", "payload": {"type": "endOfCandidates", "clientId": "none"}}),
        )
        .await;
    assert_eq!(
        r["error"]["code"], "unknown_client",
        "{r} (session {id1} still works)"
    );
}

/// PXP create/payload/delete with real media: a publisher and a subscriber
/// through the proxy; resume; delete tears down; drain refuses publishers
/// and ends when the last client is gone.
#[tokio::test]
async fn pxp_media_through_the_proxy_resume_and_drain() {
    let p = TestProxy::start().await;
    let (mut c, session_id) = p.session().await;

    let r = c
        .request(
            json!({"type": "command", "command": {"type": "create-publisher", "sid": "s1",
                        "streamType": "video", "bitrate": 500000, "mediatypes": 3}}),
        )
        .await;
    assert_eq!(r["type"], "command", "{r}");
    let pub_id = r["command"]["id"].as_str().unwrap().to_owned();
    let publisher = WebRtcPeer::start().await;
    let offer = publisher.create_offer(true, true).await;
    let id = c
        .send_with_id(
            json!({"type": "payload", "payload": {"type": "offer", "clientId": pub_id, "sid": "s1",
                             "payload": {"type": "offer", "sdp": offer}}}),
        )
        .await;
    c.send_json(&candidate_payload(&pub_id, "s1", &publisher))
        .await;
    let answer = recv_until(&mut c, None, |m| m["id"] == id.as_str()).await;
    assert_eq!(answer["type"], "payload", "{answer}");
    assert_eq!(answer["payload"]["clientId"], pub_id.as_str());
    assert_eq!(answer["payload"]["payload"]["type"], "answer");
    publisher
        .accept_answer(answer["payload"]["payload"]["sdp"].as_str().unwrap())
        .await
        .unwrap();
    pump(&mut c, &publisher, |s| s.connected).await;

    // Subscriber of that publisher.
    let r = c
        .request(
            json!({"type": "command", "command": {"type": "create-subscriber",
                        "publisherId": pub_id, "streamType": "video"}}),
        )
        .await;
    assert_eq!(r["type"], "command", "{r}");
    let sub_id = r["command"]["id"].as_str().unwrap().to_owned();
    let sub_sid = r["command"]["sid"].as_str().unwrap().to_owned();
    assert!(!sub_sid.is_empty(), "{r}");
    let id = c
        .send_with_id(json!({"type": "payload", "payload": {"type": "requestoffer", "clientId": sub_id, "sid": ""}}))
        .await;
    let offer = recv_until(&mut c, Some(&publisher), |m| m["id"] == id.as_str()).await;
    assert_eq!(offer["payload"]["payload"]["type"], "offer", "{offer}");
    let subscriber = WebRtcPeer::start().await;
    let answer_sdp = subscriber
        .accept_offer(offer["payload"]["payload"]["sdp"].as_str().unwrap())
        .await
        .unwrap();
    let id = c
        .send_with_id(json!({"type": "payload", "payload": {"type": "answer", "clientId": sub_id, "sid": sub_sid,
                             "payload": {"type": "answer", "sdp": answer_sdp}}}))
        .await;
    c.send_json(&candidate_payload(&sub_id, &sub_sid, &subscriber))
        .await;
    let ok = recv_until(&mut c, Some(&subscriber), |m| m["id"] == id.as_str()).await;
    assert_eq!(ok["type"], "payload", "{ok}");
    pump(&mut c, &subscriber, |s| {
        s.audio_frames > 10 && s.video_frames > 10
    })
    .await;

    // Load follows the hosted bitrates: 0.5 Mbit/s published + subscribed.
    // (The update-load event went by while pumping; /stats has the same.)
    testkit::assert_eventually!(p.get("/stats").await.contains("\"load\": 1"));
    let stats: String = p.get("/stats").await;
    assert!(stats.contains("\"sessions\": 1"), "{stats}");

    // Resume on a new connection: the old one is told and closed.
    let mut c2 = TestClient::connect(&p.url()).await;
    let r = c2
        .request(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": session_id}}))
        .await;
    assert_eq!(r["hello"]["sessionid"], session_id.as_str(), "{r}");
    let bye = recv_until(&mut c, None, |m| m["type"] == "bye").await;
    assert_eq!(bye["bye"]["reason"], "session_resumed");
    let mut c = c2;
    let r = c
        .request(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": "nope"}}))
        .await;
    assert_eq!(
        r["error"]["code"], "bad_request",
        "hello again on a session: {r}"
    );
    let mut c3 = TestClient::connect(&p.url()).await;
    let r = c3
        .request(json!({"type": "hello", "hello": {"version": "1.0", "resumeid": "nope"}}))
        .await;
    assert_eq!(r["error"]["code"], "no_such_session");

    // Drain: told, no new publishers, subscribers still possible.
    assert!(p.server.start_drain());
    recv_until(&mut c, None, |m| m["event"]["type"] == "shutdown-scheduled").await;
    let r = c
        .request(json!({"type": "command", "command": {"type": "create-publisher", "streamType": "screen"}}))
        .await;
    assert_eq!(r["error"]["code"], "shutdown_scheduled", "{r}");
    let drained = {
        let s = p.server.clone();
        tokio::spawn(async move { s.drained().await })
    };
    // Deleting the publisher closes its subscriber too.
    let r = c
        .request(
            json!({"type": "command", "command": {"type": "delete-publisher", "clientId": pub_id}}),
        )
        .await;
    assert_eq!(r["command"]["id"], pub_id.as_str(), "{r}");
    let closed = recv_until(&mut c, None, |m| m["event"]["type"] == "subscriber-closed").await;
    assert_eq!(closed["event"]["clientId"], sub_id.as_str());
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drained once the last client is gone")
        .unwrap();
    testkit::assert_eventually!(Duration::from_secs(5), p.janus.handle_count().await == 0);
    let r = c
        .request(json!({"type": "command", "command": {"type": "delete-subscriber", "clientId": sub_id}}))
        .await;
    assert_eq!(r["error"]["code"], "unknown_client");
}

// ----- Debian's Go signaling server with our proxy -----

const GO_SERVER_BIN: &str = "/usr/bin/nextcloud-spreed-signaling-server";
const HASH_KEY: &str = "0123456789abcdef0123456789abcdef";
const BLOCK_KEY: &str = "fedcba9876543210";
const SECRET: &str = "the-backend-secret";

fn go_binary() -> PathBuf {
    let path = std::env::var_os("GO_SIGNALING_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(GO_SERVER_BIN));
    assert!(
        path.is_file(),
        "Go signaling server not found at {} (apt-get install nextcloud-spreed-signaling)",
        path.display()
    );
    path
}

/// The Go server 0.4.1 publishes and subscribes through our proxy: a screen
/// share (Debian's Go server refuses `video` offers, see TEST-PEERS.md)
/// reaches a subscriber with real media.
#[tokio::test]
async fn go_signaling_server_uses_our_proxy() {
    let p = TestProxy::start().await;
    let backend = FakeBackend::start(SECRET).await;
    let key = p.dir.join("server1.key");
    std::fs::write(&key, TokenKey::Rsa.private_pem()).unwrap();
    let mut child = None;
    let mut addr = None;
    for attempt in 0..3 {
        let port = free_port();
        let conf = p.dir.join(&format!("go-{attempt}.conf"));
        std::fs::write(
            &conf,
            format!(
                "[http]\nlisten = 127.0.0.1:{port}\n[sessions]\nhashkey = {HASH_KEY}\nblockkey = {BLOCK_KEY}\n\
                 [backend]\nbackends = backend1\ntimeout = 5\n[backend1]\nurl = {}\nsecret = {SECRET}\n\
                 [nats]\nurl = :loopback:\n\
                 [mcu]\ntype = proxy\nurl = ws://{}\ntoken_id = server1\ntoken_key = {}\n",
                backend.url(),
                p.addr,
                key.display()
            ),
        )
        .unwrap();
        let mut cmd = Command::new(go_binary());
        cmd.arg("-config").arg(&conf).current_dir(p.dir.path());
        let log = p.dir.join(&format!("go-{attempt}.log"));
        let mut c =
            ChildGuard::spawn("nextcloud-spreed-signaling-server", &mut cmd, Some(&log)).unwrap();
        let a = SocketAddr::from(([127, 0, 0, 1], port));
        if wait_for_port(a, Duration::from_secs(10), Some(&mut c))
            .await
            .is_ok()
        {
            child = Some(c);
            addr = Some(a);
            break;
        }
    }
    let _child = child.expect("Go server started");
    let url = testkit::spreed_url(addr.unwrap());
    // The Go server connects to the proxy in the background.
    testkit::assert_eventually!(
        Duration::from_secs(10),
        p.get("/stats").await.contains("\"sessions\": 1")
    );

    let mut alice = TestClient::connect(&url).await.skip("welcome");
    alice.hello_user(&backend.backend_url(), "alice").await;
    alice.join_room("room1", "talk-alice").await;
    let mut bob = TestClient::connect(&url).await.skip("welcome");
    bob.hello_user(&backend.backend_url(), "bob").await;
    bob.join_room("room1", "talk-bob").await;
    let r = backend
        .send_room_request(
            &format!("http://{}/", addr.unwrap()),
            "room1",
            // 0.4.1 has no `all`: list the Talk sessions.
            &json!({"type": "incall", "incall": {"incall": 7,
                "changed": [{"sessionId": "talk-alice", "inCall": 7}, {"sessionId": "talk-bob", "inCall": 7}],
                "users": [{"sessionId": "talk-alice", "inCall": 7}, {"sessionId": "talk-bob", "inCall": 7}]}}),
        )
        .await;
    assert_eq!(r.status, 200);
    let alice_id = alice.session_id().unwrap().to_owned();

    let publisher = WebRtcPeer::start().await;
    let offer = publisher.create_offer(false, true).await;
    alice
        .send_message(
            testkit::recipient_session(&alice_id),
            json!({"type": "offer", "roomType": "screen", "sid": "go-screen",
                   "payload": {"type": "offer", "sdp": offer}}),
        )
        .await;
    alice
        .send_message(
            testkit::recipient_session(&alice_id),
            json!({"type": "candidate", "roomType": "screen", "sid": "go-screen",
                   "payload": {"candidate": {"candidate": publisher.local_candidate(), "sdpMid": "0", "sdpMLineIndex": 0}}}),
        )
        .await;
    let answer = client_until(&mut alice, &publisher, "answer").await;
    publisher
        .accept_answer(
            answer["message"]["data"]["payload"]["sdp"]
                .as_str()
                .unwrap(),
        )
        .await
        .unwrap();
    client_pump(&mut alice, &publisher, |s| s.connected).await;

    bob.send_message(
        testkit::recipient_session(&alice_id),
        json!({"type": "requestoffer", "roomType": "screen"}),
    )
    .await;
    let subscriber = WebRtcPeer::start().await;
    let offer = client_until(&mut bob, &subscriber, "offer").await;
    let data = &offer["message"]["data"];
    let answer = subscriber
        .accept_offer(data["payload"]["sdp"].as_str().unwrap())
        .await
        .unwrap();
    let mut reply = json!({"type": "answer", "roomType": "screen", "payload": {"type": "answer", "sdp": answer}});
    if let Some(sid) = data["sid"].as_str() {
        reply["sid"] = json!(sid);
    }
    bob.send_message(testkit::recipient_session(&alice_id), reply)
        .await;
    let mut cand = json!({"type": "candidate", "roomType": "screen",
        "payload": {"candidate": {"candidate": subscriber.local_candidate(), "sdpMid": "0", "sdpMLineIndex": 0}}});
    if let Some(sid) = data["sid"].as_str() {
        cand["sid"] = json!(sid);
    }
    bob.send_message(testkit::recipient_session(&alice_id), cand)
        .await;
    client_pump(&mut bob, &subscriber, |s| s.video_frames > 10).await;
    let m = p.get("/metrics").await;
    assert!(
        m.contains("signaling_proxy_publishers{type=\"screen\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("signaling_proxy_subscribers{type=\"screen\"} 1"),
        "{m}"
    );
}

/// Signaling-client side: the next `message` with MCU data of `kind`,
/// forwarding candidates to `peer`.
async fn client_until(c: &mut TestClient, peer: &WebRtcPeer, kind: &str) -> Value {
    let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let m = c
            .recv_timeout(left)
            .await
            .unwrap_or_else(|| panic!("no {kind}"));
        assert_ne!(m["type"], "error", "{m}");
        let data = &m["message"]["data"];
        if data["type"] == kind {
            return m;
        }
        if data["type"] == "candidate" {
            if let Some(line) = data["payload"]["candidate"]["candidate"].as_str() {
                peer.add_remote_candidate(line).await;
            }
        }
    }
}

async fn client_pump(
    c: &mut TestClient,
    peer: &WebRtcPeer,
    until: impl Fn(&testkit::webrtc::PeerState) -> bool,
) {
    pump_with(c, peer, until, |m| {
        m["message"]["data"]["payload"]["candidate"]["candidate"].as_str()
    })
    .await
}

/// `tokentype = etcd` with a real etcd: keys are read at each hello, so a
/// key put into etcd works at once and one removed stops working.
#[tokio::test]
async fn pxy_token_keys_from_etcd() {
    let etcd = testkit::EtcdServer::start().await.expect("etcd starts");
    let janus = Janus::start_with(JanusOptions {
        session_timeout: 60,
    })
    .await;
    let ini = Ini::parse(&format!(
        "[http]\nlisten = 127.0.0.1:0\n[app]\ntokentype = etcd\n\
         [tokens]\nendpoints = {}\nkeyformat = /signaling/proxy/tokens/%s/public-key\n\
         [mcu]\nurl = {}\n",
        etcd.endpoint(),
        janus.url()
    ))
    .unwrap();
    let server = ProxyServer::build(&ini).unwrap();
    let addr = proxy::bind_and_serve(&server, &ini).await.unwrap()[0];
    let url = format!("ws://{addr}/proxy");
    let mut c = TestClient::connect(&url).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(r["error"]["code"], "auth_failed", "no key yet: {r}");
    etcd.put(
        "/signaling/proxy/tokens/server1/public-key",
        TokenKey::Rsa.public_pem(),
    )
    .await
    .unwrap();
    let mut c = TestClient::connect(&url).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(r["type"], "hello", "{r}");
    // The wrong key for that id is still refused.
    let mut c = TestClient::connect(&url).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa2, unix_now())).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    etcd.delete("/signaling/proxy/tokens/server1/public-key")
        .await
        .unwrap();
    let mut c = TestClient::connect(&url).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(r["error"]["code"], "auth_failed", "key removed: {r}");
}

/// Remote streams, the refusals: a proxy without `[app] token_id` answers
/// `unsupported_subscriber` (the signaling server then uses the
/// publisher's proxy); one with it checks the remote token (its subject
/// must be the publisher) and reports an unreachable publisher proxy; the
/// proxy-to-proxy commands validate their fields and client ids.
#[tokio::test]
async fn pxy_remote_subscribers_are_checked() {
    let plain = TestProxy::start().await;
    let (mut c, _) = plain.session().await;
    let create = |token: &str, url: &str| {
        json!({"type": "command", "command": {"type": "create-subscriber",
            "streamType": "video", "publisherId": "pub-1",
            "remoteUrl": url, "remoteToken": token}})
    };
    let good = TokenKey::Rsa.sign(&json!({"iss": "server1", "iat": unix_now(), "sub": "pub-1"}));
    let r = c.request(create(&good, "ws://127.0.0.1:9/")).await;
    assert_eq!(r["error"]["code"], "unsupported_subscriber", "{r}");
    // Malformed: a remote URL without a token, or not a URL.
    let r = c.request(create("", "ws://127.0.0.1:9/")).await;
    assert_eq!(r["error"]["code"], "invalid_format", "{r}");
    let r = c.request(create(&good, "nowhere")).await;
    assert_eq!(r["error"]["code"], "invalid_format", "{r}");
    for cmd in [
        json!({"type": "get-publisher-streams"}),
        json!({"type": "publish-remote", "clientId": "x", "port": 5000}),
        json!({"type": "unpublish-remote", "clientId": "x", "hostname": "h"}),
    ] {
        let r = c.request(json!({"type": "command", "command": cmd})).await;
        assert_eq!(r["error"]["code"], "invalid_format", "{cmd}: {r}");
    }
    let r = c
        .request(json!({"type": "command", "command": {"type": "get-publisher-streams", "clientId": "nobody"}}))
        .await;
    assert_eq!(r["error"]["code"], "unknown_client", "{r}");

    // A proxy that can fetch remote streams.
    let dir = TempDir::new("proxy-remote").unwrap();
    let key = dir.join("remote.key");
    std::fs::write(&key, TokenKey::Rsa.private_pem()).unwrap();
    let text = config(dir.path(), &plain.janus, &[("server1", TokenKey::Rsa)]).replace(
        "[app]\n",
        &format!(
            "[app]\nhostname = 127.0.0.1\ntoken_id = server1\ntoken_key = {}\n",
            key.display()
        ),
    );
    let ini = Ini::parse(&text).unwrap();
    let server = ProxyServer::build(&ini).unwrap();
    let addr = proxy::bind_and_serve(&server, &ini).await.unwrap()[0];
    assert!(server.mcu().wait_connected(Duration::from_secs(10)).await);
    let mut c = TestClient::connect(&format!("ws://{addr}/proxy")).await;
    let h = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(
        h["hello"]["server"]["features"],
        json!(["remote-streams"]),
        "{h}"
    );
    let wrong = TokenKey::Rsa.sign(&json!({"iss": "server1", "iat": unix_now(), "sub": "pub-2"}));
    let r = c.request(create(&wrong, "ws://127.0.0.1:9/")).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    let unknown_issuer =
        TokenKey::Rsa.sign(&json!({"iss": "stranger", "iat": unix_now(), "sub": "pub-1"}));
    let r = c
        .request(create(&unknown_issuer, "ws://127.0.0.1:9/"))
        .await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");
    let dead = format!("ws://127.0.0.1:{}/", free_port());
    let r = c.request(create(&good, &dead)).await;
    assert_eq!(r["error"]["code"], "internal_error", "{r}");
    assert_eq!(server.remote_links(), 0);
}

/// etcd over HTTPS with client certificates (`cacert`, `clientcert`,
/// `clientkey`, as upstream): token keys are read from an etcd that
/// requires them; without the client certificate etcd refuses us; the
/// endpoints may come from DNS SRV records (`discoverysrv`).
#[tokio::test]
async fn pxy_token_keys_from_etcd_over_tls() {
    let etcd = testkit::EtcdServer::start_tls().await.expect("etcd starts");
    let tls = etcd.tls().expect("tls").clone();
    etcd.put(
        "/signaling/proxy/tokens/server1/public-key",
        TokenKey::Rsa.public_pem(),
    )
    .await
    .unwrap();
    let janus = Janus::start_with(JanusOptions {
        session_timeout: 60,
    })
    .await;
    let config = |tls_keys: &str| {
        format!(
            "[http]\nlisten = 127.0.0.1:0\n[app]\ntokentype = etcd\n\
             [tokens]\nendpoints = {}\nkeyformat = /signaling/proxy/tokens/%s/public-key\n{tls_keys}\
             [mcu]\nurl = {}\n",
            etcd.endpoint(),
            janus.url()
        )
    };
    let full = format!(
        "cacert = {}\nclientcert = {}\nclientkey = {}\n",
        tls.cacert.display(),
        tls.clientcert.display(),
        tls.clientkey.display()
    );
    let ini = Ini::parse(&config(&full)).unwrap();
    let server = ProxyServer::build(&ini).unwrap();
    let addr = proxy::bind_and_serve(&server, &ini).await.unwrap()[0];
    let mut c = TestClient::connect(&format!("ws://{addr}/proxy")).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(r["type"], "hello", "key read over TLS: {r}");

    // Only the CA: etcd wants a client certificate, the key is not found.
    let ini = Ini::parse(&config(&format!("cacert = {}\n", tls.cacert.display()))).unwrap();
    let server = ProxyServer::build(&ini).unwrap();
    let addr = proxy::bind_and_serve(&server, &ini).await.unwrap()[0];
    let mut c = TestClient::connect(&format!("ws://{addr}/proxy")).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");

    // The endpoints from DNS SRV records instead (`_etcd-client-ssl._tcp`
    // for TLS), served by a DNS server on loopback.
    let port: u16 = etcd.endpoint().rsplit(':').next().unwrap().parse().unwrap();
    let dns = testkit::dns::FakeDns::start(
        [(
            "_etcd-client-ssl._tcp.etcd.test".to_owned(),
            vec![(0, 0, port, "127.0.0.1".to_owned())],
        )]
        .into_iter()
        .collect(),
    )
    .await
    .unwrap();
    runtime::dns_srv::set_nameservers(vec![dns.addr()]);
    let with_srv = |domain: &str| {
        Ini::parse(&config(&full).replace(
            &format!("endpoints = {}", etcd.endpoint()),
            &format!("discoverysrv = {domain}"),
        ))
        .unwrap()
    };
    let srv = with_srv("etcd.test");
    let server = ProxyServer::build(&srv).unwrap();
    let addr = proxy::bind_and_serve(&server, &srv).await.unwrap()[0];
    let mut c = TestClient::connect(&format!("ws://{addr}/proxy")).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(r["type"], "hello", "endpoint found by SRV: {r}");
    // A domain without records: the hello fails (no key), nothing panics.
    let none = with_srv("nothing.test");
    let server = ProxyServer::build(&none).unwrap();
    let addr = proxy::bind_and_serve(&server, &none).await.unwrap()[0];
    let mut c = TestClient::connect(&format!("ws://{addr}/proxy")).await;
    let r = hello(&mut c, &token("server1", TokenKey::Rsa, unix_now())).await;
    assert_eq!(r["error"]["code"], "auth_failed", "{r}");

    let half = Ini::parse(&config(&format!(
        "clientcert = {}\n",
        tls.clientcert.display()
    )))
    .unwrap();
    let err = ProxyServer::build(&half)
        .err()
        .expect("refused")
        .to_string();
    assert!(err.contains("clientkey"), "{err}");
}
