//! Cache of each Nextcloud's Talk capabilities (`spreed` part of
//! `/ocs/v2.php/cloud/capabilities`).
//!
//! They decide the backend API path (`signaling-v3`), carry the public key of
//! hello v2 tokens (`config.signaling.hello-v2-token-key`) and the limit of
//! combined room pings (`config.signaling.session-ping-limit`). Like upstream
//! (2.0.0, #780/#783) the cache honours `Cache-Control: max-age` and revalidates
//! with the `ETag` (`If-None-Match`, 304), but keeps every answer for at least
//! [`MIN_CACHE`], so a Nextcloud that sends `no-cache` is not asked on every
//! request. The HTTP part lives in `backend_client.rs`; this module is the
//! clock-driven state, testable without sockets.

use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use url::Url;

/// Shortest time an answer is trusted, whatever `Cache-Control` says.
pub const MIN_CACHE: Duration = Duration::from_secs(60);
/// An invalidation (e.g. a token key that did not verify) is honoured at most
/// this often per backend, so bad tokens cannot make us hammer Nextcloud.
pub const MIN_INVALIDATE_INTERVAL: Duration = Duration::from_secs(60);

pub const FEATURE_SIGNALING_V3: &str = "signaling-v3";
pub const FEATURE_FEDERATION_V2: &str = "federation-v2";
pub const CONFIG_GROUP_SIGNALING: &str = "signaling";
pub const CONFIG_HELLO_V2_TOKEN_KEY: &str = "hello-v2-token-key";
pub const CONFIG_SESSION_PING_LIMIT: &str = "session-ping-limit";

/// The `spreed` capabilities of one Nextcloud.
#[derive(Clone, Debug, Default)]
pub struct SpreedCapabilities(pub Map<String, Value>);

impl SpreedCapabilities {
    pub fn has_feature(&self, feature: &str) -> bool {
        self.0
            .get("features")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|f| f.as_str() == Some(feature)))
    }

    fn config(&self, group: &str, key: &str) -> Option<&Value> {
        self.0.get("config")?.get(group)?.get(key)
    }

    pub fn string_config(&self, group: &str, key: &str) -> Option<String> {
        match self.config(group, key)? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            _ => None,
        }
    }

    pub fn int_config(&self, group: &str, key: &str) -> Option<i64> {
        match self.config(group, key)? {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
            _ => None,
        }
    }
}

/// What the cache says for one backend.
#[derive(Clone, Debug, Default)]
pub struct Lookup {
    pub caps: Option<Arc<SpreedCapabilities>>,
    /// The answer came from the cache without asking Nextcloud now.
    pub cached: bool,
}

/// Cache directives of a capabilities answer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheControl {
    pub max_age: Option<Duration>,
    pub no_cache: bool,
    pub must_revalidate: bool,
}

impl CacheControl {
    pub fn parse(header: &str) -> CacheControl {
        let mut cc = CacheControl::default();
        for part in header.split(',') {
            let part = part.trim();
            let (name, value) = match part.split_once('=') {
                Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
                None => (part, None),
            };
            match name.to_ascii_lowercase().as_str() {
                "max-age" => {
                    cc.max_age = value.and_then(|v| v.parse().ok()).map(Duration::from_secs)
                }
                "no-cache" | "no-store" => cc.no_cache = true,
                "must-revalidate" => cc.must_revalidate = true,
                _ => {}
            }
        }
        cc
    }

    /// How long the answer is trusted.
    pub fn lifetime(&self) -> Duration {
        match self.max_age {
            Some(age) if !self.no_cache => age.max(MIN_CACHE),
            _ => MIN_CACHE,
        }
    }
}

#[derive(Default)]
struct Entry {
    caps: Option<Arc<SpreedCapabilities>>,
    next_update: Option<Instant>,
    etag: Option<String>,
    must_revalidate: bool,
    next_invalidate: Option<Instant>,
}

