//! `proxy check --config FILE`: validates `proxy.conf`, then tries what the
//! proxy depends on, one line each; exit code 0 only if nothing failed.

use runtime::config::Ini;
use std::net::ToSocketAddrs;
use std::path::Path;
use std::time::Duration;

use crate::tokens::Tokens;

/// A certificate expiring within this many days is a warning.
const CERT_WARN_DAYS: i64 = 14;

/// Runs every check; returns the number of failures.
pub async fn run(path: &Path) -> usize {
    let mut failed = 0;
    let mut line = |ok: bool, what: &str, detail: String| {
        if ok {
            println!("ok    {what}: {detail}");
        } else {
            failed += 1;
            println!("FAIL  {what}: {detail}");
        }
    };
    let ini = match Ini::load(path) {
        Ok(i) => i,
        Err(e) => {
            line(false, "configuration", e.to_string());
            return 1;
        }
    };
    match hub::mcu::janus::JanusSettings::from_config(&ini) {
        Err((key, e)) => line(false, &format!("[mcu] {key}"), e),
        Ok(settings) => {
            let what = format!("janus {}", settings.url);
            match janus::Gateway::connect(&settings.url).await {
                Err(e) => line(
                    false,
                    &what,
                    format!("{e} — is Janus running with the WebSocket transport?"),
                ),
                Ok(gw) => {
                    match gw
                        .server_info()
                        .map(|i| (i.check_mcu_requirements(), i.version_string.clone()))
                    {
                        Some((Ok(_), v)) => line(true, &what, format!("Janus {v} with VideoRoom")),
                        Some((Err(e), _)) => line(false, &what, e.to_string()),
                        None => line(false, &what, "no info from Janus".into()),
                    }
                    gw.close().await;
                }
            }
        }
    }
    match Tokens::load(&ini, true) {
        Err(e) => line(false, "[tokens]", e),
        Ok(t) if ini.get_string("app", "tokentype", "static") == "etcd" => {
            let endpoints = ini.get_string("tokens", "endpoints", "");
            match hub::etcd::EtcdClient::from_config(&ini, "tokens") {
                Ok(c) => match tokio::time::timeout(Duration::from_secs(5), c.get("/")).await {
                    Ok(Ok(_)) => line(true, "[tokens] etcd", format!("{endpoints} answers")),
                    Ok(Err(e)) => line(false, "[tokens] etcd", e.to_string()),
                    Err(_) => line(false, "[tokens] etcd", "timed out".into()),
                },
                Err(e) => line(false, "[tokens] endpoints", e.to_string()),
            }
            drop(t);
        }
        Ok(t) if t.ids().is_empty() => line(
            false,
            "[tokens]",
            "no token key: no signaling server can connect".into(),
        ),
        Ok(t) => line(true, "[tokens]", format!("keys for {:?}", t.ids())),
    }
    for a in runtime::listen::parse_listen(&ini.get_string("http", "listen", "127.0.0.1:9090")) {
        if let runtime::listen::ListenAddr::Tcp(addr) = a {
            let what = format!("[http] listen {addr}");
            match addr.to_socket_addrs().map(|mut i| i.next()) {
                Ok(Some(sa)) => match std::net::TcpListener::bind(sa) {
                    Ok(_) => line(true, &what, "free".into()),
                    Err(e) => line(false, &what, format!("cannot bind: {e}")),
                },
                _ => line(false, &what, "not an address".into()),
            }
        }
    }
    if !ini.get_string("https", "listen", "").is_empty() {
        let cert = ini.get_string("https", "certificate", "");
        let key = ini.get_string("https", "key", "");
        let what = "[https] certificate";
        match runtime::listen::load_tls(cert.as_ref(), key.as_ref()) {
            Err(e) => line(false, what, e.to_string()),
            Ok(_) => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                match runtime::x509::pem_file_validity(cert.as_ref())
                    .and_then(|v| runtime::x509::judge(v, now, CERT_WARN_DAYS))
                {
                    Ok((true, text)) => line(true, what, format!("{cert} loads, {text}")),
                    Ok((false, text)) => {
                        println!("warn  {what}: {cert} expires soon: {text}; renew it")
                    }
                    Err(e) => line(false, what, format!("{cert}: {e}")),
                }
            }
        }
    }
    println!("{failed} failed");
    failed
}
