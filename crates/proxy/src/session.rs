//! A signaling server's session on the proxy: outlives its WebSocket (the
//! signaling server resumes it after a reconnect) and owns the publishers
//! and subscribers it created. What the MCU reports for them goes out
//! through [`ProxyListener`].

use parking_lot::Mutex;
use proto::proxy::{EventProxyServerMessage, PayloadProxyServerMessage, ProxyServerMessage};
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;
use tracing::warn;

use mcu::{McuClient, McuListener};

use crate::ProxyServer;

/// A session without connection is deleted after this long unused.
pub const SESSION_EXPIRATION: Duration = Duration::from_secs(60);
/// Frames kept for a session whose connection is away.
const MAX_PENDING: usize = 10_000;

/// What the connection task of a session writes.
#[derive(Debug)]
pub enum Outgoing {
    Text(String),
    /// Send this text, then close (a `bye`).
    Last(String),
}

#[derive(Default)]
struct Out {
    tx: Option<mpsc::Sender<Outgoing>>,
    pending: VecDeque<String>,
}

pub struct ProxySession {
    pub id: String,
    last_used_ms: AtomicU64,
    // Plain mutex, never held across `.await`.
    out: Mutex<Out>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl ProxySession {
    pub fn new(id: String) -> Arc<ProxySession> {
        Arc::new(ProxySession {
            id,
            last_used_ms: AtomicU64::new(now_ms()),
            out: Mutex::new(Out::default()),
        })
    }

    pub fn mark_used(&self) {
        self.last_used_ms.store(now_ms(), Ordering::Relaxed);
    }

    /// No connection and unused for [`SESSION_EXPIRATION`].
    pub fn is_expired(&self) -> bool {
        let out = self.out.lock();
        out.tx.is_none()
            && now_ms().saturating_sub(self.last_used_ms.load(Ordering::Relaxed))
                > SESSION_EXPIRATION.as_millis() as u64
    }

    /// Attach a connection; frames kept meanwhile go out first. Returns the
    /// connection it replaces.
    pub fn attach(&self, tx: mpsc::Sender<Outgoing>) -> Option<mpsc::Sender<Outgoing>> {
        self.mark_used();
        let mut out = self.out.lock();
        while let Some(text) = out.pending.pop_front() {
            if let Err(e) = tx.try_send(Outgoing::Text(text)) {
                let (Outgoing::Text(t) | Outgoing::Last(t)) = e.into_inner();
                out.pending.push_front(t);
                break;
            }
        }
        out.tx.replace(tx)
    }

    /// Detach `tx` if it is still the session's connection.
    pub fn detach(&self, tx: &mpsc::Sender<Outgoing>) {
        let mut out = self.out.lock();
        if out.tx.as_ref().is_some_and(|t| t.same_channel(tx)) {
            out.tx = None;
        }
        drop(out);
        self.mark_used();
    }

    pub fn send(&self, msg: &ProxyServerMessage) {
        let Ok(text) = serde_json::to_string(msg) else {
            return;
        };
        let mut out = self.out.lock();
        if out.pending.is_empty() {
            if let Some(tx) = &out.tx {
                match tx.try_send(Outgoing::Text(text)) {
                    Ok(()) => return,
                    Err(e) => {
                        // The signaling server does not keep up (or is
                        // gone): keep the frame for its resume, cut it off.
                        warn!(session = %self.id, "proxy session connection congested, disconnecting");
                        out.tx = None;
                        let (Outgoing::Text(t) | Outgoing::Last(t)) = e.into_inner();
                        out.pending.push_back(t);
                        return;
                    }
                }
            }
        }
        if out.pending.len() >= MAX_PENDING {
            out.pending.pop_front();
        }
        out.pending.push_back(text);
    }
}

/// The MCU's listener for one client (publisher or subscriber) of a session.
pub struct ProxyListener {
    pub server: Weak<ProxyServer>,
    pub session: Weak<ProxySession>,
    pub client_id: String,
    /// The sid last told to the signaling server (subscribers get a new one
    /// when they are rebuilt after a Janus restart).
    pub sid: Mutex<String>,
}

impl ProxyListener {
    fn send(&self, msg: ProxyServerMessage) {
        if let Some(s) = self.session.upgrade() {
            s.send(&msg);
        }
    }

    fn payload(&self, kind: &str, payload: Value) {
        self.send(ProxyServerMessage {
            kind: "payload".into(),
            payload: Some(PayloadProxyServerMessage {
                kind: kind.into(),
                client_id: self.client_id.clone(),
                payload: Some(payload),
            }),
            ..Default::default()
        });
    }

    fn event(&self, kind: &str, sid: String) {
        self.send(ProxyServerMessage::event(EventProxyServerMessage {
            kind: kind.into(),
            client_id: self.client_id.clone(),
            sid,
            ..Default::default()
        }));
    }
}

impl McuListener for ProxyListener {
    fn on_update_offer(&self, client: &dyn McuClient, offer: Value) {
        let sid = client.sid();
        let changed = {
            let mut last = self.sid.lock();
            let changed = *last != sid && !last.is_empty();
            *last = sid.clone();
            changed
        };
        if changed {
            self.event("subscriber-sid-updated", sid);
        }
        self.payload("offer", json!({ "offer": offer }));
    }

    fn on_ice_candidate(&self, _client: &dyn McuClient, candidate: Value) {
        // Already `{"candidate": {...}}`, the payload upstream sends.
        self.payload("candidate", candidate);
    }

    fn on_publisher_reset(&self, client: &dyn McuClient) {
        // Ours: the proxy's Janus came back and the publisher has a new
        // room; the signaling server asks its client for a new offer.
        self.event("publisher-reset", client.sid());
    }

    fn subscriber_stalled(&self, client: &dyn McuClient) {
        // Ours: the subscriber's media could not be restored for a while
        // (Janus or the publisher not back); the signaling server tells
        // its client the way Talk acts on.
        self.event("subscriber-stalled", client.sid());
    }

    fn publisher_closed(&self, _client: &dyn McuClient) {
        if let Some(server) = self.server.upgrade() {
            server.publisher_gone(&self.client_id);
            if server.forget_client(&self.client_id) {
                self.event("publisher-closed", String::new());
            }
        }
    }

    fn subscriber_closed(&self, _client: &dyn McuClient) {
        if let Some(server) = self.server.upgrade() {
            if server.forget_client(&self.client_id) {
                self.event("subscriber-closed", String::new());
            }
        }
    }
}
