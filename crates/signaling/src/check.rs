//! `signaling check --config FILE`: validates the configuration, then tries
//! every dependency for real and prints one line per check — `ok`, `warn`
//! or `FAIL` with what to do about it. Exit code 0 only if nothing failed.
//!
//! What it tries: the listeners can be bound; the TLS certificate loads;
//! every backend answers its capabilities (Talk installed, hello-v2 key
//! published, clock in sync with the server's `Date`) and accepts a request
//! signed with the configured secret; the MCU (Janus or each proxy, with
//! the token) answers; NATS answers.

use runtime::check::Report;
use runtime::cli::CheckArgs;
use runtime::config::Ini;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::{ListenConfig, Server};

/// Clock difference to a backend that earns a warning / a failure: hello-v2
/// tokens and Talk's own check tolerate little skew.
const SKEW_WARN: i64 = 5;
/// A certificate expiring within this many days is a warning.
const CERT_WARN_DAYS: i64 = 14;
const SKEW_FAIL: i64 = 60;

/// Seconds since the epoch of an HTTP date (`Thu, 03 Dec 2026 17:45:00 GMT`).
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = parts.as_slice() else {
        return None;
    };
    let month = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ]
    .iter()
    .position(|m| m == month)? as i64
        + 1;
    let (d, y): (i64, i64) = (day.parse().ok()?, year.parse().ok()?);
    let hms: Vec<i64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    let [h, mi, sec] = hms.as_slice() else {
        return None;
    };
    Some(
        runtime::dates::days_from_civil(y, month as u32, d as u32) * 86_400
            + h * 3600
            + mi * 60
            + sec,
    )
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn check_listeners(r: &mut Report, listen: &ListenConfig, skip_bind: bool) {
    for (kind, addrs) in [("http", &listen.http), ("https", &listen.https)] {
        for a in addrs {
            match a {
                runtime::listen::ListenAddr::Tcp(addr) => {
                    let what = format!("[{kind}] listen {addr}");
                    runtime::check::tcp_listener(
                        r,
                        &what,
                        addr,
                        "nextcloud-spreed-signaling",
                        crate::VERSION,
                        skip_bind,
                    )
                    .await;
                }
                runtime::listen::ListenAddr::Unix(path) => {
                    let what = format!("[{kind}] listen {}", path.display());
                    let dir = path.parent().unwrap_or(Path::new("/"));
                    if dir.is_dir() {
                        r.ok(&what, "directory exists");
                    } else {
                        r.fail(&what, format!("directory {} does not exist", dir.display()));
                    }
                }
            }
        }
    }
    if !listen.https.is_empty() {
        let what = "[https] certificate";
        match runtime::listen::load_tls(listen.certificate.as_ref(), listen.key.as_ref()) {
            Err(e) => r.fail(what, format!("{e}")),
            Ok(_) => match runtime::x509::pem_file_validity(listen.certificate.as_ref())
                .and_then(|v| runtime::x509::judge(v, now(), CERT_WARN_DAYS))
            {
                Ok((true, text)) => r.ok(what, format!("{} loads, {text}", listen.certificate)),
                Ok((false, text)) => r.warn(
                    what,
                    format!("{} expires soon: {text}; renew it", listen.certificate),
                ),
                Err(e) => r.fail(what, format!("{}: {e}", listen.certificate)),
            },
        }
    }
}

