//! One accepted connection: its TLS handshake when the server serves TLS, then the fast path,
//! then, from the first request it does not take, hyper (HTTP/1.1, HTTP/2 chosen by ALPN, or
//! h2c with prior knowledge) with graceful shutdown, the socket faults behaviour injection
//! raises, and why the connection ended, counted when it is dropped.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::fast::{self, Answered, Outcome, Prefixed, Timeouts};
use super::output::Output;
use super::stream::{H2_PREFACE_START, Stream, TlsStream};
use super::watched::{Activity, Watched};
use crate::behaviour::Fault;
use crate::behaviour::body::Body;
use crate::ops::metrics::{CloseReason, Handshake};
use crate::routes::{FaultSignal, Recorded, Routes};

/// One accepted connection and what it needs from its worker.
pub(super) struct Connection {
    pub(super) timeouts: Timeouts,
    /// `--http2`: serve h2c when the client opens with the HTTP/2 preface.
    pub(super) http2: bool,
    /// False when every request needs planning, and on the admin listener.
    pub(super) fast_path: bool,
    /// Accepted on the admin listener: only the admin paths are served.
    pub(super) admin: bool,
    /// The client's address, for the control API's log of changes.
    pub(super) peer: Option<SocketAddr>,
    pub(super) routes: Rc<Routes>,
    pub(super) http: Rc<http1::Builder>,
    pub(super) stop: watch::Receiver<bool>,
    /// Why the connection ended, once known; counted when it is dropped.
    pub(super) reason: Option<CloseReason>,
    /// Dropped when the connection ends, which is how the worker knows it has drained.
    pub(super) _open: mpsc::Sender<()>,
}

impl Connection {
    /// Serves the connection. Every connection's task is as large as this future, so the
    /// paths that hold hyper's connection state (and gateway mode's upstream call) are
    /// boxed: a serve-mode fast-path task is about 1 KB instead of 4.4 KB, and the task is
    /// most of what each of 10,000 open connections costs.
    pub(super) async fn serve<S: Stream>(self, stream: S) {
        self.serve_read(stream, BytesMut::new()).await;
    }

    /// [`Connection::serve`] with the bytes the first read at accept took (see
    /// `fast/first.rs`).
    pub(super) async fn serve_read<S: Stream>(mut self, stream: S, read: BytesMut) {
        if stream.chose_h2() {
            return Box::pin(self.serve_hyper(Prefixed::new(Bytes::new(), stream), true)).await;
        }
        if !self.fast_path {
            return Box::pin(self.serve_without_fast_path(stream)).await;
        }
        let (routes, stop) = (&self.routes, self.stop.clone());
        // The one place the mode shows: what answers a plain request. Gateway mode plugs in
        // its upstream call; each call's state (the client's futures, several kilobytes) is
        // boxed for the length of the call, so that an idle gateway connection holds none of
        // it (8.8 KB a connection inline, against 2 KB boxed, after a burst of 300 callers),
        // and the connection's own task is boxed too, so that serve mode's tasks stay small.
        let outcome = if routes.is_gateway() {
            let calls = fast::Calls(|head_only| Box::pin(routes.gateway_wire(head_only)));
            Box::pin(fast::serve(
                stream,
                read,
                routes,
                self.timeouts,
                stop,
                calls,
            ))
            .await
        } else {
            fast::serve(stream, read, routes, self.timeouts, stop, fast::Avatars).await
        };
        match outcome {
            Outcome::Closed(reason) => self.reason = Some(reason),
            Outcome::Hyper(stream) => {
                self.routes.metrics().handed_over();
                let h2 = self.http2 && stream.prefix().starts_with(H2_PREFACE_START);
                Box::pin(self.serve_hyper(stream, h2)).await;
            }
        }
    }

