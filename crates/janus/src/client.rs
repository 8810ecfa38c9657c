//! The public handles: [`Gateway`] (the connection), [`Session`] (a Janus
//! session) and [`Handle`] (a plugin handle). All three are cheap to clone
//! and only send commands to the connection task.
//!
//! Sessions and handles clean up after themselves: dropping the last clone
//! of a `Session` destroys it in Janus, dropping the last clone of a
//! `Handle` detaches it, so an MCU object that is dropped on an error path
//! leaves nothing behind in Janus.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::core::{object, send_forget, Command, Reply, Request, RequestKind, Scope, Target};
use crate::error::{Error, GoneReason, Result};
use crate::events::HandleEvents;
use crate::task::{open, Task};
use crate::wire::{IceCandidate, Jsep, ServerInfo};

/// Tunables of the client. The defaults follow upstream.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// How long a request may wait for its reply (upstream `[mcu] timeout`,
    /// default 10 s).
    pub request_timeout: Duration,
    /// How long opening the WebSocket plus the initial `info` may take.
    pub connect_timeout: Duration,
    /// Interval of Janus `keepalive` requests per session. Must be well below
    /// Janus's `session_timeout` (60 s by default).
    pub keepalive_interval: Duration,
    /// Interval of WebSocket pings. A connection that sends nothing back for
    /// 1.5 intervals is considered dead and reconnected.
    pub ping_interval: Duration,
    /// First delay before reconnecting after the connection was lost.
    pub reconnect_initial: Duration,
    /// The delay doubles after every failed attempt up to this.
    pub reconnect_max: Duration,
    /// Capacity of the command queue to the connection task; callers wait
    /// when it is full.
    pub command_queue: usize,
    /// Capacity of each handle's event queue; see [`HandleEvents`].
    pub handle_queue: usize,
    /// Largest WebSocket message accepted from Janus.
    pub max_message_size: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(30),
            ping_interval: Duration::from_secs(30),
            reconnect_initial: Duration::from_secs(1),
            reconnect_max: Duration::from_secs(32),
            command_queue: 256,
            handle_queue: 64,
            max_message_size: 4 << 20,
        }
    }
}

/// The state of the connection, published on a watch channel.
#[derive(Clone, Debug)]
pub enum ConnectionState {
    /// Connected; `epoch` counts connections (1 for the first). Every
    /// session and handle belongs to one epoch and dies with it: when the
    /// epoch changes, the MCU must rebuild its publishers and subscribers.
    Connected { epoch: u64, info: Arc<ServerInfo> },
    /// Between connections; the next attempt starts after `retry_in`.
    Disconnected {
        last_epoch: u64,
        reason: String,
        attempt: u32,
        retry_in: Duration,
    },
    /// [`Gateway::close`] was called, or every handle was dropped.
    Closed,
}

impl ConnectionState {
    pub fn is_connected(&self) -> bool {
        matches!(self, ConnectionState::Connected { .. })
    }

    /// The epoch of the current connection, if connected.
    pub fn epoch(&self) -> Option<u64> {
        match self {
            ConnectionState::Connected { epoch, .. } => Some(*epoch),
            _ => None,
        }
    }
}

/// A connection to one Janus server.
#[derive(Clone, Debug)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

#[derive(Debug)]
struct GatewayInner {
    url: String,
    config: GatewayConfig,
    cmd_tx: mpsc::Sender<Command>,
    state_rx: watch::Receiver<ConnectionState>,
}

impl Gateway {
    /// Connects with the default configuration. See [`Gateway::connect_with`].
    pub async fn connect(url: &str) -> Result<Gateway> {
        Gateway::connect_with(url, GatewayConfig::default()).await
    }

    /// Connects to `url` (`ws://host:port`) with subprotocol `janus-protocol`
    /// and fetches `info`. Fails if this first attempt fails (the caller
    /// decides about retries at start-up); afterwards the connection is kept
    /// up by the connection task, which needs a running Tokio runtime.
    pub async fn connect_with(url: &str, config: GatewayConfig) -> Result<Gateway> {
        let (ws, info) = open(url, &config).await.map_err(|reason| Error::Connect {
            url: url.to_owned(),
            reason,
        })?;
        let (cmd_tx, cmd_rx) = mpsc::channel(config.command_queue.max(1));
        let (state_tx, state_rx) = watch::channel(ConnectionState::Connected {
            epoch: 1,
            info: Arc::new(info.clone()),
        });
        let task = Task::new(
            url.to_owned(),
            config.clone(),
            cmd_rx,
            cmd_tx.downgrade(),
            state_tx,
        );
        tokio::spawn(task.run(ws, info));
        Ok(Gateway {
            inner: Arc::new(GatewayInner {
                url: url.to_owned(),
                config,
                cmd_tx,
                state_rx,
            }),
        })
    }

