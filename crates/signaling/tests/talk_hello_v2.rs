//! Issue 4, hello v2 (upstream 1.0.0, #251): `auth.params.token` is a JWT
//! signed by Nextcloud; the public key comes from its capabilities
//! (`config.signaling.hello-v2-token-key`, cached honouring Cache-Control and
//! ETag: upstream 2.0.0, #780/#783). No `auth` request goes to Nextcloud.
// Test bodies are plain functions run by `both_topologies!`.
mod common;
use common::*;

fn hello_v2(url: &str, token: &str) -> Value {
    json!({"type": "hello", "hello": {
        "version": "2.0",
        "auth": {"url": url, "params": {"token": token}},
    }})
}

async fn hello_with_token(s: &TestServer, token: &str) -> (TestClient, Value) {
    let mut c = s.client().await;
    let r = c.request(hello_v2(&s.backend.backend_url(), token)).await;
    (c, r)
}

fn assert_error(r: &Value, code: &str) {
    assert_eq!(r["type"], "error", "{r}");
    assert_eq!(r["error"]["code"], code, "{r}");
}

/// Every key type Nextcloud may use: RSA, ECDSA P-256, Ed25519 as PEM and
/// as the bare base64 key Nextcloud publishes for Ed25519.
async fn hello_v2_accepts_rsa_ecdsa_and_ed25519_tokens(t: Topology) {
    let s = TestServer::start_on(t).await;
    for (key, published) in [
        (TokenKey::Rsa, TokenKey::Rsa.public_pem().to_owned()),
        (TokenKey::Ec, TokenKey::Ec.public_pem().to_owned()),
        (TokenKey::Ed25519, TokenKey::Ed25519.public_pem().to_owned()),
        (TokenKey::Ed25519, TokenKey::ed25519_raw_base64()),
    ] {
        // A fresh server per key: the key is cached for at least a minute.
        let s2 = TestServer::start_on(t).await;
        s2.backend.set_token_key(&published);
        let token = s2.backend.token(key, "alice");
        let (_c, r) = hello_with_token(&s2, &token).await;
        assert_eq!(r["type"], "hello", "{key:?}: {r}");
        assert_eq!(r["hello"]["version"], "2.0");
        assert_eq!(r["hello"]["userid"], "alice");
        assert_eq!(s2.backend.count("auth"), 0, "no auth request for v2");
    }
    drop(s);
}

/// `sub` is the user, `userdata` the user data others see in join events;
/// without `sub` the session is a guest.
async fn hello_v2_claims_become_the_session(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_token_key(TokenKey::Ec.public_pem());
    let (mut a, r) = hello_with_token(&s, &s.backend.token(TokenKey::Ec, "alice")).await;
    assert_eq!(r["hello"]["userid"], "alice", "{r}");
    let room = a.join_room("room1", "talk-a").await;
    assert_eq!(room["room"]["roomid"], "room1");
    let ev = a.expect_event("room", "join").await;
    assert_eq!(
        ev["event"]["join"][0]["user"],
        json!({"displayname": "User alice"})
    );

    let (mut g, r) = hello_with_token(&s, &s.backend.token(TokenKey::Ec, "")).await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(r["hello"]["userid"], "");
    let room = g.join_room("room1", "talk-g").await;
    assert_eq!(room["room"]["roomid"], "room1");
    // The backend was asked for capabilities once per server (alice and the
    // guest are on two nodes of a cluster), never for auth.
    let servers = if s.is_cluster() { 2 } else { 1 };
    assert_eq!(s.backend.count("capabilities"), servers);
    assert_eq!(s.backend.count("auth"), 0);
}

