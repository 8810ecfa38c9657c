//! HTTP routes: the client WebSocket, the backend API Nextcloud calls, the
//! welcome page, statistics, metrics, server info and the status page.

use bytes::Bytes;
use futures_util::future::{Either, FutureExt};
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use runtime::listen::{Body, PeerInfo};
use runtime::net::IpNet;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, warn};

use crate::Server;

/// Largest backend request body (BAPI-01).
pub const MAX_BODY_SIZE: u64 = 256 * 1024;
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(15);

fn text(status: StatusCode, body: &str) -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from(format!("{body}\n"))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json(body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    r.headers_mut().insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

/// The client's address. Proxy headers count only when the connection comes
/// from a trusted proxy (`[app] trustedproxies`, default loopback and private
/// ranges; Unix sockets are always local). `X-Real-IP` wins when it is a valid
/// address; otherwise `X-Forwarded-For` is read from the right, skipping
/// trusted proxies, so a client cannot put a fake address in front.
pub fn client_ip(headers: &HeaderMap, peer: &PeerInfo, trusted: &[IpNet]) -> String {
    let peer_ip = peer.addr.map(|a| runtime::net::canonical(a.ip()));
    let from_proxy = peer_ip.is_none_or(|ip| runtime::net::contains_any(trusted, ip));
    if from_proxy {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
        };
        if let Ok(ip) = header("x-real-ip").trim().parse::<IpAddr>() {
            return runtime::net::canonical(ip).to_string();
        }
        let hops: Vec<IpAddr> = header("x-forwarded-for")
            .split(',')
            .filter_map(|h| h.trim().parse::<IpAddr>().ok())
            .map(runtime::net::canonical)
            .collect();
        if let Some(ip) = hops
            .iter()
            .rev()
            .find(|ip| !runtime::net::contains_any(trusted, **ip))
        {
            return ip.to_string();
        }
        if let Some(first) = hops.first() {
            return first.to_string();
        }
    }
    match peer_ip {
        Some(ip) => ip.to_string(),
        None => "127.0.0.1".to_owned(),
    }
}

pub async fn handle(server: Arc<Server>, req: Request<Incoming>, peer: PeerInfo) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let mut resp = route(&server, req, &peer, &path).await;
    let h = resp.headers_mut();
    h.insert(header::SERVER, server.server_header.clone());
    if path.starts_with("/api/")
        || path == "/spreed"
        || path == "/metrics"
        || path == "/turn/credentials"
    {
        h.insert(
            "x-spreed-signaling-features",
            server.features_header.clone(),
        );
    }
    resp
}

async fn route(
    server: &Arc<Server>,
    req: Request<Incoming>,
    peer: &PeerInfo,
    path: &str,
) -> Response<Body> {
    let method = req.method().clone();
    match path {
        "/spreed" => {
            if method != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            if server.hub.is_draining() {
                // Upstream closes its listeners on SIGUSR1, so clients see a
                // failed connect and retry (elsewhere, behind a balancer). We
                // keep listening for the backend API and stats of the sessions
                // still here, and fail the upgrade the same way, but readably.
                let mut r = text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The server is scheduled to shutdown.",
                );
                r.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("10"));
                return r;
            }
            upgrade(server, req, peer)
        }
        "/api/v1/welcome" => {
            if method != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            json(server.welcome.clone())
        }
        "/api/v1/stats" | "/metrics" | "/api/v1/serverinfo" | "/status" => {
            if method != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            let ip = client_ip(req.headers(), peer, &server.trusted_proxies());
            if !server.stats_allowed(&ip) {
                return text(StatusCode::FORBIDDEN, "Authentication check failed");
            }
            stats_page(server, path)
        }
        "/turn/credentials" => {
            if method != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs() as i64)
                .unwrap_or(0);
            let (status, body) =
                crate::turn::credentials(&server.turn, req.uri().query().unwrap_or(""), now);
            if status == 200 {
                return json(body);
            }
            let mut r = text(
                StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
                body.trim_end(),
            );
            r.headers_mut().remove("x-content-type-options");
            r
        }
        _ if path.starts_with("/api/v1/room/") => {
            let roomid = &path["/api/v1/room/".len()..];
            if roomid.is_empty() || roomid.contains('/') {
                return text(StatusCode::NOT_FOUND, "404 page not found");
            }
            if method != Method::POST {
                return text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            }
            let roomid = percent_decode(roomid);
            let ip = client_ip(req.headers(), peer, &server.trusted_proxies());
            backend_room(server, req, &roomid, &ip).await
        }
        _ => text(StatusCode::NOT_FOUND, "404 page not found"),
    }
}

