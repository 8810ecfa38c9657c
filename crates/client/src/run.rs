//! One run: set-up, the scenario's measured phase, draining, closing, and
//! the report.

use std::cell::RefCell;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use proto::sessionid::SessionIdCodec;
use runtime::config::Ini;
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout, Instant};
use tracing::{debug, info, warn};

use crate::args::{Options, Scenario};
use crate::backend::FakeBackend;
use crate::limits;
use crate::plot;
use crate::procstat::{ProcReader, Sample};
use crate::report::{self, Report};
use crate::session::{self, Peer, Ws};
use crate::stats::{Point, Summary};
use crate::world::{Phase, Target, World};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration (exit status 64).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

const TICK: Duration = Duration::from_millis(250);
const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// The client is the bottleneck when it uses this share of its core.
const SATURATED: f64 = 0.9;
/// Logged individually before the rest is only counted.
const LOG_FIRST: u64 = 10;

/// Keys read from the server's configuration.
struct Keys {
    secret: String,
    codec: Option<SessionIdCodec>,
}

fn load_keys(opts: &Options) -> Result<Keys, RunError> {
    let need_file = opts.secret.is_none() || opts.derive_ids;
    let ini = if need_file {
        Some(Ini::load(&opts.config).map_err(|e| {
            RunError::Config(format!(
                "could not read configuration {}: {e}",
                opts.config.display()
            ))
        })?)
    } else {
        None
    };
    let get = |section: &str, key: &str| {
        ini.as_ref()
            .and_then(|i| i.get(section, key))
            .unwrap_or_default()
            .to_owned()
    };
    let secret = opts
        .secret
        .clone()
        .unwrap_or_else(|| get("backend", "secret"));
    if secret.is_empty() {
        warn!("the backend secret is empty; the server will refuse to authenticate unless it is empty there too");
    }
    let codec = if opts.derive_ids {
        let hash = get("sessions", "hashkey");
        let block = get("sessions", "blockkey");
        if !matches!(hash.len(), 32 | 64) {
            warn!(
                "the sessions hash key should be 32 or 64 bytes but is {} bytes",
                hash.len()
            );
        }
        Some(
            SessionIdCodec::new(hash.as_bytes(), block.as_bytes())
                .map_err(|e| RunError::Config(format!("[sessions] keys: {e}")))?,
        )
    } else {
        None
    };
    Ok(Keys { secret, codec })
}

async fn resolve(opts: &Options) -> Result<Vec<Target>, RunError> {
    let per_target = opts.max_clients.div_ceil(opts.addrs.len());
    let mut targets = Vec::new();
    for a in &opts.addrs {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(a.as_str())
            .await
            .map_err(|e| RunError::Config(format!("-addr {a}: {e}")))?
            .collect();
        let addr = addrs
            .iter()
            .find(|s| s.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| RunError::Config(format!("-addr {a}: no address")))?;
        // One connection first: with no server there, every client would
        // fail (and the report would measure nothing) — say so at once.
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                return Err(RunError::Other(anyhow::anyhow!(
                    "no signaling server reachable at {a} ({addr}): {e}"
                )))
            }
            Err(_) => {
                return Err(RunError::Other(anyhow::anyhow!(
                    "no signaling server reachable at {a} ({addr}): connect timed out"
                )))
            }
        }
        targets.push(Target {
            addr,
            url: format!("ws://{a}/spreed"),
            sources: limits::source_addresses(addr.ip(), per_target, opts.source_addrs),
        });
    }
    Ok(targets)
}

/// The live progress line (only on a terminal).
struct Progress {
    on: bool,
}

impl Progress {
    fn new(opts: &Options) -> Progress {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Progress {
            on: opts.progress.unwrap_or(tty),
        }
    }

    fn show(&self, line: &str) {
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K{line}");
            let _ = e.flush();
        }
    }

    fn clear(&self) {
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
    }
}

/// Per-second points of a phase.
struct Sampler {
    start: Instant,
    last: Instant,
    last_sent: u64,
    last_done: u64,
    last_cpu: Option<Sample>,
    points: Vec<Point>,
}

