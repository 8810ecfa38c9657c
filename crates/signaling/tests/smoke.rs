//! Smoke test of the harness: hello, join, message, leave.
// Single server only: a smoke test of the harness itself.
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

#[tokio::test]
async fn hello_join_and_message_between_two_users() {
    let s = TestServer::start().await;
    let mut a = s.user_in_room("alice", "room1", "talk-a").await;
    let join = a.expect_event("room", "join").await;
    assert_eq!(join["event"]["join"][0]["userid"], "alice");
    let mut b = s.user_in_room("bob", "room1", "talk-b").await;
    let b_id = b.session_id().unwrap().to_owned();
    // b learns who is there, then sees its own join; a sees b join
    let others = b.expect_event("room", "join").await;
    assert_eq!(others["event"]["join"][0]["userid"], "alice");
    let own = b.expect_event("room", "join").await;
    assert_eq!(own["event"]["join"][0]["sessionid"], b_id.as_str());
    let ev = a.expect_event("room", "join").await;
    assert_eq!(ev["event"]["join"][0]["sessionid"], b_id.as_str());
    a.send_message(recipient_session(&b_id), json!({"hello": "bob"}))
        .await;
    let m = b.expect_type("message").await;
    assert_eq!(m["message"]["data"]["hello"], "bob");
    assert_eq!(m["message"]["sender"]["type"], "session");
    assert_eq!(m["message"]["sender"]["userid"], "alice");
}