/// `/api/v1/stats`, `/metrics`, `/api/v1/serverinfo` and `/status`, once
/// the caller is allowed to see them.
fn stats_page(server: &Arc<Server>, path: &str) -> Response<Body> {
    if path == "/api/v1/serverinfo" {
        let info = crate::status::ServerInfo::collect(server);
        let mut body = serde_json::to_vec_pretty(&info).unwrap_or_default();
        body.push(b'\n');
        return json(body);
    }
    if path == "/status" {
        let html = crate::status::ServerInfo::collect(server).to_html();
        let mut r = Response::new(Full::new(Bytes::from(html)));
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        // Nothing on the page is loaded from elsewhere; say so.
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'"),
        );
        return r;
    }
    if path == "/metrics" {
        let mut r = Response::new(Full::new(Bytes::from(server.hub.metrics.registry.render())));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        return r;
    }
    let stats = server.hub.stats();
    let mut body = serde_json::to_vec_pretty(&stats).unwrap_or_default();
    body.push(b'\n');
    json(body)
}

fn percent_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={}", s.replace('+', "%2B")).as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_else(|| s.to_owned())
}

fn upgrade(server: &Arc<Server>, mut req: Request<Incoming>, peer: &PeerInfo) -> Response<Body> {
    let (response, on_upgrade) = match runtime::upgrade::accept(&mut req) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let headers = req.headers();
    let remote = client_ip(headers, peer, &server.trusted_proxies());
    let agent = headers
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let hub = server.hub.clone();
    let token = server.shutdown.token.clone();
    // `then`, not an `async` block: what the closure captured is gone from
    // the task once the upgrade is done (see `ws::serve_upgraded`).
    server
        .shutdown
        .tracker
        .spawn(on_upgrade.then(move |upgraded| match upgraded {
            Ok(upgraded) => Either::Left(crate::ws::serve_upgraded(
                hub, upgraded, remote, agent, token,
            )),
            Err(e) => {
                debug!(error = %e, "upgrade failed");
                Either::Right(std::future::ready(()))
            }
        }));
    response
}

/// A failed authentication: answered after the brute-force delay.
async fn auth_failed(server: &Server, ip: &str) -> Response<Body> {
    let delay = server
        .hub
        .throttler()
        .failed(ip, hub::throttle::ACTION_BACKEND_ROOM);
    tokio::time::sleep(delay).await;
    text(StatusCode::FORBIDDEN, "Authentication check failed")
}

/// Most of a request body read and thrown away after an early answer.
const DISCARD_LIMIT: usize = 16 * 1024 * 1024;
/// How long the rest of a body is read after an early answer.
const DISCARD_TIME: Duration = Duration::from_secs(5);

/// An answer given before the request body was read (411, 413, 400, 403,
/// 429): the connection closes after it, and the body the client is still
/// sending is read and thrown away meanwhile (up to [`DISCARD_LIMIT`] and
/// [`DISCARD_TIME`]). Closing with the body unread would make the kernel
/// reset the connection, and a client still writing would then often not
/// see the answer at all.
fn early(mut resp: Response<Body>, body: Incoming) -> Response<Body> {
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    if !hyper::body::Body::is_end_stream(&body) {
        tokio::spawn(discard(body));
    }
    resp
}

async fn discard(mut body: Incoming) {
    let mut left = DISCARD_LIMIT;
    let _ = tokio::time::timeout(DISCARD_TIME, async {
        while let Some(Ok(frame)) = body.frame().await {
            let n = frame.data_ref().map_or(0, Bytes::len);
            if n >= left {
                break;
            }
            left -= n;
        }
    })
    .await;
}

