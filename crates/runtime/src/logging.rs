//! Logging through `tracing`: `RUST_LOG` wins over the configured level so an
//! operator can turn up detail for one run without editing the config.

use tracing_subscriber::EnvFilter;

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
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // A second call (tests) keeps the first subscriber; that is fine.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .try_init();
}
