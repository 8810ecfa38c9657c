//! Who may use the proxy: signaling servers present a JWT signed with their
//! RSA key (`iss` = token id, `iat` = now); the proxy knows the public keys
//! (`[tokens] <id> = <public key file>`). Reloaded on SIGHUP.

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use proto::client::Error;
use runtime::config::Ini;
use std::collections::HashMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::{info, warn};

/// Tokens issued longer ago than this are expired (upstream `maxTokenAge`).
pub const MAX_TOKEN_AGE: Duration = Duration::from_secs(5 * 60);

/// Why a hello token was refused: the wire error and the metric label
/// (`signaling_proxy_token_errors_total{reason}`, upstream's labels).
#[derive(Debug, PartialEq, Eq)]
pub struct TokenError {
    pub code: &'static str,
    pub reason: &'static str,
}

impl TokenError {
    pub fn auth(reason: &'static str) -> TokenError {
        TokenError {
            code: "auth_failed",
            reason,
        }
    }

    pub fn to_error(&self) -> Error {
        match self.code {
            "token_expired" => Error::new("token_expired", "The token is expired."),
            "token_not_valid_yet" => {
                Error::new("token_not_valid_yet", "The token is not valid yet.")
            }
            _ => Error::new("auth_failed", "The token could not be authenticated."),
        }
    }
}

/// Token id -> public key: from `[tokens]` (static) or read from etcd at
/// each hello (`tokentype = etcd`, keys under `[tokens] keyformat`).
#[derive(Default)]
pub struct Tokens {
    keys: HashMap<String, DecodingKey>,
    etcd: Option<(runtime::etcd::EtcdClient, Vec<String>)>,
}

#[derive(serde::Deserialize)]
struct Claims {
    #[serde(default)]
    iss: String,
    #[serde(default)]
    iat: Option<i64>,
    #[serde(default)]
    sub: String,
}

impl Tokens {
    /// `[tokens]` for `tokentype = static`. With `strict`, a key that cannot
    /// be read fails the whole load (start-up); otherwise it is skipped with
    /// a warning (reload keeps the proxy running).
    pub fn load(ini: &Ini, strict: bool) -> Result<Tokens, String> {
        match ini.get_string("app", "tokentype", "static").as_str() {
            "static" => {}
            "etcd" => {
                let client =
                    runtime::etcd::EtcdClient::from_config(ini, "tokens").map_err(|e| match e {
                        runtime::etcd::EtcdError::Config { .. } => format!("[tokens] {e}"),
                        e => format!("[tokens] endpoints: {e}"),
                    })?;
                let formats: Vec<String> = ini
                    .get_string("tokens", "keyformat", "/%s")
                    .split(',')
                    .map(|f| f.trim().to_owned())
                    .filter(|f| !f.is_empty())
                    .collect();
                info!(endpoints = ?client.endpoints(), ?formats, "token keys come from etcd");
                return Ok(Tokens {
                    keys: HashMap::new(),
                    etcd: Some((client, formats)),
                });
            }
            other => return Err(format!("unsupported token type {other:?} (static or etcd)")),
        }
        let mut keys = HashMap::new();
        for (id, file) in ini.keys("tokens") {
            let loaded = std::fs::read(file)
                .map_err(|e| format!("cannot read public key {file:?} of token {id:?}: {e}"))
                .and_then(|pem| {
                    DecodingKey::from_rsa_pem(&pem)
                        .map_err(|e| format!("no RSA public key in {file:?} (token {id:?}): {e}"))
                });
            match loaded {
                Ok(key) => {
                    keys.insert(id.to_owned(), key);
                }
                Err(e) if strict => return Err(e),
                Err(e) => warn!("{e}, ignoring"),
            }
        }
        let mut ids: Vec<&String> = keys.keys().collect();
        ids.sort();
        if ids.is_empty() {
            warn!("no token keys loaded: no signaling server can connect");
        } else {
            info!(tokens = ?ids, "token keys loaded");
        }
        Ok(Tokens { keys, etcd: None })
    }

    /// The public key of token `id`.
    async fn key(&self, id: &str) -> Option<DecodingKey> {
        let Some((client, formats)) = &self.etcd else {
            return self.keys.get(id).cloned();
        };
        for format in formats {
            let key = format.replace("%s", id);
            match client.get(&key).await {
                Ok(Some(pem)) => match DecodingKey::from_rsa_pem(&pem) {
                    Ok(k) => return Some(k),
                    Err(e) => warn!(%key, error = %e, "no RSA public key in etcd value"),
                },
                Ok(None) => {}
                Err(e) => warn!(%key, error = %e, "cannot read token key from etcd"),
            }
        }
        None
    }

    pub fn ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.keys.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// Checks a hello token; returns the token id (the issuer).
    pub async fn verify(&self, token: &str) -> Result<String, TokenError> {
        self.verify_claims(token).await.map(|(iss, _)| iss)
    }

    /// Checks a token; returns its issuer and subject (remote streams: the
    /// signaling server names the publisher a subscriber may use).
    pub async fn verify_claims(&self, token: &str) -> Result<(String, String), TokenError> {
        let header =
            jsonwebtoken::decode_header(token).map_err(|_| TokenError::auth("auth-failed"))?;
        let alg = header.alg;
        if !matches!(alg, Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512) {
            return Err(TokenError::auth("unsupported-signing-method"));
        }
        // The issuer picks the key, so it is read before the signature is
        // checked; nothing else of the claims is trusted before that.
        let claims = token
            .split('.')
            .nth(1)
            .and_then(|p| {
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(p)
                    .ok()
            })
            .and_then(|b| serde_json::from_slice::<Claims>(&b).ok())
            .ok_or_else(|| TokenError::auth("unsupported-claims"))?;
        let key = self
            .key(&claims.iss)
            .await
            .ok_or_else(|| TokenError::auth("unsupported-issuer"))?;
        let mut validation = Validation::new(alg);
        validation.leeway = 0;
        validation.required_spec_claims.clear();
        validation.validate_exp = true;
        validation.validate_nbf = true;
        jsonwebtoken::decode::<serde_json::Value>(token, &key, &validation)
            .map_err(|_| TokenError::auth("auth-failed"))?;
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let iat = claims.iat.unwrap_or(0);
        if iat > now {
            return Err(TokenError {
                code: "token_not_valid_yet",
                reason: "not-valid-yet",
            });
        }
        if iat < now - MAX_TOKEN_AGE.as_secs() as i64 {
            return Err(TokenError {
                code: "token_expired",
                reason: "expired",
            });
        }
        Ok((claims.iss, claims.sub))
    }
}
