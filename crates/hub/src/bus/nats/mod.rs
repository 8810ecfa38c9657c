//! The cluster bus over a real NATS server (`[nats] url`), so that several
//! signaling servers deliver to each other's sessions and rooms.
//!
//! # Design
//!
//! - **One task owns the NATS client** ([`NatsBus::connect`] spawns it). The
//!   hub never awaits NATS: [`Bus::publish`], [`Bus::subscribe`] and
//!   [`Bus::unsubscribe`] are synchronous and only queue a [`Command`] for
//!   that task. Publishes and subscriptions share **one ordered queue**, so a
//!   `SUB` reaches the NATS server before any `PUB` the hub issued after it:
//!   a session that subscribes the room subject and then publishes its join
//!   event receives that event, exactly as with the in-process bus.
//! - **Local first, NATS for the others.** A publish is handed to this
//!   node's own handlers of the subject at once (synchronously, exactly as
//!   the in-process bus does) and then queued for NATS; the connection uses
//!   `no_echo`, so the NATS server never sends our own messages back and
//!   nothing is delivered twice. Traffic between sessions of one node thus
//!   never depends on NATS: it costs no round trip, and a NATS outage (or a
//!   message lost in a broken socket) cannot lose or delay it.
//! - **One wildcard subscription for all sessions and one for all users**
//!   (`session.*`, `user.*`, see [`WILDCARDS`]): a session's and a user's
//!   subjects never become NATS subscriptions of their own, so the NATS
//!   client holds no channel per session and `nats-server` no interest per
//!   session; a node takes every session and user message and keeps those
//!   its subject table has handlers for (looked up before decoding).
//!   Messages to sessions elsewhere cost a node a receive and a hash lookup:
//!   nothing with two nodes (`no_echo`: the sender never gets its own),
//!   one per other node and message in larger clusters. Other subjects
//!   (rooms, relays) have **one NATS subscription per subject**, however
//!   many local handlers it has (a room subject is shared by all members on
//!   this node). **One dispatcher** serves them all: the task that owns the
//!   client decodes each envelope once and calls the subject's current
//!   handlers.
//! - **Order per sender, across subjects.** NATS delivers one publisher's
//!   messages to one subscriber in publish order, whatever the subjects, but
//!   the client hands each subscription its own channel, so a room event and
//!   a direct message to a member could swap places. Every envelope we send
//!   carries our connection's id and a publish counter (`x-from`, `x-seq`);
//!   the dispatcher takes everything that has arrived (in all channels) and
//!   puts each sender's messages back in counter order before handing them
//!   on. Nothing is waited for: the client fills the channels in socket
//!   order, so when a message is visible, every earlier one of its sender
//!   is too. Upstream keeps order per session by funnelling a session's
//!   subscriptions into one channel; this keeps it per sender for all.
//! - **Batches between our servers.** What the NATS task finds queued for
//!   session and user subjects at one moment (a run of them, up to 256 KiB)
//!   goes out as one NATS message on `cluster.batch` (`batch.rs`): under load
//!   `nats-server` and both clients then handle one message instead of
//!   dozens. A publish alone in the queue goes out alone; nothing waits. The
//!   receivers are the same as without batches (every node has the session
//!   and user wildcards, and now the batch subject too); room and relay
//!   subjects are never batched, so only nodes with members get those. A
//!   node of an older version (or upstream's) does not read batches, so
//!   they are sent only while every node heard within three presence
//!   intervals marks its sender id as reading them, and not before this
//!   node has heard every other one (`peers.rs`).
//! - **"Full"**: publishes waiting for the NATS task are bounded by
//!   [`MAX_QUEUED_PUBLISHES`]. In normal operation the queue is empty (the
//!   task hands messages to the client as fast as the hub makes them); it
//!   grows only while NATS is unreachable or slower than the hub. At the
//!   bound a publish is refused with [`BusError::Overloaded`], counted in
//!   `signaling_nats_publish_rejected_total` and logged: never dropped
//!   silently (this node's own handlers already have it; other nodes miss
//!   it). Subscribe/unsubscribe commands are never refused (they are
//!   bounded by the number of sessions and must not be lost).
//! - **Connection**: the initial connect is retried in the background
//!   (upstream blocks start-up instead; here the hub starts at once and its
//!   messages wait in the queue), reconnects go on forever with a jittered
//!   backoff from 1 s to 8 s, and the client restores every subscription
//!   after a reconnect. `signaling_nats_connected` (1/0) and
//!   `signaling_nats_reconnects_total` show the state.
//!
//! # What a NATS outage loses
//!
//! Nothing between sessions of one node (see above). Core NATS keeps nothing
//! for absent subscribers. This node's own publishes wait in the queue while
//! NATS is away (up to the bound) and go out after the reconnect, and for
//! [`RESUBSCRIBE_GRACE`] after any reconnect they are held back, so that the
//! other servers have re-subscribed (they reconnect on their own retries). Lost
//! across nodes are: messages that were in the socket buffers when the
//! connection broke, and what reaches a server that stays away longer than
//! the grace.

