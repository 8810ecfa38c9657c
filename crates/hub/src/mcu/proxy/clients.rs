//! Publishers and subscribers on proxies: the [`Mcu`] interface, where each
//! goes (load, country, remote streams) and the client objects.

use super::*;

impl McuClient for ProxyClient {
    fn info(&self) -> &ClientInfo {
        &self.info
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if self.closed.swap(true, Ordering::AcqRel) {
                return;
            }
            let Some(conn) = self.conn.upgrade() else {
                return;
            };
            conn.clients.lock().remove(&self.proxy_id);
            conn.shared.gone(self);
            let kind = if self.info.publisher.is_some() {
                "delete-subscriber"
            } else {
                "delete-publisher"
            };
            let mut command = ProxyConn::command(kind);
            command.client_id = self.proxy_id.clone();
            let msg = ProxyClientMessage {
                kind: "command".into(),
                command: Some(command),
                ..Default::default()
            };
            if let Err(e) = conn.request(msg).await {
                debug!(error = %e, "could not delete proxy client");
            }
            if self.info.publisher.is_some() {
                self.listener.subscriber_closed(self);
            } else {
                self.listener.publisher_closed(self);
            }
        })
    }
    fn send_message(&self, msg: McuMessage, reply: Responder) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let Some(conn) = self.conn.upgrade() else {
                reply(Err(McuError::Closed));
                return;
            };
            let request = ProxyClientMessage {
                kind: "payload".into(),
                payload: Some(PayloadProxyClientMessage {
                    kind: msg.kind,
                    client_id: self.proxy_id.clone(),
                    sid: msg.sid,
                    payload: Some(msg.payload),
                }),
                ..Default::default()
            };
            let timeout = self.timeout;
            // Queued in order on the connection; the answer is awaited
            // apart so that the client's next message is not held up.
            let (tx, rx) = oneshot::channel();
            let mut request = request;
            request.id = (conn.next_msg.fetch_add(1, Ordering::Relaxed) + 1).to_string();
            if !conn.connected.load(Ordering::Acquire) {
                reply(Err(McuError::NotConnected));
                return;
            }
            if conn.cmd.send((request, Some(tx))).await.is_err() {
                reply(Err(McuError::Closed));
                return;
            }
            tokio::spawn(async move {
                let res = match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(m)) if m.kind == "error" => Err(McuError::InvalidPayload(
                        m.error.map(|e| e.to_string()).unwrap_or_default(),
                    )),
                    Ok(Ok(m)) => Ok(m.payload.and_then(|p| p.payload).filter(|v| !v.is_null())),
                    Ok(Err(_)) => Err(McuError::NotConnected),
                    Err(_) => Err(McuError::Timeout("proxy payload")),
                };
                reply(res);
            });
        })
    }
}

impl Inner {
    /// `create-subscriber` on `conn`, of the publisher `proxy_publisher`
    /// hosted by `home` (remote when they differ).
    /// Wait (up to the MCU timeout) for a local publisher.
    async fn wait_publisher(
        &self,
        publisher: &Arc<str>,
        stream: StreamType,
    ) -> Result<(Arc<ProxyConn>, String), McuError> {
        let key = (publisher.clone(), stream);
        let deadline = tokio::time::Instant::now() + self.settings.timeout;
        let shared = &self.shared;
        let mut changed = shared.changed.subscribe();
        let mut counted = false;
        loop {
            changed.borrow_and_update();
            if let Some(found) = shared.publishers.lock().get(&key).cloned() {
                return Ok(found);
            }
            if !counted {
                counted = true;
                shared.metrics.no_publisher_total.inc(&[stream.as_str()]);
            }
            match tokio::time::timeout_at(deadline, changed.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Err(McuError::Closed),
                Err(_) => return Err(McuError::Timeout("publisher")),
            }
        }
    }

    /// Subscribe to a publisher on `conn`: there, or through a remote
    /// stream on a proxy nearer the subscriber.
    async fn subscribe_at(
        &self,
        conn: &Arc<ProxyConn>,
        proxy_publisher: &str,
        publisher: &str,
        stream: StreamType,
        country: Option<&str>,
        continents: &[String],
    ) -> Result<(Arc<ProxyConn>, CommandProxyServerMessage), McuError> {
        if let Some(near) = self.remote_for(conn, country, continents) {
            match self
                .create_subscriber(&near, Some(&conn.url), proxy_publisher, stream)
                .await
            {
                Ok(c) => {
                    info!(publisher = %publisher, from = %conn.url, via = %near.url, "subscribing through a remote stream");
                    self.shared
                        .metrics
                        .remote_subscribers_total
                        .inc(&[stream.as_str()]);
                    return Ok((near, c));
                }
                Err(e) => {
                    warn!(url = %near.url, error = %e, "remote stream refused, subscribing at the publisher's proxy")
                }
            }
        }
        let c = self
            .create_subscriber(conn, None, proxy_publisher, stream)
            .await?;
        Ok((conn.clone(), c))
    }

