//! Brute-force protection for secrets a client may try to guess: backend-API
//! checksums and resume ids. Each failure from an address is remembered for
//! 30 minutes; the answer to a failure is delayed (100 ms, doubling, at most
//! 25 s), and after 10 failures the address is refused outright. IPv6
//! clients are grouped by /64, since one host usually owns a whole /64.

use parking_lot::Mutex;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

pub const ACTION_BACKEND_ROOM: &str = "backend-room";
pub const ACTION_RESUME: &str = "hello-resume";

const MAX_ATTEMPTS: usize = 10;
const WINDOW: Duration = Duration::from_secs(30 * 60);
const BASE_DELAY: Duration = Duration::from_millis(100);
const MAX_DELAY: Duration = Duration::from_secs(25);

/// Refusal after too many failures.
#[derive(Debug, thiserror::Error)]
#[error("too many failed attempts from this address")]
pub struct TooManyRequests;

#[derive(Default)]
pub struct Throttler {
    failures: Mutex<HashMap<(String, &'static str), VecDeque<Instant>>>,
}

impl std::fmt::Debug for Throttler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Throttler").finish()
    }
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64.
pub fn client_key(ip: &str) -> String {
    match ip.parse::<IpAddr>() {
        Ok(IpAddr::V6(v6)) if v6.to_ipv4_mapped().is_none() => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        Ok(IpAddr::V6(v6)) => v6
            .to_ipv4_mapped()
            .map(|v4| v4.to_string())
            .unwrap_or_default(),
        _ => ip.to_owned(),
    }
}

impl Throttler {
    pub fn new() -> Throttler {
        Throttler::default()
    }

    /// Refuse an address that failed too often recently.
    pub fn check(&self, ip: &str, action: &'static str) -> Result<(), TooManyRequests> {
        self.check_at(ip, action, Instant::now())
    }

    fn check_at(
        &self,
        ip: &str,
        action: &'static str,
        now: Instant,
    ) -> Result<(), TooManyRequests> {
        let mut map = self.failures.lock();
        let key = (client_key(ip), action);
        let Some(list) = map.get_mut(&key) else {
            return Ok(());
        };
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            list.pop_front();
        }
        if list.is_empty() {
            map.remove(&key);
            return Ok(());
        }
        if list.len() >= MAX_ATTEMPTS {
            return Err(TooManyRequests);
        }
        Ok(())
    }

    /// Record a failure; returns how long to wait before answering it.
    pub fn failed(&self, ip: &str, action: &'static str) -> Duration {
        self.failed_at(ip, action, Instant::now())
    }

    fn failed_at(&self, ip: &str, action: &'static str, now: Instant) -> Duration {
        let mut map = self.failures.lock();
        let list = map.entry((client_key(ip), action)).or_default();
        while list
            .front()
            .is_some_and(|t| now.duration_since(*t) > WINDOW)
        {
            list.pop_front();
        }
        list.push_back(now);
        // Bounded: past the limit the address is refused before failing again.
        while list.len() > MAX_ATTEMPTS * 2 {
            list.pop_front();
        }
        let n = list.len() as u32;
        BASE_DELAY
            .saturating_mul(1u32 << (n - 1).min(16))
            .min(MAX_DELAY)
    }

    /// Forget failures older than the window (housekeeping).
    pub fn cleanup(&self, now: Instant) {
        self.failures.lock().retain(|_, list| {
            while list
                .front()
                .is_some_and(|t| now.duration_since(*t) > WINDOW)
            {
                list.pop_front();
            }
            !list.is_empty()
        });
    }

    pub fn tracked(&self) -> usize {
        self.failures.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_then_refuse() {
        let t = Throttler::new();
        let now = Instant::now();
        let delays: Vec<u64> = (0..10)
            .map(|_| t.failed_at("192.0.2.1", ACTION_RESUME, now).as_millis() as u64)
            .collect();
        assert_eq!(&delays[..5], &[100, 200, 400, 800, 1600]);
        assert_eq!(delays[9], 25_000, "capped");
        assert!(t.check_at("192.0.2.1", ACTION_RESUME, now).is_err());
        assert!(
            t.check_at("192.0.2.1", ACTION_BACKEND_ROOM, now).is_ok(),
            "per action"
        );
        assert!(
            t.check_at("192.0.2.2", ACTION_RESUME, now).is_ok(),
            "per address"
        );
        let later = now + WINDOW + Duration::from_secs(1);
        assert!(
            t.check_at("192.0.2.1", ACTION_RESUME, later).is_ok(),
            "forgotten after the window"
        );
        t.cleanup(later);
        assert_eq!(t.tracked(), 0);
    }

    #[test]
    fn ipv6_is_grouped_by_64() {
        assert_eq!(
            client_key("2001:db8:1:2:aaaa::1"),
            client_key("2001:db8:1:2:bbbb::2")
        );
        assert_ne!(client_key("2001:db8:1:2::1"), client_key("2001:db8:1:3::1"));
        assert_eq!(client_key("::ffff:192.0.2.1"), "192.0.2.1");
        let t = Throttler::new();
        let now = Instant::now();
        for i in 0..10 {
            t.failed_at(&format!("2001:db8::{i}"), ACTION_RESUME, now);
        }
        assert!(t.check_at("2001:db8::ffff", ACTION_RESUME, now).is_err());
    }
}
