//! The Nextcloud instances this server accepts (`[backend]` and one section
//! per backend id), URL matching, per-backend session limits, and reload.

use parking_lot::{Mutex, RwLock};
use runtime::config::{split_list, ConfigError, Ini};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use tracing::{info, warn};
use url::Url;

/// One configured Nextcloud instance.
#[derive(Debug)]
pub struct Backend {
    pub id: String,
    /// Base URL with a trailing slash (empty for the compat backend).
    pub url: String,
    pub secret: Vec<u8>,
    /// Legacy single-backend mode (`allowall` / `allowed`): subjects carry no suffix.
    pub compat: bool,
    pub allow_http: bool,
    pub max_stream_bitrate: i64,
    pub max_screen_bitrate: i64,
    pub session_limit: u64,
    sessions: Mutex<HashSet<Arc<str>>>,
}

/// Error sent to a client when its backend is full.
pub fn session_limit_exceeded() -> proto::client::Error {
    proto::client::Error::new(
        "session_limit_exceeded",
        "Too many sessions connected for this backend.",
    )
}

impl Backend {
    fn new(id: &str, url: String, secret: &str, compat: bool, allow_http: bool) -> Backend {
        Backend {
            id: id.to_owned(),
            url,
            secret: secret.as_bytes().to_vec(),
            compat,
            allow_http,
            max_stream_bitrate: 0,
            max_screen_bitrate: 0,
            session_limit: 0,
            sessions: Mutex::new(HashSet::new()),
        }
    }

    fn same_settings(&self, other: &Backend) -> bool {
        self.id == other.id
            && self.url == other.url
            && self.secret == other.secret
            && self.allow_http == other.allow_http
            && self.max_stream_bitrate == other.max_stream_bitrate
            && self.max_screen_bitrate == other.max_screen_bitrate
            && self.session_limit == other.session_limit
    }

    pub fn is_url_allowed(&self, u: &Url) -> bool {
        match u.scheme() {
            "https" => true,
            "http" => self.allow_http,
            _ => false,
        }
    }

    /// Count a `client` session against the limit (`elsewhere`: sessions
    /// of this backend on the other servers of a cluster); internal and
    /// virtual sessions are never counted.
    pub fn add_session(
        &self,
        public_id: &Arc<str>,
        elsewhere: u64,
    ) -> Result<(), proto::client::Error> {
        if self.session_limit == 0 {
            return Ok(());
        }
        let mut sessions = self.sessions.lock();
        if sessions.len() as u64 + elsewhere >= self.session_limit {
            return Err(session_limit_exceeded());
        }
        sessions.insert(public_id.clone());
        Ok(())
    }

    /// Sessions counted against the limit on this server.
    pub fn counted_sessions(&self) -> u64 {
        self.sessions.lock().len() as u64
    }

    pub fn remove_session(&self, public_id: &str) {
        self.sessions.lock().remove(public_id);
    }

    pub fn session_count(&self) -> usize {
        self.sessions.lock().len()
    }

    /// Suffix for user/room subjects (none in compat mode).
    pub fn subject_suffix(&self) -> Option<&str> {
        if self.compat {
            None
        } else {
            Some(&self.id)
        }
    }
}

/// Strip `:80` from http and `:443` from https URLs (Go's url keeps them,
/// Talk may send either form).
pub fn normalize_url(u: &mut Url) {
    // `url` already drops default ports when parsing; nothing left to do, but
    // keep one place that states the rule.
    let _ = u;
}

/// Host key used to group backends: host plus explicit non-default port.
fn host_key(u: &Url) -> String {
    let host = u.host_str().unwrap_or("").to_ascii_lowercase();
    match u.port() {
        Some(p) => format!("{host}:{p}"),
        None => host,
    }
}

#[derive(Default)]
struct Inner {
    hosts: BTreeMap<String, Vec<Arc<Backend>>>,
}

/// All configured backends; lookups are by the URL a client or Nextcloud presents.
pub struct Backends {
    allow_all: bool,
    compat: Option<Arc<Backend>>,
    inner: RwLock<Inner>,
}

impl std::fmt::Debug for Backends {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backends")
            .field("allow_all", &self.allow_all)
            .finish()
    }
}

