//! A minimal WebSocket client written directly on a TCP socket, for what a
//! well-behaved client library will not do: send invalid UTF-8 in text
//! frames, oversized or fragmented frames, raw pings, and never read (with a
//! tiny receive buffer, so server back-pressure starts early).
#![allow(dead_code)]

use serde_json::{json, Value};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::{timeout_at, Instant};

pub const OP_CONT: u8 = 0x0;
pub const OP_TEXT: u8 = 0x1;
pub const OP_BINARY: u8 = 0x2;
pub const OP_CLOSE: u8 = 0x8;
pub const OP_PING: u8 = 0x9;
pub const OP_PONG: u8 = 0xA;

/// One thing read from the socket.
#[derive(Debug)]
pub enum RawIncoming {
    Frame {
        opcode: u8,
        payload: Vec<u8>,
    },
    /// EOF, reset or an unparsable stream.
    Closed,
    Timeout,
}

pub struct RawWs {
    stream: TcpStream,
    buf: Vec<u8>,
    mask_seed: u32,
}

impl RawWs {
    /// Connects to `ws://addr/spreed` and completes the upgrade.
    pub async fn connect(addr: SocketAddr) -> io::Result<RawWs> {
        let stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Self::handshake(stream, addr).await
    }

    /// Like [`connect`](Self::connect), with `SO_RCVBUF` set to `size` before
    /// connecting so the advertised TCP window stays small.
    pub async fn connect_small_rcvbuf(addr: SocketAddr, size: u32) -> io::Result<RawWs> {
        let socket = TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(size)?;
        let stream = tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        Self::handshake(stream, addr).await
    }

    async fn handshake(mut stream: TcpStream, addr: SocketAddr) -> io::Result<RawWs> {
        let req = format!(
            "GET /spreed HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Sec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await?;
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut buf = Vec::new();
        let end = loop {
            if let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break pos + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "handshake timed out"))??;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof in handshake",
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(io::Error::other(format!("upgrade refused: {head}")));
        }
        let mut ws = RawWs {
            stream,
            buf: buf[end..].to_vec(),
            mask_seed: 0x9e37_79b9,
        };
        // The server's first frame is always the `welcome` message (it is
        // queued before the connection task starts); tests here look at
        // what follows.
        match ws.read_frame(Instant::now() + Duration::from_secs(5)).await {
            RawIncoming::Frame {
                opcode: OP_TEXT,
                payload,
            } if payload.starts_with(br#"{"type":"welcome""#) => Ok(ws),
            other => Err(io::Error::other(format!(
                "expected the welcome message first, got {other:?}"
            ))),
        }
    }

    /// Writes one masked frame.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], fin: bool) -> io::Result<()> {
        let mut out = Vec::with_capacity(payload.len() + 14);
        out.push(if fin { 0x80 } else { 0 } | opcode);
        let len = payload.len();
        if len < 126 {
            out.push(0x80 | len as u8);
        } else if len <= 0xffff {
            out.push(0x80 | 126);
            out.extend_from_slice(&(len as u16).to_be_bytes());
        } else {
            out.push(0x80 | 127);
            out.extend_from_slice(&(len as u64).to_be_bytes());
        }
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        let mask = self.mask_seed.to_be_bytes();
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        tokio::time::timeout(Duration::from_secs(5), self.stream.write_all(&out))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))?
    }

    pub async fn send_text(&mut self, text: &str) -> io::Result<()> {
        self.send_frame(OP_TEXT, text.as_bytes(), true).await
    }

    pub async fn send_json(&mut self, v: &Value) -> io::Result<()> {
        self.send_text(&v.to_string()).await
    }

    /// Next complete frame (control frames included), EOF, or timeout.
    pub async fn read_frame(&mut self, deadline: Instant) -> RawIncoming {
        loop {
            if let Some((opcode, payload, used)) = parse_frame(&self.buf) {
                self.buf.drain(..used);
                return RawIncoming::Frame { opcode, payload };
            }
            let mut chunk = vec![0u8; 64 * 1024];
            match timeout_at(deadline, self.stream.read(&mut chunk)).await {
                Err(_) => return RawIncoming::Timeout,
                Ok(Ok(0)) | Ok(Err(_)) => return RawIncoming::Closed,
                Ok(Ok(n)) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Next text frame parsed as JSON (other frames skipped); `None` on
    /// timeout or close.
    pub async fn recv_json(&mut self, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            match self.read_frame(deadline).await {
                RawIncoming::Frame {
                    opcode: OP_TEXT,
                    payload,
                } => return serde_json::from_slice(&payload).ok(),
                RawIncoming::Frame { .. } => {}
                _ => return None,
            }
        }
    }

    /// Sends `msg` with `"id": id` and returns the reply carrying that id
    /// (other messages are dropped). Panics on timeout.
    pub async fn request(&mut self, id: &str, mut msg: Value) -> Value {
        msg["id"] = Value::String(id.to_owned());
        self.send_json(&msg).await.expect("raw send");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match self.read_frame(deadline).await {
                RawIncoming::Frame {
                    opcode: OP_TEXT,
                    payload,
                } => {
                    let v: Value = serde_json::from_slice(&payload).expect("server sends JSON");
                    if v["id"] == id {
                        return v;
                    }
                }
                RawIncoming::Frame { .. } => {}
                other => panic!("RawWs: {other:?} while waiting for reply {id}"),
            }
        }
    }

    pub async fn shutdown(mut self) {
        let _ = self.stream.shutdown().await;
    }
}

