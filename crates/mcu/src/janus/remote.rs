//! Remote streams (Janus >= 1.1): a publisher's media sent to a remote
//! publisher on another Janus, and remote publishers here.

use super::*;

/// A publisher in this Janus fed by another Janus (remote streams: a proxy
/// serving subscribers of a publisher hosted elsewhere). Subscribers find
/// it under its id like a local publisher. Ends with [`close`](Self::close)
/// or when Janus goes away; its subscribers are closed then.
pub struct RemotePublisher {
    obj: Arc<ClientObj>,
    pub endpoint: videoroom::RemoteEndpoint,
}

impl RemotePublisher {
    pub async fn close(&self) {
        self.obj.close().await;
    }

    /// Whether it ended (closed, or Janus went away).
    pub fn is_closed(&self) -> bool {
        self.obj.cmd.is_closed()
    }
}

impl JanusMcu {
    /// Whether the connected Janus can send and receive remote streams.
    pub fn supports_remote_streams(&self) -> bool {
        self.inner
            .live
            .borrow()
            .as_ref()
            .is_some_and(|l| l.remote_publishers)
    }

    fn publisher(&self, id: &str, stream: StreamType) -> Result<Arc<ClientObj>, McuError> {
        self.inner
            .reg
            .lock()
            .publishers
            .get(&(Arc::from(id), stream))
            .cloned()
            .ok_or(McuError::NotFound)
    }

    /// The streams of local publisher `id` in the form
    /// [`add_remote_publisher`](Self::add_remote_publisher) takes, waiting
    /// (up to the MCU timeout) for its first offer.
    pub async fn publisher_streams(&self, id: &str, stream: StreamType) -> Result<Value, McuError> {
        let deadline = Instant::now() + self.inner.settings.timeout;
        let mut changed = self.inner.changed.subscribe();
        loop {
            changed.borrow_and_update();
            if let Some(streams) = self.publisher(id, stream)?.streams.lock().clone() {
                return Ok(streams);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(McuError::Closed),
                Err(_) => return Err(McuError::Timeout("publisher offer")),
            }
        }
    }

    async fn remote_op(&self, id: &str, stream: StreamType, op: RemoteOp) -> Result<(), McuError> {
        let p = self.publisher(id, stream)?;
        let (tx, rx) = oneshot::channel();
        p.cmd
            .send(Cmd::Remote(op, tx))
            .await
            .map_err(|_| McuError::Closed)?;
        rx.await.map_err(|_| McuError::Closed)?
    }

    /// Start sending local publisher `id`'s media to a remote publisher at
    /// `host`:`port` (another Janus), under `remote_id`.
    pub async fn publish_remotely(
        &self,
        id: &str,
        stream: StreamType,
        remote_id: String,
        host: String,
        port: u16,
        rtcp_port: u16,
    ) -> Result<(), McuError> {
        let op = RemoteOp::Publish {
            remote_id,
            host,
            port,
            rtcp_port,
        };
        self.remote_op(id, stream, op).await
    }

    pub async fn unpublish_remotely(
        &self,
        id: &str,
        stream: StreamType,
        remote_id: String,
    ) -> Result<(), McuError> {
        self.remote_op(id, stream, RemoteOp::Unpublish { remote_id })
            .await
    }

