//! The hub's view of one client connection: a bounded outbound queue owned by
//! the connection task, and a kill switch.
//!
//! The hub pushes pre-serialised frames into the queue; a client that lets
//! the queue fill up is cut off (with a reason in the log and a metric)
//! instead of growing memory, and what it had not received yet goes back to
//! its session for delivery after resume.
//!
//! One shortcut: when a plain TCP connection is idle (nothing queued, its
//! task not writing) a frame is written to its socket at once, without
//! waking the connection's task (see [`Conn::set_direct`]).

use parking_lot::Mutex;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::bus::message::{Frame, OutMsg};
use crate::core::session::ClientSession;

/// Frames a connection task is asked to write.
#[derive(Debug)]
pub enum Outbound {
    /// One JSON text frame.
    Frame(Frame),
    /// A frame of which the first `sent` bytes (header included) already
    /// went to the socket: the rest must follow before anything else.
    Rest { frame: Frame, sent: usize },
    /// Write a normal close frame and end the connection.
    Close,
    /// Clustering: the client's session is on another server; from now on
    /// pass frames through this link (see the cluster layer's `relay` module).
    Relay(Box<crate::bus::relay_link::RelayLink>),
}

/// Capacity of a connection's outbound queue, in frames.
pub const OUTBOUND_QUEUE: usize = 512;

/// One connected WebSocket client.
///
/// The outbound queue is a plain deque behind a mutex plus a `Notify`
/// rather than a channel: an idle connection then holds no queue memory at
/// all (a channel allocates its first block up front), which matters when a
/// server holds tens of thousands of idle clients.
pub struct Conn {
    pub id: u64,
    pub remote_addr: String,
    pub user_agent: String,
    queue: Mutex<Queue>,
    notify: Notify,
    kill: CancellationToken,
    /// Set before `kill` is cancelled (only this type cancels it): checked
    /// for every frame queued, without the token's mutex.
    killed: AtomicBool,
    overflowed: AtomicBool,
    /// Its frames are relayed to another server from now on.
    relayed: AtomicBool,
    session: Mutex<Option<Arc<ClientSession>>>,
    /// Counts of direct writes, shared by the hub's connections.
    direct_counts: Arc<DirectCounts>,
}

/// Frames the hub wrote to sockets itself: the socket took all of the
/// frame, or part of it (the connection task wrote the rest).
#[derive(Default)]
pub struct DirectCounts {
    pub whole: Arc<AtomicU64>,
    pub partial: Arc<AtomicU64>,
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    closed: bool,
    /// The connection task owns the socket's write side right now: it took
    /// frames and has not written them all, or writes a control frame.
    writing: bool,
    /// The client's socket, while frames may be written to it directly.
    direct: Option<Arc<TcpStream>>,
    /// When something was last written to the socket ([`micros`]).
    last_write: u64,
}

/// A connection written to less than this long ago (microseconds) gets
/// its frames through the queue even when idle: under a flood, frames
/// then gather while its task waits for its turn and go out several per
/// `send`; at the rates of real calls (a few to tens of frames per second
/// per client) nearly every frame is written directly.
const DIRECT_GAP_US: u64 = 1_000;

/// Microseconds since the first call, plus [`DIRECT_GAP_US`] (so that a
/// new connection, last written at 0, counts as idle): a cheap clock.
fn micros() -> u64 {
    #[cfg(test)]
    if let Some(now) = tests::NOW.get() {
        return now;
    }
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let since = START.get_or_init(std::time::Instant::now).elapsed();
    since.as_micros() as u64 + DIRECT_GAP_US
}

/// What a direct write did.
enum Direct {
    /// The whole frame is in the socket.
    Done,
    /// Part of it: the rest is the connection task's.
    Partial(usize),
    /// Nothing (the socket is full or failed): queue it as usual.
    Nothing,
}

thread_local! {
    /// Where a direct write encodes its frame: one per worker thread.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Frames this big are not worth a second copy: they go through the queue.
const DIRECT_MAX: usize = 16 * 1024;

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("remote_addr", &self.remote_addr)
            .finish()
    }
}

