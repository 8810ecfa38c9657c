//! Session id codec, wire compatible with the Go signaling server.
//!
//! Talk clients, the benchmark client and other cluster members treat session
//! ids as opaque strings, but the Go server gives them structure, and a
//! drop-in replacement has to produce and accept the very same structure:
//!
//! * A session is described by [`SessionIdData`] (a per-process counter, the
//!   creation time and the id of the backend the session belongs to).
//! * That record is serialized the way Go's `encoding/gob` serializes the Go
//!   struct `SessionIdData{Sid uint64; Created time.Time; BackendId string}`:
//!   a type definition message for the struct, one for `time.Time` (which gob
//!   transmits as an opaque "GobEncoder" blob, namely the 15 byte output of
//!   `Time.MarshalBinary`), then the value message.
//! * The gob bytes are wrapped like gorilla/securecookie v1.1.1 does it (the
//!   Go server uses `securecookie.New(hashKey, blockKey).MaxAge(0)`):
//!   optional AES-CTR encryption with a random IV prepended, base64url (with
//!   padding), then an HMAC-SHA256 over `name|timestamp|value`, and finally
//!   base64url of `timestamp|value|mac`. The cookie name is authenticated but
//!   not transmitted, so a resume id can never be used as a session id and
//!   vice versa.
//! * Private ids ("resume ids") use the name `private-session`. Public ids
//!   ("session ids") use `public-session` and additionally have the bytes
//!   under the outer base64 reversed, so the random-looking MAC comes first.
//!   Clients compare session ids to decide which side of a peer connection
//!   sends the offer; without the reversal the shared, increasing timestamp
//!   prefix would make that decision depend on session age.
//!
//! Because the key material is shared by all cluster members (and by the
//! benchmark client), ids minted by a Go server decode here and vice versa,
//! as long as `hashkey` and `blockkey` agree. No maximum age is enforced,
//! matching `MaxAge(0)` upstream.
//!
//! Decoding validates everything and never panics: ids arrive from the
//! network. Successful decodes are remembered in a small, bounded, sharded
//! cache, because the hub decodes the same public ids over and over when
//! routing messages.

use std::collections::HashMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use aes::cipher::{InnerIvInit, KeyInit, StreamCipher};
use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use rand::RngCore;
use sha2::Sha256;

/// Cookie name used for private (resume) ids.
pub const PRIVATE_SESSION_NAME: &str = "private-session";
/// Cookie name used for public session ids.
pub const PUBLIC_SESSION_NAME: &str = "public-session";

/// securecookie refuses to produce or decode values longer than this.
const MAX_ENCODED_LEN: usize = 4096;
/// AES block size, which is also the size of the CTR IV.
const IV_LEN: usize = 16;
/// Seconds between 0001-01-01T00:00:00Z (Go's internal epoch) and the Unix epoch.
const GO_EPOCH_TO_UNIX_SECS: i64 = 62_135_596_800;
const NANOS_PER_SEC: i64 = 1_000_000_000;

/// Default number of decode results remembered (per id kind).
pub const DEFAULT_CACHE_CAPACITY: usize = 32 * 1024;
const CACHE_SHARDS: usize = 16;

/// Base64 as produced by Go's `base64.URLEncoding`: URL alphabet, `=`
/// padding required, and (Go is not in strict mode) non-zero trailing bits
/// tolerated when decoding.
const GO_URL_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_encode_padding(true)
        .with_decode_padding_mode(DecodePaddingMode::RequireCanonical)
        .with_decode_allow_trailing_bits(true),
);

/// The information carried inside a session id.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SessionIdData {
    /// Per-process session counter (never 0 for ids minted by a server).
    pub sid: u64,
    /// Creation time in nanoseconds since the Unix epoch.
    pub created_unix_nanos: i64,
    /// Id of the backend the session belongs to (`"compat"` with `allowall`).
    pub backend_id: String,
}

impl SessionIdData {
    /// Session data for a session created right now.
    pub fn new_now(sid: u64, backend_id: impl Into<String>) -> Self {
        Self {
            sid,
            created_unix_nanos: unix_nanos_now(),
            backend_id: backend_id.into(),
        }
    }
}

/// Errors returned by [`SessionIdCodec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionIdError {
    /// The block (encryption) key is neither empty nor a valid AES key size.
    #[error("the sessions block key must be 16, 24 or 32 bytes but is {0} bytes")]
    InvalidBlockKeyLength(usize),
    /// The hash key was rejected by the HMAC implementation.
    #[error("invalid sessions hash key")]
    InvalidHashKey,
    /// An empty string was passed as id.
    #[error("empty session id")]
    Empty,
    /// The id is longer than securecookie accepts.
    #[error("session id too long ({0} bytes, at most {MAX_ENCODED_LEN} allowed)")]
    TooLong(usize),
    /// The id (or its inner value) is not valid padded base64url.
    #[error("session id is not valid base64url")]
    BadEncoding,
    /// The id does not have the `timestamp|value|mac` layout.
    #[error("session id is malformed")]
    Malformed,
    /// The MAC does not match (wrong key, wrong id kind or tampered id).
    #[error("session id MAC is invalid")]
    BadMac,
    /// The authenticated timestamp is not a decimal integer.
    #[error("session id has an invalid timestamp")]
    BadTimestamp,
    /// The encrypted value is too short to contain an IV and data.
    #[error("session id could not be decrypted")]
    DecryptionFailed,
    /// The authenticated payload is not the gob layout of `SessionIdData`.
    #[error("invalid session data: {0}")]
    InvalidData(&'static str),
}

type HmacSha256 = Hmac<Sha256>;

enum BlockCipher {
    Aes128(aes::Aes128),
    Aes192(aes::Aes192),
    Aes256(aes::Aes256),
}

impl BlockCipher {
    fn new(key: &[u8]) -> Result<Option<Self>, SessionIdError> {
        let bad = |_| SessionIdError::InvalidBlockKeyLength(key.len());
        Ok(match key.len() {
            0 => None,
            16 => Some(Self::Aes128(aes::Aes128::new_from_slice(key).map_err(bad)?)),
            24 => Some(Self::Aes192(aes::Aes192::new_from_slice(key).map_err(bad)?)),
            32 => Some(Self::Aes256(aes::Aes256::new_from_slice(key).map_err(bad)?)),
            n => return Err(SessionIdError::InvalidBlockKeyLength(n)),
        })
    }

    /// AES in CTR mode with a 128 bit big-endian counter starting at `iv`
    /// (what Go's `cipher.NewCTR` does). Encryption and decryption are the
    /// same operation.
    fn apply_ctr(&self, iv: &[u8; IV_LEN], data: &mut [u8]) {
        let iv = (*iv).into();
        match self {
            Self::Aes128(c) => {
                ctr::Ctr128BE::<aes::Aes128>::from_core(ctr::CtrCore::inner_iv_init(c.clone(), &iv))
                    .apply_keystream(data)
            }
            Self::Aes192(c) => {
                ctr::Ctr128BE::<aes::Aes192>::from_core(ctr::CtrCore::inner_iv_init(c.clone(), &iv))
                    .apply_keystream(data)
            }
            Self::Aes256(c) => {
                ctr::Ctr128BE::<aes::Aes256>::from_core(ctr::CtrCore::inner_iv_init(c.clone(), &iv))
                    .apply_keystream(data)
            }
        }
    }
}

/// Encodes and decodes private (resume) and public session ids.
///
/// Cheap to share behind an `Arc`; all methods take `&self`.
pub struct SessionIdCodec {
    mac: HmacSha256,
    cipher: Option<BlockCipher>,
    private_cache: DecodeCache,
    public_cache: DecodeCache,
}

impl fmt::Debug for SessionIdCodec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("SessionIdCodec")
            .field("encrypted", &self.cipher.is_some())
            .finish_non_exhaustive()
    }
}

