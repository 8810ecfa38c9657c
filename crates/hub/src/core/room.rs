//! A room: its members, in-call set, properties, participants list and
//! transient data. Changes are made under the room's lock; the resulting
//! events are published on the room's bus subject after the lock is released.

use parking_lot::Mutex;
use proto::backend::{BackendServerRoomRequest, JsonMap, PingEntry};
use proto::client::{
    EventServerMessage, RoomEvent, RoomEventMessage, RoomFlagsEvent, ServerMessage, SessionEntry,
    TransientDataServerMessage,
};
use proto::{Raw, RawValue};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};
use tracing::{debug, warn};
use url::Url;

use crate::bus::{BusError, BusHandler, BusMessage, BusPayload, Subscription};
use crate::core::backends::Backend;
use crate::core::conn::OutMsg;
use crate::core::session::{AnySession, ClientSession, VirtualSession};
use crate::Hub;

pub const FLAG_IN_CALL: i64 = 1;
pub const FLAG_WITH_AUDIO: i64 = 2;
pub const FLAG_WITH_VIDEO: i64 = 4;
pub const FLAG_WITH_PHONE: i64 = 8;

struct RoomState {
    /// Members in join order.
    sessions: Vec<AnySession>,
    in_call: HashSet<Arc<str>>,
    /// User ids Nextcloud gave for otherwise anonymous room sessions.
    session_user: HashMap<Arc<str>, String>,
    properties: Option<Raw>,
    /// The call as Talk described it (`changed-users`: Talk sends only what
    /// changed, the server keeps the rest): the last entry received for each
    /// member, by signaling session id, in the order first seen.
    tracked: Vec<Tracked>,
    last_requests: HashMap<String, i64>,
    transient: serde_json::Map<String, Value>,
    /// Transient entries set with a TTL (upstream 1.2.0, #575) and when they go.
    transient_expiry: HashMap<String, Instant>,
    closed: bool,
    /// Clustering: members through other nodes, by session id.
    remote: HashMap<String, RemoteMember>,
    /// When each other node last sent its presence for this room.
    nodes: HashMap<String, Instant>,
    /// Each other node's internal and virtual members, as participant
    /// list entries (from its presence).
    remote_participants: HashMap<String, Vec<JsonMap>>,
    /// When this node last sent its presence.
    presence_sent: Option<Instant>,
}

/// One member's entry in the call state, and when the backend request it
/// came with was received (requests reaching different nodes may be
/// applied out of order; an older entry never replaces a newer one).
struct Tracked {
    entry: JsonMap,
    received: i64,
}

fn entry_session_id(entry: &JsonMap) -> &str {
    entry.get("sessionId").and_then(Value::as_str).unwrap_or("")
}

impl RoomState {
    fn tracked_pos(&self, sid: &str) -> Option<usize> {
        self.tracked
            .iter()
            .position(|t| entry_session_id(&t.entry) == sid)
    }

    fn tracked_list(&self) -> Vec<JsonMap> {
        self.tracked.iter().map(|t| t.entry.clone()).collect()
    }

    /// A member left the room: it is no longer part of the call.
    fn forget(&mut self, sid: &str) {
        self.tracked.retain(|t| entry_session_id(&t.entry) != sid);
    }

    fn is_member(&self, sid: &str) -> bool {
        self.remote.contains_key(sid) || self.sessions.iter().any(|s| **s.public_id() == *sid)
    }
}

/// A member of the room through another node (clustering).
struct RemoteMember {
    /// Known from that node's presence; `None` while only its join event
    /// has been seen.
    node: Option<String>,
    since: Instant,
    entry: SessionEntry,
    /// The user id Nextcloud gave it for this room, from its node's
    /// presence (the join entry's `userid` may be its own user id).
    room_user: Option<String>,
    /// Flags of a virtual member (from its node's presence).
    flags: u32,
}

