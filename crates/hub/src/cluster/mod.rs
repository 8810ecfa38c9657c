//! Questions one server of a cluster asks the others, over NATS
//! request/reply: who holds the session a client wants to resume (then the
//! connection is relayed there, see [`crate::cluster::relay`]), where a publisher on
//! another server streams from (so a subscriber here can join it), a
//! dial-out for a bridge connected elsewhere, and how many sessions of a
//! backend with a session limit the others have.
//!
//! Every node answers every question, `answer: null` when it has nothing, so
//! the asker stops as soon as all nodes it knows of (from their
//! `cluster.nodes` reports) said no, instead of always waiting for the
//! timeout. A node it does not know yet (just started) may still answer
//! before the timeout.

pub mod nodes;
mod publishers;
pub mod relay;

pub(crate) use publishers::{
    announce_publisher_replaced, publisher_location, remote_publisher, remote_publisher_replaced,
};

use async_nats::Client;
use futures_util::StreamExt;
use proto::cluster::{
    ClusterAnswer, DialoutAnswer, DialoutRequest, PublisherNews, PublisherRequest, RandomSeen,
    ResumeRequest, RoomQuestion, RoomSessionQuestion, SessionCountQuestion, DIALOUT_SUBJECT,
    PUBLISHER_NEWS_SUBJECT, PUBLISHER_SUBJECT, RANDOM_SUBJECT, RESUME_SUBJECT,
    ROOM_SESSION_SUBJECT, ROOM_SUBJECT, SESSION_COUNT_SUBJECT,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::bus::nats::NatsBus;
use crate::Hub;

/// How long an asker waits for answers to a quick question (resume,
/// publisher). The holder answers from memory, so this only matters when a
/// node is unreachable.
pub const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// This server's side of the cluster's request/reply traffic.
pub struct Cluster {
    nats: Arc<NatsBus>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish()
    }
}

impl Cluster {
    pub fn new(nats: Arc<NatsBus>) -> Cluster {
        Cluster { nats }
    }

    pub fn client(&self) -> Option<Client> {
        self.nats.client()
    }

    /// Ask the other nodes; the first answer with something in it wins.
    /// `None` once `peers` nodes said no (when `peers` > 0), at the timeout,
    /// or when NATS is not there.
    pub async fn ask<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: &str,
        question: &Q,
        peers: usize,
        timeout: Duration,
    ) -> Option<A> {
        self.answers(subject, question, peers, timeout, true)
            .await
            .pop()
    }

    /// Ask the other nodes and collect every answer with something in it,
    /// until `peers` nodes answered or the timeout.
    pub async fn ask_all<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: &str,
        question: &Q,
        peers: usize,
        timeout: Duration,
    ) -> Vec<A> {
        self.answers(subject, question, peers, timeout, false).await
    }

    async fn answers<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: &str,
        question: &Q,
        peers: usize,
        timeout: Duration,
        first: bool,
    ) -> Vec<A> {
        let mut found = Vec::new();
        let Some(client) = self.client() else {
            return found;
        };
        let Ok(body) = serde_json::to_vec(question) else {
            return found;
        };
        let inbox = client.new_inbox();
        // The reply subscription reaches the NATS server before the
        // question: both go through this one connection, in order.
        let Ok(mut answers) = client.subscribe(inbox.clone()).await else {
            return found;
        };
        if let Err(e) = client
            .publish_with_reply(subject.to_owned(), inbox, body.into())
            .await
        {
            debug!(subject, error = %e, "cluster question not sent");
            return found;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut heard = 0;
        while let Ok(Some(m)) = tokio::time::timeout_at(deadline, answers.next()).await {
            match serde_json::from_slice::<ClusterAnswer<A>>(&m.payload) {
                Ok(a) => {
                    heard += 1;
                    if let Some(a) = a.answer {
                        found.push(a);
                        if first {
                            break;
                        }
                    }
                    if peers > 0 && heard >= peers {
                        break;
                    }
                }
                Err(e) => debug!(subject, error = %e, "ignoring cluster answer"),
            }
        }
        found
    }
}

fn answer<T: Serialize>(node: &str, answer: Option<T>) -> Vec<u8> {
    serde_json::to_vec(&ClusterAnswer {
        node: node.to_owned(),
        answer,
    })
    .unwrap_or_default()
}