impl SessionIdCodec {
    /// Creates a codec. Any hash key is accepted (the Go server only warns
    /// when it is not 32 or 64 bytes); an empty `block_key` disables
    /// encryption, otherwise it must be 16, 24 or 32 bytes (AES-128/192/256).
    pub fn new(hash_key: &[u8], block_key: &[u8]) -> Result<Self, SessionIdError> {
        Self::with_cache_capacity(hash_key, block_key, DEFAULT_CACHE_CAPACITY)
    }

    /// Like [`SessionIdCodec::new`] with an explicit bound on the number of
    /// cached decode results per id kind (0 disables caching).
    pub fn with_cache_capacity(
        hash_key: &[u8],
        block_key: &[u8],
        cache_capacity: usize,
    ) -> Result<Self, SessionIdError> {
        let cipher = BlockCipher::new(block_key)?;
        let mac = <HmacSha256 as Mac>::new_from_slice(hash_key)
            .map_err(|_| SessionIdError::InvalidHashKey)?;
        Ok(Self {
            mac,
            cipher,
            private_cache: DecodeCache::new(cache_capacity),
            public_cache: DecodeCache::new(cache_capacity),
        })
    }

    /// Forget cached decodes not used since the previous call (called
    /// periodically, so that the cache of a connection spike does not
    /// stay in memory).
    pub fn age_caches(&self) {
        self.private_cache.age();
        self.public_cache.age();
    }

    /// Whether ids are encrypted (a block key was configured).
    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// Encodes the private (resume) id of a session.
    pub fn encode_private(&self, d: &SessionIdData) -> String {
        let raw = self.seal(PRIVATE_SESSION_NAME, d, unix_secs_now(), None);
        // Not cached: the hub finds its own sessions by id string; the cache
        // is for ids it has to decode, and would only cost memory here.
        GO_URL_BASE64.encode(raw)
    }

    /// Encodes the public session id of a session.
    pub fn encode_public(&self, d: &SessionIdData) -> String {
        let mut raw = self.seal(PUBLIC_SESSION_NAME, d, unix_secs_now(), None);
        raw.reverse();
        GO_URL_BASE64.encode(raw)
    }

    /// Decodes and authenticates a private (resume) id.
    pub fn decode_private(&self, id: &str) -> Result<SessionIdData, SessionIdError> {
        if let Some(d) = self.private_cache.get(id) {
            return Ok(d);
        }
        if id.is_empty() {
            return Err(SessionIdError::Empty);
        }
        // securecookie checks the length of the string it was handed.
        if id.len() > MAX_ENCODED_LEN {
            return Err(SessionIdError::TooLong(id.len()));
        }
        let raw = go_base64_decode(id.as_bytes())?;
        let d = self.open(PRIVATE_SESSION_NAME, &raw)?;
        self.private_cache.insert(id, &d);
        Ok(d)
    }

    /// Decodes and authenticates a public session id.
    pub fn decode_public(&self, id: &str) -> Result<SessionIdData, SessionIdError> {
        if let Some(d) = self.public_cache.get(id) {
            return Ok(d);
        }
        if id.is_empty() {
            return Err(SessionIdError::Empty);
        }
        // Upstream first undoes the reversal (decode, reverse, re-encode) and
        // hands the re-encoded string to securecookie, whose length check
        // therefore sees the id without any CR/LF (which Go's base64 skips).
        let significant = id.bytes().filter(|&b| b != b'\r' && b != b'\n').count();
        if significant > MAX_ENCODED_LEN {
            return Err(SessionIdError::TooLong(significant));
        }
        let mut raw = go_base64_decode(id.as_bytes())?;
        raw.reverse();
        let d = self.open(PUBLIC_SESSION_NAME, &raw)?;
        self.public_cache.insert(id, &d);
        Ok(d)
    }

    /// Drops a private id from the decode cache (e.g. when its session ends).
    pub fn forget_private(&self, id: &str) {
        self.private_cache.remove(id);
    }

    /// Drops a public id from the decode cache (e.g. when its session ends).
    pub fn forget_public(&self, id: &str) {
        self.public_cache.remove(id);
    }

    /// Produces the bytes `timestamp|value|mac` that are base64url encoded
    /// (after reversal, for public ids) to form the id. When encrypting, a
    /// fresh random IV is used unless one is given (tests pin it).
    fn seal(
        &self,
        name: &str,
        d: &SessionIdData,
        timestamp: i64,
        iv: Option<[u8; IV_LEN]>,
    ) -> Vec<u8> {
        let mut value = gob_encode(d);
        if let Some(cipher) = &self.cipher {
            let iv = iv.unwrap_or_else(|| {
                let mut iv = [0u8; IV_LEN];
                rand::thread_rng().fill_bytes(&mut iv);
                iv
            });
            cipher.apply_ctr(&iv, &mut value);
            let mut with_iv = Vec::with_capacity(IV_LEN + value.len());
            with_iv.extend_from_slice(&iv);
            with_iv.extend_from_slice(&value);
            value = with_iv;
        }
        let value_b64 = GO_URL_BASE64.encode(&value);
        let mut out = format!("{timestamp}|{value_b64}").into_bytes();
        let mut mac = self.mac.clone();
        mac.update(name.as_bytes());
        mac.update(b"|");
        mac.update(&out);
        out.push(b'|');
        out.extend_from_slice(&mac.finalize().into_bytes());
        out
    }

    /// Authenticates, decrypts and deserializes the bytes `timestamp|value|mac`.
    fn open(&self, name: &str, raw: &[u8]) -> Result<SessionIdData, SessionIdError> {
        let first = raw
            .iter()
            .position(|&b| b == b'|')
            .ok_or(SessionIdError::Malformed)?;
        let second = raw[first + 1..]
            .iter()
            .position(|&b| b == b'|')
            .map(|p| first + 1 + p)
            .ok_or(SessionIdError::Malformed)?;
        let (signed, tag) = (&raw[..second], &raw[second + 1..]);

        let mut mac = self.mac.clone();
        mac.update(name.as_bytes());
        mac.update(b"|");
        mac.update(signed);
        mac.verify_slice(tag).map_err(|_| SessionIdError::BadMac)?;

        // The timestamp is authenticated but, with no max age configured,
        // only has to be a valid integer.
        std::str::from_utf8(&raw[..first])
            .ok()
            .and_then(|s| s.parse::<i64>().ok())
            .ok_or(SessionIdError::BadTimestamp)?;

        let mut value = go_base64_decode(&raw[first + 1..second])?;
        if let Some(cipher) = &self.cipher {
            if value.len() <= IV_LEN {
                return Err(SessionIdError::DecryptionFailed);
            }
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(&value[..IV_LEN]);
            value.drain(..IV_LEN);
            cipher.apply_ctr(&iv, &mut value);
        }
        gob_decode(&value)
    }
}

fn unix_secs_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_secs()).map_or(i64::MIN, |s| -s),
    }
}

fn unix_nanos_now() -> i64 {
    match SystemTime::now().duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_nanos()).map_or(i64::MIN, |n| -n),
    }
}

/// Decodes like Go's `base64.URLEncoding`, which also skips CR and LF.
fn go_base64_decode(input: &[u8]) -> Result<Vec<u8>, SessionIdError> {
    let result = if input.iter().any(|&b| b == b'\r' || b == b'\n') {
        let filtered: Vec<u8> = input
            .iter()
            .copied()
            .filter(|&b| b != b'\r' && b != b'\n')
            .collect();
        GO_URL_BASE64.decode(filtered)
    } else {
        GO_URL_BASE64.decode(input)
    };
    result.map_err(|_| SessionIdError::BadEncoding)
}

// ---------------------------------------------------------------------------
// gob
//
// Only what is needed for the one struct is implemented. The encoder emits
// exactly the three messages Go emits for a fresh encoder (type ids 65 and 66,
// the first ids handed out in a Go process); the decoder parses type
// definitions generically, so streams using other type ids (a Go process
// that registered other gob types first) are understood as well.
// ---------------------------------------------------------------------------

