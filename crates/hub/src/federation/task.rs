//! The task owning one federated session's connection to the remote
//! server: connect, hello, join, pass messages both ways, reconnect.

use super::*;

pub(super) struct Task {
    pub(super) id: u64,
    pub(super) session: Weak<ClientSession>,
    pub(super) local_id: String,
    /// `host/path` of the local and remote Nextcloud, for actor ids.
    pub(super) local_cloud: String,
    pub(super) remote_cloud: String,
    pub(super) features: Vec<String>,
    pub(super) fed: RoomFederationMessage,
    pub(super) room_id: String,
    pub(super) remote_room_id: String,
    pub(super) room_session_id: String,
    /// Id of the client's join request until the remote answered it.
    pub(super) join_id: Option<String>,
    pub(super) resume_id: Option<String>,
    /// The remote session id, while the remote session is established.
    pub(super) remote_id: Option<String>,
    pub(super) reconnecting: bool,
    pub(super) close_on_leave: bool,
    /// A message whose write failed, sent again after a resume.
    pub(super) retry: Option<String>,
}

impl Task {
    pub(super) async fn run(mut self, mut rx: mpsc::Receiver<Command>, cancel: CancellationToken) {
        let Some(url) = websocket_url(&self.fed.signaling) else {
            self.fail(federation_error("invalid_url", "Invalid signaling URL."));
            return;
        };
        let mut delay = INITIAL_RECONNECT;
        let mut connected_once = false;
        loop {
            let dial = tokio::time::timeout(CONNECT_TIMEOUT, connect(&url));
            let res = tokio::select! {
                _ = cancel.cancelled() => break,
                r = dial => r,
            };
            let res = match res {
                Ok(Ok(ws)) => Ok(ws),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(ConnectError::Network("connection timed out".into())),
            };
            match res {
                Ok(ws) => {
                    connected_once = true;
                    match self.session_loop(ws, &mut rx, &cancel).await {
                        End::Closed => break,
                        End::Dropped => {}
                    }
                    if self.remote_id.take().is_some() {
                        delay = INITIAL_RECONNECT;
                        self.send_event("federation_interrupted", None);
                    }
                    self.reconnecting = true;
                }
                Err(ConnectError::Unsupported) => {
                    self.fail(err_federation_unsupported());
                    break;
                }
                Err(ConnectError::Network(e)) if !connected_once => {
                    info!(session = %self.local_id, url = %url, error = %e, "could not connect to federated server");
                    let mut err = federation_error("", "");
                    err.message = "Failed to create federation client.".into();
                    err.details = Some(json!({"code": "network_error", "message": e}));
                    self.fail(err);
                    break;
                }
                Err(ConnectError::Network(e)) => {
                    debug!(session = %self.local_id, url = %url, error = %e, "federated server still unreachable");
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
            delay = (delay * 2).min(MAX_RECONNECT);
        }
        if let Some(s) = self.session.upgrade() {
            s.federation_ended(self.id);
        }
    }

    /// One remote connection, from hello until it ends.
    pub(super) async fn session_loop(
        &mut self,
        ws: Ws,
        rx: &mut mpsc::Receiver<Command>,
        cancel: &CancellationToken,
    ) -> End {
        let (mut sink, mut stream) = ws.split();
        let mut hello_id = String::new();
        let mut ping = tokio::time::interval(PING_INTERVAL);
        ping.tick().await;
        let end = loop {
            let ready = self.remote_id.is_some();
            tokio::select! {
                _ = cancel.cancelled() => {
                    let _ = sink.send(Message::text(r#"{"type":"bye","bye":{}}"#)).await;
                    break End::Closed;
                }
                cmd = rx.recv(), if ready => {
                    let text = match cmd {
                        None => {
                            let _ = sink.send(Message::text(r#"{"type":"bye","bye":{}}"#)).await;
                            break End::Closed;
                        }
                        Some(Command::Send(t)) => self.rewrite_outgoing(t),
                        Some(Command::Leave(t)) => {
                            self.close_on_leave = true;
                            t
                        }
                    };
                    if sink.send(Message::text(text.clone())).await.is_err() {
                        self.retry = Some(text);
                        break End::Dropped;
                    }
                }
                _ = ping.tick() => {
                    let now = crate::bus::now_nanos().to_string();
                    if sink.send(Message::Ping(now.into_bytes().into())).await.is_err() {
                        break End::Dropped;
                    }
                }
                frame = tokio::time::timeout(READ_TIMEOUT, stream.next()) => {
                    let text = match frame {
                        Ok(Some(Ok(Message::Text(t)))) => t,
                        Ok(Some(Ok(Message::Close(_)))) | Ok(None) | Ok(Some(Err(_))) | Err(_) => {
                            break End::Dropped;
                        }
                        Ok(Some(Ok(_))) => continue,
                    };
                    let Ok(v) = serde_json::from_str::<Value>(&text) else {
                        debug!(session = %self.local_id, "undecodable message from federated server");
                        continue;
                    };
                    let step = if self.remote_id.is_some() {
                        self.process_message(v)
                    } else {
                        self.process_hello(v, &mut hello_id)
                    };
                    match step {
                        Step::Continue => {}
                        Step::Send(out) => {
                            for t in out {
                                if sink.send(Message::text(t)).await.is_err() {
                                    break;
                                }
                            }
                        }
                        Step::Close => {
                            let _ = sink.send(Message::text(r#"{"type":"bye","bye":{}}"#)).await;
                            break End::Closed;
                        }
                    }
                }
            }
        };
        let _ = sink.close().await;
        end
    }

    pub(super) fn hello(&self, hello_id: &mut String) -> String {
        *hello_id = random_id();
        let mut hello =
            json!({"version": proto::client::HELLO_VERSION_V2, "features": self.features});
        match &self.resume_id {
            Some(r) => hello["resumeid"] = json!(r),
            None => {
                hello["auth"] = json!({"type": proto::client::CLIENT_TYPE_FEDERATION,
                    "url": self.fed.url, "params": {"token": self.fed.token}})
            }
        }
        json!({"id": hello_id, "type": "hello", "hello": hello}).to_string()
    }

    pub(super) fn join(&self) -> String {
        let mut room = json!({"roomid": self.remote_room_id});
        if !self.room_session_id.is_empty() {
            room["sessionid"] = json!(self.room_session_id);
        }
        let mut m = json!({"type": "room", "room": room});
        if let Some(id) = self.join_id.as_ref().filter(|i| !i.is_empty()) {
            m["id"] = json!(id);
        }
        m.to_string()
    }

    pub(super) fn process_hello(&mut self, v: Value, hello_id: &mut String) -> Step {
        let kind = v["type"].as_str().unwrap_or_default();
        if kind == "welcome" {
            let has = v["welcome"]["features"]
                .as_array()
                .is_some_and(|f| f.iter().any(|x| x == proto::client::FEATURE_FEDERATION));
            if !has {
                self.fail(err_federation_unsupported());
                return Step::Close;
            }
            return Step::Send(vec![self.hello(hello_id)]);
        }
        if v["id"].as_str() != Some(hello_id.as_str()) {
            return Step::Send(vec![self.hello(hello_id)]);
        }
        match kind {
            "error" => {
                let err: Error = serde_json::from_value(v["error"].clone())
                    .unwrap_or_else(|_| federation_error("", "Unknown error."));
                if err.code == "no_such_session" && self.resume_id.is_some() {
                    // The remote lost our session (restarted): start a new one.
                    self.resume_id = None;
                    self.retry = None;
                    return Step::Send(vec![self.hello(hello_id)]);
                }
                info!(session = %self.local_id, code = %err.code, "federated hello refused");
                self.fail(err);
                Step::Close
            }
            "hello" => {
                let remote = v["hello"]["sessionid"].as_str().unwrap_or_default();
                self.remote_id = Some(remote.to_owned());
                if self.resume_id.is_none() {
                    self.resume_id = v["hello"]["resumeid"].as_str().map(str::to_owned);
                    if self.reconnecting {
                        self.send_event("federation_resumed", Some(false));
                    }
                    info!(session = %self.local_id, remote = %remote, "federated session established");
                    Step::Send(vec![self.join()])
                } else {
                    self.send_event("federation_resumed", Some(true));
                    Step::Send(self.retry.take().into_iter().collect())
                }
            }
            _ => Step::Send(vec![self.hello(hello_id)]),
        }
    }

    pub(super) fn send_event(&self, kind: &str, resumed: Option<bool>) {
        if let Some(s) = self.session.upgrade() {
            let mut ev = EventServerMessage::new("room", kind);
            ev.resumed = resumed;
            s.send_message(ServerMessage::event(ev));
        }
    }

    /// An error for the client, answering its join request if still open.
    pub(super) fn fail(&mut self, err: Error) {
        if let Some(s) = self.session.upgrade() {
            let id = self.join_id.take().unwrap_or_default();
            s.send_message(ServerMessage::error(&id, err));
        }
    }
}

pub(super) enum Step {
    Continue,
    Send(Vec<String>),
    Close,
}

pub(super) enum ConnectError {
    /// The server does not list `federation` in its features.
    Unsupported,
    Network(String),
}

pub(super) async fn connect(url: &str) -> Result<Ws, ConnectError> {
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let (ws, response) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
        .await
        .map_err(|e| ConnectError::Network(e.to_string()))?;
    let supported = response
        .headers()
        .get_all("x-spreed-signaling-features")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|f| f.trim() == proto::client::FEATURE_FEDERATION);
    if !supported {
        return Err(ConnectError::Unsupported);
    }
    Ok(ws)
}
