//! One pass of the fast path over the bytes a connection read: each complete request at the
//! front is answered into the output (the plain shape from the pre-rendered answer, any other
//! shape as [`Routes::decide`] plans it), until the output is full, a request must wait out
//! a delay, an answer ends the connection, or a request needs hyper.

use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use tokio::io::ReadBuf;
use tokio::time::{Instant, Sleep};

use super::{Connection, MAX_KEPT, READ_SCRATCH};
use crate::serve::stream::Stream;

use hyper::body::Body as _;
use tokio::sync::watch;

use crate::behaviour::Fault;
use crate::behaviour::body::Body;
use crate::ops::metrics::{CloseReason, MethodLabel, Route};
use crate::routes::{Answer, Connection as Asked, Decision, Head, Held, Routes, Shape};
use crate::serve::output::Output;

/// What one pass over the bytes read produced.
#[derive(Default)]
pub struct Batch {
    /// Avatar answers, GET and HEAD.
    pub(super) answered: [u64; 2],
    /// At least one request was taken off the front of the bytes read.
    pub(super) consumed: bool,
    /// When the batch's last answer was written: the connection is idle from then on.
    pub(super) answered_at: Option<Instant>,
    /// The output is full: write it, then go on answering before reading more.
    pub(super) full: bool,
    /// A request that needs hyper is next.
    pub(super) hand_over: bool,
    /// The last answer ends the connection (`connection: close`, HTTP/1.0).
    pub(super) close: bool,
    /// The last request taken waits out a delay before its answer.
    pub(super) waiting: Option<Box<Waiting>>,
}

/// A request taken off the connection whose answer comes after its delay.
pub(super) struct Waiting {
    pub(super) until: Instant,
    /// When its batch began: its duration counts from then.
    since: Instant,
    answer: Answer,
    request: Shape,
    held: Held,
}

impl Waiting {
    /// Whether its answer is written at once when the delay is over: no socket fault, no
    /// streamed body.
    fn answers_at_once(&self) -> bool {
        !matches!(self.answer, Answer::Fault(_) | Answer::Streamed(_))
    }

    /// Its answer, into `output`, at `now` that the delay is over; records it. Returns the
    /// body still to stream, if any, and whether the connection ends after it: when the
    /// request asked, or when shutdown has begun (`stopping`: an HTTP/1.1 answer then says
    /// `connection: close`, as hyper's does).
    fn answer(
        self,
        routes: &Routes,
        output: &mut Output,
        stopping: bool,
        now: Instant,
    ) -> (Option<Body>, bool) {
        let mut request = self.request;
        if stopping {
            request.connection = if request.http10 {
                Asked::Unsaid
            } else {
                Asked::Close
            };
        }
        let (status, body) = routes.answer_bytes(&self.answer, &request, now.into_std(), |bytes| {
            output.push(bytes)
        });
        // Out of flight once answered (its body may still be on its way), as on hyper's path.
        drop(self.held);
        record_one(routes, &request, status, now - self.since);
        (body, request.closes())
    }
}

/// How a connection ends while it answers a waiting request.
pub(super) enum Ended {
    /// Closed, and why.
    Closed(CloseReason),
    /// By a socket fault: `reset` or `close`.
    Fault(Fault),
}

