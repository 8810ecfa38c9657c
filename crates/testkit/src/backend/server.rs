//! The fake backend's HTTP side: records every request, checks the
//! checksum, asks the test's handler (or a default) and answers.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::{RecordedRequest, Reply, Shared, BODY_READ_TIMEOUT, CAPABILITIES_SUFFIX};
use crate::checksum::{checksum, HEADER_CHECKSUM, HEADER_RANDOM};

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let shared = shared.clone();
                    conns.spawn(async move {
                        let service = service_fn(move |req| handle(shared.clone(), req));
                        // Errors (peer gone, hangup replies) end just this connection.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
                // E.g. too many open files; back off instead of spinning.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            // Reap finished connection tasks so the set does not grow.
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

fn ocs_wrap(data: Value, status: u16, message: &str) -> Value {
    let ok = status == 200;
    json!({
        "ocs": {
            "meta": {
                "status": if ok { "ok" } else { "failure" },
                "statuscode": status,
                "message": message,
            },
            "data": data,
        }
    })
}

fn json_response(status: u16, body: &Value) -> Response<Full<Bytes>> {
    let bytes = serde_json::to_vec(body).expect("serializing a Value cannot fail");
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

fn text_response(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

fn is_backend_path(path: &str) -> bool {
    path.contains("/ocs/v2.php/apps/spreed/api/v") && path.ends_with("/signaling/backend")
}

fn checksum_valid(secret: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match (get(HEADER_RANDOM), get(HEADER_CHECKSUM)) {
        (Some(random), Some(sum)) if !random.is_empty() => {
            checksum(secret, random, body).eq_ignore_ascii_case(sum)
        }
        _ => false,
    }
}

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, io::Error> {
    let (parts, body) = req.into_parts();
    let raw_body = match tokio::time::timeout(BODY_READ_TIMEOUT, body.collect()).await {
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(e)) => return Err(io::Error::other(e)),
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "body read timeout")),
    };
    let path = parts.uri.path().to_owned();
    let body: Value = serde_json::from_slice(&raw_body).unwrap_or(Value::Null);

    let backend_path = is_backend_path(&path);
    let (kind, checksum_ok) = if path.ends_with(CAPABILITIES_SUFFIX) && parts.method == Method::GET
    {
        ("capabilities".to_owned(), false)
    } else if backend_path && parts.method == Method::POST {
        let kind = body["type"].as_str().unwrap_or("invalid").to_owned();
        (
            kind,
            checksum_valid(&shared.secret, &parts.headers, &raw_body),
        )
    } else {
        ("unknown".to_owned(), false)
    };
    let ocs = parts
        .headers
        .get("OCS-APIRequest")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));

    let record = RecordedRequest {
        kind: kind.clone(),
        method: parts.method.to_string(),
        path,
        headers: parts.headers,
        body: body.clone(),
        raw_body,
        checksum_ok,
        received_at: Instant::now(),
    };
    let handler = {
        let mut state = shared.state.lock();
        state.requests.push(record);
        state.handlers.get(&kind).cloned()
    };
    shared.recorded.send_modify(|n| *n += 1);

    match kind.as_str() {
        "unknown" if backend_path => {
            return Ok(text_response(
                StatusCode::METHOD_NOT_ALLOWED,
                "method not allowed",
            ))
        }
        "unknown" => return Ok(text_response(StatusCode::NOT_FOUND, "not found")),
        "capabilities" => {}
        _ if !checksum_ok => {
            let err = json!({"type": "error", "error": {
                "code": "invalid_request",
                "message": "The request could not be authenticated.",
            }});
            let body = if ocs {
                ocs_wrap(err, 403, "Forbidden")
            } else {
                err
            };
            return Ok(json_response(403, &body));
        }
        _ => {}
    }

    let reply = match handler {
        Some(h) => h(&body),
        None => Reply::Default,
    };
    if kind == "capabilities" && matches!(reply, Reply::Default) {
        return Ok(capabilities_response(
            &shared,
            &headers_of_last(&shared),
            ocs,
        ));
    }
    resolve(&shared, reply, &kind, &body, ocs).await
}

/// Turns a handler's [`Reply`] into the response: waits out delays, fills
/// in defaults, wraps JSON in OCS when asked for.
async fn resolve(
    shared: &Shared,
    mut reply: Reply,
    kind: &str,
    body: &Value,
    ocs: bool,
) -> Result<Response<Full<Bytes>>, io::Error> {
    loop {
        reply = match reply {
            Reply::Delay(d, inner) => {
                tokio::time::sleep(d).await;
                *inner
            }
            Reply::Default => match default_reply(shared, kind, body) {
                Some(v) => Reply::Json(v),
                None => Reply::raw(400, Some("text/plain"), "unsupported request type"),
            },
            Reply::Error { code, message } => Reply::Json(json!({
                "type": "error",
                "error": {"code": code, "message": message},
            })),
            Reply::Json(v) => {
                let body = if ocs { ocs_wrap(v, 200, "OK") } else { v };
                return Ok(json_response(200, &body));
            }
            Reply::Raw {
                status,
                content_type,
                body,
            } => {
                let mut resp = Response::new(Full::new(body));
                *resp.status_mut() =
                    StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
                if let Some(ct) = content_type.and_then(|ct| ct.parse().ok()) {
                    resp.headers_mut().insert(http::header::CONTENT_TYPE, ct);
                }
                return Ok(resp);
            }
            Reply::Hangup => {
                return Err(io::Error::new(io::ErrorKind::ConnectionAborted, "hangup"))
            }
        };
    }
}

