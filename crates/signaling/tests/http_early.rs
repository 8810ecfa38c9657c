//! Answers the server gives before it read the request body (411 for a
//! chunked body, 413 for a declared length over the limit, 403 without
//! checksum headers) reach a client that writes its whole body first and
//! reads the answer afterwards, as most HTTP clients do. The server reads
//! and discards the rest of the body instead of closing the connection
//! under the client's feet (its writes then fail with a broken pipe or a
//! reset, and it may never read the answer).
// Single server only: one node's HTTP answers before the request body.

mod common;

use common::*;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Write `head` and then `body` in pieces, then read the answer's status
/// code. A write error is a failure too: the client could not finish its
/// request (a broken pipe), and many clients then never read the answer.
async fn write_then_read(
    addr: SocketAddr,
    head: String,
    body: Vec<Vec<u8>>,
) -> Result<u16, String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut write_error = None;
    if let Err(e) = s.write_all(head.as_bytes()).await {
        write_error = Some(e);
    }
    // The answer comes now, before the body (written only afterwards).
    tokio::time::sleep(Duration::from_millis(20)).await;
    for piece in &body {
        if write_error.is_some() {
            break;
        }
        // A slow uploader: the server's answer comes while it still writes.
        tokio::time::sleep(Duration::from_millis(2)).await;
        if let Err(e) = s.write_all(piece).await {
            write_error = Some(e);
        }
    }
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => {
                if out.is_empty() {
                    return Err(format!("read failed: {e} (write error: {write_error:?})"));
                }
                break;
            }
            Err(_) => return Err("no answer within 10 s".into()),
        }
    }
    // Many HTTP clients give up on a write error without reading.
    if let Some(e) = write_error {
        return Err(format!("could not send the whole body: {e}"));
    }
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))
}

fn head(addr: SocketAddr, extra: &str) -> String {
    format!(
        "POST /api/v1/room/room1 HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{extra}\r\n"
    )
}

async fn all_answered(
    addr: SocketAddr,
    rounds: usize,
    expect: u16,
    make: impl Fn() -> (String, Vec<Vec<u8>>),
) {
    let mut failed = Vec::new();
    for round in 0..rounds {
        let (head, body) = make();
        match write_then_read(addr, head, body).await {
            Ok(code) if code == expect => {}
            other => failed.push(format!("round {round}: {other:?}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {rounds}: {failed:?}",
        failed.len()
    );
}

#[tokio::test]
async fn length_required_reaches_a_client_sending_chunks() {
    let s = TestServer::start().await;
    all_answered(s.addr, 20, 411, || {
        let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, "a".repeat(64 * 1024)).into_bytes();
        let mut body = vec![chunk; 16];
        body.push(b"0\r\n\r\n".to_vec());
        (head(s.addr, "Transfer-Encoding: chunked\r\n"), body)
    })
    .await;
}

#[tokio::test]
async fn too_large_reaches_a_client_sending_its_body() {
    let s = TestServer::start().await;
    let len = 2 * 1024 * 1024;
    all_answered(s.addr, 20, 413, || {
        let body = vec![vec![b'a'; 64 * 1024]; len / (64 * 1024)];
        (head(s.addr, &format!("Content-Length: {len}\r\n")), body)
    })
    .await;
}

#[tokio::test]
async fn forbidden_reaches_a_client_sending_its_body() {
    let s = TestServer::start().await;
    let len = 200 * 1024;
    // Few rounds: failed authentications are throttled (then 429).
    all_answered(s.addr, 4, 403, || {
        let body = vec![vec![b' '; 8 * 1024]; len / (8 * 1024)];
        (head(s.addr, &format!("Content-Length: {len}\r\n")), body)
    })
    .await;
}
