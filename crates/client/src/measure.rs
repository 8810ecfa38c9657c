//! The scenarios that keep their sessions: `idle` holds them, `messages`,
//! `room` and `flood` send, drain and account; then everybody leaves.

use std::rc::Rc;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};
use tracing::{debug, info, warn};

use crate::args::Scenario;
use crate::ledger::Totals;
use crate::probe::{cpu_between, ratio, Probe, Progress, Sampler};
use crate::procstat::Sample;
use crate::report::{self, Report};
use crate::setup::{setup_round, SATURATED, TICK};
use crate::world::{Phase, World};

/// `messages`, `flood`, `room` and `idle`: set up once, then measure.
pub async fn run_sessions(
    world: &Rc<World>,
    probe: &Probe,
    progress: &Progress,
    report: &mut Report,
) {
    let opts = &world.opts;
    let c = &world.counters;
    let baseline = probe.server();
    let (s0, c0) = (baseline, probe.client());
    let mut sampler = Sampler::new(Instant::now(), 0, 0, s0);
    let secs = setup_round(world, None, &mut sampler, probe, progress).await;
    let (s1, c1) = (probe.server(), probe.client());
    report.setup_timeline = sampler.points;
    report.setup.rounds = 1;
    report.setup.seconds = secs;
    report.setup.hellos = c.hellos_ok.get();
    report.setup.hellos_per_s = ratio(c.hellos_ok.get() as f64, secs);
    let dir = world.build_directory();
    let ready = dir.ready.len();
    report.clients.ready = ready as u64;
    if let Some((cpu, _)) = cpu_between(s0, s1) {
        report.setup.server_cpu_s = Some(cpu);
        let per = ratio(cpu * 1000.0, ready as f64);
        if opts.scenario == Scenario::Room {
            report.setup.server_cpu_ms_per_hello_and_join = Some(per);
            report.setup.rooms = Some(opts.max_clients.div_ceil(opts.room_size) as u64);
        } else {
            report.setup.server_cpu_ms_per_hello = Some(per);
        }
    }
    info!(
        ready,
        failed = c.setup_failed.get(),
        "all connections established"
    );

    if world.is_interrupted() {
        // Nothing to measure.
    } else if opts.scenario == Scenario::Idle {
        hold_idle(world, probe, progress, report, baseline, (s0, s1, c0, c1)).await;
    } else if ready < 2 {
        report.error = Some(format!(
            "only {ready} clients could be set up; at least 2 are needed"
        ));
    } else {
        send_phase(world, probe, progress, report).await;
    }

    // Leave: writers say bye, readers see the server close.
    world.set_phase(Phase::Close);
    progress.show(&format!("closing {ready} connections"));
    let tasks: Vec<_> = world.tasks.borrow_mut().drain(..).collect();
    let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
    if timeout(
        Duration::from_secs(15),
        futures_util::future::join_all(tasks),
    )
    .await
    .is_err()
    {
        debug!("some connections did not close in time");
        for a in aborts {
            a.abort();
        }
    }
    report.client_process.rss_kib = probe.client().map_or(0, |s| s.rss_kib);
}

