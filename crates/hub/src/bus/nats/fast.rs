//! Reading the envelopes our own servers write without parsing the
//! envelope around the message: `encode_envelope_from` always writes
//! `{"sendtime":"<time>","type":"message","message":<frame>,"id":"",
//! "x-from":"<id>","x-seq":<n>}` (without the line break), so the frame is
//! found by its fixed head and tail and only the frame itself is parsed.
//! Anything else (other types, upstream's envelopes, other spellings) goes
//! to the general decoder. The frame must parse as one complete JSON value,
//! so what is read here is exactly what the general decoder would read.

use crate::bus::{parse_rfc3339_nanos, BusMessage, BusPayload, Frame, OutMsg};

const HEAD: &[u8] = br#"{"sendtime":""#;
const AFTER_TIME: &[u8] = br#"","type":"message","message":"#;
const BEFORE_FROM: &[u8] = br#","id":"","x-from":""#;
const BEFORE_SEQ: &[u8] = br#"","x-seq":"#;

/// The message and its sender's order, or `None` when `data` is not laid
/// out as ours (or is broken): then the general decoder decides.
pub(super) fn decode_our_message(data: &[u8]) -> Option<(BusMessage, Option<(String, u64)>)> {
    let rest = data.strip_prefix(HEAD)?;
    let time_len = rest.iter().take(40).position(|&c| c == b'"')?;
    let time = std::str::from_utf8(&rest[..time_len]).ok()?;
    if !time
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b':' | b'.' | b'-' | b'+'))
    {
        return None;
    }
    let rest = rest[time_len..].strip_prefix(AFTER_TIME)?;
    // The tail, from the end: `}`, the counter's digits, `","x-seq":`, the
    // sender id (letters, digits, dashes), `,"id":"","x-from":"`.
    let rest = rest.strip_suffix(b"}")?;
    let digits = rest.iter().rev().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 20 {
        return None;
    }
    let seq: u64 = std::str::from_utf8(&rest[rest.len() - digits..])
        .ok()?
        .parse()
        .ok()?;
    let rest = rest[..rest.len() - digits].strip_suffix(BEFORE_SEQ)?;
    let from_len = rest
        .iter()
        .rev()
        .take(64)
        .take_while(|c| c.is_ascii_alphanumeric() || **c == b'-')
        .count();
    let from = std::str::from_utf8(&rest[rest.len() - from_len..]).ok()?;
    let frame = rest[..rest.len() - from_len].strip_suffix(BEFORE_FROM)?;
    // A server message is an object; no whitespace around it.
    if !(frame.starts_with(b"{") && frame.ends_with(b"}")) {
        return None;
    }
    let frame = std::str::from_utf8(frame).ok()?;
    // Fails on anything after the value, so `frame` is exactly the message.
    let msg = serde_json::from_str(frame).ok()?;
    let send_time = parse_rfc3339_nanos(time).unwrap_or_else(crate::bus::now_nanos);
    let order = (!from.is_empty() && seq != 0).then(|| (from.to_owned(), seq));
    // A copy, not a slice of `data` (see `decode_envelope_ordered`).
    let frame = Frame::from(frame.to_owned());
    let payload = BusPayload::Message(OutMsg::with_frame(msg, frame));
    Some((BusMessage { send_time, payload }, order))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{decode_envelope_ordered, encode_envelope_from};
    use proto::client::ServerMessage;

    fn parts(r: &(BusMessage, Option<(String, u64)>)) -> (i64, String, Option<(String, u64)>) {
        let BusPayload::Message(m) = &r.0.payload else {
            panic!("not a message")
        };
        (r.0.send_time, m.frame().to_string(), r.1.clone())
    }

    #[test]
    fn reads_ours_as_the_general_decoder_does() {
        let mut m = ServerMessage::bye("x");
        m.id = "with \"quotes\", \"id\":\"\" and \u{e9}}".into();
        let msg = BusMessage {
            send_time: 1_652_711_446_123_456_789,
            payload: BusPayload::Message(OutMsg::new(m)),
        };
        for order in [Some(("0123456789abcdef-b1", 7)), Some(("ab", 1)), None] {
            let data = encode_envelope_from(&msg, order);
            let general = decode_envelope_ordered(&data).expect("decodes");
            match (decode_our_message(&data), order) {
                (Some(fast), Some(_)) => assert_eq!(parts(&fast), parts(&general)),
                (None, None) => {}
                (got, _) => panic!("{:?} for {order:?}", got.map(|g| parts(&g))),
            }
        }
    }

    #[test]
    fn anything_else_is_left_to_the_general_decoder() {
        let ok = br#"{"sendtime":"2022-05-16T14:30:46.1Z","type":"message","message":{"type":"bye"},"id":"","x-from":"a-b1","x-seq":3}"#;
        assert!(decode_our_message(ok).is_some());
        let cases: [&[u8]; 8] = [
            // Two values where the frame should be.
            br#"{"sendtime":"2022-05-16T14:30:46.1Z","type":"message","message":{"type":"bye"},"x":{},"id":"","x-from":"a-b1","x-seq":3}"#,
            br#"{"sendtime":"2022-05-16T14:30:46.1Z","type":"message","message":{"type":"bye"} ,"id":"","x-from":"a-b1","x-seq":3} "#,
            br#"{"sendtime":"2022-05-16T14:30:46.1Z","type":"room","message":{"type":"bye"},"id":"","x-from":"a-b1","x-seq":3}"#,
            br#"{"sendtime":"2022\"05","type":"message","message":{"type":"bye"},"id":"","x-from":"a-b1","x-seq":3}"#,
            br#"{"sendtime":"2022-05-16T14:30:46.1Z","type":"message","message":{"type":"bye"},"id":"","x-from":"a\"b","x-seq":3}"#,
            br#"{"sendtime":"2022-05-16T14:30:46.1Z","type":"message","message":{"type":"bye"},"id":"","x-from":"a","x-seq":99999999999999999999999}"#,
            br#"{"sendtime":"2022-05-16T14:30:46.1Z","type":"message","message":{"type":"bye","id":"","x-from":"a","x-seq":3}"#,
            b"",
        ];
        for c in cases {
            assert!(
                decode_our_message(c).is_none(),
                "{}",
                String::from_utf8_lossy(c)
            );
        }
    }
}
