//! HTTP listeners: TCP, Unix sockets and TLS, each served by hyper with
//! upgrades (WebSockets) and a graceful stop.

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use crate::shutdown::Shutdown;

/// Response body type of every handler.
pub type Body = Full<Bytes>;

/// Where a listener listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl std::fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ListenAddr::Tcp(a) => f.write_str(a),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Parse a space-separated `listen` value; entries starting with `/` are Unix sockets.
pub fn parse_listen(value: &str) -> Vec<ListenAddr> {
    value
        .split_whitespace()
        .map(|s| {
            if s.starts_with('/') {
                ListenAddr::Unix(PathBuf::from(s))
            } else {
                ListenAddr::Tcp(s.to_owned())
            }
        })
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    #[error("could not listen on {addr}: {source}")]
    Bind {
        addr: String,
        source: std::io::Error,
    },
    #[error("could not load TLS certificate/key: {0}")]
    Tls(String),
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> Result<Listener, ListenError> {
        match addr {
            ListenAddr::Tcp(a) => {
                bind_tcp(a)
                    .await
                    .map(Listener::Tcp)
                    .map_err(|source| ListenError::Bind {
                        addr: a.clone(),
                        source,
                    })
            }
            ListenAddr::Unix(path) => {
                // A socket file left by a previous run would make bind fail.
                if path.exists() {
                    let _ = std::fs::remove_file(path);
                }
                UnixListener::bind(path)
                    .map(|l| Listener::Unix(l, path.clone()))
                    .map_err(|source| ListenError::Bind {
                        addr: path.display().to_string(),
                        source,
                    })
            }
        }
    }

    /// The bound TCP address (for tests on port 0).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Listener::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Listener::Unix(_, p) => format!("unix:{}", p.display()),
        }
    }
}

/// Pending connections the kernel queues per listener. Many clients
/// reconnect at once after a network blip; 128 (the default) makes some of
/// them wait a second for a SYN retransmit.
const LISTEN_BACKLOG: u32 = 4096;

async fn bind_tcp(addr: &str) -> std::io::Result<TcpListener> {
    let mut last = None;
    for a in tokio::net::lookup_host(addr).await? {
        let socket = if a.is_ipv4() {
            tokio::net::TcpSocket::new_v4()?
        } else {
            tokio::net::TcpSocket::new_v6()?
        };
        socket.set_reuseaddr(true)?;
        match socket.bind(a).and_then(|()| socket.listen(LISTEN_BACKLOG)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::AddrNotAvailable, "no address to bind")
    }))
}