    pub fn url(&self) -> &str {
        &self.inner.url
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// A receiver of connection-state changes (the MCU watches it to rebuild
    /// after a reconnect); its `changed()` fires for changes after this call.
    pub fn state(&self) -> watch::Receiver<ConnectionState> {
        let mut rx = self.inner.state_rx.clone();
        rx.mark_unchanged();
        rx
    }

    pub fn current_state(&self) -> ConnectionState {
        self.inner.state_rx.borrow().clone()
    }

    /// `info` as fetched when the current connection was opened.
    pub fn server_info(&self) -> Option<Arc<ServerInfo>> {
        match &*self.inner.state_rx.borrow() {
            ConnectionState::Connected { info, .. } => Some(info.clone()),
            _ => None,
        }
    }

    /// Waits until connected (returns the epoch and server info) or closed.
    pub async fn connected(&self) -> Result<(u64, Arc<ServerInfo>)> {
        let mut rx = self.state();
        let result = rx
            .wait_for(|s| {
                matches!(
                    s,
                    ConnectionState::Connected { .. } | ConnectionState::Closed
                )
            })
            .await
            .map_err(|_| Error::Closed)?;
        match &*result {
            ConnectionState::Connected { epoch, info } => Ok((*epoch, info.clone())),
            _ => Err(Error::Closed),
        }
    }

    /// Sends `info` and returns the reply.
    pub async fn info(&self) -> Result<ServerInfo> {
        let reply = self
            .call(
                "info",
                object(json!({"janus": "info"})),
                Scope::Gateway,
                RequestKind::Simple,
                None,
            )
            .await?;
        reply.info.ok_or(Error::Protocol {
            request: "info",
            detail: format!("got {}", reply.msg.janus),
        })
    }

    /// Creates a Janus session. Keepalives for it are sent by the connection
    /// task until it is destroyed or dropped.
    pub async fn create_session(&self) -> Result<Session> {
        let (gone_tx, gone_rx) = watch::channel(None);
        let mut reply = self
            .call(
                "create",
                object(json!({"janus": "create"})),
                Scope::Gateway,
                RequestKind::Create { gone: gone_tx },
                None,
            )
            .await?;
        let id = reply.msg.data_id().ok_or(Error::Protocol {
            request: "create",
            detail: "no id".to_owned(),
        })?;
        let guard = reply.orphan.take().ok_or(Error::Protocol {
            request: "create",
            detail: "no guard".to_owned(),
        })?;
        let epoch = guard.epoch();
        guard.disarm();
        Ok(Session {
            inner: Arc::new(SessionInner {
                id,
                epoch,
                gateway: self.clone(),
                gone: gone_rx,
                released: AtomicBool::new(false),
            }),
        })
    }

    /// Drops the current connection and connects again at once (the state
    /// goes through `Disconnected` to a new epoch).
    pub async fn reconnect(&self) -> Result<()> {
        self.inner
            .cmd_tx
            .send(Command::Reconnect)
            .await
            .map_err(|_| Error::Closed)
    }

    /// Closes the connection and stops the task. Pending requests fail with
    /// [`Error::Closed`]; sessions and handles end with [`GoneReason::Closed`].
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self
            .inner
            .cmd_tx
            .send(Command::Close { done })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
    }

    pub(crate) async fn call(
        &self,
        name: &'static str,
        msg: Map<String, Value>,
        scope: Scope,
        kind: RequestKind,
        timeout: Option<Duration>,
    ) -> Result<Reply> {
        let timeout = timeout.unwrap_or(self.inner.config.request_timeout);
        let (reply, rx) = oneshot::channel();
        let request = Request {
            name,
            msg,
            scope,
            kind,
            reply,
        };
        let exchange = async {
            self.inner
                .cmd_tx
                .send(Command::Request(request))
                .await
                .map_err(|_| Error::Closed)?;
            rx.await.map_err(|_| Error::Closed)?
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout {
                request: name,
                timeout,
            }),
        }
    }

    fn forget(&self, target: Target, epoch: u64) {
        send_forget(&self.inner.cmd_tx, target, epoch);
    }
}

/// A Janus session.
#[derive(Clone, Debug)]
pub struct Session {
    inner: Arc<SessionInner>,
}

#[derive(Debug)]
struct SessionInner {
    id: u64,
    epoch: u64,
    gateway: Gateway,
    gone: watch::Receiver<Option<GoneReason>>,
    /// Set once destroyed on purpose, so `Drop` does not destroy it again.
    released: AtomicBool,
}

