//! The proxy's sessions and clients over time: the once-a-second load and
//! bandwidth announcement, session expiry, and removing a session or a
//! client with everything it holds.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use proto::proxy::{EventProxyServerMessage, ProxyServerMessage};
use tracing::info;

use crate::session::ProxySession;
use crate::{ClientEntry, ProxyServer};

impl ProxyServer {
    pub(crate) fn sessions(&self) -> Vec<Arc<ProxySession>> {
        self.reg.lock().sessions.values().cloned().collect()
    }

    pub(crate) fn spawn_housekeeping(&self) {
        let weak = self.me.clone();
        let token = self.shutdown.token.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            let mut n: u64 = 0;
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(server) = weak.upgrade() else { return };
                server.update_load();
                n += 1;
                if n.is_multiple_of(10) {
                    server.expire_sessions();
                }
            }
        });
    }

    /// Load = Mbit/s of the bitrate caps of everything hosted (upstream
    /// 1.2.4 weighs by bandwidth too), so a screen share (2 Mbit/s) counts
    /// twice a camera, and each subscriber counts its publisher's rate.
    pub(crate) fn current_load(&self) -> i64 {
        let bits: u64 = self.reg.lock().clients.values().map(|c| c.bitrate).sum();
        bits.div_ceil(1024 * 1024) as i64
    }

    /// Use of the `[bandwidth]` limits (percent), if any is set: incoming
    /// counts the publishers' caps, outgoing the subscribers'.
    pub(crate) fn current_bandwidth(&self) -> Option<proto::proxy::EventProxyServerBandwidth> {
        let (limit_in, limit_out) = self.bandwidth_limits;
        if limit_in == 0 && limit_out == 0 {
            return None;
        }
        let (mut incoming, mut outgoing) = (0u64, 0u64);
        for c in self.reg.lock().clients.values() {
            if c.publisher {
                incoming += c.bitrate;
            } else {
                outgoing += c.bitrate;
            }
        }
        let pct = |used: u64, limit: u64| {
            (limit > 0).then(|| (used as f64 * 100.0 / limit as f64 * 1000.0).round() / 1000.0)
        };
        Some(proto::proxy::EventProxyServerBandwidth {
            incoming: pct(incoming, limit_in),
            outgoing: pct(outgoing, limit_out),
        })
    }

    pub(crate) fn update_load(&self) {
        let load = self.current_load();
        self.metrics.load.set(load);
        let bandwidth = self.current_bandwidth();
        let bandwidth_changed = {
            let mut last = self.bandwidth.lock();
            let changed = *last != bandwidth;
            *last = bandwidth;
            changed
        };
        if (self.load.swap(load, Ordering::SeqCst) == load && !bandwidth_changed)
            || self.is_draining()
        {
            return;
        }
        let msg = self.load_event();
        for s in self.sessions() {
            s.send(&msg);
        }
    }

    pub(crate) fn load_event(&self) -> ProxyServerMessage {
        ProxyServerMessage::event(EventProxyServerMessage {
            kind: "update-load".into(),
            load: self.load.load(Ordering::SeqCst),
            bandwidth: *self.bandwidth.lock(),
            ..Default::default()
        })
    }

    pub(crate) fn expire_sessions(&self) {
        let expired: Vec<Arc<ProxySession>> = self
            .reg
            .lock()
            .sessions
            .values()
            .filter(|s| s.is_expired())
            .cloned()
            .collect();
        for s in expired {
            info!(session = %s.id, "proxy session expired");
            self.delete_session(&s.id);
        }
    }

    pub(crate) fn delete_session(&self, id: &str) {
        self.end_remote_uses_of(id);
        let clients: Vec<(String, ClientEntry)> = {
            let mut reg = self.reg.lock();
            if reg.sessions.remove(id).is_none() {
                return;
            }
            let ids: Vec<String> = reg
                .clients
                .iter()
                .filter(|(_, c)| c.session == id)
                .map(|(k, _)| k.clone())
                .collect();
            ids.into_iter()
                .filter_map(|k| reg.clients.remove(&k).map(|c| (k, c)))
                .collect()
        };
        self.metrics.sessions.dec();
        for (_, c) in &clients {
            self.count_gone(c);
        }
        self.after_client_removal();
        tokio::spawn(async move {
            for (_, c) in clients {
                c.client.close().await;
            }
        });
    }

    pub(crate) fn count_gone(&self, c: &ClientEntry) {
        if let Some(guard) = c.remote.clone() {
            let remotes = self.remotes.clone();
            tokio::spawn(async move { remotes.release(&guard).await });
        }
        let labels = [c.client.stream_type().as_str()];
        if c.publisher {
            self.metrics.publishers.dec(&labels);
        } else {
            self.metrics.subscribers.dec(&labels);
        }
    }

    pub(crate) fn after_client_removal(&self) {
        if self.is_draining() && self.reg.lock().clients.is_empty() {
            self.clients_gone.notify_waiters();
        }
    }

    /// The MCU closed a client on its own (Janus hung up, room destroyed):
    /// true if it was still registered.
    pub(crate) fn forget_client(&self, id: &str) -> bool {
        let removed = self.reg.lock().clients.remove(id);
        match removed {
            Some(c) => {
                self.count_gone(&c);
                self.after_client_removal();
                true
            }
            None => false,
        }
    }
}
