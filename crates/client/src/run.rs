//! One run: keys and servers, then the scenario ([`crate::setup`] for
//! `connect`, [`crate::measure`] for the others), then the report and plot.

use std::net::SocketAddr;
use std::rc::Rc;
use std::time::Duration;

use proto::sessionid::SessionIdCodec;
use runtime::config::Ini;
use tracing::{info, warn};

use crate::args::Options;
use crate::args::Scenario;
use crate::backend::FakeBackend;
use crate::limits;
use crate::measure;
use crate::plot;
use crate::probe::{Probe, Progress};
use crate::report::Report;
use crate::setup;
use crate::stats::Summary;
use crate::world::{Target, World};

/// Why a run could not start or finish.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Bad configuration (exit status 64).
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

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
    let probe = Probe::new(world.opts.server_pids.clone());
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

    match world.opts.scenario {
        Scenario::Connect => setup::run_connect(&world, &probe, &progress, &mut report).await,
        _ => measure::run_sessions(&world, &probe, &progress, &mut report).await,
    };
    progress.clear();
    ctrl_c.abort();

    fill_common(&world, &backend, &mut report);
    if report.error.is_none() && report.clients.ready == 0 && !report.interrupted {
        report.error = Some(match report.clients.errors.first() {
            Some(e) => format!("no client could be set up; first error: {e}"),
            None => "no client could be set up".to_owned(),
        });
    }
    if let Some(path) = &world.opts.plot {
        draw_plot(&world, path, &mut report);
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
        if m.lost > 0 || m.duplicated > 0 || m.unknown > 0 || m.misdelivered > 0 {
            r.warnings.push(format!(
                "{} messages lost, {} duplicated, {} misdelivered, {} unknown",
                m.lost, m.duplicated, m.misdelivered, m.unknown
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

/// Draws the report's timeline and latency distribution into `path`.
fn draw_plot(world: &World, path: &std::path::Path, report: &mut Report) {
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
