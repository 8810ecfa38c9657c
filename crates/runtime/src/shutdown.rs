//! Two-step shutdown: a token every task watches, and a tracker to wait for
//! them with a grace period.

use std::time::Duration;

pub use tokio_util::sync::CancellationToken;
pub use tokio_util::task::TaskTracker;

/// Everything a long-running component needs to stop cleanly.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    pub token: CancellationToken,
    pub tracker: TaskTracker,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// Ask every task to stop.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Wait for tracked tasks; gives up after `grace` and reports whether all ended.
    pub async fn wait(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}
