//! One subscriber: its handle in the publisher's room, the task that owns
//! it, and how it is rebuilt when Janus comes back.

use super::*;

pub(super) struct SubConn {
    pub(super) handle: Handle,
    pub(super) events: HandleEvents,
}

/// Result of a (re)build of a subscriber: new handle, its offer, the room.
pub(super) type Rebuilt = (SubConn, Jsep, RoomId);

/// What a subscriber does when its connection to Janus breaks.
enum AfterLoss {
    /// Nothing to restore (never negotiated).
    Close,
    /// Its session follows the publisher instead.
    Lost,
    Rebuild(BoxFuture<'static, Result<Rebuilt, McuError>>),
}

pub(super) struct SubscriberTask {
    pub(super) inner: Arc<Inner>,
    pub(super) me: Arc<ClientObj>,
    /// Clustering: the publisher's room when it is another signaling
    /// server's publisher on this same Janus (0: a local publisher).
    pub(super) known_room: RoomId,
    /// Strong: the listener itself only holds a weak reference to its
    /// session, so there is no cycle.
    pub(super) listener: Arc<dyn McuListener>,
    pub(super) key: PubKey,
    /// The publisher room joined (0 before the first join).
    pub(super) room: RoomId,
    pub(super) joined: bool,
    pub(super) generation: ApiGeneration,
}

/// Joins the room of publisher `key` once it sends media, retrying until
/// `deadline` (upstream: "publisher not sending yet, wait and retry").
/// `known_room` (not 0): the publisher is another signaling server's (same
/// Janus), in that room; nothing here tells when it is ready, so retry.
pub(super) async fn join_when_ready(
    inner: &Inner,
    handle: &Handle,
    key: &PubKey,
    known_room: RoomId,
    generation: ApiGeneration,
    selection: &StreamSelection,
    deadline: Instant,
) -> Result<(Jsep, RoomId), McuError> {
    let mut changed = inner.changed.subscribe();
    let mut counted = false;
    loop {
        changed.borrow_and_update();
        let room = if known_room != 0 {
            known_room
        } else {
            inner
                .reg
                .lock()
                .publishers
                .get(key)
                .map(|p| p.room.load(Ordering::Acquire))
                .unwrap_or(0)
        };
        if room != 0 {
            let join =
                videoroom::join_subscriber(handle, room, key.1.feed_id(), generation, selection);
            match tokio::time::timeout_at(deadline, join).await {
                Err(_) => return Err(McuError::Timeout("join")),
                Ok(Ok(j)) => return Ok((j.jsep, room)),
                Ok(Err(JanusError::Plugin { code, .. }))
                    if code == error_codes::NO_SUCH_FEED || code == error_codes::NO_SUCH_ROOM => {}
                Ok(Err(e)) => return Err(e.into()),
            }
        }
        if !counted {
            counted = true;
            inner.metrics.no_publisher_total.inc(&[key.1.as_str()]);
            debug!(publisher = %key.0, stream = key.1.as_str(), "publisher not sending yet, waiting");
        }
        if known_room != 0 {
            if Instant::now() + REMOTE_RETRY >= deadline {
                return Err(McuError::Timeout("publisher"));
            }
            tokio::time::sleep(REMOTE_RETRY).await;
            continue;
        }
        match tokio::time::timeout_at(deadline, changed.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(McuError::Closed),
            Err(_) => return Err(McuError::Timeout("publisher")),
        }
    }
}

impl SubscriberTask {
    pub(super) async fn run(mut self, conn: SubConn, mut rx: mpsc::Receiver<Cmd>) {
        let mut conn = Some(conn);
        let mut rebuild: Option<BoxFuture<'static, Result<Rebuilt, McuError>>> = None;
        // When a pending rebuild has taken long enough that the client must
        // be told (once per loss).
        let mut stall_at: Option<Instant> = None;
        let mut done: Option<oneshot::Sender<()>> = None;
        // Ended because the publisher did (or Janus stayed away), not at
        // the session's request.
        let mut lost = false;
        // An offer request that came during a rebuild: the rebuild's offer
        // answers it.
        let mut asked: Option<Responder> = None;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Close(tx)) => { done = Some(tx); break }
                    Some(Cmd::PublisherGone) => {
                        debug!(publisher = %self.key.0, stream = self.key.1.as_str(), "publisher of subscriber ended or was replaced");
                        lost = true;
                        break;
                    }
                    Some(Cmd::Message(msg, reply)) if rebuild.is_some() && matches!(msg.kind.as_str(), "requestoffer" | "sendoffer") => {
                        if let Some(older) = asked.replace(reply) {
                            older(Ok(None));
                        }
                    }
                    Some(Cmd::Message(msg, reply)) => {
                        let res = self.handle_message(&mut conn, msg).await;
                        reply(res);
                    }
                    Some(Cmd::Remote(_, reply)) => {
                        let _ = reply.send(Err(McuError::Unsupported("remote publishing".into())));
                    }
                },
                ev = next_event(conn.as_mut().map(|c| &mut c.events)) => {
                    match self.handle_event(ev) {
                        Flow::Continue => {}
                        Flow::Close => break,
                        Flow::PublisherGone => { lost = true; break }
                        Flow::Lost => match self.connection_lost(conn.take()) {
                            AfterLoss::Close => break,
                            AfterLoss::Lost => { lost = true; break }
                            AfterLoss::Rebuild(r) => {
                                rebuild = Some(r);
                                stall_at = Some(Instant::now() + crate::STALL_NOTICE);
                            }
                        },
                    }
                },
                _ = sleep_until_opt(stall_at) => {
                    stall_at = None;
                    info!(publisher = %self.key.0, stream = self.key.1.as_str(), "subscriber not rebuilt yet, telling its client");
                    self.listener.subscriber_stalled(&*self.me);
                },
                res = poll_opt(&mut rebuild) => {
                    rebuild = None;
                    stall_at = None;
                    match res {
                        Ok(rebuilt) => conn = Some(self.rebuilt(rebuilt, asked.take())),
                        Err(e) => {
                            warn!(publisher = %self.key.0, stream = self.key.1.as_str(), error = %e, "could not rebuild subscriber, closing");
                            if let Some(reply) = asked.take() {
                                reply(Err(e));
                            }
                            lost = true;
                            break;
                        }
                    }
                },
            }
        }
        self.shutdown(conn, lost).await;
        if let Some(tx) = done {
            let _ = tx.send(());
        }
    }

    /// The connection to Janus broke: what next.
    fn connection_lost(&mut self, conn: Option<SubConn>) -> AfterLoss {
        let epoch = conn.as_ref().map(|c| c.handle.session().epoch());
        drop(conn);
        self.joined = false;
        if self.me.sending.swap(false, Ordering::AcqRel) {
            self.inner
                .metrics
                .subscriber_streams
                .dec(&[self.key.1.as_str()]);
        }
        if !self.room_was_joined() {
            // Never negotiated: nothing to restore.
            return AfterLoss::Close;
        }
        if self.known_room != 0 {
            // Another server's publisher: its room is gone with Janus, and
            // only that server knows the new one; the session follows the
            // publisher from there.
            return AfterLoss::Lost;
        }
        AfterLoss::Rebuild(self.rebuild(epoch))
    }

    /// Rebuilt on the new Janus session: the new offer goes to the client,
    /// as the answer to `asked` if it asked meanwhile.
    fn rebuilt(&mut self, (c, offer, room): Rebuilt, asked: Option<Responder>) -> SubConn {
        *self.me.info.sid.lock() = c.handle.id().to_string();
        self.room = room;
        self.joined = true;
        info!(publisher = %self.key.0, stream = self.key.1.as_str(), sid = %self.me.sid(), "subscriber rebuilt after Janus reconnect");
        self.inner.metrics.rebuilt_total.inc(&["subscriber"]);
        match asked {
            Some(reply) => reply(Ok(Some(jsep_json(offer)))),
            None => self.listener.on_update_offer(&*self.me, jsep_json(offer)),
        }
        c
    }

    fn room_was_joined(&self) -> bool {
        self.room != 0
    }

    pub(super) fn rebuild(
        &self,
        old_epoch: Option<u64>,
    ) -> BoxFuture<'static, Result<Rebuilt, McuError>> {
        let inner = self.inner.clone();
        let key = self.key.clone();
        let known_room = self.known_room;
        Box::pin(async move {
            let deadline = Instant::now() + REBUILD_WAIT;
            let live = inner.wait_live(old_epoch, deadline).await?;
            let (handle, events) = live.session.attach(videoroom::PLUGIN).await?;
            let (offer, room) = join_when_ready(
                &inner,
                &handle,
                &key,
                known_room,
                live.generation,
                &StreamSelection::default(),
                deadline,
            )
            .await?;
            Ok((SubConn { handle, events }, offer, room))
        })
    }

    /// A fresh handle for a subscriber that must join again (Janus refuses a
    /// second `join` on a handle: "already joined").
    async fn replace_handle(&mut self, conn: &mut Option<SubConn>) -> Result<(), McuError> {
        let live = self.inner.live()?;
        let timeout = self.inner.settings.timeout;
        if let Some(old) = conn.take() {
            let _ = bounded(timeout, "detach", old.handle.detach()).await;
        }
        let (handle, events) =
            bounded(timeout, "attach", live.session.attach(videoroom::PLUGIN)).await?;
        *self.me.info.sid.lock() = handle.id().to_string();
        self.generation = live.generation;
        self.joined = false;
        *conn = Some(SubConn { handle, events });
        Ok(())
    }

    async fn join(
        &mut self,
        conn: &mut Option<SubConn>,
        selection: &StreamSelection,
    ) -> Result<Option<Value>, McuError> {
        if self.joined {
            self.replace_handle(conn).await?;
        }
        for attempt in 0..2 {
            let Some(c) = conn.as_ref() else {
                return Err(McuError::NotConnected);
            };
            let deadline = Instant::now() + self.inner.settings.timeout;
            match join_when_ready(
                &self.inner,
                &c.handle,
                &self.key,
                self.known_room,
                self.generation,
                selection,
                deadline,
            )
            .await
            {
                Ok((offer, room)) => {
                    self.room = room;
                    self.joined = true;
                    return Ok(Some(jsep_json(offer)));
                }
                Err(McuError::Janus(JanusError::Plugin { code, .. }))
                    if code == error_codes::ALREADY_JOINED && attempt == 0 =>
                {
                    self.replace_handle(conn).await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(McuError::Closed)
    }

    async fn handle_message(
        &mut self,
        conn: &mut Option<SubConn>,
        msg: McuMessage,
    ) -> Result<Option<Value>, McuError> {
        self.inner.metrics.messages_total.inc(&[&msg.kind]);
        let timeout = self.inner.settings.timeout;
        match msg.kind.as_str() {
            "requestoffer" | "sendoffer" => {
                let selection = StreamSelection::from_payload(&msg.payload)
                    .map_err(McuError::InvalidPayload)?;
                if self.joined && !msg.sid.is_empty() && msg.sid == self.me.sid() {
                    let Some(c) = conn.as_ref() else {
                        return Err(McuError::NotConnected);
                    };
                    let offer = bounded(
                        timeout,
                        "configure",
                        videoroom::update_subscriber(&c.handle, &selection),
                    )
                    .await?;
                    return Ok(offer.map(jsep_json));
                }
                self.join(conn, &selection).await
            }
            "answer" => {
                check_sid(&msg, &self.me)?;
                let answer = jsep_from_payload(&msg.payload, "answer")?;
                let c = conn.as_ref().ok_or(McuError::NotConnected)?;
                bounded(
                    timeout,
                    "start",
                    videoroom::start_subscriber(&c.handle, self.room, answer),
                )
                .await?;
                Ok(None)
            }
            "candidate" => {
                check_sid(&msg, &self.me)?;
                let cand = candidate_from_payload(&msg.payload)?;
                let c = conn.as_ref().ok_or(McuError::NotConnected)?;
                bounded(timeout, "trickle", c.handle.trickle(&cand)).await?;
                Ok(None)
            }
            "endOfCandidates" => Ok(None),
            "selectStream" => {
                let selection = StreamSelection::from_payload(&msg.payload)
                    .map_err(McuError::InvalidPayload)?;
                if !selection.has_values() {
                    return Ok(None);
                }
                let c = conn.as_ref().ok_or(McuError::NotConnected)?;
                bounded(
                    timeout,
                    "configure",
                    videoroom::select_stream(&c.handle, &selection),
                )
                .await?;
                Ok(None)
            }
            other => Err(McuError::Unsupported(other.to_owned())),
        }
    }

    fn handle_event(&mut self, ev: Option<HandleEvent>) -> Flow {
        let Some(ev) = ev else { return Flow::Lost };
        match ev {
            HandleEvent::Trickle(c) => {
                self.listener
                    .on_ice_candidate(&*self.me, json!({ "candidate": candidate_json(&c) }));
                Flow::Continue
            }
            HandleEvent::TrickleCompleted => Flow::Continue,
            HandleEvent::WebrtcUp => {
                if !self.me.sending.swap(true, Ordering::AcqRel) {
                    self.inner
                        .metrics
                        .subscriber_streams
                        .inc(&[self.key.1.as_str()]);
                }
                Flow::Continue
            }
            HandleEvent::Media(_) | HandleEvent::SlowLink(_) => Flow::Continue,
            HandleEvent::Event(e) => match videoroom::VideoRoomEvent::parse(&e) {
                Some(videoroom::VideoRoomEvent::Destroyed) => Flow::PublisherGone,
                Some(videoroom::VideoRoomEvent::Updated {
                    media_gone: true, ..
                }) => {
                    debug!(publisher = %self.key.0, "publisher of subscriber left");
                    Flow::PublisherGone
                }
                Some(videoroom::VideoRoomEvent::Updated {
                    jsep: Some(offer), ..
                })
                | Some(videoroom::VideoRoomEvent::UpdateOffer(offer)) => {
                    self.listener.on_update_offer(&*self.me, jsep_json(offer));
                    Flow::Continue
                }
                other => {
                    debug!(publisher = %self.key.0, event = ?other, "subscriber event");
                    Flow::Continue
                }
            },
            HandleEvent::Hangup { reason } => {
                debug!(publisher = %self.key.0, %reason, "subscriber hung up, closing");
                Flow::Close
            }
            HandleEvent::Detached => Flow::Close,
            HandleEvent::Gone(reason) => gone_flow(reason),
            HandleEvent::Lagged { missed } => {
                warn!(publisher = %self.key.0, missed, "subscriber missed Janus events");
                Flow::Continue
            }
        }
    }

    async fn shutdown(self, conn: Option<SubConn>, lost: bool) {
        if let Some(c) = conn {
            let _ = bounded(self.inner.settings.timeout, "detach", c.handle.detach()).await;
        }
        if self.me.sending.swap(false, Ordering::AcqRel) {
            self.inner
                .metrics
                .subscriber_streams
                .dec(&[self.key.1.as_str()]);
        }
        self.inner.reg.lock().subscribers.remove(&self.me.info.id);
        self.inner.metrics.subscribers.dec(&[self.key.1.as_str()]);
        debug!(publisher = %self.key.0, stream = self.key.1.as_str(), lost, "subscriber closed");
        if lost {
            self.listener.subscriber_lost(&*self.me);
        } else {
            self.listener.subscriber_closed(&*self.me);
        }
    }
}
