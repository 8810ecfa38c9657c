//! Properties over many generated inputs (proptest, in the normal test
//! run): session ids round-trip and cannot be forged by editing them, and
//! the parsers that see network input never panic.

use hub::mcu::candidates::CandidateFilter;
use proptest::prelude::*;
use proto::sessionid::{SessionIdCodec, SessionIdData};

fn codec() -> SessionIdCodec {
    SessionIdCodec::new(b"0123456789abcdef0123456789abcdef", b"fedcba9876543210")
        .expect("valid keys")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn session_ids_round_trip(
        sid in 1u64..u64::MAX,
        created in 0i64..4_000_000_000_000_000_000,
        backend in "[a-z0-9._-]{1,24}",
    ) {
        let c = codec();
        let d = SessionIdData { sid, created_unix_nanos: created, backend_id: backend };
        let public = c.encode_public(&d);
        let private = c.encode_private(&d);
        prop_assert_eq!(c.decode_public(&public).ok(), Some(d.clone()));
        prop_assert_eq!(c.decode_private(&private).ok(), Some(d.clone()));
        // A public id is no private id and the other way round.
        prop_assert!(c.decode_private(&public).is_err());
        prop_assert!(c.decode_public(&private).is_err());
    }

    #[test]
    fn edited_session_ids_are_refused(
        sid in 1u64..u64::MAX,
        pos in 0.1f64..0.9,
        replacement in proptest::char::range('A', 'z'),
    ) {
        let c = codec();
        let d = SessionIdData { sid, created_unix_nanos: 1_700_000_000_000_000_000, backend_id: "b".into() };
        let public = c.encode_public(&d);
        let i = ((public.len() as f64) * pos) as usize;
        let original = public.as_bytes()[i] as char;
        prop_assume!(original != replacement && replacement.is_ascii_alphanumeric());
        let mut forged: Vec<char> = public.chars().collect();
        forged[i] = replacement;
        let forged: String = forged.into_iter().collect();
        prop_assert!(c.decode_public(&forged).is_err(), "{} decoded", forged);
    }

    #[test]
    fn decoding_arbitrary_ids_never_panics(id in ".{0,400}") {
        let c = codec();
        let _ = c.decode_public(&id);
        let _ = c.decode_private(&id);
    }

    #[test]
    fn parsing_arbitrary_client_messages_never_panics(text in ".{0,300}") {
        let _ = proto::client::parse_client_message(&text);
    }

    #[test]
    fn parsing_json_shaped_client_messages_never_panics(
        kind in "(hello|room|message|control|internal|transient|bye|x)",
        body in "[{}\\[\\]\":,a-z0-9 ]{0,120}",
    ) {
        let text = format!("{{\"id\":\"1\",\"type\":\"{kind}\",\"{kind}\":{body}}}");
        if let Ok(mut m) = proto::client::parse_client_message(&text) {
            let _ = m.check_valid();
        }
    }

    #[test]
    fn sdp_and_candidate_checks_never_panic(text in "(v=0\\r\\n)?[a-z]=[ -~]{0,40}(\\r\\n[a-z]=[ -~]{0,40}){0,8}") {
        let _ = hub::mcu::sdp::media_types(&text);
        let f = CandidateFilter::default();
        let _ = f.is_filtered(&text);
        let _ = f.filter_sdp(&text);
    }
}
