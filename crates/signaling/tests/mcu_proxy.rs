//! `[mcu] type = proxy` (PXS-*): our signaling server in front of two of our
//! proxies, each with its own real Janus, with real media; and in front of
//! Debian's Go proxy 0.4.1.

mod common;

use common::media::*;
use common::*;
use proxy::ProxyServer;
use runtime::config::Ini;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;
use testkit::janus::Janus;

struct OurProxy {
    server: Arc<ProxyServer>,
    addr: SocketAddr,
    _janus: Janus,
}

async fn our_proxy(dir: &TempDir, name: &str) -> OurProxy {
    our_proxy_in(dir, name, "").await
}

async fn our_proxy_in(dir: &TempDir, name: &str, country: &str) -> OurProxy {
    our_proxy_with(dir, name, country, "").await
}

/// A proxy that also fetches remote streams from others: it signs its
/// hellos to them with the key the proxies trust as `server1`.
async fn remote_capable_proxy(dir: &TempDir, name: &str, country: &str) -> OurProxy {
    remote_capable_proxy_with(dir, name, country, "").await
}

/// The same with more configuration sections (`extra`).
async fn remote_capable_proxy_with(
    dir: &TempDir,
    name: &str,
    country: &str,
    extra: &str,
) -> OurProxy {
    let private = dir.join(&format!("{name}-remote.key"));
    std::fs::write(&private, TokenKey::Rsa.private_pem()).expect("key");
    let app = format!(
        "hostname = 127.0.0.1\ntoken_id = server1\ntoken_key = {}\n{extra}",
        private.display()
    );
    our_proxy_with(dir, name, country, &app).await
}

async fn our_proxy_with(dir: &TempDir, name: &str, country: &str, app: &str) -> OurProxy {
    let janus = start_janus().await;
    let public = dir.join(&format!("{name}-server1.pem"));
    std::fs::write(&public, TokenKey::Rsa.public_pem()).expect("key");
    let ini = Ini::parse(&format!(
        "[http]\nlisten = 127.0.0.1:0\n[app]\ncountry = {country}\n{app}[tokens]\nserver1 = {}\n[mcu]\nurl = {}\ntimeout = 5\n",
        public.display(),
        janus.url()
    ))
    .expect("config");
    let server = ProxyServer::build(&ini).expect("proxy builds");
    let addr = proxy::bind_and_serve(&server, &ini).await.expect("binds")[0];
    assert!(server.mcu().wait_connected(Duration::from_secs(10)).await);
    OurProxy {
        server,
        addr,
        _janus: janus,
    }
}

fn signaling_config(dir: &TempDir, urls: &[String]) -> String {
    let key = dir.join("server1.key");
    std::fs::write(&key, TokenKey::Rsa.private_pem()).expect("key");
    format!(
        "[mcu]\ntype = proxy\nurl = {}\ntoken_id = server1\ntoken_key = {}\ntimeout = 5\nproxytimeout = 5\n",
        urls.join(" "),
        key.display()
    )
}