use async_nats::{Client, ConnectOptions, Event, ServerAddr, Subscriber};
use bytes::Bytes;
use futures_util::stream::SelectAll;
use futures_util::{FutureExt, StreamExt};
use runtime::metrics::{Counter, Gauge, Registry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

mod batch;
mod config;
mod fast;
mod order;
mod peers;

pub use batch::{split_batch, BatchError, BATCH_SUBJECT};
use batch::{BatchWriter, MAX_BATCH_BYTES};
#[cfg(test)]
use config::percent_decode;
pub use config::{is_loopback_url, validate_urls, NatsConfigError};
use config::{parse_urls, redact, retry_delay};
use order::dispatch;
#[cfg(test)]
use order::in_sender_order;
use peers::Peers;
pub use peers::READS_BATCHES;

use crate::bus::{
    check_subject, encode_envelope_from, Bus, BusError, BusHandler, BusMessage, SubjectTable,
    Subscription,
};

/// Publishes that may wait for the NATS task (about 20 MB of typical
/// envelopes). Large enough to ride out an outage of several seconds on a
/// busy server; a bound so an outage of minutes cannot exhaust memory.
pub const MAX_QUEUED_PUBLISHES: usize = 65_536;

/// After a reconnect, how long held publishes wait for the other servers to
/// reconnect and re-subscribe (their retries are 1–2 s apart early on).
const RESUBSCRIBE_GRACE: Duration = Duration::from_secs(2);

/// Subject of the requests that wait for the broker (nobody subscribes it).
const SYNC_SUBJECT: &str = "cluster.sync";

/// Subject prefixes whose one-token subjects (`session.<public id>`,
/// `user.<base64>`) are served by one wildcard subscription per node, made
/// when the client starts, instead of a NATS subscription per subject.
pub const WILDCARDS: [(&str, &str); 2] = [("session.", "session.*"), ("user.", "user.*")];

/// The wildcard subscription that covers `subject`, if any.
pub fn wildcard_for(subject: &str) -> Option<&'static str> {
    WILDCARDS.iter().find_map(|(prefix, wildcard)| {
        let rest = subject.strip_prefix(prefix)?;
        (!rest.is_empty() && !rest.contains('.')).then_some(*wildcard)
    })
}

/// First and longest delay between connection attempts (upstream: 1 s → 8 s).
const INITIAL_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(8);

/// Commands for the task that owns the client, in the order the hub issued them.
enum Command {
    Publish(Arc<str>, Bytes),
    Subscribe(Arc<str>),
    Unsubscribe(Arc<str>),
    /// Answer once the broker has processed every command before this one
    /// (with the number of `SUB`s queued before it).
    Sync(u64, oneshot::Sender<()>),
}

struct NatsMetrics {
    connected: Arc<Gauge>,
    reconnects: Arc<Counter>,
    queued: Arc<Gauge>,
    rejected: Arc<Counter>,
    slow_consumers: Arc<Counter>,
    subscriptions: Arc<Gauge>,
    batches: Arc<Counter>,
    batched: Arc<Counter>,
}

