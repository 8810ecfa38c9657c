//! Connection set-up of one benchmark client (TCP, WebSocket, hello, room
//! join); the load module runs it afterwards.
//!
//! The whole client runs on one thread (a `LocalSet`), so the shared state
//! lives in `Rc`/`RefCell` and no borrow is ever held across an `.await`.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tracing::debug;

use crate::world::World;

pub type Ws = WebSocketStream<TcpStream>;

/// WebSocket settings of every client connection: modest buffers, because
/// large runs hold many thousands of connections in one process.
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(8 * 1024)
        .write_buffer_size(16 * 1024)
        .max_message_size(Some(1 << 20))
        .max_frame_size(Some(1 << 20))
}

/// Why a client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("websocket handshake: {0}")]
    Handshake(WsError),
    #[error("websocket: {0}")]
    Ws(WsError),
    #[error("server answered {step} with error {code}: {message}")]
    Refused {
        step: &'static str,
        code: String,
        message: String,
    },
    #[error("server said bye during {0}")]
    Bye(&'static str),
    #[error("connection closed during {0}")]
    Closed(&'static str),
    #[error("no answer to {0} within {1:?}")]
    Timeout(&'static str, Duration),
    #[error("{0}")]
    Protocol(String),
}

/// A connected, authenticated client.
pub struct Established {
    pub ws: Ws,
    /// Public id others use to address this session.
    pub public_id: String,
}

/// Connects client `index`, says hello and, in `room` runs, joins its room.
pub async fn establish(world: &World, index: u32) -> Result<Established, SetupError> {
    let (addr, url, source) = world.target_for(index);
    let started = Instant::now();
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|source| SetupError::Connect { addr, source })?;
    if let Some(src) = source {
        socket
            .bind(SocketAddr::new(src, 0))
            .map_err(|source| SetupError::Connect { addr, source })?;
    }
    let stream = socket
        .connect(addr)
        .await
        .map_err(|source| SetupError::Connect { addr, source })?;
    // Small messages, each flushed when the load wants it sent: no Nagle.
    let _ = stream.set_nodelay(true);
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
        .await
        .map_err(SetupError::Handshake)?;
    world.record_connect(started.elapsed());

    let hello = json!({"type": "hello", "hello": {
        "version": proto::client::HELLO_VERSION_V1,
        "auth": {"url": world.auth_url, "params": {}},
    }});
    world
        .counters
        .hellos_sent
        .set(world.counters.hellos_sent.get() + 1);
    let hello_sent = Instant::now();
    ws.send(Message::text(hello.to_string()))
        .await
        .map_err(SetupError::Ws)?;
    let reply = expect(&mut ws, "hello", world.opts.hello_timeout).await?;
    world.record_hello(hello_sent.elapsed());
    let hello = &reply["hello"];
    let text = |k: &str| hello[k].as_str().unwrap_or_default().to_owned();
    let (sessionid, resumeid) = (text("sessionid"), text("resumeid"));
    debug!(client = index, session = %sessionid, user = %text("userid"), "registered");
    let public_id = match &world.codec {
        Some(codec) => {
            let data = codec
                .decode_private(&resumeid)
                .map_err(|e| SetupError::Protocol(format!("cannot decode private id: {e}")))?;
            codec.encode_public(&data)
        }
        None => sessionid,
    };
    if public_id.is_empty() {
        return Err(SetupError::Protocol(
            "hello answer without a session id".into(),
        ));
    }

    if let Some(room) = world.room_name(index) {
        let join = json!({"type": "room", "id": "join", "room": {
            "roomid": room,
            "sessionid": format!("{}-talk-{index}", world.tag),
        }});
        ws.send(Message::text(join.to_string()))
            .await
            .map_err(SetupError::Ws)?;
        let reply = expect(&mut ws, "room", world.opts.hello_timeout).await?;
        if reply["room"]["roomid"].as_str() != Some(room.as_str()) {
            return Err(SetupError::Protocol(format!(
                "joined a different room: {reply}"
            )));
        }
    }
    Ok(Established { ws, public_id })
}

/// Reads until a message of type `kind` arrives; `error` and `bye` fail.
async fn expect(ws: &mut Ws, kind: &'static str, limit: Duration) -> Result<Value, SetupError> {
    let deadline = Instant::now() + limit;
    loop {
        let frame = match timeout(
            deadline.saturating_duration_since(Instant::now()),
            ws.next(),
        )
        .await
        {
            Err(_) => return Err(SetupError::Timeout(kind, limit)),
            Ok(None) => return Err(SetupError::Closed(kind)),
            Ok(Some(Err(e))) => return Err(SetupError::Ws(e)),
            Ok(Some(Ok(f))) => f,
        };
        let text = match frame {
            Message::Text(t) => t,
            Message::Close(_) => return Err(SetupError::Closed(kind)),
            _ => continue,
        };
        let v: Value = serde_json::from_str(text.as_str())
            .map_err(|e| SetupError::Protocol(format!("unparsable message from server: {e}")))?;
        match v["type"].as_str().unwrap_or_default() {
            t if t == kind => return Ok(v),
            "error" => {
                return Err(SetupError::Refused {
                    step: kind,
                    code: v["error"]["code"].as_str().unwrap_or_default().to_owned(),
                    message: v["error"]["message"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                })
            }
            "bye" => return Err(SetupError::Bye(kind)),
            // A later server's `welcome`, room events of other joins, ...
            other => debug!(kind = other, "ignored while waiting for {kind}"),
        }
    }
}

/// Says bye and closes a connection that has no reader/writer tasks
/// (`connect` rounds), then waits briefly for the server to close.
pub async fn close(mut ws: Ws) {
    let _ = ws.send(Message::text(BYE)).await;
    let _ = ws.close(None).await;
    let _ = timeout(Duration::from_secs(5), async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

pub const BYE: &str = r#"{"type":"bye","bye":{}}"#;
