//! The protocol state of one Janus connection, without I/O: pending
//! transactions, the registry of sessions and handles, routing of incoming
//! messages. The connection task (module `task`) feeds it commands and
//! frames and writes whatever it leaves in `outbox`; unit tests drive it
//! directly.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::error::{Error, GoneReason};
use crate::events::{HandleEvent, HandleSink};
use crate::wire::{Incoming, ServerInfo};

mod incoming;

/// What a request is for, and what to do with its reply.
pub(crate) enum RequestKind {
    /// The first reply of any kind ends it (`info`, `trickle`, `keepalive`).
    Simple,
    /// A plugin `message`: an `ack` only says "an event will follow".
    Message,
    /// `create`: on success the session is registered (keepalives, routing)
    /// before the caller hears of it, so no event can arrive unrouted.
    Create {
        gone: watch::Sender<Option<GoneReason>>,
    },
    /// `attach`: on success the handle is registered with its event queue.
    Attach { events: mpsc::Sender<HandleEvent> },
    /// `detach`: on success the handle is unregistered (final `Detached`).
    Detach,
    /// `destroy`: on success the session and its handles are unregistered.
    Destroy,
}

/// Which registered object a request belongs to; checked before sending so
/// requests for objects of a previous connection fail fast.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Scope {
    Gateway,
    Session {
        session_id: u64,
        epoch: u64,
    },
    Handle {
        session_id: u64,
        handle_id: u64,
        epoch: u64,
    },
}

pub(crate) type ReplyTx = oneshot::Sender<Result<Reply, Error>>;

pub(crate) struct Request {
    /// For error messages ("info", "message", ...).
    pub name: &'static str,
    /// The request without `transaction`.
    pub msg: Map<String, Value>,
    pub scope: Scope,
    pub kind: RequestKind,
    pub reply: ReplyTx,
}

/// The final reply to a request.
#[derive(Debug)]
pub(crate) struct Reply {
    pub msg: Incoming,
    /// Parsed `server_info` for `info` requests.
    pub info: Option<ServerInfo>,
    /// For `create`/`attach`: a guard that releases the new object again if
    /// the caller is gone before it takes ownership.
    pub orphan: Option<OrphanGuard>,
}

/// An object this client created in Janus that nobody owns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Session { session_id: u64 },
    Handle { session_id: u64, handle_id: u64 },
}

/// Commands from the public handles to the connection task.
pub(crate) enum Command {
    Request(Request),
    /// Release an object whose owner dropped it without detaching or
    /// destroying it: unregister it and tell Janus, fire and forget.
    Forget {
        target: Target,
        epoch: u64,
    },
    /// Drop the connection and connect again now.
    Reconnect,
    /// Close the connection and end the task.
    Close {
        done: oneshot::Sender<()>,
    },
}

/// Sends [`Command::Forget`] for a freshly created session or handle when
/// dropped, unless disarmed by the object that takes ownership. Covers the
/// window in which a caller times out after Janus created the object but
/// before the caller saw the reply: without it the object would live (and
/// be kept alive) forever.
#[derive(Debug)]
pub(crate) struct OrphanGuard {
    tx: mpsc::WeakSender<Command>,
    target: Target,
    epoch: u64,
    armed: bool,
}

impl OrphanGuard {
    /// The connection epoch the object was created in.
    pub(crate) fn epoch(&self) -> u64 {
        self.epoch
    }

