//! Hub settings read once from `server.conf` and validated into types.

use runtime::config::{ConfigError, Ini};
use std::time::Duration;

/// How long a disconnected session stays resumable unless `[sessions]
/// resumewindow` says otherwise.
pub const RESUME_WINDOW: Duration = Duration::from_secs(30);
/// Default `[nats] presenceinterval`.
pub const PRESENCE_INTERVAL: Duration = Duration::from_secs(5);
/// A new connection must say hello within this time.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(2);
/// An anonymous session must join a room within this time.
pub const ANONYMOUS_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval of the room ping to Nextcloud.
pub const ROOM_PING_INTERVAL: Duration = Duration::from_secs(10);
/// Messages waiting behind a full connection queue before the client is
/// considered too slow and disconnected (it can resume and get them).
pub const MAX_BACKLOG: usize = 1024;
/// Most messages kept for a disconnected session before it is given up.
pub const MAX_PENDING_MESSAGES: usize = 10_000;

#[derive(Clone, Debug)]
pub struct HubSettings {
    pub version: String,
    pub hash_key: Vec<u8>,
    pub block_key: Vec<u8>,
    pub internal_secret: Vec<u8>,
    pub backend_timeout: Duration,
    pub connections_per_host: usize,
    pub skip_verify: bool,
    pub allow_subscribe_any: bool,
    /// How long a disconnected session waits for its client to resume.
    pub resume_window: Duration,
    /// Clustered (`[nats] url` names a server): how often each node tells
    /// the others its members of each room (`[nats] presenceinterval`,
    /// ours); a node silent for three intervals counts as gone.
    pub presence_interval: Option<Duration>,
}

impl HubSettings {
    pub fn from_config(ini: &Ini, version: &str) -> Result<HubSettings, ConfigError> {
        let hash_key = ini.require("sessions", "hashkey")?.as_bytes().to_vec();
        if hash_key.len() != 32 && hash_key.len() != 64 {
            tracing::warn!(
                len = hash_key.len(),
                "[sessions] hashkey should be 32 or 64 bytes long"
            );
        }
        let block_key = ini.get_string("sessions", "blockkey", "").into_bytes();
        if ![0, 16, 24, 32].contains(&block_key.len()) {
            return Err(ConfigError::Invalid {
                section: "sessions".into(),
                key: "blockkey".into(),
                value: "***".into(),
                reason: format!("must be 16, 24 or 32 bytes long, not {}", block_key.len()),
            });
        }
        let internal_secret = ini.get_string("clients", "internalsecret", "").into_bytes();
        if internal_secret.is_empty() {
            tracing::warn!("no [clients] internalsecret set, internal clients are refused");
        }
        let timeout = ini.get_int("backend", "timeout", 10)?;
        let per_host = ini.get_int("backend", "connectionsperhost", 8)?;
        let resume = ini.get_int("sessions", "resumewindow", RESUME_WINDOW.as_secs() as i64)?;
        if !(1..=3600).contains(&resume) {
            return Err(ConfigError::Invalid {
                section: "sessions".into(),
                key: "resumewindow".into(),
                value: resume.to_string(),
                reason: "must be between 1 and 3600 seconds".into(),
            });
        }
        Ok(HubSettings {
            version: version.to_owned(),
            hash_key,
            block_key,
            internal_secret,
            backend_timeout: Duration::from_secs(if timeout <= 0 { 10 } else { timeout as u64 }),
            connections_per_host: if per_host <= 0 { 8 } else { per_host as usize },
            skip_verify: ini.get_bool("backend", "skipverify", false)?,
            allow_subscribe_any: ini.get_bool("app", "allowsubscribeany", false)?,
            resume_window: Duration::from_secs(resume as u64),
            presence_interval: if crate::bus::nats::is_loopback_url(
                &ini.get_string("nats", "url", ""),
            ) {
                None
            } else {
                let secs = ini.get_int(
                    "nats",
                    "presenceinterval",
                    PRESENCE_INTERVAL.as_secs() as i64,
                )?;
                Some(Duration::from_secs(secs.clamp(1, 60) as u64))
            },
        })
    }
}
