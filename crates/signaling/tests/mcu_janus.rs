//! The MCU against a real Janus (Debian's 1.1.x, started per test on
//! loopback) with real WebRTC peers (`testkit::webrtc`, str0m): media is
//! published through our server into Janus and received by subscribers; bad
//! input gets the documented errors; a Janus restart during a call heals;
//! nothing is left behind in Janus (admin API handle count, room list).
//!
//! IDs: JAN-04..18, RTE-09/10, PERM-04..06 (../shared/FEATURES.md).

mod common;

use common::media::*;
use common::*;
use std::sync::Arc;
use std::time::Duration;
use testkit::janus::Janus;
use testkit::webrtc::WebRtcPeer;

async fn mcu_server(janus: &Janus, extra: &str) -> TestServer {
    let s = TestServer::start_with(&format!(
        "[mcu]\ntype = janus\nurl = {}\ntimeout = 5\n{extra}",
        janus.url()
    ))
    .await;
    // Connected to Janus before the test talks to it.
    assert_eventually!(
        Duration::from_secs(10),
        metrics(&s)
            .await
            .contains("signaling_mcu_janus_connected 1")
    );
    s
}

/// JAN-05..08, JAN-12, JAN-14, JAN-16/17, RTE-09: audio+video published
/// through our server reach a subscriber; a screen share is a second
/// stream; a late subscriber gets media too; `unshareScreen` closes the
/// screen publisher; the publisher leaving tears everything down in Janus.
#[tokio::test]
async fn jan_media_flows_through_janus_and_is_released() {
    let janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    all_in_call(&s, "room1").await;
    let alice_id = alice.id.clone();

    let pub_video = alice.publish("video", "alice-video").await;
    let (bob_video_sid, _bob_video) = bob.subscribe(&alice_id, "video").await;
    assert!(pub_video.state().audio_sent > 0 && pub_video.state().video_sent > 0);

    // A second stream: the screen.
    let _pub_screen = alice.publish("screen", "alice-screen").await;
    let (_bob_screen_sid, bob_screen) = bob.subscribe(&alice_id, "screen").await;
    assert_eq!(bob_screen.state().audio_frames, 0, "screen has no audio");

    // A third participant joins late.
    let mut carol = MediaClient::join(&s, "carol", "room1").await;
    all_in_call(&s, "room1").await;
    let (_carol_sid, _carol_peer) = carol.subscribe(&alice_id, "video").await;

    // Stream selection on a running subscriber is accepted (JAN-14).
    bob.send(
        &alice_id,
        json!({"type": "selectStream", "roomType": "video", "sid": bob_video_sid,
               "payload": {"substream": 0, "temporal": 0, "audio": true, "video": true}}),
    )
    .await;
    // In-place update with the current sid: a fresh offer, same sid (JAN-09).
    bob.send(
        &alice_id,
        json!({"type": "requestoffer", "roomType": "video", "sid": bob_video_sid}),
    )
    .await;
    let update = bob.next("offer").await;
    assert_eq!(update["message"]["data"]["sid"], bob_video_sid.as_str());
    let other = bob.pump(Duration::from_millis(300)).await;
    assert!(
        other.iter().all(|m| m["type"] != "error"),
        "no errors: {other:?}"
    );

    let m = metrics(&s).await;
    assert_eq!(
        gauge(&m, "signaling_mcu_publishers{type=\"video\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        gauge(&m, "signaling_mcu_publishers{type=\"screen\"}"),
        1,
        "{m}"
    );
    assert_eq!(
        gauge(&m, "signaling_mcu_subscribers{type=\"video\"}"),
        2,
        "{m}"
    );
    // Publisher (video, screen) + subscribers (bob 2, carol 1).
    assert_eq!(janus.handle_count().await, 5);
    assert_eq!(janus_rooms(&janus).await, 2);

    // unshareScreen to the room: the screen publisher goes a second later,
    // and with it bob's screen subscriber.
    alice
        .ws
        .send_message(recipient_room(), json!({"type": "unshareScreen"}))
        .await;
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 3);
    assert_eventually!(
        Duration::from_secs(5),
        gauge(
            &metrics(&s).await,
            "signaling_mcu_publishers{type=\"screen\"}"
        ) == 0
    );

    // The publisher leaves the room: its room and all subscribers go.
    alice.ws.leave_room().await;
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 0);
    assert_eq!(janus_rooms(&janus).await, 0);
    let m = metrics(&s).await;
    assert_eq!(
        gauge(&m, "signaling_mcu_subscribers{type=\"video\"}"),
        0,
        "{m}"
    );
    assert_eq!(
        gauge(&m, "signaling_mcu_publishers{type=\"video\"}"),
        0,
        "{m}"
    );
}

