//! `hello`, resume and `bye`: authenticating a connection (against the
//! backend or with an internal client's shared secret), registering its
//! session, resuming a disconnected one, and ending it.

use super::send_error;
use crate::core::conn::{Conn, OutMsg};
use crate::core::errors::*;
use crate::core::session::{
    session_backend_url, AnySession, ClientSession, ClientType, NewSession,
};
use crate::core::settings::ANONYMOUS_JOIN_TIMEOUT;
use crate::Hub;
use hmac::{Hmac, Mac};
use proto::client::{ClientMessage, Error, HelloServerMessage, ServerMessage};
use proto::sessionid::SessionIdData;
use sha2::Sha256;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;
use tracing::{debug, info, warn};
use url::Url;

pub(crate) async fn process_hello(
    hub: Arc<Hub>,
    conn: &Arc<Conn>,
    mut msg: ClientMessage,
    text: Option<String>,
) {
    let Some(hello) = msg.hello.take() else {
        return;
    };
    if !hello.resumeid.is_empty() {
        // Resume ids are secrets: guessing is slowed down, then refused.
        use crate::throttle::ACTION_RESUME;
        if hub
            .throttler
            .check(&conn.remote_addr, ACTION_RESUME)
            .is_err()
        {
            send_error(conn, &msg.id, err_too_many_requests());
            return;
        }
        if !crate::handlers::hello::process_resume(&hub, conn, &msg.id, &hello.resumeid) {
            let text = text.as_deref().unwrap_or_default();
            if crate::cluster::relay::resume_elsewhere(&hub, conn, &hello.resumeid, text).await {
                return;
            }
            hub.metrics.resume_failed.inc();
            let delay = hub.throttler.failed(&conn.remote_addr, ACTION_RESUME);
            tokio::time::sleep(delay).await;
            send_error(conn, &msg.id, err_no_such_session());
        }
        return;
    }
    match hello.auth.kind.as_str() {
        proto::client::CLIENT_TYPE_CLIENT | proto::client::CLIENT_TYPE_FEDERATION => {
            crate::handlers::hello::process_hello_client(&hub, conn, &msg.id, hello).await
        }
        proto::client::CLIENT_TYPE_INTERNAL => {
            crate::handlers::hello::process_hello_internal(&hub, conn, &msg.id, hello).await
        }
        _ => {
            send_error(conn, &msg.id, err_invalid_client_type());
        }
    }
}

/// Resume a session; false when there is none to resume (the caller
/// answers `no_such_session` after the brute-force delay).
pub(crate) fn process_resume(hub: &Hub, conn: &Arc<Conn>, id: &str, resume_id: &str) -> bool {
    let session = hub.reg.lock().by_private.get(resume_id).cloned();
    let Some(session) = session.filter(|s| !s.is_closed()) else {
        return false;
    };
    if !conn.is_connected() {
        return true;
    }
    if let Some(prev) = session.attach(conn) {
        info!(session = %session.public_id, previous = %prev.remote_addr, "closing previous connection of resumed session");
        prev.send_and_close(OutMsg::new(ServerMessage::bye("session_resumed")).frame());
    }
    hub.reg.lock().expiring.remove(&session.public_id);
    info!(session = %session.public_id, peer = %conn.remote_addr, "session resumed");
    hub.metrics
        .sessions_resumed
        .inc(&[&session.backend.id, session.client_type.as_str()]);
    crate::handlers::hello::send_hello_response(hub, conn, &session, id);
    let had_participants = session.flush_pending(conn);
    if !had_participants {
        if let Some(room) = session.room() {
            room.notify_session_resumed(&session);
        }
    }
    true
}

pub(crate) fn send_hello_response(hub: &Hub, conn: &Arc<Conn>, session: &ClientSession, id: &str) {
    let server = if session.is_internal() {
        hub.info_internal.clone()
    } else {
        hub.info.clone()
    };
    let msg = ServerMessage {
        id: id.to_owned(),
        kind: "hello".into(),
        hello: Some(HelloServerMessage {
            version: session.hello_version.into(),
            sessionid: session.public_id.to_string(),
            resumeid: session.private_id.clone(),
            userid: session.auth_user_id.clone(),
            server: Some(server),
        }),
        ..Default::default()
    };
    conn.send(OutMsg::new(msg).frame());
}

