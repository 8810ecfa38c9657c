//! The NATS pipe of a relayed connection (see the cluster layer's `relay`
//! module for the protocol and the side that holds the session): frame tags,
//! and [`RelayLink`], the end where the client's socket is.

use async_nats::{Client, Subscriber};
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::StreamExt;
use std::time::Duration;
use tracing::debug;

use crate::bus::Frame;

/// B acknowledges at least this often (in frames), and this long after a
/// write, besides every keepalive.
pub const ACK_EVERY: u64 = 64;
pub const ACK_DELAY: Duration = Duration::from_millis(50);
/// Frames A sends ahead of B's acknowledgements; the rest waits queued.
pub(crate) const MAX_UNACKED: usize = 4096;
/// Client frames A reads ahead while an earlier one waits for the backend.
pub(crate) const MAX_QUEUED_UP: usize = 256;

pub(crate) const TEXT: u8 = b'T';
pub(crate) const CLOSE: u8 = b'C';
pub(crate) const AWAY: u8 = b'A';
pub(crate) const ALIVE: u8 = b'K';
pub(crate) const BINARY: u8 = b'B';

pub(crate) fn subjects(relay: &str) -> (String, String) {
    (format!("relay.{relay}.up"), format!("relay.{relay}.down"))
}

pub(crate) fn tagged(tag: u8, n: u64) -> Bytes {
    let mut b = BytesMut::with_capacity(9);
    b.put_u8(tag);
    b.put_u64(n);
    b.freeze()
}

pub(crate) fn count(payload: &[u8]) -> u64 {
    payload
        .get(1..9)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map_or(0, u64::from_be_bytes)
}

pub(crate) fn is_hello_answer(frame: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Kind<'a> {
        #[serde(rename = "type", borrow)]
        kind: std::borrow::Cow<'a, str>,
    }
    serde_json::from_str::<Kind>(frame).is_ok_and(|k| k.kind == "hello")
}

/// What the session's server sent for the client.
#[derive(Debug)]
pub enum Down {
    Text(u64, Frame),
    /// Close the client's socket normally (bye, session closed).
    Close,
    /// Close it as "going away": the client should reconnect and resume.
    Away,
    Alive,
}

/// B's end: the client's socket is here, its session on `holder`.
pub struct RelayLink {
    pub(crate) client: Client,
    pub(crate) up: String,
    pub(crate) down: Subscriber,
    pub(crate) interval: Duration,
}

impl std::fmt::Debug for RelayLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayLink").field("up", &self.up).finish()
    }
}

impl RelayLink {
    /// Keepalive interval; the other end is gone after three of silence.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The next frame from the session's server; `None` when NATS ended
    /// the subscription.
    pub async fn recv(&mut self) -> Option<Down> {
        loop {
            let m = self.down.next().await?;
            let p = &m.payload;
            match p.first() {
                Some(&TEXT) if p.len() >= 9 => {
                    let Ok(text) = String::from_utf8(p[9..].to_vec()) else {
                        debug!("relay frame is not UTF-8");
                        continue;
                    };
                    return Some(Down::Text(count(p), Frame::from(text)));
                }
                Some(&CLOSE) => return Some(Down::Close),
                Some(&AWAY) => return Some(Down::Away),
                Some(&ALIVE) => return Some(Down::Alive),
                _ => debug!("unknown relay frame"),
            }
        }
    }

    pub async fn send_text(&self, text: &str) {
        let mut b = BytesMut::with_capacity(1 + text.len());
        b.put_u8(TEXT);
        b.put_slice(text.as_bytes());
        self.publish(b.freeze()).await
    }

    pub async fn send_binary(&self) {
        self.publish(Bytes::from_static(&[BINARY])).await
    }

    /// Everything up to `written` reached the client's socket.
    pub async fn ack(&self, written: u64) {
        self.publish(tagged(ALIVE, written)).await
    }

    /// The client's socket is gone after `written` frames.
    pub async fn close(&self, written: u64) {
        self.publish(tagged(CLOSE, written)).await;
        // Make sure it leaves before the subscription (and maybe the
        // process) goes.
        let _ = tokio::time::timeout(Duration::from_secs(1), self.client.flush()).await;
    }

    async fn publish(&self, payload: Bytes) {
        if let Err(e) = self.client.publish(self.up.clone(), payload).await {
            debug!(error = %e, "relay frame not sent");
        }
    }
}
