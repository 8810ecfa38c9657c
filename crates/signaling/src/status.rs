//! What an operator wants to know at a glance: `/api/v1/serverinfo` (JSON)
//! and `/status` (the same as a small HTML page). Both are served only to
//! `[stats] allowed_ips`, like `/api/v1/stats`, since they reveal backends.

use hub::SessionCounts;
use serde::Serialize;

use crate::Server;

/// The body of `/api/v1/serverinfo`.
#[derive(Debug, Serialize)]
pub struct ServerInfo {
    pub version: &'static str,
    /// Whole seconds since the server started.
    pub uptime: u64,
    /// SIGUSR1 received: new connections are refused, the process exits
    /// when the last session ends.
    pub draining: bool,
    pub rooms: usize,
    pub sessions: Sessions,
    pub nats: Nats,
    /// The media server (`/api/v1/stats`' `mcu`), absent without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mcu: Option<serde_json::Value>,
    /// Warnings and errors logged since start, with the last few.
    pub log: runtime::logging::Recent,
    /// When this was collected (seconds since the Unix epoch), to show the
    /// age of the logged events.
    pub now: u64,
}

#[derive(Debug, Serialize)]
pub struct Sessions {
    pub total: usize,
    /// Backend id -> client type (`client`, `internal`, `virtual`,
    /// `federation`) -> count.
    pub backends: SessionCounts,
}

#[derive(Debug, Serialize)]
pub struct Nats {
    /// `in-process` (single server, no NATS) or `nats` (clustered).
    pub mode: &'static str,
    /// Always true for the in-process bus.
    pub connected: bool,
}

impl ServerInfo {
    pub fn collect(server: &Server) -> ServerInfo {
        let stats = server.hub.stats();
        let mut backends = server.hub.session_counts();
        // Every configured backend, also without sessions: "no sessions
        // from backend1" is worth seeing when its users cannot connect.
        for b in server.hub.backends.all() {
            backends.entry(b.id.clone()).or_default();
        }
        ServerInfo {
            mcu: stats.mcu.clone(),
            version: crate::VERSION,
            uptime: server.started.elapsed().as_secs(),
            draining: stats.draining,
            rooms: stats.rooms,
            sessions: Sessions {
                total: backends.values().flat_map(|m| m.values()).sum(),
                backends,
            },
            log: runtime::logging::recent(),
            now: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            nats: match &server.nats {
                Some(n) => Nats {
                    mode: "nats",
                    connected: n.is_connected(),
                },
                None => Nats {
                    mode: "in-process",
                    connected: true,
                },
            },
        }
    }

