//! NATS server URLs from `[nats] url`: parsing, validation, redaction for
//! logs, and the reconnect backoff.

use async_nats::{ConnectOptions, ServerAddr};
use rand::Rng;
use std::time::Duration;

use super::{INITIAL_RETRY, MAX_RETRY};

/// Split `[nats] url` (a comma list) into server addresses and the
/// credentials of the first address that has some. The client does not read
/// credentials from URLs itself; like nats.go, `user:pass@` is a user and
/// password and a lone `token@` is a token.
pub(super) fn parse_urls(urls: &str) -> Result<(Vec<ServerAddr>, ConnectOptions), NatsConfigError> {
    let mut addrs = Vec::new();
    let mut options = ConnectOptions::new();
    let mut have_auth = false;
    for part in urls.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let addr: ServerAddr =
            part.parse()
                .map_err(|e: std::io::Error| NatsConfigError::Address {
                    addr: redact(part),
                    reason: e.to_string(),
                })?;
        if !have_auth {
            if let Some(user) = addr.username() {
                let user = percent_decode(user);
                options = match addr.password() {
                    Some(pass) => options.user_and_password(user, percent_decode(pass)),
                    None => options.token(user),
                };
                have_auth = true;
            }
        }
        addrs.push(addr);
    }
    if addrs.is_empty() {
        return Err(NatsConfigError::Empty(redact(urls)));
    }
    Ok((addrs, options))
}

/// `nats://***@host:port` for logs: never print credentials.
pub(super) fn redact(url: &str) -> String {
    url.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(s), Some(at)) if at > s => format!("{}***{}", &u[..s + 3], &u[at..]),
            (None, Some(at)) => format!("***{}", &u[at..]),
            _ => u.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(super) fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = |c: u8| char::from(c).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                // Two hex digits: at most 0xff, fits a byte.
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Delay before connection attempt `attempts` (1-based, reset after each
/// successful connect): the first attempt at once (a restarted server is
/// often back already), then 1 s doubling to 8 s, each ±25 % so that the
/// nodes of a cluster do not reconnect in lockstep.
pub(super) fn retry_delay(attempts: usize) -> Duration {
    if attempts <= 1 {
        return Duration::ZERO;
    }
    let exp = u32::try_from(attempts - 2).unwrap_or(u32::MAX).min(3);
    let base = (INITIAL_RETRY * 2u32.pow(exp)).min(MAX_RETRY);
    base.mul_f64(rand::thread_rng().gen_range(0.75..1.25))
}

/// Whether `url` selects the in-process bus instead of a NATS server.
pub fn is_loopback_url(url: &str) -> bool {
    let url = url.trim();
    url.is_empty() || url == ":loopback:" || url == "nats://loopback"
}

/// Checks the syntax of a non-loopback `[nats] url` value without connecting
/// (`signaling check`); returns the number of server addresses.
pub fn validate_urls(urls: &str) -> Result<usize, NatsConfigError> {
    parse_urls(urls).map(|(addrs, _)| addrs.len())
}

#[derive(Debug, thiserror::Error)]
pub enum NatsConfigError {
    #[error("invalid NATS server address {addr:?}: {reason}")]
    Address { addr: String, reason: String },
    #[error("no NATS server address in {0:?}")]
    Empty(String),
}
