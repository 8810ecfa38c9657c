//! A real WebRTC peer for media tests, built on `str0m` (sans-I/O WebRTC):
//! one UDP socket on 127.0.0.1, one task that drives the `Rtc` state
//! machine, sends synthetic Opus and VP8 frames on every outgoing stream
//! once connected and counts the frames it receives per kind.
//!
//! It stands in for a browser: it makes publisher offers, answers
//! subscriber offers, and takes trickled candidates. Media never leaves
//! loopback.

#![allow(clippy::unwrap_used)]

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::media::{Direction, Frequency, MediaKind, MediaTime, Mid};
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceConnectionState, Input, Output, Rtc};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, Notify};

/// What the peer has seen so far.
#[derive(Clone, Debug, Default)]
pub struct PeerState {
    /// ICE and DTLS are up.
    pub connected: bool,
    /// The last ICE state, as str0m names it.
    pub ice: String,
    /// The connection was up and went away (ICE disconnected or DTLS closed).
    pub disconnected: bool,
    pub audio_frames: u64,
    pub video_frames: u64,
    pub audio_sent: u64,
    pub video_sent: u64,
}

enum Cmd {
    Offer {
        audio: bool,
        video: bool,
        reply: oneshot::Sender<String>,
    },
    Answer(String, oneshot::Sender<Result<(), String>>),
    AcceptOffer(String, oneshot::Sender<Result<String, String>>),
    Candidate(String),
}

/// A WebRTC peer on loopback. Dropping it stops it.
pub struct WebRtcPeer {
    tx: mpsc::Sender<Cmd>,
    state: Arc<Mutex<PeerState>>,
    changed: Arc<Notify>,
    candidate: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebRtcPeer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebRtcPeer {
    pub async fn start() -> WebRtcPeer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let mut rtc = Rtc::builder().build(Instant::now());
        let candidate = Candidate::host(addr, "udp").unwrap();
        let line = candidate.to_sdp_string();
        rtc.add_local_candidate(candidate);
        let (tx, rx) = mpsc::channel(64);
        let state = Arc::new(Mutex::new(PeerState::default()));
        let changed = Arc::new(Notify::new());
        let driver = Driver {
            rtc,
            socket,
            addr,
            state: state.clone(),
            changed: changed.clone(),
            pending: None,
            kinds: HashMap::new(),
            send: Vec::new(),
            ticks: 0,
        };
        let task = tokio::spawn(driver.run(rx));
        WebRtcPeer {
            tx,
            state,
            changed,
            candidate: line,
            task,
        }
    }

    /// A publisher offer (send-only audio and/or video). The SDP carries no
    /// candidates: send [`WebRtcPeer::local_candidate`] separately, as a
    /// trickling browser does.
    pub async fn create_offer(&self, audio: bool, video: bool) -> String {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Offer {
                audio,
                video,
                reply,
            })
            .await
            .unwrap();
        strip_candidates(&rx.await.unwrap())
    }

    pub async fn accept_answer(&self, sdp: &str) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::Answer(sdp.to_owned(), reply))
            .await
            .unwrap();
        rx.await.unwrap()
    }

    /// Answers an offer (e.g. Janus's subscriber offer); the answer carries
    /// no candidates.
    pub async fn accept_offer(&self, sdp: &str) -> Result<String, String> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Cmd::AcceptOffer(sdp.to_owned(), reply))
            .await
            .unwrap();
        rx.await.unwrap().map(|s| strip_candidates(&s))
    }

    /// A remote candidate (`candidate:...`).
    pub async fn add_remote_candidate(&self, candidate: &str) {
        let _ = self.tx.send(Cmd::Candidate(candidate.to_owned())).await;
    }

    /// The peer's only candidate: a 127.0.0.1 host candidate.
    pub fn local_candidate(&self) -> String {
        self.candidate.clone()
    }

    pub fn state(&self) -> PeerState {
        self.state.lock().clone()
    }

    /// Waits until `f` holds for the state; false after `timeout`.
    pub async fn wait_for(&self, timeout: Duration, f: impl Fn(&PeerState) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if f(&self.state.lock()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return f(&self.state.lock());
            }
        }
    }
}

/// Removes `a=candidate` and `a=end-of-candidates` lines.
pub fn strip_candidates(sdp: &str) -> String {
    sdp.split_inclusive('\n')
        .filter(|l| !l.starts_with("a=candidate:") && !l.starts_with("a=end-of-candidates"))
        .collect()
}

