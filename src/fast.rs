//! The fast path: a connection starts here, and every request of the one shape this service
//! exists for — `GET` or `HEAD` of the avatar path, HTTP/1.1, no body, no connection
//! management headers — is answered by writing the pre-rendered [`Snapshot`] bytes, which are
//! exactly what hyper would write. The first request of any other shape, or anything this
//! module is unsure of, hands the connection (with the bytes already read) to hyper for the
//! rest of its life, so hyper keeps every protocol decision outside the hot path.
//!
//! Why: under callgrind, hyper spends about 7,100 user-space instructions on one keep-alive
//! avatar request (request parsing ~1,600, response encoding ~1,150, dispatch and flushing);
//! this path spends a fraction of that (figures in bench/RESULTS.md).
//!
//! [`Snapshot`]: crate::avatar::Snapshot

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::metrics::{MethodLabel, Route};
use crate::routes::Routes;

/// Headers a fast-path request may carry; one more sends it to hyper (whose limit is 100).
const MAX_HEADERS: usize = 32;

/// A request head still incomplete past this many bytes goes to hyper, which applies its own
/// limits and answers 431 when they are exceeded.
const MAX_HEAD: usize = 8 * 1024;

/// Headers whose presence means the request needs hyper: a body, connection management,
/// protocol switches, or behaviour controls.
const HYPER_HEADERS: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "upgrade",
    "x-m2-behaviour",
];

/// What the bytes at the front of a connection's buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A complete fast-path request of `len` bytes (of the avatar path, or of the gateway's
    /// path in gateway mode); `head_only` for HEAD.
    Avatar { len: usize, head_only: bool },
    /// The start of a request: read more.
    Partial,
    /// Anything else: hyper takes the connection from here.
    Hyper,
}

/// Classifies the request at the front of `buf` against the avatar `path`.
pub fn classify(buf: &[u8], path: &str) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Head::Hyper,
    };
    let head_only = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Head::Hyper,
    };
    if request.version != Some(1) || request.path != Some(path) {
        return Head::Hyper;
    }
    let needs_hyper = request.headers.iter().any(|header| {
        HYPER_HEADERS
            .iter()
            .any(|name| header.name.eq_ignore_ascii_case(name))
    });
    if needs_hyper {
        return Head::Hyper;
    }
    Head::Avatar { len, head_only }
}

/// How a fast-path connection ended.
#[derive(Debug)]
pub enum Outcome {
    /// The peer closed, an I/O error ended it, or shutdown closed it between requests.
    Closed,
    /// Hyper must take over: the stream, with the bytes read ahead of it in front.
    Hyper(Prefixed),
}

/// Bytes a connection reads at a time. Reads land in the worker's [`READ_SCRATCH`]; a
/// connection keeps bytes of its own only while a request is incomplete, or in gateway mode.
const READ_SIZE: usize = 4096;

thread_local! {
    /// The worker's read buffer, shared by all of its fast-path connections: a read fills it
    /// and the requests in it are answered before the task next yields, so an idle connection
    /// holds no buffer, and at thousands of connections every read lands in memory that is
    /// already in cache.
    static READ_SCRATCH: RefCell<[u8; READ_SIZE]> = const { RefCell::new([0; READ_SIZE]) };
}

/// Serve mode's stand-in for an upstream call: never made, and a future of no size, so a
/// serve-mode connection's task holds nothing for it.
pub type NoUpstream = fn(bool) -> std::future::Pending<(Bytes, u16)>;

