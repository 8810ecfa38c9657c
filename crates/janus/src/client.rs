//! The public handles: [`Gateway`] (the connection), [`Session`] (a Janus
//! session) and [`Handle`] (a plugin handle). All three are cheap to clone
//! and only send commands to the connection task.
//!
//! Sessions and handles clean up after themselves: dropping the last clone
//! of a `Session` destroys it in Janus, dropping the last clone of a
//! `Handle` detaches it, so an MCU object that is dropped on an error path
//! leaves nothing behind in Janus.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::sync::{mpsc, oneshot, watch};

use crate::connection::{ConnectionState, GatewayConfig};
use crate::core::{object, send_forget, Command, Reply, Request, RequestKind, Scope, Target};
use crate::error::{Error, Result};
use crate::task::{open, Task};
use crate::wire::ServerInfo;
mod handle;
mod session;

use handle::HandleInner;
pub use handle::{Handle, PluginResponse};
pub use session::Session;
use session::SessionInner;

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
    /// [`Error::Closed`]; sessions and handles end with [`crate::GoneReason::Closed`].
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
