//! [`Session`]: a Janus session, destroyed when its last clone is dropped.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::{Gateway, Handle, HandleInner};
use crate::core::{object, RequestKind, Scope, Target};
use crate::error::{Error, GoneReason, Result};
use crate::events::HandleEvents;
use crate::task::keepalive_msg;

/// A Janus session.
#[derive(Clone, Debug)]
pub struct Session {
    pub(super) inner: Arc<SessionInner>,
}

#[derive(Debug)]
pub(super) struct SessionInner {
    pub(super) id: u64,
    pub(super) epoch: u64,
    pub(super) gateway: Gateway,
    pub(super) gone: watch::Receiver<Option<GoneReason>>,
    /// Set once destroyed on purpose, so `Drop` does not destroy it again.
    pub(super) released: AtomicBool,
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

    pub(super) fn check(&self) -> Result<()> {
        match self.gone() {
            Some(reason) => Err(Error::SessionGone(reason)),
            None => Ok(()),
        }
    }

    /// Attaches a handle to `plugin` (e.g. `janus.plugin.videoroom`).
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
        let msg = keepalive_msg(self.inner.id);
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
