//! The hub's view of one client connection: a bounded outbound queue owned by
//! the connection task, and a kill switch.
//!
//! The hub never writes to sockets. It pushes pre-serialised frames into the
//! queue with `try_send`; a client that lets the queue fill up is cut off (with
//! a reason in the log and a metric) instead of growing memory, and what it
//! had not received yet goes back to its session for delivery after resume.

use parking_lot::Mutex;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use crate::bus::message::{Frame, OutMsg};
use crate::core::session::ClientSession;

/// Frames a connection task is asked to write.
#[derive(Debug)]
pub enum Outbound {
    /// One JSON text frame.
    Frame(Frame),
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
}

#[derive(Default)]
struct Queue {
    items: VecDeque<Outbound>,
    closed: bool,
}

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
        std::mem::take(&mut q.items)
    }

    fn push(&self, item: Outbound, limit: usize) -> Result<(), Outbound> {
        let mut q = self.queue.lock();
        if q.closed || q.items.len() >= limit {
            return Err(item);
        }
        q.items.push_back(item);
        drop(q);
        self.notify.notify_one();
        Ok(())
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