impl Drop for SessionInner {
    fn drop(&mut self) {
        if !self.released.load(Ordering::Acquire) && self.gone.borrow().is_none() {
            self.gateway.forget(
                Target::Session {
                    session_id: self.id,
                },
                self.epoch,
            );
        }
    }
}

impl Session {
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    /// The connection epoch this session belongs to.
    pub fn epoch(&self) -> u64 {
        self.inner.epoch
    }

    pub fn gateway(&self) -> &Gateway {
        &self.inner.gateway
    }

    /// Why the session ended, if it has.
    pub fn gone(&self) -> Option<GoneReason> {
        *self.inner.gone.borrow()
    }

    /// Waits until the session ends and says why.
    pub async fn closed(&self) -> GoneReason {
        let mut rx = self.inner.gone.clone();
        let reason = match rx.wait_for(Option::is_some).await {
            Ok(reason) => reason.unwrap_or(GoneReason::Closed),
            Err(_) => GoneReason::Closed,
        };
        reason
    }

    fn scope(&self) -> Scope {
        Scope::Session {
            session_id: self.inner.id,
            epoch: self.inner.epoch,
        }
    }

    fn check(&self) -> Result<()> {
        match self.gone() {
            Some(reason) => Err(Error::SessionGone(reason)),
            None => Ok(()),
        }
    }

    /// Attaches a handle to `plugin` (e.g. [`crate::videoroom::PLUGIN`]).
    /// Returns the handle and the receiver of its events; the queue is
    /// registered before the reply is delivered, so no event is lost.
    pub async fn attach(&self, plugin: &str) -> Result<(Handle, HandleEvents)> {
        self.check()?;
        let (events_tx, events_rx) =
            mpsc::channel(self.inner.gateway.inner.config.handle_queue.max(1));
        let msg = object(json!({"janus": "attach", "session_id": self.inner.id, "plugin": plugin}));
        let mut reply = self
            .inner
            .gateway
            .call(
                "attach",
                msg,
                self.scope(),
                RequestKind::Attach { events: events_tx },
                None,
            )
            .await?;
        let id = reply.msg.data_id().ok_or(Error::Protocol {
            request: "attach",
            detail: "no id".to_owned(),
        })?;
        if let Some(guard) = reply.orphan.take() {
            guard.disarm();
        }
        let handle = Handle {
            inner: Arc::new(HandleInner {
                id,
                plugin: plugin.to_owned(),
                session: self.clone(),
                released: AtomicBool::new(false),
            }),
        };
        Ok((handle, HandleEvents { rx: events_rx }))
    }

    /// Sends one `keepalive` now (the connection task sends them anyway).
    pub async fn keepalive(&self) -> Result<()> {
        self.check()?;
        let msg = crate::task::keepalive_msg(self.inner.id);
        self.inner
            .gateway
            .call("keepalive", msg, self.scope(), RequestKind::Simple, None)
            .await?;
        Ok(())
    }

    /// Destroys the session in Janus; its handles end with
    /// [`GoneReason::SessionDestroyed`].
    pub async fn destroy(&self) -> Result<()> {
        self.check()?;
        let msg = object(json!({"janus": "destroy", "session_id": self.inner.id}));
        self.inner
            .gateway
            .call("destroy", msg, self.scope(), RequestKind::Destroy, None)
            .await?;
        self.inner.released.store(true, Ordering::Release);
        Ok(())
    }
}

/// The reply of a plugin to a `message`, whether the plugin answered
/// synchronously (`success` with `plugindata`) or with `ack` and a later
/// `event`.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginResponse {
    pub plugin: String,
    pub data: Value,
    pub jsep: Option<Jsep>,
    /// `true` if Janus acknowledged first and answered with an event.
    pub asynchronous: bool,
}

impl PluginResponse {
    /// The plugin-level error (`error_code` / `error` in the data), which
    /// Janus plugins report inside a successful Janus reply.
    pub fn error(&self) -> Option<Error> {
        let code = self.data.get("error_code")?.as_u64()?;
        let reason = self
            .data
            .get("error")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        Some(Error::Plugin { code, reason })
    }
}

/// A handle attached to a plugin.
#[derive(Clone, Debug)]
pub struct Handle {
    inner: Arc<HandleInner>,
}

#[derive(Debug)]
struct HandleInner {
    id: u64,
    plugin: String,
    session: Session,
    released: AtomicBool,
}

