//! A room's cluster presence: which members it has on other nodes.

use super::*;

/// Clustering (ours; upstream's NATS rooms only know their own node's
/// members): every node hosting members of a room sends its member list on
/// the room subject — when its first member joins (asking the others for
/// theirs), when asked, and every `[nats] presenceinterval`. Together with
/// the join and leave events already on that subject, each node knows the
/// whole room: a joiner is told about members on other nodes, and when a
/// node falls silent for three intervals (it died, or lost NATS) its
/// members leave the room for everybody else.
impl Room {
    pub(super) fn is_local(st: &RoomState, id: &str) -> bool {
        st.sessions.iter().any(|s| **s.public_id() == *id)
    }

    /// Send this node's members (and ask for the others' with `request`;
    /// with `transient`, the room's transient data too).
    pub(crate) fn send_presence(&self, hub: &dyn Host, request: bool, transient: bool) {
        let Some(mut presence) = self.presence_with(hub, transient) else {
            return;
        };
        presence.request = request;
        self.state.lock().presence_sent = Some(Instant::now());
        let msg = BusMessage::new(BusPayload::Presence(Arc::new(presence)));
        if let Err(e) = hub.bus().publish(&self.subject, msg) {
            debug!(room = %self.id, error = %e, "could not send room presence");
        }
    }

    /// This node's members, transient data included, for a node that starts
    /// hosting the room (`None` without members here).
    pub(crate) fn presence(&self, hub: &dyn Host) -> Option<proto::cluster::RoomPresence> {
        self.presence_with(hub, true)
            .filter(|p| !p.sessions.is_empty())
    }

    pub(super) fn presence_with(
        &self,
        hub: &dyn Host,
        transient: bool,
    ) -> Option<proto::cluster::RoomPresence> {
        let st = self.state.lock();
        if st.closed && !st.sessions.is_empty() {
            return None;
        }
        Some(proto::cluster::RoomPresence {
            transient: if transient {
                st.transient.clone()
            } else {
                serde_json::Map::new()
            },
            node: hub.node_id().to_owned(),
            sessions: st
                .sessions
                .iter()
                .map(|s| entry_of(s, st.session_user.get(s.public_id())))
                .collect(),
            request: false,
            participants: local_participants(&st.sessions),
            tracked: if transient {
                st.tracked_list()
            } else {
                Vec::new()
            },
            roomusers: st
                .session_user
                .iter()
                .map(|(id, u)| (id.to_string(), u.clone()))
                .collect(),
            properties: if transient {
                st.properties.clone()
            } else {
                None
            },
            flags: st
                .sessions
                .iter()
                .filter_map(|s| match s {
                    AnySession::Virtual(v) if v.flags() != 0 => {
                        Some((v.public_id.to_string(), v.flags()))
                    }
                    _ => None,
                })
                .collect(),
        })
    }

    /// Tell this node's members in the room (not the bus: the news is
    /// about other nodes, which know it already).
    pub(super) fn tell_local(&self, msg: ServerMessage) {
        let members = self.sessions();
        let out = OutMsg::new(msg);
        for s in members {
            if let AnySession::Client(c) = s {
                c.send(&out);
            }
        }
    }

