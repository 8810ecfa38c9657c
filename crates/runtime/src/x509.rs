//! The validity period of an X.509 certificate (read with RustCrypto's
//! `x509-cert`), so `check` can warn before a certificate expires.

use crate::dates::date;
use std::path::Path;

/// When a certificate becomes valid and when it stops being valid, in
/// seconds since the Unix epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

fn unix(t: &x509_cert::time::Time) -> i64 {
    t.to_unix_duration().as_secs() as i64
}

/// The validity of a DER-encoded certificate.
pub fn validity(der: &[u8]) -> Option<Validity> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(der).ok()?;
    let v = &cert.tbs_certificate.validity;
    Some(Validity {
        not_before: unix(&v.not_before),
        not_after: unix(&v.not_after),
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

    /// Self-signed test certificates made with `openssl ca -startdate
    /// -enddate`: UTCTime and GeneralizedTime dates.
    const CERT_2024_2050: &str = "-----BEGIN CERTIFICATE-----\nMIIBHDCBwgIBATAKBggqhkjOPQQDAjAZMRcwFQYDVQQDDA5zaWduYWxpbmctdGVz\ndDAgFw0yNDAzMDExMjAwMDBaGA8yMDUwMDEwMTAwMDAwMFowGTEXMBUGA1UEAwwO\nc2lnbmFsaW5nLXRlc3QwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR3zfitdCgy\nDNsVp/34gvXXSQqv17t1XctsGh4gZRNW+qXdiOTad9M3Q8vj3JOfaLpOe2ORVMEm\nyKAETICifQroMAoGCCqGSM49BAMCA0kAMEYCIQDYPXNmq7s79xlpgAe82NFkilal\n4crX7Iu9wg6/WN++3wIhALadwoGCRRotM1jtPDQnzXE4WpJQN7CFcvRK62kM/hoY\n-----END CERTIFICATE-----\n";
    const CERT_1999_2049: &str = "-----BEGIN CERTIFICATE-----\nMIIBIjCByAIBAjAKBggqhkjOPQQDAjAdMRswGQYDVQQDDBJzaWduYWxpbmctdGVz\ndC1vbGQwHhcNOTkxMjMxMjM1OTU5WhcNNDkxMjMxMjM1OTU5WjAdMRswGQYDVQQD\nDBJzaWduYWxpbmctdGVzdC1vbGQwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNCAAR0\nvGWtufLRYa4IA4J5LrsUSPJhDzqcO/jzg0cBLF7qmcm8Z5tu5ePxsBzO0T9Ydet2\nqv4Bqlj66k+hsUlZm3oJMAoGCCqGSM49BAMCA0kAMEYCIQC9KpuhPzI7kwghzqau\nr4DCRhfSCB/2H14gTKXryp7RcAIhAO3ECu6v7BoMQGBq3dPmKFduIKH7g1GRuUeR\n9rhiHb13\n-----END CERTIFICATE-----\n";

    fn der(pem: &str) -> Vec<u8> {
        rustls_pemfile::certs(&mut pem.as_bytes())
            .next()
            .expect("a certificate")
            .expect("PEM")
            .to_vec()
    }

    #[test]
    fn reads_utc_and_generalized_times() {
        let v = validity(&der(CERT_2024_2050)).expect("parses");
        assert_eq!(date(v.not_before), "2024-03-01");
        assert_eq!(v.not_before % 86_400, 12 * 3600);
        assert_eq!(date(v.not_after), "2050-01-01");
        let v = validity(&der(CERT_1999_2049)).expect("parses");
        assert_eq!(date(v.not_before), "1999-12-31");
        assert_eq!(date(v.not_after), "2049-12-31");
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        assert_eq!(validity(b""), None);
        assert_eq!(validity(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let der = der(CERT_2024_2050);
        for cut in 0..der.len() {
            assert_eq!(validity(&der[..cut]), None);
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