/// The participant list entries of the internal and virtual members among
/// `sessions` (without `lastPing`, added when a list is sent).
fn local_participants(sessions: &[AnySession]) -> Vec<JsonMap> {
    let mut out = Vec::new();
    for s in sessions {
        let entry = match s {
            AnySession::Client(c) if c.is_internal() => {
                let mut e = serde_json::json!({
                    "inCall": c.internal_incall(),
                    "sessionId": &*c.public_id,
                    "internal": true,
                });
                if !c.features.is_empty() {
                    e["features"] = serde_json::json!(c.features);
                }
                e
            }
            AnySession::Virtual(v) => serde_json::json!({
                "inCall": v.incall(),
                "sessionId": &*v.public_id,
                "virtual": true,
            }),
            _ => continue,
        };
        if let Value::Object(m) = entry {
            out.push(m);
        }
    }
    out
}

pub struct Room {
    hub: Weak<Hub>,
    pub id: String,
    pub backend: Arc<Backend>,
    /// `<backend id>|<room id>`: rooms of different backends never mix.
    pub key: String,
    pub subject: Arc<str>,
    state: Mutex<RoomState>,
    backend_subscription: Mutex<Option<Subscription>>,
    /// Clustering: the room's own subscription of its subject, to follow
    /// members on other nodes.
    presence_subscription: Mutex<Option<Subscription>>,
}

impl std::fmt::Debug for Room {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Room").field("key", &self.key).finish()
    }
}

pub fn room_key(backend: &Backend, id: &str) -> String {
    format!("{}|{id}", backend.id)
}

pub fn room_subject(backend: &Backend, id: &str) -> String {
    proto::cluster::encoded_subject("room", id, backend.subject_suffix())
}

pub fn backend_room_subject(backend: &Backend, id: &str) -> String {
    proto::cluster::encoded_subject("backend.room", id, backend.subject_suffix())
}

/// Interpret an `inCall` value: bool, or an int whose bit 0 means "in call".
pub fn in_call_value(v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        Value::Number(n) => n
            .as_f64()
            .map(|f| (f as i64) & FLAG_IN_CALL == FLAG_IN_CALL),
        _ => None,
    }
}

impl Room {
    pub(crate) fn new(
        hub: &Arc<Hub>,
        id: &str,
        backend: Arc<Backend>,
        properties: Option<Raw>,
    ) -> Result<Arc<Room>, BusError> {
        let room = Arc::new(Room {
            hub: Arc::downgrade(hub),
            id: id.to_owned(),
            key: room_key(&backend, id),
            subject: Arc::from(room_subject(&backend, id)),
            state: Mutex::new(RoomState {
                sessions: Vec::new(),
                in_call: HashSet::new(),
                session_user: HashMap::new(),
                properties,
                tracked: Vec::new(),
                last_requests: HashMap::new(),
                transient: serde_json::Map::new(),
                transient_expiry: HashMap::new(),
                closed: false,
                remote: HashMap::new(),
                nodes: HashMap::new(),
                remote_participants: HashMap::new(),
                presence_sent: None,
            }),
            backend_subscription: Mutex::new(None),
            presence_subscription: Mutex::new(None),
            backend,
        });
        let handler: Weak<dyn BusHandler> = Arc::downgrade(&(room.clone() as Arc<dyn BusHandler>));
        let sub = hub
            .bus
            .subscribe(&backend_room_subject(&room.backend, id), handler)?;
        *room.backend_subscription.lock() = Some(sub);
        if hub.settings.presence_interval.is_some() {
            let handler: Weak<dyn BusHandler> =
                Arc::downgrade(&(room.clone() as Arc<dyn BusHandler>));
            *room.presence_subscription.lock() = Some(hub.bus.subscribe(&room.subject, handler)?);
        }
        Ok(room)
    }

    pub fn properties(&self) -> Option<Raw> {
        self.state.lock().properties.clone()
    }

    pub fn session_count(&self) -> usize {
        self.state.lock().sessions.len()
    }

    pub fn has_session(&self, public_id: &str) -> bool {
        self.state
            .lock()
            .sessions
            .iter()
            .any(|s| **s.public_id() == *public_id)
    }

    /// Clustering: `public_id` is a member through another server.
    pub fn is_remote_member(&self, public_id: &str) -> bool {
        self.state.lock().remote.contains_key(public_id)
    }

    pub fn is_in_call(&self, public_id: &str) -> bool {
        self.state.lock().in_call.contains(public_id)
    }