    pub(crate) fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for OrphanGuard {
    fn drop(&mut self) {
        if self.armed {
            if let Some(tx) = self.tx.upgrade() {
                send_forget(&tx, self.target, self.epoch);
            }
        }
    }
}

/// Queues a `Forget` from synchronous code (a `Drop`): without waiting if
/// there is room, else from a spawned task (if a runtime is running).
pub(crate) fn send_forget(tx: &mpsc::Sender<Command>, target: Target, epoch: u64) {
    match tx.try_send(Command::Forget { target, epoch }) {
        Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => {}
        Err(mpsc::error::TrySendError::Full(cmd)) => {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let tx = tx.clone();
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }
}

enum PendingKind {
    Simple,
    Message,
    Create {
        gone: watch::Sender<Option<GoneReason>>,
    },
    Attach {
        session_id: u64,
        events: mpsc::Sender<HandleEvent>,
    },
    Detach {
        session_id: u64,
        handle_id: u64,
    },
    Destroy {
        session_id: u64,
    },
    /// Sent by the task itself: nobody waits for the reply.
    Keepalive {
        session_id: u64,
    },
    Internal,
}

struct Pending {
    name: &'static str,
    kind: PendingKind,
    reply: Option<ReplyTx>,
    sent_at: Instant,
}

struct SessionEntry {
    gone: watch::Sender<Option<GoneReason>>,
    handles: HashMap<u64, HandleSink>,
}

/// Why serving a connection has to end.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Trouble {
    /// Janus forgot one of our sessions (timeout event, or "session not
    /// found" on keepalive). Upstream reconnects in that case; so do we, so
    /// that the MCU has exactly one recovery path (a new epoch).
    SessionLost { session_id: u64, reason: GoneReason },
}

pub(crate) struct Core {
    /// Counts connections; objects remember the epoch they were created in.
    pub epoch: u64,
    next_txn: u64,
    pending: HashMap<String, Pending>,
    sessions: HashMap<u64, SessionEntry>,
    /// Text frames to write, in order.
    pub outbox: Vec<String>,
    cmd_tx: mpsc::WeakSender<Command>,
}

impl Core {
    pub(crate) fn new(cmd_tx: mpsc::WeakSender<Command>) -> Core {
        Core {
            epoch: 1,
            next_txn: 0,
            pending: HashMap::new(),
            sessions: HashMap::new(),
            outbox: Vec::new(),
            cmd_tx,
        }
    }

    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    #[cfg(test)]
    pub(crate) fn session_ids(&self) -> Vec<u64> {
        self.sessions.keys().copied().collect()
    }

    #[cfg(test)]
    pub(crate) fn handle_ids(&self, session_id: u64) -> Vec<u64> {
        self.sessions
            .get(&session_id)
            .map(|s| s.handles.keys().copied().collect())
            .unwrap_or_default()
    }

    fn send(
        &mut self,
        name: &'static str,
        mut msg: Map<String, Value>,
        kind: PendingKind,
        reply: Option<ReplyTx>,
        now: Instant,
    ) {
        self.next_txn += 1;
        let txn = self.next_txn.to_string();
        msg.insert("transaction".to_owned(), Value::String(txn.clone()));
        match serde_json::to_string(&msg) {
            Ok(text) => {
                self.outbox.push(text);
                self.pending.insert(
                    txn,
                    Pending {
                        name,
                        kind,
                        reply,
                        sent_at: now,
                    },
                );
            }
            Err(e) => {
                if let Some(reply) = reply {
                    let _ = reply.send(Err(Error::Protocol {
                        request: name,
                        detail: format!("cannot encode request: {e}"),
                    }));
                }
            }
        }
    }

