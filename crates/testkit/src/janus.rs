//! A real Janus gateway for tests: generated configuration in a temp dir,
//! WebSocket transport on a free loopback port, VideoRoom as the only
//! plugin, ICE restricted to 127.0.0.1, killed on drop.
//!
//! Janus 1.1 skips every interface flagged `IFF_LOOPBACK` when it gathers
//! ICE candidates, whatever `ice_enforce_list` says (see
//! `/work/shared/TEST-PEERS.md`). The harness therefore builds a tiny
//! `LD_PRELOAD` library that clears that flag on `lo` in `getifaddrs()`, so
//! Janus offers exactly one host candidate, 127.0.0.1, and no packet leaves
//! the machine.

#![allow(clippy::unwrap_used)]

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod setup;

use setup::{
    build_shim, find_janus, free_port, janus_lib_dir, temp_dir, write_config, ADMIN_SECRET,
};

/// How long Janus may take to listen on its WebSocket port.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);

/// Settings a test may change.
#[derive(Clone, Debug)]
pub struct JanusOptions {
    /// `general.session_timeout`, seconds.
    pub session_timeout: u64,
}

impl Default for JanusOptions {
    fn default() -> Self {
        JanusOptions { session_timeout: 5 }
    }
}

/// A running Janus.
#[derive(Debug)]
pub struct Janus {
    child: Option<Child>,
    port: u16,
    admin_port: u16,
    binary: PathBuf,
    dir: PathBuf,
}

impl Janus {
    pub async fn start() -> Janus {
        Janus::start_with(JanusOptions::default()).await
    }

