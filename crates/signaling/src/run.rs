//! Running the server: binding the listeners, then start-up, SIGHUP reload,
//! SIGUSR1 drain and stop, as `main` does after parsing flags.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use runtime::config::Ini;
use runtime::listen::{self, Listener, ServeOptions};
use tracing::{info, warn};

use crate::{schema, validate_backends, ListenConfig, Server, StartError, VERSION};

/// Bind every configured listener and serve it. Returns the TCP addresses bound.
pub async fn bind_and_serve(
    server: &Arc<Server>,
    cfg: &ListenConfig,
) -> Result<Vec<SocketAddr>, StartError> {
    let mut addrs = Vec::new();
    let mut bound = Vec::new();
    for a in &cfg.http {
        bound.push((Listener::bind(a).await?, None));
    }
    if !cfg.https.is_empty() {
        let tls = listen::Tls::new(listen::load_tls(
            cfg.certificate.as_ref(),
            cfg.key.as_ref(),
        )?);
        *server.tls.lock() = Some(tls.clone());
        for a in &cfg.https {
            bound.push((Listener::bind(a).await?, Some(tls.clone())));
        }
    }
    for (l, tls) in bound {
        if let Some(a) = l.local_addr() {
            addrs.push(a);
        }
        server.serve(
            l,
            ServeOptions {
                read_timeout: cfg.read_timeout,
                tls,
            },
        );
    }
    Ok(addrs)
}

/// Everything `main` does after parsing flags.
pub async fn run_from_config(path: std::path::PathBuf) -> Result<(), StartError> {
    let ini = Ini::load(&path)?;
    for l in schema::SCHEMA.lint(&ini) {
        warn!("{}:{}: {}", path.display(), l.line, l.message);
    }
    if let Err(e) = validate_backends(&ini) {
        warn!("{}: {e}; the backend is skipped", path.display());
    }
    let server = Server::build(&ini)?;
    let listen = ListenConfig::from_config(&ini)?;
    if let Some(nats) = server.nats.clone() {
        // Like upstream, serve clients only once the cluster is reachable
        // (the bus retries with backoff and logs each failure); Ctrl-C aborts.
        tokio::select! {
            _ = nats.wait_connected(true) => {}
            _ = tokio::signal::ctrl_c() => {
                return Err(StartError::Invalid {
                    section: "nats",
                    key: "url",
                    reason: "interrupted while connecting to NATS".into(),
                })
            }
        }
    }
    raise_nofile_limit();
    bind_and_serve(&server, &listen).await?;
    info!(version = VERSION, "signaling server started");
    let mut signals = runtime::signals::listen().map_err(|e| StartError::Invalid {
        section: "app",
        key: "signals",
        reason: e.to_string(),
    })?;
    let mut drain_deadline = None;
    loop {
        let sig = tokio::select! {
            sig = signals.recv() => sig,
            // Re-created each turn; `drained` checks the state first, so
            // nothing is missed while a signal is handled.
            reason = drain_done(&server, drain_deadline), if server.hub.is_draining() => {
                info!("{reason}, shutting down");
                break;
            }
        };
        match sig {
            Some(runtime::signals::Signal::Reload) => match Ini::load(&path) {
                Ok(ini) => {
                    for l in schema::SCHEMA.lint(&ini) {
                        warn!("{}:{}: {}", path.display(), l.line, l.message);
                    }
                    if let Err(e) = validate_backends(&ini) {
                        warn!("{}: {e}; the backend is skipped", path.display());
                    }
                    server.reload(&ini)
                }
                Err(e) => warn!(error = %e, "could not reload configuration, keeping the old one"),
            },
            Some(runtime::signals::Signal::Drain) => {
                if server.hub.start_drain() {
                    drain_deadline = server
                        .drain_timeout
                        .map(|t| tokio::time::Instant::now() + t);
                    info!(
                        timeout = ?server.drain_timeout,
                        "received SIGUSR1, refusing new connections and shutting down when the last session ends"
                    );
                }
            }
            Some(runtime::signals::Signal::Stop) | None => break,
        }
    }
    info!("shutting down");
    server.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// Wait until a drain is over: the last session ended or the deadline passed.
async fn drain_done(server: &Server, deadline: Option<tokio::time::Instant>) -> &'static str {
    let deadline = async {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = server.hub.drained() => "all sessions ended",
        _ = deadline => "drain timeout reached",
    }
}

/// Many idle clients means many open sockets: use the hard limit.
fn raise_nofile_limit() {
    match runtime::limits::raise_nofile() {
        Ok(n) => info!(limit = n, "open files limit"),
        Err(e) => warn!(error = %e, "could not raise the open files limit"),
    }
}