    /// A publisher `id` in a room of its own in this Janus, fed with RTP by
    /// another Janus: `streams` as [`publisher_streams`](Self::publisher_streams)
    /// returned them there.
    pub async fn add_remote_publisher(
        &self,
        id: Arc<str>,
        stream: StreamType,
        streams: Value,
        bitrate: u64,
    ) -> Result<RemotePublisher, McuError> {
        let inner = &self.inner;
        let live = inner.live()?;
        if !live.remote_publishers {
            return Err(McuError::Unsupported("remote streams (Janus < 1.1)".into()));
        }
        let timeout = inner.settings.timeout;
        let (handle, events) =
            bounded(timeout, "attach", live.session.attach(videoroom::PLUGIN)).await?;
        let mut create =
            CreateRoom::for_stream(format!("{id}|{}|remote", stream.as_str()), bitrate);
        let codecs = |kind: &str| {
            let list: Vec<&str> = streams
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .filter(|s| s["type"] == kind)
                .filter_map(|s| s["codec"].as_str())
                .collect();
            (!list.is_empty()).then(|| list.join(","))
        };
        create.audiocodec = codecs("audio");
        create.videocodec = codecs("video");
        let made = async {
            let room = videoroom::create_room(&handle, &create).await?;
            match videoroom::add_remote_publisher(&handle, room, stream.feed_id(), &streams).await {
                Ok(endpoint) => Ok((room, endpoint)),
                Err(e) => {
                    let _ = videoroom::destroy_room(&handle, room).await;
                    Err(e)
                }
            }
        };
        let (room, endpoint) = match bounded(timeout, "add_remote_publisher", made).await {
            Ok(r) => r,
            Err(e) => {
                let _ = bounded(timeout, "detach", handle.detach()).await;
                return Err(e);
            }
        };
        let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
        let obj = Arc::new(ClientObj {
            info: ClientInfo::new(
                inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                stream,
                String::new(),
                None,
                MediaTypes::default(),
            ),
            room: AtomicU64::new(room),
            // Subscribers may join at once: Janus announces the remote
            // publisher before any RTP arrives.
            sending: AtomicBool::new(true),
            streams: Mutex::new(Some(streams)),
            cmd: tx,
            timeout,
        });
        let key = (id.clone(), stream);
        let old = inner.reg.lock().publishers.insert(key.clone(), obj.clone());
        if let Some(old) = old {
            let _ = old.cmd.try_send(Cmd::Close(oneshot::channel().0));
        }
        inner.bump();
        info!(publisher = %id, stream = stream.as_str(), room, port = endpoint.port, "remote publisher created");
        let task = RemotePublisherTask {
            inner: inner.clone(),
            me: obj.clone(),
            key,
        };
        tokio::spawn(task.run(
            PubConn {
                handle,
                events,
                room,
            },
            rx,
        ));
        Ok(RemotePublisher { obj, endpoint })
    }
}

pub(super) struct RemotePublisherTask {
    pub(super) inner: Arc<Inner>,
    pub(super) me: Arc<ClientObj>,
    pub(super) key: PubKey,
}

impl RemotePublisherTask {
    pub(super) async fn run(self, mut conn: PubConn, mut rx: mpsc::Receiver<Cmd>) {
        let mut done = None;
        let mut lost = false;
        loop {
            tokio::select! {
                cmd = rx.recv() => match cmd {
                    None => break,
                    Some(Cmd::Close(tx)) => { done = Some(tx); break }
                    Some(Cmd::PublisherGone) => {}
                    Some(Cmd::Message(_, reply)) => reply(Err(McuError::Unsupported("messages to a remote publisher".into()))),
                    Some(Cmd::Remote(_, reply)) => {
                        let _ = reply.send(Err(McuError::Unsupported("remote publishing of a remote publisher".into())));
                    }
                },
                ev = conn.events.recv() => match ev {
                    None | Some(HandleEvent::Gone(_)) => { lost = true; break }
                    Some(HandleEvent::Detached) => break,
                    Some(HandleEvent::Event(e)) if matches!(videoroom::VideoRoomEvent::parse(&e), Some(videoroom::VideoRoomEvent::Destroyed)) => break,
                    Some(_) => {}
                },
            }
        }
        rx.close();
        if !lost {
            let timeout = self.inner.settings.timeout;
            let feed = self.key.1.feed_id();
            let _ = bounded(
                timeout,
                "remove_remote_publisher",
                videoroom::remove_remote_publisher(&conn.handle, conn.room, feed),
            )
            .await;
            let _ = bounded(
                timeout,
                "destroy",
                videoroom::destroy_room(&conn.handle, conn.room),
            )
            .await;
            let _ = bounded(timeout, "detach", conn.handle.detach()).await;
        }
        release_publisher(&self.inner, &self.key, &self.me);
        info!(publisher = %self.key.0, stream = self.key.1.as_str(), "remote publisher closed");
        if let Some(tx) = done {
            let _ = tx.send(());
        }
    }
}
