//! The load of one ready client: a reader task ([`crate::receive`]) that
//! accounts for what arrives and a writer task that produces the scenario's
//! messages.
//!
//! Writes are unbatched by default, as real Talk clients send: every frame
//! is flushed on its own (one `write` per message; `TCP_NODELAY` keeps the
//! kernel from merging them), paced senders send at random (Poisson)
//! times, and a flood sender refills its window one message at a time. With
//! `-batch` a client coalesces whatever is due into one write (the older,
//! kinder load).

use std::rc::Rc;
use std::time::Duration;

use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, Instant};
use tokio_tungstenite::tungstenite::Message;
use tracing::debug;

use crate::args::Scenario;
use crate::ledger::Recipients;
use crate::receive::reader;
use crate::session::{Ws, BYE};
use crate::world::{Peer, Phase, World};

type Sink = SplitSink<Ws, Message>;

/// How long a flood sender waits for any of its messages to arrive before it
/// stops counting the oldest ones against its window.
const STALL: Duration = Duration::from_secs(2);

pub fn spawn_tasks(world: &Rc<World>, peer: Rc<Peer>, ws: Ws) {
    let (sink, stream) = ws.split();
    let r = tokio::task::spawn_local(reader(world.clone(), peer.clone(), stream));
    let w = tokio::task::spawn_local(writer(world.clone(), peer, sink));
    world.tasks.borrow_mut().extend([r, w]);
}

async fn writer(world: Rc<World>, peer: Rc<Peer>, mut sink: Sink) {
    let mut phase = world.phase_rx();
    let started = phase
        .wait_for(|p| *p != Phase::Setup)
        .await
        .map(|p| *p)
        .ok();
    if started == Some(Phase::Run) && peer.alive.get() {
        match world.opts.scenario {
            Scenario::Flood => flood(&world, &peer, &mut sink, &mut phase).await,
            Scenario::Messages | Scenario::Room => {
                let rate = world.opts.per_client_rate();
                paced(&world, &peer, &mut sink, &mut phase, rate).await
            }
            Scenario::Idle | Scenario::Connect => {}
        }
    }
    if peer.alive.get() {
        // Wait until the run is over, then leave politely so the server
        // frees the session at once instead of keeping it for a resume.
        tokio::select! {
            _ = phase.wait_for(|p| *p == Phase::Close) => {}
            _ = wait_dead(&peer) => {}
        }
        if peer.alive.get() {
            let _ = sink.send(Message::text(BYE)).await;
            let _ = sink.close().await;
        }
    }
}

async fn wait_dead(peer: &Peer) {
    while peer.alive.get() {
        peer.wake.notified().await;
    }
}

/// Flood: keep `window` messages in flight, refilled as each arrives
/// (`-batch`: when half has arrived, in one write).
async fn flood(world: &World, peer: &Peer, sink: &mut Sink, phase: &mut watch::Receiver<Phase>) {
    let window = world.opts.window;
    let refill = if world.opts.batch {
        (window / 2).max(1)
    } else {
        1
    };
    let mut forgiven = 0usize;
    loop {
        if *phase.borrow() != Phase::Run || !peer.alive.get() {
            return;
        }
        let open = world.ledger.borrow().open_of(peer.index);
        if forgiven > 0 {
            let cutoff = world.now_ns().saturating_sub(STALL.as_nanos() as u64);
            forgiven = world.ledger.borrow().open_older_than(peer.index, cutoff);
        }
        let limit = window + forgiven;
        if open < limit {
            if !send_batch(world, peer, sink, limit - open).await {
                return;
            }
            // Let the readers run between batches even if the socket never blocks.
            tokio::task::yield_now().await;
            continue;
        }
        peer.wake_below.set(limit - refill + 1);
        tokio::select! {
            _ = peer.wake.notified() => {}
            _ = sleep(STALL) => {
                let cutoff = world.now_ns().saturating_sub(STALL.as_nanos() as u64);
                forgiven = world.ledger.borrow().open_older_than(peer.index, cutoff);
                if forgiven > 0 {
                    let c = &world.counters;
                    c.stalls.set(c.stalls.get() + 1);
                    debug!(client = peer.index, forgiven, "flood window stalled");
                }
            }
            _ = phase.changed() => {}
        }
    }
}

/// `messages` and `room`: `rate` messages per second. Unbatched, at random
/// times (exponential gaps, so all clients together send a Poisson stream
/// of the total rate); with `-batch`, on a fixed period from a random phase.
async fn paced(
    world: &World,
    peer: &Peer,
    sink: &mut Sink,
    phase: &mut watch::Receiver<Phase>,
    rate: f64,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    // Catch up at most 100 ms of sends at once; beyond that the client is
    // overloaded and skipping is more honest than bursting.
    let max_burst = ((rate * 0.1).ceil() as usize).max(1);
    let batch = world.opts.batch;
    let gap = || {
        if batch {
            period
        } else {
            period.mul_f64(exponential(&mut rand::thread_rng()))
        }
    };
    // Batched: a random phase; unbatched: the first gap is a gap like any
    // other (memoryless), so every second carries the same expected load.
    let first = if batch {
        period.mul_f64(rand::thread_rng().gen::<f64>())
    } else {
        gap()
    };
    let mut next = Instant::now() + first;
    loop {
        tokio::select! {
            _ = sleep_until(next) => {}
            _ = phase.changed() => {}
            _ = peer.wake.notified() => {}
        }
        if *phase.borrow() != Phase::Run || !peer.alive.get() {
            return;
        }
        let now = Instant::now();
        let mut due = 0;
        while next <= now && due < max_burst {
            due += 1;
            next += gap();
        }
        if next <= now {
            let c = &world.counters;
            c.behind.set(c.behind.get() + 1);
            next = now + gap();
        }
        if due > 0 && !send_batch(world, peer, sink, due).await {
            return;
        }
    }
}

