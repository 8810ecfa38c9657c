//! State shared by all clients of one run (single-threaded).

use std::cell::{Cell, OnceCell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::Duration;

use hdrhistogram::Histogram;
use proto::sessionid::SessionIdCodec;
use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::args::{Options, Scenario};
use crate::ledger::Ledger;
use crate::stats::{self, Latency};

/// Where the run is. Writers send only in `Run`; readers expect the server
/// to close connections only in `Close`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    Setup,
    Run,
    Drain,
    Close,
}

/// A ready client, as the other clients see it.
#[derive(Debug)]
pub struct Peer {
    pub index: u32,
    pub public_id: String,
    /// False once the connection broke or the server closed it.
    pub alive: Cell<bool>,
    /// Flood: wake the writer when its open messages drop below this (0: no).
    pub wake_below: Cell<usize>,
    /// Wakes the writer (credit returned, or the connection died).
    pub wake: Notify,
}

impl Peer {
    pub fn new(index: u32, public_id: String) -> Peer {
        Peer {
            index,
            public_id,
            alive: Cell::new(true),
            wake_below: Cell::new(0),
            wake: Notify::new(),
        }
    }
}

/// One server to connect to.
#[derive(Clone, Debug)]
pub struct Target {
    pub addr: SocketAddr,
    /// `ws://host:port/spreed`, with the host as given on the command line.
    pub url: String,
    /// Local addresses to spread connections over (empty: kernel's choice).
    pub sources: Vec<IpAddr>,
}

/// Plain counters (one thread, so `Cell`s).
#[derive(Debug, Default)]
pub struct Counters {
    pub hellos_sent: Cell<u64>,
    pub hellos_ok: Cell<u64>,
    pub setup_done: Cell<u64>,
    pub setup_failed: Cell<u64>,
    /// Connections that ended before the run was over.
    pub dropped: Cell<u64>,
    pub server_errors: Cell<u64>,
    pub server_byes: Cell<u64>,
    pub write_errors: Cell<u64>,
    /// `message`s whose data is not from this run's senders.
    pub foreign: Cell<u64>,
    /// Events, room answers and other frames the load does not count.
    pub other: Cell<u64>,
    pub unparsable: Cell<u64>,
    /// Flood windows that waited `STALL` for any arrival.
    pub stalls: Cell<u64>,
    /// Paced senders that fell more than 100 ms behind their schedule.
    pub behind: Cell<u64>,
}

/// After set-up: who is there, and who shares a room with whom.
#[derive(Debug, Default)]
pub struct Directory {
    pub peers: Vec<Option<Rc<Peer>>>,
    /// Indices of the clients that completed set-up.
    pub ready: Vec<u32>,
    /// `room`: the ready members of each client's room, the client excluded.
    pub room_others: Vec<Rc<[u32]>>,
}

pub struct World {
    pub opts: Options,
    /// Time base of the `t` field in message payloads.
    pub base: Instant,
    pub auth_url: String,
    pub targets: Vec<Target>,
    /// Set with `-derive-ids`: public ids are derived from private ids.
    pub codec: Option<SessionIdCodec>,
    /// Random tag of this run, used in room names and Talk session ids.
    pub tag: String,
    /// Padding appended to every payload.
    pub pad: String,
    pub ledger: RefCell<Ledger>,
    pub latency: RefCell<Latency>,
    pub connect_latency: RefCell<Histogram<u64>>,
    pub hello_latency: RefCell<Histogram<u64>>,
    /// Hello latencies of the current second (setup timeline).
    pub hello_interval: RefCell<Histogram<u64>>,
    pub counters: Counters,
    /// Ready clients, by index, until the directory is built.
    pub peers: RefCell<Vec<Option<Rc<Peer>>>>,
    pub directory: OnceCell<Directory>,
    pub tasks: RefCell<Vec<JoinHandle<()>>>,
    /// First set-up errors, for the report.
    pub setup_errors: RefCell<Vec<String>>,
    /// Message types outside the protocol this client knows, logged once each.
    pub unknown_types: RefCell<Vec<String>>,
    /// Signalled whenever a client's set-up finished (either way).
    pub setup_progress: tokio::sync::Notify,
    phase: watch::Sender<Phase>,
    interrupted: watch::Sender<bool>,
}

impl World {
    pub fn new(
        opts: Options,
        auth_url: String,
        targets: Vec<Target>,
        codec: Option<SessionIdCodec>,
    ) -> World {
        let n = opts.max_clients;
        let tag = format!("bench-{:06x}", rand::thread_rng().gen::<u32>() & 0xff_ffff);
        let pad = "x".repeat(opts.payload);
        World {
            base: Instant::now(),
            auth_url,
            targets,
            codec,
            tag,
            pad,
            ledger: RefCell::new(Ledger::new(n)),
            latency: RefCell::new(Latency::default()),
            connect_latency: RefCell::new(stats::histogram()),
            hello_latency: RefCell::new(stats::histogram()),
            hello_interval: RefCell::new(stats::histogram()),
            counters: Counters::default(),
            peers: RefCell::new(vec![None; n]),
            directory: OnceCell::new(),
            tasks: RefCell::new(Vec::new()),
            setup_errors: RefCell::new(Vec::new()),
            unknown_types: RefCell::new(Vec::new()),
            setup_progress: tokio::sync::Notify::new(),
            phase: watch::channel(Phase::Setup).0,
            interrupted: watch::channel(false).0,
            opts,
        }
    }

