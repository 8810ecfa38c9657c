//! One task per client WebSocket: reads frames and hands them to the hub in
//! order, writes what the hub queued (everything queued in one flush), pings,
//! and enforces the hello deadline and the read deadline.

use futures_util::{SinkExt, StreamExt};
use hub::core::conn::{frame_len, push_text_header, Frame, Outbound};
use hub::{Hub, Pending};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::error::Elapsed;
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info_span, Instrument};

mod counting;
mod gate;
mod relay;
mod shared_tcp;

use counting::CountingIo;
use gate::Gate;
use relay::{relayed, RelayIo};
use shared_tcp::SharedTcp;

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

/// Serves an upgraded HTTP connection. On plain TCP the hub may write to
/// the socket directly while the connection is idle (see `SharedTcp`).
///
/// This and [`serve`] are plain functions returning the connection's
/// future, not `async fn`s: an `async fn` keeps its arguments in its future
/// for as long as it runs, beside the inner future they were moved into,
/// and every byte of a connection's task is paid once per idle session.
pub fn serve_upgraded(
    hub: Arc<Hub>,
    upgraded: hyper::upgrade::Upgraded,
    remote_addr: String,
    user_agent: String,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static {
    use futures_util::future::Either;
    use hyper_util::rt::TokioIo;
    match upgraded.downcast::<TokioIo<TcpStream>>() {
        Ok(parts) => {
            let stream = Arc::new(parts.io.into_inner());
            let io = SharedTcp::new(stream.clone(), parts.read_buf);
            Either::Left(serve(
                hub,
                io,
                Some(stream),
                remote_addr,
                user_agent,
                shutdown,
            ))
        }
        Err(upgraded) => Either::Right(serve(
            hub,
            TokioIo::new(upgraded),
            None,
            remote_addr,
            user_agent,
            shutdown,
        )),
    }
}

pub fn serve<S>(
    hub: Arc<Hub>,
    io: S,
    direct: Option<Arc<TcpStream>>,
    remote_addr: String,
    user_agent: String,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let written = Arc::new(AtomicU64::new(0));
    let io = CountingIo {
        inner: io,
        written: written.clone(),
    };
    let span = info_span!("conn", peer = %remote_addr);
    run(hub, io, written, direct, remote_addr, user_agent, shutdown).instrument(span)
}

/// What the connection loop does after a step.
enum Step {
    Continue,
    /// Leave the loop; the connection ends.
    Stop,
    /// The client resumed a session another server holds (see `hub::cluster::relay`).
    Relay(Box<hub::cluster::relay::RelayLink>),
}

/// Why the connection must end now.
enum End {
    Killed,
    Shutdown,
}

/// The state of one connection between the steps of [`run`].
struct Conn {
    hub: Arc<Hub>,
    conn: Arc<hub::core::conn::Conn>,
    kill: CancellationToken,
    /// The message the hub is still working on (e.g. a hello waiting for the
    /// backend); frames read meanwhile wait in `queued`, in order.
    inflight: Option<Pending>,
    queued: VecDeque<Utf8Bytes>,
    hello_deadline: Option<Instant>,
    last_read: Instant,
    /// Frames taken from the connection's queue and not yet handed to the socket.
    batch: VecDeque<Outbound>,
    /// Frames handed to the socket but not known to be written completely:
    /// (end offset in the byte stream, frame, bytes of it the hub already
    /// wrote directly). After a failed write, those the socket did not take
    /// in full go back to the session for a resume. The stream offsets
    /// count only what this task writes: the hub writes directly only
    /// between the task's writes, whole frames or a frame's first bytes
    /// (whose rest then comes first here).
    in_flight: VecDeque<(u64, Frame, usize)>,
    queued_bytes: u64,
    /// The client closed (or the socket failed): nothing to wait for at the end.
    peer_gone: bool,
}

/// The connection's loop: one task per socket, unsplit (reads and writes
/// take turns in the same task, so no lock sits between them), woken by the
/// socket, the hub's queue, the backend, and the hello and ping timers.
async fn run<S>(
    hub: Arc<Hub>,
    io: CountingIo<S>,
    written: Arc<AtomicU64>,
    direct: Option<Arc<TcpStream>>,
    remote_addr: String,
    user_agent: String,
    shutdown: CancellationToken,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(ws_config())).await;
    let kill = CancellationToken::new();
    let conn = hub.new_conn(remote_addr, user_agent, kill.clone());
    // However this task ends, the hub stops writing to its socket (and
    // lets go of it).
    let _direct = EndDirect(conn.clone());
    if let Some(socket) = direct {
        conn.set_direct(socket);
    }
    let mut c = Conn {
        hub,
        conn,
        kill: kill.clone(),
        inflight: None,
        queued: VecDeque::new(),
        hello_deadline: Some(Instant::now() + HELLO_TIMEOUT),
        last_read: Instant::now(),
        batch: VecDeque::new(),
        in_flight: VecDeque::new(),
        queued_bytes: 0,
        peer_gone: false,
    };
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    // The first ping goes out at once (initial round-trip time), then every 54 s.
    let mut ping = tokio::time::interval(PING_INTERVAL);
    let step = {
        // Made once, not on every wake: a cancellation future registers with
        // its token when made, a `Notified` unregisters when dropped.
        let mut killed = pin!(kill.cancelled());
        let mut stopping = pin!(shutdown.cancelled());
        // Polled only after their own wake-ups, not on every frame queued
        // for the socket (see `gate`).
        let ends = Gate::new();
        let reads = Gate::new();
        let conn = c.conn.clone();
        let mut queued = pin!(conn.queued());
        loop {
            let step = tokio::select! {
                biased;
                end = poll_fn(|cx| ends.poll(cx, |cx| {
                    if killed.as_mut().poll(cx).is_ready() {
                        return Poll::Ready(End::Killed);
                    }
                    stopping.as_mut().poll(cx).map(|()| End::Shutdown)
                })) => match end {
                    End::Killed => Step::Stop,
                    End::Shutdown => {
                        c.conn.claim_writer();
                        Box::pin(send_close(&mut ws, CloseCode::Away, "server shutdown")).await;
                        Step::Stop
                    }
                },
                _ = &mut queued => {
                    queued.set(conn.queued());
                    c.write_queued(&mut ws).await
                }
                _ = async { if let Some(f) = c.inflight.as_mut() { f.await } }, if c.inflight.is_some() => {
                    c.processed();
                    Step::Continue
                }
                msg = poll_fn(|cx| reads.poll(cx, |cx| ws.poll_next_unpin(cx))), if c.queued.len() < MAX_QUEUED => {
                    c.read(&mut ws, msg).await
                }
                _ = sleep_until(c.hello_deadline.unwrap_or(far)), if c.hello_deadline.is_some() => {
                    c.hello_deadline = None;
                    if c.conn.session().is_none() && c.inflight.is_none() {
                        c.hub.hello_timeout(&c.conn);
                    }
                    Step::Continue
                }
                _ = ping.tick() => Box::pin(c.ping(&mut ws)).await,
            };
            if !matches!(step, Step::Continue) {
                break step;
            }
        }
    };
    if let Step::Relay(link) = step {
        let (sink, stream) = ws.split();
        let io = RelayIo {
            sink,
            stream,
            queued: c.queued,
        };
        return Box::pin(relayed(c.hub, c.conn, io, *link, kill, shutdown)).await;
    }
    Box::pin(c.finish(&mut ws, &written)).await;
}

