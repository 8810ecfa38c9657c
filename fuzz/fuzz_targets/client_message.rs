//! A client's WebSocket text frame: parsing, validation and the MCU data
//! shape must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(mut msg) = proto::client::parse_client_message(text) {
        let _ = msg.check_valid();
        if let Some(m) = &msg.message {
            if let Some(d) = &m.data {
                let _ = serde_json::from_str::<proto::client::MessageData>(d.get());
            }
        }
    }
    let _ = hub::mcu::sdp::media_types(text);
    let _ = hub::mcu::candidates::CandidateFilter::default().filter_sdp(text);
});