impl Conn {
    pub fn new(
        id: u64,
        remote_addr: String,
        user_agent: String,
        kill: CancellationToken,
        direct_counts: Arc<DirectCounts>,
    ) -> Arc<Conn> {
        Arc::new(Conn {
            id,
            remote_addr,
            user_agent,
            queue: Mutex::new(Queue::default()),
            notify: Notify::new(),
            kill,
            killed: AtomicBool::new(false),
            overflowed: AtomicBool::new(false),
            relayed: AtomicBool::new(false),
            session: Mutex::new(None),
            direct_counts,
        })
    }

    /// Wait until something was queued (or the queue was closed).
    pub async fn queued(&self) {
        self.notify.notified().await
    }

    /// Take everything queued, in order. The queue's memory goes with it,
    /// so an idle connection holds none.
    pub fn take_queued(&self) -> VecDeque<Outbound> {
        std::mem::take(&mut self.queue.lock().items)
    }

    /// Nothing is waiting to be written.
    pub fn queue_is_empty(&self) -> bool {
        self.queue.lock().items.is_empty()
    }

    /// Stop accepting frames (the connection task is ending) and return
    /// what was still queued.
    pub fn close_queue(&self) -> VecDeque<Outbound> {
        let mut q = self.queue.lock();
        q.closed = true;
        q.direct = None;
        std::mem::take(&mut q.items)
    }

    /// Take everything queued to write it: the task owns the socket's
    /// write side until [`Conn::written`].
    pub fn take_to_write(&self) -> VecDeque<Outbound> {
        let mut q = self.queue.lock();
        if !q.items.is_empty() {
            q.writing = true;
            if q.direct.is_some() {
                q.last_write = micros();
            }
        }
        std::mem::take(&mut q.items)
    }

    /// The connection task is about to write something of its own (a
    /// ping, a pong): no direct writes until [`Conn::written`].
    pub fn claim_writer(&self) {
        self.queue.lock().writing = true;
    }

    /// The connection task wrote everything it had: direct writes may go
    /// ahead again once the queue is empty (what is queued now is the
    /// task's next write).
    pub fn written(&self) {
        let mut q = self.queue.lock();
        if q.items.is_empty() {
            q.writing = false;
        }
    }

    /// Let the hub write frames straight to `socket` while the connection
    /// is idle. Only for plain TCP: the task reads and writes the same
    /// socket through its own handle, and both sides keep to the queue's
    /// lock for who writes when.
    pub fn set_direct(&self, socket: Arc<TcpStream>) {
        let mut q = self.queue.lock();
        if !q.closed {
            q.direct = Some(socket);
        }
    }

    /// No more direct writes: the connection task ended, and the socket
    /// is released with its handle.
    pub fn end_direct(&self) {
        self.queue.lock().direct = None;
    }

    fn push(&self, item: Outbound, limit: usize) -> Result<(), Outbound> {
        let mut q = self.queue.lock();
        if q.closed || q.items.len() >= limit {
            return Err(item);
        }
        let item = match item {
            Outbound::Frame(frame) if q.items.is_empty() && !q.writing => {
                match self.write_direct(&mut q, frame) {
                    Some(item) => item,
                    None => return Ok(()),
                }
            }
            item => item,
        };
        q.items.push_back(item);
        drop(q);
        self.notify.notify_one();
        Ok(())
    }

    /// Writes `frame` to the idle connection's socket, if it has one for
    /// direct writes and was not written to very recently. Returns what is
    /// left for the queue (the queue is empty: that goes first): the rest of
    /// a frame the socket took only in part, or the frame when it was not
    /// written at all.
    fn write_direct(&self, q: &mut Queue, frame: Frame) -> Option<Outbound> {
        let Some(socket) = &q.direct else {
            return Some(Outbound::Frame(frame));
        };
        let now = micros();
        if now.saturating_sub(q.last_write) < DIRECT_GAP_US {
            return Some(Outbound::Frame(frame));
        }
        let left = match send_now(socket, &frame) {
            Direct::Done => {
                self.direct_counts.whole.fetch_add(1, Ordering::Relaxed);
                None
            }
            Direct::Partial(sent) => {
                self.direct_counts.partial.fetch_add(1, Ordering::Relaxed);
                Some(Outbound::Rest { frame, sent })
            }
            Direct::Nothing => return Some(Outbound::Frame(frame)),
        };
        q.last_write = now;
        left
    }

    pub fn is_connected(&self) -> bool {
        !self.killed.load(Ordering::Acquire)
    }