    /// Nanoseconds since the time base.
    pub fn now_ns(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    pub fn phase(&self) -> Phase {
        *self.phase.borrow()
    }

    pub fn phase_rx(&self) -> watch::Receiver<Phase> {
        self.phase.subscribe()
    }

    pub fn set_phase(&self, p: Phase) {
        self.phase.send_replace(p);
    }

    pub fn interrupt(&self) {
        self.interrupted.send_replace(true);
    }

    pub fn is_interrupted(&self) -> bool {
        *self.interrupted.borrow()
    }

    /// Completes when the run is interrupted (Ctrl-C).
    pub async fn interrupted(&self) {
        let mut rx = self.interrupted.subscribe();
        let _ = rx.wait_for(|i| *i).await;
    }

    /// Sleeps for `d`; true if interrupted meanwhile.
    pub async fn sleep_or_interrupt(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => self.is_interrupted(),
            _ = self.interrupted() => true,
        }
    }

    /// Server, URL and source address of client `index` (round robin over
    /// the servers, then over each server's source addresses).
    pub fn target_for(&self, index: u32) -> (SocketAddr, &str, Option<IpAddr>) {
        let i = index as usize;
        let t = &self.targets[i % self.targets.len()];
        let source = if t.sources.is_empty() {
            None
        } else {
            Some(t.sources[(i / self.targets.len()) % t.sources.len()])
        };
        (t.addr, &t.url, source)
    }

    /// Room number of client `index` in `room` runs.
    pub fn room_index(&self, index: u32) -> Option<usize> {
        (self.opts.scenario == Scenario::Room)
            .then(|| room_of(index as usize, self.opts.max_clients, self.opts.room_size))
    }

    /// Room of client `index` in `room` runs.
    pub fn room_name(&self, index: u32) -> Option<String> {
        let r = self.room_index(index)?;
        Some(format!("{}-{r}", self.tag))
    }

    pub fn record_connect(&self, d: Duration) {
        stats::record(&mut self.connect_latency.borrow_mut(), d);
    }

    pub fn record_hello(&self, d: Duration) {
        stats::record(&mut self.hello_latency.borrow_mut(), d);
        stats::record(&mut self.hello_interval.borrow_mut(), d);
        self.counters
            .hellos_ok
            .set(self.counters.hellos_ok.get() + 1);
    }

    /// Freezes the set of ready clients (after set-up).
    pub fn build_directory(&self) -> &Directory {
        let peers = self.peers.borrow().clone();
        let ready: Vec<u32> = peers.iter().flatten().map(|p| p.index).collect();
        let mut room_others = Vec::new();
        if self.opts.scenario == Scenario::Room {
            let n = self.opts.max_clients;
            let k = self.opts.room_size;
            let mut members: Vec<Vec<u32>> = vec![Vec::new(); n.div_ceil(k)];
            for &i in &ready {
                members[room_of(i as usize, n, k)].push(i);
            }
            room_others = (0..n)
                .map(|i| {
                    let m = &members[room_of(i, n, k)];
                    m.iter().copied().filter(|&j| j as usize != i).collect()
                })
                .collect();
        }
        self.directory.get_or_init(|| Directory {
            peers,
            ready,
            room_others,
        })
    }

    pub fn peer(&self, index: u32) -> Option<&Rc<Peer>> {
        self.directory.get()?.peers.get(index as usize)?.as_ref()
    }

    /// A random live client other than `me`.
    pub fn random_other<R: Rng>(&self, me: u32, rng: &mut R) -> Option<Rc<Peer>> {
        let dir = self.directory.get()?;
        let live = |j: u32| {
            dir.peers[j as usize]
                .as_ref()
                .filter(|p| j != me && p.alive.get())
        };
        if dir.ready.is_empty() {
            return None;
        }
        for _ in 0..16 {
            let j = dir.ready[rng.gen_range(0..dir.ready.len())];
            if let Some(p) = live(j) {
                return Some(p.clone());
            }
        }
        dir.ready.iter().find_map(|&j| live(j)).cloned()
    }

    /// The live members of `me`'s room other than `me`.
    pub fn room_recipients(&self, me: u32) -> Vec<u32> {
        let Some(dir) = self.directory.get() else {
            return Vec::new();
        };
        let Some(others) = dir.room_others.get(me as usize) else {
            return Vec::new();
        };
        others
            .iter()
            .copied()
            .filter(|&j| {
                dir.peers[j as usize]
                    .as_ref()
                    .is_some_and(|p| p.alive.get())
            })
            .collect()
    }

    pub fn ready_count(&self) -> usize {
        self.directory.get().map_or(0, |d| d.ready.len())
    }

    pub fn alive_count(&self) -> usize {
        self.directory.get().map_or(0, |d| {
            d.peers.iter().flatten().filter(|p| p.alive.get()).count()
        })
    }
}

/// Room of client `i` of `n` in rooms of `k`: consecutive clients share a
/// room; a last room of one is merged into the one before, so every room has
/// somebody to talk to.
pub fn room_of(i: usize, n: usize, k: usize) -> usize {
    let rooms = n.div_ceil(k);
    let r = i / k;
    if rooms > 1 && n % k == 1 && r == rooms - 1 {
        r - 1
    } else {
        r
    }
}

#[cfg(test)]
mod tests {
    use super::room_of;

    #[test]
    fn rooms_are_consecutive_and_never_single() {
        assert_eq!(
            (0..10).map(|i| room_of(i, 10, 5)).collect::<Vec<_>>(),
            [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
        );
        // 11 clients in rooms of 5: the 11th joins the second room.
        assert_eq!(room_of(10, 11, 5), 1);
        // 12 in rooms of 5: the last room has two.
        assert_eq!(room_of(10, 12, 5), 2);
        assert_eq!(room_of(11, 12, 5), 2);
        // Fewer clients than the room size: one room.
        assert_eq!(room_of(2, 3, 10), 0);
    }
}
