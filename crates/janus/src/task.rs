//! The task that owns the Janus WebSocket.
//!
//! It is the only code that reads or writes the socket. Everything else
//! talks to it through [`Command`]s on a bounded queue. It runs until
//! [`crate::Gateway::close`] is called or every `Gateway`, `Session` and
//! `Handle` is dropped, and survives connection loss: it fails what was in
//! flight, ends all sessions and handles, reconnects with exponential
//! backoff and announces every change on the connection-state watch.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::json;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::{sleep_until, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::connection::{ConnectionState, GatewayConfig};
use crate::core::{object, Command, Core, Trouble};
use crate::error::{Error, GoneReason};
use crate::wire::{Incoming, ServerInfo};

pub(crate) type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The WebSocket subprotocol of the Janus API.
pub const SUBPROTOCOL: &str = "janus-protocol";

/// Opens a connection and asks Janus for `info`, so every connection starts
/// with a known server version (the API generation may change when Janus is
/// upgraded across a restart).
pub(crate) async fn open(url: &str, config: &GatewayConfig) -> Result<(Ws, ServerInfo), String> {
    let attempt = async {
        // wss:// uses TLS with the system's root certificates
        // (tokio-tungstenite with rustls and native roots).
        let mut request = url
            .into_client_request()
            .map_err(|e| format!("invalid URL: {e}"))?;
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            HeaderValue::from_static(SUBPROTOCOL),
        );
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_message_size));
        let (mut ws, _response) =
            tokio_tungstenite::connect_async_with_config(request, Some(ws_config), true)
                .await
                .map_err(|e| e.to_string())?;
        let txn = "connect-info";
        let text = serde_json::to_string(&json!({"janus": "info", "transaction": txn}))
            .map_err(|e| e.to_string())?;
        ws.send(Message::text(text))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let frame = ws
                .next()
                .await
                .ok_or("connection closed during info")?
                .map_err(|e| e.to_string())?;
            let text = match frame {
                Message::Text(t) => t.to_string(),
                Message::Binary(b) => String::from_utf8_lossy(&b).into_owned(),
                Message::Close(_) => return Err("connection closed during info".to_owned()),
                _ => continue,
            };
            let Ok(msg) = serde_json::from_str::<Incoming>(&text) else {
                continue;
            };
            if msg.transaction.as_deref() != Some(txn) {
                continue;
            }
            if msg.janus == "error" {
                let err = msg.error.unwrap_or_default();
                return Err(format!("info failed: {} {}", err.code, err.reason));
            }
            let info = serde_json::from_str::<ServerInfo>(&text)
                .map_err(|e| format!("bad server_info: {e}"))?;
            return Ok((ws, info));
        }
    };
    match tokio::time::timeout(config.connect_timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(format!("no connection within {:?}", config.connect_timeout)),
    }
}

/// Why one connection ended.
enum Ended {
    Lost(String),
    Trouble(Trouble),
    Reconnect,
    Close(Option<oneshot::Sender<()>>),
}

pub(crate) struct Task {
    url: String,
    config: GatewayConfig,
    cmd_rx: mpsc::Receiver<Command>,
    state_tx: watch::Sender<ConnectionState>,
    core: Core,
}

impl Task {
    pub(crate) fn new(
        url: String,
        config: GatewayConfig,
        cmd_rx: mpsc::Receiver<Command>,
        weak_tx: mpsc::WeakSender<Command>,
        state_tx: watch::Sender<ConnectionState>,
    ) -> Task {
        Task {
            url,
            config,
            cmd_rx,
            state_tx,
            core: Core::new(weak_tx),
        }
    }

    pub(crate) async fn run(mut self, ws: Ws, info: ServerInfo) {
        let mut conn = Some((ws, info));
        while let Some((ws, info)) = conn.take() {
            let epoch = self.core.epoch;
            tracing::info!(url = %self.url, epoch, version = %info.version_string, "connected to Janus");
            // The first connection was announced by `Gateway::connect_with`
            // before anyone could watch; later ones are news.
            if epoch > 1 {
                self.state_tx.send_replace(ConnectionState::Connected {
                    epoch,
                    info: Arc::new(info),
                });
            }
            let ended = self.serve(ws).await;
            let (first_delay, why) = match ended {
                Ended::Close(done) => {
                    self.core
                        .fail_all(|_| Error::Closed, |_| GoneReason::Closed);
                    self.state_tx.send_replace(ConnectionState::Closed);
                    if let Some(done) = done {
                        let _ = done.send(());
                    }
                    return;
                }
                Ended::Lost(reason) => {
                    tracing::warn!(url = %self.url, epoch, %reason, "connection to Janus lost");
                    self.core.fail_all(
                        |request| Error::Disconnected { request },
                        |_| GoneReason::ConnectionLost,
                    );
                    (self.config.reconnect_initial, reason)
                }
                Ended::Trouble(Trouble::SessionLost { session_id, reason }) => {
                    tracing::warn!(url = %self.url, epoch, session.id = session_id, %reason, "reconnecting to Janus");
                    self.core.fail_all(
                        |request| Error::Disconnected { request },
                        |id| {
                            if id == session_id {
                                reason
                            } else {
                                GoneReason::ConnectionLost
                            }
                        },
                    );
                    (self.config.reconnect_initial, reason.to_string())
                }
                Ended::Reconnect => {
                    tracing::info!(url = %self.url, epoch, "reconnecting to Janus on request");
                    self.core.fail_all(
                        |request| Error::Disconnected { request },
                        |_| GoneReason::ConnectionLost,
                    );
                    (Duration::ZERO, "reconnect requested".to_owned())
                }
            };
            conn = self.reconnect(first_delay, why).await;
        }
    }