async fn stats(s: &TestServer) -> Value {
    let resp = raw_http(
        &s.addr.to_string(),
        b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_default();
    let text = String::from_utf8_lossy(&resp).into_owned();
    text.find("\r\n\r\n")
        .and_then(|i| serde_json::from_str(&text[i + 4..]).ok())
        .unwrap_or(Value::Null)
}

async fn proxy_metric(p: &OurProxy, line: &str) -> i64 {
    let resp = raw_http(
        &p.addr.to_string(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_default();
    gauge(&String::from_utf8_lossy(&resp), line)
}

/// PXS placement and drain with media: publishers go to the least loaded
/// proxy, subscribers to their publisher's proxy; a draining proxy gets no
/// new publisher and ends when its last stream does.
#[tokio::test]
async fn pxs_publishers_spread_over_proxies_with_media_and_drain() {
    let dir = TempDir::new("mcu-proxy").expect("dir");
    let a = our_proxy(&dir, "a").await;
    let b = our_proxy(&dir, "b").await;
    // Only A at first; B comes with a reload (SIGHUP) below.
    let urls = [format!("ws://{}", a.addr), format!("ws://{}", b.addr)];
    let s = TestServer::start_with(&signaling_config(&dir, &urls[..1])).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == true
    );
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    let mut carol = MediaClient::join(&s, "carol", "room1").await;
    all_in_call(&s, "room1").await;
    let (alice_id, bob_id) = (alice.id.clone(), bob.id.clone());

    alice.publish("video", "alice-video").await;
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );
    // SIGHUP with B added: connected without a restart.
    let text = config_for(&s.backend.url(), &signaling_config(&dir, &urls));
    s.server.reload(&Ini::parse(&text).expect("config"));
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][1]["connected"] == true
    );
    // The signaling server learns proxy A's new load, then places bob on B.
    assert_eventually!(
        Duration::from_secs(5),
        stats(&s).await["mcu"]["proxies"][0]["load"] == 1
    );
    bob.publish("video", "bob-video").await;
    assert_eq!(
        proxy_metric(&b, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );

    // Carol receives both, each from the publisher's proxy.
    carol.subscribe(&alice_id, "video").await;
    carol.subscribe(&bob_id, "video").await;
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_subscribers{type=\"video\"}").await,
        1
    );
    assert_eq!(
        proxy_metric(&b, "signaling_proxy_subscribers{type=\"video\"}").await,
        1
    );

    // Drain B: the next publisher goes to A although A is busier.
    assert!(b.server.start_drain());
    assert_eventually!(
        Duration::from_secs(5),
        stats(&s).await["mcu"]["proxies"][1]["shutdown"] == true
    );
    carol.publish("screen", "carol-screen").await;
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_publishers{type=\"screen\"}").await,
        1
    );
    let drained = {
        let p = b.server.clone();
        tokio::spawn(async move { p.drained().await })
    };
    // Bob leaves: his publisher and carol's subscription of it end on B.
    bob.ws.leave_room().await;
    tokio::time::timeout(Duration::from_secs(10), drained)
        .await
        .expect("B drained when its last stream ended")
        .expect("task");
    assert_eq!(
        proxy_metric(&b, "signaling_proxy_subscribers{type=\"video\"}").await,
        0
    );
}

/// Debian's Go proxy 0.4.1 in front of `janus`, on loopback.
async fn start_go_proxy(dir: &TempDir, janus: &Janus) -> (ChildGuard, SocketAddr) {
    let public = dir.join("server1.pem");
    std::fs::write(&public, TokenKey::Rsa.public_pem()).expect("key");
    let bin = std::env::var_os("GO_SIGNALING_PROXY")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/nextcloud-spreed-signaling-proxy".into());
    assert!(
        bin.is_file(),
        "Go proxy not found at {} (apt-get install nextcloud-spreed-signaling)",
        bin.display()
    );
    let mut guard = None;
    let mut addr = None;
    for attempt in 0..3 {
        let port = free_port();
        let conf = dir.join(&format!("proxy-{attempt}.conf"));
        std::fs::write(
            &conf,
            format!(
                "[http]\nlisten = 127.0.0.1:{port}\n[app]\ntokentype = static\n\
                 [tokens]\nserver1 = {}\n[mcu]\ntype = janus\nurl = {}\n",
                public.display(),
                janus.url()
            ),
        )
        .expect("config");
        let mut cmd = Command::new(&bin);
        cmd.arg("-config").arg(&conf).current_dir(dir.path());
        let log = dir.join(&format!("proxy-{attempt}.log"));
        let mut child = ChildGuard::spawn("nextcloud-spreed-signaling-proxy", &mut cmd, Some(&log))
            .expect("spawn");
        let a = SocketAddr::from(([127, 0, 0, 1], port));
        if wait_for_port(a, Duration::from_secs(10), Some(&mut child))
            .await
            .is_ok()
        {
            guard = Some(child);
            addr = Some(a);
            break;
        }
    }
    (guard.expect("Go proxy started"), addr.expect("addr"))
}

