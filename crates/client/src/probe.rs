//! Readings during a run: the live progress line, per-second points of a
//! phase, and the CPU time and RSS of the server processes and of this one.

use std::cell::Cell;
use std::io::{IsTerminal, Write};

use tokio::time::{Duration, Instant};
use tracing::warn;

use crate::args::Options;
use crate::procstat::{ProcReader, Sample};
use crate::stats::{Point, Summary};

const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// The live progress line (only on a terminal).
pub struct Progress {
    on: bool,
}

impl Progress {
    pub fn new(opts: &Options) -> Progress {
        let tty = std::io::stdout().is_terminal() && std::io::stderr().is_terminal();
        Progress {
            on: opts.progress.unwrap_or(tty),
        }
    }

    pub fn show(&self, line: &str) {
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K{line}");
            let _ = e.flush();
        }
    }

    pub fn clear(&self) {
        if self.on {
            let mut e = std::io::stderr().lock();
            let _ = write!(e, "\r\x1b[2K");
            let _ = e.flush();
        }
    }
}

/// Per-second points of a phase.
pub struct Sampler {
    start: Instant,
    last: Instant,
    last_sent: u64,
    last_done: u64,
    last_cpu: Option<Sample>,
    pub points: Vec<Point>,
}

impl Sampler {
    pub fn new(start: Instant, sent: u64, done: u64, cpu: Option<Sample>) -> Sampler {
        Sampler {
            start,
            last: start,
            last_sent: sent,
            last_done: done,
            last_cpu: cpu,
            points: Vec::new(),
        }
    }

    pub fn due(&self) -> bool {
        self.last.elapsed() >= SAMPLE_EVERY
    }

    pub fn sample(&mut self, sent: u64, done: u64, lat: Summary, cpu: Option<Sample>) {
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

    pub fn last_rates(&self) -> (f64, f64) {
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

/// Readings of the server processes (summed) and of this process.
pub struct Probe {
    reader: ProcReader,
    pids: Vec<u32>,
    warned: Cell<bool>,
}

impl Probe {
    pub fn new(pids: Vec<u32>) -> Probe {
        Probe {
            reader: ProcReader::default(),
            pids,
            warned: Cell::new(false),
        }
    }

    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    /// All server processes together; `None` without `-server-pid` or when
    /// one of them cannot be read.
    pub fn server(&self) -> Option<Sample> {
        let mut samples = Vec::with_capacity(self.pids.len());
        for &pid in &self.pids {
            match self.reader.sample(Some(pid)) {
                Ok(s) => samples.push(s),
                Err(e) => {
                    if !self.warned.replace(true) {
                        warn!(pid, error = %e, "cannot read the server's /proc entry");
                    }
                    return None;
                }
            }
        }
        Sample::sum(&samples)
    }

    pub fn client(&self) -> Option<Sample> {
        self.reader.sample(None).ok()
    }
}

/// CPU use of a process between two readings.
pub fn cpu_between(a: Option<Sample>, b: Option<Sample>) -> Option<(f64, f64)> {
    let (a, b) = (a?, b?);
    let secs = (b.at - a.at).as_secs_f64();
    let cpu = b.cpu_since(&a);
    Some((cpu, if secs > 0.0 { cpu / secs } else { 0.0 }))
}

pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}