impl<S: Stream> Connection<'_, S> {
    /// Answers a request that waits out its delay (or acts out its fault, or streams its
    /// body), as hyper's path would. The wait is on the connection's second timer, so its
    /// own deadlines stay where they are; the answer goes out with the next batch's, in
    /// order. `stop` says whether shutdown has begun. Returns when the answer was made.
    pub(super) async fn follow(
        &mut self,
        waiting: Box<Waiting>,
        stop: &watch::Receiver<bool>,
    ) -> Result<Instant, Ended> {
        let now = Instant::now();
        if waiting.until > now {
            // The client going while its request waits: hyper drops such a request too.
            let waited = self.wait_until(waiting.until).await;
            waited.map_err(Ended::Closed)?;
        }
        if !waiting.answers_at_once() {
            // Boxed: the state of a fault or a streamed body would add to every
            // connection's task.
            return Box::pin(self.act_out(*waiting, stop)).await;
        }
        let now = Instant::now();
        let (_, closes) = waiting.answer(self.routes, &mut self.output, *stop.borrow(), now);
        if closes {
            self.flush_on_delay_timer().await.map_err(Ended::Closed)?;
            return Err(Ended::Closed(CloseReason::Client));
        }
        Ok(now)
    }

    /// A waited request's fault (a hang first waits on the second timer) or streamed body.
    async fn act_out(
        &mut self,
        waiting: Waiting,
        stop: &watch::Receiver<bool>,
    ) -> Result<Instant, Ended> {
        let routes = self.routes;
        if let Answer::Streamed(plan) = &waiting.answer {
            if plan.fault == Some(Fault::Truncate) {
                routes.fault_injected(Fault::Truncate);
            }
        }
        if let Answer::Fault(fault) = waiting.answer {
            routes.fault_injected(fault);
            if fault == Fault::Hang {
                let until = Instant::now() + routes.max_hang();
                self.wait_until(until).await.map_err(Ended::Closed)?;
            }
            drop(waiting.held);
            let fault = if fault == Fault::Hang {
                Fault::Close
            } else {
                fault
            };
            return Err(Ended::Fault(fault));
        }
        let now = Instant::now();
        let (body, closes) = waiting.answer(routes, &mut self.output, *stop.borrow(), now);
        if let Some(body) = body {
            self.flush_on_delay_timer().await.map_err(Ended::Closed)?;
            self.stream_body(body).await.map_err(Ended::Closed)?;
        }
        if closes {
            self.flush_on_delay_timer().await.map_err(Ended::Closed)?;
            return Err(Ended::Closed(CloseReason::Client));
        }
        Ok(Instant::now())
    }

    /// [`Connection::flush`] with a stalled write held to the write timeout on the second
    /// timer.
    async fn flush_on_delay_timer(&mut self) -> Result<bool, CloseReason> {
        let mut timer = self.delay_timer();
        let flushed = self.flush(timer.as_mut()).await;
        self.delay = Some(timer);
        flushed
    }

    /// The connection's second timer, made the first time a request waits (most
    /// connections never do): taken out while it is used, then put back.
    fn delay_timer(&mut self) -> Pin<Box<Sleep>> {
        self.delay
            .take()
            .unwrap_or_else(|| Box::pin(tokio::time::sleep(Duration::ZERO)))
    }

    /// Sends a streamed body (`count`, paced, truncated) frame by frame, each written before
    /// the connection waits for the next; a truncated body ends the connection.
    async fn stream_body(&mut self, mut body: Body) -> Result<(), CloseReason> {
        enum Step {
            Write,
            Done,
            Cut,
        }
        loop {
            let output = &mut self.output;
            let step = std::future::poll_fn(|cx| {
                loop {
                    match Pin::new(&mut body).poll_frame(cx) {
                        Poll::Ready(Some(Ok(frame))) => {
                            if let Ok(data) = frame.into_data() {
                                output.push(data);
                            }
                            if output.is_full() {
                                return Poll::Ready(Step::Write);
                            }
                        }
                        Poll::Ready(None) => return Poll::Ready(Step::Done),
                        Poll::Ready(Some(Err(_))) => return Poll::Ready(Step::Cut),
                        // What it has goes out before the body's next pause.
                        Poll::Pending if !output.is_empty() => return Poll::Ready(Step::Write),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            })
            .await;
            self.flush_on_delay_timer().await?;
            match step {
                Step::Write => {}
                Step::Done => return Ok(()),
                // Hyper ends the connection on a body's error, short of its length.
                Step::Cut => return Err(CloseReason::Error),
            }
        }
    }
}

/// Records one answer that is not batched (an error status, or one after a delay).
fn record_one(routes: &Routes, request: &Shape, status: u16, elapsed: std::time::Duration) {
    let method = [MethodLabel::Get, MethodLabel::Head][usize::from(request.head_only)];
    routes.record(Route::Avatar, method, status, elapsed, 1);
    if routes.access_logging() {
        let method = ["GET", "HEAD"][usize::from(request.head_only)];
        routes.access(method, routes.path(), status, elapsed, 0);
    }
}

impl<S: Stream> Connection<'_, S> {
    /// Waits until `until` (a request's delay, or a hang) on the connection's second timer,
    /// reading meanwhile what the client sends (at most [`MAX_KEPT`]) to notice it going
    /// away, as hyper's path does.
    pub(super) async fn wait_until(&mut self, until: Instant) -> Result<(), CloseReason> {
        let mut sleep = self.delay_timer();
        sleep.as_mut().reset(until);
        let waited = loop {
            let room = self.buf.len() < MAX_KEPT;
            let read = std::future::poll_fn(|cx| {
                if sleep.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                if !room {
                    return Poll::Pending;
                }
                READ_SCRATCH
                    .with_borrow_mut(|scratch| {
                        let mut read = ReadBuf::new(&mut scratch[..]);
                        Pin::new(&mut self.stream)
                            .poll_read(cx, &mut read)
                            .map_ok(|()| read.filled().len())
                    })
                    .map(Some)
            })
            .await;
            match read {
                None => break Ok(()),
                Some(Ok(0)) => break Err(CloseReason::Client),
                Some(Err(err)) => break Err(CloseReason::of_io(&err)),
                Some(Ok(n)) => READ_SCRATCH.with_borrow(|scratch| self.keep(&scratch[..n])),
            }
        };
        self.delay = Some(sleep);
        waited
    }
}

