//! The cluster bus: every delivery from one session to another, from a room to
//! its members and from the backend API to rooms goes through it, so that a
//! NATS implementation can later span several servers without touching the
//! hub. This module has the trait and the in-process implementation used when
//! no NATS server is configured.
//!
//! Handlers run synchronously in the publisher's task, so publishers must not
//! hold locks a handler may take; the hub publishes only after releasing its
//! own locks.

use parking_lot::RwLock;
use proto::backend::BackendServerRoomRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::conn::OutMsg;

/// What travels on the bus (NATS-04 envelope types).
#[derive(Clone, Debug)]
pub enum BusPayload {
    /// A server message to deliver to the subscribed sessions.
    Message(Arc<OutMsg>),
    /// A backend room request for the room object(s).
    Room(Arc<BackendServerRoomRequest>),
    /// A new permission list for a session.
    Permissions(Arc<Vec<String>>),
}

#[derive(Clone, Debug)]
pub struct BusMessage {
    /// Publish time, nanoseconds since the Unix epoch.
    pub send_time: i64,
    pub payload: BusPayload,
}

impl BusMessage {
    pub fn new(payload: BusPayload) -> BusMessage {
        BusMessage {
            send_time: now_nanos(),
            payload,
        }
    }
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// Receives messages of one subscription.
pub trait BusHandler: Send + Sync {
    fn on_bus_message(&self, subject: &str, msg: &BusMessage);
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
}

/// Publish/subscribe between sessions, rooms and servers.
pub trait Bus: Send + Sync {
    fn publish(&self, subject: &str, msg: BusMessage) -> Result<(), BusError>;
    fn subscribe(
        &self,
        subject: &str,
        handler: Weak<dyn BusHandler>,
    ) -> Result<Subscription, BusError>;
    fn unsubscribe(&self, subject: &str, id: u64);
}

/// Ends its subscription when dropped.
pub struct Subscription {
    bus: Weak<dyn Bus>,
    subject: String,
    id: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("subject", &self.subject)
            .finish()
    }
}

impl Subscription {
    pub fn new(bus: Weak<dyn Bus>, subject: String, id: u64) -> Self {
        Subscription { bus, subject, id }
    }
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(&self.subject, self.id);
        }
    }
}

/// NATS subjects may not contain whitespace or end with a dot; refuse them
/// here too so a configuration that works in-process also works with NATS.
pub fn check_subject(subject: &str) -> Result<(), BusError> {
    if subject.is_empty() || subject.ends_with('.') || subject.chars().any(char::is_whitespace) {
        return Err(BusError::InvalidSubject(subject.to_owned()));
    }
    Ok(())
}

type Subscribers = Arc<Vec<(u64, Weak<dyn BusHandler>)>>;

/// In-process bus for a single server. Deliveries are synchronous and never
/// dropped (unlike upstream's loopback, which discards on a full channel):
/// the receiving session applies its own bounded queue.
pub struct LoopbackBus {
    me: Weak<LoopbackBus>,
    next_id: AtomicU64,
    subjects: RwLock<HashMap<String, Subscribers>>,
}

impl LoopbackBus {
    pub fn new() -> Arc<LoopbackBus> {
        Arc::new_cyclic(|me| LoopbackBus {
            me: me.clone(),
            next_id: AtomicU64::new(1),
            subjects: RwLock::new(HashMap::new()),
        })
    }

    /// Number of subjects with at least one subscriber (for tests and stats).
    pub fn subject_count(&self) -> usize {
        self.subjects.read().len()
    }
}

impl Bus for LoopbackBus {
    fn publish(&self, subject: &str, msg: BusMessage) -> Result<(), BusError> {
        check_subject(subject)?;
        // Copy-on-write list: take a snapshot, release the lock, then deliver,
        // so handlers may subscribe or unsubscribe while being called.
        let subs = self.subjects.read().get(subject).cloned();
        if let Some(subs) = subs {
            for (_, handler) in subs.iter() {
                if let Some(h) = handler.upgrade() {
                    h.on_bus_message(subject, &msg);
                }
            }
        }
        Ok(())
    }

    fn subscribe(
        &self,
        subject: &str,
        handler: Weak<dyn BusHandler>,
    ) -> Result<Subscription, BusError> {
        check_subject(subject)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut map = self.subjects.write();
            let entry = map.entry(subject.to_owned()).or_default();
            let mut list: Vec<_> = entry.as_ref().clone();
            list.push((id, handler));
            *entry = Arc::new(list);
        }
        let me: Weak<dyn Bus> = self.me.clone();
        Ok(Subscription::new(me, subject.to_owned(), id))
    }

    fn unsubscribe(&self, subject: &str, id: u64) {
        let mut map = self.subjects.write();
        if let Some(entry) = map.get_mut(subject) {
            let list: Vec<_> = entry.iter().filter(|(i, _)| *i != id).cloned().collect();
            if list.is_empty() {
                map.remove(subject);
            } else {
                *entry = Arc::new(list);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    struct Rec(Mutex<Vec<String>>);
    impl BusHandler for Rec {
        fn on_bus_message(&self, subject: &str, _msg: &BusMessage) {
            self.0.lock().push(subject.to_owned());
        }
    }

    fn perm() -> BusMessage {
        BusMessage::new(BusPayload::Permissions(Arc::new(vec![])))
    }

    #[test]
    fn delivers_to_subscribers_until_dropped() {
        let bus = LoopbackBus::new();
        let rec = Arc::new(Rec(Mutex::new(vec![])));
        let weak: Weak<dyn BusHandler> = Arc::downgrade(&(rec.clone() as Arc<dyn BusHandler>));
        let sub = bus.subscribe("session.a", weak).expect("subscribe");
        bus.publish("session.a", perm()).expect("publish");
        bus.publish("session.b", perm()).expect("publish");
        assert_eq!(*rec.0.lock(), vec!["session.a".to_owned()]);
        drop(sub);
        bus.publish("session.a", perm()).expect("publish");
        assert_eq!(rec.0.lock().len(), 1);
        assert_eq!(bus.subject_count(), 0);
    }

    #[test]
    fn rejects_invalid_subjects() {
        let bus = LoopbackBus::new();
        assert!(bus.publish("a b", perm()).is_err());
        assert!(bus.publish("a.", perm()).is_err());
    }
}