/// Our signaling server with Debian's Go proxy 0.4.1 in front of Janus:
/// media flows publisher -> Go proxy -> Janus -> subscriber.
#[tokio::test]
async fn pxs_our_signaling_with_the_go_proxy() {
    let dir = TempDir::new("go-proxy").expect("dir");
    let janus = start_janus().await;
    let (_proxy, addr) = start_go_proxy(&dir, &janus).await;
    let urls = [format!("ws://{addr}")];
    let s = TestServer::start_with(&signaling_config(&dir, &urls)).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == true
    );
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    all_in_call(&s, "room1").await;
    let alice_id = alice.id.clone();
    // The Go proxy keeps a control handle of its own.
    let base = janus.handle_count().await;
    alice.publish("video", "alice-video").await;
    // The offer carries a sid although 0.4.1 names none (issue 14), and
    // bob's answer and candidates with it get media flowing.
    let (sid, _) = bob.subscribe(&alice_id, "video").await;
    assert!(!sid.is_empty());
    assert_eq!(janus.handle_count().await, base + 2);
    // Both leave: our server deletes publisher and subscriber on the proxy.
    // (The Go proxy does not close subscribers of a closed publisher by
    // itself, so bob's goes when bob leaves.)
    alice.ws.leave_room().await;
    bob.ws.leave_room().await;
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == base);
}

/// `urltype = etcd` with a real etcd: the signaling server follows the
/// proxies listed under `keyprefix` (added: connected and used; removed:
/// dropped from the list).
#[tokio::test]
async fn pxs_proxy_urls_from_etcd() {
    let etcd = EtcdServer::start().await.expect("etcd starts");
    let dir = TempDir::new("mcu-proxy-etcd").expect("dir");
    let a = our_proxy(&dir, "a").await;
    let key = dir.join("server1.key");
    std::fs::write(&key, TokenKey::Rsa.private_pem()).expect("key");
    let s = TestServer::start_with(&format!(
        "[mcu]\ntype = proxy\nurltype = etcd\nendpoints = {}\nkeyprefix = /signaling/proxy/server\n\
         token_id = server1\ntoken_key = {}\ntimeout = 5\n",
        etcd.endpoint(),
        key.display()
    ))
    .await;
    assert_eq!(stats(&s).await["mcu"]["proxies"], json!([]));
    etcd.put(
        "/signaling/proxy/server/a",
        &json!({"address": format!("http://{}", a.addr)}).to_string(),
    )
    .await
    .expect("put");
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == true
    );
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    alice.publish("video", "alice-video").await;
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );
    alice.ws.leave_room().await;
    etcd.delete("/signaling/proxy/server/a")
        .await
        .expect("delete");
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"] == json!([])
    );
}

/// PXS GeoIP placement: a client in Canada publishes on the US proxy
/// although the German one comes first at equal load; with the client in
/// South Africa and `AF = NA` as continent override, the US proxy wins even
/// at a higher load. (Clients are all on 127.0.0.1 here, so the country
/// comes from `[geoip-overrides]`, re-read on SIGHUP.)
#[tokio::test]
async fn pxs_publishers_prefer_proxies_near_the_client() {
    let dir = TempDir::new("mcu-proxy-geo").expect("dir");
    let de = our_proxy_in(&dir, "de", "DE").await;
    let us = our_proxy_in(&dir, "us", "US").await;
    let urls = [format!("ws://{}", de.addr), format!("ws://{}", us.addr)];
    let mcu = signaling_config(&dir, &urls);
    let s = TestServer::start_with(&format!("{mcu}[geoip-overrides]\n127.0.0.1 = CA\n")).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["connected"] == true))
    );
    assert_eq!(stats(&s).await["mcu"]["proxies"][1]["country"], "US");
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    alice.publish("video", "alice-video").await;
    assert_eq!(
        proxy_metric(&us, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );
    assert_eq!(
        proxy_metric(&de, "signaling_proxy_publishers{type=\"video\"}").await,
        0
    );
    assert_eventually!(
        Duration::from_secs(5),
        stats(&s).await["mcu"]["proxies"][1]["load"] == 1
    );
    let text = config_for(
        &s.backend.url(),
        &format!("{mcu}[geoip-overrides]\n127.0.0.1 = ZA\n[continent-overrides]\nAF = NA\n"),
    );
    s.server.reload(&Ini::parse(&text).expect("config"));
    alice.publish("screen", "alice-screen").await;
    assert_eq!(
        proxy_metric(&us, "signaling_proxy_publishers{type=\"screen\"}").await,
        1
    );
}

