//! One proxy's connection: connect, hello (or resume), relay requests and
//! replies, route what the proxy pushes, reconnect.

use super::*;

type ProxyWs =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One proxy's connection: connect, hello (or resume), relay, reconnect.
pub(super) async fn run_conn(
    conn: Arc<ProxyConn>,
    mut rx: mpsc::Receiver<(ProxyClientMessage, Option<Reply>)>,
    cancel: CancellationToken,
) {
    let url = format!("{}/proxy", conn.url);
    let mut session_id = String::new();
    let mut delay = Duration::from_secs(1);
    loop {
        let attempt = tokio_tungstenite::connect_async_tls_with_config(
            &url,
            None,
            false,
            Some(tokio_tungstenite::Connector::Rustls(
                conn.settings.tls.clone(),
            )),
        );
        let ws = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(Duration::from_secs(10), attempt) => r,
        };
        let mut ws = match ws {
            Ok(Ok((ws, _))) => ws,
            Ok(Err(e)) => {
                warn!(%url, error = %e, retry_in = ?delay, "cannot connect to MCU proxy");
                if !backoff(&cancel, &mut delay).await {
                    return;
                }
                continue;
            }
            Err(_) => continue,
        };
        match say_hello(&conn, &url, &mut ws, &mut session_id).await {
            Hello::Welcome => delay = Duration::from_secs(1),
            Hello::Again => continue,
            Hello::Refused => {
                if !backoff(&cancel, &mut delay).await {
                    return;
                }
                continue;
            }
        }
        conn.connected.store(true, Ordering::Release);
        if !relay(&conn, &url, &mut ws, &mut rx, &cancel).await {
            return;
        }
        conn.connected.store(false, Ordering::Release);
        warn!(%url, "lost the connection to the MCU proxy, reconnecting");
    }
}

/// Waits `delay` and doubles it (up to 16 s) for the next time; false when
/// cancelled meanwhile.
async fn backoff(cancel: &CancellationToken, delay: &mut Duration) -> bool {
    tokio::select! {
        _ = cancel.cancelled() => return false,
        _ = tokio::time::sleep(*delay) => {}
    }
    *delay = (*delay * 2).min(Duration::from_secs(16));
    true
}

/// How a hello went.
enum Hello {
    Welcome,
    /// Try again at once (the connection broke, or a new session is due).
    Again,
    /// Try again after the back-off.
    Refused,
}

/// Hello on a fresh connection: resume the old session if there is one.
async fn say_hello(
    conn: &Arc<ProxyConn>,
    url: &str,
    ws: &mut ProxyWs,
    session_id: &mut String,
) -> Hello {
    let hello = ProxyClientMessage {
        id: "hello".into(),
        kind: "hello".into(),
        hello: Some(HelloProxyClientMessage {
            version: HELLO_VERSION.into(),
            resumeid: session_id.clone(),
            features: Vec::new(),
            token: if session_id.is_empty() {
                conn.settings.token()
            } else {
                String::new()
            },
        }),
        ..Default::default()
    };
    let text = serde_json::to_string(&hello).unwrap_or_default();
    if ws.send(Message::text(text)).await.is_err() {
        return Hello::Again;
    }
    match hello_reply(ws, conn.settings.request_timeout * 5).await {
        Some(m) if m.kind == "hello" => {
            let server = m.hello.as_ref().and_then(|h| h.server.as_ref());
            *conn.country.lock() = server.map(|s| s.country.to_uppercase()).unwrap_or_default();
            *conn.features.lock() = server.map(|s| s.features.clone()).unwrap_or_default();
            let new_id = m.hello.map(|h| h.sessionid).unwrap_or_default();
            if new_id != *session_id && !session_id.is_empty() {
                lost_clients(conn);
            }
            *session_id = new_id;
            info!(%url, session = %session_id, "connected to MCU proxy");
            Hello::Welcome
        }
        Some(m) => {
            let code = m.error.as_ref().map(|e| e.code.clone()).unwrap_or_default();
            if code == "no_such_session" {
                // The proxy forgot us: start a new session.
                lost_clients(conn);
                session_id.clear();
                return Hello::Again;
            }
            warn!(%url, %code, "MCU proxy refused hello");
            Hello::Refused
        }
        None => Hello::Again,
    }
}

