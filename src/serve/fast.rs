//! The fast path: a connection starts here, and every `GET` or `HEAD` of the main path with
//! no body and no protocol switch, as [`Routes::classify`] says, is answered by writing bytes
//! exactly as hyper would. In serve mode ([`Avatars`], `fast/batch.rs`) the plain shape gets
//! the pre-rendered [`Snapshot`]; every other shape (a query, the behaviour header, a profile,
//! load shedding, HTTP/1.0, `connection: close`) is planned by [`Routes::decide`] and answered
//! here too: at once, after a delay on the connection's timer, with a socket fault, or with a
//! body streamed frame by frame. In gateway mode ([`Calls`]) the plain shape gets the
//! upstream's answer. The first request the fast path does not take hands the connection
//! (with the bytes already read) to hyper for the rest of its life, so hyper keeps every
//! other protocol decision. The connection's loop is a state type with named steps: took (a
//! read), answer, flush (or write_stalled), record, follow a waiting request, settle (its
//! deadlines), hand over.
//!
//! Why: under callgrind, hyper spends about 7,100 user-space instructions on one keep-alive
//! avatar request (request parsing ~1,600, response encoding ~1,150, dispatch and flushing);
//! this path spends a fraction of that (figures in bench/RESULTS.md).
//!
//! Held to hyper's standard: a connection's memory is bounded whatever a client sends (answers
//! are written from the shared rendered bytes, at most 256 KiB at a time), a write that
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
use std::task::Poll;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::ReadBuf;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep};

use super::output::Output;
pub use super::output::Prefixed;
use super::stream::Stream;
use crate::behaviour::Fault;
use crate::ops::metrics::{CloseReason, MethodLabel, Route};
use crate::routes::{GatewayWire, Head, Routes};
pub use batch::Batch;
use batch::Ended;

mod batch;
mod first;
pub use first::{Answered, First, first_read};

/// How a fast-path connection ended.
#[derive(Debug)]
pub enum Outcome<S> {
    /// Closed, and why: the peer closed, an error, a timeout, or shutdown between requests.
    Closed(CloseReason),
    /// Hyper must take over: the stream, with the bytes read ahead of it in front.
    Hyper(Prefixed<S>),
}

/// Bytes a connection reads at a time. Reads land in the worker's [`READ_SCRATCH`]; a
/// connection keeps bytes of its own only while a request is incomplete, or in gateway mode.
const READ_SIZE: usize = 4096;

/// Bytes a connection keeps while a request waits out its delay; past that it reads no more
/// until the answer is written (pipelined requests wait their turn in the socket).
const MAX_KEPT: usize = 64 * 1024;

thread_local! {
    /// The worker's read buffer, shared by all of its fast-path connections: a read fills it
    /// and the requests in it are answered before the task next yields, so an idle connection
    /// holds no buffer, and at thousands of connections every read lands in memory that is
    /// already in cache.
    static READ_SCRATCH: RefCell<[u8; READ_SIZE]> = const { RefCell::new([0; READ_SIZE]) };
}

/// What answers a plain request (a GET or HEAD of the main path) on the fast path. The loop
/// below is the same for both modes; the mode plugs in its answer.
pub trait Plain {
    /// Whether answering waits on something (an upstream call): then the connection keeps
    /// every byte it reads, since it reads nothing while it waits, and writes each answer
    /// before the next request is answered.
    const WAITS: bool;

    /// Answers the complete plain requests at the front of what `connection` read.
    fn answer<S: Stream>(
        &self,
        connection: &mut Connection<'_, S>,
        batch: &mut Batch,
        now: Instant,
    ) -> impl Future<Output = ()>;
}

/// Serve mode: the avatars, written from the worker's rendered answer.
#[derive(Debug, Clone, Copy)]
pub struct Avatars;

impl Plain for Avatars {
    const WAITS: bool = false;

    async fn answer<S: Stream>(
        &self,
        connection: &mut Connection<'_, S>,
        batch: &mut Batch,
        now: Instant,
    ) {
        connection.answer_avatars(now, batch);
    }
}

/// An answer that waits on a call (gateway mode's upstream call), made with `true` for HEAD.
#[derive(Debug, Clone, Copy)]
pub struct Calls<F>(pub F);

impl<F, A> Plain for Calls<F>
where
    F: Fn(bool) -> A,
    A: Future<Output = GatewayWire>,
{
    const WAITS: bool = true;

    async fn answer<S: Stream>(
        &self,
        connection: &mut Connection<'_, S>,
        batch: &mut Batch,
        _now: Instant,
    ) {
        connection.answer_calls(&self.0, batch).await;
    }
}

/// How long a connection may take over a request head, stay idle between requests, and wait
/// on a write that makes no progress.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub header: Duration,
    pub idle: Duration,
    pub write: Duration,
}