/// Builtin gob type ids.
const GOB_BOOL: i64 = 1;
const GOB_INT: i64 = 2;
const GOB_UINT: i64 = 3;
const GOB_FLOAT: i64 = 4;
const GOB_BYTES: i64 = 5;
const GOB_STRING: i64 = 6;
const GOB_COMPLEX: i64 = 7;
/// Go never assigns user type ids below this.
const GOB_FIRST_USER_ID: i64 = 64;
/// Type ids our encoder uses.
const GOB_ID_SESSION_DATA: i64 = 65;
const GOB_ID_TIME: i64 = 66;
/// Field indexes inside gob's `wireType` struct.
const WIRE_STRUCT_T: u64 = 2;
const WIRE_GOB_ENCODER_T: u64 = 4;
const WIRE_TEXT_MARSHALER_T: u64 = 6;
/// Versions of Go's `Time.MarshalBinary` format (V2 adds offset seconds).
const TIME_BINARY_V1: u8 = 1;
const TIME_BINARY_V2: u8 = 2;
/// Upper bound for type definitions we are willing to read in one stream.
const MAX_GOB_TYPES: usize = 16;

fn put_uint(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        let bytes = v.to_be_bytes();
        let skip = (v.leading_zeros() / 8) as usize;
        let n = bytes.len() - skip;
        // Byte count is sent negated.
        out.push((n as u8).wrapping_neg());
        out.extend_from_slice(&bytes[skip..]);
    }
}

fn put_int(out: &mut Vec<u8>, v: i64) {
    let u = if v < 0 {
        ((!v as u64) << 1) | 1
    } else {
        (v as u64) << 1
    };
    put_uint(out, u);
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    put_uint(out, s.len() as u64);
    out.extend_from_slice(s);
}

/// Appends a length-prefixed gob message.
fn put_message(out: &mut Vec<u8>, msg: &[u8]) {
    put_uint(out, msg.len() as u64);
    out.extend_from_slice(msg);
}

/// Appends a gob `CommonType{Name, Id}` struct value.
fn put_common_type(out: &mut Vec<u8>, name: &str, id: i64) {
    out.push(1); // field 0: Name
    put_string(out, name.as_bytes());
    out.push(1); // field 1: Id
    put_int(out, id);
    out.push(0);
}

/// Appends a gob `fieldType{Name, Id}` struct value.
fn put_field_type(out: &mut Vec<u8>, name: &str, id: i64) {
    put_common_type(out, name, id); // same layout: Name, Id
}

/// Go's `Time.MarshalBinary` for an instant, written with zone offset 0
/// (what `time.Now()` yields on a host whose local zone is UTC).
fn time_marshal_binary(unix_nanos: i64) -> [u8; 15] {
    let unix_secs = unix_nanos.div_euclid(NANOS_PER_SEC);
    // rem_euclid is in 0..1e9, fits an i32.
    let nsec = unix_nanos.rem_euclid(NANOS_PER_SEC) as i32;
    // |unix_secs| < 9.3e9, so this cannot overflow.
    let go_secs = unix_secs + GO_EPOCH_TO_UNIX_SECS;
    let mut b = [0u8; 15];
    b[0] = TIME_BINARY_V1;
    b[1..9].copy_from_slice(&go_secs.to_be_bytes());
    b[9..13].copy_from_slice(&nsec.to_be_bytes());
    b[13..15].copy_from_slice(&0i16.to_be_bytes());
    b
}

fn time_unmarshal_binary(b: &[u8]) -> Result<i64, SessionIdError> {
    let want = match b.first() {
        Some(&TIME_BINARY_V1) => 15,
        Some(&TIME_BINARY_V2) => 16,
        Some(_) => {
            return Err(SessionIdError::InvalidData(
                "unsupported time encoding version",
            ))
        }
        None => return Err(SessionIdError::InvalidData("empty time value")),
    };
    if b.len() != want {
        return Err(SessionIdError::InvalidData("invalid time value length"));
    }
    let mut secs = [0u8; 8];
    secs.copy_from_slice(&b[1..9]);
    let mut nsec = [0u8; 4];
    nsec.copy_from_slice(&b[9..13]);
    let go_secs = i64::from_be_bytes(secs);
    let nsec = i32::from_be_bytes(nsec);
    // The zone offset (bytes 13.. ) does not change the instant.
    if !(0..1_000_000_000).contains(&nsec) {
        return Err(SessionIdError::InvalidData(
            "invalid nanoseconds in time value",
        ));
    }
    // i128 cannot overflow here: |go_secs| < 2^63, times 1e9 < 2^93.
    let nanos = (i128::from(go_secs) - i128::from(GO_EPOCH_TO_UNIX_SECS))
        * i128::from(NANOS_PER_SEC)
        + i128::from(nsec);
    i64::try_from(nanos).map_err(|_| SessionIdError::InvalidData("creation time out of range"))
}

/// Serializes like a fresh Go `gob.Encoder` encoding `*SessionIdData`.
fn gob_encode(d: &SessionIdData) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + d.backend_id.len());
    let mut msg = Vec::with_capacity(64 + d.backend_id.len());

    // Type definition of the struct: wireType{StructT: &structType{...}}.
    put_int(&mut msg, -GOB_ID_SESSION_DATA);
    msg.push(WIRE_STRUCT_T as u8 + 1); // delta from -1 to field 2
    msg.push(1); // structType field 0: CommonType
    put_common_type(&mut msg, "SessionIdData", GOB_ID_SESSION_DATA);
    msg.push(1); // structType field 1: Field []*fieldType
    put_uint(&mut msg, 3);
    put_field_type(&mut msg, "Sid", GOB_UINT);
    put_field_type(&mut msg, "Created", GOB_ID_TIME);
    put_field_type(&mut msg, "BackendId", GOB_STRING);
    msg.push(0); // end of structType
    msg.push(0); // end of wireType
    put_message(&mut out, &msg);

    // Type definition of time.Time: wireType{GobEncoderT: &gobEncoderType{...}}.
    msg.clear();
    put_int(&mut msg, -GOB_ID_TIME);
    msg.push(WIRE_GOB_ENCODER_T as u8 + 1); // delta from -1 to field 4
    msg.push(1); // gobEncoderType field 0: CommonType
    put_common_type(&mut msg, "Time", GOB_ID_TIME);
    msg.push(0); // end of gobEncoderType
    msg.push(0); // end of wireType
    put_message(&mut out, &msg);

    // The value. Zero-valued fields are omitted, as gob does; each present
    // field is introduced by the distance from the previous one.
    msg.clear();
    put_int(&mut msg, GOB_ID_SESSION_DATA);
    let mut last = -1i64;
    let mut field = |msg: &mut Vec<u8>, index: i64| {
        put_uint(msg, (index - last) as u64);
        last = index;
    };
    if d.sid != 0 {
        field(&mut msg, 0);
        put_uint(&mut msg, d.sid);
    }
    field(&mut msg, 1);
    put_string(&mut msg, &time_marshal_binary(d.created_unix_nanos));
    if !d.backend_id.is_empty() {
        field(&mut msg, 2);
        put_string(&mut msg, d.backend_id.as_bytes());
    }
    msg.push(0); // end of struct
    put_message(&mut out, &msg);
    out
}

struct GobReader<'a> {
    buf: &'a [u8],
}