/// Serves fast-path requests on `stream` until the connection ends or needs hyper; `stop`
/// turns true when shutdown begins. In gateway mode `upstream` answers each plain GET
/// (`false`) or HEAD (`true`) with the wire bytes and status to send back; in serve mode it
/// is `None` and the avatar is the answer.
pub async fn serve<Call, Answer>(
    mut stream: TcpStream,
    routes: &Routes,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    upstream: Option<Call>,
) -> Outcome
where
    Call: Fn(bool) -> Answer,
    Answer: Future<Output = (Bytes, u16)>,
{
    // The bytes of an incomplete request, or in gateway mode every byte read; usually empty
    // and unallocated.
    let mut buf = BytesMut::new();
    // How many bytes the last read left in `READ_SCRATCH`, still to be answered.
    let mut fresh = 0;
    let mut out = BytesMut::new();
    // Polled once to register for the shutdown signal; after that the wake-up it arranges is
    // enough, and a cheap look at the flag replaces polling it on every request.
    let flag = stop.clone();
    let mut stopping = std::pin::pin!(async move {
        let mut stop = stop;
        // An error means the server is gone: stop as well.
        let _ = stop.wait_for(|stopped| *stopped).await;
    });
    let mut stopping_registered = false;
    let mut stopped = false;
    // One timer per connection, armed for the idle timeout and moved only when it fires early
    // or a partial head needs an earlier deadline: no timer work on an ordinary request.
    let mut timer = std::pin::pin!(tokio::time::sleep(timeouts.idle));
    let mut timer_registered = false;
    let mut idle_since = crate::time::now();
    let mut head_since: Option<Duration> = None;
    loop {
        // Answer every complete request read (more than one when pipelined). The batch's
        // clock read serves both the responses' timestamps and its duration.
        let start = crate::time::now();
        let mut batch = Batch::default();
        if let Some(call) = &upstream {
            // Gateway mode: one upstream call per request, in order.
            loop {
                let (len, head_only) = match classify(&buf, routes.path()) {
                    Head::Avatar { len, head_only } => (len, head_only),
                    Head::Partial => break,
                    Head::Hyper => {
                        batch.hand_over = true;
                        break;
                    }
                };
                buf.advance(len);
                let begun = crate::time::now();
                let (bytes, status) = call(head_only).await;
                let done = crate::time::now();
                batch.answered_at = Some(done);
                let elapsed = done.saturating_sub(begun);
                let method = [MethodLabel::Get, MethodLabel::Head][usize::from(head_only)];
                routes.record(Route::Gateway, method, status, elapsed, 1);
                if routes.access_logging() {
                    let method = ["GET", "HEAD"][usize::from(head_only)];
                    routes.access(method, routes.path(), status, elapsed, bytes.len() as u64);
                }
                batch.queue(&mut out, bytes);
            }
        } else if fresh > 0 {
            // Answered straight from the scratch; only what is left over is kept.
            READ_SCRATCH.with_borrow(|scratch| {
                let read = &scratch[..std::mem::take(&mut fresh)];
                let used = batch.answer_avatars(read, routes, start, &mut out);
                if used < read.len() {
                    buf.extend_from_slice(&read[used..]);
                }
            });
        } else {
            let used = batch.answer_avatars(&buf, routes, start, &mut out);
            buf.advance(used);
        }
        if flush(&mut stream, &mut batch.single, &mut out)
            .await
            .is_err()
        {
            return Outcome::Closed;
        }
        // One more clock read per batch: pipelined requests share the batch's duration.
        let answered = batch.answered;
        if answered != [0, 0] {
            let elapsed = crate::time::now().saturating_sub(start);
            routes.record(Route::Avatar, MethodLabel::Get, 200, elapsed, answered[0]);
            routes.record(Route::Avatar, MethodLabel::Head, 200, elapsed, answered[1]);
            if routes.access_logging() {
                let bytes = crate::avatar::TEMPLATE.len() as u64;
                for (method, count, bytes) in
                    [("GET", answered[0], bytes), ("HEAD", answered[1], 0)]
                {
                    for _ in 0..count {
                        routes.access(method, routes.path(), 200, elapsed, bytes);
                    }
                }
            }
        }
        if batch.hand_over {
            return Outcome::Hyper(Prefixed::new(buf.freeze(), stream));
        }
        if buf.is_empty() {
            if let Some(at) = batch.answered_at {
                idle_since = at;
            }
            head_since = None;
        } else if head_since.is_none() {
            // The head's time starts when the connection is free to wait for it: in gateway
            // mode, after the upstream calls of the requests ahead of it.
            head_since = Some(batch.answered_at.unwrap_or(start));
        }
        if stopped {
            // Between requests: close. Mid-request: hyper finishes it with `connection: close`.
            return if buf.is_empty() {
                Outcome::Closed
            } else {
                Outcome::Hyper(Prefixed::new(buf.freeze(), stream))
            };
        }
        let deadline = match head_since {
            Some(since) => since + timeouts.header,
            None => idle_since + timeouts.idle,
        };
        if head_since.is_some() {
            let remaining = deadline.saturating_sub(crate::time::now());
            let at = tokio::time::Instant::now() + remaining;
            if timer.deadline() > at {
                timer.as_mut().reset(at);
                timer_registered = false;
            }
        }
        // Like `select!` over the read, the shutdown signal and the timer, except that the
        // signal and the timer are polled only to register and afterwards checked by flag:
        // polling them on every wait cost about 300 instructions a request under callgrind.
        // The read borrows the scratch only inside each poll, never across a wait.
        let event = std::future::poll_fn(|cx| {
            let read = READ_SCRATCH.with_borrow_mut(|scratch| {
                let mut read = ReadBuf::new(&mut scratch[..]);
                Pin::new(&mut stream)
                    .poll_read(cx, &mut read)
                    .map_ok(|()| read.filled().len())
            });
            if let Poll::Ready(read) = read {
                return Poll::Ready(Event::Read(read));
            }
            if !stopping_registered || *flag.borrow() {
                stopping_registered = true;
                if stopping.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Stop);
                }
            }
            if !timer_registered || timer.is_elapsed() {
                timer_registered = true;
                if timer.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(Event::Timer);
                }
            }
            Poll::Pending
        })
        .await;
        match event {
            Event::Read(Ok(0) | Err(_)) => return Outcome::Closed,
            Event::Read(Ok(n)) => {
                if upstream.is_some() || !buf.is_empty() {
                    // These bytes must outlive the next wait (an upstream call), or join the
                    // start of a request already kept.
                    READ_SCRATCH.with_borrow(|scratch| buf.extend_from_slice(&scratch[..n]));
                } else {
                    fresh = n;
                }
            }
            Event::Stop => stopped = true,
            Event::Timer => {
                let remaining = deadline.saturating_sub(crate::time::now());
                if remaining.is_zero() {
                    // Slow head (slowloris) or idle keep-alive connection: close it.
                    return Outcome::Closed;
                }
                timer
                    .as_mut()
                    .reset(tokio::time::Instant::now() + remaining);
                timer_registered = false;
            }
        }
    }
}

