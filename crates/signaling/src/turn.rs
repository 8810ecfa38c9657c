//! TURN credentials for Janus (`GET /turn/credentials`), following the TURN
//! REST API draft: time-limited usernames signed with the TURN server's
//! shared secret.

use base64::Engine;
use hmac::{Hmac, Mac};
use runtime::config::{split_list, ConfigError, Ini};
use sha1::Sha1;

/// Lifetime of issued credentials.
pub const TTL_SECONDS: i64 = 86400;

#[derive(Clone, Debug, Default)]
pub struct TurnConfig {
    pub api_key: String,
    pub secret: String,
    pub servers: Vec<String>,
}

impl TurnConfig {
    pub fn from_config(ini: &Ini) -> Result<TurnConfig, ConfigError> {
        let servers = split_list(&ini.get_string("turn", "servers", ""), ',');
        let api_key = ini.get_string("turn", "apikey", "");
        let secret = ini.get_string("turn", "secret", "");
        if !servers.is_empty() {
            if api_key.is_empty() {
                return Err(ConfigError::Missing {
                    section: "turn".into(),
                    key: "apikey".into(),
                });
            }
            if secret.is_empty() {
                return Err(ConfigError::Missing {
                    section: "turn".into(),
                    key: "secret".into(),
                });
            }
        }
        Ok(TurnConfig {
            api_key,
            secret,
            servers,
        })
    }
}

/// The outcome of a credentials request: HTTP status and body.
pub fn credentials(cfg: &TurnConfig, query: &str, now_unix: i64) -> (u16, String) {
    let mut service = String::new();
    let mut username = String::new();
    let mut key = String::new();
    let mut api = String::new();
    for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*k {
            "service" if service.is_empty() => service = v.into_owned(),
            "username" if username.is_empty() => username = v.into_owned(),
            "key" if key.is_empty() => key = v.into_owned(),
            "api" if api.is_empty() => api = v.into_owned(),
            _ => {}
        }
    }
    if key.is_empty() {
        key = api;
    }
    if service != "turn" || key.is_empty() {
        return (400, "Invalid service and/or key sent.\n".into());
    }
    if key != cfg.api_key {
        return (403, "Not allowed to access this service.\n".into());
    }
    if cfg.servers.is_empty() {
        return (404, "No TURN servers available.\n".into());
    }
    if username.is_empty() {
        use rand::RngCore;
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        username = hex::encode(b);
    }
    let user = format!("{}:{username}", now_unix + TTL_SECONDS);
    // HMAC accepts keys of any length.
    let mut mac =
        <Hmac<Sha1> as Mac>::new_from_slice(cfg.secret.as_bytes()).expect("any key length");
    mac.update(user.as_bytes());
    let password = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let body = serde_json::json!({"username": user, "password": password, "ttl": TTL_SECONDS, "uris": cfg.servers});
    (200, format!("{body}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TurnConfig {
        TurnConfig {
            api_key: "k".into(),
            secret: "s".into(),
            servers: vec!["turn:a:3478?transport=udp".into()],
        }
    }

    #[test]
    fn turn_01_credentials_follow_the_rest_draft() {
        let (status, body) = credentials(&cfg(), "service=turn&username=alice&key=k", 1000);
        assert_eq!(status, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["username"], "87400:alice");
        assert_eq!(v["ttl"], 86400);
        // python3: base64(hmac.new(b"s", b"87400:alice", hashlib.sha1).digest())
        assert_eq!(v["password"], "cdRZlZpKjcx8BI2D+e3e58nv0co=");
        assert_eq!(v["uris"][0], "turn:a:3478?transport=udp");
        let (_, body) = credentials(&cfg(), "service=turn&api=k", 0);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["username"].as_str().unwrap().len(), "86400:".len() + 32);
    }

    #[test]
    fn turn_02_errors() {
        assert_eq!(credentials(&cfg(), "service=stun&key=k", 0).0, 400);
        assert_eq!(credentials(&cfg(), "service=turn", 0).0, 400);
        assert_eq!(credentials(&cfg(), "service=turn&key=x", 0).0, 403);
        let none = TurnConfig {
            servers: vec![],
            ..cfg()
        };
        assert_eq!(credentials(&none, "service=turn&key=k", 0).0, 404);
        let ini = Ini::parse("[turn]\nservers = turn:x\n").unwrap();
        assert!(TurnConfig::from_config(&ini).is_err());
    }
}
