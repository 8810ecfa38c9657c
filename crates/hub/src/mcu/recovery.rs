//! Getting media back without the user doing anything (issue 19): asking
//! a publisher's client to publish again, following a publisher whose
//! stream a subscriber lost, and telling a client the way Talk acts on when
//! its media cannot be restored.

use serde_json::{json, Map, Value};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tracing::{debug, info};

use super::objects::create_subscriber;
use super::routing::is_in_same_call;
use super::session::{
    close_in_background, mcu_message, own_message, send_mcu_response, SubscriberKey,
};
use super::{McuClient, McuError, McuMessage, StreamType, STALL_NOTICE};
use crate::core::session::ClientSession;
use crate::Hub;

/// After asking a client with `requestoffer` to publish again, how long to
/// wait for its offer before nudging it the way Talk's web client reacts to
/// (see [`ask_to_publish_again`]).
pub const REPUBLISH_NUDGE_DELAY: Duration = Duration::from_millis(500);

/// A client is told that a publisher's media could not be restored at
/// most this often per publisher.
pub const STALL_NOTICE_INTERVAL: Duration = Duration::from_secs(30);

/// How long a client may take to answer an offer the server pushed to it
/// before it is told that the publisher left and came back.
pub const OFFER_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// How long a session follows a publisher whose stream it lost (publisher
/// replaced, closed by its client, or its media server gone) before giving
/// up on it.
pub const FOLLOW_WAIT: Duration = Duration::from_secs(60);

/// The client's publisher of `stream` is gone or was rebuilt empty
/// (its media server restarted or went away): ask the client to publish
/// again. First with a `requestoffer` from its own session (clients that
/// know it send a new offer); Talk's clients ignore that, so if no offer
/// came after [`REPUBLISH_NUDGE_DELAY`], the web client is made to drop
/// its own dead publisher peer (an `unshareScreen` for `video` from its
/// own session ends the peer it matches) and is sent the participant
/// list again, on which it creates a new publisher peer with a new sid
/// and offers it, retrying every 10 s until answered. Only for `video`
/// (nothing recreates a web client's screen peer; a failed screen
/// publisher makes Talk reconnect anyway), only while another participant
/// is in the call (Talk publishes only then).
pub(crate) fn ask_to_publish_again(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    stream: StreamType,
    sid: &str,
) {
    session.send_message(mcu_message(
        &session.public_id,
        &session.public_id,
        "",
        "requestoffer",
        stream,
        &Value::Object(Default::default()),
        sid,
    ));
    if stream != StreamType::Video {
        return;
    }
    let offers = session.with_mcu(|m| m.offers);
    let weak = Arc::downgrade(session);
    let hub = Arc::downgrade(hub);
    tokio::spawn(async move {
        tokio::time::sleep(REPUBLISH_NUDGE_DELAY).await;
        let (Some(s), Some(hub)) = (weak.upgrade(), hub.upgrade()) else {
            return;
        };
        if s.is_closed() {
            return;
        }
        let (offered, sharing) = s.with_mcu(|m| {
            (
                m.offers != offers,
                m.publishers.contains_key(&StreamType::Screen),
            )
        });
        if offered || sharing {
            return;
        }
        let Some(room) = s.room() else { return };
        if !room.is_in_call(&s.public_id) || room.in_call_count() < 2 {
            return;
        }
        info!(session = %s.public_id, "no new offer after requestoffer, nudging the client to publish again");
        if let Some(m) = &hub.mcu_metrics {
            m.republish_nudges_total.inc();
        }
        s.send_message(own_message(
            &s.public_id,
            json!({"type": "unshareScreen", "roomType": "video"}),
        ));
        room.notify_session_resumed(&s);
    });
}