/// How a fetch ended, as far as the cache cares.
#[derive(Debug)]
pub enum FetchResult {
    /// 200 with these capabilities (`None`: no `spreed` part).
    Fresh(Option<SpreedCapabilities>),
    /// 304: the cached answer still holds.
    NotModified,
    /// Anything else; the old answer stays unless it must be revalidated.
    Failed,
}

/// Per-backend state, keyed by the capabilities URL.
#[derive(Default)]
pub struct CapabilitiesCache {
    // Plain mutex: only short map operations, never held across an `.await`.
    entries: Mutex<HashMap<String, Entry>>,
}

impl CapabilitiesCache {
    /// The cached answer if it is still fresh at `now`.
    pub fn fresh(&self, key: &str, now: Instant) -> Option<Lookup> {
        let entries = self.entries.lock();
        let e = entries.get(key)?;
        match e.next_update {
            Some(t) if t > now => Some(Lookup {
                caps: e.caps.clone(),
                cached: true,
            }),
            _ => None,
        }
    }

    /// The ETag to send with the next request.
    pub fn etag(&self, key: &str) -> Option<String> {
        self.entries.lock().get(key).and_then(|e| e.etag.clone())
    }

    /// Record a fetch made at `now`; returns what callers should use.
    pub fn store(
        &self,
        key: &str,
        now: Instant,
        result: FetchResult,
        etag: Option<String>,
        cc: CacheControl,
    ) -> Lookup {
        let mut entries = self.entries.lock();
        let e = entries.entry(key.to_owned()).or_default();
        e.next_update = Some(now + cc.lifetime());
        e.must_revalidate = cc.must_revalidate;
        match result {
            FetchResult::Fresh(caps) => {
                e.etag = etag;
                e.caps = caps.map(Arc::new);
            }
            FetchResult::NotModified => {
                if etag.is_some() {
                    e.etag = etag;
                }
            }
            FetchResult::Failed => {
                if e.must_revalidate {
                    e.caps = None;
                }
                // Try again soon rather than trusting a failure for long.
                e.next_update = Some(now + Duration::from_secs(1));
            }
        }
        Lookup {
            caps: e.caps.clone(),
            cached: false,
        }
    }

    /// Forget freshness so the next lookup asks Nextcloud again; at most once
    /// per [`MIN_INVALIDATE_INTERVAL`]. Returns whether it was invalidated.
    pub fn invalidate(&self, key: &str, now: Instant) -> bool {
        let mut entries = self.entries.lock();
        let Some(e) = entries.get_mut(key) else {
            return false;
        };
        if e.next_invalidate.is_some_and(|t| t > now) {
            return false;
        }
        e.next_invalidate = Some(now + MIN_INVALIDATE_INTERVAL);
        e.next_update = None;
        true
    }
}