impl Sampler {
    fn new(start: Instant, sent: u64, done: u64, cpu: Option<Sample>) -> Sampler {
        Sampler {
            start,
            last: start,
            last_sent: sent,
            last_done: done,
            last_cpu: cpu,
            points: Vec::new(),
        }
    }

    fn due(&self) -> bool {
        self.last.elapsed() >= SAMPLE_EVERY
    }

    fn sample(&mut self, sent: u64, done: u64, lat: Summary, cpu: Option<Sample>) {
        let now = Instant::now();
        let dt = (now - self.last).as_secs_f64();
        if dt <= 0.0 {
            return;
        }
        let server_cpu = match (self.last_cpu, cpu) {
            (Some(a), Some(b)) => Some(b.cpu_since(&a) / (b.at - a.at).as_secs_f64().max(1e-9)),
            _ => None,
        };
        self.points.push(Point {
            t: (now - self.start).as_secs_f64(),
            sent: sent - self.last_sent,
            done: done - self.last_done,
            p50_ms: lat.p50_ms,
            p99_ms: lat.p99_ms,
            server_cpu,
        });
        self.last = now;
        self.last_sent = sent;
        self.last_done = done;
        if cpu.is_some() {
            self.last_cpu = cpu;
        }
    }

    fn last_rates(&self) -> (f64, f64) {
        match self.points.last() {
            Some(p) => {
                let prev_t = self
                    .points
                    .len()
                    .checked_sub(2)
                    .map_or(0.0, |i| self.points[i].t);
                let dt = (p.t - prev_t).max(1e-9);
                (p.sent as f64 / dt, p.done as f64 / dt)
            }
            None => (0.0, 0.0),
        }
    }
}

/// Readings of the server and of this process.
struct Probe {
    reader: ProcReader,
    pid: Option<u32>,
    warned: std::cell::Cell<bool>,
}

impl Probe {
    fn server(&self) -> Option<Sample> {
        let pid = self.pid?;
        match self.reader.sample(Some(pid)) {
            Ok(s) => Some(s),
            Err(e) => {
                if !self.warned.replace(true) {
                    warn!(pid, error = %e, "cannot read the server's /proc entry");
                }
                None
            }
        }
    }

    fn client(&self) -> Option<Sample> {
        self.reader.sample(None).ok()
    }
}