    pub(super) fn follow_event(&self, msg: &ServerMessage, send_time: i64) {
        if let Some(t) = msg.transient.as_ref().filter(|_| msg.kind == "transient") {
            // Set or removed on another node (or here: then already applied).
            let mut st = self.state.lock();
            match (t.kind.as_str(), &t.value) {
                ("set", Some(v)) => {
                    st.transient.insert(t.key.clone(), v.clone());
                }
                ("remove", _) => {
                    st.transient.remove(&t.key);
                }
                _ => {}
            }
            return;
        }
        let Some(ev) = msg.event.as_ref().filter(|e| e.target == "room") else {
            return;
        };
        // Members that joined here after the event was sent skip it (room
        // events older than a session's join are stale for it); those
        // learning of a member only now must still be told.
        let mut news = EventServerMessage::new("room", ev.kind.as_str());
        let mut st = self.state.lock();
        match ev.kind.as_str() {
            "join" => {
                let mut joined = Vec::new();
                for e in ev.join.iter().flatten() {
                    if !Self::is_local(&st, &e.sessionid) && !st.remote.contains_key(&e.sessionid) {
                        st.remote.insert(
                            e.sessionid.clone(),
                            RemoteMember {
                                node: None,
                                since: Instant::now(),
                                entry: e.clone(),
                                room_user: None,
                                flags: 0,
                            },
                        );
                        joined.push(e.clone());
                    }
                }
                if joined.is_empty() {
                    return;
                }
                news.join = Some(joined);
            }
            "leave" => {
                let mut left = Vec::new();
                for id in ev.leave.iter().flatten() {
                    // Every node forgets its call state (the node of the
                    // session might not be there to tell).
                    st.forget(id);
                    if st.remote.remove(id).is_some() {
                        st.in_call.remove(id.as_str());
                        left.push(id.clone());
                    }
                }
                if left.is_empty() {
                    return;
                }
                news.leave = Some(left);
            }
            _ => return,
        }
        let skipped: Vec<Arc<ClientSession>> = st
            .sessions
            .iter()
            .filter_map(|s| match s {
                AnySession::Client(c) if c.joined_after(send_time) => Some(c.clone()),
                _ => None,
            })
            .collect();
        drop(st);
        if skipped.is_empty() {
            return;
        }
        let out = OutMsg::new(ServerMessage::event(news));
        for c in skipped {
            c.send(&out);
        }
    }

    pub(crate) fn apply_presence(&self, hub: &dyn Host, p: &proto::cluster::RoomPresence) {
        if *p.node == *hub.node_id() {
            return;
        }
        let now = Instant::now();
        let (joined, left, learned) = {
            let mut st = self.state.lock();
            if st.closed {
                return;
            }
            st.nodes.insert(p.node.clone(), now);
            if p.participants.is_empty() {
                st.remote_participants.remove(&p.node);
            } else {
                st.remote_participants
                    .insert(p.node.clone(), p.participants.clone());
            }
            let mut learned = Vec::new();
            for (key, value) in &p.transient {
                if !st.transient.contains_key(key) {
                    st.transient.insert(key.clone(), value.clone());
                    learned.push((key.clone(), value.clone()));
                }
            }
            let listed: HashSet<&str> = p.sessions.iter().map(|e| e.sessionid.as_str()).collect();
            let mut left = Vec::new();
            st.remote.retain(|id, m| {
                let gone =
                    m.node.as_deref() == Some(p.node.as_str()) && !listed.contains(id.as_str());
                if gone {
                    left.push(id.clone());
                }
                !gone
            });
            for id in &left {
                st.in_call.remove(id.as_str());
                st.forget(id);
            }
            let mut joined = Vec::new();
            for e in &p.sessions {
                if Self::is_local(&st, &e.sessionid) {
                    continue;
                }
                let room_user = p.roomusers.get(&e.sessionid).cloned();
                let flags = p.flags.get(&e.sessionid).copied().unwrap_or(0);
                match st.remote.get_mut(&e.sessionid) {
                    Some(m) => {
                        m.node = Some(p.node.clone());
                        m.room_user = room_user;
                        m.flags = flags;
                    }
                    None => {
                        st.remote.insert(
                            e.sessionid.clone(),
                            RemoteMember {
                                node: Some(p.node.clone()),
                                since: now,
                                entry: e.clone(),
                                room_user,
                                flags,
                            },
                        );
                        joined.push(e.clone());
                    }
                }
            }
            Self::learn_tracked(&mut st, &p.tracked);
            (joined, left, learned)
        };
        for (key, value) in learned {
            self.tell_local(ServerMessage::transient(TransientDataServerMessage {
                kind: "set".into(),
                key,
                value: Some(value),
                ..Default::default()
            }));
        }
        if !joined.is_empty() {
            let mut event = EventServerMessage::new("room", "join");
            event.join = Some(joined);
            self.tell_local(ServerMessage::event(event));
        }
        if !left.is_empty() {
            let mut event = EventServerMessage::new("room", "leave");
            event.leave = Some(left);
            self.tell_local(ServerMessage::event(event));
        }
        if p.request {
            self.send_presence(hub, false, true);
        }
    }

