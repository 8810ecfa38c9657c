//! The registry of one server: its sessions, rooms and the indexes between
//! them, behind one lock held by the hub.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Instant;

use crate::core::conn::Conn;
use crate::core::room::Room;
use crate::core::session::{AnySession, ClientSession, VirtualSession};

pub(crate) type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Shrink `map` when it holds far fewer entries than it has room for.
pub(crate) fn shrink_map<K: Eq + std::hash::Hash, V, S: std::hash::BuildHasher>(
    map: &mut HashMap<K, V, S>,
) {
    if map.capacity() > 64 && map.capacity() > 4 * map.len() {
        map.shrink_to(map.len() * 2);
    }
}

#[derive(Default)]
pub struct Registry {
    // foldhash instead of SipHash for the maps hit on every message:
    // session ids are ~200 bytes and SipHash showed up in profiles.
    pub(crate) sessions: FastMap<Arc<str>, AnySession>,
    /// Session number -> public id: any valid encoding of a session's id
    /// reaches it (upstream looks sessions up by this number).
    pub(crate) by_sid: FastMap<u64, Arc<str>>,
    pub(crate) by_private: HashMap<String, Arc<ClientSession>>,
    pub(crate) rooms: HashMap<String, Arc<Room>>,
    /// Talk session id -> signaling public id.
    pub(crate) room_sessions: HashMap<String, Arc<str>>,
    pub(crate) room_session_of: HashMap<Arc<str>, String>,
    pub(crate) virtual_sessions: HashMap<String, Arc<VirtualSession>>,
    /// Disconnected sessions and when they expire.
    pub(crate) expiring: HashMap<Arc<str>, Instant>,
    /// Anonymous connections that must join a room, and until when.
    pub(crate) anonymous: HashMap<u64, (Weak<Conn>, Instant)>,
}

impl Registry {
    pub(crate) fn shrink(&mut self) {
        shrink_map(&mut self.sessions);
        shrink_map(&mut self.by_sid);
        shrink_map(&mut self.by_private);
        shrink_map(&mut self.rooms);
        shrink_map(&mut self.room_sessions);
        shrink_map(&mut self.room_session_of);
        shrink_map(&mut self.virtual_sessions);
        shrink_map(&mut self.expiring);
        shrink_map(&mut self.anonymous);
    }
}
