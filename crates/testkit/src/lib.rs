//! Test-only helpers for end-to-end tests of the signaling server.
//!
//! The crate deliberately implements the *peer side* of every protocol the
//! server speaks without depending on any crate of ours (`proto`, `hub`, ...):
//! tests built on it assert raw wire JSON (`serde_json::Value`), so a bug in
//! our own serde types cannot cancel itself out by being used on both ends.
//!
//! What is here:
//! * [`FakeBackend`] — a fake Nextcloud server: answers the signaling
//!   server's `auth`/`room`/`ping`/`session` requests and the capabilities
//!   query, verifies and records the checksum headers, lets a test override
//!   answers (including slow or broken ones), and sends signed
//!   backend → signaling requests (`/api/v1/room/<roomid>`).
//! * [`TestClient`] — a WebSocket client for `/spreed` with `expect_*` helpers
//!   that time out instead of hanging, plus `hello`/`room`/`message` helpers.
//! * [`NatsServer`], [`ChildGuard`], [`TempDir`], [`free_port`] — guards that
//!   start real processes for tests and clean them up in `Drop`.
//! * [`janus::Janus`] — a real Janus gateway (generated config, loopback
//!   only) and [`webrtc::WebRtcPeer`], a real WebRTC peer for media tests.
//! * [`Monitors`] — two sessions exchanging numbered messages during a fault
//!   test; the final check fails on any loss, reordering or disconnect.
//! * [`eventually`] and [`assert_eventually!`] for conditions that become true
//!   asynchronously.
//!
//! A typical test (the signaling server under test listens on `signaling`):
//!
//! ```no_run
//! # use serde_json::json;
//! # use testkit::{spreed_url, FakeBackend, TestClient};
//! # async fn demo(signaling: std::net::SocketAddr) {
//! let backend = FakeBackend::start("secret").await;
//! let mut alice = TestClient::connect(&spreed_url(signaling)).await;
//! let hello = alice.hello_user(&backend.backend_url(), "alice").await;
//! assert_eq!(hello["hello"]["userid"], "alice");
//! let room = alice.join_room("room1", "talk-session-1").await;
//! assert_eq!(room["room"]["roomid"], "room1");
//! let req = backend.wait_for_request("room", testkit::DEFAULT_TIMEOUT).await;
//! assert!(req.checksum_ok);
//! let resp = backend
//!     .send_room_request(&format!("http://{signaling}/"), "room1",
//!         &json!({"type": "message", "message": {"data": {"x": 1}}}))
//!     .await;
//! assert_eq!(resp.status, 200);
//! alice.expect_event("room", "message").await;
//! # }
//! ```
//!
//! Everything panics with a descriptive message instead of returning errors
//! where that makes tests shorter; everything that waits has a timeout
//! (default [`DEFAULT_TIMEOUT`]) so no test can hang.

#![forbid(unsafe_code)]

mod backend;
mod certs;
mod checksum;
mod client;
pub mod dns;
mod etcd;
mod http;
pub mod janus;
pub mod jwt;
pub mod mmdb;
mod monitor;
mod process;
pub mod webrtc;

use std::future::Future;
use std::time::Duration;

pub use backend::{FakeBackend, Handler, RecordedRequest, Reply};
pub use certs::self_signed_cert;
pub use checksum::{
    checksum, internal_token, random_hex, HEADER_BACKEND, HEADER_CHECKSUM, HEADER_RANDOM,
};
pub use client::{
    recipient_room, recipient_session, recipient_user, spreed_url, CloseInfo, Incoming, TestClient,
};
pub use etcd::{EtcdServer, EtcdTls};
pub use http::{raw_http, raw_request, signed_room_request, HttpResponse, RawRequest};
pub use jwt::{hello_claims, sign_hmac, unix_now, TokenKey};
pub use monitor::{MonitorReport, Monitors};
pub use process::{
    free_port, listens_on, wait_for_port, ChildGuard, DeadPort, NatsServer, TempDir,
};

/// Re-exported so tests can build raw WebSocket frames without naming the
/// tungstenite crate themselves.
pub use tokio_tungstenite::tungstenite::Message as WsMessage;

/// Default time any `recv`/`expect_*`/`wait_for` helper waits before failing.
///
/// Long enough for a loaded CI machine, short enough that a broken test fails
/// quickly instead of hanging.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Polls `cond` until it yields `true` or `timeout` has passed.
///
/// Returns whether the condition became true. Each evaluation is itself bounded
/// by the remaining time, so a condition that blocks cannot stall the test.
/// Used for state that changes asynchronously (e.g. "the server has removed the
/// session") where there is no message to wait for.
pub async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, cond()).await {
            Ok(true) => return true,
            Ok(false) => {}
            Err(_) => return false,
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return false;
        }
        let pause = Duration::from_millis(10).min(deadline - now);
        tokio::time::sleep(pause).await;
    }
}

/// Asserts that an (async) condition becomes true within a timeout.
///
/// `assert_eventually!(cond)` waits up to [`DEFAULT_TIMEOUT`];
/// `assert_eventually!(timeout, cond)` waits up to `timeout`. `cond` is an
/// expression evaluated inside an `async` block, so it may use `.await`; it is
/// re-evaluated every 10 ms. It may only borrow its surroundings immutably.
#[macro_export]
macro_rules! assert_eventually {
    ($timeout:expr, $cond:expr $(,)?) => {{
        let timeout: ::std::time::Duration = $timeout;
        let ok = $crate::eventually(timeout, || async { $cond }).await;
        assert!(
            ok,
            "condition did not become true within {:?}: {}",
            timeout,
            stringify!($cond)
        );
    }};
    ($cond:expr $(,)?) => {
        $crate::assert_eventually!($crate::DEFAULT_TIMEOUT, $cond)
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn eventually_succeeds_and_times_out() {
        let n = Arc::new(AtomicUsize::new(0));
        let n2 = n.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            n2.store(3, Ordering::SeqCst);
        });
        assert_eventually!(n.load(Ordering::SeqCst) == 3);
        assert_eventually!(Duration::from_secs(1), n.load(Ordering::SeqCst) == 3);

        let start = std::time::Instant::now();
        assert!(!eventually(Duration::from_millis(50), || async { false }).await);
        assert!(start.elapsed() < Duration::from_secs(2));

        // A condition that never finishes is cut off by the timeout as well.
        let hang = eventually(Duration::from_millis(50), || async {
            std::future::pending::<()>().await;
            true
        });
        assert!(!hang.await);
    }
}