/// The documented errors for bad input (JAN-11, JAN-15, PERM-05/06), and no
/// leak after the sessions are gone.
#[tokio::test]
async fn jan_bad_input_gets_documented_errors_and_nothing_leaks() {
    let janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    let alice_id = alice.id.clone();
    let bob_id = bob.id.clone();

    // requestoffer while nobody is in the call: not allowed (PERM-06).
    let id = bob
        .send(
            &alice_id,
            json!({"type": "requestoffer", "roomType": "video"}),
        )
        .await;
    let e = bob.next("error").await;
    assert_eq!(e["id"], id.as_str());
    assert_eq!(e["error"]["code"], "not_allowed");
    assert_eq!(e["error"]["message"], "Not allowed to request offer.");
    all_in_call(&s, "room1").await;

    // Garbage SDP: refused before it reaches Janus (PERM-05).
    for sdp in ["hello", "v=0\r\nthis is not sdp\r\n", ""] {
        for stream in ["video", "screen"] {
            alice
                .send(
                    &alice_id,
                    json!({"type": "offer", "roomType": stream, "sid": "x",
                           "payload": {"type": "offer", "sdp": sdp}}),
                )
                .await;
            let e = alice.next("error").await;
            assert_eq!(e["error"]["code"], "not_allowed", "{sdp:?}: {e}");
            assert_eq!(e["error"]["message"], "Not allowed to publish.");
        }
    }
    // Unknown stream type, candidates for streams never published,
    // selectStream without subscriber: no MCU client (JAN-15).
    let peer = WebRtcPeer::start().await;
    let offer = peer.create_offer(true, true).await;
    alice
        .send(
            &alice_id,
            json!({"type": "offer", "roomType": "holo", "sid": "x",
                   "payload": {"type": "offer", "sdp": offer}}),
        )
        .await;
    assert_eq!(
        alice.next("error").await["error"]["code"],
        "client_not_found"
    );
    alice
        .send(
            &alice_id,
            json!({"type": "candidate", "roomType": "screen", "sid": "x",
                   "payload": {"candidate": {"candidate": peer.local_candidate(), "sdpMid": "0"}}}),
        )
        .await;
    assert_eq!(
        alice.next("error").await["error"]["code"],
        "client_not_found"
    );
    bob.send(
        &alice_id,
        json!({"type": "selectStream", "roomType": "video", "payload": {"substream": 1}}),
    )
    .await;
    assert_eq!(bob.next("error").await["error"]["code"], "client_not_found");
    // requestoffer for a session that does not exist.
    bob.send(
        "not-a-session",
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    assert_eq!(bob.next("error").await["error"]["code"], "not_allowed");

    // A real publisher and subscriber.
    alice.publish("video", "alice-video").await;
    bob.send(
        &alice_id,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    let offer = bob.next("offer").await;
    let sid = offer["message"]["data"]["sid"]
        .as_str()
        .expect("sid")
        .to_owned();
    // Stale sids are refused (JAN-11).
    bob.send(
        &alice_id,
        json!({"type": "answer", "roomType": "video", "sid": "1234",
               "payload": {"type": "answer", "sdp": "v=0"}}),
    )
    .await;
    let e = bob.next("error").await;
    assert_eq!(e["error"]["code"], "processing_failed", "{e}");
    alice
        .send(
            &alice_id,
            json!({"type": "candidate", "roomType": "video", "sid": "stale",
                   "payload": {"candidate": {"candidate": peer.local_candidate(), "sdpMid": "0"}}}),
        )
        .await;
    assert_eq!(
        alice.next("error").await["error"]["code"],
        "processing_failed"
    );
    // Stream selection values Janus does not know.
    bob.send(
        &alice_id,
        json!({"type": "selectStream", "roomType": "video", "sid": sid,
               "payload": {"substream": "high"}}),
    )
    .await;
    assert_eq!(
        bob.next("error").await["error"]["code"],
        "processing_failed"
    );
    // Own-session requestoffer is ignored (JAN-15).
    alice
        .send(
            &alice_id,
            json!({"type": "requestoffer", "roomType": "video"}),
        )
        .await;
    let quiet = alice.pump(Duration::from_millis(300)).await;
    assert!(quiet.iter().all(|m| m["type"] != "error"), "{quiet:?}");

    // sendoffer: alice pushes her stream to bob (JAN-10).
    alice
        .send(&bob_id, json!({"type": "sendoffer", "roomType": "video"}))
        .await;
    // Bob already subscribes alice's video: the existing subscriber makes a
    // fresh offer (a new Janus handle, so a new sid).
    let pushed = bob.next("offer").await;
    assert_eq!(pushed["message"]["data"]["from"], alice_id.as_str());
    assert_ne!(pushed["message"]["data"]["sid"], sid.as_str());

    // Revoking the media permissions closes the publisher (PERM-04).
    assert_eq!(janus.handle_count().await, 2);
    let r = s
        .backend_request(
            "room1",
            json!({"type": "participants", "participants": {
                "changed": [{"sessionId": "talk-alice", "permissions": [], "participantType": 3}],
                "users": [{"sessionId": "talk-alice", "participantType": 3}]}}),
        )
        .await;
    assert_eq!(r.status, 200);
    // The publisher goes, and with it bob's subscriber.
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 0);
    // Without permission an offer is refused.
    let offer = peer.create_offer(true, true).await;
    alice
        .send(
            &alice_id,
            json!({"type": "offer", "roomType": "video", "sid": "again",
                   "payload": {"type": "offer", "sdp": offer}}),
        )
        .await;
    assert_eq!(alice.next("error").await["error"]["code"], "not_allowed");

    // Sessions end: Janus has nothing left.
    alice.ws.bye().await;
    bob.ws.bye().await;
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 0);
    assert_eq!(janus_rooms(&janus).await, 0);
}

