//! Hello v2 tokens as Nextcloud issues them: JWTs signed with RSA, ECDSA
//! (P-256) or Ed25519 keys, whose public halves the fake backend publishes in
//! its capabilities (`config.signaling.hello-v2-token-key`).
//!
//! The keys are fixed test keys generated once with `openssl genpkey`; they
//! protect nothing.

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::Value;

/// A key pair of one algorithm family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKey {
    Rsa,
    /// A second RSA key (for "wrong key" and key rotation tests).
    Rsa2,
    Ec,
    Ed25519,
}

impl TokenKey {
    /// The public key as Nextcloud publishes it (PEM, `PUBLIC KEY`).
    pub fn public_pem(self) -> &'static str {
        match self {
            TokenKey::Rsa => RSA_PUB,
            TokenKey::Rsa2 => RSA2_PUB,
            TokenKey::Ec => EC_PUB,
            TokenKey::Ed25519 => ED_PUB,
        }
    }

    /// The Ed25519 public key as bare base64 (how Nextcloud sends it).
    pub fn ed25519_raw_base64() -> String {
        let der: String = ED_PUB.lines().filter(|l| !l.starts_with("-----")).collect();
        // SPKI of Ed25519 is a 12-byte prefix plus the 32-byte key; in base64
        // the prefix is exactly the first 16 characters.
        der[16..].to_owned()
    }

    /// The private key (PEM), e.g. for a Go server's `token_key` file.
    pub fn private_pem(self) -> &'static str {
        match self {
            TokenKey::Rsa => RSA_PRIV,
            TokenKey::Rsa2 => RSA2_PRIV,
            TokenKey::Ec => EC_PRIV,
            TokenKey::Ed25519 => ED_PRIV,
        }
    }

    /// The default algorithm of the key.
    pub fn algorithm(self) -> Algorithm {
        match self {
            TokenKey::Rsa | TokenKey::Rsa2 => Algorithm::RS256,
            TokenKey::Ec => Algorithm::ES256,
            TokenKey::Ed25519 => Algorithm::EdDSA,
        }
    }

    /// Signs `claims` with this key and `alg` (which must suit the key).
    pub fn sign_with(self, alg: Algorithm, claims: &Value) -> String {
        let pem = self.private_pem().as_bytes();
        let key = match self {
            TokenKey::Rsa | TokenKey::Rsa2 => EncodingKey::from_rsa_pem(pem),
            TokenKey::Ec => EncodingKey::from_ec_pem(pem),
            TokenKey::Ed25519 => EncodingKey::from_ed_pem(pem),
        }
        .expect("the fixed test keys parse");
        jsonwebtoken::encode(&Header::new(alg), claims, &key).expect("signing cannot fail")
    }

    /// Signs `claims` with the key's default algorithm.
    pub fn sign(self, claims: &Value) -> String {
        self.sign_with(self.algorithm(), claims)
    }
}

