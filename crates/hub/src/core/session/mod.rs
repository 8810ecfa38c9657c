//! Sessions: what survives a dropped connection. A `ClientSession` belongs to a
//! `client` or `internal` connection and can be resumed; a `VirtualSession` is
//! created by an internal client (e.g. a SIP bridge) and has no socket.

use parking_lot::Mutex;
use proto::client::{ServerMessage, CLIENT_TYPE_CLIENT, CLIENT_TYPE_INTERNAL, CLIENT_TYPE_VIRTUAL};
use proto::RawValue;
use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Weak};
use tracing::{info, warn};
use url::Url;

use crate::bus::{BusHandler, BusMessage, BusPayload, Subscription};
use crate::core::backends::Backend;
use crate::core::conn::{Conn, Frame, OutMsg};
use crate::core::host::Host;
use crate::core::room::Room;
use crate::core::settings::{MAX_BACKLOG, MAX_PENDING_MESSAGES};

mod delivery;
mod virtual_session;

pub use virtual_session::{virtual_session_key, AnySession, VirtualSession};

pub const PERMISSION_PUBLISH_MEDIA: &str = "publish-media";
pub const PERMISSION_PUBLISH_AUDIO: &str = "publish-audio";
pub const PERMISSION_PUBLISH_VIDEO: &str = "publish-video";
pub const PERMISSION_PUBLISH_SCREEN: &str = "publish-screen";
pub const PERMISSION_CONTROL: &str = "control";
pub const PERMISSION_TRANSIENT_DATA: &str = "transient-data";
pub const PERMISSION_HIDE_DISPLAYNAMES: &str = "hide-displaynames";

/// Path appended to a client's backend URL when it is not an OCS URL.
pub const OCS_SIGNALING_BACKEND_PATH: &str = "ocs/v2.php/apps/spreed/api/v1/signaling/backend";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientType {
    Client,
    Internal,
}

impl ClientType {
    pub fn as_str(&self) -> &'static str {
        match self {
            ClientType::Client => CLIENT_TYPE_CLIENT,
            ClientType::Internal => CLIENT_TYPE_INTERNAL,
        }
    }
}

/// What a session makes of a message before queueing it.
enum Filtered {
    Drop,
    Same,
    /// Sent instead of the original (a per-session copy, or several).
    Replaced(Vec<Arc<OutMsg>>),
}

/// A frame kept for a session whose client is away.
#[derive(Debug)]
struct Pending {
    frame: Frame,
    participants_update: bool,
}

#[derive(Default)]
struct SessionState {
    conn: Option<Arc<Conn>>,
    pending: VecDeque<Pending>,
    has_pending_chat: bool,
    has_pending_participants: bool,
    room: Option<Arc<Room>>,
    room_session_id: String,
    /// `None` until Nextcloud sends a permission list ("legacy" mode).
    permissions: Option<HashSet<String>>,
    subscriptions: Vec<Subscription>,
    room_subscription: Option<Subscription>,
    virtual_sessions: Vec<Arc<VirtualSession>>,
    /// Set while the session is in a room of another server.
    federation: Option<Arc<dyn FederatedRoom>>,
    /// Publishers and subscribers on the media server; boxed so that
    /// sessions without media pay one pointer.
    mcu: Option<Box<crate::mcu::session::McuObjects>>,
}

/// The connection to a federated room on another server, as a session
/// holds it. Implemented by the federation layer; the session only keeps
/// it, closes it, and hands it back (a `dyn Any` lets that layer recover
/// its own type).
pub trait FederatedRoom: std::any::Any + Send + Sync + std::fmt::Debug {
    /// Tells this connection from a later one of the same session.
    fn id(&self) -> u64;
    /// End the remote connection (saying `bye` to the other server).
    fn close(&self);
}

