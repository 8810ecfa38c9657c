//! Room state under random sequences of what clients do (proptest): join,
//! leave, bye, a dropped connection and its resume. After every step each
//! session in the room, replaying the `join`/`leave` events it received,
//! must know exactly the members a simple model says are there; sessions
//! outside the room must receive no room events; a resumed session catches
//! up with what happened while it was away; a newcomer's `join` events list
//! exactly the members. The server runs in-process, once for all
//! cases; every case uses its own room and users.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

const USERS: usize = 4;

#[derive(Clone, Copy, Debug)]
enum Op {
    /// Say hello first if needed; join the room if not in it.
    Join,
    /// Leave the room if in it.
    Leave,
    /// End the session (`bye`).
    Bye,
    /// Close the connection without `bye`: the session stays a member.
    Drop,
    /// Resume a dropped session.
    Resume,
}

fn op() -> impl Strategy<Value = (usize, Op)> {
    (
        0..USERS,
        prop_oneof![
            3 => Just(Op::Join),
            1 => Just(Op::Leave),
            1 => Just(Op::Bye),
            1 => Just(Op::Drop),
            1 => Just(Op::Resume),
        ],
    )
}

/// One user as the model sees it, plus what its client has observed.
#[derive(Default)]
struct User {
    client: Option<TestClient>,
    session: Option<String>,
    resume: Option<String>,
    in_room: bool,
    /// The members this session knows of from its events.
    seen: BTreeSet<String>,
}

struct Case<'a> {
    s: &'a TestServer,
    room: String,
    tag: usize,
    users: Vec<User>,
    syncs: usize,
    /// Steps that changed something, per kind of `Op`.
    done: [usize; 5],
}