    /// Serves one connection until it ends.
    async fn serve(&mut self, ws: Ws) -> Ended {
        let (mut sink, mut stream) = ws.split();
        let start = Instant::now();
        let mut ping =
            tokio::time::interval_at(start + self.config.ping_interval, self.config.ping_interval);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut keepalive = tokio::time::interval_at(
            start + self.config.keepalive_interval,
            self.config.keepalive_interval,
        );
        keepalive.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let sweep_every = Duration::from_secs(1);
        let mut sweep = tokio::time::interval_at(start + sweep_every, sweep_every);
        sweep.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut last_rx = start;
        // A connection that answered nothing (not even a pong) for this long
        // is dead, even if TCP has not noticed yet.
        let silence_limit = self.config.ping_interval * 3 / 2;

        let ended = loop {
            let mut send_ping = false;
            let mut flush = false;
            let outcome = tokio::select! {
                cmd = self.cmd_rx.recv() => self.command(cmd),
                frame = stream.next() => {
                    last_rx = Instant::now();
                    self.frame(frame, &mut flush)
                },
                _ = ping.tick() => {
                    if last_rx.elapsed() >= silence_limit {
                        Some(Ended::Lost(format!("no reply to WebSocket ping for {:?}", last_rx.elapsed())))
                    } else {
                        send_ping = true;
                        None
                    }
                },
                _ = keepalive.tick() => {
                    self.core.keepalive_all(std::time::Instant::now());
                    None
                },
                _ = sweep.tick() => {
                    self.core.sweep(std::time::Instant::now(), self.config.request_timeout);
                    None
                },
            };

            if !self.core.outbox.is_empty() || send_ping || flush {
                let frames = std::mem::take(&mut self.core.outbox);
                let write = async {
                    for text in frames {
                        sink.feed(Message::text(text)).await?;
                    }
                    if send_ping {
                        sink.feed(Message::Ping(Default::default())).await?;
                    }
                    sink.flush().await
                };
                match tokio::time::timeout(self.config.request_timeout, write).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => break Ended::Lost(format!("write failed: {e}")),
                    Err(_) => break Ended::Lost("write timed out".to_owned()),
                }
            }
            if let Some(ended) = outcome {
                break ended;
            }
        };

