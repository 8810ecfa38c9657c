//! Which senders this node hears on NATS, and whether all of them read
//! batches (`batch.rs`): a server of an older version (or upstream's)
//! subscribes every session subject but not `cluster.batch`, so
//! batches are only sent while every other node is known to read them.
//!
//! A node tells it by its sender id (`x-from`, random per process): ours
//! end in [`READS_BATCHES`]. Every node reports on `cluster.nodes` at least
//! once per presence interval, so a node that has been connected for an
//! interval and a second (after it started or after a reconnect) has heard
//! all others; one that fell silent for three intervals is gone (the hub
//! forgets its room members then too).
//! Upstream's envelopes carry no sender id: hearing one stops batching too.
//! (Upstream's servers send no reports, so a silent one goes unnoticed: our
//! servers and upstream's do not share one NATS, see docs/migration.md.)

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// End of the sender id of a node that reads batches (version 1).
pub const READS_BATCHES: &str = "-b1";

/// How often every node reports at the least (`[nats] presenceinterval`),
/// until told otherwise.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);

pub(super) struct Peers {
    inner: Mutex<Inner>,
}

struct Inner {
    interval: Duration,
    /// Since when the connection is up (`None`: down).
    connected_since: Option<Instant>,
    /// Sender id ("" for envelopes without one) -> last heard, reads batches.
    heard: HashMap<String, (Instant, bool), foldhash::fast::RandomState>,
}

impl Peers {
    pub(super) fn new() -> Peers {
        Peers {
            inner: Mutex::new(Inner {
                interval: DEFAULT_INTERVAL,
                connected_since: None,
                heard: HashMap::default(),
            }),
        }
    }

    pub(super) fn set_interval(&self, interval: Duration) {
        self.inner.lock().interval = interval;
    }

    /// The connection came up (`true`) or went down. After a reconnect the
    /// reports missed meanwhile must be heard again before batching.
    pub(super) fn connected(&self, up: bool, now: Instant) {
        self.inner.lock().connected_since = up.then_some(now);
    }

    /// Envelopes arrived from these senders (`None`: without a sender id).
    pub(super) fn heard<'a>(&self, senders: impl Iterator<Item = Option<&'a str>>, now: Instant) {
        let mut inner = self.inner.lock();
        for from in senders {
            let from = from.unwrap_or("");
            match inner.heard.get_mut(from) {
                Some(entry) => entry.0 = now,
                None => {
                    let reads = from.ends_with(READS_BATCHES);
                    inner.heard.insert(from.to_owned(), (now, reads));
                }
            }
        }
    }

    /// Whether batches may be sent now: connected long enough that every
    /// live node was heard (see the module docs), and every node heard
    /// within the last three intervals reads them. Forgets nodes silent
    /// longer.
    pub(super) fn all_read_batches(&self, now: Instant) -> bool {
        let mut inner = self.inner.lock();
        let interval = inner.interval;
        let settle = interval + Duration::from_secs(1);
        let settled = inner
            .connected_since
            .is_some_and(|t| now.saturating_duration_since(t) > settle);
        if !settled {
            return false;
        }
        inner
            .heard
            .retain(|_, (t, _)| now.saturating_duration_since(*t) <= interval * 3);
        inner.heard.values().all(|(_, reads)| *reads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_only_when_settled_and_every_sender_reads_them() {
        let p = Peers::new();
        p.set_interval(Duration::from_secs(5));
        let t0 = Instant::now();
        assert!(!p.all_read_batches(t0), "not connected");
        p.connected(true, t0);
        p.heard([Some("aa-b1")].into_iter(), t0);
        assert!(
            !p.all_read_batches(t0 + Duration::from_secs(1)),
            "not settled"
        );
        assert!(
            !p.all_read_batches(t0 + Duration::from_secs(5)),
            "not an interval and a second yet"
        );
        let t1 = t0 + Duration::from_secs(7);
        assert!(p.all_read_batches(t1));
        // An older node (plain sender id) or upstream (none) stops it ...
        p.heard([Some("0123456789abcdef")].into_iter(), t1);
        assert!(!p.all_read_batches(t1));
        // ... until silent for three intervals.
        let t2 = t1 + Duration::from_secs(16);
        p.heard([Some("aa-b1")].into_iter(), t2);
        assert!(p.all_read_batches(t2));
        p.heard([None].into_iter(), t2);
        assert!(!p.all_read_batches(t2));
        // A reconnect waits for an interval and a second.
        let t3 = t2 + Duration::from_secs(20);
        p.heard([Some("aa-b1")].into_iter(), t3);
        p.connected(false, t3);
        assert!(!p.all_read_batches(t3));
        p.connected(true, t3);
        assert!(!p.all_read_batches(t3 + Duration::from_secs(5)));
        assert!(p.all_read_batches(t3 + Duration::from_secs(7)));
    }
}
