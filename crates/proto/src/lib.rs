//! Wire types of every protocol the signaling server speaks, and nothing else.
//!
//! Field names, optionality and nesting follow the upstream Go server at commit
//! 11fa78b exactly, because Nextcloud Talk clients and the Talk PHP app depend on
//! them. Pass-through payloads (`data`, `properties`, `user`, ...) are kept as raw
//! JSON so the server never re-encodes what it only forwards.
//!
//! This crate has no I/O and no async runtime: it is shared by the hub, the
//! binaries and (later) the proxy and the benchmark client.

pub mod backend;
pub mod client;
pub mod cluster;
pub mod proxy;
pub mod sessionid;

pub use serde_json::value::RawValue;

/// A raw JSON fragment kept byte for byte as the peer sent it.
pub type Raw = Box<RawValue>;

/// Build a raw JSON fragment from any serialisable value.
pub fn to_raw<T: serde::Serialize + ?Sized>(value: &T) -> Raw {
    // Serialising our own in-memory values cannot fail: they contain no maps
    // with non-string keys and no failing Serialize impls.
    serde_json::value::to_raw_value(value).unwrap_or_else(|_| raw_null())
}

/// The JSON literal `null` as a raw fragment.
pub fn raw_null() -> Raw {
    RawValue::from_string("null".to_owned()).expect("null is valid JSON")
}

/// True when a raw fragment is absent, empty or the literal `null`.
pub fn raw_is_empty(raw: &Option<Raw>) -> bool {
    match raw {
        None => true,
        Some(r) => {
            let s = r.get().trim();
            s.is_empty() || s == "null"
        }
    }
}
