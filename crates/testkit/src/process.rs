//! Guards for real processes (nats-server now, Janus and our own binaries
//! later) and the temporary directories they need.
//!
//! Every guard cleans up in `Drop`, so a panicking test leaves no stray
//! process or directory behind.

use std::fs::File;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::checksum::random_hex;

/// How long a started process may take to accept connections.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// A currently free TCP port on 127.0.0.1.
///
/// For programs that cannot be told to bind port 0 and report it. The port is
/// released before returning, so another process may grab it in between;
/// callers that start a server on it should retry on failure.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("free_port: cannot bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("free_port: no local address: {e}"))
        .port()
}

/// A loopback port that refuses connections and stays that way: the socket
/// is bound but never listens, so no other process can take the port while
/// this value lives (unlike a port from [`free_port`]).
#[derive(Debug)]
pub struct DeadPort {
    _socket: tokio::net::TcpSocket,
    port: u16,
}

impl DeadPort {
    pub fn new() -> io::Result<DeadPort> {
        // No SO_REUSEADDR: another bind to this port fails.
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = socket.local_addr()?.port();
        Ok(DeadPort {
            _socket: socket,
            port,
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

/// A directory under the system temp dir, removed with its contents on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    /// Creates `<tmp>/<prefix>-<pid>-<counter>-<random>`.
    pub fn new(prefix: &str) -> io::Result<TempDir> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "{prefix}-{}-{n}-{}",
            std::process::id(),
            random_hex(8)
        ));
        std::fs::create_dir(&path)?;
        Ok(TempDir { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `path()/name`.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Owns a spawned child process and kills it (SIGKILL) and reaps it on drop.
///
/// Output goes to a log file (if given) so a failing test can show it.
#[derive(Debug)]
pub struct ChildGuard {
    name: String,
    child: Option<Child>,
    log: Option<PathBuf>,
}

impl ChildGuard {
    /// Spawns `cmd` with stdin closed and stdout+stderr appended to `log`
    /// (discarded if `None`).
    pub fn spawn(name: &str, cmd: &mut Command, log: Option<&Path>) -> io::Result<ChildGuard> {
        cmd.stdin(Stdio::null());
        match log {
            Some(path) => {
                let out = File::options().create(true).append(true).open(path)?;
                let err = out.try_clone()?;
                cmd.stdout(out).stderr(err);
            }
            None => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {name}: {e}")))?;
        Ok(ChildGuard {
            name: name.to_owned(),
            child: Some(child),
            log: log.map(Path::to_path_buf),
        })
    }

    pub fn id(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `Some(description)` once the process has exited.
    pub fn exited(&mut self) -> Option<String> {
        match self.child.as_mut().map(Child::try_wait) {
            None => Some("killed".to_owned()),
            Some(Ok(Some(status))) => Some(status.to_string()),
            Some(Ok(None)) => None,
            Some(Err(e)) => Some(format!("unknown ({e})")),
        }
    }

    /// Kills and reaps the process now (idempotent).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The last `max_bytes` of the log file, for error messages.
    pub fn log_tail(&self, max_bytes: usize) -> String {
        let Some(path) = &self.log else {
            return String::new();
        };
        let data = std::fs::read(path).unwrap_or_default();
        let start = data.len().saturating_sub(max_bytes);
        String::from_utf8_lossy(&data[start..]).into_owned()
    }

    fn failure(&self, what: &str) -> io::Error {
        io::Error::other(format!(
            "{} {what}; log tail:\n{}",
            self.name,
            self.log_tail(2000)
        ))
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `addr` accepts TCP connections, failing early if `child`
/// exits and after `timeout` at the latest. With a `child`, the listener
/// must be the child's ([`listens_on`]): a port taken by another process
/// fails at once (`AddrInUse`), so the caller can try another one.
pub async fn wait_for_port(
    addr: SocketAddr,
    timeout: Duration,
    mut child: Option<&mut ChildGuard>,
) -> io::Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        );
        if let Ok(Ok(_)) = attempt.await {
            // Something listens; it must be our child, not another test's
            // server that took the probed port first.
            match child.as_deref().and_then(ChildGuard::id) {
                Some(pid) if !listens_on(pid, addr.port()) => {
                    return Err(io::Error::new(
                        io::ErrorKind::AddrInUse,
                        format!("{addr} is taken by another process"),
                    ));
                }
                _ => return Ok(()),
            }
        }
        if let Some(child) = child.as_deref_mut() {
            if let Some(status) = child.exited() {
                return Err(child.failure(&format!("exited ({status}) before listening on {addr}")));
            }
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(match child {
                Some(child) => child.failure(&format!("not listening on {addr} after {timeout:?}")),
                None => io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{addr} not accepting connections after {timeout:?}"),
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Whether process `pid` holds a listening TCP socket on loopback `port`
/// (IPv4 or IPv6): the socket's inode from `/proc/net/tcp*` must be one of
/// the process's open files. When `/proc` cannot be read the answer is yes,
/// so that a system without it behaves as before.
pub fn listens_on(pid: u32, port: u16) -> bool {
    let mut inodes = Vec::new();
    let mut readable = false;
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        readable = true;
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is "ADDR:PORT" in hex; state 0A is LISTEN.
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if !readable {
        return true;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return true;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .is_ok_and(|target| inodes.iter().any(|i| target.as_os_str() == i.as_str()))
    })
}

/// Finds an executable: `$<env_var>` if set, else `PATH`, else the sbin and
/// local directories Debian packages use (not always on a test's `PATH`).
pub(crate) fn find_binary(name: &str, env_var: &str) -> io::Result<PathBuf> {
    if let Some(p) = std::env::var_os(env_var) {
        return Ok(PathBuf::from(p));
    }
    let path_dirs = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    let extra = [
        "/usr/sbin",
        "/usr/local/bin",
        "/usr/local/sbin",
        "/usr/bin",
        "/sbin",
    ]
    .iter()
    .map(PathBuf::from);
    path_dirs
        .into_iter()
        .chain(extra)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{name} not found in PATH or /usr/sbin (install it or set {env_var})"),
            )
        })
}

/// A real `nats-server` with JetStream on `127.0.0.1:<free port>`, storing in
/// its own temp dir; killed on drop.
///
/// Needed where behaviour depends on the real server (subjects, reconnects);
/// missing binaries are reported as an error the test turns into a failure.
///
/// A free port can be taken by another process between probing and
/// binding; then our server exits and something else answers on the port:
/// another test's `nats-server` (the two tests would share subjects, see
/// each other's messages, and lose NATS when the other one ends) or any other
/// listener. So it counts as started only when the listener is its own
/// ([`wait_for_port`] checks).
#[derive(Debug)]
pub struct NatsServer {
    child: ChildGuard,
    port: u16,
    /// HTTP monitoring (`-m`): `/subsz`, `/connz`.
    monitor_port: u16,
    binary: PathBuf,
    // Dropped after `child` (field order), so the process is gone first.
    dir: TempDir,
}

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p <port> -m <monitor port> -js -sd
    /// <tempdir>` and waits until it accepts connections. Binary:
    /// `$NATS_SERVER_BIN` or `PATH`.
    pub async fn start() -> io::Result<NatsServer> {
        let binary = find_binary("nats-server", "NATS_SERVER_BIN")?;
        let dir = TempDir::new("testkit-nats")?;
        // The free port may be taken between probing and binding; retry then.
        let mut last_err = None;
        for _ in 0..5 {
            let port = free_port();
            let monitor_port = free_port();
            match Self::spawn(&binary, &dir, port, monitor_port).await {
                Ok(child) => {
                    return Ok(NatsServer {
                        child,
                        port,
                        monitor_port,
                        binary,
                        dir,
                    })
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("nats-server did not start")))
    }

    async fn spawn(
        binary: &Path,
        dir: &TempDir,
        port: u16,
        monitor_port: u16,
    ) -> io::Result<ChildGuard> {
        let mut cmd = Command::new(binary);
        cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(["-m", &monitor_port.to_string(), "-js", "-sd"])
            .arg(dir.join("jetstream"));
        let mut child = ChildGuard::spawn("nats-server", &mut cmd, Some(&dir.join("nats.log")))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_for_port(addr, STARTUP_TIMEOUT, Some(&mut child)).await?;
        Ok(child)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (to test reconnect handling); [`restart`](Self::restart)
    /// brings it back on the same port.
    pub fn stop(&mut self) {
        self.child.kill();
    }

    /// Stops (if running) and starts again on the same port and store.
    pub async fn restart(&mut self) -> io::Result<()> {
        self.stop();
        self.child = Self::spawn(&self.binary, &self.dir, self.port, self.monitor_port).await?;
        Ok(())
    }

    /// The number of subscriptions the server holds for all its clients
    /// (`num_subscriptions` of its `/subsz` monitoring page).
    pub async fn subscription_count(&self) -> io::Result<u64> {
        let body = self.monitor("/subsz").await?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .map_err(|e| io::Error::other(format!("/subsz: {e}: {body}")))?;
        v["num_subscriptions"]
            .as_u64()
            .ok_or_else(|| io::Error::other(format!("/subsz without num_subscriptions: {body}")))
    }

    /// GET a page of the monitoring port (HTTP/1.0, read to the end).
    async fn monitor(&self, path: &str) -> io::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", self.monitor_port)).await?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        match out.split_once("\r\n\r\n") {
            Some((head, body))
                if head.starts_with("HTTP/1.1 200") || head.starts_with("HTTP/1.0 200") =>
            {
                Ok(body.to_owned())
            }
            _ => Err(io::Error::other(format!("GET {path}: {out}"))),
        }
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        self.child.log_tail(64 * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, BufReader};

    #[test]
    fn listens_on_tells_whose_listener_it_is() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        assert!(listens_on(std::process::id(), port));
        // Another process of ours does not hold this test's socket.
        let mut other = Command::new("sleep").arg("30").spawn().expect("spawn");
        let holds = listens_on(other.id(), port);
        let _ = other.kill();
        let _ = other.wait();
        assert!(!holds);
        drop(listener);
        assert!(!listens_on(std::process::id(), port));
    }

    #[tokio::test]
    async fn dead_port_refuses_and_cannot_be_taken() {
        let dead = DeadPort::new().expect("dead port");
        let addr = SocketAddr::from(([127, 0, 0, 1], dead.port()));
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
        assert!(TcpListener::bind(addr).is_err(), "port was taken");
    }

    #[test]
    fn tempdir_is_removed() {
        let dir = TempDir::new("testkit-selftest").expect("tempdir");
        let path = dir.path().to_path_buf();
        std::fs::write(dir.join("f"), b"x").expect("write");
        assert!(path.is_dir());
        drop(dir);
        assert!(!path.exists());
    }

    #[tokio::test]
    async fn child_guard_kills_on_drop() {
        let dir = TempDir::new("testkit-selftest").expect("tempdir");
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let mut guard =
            ChildGuard::spawn("sleep", &mut cmd, Some(&dir.join("log"))).expect("spawn");
        let pid = guard.id().expect("pid");
        assert!(guard.exited().is_none());
        assert!(Path::new(&format!("/proc/{pid}")).exists());
        drop(guard);
        // Reaped, so the pid is gone (barring immediate reuse).
        assert!(
            !Path::new(&format!("/proc/{pid}/status")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
                    .map(|c| !c.starts_with("sleep"))
                    .unwrap_or(true)
        );
    }

    #[tokio::test]
    async fn wait_for_port_reports_early_exit() {
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo boom >&2; exit 3"]);
        let dir = TempDir::new("testkit-selftest").expect("tempdir");
        let mut guard = ChildGuard::spawn("sh", &mut cmd, Some(&dir.join("log"))).expect("spawn");
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let err = wait_for_port(addr, Duration::from_secs(5), Some(&mut guard))
            .await
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(msg.contains("exited") && msg.contains("boom"), "{msg}");
    }

    #[tokio::test]
    async fn nats_server_starts_and_answers() {
        let mut nats = match NatsServer::start().await {
            Ok(n) => n,
            Err(e) => panic!("nats-server is installed on this machine but failed: {e}"),
        };
        let info = read_info(nats.port()).await;
        assert!(info.starts_with("INFO "), "{info}");
        assert!(info.contains("\"jetstream\":true"), "{info}");
        assert!(nats.url().starts_with("nats://127.0.0.1:"));

        let port = nats.port();
        nats.stop();
        assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err());
        nats.restart().await.expect("restart");
        assert!(read_info(port).await.starts_with("INFO "));
    }

    /// Two tests once got the same free port: the second one's
    /// `nats-server` could not bind it, yet the second test went on with
    /// the first one's server (and saw its messages). Another server, or
    /// any other listener, on the port must not pass for ours.
    #[tokio::test]
    async fn nats_server_on_a_taken_port_is_not_taken_for_ours() {
        let first = NatsServer::start().await.expect("first nats-server");
        let dir = TempDir::new("testkit-selftest").expect("tempdir");
        let err = NatsServer::spawn(&first.binary, &dir, first.port(), free_port())
            .await
            .expect_err("the port is served by the first server");
        assert!(err.to_string().contains("taken"), "{err}");

        let listener = TcpListener::bind("127.0.0.1:0").expect("listener");
        let port = listener.local_addr().expect("address").port();
        let err = NatsServer::spawn(&first.binary, &dir, port, free_port())
            .await
            .expect_err("the port is held by a plain listener");
        assert!(err.to_string().contains("taken"), "{err}");
        // The first server is untouched.
        assert!(read_info(first.port()).await.starts_with("INFO "));
    }

    async fn read_info(port: u16) -> String {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect to nats");
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(5),
            BufReader::new(stream).read_line(&mut line),
        )
        .await
        .expect("INFO within 5 s")
        .expect("read INFO");
        line
    }
}
