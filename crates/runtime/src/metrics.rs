//! A small Prometheus registry: counters and gauges, with or without labels,
//! rendered in the text exposition format.
//!
//! Hand-written because the server needs only these two kinds and exact
//! control of names; hot paths take a cached handle (`Arc<AtomicU64>`) so an
//! increment is one atomic add.

use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

pub mod process;

pub(crate) trait Render: Send + Sync {
    fn render(&self, out: &mut String);
}

/// The set of metrics one process exposes at `/metrics`.
#[derive(Clone, Default)]
pub struct Registry {
    families: Arc<Mutex<Vec<Arc<dyn Render>>>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn counter(&self, name: &str, help: &str) -> Arc<Counter> {
        let c = Arc::new(Counter {
            name: name.into(),
            help: help.into(),
            value: AtomicU64::new(0),
        });
        self.families.lock().push(c.clone());
        c
    }

    pub fn gauge(&self, name: &str, help: &str) -> Arc<Gauge> {
        let g = Arc::new(Gauge {
            name: name.into(),
            help: help.into(),
            value: AtomicI64::new(0),
        });
        self.families.lock().push(g.clone());
        g
    }

    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> Arc<CounterVec> {
        let c = Arc::new(CounterVec(Vec_::new(name, help, labels, "counter")));
        self.families.lock().push(c.clone());
        c
    }

    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> Arc<GaugeVec> {
        let g = Arc::new(GaugeVec(Vec_::new(name, help, labels, "gauge")));
        self.families.lock().push(g.clone());
        g
    }

    /// Text exposition of every registered metric.
    /// Adds the `process_*` families the Go server's Prometheus client
    /// exports (CPU, memory, file descriptors, start time), read from
    /// `/proc/self` at each scrape, so existing dashboards keep working.
    pub fn register_process_metrics(&self) {
        self.families.lock().push(Arc::new(process::ProcessMetrics));
    }

    pub fn render(&self) -> String {
        let families = self.families.lock().clone();
        let mut out = String::with_capacity(4096);
        for f in families {
            f.render(&mut out);
        }
        out
    }
}

pub(crate) fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

pub struct Counter {
    name: String,
    help: String,
    value: AtomicU64,
}

impl Counter {
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }
    pub fn add(&self, n: u64) {
        self.value.fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Render for Counter {
    fn render(&self, out: &mut String) {
        header(out, &self.name, &self.help, "counter");
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

pub struct Gauge {
    name: String,
    help: String,
    value: AtomicI64,
}

impl Gauge {
    pub fn inc(&self) {
        self.value.fetch_add(1, Ordering::Relaxed);
    }
    pub fn dec(&self) {
        self.value.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn set(&self, v: i64) {
        self.value.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> i64 {
        self.value.load(Ordering::Relaxed)
    }
}

impl Render for Gauge {
    fn render(&self, out: &mut String) {
        header(out, &self.name, &self.help, "gauge");
        let _ = writeln!(out, "{} {}", self.name, self.get());
    }
}

struct Vec_<T> {
    name: String,
    help: String,
    labels: Vec<String>,
    kind: &'static str,
    values: Mutex<BTreeMap<Vec<String>, Arc<T>>>,
}

impl<T: Default> Vec_<T> {
    fn new(name: &str, help: &str, labels: &[&str], kind: &'static str) -> Self {
        Vec_ {
            name: name.into(),
            help: help.into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            kind,
            values: Mutex::new(BTreeMap::new()),
        }
    }
    fn handle(&self, values: &[&str]) -> Arc<T> {
        let key: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        self.values.lock().entry(key).or_default().clone()
    }
    fn remove(&self, values: &[&str]) {
        let key: Vec<String> = values.iter().map(|s| s.to_string()).collect();
        self.values.lock().remove(&key);
    }
    fn render_with(&self, out: &mut String, value: impl Fn(&T) -> String) {
        header(out, &self.name, &self.help, self.kind);
        for (key, v) in self.values.lock().iter() {
            out.push_str(&self.name);
            out.push('{');
            for (i, (l, val)) in self.labels.iter().zip(key).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(out, "{l}=\"{}\"", escape(val));
            }
            let _ = writeln!(out, "}} {}", value(v));
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Counter with labels.
pub struct CounterVec(Vec_<AtomicU64>);

impl CounterVec {
    pub fn inc(&self, labels: &[&str]) {
        self.0.handle(labels).fetch_add(1, Ordering::Relaxed);
    }
    /// A cached handle for hot paths.
    pub fn handle(&self, labels: &[&str]) -> Arc<AtomicU64> {
        self.0.handle(labels)
    }
    pub fn get(&self, labels: &[&str]) -> u64 {
        self.0.handle(labels).load(Ordering::Relaxed)
    }
    pub fn remove(&self, labels: &[&str]) {
        self.0.remove(labels)
    }
}

impl Render for CounterVec {
    fn render(&self, out: &mut String) {
        self.0
            .render_with(out, |v| v.load(Ordering::Relaxed).to_string());
    }
}

/// Gauge with labels.
pub struct GaugeVec(Vec_<AtomicI64>);

impl GaugeVec {
    pub fn add(&self, labels: &[&str], n: i64) {
        self.0.handle(labels).fetch_add(n, Ordering::Relaxed);
    }
    pub fn inc(&self, labels: &[&str]) {
        self.add(labels, 1)
    }
    pub fn dec(&self, labels: &[&str]) {
        self.add(labels, -1)
    }
    pub fn set(&self, labels: &[&str], v: i64) {
        self.0.handle(labels).store(v, Ordering::Relaxed);
    }
    pub fn get(&self, labels: &[&str]) -> i64 {
        self.0.handle(labels).load(Ordering::Relaxed)
    }
    pub fn remove(&self, labels: &[&str]) {
        self.0.remove(labels)
    }
}

impl Render for GaugeVec {
    fn render(&self, out: &mut String) {
        self.0
            .render_with(out, |v| v.load(Ordering::Relaxed).to_string());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_exposition_format() {
        let r = Registry::new();
        let c = r.counter("a_total", "A counter.");
        c.add(3);
        let g = r.gauge_vec("b", "A gauge.", &["x", "y"]);
        g.inc(&["1", "q\"uote"]);
        g.inc(&["1", "q\"uote"]);
        let text = r.render();
        assert!(text.contains("# TYPE a_total counter\na_total 3\n"));
        assert!(text.contains("b{x=\"1\",y=\"q\\\"uote\"} 2\n"));
        g.remove(&["1", "q\"uote"]);
        assert!(!r.render().contains("b{"));
    }
}