    /// How many sessions (of any node) are in the call.
    pub fn in_call_count(&self) -> usize {
        self.state.lock().in_call.len()
    }

    pub fn room_session_user_id(&self, public_id: &str) -> Option<String> {
        self.state.lock().session_user.get(public_id).cloned()
    }

    pub fn sessions(&self) -> Vec<AnySession> {
        self.state.lock().sessions.clone()
    }

    /// Send `msg` to every member.
    pub(crate) fn publish_message(&self, hub: &Hub, msg: ServerMessage) {
        self.publish(hub, msg);
    }

    /// Clustering: whether another node may have members in the room (it
    /// announced some: join events, presence, the answers the room got when
    /// it started here). When not, room messages stay on this node: a member
    /// joining elsewhere later is announced here first (its node asks and
    /// sends its presence), and learns ours from our answer.
    pub fn reaches_other_nodes(&self, hub: &Hub) -> bool {
        if hub.settings.presence_interval.is_none() {
            return true;
        }
        let st = self.state.lock();
        !st.remote.is_empty() || !st.nodes.is_empty()
    }

    fn publish(&self, hub: &Hub, msg: ServerMessage) {
        let out = OutMsg::new(msg);
        let msg = BusMessage::new(BusPayload::Message(out));
        let sent = if self.reaches_other_nodes(hub) {
            hub.bus.publish(&self.subject, msg)
        } else {
            hub.bus.publish_local(&self.subject, msg)
        };
        if let Err(e) = sent {
            warn!(room = %self.id, error = %e, "could not publish to room");
        }
    }

    /// Add a member. `before_announce` sees the members that were there
    /// before (the joiner gets that list before its own join event).
    /// Events that follow a backend request: every node of a cluster
    /// handles the request itself, so each tells only its own members
    /// (published on the bus, they would arrive once per node).
    fn announce(&self, hub: &Hub, msg: ServerMessage) {
        if hub.settings.presence_interval.is_some() {
            self.tell_local(msg);
        } else {
            self.publish(hub, msg);
        }
    }