/// Relays requests and replies and routes what the proxy pushes until the
/// connection breaks (true) or the MCU stops (false).
async fn relay(
    conn: &Arc<ProxyConn>,
    url: &str,
    ws: &mut ProxyWs,
    rx: &mut mpsc::Receiver<(ProxyClientMessage, Option<Reply>)>,
    cancel: &CancellationToken,
) -> bool {
    let mut pending: HashMap<String, Reply> = HashMap::new();
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                let _ = ws.send(Message::Close(None)).await;
                conn.connected.store(false, Ordering::Release);
                return false;
            }
            _ = ping.tick() => {
                if ws.send(Message::Ping(Default::default())).await.is_err() {
                    return true;
                }
            }
            cmd = rx.recv() => {
                let Some((msg, reply)) = cmd else { return false };
                if !send_request(ws, &mut pending, msg, reply).await {
                    return true;
                }
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let Ok(msg) = serde_json::from_str::<ProxyServerMessage>(t.as_str()) else {
                        debug!(%url, "undecodable message from proxy");
                        continue;
                    };
                    if !msg.id.is_empty() {
                        if let Some(r) = pending.remove(&msg.id) {
                            let _ = r.send(msg);
                            continue;
                        }
                    }
                    if msg.kind == "bye" {
                        return true;
                    }
                    process_push(conn, msg);
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return true,
                Some(Ok(_)) => {}
            }
        }
    }
}

/// The proxy session is gone (proxy restarted): its clients are too.
pub(super) fn lost_clients(conn: &ProxyConn) {
    let mut clients: Vec<Arc<ProxyClient>> = conn.clients.lock().drain().map(|(_, c)| c).collect();
    // Lost already; asked to publish again now, wherever there is room.
    for c in std::mem::take(&mut *conn.lost_publishers.lock()) {
        c.listener.publisher_lost(&*c);
    }
    clients.retain(|c| !c.closed.load(Ordering::Acquire));
    for c in clients {
        c.closed.store(true, Ordering::Release);
        conn.shared.gone(&c);
        if c.info.publisher.is_some() {
            c.listener.subscriber_lost(&*c);
        } else {
            c.listener.publisher_lost(&*c);
        }
    }
}

/// Payloads and events the proxy sends on its own.
pub(super) fn process_push(conn: &ProxyConn, msg: ProxyServerMessage) {
    match (msg.kind.as_str(), msg.payload, msg.event) {
        ("payload", Some(p), _) => {
            let client = conn.clients.lock().get(&p.client_id).cloned();
            let Some(client) = client else { return };
            let payload = p.payload.unwrap_or(Value::Null);
            match p.kind.as_str() {
                "offer" => {
                    let offer = payload.get("offer").cloned().unwrap_or(Value::Null);
                    client.listener.on_update_offer(&*client, offer);
                }
                // `{"candidate": {...}}`, what the listener wants.
                "candidate" => client.listener.on_ice_candidate(&*client, payload),
                other => debug!(kind = other, "unsupported payload from proxy"),
            }
        }
        ("event", _, Some(e)) => match e.kind.as_str() {
            "update-load" => {
                conn.load.store(e.load, Ordering::Relaxed);
                *conn.bandwidth.lock() = e.bandwidth.unwrap_or_default();
            }
            "shutdown-scheduled" => {
                info!(url = %conn.url, "MCU proxy is draining: no new publishers there");
                conn.draining.store(true, Ordering::Release);
            }
            "backend-disconnected" => {
                // The Go proxy dropped all our publishers and subscribers
                // (its Janus went away) without telling about each.
                // Subscribers follow their publishers from now on; the
                // publishers' clients are asked to publish again once the
                // proxy has its media server back.
                info!(url = %conn.url, "MCU proxy lost its media server");
                let clients: Vec<Arc<ProxyClient>> =
                    conn.clients.lock().drain().map(|(_, c)| c).collect();
                for c in clients {
                    c.closed.store(true, Ordering::Release);
                    conn.shared.gone(&c);
                    if c.info.publisher.is_some() {
                        c.listener.subscriber_lost(&*c);
                    } else {
                        conn.lost_publishers.lock().push(c);
                    }
                }
            }
            "backend-connected" => {
                info!(url = %conn.url, "MCU proxy has its media server again");
                for c in std::mem::take(&mut *conn.lost_publishers.lock()) {
                    c.listener.publisher_lost(&*c);
                }
            }
            "subscriber-sid-updated" => {
                if let Some(c) = conn.clients.lock().get(&e.client_id) {
                    *c.info.sid.lock() = e.sid;
                }
            }
            "subscriber-stalled" => {
                let client = conn.clients.lock().get(&e.client_id).cloned();
                if let Some(c) = client {
                    c.listener.subscriber_stalled(&*c);
                }
            }
            "publisher-reset" => {
                let client = conn.clients.lock().get(&e.client_id).cloned();
                if let Some(c) = client {
                    c.listener.on_publisher_reset(&*c);
                }
            }
            "publisher-closed" | "subscriber-closed" => {
                let client = conn.clients.lock().remove(&e.client_id);
                if let Some(c) = client {
                    c.closed.store(true, Ordering::Release);
                    conn.shared.gone(&c);
                    if e.kind == "publisher-closed" {
                        c.listener.publisher_closed(&*c);
                    } else {
                        // Its publisher ended (or was replaced), or the
                        // proxy lost it: the session may follow.
                        c.listener.subscriber_lost(&*c);
                    }
                }
            }
            other => debug!(kind = other, "unsupported event from proxy"),
        },
        _ => {}
    }
}