/// JAN-03 done better: Janus is killed and restarted during a call. The
/// publisher is rebuilt and its client asked for a new offer
/// (`requestoffer` from its own session); the subscriber gets a fresh offer
/// with a new sid once the publisher sends again; media flows again
/// without anyone leaving the room.
#[tokio::test]
async fn jan_call_recovers_after_janus_restart() {
    let mut janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    all_in_call(&s, "room1").await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-video").await;
    let (old_sid, _old) = bob.subscribe(&alice_id, "video").await;

    janus.restart().await;

    // The publisher's client is asked for a new offer.
    let ask = alice.next("requestoffer").await;
    let data = &ask["message"]["data"];
    assert_eq!(data["from"], alice_id.as_str(), "{ask}");
    assert_eq!(data["roomType"], "video");
    assert_eq!(data["sid"], "alice-video");
    // Like a browser, it renegotiates with a new peer connection.
    alice.peers.clear();
    alice.publish("video", "alice-video").await;

    // The subscriber gets a fresh offer from the rebuilt subscriber.
    let offer = bob.next("offer").await;
    let new_sid = offer["message"]["data"]["sid"]
        .as_str()
        .expect("sid")
        .to_owned();
    assert_eq!(offer["message"]["data"]["from"], alice_id.as_str());
    assert_ne!(new_sid, old_sid, "a rebuilt subscriber has a new handle");
    let (sid, _peer) = bob.answer_offer(&offer).await;
    bob.pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;

    let m = metrics(&s).await;
    assert!(m.contains("signaling_mcu_janus_reconnects_total 1"), "{m}");
    assert!(
        m.contains("signaling_mcu_rebuilt_total{kind=\"publisher\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("signaling_mcu_rebuilt_total{kind=\"subscriber\"} 1"),
        "{m}"
    );
    // Nothing of the old epoch is left: one publisher, one subscriber.
    assert_eq!(janus.handle_count().await, 2);
}

/// `mcu`, `simulcast`, `update-sdp` and `offer-codecs` are announced only
/// with an MCU; `/api/v1/stats` shows the Janus connection.
#[tokio::test]
async fn jan_features_and_stats_with_mcu() {
    let janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let mut c = s.client().await;
    let hello = c.hello_user(&s.backend.backend_url(), "alice").await;
    let features: Vec<&str> = hello["hello"]["server"]["features"]
        .as_array()
        .expect("features")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for f in ["mcu", "simulcast", "update-sdp", "offer-codecs"] {
        assert!(features.contains(&f), "{f} missing in {features:?}");
    }
    let plain = TestServer::start().await;
    let mut c = plain.client().await;
    let hello = c.hello_user(&plain.backend.backend_url(), "alice").await;
    let features = hello["hello"]["server"]["features"].to_string();
    assert!(!features.contains("\"mcu\""), "{features}");

    let resp = raw_http(
        &s.addr.to_string(),
        b"GET /api/v1/stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await
    .expect("stats");
    let text = String::from_utf8_lossy(&resp);
    let body = &text[text.find("\r\n\r\n").expect("body") + 4..];
    let stats: Value = serde_json::from_str(body).expect("json");
    assert_eq!(stats["mcu"]["connected"], true, "{stats}");
    assert_eq!(stats["mcu"]["url"], janus.url().as_str());
}

/// JAN-04, JAN-06, offer-codecs: the publisher's room is named
/// `<session>|<stream>`, its bitrate is the client's capped by the backend
/// and the MCU, and the codec preferences of the offer shape it.
#[tokio::test]
async fn jan_room_bitrate_and_codecs_follow_the_offer() {
    let janus = start_janus().await;
    let s = mcu_server(&janus, "maxscreenbitrate = 300000\n").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let alice_id = alice.id.clone();
    let peer = Arc::new(WebRtcPeer::start().await);
    let offer = peer.create_offer(true, true).await;
    alice
        .send(
            &alice_id,
            json!({"type": "offer", "roomType": "video", "sid": "v", "bitrate": 500000,
                   "audiocodec": "opus", "videocodec": "vp9,vp8", "vp9profile": "0",
                   "payload": {"type": "offer", "sdp": offer}}),
        )
        .await;
    let answer = alice.next("answer").await;
    let sdp = answer["message"]["data"]["payload"]["sdp"]
        .as_str()
        .expect("sdp");
    assert!(sdp.contains("VP9/90000"), "{sdp}");
    // A screen share asking for more than the MCU allows.
    let screen = WebRtcPeer::start().await;
    let offer = screen.create_offer(false, true).await;
    alice
        .send(
            &alice_id,
            json!({"type": "offer", "roomType": "screen", "sid": "s", "bitrate": 9000000,
                   "payload": {"type": "offer", "sdp": offer}}),
        )
        .await;
    alice.next("answer").await;
    let rooms = janus_room_list(&janus).await;
    let room = |stream: &str| {
        rooms
            .iter()
            .find(|r| r["description"] == format!("{alice_id}|{stream}").as_str())
            .unwrap_or_else(|| panic!("no {stream} room in {rooms:?}"))
            .clone()
    };
    let video = room("video");
    assert_eq!(video["bitrate"], 500000, "{video}");
    assert_eq!(video["videocodec"], "vp9,vp8", "{video}");
    assert_eq!(video["audiocodec"], "opus", "{video}");
    assert_eq!(video["max_publishers"], 1, "{video}");
    let screen_room = room("screen");
    assert_eq!(screen_room["bitrate"], 300000, "{screen_room}");
}

/// ICE candidate filtering (upstream 2.0.4): a blocked candidate is dropped
/// silently before any publisher lookup (no error, counted), an allowed one
/// inside a blocked network goes on (here: to "no publisher"), and mDNS
/// names never pass.
#[tokio::test]
async fn jan_candidates_from_blocked_networks_never_reach_janus() {
    let janus = start_janus().await;
    let s = mcu_server(
        &janus,
        "allowedcandidates = 10.1.0.0/16\nblockedcandidates = 10.0.0.0/8\n",
    )
    .await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let me = alice.id.clone();
    let candidate = |addr: &str| {
        json!({"type": "candidate", "roomType": "video", "sid": "x",
               "payload": {"candidate": {"candidate":
                   format!("candidate:1 1 udp 2122260223 {addr} 5000 typ host"), "sdpMid": "0"}}})
    };
    alice.send(&me, candidate("10.2.3.4")).await;
    alice.send(&me, candidate("abcd-ef.local")).await;
    let quiet = alice.pump(Duration::from_millis(300)).await;
    assert!(quiet.iter().all(|m| m["type"] != "error"), "{quiet:?}");
    assert_eq!(
        gauge(
            &metrics(&s).await,
            "signaling_mcu_candidates_filtered_total"
        ),
        2
    );
    // Allowed, and 8.8.8.8 is in no list: both get as far as the lookup.
    for addr in ["10.1.2.3", "8.8.8.8"] {
        alice.send(&me, candidate(addr)).await;
        assert_eq!(
            alice.next("error").await["error"]["code"],
            "client_not_found"
        );
    }
}

/// Two signaling servers on one NATS and `janus`, both connected to it.
async fn janus_cluster_call(janus: &Janus) -> ClusterCall {
    let c = cluster_call(&format!(
        "[mcu]\ntype = janus\nurl = {}\ntimeout = 5\n",
        janus.url()
    ))
    .await;
    assert_eventually!(
        Duration::from_secs(10),
        metrics_at(c.b)
            .await
            .contains("signaling_mcu_janus_connected 1")
    );
    c
}

/// Clustering (issue 7): two signaling servers on one NATS and one Janus.
/// A subscriber on B of a publisher on A joins A's Janus room (A tells B
/// which) and receives its media.
#[tokio::test]
async fn jan_subscriber_on_another_signaling_server() {
    let janus = start_janus().await;
    let mut c = janus_cluster_call(&janus).await;
    c.alice.publish("video", "alice-video").await;
    let alice_id = c.alice.id.clone();
    c.bob.subscribe(&alice_id, "video").await;
    assert_eq!(
        gauge(
            &metrics_at(c.b).await,
            "signaling_mcu_nopublisher_total{type=\"video\"}"
        ),
        0
    );
    // Still one room in Janus: B's subscriber is in A's.
    assert_eq!(janus_rooms(&janus).await, 1);
}

/// Issue 19: a client that makes a new peer connection and offers it with a
/// new sid while its old publisher still lives (Talk does after ICE failed,
/// or every 10 s until answered) gets a new publisher: the answer and every
/// candidate after it carry the new sid and its candidates with the new sid
/// are accepted (a late one with the old sid gets `processing_failed`, as
/// upstream answers a stale sid, JAN-11). Its subscriber gets a fresh offer
/// (new sid) and media again, without asking. A subscriber's new
/// `requestoffer` (no sid) gets an offer with a new sid whose answer and
/// candidates are accepted too.
#[tokio::test]
async fn jan_reoffer_with_a_new_sid_replaces_the_publisher() {
    let janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    all_in_call(&s, "room1").await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    let (bob_old, _) = bob.subscribe(&alice_id, "video").await;

    // A new peer, offered with a new sid; then a late candidate of the old
    // peer. `publish` asserts that the answer carries "alice-2".
    alice.seen.clear();
    let old_peer = alice.peers.remove("alice-1").expect("old peer");
    alice.publish("video", "alice-2").await;
    let me = alice.id.clone();
    alice
        .send(
            &me,
            json!({"type": "candidate", "roomType": "video", "sid": "alice-1",
                   "payload": {"candidate": {"candidate": old_peer.local_candidate(),
                                             "sdpMid": "0", "sdpMLineIndex": 0}}}),
        )
        .await;
    drop(old_peer);
    alice.pump(Duration::from_secs(1)).await;
    // Only the stale candidate was refused.
    let errors = seen_errors(&alice.seen);
    assert_eq!(errors.len(), 1, "{:?}", alice.seen);
    assert_eq!(errors[0]["error"]["code"], "processing_failed");
    let answers = seen_of(&alice.seen, "answer", &me);
    assert_eq!(answers.len(), 1, "{:?}", alice.seen);
    let candidates = seen_of(&alice.seen, "candidate", &me);
    assert!(!candidates.is_empty(), "Janus trickles candidates");
    for m in answers.iter().chain(&candidates) {
        assert_eq!(m["message"]["data"]["sid"], "alice-2", "{m}");
    }

    // Bob follows the new publisher: a fresh offer with a new sid.
    let (bob_new, _) = bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(bob_new, bob_old);
    bob.pump_until(&bob_new, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;

    // Bob asks again (no sid, as Talk does after its ICE failed): new sid,
    // accepted answer and candidates, media.
    bob.seen.clear();
    let (bob_third, _) = bob.subscribe(&alice_id, "video").await;
    assert_ne!(bob_third, bob_new);
    bob.pump(Duration::from_secs(1)).await;
    assert!(seen_errors(&bob.seen).is_empty(), "{:?}", bob.seen);
    for m in seen_of(&bob.seen, "offer", &alice_id)
        .iter()
        .chain(&seen_of(&bob.seen, "candidate", &alice_id))
    {
        assert_eq!(m["message"]["data"]["sid"], bob_third.as_str(), "{m}");
    }
    // One publisher and one subscriber handle left in Janus.
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 2);
    let m = metrics(&s).await;
    assert!(
        m.contains("signaling_mcu_replaced_total{type=\"video\"} 1"),
        "{m}"
    );
}

/// Issue 19: Janus is killed mid-call and comes back 2 s later, with
/// clients that behave like Talk's web client: the publisher ignores the
/// `requestoffer` to itself and publishes again (new peer, new sid) only
/// when its own peer is ended by an `unshareScreen` from its own session
/// and a participants update follows; the subscriber answers an offer with
/// a new sid with a new peer. Decoded media returns within a bounded time
/// after Janus is back, without anyone rejoining.
#[tokio::test]
async fn jan_talk_clients_recover_after_janus_restart() {
    let mut janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
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

    alice.seen.clear();
    alice.republish_like_talk("alice-2").await;
    // It was asked the standard way first (and ignored that).
    let asks = seen_of(&alice.seen, "requestoffer", &alice_id);
    assert_eq!(asks.len(), 1, "{:?}", alice.seen);
    let (sid, _) = bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(sid, old_sid);
    bob.pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    let took = back.elapsed();
    eprintln!("media back {took:?} after Janus accepted connections again");
    assert!(took < Duration::from_secs(15), "{took:?}");
    // No session was replaced, nothing of the old epoch is left.
    assert_eq!(alice.id, alice_id);
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 2);
    let m = metrics(&s).await;
    assert!(m.contains("signaling_mcu_republish_nudges_total 1"), "{m}");
}

/// The participants updates `c` receives within `within` (other messages
/// are pumped: candidates forwarded, the rest kept in `seen`).
async fn participants_updates(c: &mut MediaClient, within: Duration) -> Vec<Value> {
    c.pump(within)
        .await
        .into_iter()
        .filter(|m| {
            m["type"] == "event"
                && m["event"]["target"] == "participants"
                && m["event"]["type"] == "update"
        })
        .collect()
}

/// Issue 19: Janus dies mid-call and does not come back. The subscriber
/// cannot get its media back, and Talk acts on no error, so within seconds
/// its client alone is told that the publisher left the call and came back
/// (two participants updates with only the publisher's entry: `inCall` 0,
/// then its real flags; never the recipient's own entry, on which Talk
/// hangs up). Talk's clients then drop the dead peer and request a new
/// offer. Told once, not repeated.
#[tokio::test]
async fn jan_subscriber_is_told_within_seconds_when_janus_stays_away() {
    let mut janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    talk_in_call(&s, "room1", &["alice", "bob"]).await;
    let alice_id = alice.id.clone();
    let bob_id = bob.id.clone();
    alice.publish("video", "alice-1").await;
    let (sid, _peer) = bob.subscribe(&alice_id, "video").await;
    bob.pump_until(&sid, |s| s.video_frames > 5).await;
    bob.pump(Duration::from_millis(300)).await;

    janus.kill();
    let killed = tokio::time::Instant::now();
    let mut updates = Vec::new();
    while updates.len() < 2 && killed.elapsed() < Duration::from_secs(10) {
        updates.extend(participants_updates(&mut bob, Duration::from_millis(200)).await);
    }
    let took = killed.elapsed();
    eprintln!("subscriber told {took:?} after Janus was killed");
    assert_eq!(updates.len(), 2, "{:?}", bob.seen);
    assert!(took < Duration::from_secs(10), "{took:?}");
    let users = |m: &Value| {
        m["event"]["update"]["users"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let (out, back) = (users(&updates[0]), users(&updates[1]));
    assert_eq!(out.len(), 1, "{}", updates[0]);
    assert_eq!(back.len(), 1, "{}", updates[1]);
    assert_eq!(out[0]["sessionId"], alice_id.as_str(), "{}", updates[0]);
    assert_eq!(out[0]["inCall"], 0, "{}", updates[0]);
    assert_eq!(back[0]["sessionId"], alice_id.as_str(), "{}", updates[1]);
    assert_eq!(back[0]["inCall"], 7, "{}", updates[1]);
    for m in &updates {
        assert!(!m.to_string().contains(&bob_id), "own entry sent: {m}");
    }
    // Once: nothing more for a while; the publisher is not told anything
    // of the kind about itself.
    assert!(participants_updates(&mut bob, Duration::from_secs(2))
        .await
        .is_empty());
    assert!(participants_updates(&mut alice, Duration::from_millis(100))
        .await
        .is_empty());
    let m = metrics(&s).await;
    assert!(m.contains("signaling_mcu_stall_notices_total 1"), "{m}");
}

/// Issue 19, cluster: the subscriber is on another signaling server (one
/// Janus, NATS between the servers). The publisher offers again with a new
/// sid (a new peer, as Talk does after its connection failed): the remote
/// subscriber gets a fresh offer (new sid) without asking and decodes
/// media again, within a bounded time.
#[tokio::test]
async fn jan_remote_subscriber_follows_a_replaced_publisher() {
    let janus = start_janus().await;
    let mut c = janus_cluster_call(&janus).await;
    let alice_id = c.alice.id.clone();
    c.alice.publish("video", "alice-1").await;
    let (old_sid, _) = c.bob.subscribe(&alice_id, "video").await;
    c.bob.pump_until(&old_sid, |s| s.video_frames > 5).await;

    let start = tokio::time::Instant::now();
    c.alice.peers.clear();
    c.alice.publish("video", "alice-2").await;
    let (sid, _) = c.bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(sid, old_sid);
    c.bob
        .pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    let took = start.elapsed();
    eprintln!("remote subscriber has media again {took:?} after the re-offer");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(seen_errors(&c.bob.seen).is_empty(), "{:?}", c.bob.seen);
    let m = metrics_at(c.b).await;
    assert!(
        m.contains("signaling_mcu_followed_total{type=\"video\"} 1"),
        "{m}"
    );
    // One publisher and one subscriber handle left in Janus.
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 2);
}

/// Issue 19: an offer the server pushes to a subscriber (its publisher was
/// replaced) that the client never answers (a client that keeps its dead
/// peer connection, or lost the offer) does not leave it without media for
/// good: about 10 s later it is told that the publisher left the call and
/// came back, on which Talk asks for a new offer.
#[tokio::test]
async fn jan_unanswered_pushed_offer_is_followed_by_a_notice() {
    let janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let mut alice = MediaClient::join(&s, "alice", "room1").await;
    let mut bob = MediaClient::join(&s, "bob", "room1").await;
    talk_in_call(&s, "room1", &["alice", "bob"]).await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    bob.subscribe(&alice_id, "video").await;

    alice.peers.clear();
    alice.publish("video", "alice-2").await;
    let offer = bob.next("offer").await;
    assert_eq!(offer["message"]["data"]["from"], alice_id.as_str());
    let pushed = tokio::time::Instant::now();
    // Not answered.
    let mut updates = Vec::new();
    while updates.len() < 2 && pushed.elapsed() < Duration::from_secs(13) {
        updates.extend(participants_updates(&mut bob, Duration::from_millis(200)).await);
    }
    let took = pushed.elapsed();
    eprintln!("subscriber told {took:?} after the unanswered offer");
    assert_eq!(updates.len(), 2, "{:?}", bob.seen);
    assert!(took >= Duration::from_secs(9), "{took:?}");
    let users = |m: &Value| m["event"]["update"]["users"].clone();
    assert_eq!(users(&updates[0])[0]["sessionId"], alice_id.as_str());
    assert_eq!(users(&updates[0])[0]["inCall"], 0);
    assert_eq!(users(&updates[1])[0]["inCall"], 7);
    assert!(!updates[0].to_string().contains(&bob.id));
}

/// A real Janus, our server on it and alice and bob in a call in room1.
async fn call_of_two() -> (Janus, TestServer, MediaClient, MediaClient) {
    let janus = start_janus().await;
    let s = mcu_server(&janus, "").await;
    let alice = MediaClient::join(&s, "alice", "room1").await;
    let bob = MediaClient::join(&s, "bob", "room1").await;
    talk_in_call(&s, "room1", &["alice", "bob"]).await;
    (janus, s, alice, bob)
}

/// Kill Janus and wait until the server noticed.
async fn kill_and_wait(janus: &mut Janus, s: &TestServer) {
    janus.kill();
    assert_eventually!(
        Duration::from_secs(5),
        metrics(s).await.contains("signaling_mcu_janus_connected 0")
    );
}

/// Issue 19: a first offer that arrives while Janus is away (restarting)
/// is held and answered once Janus is back, not failed: Android and iOS
/// send one offer only and act on no error.
#[tokio::test]
async fn jan_offer_while_janus_is_away_is_answered_when_it_is_back() {
    let (mut janus, s, mut alice, mut bob) = call_of_two().await;
    let alice_id = alice.id.clone();

    kill_and_wait(&mut janus, &s).await;
    let sent = tokio::time::Instant::now();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        janus.restart().await;
    };
    // `publish` fails on any error; it waits for the answer.
    let ((), _) = tokio::join!(restart, alice.publish("video", "alice-1"));
    eprintln!("offer answered {:?} after it was sent", sent.elapsed());
    assert!(seen_errors(&alice.seen).is_empty(), "{:?}", alice.seen);
    bob.subscribe(&alice_id, "video").await;
}

/// Issue 19: a subscriber's client that asks for a new offer (no sid, as
/// Talk does when its peer failed) while Janus is away gets the offer of
/// the rebuilt subscriber once Janus and the publisher are back (one offer,
/// no error). The publisher here honours the `requestoffer` to itself
/// (offers again with its sid).
#[tokio::test]
async fn jan_offer_request_during_a_rebuild_gets_the_rebuilt_offer() {
    let (mut janus, s, mut alice, mut bob) = call_of_two().await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    let (old_sid, _) = bob.subscribe(&alice_id, "video").await;

    kill_and_wait(&mut janus, &s).await;
    bob.seen.clear();
    bob.send(
        &alice_id,
        json!({"type": "requestoffer", "roomType": "video"}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    janus.restart().await;
    let back = tokio::time::Instant::now();
    let ask = alice.next("requestoffer").await;
    assert_eq!(ask["message"]["data"]["sid"], "alice-1", "{ask}");
    alice.peers.clear();
    alice.publish("video", "alice-1").await;
    let offer = bob.next("offer").await;
    assert_eq!(offer["message"]["data"]["from"], alice_id.as_str());
    let (sid, _) = bob.answer_offer(&offer).await;
    assert_ne!(sid, old_sid);
    bob.pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    eprintln!("media back {:?} after Janus was back", back.elapsed());
    bob.pump(Duration::from_millis(500)).await;
    assert!(seen_errors(&bob.seen).is_empty(), "{:?}", bob.seen);
    assert_eq!(
        seen_of(&bob.seen, "offer", &alice_id).len(),
        1,
        "{:?}",
        bob.seen
    );
}

/// Issue 19, cluster: Janus (shared by two signaling servers on NATS) is
/// killed mid-call and comes back 2 s later. The publisher is on A and
/// behaves like Talk's web client; the subscriber is on B and answers an
/// offer with a new sid with a new peer. B's subscriber of A's publisher
/// follows the publisher once A has it again: decoded media is back on B
/// within a bounded time, without anyone rejoining.
#[tokio::test]
async fn jan_remote_subscriber_recovers_after_janus_restart() {
    let mut janus = start_janus().await;
    let mut c = janus_cluster_call(&janus).await;
    c.talk_in_call().await;
    let alice_id = c.alice.id.clone();
    c.alice.publish("video", "alice-1").await;
    let (old_sid, _) = c.bob.subscribe(&alice_id, "video").await;

    janus.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    janus.restart().await;
    let back = tokio::time::Instant::now();

    c.alice.republish_like_talk("alice-2").await;
    let (sid, _) = c.bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(sid, old_sid);
    c.bob
        .pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    let took = back.elapsed();
    eprintln!("remote subscriber has media {took:?} after Janus accepted connections again");
    assert!(took < Duration::from_secs(15), "{took:?}");
    assert!(seen_errors(&c.bob.seen).is_empty(), "{:?}", c.bob.seen);
    // One publisher and one subscriber handle left in Janus.
    assert_eventually!(Duration::from_secs(5), janus.handle_count().await == 2);
}

/// Issue 19: a client that offers again on its existing publisher (same
/// sid, as a client that renegotiates does) while Janus is away gets its
/// answer once Janus is back: the publisher holds the offer and its
/// candidates and applies them to the rebuilt publisher, so the client is
/// not asked for another offer; the subscriber gets the rebuilt
/// subscriber's offer and media.
#[tokio::test]
async fn jan_offer_to_a_publisher_being_rebuilt_is_held_and_applied() {
    let (mut janus, s, mut alice, mut bob) = call_of_two().await;
    let alice_id = alice.id.clone();
    alice.publish("video", "alice-1").await;
    let (old_sid, _) = bob.subscribe(&alice_id, "video").await;

    kill_and_wait(&mut janus, &s).await;
    alice.seen.clear();
    alice.peers.clear();
    let restart = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        janus.restart().await;
    };
    // `publish` fails on any error and checks the answer's sid.
    let ((), _) = tokio::join!(restart, alice.publish("video", "alice-1"));
    alice.pump(Duration::from_secs(1)).await;
    assert!(seen_errors(&alice.seen).is_empty(), "{:?}", alice.seen);
    let asks = seen_of(&alice.seen, "requestoffer", &alice_id);
    assert!(asks.is_empty(), "asked for another offer: {:?}", alice.seen);
    let (sid, _) = bob.accept_next_offer_from(&alice_id).await;
    assert_ne!(sid, old_sid);
    bob.pump_until(&sid, |s| s.audio_frames > 10 && s.video_frames > 10)
        .await;
    let m = metrics(&s).await;
    assert!(m.contains("signaling_mcu_republish_nudges_total 0"), "{m}");
}
