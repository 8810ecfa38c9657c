//! One task per client WebSocket: reads frames and hands them to the hub in
//! order, writes what the hub queued (many frames per flush), pings, and
//! enforces the hello deadline and the read deadline.

use futures_util::{SinkExt, StreamExt};
use hub::core::conn::{Frame, Outbound};
use hub::{Hub, Pending};
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

/// Largest message a client may send (WS-04).
pub const MAX_MESSAGE_SIZE: usize = 64 * 1024;
const PING_INTERVAL: Duration = Duration::from_secs(54);
const PONG_WAIT: Duration = Duration::from_secs(60);
const WRITE_WAIT: Duration = Duration::from_secs(10);
const HELLO_TIMEOUT: Duration = hub::core::settings::HELLO_TIMEOUT;
/// Messages read ahead while an earlier one waits for the backend.
const MAX_QUEUED: usize = 16;

/// Small buffers: most connections are idle, and their memory is what
/// limits how many one server holds. A 1 KiB read buffer still takes several
/// typical messages per read; measured with `client`: 4 KiB -> 1 KiB cut idle
/// RSS per session from 11.5 to 8.5 KiB for about 8% of flood throughput.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE))
}

pub async fn serve<S>(
    hub: Arc<Hub>,
    io: S,
    remote_addr: String,
    user_agent: String,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let written = Arc::new(AtomicU64::new(0));
    let io = CountingIo {
        inner: io,
        written: written.clone(),
    };
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
    let span = info_span!("conn", peer = %remote_addr);
    run(hub, ws, written, remote_addr, user_agent, shutdown)
        .instrument(span)
        .await
}

