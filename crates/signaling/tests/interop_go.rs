//! Interop: one client scenario driven against Debian's Go signaling server
//! 0.4.1 (package `nextcloud-spreed-signaling`, started as a child process)
//! and against ours (in-process), comparing what every client receives; and
//! the same scenario against one of ours versus three of ours joined by NATS
//! (clients and backend requests spread over the nodes).
//!
//! Covers (FEATURES ids): HEL-04/05/08/09, ROOM-01/03/04/08/09/12/13/14/16/
//! 18/20/22/24/25, RTE-01/03/04/05/08, PERM-02/03, TRN-01..04 (ours only),
//! BAPI-04/06/07/09/10/11, RES-07.
//!
//! Both servers get their own [`FakeBackend`] with identical answers, the same
//! session keys and secrets, and the same scenario (`run_scenario`). Each
//! step waits for the number of messages upstream semantics predict per
//! client, then for a short quiet period, so extra messages are attributed to
//! the step that caused them. Before comparing, signaling session ids and
//! resume ids are replaced by `SID(<client>)` / `RID(<client>)` (learned from
//! the hello replies), `lastPing` is dropped, and `hello.server` is reduced to
//! a separately checked feature set (the version differs by design).
//!
//! Our target is upstream 11fa78b, which is 0.4.1 + 146 commits. Parts 0.4.1
//! lacks — `transient` messages (TRN-*), `incall` with `all:true` (ROOM-22),
//! the `transient-data` / `incall-all` hello features — are driven only
//! against ours and asserted explicitly there instead of being compared.
mod common;

use common::*;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;
use tokio::time::Instant;

/// Where Debian installs the Go server; `GO_SIGNALING_SERVER` overrides it.
const GO_SERVER_BIN: &str = "/usr/bin/nextcloud-spreed-signaling-server";
const ROOM: &str = "room1";
/// How long a step waits for the messages it expects.
const STEP_TIMEOUT: Duration = Duration::from_secs(5);
/// After the expected messages: how long a client must stay silent. Extra
/// messages arriving in this window are recorded for the step (and then make
/// the comparison fail).
const QUIET: Duration = Duration::from_millis(100);

// ----- the Go server as a child process -----

