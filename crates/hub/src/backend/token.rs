//! Verification of hello v2 tokens (upstream 1.0.0, #251): a JWT signed by
//! Nextcloud with the private half of `config.signaling.hello-v2-token-key`
//! from its capabilities. It replaces the `auth` request to Nextcloud, so a
//! connection costs Nextcloud nothing.
//!
//! Pure functions of (token, key text, now), so every rejection is unit
//! tested; the hub maps [`TokenError`] to the wire error codes.

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use std::sync::Arc;

/// Clock difference tolerated between Nextcloud and us (upstream: one minute).
pub const LEEWAY_SECS: i64 = 60;

/// Only public-key algorithms: an HMAC token would need a shared secret
/// Nextcloud does not publish, and accepting one would let anyone who knows
/// the public key forge tokens.
const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Malformed, wrong algorithm, wrong key or bad signature: `invalid_token`.
    #[error("invalid token: {0}")]
    Invalid(String),
    /// `token_expired`.
    #[error("token expired")]
    Expired,
    /// `token_not_valid_yet` (also a missing `iat`, like upstream).
    #[error("token not valid yet")]
    NotValidYet,
}

/// What a valid token says about the user.
#[derive(Debug, Default)]
pub struct TokenClaims {
    pub issuer: String,
    pub subject: String,
    pub userdata: Option<Arc<proto::RawValue>>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    exp: Option<f64>,
    #[serde(default)]
    nbf: Option<f64>,
    #[serde(default)]
    userdata: Option<Box<proto::RawValue>>,
}

/// The algorithm named in the token header, if it is one we accept.
pub fn token_algorithm(token: &str) -> Result<Algorithm, TokenError> {
    let header =
        jsonwebtoken::decode_header(token).map_err(|e| TokenError::Invalid(e.to_string()))?;
    if !ALLOWED.contains(&header.alg) {
        return Err(TokenError::Invalid(format!(
            "unexpected signing method {:?}",
            header.alg
        )));
    }
    Ok(header.alg)
}

/// Parse the key Nextcloud publishes for `alg`: PEM (`PUBLIC KEY`, or
/// `RSA PUBLIC KEY`) or, for Ed25519, the bare base64 key Nextcloud sends.
pub fn decoding_key(alg: Algorithm, key: &str) -> Result<DecodingKey, TokenError> {
    let bad = |e: jsonwebtoken::errors::Error| TokenError::Invalid(format!("token key: {e}"));
    let pem = key.trim_start().starts_with("-----BEGIN ");
    match alg {
        Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => {
            DecodingKey::from_rsa_pem(key.as_bytes()).map_err(bad)
        }
        Algorithm::ES256 | Algorithm::ES384 => {
            DecodingKey::from_ec_pem(key.as_bytes()).map_err(bad)
        }
        Algorithm::EdDSA if pem => DecodingKey::from_ed_pem(key.as_bytes()).map_err(bad),
        Algorithm::EdDSA => {
            use base64::Engine;
            let raw = base64::engine::general_purpose::STANDARD
                .decode(key.trim())
                .map_err(|e| TokenError::Invalid(format!("token key: {e}")))?;
            if raw.len() != 32 {
                return Err(TokenError::Invalid("token key: not an Ed25519 key".into()));
            }
            Ok(DecodingKey::from_ed_der(&raw))
        }
        other => Err(TokenError::Invalid(format!(
            "unexpected signing method {other:?}"
        ))),
    }
}

/// Verify `token` with `key` at `now` (Unix seconds).
pub fn verify(token: &str, key: &str, now: i64) -> Result<TokenClaims, TokenError> {
    let alg = token_algorithm(token)?;
    let key = decoding_key(alg, key)?;
    let mut validation = Validation::new(alg);
    // Times are checked below, with upstream's error codes.
    validation.required_spec_claims.clear();
    validation.validate_exp = false;
    validation.validate_nbf = false;
    validation.validate_aud = false;
    let data = jsonwebtoken::decode::<Claims>(token, &key, &validation)
        .map_err(|e| TokenError::Invalid(e.to_string()))?;
    let c = data.claims;
    let iat = c.iat.map(|t| t as i64);
    let exp = c.exp.map(|t| t as i64);
    if let (Some(iat), Some(exp)) = (iat, exp) {
        if exp < iat {
            return Err(TokenError::Expired);
        }
    }
    let Some(iat) = iat else {
        return Err(TokenError::NotValidYet);
    };
    if iat > now + LEEWAY_SECS || c.nbf.is_some_and(|nbf| nbf as i64 > now + LEEWAY_SECS) {
        return Err(TokenError::NotValidYet);
    }
    match exp {
        Some(exp) if exp >= now - LEEWAY_SECS => {}
        _ => return Err(TokenError::Expired),
    }
    Ok(TokenClaims {
        issuer: c.iss.unwrap_or_default(),
        subject: c.sub.unwrap_or_default(),
        userdata: c
            .userdata
            .filter(|u| u.get() != "null")
            .map(Arc::<proto::RawValue>::from),
    })
}
