//! [`Handle`]: a plugin handle, detached when its last clone is dropped, and
//! the [`PluginResponse`] its messages return.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Map, Value};

use super::Session;
use crate::core::{object, RequestKind, Scope, Target};
use crate::error::{Error, Result};
use crate::wire::{IceCandidate, Jsep};

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
    pub(super) inner: Arc<HandleInner>,
}

#[derive(Debug)]
pub(super) struct HandleInner {
    pub(super) id: u64,
    pub(super) plugin: String,
    pub(super) session: Session,
    pub(super) released: AtomicBool,
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