async fn check_backends(r: &mut Report, server: &Server) {
    let client = &server.hub.backend;
    let backends = server.hub.backends.all();
    if backends.is_empty() {
        r.warn(
            "backends",
            "none configured: no Nextcloud can use this server ([backend] backends)",
        );
    }
    for b in backends {
        let what = format!("backend {} ({})", b.id, b.url);
        let Ok(url) = url::Url::parse(&b.url) else {
            r.fail(&what, "url is not a URL");
            continue;
        };
        match client.probe_capabilities(&url).await {
            Err(e) => {
                r.fail(&what, format!("capabilities not reachable: {e} — check the url, DNS, TLS and that Nextcloud is up"));
                continue;
            }
            Ok(p) if p.status != 200 => {
                r.fail(&what, format!("{} answered HTTP {}", p.url, p.status));
                continue;
            }
            Ok(p) => {
                match &p.spreed {
                    None => r.fail(
                        &what,
                        "no Talk (spreed) capabilities: is the Talk app installed and enabled?",
                    ),
                    Some(c) => {
                        r.ok(&what, "capabilities answered, Talk installed");
                        if c.string_config("signaling", "hello-v2-token-key").is_none() {
                            r.warn(&what, "no hello-v2-token-key published: current Talk clients need hello v2 (Talk 18+)");
                        }
                    }
                }
                match p.date.as_deref().and_then(parse_http_date) {
                    Some(t) => {
                        let skew = t - now();
                        if skew.abs() >= SKEW_FAIL {
                            r.fail(&what, format!("clock differs by {skew} s: tokens and Talk's server check fail; sync clocks (NTP)"));
                        } else if skew.abs() >= SKEW_WARN {
                            r.warn(
                                &what,
                                format!("clock differs by {skew} s; sync clocks (NTP)"),
                            );
                        } else {
                            r.ok(&what, format!("clock in sync ({skew} s)"));
                        }
                    }
                    None => r.warn(&what, "no Date header to compare clocks with"),
                }
            }
        }
        // A request signed with the configured secret: Nextcloud refuses a
        // wrong one before looking at the request.
        let Some(backend_url) = hub::core::session::session_backend_url(&b.url) else {
            continue;
        };
        let ping = serde_json::json!({"type": "ping", "ping": {"roomid": "signaling-check", "entries": []}});
        let res: Result<serde_json::Value, _> = client
            .perform_json_request(&backend_url, &ping, Some(Duration::from_secs(10)))
            .await;
        match res {
            Ok(v) if v["error"]["code"] == "invalid_request" => r.fail(
                &what,
                "the shared secret is refused: use the same secret as in Talk's admin settings",
            ),
            Ok(_) => r.ok(&what, "signed request accepted (shared secret matches)"),
            Err(hub::backend::client::BackendError::Status(s)) if s.as_u16() == 403 => r.fail(
                &what,
                "the shared secret is refused (403): use the same secret as in Talk's admin settings",
            ),
            Err(e) => r.fail(&what, format!("signed request failed: {e}")),
        }
    }
}

async fn check_mcu(r: &mut Report, ini: &Ini) {
    let kind = ini.get_string("mcu", "type", "");
    let url = ini.get_string("mcu", "url", "");
    match (kind.as_str(), url.is_empty()) {
        ("", true) => r.ok("mcu", "none configured (media goes peer to peer)"),
        ("janus", _) | ("", false) => {
            let url = url.split_whitespace().next().unwrap_or_default();
            let what = format!("janus {url}");
            match janus::Gateway::connect(url).await {
                Err(e) => r.fail(
                    &what,
                    format!("{e} — is Janus running with the WebSocket transport?"),
                ),
                Ok(gw) => {
                    match gw.server_info() {
                        Some(info) => match info.check_mcu_requirements() {
                            Ok(w) => {
                                r.ok(
                                    &what,
                                    format!("Janus {} with VideoRoom", info.version_string),
                                );
                                if w.full_trickle_disabled {
                                    r.warn(&what, "full_trickle is off in janus.jcfg: call set-up will be slow");
                                }
                            }
                            Err(e) => r.fail(&what, format!("{e}")),
                        },
                        None => r.fail(&what, "no info from Janus"),
                    }
                    gw.close().await;
                }
            }
        }
        ("proxy", _) => {
            // Without a usable key no proxy can accept us: no point waiting.
            if check_token_key(r, ini) {
                check_proxies(r, ini).await;
            }
        }
        (other, _) => r.fail("[mcu] type", format!("unsupported {other:?}")),
    }
}

/// `[mcu] token_key`: an RSA private key in PEM form, large enough.
/// Returns whether it can be used.
fn check_token_key(r: &mut Report, ini: &Ini) -> bool {
    let file = ini.get_string("mcu", "token_key", "");
    if file.is_empty() {
        r.fail("[mcu] token_key", "missing: the private key of token_id");
        return false;
    }
    match runtime::keys::load_private(file.as_ref()) {
        Ok((key, enc)) => {
            let bits = runtime::keys::bits(&key.to_public_key());
            let text = format!("{file}: RSA {bits}-bit private key ({enc})");
            if bits < runtime::keys::MIN_BITS {
                r.warn(
                    "[mcu] token_key",
                    format!(
                        "{text}: smaller than {} bits; make a new pair with `proxy genkey`",
                        runtime::keys::MIN_BITS
                    ),
                );
            } else {
                r.ok("[mcu] token_key", text);
            }
            true
        }
        Err(e) => {
            r.fail("[mcu] token_key", e.to_string());
            false
        }
    }
}

