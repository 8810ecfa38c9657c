//! Events Janus pushes for a handle, delivered in order on the handle's own
//! bounded queue ([`HandleEvents`]).

use serde_json::Value;
use tokio::sync::mpsc;

use crate::error::GoneReason;
use crate::wire::{IceCandidate, Incoming, Jsep};

/// An asynchronous plugin event (`"janus": "event"`) that is not the reply
/// to a pending request: e.g. a VideoRoom `destroyed`, `updated`, or a
/// renegotiation offer after `configure`.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginEvent {
    pub plugin: String,
    pub data: Value,
    pub jsep: Option<Jsep>,
    /// Set when the event carries the transaction of a request whose caller
    /// stopped waiting (timed out).
    pub transaction: Option<String>,
}

/// `"janus": "media"`: Janus started or stopped receiving a medium.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaEvent {
    /// `audio` or `video`.
    pub kind: String,
    /// The stream (Janus 1.x only).
    pub mid: Option<String>,
    pub receiving: bool,
    /// After how many seconds without media Janus reported `receiving: false`.
    pub seconds: Option<u64>,
}

/// `"janus": "slowlink"`: many packets lost (NACKs) on one direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlowLinkEvent {
    /// `audio` or `video`.
    pub media: Option<String>,
    /// The stream (Janus 1.x only).
    pub mid: Option<String>,
    /// `true`: Janus -> peer direction had losses (as seen by Janus).
    pub uplink: bool,
    pub lost: u64,
}

/// What happened on a handle.
#[derive(Clone, Debug, PartialEq)]
pub enum HandleEvent {
    Event(PluginEvent),
    /// A local candidate of Janus (full trickle).
    Trickle(IceCandidate),
    /// Janus finished gathering candidates.
    TrickleCompleted,
    /// ICE and DTLS are up: media can flow.
    WebrtcUp,
    Media(MediaEvent),
    SlowLink(SlowLinkEvent),
    /// The PeerConnection was closed (DTLS alert, ICE failure, or a `hangup`
    /// request). The handle itself still exists.
    Hangup {
        reason: String,
    },
    /// Janus detached the handle. Last event of the handle.
    Detached,
    /// The handle no longer exists because its session or the connection is
    /// gone. Last event of the handle.
    Gone(GoneReason),
    /// The owner did not keep up: this many events were dropped because the
    /// queue was full. The peer-connection state is unknown afterwards; the
    /// safe reaction is to renegotiate or recreate the handle.
    Lagged {
        missed: u64,
    },
}

impl HandleEvent {
    /// Converts a handle-scoped Janus message; `None` for types this client
    /// does not know (logged by the caller).
    pub(crate) fn from_incoming(msg: Incoming) -> Option<HandleEvent> {
        Some(match msg.janus.as_str() {
            "event" => {
                let pd = msg.plugindata.unwrap_or_default();
                HandleEvent::Event(PluginEvent {
                    plugin: pd.plugin,
                    data: pd.data,
                    jsep: msg.jsep,
                    transaction: msg.transaction,
                })
            }
            "trickle" => {
                let candidate = msg.candidate?;
                if candidate.get("completed").and_then(Value::as_bool) == Some(true) {
                    HandleEvent::TrickleCompleted
                } else {
                    HandleEvent::Trickle(serde_json::from_value(candidate).ok()?)
                }
            }
            "webrtcup" => HandleEvent::WebrtcUp,
            "media" => HandleEvent::Media(MediaEvent {
                kind: msg.media_type.unwrap_or_default(),
                mid: msg.mid,
                receiving: msg.receiving.unwrap_or(false),
                seconds: msg.seconds,
            }),
            "slowlink" => HandleEvent::SlowLink(SlowLinkEvent {
                media: msg.media,
                mid: msg.mid,
                uplink: msg.uplink.unwrap_or(false),
                lost: msg.lost.unwrap_or(0),
            }),
            "hangup" => HandleEvent::Hangup {
                reason: msg.reason.unwrap_or_default(),
            },
            "detached" => HandleEvent::Detached,
            _ => return None,
        })
    }

    /// Whether no further events follow on this handle.
    pub fn is_final(&self) -> bool {
        matches!(self, HandleEvent::Detached | HandleEvent::Gone(_))
    }
}

/// The receiving end of a handle's event queue.
///
/// The queue is bounded ([`crate::GatewayConfig::handle_queue`]); the
/// connection task never waits for a slow reader (that would stall every
/// other handle), it drops events and reports [`HandleEvent::Lagged`].
#[derive(Debug)]
pub struct HandleEvents {
    pub(crate) rx: mpsc::Receiver<HandleEvent>,
}

