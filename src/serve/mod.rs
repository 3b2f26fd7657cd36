//! Thread-per-core serving: one OS thread per worker, each with a single-threaded tokio runtime
//! and its own `SO_REUSEPORT` listener on the shared port, so the kernel spreads connections
//! across workers and nothing is shared between them on the request path. Also owns graceful
//! shutdown: stop accepting, let in-flight responses finish, close keep-alive connections.

pub mod fast;
pub mod watched;

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

use crate::behaviour::Fault;
use crate::behaviour::body::Body;
use crate::config::Config;
use crate::ops::metrics::{CloseReason, Registry};
use crate::routes::{FaultSignal, Recorded, Routes, Shared};
use fast::{Outcome, Prefixed, Timeouts};
use watched::{Activity, Watched};

/// Pending connections the kernel queues per listener; sized for load tests that open
/// thousands of connections at once.
const LISTEN_BACKLOG: i32 = 4096;

/// How long an accept loop waits after an error that is not about one connection (out of file
/// descriptors, out of memory) before it tries again, so it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker {index}: {source}")]
    Worker { index: usize, source: io::Error },
}

/// A server whose listeners are bound and listening, ready to [`Server::serve`].
#[derive(Debug)]
pub struct Server {
    config: Arc<Config>,
    shared: Shared,
    listeners: Vec<StdListener>,
    local_addr: SocketAddr,
    /// The separate listener for `/healthz`, `/readyz` and `/metrics` (`--admin-port`).
    admin: Option<(StdListener, SocketAddr)>,
}

impl Server {
    /// Binds one listener per worker on the configured address. With port 0 the first
    /// listener picks a free port and the others join it.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let workers = config.worker_count();
        let mut addr = SocketAddr::new(config.host.ip, config.port);
        let mut listeners = Vec::with_capacity(workers);
        for _ in 0..workers {
            let listener = listen(addr).map_err(|source| ServerError::Listen { addr, source })?;
            if addr.port() == 0 {
                addr = listener
                    .local_addr()
                    .map_err(|source| ServerError::Listen { addr, source })?;
            }
            listeners.push(listener);
        }
        let admin = match config.admin_port {
            Some(port) => {
                let admin_addr = SocketAddr::new(config.host.ip, port);
                let listener = listen(admin_addr).map_err(|source| ServerError::Listen {
                    addr: admin_addr,
                    source,
                })?;
                let bound = listener
                    .local_addr()
                    .map_err(|source| ServerError::Listen {
                        addr: admin_addr,
                        source,
                    })?;
                Some((listener, bound))
            }
            None => None,
        };
        let upstreams = config.gateway.as_ref().map_or_else(Vec::new, |gateway| {
            gateway.upstreams.iter().map(|u| u.url.clone()).collect()
        });
        Ok(Server {
            shared: Shared::with_upstreams(workers, upstreams),
            config: Arc::new(config),
            listeners,
            local_addr: addr,
            admin,
        })
    }

    /// How many workers serve.
    pub fn workers(&self) -> usize {
        self.listeners.len()
    }

    /// The admin listener's address, when `--admin-port` was given.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|(_, addr)| *addr)
    }

    /// The metrics every worker records into, readable after the server has stopped.
    pub fn metrics(&self) -> Registry {
        self.shared.metrics()
    }

    /// The address the listeners are bound to, with the real port when 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The line the seed prints once it accepts connections: `Listening on http://HOST:PORT`.
    pub fn listening_line(&self) -> String {
        format!(
            "Listening on http://{}:{}",
            self.config.host.url_form(),
            self.local_addr.port()
        )
    }

    /// Serves until `shutdown` completes, then drains: each worker stops accepting, lets
    /// in-flight requests finish and closes keep-alive connections, waiting at most the
    /// configured shutdown timeout. Runs on the caller's runtime; the workers run on their
    /// own threads.
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut workers = Vec::with_capacity(self.listeners.len());
        let mut admin = self.admin.map(|(listener, _)| listener);
        for (index, listener) in self.listeners.into_iter().enumerate() {
            let config = Arc::clone(&self.config);
            let shared = self.shared.clone();
            let stop = stop_rx.clone();
            // The first worker also serves the admin listener.
            let mut listeners = vec![(listener, false)];
            listeners.extend(admin.take().map(|listener| (listener, true)));
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let thread = thread::Builder::new()
                .name(format!("m2-worker-{index}"))
                .spawn(move || {
                    let routes = Routes::new(&config, &shared, index);
                    run_worker(&config, routes, listeners, stop);
                    drop(done_tx);
                })
                .map_err(|source| ServerError::Worker { index, source })?;
            workers.push((thread, done_rx));
        }
        shutdown.await;
        tracing::info!(
            delay = ?self.config.shutdown_delay,
            "shutdown: readiness now answers 503"
        );
        // Readiness turns 503 first; everything else is served normally for the delay, so
        // a load balancer can take this instance out of rotation before it stops accepting.
        self.shared.set_draining();
        if !self.config.shutdown_delay.is_zero() {
            tokio::time::sleep(self.config.shutdown_delay).await;
        }
        tracing::info!(
            timeout = ?self.config.shutdown_timeout,
            "shutdown: no longer accepting; draining connections"
        );
        // Receivers outlive the send: each worker holds one until it has drained.
        let _ = stop_tx.send(true);
        for (thread, done) in workers {
            // The sender is dropped when the worker returns; an error just means "done".
            let _ = done.await;
            if thread.join().is_err() {
                tracing::error!("a worker thread panicked during shutdown");
            }
        }
        tracing::info!("shutdown: complete");
        Ok(())
    }
}

