//! A minimal HTTP/1 client for backend → signaling requests.
//!
//! Tests need control a normal client hides (omitting `Content-Length`,
//! sending wrong checksums or content types, oversize bodies), so each request
//! runs on its own fresh connection via hyper's low-level `conn` API, and
//! [`raw_http`] goes one step lower to raw bytes on a TCP socket.

use std::convert::Infallible;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Uri};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::checksum::{checksum, random_hex, HEADER_BACKEND, HEADER_CHECKSUM, HEADER_RANDOM};

/// Upper bound for one whole request/response exchange.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A fully read HTTP response.
#[derive(Clone, Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body parsed as JSON; panics (showing the body) if it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body (status {}) is not JSON ({e}): {:?}",
                self.status,
                self.text()
            )
        })
    }

    /// The body parsed as JSON, or as a JSON string holding the text if it is
    /// not JSON (error answers of the server are plain text).
    pub fn json_or_text(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|_| Value::String(self.text()))
    }

    /// The body as (lossy) UTF-8 text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A response header as text, if present and valid UTF-8.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A request body that either announces its exact size (hyper then sends
/// `Content-Length`) or does not (hyper then uses chunked encoding, which is
/// how a test sends a request *without* `Content-Length`).
struct TestBody {
    data: Option<Bytes>,
    len: u64,
    chunked: bool,
}

impl Body for TestBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.get_mut().data.take().map(|d| Ok(Frame::data(d))))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        if self.chunked {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.len)
        }
    }
}

/// Builder for one HTTP request with full control over headers and framing.
///
/// ```no_run
/// # async fn demo(url: &str) -> std::io::Result<()> {
/// let resp = testkit::RawRequest::post(url)
///     .header("Content-Type", "text/plain")
///     .body(b"{}".to_vec())
///     .chunked() // no Content-Length
///     .send()
///     .await?;
/// assert_eq!(resp.status, 400);
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct RawRequest {
    method: Method,
    url: String,
    headers: Vec<(String, String)>,
    body: Bytes,
    chunked: bool,
    timeout: Duration,
}

impl RawRequest {
    /// A request with the given method (`"GET"`, `"POST"`, ...); panics on an
    /// invalid method name.
    pub fn new(method: &str, url: &str) -> Self {
        RawRequest {
            method: Method::from_bytes(method.as_bytes())
                .unwrap_or_else(|e| panic!("invalid HTTP method {method:?}: {e}")),
            url: url.to_owned(),
            headers: Vec::new(),
            body: Bytes::new(),
            chunked: false,
            timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn get(url: &str) -> Self {
        Self::new("GET", url)
    }

    pub fn post(url: &str) -> Self {
        Self::new("POST", url)
    }

    /// Adds a header (repeatable; an explicit `Content-Length` overrides the
    /// computed one, but must then match the body or hyper refuses to send).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    pub fn body(mut self, body: impl Into<Bytes>) -> Self {
        self.body = body.into();
        self
    }

    /// Sends the body with `Transfer-Encoding: chunked` and no `Content-Length`.
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends the request on a fresh connection and reads the whole response.
    pub async fn send(self) -> io::Result<HttpResponse> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, self.send_inner()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("HTTP request did not complete within {timeout:?}"),
            )),
        }
    }

    async fn send_inner(self) -> io::Result<HttpResponse> {
        let uri: Uri = self.url.parse().map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("{}: {e}", self.url))
        })?;
        if uri.scheme_str().is_some_and(|s| s != "http") {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("only http:// URLs are supported: {}", self.url),
            ));
        }
        let authority = uri
            .authority()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "URL without host"))?
            .clone();
        let port = authority.port_u16().unwrap_or(80);
        let stream = TcpStream::connect((authority.host(), port)).await?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(io::Error::other)?;
        // The connection future drives the socket; it is aborted when this
        // function returns so nothing outlives the request.
        let conn = AbortOnDrop(tokio::spawn(conn));

        let path = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
        let mut builder = Request::builder()
            .method(self.method.clone())
            .uri(path)
            .header(http::header::HOST, authority.as_str());
        for (name, value) in &self.headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        // hyper omits `Content-Length: 0` for an empty body; send it anyway for
        // methods that carry a body, like Go's and Nextcloud's clients do.
        let has_length = self
            .headers
            .iter()
            .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
        let body_method = !matches!(
            self.method,
            Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS
        );
        if !self.chunked && !has_length && self.body.is_empty() && body_method {
            builder = builder.header(http::header::CONTENT_LENGTH, "0");
        }
        let len = self.body.len() as u64;
        let data = if self.body.is_empty() && !self.chunked {
            None
        } else {
            Some(self.body)
        };
        let request = builder
            .body(TestBody {
                data,
                len,
                chunked: self.chunked,
            })
            .map_err(io::Error::other)?;
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(io::Error::other)?
            .to_bytes();
        drop(conn);
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one request and panics (with the URL and error) if it fails at the
/// transport level. For negative tests where the server is expected to answer
/// with an error status; use [`RawRequest`] when the connection itself may fail.
pub async fn raw_request(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut req = RawRequest::new(method, url).body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url} failed: {e}"))
}

/// A signed backend → signaling room request, as Nextcloud sends it:
/// POST `<signaling_base>api/v1/room/<roomid>` with JSON content type, a
/// 64-character random, its checksum over `body` keyed by `secret`, and
/// (if given) `Spreed-Signaling-Backend`. Panics on transport failure.
pub async fn signed_room_request(
    secret: &str,
    backend_header: Option<&str>,
    signaling_base: &str,
    roomid: &str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let body: Bytes = body.into();
    let random = random_hex(64);
    let sum = checksum(secret, &random, &body);
    let url = format!("{}api/v1/room/{roomid}", with_slash(signaling_base));
    let mut req = RawRequest::post(&url)
        .header("Content-Type", "application/json")
        .header(HEADER_RANDOM, &random)
        .header(HEADER_CHECKSUM, &sum)
        .body(body);
    if let Some(backend) = backend_header {
        req = req.header(HEADER_BACKEND, backend);
    }
    req.send()
        .await
        .unwrap_or_else(|e| panic!("POST {url} failed: {e}"))
}

pub(crate) fn with_slash(base: &str) -> String {
    if base.ends_with('/') {
        base.to_owned()
    } else {
        format!("{base}/")
    }
}

/// Writes `request` verbatim to `addr` (`"127.0.0.1:PORT"`) and returns
/// everything the peer sends until it closes the connection or `timeout`
/// passes (whatever arrived by then is returned). For requests hyper would
/// refuse to produce, e.g. a body without any length information.
pub async fn raw_http(addr: &str, request: &[u8], timeout: Duration) -> io::Result<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut stream = tokio::time::timeout_at(deadline, TcpStream::connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tokio::time::timeout_at(deadline, stream.write_all(request))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "write timed out"))??;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) | Ok(Ok(0)) => return Ok(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
            // A reset after the answer was sent still leaves a usable answer.
            Ok(Err(e)) if !out.is_empty() && e.kind() == io::ErrorKind::ConnectionReset => {
                return Ok(out)
            }
            Ok(Err(e)) => return Err(e),
        }
    }
}