impl Conn {
    /// Everything queued for the socket right now goes out in one write
    /// (one `writev` of the frames' headers and payloads).
    async fn write_queued<S>(&mut self, ws: &mut WebSocketStream<S>) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.batch = self.conn.take_to_write();
        if self.batch.is_empty() {
            return Step::Continue;
        }
        let mut close = false;
        let mut relay = None;
        let start = self.in_flight.len();
        while let Some(item) = self.batch.pop_front() {
            match item {
                Outbound::Frame(text) => {
                    self.queued_bytes += frame_len(text.len());
                    self.in_flight.push_back((self.queued_bytes, text, 0));
                }
                Outbound::Rest { frame, sent } => {
                    self.queued_bytes += frame_len(frame.len()) - sent as u64;
                    self.in_flight.push_back((self.queued_bytes, frame, sent));
                }
                Outbound::Close => {
                    close = true;
                    // Upstream sends an empty close payload here.
                    self.queued_bytes += frame_len(0);
                    break;
                }
                Outbound::Relay(link) => {
                    relay = Some(link);
                    break;
                }
            }
        }
        let frames = self.in_flight.range(start..).map(|(_, f, sent)| (f, *sent));
        let write = async {
            // tungstenite holds nothing unwritten here: every write through
            // it (pong, ping, close) is awaited to its end or ends the
            // connection.
            write_text_frames(ws.get_mut(), frames).await?;
            if close {
                // Through tungstenite, which then knows the close was sent.
                ws.send(Message::Close(None)).await?;
            }
            Ok(())
        };
        let result = bounded(write, &self.kill).await;
        if matches!(result, Ok(Ok(()))) {
            // Nothing is kept for an idle connection (the next write makes
            // these again).
            self.in_flight = VecDeque::new();
            self.batch = VecDeque::new();
        }
        if let Some(link) = relay {
            // The holder keeps what did not reach the client for its resume.
            return Step::Relay(link);
        }
        match result {
            Ok(Ok(())) if !close => {
                self.conn.written();
                if self.conn.queue_is_empty() {
                    self.hub.refill(&self.conn);
                }
                Step::Continue
            }
            Ok(Ok(())) => Step::Stop,
            Ok(Err(e)) => {
                debug!(error = %e, "write failed");
                Step::Stop
            }
            Err(_) => {
                debug!("write timed out");
                Step::Stop
            }
        }
    }

    /// The hub finished the message in flight: work through what arrived
    /// meanwhile, until the next slow message.
    fn processed(&mut self) {
        self.inflight = None;
        if self.conn.is_relayed() {
            // The rest goes to the session's server.
            return;
        }
        if self.conn.session().is_none() {
            self.hello_deadline = Some(Instant::now() + HELLO_TIMEOUT);
        }
        while self.inflight.is_none() {
            let Some(text) = self.queued.pop_front() else {
                break;
            };
            self.process(&text);
        }
    }

    fn process(&mut self, text: &str) {
        self.inflight = self.hub.process_text(&self.conn, text);
        if self.inflight.is_some() && self.conn.session().is_none() {
            self.hello_deadline = None;
        }
    }

    /// One frame from the client (or the end of the stream).
    async fn read<S>(
        &mut self,
        ws: &mut WebSocketStream<S>,
        msg: Option<Result<Message, WsError>>,
    ) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.last_read = Instant::now();
        match msg {
            Some(Ok(Message::Text(text))) => {
                if self.inflight.is_some() || self.conn.is_relayed() {
                    self.queued.push_back(text);
                } else {
                    self.process(&text);
                }
            }
            Some(Ok(Message::Binary(_))) => self.hub.process_binary(&self.conn),
            Some(Ok(Message::Ping(payload))) => {
                self.queued_bytes += frame_len(payload.len());
                // tungstenite queued the pong; push it out.
                self.conn.claim_writer();
                match Box::pin(tokio::time::timeout(WRITE_WAIT, ws.flush())).await {
                    Ok(Ok(())) => self.conn.written(),
                    _ => return Step::Stop,
                }
            }
            Some(Ok(Message::Pong(payload))) => {
                let sent = std::str::from_utf8(&payload)
                    .ok()
                    .and_then(|t| t.parse::<u128>().ok());
                if let Some(sent) = sent {
                    debug!(
                        rtt_ms = now_nanos().saturating_sub(sent) as f64 / 1e6,
                        "pong"
                    );
                }
            }
            Some(Ok(Message::Frame(_))) => {}
            Some(Ok(Message::Close(_))) | None => {
                self.peer_gone = true;
                return Step::Stop;
            }
            Some(Err(WsError::Capacity(e))) => {
                // Like upstream: 1009 "message too big", then close.
                debug!(error = %e, "message too large");
                self.conn.claim_writer();
                Box::pin(send_close(ws, CloseCode::Size, "")).await;
                return Step::Stop;
            }
            Some(Err(e)) => {
                debug!(error = %e, "read failed");
                self.peer_gone = true;
                return Step::Stop;
            }
        }
        Step::Continue
    }

    /// The ping timer: close a silent client, else ping it.
    async fn ping<S>(&mut self, ws: &mut WebSocketStream<S>) -> Step
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if self.last_read.elapsed() > PONG_WAIT {
            debug!("no data from client, closing");
            return Step::Stop;
        }
        // Like upstream: the send time in nanoseconds, as decimal text.
        let payload = now_nanos().to_string().into_bytes();
        self.queued_bytes += frame_len(payload.len());
        self.conn.claim_writer();
        match tokio::time::timeout(WRITE_WAIT, ws.send(Message::Ping(payload.into()))).await {
            Ok(Ok(())) => {
                self.conn.written();
                Step::Continue
            }
            _ => Step::Stop,
        }
    }

    /// The connection ends: frames the socket did not take in full, then
    /// what is still queued, go back to the session in order; then close.
    async fn finish<S>(self, ws: &mut WebSocketStream<S>, written: &AtomicU64)
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let done = written.load(Ordering::Relaxed);
        // After a failed write, tungstenite still buffers parts of those
        // frames: closing politely would flush them and duplicate what we
        // hand back.
        let write_failed = !self.in_flight.is_empty();
        let mut unsent: Vec<Frame> = self
            .in_flight
            .into_iter()
            .filter(|(end, _, _)| *end > done)
            .map(|(_, f, _)| f)
            .collect();
        for item in self.batch.into_iter().chain(self.conn.close_queue()) {
            if let Outbound::Frame(f) | Outbound::Rest { frame: f, .. } = item {
                unsent.push(f);
            }
        }
        drop(self.inflight);
        self.hub.conn_closed(&self.conn, unsent);
        if !write_failed {
            close_gracefully(&self.hub, ws, self.peer_gone).await;
        }
    }
}

