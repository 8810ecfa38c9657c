//! The NATS bus against a real `nats-server` (testkit's guard): two buses on
//! one server stand for two signaling servers.

use hub::bus::nats::{NatsBus, BATCH_SUBJECT, MAX_QUEUED_PUBLISHES};
use hub::bus::{Bus, BusError, BusHandler, BusMessage, BusPayload, Subscription};
use parking_lot::Mutex;
use runtime::metrics::Registry;
use std::sync::{Arc, Weak};
use std::time::Duration;
use testkit::{assert_eventually, NatsServer};

const WAIT: Duration = Duration::from_secs(15);

/// Records the first permission of every message (the tests' sequence numbers).
#[derive(Default)]
struct Rec(Mutex<Vec<String>>);

impl BusHandler for Rec {
    fn on_bus_message(&self, _subject: &str, msg: &BusMessage) {
        if let BusPayload::Permissions(p) = &msg.payload {
            self.0.lock().push(p.first().cloned().unwrap_or_default());
        }
    }
}

impl Rec {
    fn got(&self) -> Vec<String> {
        self.0.lock().clone()
    }
    fn count(&self, tag: &str) -> usize {
        self.0.lock().iter().filter(|t| t.as_str() == tag).count()
    }
}

fn msg(tag: &str) -> BusMessage {
    BusMessage::new(BusPayload::Permissions(Arc::new(vec![tag.to_owned()])))
}

fn sub(bus: &Arc<NatsBus>, subject: &str, rec: &Arc<Rec>) -> Subscription {
    let h: Weak<dyn BusHandler> = Arc::downgrade(&(rec.clone() as Arc<dyn BusHandler>));
    bus.subscribe(subject, h).expect("subscribe")
}

/// Recorder `i` subscribes `subject(i)`, for each of `recs`.
fn sub_each(
    bus: &Arc<NatsBus>,
    recs: &[Arc<Rec>],
    subject: impl Fn(usize) -> String,
) -> Vec<Subscription> {
    recs.iter()
        .enumerate()
        .map(|(i, r)| sub(bus, &subject(i), r))
        .collect()
}

/// Session subjects `session.s<i>` and user subjects `user.dTEyMw<i>`.
fn session_or_user(i: usize, session: bool) -> String {
    if session {
        format!("session.s{i}")
    } else {
        format!("user.dTEyMw{i}")
    }
}

async fn nats() -> NatsServer {
    NatsServer::start().await.expect("nats-server starts")
}

async fn bus(nats: &NatsServer) -> (Arc<NatsBus>, Registry) {
    let registry = Registry::new();
    let bus = NatsBus::connect(&nats.url(), &registry).expect("valid url");
    tokio::time::timeout(WAIT, bus.wait_connected(true))
        .await
        .expect("connects");
    (bus, registry)
}

/// Publish `probe` on `subject` from `from` until `rec` has seen it: then the
/// NATS server has processed `rec`'s subscription (SUB is asynchronous).
async fn barrier(from: &Arc<NatsBus>, subject: &str, rec: &Rec) {
    for _ in 0..150 {
        from.publish(subject, msg("probe")).expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if rec.count("probe") > 0 {
            rec.0.lock().clear();
            return;
        }
    }
    panic!("subscription on {subject} never became active");
}

