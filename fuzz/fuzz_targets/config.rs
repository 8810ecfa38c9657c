//! Operator input: the INI parser with `${VAR}` expansion, and the values
//! read from it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(ini) = runtime::config::Ini::parse_with_env(text, |_| Some("x".to_owned())) else {
        return;
    };
    let _ = ini.get_int("app", "draintimeout", 0);
    let _ = ini.get_bool("backend", "allowall", false);
    let _ = runtime::net::parse_list(&ini.get_string("app", "trustedproxies", ""));
    let _ = hub::mcu::candidates::CandidateFilter::from_config(&ini);
    let _ = hub::geoip::GeoIp::from_config(&ini);
});