fn go_server_binary() -> PathBuf {
    let path = std::env::var_os("GO_SIGNALING_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(GO_SERVER_BIN));
    assert!(
        path.is_file(),
        "Go signaling server not found at {}: install the Debian package \
         `nextcloud-spreed-signaling` (apt-get install nextcloud-spreed-signaling) \
         or set GO_SIGNALING_SERVER",
        path.display()
    );
    path
}

/// The Go server with its fake backend; the child is killed when dropped.
struct GoServer {
    // Field order: the child dies before its temp dir is removed.
    child: ChildGuard,
    addr: SocketAddr,
    _dir: TempDir,
}

impl GoServer {
    async fn start(backend: &FakeBackend) -> GoServer {
        let bin = go_server_binary();
        let dir = TempDir::new("interop-go").expect("temp dir");
        let mut last_err = String::new();
        // free_port() can race with other processes; retry on a new port.
        for attempt in 0..3 {
            let port = free_port();
            // Same config as ours (common::config_for), on a fixed port.
            let ours = config_for(&backend.url(), "");
            let text = ours.replace(
                "listen = 127.0.0.1:0",
                &format!("listen = 127.0.0.1:{port}"),
            );
            assert_ne!(text, ours, "config_for() changed its listen line");
            let conf = dir.join(&format!("server-{attempt}.conf"));
            std::fs::write(&conf, text).expect("write Go config");
            let mut cmd = Command::new(&bin);
            cmd.arg("-config").arg(&conf).current_dir(dir.path());
            let log = dir.join(&format!("server-{attempt}.log"));
            let mut child =
                ChildGuard::spawn("nextcloud-spreed-signaling-server", &mut cmd, Some(&log))
                    .expect("spawn Go server");
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_for_port(addr, Duration::from_secs(10), Some(&mut child)).await {
                Ok(()) => {
                    return GoServer {
                        child,
                        addr,
                        _dir: dir,
                    }
                }
                Err(e) => last_err = e.to_string(),
            }
        }
        panic!("Go signaling server did not start: {last_err}");
    }
}

// ----- one server under test -----

struct Target {
    label: &'static str,
    /// Debian's Go 0.4.1: skip what only our target (11fa78b) supports.
    is_go: bool,
    /// Where the clients connect: one URL, or one per node of a cluster
    /// (the n-th client takes the n-th, round robin).
    ws_urls: Vec<String>,
    /// Base URLs of the backend API (`http://host:port/`); backend requests
    /// take them in turn.
    bases: Vec<String>,
    backend: FakeBackend,
}

/// The Nextcloud answers both backends give: Talk-like room replies, with
/// room session data (`{userid}`) for the guest's Talk session (ROOM-04).
fn configure_backend(backend: &FakeBackend) {
    backend.set_room_handler(|body| {
        let room = &body["room"];
        if room["action"] == "leave" || room["sessionid"] != "talk-guest" {
            return Reply::Default;
        }
        let roomid = room["roomid"].as_str().unwrap_or_default();
        Reply::json(json!({"type": "room", "room": {
            "version": "1.0",
            "roomid": roomid,
            "properties": {"name": format!("Room {roomid}")},
            "session": {"userid": "guest-alias"},
        }}))
    });
}

// ----- clients that record everything -----

struct Peer {
    name: &'static str,
    client: TestClient,
    closed: bool,
}

impl Peer {
    async fn connect(t: &Target, name: &'static str, index: usize) -> Peer {
        Peer {
            name,
            client: TestClient::connect(&t.ws_urls[index % t.ws_urls.len()])
                .await
                .skip("welcome"),
            closed: false,
        }
    }

    async fn send(&mut self, msg: Value) {
        self.client.send_json(&msg).await;
    }

    fn record(&mut self, incoming: Incoming) -> Option<Value> {
        Some(match incoming {
            Incoming::Json(v) => v,
            Incoming::Text(t) => json!({"<text>": t}),
            Incoming::Binary(b) => json!({"<binary>": b.len()}),
            Incoming::Closed(info) => {
                self.closed = true;
                json!({"<closed>": info.map(|i| json!({"code": i.code, "reason": i.reason}))})
            }
            Incoming::Timeout => return None,
        })
    }

    /// Reads `n` frames (a close counts as one), then whatever else arrives
    /// until the client has been quiet for [`QUIET`].
    async fn collect(&mut self, n: usize) -> Vec<Value> {
        let mut out = Vec::new();
        let deadline = Instant::now() + STEP_TIMEOUT;
        while out.len() < n && !self.closed {
            let incoming = self.client.next_incoming(deadline).await;
            if is_welcome(&incoming) {
                continue;
            }
            match self.record(incoming) {
                Some(v) => out.push(v),
                None => {
                    out.push(json!({"<timeout>": format!(
                        "{} expected {n} messages within {STEP_TIMEOUT:?}", self.name)}));
                    break;
                }
            }
        }
        while !self.closed {
            let incoming = self.client.next_incoming(Instant::now() + QUIET).await;
            if is_welcome(&incoming) {
                continue;
            }
            match self.record(incoming) {
                Some(v) => out.push(v),
                None => break,
            }
        }
        out
    }
}

/// Go 0.4.1 sends no `welcome`; ours does (checked in talk_welcome.rs).
fn is_welcome(incoming: &Incoming) -> bool {
    matches!(incoming, Incoming::Json(v) if v["type"] == "welcome")
}

/// How a step's messages are compared per client.
#[derive(Clone, Copy, Debug)]
enum Cmp {
    /// Identical order.
    Ordered,
    /// The first `prefix` messages in order, the rest as a multiset (for
    /// messages from independent paths whose order races in upstream).
    SetAfter(usize),
}

struct Step {
    name: String,
    cmp: Cmp,
    /// Only driven against our server (0.4.1 lacks it).
    ours_only: bool,
    msgs: BTreeMap<&'static str, Vec<Value>>,
}

#[derive(Default)]
struct Recording {
    steps: Vec<Step>,
    /// Raw signaling id -> placeholder.
    ids: HashMap<String, String>,
    features: BTreeSet<String>,
    /// Status and body of every backend API request, in order.
    api: Vec<Value>,
}

struct Scenario<'a> {
    t: &'a Target,
    peers: Vec<Peer>,
    rec: Recording,
}

