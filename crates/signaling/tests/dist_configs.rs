//! The configuration files shipped in `dist/` and at the top level are
//! valid: they parse, their `${VAR}` references resolve, and the server (or
//! proxy) builds from them. Catches typos in keys and values that would
//! only show at an operator's first start.

mod common;

use common::*;
use runtime::config::Ini;
use std::path::Path;

fn repo(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fake_env(name: &str) -> Option<String> {
    Some(match name {
        "SIGNALING_HASH_KEY" => HASH_KEY.to_owned(),
        "SIGNALING_BLOCK_KEY" => BLOCK_KEY.to_owned(),
        "NEXTCLOUD_URL" => "https://cloud.example.com/".to_owned(),
        "PROXY_COUNTRY" => "DE".to_owned(),
        _ => format!("value-of-{name}"),
    })
}

#[tokio::test]
async fn shipped_server_configs_build() {
    runtime::logging::init("error");
    let dir = TempDir::new("dist-configs").expect("dir");
    let key = dir.join("proxy_token_key");
    std::fs::write(&key, TokenKey::Rsa.private_pem()).expect("key");
    for path in ["server.conf.in", "dist/docker/server.conf"] {
        let text = repo(path).replace("/run/secrets/proxy_token_key", &key.display().to_string());
        let ini = Ini::parse_with_env(&text, fake_env).unwrap_or_else(|e| panic!("{path}: {e}"));
        signaling::Server::build(&ini).unwrap_or_else(|e| panic!("{path}: {e}"));
        signaling::ListenConfig::from_config(&ini).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

#[tokio::test]
async fn shipped_proxy_configs_build() {
    let dir = TempDir::new("dist-proxy-configs").expect("dir");
    let public = dir.join("proxy_token_public");
    std::fs::write(&public, TokenKey::Rsa.public_pem()).expect("key");
    for path in ["proxy.conf.in", "dist/docker/proxy.conf"] {
        let text = repo(path).replace(
            "/run/secrets/proxy_token_public",
            &public.display().to_string(),
        );
        let ini = Ini::parse_with_env(&text, fake_env).unwrap_or_else(|e| panic!("{path}: {e}"));
        proxy::ProxyServer::build(&ini).unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

/// The strict reading knows every key of our shipped files and of the Go
/// server's own samples (Debian's package, installed by `scripts/test.sh`):
/// nothing but their placeholder secrets is reported.
#[test]
fn shipped_and_go_configs_have_no_unknown_keys() {
    let debian = |name: &str| {
        let path = format!("/etc/nextcloud-spreed-signaling/{name}");
        std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{path}: {e} (install Debian's nextcloud-spreed-signaling: scripts/test.sh does)"
            )
        })
    };
    let cases = [
        (
            "server.conf.in",
            repo("server.conf.in"),
            &signaling::schema::SCHEMA,
        ),
        (
            "dist/docker/server.conf",
            repo("dist/docker/server.conf"),
            &signaling::schema::SCHEMA,
        ),
        (
            "debian server.conf",
            debian("server.conf"),
            &signaling::schema::SCHEMA,
        ),
        (
            "proxy.conf.in",
            repo("proxy.conf.in"),
            &proxy::schema::SCHEMA,
        ),
        (
            "dist/docker/proxy.conf",
            repo("dist/docker/proxy.conf"),
            &proxy::schema::SCHEMA,
        ),
        (
            "debian proxy.conf",
            debian("proxy.conf"),
            &proxy::schema::SCHEMA,
        ),
    ];
    for (name, text, schema) in cases {
        let ini = Ini::parse_with_env(&text, fake_env).unwrap_or_else(|e| panic!("{name}: {e}"));
        let lints: Vec<_> = schema
            .lint(&ini)
            .into_iter()
            .filter(|l| !l.message.contains("placeholder"))
            .collect();
        assert!(lints.is_empty(), "{name}: {lints:?}");
    }
}