/// Resume of a v2 session answers with version 2.0 again.
async fn hello_v2_session_resumes(t: Topology) {
    let s = TestServer::start_on(t).await;
    s.backend.set_token_key(TokenKey::Rsa.public_pem());
    let (c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa, "alice")).await;
    let rid = r["hello"]["resumeid"]
        .as_str()
        .expect("resumeid")
        .to_owned();
    c.close().await;
    let mut c = s.client().await;
    let r = c
        .request(json!({"type": "hello", "hello": {"version": "2.0", "resumeid": rid}}))
        .await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(r["hello"]["version"], "2.0");
    assert_eq!(r["hello"]["userid"], "alice");
}

// ----- rejections, each with its exact error code ---------------------------

async fn server_with_rsa_key(t: Topology) -> TestServer {
    let s = TestServer::start_on(t).await;
    s.backend.set_token_key(TokenKey::Rsa.public_pem());
    s
}

async fn hello_v2_wrong_key_is_invalid_token(t: Topology) {
    let s = server_with_rsa_key(t).await;
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa2, "alice")).await;
    assert_error(&r, "invalid_token");
}

async fn hello_v2_hmac_algorithm_is_invalid_token(t: Topology) {
    let s = server_with_rsa_key(t).await;
    // Signed with the public key text as HMAC secret: the classic confusion attack.
    let token = sign_hmac(
        TokenKey::Rsa.public_pem().as_bytes(),
        &hello_claims(&s.backend.url(), "alice"),
    );
    let (_c, r) = hello_with_token(&s, &token).await;
    assert_error(&r, "invalid_token");
}

async fn hello_v2_algorithm_not_matching_the_key_is_invalid_token(t: Topology) {
    let s = server_with_rsa_key(t).await;
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Ec, "alice")).await;
    assert_error(&r, "invalid_token");
}

async fn hello_v2_expired_token(t: Topology) {
    let s = server_with_rsa_key(t).await;
    let now = unix_now();
    let claims =
        json!({"iss": s.backend.url(), "sub": "alice", "iat": now - 600, "exp": now - 120});
    let (_c, r) = hello_with_token(&s, &TokenKey::Rsa.sign(&claims)).await;
    assert_error(&r, "token_expired");
    // Within the one minute leeway it is still fine.
    let claims = json!({"iss": s.backend.url(), "sub": "alice", "iat": now - 600, "exp": now - 30});
    let (_c, r) = hello_with_token(&s, &TokenKey::Rsa.sign(&claims)).await;
    assert_eq!(r["type"], "hello", "{r}");
}

async fn hello_v2_not_yet_valid_token(t: Topology) {
    let s = server_with_rsa_key(t).await;
    let now = unix_now();
    let claims =
        json!({"iss": s.backend.url(), "sub": "alice", "iat": now + 600, "exp": now + 900});
    let (_c, r) = hello_with_token(&s, &TokenKey::Rsa.sign(&claims)).await;
    assert_error(&r, "token_not_valid_yet");
}

async fn hello_v2_missing_claims(t: Topology) {
    let s = server_with_rsa_key(t).await;
    let now = unix_now();
    // No `iat`: not valid yet (as upstream).
    let claims = json!({"iss": s.backend.url(), "sub": "alice", "exp": now + 300});
    let (_c, r) = hello_with_token(&s, &TokenKey::Rsa.sign(&claims)).await;
    assert_error(&r, "token_not_valid_yet");
    // No `exp`: expired.
    let claims = json!({"iss": s.backend.url(), "sub": "alice", "iat": now});
    let (_c, r) = hello_with_token(&s, &TokenKey::Rsa.sign(&claims)).await;
    assert_error(&r, "token_expired");
    // `exp` before `iat`: expired.
    let claims = json!({"sub": "alice", "iat": now, "exp": now - 1});
    let (_c, r) = hello_with_token(&s, &TokenKey::Rsa.sign(&claims)).await;
    assert_error(&r, "token_expired");
}

