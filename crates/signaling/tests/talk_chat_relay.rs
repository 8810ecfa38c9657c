//! Issue 4, chat relay (upstream 2.0.3, `chat-relay`): a backend `message`
//! request carrying chat comments reaches clients that announced `chat-relay`
//! in full, one event per comment; the others get only the refresh hint and
//! fetch the chat from Nextcloud as before.
// Test bodies are plain functions run by `both_topologies!`.
mod common;
use common::*;

async fn user_with_features(s: &TestServer, user: &str, features: Value, talk: &str) -> TestClient {
    let mut c = s.client().await;
    let r = c
        .request(json!({"type": "hello", "hello": {"version": "1.0",
            "features": features,
            "auth": {"url": s.backend.backend_url(), "params": {"userid": user, "ticket": "t"}}}}))
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    let r = c.join_room("room1", talk).await;
    assert_eq!(r["room"]["roomid"], "room1", "{r}");
    c
}

async fn chat_event(c: &mut TestClient) -> Value {
    let ev = c
        .recv_matching(|v| v["type"] == "event" && v["event"]["type"] == "message")
        .await;
    assert_eq!(ev["event"]["target"], "room", "{ev}");
    assert_eq!(ev["event"]["message"]["roomid"], "room1", "{ev}");
    ev["event"]["message"]["data"].clone()
}

fn comment(id: i64, name: &str) -> Value {
    json!({"id": id, "actorType": "users", "actorId": "alice",
        "actorDisplayName": name, "message": format!("hello {id}")})
}

async fn chat_comments_relayed_to_chat_relay_clients_only(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut relay = user_with_features(&s, "alice", json!(["chat-relay"]), "talk-a").await;
    let mut plain = user_with_features(&s, "bob", json!([]), "talk-b").await;

    let r = s
        .backend_request(
            "room1",
            json!({"type": "message", "message": {"data": {"type": "chat",
                "chat": {"refresh": true, "comment": comment(1, "Alice")}}}}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        chat_event(&mut relay).await,
        json!({"type": "chat", "chat": {"comment": comment(1, "Alice")}})
    );
    assert_eq!(
        chat_event(&mut plain).await,
        json!({"type": "chat", "chat": {"refresh": true}})
    );

    // Several comments: one event each, in order, for chat-relay clients;
    // still a single refresh hint for the others.
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": {"type": "chat",
            "chat": {"refresh": true, "comments": [comment(2, "Alice"), comment(3, "Alice")]}}}}),
    )
    .await;
    for id in [2, 3] {
        assert_eq!(
            chat_event(&mut relay).await,
            json!({"type": "chat", "chat": {"comment": comment(id, "Alice")}})
        );
    }
    assert_eq!(
        chat_event(&mut plain).await,
        json!({"type": "chat", "chat": {"refresh": true}})
    );
    // Nothing else came in between: the next chat event is the next request.
    let marker = json!({"type": "chat", "chat": {"refresh": true}, "n": 4});
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": marker}}),
    )
    .await;
    assert_eq!(chat_event(&mut relay).await, marker);
    assert_eq!(chat_event(&mut plain).await, marker);
}

/// The plain refresh hint (what Nextcloud sent before chat relay) is passed
/// through unchanged to everyone.
async fn legacy_refresh_unchanged(t: Topology) {
    let s = TestServer::start_on(t).await;
    let mut relay = user_with_features(&s, "alice", json!(["chat-relay"]), "talk-a").await;
    let mut plain = user_with_features(&s, "bob", json!([]), "talk-b").await;
    let data = json!({"type": "chat", "chat": {"refresh": true}, "extra": 1});
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": data}}),
    )
    .await;
    assert_eq!(chat_event(&mut relay).await, data);
    assert_eq!(chat_event(&mut plain).await, data);
}

/// Relayed comments have the author's display name blanked for sessions
/// with `hide-displaynames`.
async fn relayed_comments_hide_display_names(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_room_handler(|req| {
        let room = &req["room"];
        Reply::json(json!({"type": "room", "room": {
            "version": "1.0", "roomid": room["roomid"],
            "permissions": ["hide-displaynames"]}}))
    });
    let mut relay = user_with_features(&s, "alice", json!(["chat-relay"]), "talk-a").await;
    s.backend_request(
        "room1",
        json!({"type": "message", "message": {"data": {"type": "chat",
            "chat": {"refresh": true, "comments": [comment(1, "Alice")]}}}}),
    )
    .await;
    assert_eq!(
        chat_event(&mut relay).await,
        json!({"type": "chat", "chat": {"comment": comment(1, "")}})
    );
}

both_topologies!(
    chat_comments_relayed_to_chat_relay_clients_only,
    legacy_refresh_unchanged,
    relayed_comments_hide_display_names,
);
