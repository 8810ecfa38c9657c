//! The reader task of a ready client: every frame that arrives is parsed
//! (borrowing from the frame), checked against its addressee and accounted
//! in the ledger; its latency goes into the histogram.

use std::rc::Rc;

use futures_util::stream::SplitStream;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, info, warn};

use crate::ledger::Arrival;
use crate::session::Ws;
use crate::world::{Peer, Phase, World};

type Stream = SplitStream<Ws>;

/// Logged individually before the rest is only counted.
const LOG_FIRST: u64 = 10;

#[derive(Deserialize)]
struct Frame<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    message: Option<Body<'a>>,
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
    #[serde(borrow, default)]
    bye: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Body<'a> {
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// What our senders put into `data`.
#[derive(Deserialize)]
struct Payload {
    /// Nanoseconds since the run's time base when sent.
    t: u64,
    from: u32,
    seq: u64,
    /// Index of the addressed client (session messages).
    #[serde(default)]
    to: Option<u32>,
    /// Number of the addressed room (room messages).
    #[serde(default)]
    room: Option<usize>,
}

impl Payload {
    /// Whether client `me` is the addressee, or a member of the addressed
    /// room other than the sender.
    fn addressed_to(&self, world: &World, me: u32) -> bool {
        match (self.to, self.room) {
            (Some(to), _) => to == me,
            (None, Some(room)) => self.from != me && world.room_index(me) == Some(room),
            (None, None) => true,
        }
    }
}

pub async fn reader(world: Rc<World>, peer: Rc<Peer>, mut stream: Stream) {
    while let Some(item) = stream.next().await {
        match item {
            Ok(Message::Text(text)) => {
                if !handle_text(&world, &peer, text.as_str()) {
                    break;
                }
            }
            Ok(Message::Close(_)) => break,
            Ok(Message::Binary(_)) => world.counters.other.set(world.counters.other.get() + 1),
            Ok(_) => {}
            Err(e) => {
                debug!(client = peer.index, error = %e, "read failed");
                break;
            }
        }
    }
    let expected_end = world.phase() == Phase::Close;
    if peer.alive.replace(false) && !expected_end {
        let n = world.counters.dropped.get() + 1;
        world.counters.dropped.set(n);
        if n <= LOG_FIRST {
            warn!(
                client = peer.index,
                "connection closed by the server or the network"
            );
        }
    }
    peer.wake.notify_one();
}

/// Handles one text frame; false when the client must close (BEN-05).
fn handle_text(world: &World, peer: &Peer, text: &str) -> bool {
    let c = &world.counters;
    let frame: Frame = match serde_json::from_str(text) {
        Ok(f) => f,
        Err(e) => {
            c.unparsable.set(c.unparsable.get() + 1);
            debug!(client = peer.index, error = %e, "unparsable message");
            return true;
        }
    };
    match frame.kind.as_ref() {
        "message" => {
            let payload = frame
                .message
                .and_then(|m| m.data)
                .and_then(|d| serde_json::from_str::<Payload>(d.get()).ok());
            match payload {
                Some(p) => arrived(world, peer, p),
                None => c.foreign.set(c.foreign.get() + 1),
            }
            true
        }
        "error" => {
            let n = c.server_errors.get() + 1;
            c.server_errors.set(n);
            if n <= LOG_FIRST {
                let e = frame.error.map_or("", |r| r.get());
                warn!(
                    client = peer.index,
                    error = e,
                    "server sent an error; closing this client"
                );
            }
            false
        }
        "bye" => {
            if world.phase() != Phase::Close {
                let n = c.server_byes.get() + 1;
                c.server_byes.set(n);
                if n <= LOG_FIRST {
                    let b = frame.bye.map_or("", |r| r.get());
                    warn!(
                        client = peer.index,
                        bye = b,
                        "server said bye; closing this client"
                    );
                }
            }
            false
        }
        "event" | "room" | "control" | "transient" | "welcome" | "hello" => {
            c.other.set(c.other.get() + 1);
            true
        }
        other => {
            c.other.set(c.other.get() + 1);
            let mut seen = world.unknown_types.borrow_mut();
            if !seen.iter().any(|t| t == other) {
                info!(
                    client = peer.index,
                    kind = other,
                    "unsupported message type: {text}"
                );
                seen.push(other.to_owned());
            }
            true
        }
    }
}