pub(crate) async fn process_hello_client(
    hub: &Arc<Hub>,
    conn: &Arc<Conn>,
    id: &str,
    hello: proto::client::HelloClientMessage,
) {
    let send_err = |e: Error| send_error(conn, id, e);
    let Ok(url) = Url::parse(&hello.auth.url) else {
        send_err(err_invalid_backend());
        return;
    };
    let Some(backend) = hub.backends.get(&url) else {
        send_err(err_invalid_backend());
        return;
    };
    let Some(backend_url) = session_backend_url(&hello.auth.url) else {
        send_err(err_invalid_backend());
        return;
    };
    if hello.auth.kind == proto::client::CLIENT_TYPE_FEDERATION {
        // A remote signaling server relaying one of its clients: only
        // when this Nextcloud supports it (upstream 2.0.0, #776).
        use crate::backend::capabilities::FEATURE_FEDERATION_V2;
        let caps = hub.backend.capabilities(&backend_url).await.caps;
        if !caps.is_some_and(|c| c.has_feature(FEATURE_FEDERATION_V2)) {
            send_err(crate::federation::err_federation_unsupported());
            return;
        }
    }
    if hello.version == proto::client::HELLO_VERSION_V2 {
        let token = hello.v2_token().unwrap_or_default();
        let claims =
            match crate::handlers::hello::verify_hello_token(hub, &backend_url, &token).await {
                Ok(c) => c,
                Err(e) => {
                    debug!(peer = %conn.remote_addr, error = %e, "hello v2 token refused");
                    send_err(e);
                    return;
                }
            };
        if !conn.is_connected() {
            return;
        }
        crate::handlers::hello::register(
            hub,
            conn,
            id,
            backend,
            backend_url,
            ClientType::Client,
            proto::client::HELLO_VERSION_V2,
            claims.subject,
            claims.userdata,
            hello.features.unwrap_or_default(),
        )
        .await;
        return;
    }
    let req = proto::backend::BackendClientRequest::auth(hello.auth.params.clone());
    let res: Result<proto::backend::BackendClientResponse, _> = hub
        .backend_request("auth", &url, &req, hub.settings.backend_timeout)
        .await;
    let auth = match res {
        Ok(a) => a,
        Err(e) => {
            debug!(peer = %conn.remote_addr, error = %e, "backend auth request failed");
            send_err(err_internal(e));
            return;
        }
    };
    if !conn.is_connected() {
        return;
    }
    if auth.kind == "error" {
        send_err(auth.error.unwrap_or_else(err_auth_failed));
        return;
    }
    if auth.kind != "auth" {
        send_err(err_auth_failed());
        return;
    }
    let a = auth.auth.unwrap_or_default();
    crate::handlers::hello::register(
        hub,
        conn,
        id,
        backend,
        backend_url,
        ClientType::Client,
        proto::client::HELLO_VERSION_V1,
        a.userid,
        a.user.map(Arc::from),
        hello.features.unwrap_or_default(),
    )
    .await;
}

pub(crate) async fn process_hello_internal(
    hub: &Arc<Hub>,
    conn: &Arc<Conn>,
    id: &str,
    hello: proto::client::HelloClientMessage,
) {
    let send_err = |e: Error| send_error(conn, id, e);
    if hub.settings.internal_secret.is_empty() {
        send_err(err_invalid_client_type());
        return;
    }
    let Ok(params) = hello.internal_params() else {
        send_err(err_invalid_format());
        return;
    };
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&hub.settings.internal_secret)
        .expect("any key length");
    mac.update(params.random.as_bytes());
    let expected = hex::encode(mac.finalize().into_bytes());
    if params.random.len() < 32 || !constant_time_eq(expected.as_bytes(), params.token.as_bytes()) {
        send_err(err_invalid_token());
        return;
    }
    let Some(backend) = Url::parse(&params.backend)
        .ok()
        .and_then(|u| hub.backends.get(&u))
    else {
        send_err(err_invalid_backend());
        return;
    };
    let Some(backend_url) = session_backend_url(&params.backend) else {
        send_err(err_invalid_backend());
        return;
    };
    crate::handlers::hello::register(
        hub,
        conn,
        id,
        backend,
        backend_url,
        ClientType::Internal,
        if hello.version == proto::client::HELLO_VERSION_V2 {
            proto::client::HELLO_VERSION_V2
        } else {
            proto::client::HELLO_VERSION_V1
        },
        String::new(),
        None,
        hello.features.unwrap_or_default(),
    )
    .await;
}

