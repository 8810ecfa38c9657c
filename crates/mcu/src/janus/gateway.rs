//! The connection to Janus (one supervisor task per MCU) and the [`Mcu`]
//! interface: creating publishers and subscribers.

use super::*;

/// Owns the gateway: connects, keeps one session per epoch, publishes it.
pub(super) async fn supervise(inner: Arc<Inner>) {
    let url = inner.settings.url.clone();
    let mut delay = Duration::from_secs(1);
    let gateway = loop {
        let attempt = Gateway::connect_with(&url, inner.settings.gateway.clone());
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            res = attempt => match res {
                Ok(g) => break g,
                Err(e) => {
                    warn!(%url, error = %e, retry_in = ?delay, "cannot connect to Janus");
                }
            }
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
        delay = (delay * 2).min(CONNECT_BACKOFF_MAX);
    };
    let mut state = gateway.state();
    let mut current: Option<u64> = None;
    loop {
        let st = state.borrow_and_update().clone();
        match st {
            ConnectionState::Connected { epoch, info } if current != Some(epoch) => {
                match info.check_mcu_requirements() {
                    Err(e) => warn!(%url, error = %e, "Janus is not usable as MCU"),
                    Ok(w) if w.full_trickle_disabled => {
                        warn!(%url, "full-trickle is disabled in Janus, call set-up will be slow")
                    }
                    Ok(_) => {}
                }
                match gateway.create_session().await {
                    Ok(session) => {
                        info!(%url, epoch, version = %info.version_string, session = session.id(), "connected to Janus");
                        if current.is_some() {
                            inner.metrics.janus_reconnects.inc();
                        }
                        current = Some(epoch);
                        inner.metrics.janus_connected.set(1);
                        inner.live.send_replace(Some(Live {
                            session,
                            generation: info.api_generation(),
                            since: SystemTime::now(),
                            version: info.version_string.clone(),
                            remote_publishers: info.has_remote_publishers(),
                        }));
                    }
                    Err(e) => {
                        warn!(%url, error = %e, "cannot create Janus session, retrying");
                        tokio::select! {
                            _ = inner.cancel.cancelled() => break,
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                        continue;
                    }
                }
            }
            ConnectionState::Connected { .. } => {}
            ConnectionState::Disconnected {
                reason, retry_in, ..
            } => {
                if inner.live.borrow().is_some() {
                    warn!(%url, %reason, ?retry_in, "lost the connection to Janus");
                }
                inner.metrics.janus_connected.set(0);
                inner.live.send_replace(None);
            }
            ConnectionState::Closed => break,
        }
        tokio::select! {
            _ = inner.cancel.cancelled() => break,
            r = state.changed() => if r.is_err() { break },
        }
    }
    inner.metrics.janus_connected.set(0);
    inner.live.send_replace(None);
    gateway.close().await;
}

impl Mcu for JanusMcu {
    fn new_publisher(
        &self,
        listener: Arc<dyn McuListener>,
        params: PublisherParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let cap = inner.settings.max_bitrate(params.stream);
            let bitrate = crate::cap_bitrate(params.bitrate, cap);
            // Janus away (restarting): hold the offer a moment.
            let live = inner
                .wait_live(None, Instant::now() + inner.settings.down_hold)
                .await
                .map_err(|_| McuError::NotConnected)?;
            let setup = PublisherSetup {
                id: params.id.clone(),
                stream: params.stream,
                bitrate,
                codecs: params.codecs.clone(),
            };
            let conn = tokio::time::timeout(inner.settings.timeout, setup.run(&live))
                .await
                .map_err(|_| McuError::Timeout("publisher set-up"))??;
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let obj = Arc::new(ClientObj {
                info: ClientInfo::new(
                    inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                    params.stream,
                    params.sid.clone(),
                    None,
                    params.media,
                ),
                room: AtomicU64::new(conn.room),
                sending: AtomicBool::new(false),
                streams: Mutex::new(None),
                cmd: tx,
                timeout: inner.settings.timeout,
            });
            let key = (params.id.clone(), params.stream);
            let old = inner.reg.lock().publishers.insert(key.clone(), obj.clone());
            if let Some(old) = old {
                // The session replaced its publisher; the old one goes.
                let _ = old.cmd.try_send(Cmd::Close(oneshot::channel().0));
            }
            inner.bump();
            let labels = [params.stream.as_str()];
            inner.metrics.publishers.inc(&labels);
            inner.metrics.publishers_total.inc(&labels);
            info!(session = %params.id, stream = params.stream.as_str(), room = conn.room, handle = conn.handle.id(), bitrate, "publisher created");
            let task = PublisherTask {
                inner: inner.clone(),
                me: obj.clone(),
                listener: listener.clone(),
                key,
                setup,
                receiving: [false; 2],
            };
            tokio::spawn(task.run(conn, rx));
            Ok(obj as Arc<dyn McuClient>)
        })
    }

    fn new_subscriber(
        &self,
        listener: Arc<dyn McuListener>,
        params: SubscriberParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>> {
        Box::pin(async move {
            let SubscriberParams {
                publisher,
                stream,
                location,
                ..
            } = params;
            let inner = &self.inner;
            let deadline = Instant::now() + inner.settings.timeout;
            let key = (publisher.clone(), stream);
            // Clustering: another signaling server's publisher, on this
            // same Janus (a different Janus cannot be reached).
            let known_room: RoomId = match &location {
                Some(loc) => {
                    if loc.get("janus").and_then(Value::as_str) != Some(inner.settings.url.as_str())
                    {
                        return Err(McuError::NotFound);
                    }
                    loc.get("room")
                        .and_then(Value::as_u64)
                        .ok_or(McuError::NotFound)?
                }
                None => 0,
            };
            // Wait for the publisher to exist (it may still be setting up).
            let mut changed = inner.changed.subscribe();
            let mut counted = false;
            if known_room == 0 {
                loop {
                    changed.borrow_and_update();
                    if inner.reg.lock().publishers.contains_key(&key) {
                        break;
                    }
                    if !counted {
                        counted = true;
                        inner.metrics.no_publisher_total.inc(&[stream.as_str()]);
                    }
                    match tokio::time::timeout_at(deadline, changed.changed()).await {
                        Ok(Ok(())) => {}
                        Ok(Err(_)) => return Err(McuError::Closed),
                        Err(_) => return Err(McuError::Timeout("publisher")),
                    }
                }
            }
            // Janus away (restarting): wait for it within the timeout.
            let live = inner
                .wait_live(
                    None,
                    deadline.min(Instant::now() + inner.settings.down_hold),
                )
                .await
                .map_err(|_| McuError::NotConnected)?;
            let (handle, events) =
                tokio::time::timeout_at(deadline, live.session.attach(videoroom::PLUGIN))
                    .await
                    .map_err(|_| McuError::Timeout("attach"))??;
            let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
            let obj = Arc::new(ClientObj {
                info: ClientInfo::new(
                    inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                    stream,
                    handle.id().to_string(),
                    Some(publisher.clone()),
                    MediaTypes::default(),
                ),
                room: AtomicU64::new(0),
                sending: AtomicBool::new(false),
                streams: Mutex::new(None),
                cmd: tx,
                timeout: inner.settings.timeout,
            });
            inner
                .reg
                .lock()
                .subscribers
                .insert(obj.info.id, obj.clone());
            let labels = [stream.as_str()];
            inner.metrics.subscribers.inc(&labels);
            inner.metrics.subscribers_total.inc(&labels);
            debug!(publisher = %publisher, stream = stream.as_str(), handle = handle.id(), "subscriber created");
            let task = SubscriberTask {
                inner: inner.clone(),
                me: obj.clone(),
                known_room,
                listener: listener.clone(),
                key,
                room: 0,
                joined: false,
                generation: live.generation,
            };
            tokio::spawn(task.run(SubConn { handle, events }, rx));
            Ok(obj as Arc<dyn McuClient>)
        })
    }

    fn publisher_location(
        &self,
        publisher: &str,
        stream: StreamType,
    ) -> BoxFuture<'_, Option<Value>> {
        let key: PubKey = (Arc::from(publisher), stream);
        Box::pin(async move {
            let inner = &self.inner;
            let deadline = Instant::now() + inner.settings.timeout;
            let mut changed = inner.changed.subscribe();
            loop {
                changed.borrow_and_update();
                let room = inner
                    .reg
                    .lock()
                    .publishers
                    .get(&key)
                    .map(|p| p.room.load(Ordering::Acquire))
                    .unwrap_or(0);
                if room != 0 {
                    return Some(json!({"janus": inner.settings.url, "room": room}));
                }
                tokio::time::timeout_at(deadline, changed.changed())
                    .await
                    .ok()?
                    .ok()?;
            }
        })
    }

    fn stats(&self) -> Value {
        let inner = &self.inner;
        let reg = inner.reg.lock();
        let mut out = Map::new();
        out.insert("url".into(), inner.settings.url.clone().into());
        let live = inner.live.borrow().clone();
        out.insert("connected".into(), live.is_some().into());
        out.insert("publishers".into(), reg.publishers.len().into());
        out.insert(
            "clients".into(),
            (reg.publishers.len() + reg.subscribers.len()).into(),
        );
        if let Some(live) = live {
            out.insert("uptime".into(), rfc3339(live.since).into());
            out.insert("version".into(), live.version.into());
        }
        Value::Object(out)
    }

    fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let all: Vec<Arc<ClientObj>> = {
                let reg = self.inner.reg.lock();
                reg.subscribers
                    .values()
                    .chain(reg.publishers.values())
                    .cloned()
                    .collect()
            };
            for c in all {
                c.close().await;
            }
            self.inner.cancel.cancel();
        })
    }
}

/// `t` as RFC 3339 UTC with nanoseconds, as upstream writes times in stats.
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let s = secs.rem_euclid(86_400);
    format!(
        "{}T{:02}:{:02}:{:02}.{:09}Z",
        runtime::dates::date(secs),
        s / 3600,
        (s / 60) % 60,
        s % 60,
        d.subsec_nanos()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_times_are_rfc3339_with_nanoseconds() {
        let t = SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5);
        assert_eq!(rfc3339(t), "2023-11-14T22:13:20.000000005Z");
        assert_eq!(
            rfc3339(SystemTime::UNIX_EPOCH),
            "1970-01-01T00:00:00.000000000Z"
        );
    }
}
