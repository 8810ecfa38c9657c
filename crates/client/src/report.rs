//! The result of a run: JSON for machines, a short text for people.

use std::fmt::Write as _;

use serde::Serialize;

use crate::backend::CountsSnapshot;
use crate::stats::{Point, Summary};

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Version of the client that measured.
    pub version: &'static str,
    /// When the run started, `YYYY-MM-DD HH:MM:SS UTC`.
    pub started_at: String,
    pub scenario: String,
    pub servers: Vec<String>,
    /// The command line's settings that shape the load.
    pub parameters: Parameters,
    pub clients: Clients,
    /// Connecting and saying hello (and joining rooms); all rounds of `connect`.
    pub setup: Setup,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub messages: Option<Messages>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub idle: Option<Idle>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<Server>,
    pub client_process: ClientProcess,
    pub backend: CountsSnapshot,
    /// Per second of the set-up phase: hellos sent and answered.
    pub setup_timeline: Vec<Point>,
    /// Per second of the message phase: messages sent and delivered.
    pub timeline: Vec<Point>,
    /// Ctrl-C ended the run early.
    pub interrupted: bool,
    /// Why the run could not measure anything (too few clients set up).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub warnings: Vec<String>,
}

/// The settings of a run, for comparing reports.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Parameters {
    pub clients: usize,
    /// Seconds of the measured phase; `None`: until interrupted.
    pub duration_s: Option<f64>,
    /// Messages per second over all clients, if rate-driven.
    pub rate: Option<f64>,
    pub room_size: usize,
    pub window: usize,
    /// Each client's due messages coalesced into one write (`-batch`).
    pub batch: bool,
    pub payload: usize,
    pub concurrency: usize,
}

impl Parameters {
    pub fn of(o: &crate::args::Options) -> Parameters {
        Parameters {
            clients: o.max_clients,
            duration_s: o.effective_duration().map(|d| d.as_secs_f64()),
            rate: o.rate,
            room_size: o.room_size,
            window: o.window,
            batch: o.batch,
            payload: o.payload,
            concurrency: o.concurrency,
        }
    }

    /// One line for titles: what matters for `scenario`.
    pub fn describe(&self, scenario: &str) -> String {
        let mut s = format!("{scenario}: {} clients", self.clients);
        match scenario {
            "room" => {
                let _ = write!(s, ", rooms of {}", self.room_size);
            }
            "flood" => {
                let _ = write!(s, ", window {}", self.window);
            }
            _ => {}
        }
        if let Some(r) = self.rate {
            let _ = write!(s, ", {r} msg/s");
        }
        if self.batch {
            s.push_str(", batched");
        }
        if self.payload > 0 {
            let _ = write!(s, ", payload {} B", self.payload);
        }
        if let Some(d) = self.duration_s {
            let _ = write!(s, ", {d} s");
        }
        s
    }
}

