//! Commands of a proxy session: create and delete publishers and
//! subscribers, and the remote streams between proxies (`publish-remote`,
//! subscribers of another proxy's publisher).

use std::sync::Arc;

use mcu::{
    CodecPrefs, Mcu, McuClient, McuError, MediaTypes, PublisherParams, StreamType, SubscriberParams,
};
use parking_lot::Mutex;
use proto::client::Error;
use proto::proxy::{
    CommandProxyClientMessage, CommandProxyServerMessage, EventProxyServerMessage,
    ProxyClientMessage, ProxyServerMessage,
};
use tracing::{info, warn};

use crate::session::{ProxyListener, ProxySession};
use crate::{
    err_internal, err_shutdown_scheduled, err_unknown_client, err_unsupported_command, remote,
    tokens, uuid, ClientEntry, ProxyServer, RemoteUse,
};

#[derive(Debug, thiserror::Error)]
enum RemoteSubscribeError {
    #[error("remote token refused: {}", .0.reason)]
    Token(tokens::TokenError),
    #[error("remote streams not supported here")]
    Unsupported,
    #[error("{0}")]
    Failed(String),
}

impl ProxyServer {
    pub(crate) fn process_command(&self, session: &Arc<ProxySession>, msg: ProxyClientMessage) {
        let Some(cmd) = msg.command else { return };
        self.metrics.commands.inc(&[&cmd.kind]);
        match cmd.kind.as_str() {
            "create-publisher" | "create-subscriber" => {
                if cmd.kind == "create-publisher" && self.is_draining() {
                    session.send(&ProxyServerMessage::error(
                        &msg.id,
                        err_shutdown_scheduled(),
                    ));
                    return;
                }
                // Creating may wait for Janus (and a subscriber for its
                // publisher): never hold up the connection's other messages.
                let Some(me) = self.me.upgrade() else { return };
                let session = session.clone();
                tokio::spawn(async move { me.create_client(&session, msg.id, cmd).await });
            }
            "delete-publisher" | "delete-subscriber" => {
                let want_publisher = cmd.kind == "delete-publisher";
                let removed = {
                    let mut reg = self.reg.lock();
                    let ok = reg
                        .clients
                        .get(&cmd.client_id)
                        .is_some_and(|c| c.session == session.id && c.publisher == want_publisher);
                    if ok {
                        reg.clients.remove(&cmd.client_id)
                    } else {
                        None
                    }
                };
                let Some(entry) = removed else {
                    session.send(&ProxyServerMessage::error(&msg.id, err_unknown_client()));
                    return;
                };
                self.count_gone(&entry);
                self.after_client_removal();
                tokio::spawn(async move { entry.client.close().await });
                session.send(&ProxyServerMessage {
                    id: msg.id,
                    kind: "command".into(),
                    command: Some(CommandProxyServerMessage {
                        id: cmd.client_id,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
            }
            "get-publisher-streams" | "publish-remote" | "unpublish-remote" => {
                let Some(me) = self.me.upgrade() else { return };
                let session = session.clone();
                tokio::spawn(async move { me.remote_command(&session, msg.id, cmd).await });
            }
            _ => session.send(&ProxyServerMessage::error(
                &msg.id,
                err_unsupported_command(),
            )),
        }
    }

    /// Remote streams, publisher side: another proxy (a session here like
    /// any signaling server's) fetches a publisher's streams and has them
    /// sent to its Janus. Any session may name any publisher: the proxy
    /// authenticated with a token of ours.
    pub(crate) async fn remote_command(
        &self,
        session: &Arc<ProxySession>,
        msg_id: String,
        cmd: CommandProxyClientMessage,
    ) {
        let stream = {
            let reg = self.reg.lock();
            reg.clients
                .get(&cmd.client_id)
                .filter(|c| c.publisher)
                .map(|c| c.client.stream_type())
        };
        let Some(stream) = stream else {
            session.send(&ProxyServerMessage::error(&msg_id, err_unknown_client()));
            return;
        };
        let remote_id = format!(
            "{}-{}@{}:{}:{}",
            cmd.client_id, session.id, cmd.hostname, cmd.port, cmd.rtcp_port
        );
        let mut reply = CommandProxyServerMessage {
            id: cmd.client_id.clone(),
            ..Default::default()
        };
        let res = match cmd.kind.as_str() {
            "get-publisher-streams" => self
                .mcu
                .publisher_streams(&cmd.client_id, stream)
                .await
                .map(|s| reply.streams = Some(s)),
            "publish-remote" => {
                let res = self
                    .mcu
                    .publish_remotely(
                        &cmd.client_id,
                        stream,
                        remote_id.clone(),
                        cmd.hostname.clone(),
                        cmd.port,
                        cmd.rtcp_port,
                    )
                    .await;
                let gone = {
                    let reg = self.reg.lock();
                    !reg.sessions.contains_key(&session.id)
                        || !reg.clients.contains_key(&cmd.client_id)
                };
                if res.is_ok() && gone {
                    // The asking proxy or the publisher went while Janus
                    // set it up: undo, nobody would stop it later.
                    let _ = self
                        .mcu
                        .unpublish_remotely(&cmd.client_id, stream, remote_id.clone())
                        .await;
                } else if res.is_ok() {
                    info!(publisher = %cmd.client_id, to = %format!("{}:{}", cmd.hostname, cmd.port), "publishing remotely");
                    let mut uses = self.remote_uses.lock();
                    let list = uses.entry(cmd.client_id.clone()).or_default();
                    if !list.iter().any(|u| u.remote_id == remote_id) {
                        list.push(RemoteUse {
                            session: session.id.clone(),
                            remote_id,
                        });
                    }
                }
                res
            }
            _ => {
                if let Some(list) = self.remote_uses.lock().get_mut(&cmd.client_id) {
                    list.retain(|u| u.remote_id != remote_id);
                }
                self.mcu
                    .unpublish_remotely(&cmd.client_id, stream, remote_id)
                    .await
            }
        };
        match res {
            Ok(()) => session.send(&ProxyServerMessage {
                id: msg_id,
                kind: "command".into(),
                command: Some(reply),
                ..Default::default()
            }),
            Err(e) => {
                warn!(kind = %cmd.kind, publisher = %cmd.client_id, error = %e, "remote stream command failed");
                session.send(&ProxyServerMessage::error(&msg_id, err_internal(e)));
            }
        }
    }

    /// A publisher ended: the proxies receiving it are told.
    pub(crate) fn publisher_gone(&self, client_id: &str) {
        let uses = self
            .remote_uses
            .lock()
            .remove(client_id)
            .unwrap_or_default();
        for u in uses {
            let session = self.reg.lock().sessions.get(&u.session).cloned();
            if let Some(s) = session {
                s.send(&ProxyServerMessage::event(EventProxyServerMessage {
                    kind: "publisher-closed".into(),
                    client_id: client_id.to_owned(),
                    ..Default::default()
                }));
            }
        }
    }

    /// A proxy's session ended: stop sending it what it asked for.
    pub(crate) fn end_remote_uses_of(&self, session: &str) {
        let ended: Vec<(String, String)> = {
            let mut uses = self.remote_uses.lock();
            let mut ended = Vec::new();
            for (publisher, list) in uses.iter_mut() {
                list.retain(|u| {
                    let mine = u.session == session;
                    if mine {
                        ended.push((publisher.clone(), u.remote_id.clone()));
                    }
                    !mine
                });
            }
            uses.retain(|_, l| !l.is_empty());
            ended
        };
        for (publisher, remote_id) in ended {
            let stream = self
                .reg
                .lock()
                .clients
                .get(&publisher)
                .map(|c| c.client.stream_type());
            if let (Some(stream), Some(me)) = (stream, self.me.upgrade()) {
                tokio::spawn(async move {
                    let _ = me
                        .mcu
                        .unpublish_remotely(&publisher, stream, remote_id)
                        .await;
                });
            }
        }
    }

    /// A subscriber of a publisher on another proxy (see [`remote`]).
    async fn remote_subscriber(
        &self,
        cmd: &CommandProxyClientMessage,
        stream: StreamType,
        listener: Arc<ProxyListener>,
    ) -> Result<(Arc<dyn McuClient>, remote::FeedGuard), RemoteSubscribeError> {
        if !self.remotes.enabled() || !self.mcu.supports_remote_streams() {
            return Err(RemoteSubscribeError::Unsupported);
        }
        let tokens = self.tokens.read().clone();
        let (_, subject) = tokens
            .verify_claims(&cmd.remote_token)
            .await
            .map_err(RemoteSubscribeError::Token)?;
        if subject != cmd.publisher_id {
            return Err(RemoteSubscribeError::Token(tokens::TokenError::auth(
                "wrong-subject",
            )));
        }
        let cap = self.janus.max_bitrate(stream);
        let guard = self
            .remotes
            .acquire(&self.mcu, &cmd.remote_url, &cmd.publisher_id, stream, cap)
            .await
            .map_err(|e| RemoteSubscribeError::Failed(e.to_string()))?;
        let params = SubscriberParams::new(guard.key(), stream);
        match self.mcu.new_subscriber(listener, params).await {
            Ok(c) => Ok((c, guard)),
            Err(e) => {
                self.remotes.release(&guard).await;
                Err(RemoteSubscribeError::Failed(e.to_string()))
            }
        }
    }

    pub(crate) async fn create_client(
        &self,
        session: &Arc<ProxySession>,
        msg_id: String,
        cmd: CommandProxyClientMessage,
    ) {
        let publisher = cmd.kind == "create-publisher";
        let Some(stream) = StreamType::parse(&cmd.stream_type) else {
            session.send(&ProxyServerMessage::error(
                &msg_id,
                err_internal(format!("Unsupported stream type {}", cmd.stream_type)),
            ));
            return;
        };
        let id = uuid();
        let listener = Arc::new(ProxyListener {
            server: self.me.clone(),
            session: Arc::downgrade(session),
            client_id: id.clone(),
            sid: Mutex::new(String::new()),
        });
        let created = self
            .new_mcu_client(session, &cmd, publisher, stream, &id, &listener)
            .await;
        let (client, bitrate, remote_guard) = match created {
            Ok(c) => c,
            Err(error) => {
                session.send(&ProxyServerMessage::error(&msg_id, error));
                return;
            }
        };
        *listener.sid.lock() = client.sid();
        let sid = if publisher {
            String::new()
        } else {
            client.sid()
        };
        let entry = ClientEntry {
            client: client.clone(),
            session: session.id.clone(),
            publisher,
            bitrate,
            remote: remote_guard.clone(),
        };
        if !self.register_client(session, &id, entry) {
            client.close().await;
            if let Some(g) = remote_guard {
                self.remotes.release(&g).await;
            }
            return;
        }
        let labels = [stream.as_str()];
        if publisher {
            self.metrics.publishers.inc(&labels);
            self.metrics.publishers_total.inc(&labels);
        } else {
            self.metrics.subscribers.inc(&labels);
            self.metrics.subscribers_total.inc(&labels);
        }
        session.send(&ProxyServerMessage {
            id: msg_id,
            kind: "command".into(),
            command: Some(CommandProxyServerMessage {
                id,
                sid,
                ..Default::default()
            }),
            ..Default::default()
        });
    }

    /// The MCU side of `create-publisher` / `create-subscriber`: a publisher,
    /// a subscriber of a local publisher or one of another proxy's stream.
    /// Returns the client, its bitrate (the load it adds) and, for a remote
    /// stream, its share of the remote publisher; failures come back as the
    /// error to send.
    async fn new_mcu_client(
        &self,
        session: &Arc<ProxySession>,
        cmd: &CommandProxyClientMessage,
        publisher: bool,
        stream: StreamType,
        id: &str,
        listener: &Arc<ProxyListener>,
    ) -> Result<(Arc<dyn McuClient>, u64, Option<remote::FeedGuard>), Error> {
        let mut remote_guard = None;
        let (result, bitrate) = if publisher {
            let cap = self.janus.max_bitrate(stream);
            let bitrate = mcu::cap_bitrate(cmd.bitrate, cap);
            let params = PublisherParams {
                id: Arc::from(id),
                sid: cmd.sid.clone(),
                stream,
                bitrate,
                media: MediaTypes(cmd.mediatypes as u8),
                codecs: CodecPrefs::default(),
                country: None,
                continents: Vec::new(),
            };
            (
                self.mcu.new_publisher(listener.clone(), params).await,
                bitrate,
            )
        } else if !cmd.remote_url.is_empty() {
            match self.remote_subscriber(cmd, stream, listener.clone()).await {
                Ok((client, guard)) => {
                    remote_guard = Some(guard);
                    (Ok(client), self.janus.max_bitrate(stream))
                }
                Err(e) => {
                    warn!(session = %session.id, url = %cmd.remote_url, error = %e, "could not subscribe to a remote stream");
                    let error = match e {
                        RemoteSubscribeError::Token(t) => t.to_error(),
                        RemoteSubscribeError::Unsupported => Error::new(
                            "unsupported_subscriber",
                            "Remote subscribers are not supported.",
                        ),
                        RemoteSubscribeError::Failed(e) => err_internal(e),
                    };
                    return Err(error);
                }
            }
        } else {
            let bitrate = self
                .reg
                .lock()
                .clients
                .get(&cmd.publisher_id)
                .map(|c| c.bitrate)
                .unwrap_or_else(|| self.janus.max_bitrate(stream));
            (
                self.mcu
                    .new_subscriber(
                        listener.clone(),
                        SubscriberParams::new(Arc::from(cmd.publisher_id.as_str()), stream),
                    )
                    .await,
                bitrate,
            )
        };
        match result {
            Ok(c) => Ok((c, bitrate, remote_guard)),
            // Not reached: remote failures return above.
            Err(e) if remote_guard.is_some() => Err(err_internal(e)),
            Err(McuError::Timeout(_)) => {
                let what = if publisher { "publisher" } else { "subscriber" };
                Err(Error::new("timeout", format!("Timeout creating {what}.")))
            }
            Err(e) => {
                warn!(session = %session.id, kind = %cmd.kind, error = %e, "could not create MCU client");
                Err(err_internal(e))
            }
        }
    }

    /// Registers a new client under `id` if its proxy session still exists
    /// (it may have been deleted while the client was being created).
    fn register_client(&self, session: &ProxySession, id: &str, entry: ClientEntry) -> bool {
        let mut reg = self.reg.lock();
        let alive = reg.sessions.contains_key(&session.id);
        if alive {
            reg.clients.insert(id.to_owned(), entry);
        }
        alive
    }
}
