//! Reading a client's text frame: the nesting limit first, then serde.

use super::ClientMessage;

/// Deepest JSON nesting accepted from clients (Go's decoder limit).
pub const MAX_JSON_DEPTH: usize = 10_000;

/// Errors of [`parse_client_message`].
#[derive(Debug)]
pub enum ParseError {
    TooDeep,
    Json(serde_json::Error),
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParseError::TooDeep => write!(f, "exceeded max depth of {MAX_JSON_DEPTH}"),
            ParseError::Json(e) => e.fmt(f),
        }
    }
}

/// Nesting depth of a JSON text, counting brackets outside strings.
pub fn json_depth(text: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in text {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

/// Decode a client message the way Go's `encoding/json` does: nesting is
/// limited, and a repeated key keeps its last value (serde's derive would
/// refuse the message).
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ParseError> {
    // Depth over the limit needs at least that many bytes of brackets.
    if text.len() > MAX_JSON_DEPTH && json_depth(text.as_bytes()) > MAX_JSON_DEPTH {
        return Err(ParseError::TooDeep);
    }
    match serde_json::from_str::<ClientMessage>(text) {
        Ok(m) => Ok(m),
        Err(e) if e.to_string().starts_with("duplicate field") => {
            // Rare path: normalise through a map (last key wins), then decode again.
            let v: serde_json::Value = serde_json::from_str(text).map_err(ParseError::Json)?;
            let normal = serde_json::to_string(&v).map_err(ParseError::Json)?;
            serde_json::from_str(&normal).map_err(ParseError::Json)
        }
        Err(e) => Err(ParseError::Json(e)),
    }
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn repeated_keys_keep_the_last_value() {
        let m =
            parse_client_message(r#"{"id":"d1","type":"hello","type":"room","room":{}}"#).unwrap();
        assert_eq!(m.kind, "room");
        assert_eq!(m.id, "d1");
    }

    #[test]
    fn nesting_is_limited() {
        let deep = format!(
            r#"{{"type":"message","message":{{"recipient":{{"type":"room"}},"data":{}{}}}}}"#,
            "[".repeat(10_001),
            "]".repeat(10_001)
        );
        assert!(matches!(
            parse_client_message(&deep),
            Err(ParseError::TooDeep)
        ));
        let ok = format!(
            r#"{{"type":"message","message":{{"recipient":{{"type":"room"}},"data":{}{}}}}}"#,
            "[".repeat(100),
            "]".repeat(100)
        );
        assert!(parse_client_message(&ok).is_ok());
        assert_eq!(json_depth(br#"{"a":"[[[[","b":[1,{"c":"\"{"}]}"#), 3);
    }
}
