//! One publisher: its room and handle, the task that owns them, and how it
//! is rebuilt when Janus comes back.

use super::*;

/// A publisher ended: out of the registry (unless replaced) and its
/// subscribers closed, since Janus does not tell them.
pub(super) fn release_publisher(inner: &Inner, key: &PubKey, me: &Arc<ClientObj>) {
    let subscribers: Vec<Arc<ClientObj>> = {
        let mut reg = inner.reg.lock();
        if reg.publishers.get(key).is_some_and(|p| Arc::ptr_eq(p, me)) {
            reg.publishers.remove(key);
        }
        reg.subscribers
            .values()
            .filter(|s| s.info.stream == key.1 && s.info.publisher.as_deref() == Some(&*key.0))
            .cloned()
            .collect()
    };
    me.room.store(0, Ordering::Release);
    inner.bump();
    for s in subscribers {
        let _ = s.cmd.try_send(Cmd::PublisherGone);
    }
}

/// What creating (or re-creating) a publisher's room needs.
#[derive(Clone)]
pub(super) struct PublisherSetup {
    pub(super) id: Arc<str>,
    pub(super) stream: StreamType,
    pub(super) bitrate: u64,
    pub(super) codecs: CodecPrefs,
}

pub(super) struct PubConn {
    pub(super) handle: Handle,
    pub(super) events: HandleEvents,
    pub(super) room: RoomId,
}

impl PublisherSetup {
    /// Attach, create the stream's room, join it as its publisher.
    pub(super) async fn run(&self, live: &Live) -> Result<PubConn, McuError> {
        let (handle, events) = live.session.attach(videoroom::PLUGIN).await?;
        let mut create = CreateRoom::for_stream(
            format!("{}|{}", self.id, self.stream.as_str()),
            self.bitrate,
        );
        create.audiocodec = self.codecs.audio.clone();
        create.videocodec = self.codecs.video.clone();
        create.vp9_profile = self.codecs.vp9_profile.clone();
        create.h264_profile = self.codecs.h264_profile.clone();
        let room = videoroom::create_room(&handle, &create).await?;
        if let Err(e) = videoroom::join_publisher(&handle, room, self.stream.feed_id(), None).await
        {
            let _ = videoroom::destroy_room(&handle, room).await;
            return Err(e.into());
        }
        Ok(PubConn {
            handle,
            events,
            room,
        })
    }
}

/// A publisher's client messages held while Janus is away: the latest
/// offer and what came after it.
#[derive(Default)]
pub(super) struct Held {
    pub(super) msgs: Vec<(McuMessage, Responder)>,
    /// When they fail if Janus is not back.
    pub(super) until: Option<Instant>,
}

impl Held {
    fn push(&mut self, msg: McuMessage, reply: Responder, hold: Duration) {
        if msg.kind == "offer" {
            // A newer offer: the older one and its candidates are moot (no
            // answer goes out for them).
            for (_, old) in self.msgs.drain(..) {
                old(Ok(None));
            }
        }
        self.msgs.push((msg, reply));
        self.until.get_or_insert_with(|| Instant::now() + hold);
    }

    fn has_offer(&self) -> bool {
        self.msgs.iter().any(|(m, _)| m.kind == "offer")
    }

    /// What to apply now that the publisher is back: from the latest offer
    /// on (candidates without one belong to a peer Janus never saw).
    fn take(&mut self) -> Vec<(McuMessage, Responder)> {
        self.until = None;
        let msgs = std::mem::take(&mut self.msgs);
        if msgs.iter().any(|(m, _)| m.kind == "offer") {
            return msgs;
        }
        for (_, reply) in msgs {
            reply(Ok(None));
        }
        Vec::new()
    }

    fn fail(&mut self) {
        self.until = None;
        for (_, reply) in self.msgs.drain(..) {
            reply(Err(McuError::NotConnected));
        }
    }
}

pub(super) struct PublisherTask {
    pub(super) inner: Arc<Inner>,
    pub(super) me: Arc<ClientObj>,
    /// Strong: the listener itself only holds a weak reference to its
    /// session, so there is no cycle.
    pub(super) listener: Arc<dyn McuListener>,
    pub(super) key: PubKey,
    pub(super) setup: PublisherSetup,
    /// Whether Janus receives audio / video: drives the stream gauges.
    pub(super) receiving: [bool; 2],
}

