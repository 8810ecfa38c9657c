//! Filtering of ICE candidates that clients send for the MCU (upstream
//! 2.0.4, `[mcu] allowedcandidates` / `blockedcandidates`).
//!
//! Janus connects to every candidate a client names. Without a filter a
//! client could make Janus send STUN checks into the networks around it; the
//! blocked list stops that. The allowed list wins over the blocked list, so
//! an operator can block `10.0.0.0/8` and still allow the office LAN.
//! Candidates without a usable IP address (mDNS `.local` names, `0.0.0.0`,
//! garbage) are dropped always: Janus could not use them anyway.

use runtime::net::{contains_any, IpNet};
use std::net::IpAddr;

#[derive(Clone, Debug, Default)]
pub struct CandidateFilter {
    allowed: Vec<IpNet>,
    blocked: Vec<IpNet>,
}

impl CandidateFilter {
    pub fn new(allowed: Vec<IpNet>, blocked: Vec<IpNet>) -> CandidateFilter {
        CandidateFilter { allowed, blocked }
    }

    /// `[mcu] allowedcandidates` and `blockedcandidates` (addresses or
    /// networks, comma or space separated).
    pub fn from_config(ini: &runtime::config::Ini) -> Result<CandidateFilter, String> {
        let list = |key: &str| {
            let v = ini.get_string("mcu", key, "");
            runtime::net::parse_list(&v)
                .map_err(|bad| format!("[mcu] {key}: {bad:?} is not an IP address or network"))
        };
        Ok(CandidateFilter::new(
            list("allowedcandidates")?,
            list("blockedcandidates")?,
        ))
    }

    /// Whether the candidate (an `a=candidate` value, with or without the
    /// `a=`/`candidate:` prefix) must not reach Janus. An empty candidate
    /// (end of candidates) passes.
    pub fn is_filtered(&self, candidate: &str) -> bool {
        let c = candidate.trim();
        let c = c.strip_prefix("a=").unwrap_or(c);
        if c.is_empty() {
            return false;
        }
        let c = c.strip_prefix("candidate:").unwrap_or(c);
        // foundation component transport priority address port typ type ...
        let Some(address) = c.split_ascii_whitespace().nth(4) else {
            return true;
        };
        let Ok(ip) = address.parse::<IpAddr>() else {
            return true;
        };
        let ip = runtime::net::canonical(ip);
        if ip.is_unspecified() {
            return true;
        }
        if contains_any(&self.allowed, ip) {
            return false;
        }
        contains_any(&self.blocked, ip)
    }

    /// Removes filtered `a=candidate` lines from an SDP; `None` when nothing
    /// was removed.
    pub fn filter_sdp(&self, sdp: &str) -> Option<String> {
        let mut out = String::with_capacity(sdp.len());
        let mut removed = false;
        for line in sdp.split_inclusive('\n') {
            let bare = line.trim_end_matches(['\r', '\n']);
            if let Some(value) = bare.strip_prefix("a=candidate:") {
                if self.is_filtered(value) {
                    removed = true;
                    continue;
                }
            }
            out.push_str(line);
        }
        removed.then_some(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn filter(allowed: &str, blocked: &str) -> CandidateFilter {
        CandidateFilter::new(
            runtime::net::parse_list(allowed).unwrap(),
            runtime::net::parse_list(blocked).unwrap(),
        )
    }

    #[test]
    fn allowed_wins_over_blocked() {
        let f = filter("10.1.0.0/16", "10.0.0.0/8, 192.168.0.0/16");
        let c = |ip: &str| format!("candidate:1 1 udp 2122260223 {ip} 54321 typ host");
        assert!(f.is_filtered(&c("10.2.3.4")));
        assert!(!f.is_filtered(&c("10.1.3.4")));
        assert!(f.is_filtered(&c("192.168.1.1")));
        assert!(!f.is_filtered(&c("8.8.8.8")));
        assert!(!f.is_filtered(&format!("a={}", c("8.8.8.8"))));
    }

    #[test]
    fn unusable_addresses_are_dropped() {
        let f = CandidateFilter::default();
        assert!(f.is_filtered("candidate:1 1 udp 1 abcd-1234.local 5000 typ host"));
        assert!(f.is_filtered("candidate:1 1 udp 1 0.0.0.0 5000 typ host"));
        assert!(f.is_filtered("candidate:1 1 udp"));
        assert!(f.is_filtered("garbage"));
        assert!(!f.is_filtered(""));
        assert!(!f.is_filtered("candidate:1 1 udp 1 ::1 5000 typ host"));
    }

    #[test]
    fn sdp_lines_are_removed() {
        let f = filter("", "10.0.0.0/8");
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n\
                   a=candidate:1 1 udp 1 10.0.0.1 5000 typ host\r\n\
                   a=candidate:2 1 udp 1 127.0.0.1 5000 typ host\r\na=mid:0\r\n";
        let out = f.filter_sdp(sdp).unwrap();
        assert!(!out.contains("10.0.0.1"));
        assert!(out.contains("127.0.0.1"));
        assert!(out.ends_with("a=mid:0\r\n"));
        assert_eq!(f.filter_sdp(&out), None);
    }
}