    fn cancel(&self) {
        self.killed.store(true, Ordering::Release);
        self.kill.cancel();
    }

    /// True when the connection was cut because its queue overflowed.
    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Queue a frame; false if the connection is gone or could not keep up.
    pub fn send(&self, frame: Frame) -> bool {
        if !self.is_connected() {
            return false;
        }
        match self.push(Outbound::Frame(frame), OUTBOUND_QUEUE) {
            Ok(()) => true,
            Err(_) => {
                if self.is_connected() && !self.queue.lock().closed {
                    self.overflow();
                }
                false
            }
        }
    }

    /// Queue a frame if there is room; hands it back when the queue is full
    /// (the caller keeps it as backlog) or the connection is gone.
    pub fn offer(&self, frame: Frame) -> Result<(), Frame> {
        if !self.is_connected() {
            return Err(frame);
        }
        match self.push(Outbound::Frame(frame), OUTBOUND_QUEUE) {
            Ok(()) => Ok(()),
            Err(Outbound::Frame(f)) => Err(f),
            Err(_) => Err(Frame::from_static("")),
        }
    }

    /// Cut the connection because the client does not keep up.
    pub fn overflow(&self) {
        if !self.overflowed.swap(true, Ordering::Relaxed) {
            tracing::warn!(conn = self.id, peer = %self.remote_addr, "client does not read fast enough, disconnecting");
        }
        self.cancel();
    }

    /// Hand the connection task a relay to another server (after what is
    /// queued); false when the connection is gone.
    pub(crate) fn relay(&self, link: Box<crate::bus::relay_link::RelayLink>) -> bool {
        self.relayed.store(true, Ordering::Relaxed);
        // The relay's frames go through the task only.
        self.queue.lock().direct = None;
        self.push(Outbound::Relay(link), OUTBOUND_QUEUE + 1).is_ok()
    }

    /// The connection's frames go to another server now: the connection
    /// task must not hand further client frames to this hub.
    pub fn is_relayed(&self) -> bool {
        self.relayed.load(Ordering::Relaxed)
    }

    /// Queue a frame, then a close.
    pub fn send_and_close(&self, frame: Frame) {
        if self.send(frame) {
            self.close();
        }
    }

    /// Queue a close after what is already queued.
    pub fn close(&self) {
        // The close may exceed the frame limit by one: it must not be lost.
        if self.push(Outbound::Close, OUTBOUND_QUEUE + 1).is_err() {
            self.cancel();
        }
    }

    /// End the connection at once.
    pub fn kill(&self) {
        self.cancel();
    }

    pub fn session(&self) -> Option<Arc<ClientSession>> {
        self.session.lock().clone()
    }

    pub(crate) fn set_session(&self, session: Option<Arc<ClientSession>>) {
        *self.session.lock() = session;
    }
}

/// One non-blocking `send` of the frame, header and payload together.
fn send_now(socket: &TcpStream, frame: &Frame) -> Direct {
    if frame.len() > DIRECT_MAX {
        return Direct::Nothing;
    }
    SCRATCH.with_borrow_mut(|buf| {
        buf.clear();
        push_text_header(buf, frame.len());
        buf.extend_from_slice(frame.as_bytes());
        match socket.try_write(buf) {
            Ok(n) if n == buf.len() => Direct::Done,
            Ok(0) | Err(_) => Direct::Nothing,
            Ok(n) => Direct::Partial(n),
        }
    })
}