        if !matches!(ended, Ended::Lost(_)) {
            // Say goodbye properly; Janus destroys the sessions of a closed
            // transport connection either way.
            let _ = tokio::time::timeout(Duration::from_secs(1), async {
                let _ = sink.send(Message::Close(None)).await;
                // Wait for the close handshake to finish.
                while let Some(Ok(_)) = stream.next().await {}
            })
            .await;
        }
        ended
    }

    /// One command from the public handles; `Some` ends the connection.
    fn command(&mut self, cmd: Option<Command>) -> Option<Ended> {
        match cmd {
            None => Some(Ended::Close(None)),
            Some(Command::Request(req)) => {
                self.core.submit(req, std::time::Instant::now());
                None
            }
            Some(Command::Forget { target, epoch }) => {
                self.core.forget(target, epoch, std::time::Instant::now());
                None
            }
            Some(Command::Reconnect) => Some(Ended::Reconnect),
            Some(Command::Close { done }) => Some(Ended::Close(Some(done))),
        }
    }

    /// One frame from Janus; `Some` ends the connection. Sets `flush` when
    /// tungstenite queued a pong that must go out.
    fn frame(
        &mut self,
        frame: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
        flush: &mut bool,
    ) -> Option<Ended> {
        match frame {
            Some(Ok(Message::Text(text))) => self
                .core
                .incoming(&text, std::time::Instant::now())
                .map(Ended::Trouble),
            Some(Ok(Message::Binary(data))) => self
                .core
                .incoming(&String::from_utf8_lossy(&data), std::time::Instant::now())
                .map(Ended::Trouble),
            Some(Ok(Message::Ping(_))) => {
                // tungstenite queued the pong; get it out.
                *flush = true;
                None
            }
            Some(Ok(Message::Pong(_) | Message::Frame(_))) => None,
            Some(Ok(Message::Close(frame))) => Some(Ended::Lost(match frame {
                Some(f) => format!("closed by Janus ({} {})", f.code, f.reason),
                None => "closed by Janus".to_owned(),
            })),
            Some(Err(e)) => Some(Ended::Lost(e.to_string())),
            None => Some(Ended::Lost("connection closed".to_owned())),
        }
    }

    /// Waits and retries until a connection is open (returns it) or the
    /// client is closed (returns `None`).
    async fn reconnect(&mut self, first_delay: Duration, why: String) -> Option<(Ws, ServerInfo)> {
        let last_epoch = self.core.epoch;
        let mut delay = first_delay;
        let mut reason = why;
        let mut attempt: u32 = 0;
        loop {
            attempt = attempt.saturating_add(1);
            let wait = with_jitter(delay);
            self.state_tx.send_replace(ConnectionState::Disconnected {
                last_epoch,
                reason: reason.clone(),
                attempt,
                retry_in: wait,
            });
            if !wait.is_zero() {
                tracing::info!(url = %self.url, attempt, retry_in = ?wait, "reconnecting to Janus");
            }
            let deadline = Instant::now() + wait;
            loop {
                tokio::select! {
                    _ = sleep_until(deadline) => break,
                    cmd = self.cmd_rx.recv() => match self.while_disconnected(cmd) {
                        Idle::Continue => {}
                        Idle::ConnectNow => break,
                        Idle::Closed => return None,
                    },
                }
            }

            let (url, config) = (self.url.clone(), self.config.clone());
            let connect = open(&url, &config);
            tokio::pin!(connect);
            let result = loop {
                tokio::select! {
                    result = &mut connect => break result,
                    cmd = self.cmd_rx.recv() => match self.while_disconnected(cmd) {
                        Idle::Continue | Idle::ConnectNow => {}
                        Idle::Closed => return None,
                    },
                }
            };
            match result {
                Ok(conn) => {
                    self.core.epoch += 1;
                    return Some(conn);
                }
                Err(e) => {
                    tracing::warn!(url = %self.url, attempt, error = %e, "reconnect to Janus failed");
                    reason = e;
                    delay = next_backoff(delay, &self.config);
                }
            }
        }
    }

    fn while_disconnected(&mut self, cmd: Option<Command>) -> Idle {
        match cmd {
            None => {
                self.state_tx.send_replace(ConnectionState::Closed);
                Idle::Closed
            }
            Some(Command::Close { done }) => {
                self.state_tx.send_replace(ConnectionState::Closed);
                let _ = done.send(());
                Idle::Closed
            }
            Some(Command::Request(req)) => {
                let _ = req.reply.send(Err(Error::NotConnected));
                Idle::Continue
            }
            // Everything of the old connection is already released.
            Some(Command::Forget { .. }) => Idle::Continue,
            Some(Command::Reconnect) => Idle::ConnectNow,
        }
    }
}

enum Idle {
    Continue,
    ConnectNow,
    Closed,
}

/// The delay after a failed attempt that waited `delay`: 1 s, 2 s, 4 s, ...
/// up to the maximum (upstream: 1 s -> 32 s).
fn next_backoff(delay: Duration, config: &GatewayConfig) -> Duration {
    if delay.is_zero() {
        config.reconnect_initial
    } else {
        (delay * 2).min(config.reconnect_max)
    }
}

/// Adds up to 25 % so that many servers do not reconnect to a restarted
/// Janus in the same instant (upstream added jitter for the same reason).
fn with_jitter(delay: Duration) -> Duration {
    if delay.is_zero() {
        return delay;
    }
    let max_extra = delay.as_millis() as u64 / 4;
    delay + Duration::from_millis(rand::thread_rng().gen_range(0..=max_extra))
}

/// A `keepalive` for callers that want to send one themselves.
pub(crate) fn keepalive_msg(session_id: u64) -> serde_json::Map<String, serde_json::Value> {
    object(json!({"janus": "keepalive", "session_id": session_id}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let config = GatewayConfig::default();
        let mut delay = Duration::ZERO;
        let mut seen = Vec::new();
        for _ in 0..8 {
            delay = next_backoff(delay, &config);
            seen.push(delay.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 32, 32]);
    }

    #[test]
    fn jitter_stays_within_a_quarter() {
        for _ in 0..100 {
            let d = with_jitter(Duration::from_secs(4));
            assert!(
                d >= Duration::from_secs(4) && d <= Duration::from_secs(5),
                "{d:?}"
            );
        }
        assert_eq!(with_jitter(Duration::ZERO), Duration::ZERO);
    }
}
