//! One benchmark client: connection set-up (TCP, WebSocket, hello, room
//! join), then a reader task that accounts for what arrives and a writer
//! task that produces the scenario's load.
//!
//! The whole client runs on one thread (a `LocalSet`), so the shared state
//! lives in `Rc`/`RefCell` and no borrow is ever held across an `.await`.

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info, warn};

use crate::args::Scenario;
use crate::ledger::{Arrival, Recipients};
use crate::world::{Phase, World};

pub type Ws = WebSocketStream<TcpStream>;
type Sink = SplitSink<Ws, Message>;
type Stream = SplitStream<Ws>;

/// How long a flood sender waits for any of its messages to arrive before it
/// stops counting the oldest ones against its window.
const STALL: Duration = Duration::from_secs(2);
/// Logged individually before the rest is only counted.
const LOG_FIRST: u64 = 10;

/// WebSocket settings of every client connection: modest buffers, because
/// large runs hold many thousands of connections in one process.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("websocket handshake: {0}")]
    Handshake(WsError),
    #[error("websocket: {0}")]
    Ws(WsError),
    #[error("server answered {step} with error {code}: {message}")]
    Refused {
        step: &'static str,
        code: String,
        message: String,
    },
    #[error("server said bye during {0}")]
    Bye(&'static str),
    #[error("connection closed during {0}")]
    Closed(&'static str),
    #[error("no answer to {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("{0}")]
    Protocol(String),
}

/// A connected, authenticated client.
pub struct Established {
    pub ws: Ws,
    /// Public id others use to address this session.
    pub public_id: String,
}

/// Connects client `index`, says hello and, in `room` runs, joins its room.
pub async fn establish(world: &World, index: u32) -> Result<Established, SetupError> {
    let (addr, url, source) = world.target_for(index);
    let started = Instant::now();
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| SetupError::Connect { addr, source })?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|source| SetupError::Connect { addr, source })?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|source| SetupError::Connect { addr, source })?;
    // Small messages, flushed in batches on purpose: no Nagle on top.
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(SetupError::Handshake)?;
    world.record_connect(started.elapsed());

    let hello = json!({"type": "hello", "hello": {
        "version": proto::client::HELLO_VERSION_V1,
        "auth": {"url": world.auth_url, "params": {}},
    }});
    world
        .counters
        .hellos_sent
        .set(world.counters.hellos_sent.get() + 1);
    let hello_sent = Instant::now();
    ws.send(Message::text(hello.to_string()))
        .await
        .map_err(SetupError::Ws)?;
    let reply = expect(&mut ws, "hello", world.opts.hello_timeout).await?;
    world.record_hello(hello_sent.elapsed());
    let hello = &reply["hello"];
    let text = |k: &str| hello[k].as_str().unwrap_or_default().to_owned();
    let (sessionid, resumeid) = (text("sessionid"), text("resumeid"));
    debug!(client = index, session = %sessionid, user = %text("userid"), "registered");
    let public_id = match &world.codec {
        Some(codec) => {
            let data = codec
                .decode_private(&resumeid)
                .map_err(|e| SetupError::Protocol(format!("cannot decode private id: {e}")))?;
            codec.encode_public(&data)
        }
        None => sessionid,
    };
    if public_id.is_empty() {
        return Err(SetupError::Protocol(
            "hello answer without a session id".into(),
        ));
    }

    if let Some(room) = world.room_name(index) {
        let join = json!({"type": "room", "id": "join", "room": {
            "roomid": room,
            "sessionid": format!("{}-talk-{index}", world.tag),
        }});
        ws.send(Message::text(join.to_string()))
            .await
            .map_err(SetupError::Ws)?;
        let reply = expect(&mut ws, "room", world.opts.hello_timeout).await?;
        if reply["room"]["roomid"].as_str() != Some(room.as_str()) {
            return Err(SetupError::Protocol(format!(
                "joined a different room: {reply}"
            )));
        }
    }
    Ok(Established { ws, public_id })
}

