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

mod backend;
mod presence;

pub(crate) use backend::{disinvite_event, switchto_targets};

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
