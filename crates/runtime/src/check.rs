//! What the `check` subcommands of `signaling` and `proxy` share: the report
//! (one line per finding: `ok`, `warn` or `FAIL`), the configuration lint
//! and the listener test that also works on a host where the server runs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use crate::config::Ini;
use crate::outln;
use crate::schema::Schema;

/// Findings of a `check` run, printed as they come.
#[derive(Debug, Default)]
pub struct Report {
    pub failed: usize,
    pub warned: usize,
}

impl Report {
    pub fn ok(&mut self, what: &str, detail: impl AsRef<str>) {
        outln!("ok    {what}: {}", detail.as_ref());
    }

    pub fn warn(&mut self, what: &str, detail: impl AsRef<str>) {
        self.warned += 1;
        outln!("warn  {what}: {}", detail.as_ref());
    }

    pub fn fail(&mut self, what: &str, detail: impl AsRef<str>) {
        self.failed += 1;
        outln!("FAIL  {what}: {}", detail.as_ref());
    }

    /// The closing line; returns the number of failures.
    pub fn finish(self) -> usize {
        outln!("{} failed, {} warnings", self.failed, self.warned);
        self.failed
    }

    /// Warns about every finding of the configuration lint: unknown
    /// sections and keys (with file and line), placeholder secrets, lines
    /// goconf reads as a continuation of the previous value.
    pub fn lint(&mut self, path: &Path, ini: &Ini, schema: &Schema) {
        for l in schema.lint(ini) {
            self.warn(&format!("{}:{}", path.display(), l.line), &l.message);
        }
    }
}

/// What answers `GET /api/v1/welcome` at `addr`: `Some((product, version))`
/// for a signaling server or proxy (ours or Go's), `None` for anything else.
pub async fn probe_welcome(addr: SocketAddr) -> Option<(String, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let attempt = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(
            b"GET /api/v1/welcome HTTP/1.0\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        )
        .await
        .ok()?;
        let mut buf = Vec::new();
        s.take(16 * 1024).read_to_end(&mut buf).await.ok()?;
        Some(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(3), attempt)
        .await
        .ok()??;
    let text = String::from_utf8_lossy(&buf);
    let body = text.split("\r\n\r\n").nth(1)?;
    let v: serde_json::Value = serde_json::from_str(body.trim()).ok()?;
    let product = [
        "nextcloud-spreed-signaling",
        "nextcloud-spreed-signaling-proxy",
    ]
    .into_iter()
    .find(|p| v.get(*p).is_some())?;
    let version = v["version"].as_str().unwrap_or("unknown").to_owned();
    Some((product.to_owned(), version))
}

/// Where to reach a listener bound to `addr` (a wildcard address becomes
/// loopback).
fn reachable(mut addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    addr
}

/// Tests that the TCP listen address `addr` can be bound. When it is held
/// by a running signaling server or proxy of `product` and `version`, that
/// is fine (`check` on a live host); another version there is a warning.
/// With `skip_bind`, nothing is tried.
pub async fn tcp_listener(
    r: &mut Report,
    what: &str,
    addr: &str,
    product: &str,
    version: &str,
    skip_bind: bool,
) {
    let sa = match addr.to_socket_addrs().map(|mut a| a.next()) {
        Ok(Some(sa)) => sa,
        _ => return r.fail(what, "not an address"),
    };
    if skip_bind {
        return r.ok(what, "not tried (--skip-bind)");
    }
    let err = match std::net::TcpListener::bind(sa) {
        Ok(_) => return r.ok(what, "free"),
        Err(e) => e,
    };
    if err.kind() == std::io::ErrorKind::AddrInUse {
        match probe_welcome(reachable(sa)).await {
            Some((p, v)) if p == product && v == version => {
                return r.ok(
                    what,
                    format!("in use by a running {p} {v} (this version): fine on a live host"),
                )
            }
            Some((p, v)) => {
                return r.warn(
                    what,
                    format!("in use by a running {p} {v}: stop it before starting this one (or use --skip-bind)"),
                )
            }
            None => {}
        }
    }
    r.fail(
        what,
        format!("cannot bind ({err}): another process holds it, or the address is not on this host (--skip-bind skips this test)"),
    );
}
