//! What a SIGHUP tells the operator: which changed keys were applied,
//! which need a restart, and (by the caller) what was refused. Only key
//! names are logged, never values (they may be secrets).

use crate::config::Ini;
use std::collections::BTreeSet;

/// `[section] key` of every option whose value differs between `old` and
/// `new` (added, removed or changed), in a stable order.
pub fn changed_keys(old: &Ini, new: &Ini) -> Vec<(String, String)> {
    let mut all = BTreeSet::new();
    for ini in [old, new] {
        for section in ini.sections() {
            for (key, _) in ini.keys(section) {
                all.insert((section.to_owned(), key.to_owned()));
            }
        }
    }
    all.into_iter()
        .filter(|(s, k)| old.get(s, k) != new.get(s, k))
        .collect()
}

/// The outcome of a reload, split by what the running process can take.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReloadReport {
    /// Changes since the last reload that were applied.
    pub applied: Vec<String>,
    /// Changes since start-up that only a restart applies.
    pub restart: Vec<String>,
}

impl ReloadReport {
    /// Compares `new` with the configuration of the last reload (`current`)
    /// for what was applied, and with the one the process started with
    /// (`started`) for what still needs a restart, so the warning repeats
    /// on every reload until the restart.
    pub fn new(
        started: &Ini,
        current: &Ini,
        new: &Ini,
        reloadable: impl Fn(&str, &str) -> bool,
    ) -> ReloadReport {
        let name = |(s, k): (String, String)| format!("[{s}] {k}");
        ReloadReport {
            applied: changed_keys(current, new)
                .into_iter()
                .filter(|(s, k)| reloadable(s, k))
                .map(name)
                .collect(),
            restart: changed_keys(started, new)
                .into_iter()
                .filter(|(s, k)| !reloadable(s, k))
                .map(name)
                .collect(),
        }
    }

    /// One `info` line for what was applied, one `warn` line for what
    /// needs a restart.
    pub fn log(&self) {
        if self.applied.is_empty() {
            tracing::info!("configuration reloaded, no change that applies without a restart");
        } else {
            tracing::info!(
                "configuration reloaded, applied: {}",
                self.applied.join(", ")
            );
        }
        if !self.restart.is_empty() {
            tracing::warn!(
                "configuration changes that need a restart (the running values are kept): {}",
                self.restart.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_applied_and_restart() {
        let started = Ini::parse("[http]\nlisten = a\n[app]\nloglevel = info\n").expect("ini");
        let current = started.clone();
        let new =
            Ini::parse("[http]\nlisten = b\n[app]\nloglevel = debug\n[x]\ny = 1\n").expect("ini");
        let r = ReloadReport::new(&started, &current, &new, |s, _| s == "app");
        assert_eq!(r.applied, ["[app] loglevel"]);
        assert_eq!(r.restart, ["[http] listen", "[x] y"]);
        // Reloading the same file again: nothing new applied, the restart
        // is still pending.
        let again = ReloadReport::new(&started, &new, &new, |s, _| s == "app");
        assert!(again.applied.is_empty());
        assert_eq!(again.restart, ["[http] listen", "[x] y"]);
    }
}
