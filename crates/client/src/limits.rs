//! What large runs need from the operating system: enough file descriptors,
//! and enough local ports.

use std::net::{IpAddr, Ipv4Addr};

/// Connections per local source address before another one is used. The
/// kernel's ephemeral range here is 32768-60999 (28,232 ports), and other
/// processes hold some of them.
pub const CONNECTIONS_PER_SOURCE: usize = 25_000;

/// More connections than this to one loopback server need several source
/// addresses.
pub const SPREAD_ABOVE: usize = 28_000;

/// Raises the open-files soft limit as far as the hard limit allows and
/// returns the soft limit now in force (`None` if it cannot be read).
pub fn raise_nofile_limit() -> Option<u64> {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => Some(n),
        Err(_) => rlimit::getrlimit(rlimit::Resource::NOFILE)
            .ok()
            .map(|(soft, _)| soft),
    }
}

/// Source addresses to spread `total` connections to `target` over: empty
/// (let the kernel choose) unless the target is on IPv4 loopback and there
/// are more connections than one source address has ports. Then
/// 127.0.0.1, 127.0.0.2, ... which all reach the loopback server.
/// `forced` asks for that many addresses whatever the count (loopback only).
pub fn source_addresses(target: IpAddr, total: usize, forced: Option<usize>) -> Vec<IpAddr> {
    let loopback_v4 = matches!(target, IpAddr::V4(v4) if v4.is_loopback());
    if !loopback_v4 {
        return Vec::new();
    }
    let n = match forced {
        Some(n) => n,
        None if total <= SPREAD_ABOVE => return Vec::new(),
        None => total.div_ceil(CONNECTIONS_PER_SOURCE),
    }
    .clamp(1, 254);
    (1..=n as u8)
        .map(|last| IpAddr::V4(Ipv4Addr::new(127, 0, 0, last)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_runs_use_the_default_source() {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        assert!(source_addresses(lo, 100, None).is_empty());
        assert!(source_addresses(lo, SPREAD_ABOVE, None).is_empty());
        assert_eq!(source_addresses(lo, 100, Some(2)).len(), 2);
    }

    #[test]
    fn large_loopback_runs_spread() {
        let lo: IpAddr = Ipv4Addr::LOCALHOST.into();
        let s = source_addresses(lo, 60_000, None);
        assert_eq!(
            s,
            vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([127, 0, 0, 2]),
                IpAddr::from([127, 0, 0, 3])
            ]
        );
        // Not for remote servers: their replies could not reach 127.0.0.x.
        let remote: IpAddr = Ipv4Addr::new(10, 0, 0, 1).into();
        assert!(source_addresses(remote, 60_000, None).is_empty());
        assert!(source_addresses(remote, 60_000, Some(4)).is_empty());
    }

    #[test]
    fn nofile_limit_is_readable() {
        assert!(raise_nofile_limit().is_some_and(|n| n > 0));
    }
}