impl Drop for HandleInner {
    fn drop(&mut self) {
        if !self.released.load(Ordering::Acquire) && self.session.gone().is_none() {
            self.session.gateway().forget(
                Target::Handle {
                    session_id: self.session.id(),
                    handle_id: self.id,
                },
                self.session.epoch(),
            );
        }
    }
}

impl Handle {
    pub fn id(&self) -> u64 {
        self.inner.id
    }

    pub fn plugin(&self) -> &str {
        &self.inner.plugin
    }

    pub fn session(&self) -> &Session {
        &self.inner.session
    }

    fn scope(&self) -> Scope {
        let session = &self.inner.session;
        Scope::Handle {
            session_id: session.id(),
            handle_id: self.inner.id,
            epoch: session.epoch(),
        }
    }

    fn base(&self, janus: &str) -> Map<String, Value> {
        object(
            json!({"janus": janus, "session_id": self.inner.session.id(), "handle_id": self.inner.id}),
        )
    }

    /// Sends a plugin message (`body`, optional `jsep`) and waits for the
    /// plugin's answer with the default request timeout. A plugin-level
    /// error (`error_code` in the answer) is returned as [`Error::Plugin`].
    pub async fn message(&self, body: Value, jsep: Option<Jsep>) -> Result<PluginResponse> {
        self.message_with_timeout(body, jsep, None).await
    }

    /// [`Handle::message`] with an explicit timeout (`None`: the default).
    pub async fn message_with_timeout(
        &self,
        body: Value,
        jsep: Option<Jsep>,
        timeout: Option<Duration>,
    ) -> Result<PluginResponse> {
        self.inner.session.check()?;
        let mut msg = self.base("message");
        msg.insert("body".to_owned(), body);
        if let Some(jsep) = jsep {
            let jsep = serde_json::to_value(jsep).map_err(|e| Error::Protocol {
                request: "message",
                detail: format!("cannot encode jsep: {e}"),
            })?;
            msg.insert("jsep".to_owned(), jsep);
        }
        let reply = self
            .inner
            .session
            .gateway()
            .call("message", msg, self.scope(), RequestKind::Message, timeout)
            .await?;
        let asynchronous = reply.msg.janus == "event";
        let Some(pd) = reply.msg.plugindata else {
            return Err(Error::Protocol {
                request: "message",
                detail: format!("{} without plugindata", reply.msg.janus),
            });
        };
        let response = PluginResponse {
            plugin: pd.plugin,
            data: pd.data,
            jsep: reply.msg.jsep,
            asynchronous,
        };
        match response.error() {
            Some(err) => Err(err),
            None => Ok(response),
        }
    }

    async fn trickle_raw(&self, key: &str, value: Value) -> Result<()> {
        self.inner.session.check()?;
        let mut msg = self.base("trickle");
        msg.insert(key.to_owned(), value);
        self.inner
            .session
            .gateway()
            .call("trickle", msg, self.scope(), RequestKind::Simple, None)
            .await?;
        Ok(())
    }

    /// Sends one remote ICE candidate.
    pub async fn trickle(&self, candidate: &IceCandidate) -> Result<()> {
        let value = serde_json::to_value(candidate).map_err(|e| Error::Protocol {
            request: "trickle",
            detail: e.to_string(),
        })?;
        self.trickle_raw("candidate", value).await
    }

    /// Sends several remote ICE candidates in one request.
    pub async fn trickle_many(&self, candidates: &[IceCandidate]) -> Result<()> {
        let value = serde_json::to_value(candidates).map_err(|e| Error::Protocol {
            request: "trickle",
            detail: e.to_string(),
        })?;
        self.trickle_raw("candidates", value).await
    }

    /// Tells Janus the remote side has no more candidates.
    pub async fn trickle_completed(&self) -> Result<()> {
        self.trickle_raw("candidate", json!({"completed": true}))
            .await
    }

    /// Closes the PeerConnection of the handle but keeps the handle.
    pub async fn hangup(&self) -> Result<()> {
        self.inner.session.check()?;
        let msg = self.base("hangup");
        self.inner
            .session
            .gateway()
            .call("hangup", msg, self.scope(), RequestKind::Simple, None)
            .await?;
        Ok(())
    }

    /// Detaches the handle; its event queue ends with
    /// [`crate::HandleEvent::Detached`].
    pub async fn detach(&self) -> Result<()> {
        self.inner.session.check()?;
        let msg = self.base("detach");
        self.inner
            .session
            .gateway()
            .call("detach", msg, self.scope(), RequestKind::Detach, None)
            .await?;
        self.inner.released.store(true, Ordering::Release);
        Ok(())
    }
}