impl PublisherTask {
    pub(super) async fn run(mut self, conn: PubConn, mut rx: mpsc::Receiver<Cmd>) {
        let mut conn = Some(conn);
        let mut epoch = conn.as_ref().map(|c| c.handle.session().epoch());
        let mut rebuild: Option<BoxFuture<'static, Result<PubConn, McuError>>> = None;
        let mut done: Option<oneshot::Sender<()>> = None;
        // The client's messages while the publisher is being rebuilt (Janus
        // away), answered once it is back or failed after the hold.
        let mut held = Held::default();
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Close(tx)) => { done = Some(tx); break }
                    Some(Cmd::PublisherGone) => {}
                    Some(Cmd::Message(msg, reply)) => match &conn {
                        Some(c) => reply(self.handle_message(c, msg).await),
                        None if rebuild.is_some() => held.push(msg, reply, self.inner.settings.down_hold),
                        None => reply(Err(McuError::NotConnected)),
                    },
                    Some(Cmd::Remote(op, reply)) => {
                        let res = match &conn {
                            Some(c) => self.remote(c, op).await,
                            None => Err(McuError::NotConnected),
                        };
                        let _ = reply.send(res);
                    }
                },
                ev = next_event(conn.as_mut().map(|c| &mut c.events)) => {
                    match self.handle_event(ev) {
                        Flow::Continue => {}
                        Flow::Close | Flow::PublisherGone => break,
                        Flow::Lost => {
                            warn!(session = %self.key.0, stream = self.key.1.as_str(), "publisher lost its Janus connection, will rebuild");
                            conn = None;
                            self.set_receiving(0, false);
                            self.set_receiving(1, false);
                            self.me.room.store(0, Ordering::Release);
                            self.me.sending.store(false, Ordering::Release);
                            self.inner.bump();
                            rebuild = Some(self.rebuild(epoch, Duration::ZERO));
                        }
                    }
                },
                _ = sleep_until_opt(held.until) => held.fail(),
                res = poll_opt(&mut rebuild) => {
                    rebuild = None;
                    match res {
                        Ok(c) => {
                            epoch = Some(c.handle.session().epoch());
                            self.me.room.store(c.room, Ordering::Release);
                            info!(session = %self.key.0, stream = self.key.1.as_str(), room = c.room, "publisher rebuilt after Janus reconnect");
                            self.inner.metrics.rebuilt_total.inc(&["publisher"]);
                            self.inner.bump();
                            let offered = held.has_offer();
                            for (msg, reply) in held.take() {
                                reply(self.handle_message(&c, msg).await);
                            }
                            conn = Some(c);
                            if !offered {
                                // Nothing to go on: ask the client.
                                self.listener.on_publisher_reset(&*self.me);
                            }
                        }
                        Err(e) => {
                            // Janus went away again (or never came back in
                            // time): wait for the next epoch.
                            warn!(session = %self.key.0, error = %e, "could not rebuild publisher");
                            rebuild = Some(self.rebuild(None, Duration::from_secs(1)));
                        }
                    }
                },
            }
        }
        self.shutdown(conn).await;
        if let Some(tx) = done {
            let _ = tx.send(());
        }
    }

    /// Re-creates the publisher's room once a Janus session of an epoch
    /// other than `old` exists (after `pause`); waits as long as it takes.
    pub(super) fn rebuild(
        &self,
        old: Option<u64>,
        pause: Duration,
    ) -> BoxFuture<'static, Result<PubConn, McuError>> {
        let inner = self.inner.clone();
        let setup = self.setup.clone();
        Box::pin(async move {
            tokio::time::sleep(pause).await;
            let forever = Instant::now() + Duration::from_secs(86400 * 365);
            let live = inner.wait_live(old, forever).await?;
            tokio::time::timeout(inner.settings.timeout, setup.run(&live))
                .await
                .map_err(|_| McuError::Timeout("publisher rebuild"))?
        })
    }

    async fn handle_message(
        &self,
        c: &PubConn,
        msg: McuMessage,
    ) -> Result<Option<Value>, McuError> {
        self.inner.metrics.messages_total.inc(&[&msg.kind]);
        let timeout = self.inner.settings.timeout;
        match msg.kind.as_str() {
            "offer" => {
                let offer = jsep_from_payload(&msg.payload, "offer")?;
                let offer_sdp = offer.sdp.clone();
                let config = videoroom::PublisherConfig::all_media();
                let r = bounded(
                    timeout,
                    "configure",
                    videoroom::configure_publisher(&c.handle, &config, Some(offer)),
                )
                .await?;
                if let Some(answer) = &r.jsep {
                    let streams = crate::sdp::publisher_streams(&offer_sdp, &answer.sdp);
                    *self.me.streams.lock() = Some(Value::Array(streams));
                    self.inner.bump();
                }
                Ok(r.jsep.map(jsep_json))
            }
            "candidate" => {
                check_sid(&msg, &self.me)?;
                let cand = candidate_from_payload(&msg.payload)?;
                bounded(timeout, "trickle", c.handle.trickle(&cand)).await?;
                Ok(None)
            }
            "endOfCandidates" => Ok(None),
            other => Err(McuError::Unsupported(other.to_owned())),
        }
    }

    async fn remote(&self, c: &PubConn, op: RemoteOp) -> Result<(), McuError> {
        let timeout = self.inner.settings.timeout;
        let feed = self.key.1.feed_id();
        match op {
            RemoteOp::Publish {
                remote_id,
                host,
                port,
                rtcp_port,
            } => {
                let publish = || {
                    videoroom::publish_remotely(
                        &c.handle, c.room, feed, &remote_id, &host, port, rtcp_port,
                    )
                };
                match bounded(timeout, "publish_remotely", publish()).await {
                    // Already published under this id (a retry): start over.
                    Err(McuError::Janus(JanusError::Plugin { code, .. }))
                        if code == error_codes::ID_EXISTS =>
                    {
                        bounded(
                            timeout,
                            "unpublish_remotely",
                            videoroom::unpublish_remotely(&c.handle, c.room, feed, &remote_id),
                        )
                        .await?;
                        bounded(timeout, "publish_remotely", publish()).await
                    }
                    other => other,
                }
            }
            RemoteOp::Unpublish { remote_id } => {
                bounded(
                    timeout,
                    "unpublish_remotely",
                    videoroom::unpublish_remotely(&c.handle, c.room, feed, &remote_id),
                )
                .await
            }
        }
    }

    fn set_receiving(&mut self, idx: usize, on: bool) {
        if self.receiving[idx] == on {
            return;
        }
        self.receiving[idx] = on;
        let label = match (idx, self.key.1) {
            (0, _) => "audio",
            (_, StreamType::Screen) => "screen",
            _ => "video",
        };
        if on {
            self.inner.metrics.publisher_streams.inc(&[label]);
        } else {
            self.inner.metrics.publisher_streams.dec(&[label]);
        }
    }

    fn handle_event(&mut self, ev: Option<HandleEvent>) -> Flow {
        let Some(ev) = ev else { return Flow::Lost };
        tracing::trace!(session = %self.key.0, event = ?ev, "publisher event");
        match ev {
            HandleEvent::Trickle(c) => {
                self.listener
                    .on_ice_candidate(&*self.me, json!({ "candidate": candidate_json(&c) }));
                Flow::Continue
            }
            HandleEvent::TrickleCompleted => Flow::Continue,
            HandleEvent::WebrtcUp => {
                debug!(session = %self.key.0, stream = self.key.1.as_str(), "publisher connected");
                self.me.sending.store(true, Ordering::Release);
                self.inner.bump();
                Flow::Continue
            }
            HandleEvent::Media(m) => {
                let idx = if m.kind == "audio" { 0 } else { 1 };
                self.set_receiving(idx, m.receiving);
                Flow::Continue
            }
            HandleEvent::SlowLink(s) => {
                debug!(session = %self.key.0, uplink = s.uplink, lost = s.lost, "publisher slow link");
                Flow::Continue
            }
            HandleEvent::Event(e) => match videoroom::VideoRoomEvent::parse(&e) {
                Some(videoroom::VideoRoomEvent::Destroyed) => {
                    info!(session = %self.key.0, "publisher room destroyed, closing");
                    Flow::Close
                }
                other => {
                    debug!(session = %self.key.0, event = ?other, "publisher event");
                    Flow::Continue
                }
            },
            HandleEvent::Hangup { reason } => {
                info!(session = %self.key.0, stream = self.key.1.as_str(), %reason, "publisher hung up, closing");
                Flow::Close
            }
            HandleEvent::Detached => Flow::Close,
            HandleEvent::Gone(reason) => gone_flow(reason),
            HandleEvent::Lagged { missed } => {
                warn!(session = %self.key.0, missed, "publisher missed Janus events");
                Flow::Continue
            }
        }
    }

    async fn shutdown(mut self, conn: Option<PubConn>) {
        let timeout = self.inner.settings.timeout;
        if let Some(c) = conn {
            if let Err(e) = bounded(
                timeout,
                "destroy",
                videoroom::destroy_room(&c.handle, c.room),
            )
            .await
            {
                debug!(room = c.room, error = %e, "could not destroy publisher room");
            }
            let _ = bounded(timeout, "detach", c.handle.detach()).await;
        }
        self.set_receiving(0, false);
        self.set_receiving(1, false);
        release_publisher(&self.inner, &self.key, &self.me);
        self.inner.metrics.publishers.dec(&[self.key.1.as_str()]);
        info!(session = %self.key.0, stream = self.key.1.as_str(), "publisher closed");
        self.listener.publisher_closed(&*self.me);
    }
}