    /// Clustering: the publisher is on another signaling server. Its proxy
    /// is usually in our pool too; if not, one of ours fetches the stream
    /// from it (remote streams).
    async fn subscribe_elsewhere(
        &self,
        loc: &ProxyLocation,
        publisher: &str,
        stream: StreamType,
        country: Option<&str>,
        continents: &[String],
    ) -> Result<(Arc<ProxyConn>, CommandProxyServerMessage), McuError> {
        let same = |u: &str| u.trim_end_matches('/') == loc.url.trim_end_matches('/');
        let mine = self.conns.read().iter().find(|c| same(&c.url)).cloned();
        if let Some(conn) = mine {
            return self
                .subscribe_at(&conn, &loc.id, publisher, stream, country, continents)
                .await;
        }
        let near = self
            .candidates(country, continents)
            .into_iter()
            .find(|c| c.features.lock().iter().any(|f| f == "remote-streams"))
            .ok_or(McuError::NotFound)?;
        let c = self
            .create_subscriber(&near, Some(&loc.url), &loc.id, stream)
            .await?;
        info!(publisher = %publisher, from = %loc.url, via = %near.url, "subscribing to another server's publisher through a remote stream");
        self.shared
            .metrics
            .remote_subscribers_total
            .inc(&[stream.as_str()]);
        Ok((near, c))
    }

    /// A subscriber on `conn` of `proxy_publisher`, which streams on `conn`
    /// itself or (a remote stream) on the proxy at `home_url`.
    async fn create_subscriber(
        &self,
        conn: &Arc<ProxyConn>,
        home_url: Option<&str>,
        proxy_publisher: &str,
        stream: StreamType,
    ) -> Result<CommandProxyServerMessage, McuError> {
        let mut command = ProxyConn::command("create-subscriber");
        command.publisher_id = proxy_publisher.to_owned();
        command.stream_type = stream.as_str().into();
        if let Some(home) = home_url {
            // Resolved like a relative link `proxy` by the other proxy.
            command.remote_url = format!("{}/", home.trim_end_matches('/'));
            command.remote_token = self.settings.token_for(proxy_publisher);
        }
        let msg = ProxyClientMessage {
            kind: "command".into(),
            command: Some(command),
            ..Default::default()
        };
        Ok(conn.request(msg).await?.command.unwrap_or_default())
    }
}

impl ProxyMcu {
    /// One attempt at `create-publisher`, on the best proxy that accepts.
    async fn try_new_publisher(
        &self,
        listener: &Arc<dyn McuListener>,
        params: &PublisherParams,
        bitrate: u64,
    ) -> Result<Arc<dyn McuClient>, McuError> {
        let inner = &self.inner;
        let mut last = McuError::NotConnected;
        for conn in inner.candidates(params.country.as_deref(), &params.continents) {
            let mut command = ProxyConn::command("create-publisher");
            command.sid = params.sid.clone();
            command.stream_type = params.stream.as_str().into();
            command.bitrate = bitrate;
            command.mediatypes = params.media.0 as u32;
            let msg = ProxyClientMessage {
                kind: "command".into(),
                command: Some(command),
                ..Default::default()
            };
            let reply = match conn.request(msg).await {
                Ok(r) => r,
                Err(e) => {
                    warn!(url = %conn.url, error = %e, "proxy could not create publisher, trying the next");
                    last = e;
                    continue;
                }
            };
            let proxy_id = reply.command.map(|c| c.id).unwrap_or_default();
            let client = Arc::new(ProxyClient {
                info: ClientInfo::new(
                    inner.next_id.fetch_add(1, Ordering::Relaxed) + 1,
                    params.stream,
                    params.sid.clone(),
                    None,
                    params.media,
                ),
                proxy_id: proxy_id.clone(),
                conn: Arc::downgrade(&conn),
                listener: listener.clone(),
                closed: AtomicBool::new(false),
                timeout: inner.settings.timeout,
            });
            conn.clients.lock().insert(proxy_id.clone(), client.clone());
            let shared = &inner.shared;
            shared
                .publishers
                .lock()
                .insert((params.id.clone(), params.stream), (conn.clone(), proxy_id));
            shared.changed.send_modify(|n| *n = n.wrapping_add(1));
            let labels = [params.stream.as_str()];
            shared.metrics.publishers.inc(&labels);
            shared.metrics.publishers_total.inc(&labels);
            info!(session = %params.id, url = %conn.url, "publishing through proxy");
            return Ok(client as Arc<dyn McuClient>);
        }
        Err(last)
    }
}

