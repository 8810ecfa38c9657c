//! The cluster bus: every delivery from one session to another, from a room to
//! its members and from the backend API to rooms goes through it, so that a
//! NATS implementation can later span several servers without touching the
//! hub. This module has the trait and the in-process implementation used when
//! no NATS server is configured.
//!
//! Handlers run synchronously in the publisher's task, so publishers must not
//! hold locks a handler may take; the hub publishes only after releasing its
//! own locks.

pub mod filter;
pub mod message;
pub mod nats;
pub mod relay_link;

pub use message::{Frame, OutMsg};

use parking_lot::RwLock;
use proto::backend::BackendServerRoomRequest;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use runtime::dates::{civil_from_days, days_from_civil};

/// What travels on the bus (NATS-04 envelope types).
#[derive(Clone, Debug)]
pub enum BusPayload {
    /// A server message to deliver to the subscribed sessions.
    Message(Arc<OutMsg>),
    /// A backend room request for the room object(s).
    Room(Arc<BackendServerRoomRequest>),
    /// A new permission list for a session.
    Permissions(Arc<Vec<String>>),
    /// A node's members of a room (clustering, ours).
    Presence(Arc<proto::cluster::RoomPresence>),
    /// A node's session counts (clustering, ours).
    Node(Arc<proto::cluster::NodeStatus>),
}

#[derive(Clone, Debug)]
pub struct BusMessage {
    /// Publish time, nanoseconds since the Unix epoch.
    pub send_time: i64,
    pub payload: BusPayload,
}

impl BusMessage {
    pub fn new(payload: BusPayload) -> BusMessage {
        BusMessage {
            send_time: now_nanos(),
            payload,
        }
    }
}

pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i64)
        .unwrap_or(0)
}

/// How long a new session waits at most for [`Bus::subscriptions_active`]
/// (a round trip to NATS; only reached when the connection breaks).
pub const SUBSCRIPTIONS_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Receives messages of one subscription.
pub trait BusHandler: Send + Sync {
    fn on_bus_message(&self, subject: &str, msg: &BusMessage);
}

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    /// The cluster bus could not pass the message on to other servers (its
    /// queue to NATS is at its bound, e.g. during a long NATS outage). This
    /// server's own subscribers did get it.
    #[error("cluster bus overloaded: {0} messages waiting for NATS")]
    Overloaded(usize),
}

/// Publish/subscribe between sessions, rooms and servers.
pub trait Bus: Send + Sync {
    fn publish(&self, subject: &str, msg: BusMessage) -> Result<(), BusError>;
    /// For subjects only this server listens on (a local session's): its
    /// handlers only, nothing to other servers.
    fn publish_local(&self, subject: &str, msg: BusMessage) -> Result<(), BusError> {
        self.publish(subject, msg)
    }
    fn subscribe(
        &self,
        subject: &str,
        handler: Weak<dyn BusHandler>,
    ) -> Result<Subscription, BusError>;
    fn unsubscribe(&self, subject: &str, id: u64);
    /// Give back the memory of subjects gone (after a spike of sessions).
    fn shrink(&self) {}
    /// Fires once every subscription made so far receives what other
    /// servers publish (NATS: the broker has processed them), so a new
    /// session is reachable from the whole cluster when it is told its id.
    /// `None`: nothing to wait for (the in-process bus, NATS away).
    fn subscriptions_active(&self) -> Option<tokio::sync::oneshot::Receiver<()>> {
        None
    }
}

/// Ends its subscription when dropped.
pub struct Subscription {
    bus: Weak<dyn Bus>,
    /// Shared with the bus's own map key: session subjects are long and
    /// every idle session holds a few of them.
    subject: Arc<str>,
    id: u64,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("subject", &self.subject)
            .finish()
    }
}

impl Subscription {
    pub fn new(bus: Weak<dyn Bus>, subject: Arc<str>, id: u64) -> Self {
        Subscription { bus, subject, id }
    }
    pub fn subject(&self) -> &str {
        &self.subject
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if let Some(bus) = self.bus.upgrade() {
            bus.unsubscribe(&self.subject, self.id);
        }
    }
}