/// The capabilities URL of the Nextcloud a backend URL belongs to.
pub fn capabilities_url(u: &Url) -> Url {
    let mut cap = u.clone();
    let path = cap.path().to_owned();
    let new_path = match path.find("/ocs/v2.php/") {
        Some(pos) => format!("{}/ocs/v2.php/cloud/capabilities", &path[..pos]),
        None => {
            let base = if path.ends_with('/') {
                path.clone()
            } else {
                format!("{path}/")
            };
            format!("{base}ocs/v2.php/cloud/capabilities")
        }
    };
    cap.set_path(&new_path);
    cap.set_query(None);
    cap.set_fragment(None);
    cap
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn caps(v: Value) -> SpreedCapabilities {
        match v {
            Value::Object(m) => SpreedCapabilities(m),
            _ => SpreedCapabilities::default(),
        }
    }

    #[test]
    fn cache_control_lifetime_has_a_minimum() {
        assert_eq!(CacheControl::parse("").lifetime(), MIN_CACHE);
        assert_eq!(CacheControl::parse("no-cache").lifetime(), MIN_CACHE);
        assert_eq!(CacheControl::parse("max-age=10").lifetime(), MIN_CACHE);
        assert_eq!(
            CacheControl::parse("public, max-age=3600").lifetime(),
            Duration::from_secs(3600)
        );
        assert_eq!(
            CacheControl::parse("max-age=3600, no-cache").lifetime(),
            MIN_CACHE
        );
        assert!(CacheControl::parse("must-revalidate").must_revalidate);
        assert_eq!(
            CacheControl::parse("max-age=\"120\"").max_age,
            Some(Duration::from_secs(120))
        );
    }

    #[test]
    fn entries_expire_and_revalidate() {
        let c = CapabilitiesCache::default();
        let t0 = Instant::now();
        assert!(c.fresh("k", t0).is_none());
        let got = c.store(
            "k",
            t0,
            FetchResult::Fresh(Some(caps(json!({"features": ["signaling-v3"]})))),
            Some("\"e1\"".into()),
            CacheControl::parse("max-age=120"),
        );
        assert!(got
            .caps
            .as_ref()
            .is_some_and(|c| c.has_feature("signaling-v3")));
        assert!(!got.cached);
        assert!(c
            .fresh("k", t0 + Duration::from_secs(119))
            .is_some_and(|l| l.cached));
        assert!(c.fresh("k", t0 + Duration::from_secs(120)).is_none());
        assert_eq!(c.etag("k").as_deref(), Some("\"e1\""));
        // 304 keeps the content and extends it.
        let t1 = t0 + Duration::from_secs(121);
        let got = c.store(
            "k",
            t1,
            FetchResult::NotModified,
            None,
            CacheControl::default(),
        );
        assert!(got.caps.is_some());
        assert!(c.fresh("k", t1 + Duration::from_secs(59)).is_some());
        // A failure keeps the old answer unless it must be revalidated.
        let t2 = t1 + MIN_CACHE;
        assert!(c
            .store("k", t2, FetchResult::Failed, None, CacheControl::default())
            .caps
            .is_some());
        let t3 = t2 + Duration::from_secs(2);
        assert!(c
            .store(
                "k",
                t3,
                FetchResult::Failed,
                None,
                CacheControl::parse("must-revalidate")
            )
            .caps
            .is_none());
    }

    #[test]
    fn invalidation_is_rate_limited() {
        let c = CapabilitiesCache::default();
        let t0 = Instant::now();
        assert!(!c.invalidate("k", t0), "nothing cached yet");
        c.store(
            "k",
            t0,
            FetchResult::Fresh(None),
            None,
            CacheControl::default(),
        );
        assert!(c.invalidate("k", t0));
        assert!(c.fresh("k", t0).is_none());
        c.store(
            "k",
            t0,
            FetchResult::Fresh(None),
            None,
            CacheControl::default(),
        );
        assert!(!c.invalidate("k", t0 + Duration::from_secs(30)));
        assert!(c.fresh("k", t0 + Duration::from_secs(30)).is_some());
        assert!(c.invalidate("k", t0 + MIN_INVALIDATE_INTERVAL));
    }

    #[test]
    fn config_values() {
        let c = caps(json!({"config": {"signaling": {
            "hello-v2-token-key": "KEY", "session-ping-limit": 50}}}));
        assert_eq!(
            c.string_config(CONFIG_GROUP_SIGNALING, CONFIG_HELLO_V2_TOKEN_KEY)
                .as_deref(),
            Some("KEY")
        );
        assert_eq!(
            c.int_config(CONFIG_GROUP_SIGNALING, CONFIG_SESSION_PING_LIMIT),
            Some(50)
        );
        assert_eq!(c.int_config(CONFIG_GROUP_SIGNALING, "nope"), None);
    }

    #[test]
    fn capabilities_url_from_backend_urls() {
        let u = Url::parse(
            "https://cloud.example/nc/ocs/v2.php/apps/spreed/api/v1/signaling/backend?x=1",
        )
        .unwrap();
        assert_eq!(
            capabilities_url(&u).as_str(),
            "https://cloud.example/nc/ocs/v2.php/cloud/capabilities"
        );
        let u = Url::parse("https://cloud.example/nc").unwrap();
        assert_eq!(
            capabilities_url(&u).as_str(),
            "https://cloud.example/nc/ocs/v2.php/cloud/capabilities"
        );
    }
}