    /// `/status`: one self-contained page (no external assets, so it works
    /// behind any proxy and offline), refreshing itself every 10 s.
    pub fn to_html(&self) -> String {
        let rows = self.session_rows();
        let events = self.event_rows();
        let (state, state_class) = self.state_cell();
        let (nats, nats_class) = self.nats_cell();
        let proxies = self.proxy_table();
        let (mcu, mcu_class) = self.mcu_cell();
        format!(
            r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="10">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Signaling server status</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; background: #fafafa; }}
h1 {{ font-size: 1.4em; }} h2 {{ font-size: 1.1em; }}
#log td {{ vertical-align: top; }} #log td:last-child {{ font-family: monospace; font-size: .85em; word-break: break-all; }}
table {{ border-collapse: collapse; margin-bottom: 1.5em; }}
th, td {{ text-align: left; padding: .3em .8em; border-bottom: 1px solid #ddd; }}
td.n {{ text-align: right; font-variant-numeric: tabular-nums; }}
.ok {{ color: #17692e; }} .warn {{ color: #a15c00; }} .bad {{ color: #b00020; }}
footer {{ color: #777; font-size: .85em; }}
</style>
</head>
<body>
<h1>Signaling server status</h1>
<table id="server">
<tr><th>Version</th><td>{version}</td></tr>
<tr><th>State</th><td id="state" class="{state_class}">{state}</td></tr>
<tr><th>Uptime</th><td id="uptime">{uptime}</td></tr>
<tr><th>NATS</th><td id="nats" class="{nats_class}">{nats}</td></tr>
<tr><th>MCU</th><td id="mcu" class="{mcu_class}">{mcu}</td></tr>
<tr><th>Rooms</th><td id="rooms" class="n">{rooms}</td></tr>
<tr><th>Sessions</th><td id="sessions" class="n">{total}</td></tr>
</table>
{proxies}<table id="backends">
<tr><th>Backend</th><th>Client type</th><th>Sessions</th></tr>
{rows}</table>
<h2>Recent warnings and errors</h2>
<p id="logcounts">{warnings} warnings, {errors} errors since start; the last {kept} are kept.</p>
<table id="log">
<tr><th>When</th><th>Level</th><th>Message</th></tr>
{events}</table>
<footer>Refreshes every 10 seconds. The same as JSON: <code>/api/v1/serverinfo</code>.</footer>
</body>
</html>
"#,
            version = escape(self.version),
            mcu = escape(&mcu),
            uptime = human_duration(self.uptime),
            rooms = self.rooms,
            total = self.sessions.total,
            warnings = self.log.warnings,
            errors = self.log.errors,
            kept = runtime::logging::RECENT_KEPT,
        )
    }

    /// `/status` rows of the backends table: sessions per backend and client
    /// type.
    fn session_rows(&self) -> String {
        let mut rows = String::new();
        for (backend, types) in &self.sessions.backends {
            if types.is_empty() {
                rows.push_str(&format!(
                    "<tr><td>{}</td><td>-</td><td class=\"n\">0</td></tr>\n",
                    escape(backend)
                ));
            }
            for (kind, n) in types {
                rows.push_str(&format!(
                    "<tr><td>{}</td><td>{}</td><td class=\"n\">{n}</td></tr>\n",
                    escape(backend),
                    escape(kind)
                ));
            }
        }
        if rows.is_empty() {
            rows.push_str("<tr><td colspan=\"3\">no sessions</td></tr>\n");
        }
        rows
    }

    /// `/status` rows of the recent warnings and errors.
    fn event_rows(&self) -> String {
        let mut events = String::new();
        for e in &self.log.events {
            let class = if e.level == "ERROR" { "bad" } else { "warn" };
            events.push_str(&format!(
                "<tr><td>{} ago</td><td class=\"{class}\">{}</td><td>{}</td></tr>\n",
                human_duration(self.now.saturating_sub(e.time)),
                e.level,
                escape(&e.message)
            ));
        }
        if events.is_empty() {
            events.push_str("<tr><td colspan=\"3\">none</td></tr>\n");
        }
        events
    }

    /// `/status` server state text and its CSS class.
    fn state_cell(&self) -> (&'static str, &'static str) {
        if self.draining {
            ("draining: refusing new connections", "warn")
        } else {
            ("running", "ok")
        }
    }

    /// `/status` NATS text and its CSS class.
    fn nats_cell(&self) -> (&'static str, &'static str) {
        match (self.nats.mode, self.nats.connected) {
            ("in-process", _) => ("in-process bus (single server)", "ok"),
            (_, true) => ("connected", "ok"),
            (_, false) => ("disconnected", "bad"),
        }
    }

    /// `/status` table of MCU proxies (empty without proxies).
    fn proxy_table(&self) -> String {
        let mut proxies = String::new();
        if let Some(list) = self.mcu.as_ref().and_then(|m| m["proxies"].as_array()) {
            proxies.push_str(
                "<table id=\"proxies\">\n<tr><th>Proxy</th><th>State</th><th>Load</th>\
                 <th>Country</th><th>Clients</th></tr>\n",
            );
            for p in list {
                let (state, class) = match (p["connected"] == true, p["shutdown"] == true) {
                    (true, false) => ("connected", "ok"),
                    (true, true) => ("draining", "warn"),
                    (false, _) => ("disconnected", "bad"),
                };
                proxies.push_str(&format!(
                    "<tr><td>{}</td><td class=\"{class}\">{state}</td><td class=\"n\">{}</td>\
                     <td>{}</td><td class=\"n\">{}</td></tr>\n",
                    escape(p["url"].as_str().unwrap_or_default()),
                    p["load"].as_u64().unwrap_or(0),
                    escape(p["country"].as_str().unwrap_or_default()),
                    p["clients"].as_u64().unwrap_or(0),
                ));
            }
            proxies.push_str("</table>\n");
        }
        proxies
    }

    /// `/status` MCU summary and its CSS class.
    fn mcu_cell(&self) -> (String, &'static str) {
        match &self.mcu {
            None => ("none (peer to peer)".to_owned(), "ok"),
            Some(m) if m["type"] == "proxy" => {
                let list = m["proxies"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                let up = list.iter().filter(|p| p["connected"] == true).count();
                (
                    format!(
                        "{up} of {} proxies connected, {} publishers",
                        list.len(),
                        m["publishers"]
                    ),
                    if up == 0 {
                        "bad"
                    } else if up < list.len() {
                        "warn"
                    } else {
                        "ok"
                    },
                )
            }
            Some(m) if m["connected"] == true => (
                format!(
                    "{} connected, {} publishers",
                    m["url"].as_str().unwrap_or_default(),
                    m["publishers"]
                ),
                "ok",
            ),
            Some(m) => (
                format!("{} disconnected", m["url"].as_str().unwrap_or_default()),
                "bad",
            ),
        }
    }
}

/// `3d 4h 5m 6s`, leaving out leading zero units.
fn human_duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m {s}s"),
        _ => format!("{d}d {h}h {m}m {s}s"),
    }
}

/// Backend ids come from the configuration; escape them anyway.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_mcu_lists_each_proxy() {
        let info = ServerInfo {
            version: "x",
            uptime: 1,
            draining: false,
            rooms: 0,
            sessions: Sessions {
                total: 0,
                backends: Default::default(),
            },
            nats: Nats {
                mode: "in-process",
                connected: true,
            },
            mcu: Some(
                serde_json::json!({"type": "proxy", "connected": true, "publishers": 3,
                "proxies": [
                    {"url": "ws://a:9090", "connected": true, "load": 12, "country": "DE",
                     "shutdown": false, "clients": 4},
                    {"url": "ws://b<9090", "connected": true, "load": 0, "country": "",
                     "shutdown": true, "clients": 0},
                    {"url": "ws://c:9090", "connected": false, "load": 0, "country": "",
                     "shutdown": false, "clients": 0}]}),
            ),
            log: Default::default(),
            now: 0,
        };
        let html = info.to_html();
        assert!(
            html.contains(
                r#"<td id="mcu" class="warn">2 of 3 proxies connected, 3 publishers</td>"#
            ),
            "{html}"
        );
        assert!(html.contains(r#"<tr><td>ws://a:9090</td><td class="ok">connected</td><td class="n">12</td><td>DE</td><td class="n">4</td></tr>"#), "{html}");
        assert!(
            html.contains(r#"<td>ws://b&lt;9090</td><td class="warn">draining</td>"#),
            "{html}"
        );
        assert!(
            html.contains(r#"<td>ws://c:9090</td><td class="bad">disconnected</td>"#),
            "{html}"
        );
    }

    #[test]
    fn human_duration_drops_leading_zero_units() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(65), "1m 5s");
        assert_eq!(human_duration(3600), "1h 0m 0s");
        assert_eq!(human_duration(90061), "1d 1h 1m 1s");
    }

    #[test]
    fn escape_html() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