impl Mcu for ProxyMcu {
    fn new_publisher(
        &self,
        listener: Arc<dyn McuListener>,
        params: PublisherParams,
    ) -> BoxFuture<'_, Result<Arc<dyn McuClient>, McuError>> {
        Box::pin(async move {
            let inner = &self.inner;
            let cap = match params.stream {
                StreamType::Video => inner.settings.max_stream_bitrate,
                StreamType::Screen => inner.settings.max_screen_bitrate,
            };
            let bitrate = crate::mcu::cap_bitrate(params.bitrate, cap);
            // No proxy (or none with its media server) right now: hold the
            // offer a moment, a restarting one is usually back soon.
            let hold_until = tokio::time::Instant::now() + crate::mcu::DOWN_HOLD;
            loop {
                match self.try_new_publisher(&listener, &params, bitrate).await {
                    Err(e) if tokio::time::Instant::now() < hold_until => {
                        debug!(error = %e, "no proxy could create the publisher yet, holding the offer");
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                    res => return res,
                }
            }
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
                country,
                continents,
                location,
            } = params;
            let inner = &self.inner;
            let shared = &inner.shared;
            let (conn, c) = match location.as_ref().and_then(ProxyLocation::parse) {
                Some(loc) => {
                    inner
                        .subscribe_elsewhere(
                            &loc,
                            &publisher,
                            stream,
                            country.as_deref(),
                            &continents,
                        )
                        .await?
                }
                None => {
                    let (conn, proxy_publisher) = inner.wait_publisher(&publisher, stream).await?;
                    inner
                        .subscribe_at(
                            &conn,
                            &proxy_publisher,
                            &publisher,
                            stream,
                            country.as_deref(),
                            &continents,
                        )
                        .await?
                }
            };
            let id = inner.next_id.fetch_add(1, Ordering::Relaxed) + 1;
            // Proxies before 11fa78b (Debian's Go 0.4.1) name no sid for a
            // subscriber; clients still need one to tell this subscriber's
            // offer from an earlier one's, so it gets one of ours (the
            // proxy ignores the sid of such a client's messages).
            let sid = if c.sid.is_empty() {
                format!("{}-{id}", c.id)
            } else {
                c.sid
            };
            let client = Arc::new(ProxyClient {
                info: ClientInfo::new(id, stream, sid, Some(publisher), MediaTypes::default()),
                proxy_id: c.id.clone(),
                conn: Arc::downgrade(&conn),
                listener,
                closed: AtomicBool::new(false),
                timeout: inner.settings.timeout,
            });
            conn.clients.lock().insert(c.id, client.clone());
            let labels = [stream.as_str()];
            shared.metrics.subscribers.inc(&labels);
            shared.metrics.subscribers_total.inc(&labels);
            Ok(client as Arc<dyn McuClient>)
        })
    }

    fn publisher_location(
        &self,
        publisher: &str,
        stream: StreamType,
    ) -> BoxFuture<'_, Option<Value>> {
        let publisher: Arc<str> = Arc::from(publisher);
        Box::pin(async move {
            let (conn, id) = self.inner.wait_publisher(&publisher, stream).await.ok()?;
            Some(json!({"proxy": conn.url, "id": id}))
        })
    }

    fn stats(&self) -> Value {
        let conns = self.inner.conns.read().clone();
        let proxies: Vec<Value> = conns
            .iter()
            .map(|c| {
                json!({
                    "url": c.url,
                    "connected": c.connected.load(Ordering::Acquire),
                    "load": c.load.load(Ordering::Relaxed),
                    "bandwidth": *c.bandwidth.lock(),
                    "country": c.country.lock().clone(),
                    "shutdown": c.draining.load(Ordering::Acquire),
                    "clients": c.clients.lock().len(),
                })
            })
            .collect();
        let mut out = Map::new();
        out.insert("type".into(), "proxy".into());
        out.insert(
            "connected".into(),
            conns
                .iter()
                .any(|c| c.connected.load(Ordering::Acquire))
                .into(),
        );
        out.insert(
            "publishers".into(),
            self.inner.shared.publishers.lock().len().into(),
        );
        out.insert("proxies".into(), Value::Array(proxies));
        Value::Object(out)
    }

    fn timeout(&self) -> Duration {
        self.inner.settings.timeout
    }

    /// SIGHUP: connect to added proxy URLs; removed ones get no new
    /// publishers and are disconnected once their last stream is gone.
    fn reload(&self, ini: &runtime::config::Ini) {
        if self.inner.settings.etcd.is_some() {
            return;
        }
        match parse_urls(&ini.get_string("mcu", "url", "")) {
            Ok(urls) if self.inner.settings.dns_discovery => {
                *self.inner.dns_urls.lock() = urls;
                self.inner.dns_changed.notify_one();
            }
            Ok(urls) => self.inner.set_urls(&urls),
            Err(e) => warn!(error = %e, "keeping the old proxy URLs"),
        }
    }

    fn stop(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let conns = self.inner.conns.read().clone();
            let all: Vec<Arc<ProxyClient>> = conns
                .iter()
                .flat_map(|c| c.clients.lock().values().cloned().collect::<Vec<_>>())
                .collect();
            for c in all {
                c.close().await;
            }
            self.inner.cancel.cancel();
        })
    }
}
