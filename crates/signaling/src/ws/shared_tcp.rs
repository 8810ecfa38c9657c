//! A TCP socket that the connection task reads and writes while the hub may
//! also write whole frames to it when the connection is idle (see
//! `hub::core::conn::Conn::set_direct`). Both hold the same `TcpStream`;
//! who writes when is decided under the connection queue's lock.

use bytes::{Buf, Bytes};
use std::io::{self, Read};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::TcpStream;

pub(super) struct SharedTcp {
    stream: Arc<TcpStream>,
    /// Bytes the HTTP layer read past the upgrade request: the client's
    /// first frames, read before the socket.
    prefix: Bytes,
}

impl SharedTcp {
    /// `prefix` is a slice of the HTTP layer's read buffer and, even when
    /// empty, keeps that whole buffer (several KiB) alive: it is copied
    /// out, so an idle connection holds no more than its own bytes.
    pub(super) fn new(stream: Arc<TcpStream>, prefix: Bytes) -> SharedTcp {
        let prefix = if prefix.is_empty() {
            Bytes::new()
        } else {
            Bytes::copy_from_slice(&prefix)
        };
        SharedTcp { stream, prefix }
    }
}

impl AsyncRead for SharedTcp {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            if this.prefix.is_empty() {
                this.prefix = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        loop {
            ready!(this.stream.poll_read_ready(cx))?;
            let unfilled = buf.initialize_unfilled();
            let mut got = 0;
            let res = this.stream.try_io(Interest::READABLE, || {
                let n = (&*socket2::SockRef::from(&*this.stream)).read(unfilled)?;
                got = n;
                if n > 0 && n < unfilled.len() {
                    // A read that did not fill the buffer emptied the
                    // socket (epoll is edge-triggered): wait for the next
                    // edge instead of trying another read that would only
                    // say "would block" (tokio's own sockets do the same).
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(())
            });
            match res {
                Ok(()) => {
                    buf.advance(got);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => {
                    buf.advance(got);
                    return Poll::Ready(Ok(()));
                }
                // Readiness was stale: wait for the next edge.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncWrite for SharedTcp {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.stream.poll_write_ready(cx))?;
            match self.stream.try_write(buf) {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.stream).shutdown(std::net::Shutdown::Write))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_the_prefix_first_then_the_socket_and_writes_through() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        let mut io = SharedTcp::new(Arc::new(server), Bytes::from_static(b"early "));
        client.write_all(b"later").await.expect("write");
        let mut got = vec![0u8; 11];
        io.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"early later");
        io.write_all(b"answer").await.expect("write back");
        io.shutdown().await.expect("shutdown");
        let mut back = Vec::new();
        client.read_to_end(&mut back).await.expect("read back");
        assert_eq!(&back, b"answer");
    }
}