#[tokio::test]
async fn publish_subscribe_unsubscribe_on_one_node() {
    let nats = nats().await;
    let (bus, registry) = bus(&nats).await;
    assert!(registry.render().contains("signaling_nats_connected 1"));
    let rec = Arc::new(Rec::default());
    // The SUB is queued before the PUBs, so no barrier is needed on one node.
    let s = sub(&bus, "session.a", &rec);
    for i in 0..3 {
        bus.publish("session.a", msg(&i.to_string()))
            .expect("publish");
    }
    assert_eventually!(WAIT, rec.got().len() == 3);
    assert_eq!(rec.got(), ["0", "1", "2"]);

    // A second local handler shares the one NATS subscription.
    let rec2 = Arc::new(Rec::default());
    let s2 = sub(&bus, "session.a", &rec2);
    bus.publish("session.a", msg("3")).expect("publish");
    assert_eventually!(WAIT, rec2.got() == ["3"]);
    assert_eventually!(WAIT, rec.got().len() == 4);
    assert_eq!(bus.subject_count(), 1);

    drop(s);
    drop(s2);
    assert_eq!(bus.subject_count(), 0);
    let marker = Arc::new(Rec::default());
    let _m = sub(&bus, "session.marker", &marker);
    bus.publish("session.a", msg("late")).expect("publish");
    bus.publish("session.marker", msg("m")).expect("publish");
    assert_eventually!(WAIT, marker.got() == ["m"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(rec.got().len(), 4, "{:?}", rec.got());
    assert_eq!(rec2.got().len(), 1);

    assert!(matches!(
        bus.publish("a b", msg("x")),
        Err(BusError::InvalidSubject(_))
    ));
}

#[tokio::test]
async fn messages_cross_nodes_in_order() {
    let nats = nats().await;
    let (a, _) = bus(&nats).await;
    let (b, _) = bus(&nats).await;
    let rec = Arc::new(Rec::default());
    let _s = sub(&b, "session.b", &rec);
    barrier(&a, "session.b", &rec).await;
    let n = 2000;
    for i in 0..n {
        a.publish("session.b", msg(&i.to_string()))
            .expect("publish");
    }
    assert_eventually!(WAIT, rec.got().len() >= n);
    let want: Vec<String> = (0..n).map(|i| i.to_string()).collect();
    assert_eq!(rec.got(), want);
}

/// Sessions and users do not cost NATS subscriptions: a node holds one
/// wildcard for all sessions and one for all users, however many it has
/// (nats-server's own count, `/subsz`), and still gets what other nodes
/// send each of them, and nothing for subjects nobody here listens on.
#[tokio::test]
async fn sessions_and_users_share_one_subscription_per_node() {
    let nats = nats().await;
    let (a, _) = bus(&nats).await;
    let (b, registry) = bus(&nats).await;
    let probe = Arc::new(Rec::default());
    let _p = sub(&b, "session.probe", &probe);
    barrier(&a, "session.probe", &probe).await;
    let before = nats.subscription_count().await.expect("/subsz");
    let text = registry.render();
    // The two wildcards and the batch subject.
    assert!(text.contains("signaling_nats_subscriptions 3"), "{text}");

    let n = 200;
    let recs: Vec<Arc<Rec>> = (0..2 * n).map(|_| Arc::new(Rec::default())).collect();
    let subject = |i: usize| session_or_user(i, i < n);
    let _subs = sub_each(&b, &recs, subject);
    // A SUB would be on the connection before this (one ordered queue).
    barrier(&a, &subject(2 * n - 1), &recs[2 * n - 1]).await;
    assert_eq!(
        nats.subscription_count().await.expect("/subsz"),
        before,
        "sessions and users added NATS subscriptions"
    );
    assert!(registry.render().contains("signaling_nats_subscriptions 3"));

    a.publish("session.nobody", msg("stray")).expect("publish");
    for (i, _) in recs.iter().enumerate() {
        a.publish(&subject(i), msg(&i.to_string()))
            .expect("publish");
    }
    for (i, r) in recs.iter().enumerate() {
        assert_eventually!(WAIT, r.got().len() == 1);
        assert_eq!(r.got(), [i.to_string()]);
    }
    assert!(probe.got().is_empty(), "{:?}", probe.got());

    // Other subjects (rooms) still have one subscription each, shared by
    // their local handlers.
    let room = Arc::new(Rec::default());
    let room2 = Arc::new(Rec::default());
    let _r = sub(&b, "room.cm9vbQ", &room);
    let _r2 = sub(&b, "room.cm9vbQ", &room2);
    barrier(&a, "room.cm9vbQ", &room).await;
    assert_eq!(nats.subscription_count().await.expect("/subsz"), before + 1);
    assert!(registry.render().contains("signaling_nats_subscriptions 4"));
}

/// Restart nats-server on the same port. Subscriptions come back by
/// themselves; what this node publishes to its own subscriptions during the
/// outage is delivered at once (local handlers do not depend on NATS). Messages from other nodes during the
/// outage are lost (core NATS keeps nothing), so they are not sent here.
#[tokio::test]
async fn reconnects_after_nats_restart_without_losing_local_messages() {
    let mut nats = nats().await;
    let (a, registry) = bus(&nats).await;
    let (b, _) = bus(&nats).await;
    let local = Arc::new(Rec::default());
    let remote = Arc::new(Rec::default());
    let _l = sub(&a, "session.local", &local);
    let _r = sub(&b, "session.remote", &remote);
    barrier(&a, "session.local", &local).await;
    barrier(&a, "session.remote", &remote).await;

    nats.stop();
    tokio::time::timeout(WAIT, a.wait_connected(false))
        .await
        .expect("notices the outage");
    assert!(registry.render().contains("signaling_nats_connected 0"));
    for i in 0..50 {
        a.publish("session.local", msg(&i.to_string()))
            .expect("queued during the outage");
    }
    let want: Vec<String> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(local.got(), want, "local delivery waited for NATS");
    nats.restart().await.expect("nats-server restarts");
    tokio::time::timeout(WAIT, a.wait_connected(true))
        .await
        .expect("reconnects");
    tokio::time::timeout(WAIT, b.wait_connected(true))
        .await
        .expect("reconnects");

    // Nothing comes back twice (no echo from NATS after the reconnect).
    assert_eventually!(WAIT, {
        b.publish("session.local", msg("probe")).expect("publish");
        tokio::time::sleep(Duration::from_millis(100)).await;
        local.count("probe") > 0
    });
    assert_eq!(
        local.got().len(),
        50 + local.count("probe"),
        "{:?}",
        local.got()
    );

    // Across nodes once both have re-subscribed.
    barrier(&a, "session.remote", &remote).await;
    for i in 0..100 {
        a.publish("session.remote", msg(&i.to_string()))
            .expect("publish");
    }
    assert_eventually!(WAIT, remote.got().len() >= 100);
    let want: Vec<String> = (0..100).map(|i| i.to_string()).collect();
    assert_eq!(remote.got(), want);

    let text = registry.render();
    assert!(text.contains("signaling_nats_connected 1"), "{text}");
    assert!(text.contains("signaling_nats_reconnects_total 1"), "{text}");
}

/// While NATS is down, publishes wait up to the bound; beyond it they are
/// refused for other servers (and counted), not silently dropped.
#[tokio::test]
async fn full_queue_refuses_with_an_error_and_a_metric() {
    let mut nats = nats().await;
    let (a, registry) = bus(&nats).await;
    nats.stop();
    tokio::time::timeout(WAIT, a.wait_connected(false))
        .await
        .expect("notices the outage");
    let mut refused = 0;
    // The client's own queue (2048) takes some before ours fills.
    for i in 0..MAX_QUEUED_PUBLISHES + 4096 {
        match a.publish("session.x", msg(&i.to_string())) {
            Ok(()) => {}
            Err(BusError::Overloaded(_)) => refused += 1,
            Err(e) => panic!("{e}"),
        }
        if i % 4096 == 0 {
            // Let the client task move what it can into the client's queue.
            tokio::task::yield_now().await;
        }
    }
    assert!(refused > 0);
    let text = registry.render();
    assert!(
        text.contains(&format!("signaling_nats_publish_rejected_total {refused}")),
        "{text}"
    );
}

/// A bus that has heard every other node for a while (a short presence
/// interval, so it settles within the test): it may batch.
async fn settled_bus(nats: &NatsServer) -> (Arc<NatsBus>, Registry) {
    let (bus, registry) = bus(nats).await;
    bus.set_presence_interval(Duration::from_millis(200));
    // Settled after an interval and a second.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    (bus, registry)
}

fn metric(registry: &Registry, name: &str) -> u64 {
    let text = registry.render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in {text}"))
}

/// A raw NATS connection counting what arrives on `subject`.
async fn watch(nats: &NatsServer, subject: &str) -> (async_nats::Client, Arc<Mutex<usize>>) {
    let client = async_nats::connect(nats.url()).await.expect("raw client");
    let mut sub = client.subscribe(subject.to_owned()).await.expect("sub");
    // `flush` only writes the socket: a request nobody answers comes back
    // ("no responders") once the server processed the SUB before it.
    let answer = client.request("watch.sync", bytes::Bytes::new()).await;
    assert!(
        matches!(&answer, Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders),
        "{answer:?}"
    );
    let count = Arc::new(Mutex::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        use futures_util::StreamExt;
        while sub.next().await.is_some() {
            *c.lock() += 1;
        }
    });
    (client, count)
}

/// What a node queued for sessions and users at one moment crosses as few
/// NATS messages on the batch subject, not one `session.*`/`user.*` message
/// each, and every addressee on the other node gets its messages in order;
/// a room message queued in the middle keeps its place (one handler
/// listening on a session and the room sees both in publish order).
#[tokio::test]
async fn queued_messages_cross_in_batches_to_every_addressee() {
    let nats = nats().await;
    let (a, registry) = settled_bus(&nats).await;
    let (b, _) = settled_bus(&nats).await;
    let n = 50;
    let recs: Vec<Arc<Rec>> = (0..n).map(|_| Arc::new(Rec::default())).collect();
    let subject = |i: usize| session_or_user(i, i.is_multiple_of(2));
    let _subs = sub_each(&b, &recs, subject);
    let _room = sub(&b, "room.cm9vbQ", &recs[0]);
    barrier(&a, "room.cm9vbQ", &recs[0]).await;
    let (_w, on_sessions) = watch(&nats, "session.*").await;
    let (_w2, on_batches) = watch(&nats, BATCH_SUBJECT).await;

    // No await in between: all of it is queued before the NATS task runs.
    let rounds = 20;
    for round in 0..rounds {
        for i in 0..n {
            a.publish(&subject(i), msg(&format!("{i}/{round}")))
                .expect("publish");
        }
        if round == rounds / 2 {
            a.publish("room.cm9vbQ", msg("room")).expect("publish");
        }
    }
    for (i, r) in recs.iter().enumerate() {
        let mut want: Vec<String> = (0..rounds).map(|round| format!("{i}/{round}")).collect();
        if i == 0 {
            want.insert(rounds / 2 + 1, "room".to_owned());
        }
        assert_eventually!(WAIT, r.got().len() >= want.len());
        assert_eq!(r.got(), want, "addressee {i}");
    }
    let batched = metric(&registry, "signaling_nats_batched_messages_total");
    let batches = metric(&registry, "signaling_nats_batches_total");
    assert_eq!(batched, (n * rounds) as u64);
    assert!((1..10).contains(&batches), "{batches} batches");
    assert_eventually!(WAIT, *on_batches.lock() as u64 == batches);
    // Only the barrier's probes went to session subjects one by one.
    assert_eq!(*on_sessions.lock(), 0);
}

/// While an older node is heard (its sender id lacks the mark of a node
/// that reads batches), every message goes on its own subject, so that
/// node, which listens on `session.*` but not on the batch subject, gets
/// each one; the newer node gets them all too.
#[tokio::test]
async fn an_older_node_gets_every_message_on_its_own_subject() {
    let nats = nats().await;
    let (a, registry) = settled_bus(&nats).await;
    let (b, _) = settled_bus(&nats).await;
    let rec = Arc::new(Rec::default());
    let _s = sub(&b, "session.b", &rec);
    barrier(&a, "session.b", &rec).await;
    let burst = |tag: &str| {
        for i in 0..100 {
            a.publish("session.b", msg(&format!("{tag}{i}")))
                .expect("publish");
        }
    };
    // Batches go out while only newer nodes are heard (the test could fail).
    burst("x");
    assert_eventually!(WAIT, rec.got().len() == 100);
    let batches = metric(&registry, "signaling_nats_batches_total");
    assert!(batches > 0);

    // An older node: listens on session subjects, and speaks (here on a
    // subject node A listens on) with a sender id of the old kind.
    let (old, on_sessions) = watch(&nats, "session.*").await;
    let heard = Arc::new(Rec::default());
    let _h = sub(&a, "session.a", &heard);
    let envelope = hub::bus::encode_envelope_from(&msg("old"), Some(("0123456789abcdef", 1)));
    old.publish("session.a", envelope.into())
        .await
        .expect("pub");
    assert_eventually!(WAIT, heard.count("old") == 1);
    // Its own message came back to it (a plain client has echo on).
    assert_eventually!(WAIT, *on_sessions.lock() == 1);
    *on_sessions.lock() = 0;

    rec.0.lock().clear();
    burst("y");
    assert_eventually!(WAIT, rec.got().len() == 100);
    let want: Vec<String> = (0..100).map(|i| format!("y{i}")).collect();
    assert_eq!(rec.got(), want);
    assert_eventually!(WAIT, *on_sessions.lock() == 100);
    assert_eq!(metric(&registry, "signaling_nats_batches_total"), batches);
}
