//! Replay protection for the backend API.
//!
//! Nextcloud signs each request to `/api/v1/room/…` with a checksum over
//! a fresh 64-character random (`Spreed-Signaling-Random`) and the body.
//! The checksum proves who sent it, not when: a request captured on the
//! way (a log, a proxy, a shared network) could be posted again and would
//! be carried out again. The random is never reused by Nextcloud, so a
//! random seen before, within [`WINDOW`], marks a replay.
//!
//! Each backend keeps the randoms of its accepted requests for [`WINDOW`],
//! at most [`MAX_PER_BACKEND`] of them (the oldest go first beyond that, so
//! memory stays bounded even under a flood of valid requests: about 40
//! bytes each). Only 64-bit keyed hashes are kept, not the randoms.
//!
//! In a cluster, the node that accepted a request tells the others its
//! random (`cluster.random`), so a replay sent to another node is refused
//! there too once that news arrived (well under a millisecond on a LAN; a
//! replay racing the original to two nodes at the same instant could
//! still pass on both).

use parking_lot::Mutex;
use std::collections::{HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::time::{Duration, Instant};

/// How long a random is remembered.
pub const WINDOW: Duration = Duration::from_secs(10 * 60);

/// Randoms remembered per backend, at most (Nextcloud would need more than
/// 160 requests per second for ten minutes to reach it).
pub const MAX_PER_BACKEND: usize = 100_000;

#[derive(Default)]
struct Seen {
    hashes: HashSet<u64, foldhash::fast::FixedState>,
    /// In the order they were seen, to forget them again.
    order: VecDeque<(Instant, u64)>,
}

impl Seen {
    fn forget_old(&mut self, now: Instant, max: usize) {
        while let Some(&(at, h)) = self.order.front() {
            if now.duration_since(at) < WINDOW && self.order.len() < max {
                break;
            }
            self.order.pop_front();
            self.hashes.remove(&h);
        }
        if self.order.is_empty() && self.order.capacity() > 64 {
            // A burst is over: give its memory back.
            self.order = VecDeque::new();
            self.hashes = HashSet::default();
        }
    }
}

/// The randoms seen per backend.
pub struct ReplayGuard {
    seen: Mutex<HashMap<String, Seen>>,
    hasher: foldhash::quality::RandomState,
    max: usize,
}

impl Default for ReplayGuard {
    fn default() -> Self {
        Self::with_max(MAX_PER_BACKEND)
    }
}

impl ReplayGuard {
    pub fn with_max(max: usize) -> Self {
        ReplayGuard {
            seen: Mutex::new(HashMap::new()),
            hasher: foldhash::quality::RandomState::default(),
            max: max.max(1),
        }
    }

    /// Remember `random` for `backend`. False if it was seen before within
    /// the window: the request is a replay.
    pub fn check_and_record(&self, backend: &str, random: &str, now: Instant) -> bool {
        let h = self.hasher.hash_one(random);
        let mut seen = self.seen.lock();
        let s = match seen.get_mut(backend) {
            Some(s) => s,
            None => seen.entry(backend.to_owned()).or_default(),
        };
        s.forget_old(now, self.max);
        if !s.hashes.insert(h) {
            return false;
        }
        s.order.push_back((now, h));
        true
    }

    /// Randoms remembered for `backend` now.
    pub fn len(&self, backend: &str) -> usize {
        self.seen.lock().get(backend).map_or(0, |s| s.order.len())
    }

    pub fn is_empty(&self, backend: &str) -> bool {
        self.len(backend) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_random_is_accepted_once_per_backend() {
        let g = ReplayGuard::default();
        let now = Instant::now();
        assert!(g.check_and_record("nc1", "r1", now));
        assert!(!g.check_and_record("nc1", "r1", now));
        assert!(g.check_and_record("nc2", "r1", now), "backends are apart");
        assert!(g.check_and_record("nc1", "r2", now));
    }

    #[test]
    fn randoms_are_forgotten_after_the_window() {
        let g = ReplayGuard::default();
        let t0 = Instant::now();
        assert!(g.check_and_record("nc1", "r1", t0));
        let later = t0 + WINDOW - Duration::from_secs(1);
        assert!(!g.check_and_record("nc1", "r1", later));
        assert!(g.check_and_record("nc1", "r1", t0 + WINDOW + Duration::from_secs(1)));
    }

    #[test]
    fn memory_is_bounded() {
        let g = ReplayGuard::with_max(100);
        let now = Instant::now();
        for i in 0..1000 {
            assert!(g.check_and_record("nc1", &format!("r{i}"), now));
        }
        assert_eq!(g.len("nc1"), 100);
        // The newest are still known, the oldest forgotten.
        assert!(!g.check_and_record("nc1", "r999", now));
        assert!(g.check_and_record("nc1", "r0", now));
    }
}
