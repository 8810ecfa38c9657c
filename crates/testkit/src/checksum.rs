//! The shared-secret checksum both directions of the backend API use.
//!
//! Written independently of the server's implementation on purpose: if the
//! server computed it wrong, tests using this copy catch it.

use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Header carrying the random string that is mixed into the checksum.
pub const HEADER_RANDOM: &str = "Spreed-Signaling-Random";
/// Header carrying `hex(HMAC-SHA256(secret, random ++ body))`.
pub const HEADER_CHECKSUM: &str = "Spreed-Signaling-Checksum";
/// Header with the Nextcloud base URL on backend → signaling requests.
pub const HEADER_BACKEND: &str = "Spreed-Signaling-Backend";

/// `hex(HMAC-SHA256(secret, random ++ body))`, lower case.
pub fn checksum(secret: impl AsRef<[u8]>, random: &str, body: impl AsRef<[u8]>) -> String {
    // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_ref())
        .expect("HMAC-SHA256 accepts keys of any length");
    mac.update(random.as_bytes());
    mac.update(body.as_ref());
    hex::encode(mac.finalize().into_bytes())
}

/// The token an internal client sends in its hello: `hex(HMAC-SHA256(secret, random))`.
pub fn internal_token(internal_secret: impl AsRef<[u8]>, random: &str) -> String {
    checksum(internal_secret, random, b"")
}

/// `n` random lower-case hex characters (the server side uses 64 for
/// `Spreed-Signaling-Random`).
pub fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n.div_ceil(2)];
    rand::thread_rng().fill_bytes(&mut bytes);
    let mut s = hex::encode(bytes);
    s.truncate(n);
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_matches_python_hmac() {
        // python3 -c "import hmac,hashlib;print(hmac.new(b'the-secret',
        //   b'0123456789abcdef'+b'{\"type\":\"auth\"}', hashlib.sha256).hexdigest())"
        assert_eq!(
            checksum("the-secret", "0123456789abcdef", br#"{"type":"auth"}"#),
            "e2eca6b9096862018978e9b22e1adc88d2ccf2249f2e0180416ef362412131b6"
        );
        // Empty key and message (RFC 4231 style sanity check, also from python3).
        assert_eq!(
            checksum("", "", ""),
            "b613679a0814d9ec772f95d778c35fc5ff1697c493715653c6c712144292c5ad"
        );
    }

    #[test]
    fn random_hex_has_requested_length() {
        for n in [0, 1, 31, 32, 64] {
            let s = random_hex(n);
            assert_eq!(s.len(), n);
            assert!(s
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        }
        assert_ne!(random_hex(64), random_hex(64));
    }
}