/// How many remote publications (`publish_remotely`) the video publisher
/// (feed 1) of each room of `janus` has.
async fn janus_remotes(janus: &Janus) -> usize {
    let rooms = janus_room_list(janus).await;
    let probe = VideoRoomProbe::open(janus).await;
    let mut n = 0;
    for room in rooms {
        let body = json!({"request": "listremotes", "room": room["room"], "publisher_id": 1});
        if let Some(r) = probe.request(body).await {
            n += r["list"].as_array().map_or(0, Vec::len);
        }
    }
    probe.close().await;
    n
}

/// A German and a US proxy (remote streams enabled) and our server using
/// both, its clients placed in Germany; `geo(country)` is that
/// configuration with the clients placed in `country`.
async fn german_and_us_proxies(
    name: &str,
) -> (
    TempDir,
    OurProxy,
    OurProxy,
    impl Fn(&str) -> String,
    TestServer,
) {
    let dir = TempDir::new(name).expect("dir");
    let de = remote_capable_proxy(&dir, "de", "DE").await;
    let us = remote_capable_proxy(&dir, "us", "US").await;
    let urls = [format!("ws://{}", de.addr), format!("ws://{}", us.addr)];
    let mcu = signaling_config(&dir, &urls);
    let geo = move |country: &str| format!("{mcu}[geoip-overrides]\n127.0.0.1 = {country}\n");
    let s = TestServer::start_with(&geo("DE")).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["connected"] == true))
    );
    (dir, de, us, geo, s)
}