/// Opens a non-blocking listening socket with `SO_REUSEPORT` and `TCP_NODELAY` (inherited by
/// accepted sockets on Linux).
fn listen(addr: SocketAddr) -> io::Result<StdListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_tcp_nodelay(true)?;
    if addr.is_ipv6() {
        socket
            .set_only_v6(false)
            .or_else(|_| socket.set_only_v6(true))?;
    }
    socket.bind(&addr.into())?;
    socket.listen(LISTEN_BACKLOG)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// One worker: a current-thread runtime running the accept loops and every connection they
/// accepted, until told to stop and drained (or the shutdown timeout passes).
fn run_worker(
    config: &Config,
    routes: Routes,
    listeners: Vec<(StdListener, bool)>,
    stop: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start a worker runtime: {err}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let mut http = http1::Builder::new();
        http.keep_alive(true);
        // hyper applies this to every request head, and also while it waits for the next
        // request on a keep-alive connection: on connections hyper serves, the idle limit is
        // therefore the header timeout (the fast path keeps the two apart).
        http.timer(TokioTimer::new());
        http.header_read_timeout(config.header_timeout);
        // Bodies are queued for writev as the shared buffers they are, not copied into
        // hyper's write buffer, which would keep the capacity the largest body needed (a
        // `count=10000` list, a gateway's 16 MiB answer) for the connection's whole life.
        // Copying the 3.7 KB avatar once cost fewer instructions (7,222 against 7,306 a
        // request), but hyper's path is not the hot one.
        http.writev(true);
        http.max_buf_size(16 * 1024);
        let worker = Worker {
            connection_limit: config.connection_limit(),
            timeouts: Timeouts {
                header: config.header_timeout,
                idle: config.idle_timeout,
                write: config.write_timeout,
            },
            http2: config.http2,
            fast_path: config.fast_path_allowed(),
            routes: Rc::new(routes),
            http: Rc::new(http),
        };
        // Each connection holds a sender; `recv` yields `None` once all have ended.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        let mut loops = Vec::with_capacity(listeners.len());
        for (listener, admin) in listeners {
            match TcpListener::from_std(listener) {
                Ok(listener) => loops.push(tokio::task::spawn_local(worker.clone().accept_loop(
                    listener,
                    admin,
                    stop.clone(),
                    open_tx.clone(),
                ))),
                Err(err) => tracing::error!("cannot register a listener: {err}"),
            }
        }
        drop(open_tx);
        for accept_loop in loops {
            let _ = accept_loop.await;
        }
        // Past the timeout the runtime is dropped, which closes whatever is still open.
        if tokio::time::timeout(config.shutdown_timeout, open_rx.recv())
            .await
            .is_err()
        {
            tracing::warn!("shutdown: timeout reached; closing the connections still open");
        }
    });
}