/// What one pass over the bytes read produced.
#[derive(Default)]
struct Batch {
    /// The only response, kept as the shared `Bytes` (no copy); more go to `out`.
    single: Option<Bytes>,
    /// Avatar answers, GET and HEAD.
    answered: [u64; 2],
    /// When the batch's last answer was ready: the connection is idle from then on.
    answered_at: Option<Duration>,
    /// A request that needs hyper is next.
    hand_over: bool,
}

impl Batch {
    /// Answers the complete avatar requests at the front of `input`; returns how many bytes
    /// they took. Stops at an incomplete request, or at one that needs hyper.
    fn answer_avatars(
        &mut self,
        input: &[u8],
        routes: &Routes,
        now: Duration,
        out: &mut BytesMut,
    ) -> usize {
        let mut used = 0;
        loop {
            match classify(&input[used..], routes.path()) {
                Head::Avatar { len, head_only } => {
                    used += len;
                    self.answered[usize::from(head_only)] += 1;
                    self.answered_at = Some(now);
                    self.queue(out, routes.avatar_bytes(head_only, now));
                }
                Head::Partial => return used,
                Head::Hyper => {
                    self.hand_over = true;
                    return used;
                }
            }
        }
    }

    /// Adds one response to the pending output: kept as the shared `Bytes` when it is the
    /// only one (no copy), gathered into `out` when requests were pipelined.
    fn queue(&mut self, out: &mut BytesMut, bytes: Bytes) {
        match self.single.take() {
            None if out.is_empty() => self.single = Some(bytes),
            Some(first) => {
                out.extend_from_slice(&first);
                out.extend_from_slice(&bytes);
            }
            None => out.extend_from_slice(&bytes),
        }
    }
}

/// What ended a wait for more bytes.
enum Event {
    Read(io::Result<usize>),
    Stop,
    Timer,
}

/// How long a connection may take over a request head, and stay idle between requests.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
}

async fn flush(
    stream: &mut TcpStream,
    single: &mut Option<Bytes>,
    out: &mut BytesMut,
) -> io::Result<()> {
    if let Some(bytes) = single.take() {
        write(stream, &bytes).await?;
    }
    if !out.is_empty() {
        write(stream, out).await?;
        out.clear();
    }
    Ok(())
}

/// Writes all of `bytes`: one direct attempt first, which almost always takes the whole
/// response, then the awaiting loop for whatever the socket buffer could not take.
async fn write(stream: &mut TcpStream, bytes: &[u8]) -> io::Result<()> {
    let written = match stream.try_write(bytes) {
        Ok(n) => n,
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => 0,
        Err(err) => return Err(err),
    };
    if written < bytes.len() {
        stream.write_all(&bytes[written..]).await?;
    }
    Ok(())
}

/// A TCP stream with bytes already read from it in front, for handing a connection to hyper
/// mid-stream.
#[derive(Debug)]
pub struct Prefixed {
    prefix: Bytes,
    stream: TcpStream,
}

impl Prefixed {
    pub fn new(prefix: Bytes, stream: TcpStream) -> Prefixed {
        Prefixed { prefix, stream }
    }

    /// The bytes read ahead of hyper.
    pub fn prefix(&self) -> &[u8] {
        &self.prefix
    }

    /// The socket, for actions hyper knows nothing of (a reset).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/v1/avatar";

    fn classify_str(raw: &str) -> Head {
        classify(raw.as_bytes(), PATH)
    }

    #[test]
    fn plain_get_and_head_take_the_fast_path() {
        let get = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n";
        assert_eq!(
            classify_str(get),
            Head::Avatar {
                len: get.len(),
                head_only: false
            }
        );
        let head = "HEAD /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            classify_str(head),
            Head::Avatar {
                len: head.len(),
                head_only: true
            }
        );
    }

    #[test]
    fn only_the_first_of_pipelined_requests_is_measured() {
        let one = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            classify_str(&one.repeat(3)),
            Head::Avatar {
                len: one.len(),
                head_only: false
            }
        );
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for raw in ["G", "GET /v1/av", "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n"] {
            assert_eq!(classify_str(raw), Head::Partial, "{raw:?}");
        }
    }

    #[test]
    fn an_endless_head_goes_to_hyper() {
        let raw = format!("GET /v1/avatar HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(classify_str(&raw), Head::Hyper);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for raw in [
            "POST /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar?delay=1s HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nconnection: keep-alive\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /v1/avatar HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nX-M2-Behaviour: delay=1s\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\x00\x01garbage\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(classify_str(raw), Head::Hyper, "{raw:?}");
        }
        let many = format!(
            "GET /v1/avatar HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(classify_str(&many), Head::Hyper);
    }
}
