//! A client connection relayed between two servers of a cluster: the client
//! resumed its session on server B while the session lives on server A.
//!
//! The session does not move. B keeps the WebSocket and passes its frames
//! through NATS; A runs the connection as if the client were its own (the
//! same hub code, with a [`Conn`] whose frames go to NATS instead of a
//! socket). So nothing about the session changes for anyone else: its room,
//! its media streams, its queued messages all stay where they are, and no
//! leave/join is seen.
//!
//! Subjects `relay.<id>.up` (B to A) and `relay.<id>.down` (A to B). Every
//! frame starts with a tag byte:
//! - down: `T` + 8-byte sequence number + text, `C` (close normally),
//!   `A` (going away: the client should reconnect), `K` (keepalive);
//! - up: `T` + text, `B` (a binary frame came), `K` + 8-byte count of down
//!   frames written to the client (acknowledgement and keepalive), `C` +
//!   that count (the client's socket is gone).
//!
//! **Nothing lost**: A keeps each frame until B acknowledges that it wrote
//! it to the socket. When the relay ends (the client went away, or B stopped
//! answering for three keepalive intervals), the frames B did not confirm go
//! back to the session and reach the client when it resumes (anywhere). B
//! checks the sequence: a gap (a frame NATS lost) ends the relay at once, so
//! the client reconnects and gets the frames from the gap on.

use async_nats::{Client, Subscriber};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use proto::cluster::ResumeRequest;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, info_span, Instrument};

use crate::bus::relay_link::*;
pub use crate::bus::relay_link::{Down, RelayLink, ACK_DELAY, ACK_EVERY};
use crate::core::conn::{Conn, Frame, Outbound};
use crate::{Hub, Pending};

/// B: the session is not here; ask the cluster who has it. On success
/// the connection task gets the link (through its queue) and from then
/// on passes frames; the holder answers the hello itself.
pub(crate) async fn resume_elsewhere(
    hub: &Hub,
    conn: &Arc<Conn>,
    resume_id: &str,
    hello: &str,
) -> bool {
    let Some(cluster) = hub.cluster.get() else {
        return false;
    };
    // Not even one of our ids: no need to ask anyone.
    if hub.codec.decode_private(resume_id).is_err() {
        return false;
    }
    let Some(client) = cluster.client() else {
        return false;
    };
    let relay = proto::backend::random_hex(16);
    let (up, down) = subjects(&relay);
    // Subscribed before asking, so the holder's first frames (the hello
    // answer) cannot come too early.
    let Ok(down) = client.subscribe(down).await else {
        return false;
    };
    let question = ResumeRequest {
        node: hub.node_id.to_string(),
        resumeid: resume_id.to_owned(),
        relay,
        hello: hello.to_owned(),
        addr: conn.remote_addr.clone(),
        agent: conn.user_agent.clone(),
    };
    let found: Option<bool> = cluster
        .ask(
            proto::cluster::RESUME_SUBJECT,
            &question,
            hub.live_nodes(),
            crate::cluster::ASK_TIMEOUT,
        )
        .await;
    if found != Some(true) {
        return false;
    }
    let Some(interval) = hub.settings.presence_interval else {
        return false;
    };
    info!(peer = %conn.remote_addr, "session is on another server, relaying the connection");
    conn.relay(Box::new(RelayLink {
        client,
        up,
        down,
        interval,
    }))
}

/// A: another server asks for a session to resume. When it is here, take
/// the connection over (answer true) and serve it until the relay ends.
pub(crate) async fn take_over(
    hub: &Arc<Hub>,
    client: &Client,
    q: ResumeRequest,
    shutdown: CancellationToken,
) -> bool {
    if *q.node == *hub.node_id || !hub.has_resumable(&q.resumeid) {
        return false;
    }
    let Some(interval) = hub.settings.presence_interval else {
        return false;
    };
    let (up, down) = subjects(&q.relay);
    // Subscribed before answering, so nothing the client sends is missed.
    let Ok(up) = client.subscribe(up).await else {
        return false;
    };
    let span = info_span!("relay", peer = %q.addr, from = %q.node);
    tokio::spawn(
        hold(hub.clone(), client.clone(), q, up, down, interval, shutdown).instrument(span),
    );
    true
}

