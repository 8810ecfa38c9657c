//! Two "monitor" sessions that exchange numbered messages for the whole of a
//! fault test. Whatever the test does to the server around them, the check
//! at the end fails if a monitor lost a message, saw one out of order or
//! twice, received anything it did not expect, or was disconnected.

use crate::client::{recipient_session, TestClient};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use tokio::time::Instant;

const PEER_FAILED: &str = "the other monitor failed";

/// How much the pair exchanged, once checked.
#[derive(Clone, Copy, Debug)]
pub struct MonitorReport {
    /// Messages each monitor sent (and the other received, in order).
    pub a_to_b: u64,
    pub b_to_a: u64,
}

impl MonitorReport {
    pub fn total(&self) -> u64 {
        self.a_to_b + self.b_to_a
    }
}

/// A running pair; [`Monitors::finish`] stops and checks it.
pub struct Monitors {
    stop: Arc<AtomicBool>,
    a: JoinHandle<(TestClient, u64)>,
    b: JoinHandle<(TestClient, u64)>,
}

struct Side {
    me: TestClient,
    name: &'static str,
    peer: String,
    pace: Duration,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    peer_sent: Arc<AtomicU64>,
    barrier: Arc<Barrier>,
}

impl Side {
    fn check(&self, m: &Value, expected: u64) {
        let seq = m["message"]["data"]["monitor"].as_u64();
        assert_eq!(
            seq,
            Some(expected),
            "monitor {}: expected message {expected}, got {m}",
            self.name
        );
    }

    async fn run(mut self) -> (TestClient, u64) {
        let mut received = 0u64;
        let mut next = 0u64;
        while !self.stop.load(Ordering::Acquire) {
            let tick = Instant::now() + self.pace;
            self.me
                .send_message(recipient_session(&self.peer), json!({ "monitor": next }))
                .await;
            next += 1;
            self.sent.store(next, Ordering::Release);
            while let Some(m) = self
                .me
                .recv_timeout(tick.saturating_duration_since(Instant::now()))
                .await
            {
                self.check(&m, received);
                received += 1;
            }
        }
        // Both sides stopped sending: the peer's count is final.
        if tokio::time::timeout(Duration::from_secs(30), self.barrier.wait())
            .await
            .is_err()
        {
            panic!("{PEER_FAILED} (monitor {})", self.name);
        }
        let total = self.peer_sent.load(Ordering::Acquire);
        while received < total {
            match self.me.recv_timeout(Duration::from_secs(10)).await {
                Some(m) => {
                    self.check(&m, received);
                    received += 1;
                }
                None => panic!(
                    "monitor {}: only {received} of {total} messages arrived",
                    self.name
                ),
            }
        }
        self.me.expect_no_message(Duration::from_millis(50)).await;
        (self.me, next)
    }
}

impl Monitors {
    /// Start exchanging between `a` and `b` (both past hello, on the same
    /// or different servers), one message each way every `pace`.
    pub fn start(a: TestClient, b: TestClient, pace: Duration) -> Monitors {
        let a_id = a.session_id().expect("monitor a said hello").to_owned();
        let b_id = b.session_id().expect("monitor b said hello").to_owned();
        let stop = Arc::new(AtomicBool::new(false));
        let barrier = Arc::new(Barrier::new(2));
        let (a_sent, b_sent) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let side_a = Side {
            me: a,
            name: "a",
            peer: b_id,
            pace,
            stop: stop.clone(),
            sent: a_sent.clone(),
            peer_sent: b_sent.clone(),
            barrier: barrier.clone(),
        };
        let side_b = Side {
            me: b,
            name: "b",
            peer: a_id,
            pace,
            stop: stop.clone(),
            sent: b_sent,
            peer_sent: a_sent,
            barrier,
        };
        Monitors {
            stop,
            a: tokio::spawn(side_a.run()),
            b: tokio::spawn(side_b.run()),
        }
    }

    /// Stop, wait for everything in flight and check it; panics with the
    /// monitor's complaint otherwise. Returns the clients for further use.
    pub async fn finish(self) -> (MonitorReport, TestClient, TestClient) {
        self.stop.store(true, Ordering::Release);
        let results = [self.a.await, self.b.await];
        // Report the monitor that failed, not the one left waiting for it.
        let mut panics: Vec<_> = Vec::new();
        let mut ok = Vec::new();
        for r in results {
            match r {
                Ok(v) => ok.push(v),
                Err(e) => panics.push(e.into_panic()),
            }
        }
        if !panics.is_empty() {
            let first_real = panics.iter().position(|p| {
                let text = p
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| p.downcast_ref::<&str>().copied())
                    .unwrap_or("");
                !text.contains(PEER_FAILED)
            });
            std::panic::resume_unwind(panics.swap_remove(first_real.unwrap_or(0)));
        }
        let (b, b_sent) = ok.pop().expect("two monitors");
        let (a, a_sent) = ok.pop().expect("two monitors");
        (
            MonitorReport {
                a_to_b: a_sent,
                b_to_a: b_sent,
            },
            a,
            b,
        )
    }
}
