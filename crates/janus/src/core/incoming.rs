//! Frames from Janus: replies matched to their pending transactions (and
//! the sessions and handles they create or end), events routed to the
//! handle they belong to.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::{mpsc, watch};

use super::{
    close_session, Core, OrphanGuard, Pending, PendingKind, Reply, ReplyTx, SessionEntry, Target,
    Trouble,
};
use crate::error::{Error, GoneReason};
use crate::events::{HandleEvent, HandleSink};
use crate::wire::{codes, Incoming, ServerInfo};

impl Core {
    /// Handles one text frame from Janus.
    pub(crate) fn incoming(&mut self, text: &str, now: Instant) -> Option<Trouble> {
        let msg: Incoming = match serde_json::from_str(text) {
            Ok(msg) => msg,
            Err(e) => {
                tracing::warn!(error = %e, "unreadable message from Janus, ignored");
                return None;
            }
        };
        match msg.janus.as_str() {
            "timeout" => {
                let session_id = msg.session_id?;
                if self.sessions.contains_key(&session_id) {
                    tracing::warn!(session.id = session_id, "Janus timed out our session");
                    return Some(Trouble::SessionLost {
                        session_id,
                        reason: GoneReason::SessionTimedOut,
                    });
                }
                None
            }
            "ack" | "success" | "error" | "server_info" => match msg.transaction.clone() {
                Some(txn) => self.complete(&txn, msg, text, now),
                None => {
                    tracing::debug!(janus = %msg.janus, "reply without transaction from Janus, ignored");
                    None
                }
            },
            "event" => {
                if let Some(txn) = msg.transaction.clone() {
                    if self.pending.contains_key(&txn) {
                        return self.complete(&txn, msg, text, now);
                    }
                }
                self.route(msg);
                None
            }
            _ => {
                self.route(msg);
                None
            }
        }
    }