impl Backends {
    pub fn from_config(ini: &Ini) -> Result<Backends, ConfigError> {
        let allow_all = ini.get_bool("backend", "allowall", false)?;
        let allow_http = ini.get_bool("backend", "allowhttp", false)?;
        let common_secret = ini.get_string("backend", "secret", "");
        let session_limit = ini
            .get_int("backend", "sessionlimit", 0)
            .unwrap_or(0)
            .max(0) as u64;
        let mut inner = Inner::default();
        let mut compat = None;
        if allow_all {
            warn!("all backend hostnames are allowed ([backend] allowall), only use this for development");
            let mut b = Backend::new("compat", String::new(), &common_secret, true, allow_http);
            b.session_limit = session_limit;
            compat = Some(Arc::new(b));
        } else if let Some(ids) = ini
            .get("backend", "backends")
            .filter(|s| !s.trim().is_empty())
        {
            inner.hosts = configured_hosts(ids, ini);
            for list in inner.hosts.values() {
                for b in list {
                    info!(backend = %b.id, url = %b.url, "backend added");
                }
            }
        } else if let Some(allowed) = ini
            .get("backend", "allowed")
            .filter(|s| !s.trim().is_empty())
        {
            let mut hosts = Vec::new();
            for mut h in split_list(allowed, ',') {
                if let Some(idx) = h.find('/') {
                    warn!(host = %h, "removing path from allowed hostname, check your configuration");
                    h.truncate(idx);
                }
                if !h.is_empty() {
                    hosts.push(h.to_ascii_lowercase());
                }
            }
            if hosts.is_empty() {
                warn!("no backend hostnames are allowed, check your configuration");
            } else {
                warn!("[backend] allowed is deprecated, migrate to [backend] backends");
                let mut b = Backend::new("compat", String::new(), &common_secret, true, allow_http);
                b.session_limit = session_limit;
                let b = Arc::new(b);
                for h in hosts {
                    inner.hosts.insert(h, vec![b.clone()]);
                }
                compat = Some(b);
            }
        }
        if compat.is_none() && inner.hosts.is_empty() {
            warn!("no backends configured, clients will not be able to connect");
        }
        Ok(Backends {
            allow_all,
            compat,
            inner: RwLock::new(inner),
        })
    }

    pub fn compat(&self) -> Option<&Arc<Backend>> {
        self.compat.as_ref()
    }

    /// The backend serving `u`, if any.
    pub fn get(&self, u: &Url) -> Option<Arc<Backend>> {
        let key = host_key(u);
        let inner = self.inner.read();
        let Some(entries) = inner.hosts.get(&key) else {
            return if self.allow_all {
                self.compat.clone()
            } else {
                None
            };
        };
        let mut s = u.as_str().to_owned();
        if !s.ends_with('/') {
            s.push('/');
        }
        entries
            .iter()
            .filter(|b| b.is_url_allowed(u))
            .find(|b| b.url.is_empty() || s.starts_with(&b.url))
            .cloned()
    }

    /// Parse and match a URL string; `None` if unparsable or unknown.
    pub fn get_str(&self, u: &str) -> Option<Arc<Backend>> {
        Url::parse(u).ok().and_then(|u| self.get(&u))
    }

    /// The backend with this id (clustering: other servers name backends
    /// by id).
    pub fn by_id(&self, id: &str) -> Option<Arc<Backend>> {
        self.all().into_iter().find(|b| b.id == id)
    }

    pub fn all(&self) -> Vec<Arc<Backend>> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        if let Some(c) = &self.compat {
            seen.insert(c.id.clone());
            out.push(c.clone());
        }
        for list in self.inner.read().hosts.values() {
            for b in list {
                if seen.insert(format!("{}|{}", b.id, b.url)) {
                    out.push(b.clone());
                }
            }
        }
        out
    }

    /// Secret for a URL (checksums of requests we send).
    pub fn secret_for(&self, u: &Url) -> Option<Vec<u8>> {
        self.get(u).map(|b| b.secret.clone())
    }

    /// Re-read `[backend] backends` (SIGHUP). Unchanged backends keep their
    /// object (and session counts); changed ones are replaced.
    pub fn reload(&self, ini: &Ini) {
        if self.compat.is_some() {
            info!("legacy backend configuration active, backends are not reloaded");
            return;
        }
        let Some(ids) = ini
            .get("backend", "backends")
            .filter(|s| !s.trim().is_empty())
        else {
            return;
        };
        let configured = configured_hosts(ids, ini);
        let mut inner = self.inner.write();
        let old_hosts: Vec<String> = inner.hosts.keys().cloned().collect();
        for host in old_hosts {
            if !configured.contains_key(&host) {
                if let Some(list) = inner.hosts.remove(&host) {
                    for b in list {
                        info!(backend = %b.id, url = %b.url, "backend removed");
                    }
                }
            }
        }
        for (host, new_list) in configured {
            let old = inner.hosts.remove(&host).unwrap_or_default();
            let mut result = Vec::new();
            for nb in new_list {
                match old.iter().find(|o| o.id == nb.id) {
                    Some(o) if o.same_settings(&nb) => result.push(o.clone()),
                    Some(_) => {
                        info!(backend = %nb.id, url = %nb.url, "backend updated");
                        result.push(nb);
                    }
                    None => {
                        info!(backend = %nb.id, url = %nb.url, "backend added");
                        result.push(nb);
                    }
                }
            }
            for o in &old {
                if !result.iter().any(|n| n.id == o.id) {
                    info!(backend = %o.id, url = %o.url, "backend removed");
                }
            }
            inner.hosts.insert(host, result);
        }
    }
}