/// Serves fast-path requests on `stream` (`read`: bytes read from it already) until the
/// connection ends or needs hyper, `plain` answering each plain request; `stop` turns true
/// when shutdown begins.
pub async fn serve<P: Plain, S: Stream>(
    stream: S,
    read: BytesMut,
    routes: &Routes,
    timeouts: Timeouts,
    stop: watch::Receiver<bool>,
    plain: P,
) -> Outcome<S> {
    let mut conn = Connection {
        stream,
        routes,
        timeouts,
        release_buf: !read.is_empty(),
        buf: read,
        fresh: 0,
        keep_all: P::WAITS,
        output: Output::default(),
        idle_since: Instant::now(),
        head_since: None,
        delay: None,
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
    // Set at the idle deadline itself, so that a connection whose request is there at once
    // (a new connection per request) answers and closes without the timer ever being
    // registered: moving it would wake the runtime's driver (a write to its eventfd).
    let mut timer = std::pin::pin!(tokio::time::sleep_until(conn.deadline()));
    let mut timer_registered = false;
    loop {
        // Step 1: answer every complete request read (more than one when pipelined), up to
        // what one write may carry. The batch's clock read dates its answers (through the
        // avatar cache) and starts its duration.
        let start = Instant::now();
        let mut batch = Batch::default();
        plain.answer(&mut conn, &mut batch, start).await;
        // Step 2: write the answers; a write that stops making progress ends the connection.
        match conn.flush(timer.as_mut()).await {
            Ok(false) => {}
            // The wait used the timer: it is re-armed below.
            Ok(true) => timer_registered = false,
            Err(reason) => return conn.closed(reason).await,
        }
        conn.record(&mut batch, start);
        // Step 3: close after an answer that ends the connection, hand over, answer a
        // request after its delay, go on answering, or wait.
        if batch.close {
            return conn.closed(CloseReason::Client).await;
        }
        if batch.hand_over {
            return conn.hand_over();
        }
        if let Some(waiting) = batch.waiting.take() {
            // On the connection's second timer: its own keeps its deadline (and at worst
            // fires early once, to be set again).
            match conn.follow(waiting, &flag).await {
                // Its answer went, or goes out with the next batch's, in order.
                Ok(now) => {
                    // Idle from its answer on; a head already begun (bytes that came during
                    // the wait) gets the whole header timeout from now, as hyper's next head
                    // does once the answer before it is written.
                    conn.idle_since = now;
                    conn.head_since = (!conn.buf.is_empty()).then_some(now);
                }
                Err(Ended::Closed(reason)) => return conn.closed(reason).await,
                Err(Ended::Fault(fault)) => return conn.abort(fault),
            }
            continue;
        }
        conn.settle(&batch, start);
        if batch.full {
            continue;
        }
        if stopped {
            // Between requests: close. Mid-request: hyper finishes it with `connection: close`.
            return if conn.buf.is_empty() {
                conn.closed(CloseReason::Shutdown).await
            } else {
                conn.hand_over()
            };
        }
        let deadline = conn.deadline();
        // After a request's delay the timer is at its end, not at a deadline of the
        // connection's: set it again at once rather than wake for nothing.
        if timer.deadline() > deadline || timer.is_elapsed() {
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
            Event::Read(Ok(0)) => return conn.closed(CloseReason::Client).await,
            Event::Read(Err(err)) => return conn.closed(CloseReason::of_io(&err)).await,
            Event::Read(Ok(n)) => conn.took(n),
            Event::Stop => stopped = true,
            Event::Timer => {
                if Instant::now() >= deadline {
                    // A slow head (slowloris), or a keep-alive connection left idle.
                    let reason = conn.timed_out();
                    return conn.closed(reason).await;
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
pub struct Connection<'a, S> {
    stream: S,
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
    /// The second timer: a request's delay, a hang, a streamed body's writes. Made when a
    /// request first waits, so that the connection's own deadlines need not move for it.
    delay: Option<Pin<Box<Sleep>>>,
}

impl<S: Stream> Connection<'_, S> {
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
            if !routes.fast_path_open(std::time::Instant::now) {
                batch.hand_over = true;
                return;
            }
            let (len, head_only) = match routes.classify_call(&self.buf) {
                Head::Avatar(request) => (request.len, request.head_only),
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
        match self.stream.write_now(&mut self.output) {
            Ok(true) => Ok(false),
            Ok(false) => {
                let limit = self.timeouts.write;
                let stalled = self.output.write_stalled(&mut self.stream, timer, limit);
                stalled.await.map(|()| true)
            }
            Err(err) => Err(CloseReason::of_io(&err)),
        }
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

    /// Ends the connection with a socket fault (`reset` or `close`), writing nothing more.
    fn abort(self, fault: Fault) -> Outcome<S> {
        super::stream::fault_close(self.stream.into_tcp(), fault);
        Outcome::Closed(CloseReason::Fault)
    }

    fn hand_over(self) -> Outcome<S> {
        Outcome::Hyper(Prefixed::new(self.buf.freeze(), self.stream))
    }

    /// Ends the connection: a clean end (the client's close, a timeout, shutdown) lets a TLS
    /// session send its `close_notify`; after an error or a stalled write it is just dropped.
    async fn closed(&mut self, reason: CloseReason) -> Outcome<S> {
        if reason.is_clean() {
            self.stream.close(self.timeouts.write).await;
        }
        Outcome::Closed(reason)
    }
}
