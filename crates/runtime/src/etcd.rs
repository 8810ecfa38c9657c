//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`),
//! for what the MCU proxy setup reads from etcd: the proxies' URLs
//! (`[mcu] urltype = etcd`) and the signaling servers' public keys
//! (`proxy.conf` `tokentype = etcd`). HTTP or HTTPS (with the `cacert`,
//! `clientcert` and `clientkey` of upstream's configuration) to the
//! configured endpoints, tried in turn; no gRPC stack for two reads.
//! Endpoints may also come from DNS SRV records (`discoverysrv`,
//! `discoveryservice`), looked up again at most every minute.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint configured")]
    NoEndpoints,
    #[error("etcd at {endpoint}: {reason}")]
    Request { endpoint: String, reason: String },
    #[error("{key}: {reason}")]
    Config { key: &'static str, reason: String },
}

/// `discoverysrv` domain, `discoveryservice`, and when the records were
/// last read.
type SrvDiscovery = (
    String,
    String,
    Arc<parking_lot::Mutex<Option<std::time::Instant>>>,
);

#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Arc<parking_lot::RwLock<Vec<String>>>,
    srv: Option<SrvDiscovery>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &*self.endpoints.read())
            .finish()
    }
}

/// The smallest key greater than every key starting with `prefix`.
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// The TLS settings of `section` (`cacert`, `clientcert`, `clientkey`), if
/// any: the CA the etcd servers' certificates must chain to (else the
/// system's roots) and the client certificate etcd may require.
fn tls_config(
    ini: &crate::config::Ini,
    section: &str,
) -> Result<Option<rustls::ClientConfig>, EtcdError> {
    let file = |key: &'static str| ini.get_string(section, key, "");
    let (ca, cert, key) = (file("cacert"), file("clientcert"), file("clientkey"));
    if ca.is_empty() && cert.is_empty() && key.is_empty() {
        return Ok(None);
    }
    let read = |key: &'static str, path: &str| {
        std::fs::read(path).map_err(|e| EtcdError::Config {
            key,
            reason: format!("{path:?}: {e}"),
        })
    };
    let certs = |key: &'static str, path: &str| {
        let pem = read(key, path)?;
        let list: Vec<_> = rustls_pemfile::certs(&mut pem.as_slice())
            .filter_map(Result::ok)
            .collect();
        if list.is_empty() {
            return Err(EtcdError::Config {
                key,
                reason: format!("no certificate in {path:?}"),
            });
        }
        Ok(list)
    };
    let roots = if ca.is_empty() {
        let mut roots = rustls::RootCertStore::empty();
        for c in crate::tls::rustls_native_roots() {
            let _ = roots.add(c);
        }
        Arc::new(roots)
    } else {
        let mut roots = rustls::RootCertStore::empty();
        for c in certs("cacert", &ca)? {
            roots.add(c).map_err(|e| EtcdError::Config {
                key: "cacert",
                reason: e.to_string(),
            })?;
        }
        Arc::new(roots)
    };
    let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
    let config = match (cert.is_empty(), key.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let chain = certs("clientcert", &cert)?;
            let pem = read("clientkey", &key)?;
            let private = rustls_pemfile::private_key(&mut pem.as_slice())
                .ok()
                .flatten()
                .ok_or_else(|| EtcdError::Config {
                    key: "clientkey",
                    reason: format!("no private key in {key:?}"),
                })?;
            builder
                .with_client_auth_cert(chain, private)
                .map_err(|e| EtcdError::Config {
                    key: "clientkey",
                    reason: e.to_string(),
                })?
        }
        (true, false) | (false, true) => {
            return Err(EtcdError::Config {
                key: "clientcert",
                reason: "clientcert and clientkey go together".into(),
            })
        }
    };
    Ok(Some(config))
}

impl EtcdClient {
    /// `endpoints`: comma-separated `host:port` (or `http://host:port`).
    pub fn new(endpoints: &str) -> Result<EtcdClient, EtcdError> {
        Self::build(endpoints, None)
    }

