//! Polls a future only after its own wake-up.
//!
//! The connection loop selects over several futures, and every wake-up of
//! the task (most often: a frame was queued for the socket) used to poll all
//! of them again. Some are not cheap to poll for nothing: a cancellation
//! future takes its token's mutex and its `Notify`'s mutex on every poll, a
//! WebSocket read checks the socket's readiness and re-registers wakers. A
//! [`Gate`] hands the future a waker of its own and polls it again only when
//! that waker fired (or the future was ready last time, as a stream may have
//! buffered more).

use futures_util::task::AtomicWaker;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

struct Inner {
    /// The future's waker fired since it was last polled.
    woken: AtomicBool,
    /// The task that waits for the gated future.
    task: AtomicWaker,
}

impl Wake for Inner {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

pub(super) struct Gate {
    inner: Arc<Inner>,
    waker: Waker,
}

impl Gate {
    /// Open: the first poll goes through.
    pub(super) fn new() -> Gate {
        let inner = Arc::new(Inner {
            woken: AtomicBool::new(true),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(inner.clone());
        Gate { inner, waker }
    }

    /// Poll `poll` with the gate's waker if it fired since the last poll;
    /// `Pending` without polling otherwise.
    pub(super) fn poll<T>(
        &self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
    ) -> Poll<T> {
        self.inner.task.register(cx.waker());
        if !self.inner.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let r = poll(&mut Context::from_waker(&self.waker));
        if r.is_ready() {
            // Whoever polls next may find more without a new wake-up.
            self.inner.woken.store(true, Ordering::Release);
        }
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// Counts its polls; ready once `ready` is set, waking the last waker
    /// it was given when `fire` is called.
    #[derive(Default)]
    struct Probe {
        polls: AtomicUsize,
        ready: AtomicBool,
        waker: std::sync::Mutex<Option<Waker>>,
    }

    impl Probe {
        fn fire(&self) {
            self.ready.store(true, Ordering::SeqCst);
            if let Some(w) = self.waker.lock().unwrap().take() {
                w.wake();
            }
        }
        fn poll(&self, cx: &mut Context<'_>) -> Poll<()> {
            self.polls.fetch_add(1, Ordering::SeqCst);
            if self.ready.load(Ordering::SeqCst) {
                return Poll::Ready(());
            }
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct CountingWake(AtomicUsize);
    impl Wake for CountingWake {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn polls_only_after_its_own_wake() {
        let gate = Gate::new();
        let probe = Probe::default();
        let task = Arc::new(CountingWake(AtomicUsize::new(0)));
        let waker = Waker::from(task.clone());
        let mut cx = Context::from_waker(&waker);

        assert!(gate.poll(&mut cx, |cx| probe.poll(cx)).is_pending());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
        // Woken for something else: the gated future is not polled.
        for _ in 0..3 {
            assert!(gate.poll(&mut cx, |cx| probe.poll(cx)).is_pending());
        }
        assert_eq!(probe.polls.load(Ordering::SeqCst), 1);
        // Its own wake-up wakes the task and lets the next poll through.
        probe.fire();
        assert_eq!(task.0.load(Ordering::SeqCst), 1);
        assert!(gate.poll(&mut cx, |cx| probe.poll(cx)).is_ready());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 2);
        // After a ready poll the next one goes through too.
        assert!(gate.poll(&mut cx, |cx| probe.poll(cx)).is_ready());
        assert_eq!(probe.polls.load(Ordering::SeqCst), 3);
    }
}
