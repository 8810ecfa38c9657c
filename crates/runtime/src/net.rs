//! IP networks (CIDR) for access lists: `[stats] allowed_ips` and
//! `[app] trustedproxies`.

use std::net::IpAddr;

/// An address with a prefix length; a plain address is a /32 or /128.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    /// Parse `1.2.3.4`, `10.0.0.0/8`, `::1` or `fd00::/8`.
    pub fn parse(s: &str) -> Option<IpNet> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(IpNet { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u32::MAX << (32 - u32::from(self.prefix))
                };
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = if self.prefix == 0 {
                    0
                } else {
                    u128::MAX << (128 - u32::from(self.prefix))
                };
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

/// IPv4-mapped IPv6 addresses compare as IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// A comma-separated list of networks; unparsable entries are returned as errors.
pub fn parse_list(value: &str) -> Result<Vec<IpNet>, String> {
    crate::config::split_list(value, ',')
        .iter()
        .map(|s| IpNet::parse(s).ok_or_else(|| s.clone()))
        .collect()
}

/// Loopback and private ranges: where a reverse proxy in front of the server
/// usually is.
pub fn local_networks() -> Vec<IpNet> {
    [
        "127.0.0.0/8",
        "10.0.0.0/8",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "169.254.0.0/16",
        "::1/128",
        "fc00::/7",
        "fe80::/10",
    ]
    .iter()
    .filter_map(|s| IpNet::parse(s))
    .collect()
}

/// Whether any network of the list contains `ip`.
pub fn contains_any(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|n| n.contains(ip))
}

/// `[stats] allowed_ips`: addresses or CIDR networks, default 127.0.0.1 and
/// ::1. The error names the entry that is neither.
pub fn stats_allowed(ini: &crate::config::Ini) -> Result<Vec<IpNet>, String> {
    let v = ini.get_string("stats", "allowed_ips", "");
    if v.trim().is_empty() {
        return Ok(parse_list("127.0.0.1, ::1").unwrap_or_default());
    }
    parse_list(&v).map_err(|bad| format!("{bad:?} is not an IP address or network"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_matching() {
        let n = IpNet::parse("10.1.0.0/16").unwrap();
        assert!(n.contains("10.1.2.3".parse().unwrap()));
        assert!(!n.contains("10.2.0.1".parse().unwrap()));
        assert!(IpNet::parse("::ffff:10.1.2.3").is_some());
        assert!(n.contains("::ffff:10.1.9.9".parse().unwrap()));
        let v6 = IpNet::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert_eq!(IpNet::parse("1.2.3.4"), IpNet::parse("1.2.3.4/32"));
        assert!(IpNet::parse("1.2.3.4/33").is_none());
        assert!(IpNet::parse("nonsense").is_none());
        assert!(IpNet::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert_eq!(parse_list("1.2.3.4, 10.0.0.0/8").unwrap().len(), 2);
        assert_eq!(parse_list("1.2.3.4, x").unwrap_err(), "x");
        assert!(contains_any(
            &local_networks(),
            "192.168.1.1".parse().unwrap()
        ));
        assert!(!contains_any(&local_networks(), "8.8.8.8".parse().unwrap()));
    }
}

/// Logs a refused statistics request (`/status`, `/metrics`, ...) with a
/// hint naming `[stats] allowed_ips`, once per address and minute so a
/// scraper at the wrong address cannot flood the log.
#[derive(Debug, Default)]
pub struct StatsRefusals {
    /// Address -> when it was last logged. Plain mutex, never held across
    /// an await.
    last: parking_lot::Mutex<std::collections::HashMap<IpAddr, std::time::Instant>>,
}

impl StatsRefusals {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(60);

    /// Records a refusal of `ip`; returns whether it was logged.
    pub fn refused(&self, ip: IpAddr, what: &str) -> bool {
        let now = std::time::Instant::now();
        {
            let mut last = self.last.lock();
            if last
                .get(&ip)
                .is_some_and(|t| now.duration_since(*t) < Self::EVERY)
            {
                return false;
            }
            if last.len() > 1024 {
                last.retain(|_, t| now.duration_since(*t) < Self::EVERY);
            }
            last.insert(ip, now);
        }
        tracing::warn!(
            peer = %ip,
            "refused {what} to {ip}: the address is not in [stats] allowed_ips (add it there to allow it)"
        );
        true
    }
}