fn arrived(world: &World, peer: &Peer, p: Payload) {
    let now = world.now_ns();
    let arrival = if p.addressed_to(world, peer.index) {
        world.ledger.borrow_mut().deliver(peer.index, p.from, p.seq)
    } else {
        world.ledger.borrow_mut().misdelivered()
    };
    if arrival == Arrival::Misdelivered && world.ledger.borrow().totals().misdelivered <= LOG_FIRST
    {
        warn!(from = p.from, to = ?p.to, room = ?p.room, at = peer.index, "message reached a client it was not addressed to");
    }
    if let Arrival::Delivered { sender_open } = arrival {
        let took = now.saturating_sub(p.t);
        let mut lat = world.latency.borrow_mut();
        lat.record_ns(took);
        if took > 1_000_000_000 && lat.over_one_second <= LOG_FIRST {
            info!(
                from = p.from,
                to = peer.index,
                "message took {:.3} s",
                took as f64 / 1e9
            );
        }
        drop(lat);
        if let Some(sender) = world.peer(p.from) {
            if sender_open < sender.wake_below.get() {
                sender.wake_below.set(0);
                sender.wake.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::{Options, Scenario};

    #[test]
    fn frames_parse_without_copies() {
        let text = r#"{"type":"message","message":{"sender":{"type":"session","sessionid":"x","userid":"u"},"data":{"t":5,"from":1,"seq":9,"to":2}}}"#;
        let f: Frame = serde_json::from_str(text).expect("frame");
        assert_eq!(f.kind, "message");
        let p: Payload = serde_json::from_str(f.message.and_then(|m| m.data).expect("data").get())
            .expect("payload");
        assert_eq!((p.t, p.from, p.seq, p.to, p.room), (5, 1, 9, Some(2), None));
        // Data of other senders is not ours.
        let text = r#"{"type":"message","message":{"data":{"type":"offer"}}}"#;
        let f: Frame = serde_json::from_str(text).expect("frame");
        let data = f.message.and_then(|m| m.data).expect("data");
        assert!(serde_json::from_str::<Payload>(data.get()).is_err());
        let f: Frame = serde_json::from_str(r#"{"type":"welcome","welcome":{}}"#).expect("frame");
        assert_eq!(f.kind, "welcome");
    }

    fn world(scenario: Scenario) -> World {
        let opts = Options {
            scenario,
            max_clients: 20,
            room_size: 10,
            ..Options::default()
        };
        World::new(opts, String::new(), Vec::new(), None)
    }

    fn payload(from: u32, to: Option<u32>, room: Option<usize>) -> Payload {
        Payload {
            t: 0,
            from,
            seq: 0,
            to,
            room,
        }
    }

    #[test]
    fn session_messages_are_checked_against_their_addressee() {
        let w = world(Scenario::Flood);
        let p = payload(1, Some(5), None);
        assert!(p.addressed_to(&w, 5));
        assert!(!p.addressed_to(&w, 6));
        assert!(!p.addressed_to(&w, 1));
    }

    #[test]
    fn room_messages_are_checked_against_the_room() {
        // Clients 0-9 are in room 0, 10-19 in room 1.
        let w = world(Scenario::Room);
        let p = payload(3, None, Some(0));
        assert!(p.addressed_to(&w, 0));
        assert!(p.addressed_to(&w, 9));
        assert!(!p.addressed_to(&w, 3), "the sender gets no copy");
        assert!(!p.addressed_to(&w, 10), "another room");
        let p = payload(12, None, Some(1));
        assert!(p.addressed_to(&w, 19));
        assert!(!p.addressed_to(&w, 2));
    }
}