    /// Starts Janus and waits until its WebSocket port accepts connections.
    /// Panics (failing the test) if Janus is missing or does not come up.
    pub async fn start_with(options: JanusOptions) -> Janus {
        let binary = find_janus().unwrap();
        let lib = janus_lib_dir().unwrap();
        let dir = temp_dir().unwrap();
        build_shim(&dir).unwrap();
        let mut last_err = None;
        // The probed port may be taken before Janus binds it; try again then.
        for _ in 0..3 {
            let port = free_port();
            let admin_port = free_port();
            write_config(&dir, &lib, port, admin_port, &options).unwrap();
            let mut janus = Janus {
                child: None,
                port,
                admin_port,
                binary: binary.clone(),
                dir: dir.clone(),
            };
            match janus.spawn().await {
                Ok(()) => return janus,
                Err(e) => {
                    // Keep the directory for the next attempt.
                    janus.kill();
                    janus.dir = PathBuf::new();
                    last_err = Some(e);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        panic!(
            "Janus did not start: {}",
            last_err.map(|e| e.to_string()).unwrap_or_default()
        );
    }

    async fn spawn(&mut self) -> io::Result<()> {
        let console = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("console.log"))?;
        let console_err = console.try_clone()?;
        let child = Command::new(&self.binary)
            .arg("-F")
            .arg(self.dir.join("conf"))
            .arg("-L")
            .arg(self.dir.join("janus.log"))
            .args(["-N", "-o"])
            .env("LD_PRELOAD", self.dir.join("getifaddrs_shim.so"))
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(console_err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start janus: {e}")))?;
        self.child = Some(child);
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Ok(_)) = tokio::time::timeout(
                Duration::from_millis(500),
                tokio::net::TcpStream::connect(addr),
            )
            .await
            {
                // Another test's server may have taken the probed port.
                return match self.pid() {
                    Some(pid) if !crate::process::listens_on(pid, self.port) => Err(
                        io::Error::other(format!("{addr} is taken by another process")),
                    ),
                    _ => Ok(()),
                };
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(io::Error::other(format!(
                        "janus exited ({status}); log:\n{}",
                        self.log_tail(3000)
                    )));
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(io::Error::other(format!(
                    "janus not listening on {addr} after {STARTUP_TIMEOUT:?}; log:\n{}",
                    self.log_tail(3000)
                )));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `ws://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn signal(&self, sig: &str) {
        let pid = self.pid().expect("janus is not running");
        let status = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill {sig} {pid} failed");
    }

    /// Freezes Janus (SIGSTOP): the socket stays open, nothing is answered.
    /// Returns once every thread of Janus is stopped (a signal reaches the
    /// threads of a busy process a little later, and a thread still running
    /// could answer one more request).
    pub fn pause(&self) {
        self.signal("-STOP");
        let pid = self.pid().unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            let all_stopped = std::fs::read_dir(format!("/proc/{pid}/task"))
                .map(|tasks| {
                    tasks.flatten().all(|task| {
                        let stat =
                            std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                        // The state follows the parenthesised command name.
                        stat.rsplit_once(") ")
                            .is_some_and(|(_, rest)| rest.starts_with('T') || rest.starts_with('t'))
                    })
                })
                .unwrap_or(false);
            if all_stopped {
                return;
            }
            assert!(std::time::Instant::now() < deadline, "janus did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Undoes [`Janus::pause`].
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kills Janus (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts Janus again with the same configuration and port.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await.unwrap();
    }

    /// How many plugin handles exist in Janus right now, over all sessions
    /// (admin API `list_sessions` + `list_handles`): tests check with it
    /// that nothing leaked.
    pub async fn handle_count(&self) -> usize {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://127.0.0.1:{}", self.admin_port)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            http::HeaderValue::from_static("janus-admin-protocol"),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
        let sessions = admin_call(&mut ws, serde_json::json!({"janus": "list_sessions"})).await;
        let ids: Vec<u64> = sessions["sessions"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        let mut n = 0;
        for id in ids {
            let handles = admin_call(
                &mut ws,
                serde_json::json!({"janus": "list_handles", "session_id": id}),
            )
            .await;
            n += handles["handles"].as_array().map(Vec::len).unwrap_or(0);
        }
        n
    }

    /// The end of Janus's log, for failure messages.
    pub fn log_tail(&self, max: usize) -> String {
        let mut out = String::new();
        for name in ["console.log", "janus.log"] {
            let data = std::fs::read(self.dir.join(name)).unwrap_or_default();
            let start = data.len().saturating_sub(max);
            out.push_str(&format!(
                "--- {name} ---\n{}\n",
                String::from_utf8_lossy(&data[start..])
            ));
        }
        out
    }

    /// The whole Janus log.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.dir.join("janus.log")).unwrap_or_default())
            .into_owned()
    }
}

type AdminSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn admin_call(ws: &mut AdminSocket, mut body: serde_json::Value) -> serde_json::Value {
    use futures_util::{SinkExt, StreamExt};
    body["transaction"] = serde_json::json!(crate::random_hex(8));
    body["admin_secret"] = serde_json::json!(ADMIN_SECRET);
    ws.send(crate::WsMessage::text(body.to_string()))
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("Janus admin API did not answer")
            .expect("Janus admin API closed")
            .unwrap();
        if let crate::WsMessage::Text(t) = msg {
            return serde_json::from_str(t.as_str()).unwrap();
        }
    }
}

impl Drop for Janus {
    fn drop(&mut self) {
        self.kill();
        if !self.dir.as_os_str().is_empty() {
            if std::thread::panicking() {
                eprintln!("Janus log of the failed test:\n{}", self.log_tail(6000));
            }
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// A minimal but valid WebRTC offer: audio (Opus) and video (VP8), BUNDLEd,
/// with an ICE ufrag/pwd and a DTLS fingerprint. No media will ever flow.
pub fn publisher_offer() -> String {
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", (i * 37 + 11) % 256))
        .collect::<Vec<_>>()
        .join(":");
    let lines = [
        "v=0".to_owned(),
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1".to_owned(),
        "s=-".to_owned(),
        "t=0 0".to_owned(),
        "a=group:BUNDLE 0 1".to_owned(),
        "a=msid-semantic: WMS stream".to_owned(),
        "m=audio 9 UDP/TLS/RTP/SAVPF 111".to_owned(),
        "c=IN IP4 0.0.0.0".to_owned(),
        "a=rtcp:9 IN IP4 0.0.0.0".to_owned(),
        "a=ice-ufrag:t3st".to_owned(),
        "a=ice-pwd:abcdefghijklmnopqrstuvwx".to_owned(),
        "a=ice-options:trickle".to_owned(),
        format!("a=fingerprint:sha-256 {fingerprint}"),
        "a=setup:actpass".to_owned(),
        "a=mid:0".to_owned(),
        "a=sendonly".to_owned(),
        "a=rtcp-mux".to_owned(),
        "a=rtpmap:111 opus/48000/2".to_owned(),
        "a=fmtp:111 minptime=10;useinbandfec=1".to_owned(),
        "a=ssrc:1111 cname:test".to_owned(),
        "a=ssrc:1111 msid:stream audio0".to_owned(),
        "m=video 9 UDP/TLS/RTP/SAVPF 96".to_owned(),
        "c=IN IP4 0.0.0.0".to_owned(),
        "a=rtcp:9 IN IP4 0.0.0.0".to_owned(),
        "a=ice-ufrag:t3st".to_owned(),
        "a=ice-pwd:abcdefghijklmnopqrstuvwx".to_owned(),
        "a=ice-options:trickle".to_owned(),
        format!("a=fingerprint:sha-256 {fingerprint}"),
        "a=setup:actpass".to_owned(),
        "a=mid:1".to_owned(),
        "a=sendonly".to_owned(),
        "a=rtcp-mux".to_owned(),
        "a=rtcp-rsize".to_owned(),
        "a=rtpmap:96 VP8/90000".to_owned(),
        "a=rtcp-fb:96 nack".to_owned(),
        "a=rtcp-fb:96 nack pli".to_owned(),
        "a=ssrc:2222 cname:test".to_owned(),
        "a=ssrc:2222 msid:stream video0".to_owned(),
    ];
    lines.join("\r\n") + "\r\n"
}

/// An answer to a subscriber offer from Janus: the same m-lines (mid, first
/// payload type) turned around to `recvonly`, with our own ICE and DTLS
/// attributes. Data channel m-lines are rejected (port 0).
pub fn answer_for(offer: &str) -> String {
    let fingerprint = (0..32)
        .map(|i| format!("{:02X}", (i * 53 + 7) % 256))
        .collect::<Vec<_>>()
        .join(":");
    let mut out = vec![
        "v=0".to_owned(),
        "o=- 1234567890 2 IN IP4 127.0.0.1".to_owned(),
        "s=-".to_owned(),
        "t=0 0".to_owned(),
    ];
    // Split the offer into its m-sections.
    let mut sections: Vec<Vec<&str>> = Vec::new();
    for line in offer.lines() {
        if line.starts_with("m=") {
            sections.push(vec![line]);
        } else if let Some(section) = sections.last_mut() {
            section.push(line);
        }
    }
    let mids: Vec<String> = sections
        .iter()
        .filter(|s| !s[0].starts_with("m=application"))
        .filter_map(|s| {
            s.iter()
                .find_map(|l| l.strip_prefix("a=mid:"))
                .map(str::to_owned)
        })
        .collect();
    out.push(format!("a=group:BUNDLE {}", mids.join(" ")));
    for section in &sections {
        let mline = section[0];
        let mid = section
            .iter()
            .find_map(|l| l.strip_prefix("a=mid:"))
            .unwrap_or("0");
        let mut parts = mline.split_whitespace();
        let media = parts.next().unwrap_or("m=audio");
        let _port = parts.next();
        let proto = parts.next().unwrap_or("UDP/TLS/RTP/SAVPF");
        let first_pt = parts.next().unwrap_or("0");
        if media == "m=application" {
            out.push(format!("{media} 0 {proto} {first_pt}"));
            out.push("c=IN IP4 0.0.0.0".to_owned());
            out.push(format!("a=mid:{mid}"));
            continue;
        }
        out.push(format!("{media} 9 {proto} {first_pt}"));
        out.push("c=IN IP4 0.0.0.0".to_owned());
        out.push("a=ice-ufrag:s4bs".to_owned());
        out.push("a=ice-pwd:zyxwvutsrqponmlkjihgfedc".to_owned());
        out.push(format!("a=fingerprint:sha-256 {fingerprint}"));
        out.push("a=setup:active".to_owned());
        out.push(format!("a=mid:{mid}"));
        out.push("a=recvonly".to_owned());
        out.push("a=rtcp-mux".to_owned());
        if let Some(rtpmap) = section
            .iter()
            .find(|l| l.starts_with(&format!("a=rtpmap:{first_pt} ")))
        {
            out.push((*rtpmap).to_owned());
        }
    }
    out.join("\r\n") + "\r\n"
}
