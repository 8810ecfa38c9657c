//! Setting clients up: one round of connections and hellos (with progress
//! and a timeline), and the `connect` scenario, which repeats such rounds.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout, Instant};
use tracing::{debug, warn};

use crate::load;
use crate::probe::{cpu_between, ratio, Probe, Progress, Sampler};
use crate::report::{self, Report};
use crate::session::{self, Ws};
use crate::stats::Summary;
use crate::world::{Peer, World};

/// Interval of the progress line and of the run's checks.
pub const TICK: Duration = Duration::from_millis(250);
/// The client is the bottleneck when it uses this share of its core.
pub const SATURATED: f64 = 0.9;
/// Logged individually before the rest is only counted.
const LOG_FIRST: u64 = 10;

/// Sets up all clients (one round), with progress; returns the wall time.
/// With `keep`, connections are parked there (for `connect`); otherwise each
/// ready client gets its reader and writer tasks.
pub async fn setup_round(
    world: &Rc<World>,
    keep: Option<Rc<RefCell<Vec<Ws>>>>,
    sampler: &mut Sampler,
    probe: &Probe,
    progress: &Progress,
) -> f64 {
    let n = world.opts.max_clients;
    let sem = Rc::new(Semaphore::new(world.opts.concurrency));
    let c = &world.counters;
    let done_before = c.setup_done.get();
    let failed_before = c.setup_failed.get();
    let started = Instant::now();
    let handles: Vec<_> = (0..n as u32)
        .map(|i| tokio::task::spawn_local(setup_one(world.clone(), i, sem.clone(), keep.clone())))
        .collect();
    let mut last_shown = started;
    loop {
        let finished = c.setup_done.get() - done_before >= n as u64;
        if finished || world.is_interrupted() {
            break;
        }
        tokio::select! {
            _ = sleep(TICK) => {}
            _ = world.setup_progress.notified() => {}
            _ = world.interrupted() => {}
        }
        if last_shown.elapsed() < TICK {
            continue;
        }
        last_shown = Instant::now();
        if sampler.due() {
            let lat = Summary::of(&world.hello_interval.borrow());
            world.hello_interval.borrow_mut().reset();
            sampler.sample(c.hellos_sent.get(), c.hellos_ok.get(), lat, probe.server());
        }
        let failed = c.setup_failed.get() - failed_before;
        progress.show(&format!(
            "setup {:>6.1}s  {}/{} ready, {} failed, hello p50 {:.2} ms",
            started.elapsed().as_secs_f64(),
            c.setup_done.get() - done_before - failed,
            n,
            failed,
            Summary::of(&world.hello_latency.borrow()).p50_ms,
        ));
    }
    let secs = started.elapsed().as_secs_f64();
    for h in handles {
        // Interrupted: set-ups still running are abandoned.
        h.abort();
    }
    let lat = Summary::of(&world.hello_interval.borrow());
    world.hello_interval.borrow_mut().reset();
    sampler.sample(c.hellos_sent.get(), c.hellos_ok.get(), lat, probe.server());
    secs
}

async fn setup_one(
    world: Rc<World>,
    index: u32,
    sem: Rc<Semaphore>,
    keep: Option<Rc<RefCell<Vec<Ws>>>>,
) {
    let Ok(permit) = sem.acquire().await else {
        return;
    };
    let result = session::establish(&world, index).await;
    drop(permit);
    let c = &world.counters;
    match result {
        Ok(est) => match keep {
            Some(k) => k.borrow_mut().push(est.ws),
            None => {
                let peer = Rc::new(Peer::new(index, est.public_id));
                world.peers.borrow_mut()[index as usize] = Some(peer.clone());
                load::spawn_tasks(&world, peer, est.ws);
            }
        },
        Err(e) => {
            let n = c.setup_failed.get() + 1;
            c.setup_failed.set(n);
            if n <= LOG_FIRST {
                warn!(client = index, error = %e, "client set-up failed");
            } else {
                debug!(client = index, error = %e, "client set-up failed");
            }
            let mut errors = world.setup_errors.borrow_mut();
            let text = e.to_string();
            if errors.len() < 5 && !errors.contains(&text) {
                errors.push(text);
            }
        }
    }
    c.setup_done.set(c.setup_done.get() + 1);
    world.setup_progress.notify_one();
}

/// `connect`: rounds of "everybody says hello, then bye".
pub async fn run_connect(
    world: &Rc<World>,
    probe: &Probe,
    progress: &Progress,
    report: &mut Report,
) {
    let deadline = world.opts.effective_duration().map(|d| Instant::now() + d);
    let c = &world.counters;
    let mut sampler = Sampler::new(Instant::now(), 0, 0, probe.server());
    let (mut secs, mut server_cpu, mut client_cpu) = (0.0, None::<f64>, 0.0);
    let (mut rss_start, mut rss_end) = (None, None);
    let mut ready = 0u64;
    loop {
        report.setup.rounds += 1;
        let keep = Rc::new(RefCell::new(Vec::new()));
        let (s0, c0) = (probe.server(), probe.client());
        rss_start = rss_start.or(s0.map(|s| s.rss_kib));
        secs += setup_round(world, Some(keep.clone()), &mut sampler, probe, progress).await;
        let (s1, c1) = (probe.server(), probe.client());
        rss_end = s1.map(|s| s.rss_kib).or(rss_end);
        if let Some((cpu, _)) = cpu_between(s0, s1) {
            server_cpu = Some(server_cpu.unwrap_or(0.0) + cpu);
        }
        client_cpu += cpu_between(c0, c1).map_or(0.0, |x| x.0);
        let conns: Vec<Ws> = keep.borrow_mut().drain(..).collect();
        ready += conns.len() as u64;
        progress.show(&format!("closing {} connections", conns.len()));
        let closes: Vec<_> = conns
            .into_iter()
            .map(|ws| tokio::task::spawn_local(session::close(ws)))
            .collect();
        let _ = timeout(
            Duration::from_secs(15),
            futures_util::future::join_all(closes),
        )
        .await;
        let more = deadline.is_some_and(|d| Instant::now() < d);
        if !more || world.is_interrupted() {
            break;
        }
    }
    let hellos = c.hellos_ok.get();
    report.clients.ready = ready;
    report.setup.hellos = hellos;
    report.setup.seconds = secs;
    report.setup.hellos_per_s = ratio(hellos as f64, secs);
    report.setup.server_cpu_s = server_cpu;
    report.setup.server_cpu_ms_per_hello = server_cpu.map(|cpu| ratio(cpu * 1000.0, hellos as f64));
    report.setup_timeline = sampler.points;
    if let (false, Some(cpu)) = (probe.pids().is_empty(), server_cpu) {
        report.server = Some(report::Server {
            pids: probe.pids().to_vec(),
            cpu_s: cpu,
            cpu_share: ratio(cpu, secs),
            rss_kib_start: rss_start.unwrap_or(0),
            rss_kib_end: rss_end.unwrap_or(0),
            delivered_per_cpu_s: None,
        });
    }
    report.client_process.cpu_s = client_cpu;
    report.client_process.cpu_share = ratio(client_cpu, secs);
    report.client_process.saturated = report.client_process.cpu_share > SATURATED;
    report.client_process.rss_kib = probe.client().map_or(0, |s| s.rss_kib);
}