/// A sample of the exponential distribution with mean 1.
fn exponential<R: Rng>(rng: &mut R) -> f64 {
    // 1 - u is in (0, 1], so the logarithm is finite.
    -(1.0 - rng.gen::<f64>()).ln()
}

/// Sends up to `n` messages, each in its own write (with `-batch`: all in
/// one flush); false if the connection broke.
async fn send_batch(world: &World, peer: &Peer, sink: &mut Sink, n: usize) -> bool {
    let mut seqs = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    {
        let now = world.now_ns();
        let mut rng = rand::thread_rng();
        let mut ledger = world.ledger.borrow_mut();
        for _ in 0..n {
            let (to, addressee) = if let Some(room) = world.room_index(peer.index) {
                let others = world.room_recipients(peer.index);
                if others.is_empty() {
                    break;
                }
                (Recipients::Many(others), Addressee::Room(room))
            } else {
                match world.random_other(peer.index, &mut rng) {
                    Some(r) => (Recipients::One(r.index), Addressee::Session(r)),
                    None => break,
                }
            };
            let seq = ledger.send(peer.index, to, now);
            texts.push(message_text(&addressee, peer.index, seq, now, &world.pad));
            seqs.push(seq);
        }
    }
    if texts.is_empty() {
        return true;
    }
    let mut ok = true;
    for t in texts {
        // `send` flushes: one frame, one write.
        let sent = if world.opts.batch {
            sink.feed(Message::text(t)).await
        } else {
            sink.send(Message::text(t)).await
        };
        if sent.is_err() {
            ok = false;
            break;
        }
    }
    if ok && world.opts.batch {
        ok = sink.flush().await.is_ok();
    }
    if !ok {
        let mut ledger = world.ledger.borrow_mut();
        for seq in seqs {
            ledger.unsend(peer.index, seq);
        }
        drop(ledger);
        let c = &world.counters;
        c.write_errors.set(c.write_errors.get() + 1);
        if peer.alive.replace(false) {
            c.dropped.set(c.dropped.get() + 1);
        }
    }
    ok
}

/// Whom one benchmark message is for.
pub enum Addressee {
    Session(Rc<Peer>),
    /// The sender's room (by number).
    Room(usize),
}

/// The text of one benchmark message. `data` carries the sender's index, its
/// sequence number, the send time and the addressee (`to`: the client's
/// index, or `room`: the room's number); `pad` is appended as-is inside a
/// string.
pub fn message_text(to: &Addressee, from: u32, seq: u64, t: u64, pad: &str) -> String {
    let (recipient, addressee) = match to {
        Addressee::Session(p) => (
            format!(r#"{{"type":"session","sessionid":"{}"}}"#, p.public_id),
            format!(r#","to":{}"#, p.index),
        ),
        Addressee::Room(r) => (r#"{"type":"room"}"#.to_owned(), format!(r#","room":{r}"#)),
    };
    let pad = if pad.is_empty() {
        String::new()
    } else {
        format!(r#","pad":"{pad}""#)
    };
    format!(
        r#"{{"type":"message","message":{{"recipient":{recipient},"data":{{"t":{t},"from":{from},"seq":{seq}{addressee}{pad}}}}}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn message_text_is_valid_json() {
        let peer = Rc::new(Peer::new(4, "abc==".into()));
        let s = message_text(&Addressee::Session(peer), 3, 7, 12345, "");
        let v: Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["message"]["recipient"]["type"], "session");
        assert_eq!(v["message"]["recipient"]["sessionid"], "abc==");
        assert_eq!(
            v["message"]["data"],
            json!({"t": 12345, "from": 3, "seq": 7, "to": 4})
        );
        let s = message_text(&Addressee::Room(2), 1, 2, 3, "xxxx");
        let v: Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["message"]["recipient"], json!({"type": "room"}));
        assert_eq!(v["message"]["data"]["room"], 2);
        assert_eq!(v["message"]["data"]["pad"], "xxxx");
    }

    #[test]
    fn exponential_gaps_average_one() {
        let mut rng = rand::thread_rng();
        let n = 100_000;
        let sum: f64 = (0..n).map(|_| exponential(&mut rng)).sum();
        let mean = sum / n as f64;
        // The standard error of the mean is 1/sqrt(n) = 0.003.
        assert!((mean - 1.0).abs() < 0.03, "mean {mean}");
    }
}