    /// The TLS handshake, held to the header timeout and counted, then [`Connection::serve`]
    /// over the session. A client that opens with anything but a TLS handshake record (a
    /// cleartext request) is closed at once, with nothing written.
    pub(super) async fn serve_tls(mut self, stream: TcpStream, acceptor: TlsAcceptor) {
        // The handshake's duration counts from its first byte, not from the connection's
        // start (a client may connect ahead of need).
        let mut start = Instant::now();
        let handshake = async {
            let mut first = [0u8; 1];
            match stream.peek(&mut first).await {
                Ok(1) if first[0] == TLS_HANDSHAKE_RECORD => {}
                _ => return None,
            }
            start = Instant::now();
            acceptor.accept(stream).await.ok()
        };
        let mut stop = self.stop.clone();
        let session = tokio::select! {
            session = tokio::time::timeout(self.timeouts.header, handshake) => session.ok().flatten(),
            _ = stop.wait_for(|stopped| *stopped) => {
                self.reason = Some(CloseReason::Shutdown);
                return;
            }
        };
        let metrics = self.routes.metrics();
        let Some(session) = session else {
            metrics.handshake(Handshake::Failed, start.elapsed());
            self.reason = Some(CloseReason::TlsHandshake);
            return;
        };
        let result = if crate::tls::server::resumed(session.get_ref().1) {
            Handshake::Resumed
        } else {
            Handshake::Ok
        };
        metrics.handshake(result, start.elapsed());
        self.serve(TlsStream(Box::new(session))).await;
    }

    /// Writes the rest of an answer the first read at accept made (which the socket did not
    /// take at once), held to the write timeout, then closes; counts the answer once written.
    pub(super) async fn finish(mut self, mut stream: TcpStream, rest: Bytes, answered: Answered) {
        let mut output = Output::default();
        output.push(rest);
        let written = poll_fn(|cx| output.poll_write(&mut stream, cx));
        self.reason = Some(
            match tokio::time::timeout(self.timeouts.write, written).await {
                Ok(Ok(())) => {
                    answered.record(&self.routes);
                    CloseReason::Client
                }
                Ok(Err(err)) => CloseReason::of_io(&err),
                Err(_) => CloseReason::WriteTimeout,
            },
        );
    }

    /// With the fast path off (every request planned, or the admin listener), hyper serves
    /// every request.
    async fn serve_without_fast_path<S: Stream>(mut self, stream: S) {
        let h2 = if self.http2 {
            // Waiting for the first bytes is waiting on an idle connection: it ends at the
            // idle timeout or when shutdown begins, as it would on the fast path.
            let mut stop = self.stop.clone();
            tokio::select! {
                h2 = stream.opens_with_preface() => h2,
                () = tokio::time::sleep(self.timeouts.idle) => {
                    self.reason = Some(CloseReason::IdleTimeout);
                    return;
                }
                _ = stop.wait_for(|stopped| *stopped) => {
                    self.reason = Some(CloseReason::Shutdown);
                    return;
                }
            }
        } else {
            false
        };
        self.serve_hyper(Prefixed::new(Bytes::new(), stream), h2)
            .await;
    }

    /// Hands the connection to hyper for the rest of its life, with graceful shutdown and
    /// the socket faults that behaviour injection raises.
    async fn serve_hyper<S: Stream>(self, stream: Prefixed<S>, h2: bool) {
        if h2 {
            self.serve_h2(stream).await;
        } else {
            self.serve_h1(stream).await;
        }
    }

    /// The hyper service for this connection, and the signal its requests raise faults on.
    pub(super) fn service(&self) -> (AvatarService, Rc<FaultSignal>) {
        let faults = Rc::new(FaultSignal::default());
        let service = AvatarService {
            routes: Rc::clone(&self.routes),
            faults: Rc::clone(&faults),
            admin: self.admin,
            peer: self.peer,
        };
        (service, faults)
    }

    /// The socket as hyper gets it: writes held to the write timeout, its activity noted.
    fn watched<S: Stream>(
        &self,
        stream: Prefixed<S>,
    ) -> (TokioIo<Watched<Prefixed<S>>>, Rc<Activity>) {
        let activity = Rc::new(Activity::default());
        (self.watched_with(stream, Rc::clone(&activity)), activity)
    }

    /// [`Connection::watched`], noting into `activity`.
    pub(super) fn watched_with<S: Stream>(
        &self,
        stream: Prefixed<S>,
        activity: Rc<Activity>,
    ) -> TokioIo<Watched<Prefixed<S>>> {
        TokioIo::new(Watched::new(stream, self.timeouts.write, activity))
    }