impl<'a> GobReader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], SessionIdError> {
        if n > self.buf.len() {
            return Err(SessionIdError::InvalidData("truncated gob data"));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    fn uint(&mut self) -> Result<u64, SessionIdError> {
        let first = self.take(1)?[0];
        if first < 0x80 {
            return Ok(u64::from(first));
        }
        let n = usize::from(first.wrapping_neg());
        if n > 8 {
            return Err(SessionIdError::InvalidData("invalid gob unsigned integer"));
        }
        Ok(self
            .take(n)?
            .iter()
            .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
    }

    fn int(&mut self) -> Result<i64, SessionIdError> {
        let u = self.uint()?;
        let magnitude = (u >> 1) as i64;
        Ok(if u & 1 == 1 { !magnitude } else { magnitude })
    }

    fn len_prefixed(&mut self) -> Result<&'a [u8], SessionIdError> {
        let n = self.uint()?;
        let n =
            usize::try_from(n).map_err(|_| SessionIdError::InvalidData("truncated gob data"))?;
        self.take(n)
    }

    fn string(&mut self) -> Result<String, SessionIdError> {
        let b = self.len_prefixed()?;
        String::from_utf8(b.to_vec())
            .map_err(|_| SessionIdError::InvalidData("string is not valid UTF-8"))
    }

    /// Reads the next struct field delta and returns the new field index,
    /// or `None` at the end of the struct.
    fn next_field(&mut self, current: &mut i64) -> Result<Option<u64>, SessionIdError> {
        let delta = self.uint()?;
        if delta == 0 {
            return Ok(None);
        }
        let delta = i64::try_from(delta)
            .map_err(|_| SessionIdError::InvalidData("invalid gob field delta"))?;
        *current = current
            .checked_add(delta)
            .ok_or(SessionIdError::InvalidData("invalid gob field delta"))?;
        // current >= 0 here since it started at -1 and delta >= 1.
        Ok(Some(*current as u64))
    }
}

#[derive(Debug)]
enum WireType {
    Struct(Vec<(String, i64)>),
    GobEncoder,
    /// BinaryMarshaler/TextMarshaler: legal gob, but not what Go uses for
    /// `time.Time`, so a field of such a type cannot be decoded.
    OtherMarshaler,
}

/// Reads gob's `CommonType{Name string; Id typeId}`.
fn read_common_type(r: &mut GobReader<'_>) -> Result<(String, i64), SessionIdError> {
    let (mut name, mut id) = (String::new(), 0i64);
    let mut field = -1;
    while let Some(f) = r.next_field(&mut field)? {
        match f {
            0 => name = r.string()?,
            1 => id = r.int()?,
            _ => {
                return Err(SessionIdError::InvalidData(
                    "unexpected field in gob type definition",
                ))
            }
        }
    }
    Ok((name, id))
}

/// Reads a struct that only embeds `CommonType` (gob's `gobEncoderType`).
fn read_marshaler_type(r: &mut GobReader<'_>) -> Result<(), SessionIdError> {
    let mut field = -1;
    while let Some(f) = r.next_field(&mut field)? {
        match f {
            0 => {
                read_common_type(r)?;
            }
            _ => {
                return Err(SessionIdError::InvalidData(
                    "unexpected field in gob type definition",
                ))
            }
        }
    }
    Ok(())
}

/// Reads gob's `structType{CommonType; Field []*fieldType}`.
fn read_struct_type(r: &mut GobReader<'_>) -> Result<Vec<(String, i64)>, SessionIdError> {
    let mut fields = Vec::new();
    let mut field = -1;
    while let Some(f) = r.next_field(&mut field)? {
        match f {
            0 => {
                read_common_type(r)?;
            }
            1 => {
                let count = r.uint()?;
                // Every element takes at least one byte; bounds the loop.
                if count > r.buf.len() as u64 {
                    return Err(SessionIdError::InvalidData("truncated gob data"));
                }
                fields.clear();
                for _ in 0..count {
                    fields.push(read_common_type(r)?); // fieldType has the same layout
                }
            }
            _ => {
                return Err(SessionIdError::InvalidData(
                    "unexpected field in gob type definition",
                ))
            }
        }
    }
    Ok(fields)
}

/// Reads gob's `wireType` union.
fn read_wire_type(r: &mut GobReader<'_>) -> Result<WireType, SessionIdError> {
    let mut result = None;
    let mut field = -1;
    while let Some(f) = r.next_field(&mut field)? {
        let t = match f {
            WIRE_STRUCT_T => WireType::Struct(read_struct_type(r)?),
            WIRE_GOB_ENCODER_T => {
                read_marshaler_type(r)?;
                WireType::GobEncoder
            }
            5 | WIRE_TEXT_MARSHALER_T => {
                read_marshaler_type(r)?;
                WireType::OtherMarshaler
            }
            // ArrayT, SliceT, MapT: SessionIdData contains none of these.
            0 | 1 | 3 => {
                return Err(SessionIdError::InvalidData(
                    "unsupported gob type (array, slice or map)",
                ))
            }
            _ => return Err(SessionIdError::InvalidData("unknown gob type kind")),
        };
        result = Some(t);
    }
    result.ok_or(SessionIdError::InvalidData("empty gob type definition"))
}

/// Skips the value of a struct field that `SessionIdData` does not have
/// (gob ignores such fields). Only builtin types can be skipped.
fn skip_field(r: &mut GobReader<'_>, type_id: i64) -> Result<(), SessionIdError> {
    match type_id {
        GOB_BOOL | GOB_INT | GOB_UINT | GOB_FLOAT => {
            r.uint()?;
        }
        GOB_COMPLEX => {
            r.uint()?;
            r.uint()?;
        }
        GOB_BYTES | GOB_STRING => {
            r.len_prefixed()?;
        }
        _ => {
            return Err(SessionIdError::InvalidData(
                "cannot skip unknown field of non-builtin type",
            ))
        }
    }
    Ok(())
}

/// Deserializes what Go's gob encoder emits for `SessionIdData`.
fn gob_decode(data: &[u8]) -> Result<SessionIdData, SessionIdError> {
    let mut stream = GobReader::new(data);
    let mut types: HashMap<i64, WireType> = HashMap::new();
    loop {
        if stream.is_empty() {
            return Err(SessionIdError::InvalidData("no value in gob stream"));
        }
        let len = stream.uint()?;
        let len =
            usize::try_from(len).map_err(|_| SessionIdError::InvalidData("truncated gob data"))?;
        if len == 0 {
            return Err(SessionIdError::InvalidData("empty gob message"));
        }
        let mut msg = GobReader::new(stream.take(len)?);
        let id = msg.int()?;
        if id < 0 {
            let id = id
                .checked_neg()
                .ok_or(SessionIdError::InvalidData("invalid gob type id"))?;
            if id < GOB_FIRST_USER_ID || types.contains_key(&id) {
                return Err(SessionIdError::InvalidData("duplicate gob type definition"));
            }
            if types.len() >= MAX_GOB_TYPES {
                return Err(SessionIdError::InvalidData("too many gob type definitions"));
            }
            let t = read_wire_type(&mut msg)?;
            if !msg.is_empty() {
                return Err(SessionIdError::InvalidData(
                    "extra data after gob type definition",
                ));
            }
            types.insert(id, t);
            continue;
        }
        // A value. Like Go, anything after it is ignored.
        let Some(WireType::Struct(fields)) = types.get(&id) else {
            return Err(SessionIdError::InvalidData(
                "gob value is not the SessionIdData struct",
            ));
        };
        return decode_session_struct(&mut msg, fields, &types);
    }
}