/// Appends the header of an unmasked, final text frame (RFC 6455 §5.2).
pub fn push_text_header(out: &mut Vec<u8>, len: usize) {
    out.push(0x81);
    if len < 126 {
        out.push(len as u8);
    } else if len <= 0xffff {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Bytes of an unmasked server frame with this payload length.
pub fn frame_len(payload: usize) -> u64 {
    let header = if payload < 126 {
        2
    } else if payload <= 0xffff {
        4
    } else {
        10
    };
    (header + payload) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn encoded(text: &str) -> Vec<u8> {
        let mut out = Vec::new();
        push_text_header(&mut out, text.len());
        out.extend_from_slice(text.as_bytes());
        out
    }

    async fn pair() -> (Arc<Conn>, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let conn = Conn::new(
            1,
            "test".into(),
            String::new(),
            CancellationToken::new(),
            Arc::default(),
        );
        conn.set_direct(Arc::new(server));
        (conn, client)
    }

    async fn read_exactly(client: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut got = vec![0u8; n];
        tokio::time::timeout(
            std::time::Duration::from_secs(5),
            client.read_exact(&mut got),
        )
        .await
        .expect("bytes in time")
        .expect("read");
        got
    }

    thread_local! {
        /// The connection's clock in these tests ([`micros`]).
        pub(super) static NOW: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
    }

    /// Long enough since the last write for the next frame to go direct.
    fn pause() {
        NOW.set(Some(NOW.get().unwrap_or(DIRECT_GAP_US) + DIRECT_GAP_US));
    }

    fn frames(items: VecDeque<Outbound>) -> Vec<String> {
        items
            .into_iter()
            .map(|i| match i {
                Outbound::Frame(f) => f.to_string(),
                Outbound::Rest { frame, sent } => format!("rest {sent} of {frame}"),
                Outbound::Close => "close".into(),
                Outbound::Relay(_) => "relay".into(),
            })
            .collect()
    }

    #[tokio::test(flavor = "current_thread")]
    async fn idle_connection_gets_frames_on_its_socket_busy_one_in_its_queue() {
        let (conn, mut client) = pair().await;
        // Idle: straight to the socket, nothing queued.
        pause();
        assert!(conn.send(Frame::from("one")));
        assert_eq!(read_exactly(&mut client, 5).await, encoded("one"));
        assert!(conn.take_to_write().is_empty());
        // Written to just now: the next frame waits for the task (which
        // then writes whatever gathered meanwhile in one go).
        assert!(conn.send(Frame::from("1b")));
        assert_eq!(frames(conn.take_to_write()), ["1b"]);
        conn.written();
        pause();

        // The task writes something of its own: frames wait in the queue.
        conn.claim_writer();
        assert!(conn.send(Frame::from("two")));
        conn.written();
        // The queue was not empty, so the task still owns the writes ...
        assert!(conn.send(Frame::from("three")));
        assert_eq!(frames(conn.take_to_write()), ["two", "three"]);
        // ... until it says it wrote everything.
        assert!(conn.send(Frame::from("four")));
        assert_eq!(frames(conn.take_to_write()), ["four"]);
        conn.written();
        pause();
        assert!(conn.send(Frame::from("five")));
        assert_eq!(read_exactly(&mut client, 6).await, encoded("five"));

        // Once the task ends, nothing more is written by the hub.
        let _ = conn.close_queue();
        assert!(!conn.send(Frame::from("six")));
        let mut rest = Vec::new();
        drop(conn);
        let n = tokio::time::timeout(
            std::time::Duration::from_millis(200),
            client.read_to_end(&mut rest),
        )
        .await;
        // The socket was released with the connection: end of stream.
        assert!(matches!(n, Ok(Ok(0))), "{n:?} {rest:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_socket_leaves_the_rest_of_a_frame_first_in_the_queue() {
        let (conn, mut client) = pair().await;
        let text = "x".repeat(DIRECT_MAX);
        let mut sent_direct = 0usize;
        // Nobody reads: the socket's buffers fill up.
        let mut queued = VecDeque::new();
        for _ in 0..10_000 {
            pause();
            assert!(conn.send(Frame::from(text.clone())));
            let q = conn.take_to_write();
            if !q.is_empty() {
                queued = q;
                break;
            }
            sent_direct += 1;
        }
        assert!(sent_direct > 0);
        let first = queued.pop_front().expect("queued");
        let skip = match first {
            Outbound::Rest { ref frame, sent } => {
                assert_eq!(frame.as_str(), text);
                sent
            }
            Outbound::Frame(ref frame) => {
                assert_eq!(frame.as_str(), text);
                0
            }
            _ => panic!("unexpected item"),
        };
        // While the task holds that frame, the hub does not write.
        pause();
        assert!(conn.send(Frame::from("later")));
        assert_eq!(frames(conn.take_to_write()), ["later"]);
        // The socket carries whole frames and then the first `skip`
        // bytes of the next one: exactly what the task must complete.
        let one = encoded(&text);
        let got = read_exactly(&mut client, one.len() * sent_direct + skip).await;
        for chunk in got.chunks(one.len()) {
            assert_eq!(chunk, &one[..chunk.len()]);
        }
    }
}