    pub(crate) fn add_session(
        &self,
        hub: &Hub,
        session: AnySession,
        session_data: Option<&RawValue>,
        before_announce: impl FnOnce(&[AnySession]),
    ) {
        let data_user = session_data.and_then(|d| {
            serde_json::from_str::<proto::backend::RoomSessionData>(d.get())
                .ok()
                .map(|d| d.userid)
        });
        let mut st = self.state.lock();
        let found = st
            .sessions
            .iter()
            .any(|s| s.public_id() == session.public_id());
        let others: Vec<AnySession> = st
            .sessions
            .iter()
            .filter(|s| s.public_id() != session.public_id())
            .cloned()
            .collect();
        if !found {
            st.sessions.push(session.clone());
        }
        if let Some(u) = &data_user {
            st.session_user
                .insert(session.public_id().clone(), u.clone());
        }
        let transient = if st.transient.is_empty() {
            None
        } else {
            Some(st.transient.clone())
        };
        drop(st);
        if found {
            return;
        }
        // Upstream order for the joiner: transient data, the members already
        // there, then the join event everyone gets.
        if let (AnySession::Client(c), Some(data)) = (&session, transient) {
            c.send_message(ServerMessage::transient(TransientDataServerMessage {
                kind: "initial".into(),
                data: Some(data),
                ..Default::default()
            }));
        }
        before_announce(&others);
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
        if let (AnySession::Client(c), false) = (&session, remote.is_empty()) {
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
        hub.metrics
            .room_sessions
            .inc(&[&self.backend.id, &self.id, session.client_type()]);
        // The join event for the room (the new member included).
        let mut user_id = session.user_id();
        if user_id.is_empty() {
            user_id = data_user.unwrap_or_default();
        }
        let entry = SessionEntry {
            sessionid: session.public_id().to_string(),
            userid: user_id,
            features: session.features(),
            user: session.user_data(),
            roomsessionid: match &session {
                AnySession::Client(c) => c.room_session_id(),
                AnySession::Virtual(_) => String::new(),
            },
        };
        let mut event = EventServerMessage::new("room", "join");
        event.join = Some(vec![entry]);
        self.publish(hub, ServerMessage::event(event));
        if hub.settings.presence_interval.is_some() {
            // The first member here asks the other nodes for theirs.
            self.send_presence(hub, others.is_empty(), false);
        }
        match &session {
            AnySession::Client(c) => {
                if c.is_internal() {
                    self.publish_users_changed_with_internal(hub);
                }
            }
            AnySession::Virtual(v) => {
                self.publish_users_changed_with_internal(hub);
                if v.flags() != 0 {
                    self.publish_flags(hub, v);
                }
            }
        }
    }

    /// Remove a member. Returns false when the room became empty and was closed.
    pub(crate) fn remove_session(&self, hub: &Hub, public_id: &str) -> bool {
        let mut st = self.state.lock();
        let Some(pos) = st
            .sessions
            .iter()
            .position(|s| **s.public_id() == *public_id)
        else {
            return true;
        };
        let session = st.sessions.remove(pos);
        st.in_call.remove(public_id);
        st.forget(public_id);
        st.session_user.remove(public_id);
        let remaining = st.sessions.len();
        if remaining == 0 {
            st.closed = true;
        }
        drop(st);
        hub.metrics
            .room_sessions
            .dec(&[&self.backend.id, &self.id, session.client_type()]);
        if remaining > 0 || hub.settings.presence_interval.is_some() {
            // Clustered, members elsewhere learn it even from the last one.
            let mut event = EventServerMessage::new("room", "leave");
            event.leave = Some(vec![public_id.to_owned()]);
            self.publish(hub, ServerMessage::event(event));
        }
        if session.is_internal() && (remaining > 0 || hub.settings.presence_interval.is_some()) {
            // Clustered, the list without it goes to members elsewhere
            // even from the last one here.
            self.publish_users_changed_with_internal(hub);
        }
        if remaining > 0 {
            return true;
        }
        self.destroy(hub);
        false
    }

    fn destroy(&self, hub: &Hub) {
        hub.remove_room(self);
        self.backend_subscription.lock().take();
        self.presence_subscription.lock().take();
        for t in ["client", "internal", "virtual"] {
            hub.metrics
                .room_sessions
                .remove(&[&self.backend.id, &self.id, t]);
        }
    }

    /// Close the room (deleted by Nextcloud); returns its former members.
    pub(crate) fn close(&self, hub: &Hub) -> Vec<AnySession> {
        let mut st = self.state.lock();
        st.closed = true;
        let sessions = std::mem::take(&mut st.sessions);
        drop(st);
        self.destroy(hub);
        sessions
    }

    pub(crate) fn update_properties(&self, hub: &Hub, properties: Option<Raw>) {
        let mut st = self.state.lock();
        let same = match (&st.properties, &properties) {
            (None, None) => true,
            (Some(a), Some(b)) => a.get() == b.get(),
            _ => false,
        };
        if same {
            return;
        }
        st.properties = properties.clone();
        drop(st);
        self.announce(hub, ServerMessage::room("", &self.id, properties));
    }

    /// Fill missing user ids and append internal and virtual sessions.
    fn add_internal_sessions(&self, mut users: Vec<JsonMap>) -> Vec<JsonMap> {
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

    fn participants_update(&self, changed: Vec<JsonMap>, users: Vec<JsonMap>) -> ServerMessage {
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

    pub(crate) fn publish_users_changed_with_internal(&self, hub: &Hub) {
        // Clustering: the other nodes' lists include ours from now on.
        if hub.settings.presence_interval.is_some() {
            self.send_presence(hub, false, false);
        }
        let users = self.state.lock().tracked_list();
        self.publish(hub, self.participants_update(Vec::new(), users));
    }

    pub(crate) fn publish_flags(&self, hub: &Hub, v: &VirtualSession) {
        if hub.settings.presence_interval.is_some() {
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
        hub: &Hub,
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
    pub(crate) fn publish_users_in_call_changed_all(&self, hub: &Hub, flags: i64, received: i64) {
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
        hub: &Hub,
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

    pub(crate) fn publish_room_message(&self, hub: &Hub, data: Option<Raw>) {
        let Some(data) = data else { return };
        let mut event = EventServerMessage::new("room", "message");
        event.message = Some(RoomEventMessage {
            roomid: self.id.clone(),
            data: Some(data),
        });
        self.announce(hub, ServerMessage::event(event));
    }

    /// Set (or with `None`, remove) a transient value; members are told via
    /// the room subject. With a `ttl` the entry is removed after that time
    /// (housekeeping checks every second).
    pub(crate) fn set_transient(
        &self,
        hub: &Hub,
        key: &str,
        value: Option<Value>,
        ttl: Option<Duration>,
    ) {
        let Some(value) = value.filter(|v| !v.is_null()) else {
            self.remove_transient(hub, key);
            return;
        };
        let mut st = self.state.lock();
        match ttl {
            Some(ttl) => {
                st.transient_expiry
                    .insert(key.to_owned(), Instant::now() + ttl);
            }
            None => {
                st.transient_expiry.remove(key);
            }
        }
        let old = st.transient.get(key).cloned();
        if old.as_ref() == Some(&value) {
            return;
        }
        st.transient.insert(key.to_owned(), value.clone());
        drop(st);
        self.publish(
            hub,
            ServerMessage::transient(TransientDataServerMessage {
                kind: "set".into(),
                key: key.to_owned(),
                oldvalue: old,
                value: Some(value),
                data: None,
            }),
        );
    }

    /// Remove transient entries whose TTL ran out.
    pub(crate) fn expire_transient(&self, hub: &Hub, now: Instant) {
        let expired: Vec<String> = {
            let st = self.state.lock();
            if st.transient_expiry.is_empty() {
                return;
            }
            st.transient_expiry
                .iter()
                .filter(|(_, t)| **t <= now)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for key in expired {
            self.remove_transient(hub, &key);
        }
    }

    pub(crate) fn remove_transient(&self, hub: &Hub, key: &str) {
        let old = {
            let mut st = self.state.lock();
            st.transient_expiry.remove(key);
            st.transient.remove(key)
        };
        let Some(old) = old else { return };
        self.publish(
            hub,
            ServerMessage::transient(TransientDataServerMessage {
                kind: "remove".into(),
                key: key.to_owned(),
                oldvalue: Some(old),
                ..Default::default()
            }),
        );
    }

    /// Ping entries of the members, grouped by backend URL (the hub
    /// combines them across rooms).
    pub(crate) fn ping_entries(&self) -> Vec<(Url, Vec<PingEntry>)> {
        let st = self.state.lock();
        if st.closed {
            return Vec::new();
        }
        let mut groups: Vec<(Url, Vec<PingEntry>)> = Vec::new();
        for s in &st.sessions {
            let (url, entry) = match s {
                AnySession::Client(c) => {
                    let sid = c.room_session_id();
                    if sid.is_empty() {
                        continue;
                    }
                    (
                        &c.backend_url,
                        PingEntry {
                            userid: c.auth_user_id.clone(),
                            sessionid: sid,
                        },
                    )
                }
                AnySession::Virtual(v) => (
                    &v.backend_url,
                    PingEntry {
                        userid: v.user_id.clone(),
                        sessionid: v.public_id.to_string(),
                    },
                ),
            };
            match groups.iter_mut().find(|(u, _)| u == url) {
                Some((_, list)) => list.push(entry),
                None => groups.push((url.clone(), vec![entry])),
            }
        }
        groups
    }

    /// Internal sessions learn about a deletion before they are removed.
    fn notify_internal_deleted(&self) {
        let internal: Vec<Arc<ClientSession>> = self
            .state
            .lock()
            .sessions
            .iter()
            .filter_map(|s| match s {
                AnySession::Client(c) if c.is_internal() => Some(c.clone()),
                _ => None,
            })
            .collect();
        for s in internal {
            s.send_message(ServerMessage::event(EventServerMessage::new(
                "room", "delete",
            )));
        }
    }

    fn process_backend_request(&self, hub: &Arc<Hub>, req: &BackendServerRoomRequest) {
        // A request older than the last one of its kind is outdated, when
        // it replaces what the other said. Changes of single sessions
        // (`changed` without a whole list) are ordered per session instead.
        let deltas = match req.kind.as_str() {
            "incall" => req
                .incall
                .as_ref()
                .is_some_and(|i| !i.all && i.users.is_none()),
            "participants" => req.participants.as_ref().is_some_and(|p| p.users.is_none()),
            _ => false,
        };
        if !deltas {
            let mut st = self.state.lock();
            if st
                .last_requests
                .get(&req.kind)
                .is_some_and(|last| *last > req.received)
            {
                debug!(room = %self.id, kind = %req.kind, "ignoring outdated backend request");
                return;
            }
            st.last_requests.insert(req.kind.clone(), req.received);
        }
        match req.kind.as_str() {
            "update" => {
                let update = req.update.as_ref();
                let props = update.and_then(|u| u.properties.clone());
                self.update_properties(hub, props.clone());
                if update.is_none_or(|u| u.userids.is_none()) {
                    // `changed-users`: Talk no longer names the users.
                    self.announce_roomlist_update(hub, props);
                }
            }
            "invite" => {
                if let Some(inv) = req.invite.as_ref().filter(|i| i.alluserids.is_none()) {
                    self.announce_roomlist_update(hub, inv.properties.clone());
                }
            }
            "disinvite" => {
                let Some(d) = &req.disinvite else { return };
                if d.alluserids.is_none() {
                    self.announce_roomlist_update(hub, d.properties.clone());
                }
                self.disinvite_local_sessions(hub, &d.sessionids);
            }
            "delete" => {
                // Old Talk versions name the users to tell (they are told
                // on their user subjects); without a list, the members are.
                let listed = req.delete.as_ref().is_some_and(|d| d.userids.is_some());
                self.notify_internal_deleted();
                hub.room_deleted(self, !listed);
            }
            "incall" => {
                let Some(incall) = &req.incall else { return };
                if incall.all {
                    let flags = match incall
                        .incall
                        .as_ref()
                        .map(|r| serde_json::from_str::<Value>(r.get()))
                    {
                        Some(Ok(Value::Number(n))) => n.as_i64().unwrap_or(0),
                        Some(Ok(Value::Bool(true))) => FLAG_IN_CALL,
                        Some(Ok(Value::Bool(false))) => 0,
                        _ => {
                            warn!(room = %self.id, "unsupported incall flags, ignoring");
                            return;
                        }
                    };
                    self.publish_users_in_call_changed_all(hub, flags, req.received);
                } else {
                    let (changed, users) =
                        self.translated(hub, &incall.changed, incall.users.as_deref());
                    if changed.is_empty() && users.as_ref().is_none_or(Vec::is_empty) {
                        return;
                    }
                    self.publish_users_in_call_changed(hub, changed, users, req.received);
                }
            }
            "participants" => {
                if let Some(p) = &req.participants {
                    let (changed, users) = self.translated(hub, &p.changed, p.users.as_deref());
                    if changed.is_empty() && users.as_ref().is_none_or(Vec::is_empty) {
                        return;
                    }
                    self.apply_local_permissions(hub, &changed);
                    self.publish_users_changed(hub, changed, users);
                }
            }
            "message" => {
                let data = req.message.as_ref().and_then(|m| m.data.clone());
                self.publish_room_message(hub, data);
            }
            "switchto" => {
                let Some(sw) = &req.switchto else { return };
                let Ok(targets) = crate::backend::api::switchto_targets(sw) else {
                    return;
                };
                for (room_session, details) in targets {
                    let Some(public) = hub.session_for_room_session(&room_session) else {
                        continue;
                    };
                    let Some(AnySession::Client(c)) = hub.session_by_public_id(&public) else {
                        continue;
                    };
                    let mut event = EventServerMessage::new("room", "switchto");
                    event.switchto = Some(proto::client::SwitchToEvent {
                        roomid: sw.roomid.clone(),
                        details,
                    });
                    c.send_message(ServerMessage::event(event));
                }
            }
            other => debug!(room = %self.id, kind = %other, "unsupported backend room request"),
        }
    }
}

impl Room {
    /// Backend requests carry Nextcloud's (Talk) session ids: every server
    /// translates them itself, knowing its own sessions and, clustered, the
    /// others' from the room presence. Entries of unknown sessions (and
    /// "0", not in the meeting) are dropped.
    fn translated(
        &self,
        hub: &Hub,
        changed: &[JsonMap],
        users: Option<&[JsonMap]>,
    ) -> (Vec<JsonMap>, Option<Vec<JsonMap>>) {
        let (remote, local, virtuals) = {
            let st = self.state.lock();
            let remote: HashMap<String, String> = st
                .remote
                .values()
                .filter(|m| !m.entry.roomsessionid.is_empty())
                .map(|m| (m.entry.roomsessionid.clone(), m.entry.sessionid.clone()))
                .collect();
            let local: HashSet<Arc<str>> =
                st.sessions.iter().map(|s| s.public_id().clone()).collect();
            // Talk knows a virtual session (a phone call through the SIP
            // bridge) by its signaling id.
            let virtuals: HashSet<Arc<str>> = st
                .sessions
                .iter()
                .filter(|s| matches!(s, AnySession::Virtual(_)))
                .map(|s| s.public_id().clone())
                .collect();
            (remote, local, virtuals)
        };
        let fix = |list: &[JsonMap]| -> Vec<JsonMap> {
            list.iter()
                .filter_map(|u| {
                    let rs = u.get("sessionId").and_then(Value::as_str)?;
                    if rs == "0" {
                        return None;
                    }
                    // A session of this server counts only while it is a
                    // member of this room.
                    let public = hub
                        .session_for_room_session(rs)
                        .filter(|p| local.contains(p))
                        .map(|p| p.to_string())
                        .or_else(|| remote.get(rs).cloned())
                        .or_else(|| virtuals.contains(rs).then(|| rs.to_owned()))?;
                    let mut u = u.clone();
                    u.insert("sessionId".into(), Value::String(public));
                    Some(u)
                })
                .collect()
        };
        (fix(changed), users.map(fix))
    }

    /// roomlist `update` for the members (Talk with `changed-users` no
    /// longer names the users to tell). Every node tells its own.
    fn announce_roomlist_update(&self, hub: &Hub, properties: Option<Raw>) {
        let mut event = EventServerMessage::new("roomlist", "update");
        event.update = Some(RoomEvent {
            roomid: self.id.clone(),
            properties,
            ..Default::default()
        });
        self.announce(hub, ServerMessage::event(event));
    }

    /// `disinvite` by Talk session id: this server's sessions among them
    /// (every node handles the request for its own). A virtual session's
    /// phone call is hung up.
    fn disinvite_local_sessions(&self, hub: &Hub, sessionids: &[String]) {
        if sessionids.is_empty() {
            return;
        }
        let msg = ServerMessage::event(disinvite_event(&self.id, "disinvited"));
        let out = OutMsg::new(msg);
        for rs in sessionids {
            if rs == "0" {
                continue;
            }
            if let Some(public) = hub.session_for_room_session(rs) {
                if let Some(AnySession::Client(c)) = hub.session_by_public_id(&public) {
                    c.send(&out);
                }
            } else if let Some(AnySession::Virtual(v)) = hub.session_by_public_id(rs) {
                hub.hang_up_virtual(&v, &self.id);
            }
        }
    }

    /// Permissions in a participants update, for this server's members.
    fn apply_local_permissions(&self, hub: &Hub, changed: &[JsonMap]) {
        for (sid, perms) in changed_permissions(changed) {
            if let Some(AnySession::Client(c)) = hub.session_by_public_id(&sid) {
                c.set_permissions(&perms);
            }
        }
    }
}

/// `roomlist`/`disinvite` for room `roomid`.
pub(crate) fn disinvite_event(roomid: &str, reason: &str) -> EventServerMessage {
    let mut event = EventServerMessage::new("roomlist", "disinvite");
    event.disinvite = Some(proto::client::RoomDisinviteEvent {
        roomid: roomid.to_owned(),
        properties: None,
        reason: reason.to_owned(),
    });
    event
}

/// The sessions of a participants update's `changed` entries that carry a
/// `permissions` list, with that list.
pub(crate) fn changed_permissions(changed: &[JsonMap]) -> Vec<(String, Vec<String>)> {
    changed
        .iter()
        .filter_map(|user| {
            let Some(Value::Array(list)) = user.get("permissions") else {
                return None;
            };
            let sid = user.get("sessionId").and_then(Value::as_str)?;
            let perms: Option<Vec<String>> =
                list.iter().map(|p| p.as_str().map(str::to_owned)).collect();
            Some((sid.to_owned(), perms?))
        })
        .collect()
}

/// The `join` entry of a member. Called with the room's state locked, so
/// it must not ask the room anything (`data_user` is the room's user id for
/// the session, what `user_id()` would look up).
fn entry_of(session: &AnySession, data_user: Option<&String>) -> SessionEntry {
    let mut userid = match session {
        AnySession::Client(c) => c.auth_user_id.clone(),
        AnySession::Virtual(v) => v.user_id.clone(),
    };
    if userid.is_empty() {
        userid = data_user.cloned().unwrap_or_default();
    }
    SessionEntry {
        sessionid: session.public_id().to_string(),
        userid,
        features: session.features(),
        user: session.user_data(),
        roomsessionid: match session {
            AnySession::Client(c) => c.room_session_id(),
            AnySession::Virtual(_) => String::new(),
        },
    }
}

/// Clustering (ours; upstream's NATS rooms only know their own node's
/// members): every node hosting members of a room sends its member list on
/// the room subject — when its first member joins (asking the others for
/// theirs), when asked, and every `[nats] presenceinterval`. Together with
/// the join and leave events already on that subject, each node knows the
/// whole room: a joiner is told about members on other nodes, and when a
/// node falls silent for three intervals (it died, or lost NATS) its
/// members leave the room for everybody else.
impl Room {
    fn is_local(st: &RoomState, id: &str) -> bool {
        st.sessions.iter().any(|s| **s.public_id() == *id)
    }

    /// Send this node's members (and ask for the others' with `request`;
    /// with `transient`, the room's transient data too).
    pub(crate) fn send_presence(&self, hub: &Hub, request: bool, transient: bool) {
        let Some(mut presence) = self.presence_with(hub, transient) else {
            return;
        };
        presence.request = request;
        self.state.lock().presence_sent = Some(Instant::now());
        let msg = BusMessage::new(BusPayload::Presence(Arc::new(presence)));
        if let Err(e) = hub.bus.publish(&self.subject, msg) {
            debug!(room = %self.id, error = %e, "could not send room presence");
        }
    }

    /// This node's members, transient data included, for a node that starts
    /// hosting the room (`None` without members here).
    pub(crate) fn presence(&self, hub: &Hub) -> Option<proto::cluster::RoomPresence> {
        self.presence_with(hub, true)
            .filter(|p| !p.sessions.is_empty())
    }

    fn presence_with(&self, hub: &Hub, transient: bool) -> Option<proto::cluster::RoomPresence> {
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
            node: hub.node_id.to_string(),
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
    fn tell_local(&self, msg: ServerMessage) {
        let members = self.sessions();
        let out = OutMsg::new(msg);
        for s in members {
            if let AnySession::Client(c) = s {
                c.send(&out);
            }
        }
    }

    fn follow_event(&self, msg: &ServerMessage, send_time: i64) {
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

    pub(crate) fn apply_presence(&self, hub: &Hub, p: &proto::cluster::RoomPresence) {
        if *p.node == *hub.node_id {
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
    fn learn_tracked(st: &mut RoomState, tracked: &[JsonMap]) {
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
    pub(crate) fn cluster_tick(&self, hub: &Hub, now: Instant) {
        let Some(interval) = hub.settings.presence_interval else {
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

fn strip_permissions(mut list: Vec<JsonMap>) -> Vec<JsonMap> {
    for u in list.iter_mut() {
        u.remove("permissions");
    }
    list
}

impl BusHandler for Room {
    fn on_bus_message(&self, _subject: &str, msg: &BusMessage) {
        match &msg.payload {
            BusPayload::Room(req) => {
                if let Some(hub) = self.hub.upgrade() {
                    self.process_backend_request(&hub, req);
                }
            }
            BusPayload::Message(out) => self.follow_event(&out.msg, msg.send_time),
            BusPayload::Presence(p) => {
                if let Some(hub) = self.hub.upgrade() {
                    self.apply_presence(&hub, p);
                }
            }
            BusPayload::Permissions(_) | BusPayload::Node(_) => {}
        }
    }
}
