//! Trusted proxies and CIDR access lists (upstream 1.1.3 #448 for CIDRs in
//! `[stats] allowed_ips`, 1.3.0 for `[app] trustedproxies`).
#![allow(clippy::unwrap_used)]
mod common;
use common::*;

async fn stats(s: &TestServer, headers: &[(&str, &str)]) -> u16 {
    raw_request("GET", &format!("{}api/v1/stats", s.base()), headers, "")
        .await
        .status
}

/// `[stats] allowed_ips` accepts networks.
#[tokio::test]
async fn allowed_ips_accept_cidr_networks() {
    let s = TestServer::start_with("[stats]\nallowed_ips = 192.0.2.0/24, 127.0.0.0/8\n").await;
    assert_eq!(stats(&s, &[]).await, 200, "127.0.0.1 is in 127.0.0.0/8");
    assert_eq!(stats(&s, &[("X-Real-IP", "192.0.2.77")]).await, 200);
    assert_eq!(stats(&s, &[("X-Real-IP", "198.51.100.1")]).await, 403);
}

/// Proxy headers are believed only from trusted proxies: with loopback not
/// trusted, a client on loopback cannot claim another address.
#[tokio::test]
async fn proxy_headers_only_from_trusted_proxies() {
    let s = TestServer::start_with(
        "[app]\ntrustedproxies = 10.0.0.0/8\n[stats]\nallowed_ips = 192.0.2.1\n",
    )
    .await;
    assert_eq!(
        stats(&s, &[("X-Real-IP", "192.0.2.1")]).await,
        403,
        "loopback is not a trusted proxy here"
    );
    let s = TestServer::start_with("[stats]\nallowed_ips = 192.0.2.1\n").await;
    assert_eq!(
        stats(&s, &[("X-Real-IP", "192.0.2.1")]).await,
        200,
        "loopback is trusted by default"
    );
}

/// `X-Forwarded-For` is read from the right, skipping trusted proxies: a
/// client cannot put a fake address in front of the real one.
#[tokio::test]
async fn forwarded_for_is_read_from_the_right() {
    let s = TestServer::start_with("[stats]\nallowed_ips = 192.0.2.1\n").await;
    // The client (198.51.100.9) claims to be 192.0.2.1; the proxy appended the real address.
    assert_eq!(
        stats(&s, &[("X-Forwarded-For", "192.0.2.1, 198.51.100.9")]).await,
        403
    );
    // A chain of trusted proxies after the real client is skipped.
    assert_eq!(
        stats(&s, &[("X-Forwarded-For", "192.0.2.1, 10.0.0.5, 127.0.0.1")]).await,
        200
    );
}

/// An invalid entry stops start-up and names the key.
#[tokio::test]
async fn invalid_networks_are_refused() {
    let backend = FakeBackend::start(SECRET).await;
    for extra in [
        "[app]\ntrustedproxies = 10.0.0.0/99\n",
        "[stats]\nallowed_ips = not-an-ip\n",
    ] {
        let ini = runtime::config::Ini::parse(&config_for(&backend.url(), extra)).unwrap();
        let err = signaling::Server::build(&ini).unwrap_err().to_string();
        assert!(
            err.contains("trustedproxies") || err.contains("allowed_ips"),
            "{err}"
        );
    }
}