#[allow(clippy::too_many_arguments)]
pub(crate) async fn register(
    hub: &Arc<Hub>,
    conn: &Arc<Conn>,
    id: &str,
    backend: Arc<crate::core::backends::Backend>,
    backend_url: Url,
    client_type: ClientType,
    hello_version: &'static str,
    user_id: String,
    user_data: Option<Arc<proto::RawValue>>,
    features: Vec<String>,
) {
    let (sid, public_id, private_id) = crate::handlers::hello::mint_ids(hub, &backend.id);
    let anonymous = user_id.is_empty() && client_type == ClientType::Client;
    match &*user_id {
        "" => {
            info!(backend = %backend.id, peer = %conn.remote_addr, session = %public_id, kind = client_type.as_str(), "register anonymous")
        }
        u => {
            info!(user = %u, backend = %backend.id, peer = %conn.remote_addr, session = %public_id, "register user")
        }
    }
    let session = ClientSession::new(
        hub,
        NewSession {
            sid,
            public_id: public_id.clone(),
            private_id: private_id.clone(),
            client_type,
            backend: backend.clone(),
            backend_url,
            user_id,
            user_data,
            features,
            hello_version,
        },
    );
    if client_type == ClientType::Client {
        if let Err(e) = crate::cluster::count_session(hub, &backend, &public_id).await {
            hub.metrics.session_limit_exceeded.inc(&[&backend.id]);
            warn!(backend = %backend.id, "session limit exceeded");
            send_error(conn, id, e);
            return;
        }
    }
    if let Err(e) = session.subscribe(&**hub) {
        backend.remove_session(&public_id);
        send_error(conn, id, err_internal(e));
        return;
    }
    // In a cluster: reachable from every node before it is told its id.
    crate::handlers::room::subscriptions_active(hub).await;
    {
        let mut reg = hub.reg.lock();
        if !conn.is_connected() {
            drop(reg);
            session.close_inner();
            return;
        }
        reg.sessions
            .insert(public_id.clone(), AnySession::Client(session.clone()));
        reg.by_sid.insert(sid, public_id.clone());
        reg.by_private.insert(private_id, session.clone());
        if anonymous {
            reg.anonymous.insert(
                conn.id,
                (
                    Arc::downgrade(conn),
                    Instant::now() + ANONYMOUS_JOIN_TIMEOUT,
                ),
            );
        }
    }
    session.attach(conn);
    hub.metrics
        .sessions
        .inc(&[&backend.id, client_type.as_str()]);
    hub.metrics
        .sessions_total
        .inc(&[&backend.id, client_type.as_str()]);
    crate::handlers::hello::send_hello_response(hub, conn, &session, id);
}

/// Check a hello v2 token against the key in the backend's capabilities.
/// A missing key, or a signature that does not verify with a cached key,
/// makes us ask Nextcloud again once (rate limited): the key may have
/// been created or rotated since we cached it.
pub(crate) async fn verify_hello_token(
    hub: &Hub,
    backend_url: &Url,
    token: &str,
) -> Result<crate::backend::token::TokenClaims, Error> {
    use crate::backend::capabilities::{CONFIG_GROUP_SIGNALING, CONFIG_HELLO_V2_TOKEN_KEY};
    use crate::backend::token::TokenError;
    let map = |e: TokenError| match e {
        TokenError::Invalid(_) => err_invalid_token(),
        TokenError::Expired => Error::new("token_expired", "The token is expired."),
        TokenError::NotValidYet => Error::new("token_not_valid_yet", "The token is not valid yet."),
    };
    // Refuse garbage before asking Nextcloud anything.
    crate::backend::token::token_algorithm(token).map_err(map)?;
    let key_of = |l: &crate::backend::capabilities::Lookup| {
        l.caps
            .as_ref()
            .and_then(|c| c.string_config(CONFIG_GROUP_SIGNALING, CONFIG_HELLO_V2_TOKEN_KEY))
    };
    let lookup = hub.backend.capabilities(backend_url).await;
    let now = unix_now();
    let first = match key_of(&lookup) {
        Some(key) => crate::backend::token::verify(token, &key, now).map(|c| (c, key)),
        None => Err(TokenError::Invalid("no key found for issuer".into())),
    };
    match first {
        Ok((claims, _)) => Ok(claims),
        Err(TokenError::Invalid(_))
            if lookup.cached && hub.backend.invalidate_capabilities(backend_url) =>
        {
            let lookup = hub.backend.capabilities(backend_url).await;
            let key = key_of(&lookup).ok_or_else(err_invalid_token)?;
            crate::backend::token::verify(token, &key, unix_now()).map_err(map)
        }
        Err(e) => Err(map(e)),
    }
}

pub(crate) fn mint_ids(hub: &Hub, backend_id: &str) -> (u64, Arc<str>, String) {
    let sid = hub.sid.fetch_add(1, Ordering::Relaxed) + 1;
    let data = SessionIdData {
        sid,
        created_unix_nanos: crate::bus::now_nanos(),
        backend_id: backend_id.to_owned(),
    };
    let private = hub.codec.encode_private(&data);
    let public: Arc<str> = Arc::from(hub.codec.encode_public(&data));
    (sid, public, private)
}

pub(crate) fn process_bye(hub: &Hub, conn: &Arc<Conn>, session: &Arc<ClientSession>, id: &str) {
    let msg = ServerMessage {
        id: id.to_owned(),
        kind: "bye".into(),
        bye: Some(Default::default()),
        ..Default::default()
    };
    conn.send_and_close(OutMsg::new(msg).frame());
    info!(session = %session.public_id, "client said bye");
    hub.close_session(session);
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The `welcome` frame every new connection gets first (serialised once).
pub(crate) fn welcome_frame(
    version: &str,
    features: &[String],
    features_internal: &[String],
) -> crate::bus::Frame {
    // Like upstream's welcome features: what clients and internal
    // clients get, sorted.
    let mut welcome_features: Vec<String> = features
        .iter()
        .chain(features_internal.iter())
        .cloned()
        .collect();
    welcome_features.sort();
    welcome_features.dedup();
    OutMsg::new(ServerMessage {
        kind: "welcome".into(),
        welcome: Some(proto::client::WelcomeServerMessage {
            version: version.to_owned(),
            features: welcome_features,
        }),
        ..Default::default()
    })
    .frame()
}