/// A's end: run the connection like a socket's (see the `signaling` crate's
/// connection task, which this mirrors), frames to and from NATS.
///
/// Long because it is one `select!` loop over four event sources (client
/// frames, the hub's queue, acknowledgements, keepalive) sharing the
/// unacknowledged-frame state; split up, that state would have to be
/// threaded through every piece.
async fn hold(
    hub: Arc<Hub>,
    client: Client,
    q: ResumeRequest,
    mut up: Subscriber,
    down: String,
    interval: Duration,
    shutdown: CancellationToken,
) {
    let kill = CancellationToken::new();
    let conn = hub.new_relayed_conn(q.addr, q.agent, kill.clone());
    hub.metrics.relays.inc(&["session"]);
    let send = |payload: Bytes| {
        let client = client.clone();
        let down = down.clone();
        async move {
            if let Err(e) = client.publish(down, payload).await {
                debug!(error = %e, "relay frame not sent");
            }
        }
    };
    let mut seq = 0u64;
    let mut acked = 0u64;
    let mut unacked: VecDeque<(u64, Frame)> = VecDeque::new();
    let mut queued: VecDeque<String> = VecDeque::new();
    let mut inflight: Option<Pending> = hub.process_text(&conn, &q.hello);
    let mut heard = Instant::now();
    let mut alive = tokio::time::interval(interval);
    alive.tick().await;
    // How the relay ended, for the other side.
    let mut end = Some(AWAY);
    loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            _ = shutdown.cancelled() => break,
            // Flow control: with this many frames unacknowledged, leave the
            // rest queued until B confirms (a socket write that blocks does
            // the same); a long backlog after a resume then reaches the
            // client in one connection, as from one server, and a client
            // that does not read overflows the queue as it would there.
            _ = conn.queued(), if unacked.len() < MAX_UNACKED => {
                let mut close = false;
                for item in conn.take_queued() {
                    match item {
                        // (A held session's connection has no socket of
                        // its own: nothing was written of any frame.)
                        Outbound::Frame(f) | Outbound::Rest { frame: f, .. } => {
                            seq += 1;
                            let mut b = BytesMut::with_capacity(9 + f.len());
                            b.put_u8(TEXT);
                            b.put_u64(seq);
                            b.put_slice(f.as_bytes());
                            send(b.freeze()).await;
                            unacked.push_back((seq, f));
                        }
                        Outbound::Close => {
                            close = true;
                            break;
                        }
                        // Only a socket's connection is ever relayed on.
                        Outbound::Relay(_) => {}
                    }
                }
                if close {
                    end = Some(CLOSE);
                    break;
                }
                if conn.queue_is_empty() {
                    hub.refill(&conn);
                }
            }
            _ = async { if let Some(f) = inflight.as_mut() { f.await } }, if inflight.is_some() => {
                inflight = None;
                while inflight.is_none() {
                    let Some(text) = queued.pop_front() else { break };
                    inflight = hub.process_text(&conn, &text);
                }
            }
            m = up.next() => {
                let Some(m) = m else { break };
                heard = Instant::now();
                let p = &m.payload;
                match p.first() {
                    Some(&TEXT) => {
                        let Ok(text) = std::str::from_utf8(&p[1..]) else { continue };
                        if inflight.is_some() {
                            if queued.len() >= MAX_QUEUED_UP {
                                debug!("client sends faster than it is served, ending relay");
                                break;
                            }
                            queued.push_back(text.to_owned());
                        } else {
                            inflight = hub.process_text(&conn, text);
                        }
                    }
                    Some(&BINARY) => hub.process_binary(&conn),
                    Some(&ALIVE) => acked = acked.max(count(p)),
                    Some(&CLOSE) => {
                        acked = acked.max(count(p));
                        end = None;
                        break;
                    }
                    _ => debug!("unknown relay frame"),
                }
                while unacked.front().is_some_and(|(s, _)| *s <= acked) {
                    unacked.pop_front();
                }
            }
            _ = alive.tick() => {
                if heard.elapsed() > interval * 3 {
                    debug!("relayed client's server silent, ending relay");
                    break;
                }
                send(Bytes::from_static(&[ALIVE])).await;
            }
        }
    }
    if let Some(tag) = end {
        send(Bytes::copy_from_slice(&[tag])).await;
    }
    drop(inflight);
    // The answer to this connection's hello belongs to it alone: a later
    // resume gets its own.
    let mut unsent: Vec<Frame> = unacked
        .into_iter()
        .filter(|(s, f)| *s > acked && !is_hello_answer(f))
        .map(|(_, f)| f)
        .collect();
    if end != Some(CLOSE) {
        for item in conn.close_queue() {
            if let Outbound::Frame(f) | Outbound::Rest { frame: f, .. } = item {
                unsent.push(f);
            }
        }
    }
    debug!(unconfirmed = unsent.len(), "relay ended");
    hub.metrics.relays.dec(&["session"]);
    hub.conn_closed(&conn, unsent);
}
