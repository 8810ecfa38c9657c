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
use crate::core::host::Host;
use crate::core::session::{AnySession, ClientSession, VirtualSession};

mod backend;
mod participants;
mod presence;
mod transient;

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
    hub: Weak<dyn Host>,
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
    pub(crate) fn new<H: Host + 'static>(
        hub: &Arc<H>,
        id: &str,
        backend: Arc<Backend>,
        properties: Option<Raw>,
    ) -> Result<Arc<Room>, BusError> {
        let room = Arc::new(Room {
            hub: Arc::downgrade(hub) as Weak<dyn Host>,
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
            .bus()
            .subscribe(&backend_room_subject(&room.backend, id), handler)?;
        *room.backend_subscription.lock() = Some(sub);
        if hub.presence_interval().is_some() {
            let handler: Weak<dyn BusHandler> =
                Arc::downgrade(&(room.clone() as Arc<dyn BusHandler>));
            *room.presence_subscription.lock() = Some(hub.bus().subscribe(&room.subject, handler)?);
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
    pub(crate) fn publish_message(&self, hub: &dyn Host, msg: ServerMessage) {
        self.publish(hub, msg);
    }

    /// Clustering: whether another node may have members in the room (it
    /// announced some: join events, presence, the answers the room got when
    /// it started here). When not, room messages stay on this node: a member
    /// joining elsewhere later is announced here first (its node asks and
    /// sends its presence), and learns ours from our answer.
    pub fn reaches_other_nodes(&self, hub: &dyn Host) -> bool {
        if hub.presence_interval().is_none() {
            return true;
        }
        let st = self.state.lock();
        !st.remote.is_empty() || !st.nodes.is_empty()
    }

    fn publish(&self, hub: &dyn Host, msg: ServerMessage) {
        let out = OutMsg::new(msg);
        let msg = BusMessage::new(BusPayload::Message(out));
        let sent = if self.reaches_other_nodes(hub) {
            hub.bus().publish(&self.subject, msg)
        } else {
            hub.bus().publish_local(&self.subject, msg)
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
    fn announce(&self, hub: &dyn Host, msg: ServerMessage) {
        if hub.presence_interval().is_some() {
            self.tell_local(msg);
        } else {
            self.publish(hub, msg);
        }
    }

    pub(crate) fn add_session(
        &self,
        hub: &dyn Host,
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
        self.tell_about_remote_members(&session);
        hub.room_sessions_metric()
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
        if hub.presence_interval().is_some() {
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
    pub(crate) fn remove_session(&self, hub: &dyn Host, public_id: &str) -> bool {
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
        hub.room_sessions_metric()
            .dec(&[&self.backend.id, &self.id, session.client_type()]);
        if remaining > 0 || hub.presence_interval().is_some() {
            // Clustered, members elsewhere learn it even from the last one.
            let mut event = EventServerMessage::new("room", "leave");
            event.leave = Some(vec![public_id.to_owned()]);
            self.publish(hub, ServerMessage::event(event));
        }
        if session.is_internal() && (remaining > 0 || hub.presence_interval().is_some()) {
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

    fn destroy(&self, hub: &dyn Host) {
        hub.remove_room(self);
        self.backend_subscription.lock().take();
        self.presence_subscription.lock().take();
        for t in ["client", "internal", "virtual"] {
            hub.room_sessions_metric()
                .remove(&[&self.backend.id, &self.id, t]);
        }
    }

    /// Close the room (deleted by Nextcloud); returns its former members.
    pub(crate) fn close(&self, hub: &dyn Host) -> Vec<AnySession> {
        let mut st = self.state.lock();
        st.closed = true;
        let sessions = std::mem::take(&mut st.sessions);
        drop(st);
        self.destroy(hub);
        sessions
    }

    pub(crate) fn update_properties(&self, hub: &dyn Host, properties: Option<Raw>) {
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
                    self.process_backend_request(&*hub, req);
                }
            }
            BusPayload::Message(out) => self.follow_event(&out.msg, msg.send_time),
            BusPayload::Presence(p) => {
                if let Some(hub) = self.hub.upgrade() {
                    self.apply_presence(&*hub, p);
                }
            }
            BusPayload::Permissions(_) | BusPayload::Node(_) => {}
        }
    }
}
