//! Messages on the proxy protocol, in both directions.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = serde_json::from_slice::<proto::proxy::ProxyClientMessage>(data) {
        let _ = m.check_valid();
    }
    let _ = serde_json::from_slice::<proto::proxy::ProxyServerMessage>(data);
});
