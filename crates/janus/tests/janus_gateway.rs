//! The client against a real Janus 1.1 (Debian package `janus`), started per
//! test by `support::Janus` with VideoRoom on a loopback WebSocket port.

#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use janus::videoroom::{
    self, error_codes, CreateRoom, PublisherConfig, StreamSelection, VideoRoomEvent,
};
use janus::{
    ApiGeneration, ConnectionState, Error, Gateway, GatewayConfig, GoneReason, HandleEvent,
    HandleEvents, IceCandidate, Jsep,
};
use serde_json::json;
use support::{answer_for, publisher_offer, Janus, JanusOptions};

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// Test defaults: keepalives often enough for the harness's 5 s
/// `session_timeout`, short request timeout.
fn config() -> GatewayConfig {
    GatewayConfig {
        request_timeout: Duration::from_secs(5),
        keepalive_interval: Duration::from_secs(2),
        ..GatewayConfig::default()
    }
}

async fn next_event(events: &mut HandleEvents) -> HandleEvent {
    tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("no handle event within 5 s")
        .expect("event queue ended")
}

/// The next event matching `pred`, skipping others.
async fn wait_event(
    events: &mut HandleEvents,
    what: &str,
    pred: impl Fn(&HandleEvent) -> bool,
) -> HandleEvent {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match tokio::time::timeout_at(deadline, events.recv()).await {
            Ok(Some(ev)) if pred(&ev) => return ev,
            Ok(Some(ev)) => eprintln!("skipping {ev:?} while waiting for {what}"),
            Ok(None) => panic!("event queue ended while waiting for {what}"),
            Err(_) => panic!("no {what} within 5 s"),
        }
    }
}

async fn wait_state(
    gw: &Gateway,
    what: &str,
    pred: impl Fn(&ConnectionState) -> bool,
) -> ConnectionState {
    let mut rx = gw.state();
    let state = tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|s| pred(s)))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "connection state never became {what}; now {:?}",
                gw.current_state()
            )
        })
        .unwrap()
        .clone();
    state
}

#[tokio::test]
async fn info_shows_videoroom_and_multistream_generation() {
    init_tracing();
    let janus = Janus::start().await;
    let gw = Gateway::connect_with(&janus.url(), config()).await.unwrap();

    let (epoch, info) = gw.connected().await.unwrap();
    assert_eq!(epoch, 1);
    assert!(info.version >= 1000, "{info:?}");
    assert_eq!(info.api_generation(), ApiGeneration::Multistream);
    assert!(info.videoroom().is_some());
    assert!(info.data_channels);
    assert!(info.full_trickle);
    assert_eq!(info.session_timeout, Some(5));
    assert_eq!(info.local_ip, "127.0.0.1");
    assert!(info.check_mcu_requirements().unwrap() == janus::InfoWarnings::default());

    // A fresh `info` request answers the same.
    let again = gw.info().await.unwrap();
    assert_eq!(again.version, info.version);
    assert!(again.plugins.contains_key(videoroom::PLUGIN));
    assert_eq!(
        again.plugins.len(),
        1,
        "only the VideoRoom is loaded: {:?}",
        again.plugins.keys()
    );
    gw.close().await;
    assert!(matches!(gw.current_state(), ConnectionState::Closed));
    assert!(matches!(gw.info().await, Err(Error::Closed)));
}