/// `session` has dead media from `publisher` that could not be restored
/// within [`STALL_NOTICE`] (its media server or the publisher is not
/// back). Errors make no Talk client act, and neither does silence
/// (a subscriber's own ICE failure takes tens of seconds, and then
/// only the web and iOS clients ask again), so the client alone is
/// sent two participants updates with only `publisher`'s entry: out of
/// the call, then back in. Talk's web client merges them into its list
/// (the own entry is left out, so it never hangs up), drops the peer
/// and requests a new offer, retrying every 10 s; iOS retries for 60 s,
/// Android asks once. At most once per publisher per
/// [`STALL_NOTICE_INTERVAL`].
pub(crate) fn tell_media_stalled(hub: &Hub, session: &Arc<ClientSession>, publisher: &str) {
    if *session.public_id == *publisher || !is_in_same_call(hub, session, publisher) {
        return;
    }
    let now = std::time::Instant::now();
    let due = session.with_mcu(|m| {
        let due = m
            .stall_notices
            .get(publisher)
            .is_none_or(|at| now.duration_since(*at) >= STALL_NOTICE_INTERVAL);
        if due {
            m.stall_notices
                .retain(|_, at| now.duration_since(*at) < STALL_NOTICE_INTERVAL);
            m.stall_notices.insert(publisher.into(), now);
        }
        due
    });
    if !due {
        return;
    }
    let Some(room) = session.room() else { return };
    if room.flap_participant(session, publisher) {
        info!(session = %session.public_id, publisher = %publisher, "media could not be restored, told the client the publisher left and came back");
        if let Some(m) = &hub.mcu_metrics {
            m.stall_notices_total.inc();
        }
    }
}

/// An offer of `sub` was pushed to `session`'s client without it asking
/// (its publisher was replaced or rebuilt). A client that does not
/// answer within [`OFFER_ANSWER_WAIT`] (e.g. one that reuses its dead
/// peer connection and fails on it) is told like one whose media could
/// not be restored ([`tell_media_stalled`]), on which Talk asks for
/// a new offer.
pub(crate) fn watch_pushed_offer(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    sub: &dyn McuClient,
) {
    let Some(publisher) = sub.publisher_id().map(Arc::<str>::from) else {
        return;
    };
    let id = sub.id();
    session.with_mcu(|m| m.unanswered.insert(id));
    let hub = Arc::downgrade(hub);
    let weak = Arc::downgrade(session);
    tokio::spawn(async move {
        tokio::time::sleep(OFFER_ANSWER_WAIT).await;
        let (Some(hub), Some(s)) = (hub.upgrade(), weak.upgrade()) else {
            return;
        };
        let unanswered = s
            .with_mcu(|m| m.unanswered.remove(&id) && m.subscribers.values().any(|c| c.id() == id));
        if unanswered && !s.is_closed() {
            info!(session = %s.public_id, publisher = %publisher, "pushed offer not answered");
            tell_media_stalled(&hub, &s, &publisher);
        }
    });
}

/// `session` lost its subscriber of `publisher`'s `stream` without
/// asking (the publisher was replaced or ended, or the media server or
/// proxy went away). While both stay in the call, subscribe again as
/// soon as the publisher streams and push the new offer (new sid) to
/// the client, as if it had asked: Talk's clients replace their peer on
/// an offer with a new sid. Gives up after [`FOLLOW_WAIT`]; a
/// `requestoffer` of the client meanwhile takes over.
pub(crate) fn follow_publisher(
    hub: &Arc<Hub>,
    session: &Arc<ClientSession>,
    publisher: Arc<str>,
    stream: StreamType,
) {
    if hub.mcu.is_none() {
        return;
    }
    let key: SubscriberKey = (publisher, stream);
    // The newest follow of a publisher does the work (it may know of a
    // newer publisher than an older one that is still trying).
    let me = session.with_mcu(|m| {
        m.follow_count += 1;
        m.follows.insert(key.clone(), m.follow_count);
        m.follow_count
    });
    let follow = Follow {
        hub: Arc::downgrade(hub),
        session: Arc::downgrade(session),
        key,
        me,
    };
    tokio::spawn(follow.run());
}

/// One session following one publisher's stream.
struct Follow {
    hub: Weak<Hub>,
    session: Weak<ClientSession>,
    key: SubscriberKey,
    /// Its number: the newest follow of a publisher wins.
    me: u64,
}

/// What one attempt to follow came to.
enum Attempt {
    /// Offer pushed, or no longer wanted.
    Done,
    Failed(McuError),
}