fn decode_session_struct(
    r: &mut GobReader<'_>,
    fields: &[(String, i64)],
    types: &HashMap<i64, WireType>,
) -> Result<SessionIdData, SessionIdError> {
    // Like Go's decoder compiler: every wire field matching a local field by
    // name must have a compatible type, and at least one must match.
    let mut matched = false;
    for (name, type_id) in fields {
        let compatible = match name.as_str() {
            "Sid" => *type_id == GOB_UINT,
            "Created" => matches!(types.get(type_id), Some(WireType::GobEncoder)),
            "BackendId" => *type_id == GOB_STRING,
            _ => continue,
        };
        if !compatible {
            return Err(SessionIdError::InvalidData(
                "gob field type does not match SessionIdData",
            ));
        }
        matched = true;
    }
    if !matched {
        return Err(SessionIdError::InvalidData(
            "gob struct has no SessionIdData fields",
        ));
    }

    let mut sid = 0u64;
    let mut created = None;
    let mut backend_id = String::new();
    let mut field = -1;
    while let Some(f) = r.next_field(&mut field)? {
        let (name, type_id) = usize::try_from(f)
            .ok()
            .and_then(|i| fields.get(i))
            .ok_or(SessionIdError::InvalidData("gob field number out of range"))?;
        match name.as_str() {
            "Sid" => sid = r.uint()?,
            "Created" => created = Some(time_unmarshal_binary(r.len_prefixed()?)?),
            "BackendId" => backend_id = r.string()?,
            _ => skip_field(r, *type_id)?,
        }
    }
    // Go omits a zero time.Time (year 1), which cannot be represented here
    // and is never produced for a real session.
    let created_unix_nanos = created.ok_or(SessionIdError::InvalidData("missing creation time"))?;
    Ok(SessionIdData {
        sid,
        created_unix_nanos,
        backend_id,
    })
}

// ---------------------------------------------------------------------------
// Decode cache
// ---------------------------------------------------------------------------

/// A bounded cache of decode results, split into shards to limit lock
/// contention. Each shard keeps two generations: lookups hit either, new
/// entries go to the current one, and when the current one is full it
/// replaces the previous one (dropping the oldest half). Entries read from
/// the previous generation are promoted, so frequently used ids survive.
struct DecodeCache {
    shards: Vec<Mutex<CacheShard>>,
    generation_capacity: usize,
}

type CacheMap = HashMap<String, SessionIdData, foldhash::fast::RandomState>;

#[derive(Default)]
struct CacheShard {
    current: CacheMap,
    previous: CacheMap,
}

impl DecodeCache {
    fn new(capacity: usize) -> Self {
        let shards = if capacity == 0 { 0 } else { CACHE_SHARDS };
        Self {
            shards: (0..shards)
                .map(|_| Mutex::new(CacheShard::default()))
                .collect(),
            // Two generations per shard; at least one entry each.
            generation_capacity: (capacity / (2 * CACHE_SHARDS)).max(1),
        }
    }

    fn shard(&self, key: &str) -> Option<&Mutex<CacheShard>> {
        if self.shards.is_empty() {
            return None;
        }
        // A fixed seed, independent of the maps' own (random) ones.
        use std::hash::BuildHasher;
        let hash = foldhash::fast::FixedState::with_seed(0x005e_551d).hash_one(key);
        self.shards.get((hash >> 32) as usize % self.shards.len())
    }

    fn get(&self, key: &str) -> Option<SessionIdData> {
        let mut shard = self.shard(key)?.lock();
        if let Some(d) = shard.current.get(key) {
            return Some(d.clone());
        }
        let (k, d) = shard.previous.remove_entry(key)?;
        Self::put(&mut shard, self.generation_capacity, k, d.clone());
        Some(d)
    }

    fn insert(&self, key: &str, d: &SessionIdData) {
        if let Some(shard) = self.shard(key) {
            let mut shard = shard.lock();
            if let Some(existing) = shard.current.get_mut(key) {
                existing.clone_from(d);
                return;
            }
            shard.previous.remove(key);
            Self::put(
                &mut shard,
                self.generation_capacity,
                key.to_owned(),
                d.clone(),
            );
        }
    }

    fn put(shard: &mut CacheShard, generation_capacity: usize, key: String, d: SessionIdData) {
        if shard.current.len() >= generation_capacity {
            shard.previous = std::mem::take(&mut shard.current);
        }
        shard.current.insert(key, d);
    }

    fn remove(&self, key: &str) {
        if let Some(shard) = self.shard(key) {
            let mut shard = shard.lock();
            shard.current.remove(key);
            shard.previous.remove(key);
        }
    }