/// What every connection of a worker shares.
#[derive(Clone)]
struct Worker {
    /// `--max-connections`, across all workers.
    connection_limit: usize,
    timeouts: Timeouts,
    /// `--http2`: connections opening with the HTTP/2 preface are served as h2c.
    http2: bool,
    /// False when every request needs planning (a server-wide profile, load shedding).
    fast_path: bool,
    routes: Rc<Routes>,
    http: Rc<http1::Builder>,
}

impl Worker {
    /// Accepts connections until `stop` turns true.
    async fn accept_loop(
        self,
        listener: TcpListener,
        admin: bool,
        stop: watch::Receiver<bool>,
        open: mpsc::Sender<()>,
    ) {
        let mut stopping = stop.clone();
        let mut last_error_log: Option<tokio::time::Instant> = None;
        loop {
            let stream = tokio::select! {
                biased;
                _ = stopping.wait_for(|stopped| *stopped) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, _peer)) => stream,
                    Err(err) if is_per_connection(&err) => continue,
                    Err(err) => {
                        // Out of file descriptors, say: back off rather than spin, and log
                        // at most once a second however long it lasts.
                        let now = tokio::time::Instant::now();
                        if last_error_log.is_none_or(|last| now - last >= Duration::from_secs(1)) {
                            tracing::warn!("accept failed, backing off: {err}");
                            last_error_log = Some(now);
                        }
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        continue;
                    }
                },
            };
            self.routes.metrics().connection_accepted();
            if !self.routes.shared().admit_connection(self.connection_limit) {
                // Over the limit: closed at once, before any work is spent on it.
                drop(stream);
                self.routes
                    .metrics()
                    .connection_closed(CloseReason::MaxConnections);
                continue;
            }
            let connection = Connection {
                timeouts: self.timeouts,
                http2: self.http2,
                fast_path: self.fast_path && !admin,
                admin,
                routes: Rc::clone(&self.routes),
                http: Rc::clone(&self.http),
                stop: stop.clone(),
                reason: None,
                _open: open.clone(),
            };
            tokio::task::spawn_local(connection.serve(stream));
        }
    }
}

/// One accepted connection and what it needs from its worker.
struct Connection {
    timeouts: Timeouts,
    /// `--http2`: serve h2c when the client opens with the HTTP/2 preface.
    http2: bool,
    /// False when every request needs planning, and on the admin listener.
    fast_path: bool,
    /// Accepted on the admin listener: only the admin paths are served.
    admin: bool,
    routes: Rc<Routes>,
    http: Rc<http1::Builder>,
    stop: watch::Receiver<bool>,
    /// Why the connection ended, once known; counted when it is dropped.
    reason: Option<CloseReason>,
    /// Dropped when the connection ends, which is how the worker knows it has drained.
    _open: mpsc::Sender<()>,
}

impl Connection {
    /// Serves the connection. Every connection's task is as large as this future, so the
    /// paths that hold hyper's connection state (and gateway mode's upstream call) are
    /// boxed: a serve-mode fast-path task is about 1 KB instead of 4.4 KB, and the task is
    /// most of what each of 10,000 open connections costs.
    async fn serve(mut self, stream: TcpStream) {
        if !self.fast_path {
            return Box::pin(self.serve_without_fast_path(stream)).await;
        }
        let (routes, stop) = (&self.routes, self.stop.clone());
        let outcome = if routes.is_gateway() {
            // Each upstream call's state (the client's futures, several kilobytes) is boxed
            // for the length of the call, so that an idle gateway connection holds none of it
            // (8.8 KB a connection inline, against 2 KB boxed, after a burst of 300 callers);
            // the connection's own task is boxed too, so that serve mode's tasks stay small.
            let upstream = |head_only| Box::pin(routes.gateway_wire(head_only));
            Box::pin(fast::serve(
                stream,
                routes,
                self.timeouts,
                stop,
                Some(upstream),
            ))
            .await
        } else {
            let upstream: Option<fast::NoUpstream> = None;
            fast::serve(stream, routes, self.timeouts, stop, upstream).await
        };
        match outcome {
            Outcome::Closed(reason) => self.reason = Some(reason),
            Outcome::Hyper(stream) => {
                let h2 = self.http2 && stream.prefix().starts_with(H2_PREFACE_START);
                Box::pin(self.serve_hyper(stream, h2)).await;
            }
        }
    }

