//! Issue 17, `changed-users`: Talk announces only what changed (`changed`
//! entries, no `users`/`alluserids`/`userids` lists) and the server keeps
//! the call state itself. Each scenario runs on one server and on three
//! servers sharing a real nats-server, with the sessions spread over the
//! nodes and every backend request posted to a node other than the one of
//! the session it is about. Members must receive exactly the events listed,
//! each once.
mod common;

use common::*;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Servers sharing one fake Nextcloud (and, for more than one, a
/// nats-server).
struct World {
    nodes: Vec<SocketAddr>,
    backend: FakeBackend,
    // Field order: the servers' buses go before the nats-server.
    _servers: Vec<Arc<signaling::Server>>,
    _nats: Option<NatsServer>,
}

impl World {
    async fn single() -> World {
        let backend = FakeBackend::start(SECRET).await;
        let (server, addr) = start_server(&config_for(&backend.url(), "")).await;
        World {
            nodes: vec![addr],
            backend,
            _servers: vec![server],
            _nats: None,
        }
    }

    async fn cluster(n: usize) -> World {
        let nats = NatsServer::start().await.expect("nats-server starts");
        let backend = FakeBackend::start(SECRET).await;
        let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
        let mut servers = Vec::new();
        let mut nodes = Vec::new();
        for _ in 0..n {
            let (s, addr) = start_server(&config_for(&backend.url(), &extra)).await;
            tokio::time::timeout(
                Duration::from_secs(10),
                s.nats.clone().expect("a NATS bus").wait_connected(true),
            )
            .await
            .expect("connected to NATS");
            servers.push(s);
            nodes.push(addr);
        }
        // Every node knows the others (`cluster.nodes` reports), so the
        // room questions of a node starting a room get all answers.
        tokio::time::sleep(Duration::from_millis(2200)).await;
        World {
            nodes,
            backend,
            _servers: servers,
            _nats: Some(nats),
        }
    }

    fn node(&self, i: usize) -> SocketAddr {
        self.nodes[i % self.nodes.len()]
    }

    /// A wait long enough for events to cross the nodes.
    fn quiet(&self) -> Duration {
        if self.nodes.len() > 1 {
            Duration::from_millis(600)
        } else {
            SHORT
        }
    }

    async fn user(&self, node: usize, user: &str) -> TestClient {
        let mut c = TestClient::connect(&spreed_url(self.node(node)))
            .await
            .skip("welcome");
        c.hello_user(&self.backend.backend_url(), user).await;
        c
    }

    /// `user` on node `node`, in `room` as Talk session `talk`.
    async fn member(&self, node: usize, user: &str, room: &str, talk: &str) -> Member {
        let mut c = self.user(node, user).await;
        let r = c.join_room(room, talk).await;
        assert_eq!(r["room"]["roomid"], room, "join reply: {r}");
        let id = c.session_id().expect("hello done").to_owned();
        Member {
            c,
            id,
            node,
            talk: talk.to_owned(),
        }
    }

    /// A backend request as Talk sends it, to node `via`; must be accepted.
    async fn post(&self, via: usize, room: &str, body: Value) {
        let base = format!("http://{}/", self.node(via));
        let r = self.backend.send_room_request(&base, room, &body).await;
        assert_eq!(r.status, 200, "{body}: {}", r.text());
        let features = r.header("x-spreed-signaling-features").unwrap_or_default();
        assert!(
            features.split(',').any(|f| f.trim() == "changed-users"),
            "backend API response without changed-users: {features}"
        );
    }

    /// A node other than `member`'s (the same on one server).
    fn other_node(&self, member: &Member) -> usize {
        member.node + 1
    }
}

struct Member {
    c: TestClient,
    id: String,
    node: usize,
    talk: String,
}

/// Read until nothing arrives for `quiet`.
async fn drain(c: &mut TestClient, quiet: Duration) {
    while c.recv_timeout(quiet).await.is_some() {}
}

/// Wait until `m` was told of every session in `ids` (join events), then
/// until nothing more comes.
async fn knows(m: &mut Member, ids: &[&str], quiet: Duration) {
    let mut seen = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !ids.iter().all(|w| seen.contains(*w)) {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(v) = m.c.recv_timeout(left).await else {
            panic!("join events so far: {seen:?}, want {ids:?}");
        };
        if v["type"] == "event" && v["event"]["target"] == "room" && v["event"]["type"] == "join" {
            for e in v["event"]["join"].as_array().into_iter().flatten() {
                seen.insert(e["sessionid"].as_str().unwrap_or_default().to_owned());
            }
        }
    }
    drain(&mut m.c, quiet).await;
}

/// A participants update as clients must see it: the whole call, never
/// `changed` nor `permissions`. Returns sessionId -> entry.
fn call_of(v: &Value, room: &str) -> BTreeMap<String, Value> {
    assert_eq!(v["type"], "event", "{v}");
    assert_eq!(v["event"]["target"], "participants", "{v}");
    assert_eq!(v["event"]["type"], "update", "{v}");
    let update = &v["event"]["update"];
    assert_eq!(update["roomid"], room, "{v}");
    assert!(
        update.get("changed").is_none(),
        "clients never see changed: {v}"
    );
    let users = update["users"].as_array().expect("users");
    let mut out = BTreeMap::new();
    for u in users {
        assert!(u.get("permissions").is_none(), "permissions leaked: {v}");
        let sid = u["sessionId"].as_str().expect("sessionId").to_owned();
        assert!(out.insert(sid, u.clone()).is_none(), "listed twice: {v}");
    }
    out
}

/// Every member receives exactly one message, a participants update with
/// exactly `want` (session id, inCall); returns the entries seen by the
/// first member.
async fn expect_call(
    members: &mut [&mut Member],
    room: &str,
    want: &[(&str, i64)],
    quiet: Duration,
) -> BTreeMap<String, Value> {
    let want: BTreeMap<String, i64> = want.iter().map(|(s, f)| (s.to_string(), *f)).collect();
    let mut first = None;
    for m in members.iter_mut() {
        let v = m.c.recv().await;
        let call = call_of(&v, room);
        let flags: BTreeMap<String, i64> = call
            .iter()
            .map(|(s, e)| (s.clone(), e["inCall"].as_i64().expect("inCall")))
            .collect();
        assert_eq!(flags, want, "{} got {v}", m.id);
        first.get_or_insert(call);
    }
    for m in members.iter_mut() {
        m.c.expect_no_message(quiet).await;
    }
    first.unwrap_or_default()
}

fn incall(entries: &[(&str, i64)]) -> Value {
    let changed: Vec<Value> = entries
        .iter()
        .map(|(talk, flags)| {
            json!({"inCall": flags, "lastPing": 1700000000, "sessionId": talk,
                "nextcloudSessionId": talk, "participantType": 3,
                "participantPermissions": 254, "actorType": "users",
                "actorId": format!("actor-{talk}"), "userId": format!("actor-{talk}")})
        })
        .collect();
    let flags = entries.last().map(|e| e.1).unwrap_or(0);
    json!({"type": "incall", "incall": {"incall": flags, "changed": changed}})
}

/// Three members (one per node in a cluster) join and leave a call one by
/// one, `all` ends it, permissions and participant fields change, a member
/// leaves the room: every member always gets the whole call.
async fn call_scenario(w: &World) {
    let q = w.quiet();
    let mut a = w.member(0, "alice", "room1", "talk-a").await;
    let mut b = w.member(1, "bob", "room1", "talk-b").await;
    let mut c = w.member(2, "carol", "room1", "talk-c").await;
    let (ai, bi, ci) = (a.id.clone(), b.id.clone(), c.id.clone());
    let all = [ai.as_str(), bi.as_str(), ci.as_str()];
    for m in [&mut a, &mut b, &mut c] {
        knows(m, &all, q).await;
    }

    // Joining one by one: each update is the whole call so far.
    w.post(w.other_node(&a), "room1", incall(&[(&a.talk, 7)]))
        .await;
    let call = expect_call(&mut [&mut a, &mut b, &mut c], "room1", &[(&ai, 7)], q).await;
    // Talk's entry, under the signaling id (nextcloudSessionId passes).
    let entry = &call[&ai];
    assert_eq!(entry["nextcloudSessionId"], "talk-a", "{entry}");
    assert_eq!(entry["actorId"], "actor-talk-a", "{entry}");
    assert_eq!(entry["participantType"], 3, "{entry}");

    w.post(w.other_node(&b), "room1", incall(&[(&b.talk, 3)]))
        .await;
    expect_call(
        &mut [&mut a, &mut b, &mut c],
        "room1",
        &[(&ai, 7), (&bi, 3)],
        q,
    )
    .await;
    w.post(w.other_node(&c), "room1", incall(&[(&c.talk, 7)]))
        .await;
    expect_call(
        &mut [&mut a, &mut b, &mut c],
        "room1",
        &[(&ai, 7), (&bi, 3), (&ci, 7)],
        q,
    )
    .await;

    // A `call` message from bob reaches the call: alice and carol.
    let call_msg =
        json!({"type": "message", "message": {"recipient": {"type": "call"}, "data": {"n": 1}}});
    b.c.send_json(&call_msg).await;
    for m in [&mut a, &mut c] {
        let v = m.c.recv().await;
        assert_eq!(v["message"]["data"], json!({"n": 1}), "{v}");
        assert_eq!(v["message"]["sender"]["sessionid"], bi.as_str(), "{v}");
    }

    // Leaving the call one by one: the entry stays, at 0.
    w.post(w.other_node(&a), "room1", incall(&[(&a.talk, 0)]))
        .await;
    expect_call(
        &mut [&mut a, &mut b, &mut c],
        "room1",
        &[(&ai, 0), (&bi, 3), (&ci, 7)],
        q,
    )
    .await;
    // ... and alice no longer gets `call` messages.
    b.c.send_json(&call_msg).await;
    let v = c.c.recv().await;
    assert_eq!(v["message"]["data"], json!({"n": 1}), "{v}");
    a.c.expect_no_message(q).await;

    // Unknown sessions and "0" only: accepted, nothing sent.
    w.post(0, "room1", incall(&[("talk-unknown", 7), ("0", 7)]))
        .await;
    for m in [&mut a, &mut b, &mut c] {
        m.c.expect_no_message(q).await;
    }

    // Participants: changed fields of a tracked entry are kept (all but
    // inCall), permissions reach the session and never the clients.
    // Before: bob may send control messages (no permissions given yet).
    b.c.send_control(recipient_session(&ci), json!({"try": 1}))
        .await;
    let v = c.c.recv().await;
    assert_eq!(v["control"]["data"], json!({"try": 1}), "{v}");
    w.post(
        w.other_node(&b),
        "room1",
        json!({"type": "participants", "participants": {"changed": [
            {"inCall": 0, "lastPing": 0, "sessionId": b.talk, "participantType": 2,
             "participantPermissions": 1, "permissions": ["publish-audio"],
             "displayName": "Bob", "actorType": "users", "actorId": "bob", "userId": "bob"}
        ]}}),
    )
    .await;
    let call = expect_call(
        &mut [&mut a, &mut b, &mut c],
        "room1",
        &[(&ai, 0), (&bi, 3), (&ci, 7)],
        q,
    )
    .await;
    assert_eq!(call[&bi]["participantType"], 2, "{:?}", call[&bi]);
    assert_eq!(call[&bi]["displayName"], "Bob", "{:?}", call[&bi]);
    b.c.send_control(recipient_session(&ci), json!({"try": 2}))
        .await;
    c.c.expect_no_message(q).await;

    // A participant without a live session: nothing to send.
    w.post(
        0,
        "room1",
        json!({"type": "participants", "participants": {"changed": [
            {"inCall": 0, "lastPing": 0, "sessionId": "0", "participantType": 3,
             "participantPermissions": 1, "actorType": "users", "actorId": "dave"}
        ]}}),
    )
    .await;
    for m in [&mut a, &mut b, &mut c] {
        m.c.expect_no_message(q).await;
    }

    // `all` ends the call: no list, every tracked entry goes to 0.
    w.post(
        1,
        "room1",
        json!({"type": "incall", "incall": {"incall": 0, "all": true}}),
    )
    .await;
    for m in [&mut a, &mut b, &mut c] {
        let v = m.c.recv().await;
        assert_eq!(
            v,
            json!({"type": "event", "event": {"target": "participants", "type": "update",
                "update": {"roomid": "room1", "incall": 0, "all": true}}}),
        );
    }
    for m in [&mut a, &mut b, &mut c] {
        m.c.expect_no_message(q).await;
    }
    w.post(w.other_node(&c), "room1", incall(&[(&c.talk, 7)]))
        .await;
    expect_call(
        &mut [&mut a, &mut b, &mut c],
        "room1",
        &[(&ai, 0), (&bi, 0), (&ci, 7)],
        q,
    )
    .await;

    // bob leaves (bye): everybody sees it, and no node lists him again.
    b.c.bye().await;
    for m in [&mut a, &mut c] {
        let v = m.c.recv().await;
        assert_eq!(
            v,
            json!({"type": "event", "event": {"target": "room", "type": "leave",
                "leave": [bi.as_str()]}}),
        );
    }
    w.post(w.other_node(&a), "room1", incall(&[(&a.talk, 3)]))
        .await;
    expect_call(&mut [&mut a, &mut c], "room1", &[(&ai, 3), (&ci, 7)], q).await;

    // A newcomer gets the whole call with the next update.
    let mut d = w.member(1, "dave", "room1", "talk-d").await;
    let di = d.id.clone();
    knows(&mut d, &[&ai, &ci, &di], q).await;
    for m in [&mut a, &mut c] {
        knows(m, &[&di], q).await;
    }
    w.post(w.other_node(&d), "room1", incall(&[(&d.talk, 7)]))
        .await;
    expect_call(
        &mut [&mut a, &mut c, &mut d],
        "room1",
        &[(&ai, 3), (&ci, 7), (&di, 7)],
        q,
    )
    .await;
}

#[tokio::test]
async fn call_state_on_one_server() {
    call_scenario(&World::single().await).await;
}

#[tokio::test]
async fn call_state_on_three_nodes() {
    call_scenario(&World::cluster(3).await).await;
}

/// The next `n` messages of `c`, in any order, as a sorted list of strings.
async fn next_n(c: &mut TestClient, n: usize) -> Vec<String> {
    let mut got = Vec::new();
    for _ in 0..n {
        got.push(c.recv().await.to_string());
    }
    got.sort();
    got
}

fn sorted(list: &[Value]) -> Vec<String> {
    let mut v: Vec<String> = list.iter().map(Value::to_string).collect();
    v.sort();
    v
}

/// Room requests without the user lists: `update` (properties only),
/// `invite` and `disinvite` reach the members of the room through the
/// room; users are told only when named.
async fn roomlist_scenario(w: &World) {
    let q = w.quiet();
    let mut a = w.member(0, "alice", "room1", "talk-a").await;
    let mut b = w.member(1, "bob", "room1", "talk-b").await;
    let (ai, bi) = (a.id.clone(), b.id.clone());
    // alice again, in another room, and dave nowhere.
    let mut other = w.member(2, "alice", "room2", "talk-x").await;
    let mut dave = w.user(2, "dave").await;
    for m in [&mut a, &mut b] {
        knows(m, &[&ai, &bi], q).await;
    }
    drain(&mut other.c, q).await;

    // Properties only: `room` (changed properties) and roomlist `update`.
    let props = json!({"name": "Renamed", "type": 3});
    w.post(
        1,
        "room1",
        json!({"type": "update", "update": {"properties": props}}),
    )
    .await;
    let want = sorted(&[
        json!({"type": "room", "room": {"roomid": "room1", "properties": props}}),
        json!({"type": "event", "event": {"target": "roomlist", "type": "update",
            "update": {"roomid": "room1", "properties": props}}}),
    ]);
    for m in [&mut a, &mut b] {
        assert_eq!(next_n(&mut m.c, 2).await, want);
        m.c.expect_no_message(q).await;
    }
    other.c.expect_no_message(q).await;
    // The same properties again: no `room` message, the roomlist update only.
    w.post(
        0,
        "room1",
        json!({"type": "update", "update": {"properties": props}}),
    )
    .await;
    for m in [&mut a, &mut b] {
        let v = m.c.recv().await;
        assert_eq!(v["event"]["target"], "roomlist", "{v}");
        assert_eq!(v["event"]["update"]["properties"], props, "{v}");
        m.c.expect_no_message(q).await;
    }

    // Invite without alluserids: the invited user everywhere, the members
    // the update.
    w.post(
        0,
        "room1",
        json!({"type": "invite", "invite": {"userids": ["dave"], "properties": props}}),
    )
    .await;
    let v = dave.recv().await;
    assert_eq!(
        v,
        json!({"type": "event", "event": {"target": "roomlist", "type": "invite",
            "invite": {"roomid": "room1", "properties": props}}})
    );
    for m in [&mut a, &mut b] {
        let v = m.c.recv().await;
        assert_eq!(
            v,
            json!({"type": "event", "event": {"target": "roomlist", "type": "update",
                "update": {"roomid": "room1", "properties": props}}})
        );
        m.c.expect_no_message(q).await;
    }
    dave.expect_no_message(q).await;
    other.c.expect_no_message(q).await;

    // Disinvite a session: everybody in the room gets the update first,
    // then bob the disinvite (which ends his connection).
    w.post(
        w.other_node(&b),
        "room1",
        json!({"type": "disinvite", "disinvite": {"sessionids": [b.talk], "properties": props}}),
    )
    .await;
    let update = json!({"type": "event", "event": {"target": "roomlist", "type": "update",
        "update": {"roomid": "room1", "properties": props}}});
    assert_eq!(a.c.recv().await, update);
    assert_eq!(b.c.recv().await, update);
    assert_eq!(
        b.c.recv().await,
        json!({"type": "event", "event": {"target": "roomlist", "type": "disinvite",
            "disinvite": {"roomid": "room1", "reason": "disinvited"}}})
    );
    b.c.expect_closed(Duration::from_secs(5)).await;
    let v = a.c.recv().await;
    assert_eq!(v["event"]["type"], "leave", "{v}");
    a.c.expect_no_message(q).await;
    other.c.expect_no_message(q).await;
    dave.expect_no_message(q).await;
}

#[tokio::test]
async fn roomlist_events_on_one_server() {
    roomlist_scenario(&World::single().await).await;
}

#[tokio::test]
async fn roomlist_events_on_three_nodes() {
    roomlist_scenario(&World::cluster(3).await).await;
}

/// `delete` as Talk may send it with `changed-users` (`{}`, `[]`, nothing):
/// each member gets the disinvite (reason `deleted`) and leaves, internal
/// sessions get `room`/`delete`; nobody outside the room hears of it.
async fn delete_scenario(w: &World) {
    let q = w.quiet();
    let mut outsider = w.member(0, "alice", "elsewhere", "talk-out").await;
    drain(&mut outsider.c, q).await;
    for (n, shape) in [Some(json!({})), Some(json!([])), None]
        .into_iter()
        .enumerate()
    {
        let room = format!("gone{n}");
        let mut a = w.member(n, "alice", &room, &format!("talk-a{n}")).await;
        let mut g = w
            .member(n + 1, "guest-like", &room, &format!("talk-g{n}"))
            .await;
        let (mut internal, internal_id) =
            internal_client(w.node(n + 2), &w.backend.url(), &[]).await;
        let r = internal.join_room(&room, "").await;
        assert_eq!(r["room"]["roomid"], room.as_str(), "{r}");
        let ids = [a.id.clone(), g.id.clone(), internal_id.clone()];
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        for m in [&mut a, &mut g] {
            knows(m, &ids, q).await;
        }
        drain(&mut internal, q).await;

        let mut body = json!({"type": "delete"});
        if let Some(shape) = shape.clone() {
            body["delete"] = shape;
        }
        w.post(n + 1, &room, body).await;
        for m in [&mut a, &mut g] {
            let got = vec![m.c.recv().await, m.c.recv().await];
            assert_eq!(
                got,
                vec![
                    json!({"type": "event", "event": {"target": "roomlist", "type": "disinvite",
                        "disinvite": {"roomid": room, "reason": "deleted"}}}),
                    json!({"type": "room", "room": {"roomid": ""}}),
                ],
                "{shape:?}"
            );
        }
        let v = internal.recv().await;
        assert_eq!(
            v,
            json!({"type": "event", "event": {"target": "room", "type": "delete"}}),
            "{shape:?}"
        );
        for m in [&mut a, &mut g] {
            m.c.expect_no_message(q).await;
        }
        outsider.c.expect_no_message(q).await;
    }
}

#[tokio::test]
async fn delete_without_lists_on_one_server() {
    delete_scenario(&World::single().await).await;
}

#[tokio::test]
async fn delete_without_lists_on_three_nodes() {
    delete_scenario(&World::cluster(3).await).await;
}

/// A node whose first member of the room joins mid-call learns the call
/// from the others (Talk sends no whole list any more): the recorder
/// joining there, and the next update, list everyone in the call.
#[tokio::test]
async fn late_node_learns_the_running_call() {
    let w = World::cluster(3).await;
    let q = w.quiet();
    let mut a = w.member(0, "alice", "room1", "talk-a").await;
    let mut b = w.member(1, "bob", "room1", "talk-b").await;
    let (ai, bi) = (a.id.clone(), b.id.clone());
    for m in [&mut a, &mut b] {
        knows(m, &[&ai, &bi], q).await;
    }
    w.post(2, "room1", incall(&[(&a.talk, 7)])).await;
    expect_call(&mut [&mut a, &mut b], "room1", &[(&ai, 7)], q).await;
    w.post(2, "room1", incall(&[(&b.talk, 3)])).await;
    expect_call(&mut [&mut a, &mut b], "room1", &[(&ai, 7), (&bi, 3)], q).await;

    // Node 2 starts hosting the room now: a client, then a recorder.
    let mut e = w.member(2, "eve", "room1", "talk-e").await;
    let ei = e.id.clone();
    knows(&mut e, &[&ai, &bi, &ei], q).await;
    for m in [&mut a, &mut b] {
        knows(m, &[&ei], q).await;
    }
    // An internal client without `internal-incall` is in the call (3).
    let (mut rec, rec_id) = internal_client(w.node(2), &w.backend.url(), &[]).await;
    rec.join_room("room1", "").await;
    for m in [&mut a, &mut b, &mut e] {
        let v =
            m.c.recv_matching(|v| v["event"]["target"] == "participants")
                .await;
        let call = call_of(&v, "room1");
        let flags: BTreeMap<&str, i64> = call
            .iter()
            .map(|(s, e)| (s.as_str(), e["inCall"].as_i64().unwrap_or(-1)))
            .collect();
        assert_eq!(
            flags,
            BTreeMap::from([(ai.as_str(), 7), (bi.as_str(), 3), (rec_id.as_str(), 3)]),
            "{v}"
        );
        assert_eq!(call[&rec_id]["internal"], true, "{v}");
    }
    // Talk's next change, applied on node 2 as everywhere.
    w.post(0, "room1", incall(&[(&e.talk, 7)])).await;
    for m in [&mut a, &mut b, &mut e] {
        let v =
            m.c.recv_matching(|v| v["event"]["target"] == "participants")
                .await;
        let call = call_of(&v, "room1");
        let flags: BTreeMap<&str, i64> = call
            .iter()
            .map(|(s, e)| (s.as_str(), e["inCall"].as_i64().unwrap_or(-1)))
            .collect();
        assert_eq!(
            flags,
            BTreeMap::from([
                (ai.as_str(), 7),
                (bi.as_str(), 3),
                (ei.as_str(), 7),
                (rec_id.as_str(), 3)
            ]),
            "{v}"
        );
    }
}

/// A member leaving the room is dropped from the call state on every
/// node, also when Talk can no longer say so (its session is gone).
#[tokio::test]
async fn leaving_member_is_dropped_on_every_node() {
    let w = World::cluster(2).await;
    let q = w.quiet();
    let mut a = w.member(0, "alice", "room1", "talk-a").await;
    let mut b = w.member(1, "bob", "room1", "talk-b").await;
    let (ai, bi) = (a.id.clone(), b.id.clone());
    for m in [&mut a, &mut b] {
        knows(m, &[&ai, &bi], q).await;
    }
    w.post(0, "room1", incall(&[(&a.talk, 7), (&b.talk, 7)]))
        .await;
    expect_call(&mut [&mut a, &mut b], "room1", &[(&ai, 7), (&bi, 7)], q).await;
    // bob's connection ends on node 1; node 0 sees him leave.
    b.c.bye().await;
    let v = a.c.recv().await;
    assert_eq!(v["event"]["leave"], json!([bi.as_str()]), "{v}");
    w.post(1, "room1", incall(&[(&a.talk, 3)])).await;
    expect_call(&mut [&mut a], "room1", &[(&ai, 3)], q).await;
}

/// Old Talk versions (without `changed-users`) keep working: their whole
/// lists are the call, replacing what was tracked.
#[tokio::test]
async fn old_talk_lists_still_work() {
    let w = World::single().await;
    let q = w.quiet();
    let mut a = w.member(0, "alice", "room1", "talk-a").await;
    let mut b = w.member(0, "bob", "room1", "talk-b").await;
    let (ai, bi) = (a.id.clone(), b.id.clone());
    for m in [&mut a, &mut b] {
        knows(m, &[&ai, &bi], q).await;
    }
    w.post(
        0,
        "room1",
        json!({"type": "incall", "incall": {"incall": 7,
            "changed": [{"sessionId": "talk-a", "inCall": 7}],
            "users": [{"sessionId": "talk-a", "inCall": 7}, {"sessionId": "talk-b", "inCall": 3}]}}),
    )
    .await;
    expect_call(&mut [&mut a, &mut b], "room1", &[(&ai, 7), (&bi, 3)], q).await;
    // bob left the call: old Talk lists alice only, bob in `changed`.
    w.post(
        0,
        "room1",
        json!({"type": "incall", "incall": {"incall": 0,
            "changed": [{"sessionId": "talk-b", "inCall": 0}],
            "users": [{"sessionId": "talk-a", "inCall": 7}]}}),
    )
    .await;
    expect_call(&mut [&mut a, &mut b], "room1", &[(&ai, 7), (&bi, 0)], q).await;
    // Everybody left: an empty list.
    w.post(
        0,
        "room1",
        json!({"type": "incall", "incall": {"incall": 0,
            "changed": [{"sessionId": "talk-a", "inCall": 0}], "users": []}}),
    )
    .await;
    expect_call(&mut [&mut a, &mut b], "room1", &[(&ai, 0)], q).await;
    // Old invite/update/delete shapes are accepted too.
    for body in [
        json!({"type": "invite", "invite": {"userids": ["carol"], "alluserids": ["alice", "bob", "carol"], "properties": {"name": "x"}}}),
        json!({"type": "update", "update": {"userids": ["alice", "bob"], "properties": {"name": "x"}}}),
        json!({"type": "participants", "participants": {"changed": [], "users": []}}),
    ] {
        w.post(0, "room1", body).await;
    }
}

/// A resumed client (its connection broke) gets the whole call at once.
#[tokio::test]
async fn resumed_client_gets_the_call() {
    let w = World::single().await;
    let q = w.quiet();
    let mut a = w.member(0, "alice", "room1", "talk-a").await;
    let mut b = w.member(0, "bob", "room1", "talk-b").await;
    let (ai, bi) = (a.id.clone(), b.id.clone());
    for m in [&mut a, &mut b] {
        knows(m, &[&ai, &bi], q).await;
    }
    w.post(0, "room1", incall(&[(&a.talk, 7)])).await;
    w.post(0, "room1", incall(&[(&b.talk, 7)])).await;
    for _ in 0..2 {
        a.c.recv().await;
    }
    drain(&mut b.c, q).await;
    let resume = b.c.resume_id().expect("resume id").to_owned();
    b.c.close().await;
    let mut again = TestClient::connect(&spreed_url(w.node(0)))
        .await
        .skip("welcome");
    let r = again.hello_resume(&resume).await;
    assert_eq!(r["type"], "hello", "{r}");
    let v = again
        .recv_matching(|v| v["event"]["target"] == "participants")
        .await;
    let call = call_of(&v, "room1");
    let flags: BTreeMap<&str, i64> = call
        .iter()
        .map(|(s, e)| (s.as_str(), e["inCall"].as_i64().unwrap_or(-1)))
        .collect();
    assert_eq!(
        flags,
        BTreeMap::from([(ai.as_str(), 7), (bi.as_str(), 7)]),
        "{v}"
    );
}

/// Talk's entry for a virtual session (a phone call through the SIP bridge,
/// named by its signaling id) is tracked, marked `virtual` and shows the
/// session's own call flags (here the bridge's default: in call by phone).
#[tokio::test]
async fn virtual_session_entry_shows_its_own_flags() {
    let w = World::single().await;
    let q = w.quiet();
    let mut a = w.member(0, "alice", "room1", "talk-a").await;
    let (mut bridge, _) = internal_client(w.node(0), &w.backend.url(), &[]).await;
    bridge.join_room("room1", "").await;
    bridge
        .send_json(
            &json!({"type": "internal", "internal": {"type": "addsession", "addsession": {
            "sessionid": "sip-1", "roomid": "room1", "userid": "",
            "options": {"actorId": "phone-1", "actorType": "phones"}}}}),
        )
        .await;
    let join = w
        .backend
        .wait_for(
            |r| r.kind == "room" && r.payload()["actorid"] == "phone-1",
            DEFAULT_TIMEOUT,
        )
        .await;
    let v_id = join.payload()["sessionid"]
        .as_str()
        .expect("virtual session id")
        .to_owned();
    drain(&mut a.c, q).await;
    w.post(
        0,
        "room1",
        json!({"type": "incall", "incall": {"incall": 1, "changed": [
            {"inCall": 1, "sessionId": v_id, "actorType": "phones", "actorId": "phone-1"}]}}),
    )
    .await;
    let v = a.c.recv().await;
    let call = call_of(&v, "room1");
    let entry = &call[&v_id];
    assert_eq!(entry["virtual"], true, "{v}");
    assert_eq!(entry["inCall"], 9, "{v}");
    assert_eq!(entry["actorType"], "phones", "{v}");
    // `call_of` checked it is listed once (not again as the bridge's
    // own virtual entry).
}