/// NATS subjects may not contain whitespace or end with a dot; refuse them
/// here too so a configuration that works in-process also works with NATS.
pub fn check_subject(subject: &str) -> Result<(), BusError> {
    // Bytes, not chars: subjects are ASCII (ids are base64), and this runs
    // for every message published. One pass without an early exit, which
    // the compiler vectorises (four `contains` scans were ~3% of the
    // server's CPU in the flood benchmark).
    let spaced = subject.bytes().fold(false, |found, c| {
        found | matches!(c, b' ' | b'\t' | b'\r' | b'\n')
    });
    if subject.is_empty() || subject.ends_with('.') || spaced {
        return Err(BusError::InvalidSubject(subject.to_owned()));
    }
    Ok(())
}

type Subscribers = Arc<Vec<(u64, Weak<dyn BusHandler>)>>;

/// Local handlers per subject, shared by both bus implementations. The lists
/// are copy-on-write: delivery takes a snapshot and calls handlers without
/// holding the lock, so a handler may subscribe or unsubscribe while being
/// called. Keys are shared with the `Subscription`s (session subjects are
/// long and every idle session holds a few).
#[derive(Default)]
pub(crate) struct SubjectTable {
    next_id: AtomicU64,
    /// foldhash: subjects are long and looked up on every publish.
    subjects: RwLock<HashMap<Arc<str>, Subscribers, foldhash::fast::RandomState>>,
}

impl SubjectTable {
    /// Add a handler; `on_first` runs under the table's lock when the
    /// subject had no handler yet. Returns the shared key and the handler id.
    pub(crate) fn add(
        &self,
        subject: &str,
        handler: Weak<dyn BusHandler>,
        on_first: impl FnOnce(&Arc<str>),
    ) -> (Arc<str>, u64) {
        let mut map = self.subjects.write();
        // Taken under the lock, so every list is in id order (see `remove`).
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let key = match map.get_key_value(subject) {
            Some((key, _)) => {
                let key = key.clone();
                // In place unless a delivery holds a snapshot right now:
                // copying the list on every add made subscribing quadratic
                // in the subject's handlers (one user's many sessions, a
                // large room).
                if let Some(subs) = map.get_mut(subject) {
                    Arc::make_mut(subs).push((id, handler));
                }
                key
            }
            None => {
                let key: Arc<str> = Arc::from(subject);
                map.insert(key.clone(), Arc::new(vec![(id, handler)]));
                on_first(&key);
                key
            }
        };
        (key, id)
    }

    /// Remove a handler; `on_last` runs under the lock when it was the last.
    pub(crate) fn remove(&self, subject: &str, id: u64, on_last: impl FnOnce(Arc<str>)) {
        let mut map = self.subjects.write();
        let Some(entry) = map.get_mut(subject) else {
            return;
        };
        // Ids grow, and lists are appended to in id order.
        let Ok(at) = entry.binary_search_by_key(&id, |(i, _)| *i) else {
            return;
        };
        if entry.len() > 1 {
            Arc::make_mut(entry).remove(at);
            return;
        }
        if let Some((key, _)) = map.remove_entry(subject) {
            on_last(key);
        }
    }