async fn run<S>(
    hub: Arc<Hub>,
    ws: WebSocketStream<S>,
    written: Arc<AtomicU64>,
    remote_addr: String,
    user_agent: String,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = CancellationToken::new();
    let conn = hub.new_conn(remote_addr, user_agent, kill.clone());
    // Frames taken from the connection's queue and not yet handed to the socket.
    let mut batch: VecDeque<Outbound> = VecDeque::new();
    let (mut sink, mut stream) = ws.split();
    let mut inflight: Option<Pending> = None;
    let mut queued: VecDeque<Utf8Bytes> = VecDeque::new();
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let mut hello_deadline = Some(Instant::now() + HELLO_TIMEOUT);
    let mut last_read = Instant::now();
    // The first ping goes out at once (initial round-trip time), then every 54 s.
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let mut unsent: Vec<Frame> = Vec::new();
    // Frames handed to the socket but not known to be written completely:
    // (end offset in the byte stream, frame). After a failed write, those the
    // socket did not take in full go back to the session for a resume.
    let mut in_flight: VecDeque<(u64, Frame)> = VecDeque::new();
    let mut queued_bytes: u64 = 0;
    // Clustering: the session is on another server (see `hub::cluster::relay`).
    let mut relay: Option<Box<hub::cluster::relay::RelayLink>> = None;
    // The client closed (or the socket failed): nothing to wait for at the end.
    let mut peer_gone = false;

    'conn: loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            _ = shutdown.cancelled() => {
                send_close(&mut sink, CloseCode::Away, "server shutdown").await;
                break;
            }
            _ = conn.queued() => {
                // Coalesce: everything queued right now goes out in one flush.
                batch = conn.take_queued();
                if batch.is_empty() {
                    continue;
                }
                let mut close = false;
                let write = async {
                    while let Some(item) = batch.pop_front() {
                        match item {
                            Outbound::Frame(text) => {
                                queued_bytes += frame_len(text.len());
                                in_flight.push_back((queued_bytes, text.clone()));
                                sink.feed(Message::Text(text)).await?;
                            }
                            Outbound::Close => {
                                close = true;
                                // Upstream sends an empty close payload here.
                                queued_bytes += frame_len(0);
                                sink.feed(Message::Close(None)).await?;
                                break;
                            }
                            Outbound::Relay(link) => {
                                relay = Some(link);
                                break;
                            }
                        }
                    }
                    sink.flush().await
                };
                // A kill (e.g. overflow) interrupts a write that is stuck.
                let result = tokio::select! {
                    r = tokio::time::timeout(WRITE_WAIT, write) => r,
                    _ = kill.cancelled() => Ok(Err(WsError::ConnectionClosed)),
                };
                if matches!(result, Ok(Ok(()))) {
                    in_flight.clear();
                    // Do not keep a burst's worth of memory on an idle connection.
                    if in_flight.capacity() > 64 {
                        in_flight.shrink_to(8);
                    }
                    batch = VecDeque::new();
                }
                if relay.is_some() && matches!(result, Ok(Ok(()))) {
                    break 'conn;
                }
                match result {
                    Ok(Ok(())) if !close => {
                        if conn.queue_is_empty() {
                            hub.refill(&conn);
                        }
                    }
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => {
                        debug!(error = %e, "write failed");
                        break;
                    }
                    Err(_) => {
                        debug!("write timed out");
                        break;
                    }
                }
            }
            _ = async { if let Some(f) = inflight.as_mut() { f.await } }, if inflight.is_some() => {
                inflight = None;
                if conn.is_relayed() {
                    // The rest goes to the session's server.
                    continue;
                }
                if conn.session().is_none() {
                    hello_deadline = Some(Instant::now() + HELLO_TIMEOUT);
                }
                // Work through what arrived meanwhile, until the next slow message.
                while inflight.is_none() {
                    let Some(text) = queued.pop_front() else { break };
                    inflight = hub.process_text(&conn, &text);
                    if inflight.is_some() && conn.session().is_none() {
                        hello_deadline = None;
                    }
                }
            }
            msg = stream.next(), if queued.len() < MAX_QUEUED => {
                last_read = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => {
                        if inflight.is_some() || conn.is_relayed() {
                            queued.push_back(text);
                        } else {
                            inflight = hub.process_text(&conn, &text);
                            if inflight.is_some() && conn.session().is_none() {
                                hello_deadline = None;
                            }
                        }
                    }
                    Some(Ok(Message::Binary(_))) => hub.process_binary(&conn),
                    Some(Ok(Message::Ping(payload))) => {
                        queued_bytes += frame_len(payload.len());
                        // tungstenite queued the pong; push it out.
                        if tokio::time::timeout(WRITE_WAIT, sink.flush()).await.is_err() {
                            break 'conn;
                        }
                    }
                    Some(Ok(Message::Pong(payload))) => {
                        let sent = std::str::from_utf8(&payload).ok().and_then(|t| t.parse::<u128>().ok());
                        if let Some(sent) = sent {
                            debug!(rtt_ms = now_nanos().saturating_sub(sent) as f64 / 1e6, "pong");
                        }
                    }
                    Some(Ok(Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => {
                        peer_gone = true;
                        break;
                    }
                    Some(Err(WsError::Capacity(e))) => {
                        // Like upstream: 1009 "message too big", then close.
                        debug!(error = %e, "message too large");
                        send_close(&mut sink, CloseCode::Size, "").await;
                        break;
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "read failed");
                        peer_gone = true;
                        break;
                    }
                }
            }
            _ = sleep_until(hello_deadline.unwrap_or(far)), if hello_deadline.is_some() => {
                hello_deadline = None;
                if conn.session().is_none() && inflight.is_none() {
                    hub.hello_timeout(&conn);
                }
            }
            _ = ping.tick() => {
                if last_read.elapsed() > PONG_WAIT {
                    debug!("no data from client, closing");
                    break;
                }
                // Like upstream: the send time in nanoseconds, as decimal text.
                let payload = now_nanos().to_string().into_bytes();
                queued_bytes += frame_len(payload.len());
                if tokio::time::timeout(WRITE_WAIT, sink.send(Message::Ping(payload.into()))).await.map_or(true, |r| r.is_err()) {
                    break;
                }
            }
        }
    }
    if let Some(link) = relay {
        let io = RelayIo {
            sink,
            stream,
            queued,
        };
        return relayed(hub, conn, io, *link, kill, shutdown).await;
    }
    // Frames the socket did not take in full, then what is still queued,
    // go back to the session in order.
    let done = written.load(Ordering::Relaxed);
    // After a failed write, tungstenite still buffers parts of those frames:
    // closing politely would flush them and duplicate what we hand back.
    let write_failed = !in_flight.is_empty();
    unsent.extend(
        in_flight
            .into_iter()
            .filter(|(end, _)| *end > done)
            .map(|(_, f)| f),
    );
    for item in batch.into_iter().chain(conn.close_queue()) {
        if let Outbound::Frame(f) = item {
            unsent.push(f);
        }
    }
    drop(inflight);
    hub.conn_closed(&conn, unsent);
    if !write_failed {
        close_gracefully(&hub, &mut sink, &mut stream, peer_gone).await;
    }
}

/// Send the close frame (if not sent yet) and, when the server started the
/// close, wait for the client's close frame before the socket is dropped,
/// so that the last frames are not lost to a reset (`runtime::closing`).
async fn close_gracefully<K, R>(hub: &Hub, sink: &mut K, stream: &mut R, peer_gone: bool)
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
    R: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    let closed = tokio::time::timeout(Duration::from_secs(1), sink.close()).await;
    if !peer_gone && matches!(closed, Ok(Ok(()))) {
        runtime::closing::linger(stream, &hub.metrics.lingering).await;
    }
}

struct RelayIo<K, R> {
    sink: K,
    stream: R,
    /// Client frames read before the relay started, in order.
    queued: VecDeque<Utf8Bytes>,
}

