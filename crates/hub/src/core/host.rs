//! What rooms and sessions need from the server that holds them: the bus,
//! whether the server is part of a cluster, registry lookups, and the few
//! steps that reach beyond one room or session (closing a session,
//! forgetting a room, telling Nextcloud that a session left, checking a
//! session's media after its permissions changed).
//!
//! The hub implements it; core never names the hub type, so this trait is
//! the whole of what core asks of the layers above it.

use runtime::metrics::GaugeVec;
use std::sync::Arc;
use std::time::Duration;

use crate::bus::Bus;
use crate::core::room::Room;
use crate::core::session::{AnySession, ClientSession};

pub trait Host: Send + Sync {
    /// The bus sessions and rooms subscribe to and publish on.
    fn bus(&self) -> &dyn Bus;
    /// Clustered: how often rooms report their members to the other nodes.
    /// `None` on a single server.
    fn presence_interval(&self) -> Option<Duration>;
    /// This server in the cluster (in room presence reports).
    fn node_id(&self) -> &str;
    /// A session of this server by public id.
    fn session_by_public_id(&self, id: &str) -> Option<AnySession>;
    /// The public id of this server's session joined with a Talk session id.
    fn session_for_room_session(&self, room_session_id: &str) -> Option<Arc<str>>;
    /// The session left its room: forget its Talk session id.
    fn remove_room_session(&self, public_id: &Arc<str>);
    /// End a session (it leaves its room; its connection is closed).
    fn close_session(&self, session: &Arc<ClientSession>);
    /// Tell Nextcloud that `session` left room `room_id` (in the background).
    fn notify_backend_leave(&self, session: &ClientSession, room_id: &str, room_session_id: String);
    /// The last member left: forget the room.
    fn remove_room(&self, room: &Room);
    /// Nextcloud deleted the room: its members leave it (told first when
    /// `tell_members`).
    fn room_deleted(&self, room: &Room, tell_members: bool);
    /// Members per room (`signaling_room_sessions`).
    fn room_sessions_metric(&self) -> &GaugeVec;
    /// The session's permissions changed: media it may no longer publish
    /// is closed.
    fn permissions_changed(&self, session: &ClientSession);
}
