//! The end of a WebSocket that the server closes.
//!
//! A server that drops its socket while frames of the client (a pong, a
//! message, its own close frame) are still unread makes the kernel answer
//! with a reset, and the client's kernel then throws away what it had
//! received but not yet handed to the application: the server's last
//! frames (a `bye` reply, an error, the close frame itself) are lost. RFC
//! 6455 §7.1.1 asks the side that starts the close to wait for the other
//! side's close frame before closing the TCP connection; [`linger`] does
//! that after the close frame was sent, discarding whatever else arrives,
//! for at most [`LINGER`], and for at most [`MAX_LINGERING`] sockets at a
//! time (beyond that, sockets are closed at once as before).
//!
//! The caller releases everything else (session, queues) before lingering:
//! only the socket waits.

use crate::metrics::Gauge;
use futures_util::{Stream, StreamExt};
use std::time::Duration;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// How long a closed socket waits for the peer's close frame.
pub const LINGER: Duration = Duration::from_secs(2);

/// Sockets lingering at once, at most (a few KiB each).
pub const MAX_LINGERING: i64 = 10_000;

/// After the server sent its close frame: read and discard until the
/// peer's close frame, the end of the stream, an error or [`LINGER`]. The
/// socket is closed when the caller drops the stream afterwards.
/// `lingering` counts the sockets waiting here (and bounds them).
pub async fn linger<R>(stream: &mut R, lingering: &Gauge)
where
    R: Stream<Item = Result<Message, WsError>> + Unpin,
{
    if lingering.get() >= MAX_LINGERING {
        return;
    }
    lingering.inc();
    let deadline = tokio::time::Instant::now() + LINGER;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(Message::Close(_)))) | Ok(Some(Err(_))) | Ok(None) | Err(_) => break,
            Ok(Some(Ok(_))) => {}
        }
    }
    lingering.dec();
}
