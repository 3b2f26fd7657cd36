//! HTTP/2 connections (chosen by ALPN over TLS, or h2c with prior knowledge): hyper serves
//! them, and this holds them to the deadlines hyper's HTTP/2 server does not have. Until the
//! first bytes arrive, the header timeout; after that, a connection with no stream open and
//! no byte moved either way for the idle timeout is closed (GOAWAY first), as an idle
//! HTTP/1.1 connection would be. Keep-alive PINGs would not do: a live client answers them
//! and idles forever. A socket fault raised by any stream ends the whole connection.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::{Frame, Incoming, SizeHint};
use hyper::server::conn::http2;
use hyper::{Request, Response};
use tokio::time::Instant;

use super::connection::{AvatarService, Connection, LocalExec, ended_by};
use super::fast::Prefixed;
use super::stream::Stream;
use super::watched::Activity;
use crate::behaviour::body::Body;
use crate::ops::metrics::CloseReason;
use crate::routes::Recorded;

/// How long a connection closed for a timeout has to take its GOAWAY.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

impl Connection {
    /// Serves HTTP/2 on `stream` until the client or the server ends it.
    pub(super) async fn serve_h2<S: Stream>(mut self, stream: Prefixed<S>) {
        let start = Instant::now();
        let (service, faults) = self.service();
        let open = Rc::new(Cell::new(0usize));
        let service = Streams {
            service,
            open: Rc::clone(&open),
        };
        let activity = Rc::new(Activity::timed(start));
        let io = self.watched_with(stream, Rc::clone(&activity));
        let connection = http2::Builder::new(LocalExec).serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let mut stop = self.stop.clone();
        let ended = loop {
            // Looked at again at least every idle timeout: bytes may arrive and streams
            // close without waking this loop.
            let deadline = self
                .deadline(start, &activity, open.get())
                .min(Instant::now() + self.timeouts.idle);
            tokio::select! {
                ended = connection.as_mut() => break Some(ended),
                _ = faults.raised() => {
                    self.reason = Some(CloseReason::Fault);
                    return;
                }
                _ = stop.wait_for(|stopped| *stopped) => break None,
                () = tokio::time::sleep_until(deadline) => {
                    // Streams may have opened, or bytes moved, since the deadline was set.
                    if Instant::now() < self.deadline(start, &activity, open.get()) {
                        continue;
                    }
                    let timed_out = match activity.last_moved() {
                        Some((_, true)) => CloseReason::IdleTimeout,
                        _ => CloseReason::HeaderTimeout,
                    };
                    self.reason = Some(timed_out);
                    // GOAWAY, and a moment for the client to take it: a graceful HTTP/2 close
                    // also waits for the client's answer to a PING, which a silent client
                    // never sends.
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GOAWAY_GRACE, connection).await;
                    return;
                }
            }
        };
        self.reason = Some(match ended {
            Some(ended) => ended_by(ended, &activity),
            None => {
                connection.as_mut().graceful_shutdown();
                let _ = connection.await;
                CloseReason::Shutdown
            }
        });
    }

    /// When the connection times out if nothing happens: the header timeout from the start
    /// while nothing has arrived, the idle timeout from the last byte moved while no stream
    /// is open, and never while one is (a long delay, a hang, a paced body).
    fn deadline(&self, start: Instant, activity: &Activity, open: usize) -> Instant {
        let far = Instant::now() + self.timeouts.idle;
        match activity.last_moved() {
            _ if open > 0 => far,
            Some((_, false)) | None => start + self.timeouts.header,
            Some((last, true)) => last + self.timeouts.idle,
        }
    }
}

/// The connection's service, counting its streams until their answers are written.
#[derive(Debug)]
struct Streams {
    service: AvatarService,
    open: Rc<Cell<usize>>,
}

impl hyper::service::Service<Request<Incoming>> for Streams {
    type Response = Response<CountedBody>;
    type Error = Infallible;
    type Future = Counted;

    fn call(&self, request: Request<Incoming>) -> Counted {
        self.open.set(self.open.get() + 1);
        Counted {
            answer: self.service.call(request),
            open: Some(Open(Rc::clone(&self.open))),
        }
    }
}

/// One stream counted as open; dropped when its answer is written, or abandoned.
#[derive(Debug)]
struct Open(Rc<Cell<usize>>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A stream's answer being made; the count moves into its body.
struct Counted {
    answer: Recorded,
    open: Option<Open>,
}

impl Future for Counted {
    type Output = Result<Response<CountedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let response = std::task::ready!(Pin::new(&mut this.answer).poll(cx));
        let open = this.open.take();
        Poll::Ready(response.map(|response| response.map(|body| CountedBody { body, _open: open })))
    }
}

/// A body that keeps its stream counted as open until it is written whole (a paced body
/// with long pauses is not idle) or dropped.
struct CountedBody {
    body: Body,
    _open: Option<Open>,
}

impl hyper::body::Body for CountedBody {
    type Data = <Body as hyper::body::Body>::Data;
    type Error = <Body as hyper::body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