impl Scenario<'_> {
    fn peer(&mut self, name: &str) -> &mut Peer {
        self.peers
            .iter_mut()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no peer {name}"))
    }

    async fn send(&mut self, name: &str, msg: Value) {
        self.peer(name).send(msg).await;
    }

    /// Records a step: every client waits for its expected count (0 if not
    /// listed) plus the quiet period, all clients concurrently.
    async fn step(&mut self, name: &str, cmp: Cmp, expected: &[(&str, usize)]) {
        self.record_step(name, cmp, false, expected).await;
    }

    async fn ours_only_step(&mut self, name: &str, expected: &[(&str, usize)]) {
        self.record_step(name, Cmp::Ordered, true, expected).await;
    }

    async fn record_step(
        &mut self,
        name: &str,
        cmp: Cmp,
        ours_only: bool,
        expected: &[(&str, usize)],
    ) {
        let futs = self.peers.iter_mut().map(|p| {
            let n = expected
                .iter()
                .find(|(c, _)| *c == p.name)
                .map_or(0, |(_, n)| *n);
            async move { (p.name, p.collect(n).await) }
        });
        let msgs: BTreeMap<_, _> = futures_util::future::join_all(futs)
            .await
            .into_iter()
            .collect();
        self.rec.steps.push(Step {
            name: name.to_owned(),
            cmp,
            ours_only,
            msgs,
        });
    }

    /// Signed backend → signaling request; records status and body.
    async fn backend_request(&mut self, body: Value) {
        self.backend_request_inner(body, false).await;
    }

    async fn backend_request_inner(&mut self, body: Value, ours_only: bool) {
        let resp = self
            .t
            .backend
            .send_room_request(
                &self.t.bases[self.rec.api.len() % self.t.bases.len()],
                ROOM,
                &body,
            )
            .await;
        self.rec.api.push(json!({
            "ours_only": ours_only,
            "request": body["type"],
            "status": resp.status,
            "body": resp.json_or_text(),
        }));
    }

    fn learn_hello(&mut self, name: &str) {
        let step = self.rec.steps.last().expect("hello step");
        let reply = step.msgs[name]
            .iter()
            .find(|m| m["type"] == "hello")
            .unwrap_or_else(|| {
                panic!(
                    "{}: no hello reply for {name}: {:?}",
                    self.t.label, step.msgs[name]
                )
            })
            .clone();
        let h = &reply["hello"];
        let sid = h["sessionid"].as_str().expect("sessionid").to_owned();
        let rid = h["resumeid"].as_str().expect("resumeid").to_owned();
        self.rec.ids.insert(sid, format!("SID({name})"));
        self.rec.ids.insert(rid, format!("RID({name})"));
        if let Some(features) = h["server"]["features"].as_array() {
            self.rec.features = features
                .iter()
                .filter_map(|f| f.as_str().map(str::to_owned))
                .collect();
        }
    }
}

fn join(id: &str, talk: &str) -> Value {
    json!({"id": id, "type": "room", "room": {"roomid": ROOM, "sessionid": talk}})
}

fn message(recipient: Value, data: Value) -> Value {
    json!({"type": "message", "message": {"recipient": recipient, "data": data}})
}

fn control(recipient: Value, data: Value) -> Value {
    json!({"type": "control", "control": {"recipient": recipient, "data": data}})
}

fn transient(id: &str, data: Value) -> Value {
    json!({"id": id, "type": "transient", "transient": data})
}

/// A Talk participant entry as the PHP app sends it in `incall`/`participants`.
fn participant(talk: &str, user: &str, in_call: u32, ptype: u32) -> Value {
    let mut v = json!({
        "sessionId": talk,
        "inCall": in_call,
        "lastPing": 1_650_000_000,
        "participantType": ptype,
    });
    if !user.is_empty() {
        v["userId"] = json!(user);
    }
    v
}