    /// With the fast path off (every request planned, or the admin listener), hyper serves
    /// every request.
    async fn serve_without_fast_path(mut self, stream: TcpStream) {
        let h2 = if self.http2 {
            // Waiting for the first bytes is waiting on an idle connection: it ends at the
            // idle timeout or when shutdown begins, as it would on the fast path.
            let mut stop = self.stop.clone();
            tokio::select! {
                h2 = opens_with_preface(&stream) => h2,
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
    async fn serve_hyper(self, stream: Prefixed, h2: bool) {
        if h2 {
            self.serve_h2(stream).await;
        } else {
            self.serve_h1(stream).await;
        }
    }

    /// The hyper service for this connection, and the signal its requests raise faults on.
    fn service(&self) -> (AvatarService, Rc<FaultSignal>) {
        let faults = Rc::new(FaultSignal::default());
        let service = AvatarService {
            routes: Rc::clone(&self.routes),
            faults: Rc::clone(&faults),
            admin: self.admin,
        };
        (service, faults)
    }

    /// The socket as hyper gets it: writes held to the write timeout, its activity noted.
    fn watched(&self, stream: Prefixed) -> (TokioIo<Watched<Prefixed>>, Rc<Activity>) {
        let activity = Rc::new(Activity::default());
        let io = Watched::new(stream, self.timeouts.write, Rc::clone(&activity));
        (TokioIo::new(io), activity)
    }

    /// HTTP/2 with prior knowledge. A socket fault raised by any stream ends the connection.
    async fn serve_h2(mut self, stream: Prefixed) {
        let (service, faults) = self.service();
        let (io, activity) = self.watched(stream);
        let connection = http2::Builder::new(LocalExec).serve_connection(io, service);
        let mut connection = std::pin::pin!(connection);
        let ended = tokio::select! {
            ended = connection.as_mut() => Some(ended),
            _ = faults.raised() => {
                self.reason = Some(CloseReason::Fault);
                return;
            }
            _ = self.stop.wait_for(|stopped| *stopped) => None,
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

    async fn serve_h1(mut self, stream: Prefixed) {
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
fn ended_by(ended: Result<(), hyper::Error>, activity: &Activity) -> CloseReason {
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

/// The start of the HTTP/2 connection preface (RFC 9113, section 3.4).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

/// Whether the client opens with the HTTP/2 preface, read ahead without consuming anything
/// (the bytes stay in the socket for hyper).
async fn opens_with_preface(stream: &TcpStream) -> bool {
    let mut buf = [0u8; H2_PREFACE_START.len()];
    // A client that sends the preface in pieces gets a second; then it is taken as HTTP/1.
    for _ in 0..1000 {
        match stream.peek(&mut buf).await {
            Ok(n) if n == buf.len() => return buf[..] == *H2_PREFACE_START,
            Ok(n) if n > 0 && H2_PREFACE_START.starts_with(&buf[..n]) => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            _ => return false,
        }
    }
    false
}

/// Runs hyper's HTTP/2 stream tasks on the worker's own thread (the service is not `Send`).
#[derive(Clone, Copy, Debug)]
struct LocalExec;

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
/// close), `close` a plain FIN; neither writes a response.
fn abort(connection: http1::Connection<TokioIo<Watched<Prefixed>>, AvatarService>, fault: Fault) {
    let stream = connection
        .into_parts()
        .io
        .into_inner()
        .into_inner()
        .into_stream();
    if fault == Fault::Reset {
        if let Err(err) = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO)) {
            tracing::warn!("cannot arm a reset: {err}");
        }
    }
    drop(stream);
}

/// Accept errors that concern one connection only: retry at once.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// The hyper service of one connection: answers from the worker's [`Routes`].
#[derive(Debug)]
struct AvatarService {
    routes: Rc<Routes>,
    faults: Rc<FaultSignal>,
    admin: bool,
}

impl hyper::service::Service<Request<Incoming>> for AvatarService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Recorded;

    fn call(&self, request: Request<Incoming>) -> Recorded {
        self.routes.call(&request, &self.faults, self.admin)
    }
}