/// A session of a `client` or `internal` connection.
pub struct ClientSession {
    hub: Weak<dyn Host>,
    me: Weak<ClientSession>,
    pub sid: u64,
    pub public_id: Arc<str>,
    /// `session.<public id>`, built once: every message to this session is
    /// published on it.
    pub subject: Arc<str>,
    pub private_id: String,
    pub client_type: ClientType,
    pub backend: Arc<Backend>,
    /// Where room/ping/session requests for this session go.
    pub backend_url: Url,
    pub auth_user_id: String,
    pub user_data: Option<Arc<RawValue>>,
    pub features: Vec<String>,
    /// Version of the hello that created the session, echoed on resume.
    pub hello_version: &'static str,
    /// In-call flags an internal client set for itself (`internal-incall`);
    /// `None` means upstream's default for internal clients (in call with audio).
    internal_incall: Mutex<Option<i64>>,
    room_join_time: AtomicI64,
    closed: AtomicBool,
    state: Mutex<SessionState>,
}

impl std::fmt::Debug for ClientSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSession")
            .field("public_id", &self.public_id)
            .finish()
    }
}

/// Build the URL room/ping requests go to from the hello `auth.url`.
pub fn session_backend_url(auth_url: &str) -> Option<Url> {
    if auth_url.contains("/ocs/v2.php/") {
        return Url::parse(auth_url).ok();
    }
    let mut s = auth_url.to_owned();
    if !s.ends_with('/') {
        s.push('/');
    }
    s.push_str(OCS_SIGNALING_BACKEND_PATH);
    Url::parse(&s).ok()
}

pub struct NewSession {
    pub sid: u64,
    pub public_id: Arc<str>,
    pub private_id: String,
    pub client_type: ClientType,
    pub backend: Arc<Backend>,
    pub backend_url: Url,
    pub user_id: String,
    pub user_data: Option<Arc<RawValue>>,
    pub features: Vec<String>,
    pub hello_version: &'static str,
}

