//! Session and resume ids from clients: decoding must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let codec = proto::sessionid::SessionIdCodec::new(
        b"0123456789abcdef0123456789abcdef",
        b"fedcba9876543210",
    )
    .expect("keys");
    let _ = codec.decode_public(text);
    let _ = codec.decode_private(text);
});