impl NatsMetrics {
    fn new(registry: &Registry) -> NatsMetrics {
        NatsMetrics {
            connected: registry.gauge(
                "signaling_nats_connected",
                "Whether the connection to NATS is up (1) or not (0)",
            ),
            reconnects: registry.counter(
                "signaling_nats_reconnects_total",
                "The number of times the connection to NATS was re-established",
            ),
            queued: registry.gauge(
                "signaling_nats_publish_queue",
                "Messages waiting to be handed to the NATS client",
            ),
            rejected: registry.counter(
                "signaling_nats_publish_rejected_total",
                "Messages refused because the NATS publish queue was full",
            ),
            slow_consumers: registry.counter(
                "signaling_nats_slow_consumers_total",
                "Messages the NATS client dropped because a subscription fell behind",
            ),
            subscriptions: registry.gauge(
                "signaling_nats_subscriptions",
                "NATS subscriptions this server holds (wildcards for sessions and users, the batch subject, one per room or relay subject)",
            ),
            batches: registry.counter(
                "signaling_nats_batches_total",
                "NATS messages sent that carried several session or user messages at once",
            ),
            batched: registry.counter(
                "signaling_nats_batched_messages_total",
                "Session and user messages sent to NATS inside batches",
            ),
        }
    }
}

/// The NATS implementation of [`Bus`]. See the module documentation.
pub struct NatsBus {
    me: Weak<NatsBus>,
    /// Local handlers per subject. The table's lock is also held while the
    /// matching (un)subscribe command is queued (in its `on_first`/`on_last`
    /// hooks), so commands for a subject strictly alternate and match the
    /// table. Never held across `.await`.
    table: SubjectTable,
    /// Unbounded channel, bounded by hand for publishes (`metrics.queued`)
    /// because (un)subscribes must never be refused.
    commands: mpsc::UnboundedSender<Command>,
    metrics: Arc<NatsMetrics>,
    connected: watch::Receiver<bool>,
    /// The client, once the task has created it: requests between servers
    /// (the cluster layer) use it directly, outside the ordered queue.
    client: std::sync::OnceLock<Client>,
    /// `x-from` of our envelopes (random per process) and the `x-seq`
    /// counter.
    origin: String,
    seq: std::sync::atomic::AtomicU64,
    /// `SUB`s queued so far (the wildcards count as one) and how many of
    /// them the broker is known to have processed: a new session waits for
    /// the broker only when a subscription is still on its way.
    subs_queued: std::sync::atomic::AtomicU64,
    subs_active: Arc<std::sync::atomic::AtomicU64>,
    /// The senders heard, and whether all of them read batches.
    peers: Arc<Peers>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("connected", &*self.connected.borrow())
            .finish()
    }
}