fn configured_hosts(ids: &str, ini: &Ini) -> BTreeMap<String, Vec<Arc<Backend>>> {
    let mut hosts: BTreeMap<String, Vec<Arc<Backend>>> = BTreeMap::new();
    let mut seen = HashSet::new();
    for id in split_list(ids, ',') {
        if !seen.insert(id.clone()) {
            continue;
        }
        let mut u = ini.get_string(&id, "url", "");
        let secret = ini.get_string(&id, "secret", "");
        if u.is_empty() || secret.is_empty() {
            warn!(backend = %id, "backend is missing url or secret, skipping");
            continue;
        }
        if !u.ends_with('/') {
            u.push('/');
        }
        let parsed = match Url::parse(&u) {
            Ok(p) => p,
            Err(e) => {
                warn!(backend = %id, url = %u, error = %e, "backend has an invalid url, skipping");
                continue;
            }
        };
        let int = |key: &str| ini.get_int(&id, key, 0).unwrap_or(0).max(0);
        let mut b = Backend::new(
            &id,
            parsed.as_str().to_owned(),
            &secret,
            false,
            parsed.scheme() == "http",
        );
        b.session_limit = int("sessionlimit") as u64;
        b.max_stream_bitrate = int("maxstreambitrate");
        b.max_screen_bitrate = int("maxscreenbitrate");
        if b.session_limit > 0 {
            info!(backend = %id, limit = b.session_limit, "backend session limit");
        }
        hosts
            .entry(host_key(&parsed))
            .or_default()
            .push(Arc::new(b));
    }
    hosts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backends(text: &str) -> Backends {
        Backends::from_config(&Ini::parse(text).expect("ini")).expect("backends")
    }

    #[test]
    fn matches_by_host_then_prefix() {
        let b = backends(
            "[backend]\nbackends = one, two, three\n[one]\nurl = https://cloud.example/\nsecret = s1\n\
             [two]\nurl = https://cloud.example/sub\nsecret = s2\n[three]\nurl = http://plain.example:8080\nsecret = s3\n",
        );
        let get = |u: &str| b.get_str(u).map(|b| b.id.clone());
        assert_eq!(
            get("https://cloud.example/sub/ocs/v2.php/x").as_deref(),
            Some("one")
        );
        assert_eq!(get("https://cloud.example:443/ocs").as_deref(), Some("one"));
        assert_eq!(
            get("http://cloud.example/ocs"),
            None,
            "http not allowed for https backend"
        );
        assert_eq!(get("http://plain.example:8080/x").as_deref(), Some("three"));
        assert_eq!(get("http://plain.example/x"), None);
        assert_eq!(get("https://other.example/"), None);
    }

    #[test]
    fn allowall_accepts_any_host() {
        let b = backends("[backend]\nallowall = true\nsecret = abc\n");
        let got = b.get_str("https://anything.example/").expect("compat");
        assert!(got.compat);
        assert_eq!(got.secret, b"abc");
    }

    #[test]
    fn session_limit_counts() {
        let b = backends(
            "[backend]\nbackends = one\n[one]\nurl = https://c/\nsecret = s\nsessionlimit = 1\n",
        );
        let be = b.get_str("https://c/").expect("backend");
        let a: Arc<str> = Arc::from("a");
        let c: Arc<str> = Arc::from("c");
        assert!(be.add_session(&a, 0).is_ok());
        assert_eq!(
            be.add_session(&c, 0).unwrap_err().code,
            "session_limit_exceeded"
        );
        be.remove_session("a");
        assert!(be.add_session(&c, 0).is_ok());
        // One session on another server of the cluster fills the limit too.
        be.remove_session("c");
        assert!(be.add_session(&a, 1).is_err());
        assert_eq!(be.counted_sessions(), 0);
    }

    #[test]
    fn reload_adds_updates_and_removes() {
        let b = backends("[backend]\nbackends = one\n[one]\nurl = https://c/\nsecret = s\n");
        let before = b.get_str("https://c/").expect("one");
        b.reload(&Ini::parse("[backend]\nbackends = one, two\n[one]\nurl = https://c/\nsecret = s\n[two]\nurl = https://d/\nsecret = t\n").expect("ini"));
        assert!(Arc::ptr_eq(&before, &b.get_str("https://c/").expect("one")));
        assert!(b.get_str("https://d/").is_some());
        b.reload(
            &Ini::parse("[backend]\nbackends = two\n[two]\nurl = https://d/\nsecret = u\n")
                .expect("ini"),
        );
        assert!(b.get_str("https://c/").is_none());
        assert_eq!(b.get_str("https://d/").expect("two").secret, b"u");
    }
}