/// Remote streams (upstream 1.3.0): alice publishes from Germany on the
/// German proxy; bob, in the US, is served by the US proxy, which fetches
/// the stream from the German one (Janus to Janus RTP) — media reaches him
/// and the German proxy carries no subscriber. When alice stops, bob's
/// subscriber ends and the US proxy closes its link. Without a nearer
/// proxy (carol, also in Germany) the subscriber stays at the publisher's.
#[tokio::test]
async fn pxs_remote_stream_through_a_proxy_near_the_subscriber() {
    let (_dir, de, us, geo, s) = german_and_us_proxies("mcu-proxy-remote").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    let mut carol = MediaClient::join(&s, "carol", "room1").await;
    all_in_call(&s, "room1").await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-video").await;
    assert_eq!(
        proxy_metric(&de, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );

    // Carol, in Germany too: served where alice publishes.
    carol.subscribe(&alice_id, "video").await;
    assert_eq!(
        proxy_metric(&de, "signaling_proxy_subscribers{type=\"video\"}").await,
        1
    );

    // Bob is in the US now (all clients share 127.0.0.1 here).
    let text = config_for(&s.backend.url(), &geo("US"));
    s.server.reload(&Ini::parse(&text).expect("config"));
    bob.subscribe(&alice_id, "video").await;
    assert_eq!(
        proxy_metric(&us, "signaling_proxy_subscribers{type=\"video\"}").await,
        1,
        "bob is served by the US proxy"
    );
    assert_eq!(
        proxy_metric(&de, "signaling_proxy_subscribers{type=\"video\"}").await,
        1,
        "only carol at the German proxy"
    );
    assert_eq!(us.server.remote_links(), 1);
    assert_eq!(
        gauge(
            &metrics(&s).await,
            "signaling_mcu_remote_subscribers_total{type=\"video\"}"
        ),
        1
    );

    // Janus US holds the remote publisher's room; Janus DE sends to it.
    assert_eq!(janus_rooms(&us._janus).await, 1);
    assert_eq!(janus_remotes(&de._janus).await, 1);

    // Bob leaves: the US proxy unpublishes, removes the remote publisher
    // and closes its link; alice and carol go on.
    bob.ws.leave_room().await;
    assert_eventually!(Duration::from_secs(10), us.server.remote_links() == 0);
    assert_eventually!(Duration::from_secs(10), janus_rooms(&us._janus).await == 0);
    assert_eventually!(
        Duration::from_secs(10),
        janus_remotes(&de._janus).await == 0
    );
    assert_eq!(
        proxy_metric(&de, "signaling_proxy_subscribers{type=\"video\"}").await,
        1
    );

    // He comes back and subscribes again: a new link, media again.
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    all_in_call(&s, "room1").await;
    bob.subscribe(&alice_id, "video").await;
    assert_eq!(us.server.remote_links(), 1);

    // Alice stops publishing: bob's remote subscriber and the link end.
    alice.ws.leave_room().await;
    assert_eventually!(
        Duration::from_secs(10),
        proxy_metric(&us, "signaling_proxy_subscribers{type=\"video\"}").await == 0
    );
    assert_eventually!(Duration::from_secs(10), us.server.remote_links() == 0);
    assert_eventually!(
        Duration::from_secs(10),
        proxy_metric(&de, "signaling_proxy_publishers{type=\"video\"}").await == 0
    );
    assert_eventually!(Duration::from_secs(10), janus_rooms(&us._janus).await == 0);
    assert_eventually!(Duration::from_secs(10), janus_rooms(&de._janus).await == 0);
}

/// Remote streams by load (upstream's `[bandwidth] outgoing`): proxy A may
/// send 1 Mbit/s, which carol's subscription of alice's camera uses up; A
/// announces 100 % and bob's subscription goes through proxy B, which
/// fetches the stream from A. Both receive media.
#[tokio::test]
async fn pxs_remote_stream_when_the_publishers_proxy_is_full() {
    let dir = TempDir::new("mcu-proxy-full").expect("dir");
    let a = remote_capable_proxy_with(&dir, "a", "", "[bandwidth]\noutgoing = 1\n").await;
    let b = remote_capable_proxy(&dir, "b", "").await;
    let urls = [format!("ws://{}", a.addr), format!("ws://{}", b.addr)];
    let s = TestServer::start_with(&signaling_config(&dir, &urls)).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"]
            .as_array()
            .is_some_and(|p| p.iter().all(|p| p["connected"] == true))
    );
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    let mut carol = MediaClient::join(&s, "carol", "room1").await;
    all_in_call(&s, "room1").await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-video").await;
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );
    carol.subscribe(&alice_id, "video").await;
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_subscribers{type=\"video\"}").await,
        1
    );
    assert_eventually!(
        Duration::from_secs(5),
        stats(&s).await["mcu"]["proxies"][0]["bandwidth"]["outgoing"] == 100.0
    );
    bob.subscribe(&alice_id, "video").await;
    assert_eq!(
        proxy_metric(&b, "signaling_proxy_subscribers{type=\"video\"}").await,
        1,
        "bob is served by B"
    );
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_subscribers{type=\"video\"}").await,
        1
    );
    assert_eq!(b.server.remote_links(), 1);
}

/// A TCP relay to `target` whose connections can all be cut at once (the
/// network between signaling server and proxy failing).
struct Relay {
    addr: SocketAddr,
    cut: Arc<parking_lot::Mutex<tokio_util::sync::CancellationToken>>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(parking_lot::Mutex::new(
            tokio_util::sync::CancellationToken::new(),
        ));
        let c = cut.clone();
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let token = c.lock().clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                    }
                });
            }
        });
        Relay { addr, cut }
    }

    fn cut(&self) {
        let mut t = self.cut.lock();
        t.cancel();
        *t = tokio_util::sync::CancellationToken::new();
    }
}