/// The scenario, identical for both servers except where marked ours-only.
async fn run_scenario(t: &Target) -> Recording {
    configure_backend(&t.backend);
    let mut s = Scenario {
        t,
        peers: vec![
            Peer::connect(t, "alice", 0).await,
            Peer::connect(t, "bob", 1).await,
            Peer::connect(t, "guest", 2).await,
        ],
        rec: Recording::default(),
    };
    let auth_url = t.backend.backend_url();
    let ours = !t.is_go;

    // HEL-04/05/08: two users (with auth user data) and an anonymous guest.
    for (name, params) in [
        (
            "alice",
            json!({"userid": "alice", "ticket": "t-a", "user": {"displayname": "Alice"}}),
        ),
        (
            "bob",
            json!({"userid": "bob", "ticket": "t-b", "user": {"displayname": "Bob"}}),
        ),
        ("guest", json!({"ticket": "t-g"})),
    ] {
        s.send(
            name,
            json!({"id": "hello", "type": "hello", "hello": {
            "version": "1.0", "auth": {"url": auth_url, "params": params}}}),
        )
        .await;
        s.step(&format!("hello {name}"), Cmp::Ordered, &[(name, 1)])
            .await;
        s.learn_hello(name);
    }

    // ROOM-01/08/12/13: first joiner: room reply, then its own join event.
    s.send("alice", join("join", "talk-alice")).await;
    s.step("alice joins", Cmp::Ordered, &[("alice", 2)]).await;

    // ROOM-04/12: the guest's join event carries the room session userid.
    // Upstream publishes the own join through (async) NATS but sends the list
    // of sessions already present directly, so after the room reply those two
    // race; compared as a set.
    s.send("guest", join("join", "talk-guest")).await;
    s.step(
        "guest joins",
        Cmp::SetAfter(1),
        &[("guest", 3), ("alice", 1)],
    )
    .await;

    if ours {
        // TRN-01/03: set by alice, seen by every session in the room.
        s.send(
            "alice",
            transient(
                "t1",
                json!({"type": "set", "key": "foo", "value": {"x": 1}}),
            ),
        )
        .await;
        s.ours_only_step("alice sets transient foo", &[("alice", 1), ("guest", 1)])
            .await;
    }

    // Late joiner: gets the list of present sessions (and, on ours, the
    // initial transient data, TRN-04 — sent directly by upstream as well, so
    // it is part of the racing set and extracted before comparing).
    s.send("bob", join("join", "talk-bob")).await;
    let bob_n = if ours { 4 } else { 3 };
    s.step(
        "bob joins late",
        Cmp::SetAfter(1),
        &[("bob", bob_n), ("alice", 1), ("guest", 1)],
    )
    .await;

    // RTE-01/05: session messages.
    let sid = |s: &Scenario, name: &str| -> String {
        let want = format!("SID({name})");
        s.rec
            .ids
            .iter()
            .find(|(_, v)| **v == want)
            .map(|(k, _)| k.clone())
            .expect("session id known")
    };
    let (sa, sb, sg) = (sid(&s, "alice"), sid(&s, "bob"), sid(&s, "guest"));
    s.send(
        "alice",
        message(recipient_session(&sb), json!({"m": "a->b"})),
    )
    .await;
    s.send("bob", message(recipient_session(&sg), json!({"m": "b->g"})))
        .await;
    s.send(
        "guest",
        message(recipient_session(&sa), json!({"m": "g->a"})),
    )
    .await;
    s.step(
        "session messages",
        Cmp::Ordered,
        &[("alice", 1), ("bob", 1), ("guest", 1)],
    )
    .await;

    // RTE-01: a message to oneself is dropped.
    s.send(
        "alice",
        message(recipient_session(&sa), json!({"m": "self"})),
    )
    .await;
    s.step("session message to self", Cmp::Ordered, &[]).await;

    // RTE-03: user messages; to one's own user id is dropped.
    s.send(
        "alice",
        message(recipient_user("bob"), json!({"m": "a->user bob"})),
    )
    .await;
    s.send(
        "guest",
        message(recipient_user("alice"), json!({"m": "g->user alice"})),
    )
    .await;
    s.send(
        "bob",
        message(recipient_user("bob"), json!({"m": "b->user bob"})),
    )
    .await;
    s.step("user messages", Cmp::Ordered, &[("alice", 1), ("bob", 1)])
        .await;

    // RTE-04: room message to everybody but the sender.
    s.send("bob", message(recipient_room(), json!({"m": "b->room"})))
        .await;
    s.step("room message", Cmp::Ordered, &[("alice", 1), ("guest", 1)])
        .await;

    // RTE-08 + PERM-02: control with default (legacy) permissions.
    s.send(
        "alice",
        control(recipient_session(&sb), json!({"c": "a->b"})),
    )
    .await;
    s.step("control to session", Cmp::Ordered, &[("bob", 1)])
        .await;
    s.send("guest", control(recipient_room(), json!({"c": "g->room"})))
        .await;
    s.step("control to room", Cmp::Ordered, &[("alice", 1), ("bob", 1)])
        .await;

    if ours {
        // TRN-02/03: remove with the old value, then a new key.
        s.send(
            "bob",
            transient("t2", json!({"type": "remove", "key": "foo"})),
        )
        .await;
        s.ours_only_step(
            "bob removes transient foo",
            &[("alice", 1), ("bob", 1), ("guest", 1)],
        )
        .await;
        s.send(
            "guest",
            transient("t3", json!({"type": "set", "key": "bar", "value": 42})),
        )
        .await;
        s.ours_only_step(
            "guest sets transient bar",
            &[("alice", 1), ("bob", 1), ("guest", 1)],
        )
        .await;
    }

    // BAPI-07/ROOM-16/ROOM-25: properties to the room, roomlist update to the
    // listed users. Upstream publishes the roomlist update straight to the
    // user subjects while the room update takes two hops (backend room
    // subject -> room -> hub -> room subject), so their order races.
    let renamed = json!({"name": "Renamed", "type": 2});
    s.backend_request(json!({"type": "update", "update": {
        "userids": ["alice", "bob"], "properties": renamed}}))
        .await;
    s.step(
        "backend update",
        Cmp::SetAfter(0),
        &[("alice", 2), ("bob", 2), ("guest", 1)],
    )
    .await;

    // BAPI-09/ROOM-18/ROOM-20: in-call change; Talk ids are translated,
    // unknown ones dropped, `changed` is merged into `users`.
    let users = json!([
        participant("talk-alice", "alice", 7, 1),
        participant("talk-bob", "bob", 0, 3),
        participant("talk-guest", "", 0, 4),
        participant("talk-unknown", "carol", 3, 3),
    ]);
    s.backend_request(json!({"type": "incall", "incall": {
        "incall": 7,
        "changed": [participant("talk-alice", "alice", 7, 1), participant("talk-gone", "dave", 1, 3)],
        "users": users}}))
        .await;
    s.step(
        "backend incall",
        Cmp::Ordered,
        &[("alice", 1), ("bob", 1), ("guest", 1)],
    )
    .await;

    if ours {
        // ROOM-22: everybody leaves the call at once.
        s.backend_request_inner(
            json!({"type": "incall", "incall": {"incall": 0, "all": true}}),
            true,
        )
        .await;
        s.ours_only_step(
            "backend incall all",
            &[("alice", 1), ("bob", 1), ("guest", 1)],
        )
        .await;
    }

    // BAPI-10/PERM-03/ROOM-18: bob loses `control` (and `transient-data`);
    // permissions are stripped from what the clients see.
    let mut bob_entry = participant("talk-bob", "bob", 0, 3);
    bob_entry["permissions"] = json!(["publish-media", "publish-screen"]);
    s.backend_request(json!({"type": "participants", "participants": {
        "changed": [bob_entry.clone()],
        "users": [participant("talk-alice", "alice", 0, 1), bob_entry, participant("talk-guest", "", 0, 4)]}}))
        .await;
    s.step(
        "backend participants",
        Cmp::Ordered,
        &[("alice", 1), ("bob", 1), ("guest", 1)],
    )
    .await;

    // RTE-08: control without the permission is silently ignored.
    s.send("bob", control(recipient_session(&sa), json!({"c": "b->a"})))
        .await;
    s.step("control without permission", Cmp::Ordered, &[])
        .await;

    if ours {
        // TRN-01: setting needs `transient-data` once permissions are known.
        s.send(
            "bob",
            transient("t4", json!({"type": "set", "key": "baz", "value": true})),
        )
        .await;
        s.ours_only_step("transient without permission", &[("bob", 1)])
            .await;
    }

    // BAPI-11/ROOM-24: room message from the backend.
    s.backend_request(json!({"type": "message", "message": {
        "data": {"type": "chat", "chat": {"refresh": true}}}}))
        .await;
    s.step(
        "backend message",
        Cmp::Ordered,
        &[("alice", 1), ("bob", 1), ("guest", 1)],
    )
    .await;

    // BAPI-06: disinvite the guest's Talk session: it gets the event and its
    // connection closes (the session ends, so the others see it leave).
    // alice/bob also get a roomlist update (alluserids); that one is
    // published directly while the leave follows the guest's close, so the
    // two race.
    s.backend_request(json!({"type": "disinvite", "disinvite": {
        "userids": [], "sessionids": ["talk-guest"], "alluserids": ["alice", "bob"],
        "properties": renamed}}))
        .await;
    s.step(
        "backend disinvite guest",
        Cmp::SetAfter(0),
        &[("guest", 2), ("alice", 2), ("bob", 2)],
    )
    .await;

    // RES-07/ROOM-14: alice says bye: reply, close; bob sees her leave.
    s.send("alice", json!({"id": "bye", "type": "bye", "bye": {}}))
        .await;
    s.step("alice bye", Cmp::Ordered, &[("alice", 2), ("bob", 1)])
        .await;

    // ROOM-09: leaving answers with an empty room.
    s.send(
        "bob",
        json!({"id": "leave", "type": "room", "room": {"roomid": "", "sessionid": ""}}),
    )
    .await;
    s.step("bob leaves", Cmp::Ordered, &[("bob", 1)]).await;

    // ROOM-09: leaving again without a room: no reply.
    s.send(
        "bob",
        json!({"id": "leave2", "type": "room", "room": {"roomid": "", "sessionid": ""}}),
    )
    .await;
    s.step("bob leaves again", Cmp::Ordered, &[]).await;

    s.send("bob", json!({"id": "bye", "type": "bye", "bye": {}}))
        .await;
    s.step("bob bye", Cmp::Ordered, &[("bob", 2)]).await;

    s.rec
}

