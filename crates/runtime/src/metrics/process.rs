//! The `process_*` metrics of the Go server's Prometheus client, read from
//! `/proc/self` when `/metrics` is scraped: same names, types and units,
//! so dashboards built for the Go server keep working. On a system without
//! `/proc` the families are left out.

use super::{header, Render};
use std::fmt::Write;

/// Clock ticks per second of `/proc/*/stat` times: `USER_HZ`, 100 on
/// every Linux architecture's user-space ABI.
const TICKS_PER_SECOND: f64 = 100.0;

/// What one scrape reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub start_time_seconds: f64,
    pub open_fds: u64,
    pub max_fds: Option<u64>,
}

/// Fields after the command name of `/proc/PID/stat` (the name may hold
/// spaces and parentheses, so split after its last `)`): utime, stime,
/// starttime (ticks since boot).
fn parse_stat(stat: &str) -> Option<(u64, u64, u64)> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state); utime is field 14, stime 15,
    // starttime 22.
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    Some((field(14)?, field(15)?, field(22)?))
}

/// A `Name:   1234 kB` line of `/proc/PID/status`, in bytes.
fn status_kib(status: &str, name: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .map(|kib| kib * 1024)
}

/// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
fn boot_time(stat: &str) -> Option<u64> {
    stat.lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
}

impl ProcessStats {
    /// Reads this process's figures; `None` without `/proc`.
    pub fn read() -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let boot = boot_time(&std::fs::read_to_string("/proc/stat").ok()?)?;
        let (utime, stime, start) = parse_stat(&stat)?;
        let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count() as u64;
        Some(ProcessStats {
            cpu_seconds: (utime + stime) as f64 / TICKS_PER_SECOND,
            resident_bytes: status_kib(&status, "VmRSS").unwrap_or(0),
            virtual_bytes: status_kib(&status, "VmSize").unwrap_or(0),
            start_time_seconds: boot as f64 + start as f64 / TICKS_PER_SECOND,
            open_fds,
            max_fds: rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft),
        })
    }

    fn render(&self, out: &mut String) {
        let mut one = |name: &str, help: &str, kind: &str, value: String| {
            header(out, name, help, kind);
            let _ = writeln!(out, "{name} {value}");
        };
        one(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
            "counter",
            format!("{}", self.cpu_seconds),
        );
        one(
            "process_open_fds",
            "Number of open file descriptors.",
            "gauge",
            self.open_fds.to_string(),
        );
        if let Some(max) = self.max_fds {
            one(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                "gauge",
                max.to_string(),
            );
        }
        one(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            "gauge",
            self.virtual_bytes.to_string(),
        );
        one(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            "gauge",
            self.resident_bytes.to_string(),
        );
        one(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            "gauge",
            format!("{}", self.start_time_seconds),
        );
    }
}

/// The collector a [`super::Registry`] renders.
pub(crate) struct ProcessMetrics;

impl Render for ProcessMetrics {
    fn render(&self, out: &mut String) {
        if let Some(s) = ProcessStats::read() {
            s.render(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat =
            "42 (a) b (c)) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 8 0 12345 1000 200";
        assert_eq!(parse_stat(stat), Some((250, 50, 12345)));
        assert_eq!(parse_stat("garbage"), None);
        let status = "Name:\tx\nVmSize:\t  2048 kB\nVmRSS:\t    512 kB\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(512 * 1024));
        assert_eq!(status_kib(status, "VmSize"), Some(2048 * 1024));
        assert_eq!(status_kib(status, "VmSwap"), None);
        assert_eq!(
            boot_time("cpu 1 2\nbtime 1700000000\n"),
            Some(1_700_000_000)
        );
    }

    #[test]
    fn reads_this_process() {
        let s = ProcessStats::read().expect("/proc is mounted");
        assert!(s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes);
        assert!(s.open_fds >= 3, "{s:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs_f64();
        assert!(s.start_time_seconds <= now + 1.0 && s.start_time_seconds > now - 86_400.0);
        let mut text = String::new();
        s.render(&mut text);
        assert!(
            text.contains("# TYPE process_cpu_seconds_total counter\n"),
            "{text}"
        );
        assert!(text.contains("\nprocess_resident_memory_bytes "), "{text}");
    }
}
