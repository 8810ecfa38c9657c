//! Media-test helpers shared by the MCU tests: a signaling client that runs
//! real WebRTC peers (`testkit::webrtc`) and relays their candidates, plus
//! metric and Janus helpers.
#![allow(dead_code)]

use super::*;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;
use testkit::janus::{Janus, JanusOptions};
use testkit::webrtc::{PeerState, WebRtcPeer};

/// Long enough for ICE + DTLS on a loaded CI machine.
pub const MEDIA_TIMEOUT: Duration = Duration::from_secs(20);

/// Janus's default session timeout (60 s): our keepalives come every 30 s.
pub async fn start_janus() -> Janus {
    Janus::start_with(JanusOptions {
        session_timeout: 60,
    })
    .await
}

pub async fn metrics(s: &TestServer) -> String {
    let resp = raw_http(
        &s.addr.to_string(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_default();
    String::from_utf8_lossy(&resp).into_owned()
}

pub fn gauge(text: &str, line_start: &str) -> i64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

pub async fn all_in_call(s: &TestServer, room: &str) {
    let r = s
        .backend_request(
            room,
            json!({"type": "incall", "incall": {"incall": 7, "all": true}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// The call starts the way Talk reports it: an `incall` request listing the
/// Talk sessions (`talk-<user>`) that joined with audio and video, so the
/// server knows the participant list.
pub async fn talk_in_call(s: &TestServer, room: &str, users: &[&str]) {
    let entries: Vec<Value> = users
        .iter()
        .map(|u| json!({"sessionId": format!("talk-{u}"), "inCall": 7, "participantType": 3}))
        .collect();
    let r = s
        .backend_request(
            room,
            json!({"type": "incall", "incall": {"incall": 7, "changed": entries, "users": entries}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A VideoRoom handle of its own in a Janus, for looking at its state.
pub struct VideoRoomProbe {
    gw: ::janus::Gateway,
    session: ::janus::Session,
    handle: ::janus::Handle,
}

impl VideoRoomProbe {
    pub async fn open(janus: &Janus) -> VideoRoomProbe {
        let gw = ::janus::Gateway::connect(&janus.url())
            .await
            .expect("gateway");
        let session = gw.create_session().await.expect("session");
        let (handle, _events) = session
            .attach(::janus::videoroom::PLUGIN)
            .await
            .expect("attach");
        VideoRoomProbe {
            gw,
            session,
            handle,
        }
    }

    /// The plugin's answer to `body`, or `None` if Janus refused it.
    pub async fn request(&self, body: Value) -> Option<Value> {
        self.handle.message(body, None).await.ok().map(|r| r.data)
    }

    pub async fn close(self) {
        let _ = self.handle.detach().await;
        let _ = self.session.destroy().await;
        self.gw.close().await;
    }
}

/// The VideoRoom rooms in Janus as Janus lists them.
pub async fn janus_room_list(janus: &Janus) -> Vec<Value> {
    let probe = VideoRoomProbe::open(janus).await;
    let r = probe
        .request(json!({"request": "list"}))
        .await
        .expect("list");
    probe.close().await;
    r["list"].as_array().cloned().unwrap_or_default()
}

/// The number of VideoRoom rooms in Janus.
pub async fn janus_rooms(janus: &Janus) -> usize {
    janus_room_list(janus).await.len()
}

/// A signaling client with the WebRTC peers it runs, keyed by MCU sid;
/// candidates from the server are handed to the peer of their sid.
pub struct MediaClient {
    pub ws: TestClient,
    pub id: String,
    pub peers: HashMap<String, Arc<WebRtcPeer>>,
    /// Candidates for sids without a peer yet.
    early: Vec<(String, String)>,
    /// Every message received through [`next`](Self::next) and
    /// [`pump`](Self::pump), in order (tests check their sids).
    pub seen: Vec<Value>,
}

impl MediaClient {
    pub async fn join(s: &TestServer, user: &str, room: &str) -> MediaClient {
        let ws = s.user_in_room(user, room, &format!("talk-{user}")).await;
        Self::from_client(ws)
    }

    /// Around a client that said hello (and joined its room) elsewhere,
    /// e.g. at a `signaling` process.
    pub fn from_client(ws: TestClient) -> MediaClient {
        let id = ws.session_id().expect("session id").to_owned();
        MediaClient {
            ws,
            id,
            peers: HashMap::new(),
            early: Vec::new(),
            seen: Vec::new(),
        }
    }

    pub async fn send(&mut self, to: &str, data: Value) -> String {
        self.ws.send_message(recipient_session(to), data).await
    }

    pub fn add_peer(&mut self, sid: &str, peer: Arc<WebRtcPeer>) {
        self.peers.insert(sid.to_owned(), peer);
    }

    pub async fn forward_candidate(&mut self, msg: &Value) {
        let data = &msg["message"]["data"];
        let sid = data["sid"].as_str().unwrap_or_default().to_owned();
        let line = data["payload"]["candidate"]["candidate"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        match self.peers.get(&sid) {
            Some(p) => p.add_remote_candidate(&line).await,
            None => self.early.push((sid, line)),
        }
    }

    pub async fn flush_early(&mut self) {
        let early = std::mem::take(&mut self.early);
        for (sid, line) in early {
            match self.peers.get(&sid) {
                Some(p) => p.add_remote_candidate(&line).await,
                None => self.early.push((sid, line)),
            }
        }
    }

    /// The next MCU message of `kind` (`answer`, `offer`, `requestoffer`,
    /// or `error`), forwarding candidates on the way. Events are skipped.
    pub async fn next(&mut self, kind: &str) -> Value {
        let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg = self
                .ws
                .recv_timeout(left)
                .await
                .unwrap_or_else(|| panic!("no {kind} within {MEDIA_TIMEOUT:?}"));
            self.seen.push(msg.clone());
            if msg["type"] == "error" {
                if kind == "error" {
                    return msg;
                }
                panic!("unexpected error while waiting for {kind}: {msg}");
            }
            if msg["type"] != "message" {
                continue;
            }
            let t = msg["message"]["data"]["type"].as_str().unwrap_or_default();
            if t == "candidate" {
                self.forward_candidate(&msg).await;
                continue;
            }
            if t == kind {
                return msg;
            }
        }
    }

    /// Forward candidates for `duration`; returns any other message.
    pub async fn pump(&mut self, duration: Duration) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + duration;
        let mut other = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                return other;
            }
            let Some(msg) = self.ws.recv_timeout(left).await else {
                return other;
            };
            self.seen.push(msg.clone());
            if msg["type"] == "message" && msg["message"]["data"]["type"] == "candidate" {
                self.forward_candidate(&msg).await;
            } else {
                other.push(msg);
            }
        }
    }

    /// Pump until `peer` satisfies `f`.
    pub async fn pump_until(&mut self, sid: &str, f: impl Fn(&PeerState) -> bool) -> PeerState {
        let peer = self.peers.get(sid).expect("peer").clone();
        let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
        while tokio::time::Instant::now() < deadline {
            if f(&peer.state()) {
                return peer.state();
            }
            self.pump(Duration::from_millis(100)).await;
        }
        panic!("peer {sid} did not get there: {:?}", peer.state());
    }

    /// Publish `stream` (`video` with audio+video, `screen` with video).
    pub async fn publish(&mut self, stream: &str, sid: &str) -> Arc<WebRtcPeer> {
        let peer = Arc::new(WebRtcPeer::start().await);
        let offer = peer.create_offer(stream == "video", true).await;
        let me = self.id.clone();
        self.send(
            &me,
            json!({"type": "offer", "roomType": stream, "sid": sid,
                   "payload": {"type": "offer", "sdp": offer}}),
        )
        .await;
        self.send(
            &me,
            json!({"type": "candidate", "roomType": stream, "sid": sid,
                   "payload": {"candidate": {"candidate": peer.local_candidate(),
                                             "sdpMid": "0", "sdpMLineIndex": 0}}}),
        )
        .await;
        let answer = self.next("answer").await;
        let data = &answer["message"]["data"];
        assert_eq!(data["from"], me.as_str(), "{answer}");
        assert_eq!(data["to"], me.as_str(), "{answer}");
        assert_eq!(data["roomType"], stream, "{answer}");
        assert_eq!(data["sid"], sid, "{answer}");
        assert_eq!(answer["message"]["sender"]["sessionid"], me.as_str());
        peer.accept_answer(data["payload"]["sdp"].as_str().expect("sdp"))
            .await
            .expect("answer accepted");
        self.add_peer(sid, peer.clone());
        self.flush_early().await;
        self.pump_until(sid, |s| s.connected).await;
        peer
    }

    /// Answer an offer message with a new peer; returns the sid.
    pub async fn answer_offer(&mut self, offer: &Value) -> (String, Arc<WebRtcPeer>) {
        let data = &offer["message"]["data"];
        // Every offer names its subscriber (also through Go 0.4.1's proxy,
        // which gives none: the server makes one up).
        let sid = data["sid"].as_str().unwrap_or_default().to_owned();
        assert!(!sid.is_empty(), "offer without sid: {offer}");
        let from = data["from"].as_str().expect("from").to_owned();
        let stream = data["roomType"].as_str().expect("roomType").to_owned();
        let peer = Arc::new(WebRtcPeer::start().await);
        let answer = peer
            .accept_offer(data["payload"]["sdp"].as_str().expect("sdp"))
            .await
            .expect("offer accepted");
        self.send(
            &from,
            json!({"type": "answer", "roomType": stream, "sid": sid,
                   "payload": {"type": "answer", "sdp": answer}}),
        )
        .await;
        self.send(
            &from,
            json!({"type": "candidate", "roomType": stream, "sid": sid,
                   "payload": {"candidate": {"candidate": peer.local_candidate(),
                                             "sdpMid": "0", "sdpMLineIndex": 0}}}),
        )
        .await;
        self.add_peer(&sid, peer.clone());
        self.flush_early().await;
        (sid, peer)
    }

    /// `requestoffer` for `publisher`'s `stream`, answered; waits for
    /// audio (video streams) and video frames.
    pub async fn subscribe(&mut self, publisher: &str, stream: &str) -> (String, Arc<WebRtcPeer>) {
        self.send(
            publisher,
            json!({"type": "requestoffer", "roomType": stream}),
        )
        .await;
        let offer = self.next("offer").await;
        let data = &offer["message"]["data"];
        assert_eq!(data["from"], publisher, "{offer}");
        assert_eq!(data["to"], self.id.as_str(), "{offer}");
        assert_eq!(data["roomType"], stream, "{offer}");
        assert_eq!(offer["message"]["sender"]["sessionid"], publisher);
        let (sid, peer) = self.answer_offer(&offer).await;
        let audio = stream == "video";
        self.pump_until(&sid, |s| {
            s.video_frames > 10 && (!audio || s.audio_frames > 10)
        })
        .await;
        (sid, peer)
    }
}

/// Clustering: two signaling servers (`a`, `b`) on one real NATS with the
/// same `[mcu]` configuration, alice on A and bob on B in `room1`, both in
/// the call (an `incall` request to A, which reaches every node).
pub struct ClusterCall {
    pub alice: MediaClient,
    pub bob: MediaClient,
    pub a: std::net::SocketAddr,
    pub b: std::net::SocketAddr,
    // Field order: the servers' buses go before the nats-server.
    _servers: Vec<Arc<signaling::Server>>,
    _backend: FakeBackend,
    _nats: NatsServer,
}

pub async fn cluster_call(mcu: &str) -> ClusterCall {
    let nats = NatsServer::start().await.expect("nats-server starts");
    let backend = FakeBackend::start(SECRET).await;
    let extra = format!(
        "{mcu}\n[nats]\nurl = {}\npresenceinterval = 1\n",
        nats.url()
    );
    let (sa, a) = start_server(&config_for(&backend.url(), &extra)).await;
    let (sb, b) = start_server(&config_for(&backend.url(), &extra)).await;
    for s in [&sa, &sb] {
        let bus = s.nats.clone().expect("NATS bus");
        tokio::time::timeout(Duration::from_secs(10), bus.wait_connected(true))
            .await
            .expect("connected to NATS");
    }
    // Both know each other (`cluster.nodes`) before anyone asks.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let member = |addr: std::net::SocketAddr, user: &'static str| {
        let url = backend.backend_url();
        async move {
            let mut c = TestClient::connect(&spreed_url(addr)).await.skip("welcome");
            c.hello_user(&url, user).await;
            let r = c.join_room("room1", &format!("talk-{user}")).await;
            assert_eq!(r["room"]["roomid"], "room1", "{r}");
            MediaClient::from_client(c)
        }
    };
    let mut alice = member(a, "alice").await;
    let mut bob = member(b, "bob").await;
    // B knows alice is in the room before the call starts.
    bob.ws
        .recv_matching(|m| {
            m["event"]["type"] == "join"
                && m["event"]["join"]
                    .as_array()
                    .is_some_and(|j| j.iter().any(|e| e["userid"] == "alice"))
        })
        .await;
    let r = backend
        .send_room_request(
            &format!("http://{a}/"),
            "room1",
            &json!({"type": "incall", "incall": {"incall": 7, "all": true}}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    for c in [&mut alice, &mut bob] {
        c.ws.recv_matching(|m| m["event"]["target"] == "participants")
            .await;
    }
    ClusterCall {
        alice,
        bob,
        a,
        b,
        _servers: vec![sa, sb],
        _backend: backend,
        _nats: nats,
    }
}

impl ClusterCall {
    /// The participant list as Talk reports it (to A, which tells every
    /// node): both users' Talk sessions with audio and video.
    pub async fn talk_in_call(&mut self) {
        let entries: Vec<Value> = ["alice", "bob"]
            .iter()
            .map(|u| json!({"sessionId": format!("talk-{u}"), "inCall": 7, "participantType": 3}))
            .collect();
        let r = self
            ._backend
            .send_room_request(
                &format!("http://{}/", self.a),
                "room1",
                &json!({"type": "incall", "incall": {"incall": 7, "changed": entries, "users": entries}}),
            )
            .await;
        assert_eq!(r.status, 200, "{}", r.text());
        for c in [&mut self.alice, &mut self.bob] {
            c.ws.recv_matching(|m| m["event"]["target"] == "participants")
                .await;
        }
    }
}

/// The `/metrics` text of the server at `addr`.
pub async fn metrics_at(addr: std::net::SocketAddr) -> String {
    let resp = raw_http(
        &addr.to_string(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .unwrap_or_default();
    String::from_utf8_lossy(&resp).into_owned()
}

/// The MCU messages (`data.type` = `kind`) in `seen` from session `from`.
pub fn seen_of<'a>(seen: &'a [Value], kind: &str, from: &str) -> Vec<&'a Value> {
    seen.iter()
        .filter(|m| m["type"] == "message")
        .filter(|m| m["message"]["data"]["type"] == kind)
        .filter(|m| m["message"]["sender"]["sessionid"] == from)
        .collect()
}

/// The error messages in `seen`.
pub fn seen_errors(seen: &[Value]) -> Vec<&Value> {
    seen.iter().filter(|m| m["type"] == "error").collect()
}

impl MediaClient {
    /// What Talk's web client does when its own publisher is dead and the
    /// server asks it to publish again: it ignores the `requestoffer` to
    /// itself; an `unshareScreen` for `video` from its own session ends its
    /// publisher peer, and the next participants update makes it create a
    /// new one with a new sid and offer it. Returns the new peer once it is
    /// connected (its answer carried `sid`).
    pub async fn republish_like_talk(&mut self, sid: &str) -> Arc<WebRtcPeer> {
        let me = self.id.clone();
        let deadline = tokio::time::Instant::now() + MEDIA_TIMEOUT;
        let mut peer_ended = false;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let msg =
                self.ws.recv_timeout(left).await.unwrap_or_else(|| {
                    panic!("not asked to publish again within {MEDIA_TIMEOUT:?}")
                });
            self.seen.push(msg.clone());
            let data = &msg["message"]["data"];
            if msg["type"] == "message"
                && data["type"] == "unshareScreen"
                && data["roomType"] == "video"
                && msg["message"]["sender"]["sessionid"] == me.as_str()
            {
                // `ownPeer.end()`.
                self.peers.clear();
                peer_ended = true;
            }
            if peer_ended
                && msg["type"] == "event"
                && msg["event"]["target"] == "participants"
                && msg["event"]["type"] == "update"
            {
                break;
            }
        }
        self.publish("video", sid).await
    }

    /// What Talk's web client does with offers of `from`: an offer with a
    /// sid other than its peer's replaces that peer. Waits for the next
    /// offer from `from` and answers it with a new peer; returns its sid.
    pub async fn accept_next_offer_from(&mut self, from: &str) -> (String, Arc<WebRtcPeer>) {
        loop {
            let offer = self.next("offer").await;
            if offer["message"]["data"]["from"] == from {
                let old: Vec<String> = self.peers.keys().cloned().collect();
                let sid = offer["message"]["data"]["sid"].as_str().unwrap_or_default();
                assert!(
                    !old.iter().any(|o| o == sid),
                    "offer with a known sid: {offer}"
                );
                self.peers.clear();
                return self.answer_offer(&offer).await;
            }
        }
    }
}
