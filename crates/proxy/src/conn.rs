//! One task per signaling-server WebSocket: reads messages and hands them to
//! the proxy in order, writes what the session queues, pings.

use futures_util::{SinkExt, StreamExt};
use runtime::shutdown::CancellationToken;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info_span, Instrument};

use crate::session::{Outgoing, ProxySession};
use crate::ProxyServer;

/// SDP offers of large calls are big; upstream allows 64 KiB too.
const MAX_MESSAGE_SIZE: usize = 64 * 1024;
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// No frame at all (not even a pong) for this long: the peer is gone.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
const QUEUE: usize = 1024;

/// The state of one connection that the message handlers change.
pub struct ConnState {
    pub tx: mpsc::Sender<Outgoing>,
    pub session: Option<Arc<ProxySession>>,
}

pub async fn serve<S>(server: Arc<ProxyServer>, io: S, peer: String, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let config = WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE_SIZE))
        .max_frame_size(Some(MAX_MESSAGE_SIZE));
    let ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let span = info_span!("proxy_conn", peer = %peer);
    run(server, ws, shutdown).instrument(span).await
}

async fn run<S>(server: Arc<ProxyServer>, ws: WebSocketStream<S>, shutdown: CancellationToken)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sink, mut stream) = ws.split();
    let (tx, mut rx) = mpsc::channel(QUEUE);
    let mut state = ConnState { tx, session: None };
    let mut ping = tokio::time::interval(PING_INTERVAL);
    ping.tick().await;
    let mut deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    // We sent a close frame: wait for the peer's before dropping the socket
    // (`runtime::closing`), so that the frames before it are not lost.
    let mut closing = false;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                closing = sink.send(Message::Close(None)).await.is_ok();
                break;
            }
            _ = tokio::time::sleep_until(deadline) => {
                debug!("no frame from the signaling server, closing");
                break;
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                let (text, last) = match out {
                    Outgoing::Text(t) => (t, false),
                    Outgoing::Last(t) => (t, true),
                };
                if sink.send(Message::text(text)).await.is_err() || last {
                    closing = sink.send(Message::Close(None)).await.is_ok();
                    break;
                }
            }
            msg = stream.next() => {
                deadline = tokio::time::Instant::now() + READ_TIMEOUT;
                if let Some(s) = &state.session {
                    s.mark_used();
                }
                match msg {
                    Some(Ok(Message::Text(t))) => server.process(&mut state, t.as_str()).await,
                    Some(Ok(Message::Binary(_))) => {
                        server.reply(&state, proto::proxy::ProxyServerMessage::error(
                            "", crate::err_invalid_format()));
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => {}
                }
            }
        }
    }
    if let Some(s) = state.session.take() {
        s.detach(&state.tx);
    }
    if closing {
        runtime::closing::linger(&mut stream, &server.metrics.lingering).await;
    }
}
