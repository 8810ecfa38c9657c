//! Payloads exchanged between signaling servers over the cluster bus (NATS).
//!
//! The in-process bus passes these structures without serialising them; the
//! NATS bus encodes them as JSON in the shape upstream servers use, so that a
//! mixed cluster can share subjects.

use serde::{Deserialize, Serialize};

pub const BUS_TYPE_MESSAGE: &str = "message";
pub const BUS_TYPE_ROOM: &str = "room";
pub const BUS_TYPE_PERMISSIONS: &str = "permissions";
/// Ours (not upstream's): a node's local members of a room, on the room
/// subject, so every node knows the whole room (see [`RoomPresence`]).
pub const BUS_TYPE_PRESENCE: &str = "x-presence";

/// Ours: a node's count of `client` sessions per backend, on
/// [`NODES_SUBJECT`] every presence interval and when it changed, so that
/// `sessionlimit` holds for the whole cluster.
pub const BUS_TYPE_NODE: &str = "x-node";
pub const NODES_SUBJECT: &str = "cluster.nodes";

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// Backend id -> sessions counted against its limit.
    #[serde(default)]
    pub sessions: std::collections::BTreeMap<String, u64>,
    /// Backend ids with a dial-out bridge (internal client with
    /// `start-dialout`) on the node, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dialout: Vec<String>,
}

/// What a node tells the others about one room: the sessions that are
/// members through it, sent when its members change, when asked and
/// periodically. A node that stops sending it has gone; its members are
/// then taken out of the room everywhere.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomPresence {
    /// The sending node's id (random per process).
    pub node: String,
    /// Its local members, as in `join` events.
    #[serde(default)]
    pub sessions: Vec<crate::client::SessionEntry>,
    /// The sender wants every other node's presence now (a room it has
    /// just started to host).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub request: bool,
    /// The room's transient data, in answers to a request (a node that
    /// starts hosting the room learns what was set before).
    #[serde(default, skip_serializing_if = "serde_json::Map::is_empty")]
    pub transient: serde_json::Map<String, serde_json::Value>,
    /// Its internal and virtual members as participant lists show them
    /// (`inCall`, `sessionId`, `internal`/`virtual`, `features`), so every
    /// node lists them too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub participants: Vec<serde_json::Map<String, serde_json::Value>>,
    /// The call state the sender keeps from Talk's `changed` entries
    /// (`sessionId` = signaling id), in answers to a request: Talk with
    /// `changed-users` sends only changes, so a node that starts hosting the
    /// room mid-call learns the call here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracked: Vec<serde_json::Map<String, serde_json::Value>>,
    /// The user ids Nextcloud gave its members for this room (`session`
    /// `userid` of the join answer), by signaling session id: participant
    /// lists fill in exactly these where Talk left `userId` out.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub roomusers: std::collections::BTreeMap<String, String>,
    /// The room's properties, in answers to a request: a node that starts
    /// hosting the room uses those of the existing room, as one server
    /// does for a later joiner (not the properties of its join answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<crate::Raw>,
    /// The non-zero flags of its virtual members, by session id: a member
    /// joining through another node is told them after the member list.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub flags: std::collections::BTreeMap<String, u32>,
}

/// Ours: requests one server asks the others of the cluster (NATS
/// request/reply). Every node answers, found or not, so the asker need not
/// wait for a timeout when none has what it looks for.
pub const RESUME_SUBJECT: &str = "cluster.resume";
pub const PUBLISHER_SUBJECT: &str = "cluster.publisher";
pub const DIALOUT_SUBJECT: &str = "cluster.dialout";
pub const ROOM_SUBJECT: &str = "cluster.room";
pub const ROOM_SESSION_SUBJECT: &str = "cluster.roomsession";
pub const SESSION_COUNT_SUBJECT: &str = "cluster.sessioncount";
/// A node accepted a backend API request: its random, so that the others
/// refuse it as a replay too (published, not asked).
pub const RANDOM_SUBJECT: &str = "cluster.random";