/// Answer the other nodes' questions until `shutdown`. Each question is
/// handled in its own task: a dial-out waits for a bridge for up to 45 s.
///
/// Long because it is one flat `match` over the question subjects, each
/// arm decoding the question and calling the function that answers it.
pub(crate) async fn serve(hub: Weak<Hub>, cluster: Arc<Cluster>, shutdown: CancellationToken) {
    // The bus creates its client right after it started; wait for it.
    let client = loop {
        if let Some(c) = cluster.client() {
            break c;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    };
    let mut subs = Vec::new();
    for subject in [
        RESUME_SUBJECT,
        PUBLISHER_SUBJECT,
        DIALOUT_SUBJECT,
        ROOM_SUBJECT,
        ROOM_SESSION_SUBJECT,
        SESSION_COUNT_SUBJECT,
        RANDOM_SUBJECT,
        PUBLISHER_NEWS_SUBJECT,
    ] {
        match client.subscribe(subject.to_owned()).await {
            Ok(s) => subs.push(s),
            Err(e) => {
                warn!(subject, error = %e, "cannot answer cluster questions");
                return;
            }
        }
    }
    let mut questions = futures_util::stream::select_all(subs);
    loop {
        let m = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = questions.next() => match m { Some(m) => m, None => return },
        };
        let Some(hub) = hub.upgrade() else { return };
        if m.subject.as_str() == RANDOM_SUBJECT {
            match serde_json::from_slice::<RandomSeen>(&m.payload) {
                Ok(r) if *r.node != *hub.node_id => {
                    hub.replays
                        .check_and_record(&r.backend, &r.random, std::time::Instant::now());
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "bad random news"),
            }
            continue;
        }
        if m.subject.as_str() == PUBLISHER_NEWS_SUBJECT {
            match serde_json::from_slice::<PublisherNews>(&m.payload) {
                Ok(n) if *n.node != *hub.node_id => {
                    if let Some(stream) = crate::mcu::StreamType::parse(&n.stream) {
                        remote_publisher_replaced(&hub, &n.session, stream);
                    }
                }
                Ok(_) => {}
                Err(e) => debug!(error = %e, "bad publisher news"),
            }
            continue;
        }
        let Some(reply) = m.reply.clone() else {
            continue;
        };
        let client = client.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let body = match m.subject.as_str() {
                RESUME_SUBJECT => match serde_json::from_slice::<ResumeRequest>(&m.payload) {
                    Ok(q) => {
                        let found =
                            crate::cluster::relay::take_over(&hub, &client, q, shutdown).await;
                        answer(&hub.node_id, found.then_some(true))
                    }
                    Err(e) => return debug!(error = %e, "bad resume question"),
                },
                PUBLISHER_SUBJECT => match serde_json::from_slice::<PublisherRequest>(&m.payload) {
                    Ok(q) => answer(&hub.node_id, publisher_location(&hub, &q).await),
                    Err(e) => return debug!(error = %e, "bad publisher question"),
                },
                ROOM_SUBJECT => match serde_json::from_slice::<RoomQuestion>(&m.payload) {
                    Ok(q) => answer(&hub.node_id, room_presence_for(&hub, &q)),
                    Err(e) => return debug!(error = %e, "bad room question"),
                },
                ROOM_SESSION_SUBJECT => {
                    match serde_json::from_slice::<RoomSessionQuestion>(&m.payload) {
                        Ok(q) => answer(&hub.node_id, replaced_room_session(&hub, &q)),
                        Err(e) => return debug!(error = %e, "bad room session question"),
                    }
                }
                SESSION_COUNT_SUBJECT => {
                    match serde_json::from_slice::<SessionCountQuestion>(&m.payload) {
                        Ok(q) => answer(&hub.node_id, session_count_for(&hub, &q)),
                        Err(e) => return debug!(error = %e, "bad session count question"),
                    }
                }
                DIALOUT_SUBJECT => match serde_json::from_slice::<DialoutRequest>(&m.payload) {
                    Ok(q) => {
                        let a: Option<DialoutAnswer> = hub.dialout_for_cluster(&q).await;
                        answer(&hub.node_id, a)
                    }
                    Err(e) => return debug!(error = %e, "bad dial-out question"),
                },
                _ => return,
            };
            if let Err(e) = client.publish(reply, body.into()).await {
                debug!(error = %e, "cluster answer not sent");
            }
        });
    }
}

/// How long the first joiner of a room on this node waits for the other
/// nodes' members (they answer from memory; this bounds an unreachable one).
pub const ROOM_QUESTION_TIMEOUT: Duration = Duration::from_millis(500);

/// How long a hello waits for the other nodes' session counts (as upstream).
pub const SESSION_COUNT_TIMEOUT: Duration = Duration::from_secs(1);

/// Another node checks a hello against a session limit: the sessions
/// of the backend we count (those still being checked included).
fn session_count_for(hub: &Hub, q: &SessionCountQuestion) -> Option<u64> {
    if *q.node == *hub.node_id {
        return None;
    }
    let count = hub.backends.by_id(&q.backend)?.counted_sessions();
    (count > 0).then_some(count)
}