/// PXS reconnect: the connection to the proxy breaks mid-call; the
/// signaling server reconnects and resumes its proxy session, so the
/// publisher survives and new subscribers still reach it.
#[tokio::test]
async fn pxs_proxy_connection_loss_resumes_the_session() {
    let dir = TempDir::new("mcu-proxy-resume").expect("dir");
    let a = our_proxy(&dir, "a").await;
    let relay = Relay::start(a.addr).await;
    let urls = [format!("ws://{}", relay.addr)];
    let s = TestServer::start_with(&signaling_config(&dir, &urls)).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == true
    );
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    let mut carol = MediaClient::join(&s, "carol", "room1").await;
    all_in_call(&s, "room1").await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-video").await;
    bob.subscribe(&alice_id, "video").await;

    relay.cut();
    assert_eventually!(
        Duration::from_secs(5),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == false
    );
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == true
    );
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_sessions_resumed_total").await,
        1
    );
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );
    // The resumed session still serves: a new subscriber gets media.
    carol.subscribe(&alice_id, "video").await;
}

/// `dnsdiscovery = true`: a proxy URL with a host name becomes one
/// connection per address the name resolves to (here `localhost`), and the
/// one that answers serves publishers.
#[tokio::test]
async fn pxs_dns_discovery_connects_to_each_address() {
    let dir = TempDir::new("mcu-proxy-dns").expect("dir");
    let a = our_proxy(&dir, "a").await;
    let urls = [format!("ws://localhost:{}", a.addr.port())];
    let s = TestServer::start_with(&format!(
        "{}dnsdiscovery = true\n",
        signaling_config(&dir, &urls)
    ))
    .await;
    let want = format!("ws://127.0.0.1:{}", a.addr.port());
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"]
            .as_array()
            .is_some_and(|p| p
                .iter()
                .any(|p| p["url"] == want.as_str() && p["connected"] == true))
    );
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    alice.publish("video", "alice-video").await;
    assert_eq!(
        proxy_metric(&a, "signaling_proxy_publishers{type=\"video\"}").await,
        1
    );
}

/// `wss://` to a proxy with a TLS listener: with `skipverify` (self-signed
/// test certificate) the signaling server connects and publishes; without
/// it the untrusted certificate is refused.
#[tokio::test]
async fn pxs_tls_to_the_proxy() {
    let dir = TempDir::new("mcu-proxy-tls").expect("dir");
    let janus = start_janus().await;
    let (cert, key) = self_signed_cert(&dir, "proxy-tls", 1).expect("certificate");
    let public = dir.join("server1.pem");
    std::fs::write(&public, TokenKey::Rsa.public_pem()).expect("key");
    let ini = Ini::parse(&format!(
        "[http]\nlisten = 127.0.0.1:0\n[https]\nlisten = 127.0.0.1:0\ncertificate = {}\nkey = {}\n\
         [tokens]\nserver1 = {}\n[mcu]\nurl = {}\n",
        cert.display(),
        key.display(),
        public.display(),
        janus.url()
    ))
    .expect("config");
    let proxy = ProxyServer::build(&ini).expect("proxy");
    let addrs = proxy::bind_and_serve(&proxy, &ini).await.expect("bind");
    let https = addrs[1];
    let urls = [format!("wss://{https}")];

    let strict = TestServer::start_with(&signaling_config(&dir, &urls)).await;
    let secure = TestServer::start_with(&format!(
        "{}skipverify = true\n",
        signaling_config(&dir, &urls)
    ))
    .await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&secure).await["mcu"]["proxies"][0]["connected"] == true
    );
    assert_eq!(
        stats(&strict).await["mcu"]["proxies"][0]["connected"],
        false
    );
    let mut alice = MediaClient::join(&secure, "alice", "room1").await;
    alice.publish("video", "alice-video").await;
}