impl Follow {
    /// Whether this follow is still wanted: the newest one, and the client
    /// has not asked again itself meanwhile.
    fn wanted(&self, s: &ClientSession) -> bool {
        s.with_mcu(|m| {
            m.follows.get(&self.key) == Some(&self.me) && !m.subscribers.contains_key(&self.key)
        })
    }

    fn done(&self, s: &ClientSession) {
        s.with_mcu(|m| {
            if m.follows.get(&self.key) == Some(&self.me) {
                m.follows.remove(&self.key);
            }
        })
    }

    async fn run(self) {
        let start = tokio::time::Instant::now();
        let deadline = start + FOLLOW_WAIT;
        let mut told = false;
        let (publisher, stream) = self.key.clone();
        loop {
            let (Some(hub), Some(s)) = (self.hub.upgrade(), self.session.upgrade()) else {
                return;
            };
            if s.is_closed() || !is_in_same_call(&hub, &s, &publisher) {
                debug!(session = %s.public_id, publisher = %publisher, "not following a publisher out of the call");
                self.done(&s);
                return;
            }
            if !self.wanted(&s) {
                self.done(&s);
                return;
            }
            let e = match self.attempt(&hub, &s).await {
                Attempt::Done => return,
                Attempt::Failed(e) => e,
            };
            if !self.wanted(&s) {
                self.done(&s);
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                info!(session = %s.public_id, publisher = %publisher, stream = stream.as_str(), error = %e, "publisher did not come back, not following it any more");
                self.done(&s);
                return;
            }
            debug!(session = %s.public_id, publisher = %publisher, error = %e, "publisher not back yet");
            if !told && start.elapsed() >= STALL_NOTICE {
                told = true;
                tell_media_stalled(&hub, &s, &publisher);
            }
            drop((hub, s));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// Subscribe to the publisher and push the offer to the client.
    async fn attempt(&self, hub: &Arc<Hub>, s: &Arc<ClientSession>) -> Attempt {
        let (publisher, stream) = self.key.clone();
        let sub = match create_subscriber(hub, s, publisher.clone(), stream).await {
            Ok(sub) => sub,
            Err(e) => return Attempt::Failed(e),
        };
        let placed = s.with_mcu(|m| {
            let ok = m.follows.get(&self.key) == Some(&self.me)
                && !m.subscribers.contains_key(&self.key);
            if ok {
                m.subscribers.insert(self.key.clone(), sub.clone());
            }
            ok
        });
        if !placed || s.is_closed() {
            // A newer follow or the client's own request got there first.
            self.done(s);
            close_in_background(vec![sub]);
            return Attempt::Done;
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        let msg = McuMessage {
            kind: "requestoffer".into(),
            sid: String::new(),
            payload: Map::new(),
        };
        sub.send_message(
            msg,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        )
        .await;
        match rx.await {
            Ok(Ok(Some(jsep))) => {
                self.done(s);
                if s.with_mcu(|m| m.is_current(&*sub)) {
                    info!(session = %s.public_id, publisher = %publisher, stream = stream.as_str(), sid = %sub.sid(), "following the publisher: new offer");
                    metrics_mcu_followed(hub, stream);
                    send_mcu_response(s, &*sub, &publisher, jsep);
                    watch_pushed_offer(hub, s, &*sub);
                }
                Attempt::Done
            }
            Ok(Ok(None)) => {
                self.done(s);
                Attempt::Done
            }
            Ok(Err(e)) => {
                // Not joined: drop it and try again.
                let gone = s.with_mcu(|m| {
                    if m.is_current(&*sub) {
                        m.subscribers.remove(&self.key)
                    } else {
                        None
                    }
                });
                close_in_background(gone.into_iter().collect());
                Attempt::Failed(e)
            }
            Err(_) => Attempt::Failed(McuError::Closed),
        }
    }
}

fn metrics_mcu_followed(hub: &Hub, stream: StreamType) {
    if let Some(m) = &hub.mcu_metrics {
        m.followed_total.inc(&[stream.as_str()]);
    }
}
