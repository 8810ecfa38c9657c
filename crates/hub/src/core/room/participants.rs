//! Participant lists: the `participants` and `incall` updates a room
//! sends its members, with internal and virtual sessions added.

use super::*;

impl Room {
    /// Fill missing user ids and append internal and virtual sessions.
    pub(super) fn add_internal_sessions(&self, mut users: Vec<JsonMap>) -> Vec<JsonMap> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let st = self.state.lock();
        for user in users.iter_mut() {
            let Some(Value::String(sid)) = user.get("sessionId") else {
                continue;
            };
            if sid.is_empty() {
                continue;
            }
            let missing = match user.get("userId") {
                None => true,
                Some(Value::String(s)) => s.is_empty(),
                Some(_) => false,
            };
            if missing {
                // Clustering: a member of another node has the id its node
                // got from Nextcloud for the room (not its own user id).
                let uid = st.session_user.get(sid.as_str()).cloned().or_else(|| {
                    st.remote
                        .get(sid.as_str())
                        .and_then(|m| m.room_user.clone())
                });
                if let Some(uid) = uid {
                    user.insert("userId".into(), Value::String(uid));
                }
            }
        }
        let mut listed: HashSet<String> = users
            .iter()
            .filter_map(|u| u.get("sessionId").and_then(Value::as_str))
            .map(str::to_owned)
            .collect();
        let remote = st.remote_participants.values().flatten().cloned();
        let extra: Vec<JsonMap> = local_participants(&st.sessions)
            .into_iter()
            .chain(remote)
            .collect();
        // Talk's entry of a virtual session (a phone call through the SIP
        // bridge) is marked and carries the session's own call flags.
        for user in users.iter_mut() {
            let sid = entry_session_id(user);
            let own = extra.iter().find(|e| {
                entry_session_id(e) == sid && e.get("virtual") == Some(&Value::Bool(true))
            });
            if let Some(own) = own {
                user.insert("virtual".into(), Value::Bool(true));
                if let Some(flags) = own.get("inCall") {
                    user.insert("inCall".into(), flags.clone());
                }
            }
        }
        for mut entry in extra {
            let sid = entry.get("sessionId").and_then(Value::as_str).unwrap_or("");
            if !listed.insert(sid.to_owned()) {
                continue;
            }
            entry.insert("lastPing".into(), now.into());
            users.push(entry);
        }
        users
    }

    pub(super) fn participants_update(
        &self,
        changed: Vec<JsonMap>,
        users: Vec<JsonMap>,
    ) -> ServerMessage {
        let mut users = self.add_internal_sessions(strip_permissions(users));
        // Clients get `changed` merged into `users` (entries not listed yet).
        let known: HashSet<String> = users
            .iter()
            .filter_map(|u| {
                u.get("sessionId")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .collect();
        for entry in strip_permissions(changed) {
            let sid = entry.get("sessionId").and_then(Value::as_str).unwrap_or("");
            if known.contains(sid) {
                continue;
            }
            users.push(entry);
        }
        let mut event = EventServerMessage::new("participants", "update");
        event.update = Some(RoomEvent {
            roomid: self.id.clone(),
            // An empty list is left out, as upstream's omitempty does.
            users: if users.is_empty() { None } else { Some(users) },
            ..Default::default()
        });
        ServerMessage::event(event)
    }

    pub(crate) fn publish_users_changed_with_internal(&self, hub: &dyn Host) {
        // Clustering: the other nodes' lists include ours from now on.
        if hub.presence_interval().is_some() {
            self.send_presence(hub, false, false);
        }
        let users = self.state.lock().tracked_list();
        self.publish(hub, self.participants_update(Vec::new(), users));
    }

    pub(crate) fn publish_flags(&self, hub: &dyn Host, v: &VirtualSession) {
        if hub.presence_interval().is_some() {
            self.send_presence(hub, false, false);
        }
        let mut event = EventServerMessage::new("participants", "flags");
        event.flags = Some(RoomFlagsEvent {
            roomid: self.id.clone(),
            sessionid: v.public_id.to_string(),
            flags: v.flags(),
        });
        self.publish(hub, ServerMessage::event(event));
    }

    /// Backend `incall` (not `all`): `changed` names the sessions whose
    /// call state changed; old Talk versions also send the whole call as
    /// `users`. Every member is told the whole call, from the tracked state.
    pub(crate) fn publish_users_in_call_changed(
        &self,
        hub: &dyn Host,
        changed: Vec<JsonMap>,
        users: Option<Vec<JsonMap>>,
        received: i64,
    ) {
        let mut left_call = Vec::new();
        let list = {
            let mut st = self.state.lock();
            let fresh: Vec<JsonMap> = match users {
                Some(mut users) => {
                    // Old Talk: its list is the call (`changed` adds who
                    // just left it).
                    let listed: HashSet<String> = users
                        .iter()
                        .map(|u| entry_session_id(u).to_owned())
                        .collect();
                    users.extend(
                        changed
                            .iter()
                            .filter(|c| !listed.contains(entry_session_id(c)))
                            .cloned(),
                    );
                    st.tracked = users
                        .into_iter()
                        .map(|entry| Tracked { entry, received })
                        .collect();
                    changed
                }
                None => {
                    let mut fresh = Vec::new();
                    for entry in changed {
                        let sid = entry_session_id(&entry).to_owned();
                        match st.tracked_pos(&sid) {
                            Some(i) if st.tracked[i].received > received => {
                                debug!(room = %self.id, session = %sid, "ignoring an older call state");
                                continue;
                            }
                            Some(i) => {
                                st.tracked[i] = Tracked {
                                    entry: entry.clone(),
                                    received,
                                }
                            }
                            None => st.tracked.push(Tracked {
                                entry: entry.clone(),
                                received,
                            }),
                        }
                        fresh.push(entry);
                    }
                    fresh
                }
            };
            for user in &fresh {
                let Some(in_call) = user.get("inCall").and_then(in_call_value) else {
                    continue;
                };
                let sid = user
                    .get("sessionId")
                    .or_else(|| user.get("sessionid"))
                    .and_then(Value::as_str);
                let Some(sid) = sid else { continue };
                let Some(session) = hub.session_by_public_id(sid) else {
                    // Clustering: another server's member (for
                    // `requestoffer` permission checks here).
                    if st.remote.contains_key(sid) {
                        if in_call {
                            st.in_call.insert(Arc::from(sid));
                        } else {
                            st.in_call.remove(sid);
                        }
                    }
                    continue;
                };
                if in_call {
                    st.in_call.insert(session.public_id().clone());
                } else {
                    st.in_call.remove(sid);
                    if let AnySession::Client(c) = session {
                        left_call.push(c);
                    }
                }
            }
            st.tracked_list()
        };
        for c in left_call {
            debug!(session = %c.public_id, room = %self.id, "session left call");
            c.release_mcu_objects();
        }
        self.announce(hub, self.participants_update(Vec::new(), list));
    }

    /// Backend `incall` with `all: true`.
    pub(crate) fn publish_users_in_call_changed_all(
        &self,
        hub: &dyn Host,
        flags: i64,
        received: i64,
    ) {
        let mut left_call = Vec::new();
        {
            let mut st = self.state.lock();
            for t in st.tracked.iter_mut().filter(|t| t.received <= received) {
                t.entry.insert("inCall".into(), flags.into());
                t.received = received;
            }
            if flags & FLAG_IN_CALL != 0 {
                let mut joined = false;
                let ids: Vec<Arc<str>> = st
                    .sessions
                    .iter()
                    .filter_map(|s| match s {
                        AnySession::Client(c) if !c.is_internal() => Some(c.public_id.clone()),
                        _ => None,
                    })
                    .collect();
                // Internal and virtual members elsewhere do not make a change
                // (as local ones do not); client members elsewhere do.
                let not_clients: HashSet<&str> = st
                    .remote_participants
                    .values()
                    .flatten()
                    .map(entry_session_id)
                    .collect();
                let remote: Vec<(Arc<str>, bool)> = st
                    .remote
                    .keys()
                    .map(|k| (Arc::from(k.as_str()), !not_clients.contains(k.as_str())))
                    .collect();
                for (id, client) in remote {
                    joined |= st.in_call.insert(id) && client;
                }
                for id in ids {
                    joined |= st.in_call.insert(id);
                }
                if !joined {
                    return;
                }
            } else if !st.in_call.is_empty() {
                st.in_call.clear();
                left_call = st
                    .sessions
                    .iter()
                    .filter_map(|s| match s {
                        AnySession::Client(c) => Some(c.clone()),
                        _ => None,
                    })
                    .collect();
            } else {
                return;
            }
        }
        for c in left_call {
            c.release_mcu_objects();
        }
        let mut event = EventServerMessage::new("participants", "update");
        event.update = Some(RoomEvent {
            roomid: self.id.clone(),
            incall: Some(proto::to_raw(&flags)),
            all: true,
            ..Default::default()
        });
        self.announce(hub, ServerMessage::event(event));
    }

    /// Backend `participants`: `changed` updates the entries of tracked
    /// members (all but `inCall`, which only `incall` requests change);
    /// members are told the call plus the changed entries. Old Talk versions
    /// send every participant as `users`: then that list is sent, as before.
    pub(crate) fn publish_users_changed(
        &self,
        hub: &dyn Host,
        changed: Vec<JsonMap>,
        users: Option<Vec<JsonMap>>,
    ) {
        let tracked = {
            let mut st = self.state.lock();
            for entry in &changed {
                let Some(i) = st.tracked_pos(entry_session_id(entry)) else {
                    continue;
                };
                let t = &mut st.tracked[i].entry;
                for (k, v) in entry {
                    if k != "inCall" && k != "sessionId" {
                        t.insert(k.clone(), v.clone());
                    }
                }
            }
            st.tracked_list()
        };
        self.announce(
            hub,
            self.participants_update(changed, users.unwrap_or(tracked)),
        );
    }

    /// Tell `session` alone that `publisher` left the call and came back:
    /// two participants updates, each with only `publisher`'s entry (first
    /// with `inCall` 0, then as it is). The recipient's own entry is never
    /// in them (Talk's clients hang up when they see themselves out of the
    /// call). False when `publisher` is not in the call as far as the
    /// participant list goes.
    pub(crate) fn flap_participant(&self, session: &ClientSession, publisher: &str) -> bool {
        if *session.public_id == *publisher {
            return false;
        }
        let tracked = self.state.lock().tracked_list();
        let entry = self
            .add_internal_sessions(strip_permissions(tracked))
            .into_iter()
            .find(|e| entry_session_id(e) == publisher);
        let Some(entry) = entry else {
            return false;
        };
        if entry.get("inCall").and_then(Value::as_i64).unwrap_or(0) == 0 {
            return false;
        }
        let mut out = entry.clone();
        out.insert("inCall".into(), 0.into());
        for e in [out, entry] {
            let mut event = EventServerMessage::new("participants", "update");
            event.update = Some(RoomEvent {
                roomid: self.id.clone(),
                users: Some(vec![e]),
                ..Default::default()
            });
            session.send_message(ServerMessage::event(event));
        }
        true
    }

    /// After a resume without a queued participants update, send the last known list.
    pub(crate) fn notify_session_resumed(&self, session: &ClientSession) {
        let users = self.state.lock().tracked_list();
        let msg = self.participants_update(Vec::new(), users);
        let empty = msg
            .event
            .as_ref()
            .and_then(|e| e.update.as_ref())
            .and_then(|u| u.users.as_ref())
            .is_none_or(|u| u.is_empty());
        if !empty {
            session.send_message(msg);
        }
    }
}