/// Load a PEM certificate chain and key into a TLS acceptor.
pub fn load_tls(cert: &Path, key: &Path) -> Result<TlsAcceptor, ListenError> {
    let certs = {
        let data = std::fs::read(cert)
            .map_err(|e| ListenError::Tls(format!("{}: {e}", cert.display())))?;
        rustls_pemfile::certs(&mut data.as_slice())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ListenError::Tls(format!("{}: {e}", cert.display())))?
    };
    if certs.is_empty() {
        return Err(ListenError::Tls(format!(
            "{}: no certificate found",
            cert.display()
        )));
    }
    let key = {
        let data =
            std::fs::read(key).map_err(|e| ListenError::Tls(format!("{}: {e}", key.display())))?;
        rustls_pemfile::private_key(&mut data.as_slice())
            .map_err(|e| ListenError::Tls(format!("{}: {e}", key.display())))?
            .ok_or_else(|| ListenError::Tls(format!("{}: no private key found", key.display())))?
    };
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| ListenError::Tls(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS settings of HTTPS listeners, replaceable on SIGHUP (renewed
/// certificates): new connections use the current acceptor, open ones keep
/// theirs.
#[derive(Clone)]
pub struct Tls(Arc<parking_lot::RwLock<TlsAcceptor>>);

impl Tls {
    pub fn new(acceptor: TlsAcceptor) -> Tls {
        Tls(Arc::new(parking_lot::RwLock::new(acceptor)))
    }

    pub fn current(&self) -> TlsAcceptor {
        self.0.read().clone()
    }

    /// SIGHUP: load `[https] certificate`/`key` of `ini` again and log the
    /// outcome; on error the old ones stay.
    pub fn reload_from(&self, ini: &crate::config::Ini) {
        let cert = ini.get_string("https", "certificate", "");
        let key = ini.get_string("https", "key", "");
        match self.reload(cert.as_ref(), key.as_ref()) {
            Ok(()) => info!(%cert, "TLS certificate reloaded"),
            Err(e) => warn!(error = %e, "keeping the old TLS certificate"),
        }
    }

    /// Loads `cert`/`key` again; on error the old ones stay.
    pub fn reload(&self, cert: &Path, key: &Path) -> Result<(), ListenError> {
        let acceptor = load_tls(cert, key)?;
        *self.0.write() = acceptor;
        Ok(())
    }
}

/// What a handler knows about the connection a request came on.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Socket peer address; `None` for Unix sockets.
    pub addr: Option<SocketAddr>,
    pub tls: bool,
}

/// Options of one listener.
#[derive(Clone)]
pub struct ServeOptions {
    pub read_timeout: Duration,
    pub tls: Option<Tls>,
}

/// Accept connections until shutdown and serve each with `handler`.
///
/// Each connection runs in its own task tracked by `shutdown`; on shutdown
/// the accept loop stops and open HTTP connections finish their current
/// request (upgraded WebSockets watch the same token themselves).
pub fn serve<H, F>(listener: Listener, options: ServeOptions, handler: H, shutdown: Shutdown)
where
    H: Fn(Request<Incoming>, PeerInfo) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let tracker = shutdown.tracker.clone();
    tracker.spawn(async move {
        info!(listener = %listener.describe(), "listening");
        loop {
            let accepted = tokio::select! {
                _ = shutdown.token.cancelled() => break,
                res = accept(&listener) => res,
            };
            let (stream, addr) = match accepted {
                Ok(v) => v,
                Err(e) => {
                    // Out of file descriptors and similar: back off briefly, keep serving.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let handler = handler.clone();
            let options = options.clone();
            let shutdown2 = shutdown.clone();
            shutdown.tracker.spawn(async move {
                match (stream, options.tls.clone()) {
                    (Stream::Tcp(s), Some(tls)) => match tls.current().accept(s).await {
                        Ok(tls) => {
                            serve_conn(
                                tls,
                                PeerInfo { addr, tls: true },
                                &options,
                                handler,
                                shutdown2,
                            )
                            .await
                        }
                        Err(e) => debug!(error = %e, "TLS handshake failed"),
                    },
                    (Stream::Tcp(s), None) => {
                        let _ = s.set_nodelay(true);
                        serve_conn(
                            s,
                            PeerInfo { addr, tls: false },
                            &options,
                            handler,
                            shutdown2,
                        )
                        .await
                    }
                    (Stream::Unix(s), _) => {
                        serve_conn(
                            s,
                            PeerInfo {
                                addr: None,
                                tls: false,
                            },
                            &options,
                            handler,
                            shutdown2,
                        )
                        .await
                    }
                }
            });
        }
        if let Listener::Unix(_, path) = &listener {
            let _ = std::fs::remove_file(path);
        }
    });
}

enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept(listener: &Listener) -> std::io::Result<(Stream, Option<SocketAddr>)> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, a)| (Stream::Tcp(s), Some(a))),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| (Stream::Unix(s), None)),
    }
}

async fn serve_conn<S, H, F>(
    stream: S,
    peer: PeerInfo,
    options: &ServeOptions,
    handler: H,
    shutdown: Shutdown,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Request<Incoming>, PeerInfo) -> F + Send + Sync + Clone + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    let service = hyper::service::service_fn(move |req| {
        let fut = handler(req, peer.clone());
        async move { Ok::<_, std::convert::Infallible>(fut.await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(options.read_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .with_upgrades();
    tokio::pin!(conn);
    tokio::select! {
        res = conn.as_mut() => {
            if let Err(e) = res {
                debug!(error = %e, "HTTP connection ended with error");
            }
        }
        _ = shutdown.token.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listen_lists() {
        assert_eq!(
            parse_listen(" 127.0.0.1:8080  /run/sig.sock [::1]:80 "),
            vec![
                ListenAddr::Tcp("127.0.0.1:8080".into()),
                ListenAddr::Unix("/run/sig.sock".into()),
                ListenAddr::Tcp("[::1]:80".into())
            ]
        );
        assert!(parse_listen("").is_empty());
    }
}