    /// Start a new generation in every shard: entries not used since the
    /// last call are dropped (with their memory), those used move back
    /// into the current generation when next looked up.
    fn age(&self) {
        for shard in &self.shards {
            let mut shard = shard.lock();
            shard.previous = std::mem::take(&mut shard.current);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock();
                s.current.len() + s.previous.len()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    // Ids captured from the Debian build of the Go server (0.4.1-4+b4,
    // golang-1.19, securecookie 1.1.1): a hello via a fake auth backend,
    // `sessionid` (public) and `resumeid` (private) from the response.
    // `*_OURS_ACCEPTED` are public ids produced by this codec (fresh
    // timestamp and IV) that the same Go process accepted as message
    // recipient and delivered to the session.

    /// `[sessions] hashkey` of the first two servers.
    const HK32: &[u8] = b"0123456789abcdef0123456789abcdef";

    /// Server 1: no block key, `allowall = true` (backend id "compat").
    const PLAIN_PRIVATE: &str = "MTc5NTYyMjkxMHxQdi1CQXdFQkRWTmxjM05wYjI1SlpFUmhkR0VCXzRJQUFRTUJBMU5wWkFFR0FBRUhRM0psWVhSbFpBSF9oQUFCQ1VKaFkydGxibVJKWkFFTUFBQUFFUC1EQlFFQkJGUnBiV1VCXzRRQUFBQWVfNElCRUFFUEFRQUFBQTdpbVA3LUphLTFjd0FBQVFaamIyMXdZWFFBfGkUC9UInikBgzHHmMIb3P-nXmdjXC3eufFjRcdS2qty";
    const PLAIN_PUBLIC: &str = "GbHRS3Jk8F4V9Ht7hvjWTfPavzMkevhbbOxyWc_htW18QVFYWXcxMmJqWlFBQUF3YzEtYUotN1BtaTdBQUFBUUFQRUFFQkk0X2VBQUFBUTRfQlVXYnBSRkJCRVFCRC1QRUFBQUFNRUFaSlJtYmx0MlloSlVDQkFBaF9IQVpsUlhZbEozUUhFQUFHRUFacE4xQUJNUUFBSTRfQkVHZGhSRVpKNTJicE4zY2xOVkRCRXdBQi12UHwwMTkyMjY1OTcx";
    const PLAIN_PUBLIC_OURS_ACCEPTED: &str = "MahU3k2bfzeOh7iUAWkelgbRRfmxS_T994GVqNusZ8N8QVFYWXcxMmJqWlFBQUF3YzEtYUotN1BtaTdBQUFBUUFQRUFFQkk0X2VBQUFBUTRfQlVXYnBSRkJCRVFCRC1QRUFBQUFNRUFaSlJtYmx0MlloSlVDQkFBaF9IQVpsUlhZbEozUUhFQUFHRUFacE4xQUJNUUFBSTRfQkVHZGhSRVpKNTJicE4zY2xOVkRCRXdBQi12UHwxMTkyMjY1OTcx";
    const PLAIN_SID: u64 = 16;
    const PLAIN_CREATED: i64 = 1_795_622_910_632_272_243;

    /// Server 2: 16 byte block key (AES-128), `allowall = true`.
    const BK16: &[u8] = b"0123456789abcdef";
    const ENC16_PRIVATE: &str = "MTc5NTYyMjkxNHxQa1NBQmtDTGNKek1uc1hOdDd1bkQ3N3JiUHpwU08xWmZINkNQRndHTER1d0lBNEVVZ1pjS0VScVJuV2Eyc0tOWmhabmlRV2ZvdjNNdDVaUi1ES0pSVkMzaUVQMng0NDRHd3BfM19VejlWSVQ0enktcXltemFuMU1ZTEdmb21tR0ZwbF9BdTgtTS1yczRFeXFKQnk5Ykl3blRUYUZjV2U5T2NaeWRnLUlwdz09fONUa_lZHogkly0dcBU_8YJOFtM1UUfiBAq1v-paNqfx";
    const ENC16_PUBLIC: &str = "HqQoNsJ3n_6waqVtE-VAZnHzBusBaHts8QUpBXevDEx8PT13RzgxNXoxSDVhLTJRaW1tazZsR0RRSjljV0JQWEVkT1ZTbEpEdWoxWHFQT1RZcDJSWHZXbEFDS2RtQ3B1ZU9TcFU3eFEtbENIUnRNVFh2VzRXR0hSYm5mUkh2LXZ2TTRFeHZBWGRXbUJCSV9iMkxiME5sZmFvSFRaYk9FR200NUlaTWNtZXVWZ1ZfcnJtMWVYZmJQNWRHMVRHLXZ4X1MycXpyUEZyRlIzUnw0MTkyMjY1OTcx";
    const ENC16_PUBLIC_OURS_ACCEPTED: &str = "WQobSVT__YPx2zPxiJTTq8RbkdH1Z-MVwuZTGmBWOLh8PT1BUjROMmFEa2FqeGNWMmdWdlYycFNXcjBQTEJaRHM0YU55dm5paFRJSXlhN3ktVzdUa0tYeE9ZallDMERhazlmcHotc1dxMElzenBMTmdhN0FhY0pKZzE5ZDFoWDdnNkcxR1lSRjRJMEVBVkRJN3JoaHNOT1VfOUNDV05LWmt2QWZwOHZFVTEyOEhfUUxiaG5XUHQ0a0hvOWVsQXh2R3NxUVFZVEdhX1lMMnw1MTkyMjY1OTcx";
    const ENC16_SID: u64 = 16;
    const ENC16_CREATED: i64 = 1_795_622_914_275_716_679;

    /// Server 3: 64 byte hash key, 32 byte block key (AES-256), configured
    /// backend "backend-1" (ids end in `=` padding here).
    const HK64: &[u8] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789ABCDEF";
    const BK32: &[u8] = b"0123456789ABCDEF0123456789abcdef";
    const ENC32_PRIVATE: &str = "MTc5NTYyMjkzMnxYOVpuZHJLcW5pclkyT0xnTWRJSjJGZkU5bUJrc3IzOFpmM2wzNWdKcVcwTkk3X0hyTlJiQnE3SnpqeVJLX2pkLVo0M2JMbXpGTjhUQU9Sdm80VkJTRWZVbm43T1oxc2xqYllLMU1YSEYwQ0ZJeU5qWXR5RjlST1hRa1V0b3hOSzQ0VEFVbVhkLWRRYXJWQ1YtbDg5ZmFnS1FHcXJpR01JaVRnQXEwV29sZUM4SXc9PXwcjO86OMJoM5iivqsrKOInH-B07vL4gD76K15i7oOqpg==";
    const ENC32_PUBLIC: &str = "LUQgM2wDEEYXnLelPZtxc5kW4s4aMxYpH51alcoPYxZ8PT1BOExVYmNucFJSMktEVkFTZUs3ZGJzRnV3NTBRZENLT1dNdUtza1pvVk1IdHhJOFdHYjVDTnNQSGNfb2U0MzNDajFxNnFkbk9JZkt6MVpEUVh6OWZ3Qk03UDJNblhYNXQ4dTNLcXM2M2t0YmdrenFpYmRkRTRUQTZBZmRYSUtZREJsU1NSVG9XSnpyZEJDcnNfQlZSTk1kTHFMN3d2Znc0ZFBkckhxZGFTMktMOTJ8MjM5MjI2NTk3MQ==";
    const ENC32_SID: u64 = 2;
    const ENC32_CREATED: i64 = 1_795_622_932_874_859_035;

    /// The gob bytes Go produced for `PLAIN_*` (sid 16, backend "compat").
    const PLAIN_GOB_HEX: &str = "3eff810301010d53657373696f6e49644461746101ff82000103010353696401060001074372656174656401ff840001094261636b656e644964010c00000010ff830501010454696d6501ff840000001eff820110010f010000000ee298fefe25afb57300000106636f6d70617400";

    struct Vector {
        hash_key: &'static [u8],
        block_key: &'static [u8],
        private: &'static str,
        public: &'static str,
        expected: SessionIdData,
    }

    fn vectors() -> Vec<Vector> {
        vec![
            Vector {
                hash_key: HK32,
                block_key: b"",
                private: PLAIN_PRIVATE,
                public: PLAIN_PUBLIC,
                expected: SessionIdData {
                    sid: PLAIN_SID,
                    created_unix_nanos: PLAIN_CREATED,
                    backend_id: "compat".into(),
                },
            },
            Vector {
                hash_key: HK32,
                block_key: BK16,
                private: ENC16_PRIVATE,
                public: ENC16_PUBLIC,
                expected: SessionIdData {
                    sid: ENC16_SID,
                    created_unix_nanos: ENC16_CREATED,
                    backend_id: "compat".into(),
                },
            },
            Vector {
                hash_key: HK64,
                block_key: BK32,
                private: ENC32_PRIVATE,
                public: ENC32_PUBLIC,
                expected: SessionIdData {
                    sid: ENC32_SID,
                    created_unix_nanos: ENC32_CREATED,
                    backend_id: "backend-1".into(),
                },
            },
        ]
    }

    fn codec(hash_key: &[u8], block_key: &[u8]) -> SessionIdCodec {
        SessionIdCodec::new(hash_key, block_key).expect("valid keys")
    }

    fn uncached(hash_key: &[u8], block_key: &[u8]) -> SessionIdCodec {
        SessionIdCodec::with_cache_capacity(hash_key, block_key, 0).expect("valid keys")
    }

    fn hex(s: &str) -> Vec<u8> {
        let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        s.chunks(2)
            .map(|c| u8::from_str_radix(std::str::from_utf8(c).expect("ascii"), 16).expect("hex"))
            .collect()
    }

    /// The `timestamp|value|mac` bytes of an id, plus its timestamp and IV.
    fn dissect(id: &str, public: bool, encrypted: bool) -> (i64, Option<[u8; IV_LEN]>, Vec<u8>) {
        let mut raw = go_base64_decode(id.as_bytes()).expect("base64");
        if public {
            raw.reverse();
        }
        let mut parts = raw.splitn(3, |&b| b == b'|');
        let ts = std::str::from_utf8(parts.next().expect("ts"))
            .expect("utf8")
            .parse()
            .expect("int");
        let value = go_base64_decode(parts.next().expect("value")).expect("base64");
        let iv = encrypted.then(|| {
            let mut iv = [0u8; IV_LEN];
            iv.copy_from_slice(&value[..IV_LEN]);
            iv
        });
        (ts, iv, value)
    }

    fn encode_exact(
        c: &SessionIdCodec,
        public: bool,
        d: &SessionIdData,
        ts: i64,
        iv: Option<[u8; IV_LEN]>,
    ) -> String {
        let name = if public {
            PUBLIC_SESSION_NAME
        } else {
            PRIVATE_SESSION_NAME
        };
        let mut raw = c.seal(name, d, ts, iv);
        if public {
            raw.reverse();
        }
        GO_URL_BASE64.encode(raw)
    }

    #[test]
    fn codec_is_send_sync() {
        fn check<T: Send + Sync>() {}
        check::<SessionIdCodec>();
    }

    #[test]
    fn decodes_go_ids() {
        for v in vectors() {
            for c in [
                codec(v.hash_key, v.block_key),
                uncached(v.hash_key, v.block_key),
            ] {
                assert_eq!(c.decode_private(v.private).expect("private"), v.expected);
                assert_eq!(c.decode_public(v.public).expect("public"), v.expected);
                // Cached path gives the same answer.
                assert_eq!(c.decode_private(v.private).expect("private"), v.expected);
                assert_eq!(c.decode_public(v.public).expect("public"), v.expected);
            }
        }
    }

    #[test]
    fn decodes_our_ids_that_go_accepted() {
        let c = codec(HK32, b"");
        assert_eq!(
            c.decode_public(PLAIN_PUBLIC_OURS_ACCEPTED)
                .expect("decode")
                .sid,
            PLAIN_SID
        );
        let c = codec(HK32, BK16);
        assert_eq!(
            c.decode_public(ENC16_PUBLIC_OURS_ACCEPTED)
                .expect("decode")
                .sid,
            ENC16_SID
        );
    }

    #[test]
    fn reproduces_go_ids_byte_for_byte() {
        // With Go's timestamp (and IV) our encoder must emit the identical
        // string: this pins gob layout, time encoding, CTR mode, MAC input,
        // base64 flavour and the public id reversal.
        for v in vectors() {
            let c = codec(v.hash_key, v.block_key);
            let encrypted = !v.block_key.is_empty();
            let (ts, iv, _) = dissect(v.private, false, encrypted);
            assert_eq!(encode_exact(&c, false, &v.expected, ts, iv), v.private);
            let (ts, iv, _) = dissect(v.public, true, encrypted);
            assert_eq!(encode_exact(&c, true, &v.expected, ts, iv), v.public);
        }
    }

    #[test]
    fn gob_matches_go() {
        let (_, _, value) = dissect(PLAIN_PRIVATE, false, false);
        assert_eq!(value, hex(PLAIN_GOB_HEX));
        let d = SessionIdData {
            sid: PLAIN_SID,
            created_unix_nanos: PLAIN_CREATED,
            backend_id: "compat".into(),
        };
        assert_eq!(gob_encode(&d), value);
        assert_eq!(gob_decode(&value).expect("gob"), d);
    }

    #[test]
    fn fresh_encodings_roundtrip() {
        let datas = [
            SessionIdData {
                sid: 1,
                created_unix_nanos: 1_700_000_000_123_456_789,
                backend_id: "compat".into(),
            },
            SessionIdData {
                sid: 0,
                created_unix_nanos: 0,
                backend_id: String::new(),
            },
            SessionIdData {
                sid: u64::MAX,
                created_unix_nanos: i64::MAX,
                backend_id: "b".repeat(300),
            },
            SessionIdData {
                sid: 127,
                created_unix_nanos: i64::MIN,
                backend_id: "bäckend-✓".into(),
            },
            SessionIdData {
                sid: 128,
                created_unix_nanos: -1,
                backend_id: "x".into(),
            },
            SessionIdData::new_now(42, "backend-1"),
        ];
        for block_key in [&b""[..], BK16, b"0123456789abcdef01234567", BK32] {
            let c = uncached(HK64, block_key);
            for d in &datas {
                let private = c.encode_private(d);
                let public = c.encode_public(d);
                assert_eq!(&c.decode_private(&private).expect("private"), d);
                assert_eq!(&c.decode_public(&public).expect("public"), d);
                // The kinds are not interchangeable.
                assert_eq!(
                    c.decode_public(&private).err(),
                    Some(SessionIdError::BadMac)
                );
                assert_eq!(
                    c.decode_private(&public).err(),
                    Some(SessionIdError::BadMac)
                );
                // Another hash key rejects the ids.
                let other = uncached(HK32, block_key);
                assert_eq!(
                    other.decode_private(&private).err(),
                    Some(SessionIdError::BadMac)
                );
            }
        }
    }

    #[test]
    fn encrypted_ids_differ_each_time() {
        let c = uncached(HK32, BK16);
        let d = SessionIdData::new_now(7, "compat");
        let (a, b) = (c.encode_public(&d), c.encode_public(&d));
        assert_ne!(a, b);
        assert_eq!(
            c.decode_public(&a).expect("a"),
            c.decode_public(&b).expect("b")
        );
    }

    #[test]
    fn public_ids_lead_with_the_mac() {
        let c = codec(HK32, b"");
        let d = SessionIdData::new_now(3, "compat");
        let private = go_base64_decode(c.encode_private(&d).as_bytes()).expect("b64");
        let public = go_base64_decode(c.encode_public(&d).as_bytes()).expect("b64");
        assert!(
            private[0].is_ascii_digit(),
            "private ids start with the timestamp"
        );
        // Reversed: ends with the (reversed) timestamp, starts with the MAC.
        assert!(public[public.len() - 1].is_ascii_digit());
        assert_eq!(public[public.len() - 1], private[0]);
    }

    #[test]
    fn block_key_lengths() {
        for n in [0usize, 16, 24, 32] {
            assert!(SessionIdCodec::new(HK32, &vec![b'k'; n]).is_ok(), "{n}");
        }
        for n in [1usize, 8, 15, 17, 31, 33, 64] {
            assert_eq!(
                SessionIdCodec::new(HK32, &vec![b'k'; n]).err(),
                Some(SessionIdError::InvalidBlockKeyLength(n))
            );
        }
        // Any hash key is accepted, like upstream (which only warns).
        assert!(SessionIdCodec::new(b"", b"").is_ok());
        assert!(SessionIdCodec::new(b"short", BK16).is_ok());
    }

    #[test]
    fn rejects_bad_input_with_clear_errors() {
        let c = codec(HK32, BK16);
        assert_eq!(c.decode_private("").err(), Some(SessionIdError::Empty));
        assert_eq!(c.decode_public("").err(), Some(SessionIdError::Empty));
        assert_eq!(
            c.decode_private("not base64!").err(),
            Some(SessionIdError::BadEncoding)
        );
        // Missing padding is an error, as with Go's URLEncoding.
        let unpadded = ENC32_PRIVATE.trim_end_matches('=');
        assert_eq!(
            uncached(HK64, BK32).decode_private(unpadded).err(),
            Some(SessionIdError::BadEncoding)
        );
        let no_separators = GO_URL_BASE64.encode(b"12345");
        assert_eq!(
            c.decode_private(&no_separators).err(),
            Some(SessionIdError::Malformed)
        );
        let long = "A".repeat(MAX_ENCODED_LEN + 4);
        assert_eq!(
            c.decode_private(&long).err(),
            Some(SessionIdError::TooLong(long.len()))
        );
        assert!(matches!(
            c.decode_public(&long),
            Err(SessionIdError::TooLong(_))
        ));
        // Wrong block key: the MAC is fine but the plaintext is garbage.
        let wrong_block = uncached(HK32, b"fedcba9876543210");
        assert!(matches!(
            wrong_block.decode_private(ENC16_PRIVATE),
            Err(SessionIdError::InvalidData(_))
        ));
        // Encrypted codec on a plaintext id: MAC ok, value too short or garbage.
        assert!(uncached(HK32, BK16).decode_private(PLAIN_PRIVATE).is_err());
    }

    #[test]
    fn authenticated_but_odd_contents() {
        let c = uncached(HK32, b"");
        let sign = |ts: &str, value: &[u8]| {
            let body = format!("{ts}|{}", GO_URL_BASE64.encode(value));
            let mut mac = c.mac.clone();
            mac.update(b"private-session|");
            mac.update(body.as_bytes());
            let mut raw = body.into_bytes();
            raw.push(b'|');
            raw.extend_from_slice(&mac.finalize().into_bytes());
            GO_URL_BASE64.encode(raw)
        };
        let good = gob_encode(&SessionIdData {
            sid: 1,
            created_unix_nanos: 5,
            backend_id: "b".into(),
        });
        assert_eq!(
            c.decode_private(&sign("x1", &good)).err(),
            Some(SessionIdError::BadTimestamp)
        );
        assert_eq!(
            c.decode_private(&sign("", &good)).err(),
            Some(SessionIdError::BadTimestamp)
        );
        assert_eq!(
            c.decode_private(&sign("-5", &good))
                .expect("negative ts is an int")
                .sid,
            1
        );
        assert!(matches!(
            c.decode_private(&sign("1", b"")),
            Err(SessionIdError::InvalidData(_))
        ));
        let enc = uncached(HK32, BK16);
        let sign_enc = |value: &[u8]| {
            let body = format!("1|{}", GO_URL_BASE64.encode(value));
            let mut mac = enc.mac.clone();
            mac.update(b"private-session|");
            mac.update(body.as_bytes());
            let mut raw = body.into_bytes();
            raw.push(b'|');
            raw.extend_from_slice(&mac.finalize().into_bytes());
            GO_URL_BASE64.encode(raw)
        };
        assert_eq!(
            enc.decode_private(&sign_enc(&[0u8; IV_LEN])).err(),
            Some(SessionIdError::DecryptionFailed)
        );
    }

    #[test]
    fn tolerates_newlines_like_go() {
        let c = uncached(HK32, b"");
        let mut id = PLAIN_PRIVATE.to_string();
        id.insert(10, '\n');
        id.insert(40, '\r');
        assert_eq!(c.decode_private(&id).expect("decode").sid, PLAIN_SID);
    }

    #[test]
    fn mutated_ids_never_panic_nor_decode_differently() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5e55_1011);
        const ALPHABET: &[u8] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=|+/ \n";
        for v in vectors() {
            let c = uncached(v.hash_key, v.block_key);
            for (id, public) in [(v.private, false), (v.public, true)] {
                let decode = |s: &str| {
                    if public {
                        c.decode_public(s)
                    } else {
                        c.decode_private(s)
                    }
                };
                for i in 0..id.len() {
                    // Truncations.
                    if let Ok(d) = decode(&id[..i]) {
                        assert_eq!(d, v.expected);
                    }
                    // Single character substitutions.
                    for _ in 0..3 {
                        let mut b = id.as_bytes().to_vec();
                        b[i] = ALPHABET[rng.gen_range(0..ALPHABET.len())];
                        if let Ok(s) = std::str::from_utf8(&b) {
                            // Only changes in ignored trailing bits may still decode.
                            if let Ok(d) = decode(s) {
                                assert_eq!(d, v.expected);
                            }
                        }
                    }
                }
                assert!(decode(&format!("{id}AAAA")).is_err());
            }
        }
        // Random strings.
        let c = uncached(HK32, BK16);
        for _ in 0..2000 {
            let len = rng.gen_range(0..400);
            let s: String = (0..len)
                .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
                .collect();
            assert!(c.decode_private(&s).is_err());
            assert!(c.decode_public(&s).is_err());
        }
    }