/// The client resumed a session another server holds: pass its frames
/// there and write what comes back, counting what reached the socket (the
/// holder keeps what was not confirmed for the next resume).
async fn relayed<K, R>(
    hub: Arc<Hub>,
    conn: Arc<hub::core::conn::Conn>,
    io: RelayIo<K, R>,
    mut link: hub::cluster::relay::RelayLink,
    kill: CancellationToken,
    shutdown: CancellationToken,
) where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
    R: futures_util::Stream<Item = Result<Message, WsError>> + Unpin,
{
    use hub::cluster::relay::{Down, ACK_DELAY, ACK_EVERY};
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
    let (mut written, mut acked) = (0u64, 0u64);
    // Acknowledge shortly after writing (one message for a burst), so the
    // holder rarely has to hand back what did reach the client.
    let mut ack_due: Option<Instant> = None;
    let (mut heard, mut last_read) = (Instant::now(), Instant::now());
    // Close the socket as "going away" (the client should come back).
    let mut away = false;
    let mut peer_gone = false;
    loop {
        tokio::select! {
            biased;
            _ = kill.cancelled() => break,
            _ = shutdown.cancelled() => {
                send_close(&mut sink, CloseCode::Away, "server shutdown").await;
                break;
            }
            down = link.recv() => {
                heard = Instant::now();
                match down {
                    Some(Down::Text(seq, text)) => {
                        if seq != written + 1 {
                            debug!(expected = written + 1, got = seq, "relayed frames lost, closing");
                            away = true;
                            break;
                        }
                        let sent = tokio::time::timeout(WRITE_WAIT, sink.send(Message::Text(text))).await;
                        if !matches!(sent, Ok(Ok(()))) {
                            break;
                        }
                        written = seq;
                        if written - acked >= ACK_EVERY {
                            link.ack(written).await;
                            acked = written;
                            ack_due = None;
                        } else if ack_due.is_none() {
                            ack_due = Some(Instant::now() + ACK_DELAY);
                        }
                    }
                    Some(Down::Close) => {
                        let _ = tokio::time::timeout(Duration::from_secs(1), sink.send(Message::Close(None))).await;
                        break;
                    }
                    Some(Down::Away) | None => {
                        away = true;
                        break;
                    }
                    Some(Down::Alive) => {}
                }
            }
            msg = stream.next() => {
                last_read = Instant::now();
                match msg {
                    Some(Ok(Message::Text(text))) => link.send_text(&text).await,
                    Some(Ok(Message::Binary(_))) => link.send_binary().await,
                    Some(Ok(Message::Ping(_))) => {
                        if tokio::time::timeout(WRITE_WAIT, sink.flush()).await.is_err() {
                            break;
                        }
                    }
                    Some(Ok(Message::Pong(_) | Message::Frame(_))) => {}
                    Some(Ok(Message::Close(_))) | None => {
                        peer_gone = true;
                        break;
                    }
                    Some(Err(WsError::Capacity(_))) => {
                        send_close(&mut sink, CloseCode::Size, "").await;
                        break;
                    }
                    Some(Err(e)) => {
                        debug!(error = %e, "read failed");
                        peer_gone = true;
                        break;
                    }
                }
            }
            _ = sleep_until(ack_due.unwrap_or(Instant::now())), if ack_due.is_some() => {
                ack_due = None;
                link.ack(written).await;
                acked = written;
            }
            _ = alive.tick() => {
                if heard.elapsed() > interval * 3 {
                    debug!("session's server silent, closing relayed connection");
                    away = true;
                    break;
                }
                link.ack(written).await;
                acked = written;
            }
            _ = ping.tick() => {
                if last_read.elapsed() > PONG_WAIT {
                    debug!("no data from client, closing");
                    break;
                }
                let payload = now_nanos().to_string().into_bytes();
                if tokio::time::timeout(WRITE_WAIT, sink.send(Message::Ping(payload.into()))).await.map_or(true, |r| r.is_err()) {
                    break;
                }
            }
        }
    }
    if away {
        send_close(&mut sink, CloseCode::Away, "session server gone").await;
    }
    link.close(written).await;
    hub.metrics.relays.dec(&["client"]);
    hub.conn_closed(&conn, Vec::new());
    close_gracefully(&hub, &mut sink, &mut stream, peer_gone).await;
}

/// A close frame with `code`, given a second at most.
async fn send_close<K>(sink: &mut K, code: CloseCode, reason: &'static str)
where
    K: futures_util::Sink<Message, Error = WsError> + Unpin,
{
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    let _ = tokio::time::timeout(
        Duration::from_secs(1),
        sink.send(Message::Close(Some(frame))),
    )
    .await;
}

/// Bytes of an unmasked server frame with this payload length.
fn frame_len(payload: usize) -> u64 {
    let header = if payload < 126 {
        2
    } else if payload <= 0xffff {
        4
    } else {
        10
    };
    (header + payload) as u64
}

/// Counts the bytes the socket accepted, to know which frames were written
/// completely when a write fails or times out.
struct CountingIo<S> {
    inner: S,
    written: Arc<AtomicU64>,
}

impl<S: AsyncRead + Unpin> AsyncRead for CountingIo<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CountingIo<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &res {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        res
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let res = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = &res {
            self.written.fetch_add(*n as u64, Ordering::Relaxed);
        }
        res
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}
