//! Requests from the signaling server to Nextcloud: signed JSON POSTs with the
//! OCS envelope unwrapped, a per-host concurrency limit, a timeout, and the
//! fetching side of the capabilities cache (`capabilities.rs`), which decides
//! whether the v3 signaling API is used and holds the hello v2 token key.

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tracing::{debug, warn};
use url::Url;

use crate::backend::capabilities::{
    capabilities_url, CacheControl, CapabilitiesCache, FetchResult, Lookup, SpreedCapabilities,
};
use crate::core::backends::Backends;
use runtime::tls::tls_client_config;

/// Largest response body accepted from Nextcloud.
const MAX_RESPONSE_BODY: usize = 4 * 1024 * 1024;
const MAX_REDIRECTS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("no backend secret configured for {0}")]
    NoSecret(String),
    #[error("{0}")]
    Http(String),
    #[error("request to {0} timed out")]
    Timeout(String),
    #[error("unsupported_content_type")]
    UnsupportedContentType,
    #[error("incomplete OCS response")]
    IncompleteOcs,
    #[error("could not decode response: {0}")]
    Decode(String),
    #[error("backend answered with status {0}")]
    Status(StatusCode),
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Client for all backend requests of one server.
pub struct BackendClient {
    client: HttpClient,
    backends: Arc<Backends>,
    user_agent: String,
    features: String,
    per_host: usize,
    limits: Mutex<HashMap<String, Arc<Semaphore>>>,
    capabilities: CapabilitiesCache,
    /// One capabilities request per Nextcloud at a time; the others wait for its answer.
    fetching: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    failures: FailureLog,
}

/// How long repeats of the same failure to the same backend are collapsed
/// into a count instead of a log line each.
const FAILURE_LOG_WINDOW: Duration = Duration::from_secs(60);

/// One warning per backend host and cause: when Nextcloud is down, every
/// session's leave, ping and join fails the same way, and a line each would
/// bury everything else (and the status page's recent warnings).
#[derive(Default)]
struct FailureLog {
    /// (host, cause) -> (when last logged, failures not logged since).
    seen: Mutex<HashMap<(String, String), (Instant, u64)>>,
}

impl FailureLog {
    fn report(&self, u: &Url, e: &BackendError) {
        let host = match u.port() {
            Some(p) => format!("{}:{p}", u.host_str().unwrap_or_default()),
            None => u.host_str().unwrap_or_default().to_owned(),
        };
        let cause = e.cause();
        let now = Instant::now();
        let repeats = {
            // Plain mutex, never held across an await.
            let mut seen = self.seen.lock();
            match seen.get_mut(&(host.clone(), cause.clone())) {
                Some((last, skipped)) if now.duration_since(*last) < FAILURE_LOG_WINDOW => {
                    *skipped += 1;
                    return;
                }
                Some((last, skipped)) => {
                    *last = now;
                    std::mem::take(skipped)
                }
                None => {
                    seen.insert((host.clone(), cause.clone()), (now, 0));
                    0
                }
            }
        };
        if repeats > 0 {
            warn!(
                backend = %host,
                "requests to the backend fail: {cause} ({repeats} more since the last report)"
            );
        } else {
            warn!(backend = %host, "requests to the backend fail: {cause}");
        }
    }
}

/// A hyper client error as one readable line: its causes joined with
/// `: `, e.g. `client error (Connect): tcp connect error: Connection
/// refused (os error 111)`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = s.source();
    }
    text
}

impl BackendError {
    /// The error without the request's URL, to group repeats by cause.
    fn cause(&self) -> String {
        match self {
            BackendError::Timeout(_) => "timed out".to_owned(),
            BackendError::NoSecret(_) => "no secret configured".to_owned(),
            other => other.to_string(),
        }
    }
}

impl std::fmt::Debug for BackendClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackendClient")
            .field("per_host", &self.per_host)
            .finish()
    }
}

