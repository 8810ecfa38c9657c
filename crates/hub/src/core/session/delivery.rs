//! Delivery to a session: filtering per recipient, the connection's queue,
//! the backlog while it is away, and what the session receives from the bus.

use super::*;

impl ClientSession {
    /// Deliver a message to this session (after per-session filtering).
    ///
    /// Frames go straight into the connection's queue. When it is full they
    /// wait in the session's pending list (in order) and the connection task
    /// pulls them in as it drains; a client that falls too far behind is cut
    /// off and gets the rest after it resumes.
    pub fn send(&self, msg: &Arc<OutMsg>) {
        match self.filter(msg) {
            Filtered::Drop => {}
            Filtered::Same => self.deliver(msg),
            Filtered::Replaced(list) => {
                for m in &list {
                    self.deliver(m);
                }
            }
        }
    }

    /// Queue one (already filtered) message.
    pub(super) fn deliver(&self, msg: &Arc<OutMsg>) {
        let close_after = self.closes_connection(msg);
        let mut st = self.state.lock();
        if let Some(conn) = st.conn.clone() {
            Self::drain_into(&mut st, &conn, usize::MAX);
            if st.pending.is_empty() {
                match conn.offer(msg.frame()) {
                    Ok(()) => {
                        if close_after {
                            conn.close();
                            drop(st);
                            self.close_after_send();
                        }
                        return;
                    }
                    Err(_) if !conn.is_connected() => {}
                    Err(_) => {
                        // Queue full: keep as backlog, delivered by refill.
                    }
                }
            }
            if close_after {
                // A bye behind a backlog: the client cannot get it in time.
                conn.kill();
                drop(st);
                self.close_after_send();
                return;
            } else if st.pending.len() >= MAX_BACKLOG {
                conn.overflow();
            }
        }
        if self.is_closed() {
            return;
        }
        // Nobody to deliver to right now: keep it for a resume.
        if msg.is_chat_refresh() {
            if st.has_pending_chat {
                return;
            }
            st.has_pending_chat = true;
        }
        let participants_update = msg.msg.is_participants_update();
        if participants_update {
            st.has_pending_participants = true;
        }
        st.pending.push_back(Pending {
            frame: msg.frame(),
            participants_update,
        });
        let n = st.pending.len();
        drop(st);
        if n == 32 || n.is_multiple_of(1000) {
            warn!(session = %self.public_id, pending = n, "session has many pending messages");
        }
        if n > MAX_PENDING_MESSAGES {
            warn!(session = %self.public_id, "too many pending messages, closing session");
            if let (Some(hub), Some(me)) = (self.hub.upgrade(), self.me.upgrade()) {
                tokio::spawn(async move { hub.close_session(&me) });
            }
        }
    }

    /// A message that ends the connection (bye, disinvite from the current
    /// room) ends the session too, as upstream does.
    pub(super) fn close_after_send(&self) {
        if let (Some(hub), Some(me)) = (self.hub.upgrade(), self.me.upgrade()) {
            hub.close_session(&me);
        }
    }

    /// Move pending frames into the connection's queue while it has room.
    pub(super) fn drain_into(st: &mut SessionState, conn: &Arc<Conn>, max: usize) -> usize {
        let mut n = 0;
        while n < max {
            let Some(p) = st.pending.pop_front() else {
                break;
            };
            if let Err(frame) = conn.offer(p.frame) {
                st.pending.push_front(Pending {
                    frame,
                    participants_update: p.participants_update,
                });
                break;
            }
            n += 1;
        }
        if st.pending.is_empty() {
            st.has_pending_chat = false;
            st.has_pending_participants = false;
        }
        n
    }

