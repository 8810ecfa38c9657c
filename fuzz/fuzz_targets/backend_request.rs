//! The body of a backend request from Nextcloud (`/api/v1/room/<id>`).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = serde_json::from_slice::<proto::backend::BackendServerRoomRequest>(data);
});