// ----- normalisation and comparison -----

fn normalise(v: &Value, ids: &HashMap<String, String>) -> Value {
    match v {
        Value::String(s) => match ids.get(s) {
            Some(p) => Value::String(p.clone()),
            None => v.clone(),
        },
        Value::Array(a) => Value::Array(a.iter().map(|x| normalise(x, ids)).collect()),
        Value::Object(o) => {
            let mut out = serde_json::Map::new();
            for (k, x) in o {
                // Timestamps chosen by the server (internal sessions) differ.
                if k == "lastPing" {
                    continue;
                }
                out.insert(k.clone(), normalise(x, ids));
            }
            Value::Object(out)
        }
        _ => v.clone(),
    }
}

/// Message-level normalisation on top of [`normalise`].
fn normalise_msg(v: &Value, ids: &HashMap<String, String>) -> Value {
    let mut v = normalise(v, ids);
    if v["type"] == "hello" {
        // Version differs by design (0.4.1 vs ours), features are compared
        // separately (`check_features`).
        if let Some(server) = v["hello"].get_mut("server").and_then(Value::as_object_mut) {
            server.remove("version");
            server.remove("features");
        }
    }
    if v["type"] == "event" && v["event"]["type"] == "join" {
        // The list of sessions already in the room comes from a map in
        // upstream (random order).
        if let Some(list) = v["event"]["join"].as_array_mut() {
            list.sort_by_key(|e| e["sessionid"].to_string());
        }
    }
    v
}

