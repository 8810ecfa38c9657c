//! RSA token keys of MCU proxies (a signaling server signs its proxy tokens
//! with a private key; each proxy holds the public key under the server's
//! token id): reading them in either PEM form (PKCS#1 `RSA ... KEY` or
//! PKCS#8 / SPKI `... KEY`), their size, whether a private key matches a
//! public one, and generating a new pair for `proxy genkey`.
//!
//! Signing and verifying tokens is jsonwebtoken's job; this is for `check`
//! and key management.

use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{
    DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey, LineEnding,
};
use rsa::traits::PublicKeyParts;
use rsa::{RsaPrivateKey, RsaPublicKey};
use std::path::Path;

/// Keys smaller than this are refused by current guidance (and a warning
/// in `check`).
pub const MIN_BITS: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not an RSA {kind} key in PEM form (PKCS#1 or PKCS#8): {reason}")]
    Format {
        path: String,
        kind: &'static str,
        reason: String,
    },
    #[error("cannot generate a key: {0}")]
    Generate(String),
}

/// Which PEM encoding a key file uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Pkcs1,
    Pkcs8,
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoding::Pkcs1 => "PKCS#1",
            Encoding::Pkcs8 => "PKCS#8",
        })
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// A public key from PEM text.
pub fn parse_public(pem: &str) -> Result<(RsaPublicKey, Encoding), String> {
    match RsaPublicKey::from_public_key_pem(pem) {
        Ok(k) => Ok((k, Encoding::Pkcs8)),
        Err(e8) => RsaPublicKey::from_pkcs1_pem(pem)
            .map(|k| (k, Encoding::Pkcs1))
            .map_err(|e1| format!("{e8}; {e1}")),
    }
}

/// A private key from PEM text.
pub fn parse_private(pem: &str) -> Result<(RsaPrivateKey, Encoding), String> {
    match RsaPrivateKey::from_pkcs8_pem(pem) {
        Ok(k) => Ok((k, Encoding::Pkcs8)),
        Err(e8) => RsaPrivateKey::from_pkcs1_pem(pem)
            .map(|k| (k, Encoding::Pkcs1))
            .map_err(|e1| format!("{e8}; {e1}")),
    }
}

pub fn load_public(path: &Path) -> Result<(RsaPublicKey, Encoding), KeyError> {
    parse_public(&read(path)?).map_err(|reason| KeyError::Format {
        path: path.display().to_string(),
        kind: "public",
        reason,
    })
}

pub fn load_private(path: &Path) -> Result<(RsaPrivateKey, Encoding), KeyError> {
    parse_private(&read(path)?).map_err(|reason| KeyError::Format {
        path: path.display().to_string(),
        kind: "private",
        reason,
    })
}

/// Size of the modulus in bits.
pub fn bits(key: &RsaPublicKey) -> usize {
    key.n().bits()
}

/// Whether `private` is the other half of `public`.
pub fn matches(private: &RsaPrivateKey, public: &RsaPublicKey) -> bool {
    &private.to_public_key() == public
}

/// A new key pair as PEM text: (private key PKCS#8, public key SPKI).
pub fn generate(bits: usize) -> Result<(String, String), KeyError> {
    let mut rng = rand::rngs::OsRng;
    let private =
        RsaPrivateKey::new(&mut rng, bits).map_err(|e| KeyError::Generate(e.to_string()))?;
    let private_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let public_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    Ok((private_pem.to_string(), public_pem))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs1::{EncodeRsaPrivateKey, EncodeRsaPublicKey};

    #[test]
    fn generated_pair_reads_back_in_both_encodings() {
        // 1024 bits keeps the test fast; sizes are not what is tested here.
        let (private_pem, public_pem) = generate(1024).expect("generate");
        let (private, enc) = parse_private(&private_pem).expect("private");
        assert_eq!(enc, Encoding::Pkcs8);
        let (public, enc) = parse_public(&public_pem).expect("public");
        assert_eq!(enc, Encoding::Pkcs8);
        assert_eq!(bits(&public), 1024);
        assert!(matches(&private, &public));

        let pkcs1_private = private.to_pkcs1_pem(LineEnding::LF).expect("pkcs1");
        let pkcs1_public = public.to_pkcs1_pem(LineEnding::LF).expect("pkcs1");
        assert_eq!(
            parse_private(&pkcs1_private).expect("pkcs1").1,
            Encoding::Pkcs1
        );
        assert_eq!(
            parse_public(&pkcs1_public).expect("pkcs1").1,
            Encoding::Pkcs1
        );

        let (other, _) = generate(1024).expect("generate");
        let (other, _) = parse_private(&other).expect("other");
        assert!(!matches(&other, &public));
        assert!(parse_public("not a key").is_err());
        assert!(parse_private(&public_pem).is_err());
    }
}