#[tokio::test]
async fn create_and_destroy_room() {
    init_tracing();
    let janus = Janus::start().await;
    let gw = Gateway::connect_with(&janus.url(), config()).await.unwrap();
    let session = gw.create_session().await.unwrap();
    let (handle, _events) = session.attach(videoroom::PLUGIN).await.unwrap();

    let mut params = CreateRoom::for_stream("session-a|video", 1_048_576);
    params.audiocodec = Some("opus".to_owned());
    params.videocodec = Some("vp9,vp8,h264".to_owned());
    params.vp9_profile = Some("2".to_owned());
    params.h264_profile = Some("42e01f".to_owned());
    let room = videoroom::create_room(&handle, &params).await.unwrap();
    assert!(videoroom::room_exists(&handle, room).await.unwrap());
    let rooms = videoroom::list_rooms(&handle).await.unwrap();
    let listed = rooms
        .iter()
        .find(|r| r.room == room)
        .expect("room is listed");
    assert_eq!(listed.description, "session-a|video");
    assert_eq!(listed.num_participants, 0);
    assert!(videoroom::list_participants(&handle, room)
        .await
        .unwrap()
        .is_empty());

    videoroom::destroy_room(&handle, room).await.unwrap();
    assert!(!videoroom::room_exists(&handle, room).await.unwrap());
    let err = videoroom::destroy_room(&handle, room).await.unwrap_err();
    assert_eq!(err.code(), Some(error_codes::NO_SUCH_ROOM), "{err}");
    let err = videoroom::list_participants(&handle, room)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(error_codes::NO_SUCH_ROOM), "{err}");

    // A second room with a room id of our choice.
    let mut fixed = CreateRoom::for_stream("fixed", 64_000);
    fixed.room = Some(4242);
    assert_eq!(videoroom::create_room(&handle, &fixed).await.unwrap(), 4242);
    let err = videoroom::create_room(&handle, &fixed).await.unwrap_err();
    assert_eq!(err.code(), Some(error_codes::ROOM_EXISTS), "{err}");
    videoroom::destroy_room(&handle, 4242).await.unwrap();
}