impl Batch {
    /// Answers the complete requests at the front of `input` into `output`; returns how many
    /// bytes they took. Stops at an incomplete request, at one that needs hyper, at one that
    /// waits or closes, or when the output is full.
    #[inline]
    pub(super) fn answer_avatars(
        &mut self,
        input: &[u8],
        routes: &Routes,
        now: Instant,
        output: &mut Output,
    ) -> usize {
        // Whether the plain shape is answered without planning (no server-wide profile now,
        // no load shedding): asked once a batch.
        let plain = routes.plain_now(|| now.into_std());
        let mut used = 0;
        loop {
            let request = match routes.classify(&input[used..]) {
                Head::Avatar(request) => request,
                Head::Partial => return used,
                Head::Hyper => {
                    self.hand_over = true;
                    return used;
                }
            };
            if plain && request.is_plain() {
                used += request.len;
                self.answered[usize::from(request.head_only)] += 1;
                self.consumed = true;
                output.push(routes.avatar_bytes(request.head_only, now.into_std()));
            } else {
                // Only the version or the connection header differ: no plan to draw.
                let unplanned = plain && request.query.is_none() && request.behaviour.is_none();
                let decision = if unplanned {
                    Decision::Now(Answer::Avatars)
                } else {
                    routes.decide(&input[used..], &request, now.into_std())
                };
                match decision {
                    Decision::Hyper => {
                        self.hand_over = true;
                        return used;
                    }
                    Decision::Now(answer) => {
                        used += request.len;
                        self.consumed = true;
                        self.answer_now(routes, answer, &request, now, output);
                        if request.closes() {
                            self.close = true;
                            return used;
                        }
                    }
                    Decision::Later {
                        delay,
                        answer,
                        held,
                    } => {
                        used += request.len;
                        self.consumed = true;
                        self.waiting = Some(Box::new(Waiting {
                            until: now + delay,
                            since: now,
                            answer,
                            request,
                            held,
                        }));
                        return used;
                    }
                }
            }
            if output.is_full() {
                self.full = used < input.len();
                return used;
            }
        }
    }

    /// An answer planned on the fast path, now: avatars are counted with the batch, an error
    /// status on its own.
    fn answer_now(
        &mut self,
        routes: &Routes,
        answer: Answer,
        request: &Shape,
        now: Instant,
        output: &mut Output,
    ) {
        let (status, _) =
            routes.answer_bytes(&answer, request, now.into_std(), |bytes| output.push(bytes));
        if answer == Answer::Avatars {
            self.answered[usize::from(request.head_only)] += 1;
        } else {
            record_one(routes, request, status, now.elapsed());
        }
    }
}