#[allow(clippy::type_complexity)]
async fn hold_idle(
    world: &Rc<World>,
    probe: &Probe,
    progress: &Progress,
    report: &mut Report,
    baseline: Option<Sample>,
    (s0, s1, c0, c1): (
        Option<Sample>,
        Option<Sample>,
        Option<Sample>,
        Option<Sample>,
    ),
) {
    let opts = &world.opts;
    let ready = world.ready_count() as u64;
    world.set_phase(Phase::Run);
    progress.show(&format!("settling for {:.1} s", opts.settle.as_secs_f64()));
    world.sleep_or_interrupt(opts.settle).await;
    let after = probe.server();
    let hold = opts.effective_duration().unwrap_or(Duration::from_secs(10));
    let start = Instant::now();
    let mut idle = report::Idle {
        sessions: ready,
        ..Default::default()
    };
    if let (Some(b), Some(a)) = (baseline, after) {
        idle.rss_kib_before = Some(b.rss_kib);
        idle.rss_kib_after = Some(a.rss_kib);
        if ready > 0 {
            let per = (a.rss_kib as f64 - b.rss_kib as f64) / ready as f64;
            idle.rss_kib_per_session = Some(per);
            idle.projected_rss_mib_100k = Some((b.rss_kib as f64 + per * 100_000.0) / 1024.0);
        }
    }
    while !world.is_interrupted() && start.elapsed() < hold {
        world.sleep_or_interrupt(TICK).await;
        progress.show(&format!(
            "idle {:>6.1}s  {} of {} sessions alive{}",
            start.elapsed().as_secs_f64(),
            world.alive_count(),
            ready,
            idle.rss_kib_per_session
                .map(|p| format!(", {p:.1} KiB RSS per session"))
                .unwrap_or_default()
        ));
    }
    let end = probe.server();
    idle.held_seconds = start.elapsed().as_secs_f64();
    idle.alive_at_end = world.alive_count() as u64;
    idle.server_cpu_s_while_idle = cpu_between(after, end).map(|x| x.0);
    report.idle = Some(idle);
    // The measured phase of `idle` is the set-up (for CPU per hello).
    if let (false, Some((cpu, share))) = (probe.pids().is_empty(), cpu_between(s0, s1)) {
        report.server = Some(report::Server {
            pids: probe.pids().to_vec(),
            cpu_s: cpu,
            cpu_share: share,
            rss_kib_start: s0.map_or(0, |s| s.rss_kib),
            rss_kib_end: end.or(s1).map_or(0, |s| s.rss_kib),
            delivered_per_cpu_s: None,
        });
    }
    if let Some((cpu, share)) = cpu_between(c0, c1) {
        report.client_process.cpu_s = cpu;
        report.client_process.cpu_share = share;
        report.client_process.saturated = share > SATURATED;
    }
}

/// Sending scenarios: run, drain, account.
async fn send_phase(world: &Rc<World>, probe: &Probe, progress: &Progress, report: &mut Report) {
    let start = Instant::now();
    let (s0, c0) = (probe.server(), probe.client());
    let mut sampler = Sampler::new(start, 0, 0, s0);
    world.set_phase(Phase::Run);
    info!(
        scenario = %world.opts.scenario,
        duration = ?world.opts.effective_duration(),
        "sending"
    );
    send_until_done(world, probe, progress, &mut sampler, start).await;
    let send_secs = start.elapsed().as_secs_f64();
    world.set_phase(Phase::Drain);
    drain(world, probe, progress, &mut sampler).await;
    let secs = start.elapsed().as_secs_f64();
    let (s1, c1) = (probe.server(), probe.client());
    let t = world.ledger.borrow().totals();
    let lat = world.latency.borrow_mut().take_interval();
    sampler.sample(t.sent, t.delivered, lat, s1);
    report.timeline = sampler.points;
    report.messages = Some(messages_report(world, &t, send_secs, secs));
    if let (false, Some((cpu, share)), Some(a), Some(b)) =
        (probe.pids().is_empty(), cpu_between(s0, s1), s0, s1)
    {
        report.server = Some(report::Server {
            pids: probe.pids().to_vec(),
            cpu_s: cpu,
            cpu_share: share,
            rss_kib_start: a.rss_kib,
            rss_kib_end: b.rss_kib,
            delivered_per_cpu_s: Some(ratio(t.delivered as f64, cpu)),
        });
    }
    if let Some((cpu, share)) = cpu_between(c0, c1) {
        report.client_process.cpu_s = cpu;
        report.client_process.cpu_share = share;
        report.client_process.saturated = share > SATURATED;
    }
}