#[tokio::test]
async fn publisher_offer_gets_answer_and_candidates() {
    init_tracing();
    let janus = Janus::start().await;
    let gw = Gateway::connect_with(&janus.url(), config()).await.unwrap();
    let session = gw.create_session().await.unwrap();
    let (control, _control_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let room = videoroom::create_room(&control, &CreateRoom::for_stream("pub|video", 1_048_576))
        .await
        .unwrap();

    let (publisher, mut events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let joined = videoroom::join_publisher(&publisher, room, 1, Some("pub"))
        .await
        .unwrap();
    assert_eq!((joined.room, joined.id), (room, 1));

    let configured = videoroom::configure_publisher(
        &publisher,
        &PublisherConfig::all_media(),
        Some(Jsep::offer(publisher_offer())),
    )
    .await
    .unwrap();
    let answer = configured.jsep.unwrap();
    assert!(answer.is_answer());
    assert!(
        answer.sdp.contains("m=audio") && answer.sdp.contains("m=video"),
        "{}",
        answer.sdp
    );
    assert!(answer.sdp.contains("a=recvonly"), "{}", answer.sdp);
    assert_eq!(configured.data["configured"], "ok");

    // Full trickle: Janus sends its only candidate, 127.0.0.1, then "completed".
    let candidate = match wait_event(&mut events, "trickle", |e| {
        matches!(e, HandleEvent::Trickle(_))
    })
    .await
    {
        HandleEvent::Trickle(c) => c,
        _ => unreachable!(),
    };
    assert!(candidate.candidate.contains(" 127.0.0.1 "), "{candidate:?}");
    wait_event(&mut events, "trickle completed", |e| {
        *e == HandleEvent::TrickleCompleted
    })
    .await;

    // Our candidates are accepted.
    publisher
        .trickle(&IceCandidate {
            candidate: "candidate:1 1 udp 2122260223 127.0.0.1 9 typ host".to_owned(),
            sdp_mid: Some("0".to_owned()),
            sdp_mline_index: Some(0),
            username_fragment: None,
        })
        .await
        .unwrap();
    publisher.trickle_completed().await.unwrap();

    let participants = videoroom::list_participants(&control, room).await.unwrap();
    assert_eq!(participants.len(), 1);
    assert_eq!(participants[0].id, 1);
    assert_eq!(participants[0].display.as_deref(), Some("pub"));

    // Without ICE/DTLS completing, the publisher is not "active": Janus 1.1
    // refuses subscribers with "no such feed", for both join shapes.
    let (subscriber, _sub_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    for generation in [ApiGeneration::Multistream, ApiGeneration::Legacy] {
        let err = videoroom::join_subscriber(
            &subscriber,
            room,
            1,
            generation,
            &StreamSelection::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.code(),
            Some(error_codes::NO_SUCH_FEED),
            "{generation:?}: {err}"
        );
    }

    // A second publisher with garbage SDP is refused by the Janus core.
    let (bad, _bad_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let room2 = videoroom::create_room(&control, &CreateRoom::for_stream("bad|video", 1_048_576))
        .await
        .unwrap();
    videoroom::join_publisher(&bad, room2, 1, None)
        .await
        .unwrap();
    let err = videoroom::configure_publisher(
        &bad,
        &PublisherConfig::all_media(),
        Some(Jsep::offer("this is not SDP")),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Janus { .. }), "{err}");
    assert_eq!(err.code(), Some(janus::codes::JSEP_INVALID_SDP), "{err}");

    // Destroying a room tells its publisher.
    let (bad2, mut bad2_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let room3 = videoroom::create_room(&control, &CreateRoom::for_stream("gone|video", 1_048_576))
        .await
        .unwrap();
    videoroom::join_publisher(&bad2, room3, 2, None)
        .await
        .unwrap();
    videoroom::destroy_room(&control, room3).await.unwrap();
    wait_event(&mut bad2_events, "destroyed", |e| {
        matches!(e, HandleEvent::Event(p) if VideoRoomEvent::parse(p) == Some(VideoRoomEvent::Destroyed))
    })
    .await;

    // Detaching ends the event queue with Detached; the publisher leaves.
    publisher.detach().await.unwrap();
    wait_event(&mut events, "detached", |e| *e == HandleEvent::Detached).await;
    assert!(matches!(
        publisher
            .message(json!({"request": "configure"}), None)
            .await,
        Err(Error::HandleGone)
    ));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !videoroom::list_participants(&control, room)
        .await
        .unwrap()
        .is_empty()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "publisher still listed after detach"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    videoroom::destroy_room(&control, room).await.unwrap();
    videoroom::destroy_room(&control, room2).await.unwrap();
}

/// Adds a VideoRoom "remote publisher" (Janus >= 1.1): a feed fed by plain
/// RTP on a loopback port, active at once. It stands in for a WebRTC
/// publisher, whose feed only becomes subscribable after ICE and DTLS
/// completed, which needs a real WebRTC peer.
async fn add_remote_publisher(control: &janus::Handle, room: u64, id: u64) {
    let response = control
        .message(
            json!({
                "request": "add_remote_publisher", "room": room, "id": id, "display": "remote",
                "iface": "127.0.0.1",
                "streams": [
                    {"type": "audio", "mindex": 0, "mid": "0", "codec": "opus"},
                    {"type": "video", "mindex": 1, "mid": "1", "codec": "vp8"},
                ],
            }),
            None,
        )
        .await
        .unwrap();
    assert!(
        !response.asynchronous,
        "add_remote_publisher is a synchronous request"
    );
    assert_eq!(response.data["videoroom"], "success", "{}", response.data);
    // Janus 1.1 adds the remote publisher to the room from its RTP thread,
    // after the reply: wait until it is listed, like the MCU waits for a
    // publisher that is not sending yet.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let participants = videoroom::list_participants(control, room).await.unwrap();
        if participants.iter().any(|p| p.id == id && p.publisher) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "remote publisher never listed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn subscriber_gets_offer_starts_updates_and_sees_publisher_leave() {
    init_tracing();
    let janus = Janus::start().await;
    let gw = Gateway::connect_with(&janus.url(), config()).await.unwrap();
    let generation = gw.server_info().unwrap().api_generation();
    assert!(gw.server_info().unwrap().has_remote_publishers());
    let session = gw.create_session().await.unwrap();
    let (control, _control_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let room = videoroom::create_room(&control, &CreateRoom::for_stream("remote|video", 1_048_576))
        .await
        .unwrap();
    add_remote_publisher(&control, room, 1).await;

    // Multistream join (what we use with Janus 1.x).
    let (subscriber, mut events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let joined = videoroom::join_subscriber(
        &subscriber,
        room,
        1,
        generation,
        &StreamSelection::default(),
    )
    .await
    .unwrap();
    let offer = joined.jsep;
    assert!(offer.is_offer());
    assert!(
        offer.sdp.contains("m=audio") && offer.sdp.contains("m=video"),
        "{}",
        offer.sdp
    );
    assert!(offer.sdp.contains("a=sendonly"), "{}", offer.sdp);
    assert_eq!(joined.data["videoroom"], "attached", "{}", joined.data);
    let candidate = match wait_event(&mut events, "trickle", |e| {
        matches!(e, HandleEvent::Trickle(_))
    })
    .await
    {
        HandleEvent::Trickle(c) => c,
        _ => unreachable!(),
    };
    assert!(candidate.candidate.contains(" 127.0.0.1 "), "{candidate:?}");

    // Joining twice on one handle: "already joined" (the MCU re-creates the
    // handle then).
    let err = videoroom::join_subscriber(
        &subscriber,
        room,
        1,
        generation,
        &StreamSelection::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Some(error_codes::ALREADY_JOINED), "{err}");

    videoroom::start_subscriber(&subscriber, room, Jsep::answer(answer_for(&offer.sdp)))
        .await
        .unwrap();

    // Stream selection on a started subscriber.
    let selection = StreamSelection {
        substream: Some(1),
        temporal: Some(0),
        audio: Some(false),
        video: Some(true),
    };
    videoroom::select_stream(&subscriber, &selection)
        .await
        .unwrap();
    videoroom::select_stream(&subscriber, &StreamSelection::default())
        .await
        .unwrap();

    // In-place renegotiation (update-sdp): a fresh offer.
    let update = videoroom::update_subscriber(&subscriber, &StreamSelection::default())
        .await
        .unwrap();
    let update = update.expect("Janus makes a new offer on configure/update");
    assert!(update.is_offer());
    assert!(update.sdp.contains("m=video"));
    // The answer to a renegotiation goes in a `start` again (as upstream's
    // `answer` handling does). Janus holds back further updates until then.
    videoroom::start_subscriber(&subscriber, room, Jsep::answer(answer_for(&update.sdp)))
        .await
        .unwrap();

    // The legacy join shape ("feed") still works on Janus 1.x.
    let (legacy, mut legacy_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let legacy_selection = StreamSelection {
        substream: Some(0),
        temporal: None,
        audio: Some(true),
        video: None,
    };
    let joined =
        videoroom::join_subscriber(&legacy, room, 1, ApiGeneration::Legacy, &legacy_selection)
            .await
            .unwrap();
    assert!(joined.jsep.is_offer());
    // And a multistream join with audio/video toggles (applied by a
    // configure right after the join).
    let (toggled, _toggled_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let toggles = StreamSelection {
        substream: Some(2),
        temporal: Some(1),
        audio: Some(false),
        video: Some(true),
    };
    let joined =
        videoroom::join_subscriber(&toggled, room, 1, ApiGeneration::Multistream, &toggles)
            .await
            .unwrap();
    assert!(joined.jsep.is_offer());

    // The publisher leaves: Janus 1.x tells subscribers with an "updated"
    // event whose media streams are all inactive (no hangup).
    let response = control
        .message(
            json!({"request": "remove_remote_publisher", "room": room, "id": 1}),
            None,
        )
        .await
        .unwrap();
    assert_eq!(response.data["videoroom"], "success", "{}", response.data);
    let ev = wait_event(&mut events, "updated", |e| {
        matches!(e, HandleEvent::Event(p) if matches!(VideoRoomEvent::parse(p), Some(VideoRoomEvent::Updated { .. })))
    })
    .await;
    let HandleEvent::Event(plugin_event) = ev else {
        unreachable!()
    };
    let parsed = VideoRoomEvent::parse(&plugin_event);
    assert!(
        matches!(
            parsed,
            Some(VideoRoomEvent::Updated {
                media_gone: true,
                ..
            })
        ),
        "{plugin_event:?}"
    );
    // It carries a new offer with the m-lines turned inactive.
    let Some(VideoRoomEvent::Updated {
        jsep: Some(jsep), ..
    }) = parsed
    else {
        panic!("no offer in {plugin_event:?}")
    };
    assert!(
        jsep.is_offer() && jsep.sdp.contains("a=inactive"),
        "{}",
        jsep.sdp
    );

    // Janus 1.1 does not tell subscribers about a destroyed room (only
    // publishers get "destroyed"); nor does a subscriber that has not
    // answered its offer hear of the publisher leaving: the update waits for
    // the answer. The MCU has to close its subscribers itself.
    videoroom::destroy_room(&control, room).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Some(ev) = legacy_events.try_recv() {
        assert!(
            matches!(ev, HandleEvent::Trickle(_) | HandleEvent::TrickleCompleted),
            "{ev:?}"
        );
    }
}

#[tokio::test]
async fn connect_to_nothing_fails() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let err = Gateway::connect(&format!("ws://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    // wss:// is tried too (TLS with the system roots): nothing listens.
    let err = Gateway::connect(&format!("wss://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
}

#[tokio::test]
async fn request_times_out_while_janus_is_frozen() {
    init_tracing();
    let janus = Janus::start().await;
    let gw = Gateway::connect_with(
        &janus.url(),
        GatewayConfig {
            request_timeout: Duration::from_millis(500),
            ..config()
        },
    )
    .await
    .unwrap();
    let session = gw.create_session().await.unwrap();
    let (handle, _events) = session.attach(videoroom::PLUGIN).await.unwrap();

    janus.pause();
    let started = tokio::time::Instant::now();
    let err = gw.info().await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Timeout {
                request: "info",
                ..
            }
        ),
        "{err}"
    );
    assert!(
        elapsed >= Duration::from_millis(500) && elapsed < Duration::from_secs(2),
        "{elapsed:?}"
    );
    let err = handle
        .message(json!({"request": "list"}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                request: "message",
                ..
            }
        ),
        "{err}"
    );
    janus.resume();

    // The late replies are dropped; the connection and session carry on.
    videoroom::list_rooms(&handle).await.unwrap();
    gw.info().await.unwrap();
    assert_eq!(gw.current_state().epoch(), Some(1));
    assert_eq!(session.gone(), None);
}

#[tokio::test]
async fn frozen_janus_is_detected_by_ping_and_reconnected() {
    init_tracing();
    let janus = Janus::start().await;
    let gw = Gateway::connect_with(
        &janus.url(),
        GatewayConfig {
            ping_interval: Duration::from_millis(500),
            ..config()
        },
    )
    .await
    .unwrap();
    let session = gw.create_session().await.unwrap();
    let (handle, mut events) = session.attach(videoroom::PLUGIN).await.unwrap();

    janus.pause();
    let pending = tokio::spawn({
        let gw = gw.clone();
        async move { gw.info().await }
    });
    let state = wait_state(&gw, "disconnected", |s| {
        matches!(s, ConnectionState::Disconnected { .. })
    })
    .await;
    let ConnectionState::Disconnected {
        last_epoch, reason, ..
    } = state
    else {
        unreachable!()
    };
    assert_eq!(last_epoch, 1);
    assert!(reason.contains("ping"), "{reason}");
    let err = pending.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Disconnected { request: "info" }),
        "{err}"
    );
    assert_eq!(
        next_event(&mut events).await,
        HandleEvent::Gone(GoneReason::ConnectionLost)
    );
    assert_eq!(session.closed().await, GoneReason::ConnectionLost);

    janus.resume();
    let state = wait_state(&gw, "connected", ConnectionState::is_connected).await;
    assert_eq!(state.epoch(), Some(2));
    let err = handle
        .message(json!({"request": "list"}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SessionGone(GoneReason::ConnectionLost)),
        "{err}"
    );
    let session = gw.create_session().await.unwrap();
    assert_eq!(session.epoch(), 2);
    let (handle, _events) = session.attach(videoroom::PLUGIN).await.unwrap();
    videoroom::list_rooms(&handle).await.unwrap();
}

#[tokio::test]
async fn janus_killed_then_restarted_reconnects_with_backoff() {
    init_tracing();
    let mut janus = Janus::start().await;
    let gw = Gateway::connect_with(&janus.url(), config()).await.unwrap();
    let session = gw.create_session().await.unwrap();
    let (handle, mut events) = session.attach(videoroom::PLUGIN).await.unwrap();

    // Record every state change.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let recorder = tokio::spawn({
        let mut rx = gw.state();
        let seen = seen.clone();
        async move {
            while rx.changed().await.is_ok() {
                let state = rx.borrow_and_update().clone();
                let connected = state.is_connected();
                seen.lock().unwrap().push(state);
                if connected {
                    break;
                }
            }
        }
    });

    // A request is in flight when Janus dies.
    janus.pause();
    let pending = tokio::spawn({
        let handle = handle.clone();
        async move { handle.message(json!({"request": "list"}), None).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    janus.kill();

    let err = pending.await.unwrap().unwrap_err();
    assert!(
        matches!(err, Error::Disconnected { request: "message" }),
        "{err}"
    );
    assert!(err.is_connection_error());
    assert_eq!(
        next_event(&mut events).await,
        HandleEvent::Gone(GoneReason::ConnectionLost)
    );
    assert_eq!(
        next_event_or_end(&mut events).await,
        None,
        "Gone is the last event"
    );
    assert_eq!(session.closed().await, GoneReason::ConnectionLost);
    assert!(matches!(gw.info().await, Err(Error::NotConnected)));
    assert!(matches!(
        gw.create_session().await,
        Err(Error::NotConnected)
    ));

    // Janus comes back after the first retry failed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    janus.restart().await;
    let state = wait_state(&gw, "connected", ConnectionState::is_connected).await;
    assert_eq!(state.epoch(), Some(2));
    recorder.await.unwrap();

    let seen = seen.lock().unwrap().clone();
    let waits: Vec<(u32, Duration)> = seen
        .iter()
        .filter_map(|s| match s {
            ConnectionState::Disconnected {
                attempt, retry_in, ..
            } => Some((*attempt, *retry_in)),
            _ => None,
        })
        .collect();
    assert!(waits.len() >= 2, "{seen:?}");
    let (a1, w1) = waits[0];
    let (a2, w2) = waits[1];
    assert_eq!((a1, a2), (1, 2), "{seen:?}");
    assert!(
        w1 >= Duration::from_secs(1) && w1 <= Duration::from_millis(1250),
        "{w1:?}"
    );
    assert!(
        w2 >= Duration::from_secs(2) && w2 <= Duration::from_millis(2500),
        "{w2:?}"
    );
    assert!(seen.last().unwrap().is_connected());

    // Everything from before is gone; new objects work.
    let err = handle
        .message(json!({"request": "list"}), None)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::SessionGone(GoneReason::ConnectionLost)),
        "{err}"
    );
    assert!(matches!(
        session.attach(videoroom::PLUGIN).await,
        Err(Error::SessionGone(_))
    ));
    let session = gw.create_session().await.unwrap();
    let (handle, _events) = session.attach(videoroom::PLUGIN).await.unwrap();
    assert!(videoroom::list_rooms(&handle).await.unwrap().is_empty());

    // A forced reconnect goes straight to a new epoch.
    gw.reconnect().await.unwrap();
    let state = wait_state(&gw, "epoch 3", |s| s.epoch() == Some(3)).await;
    assert!(state.is_connected());
}

async fn next_event_or_end(events: &mut HandleEvents) -> Option<HandleEvent> {
    tokio::time::timeout(Duration::from_secs(2), events.recv())
        .await
        .expect("queue neither ended nor delivered")
}

#[tokio::test]
async fn keepalive_outlives_janus_session_timeout() {
    init_tracing();
    let janus = Janus::start_with(JanusOptions { session_timeout: 5 }).await;
    let gw = Gateway::connect_with(
        &janus.url(),
        GatewayConfig {
            keepalive_interval: Duration::from_secs(2),
            ping_interval: Duration::from_secs(1),
            ..config()
        },
    )
    .await
    .unwrap();
    assert_eq!(gw.server_info().unwrap().session_timeout, Some(5));
    let session = gw.create_session().await.unwrap();
    let (handle, mut events) = session.attach(videoroom::PLUGIN).await.unwrap();
    // Idle (apart from keepalives and pings) for longer than Janus allows.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(session.gone(), None);
    assert!(events.try_recv().is_none());
    videoroom::list_rooms(&handle).await.unwrap();
    session.keepalive().await.unwrap();
    assert_eq!(
        gw.current_state().epoch(),
        Some(1),
        "pings kept the connection"
    );
}

#[tokio::test]
async fn session_without_keepalives_times_out_and_client_reconnects() {
    init_tracing();
    let janus = Janus::start_with(JanusOptions { session_timeout: 3 }).await;
    let gw = Gateway::connect_with(
        &janus.url(),
        GatewayConfig {
            keepalive_interval: Duration::from_secs(600),
            ..config()
        },
    )
    .await
    .unwrap();
    let session = gw.create_session().await.unwrap();
    let (_handle, mut events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let reason = tokio::time::timeout(Duration::from_secs(10), session.closed())
        .await
        .expect("session never timed out");
    assert_eq!(reason, GoneReason::SessionTimedOut);
    // Janus may detach the handles before it reports the session timeout.
    let last = next_event(&mut events).await;
    assert!(
        matches!(
            last,
            HandleEvent::Detached | HandleEvent::Gone(GoneReason::SessionTimedOut)
        ),
        "{last:?}"
    );
    // One recovery path for the MCU: a new connection epoch.
    let state = wait_state(&gw, "epoch 2", |s| s.epoch() == Some(2)).await;
    assert!(state.is_connected());
}

#[tokio::test]
async fn dropped_handles_and_sessions_leave_nothing_in_janus() {
    init_tracing();
    let janus = Janus::start().await;
    let gw = Gateway::connect_with(&janus.url(), config()).await.unwrap();
    let session = gw.create_session().await.unwrap();
    let (control, _control_events) = session.attach(videoroom::PLUGIN).await.unwrap();
    let room = videoroom::create_room(&control, &CreateRoom::for_stream("drop|video", 1_048_576))
        .await
        .unwrap();

    async fn participants(control: &janus::Handle, room: u64) -> usize {
        videoroom::list_participants(control, room)
            .await
            .unwrap()
            .len()
    }
    async fn wait_participants(control: &janus::Handle, room: u64, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
        while participants(control, room).await != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "participants never became {n}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A dropped handle is detached.
    let (publisher, events) = session.attach(videoroom::PLUGIN).await.unwrap();
    videoroom::join_publisher(&publisher, room, 1, None)
        .await
        .unwrap();
    assert_eq!(participants(&control, room).await, 1);
    let clone = publisher.clone();
    drop(publisher);
    // Still held by a clone: nothing happens.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(participants(&control, room).await, 1);
    drop((clone, events));
    wait_participants(&control, room, 0).await;

    // A dropped session is destroyed, with its handles.
    let other = gw.create_session().await.unwrap();
    let (publisher, _events) = other.attach(videoroom::PLUGIN).await.unwrap();
    videoroom::join_publisher(&publisher, room, 2, None)
        .await
        .unwrap();
    assert_eq!(participants(&control, room).await, 1);
    let other_id = other.id();
    drop((other, publisher));
    wait_participants(&control, room, 0).await;
    // Janus no longer knows the session.
    // Janus destroyed the session itself (its log says so; log lines are
    // written by a separate thread, so wait for it).
    let needle = format!("Destroying session {other_id};");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    while !janus.log().contains(&needle) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "session {other_id} was not destroyed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Explicit destroy: handles end with SessionDestroyed.
    let third = gw.create_session().await.unwrap();
    let (_h, mut h_events) = third.attach(videoroom::PLUGIN).await.unwrap();
    third.destroy().await.unwrap();
    assert_eq!(
        next_event(&mut h_events).await,
        HandleEvent::Gone(GoneReason::SessionDestroyed)
    );
    assert!(matches!(
        third.attach(videoroom::PLUGIN).await,
        Err(Error::SessionGone(GoneReason::SessionDestroyed))
    ));
    videoroom::destroy_room(&control, room).await.unwrap();
}
