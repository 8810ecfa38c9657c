//! The server side of the WebSocket handshake (RFC 6455 §4.2) on a hyper
//! request, shared by the signaling server and the proxy: checks the
//! request, answers `101 Switching Protocols`, and hands back the future
//! that yields the upgraded connection.

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::listen::Body;

fn bad_request() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"Bad Request\n")));
    *r.status_mut() = StatusCode::BAD_REQUEST;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Checks `req` for a version-13 WebSocket upgrade. On success returns the
/// `101` response (send it, then await the upgrade) and the upgrade future;
/// otherwise the `400` to answer with.
// Both arms are HTTP responses the caller returns as they are; boxing the
// error would only add an allocation on the refusal path.
#[allow(clippy::result_large_err)]
pub fn accept(req: &mut Request<Incoming>) -> Result<(Response<Body>, OnUpgrade), Response<Body>> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|s| s.split(',').any(|p| p.trim().eq_ignore_ascii_case(token)))
        })
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(bad_request());
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .and_then(|v| v.to_str().ok())
        != Some("13")
    {
        let mut r = bad_request();
        r.headers_mut().insert(
            header::SEC_WEBSOCKET_VERSION,
            HeaderValue::from_static("13"),
        );
        return Err(r);
    }
    let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY) else {
        return Err(bad_request());
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(req);
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    Ok((r, on_upgrade))
}