/// Reads until a message of type `kind` arrives; `error` and `bye` fail.
async fn expect(ws: &mut Ws, kind: &'static str, limit: Duration) -> Result<Value, SetupError> {
    let deadline = Instant::now() + limit;
    loop {
        let frame = match timeout(
            deadline.saturating_duration_since(Instant::now()),
            ws.next(),
        )
        .await
        {
            Err(_) => return Err(SetupError::Timeout(kind, limit)),
            Ok(None) => return Err(SetupError::Closed(kind)),
            Ok(Some(Err(e))) => return Err(SetupError::Ws(e)),
            Ok(Some(Ok(f))) => f,
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(_) => return Err(SetupError::Closed(kind)),
            _ => continue,
        };
        let v: Value = serde_json::from_str(text.as_str())
            .map_err(|e| SetupError::Protocol(format!("unparsable message from server: {e}")))?;
        match v["type"].as_str().unwrap_or_default() {
            t if t == kind => return Ok(v),
            "error" => {
                return Err(SetupError::Refused {
                    step: kind,
                    code: v["error"]["code"].as_str().unwrap_or_default().to_owned(),
                    message: v["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                })
            }
            "bye" => return Err(SetupError::Bye(kind)),
            // A later server's `welcome`, room events of other joins, ...
            other => debug!(kind = other, "ignored while waiting for {kind}"),
        }
    }
}

/// Says bye and closes a connection that has no reader/writer tasks
/// (`connect` rounds), then waits briefly for the server to close.
pub async fn close(mut ws: Ws) {
    let _ = ws.send(Message::text(BYE)).await;
    let _ = ws.close(None).await;
    let _ = timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

const BYE: &str = r#"{"type":"bye","bye":{}}"#;

/// A ready client, as the other clients see it.
#[derive(Debug)]
pub struct Peer {
    pub index: u32,
    pub public_id: String,
    /// False once the connection broke or the server closed it.
    pub alive: Cell<bool>,
    /// Flood: wake the writer when its open messages drop below this (0: no).
    pub wake_below: Cell<usize>,
    /// Wakes the writer (credit returned, or the connection died).
    pub wake: Notify,
}

impl Peer {
    pub fn new(index: u32, public_id: String) -> Peer {
        Peer {
            index,
            public_id,
            alive: Cell::new(true),
            wake_below: Cell::new(0),
            wake: Notify::new(),
        }
    }
}

/// Starts the reader and writer tasks of an established client.
pub fn spawn_tasks(world: &Rc<World>, peer: Rc<Peer>, ws: Ws) {
    let (sink, stream) = ws.split();
    let r = tokio::task::spawn_local(reader(world.clone(), peer.clone(), stream));
    let w = tokio::task::spawn_local(writer(world.clone(), peer, sink));
    world.tasks.borrow_mut().extend([r, w]);
}

// ---------------------------------------------------------------------------
// Reading

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
}

async fn reader(world: Rc<World>, peer: Rc<Peer>, mut stream: Stream) {
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
    let arrival = world.ledger.borrow_mut().deliver(peer.index, p.from, p.seq);
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

// ---------------------------------------------------------------------------
// Writing

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

/// Flood: keep `window` messages in flight, refilled when half has arrived.
async fn flood(world: &World, peer: &Peer, sink: &mut Sink, phase: &mut watch::Receiver<Phase>) {
    let window = world.opts.window;
    let refill = (window / 2).max(1);
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

/// `messages` and `room`: `rate` messages per second, from a random phase.
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
    let mut next = Instant::now() + period.mul_f64(rand::thread_rng().gen::<f64>());
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
            next += period;
        }
        if next <= now {
            let c = &world.counters;
            c.behind.set(c.behind.get() + 1);
            next = now + period;
        }
        if due > 0 && !send_batch(world, peer, sink, due).await {
            return;
        }
    }
}

/// Sends up to `n` messages in one flush; false if the connection broke.
async fn send_batch(world: &World, peer: &Peer, sink: &mut Sink, n: usize) -> bool {
    let mut seqs = Vec::with_capacity(n);
    let mut texts = Vec::with_capacity(n);
    {
        let now = world.now_ns();
        let mut rng = rand::thread_rng();
        let mut ledger = world.ledger.borrow_mut();
        for _ in 0..n {
            let (to, recipient) = if world.opts.scenario == Scenario::Room {
                let others = world.room_recipients(peer.index);
                if others.is_empty() {
                    break;
                }
                (Recipients::Many(others), None)
            } else {
                match world.random_other(peer.index, &mut rng) {
                    Some(r) => (Recipients::One(r.index), Some(r)),
                    None => break,
                }
            };
            let seq = ledger.send(peer.index, to, now);
            texts.push(message_text(
                recipient.as_ref().map(|r| r.public_id.as_str()),
                peer.index,
                seq,
                now,
                &world.pad,
            ));
            seqs.push(seq);
        }
    }
    if texts.is_empty() {
        return true;
    }
    let mut ok = true;
    for t in texts {
        if sink.feed(Message::text(t)).await.is_err() {
            ok = false;
            break;
        }
    }
    if ok {
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

/// The text of one benchmark message: to a session (`Some(id)`) or to the
/// sender's room (`None`). `data` carries the sender's index, its sequence
/// number and the send time; `pad` is appended as-is inside a string.
pub fn message_text(to: Option<&str>, from: u32, seq: u64, t: u64, pad: &str) -> String {
    let recipient = match to {
        Some(id) => format!(r#"{{"type":"session","sessionid":"{id}"}}"#),
        None => r#"{"type":"room"}"#.to_owned(),
    };
    let pad = if pad.is_empty() {
        String::new()
    } else {
        format!(r#","pad":"{pad}""#)
    };
    format!(
        r#"{{"type":"message","message":{{"recipient":{recipient},"data":{{"t":{t},"from":{from},"seq":{seq}{pad}}}}}}}"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_valid_json() {
        let s = message_text(Some("abc=="), 3, 7, 12345, "");
        let v: Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["type"], "message");
        assert_eq!(v["message"]["recipient"]["type"], "session");
        assert_eq!(v["message"]["recipient"]["sessionid"], "abc==");
        assert_eq!(
            v["message"]["data"],
            json!({"t": 12345, "from": 3, "seq": 7})
        );
        let s = message_text(None, 1, 2, 3, "xxxx");
        let v: Value = serde_json::from_str(&s).expect("json");
        assert_eq!(v["message"]["recipient"], json!({"type": "room"}));
        assert_eq!(v["message"]["data"]["pad"], "xxxx");
    }

    #[test]
    fn frames_parse_without_copies() {
        let text = r#"{"type":"message","message":{"sender":{"type":"session","sessionid":"x","userid":"u"},"data":{"t":5,"from":1,"seq":9}}}"#;
        let f: Frame = serde_json::from_str(text).expect("frame");
        assert_eq!(f.kind, "message");
        let p: Payload = serde_json::from_str(f.message.and_then(|m| m.data).expect("data").get())
            .expect("payload");
        assert_eq!((p.t, p.from, p.seq), (5, 1, 9));
        // Data of other senders is not ours.
        let text = r#"{"type":"message","message":{"data":{"type":"offer"}}}"#;
        let f: Frame = serde_json::from_str(text).expect("frame");
        let data = f.message.and_then(|m| m.data).expect("data");
        assert!(serde_json::from_str::<Payload>(data.get()).is_err());
        let f: Frame = serde_json::from_str(r#"{"type":"welcome","welcome":{}}"#).expect("frame");
        assert_eq!(f.kind, "welcome");
    }
}
