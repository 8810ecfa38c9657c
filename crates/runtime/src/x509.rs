//! The validity period of an X.509 certificate, read straight from its DER
//! encoding, so `check` can warn before a certificate expires without
//! pulling in a full X.509 parser for two dates.

use crate::dates::{date, days_from_civil};
use std::path::Path;

/// When a certificate becomes valid and when it stops being valid, in
/// seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

/// One DER element: its tag, and the content plus what follows it.
fn element(data: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = data.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

/// `UTCTime` (tag 0x17, `YYMMDDHHMMSSZ`) or `GeneralizedTime` (0x18,
/// `YYYYMMDDHHMMSSZ`), as certificates must encode them (RFC 5280 4.1.2.5).
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(text).ok()?;
    let digits = text.strip_suffix('Z')?;
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (year, rest) = match (tag, digits.len()) {
        (0x17, 12) => {
            let yy: i64 = digits[..2].parse().ok()?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        (0x18, 14) => (digits[..4].parse().ok()?, &digits[4..]),
        _ => return None,
    };
    let field = |i: usize| rest[i..i + 2].parse::<i64>().ok();
    let (month, day, hour, min, sec) = (field(0)?, field(2)?, field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || min > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month as u32, day as u32) * 86_400 + hour * 3600 + min * 60 + sec)
}

/// The validity of a DER-encoded certificate.
pub fn validity(der: &[u8]) -> Option<Validity> {
    let (0x30, cert, _) = element(der)? else {
        return None;
    };
    let (0x30, tbs, _) = element(cert)? else {
        return None;
    };
    let mut rest = tbs;
    // Optional explicit version [0].
    let (tag, _, after) = element(rest)?;
    if tag == 0xa0 {
        rest = after;
    }
    // serialNumber, signature, issuer.
    for expected in [0x02, 0x30, 0x30] {
        let (tag, _, after) = element(rest)?;
        if tag != expected {
            return None;
        }
        rest = after;
    }
    let (0x30, validity, _) = element(rest)? else {
        return None;
    };
    let (tag1, t1, after) = element(validity)?;
    let (tag2, t2, _) = element(after)?;
    Some(Validity {
        not_before: time(tag1, t1)?,
        not_after: time(tag2, t2)?,
    })
}

/// The validity of the first certificate in a PEM file (the server's own;
/// intermediates follow it).
pub fn pem_file_validity(path: &Path) -> Result<Validity, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let first = rustls_pemfile::certs(&mut data.as_slice())
        .next()
        .ok_or_else(|| format!("{}: no certificate found", path.display()))?
        .map_err(|e| format!("{}: {e}", path.display()))?;
    validity(first.as_ref())
        .ok_or_else(|| format!("{}: cannot read the validity dates", path.display()))
}

/// What `check` says about a certificate at `now`: `Err` when it cannot be
/// used, `Ok((false, text))` when it expires within `warn_days`.
pub fn judge(v: Validity, now: i64, warn_days: i64) -> Result<(bool, String), String> {
    if now < v.not_before {
        return Err(format!(
            "not valid before {} (is the clock right?)",
            date(v.not_before)
        ));
    }
    if now >= v.not_after {
        return Err(format!("expired on {}", date(v.not_after)));
    }
    let days = (v.not_after - now) / 86_400;
    let text = format!("valid until {} ({days} days)", date(v.not_after));
    Ok((days >= warn_days, text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        if content.len() < 0x80 {
            v.push(content.len() as u8);
        } else {
            v.push(0x82);
            v.extend_from_slice(&(content.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(content);
        v
    }

    /// A certificate skeleton with the given validity elements.
    fn cert(with_version: bool, not_before: Vec<u8>, not_after: Vec<u8>) -> Vec<u8> {
        let mut tbs = Vec::new();
        if with_version {
            tbs.extend(tlv(0xa0, &tlv(0x02, &[2])));
        }
        tbs.extend(tlv(0x02, &[0x01, 0x02]));
        tbs.extend(tlv(0x30, &tlv(0x06, &[0x2a, 0x86, 0x48])));
        tbs.extend(tlv(0x30, &[b'x'; 200])); // long-form length
        tbs.extend(tlv(0x30, &[not_before, not_after].concat()));
        tbs.extend(tlv(0x30, b"subject and the rest"));
        tlv(0x30, &[tlv(0x30, &tbs), tlv(0x30, b"sig")].concat())
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        let der = cert(
            true,
            tlv(0x17, b"240301120000Z"),
            tlv(0x18, b"20500101000000Z"),
        );
        let v = validity(&der).expect("parses");
        assert_eq!(date(v.not_before), "2024-03-01");
        assert_eq!(v.not_before % 86_400, 12 * 3600);
        assert_eq!(date(v.not_after), "2050-01-01");
        // Version 1 certificates have no [0] element; 19xx UTCTime.
        let der = cert(
            false,
            tlv(0x17, b"991231235959Z"),
            tlv(0x17, b"491231235959Z"),
        );
        let v = validity(&der).expect("parses");
        assert_eq!(date(v.not_before), "1999-12-31");
        assert_eq!(date(v.not_after), "2049-12-31");
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let bad_time = cert(true, tlv(0x17, b"24130112000Z"), tlv(0x17, b"xx"));
        assert_eq!(validity(&bad_time), None);
        let der = cert(
            true,
            tlv(0x17, b"240301120000Z"),
            tlv(0x17, b"250301120000Z"),
        );
        for cut in 0..der.len() {
            let _ = validity(&der[..cut]);
        }
    }

    #[test]
    fn judgement() {
        let day = 86_400;
        let v = Validity {
            not_before: 100 * day,
            not_after: 200 * day,
        };
        assert!(judge(v, 50 * day, 14)
            .unwrap_err()
            .contains("not valid before"));
        assert!(judge(v, 200 * day, 14)
            .unwrap_err()
            .starts_with("expired on 1970-07-20"));
        let (fine, text) = judge(v, 190 * day, 14).unwrap();
        assert!(!fine, "{text}");
        assert_eq!(text, "valid until 1970-07-20 (10 days)");
        assert!(judge(v, 150 * day, 14).unwrap().0);
    }
}