    async fn serve_h1<S: Stream>(mut self, stream: Prefixed<S>) {
        let (service, faults) = self.service();
        let (io, activity) = self.watched(stream);
        let mut connection = self.http.serve_connection(io, service);
        // Let hyper take in the bytes the fast path already read before it can be told to
        // shut down: hyper closes a connection that has read nothing at once, which would
        // drop a request that is in fact in flight.
        let first = poll_fn(|cx| Poll::Ready(Pin::new(&mut connection).poll(cx))).await;
        if let Poll::Ready(ended) = first {
            self.reason = Some(ended_by(ended, &activity));
            return;
        }
        let fault = tokio::select! {
            ended = &mut connection => {
                self.reason = Some(ended_by(ended, &activity));
                return;
            }
            fault = faults.raised() => Some(fault),
            _ = self.stop.wait_for(|stopped| *stopped) => None,
        };
        let Some(fault) = fault else {
            Pin::new(&mut connection).graceful_shutdown();
            self.reason = Some(CloseReason::Shutdown);
            tokio::select! {
                _ = &mut connection => {}
                fault = faults.raised() => {
                    self.reason = Some(CloseReason::Fault);
                    abort(connection, fault);
                }
            }
            return;
        };
        self.reason = Some(CloseReason::Fault);
        abort(connection, fault);
    }
}

/// Why hyper's connection ended, from what it returned and what its socket saw: the client
/// (a clean close, a reset, a request cut short), a timeout (hyper's header timeout covers
/// the idle wait too: a head under way tells them apart), the write timeout, or an error
/// (a request hyper could not parse and answered with a 4xx).
pub(super) fn ended_by(ended: Result<(), hyper::Error>, activity: &Activity) -> CloseReason {
    let Err(err) = ended else {
        return CloseReason::Client;
    };
    if activity.write_timed_out() {
        return CloseReason::WriteTimeout;
    }
    if err.is_timeout() {
        return if activity.mid_head() {
            CloseReason::HeaderTimeout
        } else {
            CloseReason::IdleTimeout
        };
    }
    if err.is_incomplete_message() {
        return CloseReason::Client;
    }
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            return CloseReason::of_io(io);
        }
        source = cause.source();
    }
    CloseReason::Error
}

/// The first byte of a TLS connection: a handshake record (RFC 8446, section 5.1).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs hyper's HTTP/2 stream tasks on the worker's own thread (the service is not `Send`).
#[derive(Clone, Copy, Debug)]
pub(super) struct LocalExec;

impl<F: Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // No reason: the task was dropped, at the end of the shutdown timeout or by a panic.
        let reason = self.reason.unwrap_or(if *self.stop.borrow() {
            CloseReason::Shutdown
        } else {
            CloseReason::Error
        });
        self.routes.metrics().connection_closed(reason);
        self.routes.shared().connection_ended();
    }
}

/// Ends a connection for a socket fault: `reset` sends a TCP RST (`SO_LINGER` 0, then
/// close), `close` a plain FIN; neither writes a response, and a TLS session sends no
/// `close_notify`, as a crashed server would not.
fn abort<S: Stream>(
    connection: http1::Connection<TokioIo<Watched<Prefixed<S>>>, AvatarService>,
    fault: Fault,
) {
    let stream = connection
        .into_parts()
        .io
        .into_inner()
        .into_inner()
        .into_stream()
        .into_tcp();
    super::stream::fault_close(stream, fault);
}

/// The hyper service of one connection: answers from the worker's [`Routes`].
#[derive(Debug)]
pub(super) struct AvatarService {
    routes: Rc<Routes>,
    faults: Rc<FaultSignal>,
    admin: bool,
    peer: Option<SocketAddr>,
}

impl hyper::service::Service<Request<Incoming>> for AvatarService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Recorded;

    fn call(&self, request: Request<Incoming>) -> Recorded {
        self.routes
            .call(request, &self.faults, self.admin, self.peer)
    }
}