    /// Checks the request's scope and queues it.
    pub(crate) fn submit(&mut self, req: Request, now: Instant) {
        let Request {
            name,
            msg,
            scope,
            kind,
            reply,
        } = req;
        if let Err(e) = self.check_scope(scope) {
            let _ = reply.send(Err(e));
            return;
        }
        let kind = match kind {
            RequestKind::Simple => PendingKind::Simple,
            RequestKind::Message => PendingKind::Message,
            RequestKind::Create { gone } => PendingKind::Create { gone },
            RequestKind::Attach { events } => match scope {
                Scope::Session { session_id, .. } => PendingKind::Attach { session_id, events },
                _ => {
                    let _ = reply.send(Err(Error::Protocol {
                        request: name,
                        detail: "attach outside a session".to_owned(),
                    }));
                    return;
                }
            },
            RequestKind::Detach => match scope {
                Scope::Handle {
                    session_id,
                    handle_id,
                    ..
                } => PendingKind::Detach {
                    session_id,
                    handle_id,
                },
                _ => {
                    let _ = reply.send(Err(Error::Protocol {
                        request: name,
                        detail: "detach outside a handle".to_owned(),
                    }));
                    return;
                }
            },
            RequestKind::Destroy => match scope {
                Scope::Session { session_id, .. } => PendingKind::Destroy { session_id },
                _ => {
                    let _ = reply.send(Err(Error::Protocol {
                        request: name,
                        detail: "destroy outside a session".to_owned(),
                    }));
                    return;
                }
            },
        };
        self.send(name, msg, kind, Some(reply), now);
    }

    fn check_scope(&self, scope: Scope) -> Result<(), Error> {
        let (session_id, handle_id, epoch) = match scope {
            Scope::Gateway => return Ok(()),
            Scope::Session { session_id, epoch } => (session_id, None, epoch),
            Scope::Handle {
                session_id,
                handle_id,
                epoch,
            } => (session_id, Some(handle_id), epoch),
        };
        if epoch != self.epoch {
            return Err(Error::SessionGone(GoneReason::ConnectionLost));
        }
        let Some(session) = self.sessions.get(&session_id) else {
            return Err(Error::SessionGone(GoneReason::SessionDestroyed));
        };
        if let Some(handle_id) = handle_id {
            if !session.handles.contains_key(&handle_id) {
                return Err(Error::HandleGone);
            }
        }
        Ok(())
    }

    /// Releases an object nobody owns any more.
    pub(crate) fn forget(&mut self, target: Target, epoch: u64, now: Instant) {
        if epoch != self.epoch {
            return;
        }
        match target {
            Target::Session { session_id } => {
                let Some(entry) = self.sessions.remove(&session_id) else {
                    return;
                };
                close_session(entry, GoneReason::SessionDestroyed);
                tracing::debug!(session.id = session_id, "destroying unowned Janus session");
                let msg = object(json!({"janus": "destroy", "session_id": session_id}));
                self.send("destroy", msg, PendingKind::Internal, None, now);
            }
            Target::Handle {
                session_id,
                handle_id,
            } => {
                let Some(session) = self.sessions.get_mut(&session_id) else {
                    return;
                };
                if session.handles.remove(&handle_id).is_none() {
                    return;
                }
                tracing::debug!(
                    session.id = session_id,
                    handle.id = handle_id,
                    "detaching unowned Janus handle"
                );
                let msg = object(
                    json!({"janus": "detach", "session_id": session_id, "handle_id": handle_id}),
                );
                self.send("detach", msg, PendingKind::Internal, None, now);
            }
        }
    }

    /// Queues a `keepalive` for every session.
    pub(crate) fn keepalive_all(&mut self, now: Instant) {
        let ids: Vec<u64> = self.sessions.keys().copied().collect();
        for session_id in ids {
            let msg = object(json!({"janus": "keepalive", "session_id": session_id}));
            self.send(
                "keepalive",
                msg,
                PendingKind::Keepalive { session_id },
                None,
                now,
            );
        }
    }

    /// Forgets transactions nobody waits for any more: callers that timed
    /// out, and internal requests older than `timeout`.
    pub(crate) fn sweep(&mut self, now: Instant, timeout: Duration) {
        self.pending.retain(|_, p| match &p.reply {
            Some(reply) => !reply.is_closed(),
            None => now.saturating_duration_since(p.sent_at) < timeout,
        });
    }