    /// Called by the connection task when its queue has drained.
    pub fn refill(&self, conn: &Arc<Conn>) -> usize {
        let mut st = self.state.lock();
        if !st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) || st.pending.is_empty() {
            return 0;
        }
        Self::drain_into(&mut st, conn, usize::MAX)
    }

    /// Send a message built for this session alone.
    pub fn send_message(&self, msg: ServerMessage) {
        self.send(&OutMsg::new(msg));
    }

    /// `bye`, or the disinvite of the room this session is in, ends the connection.
    pub(super) fn closes_connection(&self, msg: &OutMsg) -> bool {
        let m = &msg.msg;
        if m.kind == "bye" {
            return true;
        }
        if m.kind == "event" {
            if let Some(ev) = &m.event {
                if ev.target == "roomlist" && ev.kind == "disinvite" {
                    if let (Some(d), Some(room)) = (&ev.disinvite, self.room()) {
                        return d.roomid == room.id;
                    }
                }
            }
        }
        false
    }

    /// Start delivering what was kept while no client was attached
    /// (resume). Returns whether a participants update was among it.
    pub(crate) fn flush_pending(&self, conn: &Arc<Conn>) -> bool {
        let mut st = self.state.lock();
        let participants =
            st.has_pending_participants || st.pending.iter().any(|p| p.participants_update);
        if !st.pending.is_empty() {
            info!(session = %self.public_id, count = st.pending.len(), "sending pending messages");
        }
        Self::drain_into(&mut st, conn, usize::MAX);
        participants
    }

    /// Per-session changes: chat comments only for clients with
    /// `chat-relay`, display names hidden for sessions with that permission.
    pub(super) fn filter(&self, msg: &Arc<OutMsg>) -> Filtered {
        let m = &msg.msg;
        match m.kind.as_str() {
            "event" => {
                let Some(ev) = m.event.as_ref() else {
                    return Filtered::Drop;
                };
                let hide = ev.target == "room"
                    && (ev.kind == "join" || ev.kind == "message")
                    && self.has_permission(PERMISSION_HIDE_DISPLAYNAMES);
                if let Some(chat) = msg.chat_variants() {
                    let list = if self.has_feature(proto::client::CLIENT_FEATURE_CHAT_RELAY) {
                        &chat.relay
                    } else {
                        &chat.plain
                    };
                    let list = list
                        .iter()
                        .map(|m| {
                            hide.then(|| crate::bus::filter::hide_display_names(m))
                                .flatten()
                                .unwrap_or_else(|| m.clone())
                        })
                        .collect();
                    return Filtered::Replaced(list);
                }
                match hide
                    .then(|| crate::bus::filter::hide_display_names(msg))
                    .flatten()
                {
                    Some(m) => Filtered::Replaced(vec![m]),
                    None => Filtered::Same,
                }
            }
            "message" => {
                if self.has_permission(PERMISSION_HIDE_DISPLAYNAMES)
                    && crate::bus::filter::is_nick_changed(msg)
                {
                    return Filtered::Drop;
                }
                Filtered::Same
            }
            _ => Filtered::Same,
        }
    }
}

impl BusHandler for ClientSession {
    fn on_bus_message(&self, _subject: &str, msg: &BusMessage) {
        if self.is_closed() {
            return;
        }
        match &msg.payload {
            BusPayload::Permissions(p) => self.set_permissions(p),
            BusPayload::Room(_) | BusPayload::Presence(_) | BusPayload::Node(_) => {}
            BusPayload::Message(out) => {
                let m = &out.msg;
                let own = |sender: Option<&proto::client::Sender>| {
                    sender.is_some_and(|s| *s.sessionid == *self.public_id)
                };
                let reconnected = m.kind == "bye"
                    && m.bye
                        .as_ref()
                        .is_some_and(|b| b.reason == "room_session_reconnected");
                if reconnected {
                    info!(session = %self.public_id, "closing session, same room session connected elsewhere");
                    self.leave_room(false);
                    self.send(out);
                    if let (Some(hub), Some(me)) = (self.hub.upgrade(), self.me.upgrade()) {
                        hub.close_session(&me);
                    }
                    return;
                }
                let skip = match m.kind.as_str() {
                    "message" | "control" if self.is_call_message_not_for_me(m) => true,
                    "message" => own(m.message.as_ref().and_then(|x| x.sender.as_ref())),
                    "control" => own(m.control.as_ref().and_then(|x| x.sender.as_ref())),
                    "event" => {
                        m.event.as_ref().is_some_and(|e| e.target == "room")
                            && self.joined_after(msg.send_time)
                    }
                    _ => false,
                };
                if skip {
                    return;
                }
                self.send(out);
            }
        }
    }
}

impl ClientSession {
    /// A message sent to the `call` recipient while this session is not in
    /// the call of its room.
    fn is_call_message_not_for_me(&self, m: &ServerMessage) -> bool {
        let body = m.message.as_ref().or(m.control.as_ref());
        let to_call = body
            .and_then(|b| b.sender.as_ref())
            .is_some_and(|s| s.kind == proto::client::RECIPIENT_CALL);
        if !to_call {
            return false;
        }
        if self.is_internal() {
            return self.internal_incall() & crate::core::room::FLAG_IN_CALL == 0;
        }
        !self.room().is_some_and(|r| r.is_in_call(&self.public_id))
    }
}
