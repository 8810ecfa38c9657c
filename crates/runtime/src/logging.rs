//! Logging through `tracing`: `RUST_LOG` wins over the configured level so an
//! operator can turn up detail for one run without editing the config.
//! Without `RUST_LOG`, SIGHUP applies a changed `[app] loglevel` in place.
//!
//! Besides the log itself, the last warnings and errors are kept in memory
//! ([`recent`]) for the status page: an operator who opens it after a
//! complaint sees what went wrong without searching the journal.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::reload::Handle;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

/// Warnings and errors kept for [`recent`].
pub const RECENT_KEPT: usize = 20;
/// Longest message text kept per event (bytes).
const RECENT_TEXT: usize = 400;

type Reload = Box<dyn Fn(EnvFilter) -> Result<(), String> + Send + Sync>;

/// Set by [`init`] when the level comes from the configuration.
static RELOAD: OnceLock<Reload> = OnceLock::new();

/// Whether [`init`] can use `level` (else it falls back to `info`); the
/// error describes what is wrong with it.
pub fn check_level(level: &str) -> Result<(), String> {
    parse_filter(level).map(|_| ())
}

/// `EnvFilter` takes almost any word as a target name (which would turn
/// every other log line off); a level with whitespace in it (a goconf
/// continuation line glued to it) is refused.
fn parse_filter(level: &str) -> Result<EnvFilter, String> {
    if level.chars().any(char::is_whitespace) {
        return Err(format!("{level:?} is not a log level"));
    }
    EnvFilter::try_new(level).map_err(|e| e.to_string())
}

/// Install the global subscriber. `level` is the configured default
/// (`error`, `warn`, `info`, `debug`, `trace` or a full filter directive).
pub fn init(level: &str) {
    let from_env = EnvFilter::try_from_default_env().ok();
    let reloadable = from_env.is_none();
    let filter = from_env
        .or_else(|| parse_filter(level).ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let log = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .with_filter(filter);
    // Warnings and errors are kept whatever the log level (a filter of its
    // own, so less severe callsites stay disabled for this layer).
    let keep = RecentLayer.with_filter(LevelFilter::WARN);
    // A second call (tests) keeps the first subscriber; that is fine.
    let installed = tracing_subscriber::registry()
        .with(log)
        .with(keep)
        .try_init()
        .is_ok();
    if installed && reloadable {
        let _ = RELOAD.set(boxed(handle));
    }
}

/// One kept warning or error.
#[derive(Clone, Debug, serde::Serialize)]
pub struct RecentEvent {
    /// Seconds since the Unix epoch.
    pub time: u64,
    /// `ERROR` or `WARN`.
    pub level: &'static str,
    /// The message followed by its fields (`key=value`), shortened.
    pub message: String,
}

/// Everything kept so far and how many warnings/errors there were in all.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Recent {
    pub warnings: u64,
    pub errors: u64,
    /// Newest first.
    pub events: Vec<RecentEvent>,
}

static RECENT: Mutex<VecDeque<RecentEvent>> = Mutex::new(VecDeque::new());
static WARNINGS: AtomicU64 = AtomicU64::new(0);
static ERRORS: AtomicU64 = AtomicU64::new(0);

/// The last [`RECENT_KEPT`] warnings and errors of this process.
pub fn recent() -> Recent {
    Recent {
        warnings: WARNINGS.load(Ordering::Relaxed),
        errors: ERRORS.load(Ordering::Relaxed),
        events: RECENT.lock().iter().rev().cloned().collect(),
    }
}

struct RecentLayer;

impl<S: Subscriber> Layer<S> for RecentLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        let level = if level == Level::ERROR {
            ERRORS.fetch_add(1, Ordering::Relaxed);
            "ERROR"
        } else {
            WARNINGS.fetch_add(1, Ordering::Relaxed);
            "WARN"
        };
        let mut text = Text::default();
        event.record(&mut text);
        let mut message = text.message;
        message.push_str(&text.fields);
        if message.len() > RECENT_TEXT {
            let mut cut = RECENT_TEXT;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push('…');
        }
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let mut kept = RECENT.lock();
        if kept.len() == RECENT_KEPT {
            kept.pop_front();
        }
        kept.push_back(RecentEvent {
            time,
            level,
            message,
        });
    }
}

#[derive(Default)]
struct Text {
    message: String,
    fields: String,
}

impl Visit for Text {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
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
    let filter = parse_filter(level)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warnings_and_errors_are_kept_newest_first_and_bounded() {
        // Other tests of this binary may log at the same time: only what
        // this test logged (unique texts) is looked at, counts as minimums.
        init("error");
        let before = recent();
        tracing::info!("kept-test info, not kept");
        tracing::warn!(peer = "192.0.2.1", "kept-test first warning");
        for i in 0..RECENT_KEPT {
            tracing::error!(n = i, "kept-test error {i}");
        }
        tracing::warn!(text = %"x".repeat(1000), "kept-test long");
        let r = recent();
        assert!(r.warnings >= before.warnings + 2);
        assert!(r.errors >= before.errors + RECENT_KEPT as u64);
        assert!(r.events.len() <= RECENT_KEPT);
        let pos = |text: &str| r.events.iter().position(|e| e.message.starts_with(text));
        let long = pos("kept-test long text=xxx").expect("the newest is kept");
        assert_eq!(r.events[long].level, "WARN");
        assert!(r.events[long].message.len() <= RECENT_TEXT + '…'.len_utf8());
        let last = pos(&format!("kept-test error {} n=", RECENT_KEPT - 1)).expect("kept");
        assert!(long < last, "newest first");
        if let Some(earlier) = pos(&format!("kept-test error {} n=", RECENT_KEPT - 2)) {
            assert!(last < earlier, "newest first");
        }
        assert!(pos("kept-test info").is_none());
        // Twenty-one newer events pushed the first warning out.
        assert!(pos("kept-test first warning").is_none());
    }
}
