//! `proxy check --config FILE`: validates `proxy.conf`, then tries what the
//! proxy depends on, one line each; exit code 0 only if nothing failed.

use runtime::check::Report;
use runtime::cli::CheckArgs;
use runtime::config::Ini;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::tokens::Tokens;

/// A certificate expiring within this many days is a warning.
const CERT_WARN_DAYS: i64 = 14;

/// Runs every check; returns the number of failures. `match_keys` are
/// signaling servers' private keys (token id, file) to compare with the
/// public keys in `[tokens]`.
pub async fn run(path: &Path, args: &CheckArgs, match_keys: &[(String, PathBuf)]) -> usize {
    let mut r = Report::default();
    let ini = match Ini::load(path) {
        Ok(i) => i,
        Err(e) => {
            r.fail("configuration", e.to_string());
            return r.finish();
        }
    };
    r.lint(path, &ini, &crate::schema::SCHEMA);
    check_janus(&mut r, &ini).await;
    check_tokens(&mut r, &ini).await;
    for (id, file) in match_keys {
        check_pair(&mut r, &ini, id, file);
    }
    for a in runtime::listen::parse_listen(&ini.get_string("http", "listen", "127.0.0.1:9090")) {
        if let runtime::listen::ListenAddr::Tcp(addr) = a {
            let what = format!("[http] listen {addr}");
            runtime::check::tcp_listener(
                &mut r,
                &what,
                &addr,
                "nextcloud-spreed-signaling-proxy",
                crate::VERSION,
                args.skip_bind,
            )
            .await;
        }
    }
    check_https(&mut r, &ini);
    r.finish()
}

/// `[mcu]`: Janus answers and has what the MCU needs.
async fn check_janus(r: &mut Report, ini: &Ini) {
    match mcu::janus::JanusSettings::from_config(ini) {
        Err((key, e)) => r.fail(&format!("[mcu] {key}"), e),
        Ok(settings) => {
            let what = format!("janus {}", settings.url);
            match janus::Gateway::connect(&settings.url).await {
                Err(e) => r.fail(
                    &what,
                    format!("{e} — is Janus running with the WebSocket transport?"),
                ),
                Ok(gw) => {
                    match gw
                        .server_info()
                        .map(|i| (i.check_mcu_requirements(), i.version_string.clone()))
                    {
                        Some((Ok(_), v)) => r.ok(&what, format!("Janus {v} with VideoRoom")),
                        Some((Err(e), _)) => r.fail(&what, e.to_string()),
                        None => r.fail(&what, "no info from Janus"),
                    }
                    gw.close().await;
                }
            }
        }
    }
}

/// `[tokens]`: the public keys of the signaling servers, or etcd.
async fn check_tokens(r: &mut Report, ini: &Ini) {
    match Tokens::load(ini, true) {
        Err(e) => r.fail("[tokens]", e),
        Ok(t) if ini.get_string("app", "tokentype", "static") == "etcd" => {
            let endpoints = ini.get_string("tokens", "endpoints", "");
            match runtime::etcd::EtcdClient::from_config(ini, "tokens") {
                Ok(c) => match tokio::time::timeout(Duration::from_secs(5), c.get("/")).await {
                    Ok(Ok(_)) => r.ok("[tokens] etcd", format!("{endpoints} answers")),
                    Ok(Err(e)) => r.fail("[tokens] etcd", e.to_string()),
                    Err(_) => r.fail("[tokens] etcd", "timed out"),
                },
                Err(e) => r.fail("[tokens] endpoints", e.to_string()),
            }
            drop(t);
        }
        Ok(t) if t.ids().is_empty() => {
            r.fail("[tokens]", "no token key: no signaling server can connect")
        }
        Ok(t) => {
            r.ok("[tokens]", format!("keys for {:?}", t.ids()));
            for (id, file) in ini.keys("tokens") {
                let what = format!("[tokens] {id}");
                match runtime::keys::load_public(file.as_ref()) {
                    Ok((key, enc)) => {
                        let bits = runtime::keys::bits(&key);
                        let text = format!("{file}: RSA {bits}-bit public key ({enc})");
                        if bits < runtime::keys::MIN_BITS {
                            r.warn(&what, format!("{text}: smaller than {} bits; make a new pair with `proxy genkey --id {id}`", runtime::keys::MIN_BITS));
                        } else {
                            r.ok(&what, text);
                        }
                    }
                    Err(e) => r.fail(&what, e.to_string()),
                }
            }
        }
    }
}

/// `[https]`: the certificate loads and is not about to expire.
fn check_https(r: &mut Report, ini: &Ini) {
    if !ini.get_string("https", "listen", "").is_empty() {
        let cert = ini.get_string("https", "certificate", "");
        let key = ini.get_string("https", "key", "");
        let what = "[https] certificate";
        match runtime::listen::load_tls(cert.as_ref(), key.as_ref()) {
            Err(e) => r.fail(what, e.to_string()),
            Ok(_) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                match runtime::x509::pem_file_validity(cert.as_ref())
                    .and_then(|v| runtime::x509::judge(v, now, CERT_WARN_DAYS))
                {
                    Ok((true, text)) => r.ok(what, format!("{cert} loads, {text}")),
                    Ok((false, text)) => {
                        r.warn(what, format!("{cert} expires soon: {text}; renew it"))
                    }
                    Err(e) => r.fail(what, format!("{cert}: {e}")),
                }
            }
        }
    }
}

/// A signaling server's private key against this proxy's public key of the
/// same token id: one pair, or a token that will be refused.
fn check_pair(r: &mut Report, ini: &Ini, id: &str, private_file: &Path) {
    let what = format!("[tokens] {id} and {}", private_file.display());
    let Some(public_file) = ini.get("tokens", id).filter(|f| !f.is_empty()) else {
        return r.fail(
            &what,
            format!("no [tokens] {id} in this proxy's configuration"),
        );
    };
    let private = match runtime::keys::load_private(private_file) {
        Ok((k, _)) => k,
        Err(e) => return r.fail(&what, e.to_string()),
    };
    match runtime::keys::load_public(public_file.as_ref()) {
        Ok((public, _)) if runtime::keys::matches(&private, &public) => {
            r.ok(&what, "one key pair: tokens signed with it are accepted")
        }
        Ok(_) => r.fail(
            &what,
            format!("not one pair: the proxy refuses tokens signed with this key; give it the public half ({public_file}) of the signaling server's token_key"),
        ),
        Err(e) => r.fail(&what, e.to_string()),
    }
}