    /// The client `[section]` describes: `endpoints` and the TLS keys
    /// (`discoverysrv` is refused).
    pub fn from_config(ini: &crate::config::Ini, section: &str) -> Result<EtcdClient, EtcdError> {
        let endpoints = ini.get_string(section, "endpoints", "");
        let tls = tls_config(ini, section)?;
        let domain = ini.get_string(section, "discoverysrv", "");
        if endpoints.trim().is_empty() && !domain.is_empty() {
            let mut client = Self::build("discovered-by-srv", tls)?;
            client.endpoints.write().clear();
            client.srv = Some((
                domain,
                ini.get_string(section, "discoveryservice", ""),
                Arc::new(parking_lot::Mutex::new(None)),
            ));
            return Ok(client);
        }
        Self::build(&endpoints, tls)
    }

    /// With `discoverysrv`: read the SRV records when there are no
    /// endpoints yet or the last lookup is a minute old.
    async fn refresh_srv(&self) -> Result<(), EtcdError> {
        let Some((domain, service, last)) = &self.srv else {
            return Ok(());
        };
        let due = last
            .lock()
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
        if !due && !self.endpoints.read().is_empty() {
            return Ok(());
        }
        // Also after a failure: not one lookup per read while DNS is down.
        *last.lock() = Some(std::time::Instant::now());
        match crate::dns_srv::etcd_endpoints(domain, service).await {
            Ok(list) => {
                *self.endpoints.write() = list;
                Ok(())
            }
            Err(reason) if self.endpoints.read().is_empty() => Err(EtcdError::Request {
                endpoint: format!("SRV {domain}"),
                reason,
            }),
            Err(reason) => {
                tracing::warn!(%domain, %reason, "etcd SRV lookup failed, keeping the endpoints");
                Ok(())
            }
        }
    }

    fn build(endpoints: &str, tls: Option<rustls::ClientConfig>) -> Result<EtcdClient, EtcdError> {
        let scheme = if tls.is_some() { "https" } else { "http" };
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let e = e.trim_end_matches('/');
                if e.starts_with("http://") || e.starts_with("https://") {
                    e.to_owned()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        let tls = tls.unwrap_or_else(|| crate::tls::tls_client_config(false));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(EtcdClient {
            endpoints: Arc::new(parking_lot::RwLock::new(endpoints)),
            srv: None,
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout: Duration::from_secs(5),
        })
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.endpoints.read().clone()
    }

    async fn range(&self, body: Value) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        self.refresh_srv().await?;
        let mut last = EtcdError::NoEndpoints;
        let endpoints = self.endpoints();
        for endpoint in &endpoints {
            match self.range_at(endpoint, &body).await {
                Ok(kvs) => return Ok(kvs),
                Err(reason) => {
                    last = EtcdError::Request {
                        endpoint: endpoint.clone(),
                        reason,
                    }
                }
            }
        }
        Err(last)
    }

    async fn range_at(
        &self,
        endpoint: &str,
        body: &Value,
    ) -> Result<Vec<(String, Vec<u8>)>, String> {
        let req = http::Request::post(format!("{endpoint}/v3/kv/range"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .map_err(|e| e.to_string())?;
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?;
        let status = resp.status();
        let bytes = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| e.to_string())?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for kv in v["kvs"].as_array().map(Vec::as_slice).unwrap_or_default() {
            let key = kv["key"].as_str().and_then(|k| B64.decode(k).ok());
            let value = kv["value"]
                .as_str()
                .map(|v| B64.decode(v).unwrap_or_default())
                .unwrap_or_default();
            if let Some(key) = key {
                out.push((String::from_utf8_lossy(&key).into_owned(), value));
            }
        }
        Ok(out)
    }

    /// The value of `key`, if it exists.
    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, EtcdError> {
        let kvs = self.range(json!({"key": B64.encode(key)})).await?;
        Ok(kvs.into_iter().last().map(|(_, v)| v))
    }

    /// Every key below `prefix` with its value.
    pub async fn get_prefix(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        self.range(json!({
            "key": B64.encode(prefix),
            "range_end": B64.encode(range_end(prefix.as_bytes())),
        }))
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_end_of_prefixes() {
        assert_eq!(range_end(b"/a/b"), b"/a/c".to_vec());
        assert_eq!(range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(range_end(b"\xff\xff"), vec![0]);
    }
}
