//! What the fake backend received: the recorded requests, and waiting
//! until the expected ones arrive.

use std::time::Duration;

use super::{FakeBackend, RecordedRequest};

impl FakeBackend {
    /// All requests so far, oldest first.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.shared.state.lock().requests.clone()
    }

    /// Requests of one kind, oldest first.
    pub fn requests_of(&self, kind: &str) -> Vec<RecordedRequest> {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.kind == kind)
            .cloned()
            .collect()
    }

    pub fn count(&self, kind: &str) -> usize {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.kind == kind)
            .count()
    }

    /// Backend requests whose checksum did not verify (should stay empty).
    pub fn checksum_failures(&self) -> Vec<RecordedRequest> {
        self.shared
            .state
            .lock()
            .requests
            .iter()
            .filter(|r| r.is_backend() && !r.checksum_ok)
            .cloned()
            .collect()
    }

    /// Forgets all recorded requests (e.g. after the setup phase of a test).
    pub fn clear_requests(&self) {
        self.shared.state.lock().requests.clear();
    }

    /// The oldest recorded request matching `pred`, waiting up to `timeout`
    /// for one to arrive; `None` on timeout (for "no such request" checks).
    pub async fn try_wait_for(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
        timeout: Duration,
    ) -> Option<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.recorded.subscribe();
        loop {
            // Mark the current version seen *before* looking, so a request
            // recorded after the look wakes us up.
            rx.borrow_and_update();
            let found = self
                .shared
                .state
                .lock()
                .requests
                .iter()
                .find(|r| pred(r))
                .cloned();
            if found.is_some() {
                return found;
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                // Sender lives in `shared`, which we hold; only the timeout ends this.
                _ => return None,
            }
        }
    }

    /// Like [`try_wait_for`](Self::try_wait_for) but panics (listing what was
    /// received) on timeout.
    pub async fn wait_for(
        &self,
        pred: impl Fn(&RecordedRequest) -> bool,
        timeout: Duration,
    ) -> RecordedRequest {
        match self.try_wait_for(pred, timeout).await {
            Some(r) => r,
            None => panic!(
                "FakeBackend: no matching request within {timeout:?}; received: {}",
                self.summary()
            ),
        }
    }

    /// The oldest request of `kind`, waiting for it if needed; panics on timeout.
    pub async fn wait_for_request(&self, kind: &str, timeout: Duration) -> RecordedRequest {
        match self.try_wait_for(|r| r.kind == kind, timeout).await {
            Some(r) => r,
            None => panic!(
                "FakeBackend: no {kind:?} request within {timeout:?}; received: {}",
                self.summary()
            ),
        }
    }

    /// Waits until at least `n` requests of `kind` were received and returns
    /// them all; panics on timeout.
    pub async fn wait_for_count(
        &self,
        kind: &str,
        n: usize,
        timeout: Duration,
    ) -> Vec<RecordedRequest> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut rx = self.shared.recorded.subscribe();
        loop {
            rx.borrow_and_update();
            let got = self.requests_of(kind);
            if got.len() >= n {
                return got;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                panic!(
                    "FakeBackend: expected {n} {kind:?} requests within {timeout:?}, got {}; received: {}",
                    got.len(),
                    self.summary()
                );
            }
        }
    }

    fn summary(&self) -> String {
        let state = self.shared.state.lock();
        let items: Vec<String> = state
            .requests
            .iter()
            .map(|r| format!("{} {} ({}) {}", r.method, r.path, r.kind, r.body))
            .collect();
        format!("[{}]", items.join(", "))
    }
}