impl NatsBus {
    /// Validate `urls` and start the task that connects (retrying forever)
    /// and owns the client. Returns at once; must run inside a Tokio runtime.
    /// Metrics are registered on `registry`.
    pub fn connect(urls: &str, registry: &Registry) -> Result<Arc<NatsBus>, NatsConfigError> {
        let (addrs, options) = parse_urls(urls)?;
        let metrics = Arc::new(NatsMetrics::new(registry));
        let (connected_tx, connected_rx) = watch::channel(false);
        let (tx, rx) = mpsc::unbounded_channel();
        let ever_connected = Arc::new(AtomicBool::new(false));
        // When the connection last came back after a loss (not the first).
        let reconnected: Arc<parking_lot::Mutex<Option<std::time::Instant>>> = Arc::default();
        let reconnected_at = reconnected.clone();
        let peers = Arc::new(Peers::new());
        let peers_cb = peers.clone();
        let m = metrics.clone();
        let shown = redact(urls);
        let options = options
            .name("nextcloud-spreed-signaling")
            // Local handlers get our messages directly (see the module docs).
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None)
            .reconnect_delay_callback(retry_delay)
            .event_callback(move |event| {
                let m = m.clone();
                let connected_tx = connected_tx.clone();
                let ever = ever_connected.clone();
                let shown = shown.clone();
                let reconnected_at = reconnected_at.clone();
                let peers = peers_cb.clone();
                async move {
                    match event {
                        Event::Connected => {
                            m.connected.set(1);
                            let again = ever.swap(true, Ordering::Relaxed);
                            if again {
                                // Before the publishes are let go (below).
                                *reconnected_at.lock() = Some(std::time::Instant::now());
                            }
                            peers.connected(true, std::time::Instant::now());
                            connected_tx.send_replace(true);
                            if again {
                                m.reconnects.inc();
                                info!(url = %shown, "NATS connection re-established");
                            } else {
                                info!(url = %shown, "NATS connection established");
                            }
                        }
                        Event::Disconnected => {
                            m.connected.set(0);
                            peers.connected(false, std::time::Instant::now());
                            connected_tx.send_replace(false);
                            warn!(url = %shown, "NATS connection lost, reconnecting");
                        }
                        Event::SlowConsumer(sid) => {
                            m.slow_consumers.inc();
                            error!(
                                sid,
                                "NATS subscription fell behind, the client dropped a message"
                            );
                        }
                        Event::ClientError(e) => {
                            warn!(url = %shown, error = %e, "could not connect to NATS, will retry")
                        }
                        other => info!(event = %other, "NATS"),
                    }
                }
            });
        let bus = Arc::new_cyclic(|me| NatsBus {
            me: me.clone(),
            table: SubjectTable::default(),
            commands: tx,
            metrics: metrics.clone(),
            connected: connected_rx,
            client: std::sync::OnceLock::new(),
            // The mark tells the other nodes that this one reads batches.
            origin: hex::encode(rand::random::<[u8; 8]>()) + READS_BATCHES,
            seq: std::sync::atomic::AtomicU64::new(0),
            subs_queued: std::sync::atomic::AtomicU64::new(1),
            subs_active: Arc::default(),
            peers,
        });
        tokio::spawn(run(
            bus.me.clone(),
            addrs,
            options,
            rx,
            metrics,
            bus.connected.clone(),
            reconnected,
        ));
        Ok(bus)
    }

    /// Whether the connection to NATS is up right now.
    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Wait until the connection is up (or down, with `up = false`).
    pub async fn wait_connected(&self, up: bool) {
        let mut rx = self.connected.clone();
        // Err only when the sender is gone, i.e. the client task ended.
        let _ = rx.wait_for(|c| *c == up).await;
    }

    /// The NATS client, once started (at once after [`NatsBus::connect`],
    /// connected or not).
    pub fn client(&self) -> Option<Client> {
        self.client.get().cloned()
    }

    /// How often every node reports at the least (`[nats]
    /// presenceinterval`, default 5 s): a node silent for three of them is
    /// gone, one connected for one has heard every live node (see
    /// [`READS_BATCHES`]).
    pub fn set_presence_interval(&self, interval: Duration) {
        self.peers.set_interval(interval);
    }

    /// Number of subjects with at least one local handler.
    pub fn subject_count(&self) -> usize {
        self.table.len()
    }

    fn deliver(&self, subject: &str, msg: &BusMessage) {
        self.table.deliver(subject, msg);
    }

    /// Whether a local handler listens on `subject` (what a wildcard brings
    /// for sessions elsewhere is dropped before it is decoded).
    fn listens(&self, subject: &str) -> bool {
        self.table.contains(subject)
    }
}

impl Bus for NatsBus {
    fn shrink(&self) {
        self.table.shrink();
    }

    fn publish(&self, subject: &str, msg: BusMessage) -> Result<(), BusError> {
        check_subject(subject)?;
        self.deliver(subject, &msg);
        let queued = self.metrics.queued.get();
        if queued >= MAX_QUEUED_PUBLISHES as i64 {
            self.metrics.rejected.inc();
            error!(
                subject,
                queued, "NATS publish queue full, message not sent to other servers"
            );
            return Err(BusError::Overloaded(queued as usize));
        }
        self.metrics.queued.inc();
        // Numbered in the caller's order: one task's publishes (all that
        // can be causally related) keep theirs.
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let payload = Bytes::from(encode_envelope_from(&msg, Some((&self.origin, seq))));
        if self
            .commands
            .send(Command::Publish(Arc::from(subject), payload))
            .is_err()
        {
            // Only after the client task ended (runtime shutting down).
            self.metrics.queued.dec();
            debug!(subject, "NATS client task gone, message not sent");
        }
        Ok(())
    }