/// Count a new client session of `backend` against its `sessionlimit`.
/// It is reserved here first; then, when other nodes are live, they are
/// asked for their counts (their reservations included), so the limit
/// holds for the whole cluster at the moment of the hello, as upstream
/// asks its peers. Two hellos racing on different nodes for the last
/// place may both be refused, never both accepted. A single server (or
/// a backend without a limit) asks nobody.
pub(crate) async fn count_session(
    hub: &Hub,
    backend: &crate::core::backends::Backend,
    public_id: &Arc<str>,
) -> Result<(), proto::client::Error> {
    backend.add_session(public_id, 0)?;
    if backend.session_limit == 0 {
        return Ok(());
    }
    let Some(cluster) = hub.cluster.get().cloned() else {
        return Ok(());
    };
    let peers = hub.live_nodes();
    if peers == 0 {
        return Ok(());
    }
    let question = SessionCountQuestion {
        node: hub.node_id.to_string(),
        backend: backend.id.clone(),
    };
    let elsewhere: Vec<u64> = cluster
        .ask_all(
            SESSION_COUNT_SUBJECT,
            &question,
            peers,
            SESSION_COUNT_TIMEOUT,
        )
        .await;
    let total = backend.counted_sessions() + elsewhere.iter().sum::<u64>();
    if total > backend.session_limit {
        backend.remove_session(public_id);
        return Err(crate::core::backends::session_limit_exceeded());
    }
    Ok(())
}

/// Another node starts hosting a room: our members of it, if any.
fn room_presence_for(hub: &Hub, q: &RoomQuestion) -> Option<proto::cluster::RoomPresence> {
    if *q.node == *hub.node_id {
        return None;
    }
    let backend = hub.backends.by_id(&q.backend)?;
    hub.room_for(&backend, &q.roomid)?.presence(hub)
}

/// Another node's session joined with a Talk session id: an older
/// session of ours with it is told `bye`.
fn replaced_room_session(hub: &Hub, q: &RoomSessionQuestion) -> Option<bool> {
    if *q.node == *hub.node_id {
        return None;
    }
    let ours = hub.session_for_room_session(&q.roomsessionid)?;
    if *ours == *q.sessionid {
        return None;
    }
    hub.send_bye_to(&ours, "room_session_reconnected");
    Some(true)
}

/// A session of ours joins with Talk session id `room_session_id`:
/// the other nodes end an older session with it (the local one is
/// handled by the caller). Returns once every live node answered (or
/// the timeout passed), so the older session got its `bye` before it
/// could see the new one join, as on one server. With no node heard yet
/// the question still goes out, and nothing waits for its answers.
pub(crate) async fn replace_room_session_elsewhere(hub: &Hub, room_session_id: &str, joined: &str) {
    let Some(cluster) = hub.cluster.get().cloned() else {
        return;
    };
    let peers = hub.live_nodes();
    let question = RoomSessionQuestion {
        node: hub.node_id.to_string(),
        roomsessionid: room_session_id.to_owned(),
        sessionid: joined.to_owned(),
    };
    if peers == 0 {
        // No other node heard yet (this one started less than a presence
        // interval ago, or it is alone): ask anyway, or an older session on
        // a node not yet heard would never be told, but do not hold up the
        // join waiting for answers that may not come.
        tokio::spawn(async move {
            let _: Vec<bool> = cluster
                .ask_all(ROOM_SESSION_SUBJECT, &question, 0, ROOM_QUESTION_TIMEOUT)
                .await;
        });
        return;
    }
    let _: Vec<bool> = cluster
        .ask_all(
            ROOM_SESSION_SUBJECT,
            &question,
            peers,
            ROOM_QUESTION_TIMEOUT,
        )
        .await;
}

/// A signed backend API request with `random` arrived for `backend`:
/// false when the random was used before (a replay; counted). In a
/// cluster the other nodes are told the random.
pub fn accept_backend_random(hub: &Hub, backend: &str, random: &str) -> bool {
    if !hub
        .replays
        .check_and_record(backend, random, std::time::Instant::now())
    {
        hub.metrics.backend_replays.inc(&[backend]);
        return false;
    }
    if let Some(client) = hub.cluster.get().and_then(|c| c.client()) {
        let news = RandomSeen {
            node: hub.node_id.to_string(),
            backend: backend.to_owned(),
            random: random.to_owned(),
        };
        if let Ok(body) = serde_json::to_vec(&news) {
            tokio::spawn(async move {
                if let Err(e) = client.publish(RANDOM_SUBJECT, body.into()).await {
                    debug!(error = %e, "random not shared with the cluster");
                }
            });
        }
    }
    true
}

/// A room new on this node: learn the members other nodes have, before
/// the first joiner here is told who is in the room.
pub(crate) async fn learn_room(hub: &Hub, room: &crate::core::room::Room) {
    let Some(cluster) = hub.cluster.get() else {
        return;
    };
    let question = RoomQuestion {
        node: hub.node_id.to_string(),
        backend: room.backend.id.clone(),
        roomid: room.id.clone(),
    };
    let answers: Vec<proto::cluster::RoomPresence> = cluster
        .ask_all(
            ROOM_SUBJECT,
            &question,
            hub.live_nodes(),
            ROOM_QUESTION_TIMEOUT,
        )
        .await;
    for p in &answers {
        room.apply_presence(hub, p);
    }
    room.learn_tracked_from(&answers);
}