impl ClientSession {
    pub(crate) fn new<H: Host + 'static>(hub: &Arc<H>, n: NewSession) -> Arc<ClientSession> {
        Arc::new_cyclic(|me| ClientSession {
            hub: Arc::downgrade(hub) as Weak<dyn Host>,
            me: me.clone(),
            sid: n.sid,
            subject: Arc::from(proto::cluster::session_subject(&n.public_id)),
            public_id: n.public_id,
            private_id: n.private_id,
            client_type: n.client_type,
            backend: n.backend,
            backend_url: n.backend_url,
            auth_user_id: n.user_id,
            user_data: n.user_data,
            features: n.features,
            hello_version: n.hello_version,
            internal_incall: Mutex::new(None),
            room_join_time: AtomicI64::new(0),
            closed: AtomicBool::new(false),
            state: Mutex::new(SessionState::default()),
        })
    }

    pub fn is_internal(&self) -> bool {
        self.client_type == ClientType::Internal
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the client announced `feature` in its hello.
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.iter().any(|f| f == feature)
    }

    /// In-call flags of an internal session as listed to the room. Clients
    /// without `internal-incall` are "in call with audio", as upstream has it.
    pub fn internal_incall(&self) -> i64 {
        match *self.internal_incall.lock() {
            Some(flags) => flags,
            None if self.has_feature(proto::client::CLIENT_FEATURE_INTERNAL_INCALL) => 0,
            None => crate::core::room::FLAG_IN_CALL | crate::core::room::FLAG_WITH_AUDIO,
        }
    }

    /// Set by `internal/incall`; true if the value changed.
    pub(crate) fn set_internal_incall(&self, flags: i64) -> bool {
        self.internal_incall.lock().replace(flags) != Some(flags)
    }

    /// Subscribe the session and user subjects (called once after registration).
    pub(crate) fn subscribe(&self, hub: &dyn Host) -> Result<(), crate::bus::BusError> {
        let me: Weak<dyn BusHandler> = self.me.clone();
        let mut subs = vec![hub.bus().subscribe(&self.subject, me.clone())?];
        if !self.auth_user_id.is_empty() {
            let subject = proto::cluster::encoded_subject(
                "user",
                &self.auth_user_id,
                self.backend.subject_suffix(),
            );
            subs.push(hub.bus().subscribe(&subject, me)?);
        }
        self.state.lock().subscriptions = subs;
        Ok(())
    }

    /// The user id, falling back to the one Nextcloud gave for the room session.
    pub fn user_id(&self) -> String {
        if !self.auth_user_id.is_empty() {
            return self.auth_user_id.clone();
        }
        match self.room() {
            Some(room) => room
                .room_session_user_id(&self.public_id)
                .unwrap_or_default(),
            None => String::new(),
        }
    }

    pub fn room(&self) -> Option<Arc<Room>> {
        self.state.lock().room.clone()
    }

    /// The connection to the remote server of a federated room, if in one.
    pub fn federation_link(&self) -> Option<Arc<dyn FederatedRoom>> {
        self.state.lock().federation.clone()
    }

    /// Replace the federated connection (the old one is closed).
    pub(crate) fn set_federation(&self, client: Option<Arc<dyn FederatedRoom>>) {
        let old = std::mem::replace(&mut self.state.lock().federation, client);
        if let Some(old) = old {
            old.close();
        }
    }

    /// The federation task `id` ended (error, or left the room).
    pub(crate) fn federation_ended(&self, id: u64) {
        let mut st = self.state.lock();
        if st.federation.as_ref().is_some_and(|f| f.id() == id) {
            st.federation = None;
        }
    }

    pub fn room_session_id(&self) -> String {
        self.state.lock().room_session_id.clone()
    }

    pub fn conn(&self) -> Option<Arc<Conn>> {
        self.state.lock().conn.clone()
    }

    pub fn has_permission(&self, permission: &str) -> bool {
        let st = self.state.lock();
        match &st.permissions {
            None => permission != PERMISSION_HIDE_DISPLAYNAMES,
            Some(set) => set.contains(permission),
        }
    }

    pub fn set_permissions(&self, permissions: &[String]) {
        let set: HashSet<String> = permissions.iter().cloned().collect();
        let mut st = self.state.lock();
        if st.permissions.as_ref() == Some(&set) {
            return;
        }
        st.permissions = Some(set);
        drop(st);
        info!(session = %self.public_id, ?permissions, "permissions changed");
        if let Some(hub) = self.hub.upgrade() {
            hub.permissions_changed(self);
        }
    }

    /// Work on the session's MCU objects (under the state lock: keep `f`
    /// short and free of `.await`).
    pub(crate) fn with_mcu<T>(
        &self,
        f: impl FnOnce(&mut crate::mcu::session::McuObjects) -> T,
    ) -> T {
        f(self.state.lock().mcu.get_or_insert_with(Default::default))
    }

    /// Close every publisher and subscriber (upstream `releaseMcuObjects`):
    /// on leaving the room or the call, and when the session ends.
    pub(crate) fn release_mcu_objects(&self) {
        let objects = {
            let mut st = self.state.lock();
            match st.mcu.as_mut() {
                Some(m) if !m.is_empty() => m.take_all(),
                _ => return,
            }
        };
        info!(session = %self.public_id, count = objects.len(), "releasing MCU objects");
        crate::mcu::session::close_in_background(objects);
    }

    /// Attach a connection (hello or resume); returns the one it replaced.
    pub(crate) fn attach(&self, conn: &Arc<Conn>) -> Option<Arc<Conn>> {
        conn.set_session(self.me.upgrade());
        let mut st = self.state.lock();
        if st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            return None;
        }
        let prev = st.conn.replace(conn.clone());
        drop(st);
        if let Some(p) = &prev {
            p.set_session(None);
        }
        prev
    }

    /// Detach `conn` if it is still the attached one. Frames it had not
    /// written go back to the front of the pending queue, in order.
    pub(crate) fn detach(&self, conn: &Arc<Conn>, unsent: Vec<Frame>) -> bool {
        let mut st = self.state.lock();
        if !st.conn.as_ref().is_some_and(|c| Arc::ptr_eq(c, conn)) {
            return false;
        }
        st.conn = None;
        for frame in unsent.into_iter().rev() {
            // Rare (a connection ended with frames unwritten): read each
            // back so the resume rules hold for them as for queued ones
            // (one chat refresh kept; no extra participants list after a
            // participants update).
            let (participants_update, chat_refresh) =
                match serde_json::from_str::<ServerMessage>(frame.as_str()) {
                    Ok(m) => {
                        let out = OutMsg::new(m);
                        (out.msg.is_participants_update(), out.is_chat_refresh())
                    }
                    Err(_) => (false, false),
                };
            if chat_refresh {
                if st.has_pending_chat {
                    continue;
                }
                st.has_pending_chat = true;
            }
            st.has_pending_participants |= participants_update;
            st.pending.push_front(Pending {
                frame,
                participants_update,
            });
        }
        conn.set_session(None);
        true
    }

    /// Record the new room and subscribe its subject.
    pub(crate) fn set_room(
        &self,
        hub: &dyn Host,
        room: &Arc<Room>,
        room_session_id: &str,
    ) -> Result<(), crate::bus::BusError> {
        let me: Weak<dyn BusHandler> = self.me.clone();
        let sub = hub.bus().subscribe(&room.subject, me)?;
        let mut st = self.state.lock();
        st.room_subscription = Some(sub);
        st.room = Some(room.clone());
        st.room_session_id = room_session_id.to_owned();
        self.room_join_time
            .store(crate::bus::now_nanos(), Ordering::Release);
        Ok(())
    }

    /// Leave the current room. With `notify`, Nextcloud is told that the
    /// Talk session left (when there was one).
    pub fn leave_room(&self, notify: bool) -> Option<Arc<Room>> {
        let hub = self.hub.upgrade()?;
        let mut st = self.state.lock();
        if let Some(f) = st.federation.take() {
            f.close();
        }
        let room = st.room.take()?;
        st.room_subscription = None;
        let room_session_id = std::mem::take(&mut st.room_session_id);
        drop(st);
        self.room_join_time.store(0, Ordering::Release);
        self.release_mcu_objects();
        hub.remove_room_session(&self.public_id);
        if notify && !room_session_id.is_empty() {
            hub.notify_backend_leave(self, &room.id, room_session_id);
        }
        room.remove_session(&*hub, &self.public_id);
        Some(room)
    }

    pub(crate) fn add_virtual_session(&self, v: Arc<VirtualSession>) {
        self.state.lock().virtual_sessions.push(v);
    }

    pub(crate) fn remove_virtual_session(&self, v: &VirtualSession) {
        self.state
            .lock()
            .virtual_sessions
            .retain(|s| s.public_id != v.public_id);
    }

    /// Mark closed and release everything the session holds. Returns the
    /// attached connection and virtual sessions for the hub to finish off.
    pub(crate) fn close_inner(&self) -> (Option<Arc<Conn>>, Vec<Arc<VirtualSession>>) {
        self.closed.store(true, Ordering::Release);
        let mut st = self.state.lock();
        st.subscriptions.clear();
        let conn = st.conn.take();
        let virtuals = std::mem::take(&mut st.virtual_sessions);
        st.pending.clear();
        if let Some(f) = st.federation.take() {
            f.close();
        }
        let mcu = st.mcu.take().map(|mut m| m.take_all()).unwrap_or_default();
        drop(st);
        crate::mcu::session::close_in_background(mcu);
        if let Some(c) = &conn {
            c.set_session(None);
        }
        self.backend.remove_session(&self.public_id);
        (conn, virtuals)
    }

    fn room_join_time(&self) -> i64 {
        self.room_join_time.load(Ordering::Acquire)
    }

    /// The session joined its room after `send_time`, so it skips room
    /// events sent at that time (see `on_bus_message`).
    pub(crate) fn joined_after(&self, send_time: i64) -> bool {
        send_time < self.room_join_time()
    }
}