impl HandleEvents {
    /// The next event; `None` after the final event (or once the connection
    /// task is gone).
    pub async fn recv(&mut self) -> Option<HandleEvent> {
        self.rx.recv().await
    }

    /// An event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<HandleEvent> {
        self.rx.try_recv().ok()
    }
}

/// The sending side kept by the connection task, with its lag bookkeeping.
#[derive(Debug)]
pub(crate) struct HandleSink {
    tx: mpsc::Sender<HandleEvent>,
    missed: u64,
}

impl HandleSink {
    pub(crate) fn new(tx: mpsc::Sender<HandleEvent>) -> HandleSink {
        HandleSink { tx, missed: 0 }
    }

    /// Queues `event` without waiting. Returns `false` once the receiver is
    /// gone. Events that do not fit are counted and reported as one
    /// `Lagged` before the next event that fits; final events claim a slot
    /// even if a `Lagged` could not be queued, so the owner always learns
    /// that the handle ended.
    pub(crate) fn deliver(&mut self, event: HandleEvent) -> bool {
        if self.missed > 0 {
            match self.tx.try_send(HandleEvent::Lagged {
                missed: self.missed,
            }) {
                Ok(()) => self.missed = 0,
                Err(mpsc::error::TrySendError::Closed(_)) => return false,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    if !event.is_final() {
                        self.missed += 1;
                        return true;
                    }
                }
            }
        }
        match self.tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            Err(mpsc::error::TrySendError::Full(event)) => {
                if event.is_final() {
                    // The owner must learn the handle ended: hand it over
                    // from a task that may wait for room.
                    let tx = self.tx.clone();
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            let _ = tx.send(event).await;
                        });
                    }
                } else {
                    self.missed += 1;
                    tracing::warn!(
                        missed = self.missed,
                        "Janus handle event queue full, dropping event"
                    );
                }
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn full_queue_reports_lag_and_keeps_final_event() {
        let (tx, rx) = mpsc::channel(2);
        let mut events = HandleEvents { rx };
        let mut sink = HandleSink::new(tx);
        for _ in 0..5 {
            assert!(sink.deliver(HandleEvent::WebrtcUp));
        }
        assert_eq!(events.recv().await, Some(HandleEvent::WebrtcUp));
        assert_eq!(events.recv().await, Some(HandleEvent::WebrtcUp));
        // Room for one again: the lag notice comes first.
        assert!(sink.deliver(HandleEvent::TrickleCompleted));
        assert_eq!(events.recv().await, Some(HandleEvent::Lagged { missed: 3 }));
        assert_eq!(events.recv().await, Some(HandleEvent::TrickleCompleted));
        // Fill it up, then a final event still arrives.
        assert!(sink.deliver(HandleEvent::WebrtcUp));
        assert!(sink.deliver(HandleEvent::WebrtcUp));
        assert!(sink.deliver(HandleEvent::Gone(GoneReason::ConnectionLost)));
        assert_eq!(events.recv().await, Some(HandleEvent::WebrtcUp));
        assert_eq!(events.recv().await, Some(HandleEvent::WebrtcUp));
        assert_eq!(
            events.recv().await,
            Some(HandleEvent::Gone(GoneReason::ConnectionLost))
        );
        drop(events);
        assert!(!sink.deliver(HandleEvent::WebrtcUp));
    }

    #[test]
    fn converts_janus_messages() {
        let parse = |s: &str| HandleEvent::from_incoming(serde_json::from_str(s).unwrap());
        assert_eq!(
            parse(r#"{"janus":"trickle","sender":1,"candidate":{"completed":true}}"#),
            Some(HandleEvent::TrickleCompleted)
        );
        assert_eq!(
            parse(r#"{"janus":"hangup","sender":1,"reason":"DTLS alert"}"#),
            Some(HandleEvent::Hangup {
                reason: "DTLS alert".to_owned()
            })
        );
        assert_eq!(
            parse(
                r#"{"janus":"slowlink","sender":1,"mid":"1","media":"video","uplink":true,"lost":12}"#
            ),
            Some(HandleEvent::SlowLink(SlowLinkEvent {
                media: Some("video".to_owned()),
                mid: Some("1".to_owned()),
                uplink: true,
                lost: 12
            }))
        );
        assert_eq!(parse(r#"{"janus":"whatever","sender":1}"#), None);
        assert_eq!(
            parse(r#"{"janus":"trickle","sender":1,"candidate":{"bogus":1}}"#),
            None
        );
    }
}