async fn backend_room(
    server: &Arc<Server>,
    req: Request<Incoming>,
    roomid: &str,
    ip: &str,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let headers = parts.headers;
    let (random, checksum) = match room_request_headers(server, &headers, ip).await {
        Ok(v) => v,
        Err(resp) => return early(resp, body),
    };
    let body = match tokio::time::timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_SIZE as usize).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) | Err(_) => return text(StatusCode::BAD_REQUEST, "Could not read body"),
    };
    let backends = &server.hub.backends;
    let backend = match headers
        .get(proto::backend::HEADER_BACKEND)
        .and_then(|v| v.to_str().ok())
    {
        Some(u) if !u.is_empty() => match backends.get_str(u) {
            Some(b) => Some(b),
            None => {
                warn!(peer = %ip, backend = u, "backend request from a backend not in [backend] backends");
                return auth_failed(server, ip).await;
            }
        },
        _ => None,
    };
    let backend = match backend {
        Some(b) => b,
        None => {
            match backends.compat() {
                Some(c) => c.clone(),
                None => match backends.all().into_iter().find(|b| {
                    proto::backend::validate_checksum(&checksum, &random, &body, &b.secret)
                }) {
                    Some(b) => b,
                    None => {
                        warn!(peer = %ip, "backend request whose checksum matches no backend's secret");
                        return auth_failed(server, ip).await;
                    }
                },
            }
        }
    };
    if !proto::backend::validate_checksum(&checksum, &random, &body, &backend.secret) {
        warn!(peer = %ip, backend = %backend.id, "backend request with invalid checksum (check the shared secret)");
        return auth_failed(server, ip).await;
    }
    // Nextcloud signs every request with a fresh random: one seen before
    // is a replay of a captured request (`hub::backend::replay`).
    if !server.hub.accept_backend_random(&backend.id, &random) {
        warn!(peer = %ip, backend = %backend.id, "backend request refused as a replay (its random was used before)");
        return text(StatusCode::FORBIDDEN, "Authentication check failed");
    }
    let mut request: proto::backend::BackendServerRoomRequest = match serde_json::from_slice(&body)
    {
        Ok(r) => r,
        Err(e) => {
            debug!(error = %e, "could not decode backend request");
            return text(StatusCode::BAD_REQUEST, "Could not read body");
        }
    };
    request.received = hub::bus::now_nanos();
    if request.kind == "dialout" {
        let Some(d) = request.dialout.as_ref() else {
            return text(StatusCode::BAD_REQUEST, "dialout missing");
        };
        let (status, body) = server.hub.start_dialout(&backend, roomid, d).await;
        let mut r = json(serde_json::to_vec(&body).unwrap_or_default());
        *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
        return r;
    }
    match server.hub.handle_room_request(&backend, roomid, request) {
        Ok(()) => json(Bytes::from_static(b"{}")),
        Err(hub::backend::api::ApiError::BadRequest(m)) => text(StatusCode::BAD_REQUEST, &m),
        Err(e) => {
            warn!(error = %e, "backend request failed");
            text(StatusCode::INTERNAL_SERVER_ERROR, "Error while processing")
        }
    }
}

/// The checks of a backend room request before its body is read: declared
/// length, content type, throttling and the checksum headers (returned as
/// random and checksum). A refusal is the response to send.
async fn room_request_headers(
    server: &Arc<Server>,
    headers: &HeaderMap,
    ip: &str,
) -> Result<(String, String), Response<Body>> {
    // Go's server requires a declared length; chunked requests are refused.
    let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return Err(text(StatusCode::LENGTH_REQUIRED, "Length required"));
    };
    if len > MAX_BODY_SIZE {
        return Err(text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "Request entity too large",
        ));
    }
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !ct.starts_with("application/json") {
        return Err(text(StatusCode::BAD_REQUEST, "Unsupported Content-Type"));
    }
    if server
        .hub
        .throttler()
        .check(ip, hub::throttle::ACTION_BACKEND_ROOM)
        .is_err()
    {
        return Err(text(StatusCode::TOO_MANY_REQUESTS, "Too many requests"));
    }
    let random = headers
        .get(proto::backend::HEADER_RANDOM)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let checksum = headers
        .get(proto::backend::HEADER_CHECKSUM)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    if random.is_empty() || checksum.is_empty() {
        warn!(peer = %ip, "backend request without checksum headers");
        return Err(auth_failed(server, ip).await);
    }
    Ok((random, checksum))
}