/// Now as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn utc_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let t = secs.rem_euclid(86_400);
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        runtime::dates::date(secs),
        t / 3600,
        t % 3600 / 60,
        t % 60
    )
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Clients {
    pub requested: u64,
    pub ready: u64,
    pub failed: u64,
    /// Connections that ended before the run was over.
    pub dropped: u64,
    pub server_errors: u64,
    pub server_byes: u64,
    pub write_errors: u64,
    /// First set-up errors (at most a few).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Setup {
    pub rounds: u64,
    pub hellos: u64,
    /// Wall time of the set-up phases.
    pub seconds: f64,
    pub hellos_per_s: f64,
    /// TCP connect plus WebSocket upgrade.
    pub connect_latency: Summary,
    /// Hello sent to hello answer (includes the server's backend auth request).
    pub hello_latency: Summary,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rooms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s: Option<f64>,
    /// Server CPU per session set up, when set-up was only the hello.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ms_per_hello: Option<f64>,
    /// Server CPU per session set up, in `room` runs (hello and room join).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_ms_per_hello_and_join: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Messages {
    /// Messages handed to the server.
    pub sent: u64,
    /// Deliveries those should cause (room messages: one per other member).
    pub expected: u64,
    pub delivered: u64,
    /// Still owed after draining: the server lost them (or `-drain` was too short).
    pub lost: u64,
    pub duplicated: u64,
    /// Arrivals this run never sent.
    pub unknown: u64,
    /// Arrivals at a client the message was not addressed to.
    pub misdelivered: u64,
    /// Seconds of sending.
    pub send_seconds: f64,
    /// Seconds from the first send until the last delivery (or the drain timeout).
    pub seconds: f64,
    pub sent_per_s: f64,
    pub delivered_per_s: f64,
    /// Messages per second asked for with -rate (or the scenario's default).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_rate: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room_size: Option<u64>,
    pub payload_bytes: u64,
    pub latency: Summary,
    pub over_one_second: u64,
    pub flood_stalls: u64,
    pub paced_behind: u64,
    /// `message`s not from this run, events and other frames.
    pub foreign: u64,
    pub other_frames: u64,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Idle {
    pub sessions: u64,
    pub held_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib_before: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib_after: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib_per_session: Option<f64>,
    /// Projection of the server's RSS for 100,000 such sessions (MiB).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected_rss_mib_100k: Option<f64>,
    /// Sessions still connected at the end.
    pub alive_at_end: u64,
    /// Server CPU while holding the sessions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_s_while_idle: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Server {
    /// The processes measured; CPU and RSS are their sums.
    pub pids: Vec<u32>,
    /// CPU seconds in the measured phase (messages: send + drain; connect and
    /// idle: set-up).
    pub cpu_s: f64,
    /// Share of one core in the measured phase.
    pub cpu_share: f64,
    pub rss_kib_start: u64,
    pub rss_kib_end: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivered_per_cpu_s: Option<f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientProcess {
    /// CPU seconds of this process in the measured phase.
    pub cpu_s: f64,
    pub cpu_share: f64,
    /// The load generator used most of its core: figures may show the
    /// client's limit, not the server's.
    pub saturated: bool,
    pub rss_kib: u64,
    pub open_files_limit: Option<u64>,
}

impl Report {
    /// Whether the run saw lost, duplicated, misdelivered or unknown messages.
    pub fn bad(&self) -> bool {
        self.messages
            .as_ref()
            .is_some_and(|m| m.lost > 0 || m.duplicated > 0 || m.unknown > 0 || m.misdelivered > 0)
    }

    pub fn to_json(&self) -> String {
        // Plain data with finite floats (NaN is never produced: every ratio
        // is guarded), so serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// A few lines for a terminal.
    pub fn to_text(&self) -> String {
        let mut s = String::new();
        let _ = self.write_text(&mut s);
        s
    }

    /// The report as text, one section per phase.
    fn write_text(&self, s: &mut String) -> std::fmt::Result {
        self.write_clients(s)?;
        self.write_setup(s)?;
        self.write_messages(s)?;
        self.write_idle(s)?;
        self.write_processes(s)
    }

    fn write_clients(&self, s: &mut String) -> std::fmt::Result {
        let c = &self.clients;
        writeln!(
            s,
            "== {} against {}",
            self.scenario,
            self.servers.join(", ")
        )?;
        if self.interrupted {
            writeln!(s, "   (interrupted)")?;
        }
        if let Some(e) = &self.error {
            writeln!(s, "FAILED    {e}")?;
        }
        writeln!(
            s,
            "clients   {} ready of {} requested, {} failed, {} dropped, {} server errors, {} byes",
            c.ready, c.requested, c.failed, c.dropped, c.server_errors, c.server_byes
        )?;
        for e in &c.errors {
            writeln!(s, "          error: {e}")?;
        }
        Ok(())
    }

    fn write_setup(&self, s: &mut String) -> std::fmt::Result {
        let st = &self.setup;
        writeln!(
            s,
            "setup     {} hellos in {:.2} s = {:.0}/s{}",
            st.hellos,
            st.seconds,
            st.hellos_per_s,
            if st.rounds > 1 {
                format!(" ({} rounds)", st.rounds)
            } else {
                String::new()
            }
        )?;
        writeln!(s, "          connect {}", lat(&st.connect_latency))?;
        writeln!(s, "          hello   {}", lat(&st.hello_latency))?;
        if let Some(v) = st.server_cpu_ms_per_hello {
            writeln!(s, "          server CPU per hello: {v:.3} ms")?;
        }
        if let Some(v) = st.server_cpu_ms_per_hello_and_join {
            writeln!(s, "          server CPU per hello + room join: {v:.3} ms")?;
        }
        Ok(())
    }

    fn write_messages(&self, s: &mut String) -> std::fmt::Result {
        if let Some(m) = &self.messages {
            writeln!(
                s,
                "messages  sent {} ({:.0}/s), delivered {} of {} expected ({:.0}/s) in {:.2} s",
                m.sent, m.sent_per_s, m.delivered, m.expected, m.delivered_per_s, m.seconds
            )?;
            let mark = if m.lost > 0 || m.duplicated > 0 || m.unknown > 0 || m.misdelivered > 0 {
                "!!"
            } else {
                "  "
            };
            writeln!(
                s,
                "{mark}        LOST {}   DUPLICATED {}   MISDELIVERED {}   UNKNOWN {}",
                m.lost, m.duplicated, m.misdelivered, m.unknown
            )?;
            writeln!(s, "          latency {}", lat(&m.latency))?;
            if m.over_one_second > 0 {
                writeln!(
                    s,
                    "          {} deliveries took more than 1 s",
                    m.over_one_second
                )?;
            }
            if let Some(t) = m.target_rate {
                writeln!(s, "          target rate {t:.0}/s")?;
            }
        }
        Ok(())
    }

    fn write_idle(&self, s: &mut String) -> std::fmt::Result {
        if let Some(i) = &self.idle {
            writeln!(
                s,
                "idle      {} sessions held {:.1} s, {} alive at the end",
                i.sessions, i.held_seconds, i.alive_at_end
            )?;
            if let (Some(b), Some(a), Some(per)) =
                (i.rss_kib_before, i.rss_kib_after, i.rss_kib_per_session)
            {
                writeln!(
                    s,
                    "          server RSS {b} KiB -> {a} KiB = {per:.1} KiB per session{}",
                    i.projected_rss_mib_100k
                        .map(|p| format!(" (100k sessions: ~{p:.0} MiB)"))
                        .unwrap_or_default()
                )?;
            }
        }
        Ok(())
    }

    /// Server, client and backend counters, then warnings.
    fn write_processes(&self, s: &mut String) -> std::fmt::Result {
        if let Some(sv) = &self.server {
            writeln!(
                s,
                "server    pid {}: {:.3} CPU s ({:.0}% of a core), RSS {} -> {} KiB",
                sv.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join("+"),
                sv.cpu_s,
                sv.cpu_share * 100.0,
                sv.rss_kib_start,
                sv.rss_kib_end
            )?;
            if let Some(d) = sv.delivered_per_cpu_s {
                writeln!(
                    s,
                    "          {d:.0} delivered messages per server CPU-second"
                )?;
            }
        }
        let cp = &self.client_process;
        writeln!(
            s,
            "client    {:.3} CPU s ({:.0}% of a core){}",
            cp.cpu_s,
            cp.cpu_share * 100.0,
            if cp.saturated {
                " -- SATURATED: figures may be the client's limit"
            } else {
                ""
            }
        )?;
        let b = &self.backend;
        writeln!(
            s,
            "backend   auth {}, room {}, ping {}, session {}, capabilities {}, rejected {}",
            b.auth, b.room, b.ping, b.session, b.capabilities, b.rejected
        )?;
        for w in &self.warnings {
            writeln!(s, "warning   {w}")?;
        }
        Ok(())
    }
}

fn lat(s: &Summary) -> String {
    if s.count == 0 {
        return "-".to_owned();
    }
    format!(
        "p50 {:.3} ms, p95 {:.3} ms, p99 {:.3} ms, max {:.3} ms (n={})",
        s.p50_ms, s.p95_ms, s.p99_ms, s.max_ms, s.count
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn losses_are_loud() {
        let mut r = Report {
            scenario: "flood".into(),
            messages: Some(Messages {
                sent: 10,
                expected: 10,
                delivered: 9,
                lost: 1,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(r.bad());
        let t = r.to_text();
        assert!(t.contains("!!        LOST 1"), "{t}");
        r.messages = Some(Messages::default());
        assert!(!r.bad());
        let v: serde_json::Value = serde_json::from_str(&r.to_json()).expect("json");
        assert_eq!(v["messages"]["lost"], 0);
        assert_eq!(v["messages"]["duplicated"], 0);
        assert_eq!(v["messages"]["misdelivered"], 0);
        r.messages = Some(Messages {
            misdelivered: 1,
            ..Default::default()
        });
        assert!(r.bad(), "a misdelivery fails the run");
        assert!(r.to_text().contains("MISDELIVERED 1"));
    }
}
