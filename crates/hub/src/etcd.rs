//! A small etcd v3 client over etcd's JSON gateway (`POST /v3/kv/range`),
//! for what the MCU proxy setup reads from etcd: the proxies' URLs
//! (`[mcu] urltype = etcd`) and the signaling servers' public keys
//! (`proxy.conf` `tokentype = etcd`). Plain HTTP to the configured
//! endpoints, tried in turn; no gRPC stack for two reads.

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};
use std::time::Duration;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, thiserror::Error)]
pub enum EtcdError {
    #[error("no etcd endpoint configured")]
    NoEndpoints,
    #[error("etcd at {endpoint}: {reason}")]
    Request { endpoint: String, reason: String },
}

#[derive(Clone)]
pub struct EtcdClient {
    endpoints: Vec<String>,
    client: Client<HttpConnector, Full<Bytes>>,
    timeout: Duration,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient")
            .field("endpoints", &self.endpoints)
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

impl EtcdClient {
    /// `endpoints`: comma-separated `host:port` (or `http://host:port`).
    pub fn new(endpoints: &str) -> Result<EtcdClient, EtcdError> {
        let endpoints: Vec<String> = endpoints
            .split(',')
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(|e| {
                let e = e.trim_end_matches('/');
                if e.starts_with("http://") || e.starts_with("https://") {
                    e.to_owned()
                } else {
                    format!("http://{e}")
                }
            })
            .collect();
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoints);
        }
        Ok(EtcdClient {
            endpoints,
            client: Client::builder(TokioExecutor::new()).build(HttpConnector::new()),
            timeout: Duration::from_secs(5),
        })
    }

    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    async fn range(&self, body: Value) -> Result<Vec<(String, Vec<u8>)>, EtcdError> {
        let mut last = EtcdError::NoEndpoints;
        for endpoint in &self.endpoints {
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