struct Driver {
    rtc: Rtc,
    socket: UdpSocket,
    addr: SocketAddr,
    state: Arc<Mutex<PeerState>>,
    changed: Arc<Notify>,
    pending: Option<SdpPendingOffer>,
    kinds: HashMap<Mid, MediaKind>,
    /// Outgoing streams.
    send: Vec<(Mid, MediaKind)>,
    ticks: u64,
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::Receiver<Cmd>) {
        let mut buf = vec![0u8; 2000];
        let mut media_tick = tokio::time::interval(Duration::from_millis(20));
        let start = Instant::now();
        loop {
            let timeout = match self.drain() {
                Some(t) => t,
                None => return,
            };
            let sleep = tokio::time::sleep_until(tokio::time::Instant::from_std(
                timeout.max(Instant::now()),
            ));
            tokio::select! {
                _ = sleep => {
                    if self.rtc.handle_input(Input::Timeout(Instant::now())).is_err() {
                        return;
                    }
                }
                r = self.socket.recv_from(&mut buf) => {
                    let Ok((n, source)) = r else { return };
                    let Ok(contents) = buf[..n].try_into() else { continue };
                    let input = Input::Receive(Instant::now(), Receive {
                        proto: Protocol::Udp,
                        source,
                        destination: self.addr,
                        contents,
                    });
                    if self.rtc.accepts(&input) && self.rtc.handle_input(input).is_err() {
                        return;
                    }
                }
                cmd = rx.recv() => {
                    let Some(cmd) = cmd else { return };
                    self.command(cmd);
                }
                _ = media_tick.tick() => {
                    self.write_media(start);
                }
            }
        }
    }

    fn command(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Offer {
                audio,
                video,
                reply,
            } => {
                let mut change = self.rtc.sdp_api();
                let mut added = Vec::new();
                if audio {
                    added.push((
                        change.add_media(MediaKind::Audio, Direction::SendOnly, None, None, None),
                        MediaKind::Audio,
                    ));
                }
                if video {
                    added.push((
                        change.add_media(MediaKind::Video, Direction::SendOnly, None, None, None),
                        MediaKind::Video,
                    ));
                }
                let (offer, pending) = change.apply().unwrap();
                self.pending = Some(pending);
                for (mid, kind) in added {
                    self.kinds.insert(mid, kind);
                    self.send.push((mid, kind));
                }
                let _ = reply.send(offer.to_sdp_string());
            }
            Cmd::Answer(sdp, reply) => {
                let res = match (self.pending.take(), SdpAnswer::from_sdp_string(&sdp)) {
                    (Some(pending), Ok(answer)) => self
                        .rtc
                        .sdp_api()
                        .accept_answer(pending, answer)
                        .map_err(|e| e.to_string()),
                    (None, _) => Err("no offer pending".to_owned()),
                    (_, Err(e)) => Err(e.to_string()),
                };
                let _ = reply.send(res);
            }
            Cmd::AcceptOffer(sdp, reply) => {
                let res = SdpOffer::from_sdp_string(&sdp)
                    .map_err(|e| e.to_string())
                    .and_then(|offer| {
                        self.rtc
                            .sdp_api()
                            .accept_offer(offer)
                            .map_err(|e| e.to_string())
                    })
                    .map(|answer| answer.to_sdp_string());
                let _ = reply.send(res);
            }
            Cmd::Candidate(line) => {
                let line = line.strip_prefix("a=").unwrap_or(&line).to_owned();
                if let Ok(c) = Candidate::from_sdp_string(&line) {
                    // Media stays on loopback: other candidates are ignored.
                    if c.addr().ip().is_loopback() {
                        self.rtc.add_remote_candidate(c);
                    }
                }
            }
        }
    }

    fn write_media(&mut self, start: Instant) {
        if !self.state.lock().connected {
            return;
        }
        self.ticks += 1;
        let now = Instant::now();
        let elapsed = now.duration_since(start);
        for (mid, kind) in self.send.clone() {
            let video = kind == MediaKind::Video;
            if video && self.ticks.is_multiple_of(2) {
                continue;
            }
            let Some(writer) = self.rtc.writer(mid) else {
                continue;
            };
            let Some(pt) = writer.payload_params().next().map(|p| p.pt()) else {
                continue;
            };
            let (rate, data) = if video {
                // A VP8 key frame header (320x240) and some filler.
                let mut d = vec![0x10, 0x02, 0x00, 0x9d, 0x01, 0x2a, 0x40, 0x01, 0xf0, 0x00];
                d.resize(300, 0x55);
                (Frequency::NINETY_KHZ, d)
            } else {
                (Frequency::FORTY_EIGHT_KHZ, vec![0xfc; 40])
            };
            let ts = MediaTime::from_micros(elapsed.as_micros() as u64).rebase(rate);
            if writer.write(pt, now, ts, data).is_ok() {
                let mut st = self.state.lock();
                if video {
                    st.video_sent += 1;
                } else {
                    st.audio_sent += 1;
                }
            }
            if self.drain().is_none() {
                return;
            }
        }
    }

    /// Polls the state machine until it only asks for a timeout; sends what
    /// it wants sent. `None` when the peer is dead.
    fn drain(&mut self) -> Option<Instant> {
        loop {
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => return Some(t),
                Ok(Output::Transmit(t)) => {
                    let _ = self.socket.try_send_to(&t.contents, t.destination);
                }
                Ok(Output::Event(e)) => self.event(e),
                Err(_) => {
                    let mut st = self.state.lock();
                    st.disconnected = st.connected;
                    drop(st);
                    self.changed.notify_waiters();
                    return None;
                }
            }
        }
    }

    fn event(&mut self, e: Event) {
        let mut st = self.state.lock();
        match e {
            Event::Connected => st.connected = true,
            Event::IceConnectionStateChange(s) => {
                st.ice = format!("{s:?}");
                if s == IceConnectionState::Disconnected && st.connected {
                    st.disconnected = true;
                }
            }
            Event::MediaAdded(m) => {
                self.kinds.insert(m.mid, m.kind);
            }
            Event::MediaData(d) => match self.kinds.get(&d.mid) {
                Some(MediaKind::Audio) => st.audio_frames += 1,
                Some(MediaKind::Video) => st.video_frames += 1,
                None => {}
            },
            _ => {}
        }
        drop(st);
        self.changed.notify_waiters();
    }
}