    /// Fails every pending request and ends every session and handle: the
    /// connection is gone. `reason_for` says why each session ended.
    pub(crate) fn fail_all(
        &mut self,
        error: impl Fn(&'static str) -> Error,
        reason_for: impl Fn(u64) -> GoneReason,
    ) {
        for (_, p) in self.pending.drain() {
            if let Some(reply) = p.reply {
                let _ = reply.send(Err(error(p.name)));
            }
        }
        for (session_id, entry) in self.sessions.drain() {
            close_session(entry, reason_for(session_id));
        }
    }
}

fn close_session(entry: SessionEntry, reason: GoneReason) {
    let _ = entry.gone.send(Some(reason));
    for (_, mut sink) in entry.handles {
        sink.deliver(HandleEvent::Gone(reason));
    }
}

/// A `json!` object as a map (`json!({...})` always is one).
pub(crate) fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn core() -> (Core, mpsc::Sender<Command>, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(8);
        (Core::new(tx.downgrade()), tx, rx)
    }

    fn request(
        name: &'static str,
        msg: Value,
        scope: Scope,
        kind: RequestKind,
    ) -> (Request, oneshot::Receiver<Result<Reply, Error>>) {
        let (reply, rx) = oneshot::channel();
        (
            Request {
                name,
                msg: object(msg),
                scope,
                kind,
                reply,
            },
            rx,
        )
    }

    fn last_txn(core: &Core) -> String {
        let v: Value = serde_json::from_str(core.outbox.last().unwrap()).unwrap();
        v["transaction"].as_str().unwrap().to_owned()
    }

