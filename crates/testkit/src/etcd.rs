//! A real etcd for tests (plain or TLS with client certificates), started
//! in a temp dir and killed on drop.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::certs::openssl;
use crate::process::{find_binary, free_port, wait_for_port, ChildGuard, TempDir, STARTUP_TIMEOUT};

/// A real single-node `etcd` (Debian `etcd-server`) on loopback ports, its
/// data in a temp dir; killed on drop. Keys are written through etcd's JSON
/// gateway, so tests need no etcd client.
#[derive(Debug)]
pub struct EtcdServer {
    child: ChildGuard,
    port: u16,
    tls: Option<EtcdTls>,
    _dir: TempDir,
}

/// The files of an etcd started with [`EtcdServer::start_tls`]: the CA that
/// signed its certificate and a client certificate it accepts.
#[derive(Clone, Debug)]
pub struct EtcdTls {
    pub cacert: PathBuf,
    pub clientcert: PathBuf,
    pub clientkey: PathBuf,
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
fn make_certs(dir: &TempDir) -> io::Result<(EtcdTls, PathBuf, PathBuf)> {
    let p = |n: &str| dir.join(n);
    let s = |p: &PathBuf| p.display().to_string();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let (ca_key, ca) = (p("ca.key"), p("ca.crt"));
    openssl(
        &[
            &["req", "-x509"][..],
            &ec[..],
            &["-keyout", &s(&ca_key), "-out", &s(&ca)],
            &["-subj", "/CN=testkit etcd CA", "-days", "2"],
        ]
        .concat(),
    )?;
    let mut made = Vec::new();
    // etcd's JSON gateway connects to etcd itself with the server certificate.
    for (name, usage) in [
        ("server", "serverAuth,clientAuth"),
        ("client", "clientAuth"),
    ] {
        let (key, csr, crt, ext) = (
            p(&format!("{name}.key")),
            p(&format!("{name}.csr")),
            p(&format!("{name}.crt")),
            p(&format!("{name}.ext")),
        );
        std::fs::write(
            &ext,
            format!("subjectAltName=IP:127.0.0.1\nextendedKeyUsage={usage}\n"),
        )?;
        openssl(
            &[
                &["req"][..],
                &ec[..],
                &["-keyout", &s(&key), "-out", &s(&csr)],
                &["-subj", &format!("/CN=testkit etcd {name}")],
            ]
            .concat(),
        )?;
        openssl(&[
            "x509",
            "-req",
            "-in",
            &s(&csr),
            "-CA",
            &s(&ca),
            "-CAkey",
            &s(&ca_key),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &s(&ext),
            "-out",
            &s(&crt),
        ])?;
        made.push((crt, key));
    }
    let (client, server) = (made.pop().expect("client"), made.pop().expect("server"));
    Ok((
        EtcdTls {
            cacert: ca,
            clientcert: client.0,
            clientkey: client.1,
        },
        server.0,
        server.1,
    ))
}

impl EtcdServer {
    /// Binary: `$ETCD_BIN` or `etcd` in `PATH`.
    pub async fn start() -> io::Result<EtcdServer> {
        Self::start_with(false).await
    }

    /// The same with HTTPS on the client port and client certificates
    /// required (`--client-cert-auth`); certificates made with `openssl`.
    pub async fn start_tls() -> io::Result<EtcdServer> {
        Self::start_with(true).await
    }

    /// The client certificate files, for [`start_tls`](Self::start_tls).
    pub fn tls(&self) -> Option<&EtcdTls> {
        self.tls.as_ref()
    }

    async fn start_with(tls: bool) -> io::Result<EtcdServer> {
        let binary = find_binary("etcd", "ETCD_BIN")?;
        let dir = TempDir::new("testkit-etcd")?;
        let certs = if tls { Some(make_certs(&dir)?) } else { None };
        let scheme = if tls { "https" } else { "http" };
        let mut last_err = None;
        for attempt in 0..3 {
            let (port, peer) = (free_port(), free_port());
            let client = format!("{scheme}://127.0.0.1:{port}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let mut cmd = Command::new(&binary);
            cmd.arg("--name")
                .arg("test")
                .arg("--data-dir")
                .arg(dir.join(&format!("data-{attempt}")))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .arg("--initial-cluster")
                .arg(format!("test={peer_url}"));
            if let Some((files, cert, key)) = &certs {
                cmd.arg("--cert-file")
                    .arg(cert)
                    .arg("--key-file")
                    .arg(key)
                    .arg("--trusted-ca-file")
                    .arg(&files.cacert)
                    .arg("--client-cert-auth");
            }
            let mut child = ChildGuard::spawn("etcd", &mut cmd, Some(&dir.join("etcd.log")))?;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            match wait_for_port(addr, STARTUP_TIMEOUT, Some(&mut child)).await {
                Ok(()) => {
                    return Ok(EtcdServer {
                        child,
                        port,
                        tls: certs.map(|c| c.0),
                        _dir: dir,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    /// `127.0.0.1:<port>` (the form `endpoints` takes).
    pub fn endpoint(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn call(&self, path: &str, body: serde_json::Value) -> io::Result<()> {
        if let Some(tls) = self.tls.clone() {
            return self.call_tls(path, body, tls).await;
        }
        let body = body.to_string();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        // etcd may take a moment after opening its port to elect itself.
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            let resp =
                crate::raw_http(&self.endpoint(), req.as_bytes(), Duration::from_secs(5)).await?;
            let text = String::from_utf8_lossy(&resp);
            if text.starts_with("HTTP/1.1 200") {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::other(format!("etcd refused {path}: {text}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Through `curl` with the client certificate (testkit has no TLS
    /// client of its own).
    async fn call_tls(&self, path: &str, body: serde_json::Value, tls: EtcdTls) -> io::Result<()> {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            let (url, body, tls) = (url.clone(), body.to_string(), tls.clone());
            let out = tokio::task::spawn_blocking(move || {
                Command::new("curl")
                    .args([
                        "-s",
                        "-o",
                        "/dev/null",
                        "-w",
                        "%{http_code}",
                        "--max-time",
                        "5",
                    ])
                    .arg("--cacert")
                    .arg(&tls.cacert)
                    .arg("--cert")
                    .arg(&tls.clientcert)
                    .arg("--key")
                    .arg(&tls.clientkey)
                    .args(["-H", "Content-Type: application/json", "-d", &body, &url])
                    .output()
            })
            .await
            .map_err(io::Error::other)??;
            let code = String::from_utf8_lossy(&out.stdout).into_owned();
            if code == "200" {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "etcd refused {path}: HTTP {code}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn put(&self, key: &str, value: &str) -> io::Result<()> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD;
        self.call(
            "/v3/kv/put",
            serde_json::json!({"key": b.encode(key), "value": b.encode(value)}),
        )
        .await
    }

    pub async fn delete(&self, key: &str) -> io::Result<()> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD;
        self.call(
            "/v3/kv/deleterange",
            serde_json::json!({"key": b.encode(key)}),
        )
        .await
    }

    pub fn log(&self) -> String {
        self.child.log_tail(64 * 1024)
    }
}