/// Clustering (issue 7): two signaling servers on one NATS share the proxy
/// pool. A subscriber on server B of a publisher on server A learns from A
/// where the stream is, and receives its media; B checks that both are in
/// the call from the room's view of the whole cluster.
#[tokio::test]
async fn pxs_subscriber_on_another_signaling_server() {
    let dir = TempDir::new("mcu-cluster").expect("dir");
    let p = our_proxy(&dir, "p").await;
    let mut c = cluster_call(&signaling_config(&dir, &[format!("ws://{}", p.addr)])).await;
    c.alice.publish("video", "alice-video").await;
    let alice_id = c.alice.id.clone();
    c.bob.subscribe(&alice_id, "video").await;
    assert_eq!(
        proxy_metric(&p, "signaling_proxy_subscribers{type=\"video\"}").await,
        1
    );
    // B never waited for a publisher of its own.
    assert_eq!(
        gauge(
            &metrics_at(c.b).await,
            "signaling_mcu_nopublisher_total{type=\"video\"}"
        ),
        0
    );
}

/// One of our proxies (with its Janus), our server using it, and alice and
/// bob in a call in room1.
async fn proxied_call_of_two(
    name: &str,
) -> (TempDir, OurProxy, TestServer, MediaClient, MediaClient) {
    let dir = TempDir::new(name).expect("dir");
    let a = our_proxy(&dir, "a").await;
    let urls = [format!("ws://{}", a.addr)];
    let s = TestServer::start_with(&signaling_config(&dir, &urls)).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == true
    );
    let alice = MediaClient::join(&s, "alice", "room1").await;
    let bob = MediaClient::join(&s, "bob", "room1").await;
    talk_in_call(&s, "room1", &["alice", "bob"]).await;
    (dir, a, s, alice, bob)
}

/// Issue 19 through one of our proxies: its Janus is killed mid-call and
/// comes back 2 s later; Talk-like clients (the publisher ignores the
/// `requestoffer` to itself and republishes with a new sid when its own
/// peer is ended and a participants update follows; the subscriber answers
/// an offer with a new sid with a new peer) get decoded media back within a
/// bounded time, without rejoining.
#[tokio::test]
async fn pxs_talk_clients_recover_after_the_proxys_janus_restarts() {
    let (_dir, mut a, _s, mut alice, mut bob) = proxied_call_of_two("mcu-proxy-restart").await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    let (old_sid, _) = bob.subscribe(&alice_id, "video").await;

    a._janus.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    a._janus.restart().await;
    let back = tokio::time::Instant::now();

    alice.republish_like_talk("alice-2").await;
    let (sid, _) = bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(sid, old_sid);
    bob.pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    let took = back.elapsed();
    eprintln!("media back {took:?} after the proxy's Janus accepted connections again");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(alice.id, alice_id);
    // One publisher and one subscriber left in that Janus.
    assert_eventually!(Duration::from_secs(5), a._janus.handle_count().await == 2);
}

/// Issue 19 behind Debian's Go proxy 0.4.1: its Janus is killed mid-call
/// and comes back 2 s later. That proxy drops our publishers and
/// subscribers and says only `backend-disconnected` / `backend-connected`;
/// on the latter the publisher's client is asked to publish again (the
/// Talk way), and the subscriber follows the new publisher: decoded media
/// is back within a bounded time, without rejoining.
#[tokio::test]
async fn pxs_talk_clients_recover_after_the_go_proxys_janus_restarts() {
    let dir = TempDir::new("go-proxy-restart").expect("dir");
    let mut janus = start_janus().await;
    let (_proxy, addr) = start_go_proxy(&dir, &janus).await;
    let urls = [format!("ws://{addr}")];
    let s = TestServer::start_with(&signaling_config(&dir, &urls)).await;
    assert_eventually!(
        Duration::from_secs(10),
        stats(&s).await["mcu"]["proxies"][0]["connected"] == true
    );
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    talk_in_call(&s, "room1", &["alice", "bob"]).await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    let (old_sid, _) = bob.subscribe(&alice_id, "video").await;

    janus.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    janus.restart().await;
    let back = tokio::time::Instant::now();

    alice.republish_like_talk("alice-2").await;
    let (sid, _) = bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(sid, old_sid);
    bob.pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    let took = back.elapsed();
    eprintln!("media back {took:?} after the Go proxy's Janus accepted connections again");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(alice.id, alice_id);
}

