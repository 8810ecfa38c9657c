//! Logging through `tracing`: `RUST_LOG` wins over the configured level so an
//! operator can turn up detail for one run without editing the config.
//! Without `RUST_LOG`, SIGHUP applies a changed `[app] loglevel` in place.

use std::sync::OnceLock;
use tracing_subscriber::reload::Handle;
use tracing_subscriber::EnvFilter;

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Set by [`init`] when the level comes from the configuration.
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Whether [`init`] can use `level` (else it falls back to `info`); the
/// error describes what is wrong with it.
pub fn check_level(level: &str) -> Result<(), String> {
    EnvFilter::try_new(level)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// Install the global subscriber. `level` is the configured default
/// (`error`, `warn`, `info`, `debug`, `trace` or a full filter directive).
pub fn init(level: &str) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let reloadable = from_env.is_none();
    let filter = from_env
        .or_else(|| EnvFilter::try_new(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_filter_reloading();
    let handle = builder.reload_handle();
    // A second call (tests) keeps the first subscriber; that is fine.
    if builder.try_init().is_ok() && reloadable {
        let _ = RELOAD.set(boxed(handle));
    }
}

fn boxed<L, S>(handle: Handle<L, S>) -> Reload
where
    L: From<EnvFilter> + Send + Sync + 'static,
    S: 'static,
{
    Box::new(move |f: EnvFilter| handle.reload(f).map_err(|e| e.to_string()))
}

/// SIGHUP: switch to `level` (no-op when `RUST_LOG` decides). Returns
/// whether the level was applied.
pub fn set_level(level: &str) -> Result<bool, String> {
    let Some(reload) = RELOAD.get() else {
        return Ok(false);
    };
    let filter = EnvFilter::try_new(level).map_err(|e| e.to_string())?;
    reload(filter)?;
    Ok(true)
}

/// SIGHUP: apply `[app] loglevel` of `ini` and log the outcome.
pub fn apply_config_level(ini: &crate::config::Ini) {
    let level = ini.get_string("app", "loglevel", "info");
    match set_level(&level) {
        Ok(true) => tracing::info!(%level, "log level applied"),
        Ok(false) => {}
        Err(e) => tracing::warn!(%level, error = %e, "keeping the old log level"),
    }
}