async fn hello_v2_truncated_and_garbage_tokens(t: Topology) {
    let s = server_with_rsa_key(t).await;
    let good = s.backend.token(TokenKey::Rsa, "alice");
    let truncated = &good[..good.len() - 10];
    let no_signature = &good[..good.rfind('.').expect("three parts")];
    for token in [
        truncated,
        no_signature,
        "garbage",
        "a.b.c",
        "...",
        "eyJhbGciOiJSUzI1NiJ9.e30.",
    ] {
        let (_c, r) = hello_with_token(&s, token).await;
        assert_error(&r, "invalid_token");
    }
    // An empty token is a malformed hello.
    let (_c, r) = hello_with_token(&s, "").await;
    assert_error(&r, "invalid_format");
    let mut c = s.client().await;
    let r = c
        .request(json!({"type": "hello", "hello": {"version": "2.0",
            "auth": {"url": s.backend.backend_url(), "params": {"userid": "alice"}}}}))
        .await;
    assert_error(&r, "invalid_format");
}

async fn hello_v2_without_published_key_is_invalid_token(t: Topology) {
    let s = TestServer::start_on(t).await;
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa, "alice")).await;
    assert_error(&r, "invalid_token");
}

// ----- capabilities cache ----------------------------------------------------

/// The key is fetched once and cached; when a token does not verify with the
/// cached key (Nextcloud rotated it), the capabilities are fetched again,
/// revalidating with the ETag, and the new key is used.
// Single server only: capabilities are cached per server.
#[tokio::test]
async fn hello_v2_refetches_capabilities_when_the_key_changed() {
    let s = server_with_rsa_key(Topology::Single).await;
    s.backend
        .set_capabilities_cache(Some("\"caps-1\""), Some("max-age=3600"));
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa, "alice")).await;
    assert_eq!(r["type"], "hello", "{r}");
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa, "bob")).await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(s.backend.count("capabilities"), 1, "cached");

    // Rotation: a new key and a new ETag.
    s.backend.set_token_key(TokenKey::Ec.public_pem());
    s.backend
        .set_capabilities_cache(Some("\"caps-2\""), Some("max-age=3600"));
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Ec, "carol")).await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(r["hello"]["userid"], "carol");
    let caps = s.backend.requests_of("capabilities");
    assert_eq!(caps.len(), 2);
    assert_eq!(caps[1].header("if-none-match"), Some("\"caps-1\""));

    // Re-fetching is rate limited: a bad token right after does not ask again.
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa2, "eve")).await;
    assert_error(&r, "invalid_token");
    assert_eq!(s.backend.count("capabilities"), 2);
}

/// A 304 answer keeps the cached capabilities (the key still verifies).
// Single server only: capabilities are cached per server.
#[tokio::test]
async fn hello_v2_not_modified_keeps_the_cached_key() {
    let s = server_with_rsa_key(Topology::Single).await;
    s.backend.set_capabilities_cache(Some("\"same\""), None);
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa, "alice")).await;
    assert_eq!(r["type"], "hello", "{r}");
    // A token of another key invalidates; the 304 keeps the old key.
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa2, "eve")).await;
    assert_error(&r, "invalid_token");
    let caps = s.backend.requests_of("capabilities");
    assert_eq!(caps.len(), 2);
    assert_eq!(caps[1].header("if-none-match"), Some("\"same\""));
    let (_c, r) = hello_with_token(&s, &s.backend.token(TokenKey::Rsa, "bob")).await;
    assert_eq!(r["type"], "hello", "{r}");
    assert_eq!(s.backend.count("capabilities"), 2);
}

both_topologies!(
    hello_v2_accepts_rsa_ecdsa_and_ed25519_tokens,
    hello_v2_claims_become_the_session,
    hello_v2_session_resumes,
    hello_v2_wrong_key_is_invalid_token,
    hello_v2_hmac_algorithm_is_invalid_token,
    hello_v2_algorithm_not_matching_the_key_is_invalid_token,
    hello_v2_expired_token,
    hello_v2_not_yet_valid_token,
    hello_v2_missing_claims,
    hello_v2_truncated_and_garbage_tokens,
    hello_v2_without_published_key_is_invalid_token,
);