/// Issue 19 with two proxies (remote streams): alice publishes on the
/// German proxy, bob gets her stream through the US proxy (which fetches
/// it from the German one). The German proxy's Janus is killed mid-call
/// and comes back 2 s later; with Talk-like clients the publisher is made
/// to publish again and bob's client gets a fresh offer and decoded media
/// within a bounded time, without rejoining. (All clients share 127.0.0.1,
/// so the geo override places the re-created subscriber too: here at the
/// German proxy, so after recovery the stream is local there; what is
/// tested is that losing a remote stream's source recovers.)
#[tokio::test]
async fn pxs_talk_clients_recover_a_remote_stream_after_the_publishers_janus_restarts() {
    let (_dir, mut de, us, geo, s) = german_and_us_proxies("mcu-proxy-remote-restart").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    talk_in_call(&s, "room1", &["alice", "bob"]).await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    let text = config_for(&s.backend.url(), &geo("US"));
    s.server.reload(&Ini::parse(&text).expect("config"));
    let (old_sid, _) = bob.subscribe(&alice_id, "video").await;
    assert_eq!(us.server.remote_links(), 1, "a remote stream");
    // Alice publishes in Germany again after the restart.
    let text = config_for(&s.backend.url(), &geo("DE"));
    s.server.reload(&Ini::parse(&text).expect("config"));

    de._janus.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    de._janus.restart().await;
    let back = tokio::time::Instant::now();

    alice.republish_like_talk("alice-2").await;
    let (sid, _) = bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(sid, old_sid);
    bob.pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    let took = back.elapsed();
    eprintln!(
        "remote stream back {took:?} after the publisher proxy's Janus accepted connections again"
    );
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert_eq!(alice.id, alice_id);
}

/// Issue 19 through one of our proxies: its Janus dies mid-call and does
/// not come back. The proxy says so for the subscriber after a few seconds
/// (`subscriber-stalled`, ours), and the signaling server tells the
/// subscriber's client the way Talk acts on: two participants updates with
/// only the publisher's entry, out of the call and back in.
#[tokio::test]
async fn pxs_subscriber_is_told_within_seconds_when_the_proxys_janus_stays_away() {
    let (_dir, mut a, _s, mut alice, mut bob) = proxied_call_of_two("mcu-proxy-stall").await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    bob.subscribe(&alice_id, "video").await;
    bob.pump(Duration::from_millis(300)).await;

    a._janus.kill();
    let killed = tokio::time::Instant::now();
    let mut updates = Vec::new();
    while updates.len() < 2 && killed.elapsed() < Duration::from_secs(12) {
        let got = bob.pump(Duration::from_millis(200)).await;
        updates.extend(got.into_iter().filter(|m| {
            m["type"] == "event"
                && m["event"]["target"] == "participants"
                && m["event"]["type"] == "update"
        }));
    }
    let took = killed.elapsed();
    eprintln!("subscriber told {took:?} after the proxy's Janus was killed");
    assert_eq!(updates.len(), 2, "{:?}", bob.seen);
    let entry = |m: &Value| m["event"]["update"]["users"][0].clone();
    assert_eq!(entry(&updates[0])["sessionId"], alice_id.as_str());
    assert_eq!(entry(&updates[0])["inCall"], 0, "{}", updates[0]);
    assert_eq!(entry(&updates[1])["inCall"], 7, "{}", updates[1]);
    for m in &updates {
        assert!(!m.to_string().contains(&bob.id), "own entry sent: {m}");
    }
}