/// A token signed with an HMAC secret (which the server must refuse).
pub fn sign_hmac(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .expect("signing cannot fail")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Claims Talk puts in a hello v2 token for `user` (empty for guests),
/// issued now, valid for five minutes.
pub fn hello_claims(issuer: &str, user: &str) -> Value {
    let now = unix_now();
    let mut c = serde_json::json!({"iss": issuer, "iat": now, "exp": now + 300});
    if !user.is_empty() {
        c["sub"] = Value::String(user.to_owned());
        c["userdata"] = serde_json::json!({"displayname": format!("User {user}")});
    }
    c
}

const RSA_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCnVhmIyPiVtoQl\n\
6GLXY0MQzd/Z1N8R92ZtERhVhIqVEi3EvdJwUpDRZO+sY17Y9aLDBl6DW44tc/IM\n\
Ep69jeEpMHXbtxHFHd6zb3aLUoFr4PWmNUjg591yQoNv6giLtBSb4Uum3Z6V7Gxo\n\
DA6tH27ax+/rM/GclqeWt4YzImndRfD7qMwoPv+E4PSmryVUmOOhU1MNx5smr4JR\n\
nCDGgpqvcE7hs7Ivm9tdX3EuB065N+r6idjENP8FoQ9EqqqnLRX7w+fUsiyp1Iv0\n\
fzUXRVZ9ln8uxVjvqxwcV9/KChOYB7pyAXc68RuR3g7t8rQz6YTw2nvuEaakY/iz\n\
v4oCK4wTAgMBAAECggEAFsbc7eXxFCvGPASwI4Iy2EA1lohnnqHusqzPg6BpXpYd\n\
Xbi6wqgyZxYWm3/hIqX4tBQTXEzjguNT0HneWo3L1pfuiuwVwp9ot0LWP2uJCz6R\n\
IUECfP6CgXF1Q4/2/tERtxAJBJsI4X5PWTA+9Sigpa3uRbUJz5cgE59CaIZoI4KP\n\
hshLcTHEOk5NbK6UawtSqYrYsH54/wGwyb/tq/EXiw0WYvf3CaobOXXqGVeCHqF5\n\
OsarIuLJhtZcTWazdKWxIfcaDBud7rPZvRTRTfB23x2NCUKCrJVwClYve3WNUSMx\n\
kL4OwR2GJrRxUh1eDsbqRUJlJ92iaH3XCuv17anuaQKBgQDkaJ8racsNCn73XzKJ\n\
s3+GrMtbH+vbgANGt1Yp9PdYg/tUQDSpdtwEAh6XTH3uFAR2ENj0ovj7lDEhFmPt\n\
A0MGs4tZBun8u9WWdasxiJ2cfJtI1g3Oki8vwghCOtN6e3w0gHjEAczvC1cNYU41\n\
gy7OmjaZKYCc9kM46YM+Bi5gOwKBgQC7jNu7w20P2SvUafBB/NqUlwwdqDuHPvBP\n\
a5cCZuFo/nRvgGlo9N4QODHeest/qe75Gk7njsMnkfvi4W//iP3LvKui3z1ud7k9\n\
L1GkdZDCYZ+0XVmvjhSxdOv+6b1tbYQVqiTyNdGWg8i1kec6HMrPeQtUedfXlZWF\n\
Jw8WZtXeCQKBgGOtJIkVif8O7YmWib9+DdD/517E93C61LMvnvKAbNC8CBokStcJ\n\
f8pgAmmUgAA9zBSaFZPs6yse6LG/y6vLGJz8DXu0gLhCYFtgzmy3adC4sCuA/lV/\n\
hggZbPE6Kr/w06s1xX4EKyLGmB7GsBK6RNr0gY8lhXL6JSvY++U9XU+xAoGBAJoV\n\
BUljKqzEjL+8MUjlRWaiGbAb0JwyVxfImo28nB+4PUyFwRQbaH0GzeGsHJfLsqsw\n\
s/aFUUunIbup3mufznKdlJ0AruWcsrDTuU1V0RIBRkXWE6KpJdMM7f3FZn0KZmOu\n\
HyBmmsP/jNuu/Lq/gNem6GoEmBFjsS1tg3WyEq6RAoGAIQimRe20p4j1bpRwFHEg\n\
7L93e9tJsp5QRLFd05C9R4xUcaUuHfoBKRhvcH/C2BOFQr/Irc65ciCw1eAj47fl\n\
WRiqdZPyMsGuytKlJ+2+OY2bxBgwB5Dct+P0AI92OK8h9LPSJbxoabSekFPrSnQC\n\
TJrHgH4P+k1cl1EZFffVuHo=\n\
-----END PRIVATE KEY-----\n\
";
const RSA_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAp1YZiMj4lbaEJehi12ND\n\
EM3f2dTfEfdmbREYVYSKlRItxL3ScFKQ0WTvrGNe2PWiwwZeg1uOLXPyDBKevY3h\n\
KTB127cRxR3es292i1KBa+D1pjVI4OfdckKDb+oIi7QUm+FLpt2elexsaAwOrR9u\n\
2sfv6zPxnJanlreGMyJp3UXw+6jMKD7/hOD0pq8lVJjjoVNTDcebJq+CUZwgxoKa\n\
r3BO4bOyL5vbXV9xLgdOuTfq+onYxDT/BaEPRKqqpy0V+8Pn1LIsqdSL9H81F0VW\n\
fZZ/LsVY76scHFffygoTmAe6cgF3OvEbkd4O7fK0M+mE8Np77hGmpGP4s7+KAiuM\n\
EwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
const RSA2_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIIEvwIBADANBgkqhkiG9w0BAQEFAASCBKkwggSlAgEAAoIBAQC6xff1Hb95LN/i\n\
6d3mCKEmRFMvT0Y5uoBtMuLrWVQZE/SuMG+So8dppU1vOt1cy+EAK05K91dK62dp\n\
hUpZQAuJkJQD5pif/0kdb1Pk7Hnvl7nwXYpHASCFjpQmy1GdcP0fumwHQ9gIXi6X\n\
BF3zDYkz6IMjAy1v4FeVcnI8aAIizGKP8D0fHSiM0RMs8NeyT9Q9nDBl94anBNVp\n\
PfjWlArQ4iMuqD0WgLQ198+z81nKN8583GXjVXKXR/AOcJPJHS+U6GxjBJXmbkeE\n\
4UtTTIfkHg3Hm6oTrmrCAP3uV3ZR/Tsu/KAYDcl7AsNA8QlhU/0l3aSz5O6btMX6\n\
gpwsSelTAgMBAAECggEAFmW1FWTK2EokUv6+iF5SjNc2rn6wKi4ORooKojRlHFjD\n\
R7wxNQGE4UtcXNFPSFh+k9mdmunMQwS1svaz8r32ZDm9NjaJ6O3hI7F8+v/Mo4mr\n\
V4KwGVGuR7XQWFKbZ+jrwclGORzOpDo/FgcFCSd/Y4UnbKRt53OcrSQ7RLkoQGnT\n\
aTLtqNuJziP+KzbMNrdGDbTsRx0MCXRkmmPX+PXXwqEDxqiDls7aSpuoQBn0AM2v\n\
iF1R3RJelLxYV62qr0gWb/EH3ICtUzQsk5xJjRAzyNNor/x0SQVR48zYzz5X8y5k\n\
RyTyv/zw+lPgmR8nUtPFjxs2uWSKgSURveElyNgj4QKBgQDuMBCOyTfvJ33jSiZ7\n\
Rhl/Usz7PH2MNXj/d0l0STG8IyRVDvgbpXotPOz5v71nDmxfvfXcCgkpL0laf/ke\n\
kzVp33QKjSFduXPpngd9yUKr+yt3BHKEqGq0xG6t7SEao7dtS6orJCHE7WoUvNmD\n\
4auocRhMnascx7ahVxbmmBn3UQKBgQDIvZxriHGphsComU3p+RyrulcCebqAsp2F\n\
htY+nz2a/AY8oDdOH2m2UhGuUbEbhjhqJq+9yrJ7qieoWdvv60C9ytcvlr3MIZfn\n\
A2PhGtaoT8ceSla1YZH9SpXX3lIKMh8fslsXqaFkP0Kn50nE0siZaK9lCBR+OHcY\n\
MlwNVXO1YwKBgQC6Hw7hNHUjyP1C/W9Chs1nw8DvVR5Z0HMDVSgt2QAnHmLGoJLZ\n\
r53f+arHob+T5x5iViLnVWRBLXUpZbS54pgrafPYRt3ayg68b8M01G7nyrX1I6GE\n\
7cGsDY7bE9/5XBL6MdUALxTAODDbkZJ6zn3/ephdThsmuxyHyHDZseMgcQKBgQCB\n\
oTgulMjZcaRd+8m9qtmh584iUhtm2nEwdfdKLyjoOZGJeujb8Rsh2nOCf0yAerdZ\n\
jSv1wrxpcWL0qzqE/wUqyp8VIyHjfVoLmzvXdK5juEjcPaMqtBxDVfPXl8Cgxuck\n\
X9fFOwx2oQdZR9lyWa+iqWCCPKqHK810eajKD4GOAwKBgQDWSzXsz/IlG1vTYw21\n\
14RQ4Dnb8+3IBXP/sNzu3MArkbo7FL74kuhYNeeYVwa/lfFHLTdz4fiCqLPBpa9O\n\
ccbPiXkbJFLmmJvLZ3sKbiDhFgdaleNt+hvjLE5QNpgvpscAB+VnYJGM449Mv+XQ\n\
A+qbZqmxznlaNiOy7KQTo7TDoA==\n\
-----END PRIVATE KEY-----\n\
";
const RSA2_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAusX39R2/eSzf4und5gih\n\
JkRTL09GObqAbTLi61lUGRP0rjBvkqPHaaVNbzrdXMvhACtOSvdXSutnaYVKWUAL\n\
iZCUA+aYn/9JHW9T5Ox575e58F2KRwEghY6UJstRnXD9H7psB0PYCF4ulwRd8w2J\n\
M+iDIwMtb+BXlXJyPGgCIsxij/A9Hx0ojNETLPDXsk/UPZwwZfeGpwTVaT341pQK\n\
0OIjLqg9FoC0NffPs/NZyjfOfNxl41Vyl0fwDnCTyR0vlOhsYwSV5m5HhOFLU0yH\n\
5B4Nx5uqE65qwgD97ld2Uf07LvygGA3JewLDQPEJYVP9Jd2ks+Tum7TF+oKcLEnp\n\
UwIDAQAB\n\
-----END PUBLIC KEY-----\n\
";
const EC_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsmyamouvZ1NbEPLC\n\
oMUDmgLF4KB4bYb+9PAfD+R6WfOhRANCAARHaDuvTzzhX7fZlM6LxigFtTropbS+\n\
+nOOtT8hJpsbSGU9Lvbp5z2ErmfwsFCoq+nCzrdjAXzDZVXT9xHVxTVg\n\
-----END PRIVATE KEY-----\n\
";
const EC_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAER2g7r0884V+32ZTOi8YoBbU66KW0\n\
vvpzjrU/ISabG0hlPS726ec9hK5n8LBQqKvpws63YwF8w2VV0/cR1cU1YA==\n\
-----END PUBLIC KEY-----\n\
";
const ED_PRIV: &str = "\
-----BEGIN PRIVATE KEY-----\n\
MC4CAQAwBQYDK2VwBCIEIO8/2xvmkK3wnMbINoddd8Y6z8/qeMjQlN4eSaM6Zegt\n\
-----END PRIVATE KEY-----\n\
";
const ED_PUB: &str = "\
-----BEGIN PUBLIC KEY-----\n\
MCowBQYDK2VwAyEAfPQj3dznzc31EP4ZaQjxlbw4RRaN7pVgXNYIhsr8I2Y=\n\
-----END PUBLIC KEY-----\n\
";
