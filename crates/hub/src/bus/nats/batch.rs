//! Several envelopes in one NATS message (ours, between our own servers).
//!
//! What the NATS task finds queued for session and user subjects at one
//! moment goes out as one message on [`BATCH_SUBJECT`] instead of one
//! message per envelope: `nats-server` and both NATS clients then handle one
//! message where they handled dozens under load. Nothing waits for a batch
//! to fill: a publish alone in the queue goes out alone, unchanged.
//!
//! Layout, after the header line `x-batch 1\n`, per envelope:
//! `<subject> <length>\n<envelope>`, the envelope being exactly what the
//! subject would carry on its own (upstream's JSON with our `x-from`/`x-seq`).
//! Subjects contain no whitespace (see `check_subject`), so the line is
//! unambiguous.

use bytes::{BufMut, Bytes, BytesMut};

/// The subject batches travel on; every node of ours subscribes it.
pub const BATCH_SUBJECT: &str = "cluster.batch";

pub(super) const HEADER: &[u8] = b"x-batch 1\n";

/// Largest batch built (well below `nats-server`'s default 1 MB payload limit).
pub(super) const MAX_BATCH_BYTES: usize = 256 * 1024;

/// Bytes an envelope takes in a batch: its line and itself.
pub(super) fn item_len(subject: &str, envelope: &[u8]) -> usize {
    // "<subject> <length>\n": a length has at most 20 digits.
    subject.len() + 22 + envelope.len()
}

/// A batch being built.
pub(super) struct BatchWriter {
    buf: BytesMut,
    count: usize,
}

impl BatchWriter {
    pub(super) fn new() -> BatchWriter {
        let mut buf = BytesMut::with_capacity(4096);
        buf.put_slice(HEADER);
        BatchWriter { buf, count: 0 }
    }

    pub(super) fn push(&mut self, subject: &str, envelope: &[u8]) {
        use std::io::Write;
        let mut w = (&mut self.buf).writer();
        // Writing to memory cannot fail.
        let _ = writeln!(w, "{subject} {}", envelope.len());
        self.buf.put_slice(envelope);
        self.count += 1;
    }

    pub(super) fn count(&self) -> usize {
        self.count
    }

    pub(super) fn len(&self) -> usize {
        self.buf.len()
    }

    pub(super) fn finish(self) -> Bytes {
        self.buf.freeze()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BatchError {
    #[error("not a batch of a known version")]
    Header,
    #[error("malformed item line at byte {0}")]
    Line(usize),
    #[error("item at byte {0} longer than the batch")]
    Truncated(usize),
}

/// The `(subject, envelope)` items of a batch, as slices of `payload` (no
/// copy). Items before a malformed one are returned with the error.
pub fn split_batch(payload: &Bytes) -> (Vec<(Bytes, Bytes)>, Option<BatchError>) {
    let mut items = Vec::new();
    let Some(rest) = payload.strip_prefix(HEADER) else {
        return (items, Some(BatchError::Header));
    };
    let mut pos = payload.len() - rest.len();
    while pos < payload.len() {
        // A subject line is short; do not scan a whole corrupt payload.
        let window = &payload[pos..payload.len().min(pos + 1024)];
        let Some(nl) = window.iter().position(|&c| c == b'\n') else {
            return (items, Some(BatchError::Line(pos)));
        };
        let line = &window[..nl];
        let parsed = line
            .iter()
            .rposition(|&c| c == b' ')
            .filter(|&sp| sp > 0)
            .and_then(|sp| {
                let len = std::str::from_utf8(&line[sp + 1..]).ok()?.parse().ok()?;
                Some((sp, len))
            });
        let Some((sp, len)) = parsed else {
            return (items, Some(BatchError::Line(pos)));
        };
        let body = pos + nl + 1;
        let Some(end) = body.checked_add(len).filter(|&e| e <= payload.len()) else {
            return (items, Some(BatchError::Truncated(pos)));
        };
        items.push((payload.slice(pos..pos + sp), payload.slice(body..end)));
        pos = end;
    }
    (items, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_come_back_as_written() {
        let mut w = BatchWriter::new();
        w.push("session.abc", br#"{"a":"x y\n"}"#);
        w.push("user.dXNlcg==|b1", b"");
        w.push("session.z", b"{}");
        assert_eq!(w.count(), 3);
        let bytes = w.finish();
        let (items, err) = split_batch(&bytes);
        assert_eq!(err, None);
        let got: Vec<(&[u8], &[u8])> = items.iter().map(|(s, e)| (&s[..], &e[..])).collect();
        assert_eq!(
            got,
            [
                (&b"session.abc"[..], &br#"{"a":"x y\n"}"#[..]),
                (b"user.dXNlcg==|b1", b""),
                (b"session.z", b"{}"),
            ]
        );
    }

    #[test]
    fn bad_batches_are_errors_not_panics() {
        let cases: [&[u8]; 7] = [
            b"",
            b"x-batch 2\nsession.a 2\n{}",
            b"x-batch 1\nsession.a 3\n{}",
            b"x-batch 1\nsession.a\n{}",
            b"x-batch 1\n 2\n{}",
            b"x-batch 1\nsession.a 99999999999999999999999\n{}",
            b"x-batch 1\nsession.a 18446744073709551615\n{}",
        ];
        for c in cases {
            let (items, err) = split_batch(&Bytes::from_static(c));
            assert!(items.is_empty() && err.is_some(), "{c:?}");
        }
        // What came before a broken item is kept.
        let (items, err) = split_batch(&Bytes::from_static(b"x-batch 1\ns.a 2\n{}s.b 5\n{}"));
        assert_eq!(items.len(), 1);
        assert_eq!(err, Some(BatchError::Truncated(18)));
        let long = [b"x-batch 1\n".as_slice(), &[b'a'; 5000]].concat();
        assert!(matches!(
            split_batch(&Bytes::from(long)).1,
            Some(BatchError::Line(10))
        ));
    }
}