    #[test]
    fn gob_decoder_survives_garbage() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        let good = gob_encode(&SessionIdData {
            sid: 300,
            created_unix_nanos: 123,
            backend_id: "compat".into(),
        });
        for _ in 0..20_000 {
            let mut b = good.clone();
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..b.len());
                match rng.gen_range(0..3) {
                    0 => b[i] = rng.gen(),
                    1 => b.truncate(i),
                    _ => b.insert(i, rng.gen()),
                }
                if b.is_empty() {
                    break;
                }
            }
            let _ = gob_decode(&b);
        }
        for _ in 0..5_000 {
            let b: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
            let _ = gob_decode(&b);
        }
    }

    /// A gob stream as another Go process might emit it: different type ids,
    /// time definition first, an extra field, a V2 time with offset seconds.
    #[test]
    fn gob_decoder_accepts_other_type_ids_and_time_v2() {
        let (sid_id, time_id) = (90i64, 75i64);
        let mut out = Vec::new();
        let mut msg = Vec::new();
        put_int(&mut msg, -time_id);
        msg.push(5);
        msg.push(1);
        put_common_type(&mut msg, "Time", time_id);
        msg.extend_from_slice(&[0, 0]);
        put_message(&mut out, &msg);
        msg.clear();
        put_int(&mut msg, -sid_id);
        msg.push(3);
        msg.push(1);
        put_common_type(&mut msg, "SessionIdData", sid_id);
        msg.push(1);
        put_uint(&mut msg, 4);
        put_field_type(&mut msg, "Sid", GOB_UINT);
        put_field_type(&mut msg, "Extra", GOB_STRING);
        put_field_type(&mut msg, "Created", time_id);
        put_field_type(&mut msg, "BackendId", GOB_STRING);
        msg.extend_from_slice(&[0, 0]);
        put_message(&mut out, &msg);
        msg.clear();
        put_int(&mut msg, sid_id);
        msg.push(1);
        put_uint(&mut msg, 99_999);
        msg.push(1);
        put_string(&mut msg, b"ignored");
        msg.push(1);
        let mut t = time_marshal_binary(1_000_000_000_500).to_vec();
        t[0] = TIME_BINARY_V2;
        t[13..15].copy_from_slice(&60i16.to_be_bytes());
        t.push(30);
        put_string(&mut msg, &t);
        msg.push(0); // BackendId omitted (empty)
        put_message(&mut out, &msg);
        let d = gob_decode(&out).expect("decode");
        assert_eq!(
            d,
            SessionIdData {
                sid: 99_999,
                created_unix_nanos: 1_000_000_000_500,
                backend_id: String::new()
            }
        );
    }

    #[test]
    fn gob_int_encoding() {
        let mut b = Vec::new();
        put_uint(&mut b, 0);
        put_uint(&mut b, 127);
        put_uint(&mut b, 128);
        put_uint(&mut b, 256);
        put_uint(&mut b, u64::MAX);
        put_int(&mut b, -65);
        put_int(&mut b, 66);
        assert_eq!(b, hex("00 7f ff80 fe0100 f8ffffffffffffffff ff81 ff84"));
        let mut r = GobReader::new(&b);
        assert_eq!(r.uint().ok(), Some(0));
        assert_eq!(r.uint().ok(), Some(127));
        assert_eq!(r.uint().ok(), Some(128));
        assert_eq!(r.uint().ok(), Some(256));
        assert_eq!(r.uint().ok(), Some(u64::MAX));
        assert_eq!(r.int().ok(), Some(-65));
        assert_eq!(r.int().ok(), Some(66));
        assert!(r.is_empty());
        assert!(GobReader::new(&[0x80]).uint().is_err());
        assert!(GobReader::new(&[0xfe, 1]).uint().is_err());
    }

    #[test]
    fn cache_is_bounded_and_forgettable() {
        let c = SessionIdCodec::with_cache_capacity(HK32, b"", 64).expect("codec");
        let mut ids = Vec::new();
        for sid in 1..=1000u64 {
            let d = SessionIdData {
                sid,
                created_unix_nanos: 1,
                backend_id: "b".into(),
            };
            let id = c.encode_public(&d);
            assert_eq!(c.decode_public(&id).expect("decode").sid, sid);
            ids.push(id);
        }
        assert!(c.public_cache.len() <= 64, "{}", c.public_cache.len());
        // Evicted ids still decode (just not from the cache).
        assert_eq!(c.decode_public(&ids[0]).expect("decode").sid, 1);
        let last = ids.last().expect("ids");
        c.forget_public(last);
        assert_eq!(c.decode_public(last).expect("decode").sid, 1000);
        let private = c.encode_private(&SessionIdData::new_now(5, "b"));
        c.forget_private(&private);
        assert_eq!(c.private_cache.len(), 0);
        assert_eq!(c.decode_private(&private).expect("decode").sid, 5);
        assert_eq!(uncached(HK32, b"").public_cache.len(), 0);
    }

    #[test]
    fn aging_forgets_unused_decodes() {
        let c = SessionIdCodec::with_cache_capacity(HK32, b"", 1024).expect("codec");
        let used = c.encode_public(&SessionIdData::new_now(1, "b"));
        let unused = c.encode_public(&SessionIdData::new_now(2, "b"));
        c.decode_public(&used).expect("decode");
        c.decode_public(&unused).expect("decode");
        assert_eq!(c.public_cache.len(), 2);
        c.age_caches();
        // Used since: kept.
        c.decode_public(&used).expect("decode");
        c.age_caches();
        assert_eq!(c.public_cache.len(), 1);
        c.age_caches();
        c.age_caches();
        assert_eq!(c.public_cache.len(), 0);
        assert_eq!(c.decode_public(&unused).expect("decode").sid, 2);
    }

    #[test]
    fn debug_hides_keys() {
        let s = format!("{:?}", codec(HK32, BK16));
        assert!(!s.contains("0123"));
        assert!(s.contains("encrypted: true"));
    }
}