impl Case<'_> {
    fn members(&self) -> BTreeSet<String> {
        self.users
            .iter()
            .filter(|u| u.in_room)
            .filter_map(|u| u.session.clone())
            .collect()
    }

    /// Read everything the client of user `i` was sent until now (a
    /// request answered after all of it) and apply the room events.
    async fn sync(&mut self, i: usize) {
        self.syncs += 1;
        let id = format!("sync-{}", self.syncs);
        let u = &mut self.users[i];
        let Some(c) = u.client.as_mut() else { return };
        c.send_json(&json!({"id": id, "type": "room"})).await;
        loop {
            let m = c.recv().await;
            if m["id"] == id.as_str() {
                assert_eq!(m["error"]["code"], "invalid_format", "{m}");
                return;
            }
            if m["type"] != "event" || m["event"]["target"] != "room" {
                continue;
            }
            assert!(u.in_room, "user {i} got a room event outside the room: {m}");
            match m["event"]["type"].as_str() {
                Some("join") => {
                    for j in m["event"]["join"].as_array().unwrap() {
                        let sid = j["sessionid"].as_str().unwrap().to_owned();
                        assert!(u.seen.insert(sid), "joined twice: {m}");
                    }
                }
                Some("leave") => {
                    for l in m["event"]["leave"].as_array().unwrap() {
                        let sid = l.as_str().unwrap();
                        assert!(u.seen.remove(sid), "left without joining: {m}");
                    }
                }
                _ => {}
            }
        }
    }

    async fn step(&mut self, i: usize, op: Op) {
        let url = self.s.backend.backend_url();
        let u = &mut self.users[i];
        match op {
            Op::Join if u.client.is_none() && u.session.is_some() => return, // dropped
            Op::Join if u.in_room => return,
            Op::Join => {
                if u.client.is_none() {
                    let mut c = self.s.client().await;
                    c.hello_user(&url, &format!("p{}-{i}", self.tag)).await;
                    u.session = c.session_id().map(str::to_owned);
                    u.resume = c.resume_id().map(str::to_owned);
                    u.client = Some(c);
                }
                let c = u.client.as_mut().unwrap();
                let r = c
                    .join_room(&self.room, &format!("talk-{}-{i}", self.tag))
                    .await;
                assert_eq!(r["room"]["roomid"], self.room.as_str(), "{r}");
                u.in_room = true;
                u.seen.clear();
            }
            Op::Leave if u.in_room && u.client.is_some() => {
                let c = u.client.as_mut().unwrap();
                let r = c.leave_room().await;
                assert_eq!(r["room"]["roomid"], "", "{r}");
                // Events sent before the leave are not checked any more.
                self.sync(i).await;
                let u = &mut self.users[i];
                u.in_room = false;
                u.seen.clear();
            }
            Op::Bye if u.client.is_some() => {
                let r = u.client.as_mut().unwrap().bye().await;
                assert_eq!(r["type"], "bye", "{r}");
                *u = User::default();
            }
            Op::Drop if u.client.is_some() => {
                u.client.take().unwrap().close().await;
            }
            Op::Resume if u.client.is_none() && u.session.is_some() => {
                let mut c = self.s.client().await;
                let r = c.hello_resume(u.resume.as_ref().unwrap()).await;
                assert_eq!(
                    r["hello"]["sessionid"],
                    u.session.as_deref().unwrap(),
                    "{r}"
                );
                u.client = Some(c);
            }
            _ => return,
        }
        self.done[op as usize] += 1;
        // In a cluster, what the step made other nodes send is delivered
        // asynchronously; one server has sent it all by now.
        self.s.settle().await;
        let members = self.members();
        for j in 0..USERS {
            self.sync(j).await;
            let u = &self.users[j];
            if u.in_room && u.client.is_some() {
                assert_eq!(u.seen, members, "user {j} after user {i} did {op:?}");
            }
        }
    }

    /// A newcomer sees exactly the members (and itself); then everyone ends.
    async fn finish(mut self) -> [usize; 5] {
        let mut c = self.s.client().await.skip("message");
        c.hello_user(
            &self.s.backend.backend_url(),
            &format!("p{}-newcomer", self.tag),
        )
        .await;
        let me = c.session_id().unwrap().to_owned();
        c.join_room(&self.room, &format!("talk-{}-newcomer", self.tag))
            .await;
        // The members already there first, then the join event of its own.
        let mut listed = BTreeSet::new();
        while !listed.contains(&me) {
            let m = c
                .recv_matching(|m| m["event"]["target"] == "room" && m["event"]["type"] == "join")
                .await;
            for j in m["event"]["join"].as_array().unwrap() {
                assert!(
                    listed.insert(j["sessionid"].as_str().unwrap().to_owned()),
                    "{m}"
                );
            }
        }
        let mut want = self.members();
        want.insert(me);
        assert_eq!(listed, want, "newcomer's join events");
        c.bye().await;
        for i in 0..USERS {
            let u = &mut self.users[i];
            if u.client.is_none() && u.session.is_some() {
                let mut r = self.s.client().await;
                r.hello_resume(u.resume.as_ref().unwrap()).await;
                u.client = Some(r);
            }
            if let Some(mut c) = u.client.take() {
                c.bye().await;
            }
        }
        self.done
    }
}

#[test]
fn room_membership_follows_the_model() {
    membership_follows_the_model(Topology::Single);
}

/// The same on three nodes (each client on the next one in turn).
#[test]
fn room_membership_follows_the_model_in_a_cluster() {
    membership_follows_the_model(Topology::Cluster);
}

fn membership_follows_the_model(t: Topology) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let s = rt.block_on(TestServer::start_on(t));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(32);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 200,
        // A failure prints its minimal sequence; nothing is written to disk.
        failure_persistence: None,
        ..Config::default()
    });
    let counter = AtomicUsize::new(0);
    let done = std::cell::RefCell::new([0usize; 5]);
    let result = runner.run(&proptest::collection::vec(op(), 1..30), |ops| {
        let tag = counter.fetch_add(1, Ordering::Relaxed);
        rt.block_on(async {
            let mut case = Case {
                s: &s,
                room: format!("prop-room-{tag}"),
                tag,
                users: (0..USERS).map(|_| User::default()).collect(),
                syncs: 0,
                done: [0; 5],
            };
            for (i, op) in ops {
                case.step(i, op).await;
            }
            let counts = case.finish().await;
            for (total, n) in done.borrow_mut().iter_mut().zip(counts) {
                *total += n;
            }
        });
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    // The generated sequences did exercise every kind of step.
    let done = done.into_inner();
    eprintln!("steps done (join, leave, bye, drop, resume): {done:?}");
    assert!(done.iter().all(|n| *n > 0), "{done:?}");
    // Every case cleaned up after itself: no room is left.
    rt.block_on(async {
        assert_eventually!(s.stats_sum("rooms").await == 0);
    });
}
