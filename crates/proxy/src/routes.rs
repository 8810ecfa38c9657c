//! The proxy's HTTP routes: `/proxy` (upgraded to the WebSocket of a
//! signaling server), `/welcome`, `/stats` and `/metrics`.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use mcu::Mcu;
use runtime::listen::{Body, PeerInfo};
use serde_json::{json, Value};
use tracing::debug;

use crate::{conn, ProxyServer, VERSION};

impl ProxyServer {
    /// `/stats`.
    pub(crate) fn stats(&self) -> Value {
        let sessions = self.reg.lock().sessions.len();
        json!({
            "sessions": sessions,
            "load": self.load.load(Ordering::SeqCst),
            "bandwidth": *self.bandwidth.lock(),
            "mcu": self.mcu.stats(),
            "draining": self.is_draining(),
        })
    }

    pub(crate) fn stats_allowed(&self, peer: &PeerInfo) -> bool {
        match peer.addr {
            None => true,
            Some(a) => {
                let ip = runtime::net::canonical(a.ip());
                let allowed = runtime::net::contains_any(&self.stats_allowed.read(), ip);
                if !allowed {
                    self.stats_refusals.refused(ip, "/stats and /metrics");
                }
                allowed
            }
        }
    }
}

pub(crate) fn respond(
    server: &ProxyServer,
    status: StatusCode,
    kind: &'static str,
    body: Bytes,
) -> Response<Body> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(kind));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::SERVER, server.server_header.clone());
    r
}

pub(crate) async fn handle(
    server: Arc<ProxyServer>,
    mut req: Request<Incoming>,
    peer: PeerInfo,
) -> Response<Body> {
    const TEXT: &str = "text/plain; charset=utf-8";
    const JSON: &str = "application/json; charset=utf-8";
    if req.method() != Method::GET {
        return respond(
            &server,
            StatusCode::METHOD_NOT_ALLOWED,
            TEXT,
            Bytes::from_static(b"Method Not Allowed\n"),
        );
    }
    match req.uri().path() {
        "/proxy" => {
            let (mut response, on_upgrade) = match runtime::upgrade::accept(&mut req) {
                Ok(v) => v,
                Err(r) => return r,
            };
            response
                .headers_mut()
                .insert(header::SERVER, server.server_header.clone());
            let addr = peer
                .addr
                .map(|a| a.to_string())
                .unwrap_or_else(|| "unix".into());
            let token = server.shutdown.token.clone();
            let s = server.clone();
            server.shutdown.tracker.spawn(async move {
                match on_upgrade.await {
                    Ok(up) => conn::serve(s, TokioIo::new(up), addr, token).await,
                    Err(e) => debug!(error = %e, "upgrade failed"),
                }
            });
            response
        }
        "/welcome" | "/api/v1/welcome" => {
            let body = json!({"nextcloud-spreed-signaling-proxy": "Welcome", "version": VERSION});
            respond(
                &server,
                StatusCode::OK,
                JSON,
                Bytes::from(format!("{body}\n")),
            )
        }
        "/stats" | "/metrics" if !server.stats_allowed(&peer) => respond(
            &server,
            StatusCode::FORBIDDEN,
            TEXT,
            Bytes::from_static(b"Authentication check failed\n"),
        ),
        "/stats" => {
            let body = serde_json::to_vec_pretty(&server.stats()).unwrap_or_default();
            respond(&server, StatusCode::OK, JSON, Bytes::from(body))
        }
        "/metrics" => respond(
            &server,
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            Bytes::from(server.registry.render()),
        ),
        _ => respond(
            &server,
            StatusCode::NOT_FOUND,
            TEXT,
            Bytes::from_static(b"Not Found\n"),
        ),
    }
}