    fn publish_local(&self, subject: &str, msg: BusMessage) -> Result<(), BusError> {
        check_subject(subject)?;
        self.deliver(subject, &msg);
        Ok(())
    }

    fn subscribe(
        &self,
        subject: &str,
        handler: Weak<dyn BusHandler>,
    ) -> Result<Subscription, BusError> {
        check_subject(subject)?;
        let (key, id) = self.table.add(subject, handler, |key| {
            if wildcard_for(key).is_none() {
                // Counted once queued: a `Sync` that saw the count is
                // queued after it.
                let _ = self.commands.send(Command::Subscribe(key.clone()));
                self.subs_queued.fetch_add(1, Ordering::Release);
            }
        });
        let me: Weak<dyn Bus> = self.me.clone();
        Ok(Subscription::new(me, key, id))
    }

    fn unsubscribe(&self, subject: &str, id: u64) {
        self.table.remove(subject, id, |key| {
            if wildcard_for(&key).is_none() {
                let _ = self.commands.send(Command::Unsubscribe(key));
            }
        });
    }

    fn subscriptions_active(&self) -> Option<oneshot::Receiver<()>> {
        if !self.is_connected() {
            return None;
        }
        // Nothing on its way to the broker (a new session's own and user
        // subjects are served by the wildcards): no round trip.
        let queued = self.subs_queued.load(Ordering::Acquire);
        if self.subs_active.load(Ordering::Relaxed) >= queued {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        self.commands.send(Command::Sync(queued, tx)).ok()?;
        Some(rx)
    }
}

/// The task that owns the client: executes commands in order until the bus
/// is dropped, then ends every subscription task and closes the connection.
///
/// Long because it is one `select!` loop over the command queue, the
/// connection events and the subscriptions' messages, which share the
/// connection state.
async fn run(
    bus: Weak<NatsBus>,
    addrs: Vec<ServerAddr>,
    options: ConnectOptions,
    mut commands: mpsc::UnboundedReceiver<Command>,
    metrics: Arc<NatsMetrics>,
    mut connected: watch::Receiver<bool>,
    reconnected: Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
) {
    let Some(peers) = bus.upgrade().map(|b| b.peers.clone()) else {
        return;
    };
    // With `retry_on_initial_connect` this returns at once and connects in
    // the background; commands wait in the client's queue meanwhile.
    let client: Client = match options.connect(addrs).await {
        Ok(c) => c,
        Err(e) => {
            error!(error = %e, "NATS client could not start; cluster messages are not delivered");
            return;
        }
    };
    if let Some(b) = bus.upgrade() {
        let _ = b.client.set(client.clone());
    }
    // Each subscription's stream ends when its sender here is dropped.
    let mut subs: HashMap<Arc<str>, oneshot::Sender<()>, foldhash::fast::RandomState> =
        HashMap::default();
    let mut feeds: SelectAll<Feed> = SelectAll::new();
    let mut batch: Vec<async_nats::Message> = Vec::new();
    // Before any command: everything the hub subscribes later is queued
    // after these on the one connection.
    let always = WILDCARDS.iter().map(|(_, w)| *w).chain([BATCH_SUBJECT]);
    for wildcard in always {
        match client.subscribe(wildcard).await {
            Ok(sub) => {
                let (tx, cancel) = oneshot::channel();
                feeds.push(Feed { sub, cancel });
                subs.insert(Arc::from(wildcard), tx);
            }
            Err(e) => error!(subject = wildcard, error = %e, "NATS subscribe failed"),
        }
    }
    metrics.subscriptions.set(subs.len() as i64);
    // A command taken from the queue while collecting a batch that does
    // not belong in it: executed next, before anything queued after it.
    let mut pending: Option<Command> = None;
    loop {
        enum Next {
            Command(Option<Command>),
            Received(Option<async_nats::Message>),
        }
        let next = match pending.take() {
            Some(cmd) => Next::Command(Some(cmd)),
            None => tokio::select! {
                cmd = commands.recv() => Next::Command(cmd),
                first = feeds.next(), if !feeds.is_empty() => Next::Received(first),
            },
        };
        match next {
            Next::Command(cmd) => {
                let Some(cmd) = cmd else { break };
                match cmd {
                    Command::Publish(subject, payload) => {
                        // While NATS is away, publishes wait here (bounded,
                        // counted), and after it is back a little longer:
                        // the other servers re-subscribe when they reconnect,
                        // which may be a retry later than ours, and core
                        // NATS drops what nobody is subscribed to yet.
                        if !until_publishable(&mut connected, &reconnected).await {
                            break;
                        }
                        metrics.queued.dec();
                        // What else is queued for sessions and users right
                        // now goes with it in one message, when every node
                        // reads batches. Nothing waits for more.
                        let (subject, payload) = if wildcard_for(&subject).is_some()
                            && peers.all_read_batches(std::time::Instant::now())
                        {
                            // Within the broker's payload limit too: a
                            // batch it refused would lose every message in it.
                            let limit = client.server_info().max_payload.min(MAX_BATCH_BYTES);
                            let (out, next) =
                                take_batch(&mut commands, &metrics, subject, payload, limit);
                            pending = next;
                            out
                        } else {
                            (subject, payload)
                        };
                        // Awaits only while the client's own queue is full (NATS
                        // down or slow): that is the backpressure on our queue.
                        if let Err(e) = client.publish(subject.to_string(), payload).await {
                            error!(subject = %subject, error = %e, "NATS publish failed");
                        }
                    }
                    Command::Subscribe(subject) => {
                        match client.subscribe(subject.to_string()).await {
                            Ok(sub) => {
                                let (tx, cancel) = oneshot::channel();
                                feeds.push(Feed { sub, cancel });
                                // Replacing an old sender ends that stream.
                                subs.insert(subject, tx);
                                metrics.subscriptions.set(subs.len() as i64);
                            }
                            Err(e) => {
                                error!(subject = %subject, error = %e, "NATS subscribe failed")
                            }
                        }
                    }
                    Command::Unsubscribe(subject) => {
                        // Its stream ends (dropping the `Subscriber`, which
                        // sends `UNSUB`) without handing on what it still holds.
                        subs.remove(&subject);
                        metrics.subscriptions.set(subs.len() as i64);
                    }
                    Command::Sync(queued, done) => sync_subscriptions(&client, &bus, queued, done),
                }
            }
            Next::Received(first) => {
                let Some(first) = first else { continue };
                batch.push(first);
                // Everything that has arrived, not a capped batch: a later
                // message of a sender may sit in one subscription's channel
                // while earlier ones still wait in another's, and only what
                // is taken together is put back in order. (With a cap of 256,
                // a settle marker overtook a backlog of direct messages.)
                // Unconstrained: tokio's cooperative budget would otherwise
                // answer "not ready" after about 128 items, the same cap.
                while let Some(Some(m)) = tokio::task::unconstrained(feeds.next()).now_or_never() {
                    batch.push(m);
                }
                let Some(bus) = bus.upgrade() else { break };
                dispatch(&bus, &mut batch, &peers);
            }
        }
    }
    metrics.connected.set(0);
    metrics.subscriptions.set(0);
}

/// Finds out when the broker has processed every subscription handed to the
/// client before this point, and then marks `queued` as active.
fn sync_subscriptions(
    client: &Client,
    bus: &Weak<NatsBus>,
    queued: u64,
    done: oneshot::Sender<()>,
) {
    // A request nobody answers: the broker says "no responders" once it
    // processed it, and with it every SUB handed to the client before (one
    // connection, in order). The client's `flush` only writes the socket,
    // it does not wait for the broker. Not awaited by the caller
    // (publishes must not wait), and bounded in case the connection breaks
    // meanwhile.
    let client = client.clone();
    let active = bus.upgrade().map(|b| b.subs_active.clone());
    tokio::spawn(async move {
        let sync = client.request(SYNC_SUBJECT, Bytes::new());
        let answered = tokio::time::timeout(crate::bus::SUBSCRIPTIONS_WAIT, sync).await;
        // "No responders" is the broker's answer too.
        let processed = match answered {
            Ok(Ok(_)) => true,
            Ok(Err(e)) => e.kind() == async_nats::RequestErrorKind::NoResponders,
            Err(_) => false,
        };
        if let (true, Some(active)) = (processed, active) {
            active.fetch_max(queued, Ordering::Relaxed);
        }
        let _ = done.send(());
    });
}

/// Waits while NATS is away and for the grace after it came back; false
/// when the connection state is gone (the bus is shutting down).
async fn until_publishable(
    connected: &mut watch::Receiver<bool>,
    reconnected: &parking_lot::Mutex<Option<std::time::Instant>>,
) -> bool {
    if !*connected.borrow() && connected.wait_for(|c| *c).await.is_err() {
        return false;
    }
    let since = *reconnected.lock();
    if let Some(wait) = since.and_then(|t| RESUBSCRIBE_GRACE.checked_sub(t.elapsed())) {
        tokio::time::sleep(wait).await;
    }
    true
}

/// The publish just taken from the queue and every publish to a session or
/// user subject queued right behind it, as one batch of at most `limit`
/// bytes when there are several (else the first as it was), and the first
/// command that did not fit, to execute next.
fn take_batch(
    commands: &mut mpsc::UnboundedReceiver<Command>,
    metrics: &NatsMetrics,
    subject: Arc<str>,
    payload: Bytes,
    limit: usize,
) -> ((Arc<str>, Bytes), Option<Command>) {
    let first = (subject, payload);
    let mut writer: Option<BatchWriter> = None;
    let next = loop {
        match commands.try_recv() {
            Ok(Command::Publish(s, p))
                if wildcard_for(&s).is_some()
                    && writer.as_ref().map_or_else(
                        || batch::item_len(&first.0, &first.1) + batch::HEADER.len(),
                        BatchWriter::len,
                    ) + batch::item_len(&s, &p)
                        <= limit =>
            {
                metrics.queued.dec();
                let w = writer.get_or_insert_with(|| {
                    let mut w = BatchWriter::new();
                    w.push(&first.0, &first.1);
                    w
                });
                w.push(&s, &p);
            }
            Ok(other) => break Some(other),
            Err(_) => break None,
        }
    };
    match writer {
        None => (first, next),
        Some(w) => {
            metrics.batches.inc();
            metrics.batched.add(w.count() as u64);
            ((Arc::from(BATCH_SUBJECT), w.finish()), next)
        }
    }
}

/// One subscription's messages (each names its own subject: a wildcard's
/// are for many); ends when the subject's last local handler goes
/// (`cancel`), dropping what is left.
struct Feed {
    sub: Subscriber,
    cancel: oneshot::Receiver<()>,
}

impl futures_util::Stream for Feed {
    type Item = async_nats::Message;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::future::Future;
        use std::task::Poll;
        let this = self.get_mut();
        if std::pin::Pin::new(&mut this.cancel).poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        match this.sub.poll_next_unpin(cx) {
            Poll::Ready(Some(m)) => Poll::Ready(Some(m)),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_senders_order_is_restored_in_place() {
        // (sender, seq, label); None = no order information.
        let items = vec![
            (Some(("a", 3)), "a3"),
            (Some(("b", 1)), "b1"),
            (None, "x"),
            (Some(("a", 1)), "a1"),
            (Some(("b", 2)), "b2"),
            (Some(("a", 2)), "a2"),
        ];
        let out = in_sender_order(items, |(k, _)| *k);
        let labels: Vec<&str> = out.iter().map(|(_, l)| *l).collect();
        assert_eq!(labels, ["a1", "b1", "x", "a2", "b2", "a3"]);
        assert!(in_sender_order(Vec::<Option<(&str, u64)>>::new(), |k| *k).is_empty());
        // Already in order (the usual case): unchanged.
        let items = vec![Some(("a", 1)), Some(("b", 5)), None, Some(("a", 2))];
        assert_eq!(in_sender_order(items.clone(), |k| *k), items);
    }

    #[test]
    fn a_batch_takes_the_queued_session_messages_up_to_its_size() {
        let metrics = NatsMetrics::new(&Registry::new());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let publish =
            |s: &str, len: usize| Command::Publish(Arc::from(s), Bytes::from(vec![b'x'; len]));
        let subject = |c: &Option<Command>| match c {
            Some(Command::Publish(s, _)) => s.to_string(),
            _ => "other".to_owned(),
        };
        let take_one_x = |rx: &mut mpsc::UnboundedReceiver<Command>| {
            take_batch(
                rx,
                &metrics,
                Arc::from("session.a"),
                Bytes::from("x"),
                MAX_BATCH_BYTES,
            )
        };
        // Alone: goes out as it is.
        let ((s, p), next) = take_one_x(&mut rx);
        assert_eq!(
            (&*s, &p[..], next.is_none()),
            ("session.a", &b"x"[..], true)
        );
        // Session and user messages go together; a room message ends the batch.
        for c in [
            publish("user.b", 5),
            publish("session.c", 5),
            publish("room.r", 5),
            publish("session.d", 5),
        ] {
            tx.send(c).ok();
        }
        let ((s, p), next) = take_one_x(&mut rx);
        assert_eq!(&*s, BATCH_SUBJECT);
        let (items, err) = split_batch(&p);
        assert!(err.is_none());
        let subjects: Vec<&[u8]> = items.iter().map(|(s, _)| &s[..]).collect();
        assert_eq!(subjects, [&b"session.a"[..], b"user.b", b"session.c"]);
        assert_eq!(subject(&next), "room.r");
        assert_eq!(subject(&rx.try_recv().ok()), "session.d");
        // Never beyond the size bound, counting the first message too.
        tx.send(publish("session.f", MAX_BATCH_BYTES / 2)).ok();
        let big = Bytes::from(vec![b'x'; MAX_BATCH_BYTES * 2 / 3]);
        let ((s, _), next) = take_batch(
            &mut rx,
            &metrics,
            Arc::from("session.e"),
            big,
            MAX_BATCH_BYTES,
        );
        assert_eq!((&*s, subject(&next)), ("session.e", "session.f".to_owned()));
        // A broker with a smaller payload limit lowers the bound.
        tx.send(publish("session.h", 100)).ok();
        let g = Bytes::from(vec![b'x'; 100]);
        let ((s, _), next) = take_batch(&mut rx, &metrics, Arc::from("session.g"), g, 250);
        assert_eq!((&*s, subject(&next)), ("session.g", "session.h".to_owned()));
        assert_eq!(metrics.batches.get(), 1);
        assert_eq!(metrics.batched.get(), 3);
    }

    #[test]
    fn loopback_spellings() {
        for u in ["", " ", ":loopback:", "nats://loopback"] {
            assert!(is_loopback_url(u), "{u:?}");
        }
        assert!(!is_loopback_url("nats://127.0.0.1:4222"));
    }

    #[test]
    fn urls_with_credentials() {
        let (addrs, _) =
            parse_urls("nats://u%40x:p%2Fw@127.0.0.1:4222, nats://10.0.0.2:4223").expect("parse");
        assert_eq!(addrs.len(), 2);
        assert_eq!(addrs[1].port(), 4223);
        assert_eq!(addrs[0].username(), Some("u%40x"));
        assert_eq!(percent_decode("u%40x"), "u@x");
        assert_eq!(percent_decode("p%2Fw%"), "p/w%");
        assert!(parse_urls(" , ").is_err());
        assert!(parse_urls("nats://[bad").is_err());
        assert_eq!(
            redact("nats://u:p@h:1,tok@h2"),
            "nats://***@h:1,***@h2".to_owned()
        );
    }

    #[test]
    fn retry_delays_grow_to_eight_seconds_with_jitter() {
        assert_eq!(retry_delay(1), Duration::ZERO);
        let d = retry_delay(2);
        assert!(d >= Duration::from_millis(750) && d <= Duration::from_millis(1250));
        for n in [5, 6, 100, usize::MAX] {
            let d = retry_delay(n);
            assert!(
                d >= Duration::from_secs(6) && d <= Duration::from_secs(10),
                "{d:?}"
            );
        }
    }
}