/// `(opcode, payload, bytes used)` of the first complete frame in `buf`.
fn parse_frame(buf: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let mut len = (buf[1] & 0x7f) as usize;
    let mut pos = 2;
    if len == 126 {
        if buf.len() < 4 {
            return None;
        }
        len = u16::from_be_bytes([buf[2], buf[3]]) as usize;
        pos = 4;
    } else if len == 127 {
        if buf.len() < 10 {
            return None;
        }
        len = u64::from_be_bytes(buf[2..10].try_into().ok()?) as usize;
        pos = 10;
    }
    let mask = if masked {
        if buf.len() < pos + 4 {
            return None;
        }
        let m = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
        pos += 4;
        Some(m)
    } else {
        None
    };
    if buf.len() < pos + len {
        return None;
    }
    let mut payload = buf[pos..pos + len].to_vec();
    if let Some(m) = mask {
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= m[i % 4];
        }
    }
    Some((opcode, payload, pos + len))
}

/// What one garbage connection sends, cycling through the kinds.
pub async fn garbage_client(
    addr: std::net::SocketAddr,
    backend_url: String,
    seed: usize,
    until: Instant,
    conns: Arc<AtomicUsize>,
) {
    let mut i = seed;
    while Instant::now() < until {
        let Ok(mut raw) = RawWs::connect(addr).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        conns.fetch_add(1, Ordering::Relaxed);
        let mut alive = true;
        for _ in 0..25 {
            if !alive || Instant::now() >= until {
                break;
            }
            i += 1;
            let (op, payload, closes): (u8, Vec<u8>, bool) = match i % 16 {
                0 => (OP_TEXT, b"{\"type\":".to_vec(), false),
                1 => (OP_BINARY, vec![0xde, 0xad, 0xbe, 0xef], false),
                2 => (
                    OP_TEXT,
                    format!("{{\"id\":\"{i}\",\"type\":\"nonsense\"}}").into_bytes(),
                    false,
                ),
                3 => (
                    OP_TEXT,
                    br#"{"type":"hello","hello":{"version":"3.0"}}"#.to_vec(),
                    false,
                ),
                4 => (
                    OP_TEXT,
                    json!({"type": "hello", "hello": {"version": "1.0", "auth": {
                        "url": "http://nowhere.invalid/", "params": {"x": 1}}}})
                    .to_string()
                    .into_bytes(),
                    false,
                ),
                5 => (
                    OP_TEXT,
                    br#"{"type":"message","message":{"recipient":{"type":"room"},"data":{}}}"#
                        .to_vec(),
                    false,
                ),
                6 => (OP_TEXT, b"{\"x\":\"\xff\xfe\"}".to_vec(), true),
                7 => (
                    OP_TEXT,
                    format!("{}{}", "[".repeat(20_000), "]".repeat(20_000)).into_bytes(),
                    false,
                ),
                8 => (OP_TEXT, vec![b' '; 70_000], true),
                9 => (OP_PING, b"storm".to_vec(), false),
                10 => (OP_TEXT, b"{\"type\":\"hel".to_vec(), false), // unfinished fragment...
                11 => (0x3, b"reserved opcode".to_vec(), true),
                12 => (
                    OP_TEXT,
                    br#"{"type":"hello","hello":{"version":"1.0","resumeid":"Zm9vYmFy"}}"#.to_vec(),
                    false,
                ),
                13 => (OP_CLOSE, vec![0x03, 0xe8], true),
                14 => (
                    OP_TEXT,
                    json!({"type": "hello", "hello": {"version": "1.0", "auth": {
                        "url": backend_url, "params": {"userid": format!("storm{i}")}}}})
                    .to_string()
                    .into_bytes(),
                    false,
                ),
                _ => (OP_TEXT, vec![b'{'; 1000], false),
            };
            let fin = i % 16 != 10;
            if raw.send_frame(op, &payload, fin).await.is_err() {
                alive = false;
            }
            if !fin {
                // ...finished with a continuation frame.
                if raw.send_frame(OP_CONT, b"lo\"}", true).await.is_err() {
                    alive = false;
                }
            }
            if closes {
                alive = false;
            }
            // Read a little, sometimes; mostly let answers pile up.
            if i.is_multiple_of(3) {
                if let RawIncoming::Closed = raw
                    .read_frame(Instant::now() + Duration::from_millis(2))
                    .await
                {
                    alive = false;
                }
            }
        }
        drop(raw);
    }
}
