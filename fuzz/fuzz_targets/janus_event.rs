//! What Janus sends: JSEPs, candidates and VideoRoom events.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<janus::Jsep>(data);
    let _ = serde_json::from_slice::<janus::IceCandidate>(data);
    let _ = serde_json::from_slice::<janus::ServerInfo>(data).map(|i| i.check_mcu_requirements());
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) {
        let event = janus::PluginEvent {
            plugin: janus::videoroom::PLUGIN.to_owned(),
            data: value.clone(),
            jsep: serde_json::from_value(value["jsep"].clone()).ok(),
            transaction: None,
        };
        let _ = janus::videoroom::VideoRoomEvent::parse(&event);
        if let Some(map) = value.as_object() {
            let _ = janus::videoroom::StreamSelection::from_payload(map);
        }
    }
});