/// A node replaced a publisher (its client offered again with a new sid):
/// subscribers of it on the other nodes follow the new one (published, not
/// asked).
pub const PUBLISHER_NEWS_SUBJECT: &str = "cluster.publishernews";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublisherNews {
    pub node: String,
    /// The publishing session's public id.
    pub session: String,
    /// `video` or `screen`.
    pub stream: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RandomSeen {
    pub node: String,
    pub backend: String,
    pub random: String,
}

/// A session joined a room with Talk session id `roomsessionid`: a node
/// holding another session with it tells that one `bye` with reason
/// `room_session_reconnected` (one Talk session, one signaling session)
/// and answers `true`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomSessionQuestion {
    pub node: String,
    pub roomsessionid: String,
    /// The session that joined (and stays).
    pub sessionid: String,
}

/// A client session of `backend` (which has a `sessionlimit`) says hello on
/// `node`: how many sessions of it do the others count (including those
/// whose hello is being checked right now)? Answered with a number, `null`
/// for none.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SessionCountQuestion {
    pub node: String,
    pub backend: String,
}

/// A room starts on a node: who has members in it already? Nodes that
/// host it answer with their [`RoomPresence`] (members, transient data), so
/// the first joiner there gets the whole room at once, as on one server.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RoomQuestion {
    pub node: String,
    pub backend: String,
    pub roomid: String,
}

/// A client asks the server it reached to resume a session another server
/// holds. The holder takes the connection over through a relay: frames go
/// `relay.<relay>.up` (client to holder) and `relay.<relay>.down` (back).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ResumeRequest {
    pub node: String,
    pub resumeid: String,
    /// Random id naming the relay subjects.
    pub relay: String,
    /// The client's `hello` frame, exactly as it came.
    pub hello: String,
    pub addr: String,
    #[serde(default)]
    pub agent: String,
}

/// Where a session publishes a stream, for a subscriber on another server.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct PublisherRequest {
    pub node: String,
    pub publisher: String,
    pub stream: String,
}

/// A dial-out for a bridge (internal client) connected to another server.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DialoutRequest {
    pub node: String,
    /// The node chosen to handle it (it has a bridge); the others say no.
    pub target: String,
    pub backend: String,
    pub roomid: String,
    pub request: crate::backend::RoomDialoutRequest,
}

/// The answer to a dial-out request: HTTP status and body for Nextcloud.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DialoutAnswer {
    pub status: u16,
    pub body: serde_json::Value,
}

/// Every node's answer to a cluster request: `answer` when it has it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterAnswer<T> {
    pub node: String,
    pub answer: Option<T>,
}

/// Subject of a session's private mailbox.
pub fn session_subject(public_id: &str) -> String {
    format!("session.{public_id}")
}

/// Subjects for users and rooms carry the id in standard base64 (ids may
/// contain characters NATS does not allow), suffixed with `|<backend id>` for
/// configured backends; the legacy single-backend mode has no suffix.
pub fn encoded_subject(prefix: &str, id: &str, backend_suffix: Option<&str>) -> String {
    use std::fmt::Write;
    let mut raw = id.to_owned();
    if let Some(b) = backend_suffix {
        let _ = write!(raw, "|{b}");
    }
    format!("{prefix}.{}", base64_std(raw.as_bytes()))
}

fn base64_std(input: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(input.len().div_ceil(3) * 4);
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        out.push(TABLE[(n >> 18) as usize & 63] as char);
        out.push(TABLE[(n >> 12) as usize & 63] as char);
        out.push(if chunk.len() > 1 {
            TABLE[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        out.push(if chunk.len() > 2 {
            TABLE[n as usize & 63] as char
        } else {
            '='
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_are_base64_encoded() {
        assert_eq!(encoded_subject("room", "abc", None), "room.YWJj");
        assert_eq!(encoded_subject("user", "a b", Some("b1")), "user.YSBifGIx");
        assert_eq!(session_subject("xyz"), "session.xyz");
    }
}