    /// Call every handler of `subject`.
    pub(crate) fn deliver(&self, subject: &str, msg: &BusMessage) {
        let subs = self.subjects.read().get(subject).cloned();
        for (_, handler) in subs.iter().flat_map(|l| l.iter()) {
            if let Some(h) = handler.upgrade() {
                h.on_bus_message(subject, msg);
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.subjects.read().len()
    }

    pub(crate) fn contains(&self, subject: &str) -> bool {
        self.subjects.read().contains_key(subject)
    }

    /// Shrink the table when far fewer subjects are left than it has room
    /// for (checked under the read lock first: this runs periodically).
    pub(crate) fn shrink(&self) {
        let oversized = |m: &HashMap<_, _, _>| m.capacity() > 64 && m.capacity() > 4 * m.len();
        if oversized(&self.subjects.read()) {
            let mut map = self.subjects.write();
            let len = map.len();
            map.shrink_to(len * 2);
        }
    }
}

/// In-process bus for a single server. Deliveries are synchronous and never
/// dropped (unlike upstream's loopback, which discards on a full channel):
/// the receiving session applies its own bounded queue.
pub struct LoopbackBus {
    me: Weak<LoopbackBus>,
    table: SubjectTable,
}

impl LoopbackBus {
    pub fn new() -> Arc<LoopbackBus> {
        Arc::new_cyclic(|me| LoopbackBus {
            me: me.clone(),
            table: SubjectTable::default(),
        })
    }

    /// Number of subjects with at least one subscriber (for tests and stats).
    pub fn subject_count(&self) -> usize {
        self.table.len()
    }
}

impl Bus for LoopbackBus {
    fn shrink(&self) {
        self.table.shrink();
    }

    fn publish(&self, subject: &str, msg: BusMessage) -> Result<(), BusError> {
        // Refused like NATS would (NATS-02); the check is a few memchr scans.
        check_subject(subject)?;
        self.table.deliver(subject, &msg);
        Ok(())
    }

    fn subscribe(
        &self,
        subject: &str,
        handler: Weak<dyn BusHandler>,
    ) -> Result<Subscription, BusError> {
        check_subject(subject)?;
        let (key, id) = self.table.add(subject, handler, |_| {});
        let me: Weak<dyn Bus> = self.me.clone();
        Ok(Subscription::new(me, key, id))
    }

    fn unsubscribe(&self, subject: &str, id: u64) {
        self.table.remove(subject, id, |_| {});
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use parking_lot::Mutex;

    struct Rec(Mutex<Vec<String>>);
    impl BusHandler for Rec {
        fn on_bus_message(&self, subject: &str, _msg: &BusMessage) {
            self.0.lock().push(subject.to_owned());
        }
    }

    fn perm() -> BusMessage {
        BusMessage::new(BusPayload::Permissions(Arc::new(vec![])))
    }

    #[test]
    fn delivers_to_subscribers_until_dropped() {
        let bus = LoopbackBus::new();
        let rec = Arc::new(Rec(Mutex::new(vec![])));
        let weak: Weak<dyn BusHandler> = Arc::downgrade(&(rec.clone() as Arc<dyn BusHandler>));
        let sub = bus.subscribe("session.a", weak).expect("subscribe");
        bus.publish("session.a", perm()).expect("publish");
        bus.publish("session.b", perm()).expect("publish");
        assert_eq!(*rec.0.lock(), vec!["session.a".to_owned()]);
        drop(sub);
        bus.publish("session.a", perm()).expect("publish");
        assert_eq!(rec.0.lock().len(), 1);
        assert_eq!(bus.subject_count(), 0);
    }

    #[test]
    fn rejects_invalid_subjects() {
        let bus = LoopbackBus::new();
        assert!(bus.publish("a b", perm()).is_err());
        assert!(bus.publish("a.", perm()).is_err());
        assert!(bus.publish("", perm()).is_err());
        let long = "session.".to_owned() + &"x".repeat(200);
        assert!(check_subject(&long).is_ok());
        for c in [' ', '\t', '\r', '\n'] {
            assert!(check_subject(&format!("{long}{c}x")).is_err(), "{c:?}");
            assert!(check_subject(&format!("{c}{long}")).is_err(), "{c:?}");
        }
    }
}

/// Errors decoding a cluster envelope received from another server.
#[derive(Debug, thiserror::Error)]
pub enum EnvelopeError {
    #[error("invalid envelope: {0}")]
    Json(#[from] serde_json::Error),
    #[error("envelope of type {0:?} without its payload")]
    MissingPayload(String),
    #[error("unsupported envelope type {0:?}")]
    UnsupportedType(String),
}

/// Encode a bus message as the JSON envelope upstream servers exchange over
/// NATS (`{sendtime, type, message|room|permissions, id}`). The message text
/// is the cached frame, so a message is serialised once for clients and bus.
pub fn encode_envelope(msg: &BusMessage) -> Vec<u8> {
    encode_envelope_from(msg, None)
}

/// The same with the sender's `(x-from, x-seq)`, see [`decode_envelope_ordered`].
pub fn encode_envelope_from(msg: &BusMessage, order: Option<(&str, u64)>) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    out.extend_from_slice(b"{\"sendtime\":\"");
    push_rfc3339_nanos(&mut out, msg.send_time);
    out.extend_from_slice(b"\",");
    match &msg.payload {
        BusPayload::Message(m) => {
            out.extend_from_slice(b"\"type\":\"message\",\"message\":");
            out.extend_from_slice(m.frame().as_bytes());
        }
        BusPayload::Room(r) => {
            out.extend_from_slice(b"\"type\":\"room\",\"room\":");
            out.extend_from_slice(
                &serde_json::to_vec(r.as_ref()).unwrap_or_else(|_| b"null".to_vec()),
            );
        }
        BusPayload::Permissions(p) => {
            out.extend_from_slice(b"\"type\":\"permissions\",\"permissions\":");
            out.extend_from_slice(
                &serde_json::to_vec(p.as_ref()).unwrap_or_else(|_| b"[]".to_vec()),
            );
        }
        BusPayload::Presence(p) => {
            out.extend_from_slice(b"\"type\":\"x-presence\",\"presence\":");
            out.extend_from_slice(
                &serde_json::to_vec(p.as_ref()).unwrap_or_else(|_| b"null".to_vec()),
            );
        }
        BusPayload::Node(n) => {
            out.extend_from_slice(b"\"type\":\"x-node\",\"node\":");
            out.extend_from_slice(
                &serde_json::to_vec(n.as_ref()).unwrap_or_else(|_| b"null".to_vec()),
            );
        }
    }
    out.extend_from_slice(b",\"id\":\"\"");
    if let Some((from, seq)) = order {
        // `from` is hex: nothing to escape.
        use std::io::Write;
        let _ = write!(out, ",\"x-from\":\"{from}\",\"x-seq\":{seq}");
    }
    out.push(b'}');
    out
}

/// Decode an envelope received from the cluster.
pub fn decode_envelope(data: &[u8]) -> Result<BusMessage, EnvelopeError> {
    decode_envelope_ordered(data).map(|(m, _)| m)
}

/// An envelope as received: the message stays the text the sender made
/// (its clients' frame), so it is parsed once and not serialised again.
#[derive(serde::Deserialize)]
struct EnvelopeIn<'a> {
    #[serde(borrow, default)]
    sendtime: std::borrow::Cow<'a, str>,
    #[serde(borrow, rename = "type")]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<&'a proto::RawValue>,
    #[serde(default)]
    room: Option<BackendServerRoomRequest>,
    #[serde(default)]
    permissions: Option<Vec<String>>,
    #[serde(default)]
    presence: Option<proto::cluster::RoomPresence>,
    #[serde(default)]
    node: Option<proto::cluster::NodeStatus>,
    #[serde(borrow, rename = "x-from", default)]
    from: std::borrow::Cow<'a, str>,
    #[serde(rename = "x-seq", default)]
    seq: u64,
}

/// Decode an envelope and its sender's `(x-from, x-seq)` when it has them
/// (ours do; upstream servers' do not).
pub fn decode_envelope_ordered(
    data: &[u8],
) -> Result<(BusMessage, Option<(String, u64)>), EnvelopeError> {
    // The frame is a copy, not a slice of `data`: a slice of what the NATS
    // client received would keep its whole read buffer alive for as long as
    // the frame waits (up to the resume window for an absent client).
    decode_envelope_with(data, |raw| Frame::from(raw.to_owned()))
}

fn decode_envelope_with(
    data: &[u8],
    frame: impl FnOnce(&str) -> Frame,
) -> Result<(BusMessage, Option<(String, u64)>), EnvelopeError> {
    let env: EnvelopeIn<'_> = serde_json::from_slice(data)?;
    let order = (!env.from.is_empty() && env.seq != 0).then(|| (env.from.into_owned(), env.seq));
    let send_time = parse_rfc3339_nanos(&env.sendtime).unwrap_or_else(now_nanos);
    let missing = || EnvelopeError::MissingPayload(env.kind.to_string());
    let payload = match &*env.kind {
        proto::cluster::BUS_TYPE_MESSAGE => {
            let raw = env.message.ok_or_else(missing)?;
            let msg = serde_json::from_str(raw.get())?;
            BusPayload::Message(OutMsg::with_frame(msg, frame(raw.get())))
        }
        proto::cluster::BUS_TYPE_ROOM => BusPayload::Room(Arc::new(env.room.ok_or_else(missing)?)),
        proto::cluster::BUS_TYPE_PERMISSIONS => {
            BusPayload::Permissions(Arc::new(env.permissions.unwrap_or_default()))
        }
        proto::cluster::BUS_TYPE_NODE => BusPayload::Node(Arc::new(env.node.ok_or_else(missing)?)),
        proto::cluster::BUS_TYPE_PRESENCE => {
            BusPayload::Presence(Arc::new(env.presence.ok_or_else(missing)?))
        }
        other => return Err(EnvelopeError::UnsupportedType(other.to_owned())),
    };
    Ok((BusMessage { send_time, payload }, order))
}

/// `2022-05-16T14:30:46.123456789Z` for nanoseconds since the epoch (UTC).
pub fn rfc3339_nanos(nanos: i64) -> String {
    let mut out = Vec::with_capacity(30);
    push_rfc3339_nanos(&mut out, nanos);
    // Only ASCII digits and separators were pushed.
    String::from_utf8(out).unwrap_or_default()
}

/// [`rfc3339_nanos`] appended to `out` (every published envelope has one).
fn push_rfc3339_nanos(out: &mut Vec<u8>, nanos: i64) {
    let secs = nanos.div_euclid(1_000_000_000);
    let frac = nanos.rem_euclid(1_000_000_000);
    let (y, m, d) = civil_from_days(secs.div_euclid(86_400));
    let s = secs.rem_euclid(86_400);
    // Each field zero-padded to its width, followed by its separator.
    let fields = [
        (y, 4, b'-'),
        (i64::from(m), 2, b'-'),
        (i64::from(d), 2, b'T'),
        (s / 3600, 2, b':'),
        ((s / 60) % 60, 2, b':'),
        (s % 60, 2, b'.'),
        (frac, 9, b'Z'),
    ];
    for (value, width, sep) in fields {
        let value = value.rem_euclid(10i64.pow(width));
        for i in (0..width).rev() {
            out.push(b'0' + (value / 10i64.pow(i) % 10) as u8);
        }
        out.push(sep);
    }
}

/// Parse RFC 3339 times as Go writes them (fraction optional, `Z` or offset).
pub fn parse_rfc3339_nanos(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || (b[10] != b'T' && b[10] != b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, se) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let mut idx = 19;
    let mut frac: i64 = 0;
    if b.get(idx) == Some(&b'.') {
        idx += 1;
        let start = idx;
        while idx < b.len() && b[idx].is_ascii_digit() {
            idx += 1;
        }
        let digits = s.get(start..idx)?;
        let mut padded = digits.chars().take(9).collect::<String>();
        while padded.len() < 9 {
            padded.push('0');
        }
        frac = padded.parse().ok()?;
    }
    let offset = match b.get(idx) {
        Some(b'Z') | Some(b'z') => 0,
        Some(&c) if c == b'+' || c == b'-' => {
            let oh = num(idx + 1..idx + 3)?;
            let om = num(idx + 4..idx + 6)?;
            let sign = if c == b'-' { -1 } else { 1 };
            sign * (oh * 3600 + om * 60)
        }
        _ => return None,
    };
    let days = days_from_civil(y, u32::try_from(mo).ok()?, u32::try_from(d).ok()?);
    let secs = days * 86_400 + h * 3600 + mi * 60 + se - offset;
    secs.checked_mul(1_000_000_000)?.checked_add(frac)
}

#[cfg(test)]
mod envelope_tests {
    use super::*;
    use proto::client::ServerMessage;

    #[test]
    fn nats_04_envelope_round_trips() {
        let msg = BusMessage {
            send_time: 1_652_711_446_123_456_789,
            payload: BusPayload::Message(OutMsg::new(ServerMessage::bye("x"))),
        };
        let bytes = encode_envelope(&msg);
        let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(v["sendtime"], "2022-05-16T14:30:46.123456789Z");
        assert_eq!(v["type"], "message");
        assert_eq!(v["message"]["bye"]["reason"], "x");
        assert_eq!(v["id"], "");
        let back = decode_envelope(&bytes).unwrap();
        assert_eq!(back.send_time, msg.send_time);
        match back.payload {
            BusPayload::Message(m) => assert_eq!(m.msg.kind, "bye"),
            other => panic!("{other:?}"),
        }
        let perms = BusMessage::new(BusPayload::Permissions(Arc::new(vec!["control".into()])));
        let v: serde_json::Value = serde_json::from_slice(&encode_envelope(&perms)).unwrap();
        assert_eq!(v["permissions"][0], "control");
        assert!(decode_envelope(br#"{"sendtime":"x","type":"weird","id":""}"#).is_err());
        assert!(decode_envelope(b"garbage").is_err());
        // Ours carry the sender's order; upstream's do not.
        let bytes = encode_envelope_from(&perms, Some(("ab12", 7)));
        let (_, order) = decode_envelope_ordered(&bytes).unwrap();
        assert_eq!(order, Some(("ab12".to_owned(), 7)));
        let (_, order) = decode_envelope_ordered(&encode_envelope(&perms)).unwrap();
        assert_eq!(order, None);
    }

    #[test]
    fn received_message_keeps_the_senders_frame() {
        let mut m = ServerMessage::bye("x");
        m.id = "with \"quotes\" and \u{e9}".into();
        let sent = OutMsg::new(m);
        let data = encode_envelope(&BusMessage::new(BusPayload::Message(sent.clone())));
        let (back, _) = decode_envelope_ordered(&data).expect("decodes");
        let BusPayload::Message(got) = back.payload else {
            panic!("not a message")
        };
        assert_eq!(got.frame().as_str(), sent.frame().as_str());
        assert_eq!(got.msg.id, sent.msg.id);
        // Missing or wrong message payloads are errors, not panics.
        let bad = br#"{"sendtime":"","type":"message","message":null}"#;
        assert!(matches!(
            decode_envelope_ordered(bad),
            Err(EnvelopeError::MissingPayload(_))
        ));
        let bad = br#"{"sendtime":"","type":"message","message":[1]}"#;
        assert!(decode_envelope_ordered(bad).is_err());
    }

    #[test]
    fn rfc3339_matches_go_formats() {
        assert_eq!(parse_rfc3339_nanos("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_nanos("2022-05-16T16:30:46.5+02:00"),
            Some(1_652_711_446_500_000_000)
        );
        for n in [
            0i64,
            1,
            999_999_999,
            1_652_711_446_123_456_789,
            4_102_444_800_000_000_000,
        ] {
            assert_eq!(parse_rfc3339_nanos(&rfc3339_nanos(n)), Some(n));
        }
        assert_eq!(parse_rfc3339_nanos("2022-05-16"), None);
        assert_eq!(rfc3339_nanos(0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(rfc3339_nanos(-1), "1969-12-31T23:59:59.999999999Z");
    }
}
