//! The configuration files shipped in `dist/` and at the top level are
//! valid: they parse, their `${VAR}` references resolve, and the server (or
//! proxy) builds from them. Catches typos in keys and values that would
//! only show at an operator's first start.
// Single server only: parses shipped configuration files; no clients.

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

/// The Docker build context leaves build output and secrets out, and the
/// uid the image runs as is the one compose.yaml tells to give the secret
/// files to.
#[test]
fn docker_context_and_secret_owner() {
    let ignore = repo(".dockerignore");
    let entries: Vec<&str> = ignore
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    for needed in ["target/", ".git/", "**/.env", "**/secrets/"] {
        assert!(
            entries.contains(&needed),
            "{needed} missing in .dockerignore"
        );
    }
    let dockerfile = repo("dist/docker/Dockerfile");
    assert!(
        dockerfile.contains("--uid 10001 --gid 10001"),
        "{dockerfile}"
    );
    assert!(dockerfile.contains("USER signaling"));
    let compose = repo("dist/docker/compose.yaml");
    assert!(compose.contains("chown root:10001 secrets/* && chmod 0640 secrets/*"));
}

/// `scripts/test.sh` on a host without the test peers (a fake root and
/// stubs for apt-get, dpkg, systemctl): it lists the packages before
/// installing, keeps services from starting during the install
/// (policy-rc.d, removed afterwards), disables the units of what it
/// installed, and enables nothing.
#[test]
fn test_script_says_what_it_installs_and_enables_nothing() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("test-sh").expect("dir");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("usr/sbin")).expect("root");
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin");
    let log = dir.join("calls");
    let stub = |name: &str, body: &str| {
        let path = bin.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("stub");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    };
    let log_s = log.display();
    let root_s = root.display();
    stub(
        "apt-get",
        &format!(
            "echo \"apt-get $*\" >> {log_s}\n\
             case \"$*\" in *install*) [ -x {root_s}/usr/sbin/policy-rc.d ] && echo policy-rc.d present >> {log_s};; esac"
        ),
    );
    stub(
        "dpkg",
        "[ \"$2\" = nginx ] && echo /lib/systemd/system/nginx.service; true",
    );
    stub("systemctl", &format!("echo \"systemctl $*\" >> {log_s}"));
    stub(
        "deb-systemd-helper",
        &format!("echo \"deb-systemd-helper $*\" >> {log_s}"),
    );
    stub("sudo", "exec \"$@\"");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("bash")
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../scripts/test.sh"
        ))
        .env("PATH", path)
        .env("TEST_SH_ROOT", &root)
        .env("TEST_SH_INSTALL_ONLY", "1")
        .env("CI", "true")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let calls = std::fs::read_to_string(&log).expect("calls");
    for pkg in ["nginx", "nats-server", "janus", "etcd-server"] {
        assert!(
            stdout.contains(&format!("  {pkg}\n")),
            "{pkg} not listed:\n{stdout}"
        );
    }
    assert!(stdout.contains("not started"), "{stdout}");
    assert!(
        calls.contains("apt-get install -y -qq --no-install-recommends"),
        "{calls}"
    );
    assert!(calls.contains("policy-rc.d present"), "{calls}");
    assert!(
        !root.join("usr/sbin/policy-rc.d").exists(),
        "policy-rc.d left behind"
    );
    assert!(calls.contains("disable nginx.service"), "{calls}");
    assert!(stdout.contains("disabled nginx.service"), "{stdout}");
    assert!(!calls.contains(" enable"), "{calls}");
}

/// Links between the repository's documents point at files that are in the
/// repository (nothing under the team's `shared/` folder, which users do
/// not get).
#[test]
fn docs_have_no_dead_links() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut docs = vec![root.join("README.md"), root.join("ARCHITECTURE.md")];
    for e in std::fs::read_dir(root.join("docs")).expect("docs") {
        docs.push(e.expect("entry").path());
    }
    for doc in docs {
        let text = std::fs::read_to_string(&doc).expect("read");
        let dir = doc.parent().expect("dir");
        assert!(
            !text.contains("shared/"),
            "{} mentions shared/",
            doc.display()
        );
        for part in text.split("](").skip(1) {
            let target = part.split(')').next().unwrap_or_default();
            let target = target.split('#').next().unwrap_or_default();
            if target.is_empty() || target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            assert!(
                dir.join(target).exists(),
                "{}: dead link {target}",
                doc.display()
            );
        }
        // `dist/...` and `docs/...` paths named in backticks exist too.
        for part in text.split('`').skip(1).step_by(2) {
            if (part.starts_with("dist/")
                || part.starts_with("docs/")
                || part.starts_with("scripts/"))
                && !part.contains(' ')
                && !part.contains('*')
            {
                assert!(root.join(part).exists(), "{}: no {part}", doc.display());
            }
        }
    }
}