    fn complete(&mut self, txn: &str, msg: Incoming, text: &str, now: Instant) -> Option<Trouble> {
        let Some(pending) = self.pending.get(txn) else {
            if msg.janus == "event" {
                self.route(msg);
            } else {
                tracing::debug!(janus = %msg.janus, transaction = txn, "reply for unknown transaction, ignored");
            }
            return None;
        };
        if msg.janus == "ack" && matches!(pending.kind, PendingKind::Message) {
            // Asynchronous plugin request: the event with the same
            // transaction is the real reply.
            return None;
        }
        let Pending {
            name, kind, reply, ..
        } = self.pending.remove(txn)?;

        if msg.janus == "error" {
            return self.complete_error(name, kind, reply, msg);
        }

        let mut out = Reply {
            msg,
            info: None,
            orphan: None,
        };
        match kind {
            PendingKind::Simple
            | PendingKind::Message
            | PendingKind::Keepalive { .. }
            | PendingKind::Internal => {
                if out.msg.janus == "server_info" {
                    match serde_json::from_str::<ServerInfo>(text) {
                        Ok(info) => out.info = Some(info),
                        Err(e) => {
                            reply_err(
                                reply,
                                Error::Protocol {
                                    request: name,
                                    detail: format!("bad server_info: {e}"),
                                },
                            );
                            return None;
                        }
                    }
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(out));
                }
            }
            PendingKind::Create { gone } => self.created_session(name, gone, reply, out, now),
            PendingKind::Attach { session_id, events } => {
                self.attached_handle(name, session_id, events, reply, out, now)
            }
            PendingKind::Detach {
                session_id,
                handle_id,
            } => {
                if let Some(mut sink) = self
                    .sessions
                    .get_mut(&session_id)
                    .and_then(|s| s.handles.remove(&handle_id))
                {
                    sink.deliver(HandleEvent::Detached);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(out));
                }
            }
            PendingKind::Destroy { session_id } => {
                if let Some(entry) = self.sessions.remove(&session_id) {
                    close_session(entry, GoneReason::SessionDestroyed);
                }
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(out));
                }
            }
        }
        None
    }

    /// An `error` reply: a lost session on keepalive is trouble, anything
    /// else goes to the waiting caller (or the log).
    fn complete_error(
        &self,
        name: &'static str,
        kind: PendingKind,
        reply: Option<ReplyTx>,
        msg: Incoming,
    ) -> Option<Trouble> {
        let err = msg.error.unwrap_or_default();
        if let PendingKind::Keepalive { session_id } = kind {
            if err.code == codes::SESSION_NOT_FOUND && self.sessions.contains_key(&session_id) {
                tracing::warn!(
                    session.id = session_id,
                    "keepalive: Janus does not know our session"
                );
                return Some(Trouble::SessionLost {
                    session_id,
                    reason: GoneReason::SessionNotFound,
                });
            }
            tracing::warn!(session.id = session_id, code = err.code, reason = %err.reason, "keepalive failed");
            return None;
        }
        if let Some(reply) = reply {
            let _ = reply.send(Err(Error::Janus {
                request: name,
                code: err.code,
                reason: err.reason,
            }));
        } else {
            tracing::debug!(request = name, code = err.code, reason = %err.reason, "internal Janus request failed");
        }
        None
    }

    /// `create` succeeded: register the session and hand it over.
    fn created_session(
        &mut self,
        name: &'static str,
        gone: watch::Sender<Option<GoneReason>>,
        reply: Option<ReplyTx>,
        mut out: Reply,
        now: Instant,
    ) {
        let Some(session_id) = out.msg.data_id().filter(|_| out.msg.janus == "success") else {
            reply_err(
                reply,
                Error::Protocol {
                    request: name,
                    detail: format!("no session id in {}", out.msg.janus),
                },
            );
            return;
        };
        self.sessions.insert(
            session_id,
            SessionEntry {
                gone,
                handles: HashMap::new(),
            },
        );
        out.orphan = Some(self.guard(Target::Session { session_id }));
        self.hand_over(reply, out, Target::Session { session_id }, now);
    }

    /// `attach` succeeded: register the handle's event queue and hand it
    /// over.
    fn attached_handle(
        &mut self,
        name: &'static str,
        session_id: u64,
        events: mpsc::Sender<HandleEvent>,
        reply: Option<ReplyTx>,
        mut out: Reply,
        now: Instant,
    ) {
        let Some(handle_id) = out.msg.data_id().filter(|_| out.msg.janus == "success") else {
            reply_err(
                reply,
                Error::Protocol {
                    request: name,
                    detail: format!("no handle id in {}", out.msg.janus),
                },
            );
            return;
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            // The session ended while the attach was in flight.
            reply_err(reply, Error::SessionGone(GoneReason::SessionDestroyed));
            return;
        };
        session.handles.insert(handle_id, HandleSink::new(events));
        out.orphan = Some(self.guard(Target::Handle {
            session_id,
            handle_id,
        }));
        self.hand_over(
            reply,
            out,
            Target::Handle {
                session_id,
                handle_id,
            },
            now,
        );
    }

    fn guard(&self, target: Target) -> OrphanGuard {
        OrphanGuard {
            tx: self.cmd_tx.clone(),
            target,
            epoch: self.epoch,
            armed: true,
        }
    }

    /// Gives a new object to its caller, or releases it at once if the
    /// caller stopped waiting.
    fn hand_over(&mut self, reply: Option<ReplyTx>, out: Reply, target: Target, now: Instant) {
        let undelivered = match reply {
            Some(reply) => reply.send(Ok(out)).err(),
            None => Some(Ok(out)),
        };
        if let Some(Ok(mut out)) = undelivered {
            if let Some(guard) = out.orphan.take() {
                guard.disarm();
            }
            self.forget(target, self.epoch, now);
        }
    }

    /// Delivers a handle-scoped message to the handle's queue.
    fn route(&mut self, msg: Incoming) {
        let (Some(session_id), Some(handle_id)) = (msg.session_id, msg.sender) else {
            tracing::debug!(janus = %msg.janus, "Janus message without session/handle, ignored");
            return;
        };
        let Some(session) = self.sessions.get_mut(&session_id) else {
            tracing::debug!(janus = %msg.janus, session.id = session_id, "message for unknown Janus session, ignored");
            return;
        };
        let Some(sink) = session.handles.get_mut(&handle_id) else {
            tracing::debug!(janus = %msg.janus, handle.id = handle_id, "message for unknown Janus handle, ignored");
            return;
        };
        let kind = msg.janus.clone();
        match HandleEvent::from_incoming(msg) {
            Some(event) => {
                let detached = event == HandleEvent::Detached;
                sink.deliver(event);
                if detached {
                    session.handles.remove(&handle_id);
                }
            }
            None => {
                tracing::debug!(janus = %kind, handle.id = handle_id, "unsupported Janus event, ignored")
            }
        }
    }
}

fn reply_err(reply: Option<ReplyTx>, err: Error) {
    match reply {
        Some(reply) => {
            let _ = reply.send(Err(err));
        }
        None => tracing::debug!(error = %err, "internal Janus request failed"),
    }
}
