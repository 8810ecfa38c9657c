//! A connection whose session another server holds (a resume there, see
//! `hub::cluster::relay`): the client's frames go to that server, what comes back is
//! written to the client and acknowledged.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use hub::Hub;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{close_gracefully, now_nanos, send_close, PING_INTERVAL, PONG_WAIT, WRITE_WAIT};

pub(super) struct RelayIo<S> {
    pub(super) sink: SplitSink<WebSocketStream<S>, Message>,
    pub(super) stream: SplitStream<WebSocketStream<S>>,
    /// Client frames read before the relay started, in order.
    pub(super) queued: VecDeque<Utf8Bytes>,
}

/// Where a relayed connection stands.
struct RelayState {
    /// Last frame written to the client, and last one acknowledged.
    written: u64,
    acked: u64,
    /// Acknowledge shortly after writing (one message for a burst), so the
    /// holder rarely has to hand back what did reach the client.
    ack_due: Option<Instant>,
    heard: Instant,
    last_read: Instant,
    /// Close the socket as "going away" (the client should come back).
    away: bool,
    peer_gone: bool,
}

/// The client resumed a session another server holds: pass its frames
/// there and write what comes back, counting what reached the socket (the
/// holder keeps what was not confirmed for the next resume).
pub(super) async fn relayed<S>(
    hub: Arc<Hub>,
    conn: Arc<hub::core::conn::Conn>,
    io: RelayIo<S>,
    mut link: hub::cluster::relay::RelayLink,
    kill: CancellationToken,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let RelayIo {
        mut sink,
        mut stream,
        queued,
    } = io;
    hub.metrics.relays.inc(&["client"]);
    for text in queued {
        link.send_text(&text).await;
    }
    let interval = link.interval();
    let mut alive = tokio::time::interval(interval);
    alive.tick().await;
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut st = RelayState {
        written: 0,
        acked: 0,
        ack_due: None,
        heard: Instant::now(),
        last_read: Instant::now(),
        away: false,
        peer_gone: false,
    };
    loop {
        let go_on = tokio::select! {
            biased;
            _ = kill.cancelled() => false,
            _ = shutdown.cancelled() => {
                send_close(&mut sink, CloseCode::Away, "server shutdown").await;
                false
            }
            down = link.recv() => relay_down(&mut st, &mut link, &mut sink, down).await,
            msg = stream.next() => relay_up(&mut st, &mut link, &mut sink, msg).await,
            _ = sleep_until(st.ack_due.unwrap_or(Instant::now())), if st.ack_due.is_some() => {
                st.ack_due = None;
                link.ack(st.written).await;
                st.acked = st.written;
                true
            }
            _ = alive.tick() => {
                if st.heard.elapsed() > interval * 3 {
                    debug!("session's server silent, closing relayed connection");
                    st.away = true;
                    false
                } else {
                    link.ack(st.written).await;
                    st.acked = st.written;
                    true
                }
            }
            _ = ping.tick() => relay_ping(&st, &mut sink).await,
        };
        if !go_on {
            break;
        }
    }
    if st.away {
        send_close(&mut sink, CloseCode::Away, "session server gone").await;
    }
    link.close(st.written).await;
    hub.metrics.relays.dec(&["client"]);
    hub.conn_closed(&conn, Vec::new());
    if let Ok(mut ws) = sink.reunite(stream) {
        close_gracefully(&hub, &mut ws, st.peer_gone).await;
    }
}

/// A frame from the session's server: write it to the client, in sequence,
/// and acknowledge it soon. False when the connection ends.
async fn relay_down<K>(
    st: &mut RelayState,
    link: &mut hub::cluster::relay::RelayLink,
    sink: &mut K,
    down: Option<hub::cluster::relay::Down>,
) -> bool
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    use hub::cluster::relay::{Down, ACK_DELAY, ACK_EVERY};
    st.heard = Instant::now();
    match down {
        Some(Down::Text(seq, text)) => {
            if seq != st.written + 1 {
                debug!(
                    expected = st.written + 1,
                    got = seq,
                    "relayed frames lost, closing"
                );
                st.away = true;
                return false;
            }
            let sent = tokio::time::timeout(WRITE_WAIT, sink.send(Message::Text(text))).await;
            if !matches!(sent, Ok(Ok(()))) {
                return false;
            }
            st.written = seq;
            if st.written - st.acked >= ACK_EVERY {
                link.ack(st.written).await;
                st.acked = st.written;
                st.ack_due = None;
            } else if st.ack_due.is_none() {
                st.ack_due = Some(Instant::now() + ACK_DELAY);
            }
            true
        }
        Some(Down::Close) => {
            let _ =
                tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
            false
        }
        Some(Down::Away) | None => {
            st.away = true;
            false
        }
        Some(Down::Alive) => true,
    }
}

/// A frame from the client of a relayed connection: pass it on. False when
/// the connection ends.
async fn relay_up<K>(
    st: &mut RelayState,
    link: &mut hub::cluster::relay::RelayLink,
    sink: &mut K,
    msg: Option<Result<Message, WsError>>,
) -> bool
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    st.last_read = Instant::now();
    match msg {
        Some(Ok(Message::Text(text))) => link.send_text(&text).await,
        Some(Ok(Message::Binary(_))) => link.send_binary().await,
        Some(Ok(Message::Ping(_))) => {
            if tokio::time::timeout(WRITE_WAIT, sink.flush())
                .await
                .is_err()
            {
                return false;
            }
        }
        Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
        Some(Ok(Message::Close(_))) | None => {
            st.peer_gone = true;
            return false;
        }
        Some(Err(WsError::Capacity(_))) => {
            send_close(sink, CloseCode::Size, "").await;
            return false;
        }
        Some(Err(e)) => {
            debug!(error = %e, "read failed");
            st.peer_gone = true;
            return false;
        }
    }
    true
}

/// The ping timer of a relayed connection. False when the client is silent
/// or the ping cannot be written.
async fn relay_ping<K>(st: &RelayState, sink: &mut K) -> bool
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    if st.last_read.elapsed() > PONG_WAIT {
        debug!("no data from client, closing");
        return false;
    }
    let payload = now_nanos().to_string().into_bytes();
    matches!(
        tokio::time::timeout(WRITE_WAIT, sink.send(Message::Ping(payload.into()))).await,
        Ok(Ok(()))
    )
}