    /// Creates session 10 with handle 20 and returns the handle's events.
    fn session_with_handle(
        core: &mut Core,
    ) -> (
        watch::Receiver<Option<GoneReason>>,
        mpsc::Receiver<HandleEvent>,
    ) {
        let now = Instant::now();
        let (gone_tx, gone_rx) = watch::channel(None);
        let (req, mut rx) = request(
            "create",
            json!({"janus": "create"}),
            Scope::Gateway,
            RequestKind::Create { gone: gone_tx },
        );
        core.submit(req, now);
        let txn = last_txn(core);
        core.incoming(
            &format!(r#"{{"janus":"success","transaction":"{txn}","data":{{"id":10}}}}"#),
            now,
        );
        rx.try_recv().unwrap().unwrap().orphan.unwrap().disarm();

        let (ev_tx, ev_rx) = mpsc::channel(4);
        let scope = Scope::Session {
            session_id: 10,
            epoch: 1,
        };
        let (req, mut rx) = request(
            "attach",
            json!({"janus": "attach"}),
            scope,
            RequestKind::Attach { events: ev_tx },
        );
        core.submit(req, now);
        let txn = last_txn(core);
        core.incoming(
            &format!(
                r#"{{"janus":"success","session_id":10,"transaction":"{txn}","data":{{"id":20}}}}"#
            ),
            now,
        );
        rx.try_recv().unwrap().unwrap().orphan.unwrap().disarm();
        core.outbox.clear();
        (gone_rx, ev_rx)
    }

    #[test]
    fn message_waits_past_ack_for_the_event_and_routes_other_events() {
        let (mut core, _tx, _rx) = core();
        let (_gone, mut events) = session_with_handle(&mut core);
        let now = Instant::now();
        let scope = Scope::Handle {
            session_id: 10,
            handle_id: 20,
            epoch: 1,
        };
        let (req, mut rx) = request(
            "message",
            json!({"janus": "message"}),
            scope,
            RequestKind::Message,
        );
        core.submit(req, now);
        let txn = last_txn(&core);
        core.incoming(
            &format!(r#"{{"janus":"ack","session_id":10,"transaction":"{txn}"}}"#),
            now,
        );
        assert!(
            rx.try_recv().is_err(),
            "ack must not complete a plugin message"
        );
        // An unrelated event of the handle goes to its queue.
        core.incoming(r#"{"janus":"webrtcup","session_id":10,"sender":20}"#, now);
        assert_eq!(events.try_recv().unwrap(), HandleEvent::WebrtcUp);
        core.incoming(
            &format!(r#"{{"janus":"event","session_id":10,"sender":20,"transaction":"{txn}","plugindata":{{"plugin":"p","data":{{"ok":1}}}}}}"#),
            now,
        );
        let reply = rx.try_recv().unwrap().unwrap();
        assert_eq!(reply.msg.plugindata.unwrap().data["ok"], 1);
        assert_eq!(core.pending_len(), 0);
        // A late event for a forgotten transaction is still delivered.
        core.incoming(r#"{"janus":"event","session_id":10,"sender":20,"transaction":"999","plugindata":{"plugin":"p","data":{}}}"#, now);
        assert!(
            matches!(events.try_recv().unwrap(), HandleEvent::Event(e) if e.transaction.as_deref() == Some("999"))
        );
    }

    #[test]
    fn sync_plugin_reply_completes_message() {
        let (mut core, _tx, _rx) = core();
        let (_gone, _events) = session_with_handle(&mut core);
        let scope = Scope::Handle {
            session_id: 10,
            handle_id: 20,
            epoch: 1,
        };
        let (req, mut rx) = request(
            "message",
            json!({"janus": "message"}),
            scope,
            RequestKind::Message,
        );
        core.submit(req, Instant::now());
        let txn = last_txn(&core);
        core.incoming(
            &format!(r#"{{"janus":"success","session_id":10,"sender":20,"transaction":"{txn}","plugindata":{{"plugin":"p","data":{{"room":5}}}}}}"#),
            Instant::now(),
        );
        assert_eq!(
            rx.try_recv().unwrap().unwrap().msg.plugindata.unwrap().data["room"],
            5
        );
    }

    #[test]
    fn requests_for_stale_or_unknown_objects_fail_fast() {
        let (mut core, _tx, _rx) = core();
        let (_gone, _events) = session_with_handle(&mut core);
        let now = Instant::now();
        let (req, mut rx) = request(
            "message",
            json!({}),
            Scope::Handle {
                session_id: 10,
                handle_id: 21,
                epoch: 1,
            },
            RequestKind::Message,
        );
        core.submit(req, now);
        assert!(matches!(rx.try_recv().unwrap(), Err(Error::HandleGone)));
        let (req, mut rx) = request(
            "keepalive",
            json!({}),
            Scope::Session {
                session_id: 10,
                epoch: 0,
            },
            RequestKind::Simple,
        );
        core.submit(req, now);
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(Error::SessionGone(GoneReason::ConnectionLost))
        ));
        assert!(core.outbox.is_empty());
    }

    #[test]
    fn keepalive_session_not_found_is_trouble() {
        let (mut core, _tx, _rx) = core();
        let (_gone, _events) = session_with_handle(&mut core);
        let now = Instant::now();
        core.keepalive_all(now);
        let txn = last_txn(&core);
        let trouble = core.incoming(
            &format!(r#"{{"janus":"error","session_id":10,"transaction":"{txn}","error":{{"code":458,"reason":"No such session"}}}}"#),
            now,
        );
        assert_eq!(
            trouble,
            Some(Trouble::SessionLost {
                session_id: 10,
                reason: GoneReason::SessionNotFound
            })
        );
        let trouble = core.incoming(r#"{"janus":"timeout","session_id":10}"#, now);
        assert_eq!(
            trouble,
            Some(Trouble::SessionLost {
                session_id: 10,
                reason: GoneReason::SessionTimedOut
            })
        );
        assert_eq!(
            core.incoming(r#"{"janus":"timeout","session_id":11}"#, now),
            None
        );
    }

    #[test]
    fn fail_all_ends_requests_sessions_and_handles() {
        let (mut core, _tx, _rx) = core();
        let (gone, mut events) = session_with_handle(&mut core);
        let (req, mut rx) = request(
            "info",
            json!({"janus": "info"}),
            Scope::Gateway,
            RequestKind::Simple,
        );
        core.submit(req, Instant::now());
        core.fail_all(
            |request| Error::Disconnected { request },
            |_| GoneReason::ConnectionLost,
        );
        assert!(matches!(
            rx.try_recv().unwrap(),
            Err(Error::Disconnected { request: "info" })
        ));
        assert_eq!(*gone.borrow(), Some(GoneReason::ConnectionLost));
        assert_eq!(
            events.try_recv().unwrap(),
            HandleEvent::Gone(GoneReason::ConnectionLost)
        );
        assert!(core.session_ids().is_empty());
    }

    #[test]
    fn created_object_of_a_caller_that_gave_up_is_released() {
        let (mut core, _tx, _rx) = core();
        let (gone_tx, _gone_rx) = watch::channel(None);
        let (req, rx) = request(
            "create",
            json!({"janus": "create"}),
            Scope::Gateway,
            RequestKind::Create { gone: gone_tx },
        );
        let now = Instant::now();
        core.submit(req, now);
        let txn = last_txn(&core);
        drop(rx); // the caller timed out
        core.incoming(
            &format!(r#"{{"janus":"success","transaction":"{txn}","data":{{"id":10}}}}"#),
            now,
        );
        assert!(core.session_ids().is_empty());
        let destroy: Value = serde_json::from_str(core.outbox.last().unwrap()).unwrap();
        assert_eq!(destroy["janus"], "destroy");
        assert_eq!(destroy["session_id"], 10);
    }

    #[test]
    fn orphan_guard_sends_forget_when_reply_is_dropped_unclaimed() {
        let (mut core, _tx, mut cmd_rx) = core();
        let (gone_tx, _gone_rx) = watch::channel(None);
        let (req, mut rx) = request(
            "create",
            json!({"janus": "create"}),
            Scope::Gateway,
            RequestKind::Create { gone: gone_tx },
        );
        core.submit(req, Instant::now());
        let txn = last_txn(&core);
        core.incoming(
            &format!(r#"{{"janus":"success","transaction":"{txn}","data":{{"id":10}}}}"#),
            Instant::now(),
        );
        drop(rx.try_recv().unwrap().unwrap());
        match cmd_rx.try_recv().unwrap() {
            Command::Forget { target, epoch } => {
                assert_eq!(target, Target::Session { session_id: 10 });
                assert_eq!(epoch, 1);
            }
            _ => panic!("expected Forget"),
        }
    }

    #[test]
    fn detach_ends_handle_once_and_sweep_drops_abandoned_transactions() {
        let (mut core, _tx, _rx) = core();
        let (_gone, mut events) = session_with_handle(&mut core);
        let now = Instant::now();
        let scope = Scope::Handle {
            session_id: 10,
            handle_id: 20,
            epoch: 1,
        };
        let (req, mut rx) = request(
            "detach",
            json!({"janus": "detach"}),
            scope,
            RequestKind::Detach,
        );
        core.submit(req, now);
        let txn = last_txn(&core);
        core.incoming(
            &format!(r#"{{"janus":"success","session_id":10,"transaction":"{txn}"}}"#),
            now,
        );
        assert!(rx.try_recv().unwrap().is_ok());
        core.incoming(r#"{"janus":"detached","session_id":10,"sender":20}"#, now);
        assert_eq!(events.try_recv().unwrap(), HandleEvent::Detached);
        assert!(events.try_recv().is_err());
        assert!(core.handle_ids(10).is_empty());

        let (req, rx) = request(
            "info",
            json!({"janus": "info"}),
            Scope::Gateway,
            RequestKind::Simple,
        );
        core.submit(req, now);
        core.keepalive_all(now);
        assert_eq!(core.pending_len(), 2);
        drop(rx);
        core.sweep(now, Duration::from_secs(10));
        assert_eq!(
            core.pending_len(),
            1,
            "internal keepalive is kept until it is old"
        );
        core.sweep(now + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(core.pending_len(), 0);
    }
}
