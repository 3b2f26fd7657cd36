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
//! Held to hyper's standard: a connection's memory is bounded whatever a client sends (answers
//! are written from the shared rendered bytes, at most [`MAX_PENDING`] at a time), a write that
//! stops making progress ends the connection at the write timeout, each request head gets the
//! whole header timeout from its first byte, and every deadline and duration is read from the
//! monotonic clock. `tests/it/differential.rs` sends the same generated streams here and to
//! hyper alone (`--no-fast-path`) and asserts the same bytes back.
//!
//! [`Snapshot`]: crate::avatar::Snapshot

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use crate::ops::metrics::{CloseReason, MethodLabel, Route};
use crate::routes::{GatewayWire, Routes};

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
    /// Closed, and why: the peer closed, an error, a timeout, or shutdown between requests.
    Closed(CloseReason),
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
pub type NoUpstream = fn(bool) -> std::future::Pending<GatewayWire>;

/// How long a connection may take over a request head, stay idle between requests, and wait
/// on a write that makes no progress.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// Serves fast-path requests on `stream` until the connection ends or needs hyper; `stop`
/// turns true when shutdown begins. In gateway mode `upstream` answers each plain GET
/// (`false`) or HEAD (`true`) with the bytes to send back; in serve mode it is `None` and the
/// avatar is the answer.
pub async fn serve<Call, Answer>(
    stream: TcpStream,
    routes: &Routes,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    upstream: Option<Call>,
) -> Outcome
where
    Call: Fn(bool) -> Answer,
    Answer: Future<Output = GatewayWire>,
{
    let mut conn = Connection {
        stream,
        routes,
        timeouts,
        buf: BytesMut::new(),
        fresh: 0,
        keep_all: upstream.is_some(),
        release_buf: false,
        output: Output::default(),
        idle_since: Instant::now(),
        head_since: None,
    };
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
    // One timer per connection, for whichever deadline is next (idle, header or write). It is
    // moved only when it would fire late or has fired early: no timer work on an ordinary
    // request.
    let mut timer = std::pin::pin!(tokio::time::sleep(timeouts.idle));
    let mut timer_registered = false;
    loop {
        // Step 1: answer every complete request read (more than one when pipelined), up to
        // what one write may carry. The batch's clock read dates its answers (through the
        // avatar cache) and starts its duration.
        let start = Instant::now();
        let mut batch = Batch::default();
        match &upstream {
            Some(call) => conn.answer_calls(call, &mut batch).await,
            None => conn.answer_avatars(start, &mut batch),
        }
        // Step 2: write the answers; a write that stops making progress ends the connection.
        match conn.flush(timer.as_mut()).await {
            Ok(false) => {}
            // The wait used the timer: it is re-armed below.
            Ok(true) => timer_registered = false,
            Err(reason) => return Outcome::Closed(reason),
        }
        conn.record(&mut batch, start);
        // Step 3: hand over, go on answering, or wait.
        if batch.hand_over {
            return conn.hand_over();
        }
        conn.settle(&batch, start);
        if batch.full {
            continue;
        }
        if stopped {
            // Between requests: close. Mid-request: hyper finishes it with `connection: close`.
            return if conn.buf.is_empty() {
                Outcome::Closed(CloseReason::Shutdown)
            } else {
                conn.hand_over()
            };
        }
        let deadline = conn.deadline();
        if timer.deadline() > deadline {
            timer.as_mut().reset(deadline);
            timer_registered = false;
        }
        // Like `select!` over the read, the shutdown signal and the timer, except that the
        // signal and the timer are polled only to register and afterwards checked by flag:
        // polling them on every wait cost about 300 instructions a request under callgrind.
        // The read borrows the scratch only inside each poll, never across a wait.
        let event = std::future::poll_fn(|cx| {
            let read = READ_SCRATCH.with_borrow_mut(|scratch| {
                let mut read = ReadBuf::new(&mut scratch[..]);
                Pin::new(&mut conn.stream)
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
            Event::Read(Ok(0)) => return Outcome::Closed(CloseReason::Client),
            Event::Read(Err(err)) => return Outcome::Closed(CloseReason::of_io(&err)),
            Event::Read(Ok(n)) => conn.took(n),
            Event::Stop => stopped = true,
            Event::Timer => {
                if Instant::now() >= deadline {
                    // A slow head (slowloris), or a keep-alive connection left idle.
                    return Outcome::Closed(conn.timed_out());
                }
                timer.as_mut().reset(deadline);
                timer_registered = false;
            }
        }
    }
}

/// What ended a wait for more bytes.
enum Event {
    Read(io::Result<usize>),
    Stop,
    Timer,
}

/// One fast-path connection's state between its steps: read, answer, flush, record, settle
/// (its deadlines), and hand over to hyper.
struct Connection<'a> {
    stream: TcpStream,
    routes: &'a Routes,
    timeouts: Timeouts,
    /// The bytes of an incomplete request, or in gateway mode every byte read; usually empty
    /// and unallocated. Never more than an unfinished head (under [`MAX_HEAD`]) and one read.
    buf: BytesMut,
    /// How many bytes the last read left in `READ_SCRATCH`, still to be answered.
    fresh: usize,
    /// Gateway mode: every byte read is kept, since answering waits on the upstream.
    keep_all: bool,
    /// `buf` holds an allocation to give back once it is empty.
    release_buf: bool,
    output: Output,
    /// When the connection last became idle (its last answer was written).
    idle_since: Instant,
    /// When the first byte of the head at the front of `buf` arrived, if one is partly read.
    head_since: Option<Instant>,
}

impl Connection<'_> {
    /// A read of `n` bytes landed in the worker's scratch.
    fn took(&mut self, n: usize) {
        if self.keep_all || !self.buf.is_empty() {
            // These bytes must outlive the next wait (an upstream call), or join the start of
            // a request already kept.
            READ_SCRATCH.with_borrow(|scratch| self.keep(&scratch[..n]));
        } else {
            self.fresh = n;
        }
    }

    /// Keeps `bytes` in the connection's own buffer, which is given back once it is empty
    /// again: an idle connection holds no buffer, in gateway mode too.
    fn keep(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        self.release_buf = true;
    }

    /// Serve mode: answers the complete avatar requests read, straight from the scratch when
    /// the read is fresh; keeps what is left over.
    fn answer_avatars(&mut self, now: Instant, batch: &mut Batch) {
        let routes = self.routes;
        if self.fresh > 0 {
            let fresh = std::mem::take(&mut self.fresh);
            READ_SCRATCH.with_borrow(|scratch| {
                let read = &scratch[..fresh];
                let used = batch.answer_avatars(read, routes, now, &mut self.output);
                if used < read.len() {
                    self.keep(&read[used..]);
                }
            });
        } else if !self.buf.is_empty() {
            let used = batch.answer_avatars(&self.buf, routes, now, &mut self.output);
            self.buf.advance(used);
        }
    }

    /// Gateway mode: one upstream call per complete request, in order, until the output is
    /// full or the requests run out.
    async fn answer_calls<Call, Answer>(&mut self, call: &Call, batch: &mut Batch)
    where
        Call: Fn(bool) -> Answer,
        Answer: Future<Output = GatewayWire>,
    {
        let routes = self.routes;
        while !batch.full {
            let (len, head_only) = match classify(&self.buf, routes.path()) {
                Head::Avatar { len, head_only } => (len, head_only),
                Head::Partial => return,
                Head::Hyper => {
                    batch.hand_over = true;
                    return;
                }
            };
            self.buf.advance(len);
            batch.consumed = true;
            let begun = Instant::now();
            let wire = call(head_only).await;
            let done = Instant::now();
            batch.answered_at = Some(done);
            let elapsed = done.saturating_duration_since(begun);
            let method = [MethodLabel::Get, MethodLabel::Head][usize::from(head_only)];
            routes.record(Route::Gateway, method, wire.status, elapsed, 1);
            if routes.access_logging() {
                let method = ["GET", "HEAD"][usize::from(head_only)];
                let bytes = wire.body.len() as u64;
                routes.access(method, routes.path(), wire.status, elapsed, bytes);
            }
            self.output.push(wire.head);
            if !wire.body.is_empty() {
                self.output.push(wire.body);
            }
            // Each answer is written before the next call: an upstream's body may pin a
            // whole read buffer of its client's, so pipelined answers are not held together.
            batch.full = true;
        }
    }

    /// Writes the pending answers: one direct attempt, which almost always takes them all,
    /// then, if the socket is full, a wait held to the write timeout. Says whether it waited.
    async fn flush(&mut self, timer: Pin<&mut Sleep>) -> Result<bool, CloseReason> {
        match self.output.write_now(&self.stream) {
            Ok(true) => Ok(false),
            Ok(false) => self.write_stalled(timer).await.map(|()| true),
            Err(err) => Err(CloseReason::of_io(&err)),
        }
    }

    /// Waits until the socket takes the rest of the output; closes the connection when a
    /// write makes no progress for the write timeout (a client that stopped reading). Uses
    /// the connection's timer, which the caller re-arms afterwards.
    async fn write_stalled(&mut self, mut timer: Pin<&mut Sleep>) -> Result<(), CloseReason> {
        let limit = self.timeouts.write;
        let mut progress_at = Instant::now();
        timer.as_mut().reset(progress_at + limit);
        std::future::poll_fn(|cx| {
            let before = self.output.pending;
            if let Poll::Ready(result) = self.output.poll_write(&mut self.stream, cx) {
                return Poll::Ready(result.map_err(|err| CloseReason::of_io(&err)));
            }
            if self.output.pending < before {
                progress_at = Instant::now();
            }
            loop {
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                let due = progress_at + limit;
                if Instant::now() >= due {
                    return Poll::Ready(Err(CloseReason::WriteTimeout));
                }
                timer.as_mut().reset(due);
            }
        })
        .await
    }

    /// Records the avatar answers of a batch (gateway calls are recorded one by one), with
    /// one more clock read: pipelined requests share the batch's duration.
    fn record(&self, batch: &mut Batch, start: Instant) {
        let answered = batch.answered;
        if answered == [0, 0] {
            return;
        }
        let end = Instant::now();
        batch.answered_at = Some(end);
        let elapsed = end.saturating_duration_since(start);
        let routes = self.routes;
        routes.record(Route::Avatar, MethodLabel::Get, 200, elapsed, answered[0]);
        routes.record(Route::Avatar, MethodLabel::Head, 200, elapsed, answered[1]);
        if routes.access_logging() {
            let bytes = crate::avatar::TEMPLATE.len() as u64;
            for (method, count, bytes) in [("GET", answered[0], bytes), ("HEAD", answered[1], 0)] {
                for _ in 0..count {
                    routes.access(method, routes.path(), 200, elapsed, bytes);
                }
            }
        }
    }

    /// After a batch: when the connection went idle, when the head now at the front of the
    /// buffer began, and what memory a burst left behind.
    fn settle(&mut self, batch: &Batch, start: Instant) {
        if self.buf.is_empty() {
            if let Some(at) = batch.answered_at {
                self.idle_since = at;
            }
            self.head_since = None;
            if self.release_buf {
                self.buf = BytesMut::new();
                self.release_buf = false;
            }
        } else if batch.consumed || self.head_since.is_none() {
            // Each head gets the whole header timeout from its first byte, which came with
            // the last read; in gateway mode the clock starts once the calls before it are
            // done, since the connection could not read until then.
            self.head_since = Some(batch.answered_at.unwrap_or(start));
        }
        self.output.shrink();
    }

    /// When the connection times out if nothing happens: its head's deadline while a head is
    /// partly read, else the idle deadline.
    fn deadline(&self) -> Instant {
        match self.head_since {
            Some(since) => since + self.timeouts.header,
            None => self.idle_since + self.timeouts.idle,
        }
    }

    fn timed_out(&self) -> CloseReason {
        if self.head_since.is_some() {
            CloseReason::HeaderTimeout
        } else {
            CloseReason::IdleTimeout
        }
    }

    fn hand_over(self) -> Outcome {
        Outcome::Hyper(Prefixed::new(self.buf.freeze(), self.stream))
    }
}

/// What one pass over the bytes read produced.
#[derive(Default)]
struct Batch {
    /// Avatar answers, GET and HEAD.
    answered: [u64; 2],
    /// At least one request was taken off the front of the bytes read.
    consumed: bool,
    /// When the batch's last answer was written: the connection is idle from then on.
    answered_at: Option<Instant>,
    /// The output is full: write it, then go on answering before reading more.
    full: bool,
    /// A request that needs hyper is next.
    hand_over: bool,
}

impl Batch {
    /// Answers the complete avatar requests at the front of `input` into `output`; returns how
    /// many bytes they took. Stops at an incomplete request, at one that needs hyper, or when
    /// the output is full.
    #[inline]
    fn answer_avatars(
        &mut self,
        input: &[u8],
        routes: &Routes,
        now: Instant,
        output: &mut Output,
    ) -> usize {
        let mut used = 0;
        loop {
            match classify(&input[used..], routes.path()) {
                Head::Avatar { len, head_only } => {
                    used += len;
                    self.answered[usize::from(head_only)] += 1;
                    self.consumed = true;
                    output.push(routes.avatar_bytes(head_only, now.into_std()));
                    if output.is_full() {
                        self.full = used < input.len();
                        return used;
                    }
                }
                Head::Partial => return used,
                Head::Hyper => {
                    self.hand_over = true;
                    return used;
                }
            }
        }
    }
}

/// Answers waiting to be written, as the shared buffers they were made as: pipelined answers
/// are written together (one `writev`) without being copied into a buffer of the
/// connection's, so a burst of them costs a few pointers, and an answer a slow client has
/// not taken yet holds only its share of the worker's rendered response.
#[derive(Debug, Default)]
struct Output {
    /// The first (usually the only) answer.
    first: Option<Bytes>,
    /// Answers after the first, in order.
    rest: Vec<Bytes>,
    /// Bytes not yet written.
    pending: usize,
}

/// Answers one write may carry (`writev`'s limit is 1,024).
const MAX_PARTS: usize = 64;
/// Bytes after which a batch stops answering and writes: a pipelined burst is answered in
/// writes of at most this much (plus one answer).
const MAX_PENDING: usize = 256 * 1024;
/// Slots of `rest` kept between batches; a longer list (after a burst) is given back.
const KEEP_PARTS: usize = 16;

impl Output {
    #[inline]
    fn push(&mut self, bytes: Bytes) {
        self.pending += bytes.len();
        if self.first.is_none() && self.rest.is_empty() {
            self.first = Some(bytes);
        } else {
            self.rest.push(bytes);
        }
    }

    fn is_empty(&self) -> bool {
        self.pending == 0 && self.first.is_none() && self.rest.is_empty()
    }

    #[inline]
    fn is_full(&self) -> bool {
        self.rest.len() + 1 >= MAX_PARTS || self.pending >= MAX_PENDING
    }

    /// Writes what the socket takes now, without waiting; true when everything went.
    #[inline]
    fn write_now(&mut self, stream: &TcpStream) -> io::Result<bool> {
        loop {
            let written = if self.rest.is_empty() {
                match &self.first {
                    Some(first) => stream.try_write(first),
                    None => return Ok(true),
                }
            } else {
                let mut slices = [io::IoSlice::new(&[]); MAX_PARTS];
                let count = self.slices(&mut slices);
                stream.try_write_vectored(&slices[..count])
            };
            match written {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.consume(n),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(err) => return Err(err),
            }
        }
    }

    /// Writes until everything went (`Ready(Ok)`), the socket is full (`Pending`, with a
    /// wake-up arranged), or an error.
    fn poll_write(&mut self, stream: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let mut slices = [io::IoSlice::new(&[]); MAX_PARTS];
            let count = self.slices(&mut slices);
            match Pin::new(&mut *stream).poll_write_vectored(cx, &slices[..count]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => self.consume(n),
                Poll::Ready(Err(err)) => return Poll::Ready(Err(err)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Fills `slices` with the pending answers in order; returns how many it used.
    fn slices<'b>(&'b self, slices: &mut [io::IoSlice<'b>; MAX_PARTS]) -> usize {
        let parts = self.first.iter().chain(&self.rest).take(MAX_PARTS);
        let mut count = 0;
        for (slot, part) in slices.iter_mut().zip(parts) {
            *slot = io::IoSlice::new(part);
            count += 1;
        }
        count
    }

    /// Drops the first `n` pending bytes, which were written.
    fn consume(&mut self, mut n: usize) {
        self.pending -= n;
        if let Some(first) = &mut self.first {
            if n < first.len() {
                first.advance(n);
                return;
            }
            n -= first.len();
            self.first = None;
        }
        let mut done = 0;
        for part in &mut self.rest {
            if n < part.len() {
                part.advance(n);
                break;
            }
            n -= part.len();
            done += 1;
        }
        self.rest.drain(..done);
        if self.first.is_none() && !self.rest.is_empty() {
            self.first = Some(self.rest.remove(0));
        }
    }

    /// Gives back the list a burst grew, once written.
    #[inline]
    fn shrink(&mut self) {
        if self.rest.capacity() > KEEP_PARTS {
            self.rest = Vec::new();
        }
    }
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