fn canonical(msgs: &[Value], cmp: Cmp) -> Vec<String> {
    let mut out: Vec<String> = msgs.iter().map(Value::to_string).collect();
    if let Cmp::SetAfter(n) = cmp {
        if out.len() > n {
            out[n..].sort();
        }
    }
    out
}

fn pretty(msgs: &[String]) -> String {
    msgs.iter().map(|m| format!("      {m}\n")).collect()
}

/// Normalised messages of every step, keyed by step then client; our
/// `transient` messages in compared steps are moved to `extracted`.
type Normalised = Vec<(String, Cmp, bool, BTreeMap<&'static str, Vec<Value>>)>;

fn normalise_recording(
    rec: &Recording,
    extracted: &mut Vec<(String, &'static str, Value)>,
) -> Normalised {
    rec.steps
        .iter()
        .map(|st| {
            let msgs = st
                .msgs
                .iter()
                .map(|(c, ms)| {
                    let mut kept = Vec::new();
                    for m in ms {
                        let m = normalise_msg(m, &rec.ids);
                        if !st.ours_only && m["type"] == "transient" {
                            extracted.push((st.name.clone(), *c, m));
                        } else {
                            kept.push(m);
                        }
                    }
                    (*c, kept)
                })
                .collect();
            (st.name.clone(), st.cmp, st.ours_only, msgs)
        })
        .collect()
}

/// Compares the steps both servers ran; returns the differences.
fn compare(go: &Normalised, ours: &Normalised) -> Vec<String> {
    let go_steps: Vec<_> = go.iter().filter(|s| !s.2).collect();
    let our_steps: Vec<_> = ours.iter().filter(|s| !s.2).collect();
    let go_names: Vec<_> = go_steps.iter().map(|s| &s.0).collect();
    let our_names: Vec<_> = our_steps.iter().map(|s| &s.0).collect();
    assert_eq!(
        go_names, our_names,
        "both runs must have the same compared steps"
    );
    let mut diffs = Vec::new();
    for (g, o) in go_steps.iter().zip(our_steps) {
        for (client, gm) in &g.3 {
            let om = &o.3[client];
            let (gc, oc) = (canonical(gm, g.1), canonical(om, g.1));
            if gc != oc {
                diffs.push(format!(
                    "step {:?}, client {client} ({:?}):\n    Go 0.4.1:\n{}    ours:\n{}",
                    g.0,
                    g.1,
                    pretty(&gc),
                    pretty(&oc)
                ));
            }
        }
    }
    diffs
}

fn step_msgs<'a>(n: &'a Normalised, step: &str) -> &'a BTreeMap<&'static str, Vec<Value>> {
    &n.iter()
        .find(|s| s.0 == step)
        .unwrap_or_else(|| panic!("no step {step}"))
        .3
}

/// Our-only parts (features 0.4.1 lacks), checked against 11fa78b semantics.
fn check_ours_only(ours: &Normalised, extracted: &[(String, &'static str, Value)]) -> Vec<String> {
    let mut diffs = Vec::new();
    let mut expect = |step: &str, client: &'static str, want: Vec<Value>| {
        let got = &step_msgs(ours, step)[client];
        if *got != want {
            diffs.push(format!(
                "ours-only step {step:?}, client {client}:\n    expected (11fa78b):\n{}    got:\n{}",
                pretty(&want.iter().map(Value::to_string).collect::<Vec<_>>()),
                pretty(&got.iter().map(Value::to_string).collect::<Vec<_>>())
            ));
        }
    };
    let tr = |t: Value| json!({"type": "transient", "transient": t});
    let set_foo = tr(json!({"type": "set", "key": "foo", "value": {"x": 1}}));
    expect("alice sets transient foo", "alice", vec![set_foo.clone()]);
    expect("alice sets transient foo", "guest", vec![set_foo]);
    expect("alice sets transient foo", "bob", vec![]);
    let rm_foo = tr(json!({"type": "remove", "key": "foo", "oldvalue": {"x": 1}}));
    let set_bar = tr(json!({"type": "set", "key": "bar", "value": 42}));
    for c in ["alice", "bob", "guest"] {
        expect("bob removes transient foo", c, vec![rm_foo.clone()]);
        expect("guest sets transient bar", c, vec![set_bar.clone()]);
        expect(
            "backend incall all",
            c,
            vec![
                json!({"type": "event", "event": {"target": "participants", "type": "update",
                "update": {"roomid": ROOM, "incall": 0, "all": true}}}),
            ],
        );
    }
    expect(
        "transient without permission",
        "bob",
        vec![json!({"id": "t4", "type": "error", "error": {
            "code": "not_allowed", "message": "Not allowed to update transient data."}})],
    );
    for c in ["alice", "guest"] {
        expect("transient without permission", c, vec![]);
    }
    // TRN-04: the late joiner gets the initial data, nobody else transient
    // data in compared steps.
    let want = vec![(
        "bob joins late".to_owned(),
        "bob",
        tr(json!({"type": "initial", "data": {"foo": {"x": 1}}})),
    )];
    if extracted != want.as_slice() {
        diffs.push(format!(
            "transient messages in compared steps: expected {want:?}, got {extracted:?}"
        ));
    }
    diffs
}

/// HEL-09: ours = 0.4.1's features plus those added up to 11fa78b and the
/// later ones we implement.
fn check_features(go: &Recording, ours: &Recording) -> Vec<String> {
    let mut want = go.features.clone();
    want.insert("transient-data".to_owned());
    want.insert("incall-all".to_owned());
    // Added by later upstream versions (issue 4, see talk_welcome.rs).
    for f in [
        "welcome",
        "hello-v2",
        "switchto",
        "dialout",
        "federation",
        "recipient-call",
        "join-features",
        "chat-relay",
        "changed-users",
    ] {
        want.insert(f.to_owned());
    }
    if go.features.is_empty() || ours.features != want {
        vec![format!(
            "hello features: Go 0.4.1 {:?}, ours {:?}, expected ours {want:?}",
            go.features, ours.features
        )]
    } else {
        Vec::new()
    }
}

/// What each server asked its backend (auth, room join/leave), as a
/// multiset: leave requests are sent asynchronously upstream.
fn backend_calls(t: &Target, ids: &HashMap<String, String>) -> Vec<String> {
    let mut out: Vec<String> = t
        .backend
        .requests()
        .iter()
        .filter(|r| matches!(r.kind.as_str(), "auth" | "room" | "session"))
        .map(|r| normalise(&r.body, ids).to_string())
        .collect();
    out.sort();
    out
}

/// Prints a normalised recording (set `INTEROP_GO_DUMP=1`).
fn dump(label: &str, n: &Normalised) {
    eprintln!("===== {label}");
    for (step, cmp, ours_only, msgs) in n {
        let only = if *ours_only { ", ours only" } else { "" };
        eprintln!("--- {step} ({cmp:?}{only})");
        for (c, ms) in msgs {
            for m in ms {
                eprintln!("  {c}: {m}");
            }
        }
    }
}

/// `step/client` for every expected message that did not arrive.
fn timeouts(n: &Normalised) -> Vec<String> {
    let mut out = Vec::new();
    for (step, _, _, msgs) in n {
        for (c, ms) in msgs {
            if ms.iter().any(|m| m.get("<timeout>").is_some()) {
                out.push(format!("{step}/{c}"));
            }
        }
    }
    out
}

/// One scenario, two servers, same messages (session ids aside).
///
/// ID: HEL-04/05/08/09, ROOM-01/03/04/08/09/12/13/14/16/18/20/22/24/25,
/// RTE-01/03/04/05/08, PERM-02/03, TRN-01..04, BAPI-04/06/07/09/10/11, RES-07.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interop_go_same_messages_as_go_server() {
    let go_backend = FakeBackend::start(SECRET).await;
    let go_server = GoServer::start(&go_backend).await;
    let go = Target {
        label: "Go 0.4.1",
        is_go: true,
        ws_urls: vec![spreed_url(go_server.addr)],
        bases: vec![format!("http://{}/", go_server.addr)],
        backend: go_backend,
    };
    let our_backend = FakeBackend::start(SECRET).await;
    let (_server, addr) = start_server(&config_for(&our_backend.url(), "")).await;
    let ours = Target {
        label: "ours",
        is_go: false,
        ws_urls: vec![spreed_url(addr)],
        bases: vec![format!("http://{addr}/")],
        backend: our_backend,
    };

    let (go_rec, our_rec) = tokio::join!(run_scenario(&go), run_scenario(&ours));

    let mut go_extracted = Vec::new();
    let mut our_extracted = Vec::new();
    let go_n = normalise_recording(&go_rec, &mut go_extracted);
    let our_n = normalise_recording(&our_rec, &mut our_extracted);
    assert!(
        go_extracted.is_empty(),
        "Go 0.4.1 sent transient data?! {go_extracted:?}"
    );
    if std::env::var_os("INTEROP_GO_DUMP").is_some() {
        dump("Go 0.4.1", &go_n);
        dump("ours", &our_n);
    }
    // The expected counts come from upstream semantics; the Go server must
    // meet every one of them, otherwise the scenario itself is wrong (and two
    // equal timeouts must not count as agreement).
    let go_timeouts = timeouts(&go_n);
    assert!(
        go_timeouts.is_empty(),
        "the Go server did not send the expected messages in {go_timeouts:?}; log tail:\n{}",
        go_server.child.log_tail(4000)
    );

    let mut diffs = compare(&go_n, &our_n);
    diffs.extend(check_ours_only(&our_n, &our_extracted));
    diffs.extend(check_features(&go_rec, &our_rec));

    // BAPI-04: same HTTP answers to the backend requests (ours-only ones aside).
    let compared = |rec: &Recording| -> Vec<Value> {
        rec.api
            .iter()
            .filter(|a| a["ours_only"] != true)
            .cloned()
            .collect()
    };
    if compared(&go_rec) != compared(&our_rec) {
        diffs.push(format!(
            "backend API answers: Go {:?}, ours {:?}",
            go_rec.api, our_rec.api
        ));
    }
    for a in our_rec.api.iter().filter(|a| a["ours_only"] == true) {
        if a["status"] != 200 || a["body"] != json!({}) {
            diffs.push(format!("ours-only backend request answered {a}"));
        }
    }

    // HEL-04/ROOM-01/ROOM-10: the same requests reached the backends.
    let go_calls = backend_calls(&go, &go_rec.ids);
    let our_calls = backend_calls(&ours, &our_rec.ids);
    if go_calls != our_calls {
        diffs.push(format!(
            "backend calls differ:\n    Go 0.4.1:\n{}    ours:\n{}",
            pretty(&go_calls),
            pretty(&our_calls)
        ));
    }

    assert!(
        diffs.is_empty(),
        "{} difference(s) between Go 0.4.1 and ours:\n{}\nGo log tail:\n{}",
        diffs.len(),
        diffs.join("\n"),
        go_server.child.log_tail(4000)
    );
}

/// Issue 7: the same scenario against one of our servers and against three
/// of them joined by a real `nats-server`, each client on another node and
/// the backend requests going to the nodes in turn: every client sees the
/// same messages in the same order (the same comparison as against Go).
#[tokio::test]
async fn cluster_of_three_same_messages_as_one_server() {
    let one_backend = FakeBackend::start(SECRET).await;
    let (_one, addr) = start_server(&config_for(&one_backend.url(), "")).await;
    let one = Target {
        label: "one server",
        is_go: false,
        ws_urls: vec![spreed_url(addr)],
        bases: vec![format!("http://{addr}/")],
        backend: one_backend,
    };
    let nats = NatsServer::start().await.expect("nats-server starts");
    let cluster_backend = FakeBackend::start(SECRET).await;
    let extra = format!("[nats]\nurl = {}\npresenceinterval = 1\n", nats.url());
    let mut nodes = Vec::new();
    for _ in 0..3 {
        let (server, addr) = start_server(&config_for(&cluster_backend.url(), &extra)).await;
        let bus = server.nats.clone().expect("NATS bus");
        tokio::time::timeout(Duration::from_secs(10), bus.wait_connected(true))
            .await
            .expect("connected to NATS");
        nodes.push((server, addr));
    }
    // Every node knows the others (`cluster.nodes`) before the scenario.
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let cluster = Target {
        label: "three servers",
        is_go: false,
        ws_urls: nodes.iter().map(|(_, a)| spreed_url(*a)).collect(),
        bases: nodes.iter().map(|(_, a)| format!("http://{a}/")).collect(),
        backend: cluster_backend,
    };

    let one_rec = run_scenario(&one).await;
    let cluster_rec = run_scenario(&cluster).await;
    let mut one_extracted = Vec::new();
    let mut cluster_extracted = Vec::new();
    let one_n = normalise_recording(&one_rec, &mut one_extracted);
    let cluster_n = normalise_recording(&cluster_rec, &mut cluster_extracted);
    let one_timeouts = timeouts(&one_n);
    assert!(one_timeouts.is_empty(), "one server: {one_timeouts:?}");
    let mut diffs = compare(&one_n, &cluster_n);
    diffs.extend(check_ours_only(&cluster_n, &cluster_extracted));
    if one_rec.api != cluster_rec.api {
        diffs.push(format!(
            "backend API answers: one {:?}, cluster {:?}",
            one_rec.api, cluster_rec.api
        ));
    }
    if !diffs.is_empty() {
        dump("one server", &one_n);
        dump("three servers", &cluster_n);
    }
    assert!(
        diffs.is_empty(),
        "{} difference(s) between one server and three:\n{}",
        diffs.len(),
        diffs.join("\n")
    );
}