    /// Call state from another node's presence, for members this node has
    /// no entry of (its own, from a backend request, are as new or newer).
    pub(super) fn learn_tracked(st: &mut RoomState, tracked: &[JsonMap]) {
        for entry in tracked {
            let sid = entry_session_id(entry);
            if st.is_member(sid) && st.tracked_pos(sid).is_none() {
                st.tracked.push(Tracked {
                    entry: entry.clone(),
                    received: 0,
                });
            }
        }
    }

    /// After the answers of every node were applied (members on a third
    /// node are known only then): the call state and the properties of
    /// the existing room they sent.
    pub(crate) fn learn_tracked_from(&self, answers: &[proto::cluster::RoomPresence]) {
        let mut st = self.state.lock();
        if let Some(p) = answers.iter().find_map(|p| p.properties.as_ref()) {
            st.properties = Some(p.clone());
        }
        for p in answers {
            Self::learn_tracked(&mut st, &p.tracked);
        }
    }

    /// Housekeeping: presence when due, and the members of nodes that
    /// fell silent leave.
    pub(crate) fn cluster_tick(&self, hub: &dyn Host, now: Instant) {
        let Some(interval) = hub.presence_interval() else {
            return;
        };
        let (due, left) = {
            let mut st = self.state.lock();
            if st.closed {
                return;
            }
            let due = st
                .presence_sent
                .is_none_or(|t| now.duration_since(t) >= interval);
            let silent: HashSet<String> = st
                .nodes
                .iter()
                .filter(|(_, t)| now.duration_since(**t) > interval * 3)
                .map(|(n, _)| n.clone())
                .collect();
            st.nodes.retain(|n, _| !silent.contains(n));
            st.remote_participants.retain(|n, _| !silent.contains(n));
            let mut left = Vec::new();
            st.remote.retain(|id, m| {
                let gone = match &m.node {
                    Some(n) => silent.contains(n),
                    // Never confirmed by its node's presence.
                    None => now.duration_since(m.since) > interval * 3,
                };
                if gone {
                    left.push(id.clone());
                }
                !gone
            });
            for id in &left {
                st.in_call.remove(id.as_str());
                st.forget(id);
            }
            (due && !st.sessions.is_empty(), left)
        };
        if !left.is_empty() {
            warn!(room = %self.id, sessions = left.len(), "members on a silent node left the room");
            let mut event = EventServerMessage::new("room", "leave");
            event.leave = Some(left);
            self.tell_local(ServerMessage::event(event));
        }
        if due {
            self.send_presence(hub, false, false);
        }
    }

    /// Number of members through other nodes.
    pub fn remote_count(&self) -> usize {
        self.state.lock().remote.len()
    }
}

impl Room {
    /// A joiner learns the members through other nodes (after those of
    /// this one), then the flags of their virtual sessions.
    pub(super) fn tell_about_remote_members(&self, session: &AnySession) {
        let (remote, remote_flags): (Vec<SessionEntry>, Vec<(String, u32)>) = {
            let st = self.state.lock();
            let entries = st.remote.values().map(|m| m.entry.clone()).collect();
            let flags = st
                .remote
                .iter()
                .filter(|(_, m)| m.flags != 0)
                .map(|(id, m)| (id.to_string(), m.flags))
                .collect();
            (entries, flags)
        };
        if let (AnySession::Client(c), false) = (session, remote.is_empty()) {
            // Members through other nodes, after those of this one, then
            // the flags of their virtual sessions.
            let mut event = EventServerMessage::new("room", "join");
            event.join = Some(remote);
            c.send_message(ServerMessage::event(event));
            for (sessionid, flags) in remote_flags {
                let mut ev = EventServerMessage::new("participants", "flags");
                ev.flags = Some(RoomFlagsEvent {
                    roomid: self.id.clone(),
                    sessionid,
                    flags,
                });
                c.send_message(ServerMessage::event(ev));
            }
        }
    }
}