/// A point of the timeline when one is due.
fn tick(world: &World, probe: &Probe, sampler: &mut Sampler) {
    if sampler.due() {
        let t = world.ledger.borrow().totals();
        let lat = world.latency.borrow_mut().take_interval();
        sampler.sample(t.sent, t.delivered, lat, probe.server());
    }
}

/// The measured phase: the writers send until the duration is over (or an
/// interrupt, or fewer than two clients are left); progress and stats lines.
async fn send_until_done(
    world: &World,
    probe: &Probe,
    progress: &Progress,
    sampler: &mut Sampler,
    start: Instant,
) {
    let opts = &world.opts;
    let deadline = opts.effective_duration().map(|d| start + d);
    let mut last_log = (start, 0u64, 0u64);
    loop {
        world.sleep_or_interrupt(TICK).await;
        if world.is_interrupted() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if world.alive_count() < 2 {
            warn!("fewer than two clients left; stopping");
            break;
        }
        tick(world, probe, sampler);
        let t = world.ledger.borrow().totals();
        let (sent_rate, done_rate) = sampler.last_rates();
        let cpu = sampler.points.last().and_then(|p| p.server_cpu);
        progress.show(&format!(
            "{:>6.1}s  sent {} ({:.0}/s)  delivered {} ({:.0}/s)  in flight {}  p99 {:.2} ms{}",
            start.elapsed().as_secs_f64(),
            t.sent,
            sent_rate,
            t.delivered,
            done_rate,
            t.outstanding(),
            sampler.points.last().map_or(0.0, |p| p.p99_ms),
            cpu.map(|c| format!("  server {:.0}% CPU", c * 100.0))
                .unwrap_or_default(),
        ));
        if last_log.0.elapsed() >= opts.stats_interval {
            let secs = last_log.0.elapsed().as_secs_f64();
            progress.clear();
            info!(
                "stats: sent={} ({:.0}/sec), recv={} ({:.0}/sec), in flight={}",
                t.sent,
                (t.sent - last_log.1) as f64 / secs,
                t.delivered,
                (t.delivered - last_log.2) as f64 / secs,
                t.outstanding()
            );
            last_log = (Instant::now(), t.sent, t.delivered);
        }
    }
}

/// Waits (at most `-drain`) for the messages still in flight.
async fn drain(world: &World, probe: &Probe, progress: &Progress, sampler: &mut Sampler) {
    let drain_until = Instant::now() + world.opts.drain;
    while world.ledger.borrow().totals().outstanding() > 0 && Instant::now() < drain_until {
        sleep(Duration::from_millis(5)).await;
        tick(world, probe, sampler);
        progress.show(&format!(
            "draining: {} in flight",
            world.ledger.borrow().totals().outstanding()
        ));
    }
}

/// The `messages` part of the report from the ledger's totals.
fn messages_report(world: &World, t: &Totals, send_secs: f64, secs: f64) -> report::Messages {
    let opts = &world.opts;
    let c = &world.counters;
    let target_rate = match opts.scenario {
        Scenario::Flood => None,
        _ => Some(opts.per_client_rate() * world.ready_count() as f64),
    };
    report::Messages {
        sent: t.sent,
        expected: t.expected,
        delivered: t.delivered,
        lost: t.outstanding(),
        duplicated: t.duplicated,
        unknown: t.unknown,
        misdelivered: t.misdelivered,
        send_seconds: send_secs,
        seconds: secs,
        sent_per_s: ratio(t.sent as f64, send_secs),
        delivered_per_s: ratio(t.delivered as f64, secs),
        target_rate,
        window: (opts.scenario == Scenario::Flood).then_some(opts.window as u64),
        room_size: (opts.scenario == Scenario::Room).then_some(opts.room_size as u64),
        payload_bytes: opts.payload as u64,
        latency: world.latency.borrow().summary(),
        over_one_second: world.latency.borrow().over_one_second,
        flood_stalls: c.stalls.get(),
        paced_behind: c.behind.get(),
        foreign: c.foreign.get(),
        other_frames: c.other.get(),
    }
}
