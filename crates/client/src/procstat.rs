//! CPU time and resident memory of a process, from `/proc` (Linux).

use std::io;
use std::time::Instant;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub struct Sample {
    /// User plus system CPU time of all threads (also exited ones), in
    /// seconds; counted in clock ticks (10 ms).
    pub cpu_s: f64,
    /// CPU time of the live threads in nanoseconds (sum of their
    /// `schedstat`), if the kernel provides it.
    pub thread_cpu_ns: Option<u64>,
    /// Resident set size in KiB.
    pub rss_kib: u64,
    pub at: Instant,
}

impl Sample {
    /// CPU seconds used since `earlier`: nanosecond precise from the
    /// threads' `schedstat` when that agrees with the tick count (it does not
    /// when threads came or went), else from the ticks.
    pub fn cpu_since(&self, earlier: &Sample) -> f64 {
        let coarse = (self.cpu_s - earlier.cpu_s).max(0.0);
        match (self.thread_cpu_ns, earlier.thread_cpu_ns) {
            (Some(b), Some(a)) if b >= a => {
                let precise = (b - a) as f64 / 1e9;
                // Two ticks of slack for the rounding of each reading.
                if (precise - coarse).abs() <= 0.025 + 0.05 * coarse {
                    precise
                } else {
                    coarse
                }
            }
            _ => coarse,
        }
    }
}

impl Sample {
    /// Several processes read together (a cluster's servers and its
    /// nats-server) as one: CPU and RSS summed, the time of the last reading.
    pub fn sum(samples: &[Sample]) -> Option<Sample> {
        let last = samples.last()?;
        Some(Sample {
            cpu_s: samples.iter().map(|s| s.cpu_s).sum(),
            thread_cpu_ns: samples.iter().map(|s| s.thread_cpu_ns).sum(),
            rss_kib: samples.iter().map(|s| s.rss_kib).sum(),
            at: last.at,
        })
    }
}

/// Reads processes' `/proc` entries; knows the kernel's clock tick.
#[derive(Clone, Debug)]
pub struct ProcReader {
    ticks_per_s: f64,
}

impl Default for ProcReader {
    fn default() -> Self {
        ProcReader {
            ticks_per_s: clock_ticks_per_second() as f64,
        }
    }
}

impl ProcReader {
    /// Reads `pid` (`None`: this process).
    pub fn sample(&self, pid: Option<u32>) -> io::Result<Sample> {
        let dir = match pid {
            Some(p) => format!("/proc/{p}"),
            None => "/proc/self".to_owned(),
        };
        let stat = std::fs::read_to_string(format!("{dir}/stat"))?;
        let status = std::fs::read_to_string(format!("{dir}/status"))?;
        let ticks = parse_stat_ticks(&stat)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "unreadable stat"))?;
        let rss_kib = parse_status_rss_kib(&status)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no VmRSS in status"))?;
        Ok(Sample {
            cpu_s: ticks as f64 / self.ticks_per_s,
            thread_cpu_ns: thread_cpu_ns(&dir),
            rss_kib,
            at: Instant::now(),
        })
    }
}

/// Sum of the first `schedstat` field (nanoseconds on a CPU) of every thread.
fn thread_cpu_ns(dir: &str) -> Option<u64> {
    let mut total = 0u64;
    for entry in std::fs::read_dir(format!("{dir}/task")).ok()? {
        let path = entry.ok()?.path().join("schedstat");
        // A thread may exit between listing and reading: skip it.
        let Ok(text) = std::fs::read_to_string(path) else {
            continue;
        };
        total += parse_schedstat_ns(&text)?;
    }
    Some(total)
}

/// First field of a `schedstat` line: time spent on a CPU, in nanoseconds.
pub fn parse_schedstat_ns(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `utime + stime` (fields 14 and 15) from the text of `/proc/<pid>/stat`.
/// The command name (field 2) may contain spaces and parentheses, so fields
/// are counted after its last `)`.
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // After the name: state is field 3, utime field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `VmRSS` in KiB from the text of `/proc/<pid>/status`.
pub fn parse_status_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let mut parts = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = parts.next()?.parse().ok()?;
    match parts.next() {
        Some("kB") | None => Some(value),
        Some(_) => None,
    }
}

/// The unit of `/proc/<pid>/stat` times (`USER_HZ`). Asked from `getconf`
/// once, because reading it directly needs `sysconf`; 100 on every common
/// Linux architecture, which is also the fallback.
fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_of_several_processes_add_up() {
        let at = Instant::now();
        let a = Sample {
            cpu_s: 1.5,
            thread_cpu_ns: Some(1_500_000_000),
            rss_kib: 100,
            at,
        };
        let b = Sample {
            cpu_s: 0.25,
            thread_cpu_ns: Some(250_000_000),
            rss_kib: 20,
            at,
        };
        let s = Sample::sum(&[a, b]).expect("sum");
        assert_eq!(
            (s.cpu_s, s.thread_cpu_ns, s.rss_kib),
            (1.75, Some(1_750_000_000), 120)
        );
        let no_sched = Sample {
            thread_cpu_ns: None,
            ..b
        };
        assert_eq!(
            Sample::sum(&[a, no_sched]).expect("sum").thread_cpu_ns,
            None
        );
        assert!(Sample::sum(&[]).is_none());
    }

    #[test]
    fn stat_with_odd_command_name() {
        let stat = "1234 (my (weird) name) S 1 1234 1234 0 -1 4194560 \
                    500 0 0 0 250 75 0 0 20 0 4 0 12345 1000000 300 \
                    18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(325));
    }

    #[test]
    fn stat_garbage() {
        assert_eq!(parse_stat_ticks("no parens here"), None);
        assert_eq!(parse_stat_ticks("1 (x) S 1 2"), None);
    }

    #[test]
    fn status_rss() {
        let status = "Name:\tsignaling\nVmPeak:\t  9999 kB\nVmRSS:\t   43210 kB\nThreads:\t3\n";
        assert_eq!(parse_status_rss_kib(status), Some(43210));
        assert_eq!(parse_status_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn schedstat() {
        assert_eq!(
            parse_schedstat_ns("6491259464 316265904 3387\n"),
            Some(6_491_259_464)
        );
        assert_eq!(parse_schedstat_ns(""), None);
    }

    fn sample(cpu_s: f64, ns: Option<u64>) -> Sample {
        Sample {
            cpu_s,
            thread_cpu_ns: ns,
            rss_kib: 0,
            at: Instant::now(),
        }
    }

    #[test]
    fn precise_cpu_when_consistent() {
        let a = sample(1.00, Some(1_003_000_000));
        let b = sample(1.01, Some(1_016_500_000));
        assert!((b.cpu_since(&a) - 0.0135).abs() < 1e-9);
        // A thread exited: its time vanished from the sum; use ticks.
        let c = sample(2.00, Some(500_000_000));
        assert!((c.cpu_since(&a) - 1.0).abs() < 1e-9);
        // Inconsistent (a thread with much CPU appeared): ticks.
        let d = sample(1.10, Some(3_000_000_000));
        assert!((d.cpu_since(&a) - 0.1).abs() < 1e-9);
        assert!((sample(1.5, None).cpu_since(&a) - 0.5).abs() < 1e-9);
    }

    #[test]
    fn reads_own_process() {
        let r = ProcReader::default();
        let s = r.sample(None).expect("own /proc entry");
        assert!(s.rss_kib > 0);
        assert!(s.cpu_s >= 0.0);
        let me = std::process::id();
        assert!(r.sample(Some(me)).is_ok());
    }
}