/// CPU use of a process between two readings.
fn cpu_between(a: Option<Sample>, b: Option<Sample>) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    let secs = (b.at - a.at).as_secs_f64();
    let cpu = b.cpu_since(&a);
    Some((cpu, if secs > 0.0 { cpu / secs } else { 0.0 }))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Runs the scenario of `opts` and returns its report (also printed and
/// plotted as the options ask).
pub async fn run(opts: Options) -> Result<Report, RunError> {
    let keys = load_keys(&opts)?;
    let nofile = limits::raise_nofile_limit();
    let mut warnings = Vec::new();
    if let Some(limit) = nofile {
        let needed = opts.max_clients as u64 + 64;
        if limit < needed {
            let w = format!(
                "the open-files limit is {limit}, below the {needed} this run needs; \
                 connections beyond it will fail"
            );
            warn!("{w}");
            warnings.push(w);
        }
    }
    let backend = FakeBackend::start(keys.secret.as_bytes())
        .await
        .map_err(|e| RunError::Other(anyhow::anyhow!("cannot start the fake backend: {e}")))?;
    let targets = resolve(&opts).await?;
    info!(
        backend = %backend.auth_url(),
        servers = ?targets.iter().map(|t| t.url.as_str()).collect::<Vec<_>>(),
        clients = opts.max_clients,
        scenario = %opts.scenario,
        "starting"
    );
    for t in targets.iter().filter(|t| !t.sources.is_empty()) {
        info!(server = %t.url, sources = t.sources.len(), "spreading connections over several local addresses");
    }
    let world = Rc::new(World::new(opts, backend.auth_url(), targets, keys.codec));
    let ctrl_c = tokio::task::spawn_local(watch_ctrl_c(world.clone()));
    let probe = Probe {
        reader: ProcReader::default(),
        pid: world.opts.server_pid,
        warned: Default::default(),
    };
    let progress = Progress::new(&world.opts);

    let mut report = Report {
        version: env!("CARGO_PKG_VERSION"),
        started_at: crate::report::utc_now(),
        scenario: world.opts.scenario.to_string(),
        servers: world.opts.addrs.clone(),
        parameters: crate::report::Parameters::of(&world.opts),
        warnings,
        ..Default::default()
    };
    report.client_process.open_files_limit = nofile;

    let result = match world.opts.scenario {
        Scenario::Connect => run_connect(&world, &probe, &progress, &mut report).await,
        _ => run_sessions(&world, &probe, &progress, &mut report).await,
    };
    progress.clear();
    ctrl_c.abort();
    result?;

    fill_common(&world, &backend, &mut report);
    if report.error.is_none() && report.clients.ready == 0 && !report.interrupted {
        report.error = Some(match report.clients.errors.first() {
            Some(e) => format!("no client could be set up; first error: {e}"),
            None => "no client could be set up".to_owned(),
        });
    }
    if let Some(path) = &world.opts.plot {
        let (hist, title) = match &report.messages {
            Some(_) => (world.latency.borrow().all().clone(), "message latency"),
            None => (world.hello_latency.borrow().clone(), "hello latency"),
        };
        let timeline = if report.timeline.is_empty() {
            &report.setup_timeline
        } else {
            &report.timeline
        };
        let labels = if report.messages.is_some() {
            ("sent/s", "delivered/s")
        } else {
            ("hellos sent/s", "answered/s")
        };
        let name = format!(
            "{}, {}",
            report.parameters.describe(&report.scenario),
            report.servers.join(" ")
        );
        let plot = plot::Plot {
            title: &format!("{name} — {} — client {}", report.started_at, report.version),
            timeline,
            labels,
            latency_us: &hist,
            latency_title: title,
        };
        if let Err(e) = plot::draw(path, &plot) {
            report
                .warnings
                .push(format!("could not write {}: {e}", path.display()));
        } else {
            info!(file = %path.display(), "plot written");
        }
    }
    Ok(report)
}

async fn watch_ctrl_c(world: Rc<World>) {
    if tokio::signal::ctrl_c().await.is_ok() {
        info!("interrupted; stopping (press Ctrl-C again to quit at once)");
        world.interrupt();
        if tokio::signal::ctrl_c().await.is_ok() {
            std::process::exit(130);
        }
    }
}

/// Totals and warnings every scenario reports.
fn fill_common(world: &World, backend: &FakeBackend, r: &mut Report) {
    let c = &world.counters;
    // `connect` asks for -maxClients sessions per round.
    r.clients.requested = world.opts.max_clients as u64 * r.setup.rounds.max(1);
    r.clients.failed = c.setup_failed.get();
    r.clients.dropped = c.dropped.get();
    r.clients.server_errors = c.server_errors.get();
    r.clients.server_byes = c.server_byes.get();
    r.clients.write_errors = c.write_errors.get();
    r.clients.errors = world.setup_errors.borrow().clone();
    r.backend = backend.counts();
    r.interrupted = world.is_interrupted();
    r.setup.connect_latency = Summary::of(&world.connect_latency.borrow());
    r.setup.hello_latency = Summary::of(&world.hello_latency.borrow());
    if r.clients.failed > 0 {
        r.warnings.push(format!(
            "{} of {} clients could not be set up",
            r.clients.failed, r.clients.requested
        ));
    }
    if r.clients.dropped > 0 {
        r.warnings.push(format!(
            "{} connections ended before the run was over",
            r.clients.dropped
        ));
    }
    if r.client_process.saturated {
        r.warnings.push(
            "the client used most of its CPU core: the figures may show the client's limit".into(),
        );
    }
    if r.backend.rejected > 0 {
        r.warnings.push(format!(
            "the fake backend rejected {} requests (is the secret the server's?)",
            r.backend.rejected
        ));
    }
    if let Some(m) = &r.messages {
        if m.lost > 0 || m.duplicated > 0 || m.unknown > 0 {
            r.warnings.push(format!(
                "{} messages lost, {} duplicated, {} unknown",
                m.lost, m.duplicated, m.unknown
            ));
        }
        if let Some(target) = m.target_rate {
            if m.sent_per_s < 0.95 * target {
                r.warnings.push(format!(
                    "sent {:.0}/s, below the target of {target:.0}/s",
                    m.sent_per_s
                ));
            }
        }
    }
}

/// Sets up all clients (one round), with progress; returns the wall time.
/// With `keep`, connections are parked there (for `connect`); otherwise each
/// ready client gets its reader and writer tasks.
async fn setup_round(
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
                session::spawn_tasks(&world, peer, est.ws);
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
async fn run_connect(
    world: &Rc<World>,
    probe: &Probe,
    progress: &Progress,
    report: &mut Report,
) -> Result<(), RunError> {
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
    if let (Some(pid), Some(cpu)) = (world.opts.server_pid, server_cpu) {
        report.server = Some(report::Server {
            pid,
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
    Ok(())
}

/// `messages`, `flood`, `room` and `idle`: set up once, then measure.
async fn run_sessions(
    world: &Rc<World>,
    probe: &Probe,
    progress: &Progress,
    report: &mut Report,
) -> Result<(), RunError> {
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

    let outcome = if world.is_interrupted() {
        Ok(())
    } else if opts.scenario == Scenario::Idle {
        hold_idle(world, probe, progress, report, baseline, (s0, s1, c0, c1)).await
    } else if ready < 2 {
        report.error = Some(format!(
            "only {ready} clients could be set up; at least 2 are needed"
        ));
        Ok(())
    } else {
        send_phase(world, probe, progress, report).await;
        Ok(())
    };

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
    outcome
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
) -> Result<(), RunError> {
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
    if let (Some(pid), Some((cpu, share))) = (opts.server_pid, cpu_between(s0, s1)) {
        report.server = Some(report::Server {
            pid,
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
    Ok(())
}

/// Sending scenarios: run, drain, account.
async fn send_phase(world: &Rc<World>, probe: &Probe, progress: &Progress, report: &mut Report) {
    let opts = &world.opts;
    let duration = opts.effective_duration();
    let start = Instant::now();
    let (s0, c0) = (probe.server(), probe.client());
    let deadline = duration.map(|d| start + d);
    let mut sampler = Sampler::new(start, 0, 0, s0);
    let mut last_log = (start, 0u64, 0u64);
    world.set_phase(Phase::Run);
    info!(
        scenario = %opts.scenario,
        duration = ?duration,
        "sending"
    );

    let tick = |sampler: &mut Sampler| {
        if sampler.due() {
            let t = world.ledger.borrow().totals();
            let lat = world.latency.borrow_mut().take_interval();
            sampler.sample(t.sent, t.delivered, lat, probe.server());
        }
    };

    loop {
        world.sleep_or_interrupt(TICK).await;
        if world.is_interrupted() || deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
        if world.alive_count() < 2 {
            warn!("fewer than two clients left; stopping");
            break;
        }
        tick(&mut sampler);
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
    let send_secs = start.elapsed().as_secs_f64();
    world.set_phase(Phase::Drain);
    let drain_until = Instant::now() + opts.drain;
    while world.ledger.borrow().totals().outstanding() > 0 && Instant::now() < drain_until {
        sleep(Duration::from_millis(5)).await;
        tick(&mut sampler);
        progress.show(&format!(
            "draining: {} in flight",
            world.ledger.borrow().totals().outstanding()
        ));
    }
    let secs = start.elapsed().as_secs_f64();
    let (s1, c1) = (probe.server(), probe.client());
    let t = world.ledger.borrow().totals();
    let lat = world.latency.borrow_mut().take_interval();
    sampler.sample(t.sent, t.delivered, lat, s1);
    report.timeline = sampler.points;

    let c = &world.counters;
    let target_rate = match opts.scenario {
        Scenario::Flood => None,
        _ => Some(opts.per_client_rate() * world.ready_count() as f64),
    };
    report.messages = Some(report::Messages {
        sent: t.sent,
        expected: t.expected,
        delivered: t.delivered,
        lost: t.outstanding(),
        duplicated: t.duplicated,
        unknown: t.unknown,
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
    });
    if let (Some(pid), Some((cpu, share)), Some(a), Some(b)) =
        (opts.server_pid, cpu_between(s0, s1), s0, s1)
    {
        report.server = Some(report::Server {
            pid,
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