/// Every MCU proxy accepts our token.
async fn check_proxies(r: &mut Report, ini: &Ini) {
    match hub::mcu::proxy::ProxySettings::from_config(ini) {
        Err((key, e)) => r.fail(&format!("[mcu] {key}"), e),
        Ok(settings) => {
            let metrics = hub::mcu::metrics::McuMetrics::new(&runtime::metrics::Registry::new());
            let mcu = hub::mcu::proxy::ProxyMcu::start(settings, metrics);
            if mcu.wait_connected(Duration::from_secs(10)).await {
                r.ok("mcu proxies", "every proxy accepted our token");
            } else {
                use hub::mcu::Mcu;
                let stats = mcu.stats();
                for p in stats["proxies"].as_array().cloned().unwrap_or_default() {
                    let what = format!("proxy {}", p["url"].as_str().unwrap_or_default());
                    if p["connected"] == true {
                        r.ok(&what, "connected, token accepted");
                    } else {
                        r.fail(&what, "no session: unreachable, or the proxy refuses token_id/token_key (see its log)");
                    }
                }
            }
            use hub::mcu::Mcu;
            mcu.stop().await;
        }
    }
}

async fn check_nats(r: &mut Report, ini: &Ini) {
    let url = ini.get_string("nats", "url", "");
    if hub::bus::nats::is_loopback_url(&url) {
        r.ok("nats", "in-process bus (single server)");
        return;
    }
    if let Err(e) = hub::bus::nats::validate_urls(&url) {
        r.fail("[nats] url", format!("{e}"));
        return;
    }
    for u in url.split(',').map(str::trim).filter(|u| !u.is_empty()) {
        let what = format!("nats {u}");
        let hostport = u
            .trim_start_matches("nats://")
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        let hostport = if hostport.contains(':') {
            hostport
        } else {
            format!("{hostport}:4222")
        };
        let attempt = async {
            use tokio::io::AsyncReadExt;
            let mut s = tokio::net::TcpStream::connect(hostport.as_str()).await?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(b)) if &b == b"INFO" => r.ok(&what, "NATS answers"),
            Ok(Ok(_)) => r.fail(&what, "something answers, but not NATS"),
            Ok(Err(e)) => r.fail(&what, format!("{e}")),
            Err(_) => r.fail(&what, "timed out"),
        }
    }
}

/// Runs every check; returns the number of failures (config errors are one).
pub async fn run(path: &Path, args: &CheckArgs) -> usize {
    let mut r = Report::default();
    let ini = match Ini::load(path) {
        Ok(i) => i,
        Err(e) => {
            r.fail("configuration", format!("{e}"));
            return r.finish();
        }
    };
    r.lint(path, &ini, &crate::schema::SCHEMA);
    let level = ini.get_string("app", "loglevel", "info");
    if let Err(e) = runtime::logging::check_level(&level) {
        r.warn("[app] loglevel", format!("{e}; info is used"));
    }
    let listen = match ListenConfig::from_config(&ini) {
        Ok(l) => l,
        Err(e) => {
            r.fail("configuration", format!("{e}"));
            return r.finish();
        }
    };
    // Building the server validates every section (and starts nothing that
    // listens). NATS is tried separately below, not joined.
    let mut offline = ini.clone();
    offline.set("nats", "url", ":loopback:");
    offline.set("mcu", "type", "");
    offline.set("mcu", "url", "");
    let server = match Server::build(&offline) {
        Ok(s) => s,
        Err(e) => {
            r.fail("configuration", format!("{e}"));
            return r.finish();
        }
    };
    match crate::validate_backends(&ini) {
        Ok(()) => r.ok("configuration", format!("{} is valid", path.display())),
        Err(e) => r.fail(
            "configuration",
            format!("{e} (the server skips this backend: its Nextcloud cannot connect)"),
        ),
    }
    check_listeners(&mut r, &listen, args.skip_bind).await;
    check_backends(&mut r, &server).await;
    check_mcu(&mut r, &ini).await;
    check_nats(&mut r, &ini).await;
    r.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates() {
        assert_eq!(parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT"), Some(0));
        assert_eq!(
            parse_http_date("Thu, 03 Dec 2026 17:45:10 GMT"),
            Some(1_796_319_910)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Thu, 03 Foo 2026 17:45:10 GMT"), None);
    }
}