impl BackendClient {
    pub fn new(
        backends: Arc<Backends>,
        version: &str,
        features: &[String],
        per_host: usize,
        skip_verify: bool,
    ) -> Result<BackendClient, BackendError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        if skip_verify {
            warn!("backend certificate verification is disabled ([backend] skipverify)");
        }
        let tls = tls_client_config(skip_verify);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(per_host)
            .build(https);
        Ok(BackendClient {
            client,
            backends,
            user_agent: format!("nextcloud-spreed-signaling/{version}"),
            features: features.join(", "),
            per_host: per_host.max(1),
            limits: Mutex::new(HashMap::new()),
            capabilities: CapabilitiesCache::default(),
            fetching: Mutex::new(HashMap::new()),
            failures: FailureLog::default(),
        })
    }

    pub fn backends(&self) -> &Arc<Backends> {
        &self.backends
    }

    fn limiter(&self, u: &Url) -> Arc<Semaphore> {
        let key = format!(
            "{}:{}",
            u.host_str().unwrap_or(""),
            u.port_or_known_default().unwrap_or(0)
        );
        self.limits
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_host)))
            .clone()
    }

    /// POST `request` to `u` (a backend URL of a session), signed with the
    /// backend's secret, and decode the (OCS-unwrapped) answer.
    pub async fn perform_json_request<Req, Resp>(
        &self,
        u: &Url,
        request: &Req,
        timeout: Option<Duration>,
    ) -> Result<Resp, BackendError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let fut = self.perform_inner(u, request);
        let res = match timeout {
            Some(t) => tokio::time::timeout(t, fut)
                .await
                .unwrap_or_else(|_| Err(BackendError::Timeout(u.to_string()))),
            None => fut.await,
        };
        if let Err(e) = &res {
            self.failures.report(u, e);
        }
        res
    }

    async fn perform_inner<Req, Resp>(&self, u: &Url, request: &Req) -> Result<Resp, BackendError>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
    {
        let secret = self
            .backends
            .secret_for(u)
            .ok_or_else(|| BackendError::NoSecret(u.to_string()))?;
        let mut target = u.clone();
        if self.has_v3_api(u).await {
            let path = target
                .path()
                .replace("/spreed/api/v1/signaling/", "/spreed/api/v3/signaling/")
                .replace("/spreed/api/v2/signaling/", "/spreed/api/v3/signaling/");
            target.set_path(&path);
        }
        let body = serde_json::to_vec(request).map_err(|e| BackendError::Decode(e.to_string()))?;
        let random = proto::backend::random_hex(64);
        let checksum = proto::backend::checksum(&random, &body, &secret);
        let _permit = self
            .limiter(u)
            .acquire_owned()
            .await
            .map_err(|e| BackendError::Http(e.to_string()))?;
        let mut current = target;
        for _ in 0..=MAX_REDIRECTS {
            let req = Request::builder()
                .method(Method::POST)
                .uri(current.as_str())
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .header("OCS-APIRequest", "true")
                .header(header::USER_AGENT, &self.user_agent)
                .header("X-Spreed-Signaling-Features", &self.features)
                .header("Spreed-Signaling-Random", &random)
                .header("Spreed-Signaling-Checksum", &checksum)
                .body(Full::new(Bytes::from(body.clone())))
                .map_err(|e| BackendError::Http(e.to_string()))?;
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| BackendError::Http(error_chain(&e)))?;
            if resp.status().is_redirection() {
                // Follow redirects only within the same scheme and host, as the
                // secret must not be sent elsewhere.
                let next = resp
                    .headers()
                    .get(header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .and_then(|l| current.join(l).ok());
                match next {
                    Some(n)
                        if n.scheme() == current.scheme()
                            && n.host_str() == current.host_str()
                            && n.port() == current.port() =>
                    {
                        current = n;
                        continue;
                    }
                    _ => {
                        return Err(BackendError::Http(
                            "not redirecting to different host".into(),
                        ))
                    }
                }
            }
            let ct = resp
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            if !ct.starts_with("application/json") {
                warn!(url = %current, status = %resp.status(), content_type = %ct, "backend answered with unsupported content type");
                return Err(BackendError::UnsupportedContentType);
            }
            let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
                .collect()
                .await
                .map_err(|e| BackendError::Http(e.to_string()))?
                .to_bytes();
            return decode_ocs(&bytes);
        }
        Err(BackendError::Http("too many redirects".into()))
    }

    /// Whether the backend announces `signaling-v3` (failures count as "no").
    async fn has_v3_api(&self, u: &Url) -> bool {
        self.capabilities(u)
            .await
            .caps
            .is_some_and(|c| c.has_feature(crate::backend::capabilities::FEATURE_SIGNALING_V3))
    }

    /// The Talk capabilities of the Nextcloud `u` belongs to, from the cache
    /// while fresh (see `capabilities.rs`).
    pub async fn capabilities(&self, u: &Url) -> Lookup {
        let cap = capabilities_url(u);
        let key = cap.as_str().to_owned();
        if let Some(l) = self.capabilities.fresh(&key, Instant::now()) {
            return l;
        }
        let lock = self
            .fetching
            .lock()
            .entry(key.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(())))
            .clone();
        let _guard = lock.lock().await;
        // Someone else may have fetched while we waited.
        if let Some(l) = self.capabilities.fresh(&key, Instant::now()) {
            return l;
        }
        let etag = self.capabilities.etag(&key);
        let (result, etag, cc) = match self.fetch_capabilities(&cap, etag.as_deref()).await {
            Ok(r) => r,
            Err(e) => {
                debug!(url = %cap, error = %e, "could not fetch capabilities");
                (FetchResult::Failed, None, CacheControl::default())
            }
        };
        self.capabilities
            .store(&key, Instant::now(), result, etag, cc)
    }

    /// Make the next lookup for `u` ask Nextcloud (rate limited); true if it will.
    pub fn invalidate_capabilities(&self, u: &Url) -> bool {
        self.capabilities
            .invalidate(capabilities_url(u).as_str(), Instant::now())
    }

    /// For `signaling check`: fetch `u`'s capabilities now (no cache) and
    /// report the HTTP status, the server's `Date` and the Talk part.
    pub async fn probe_capabilities(&self, u: &Url) -> Result<CapabilitiesProbe, BackendError> {
        let cap = capabilities_url(u);
        let req = Request::builder()
            .method(Method::GET)
            .uri(cap.as_str())
            .header(header::ACCEPT, "application/json")
            .header("OCS-APIRequest", "true")
            .header(header::USER_AGENT, &self.user_agent)
            .body(Full::new(Bytes::new()))
            .map_err(|e| BackendError::Http(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| BackendError::Timeout(cap.to_string()))?
            .map_err(|e| BackendError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let date = resp
            .headers()
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| BackendError::Http(e.to_string()))?
            .to_bytes();
        let spreed = decode_ocs::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|d| d.pointer("/capabilities/spreed").cloned())
            .and_then(|v| match v {
                serde_json::Value::Object(m) if !m.is_empty() => Some(SpreedCapabilities(m)),
                _ => None,
            });
        Ok(CapabilitiesProbe {
            url: cap.to_string(),
            status,
            date,
            spreed,
        })
    }

    async fn fetch_capabilities(
        &self,
        cap: &Url,
        etag: Option<&str>,
    ) -> Result<(FetchResult, Option<String>, CacheControl), BackendError> {
        let mut req = Request::builder()
            .method(Method::GET)
            .uri(cap.as_str())
            .header(header::ACCEPT, "application/json")
            .header("OCS-APIRequest", "true")
            .header(header::USER_AGENT, &self.user_agent);
        if let Some(etag) = etag {
            req = req.header(header::IF_NONE_MATCH, etag);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| BackendError::Http(e.to_string()))?;
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| BackendError::Timeout(cap.to_string()))?
            .map_err(|e| BackendError::Http(e.to_string()))?;
        let header_text = |name: header::HeaderName| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let new_etag = header_text(header::ETAG).filter(|e| !e.is_empty());
        let cc = CacheControl::parse(&header_text(header::CACHE_CONTROL).unwrap_or_default());
        if resp.status() == StatusCode::NOT_MODIFIED {
            return Ok((FetchResult::NotModified, new_etag, cc));
        }
        if resp.status() != StatusCode::OK {
            return Ok((FetchResult::Failed, None, cc));
        }
        let ct = header_text(header::CONTENT_TYPE).unwrap_or_default();
        if !ct.starts_with("application/json") {
            return Err(BackendError::UnsupportedContentType);
        }
        let bytes = Limited::new(resp.into_body(), MAX_RESPONSE_BODY)
            .collect()
            .await
            .map_err(|e| BackendError::Http(e.to_string()))?
            .to_bytes();
        let data: serde_json::Value = decode_ocs(&bytes)?;
        let spreed = match data.pointer("/capabilities/spreed") {
            Some(serde_json::Value::Object(m)) if !m.is_empty() => {
                Some(SpreedCapabilities(m.clone()))
            }
            _ => None,
        };
        Ok((FetchResult::Fresh(spreed), new_etag, cc))
    }
}

fn decode_ocs<T: DeserializeOwned>(body: &[u8]) -> Result<T, BackendError> {
    let ocs: proto::backend::OcsResponse =
        serde_json::from_slice(body).map_err(|e| BackendError::Decode(e.to_string()))?;
    let data = ocs
        .ocs
        .and_then(|o| o.data)
        .ok_or(BackendError::IncompleteOcs)?;
    if data.get() == "null" {
        return Err(BackendError::IncompleteOcs);
    }
    serde_json::from_str(data.get()).map_err(|e| BackendError::Decode(e.to_string()))
}

/// What [`BackendClient::probe_capabilities`] saw.
#[derive(Debug)]
pub struct CapabilitiesProbe {
    pub url: String,
    pub status: u16,
    pub date: Option<String>,
    pub spreed: Option<SpreedCapabilities>,
}