/// Runs a write, bounded by `WRITE_WAIT` and interrupted by a kill (e.g. an
/// overflow) if it is stuck. Most writes complete at once: only those get
/// no timer, which would cost a timer-wheel entry per flush.
async fn bounded<F>(write: F, kill: &CancellationToken) -> Result<Result<(), WsError>, Elapsed>
where
    F: Future<Output = Result<(), WsError>>,
{
    let mut write = pin!(write);
    if let Poll::Ready(r) = poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await {
        return Ok(r);
    }
    Box::pin(async move {
        tokio::select! {
            r = tokio::time::timeout(WRITE_WAIT, write) => r,
            _ = kill.cancelled() => Ok(Err(WsError::ConnectionClosed)),
        }
    })
    .await
}

/// Send the close frame (if not sent yet) and, when the server started the
/// close, wait for the client's close frame before the socket is dropped,
/// so that the last frames are not lost to a reset (`runtime::closing`).
async fn close_gracefully<W>(hub: &Hub, ws: &mut W, peer_gone: bool)
where
    W: futures_util::Sink<Message, Error = WsError>
        + futures_util::Stream<Item = Result<Message, WsError>>
        + Unpin,
{
    let closed = tokio::time::timeout(Duration::from_secs(1), ws.close()).await;
    if !peer_gone && matches!(closed, Ok(Ok(()))) {
        runtime::closing::linger(ws, &hub.metrics.lingering).await;
    }
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

/// Largest batch gathered in the worker's scratch buffer; the buffer is
/// let go after a larger one.
const SCRATCH_KEEP: usize = 256 * 1024;

thread_local! {
    /// Where a connection's frames are gathered for one `send`: shared by
    /// all connections of a worker thread, so an idle one holds no buffer.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Writes text frames straight to the socket, past tungstenite's write
/// buffer: that buffer kept the capacity of the largest burst a connection
/// ever got (about 850 bytes on every idle session after its hello). The
/// frames are gathered in the worker's scratch buffer and handed to the
/// socket in one write (a `send`; a `writev` of headers and payloads costs
/// more in the kernel, measured); only what the socket does not take at once
/// is copied for the connection to write when the socket has room.
async fn write_text_frames<'a, W>(
    io: &mut W,
    frames: impl Iterator<Item = (&'a Frame, usize)> + Clone,
) -> Result<(), WsError>
where
    W: AsyncWrite + Unpin,
{
    let rest = poll_fn(|cx| {
        Poll::Ready(SCRATCH.with_borrow_mut(|buf| {
            buf.clear();
            for (f, sent) in frames.clone() {
                let start = buf.len();
                push_text_header(buf, f.len());
                buf.extend_from_slice(f.as_bytes());
                // The hub wrote the first bytes already.
                buf.drain(start..start + sent);
            }
            let rest = match Pin::new(&mut *io).poll_write(cx, buf) {
                Poll::Ready(Ok(n)) if n == buf.len() => Ok(None),
                Poll::Ready(Ok(0)) if !buf.is_empty() => {
                    Err(std::io::Error::from(std::io::ErrorKind::WriteZero))
                }
                Poll::Ready(Ok(n)) => Ok(Some(buf[n..].to_vec())),
                Poll::Ready(Err(e)) => Err(e),
                Poll::Pending => Ok(Some(buf.clone())),
            };
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
            rest
        }))
    })
    .await?;
    if let Some(rest) = rest {
        io.write_all(&rest).await?;
    }
    Ok(io.flush().await?)
}

/// Ends the hub's direct writes to a connection's socket when its task ends.
struct EndDirect(Arc<hub::core::conn::Conn>);

impl Drop for EndDirect {
    fn drop(&mut self) {
        self.0.end_direct();
    }
}

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    /// tungstenite's encoding of a final, unmasked text frame.
    fn reference(payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        tokio_tungstenite::tungstenite::protocol::frame::Frame::message(
            payload.to_vec(),
            OpCode::Data(Data::Text),
            true,
        )
        .format(&mut out)
        .expect("format");
        out
    }

    #[tokio::test]
    async fn text_frames_are_encoded_like_tungstenite_whole_or_in_pieces() {
        let frames: Vec<Frame> = [0usize, 1, 125, 126, 127, 65535, 65536, 70000]
            .iter()
            .map(|n| Frame::from("x".repeat(*n)))
            .collect();
        let expected: Vec<u8> = frames
            .iter()
            .flat_map(|f| reference(f.as_bytes()))
            .collect();
        // All at once ...
        let mut all: Vec<u8> = Vec::new();
        write_text_frames(&mut all, frames.iter().map(|f| (f, 0)))
            .await
            .expect("write");
        assert_eq!(all, expected);
        // ... and through a socket that takes a few bytes at a time.
        let (mut a, mut b) = tokio::io::duplex(7);
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .expect("read");
            got
        });
        write_text_frames(&mut a, frames.iter().map(|f| (f, 0)))
            .await
            .expect("write");
        drop(a);
        assert_eq!(reader.await.expect("reader"), expected);
        let total: u64 = frames.iter().map(|f| frame_len(f.len())).sum();
        assert_eq!(total as usize, expected.len());
    }

    #[tokio::test]
    async fn a_frame_the_hub_began_is_completed_from_where_it_stopped() {
        let first = Frame::from("x".repeat(300));
        let second = Frame::from("second");
        let whole = reference(first.as_bytes());
        let mut out: Vec<u8> = Vec::new();
        write_text_frames(&mut out, [(&first, 7), (&second, 0)].into_iter())
            .await
            .expect("write");
        let mut expected = whole[7..].to_vec();
        expected.extend(reference(second.as_bytes()));
        assert_eq!(out, expected);
    }
}