/// Headers of the request just recorded (the capabilities query).
fn headers_of_last(shared: &Shared) -> HeaderMap {
    shared
        .state
        .lock()
        .requests
        .last()
        .map(|r| r.headers.clone())
        .unwrap_or_default()
}

/// The default capabilities answer with the configured cache headers.
fn capabilities_response(shared: &Shared, headers: &HeaderMap, ocs: bool) -> Response<Full<Bytes>> {
    let (etag, cc) = {
        let state = shared.state.lock();
        (state.caps_etag.clone(), state.caps_cache_control.clone())
    };
    let if_none_match = headers
        .get(http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    let mut resp = match (&etag, if_none_match) {
        (Some(e), Some(m)) if e == m => {
            let mut r = Response::new(Full::new(Bytes::new()));
            *r.status_mut() = StatusCode::NOT_MODIFIED;
            r
        }
        _ => {
            let v = default_reply(shared, "capabilities", &Value::Null).unwrap_or(Value::Null);
            let body = if ocs { ocs_wrap(v, 200, "OK") } else { v };
            json_response(200, &body)
        }
    };
    if let Some(e) = etag.and_then(|e| http::HeaderValue::from_str(&e).ok()) {
        resp.headers_mut().insert(http::header::ETAG, e);
    }
    if let Some(c) = cc.and_then(|c| http::HeaderValue::from_str(&c).ok()) {
        resp.headers_mut().insert(http::header::CACHE_CONTROL, c);
    }
    resp
}

/// The default answer for a request kind, `None` for kinds Talk does not know.
fn default_reply(shared: &Shared, kind: &str, body: &Value) -> Option<Value> {
    let payload = &body[kind];
    let roomid = payload["roomid"].as_str().unwrap_or_default();
    Some(match kind {
        "auth" => {
            let params = &payload["params"];
            let mut auth = json!({
                "version": "1.0",
                "userid": params["userid"].as_str().unwrap_or_default(),
            });
            if let Some(user) = params.get("user") {
                auth["user"] = user.clone();
            }
            json!({"type": "auth", "auth": auth})
        }
        "room" => json!({"type": "room", "room": {
            "version": "1.0",
            "roomid": roomid,
            "properties": {"name": format!("Room {roomid}")},
        }}),
        "ping" => json!({"type": "room", "room": {"version": "1.0", "roomid": roomid}}),
        "session" => json!({"type": "session", "session": {"version": "1.0", "roomid": roomid}}),
        "capabilities" => {
            let state = shared.state.lock();
            json!({
                "version": {
                    "major": 20, "minor": 0, "micro": 0, "string": "20.0.0",
                    "edition": "", "extendedSupport": false,
                },
                "capabilities": {
                    "spreed": {
                        "features": state.features,
                        "config": state.config,
                    }
                }
            })
        }
        _ => return None,
    })
}

/// The features a Talk of the upstream era advertised, minus `signaling-v3`
/// so the server uses the v1 backend path unless a test opts in.
pub(super) fn default_features() -> Vec<String> {
    [
        "audio",
        "video",
        "chat-v2",
        "conversation-v4",
        "guest-signaling",
        "empty-group-room",
        "guest-display-names",
        "multi-room-users",
        "favorites",
        "last-room-activity",
        "no-ping",
        "system-messages",
        "mention-flag",
        "in-call-flags",
        "notification-levels",
        "invite-groups-and-mails",
        "locked-one-to-one-rooms",
        "read-only-rooms",
        "chat-read-marker",
        "webinary-lobby",
        "start-call-flag",
        "chat-replies",
        "circles-support",
        "force-mute",
        "sip-support",
        "chat-read-status",
        "phonebook-search",
        "raise-hand",
        "room-description",
        "rich-object-sharing",
        "temp-user-avatar-api",
        "geo-location-sharing",
        "voice-message-sharing",
        "publishing-permissions",
        "clear-history",
        "direct-mention-flag",
        "notification-calls",
        "conversation-permissions",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

pub(super) fn default_config() -> Value {
    json!({
        "attachments": {"allowed": true, "folder": "/Talk"},
        "chat": {"max-length": 32000, "read-privacy": 0},
        "conversations": {"can-create": true},
        "previews": {"max-gif-size": 3_145_728},
        "signaling": {"session-ping-limit": 200},
    })
}
