//! Thread-per-core serving: one OS thread per worker, each with a single-threaded tokio runtime
//! and its own `SO_REUSEPORT` listener on the shared port, so the kernel spreads connections
//! across workers and nothing is shared between them on the request path. A plain connection
//! gets its first read as it is accepted (`fast/first.rs`): one that asked for a single answer
//! is answered and closed there, without a task. Also owns graceful shutdown: stop accepting,
//! let in-flight responses finish, close keep-alive connections.

mod connection;
pub(crate) mod fast;
mod h2;
mod listen;
mod output;
mod stream;
pub(crate) mod watched;

use std::future::Future;
use std::io;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::rc::Rc;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use bytes::BytesMut;
use hyper::server::conn::http1;
use hyper_util::rt::TokioTimer;
use tokio::io::unix::AsyncFd;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::Config;
use crate::ops::exposition::Registry;
use crate::ops::metrics::CloseReason;
use crate::routes::{Routes, Shared};
use crate::tls::{ServerTls, TlsError};
use connection::Connection;
use fast::Timeouts;
use listen::{accept, is_per_connection, listen};

/// How long an accept loop waits after an error that is not about one connection (out of file
/// descriptors, out of memory) before it tries again, so it does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// Connections an accept loop answers at their first read before it lets the worker's other
/// connections run.
const ANSWERED_BEFORE_YIELD: u32 = 16;

/// Errors that stop the server from starting.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    #[error("cannot start worker {index}: {source}")]
    Worker { index: usize, source: io::Error },
    #[error("cannot serve TLS: {} {source}", source.flag)]
    Tls { source: TlsError },
}

/// How often the certificate files are looked at for a change (two `stat` calls).
const TLS_WATCH_INTERVAL: Duration = Duration::from_secs(1);

/// A server whose listeners are bound and listening, ready to [`Server::serve`].
#[derive(Debug)]
pub struct Server {
    config: Arc<Config>,
    shared: Shared,
    listeners: Vec<StdListener>,
    local_addr: SocketAddr,
    /// The separate listener for `/healthz`, `/readyz` and `/metrics` (`--admin-port`).
    admin: Option<(StdListener, SocketAddr)>,
    /// `--tls-cert`: every listener serves TLS with it (client certificates are asked for on
    /// the main port only).
    tls: Option<Arc<ServerTls>>,
}

impl Server {
    /// Binds one listener per worker on the configured address. With port 0 the first
    /// listener picks a free port and the others join it.
    pub fn bind(config: Config) -> Result<Server, ServerError> {
        let workers = config.worker_count();
        let mut addr = SocketAddr::new(config.host.ip, config.port);
        let mut listeners = Vec::with_capacity(workers);
        for _ in 0..workers {
            let listener = listen(addr, config.defer_accept)
                .map_err(|source| ServerError::Listen { addr, source })?;
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
                let listener = listen(admin_addr, false).map_err(|source| ServerError::Listen {
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
        let tls = match &config.tls {
            Some(settings) => Some(Arc::new(
                ServerTls::new(settings).map_err(|source| ServerError::Tls { source })?,
            )),
            None => None,
        };
        Ok(Server {
            // A scenario's phases count from here: the listeners are open.
            shared: Shared::for_config(&config, workers),
            config: Arc::new(config),
            listeners,
            local_addr: addr,
            admin,
            tls,
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

    /// The line the seed prints once it accepts connections: `Listening on http://HOST:PORT`
    /// (`https://` when serving TLS).
    pub fn listening_line(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!(
            "Listening on {scheme}://{}:{}",
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
            let tls = self.tls.clone();
            // The first worker also serves the admin listener.
            let mut listeners = vec![(listener, false)];
            listeners.extend(admin.take().map(|listener| (listener, true)));
            let (done_tx, done_rx) = oneshot::channel::<()>();
            let thread = thread::Builder::new()
                .name(format!("m2-worker-{index}"))
                .spawn(move || {
                    let routes = Routes::new(&config, &shared, index);
                    run_worker(&config, routes, tls, listeners, stop);
                    drop(done_tx);
                })
                .map_err(|source| ServerError::Worker { index, source })?;
            workers.push((thread, done_rx));
        }
        // New handshakes take a new certificate on SIGHUP or when its files change.
        let metrics = self.shared.metrics();
        let watch_tls = async {
            match &self.tls {
                Some(tls) => {
                    tls.watch(TLS_WATCH_INTERVAL, |outcome| {
                        metrics.tls_reloaded(outcome.is_ok());
                    })
                    .await;
                }
                None => std::future::pending().await,
            }
        };
        // Each phase of a scenario is logged and counted as it begins.
        let live = self.shared.live();
        let log_scenario = live.log_scenario(self.shared.metrics());
        tokio::select! {
            () = shutdown => {}
            () = watch_tls => {}
            () = log_scenario => {}
        }
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

/// One worker: a current-thread runtime running the accept loops and every connection they
/// accepted, until told to stop and drained (or the shutdown timeout passes).
fn run_worker(
    config: &Config,
    routes: Routes,
    tls: Option<Arc<ServerTls>>,
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
            tls: tls.map(|tls| (tls.acceptor(false), tls.acceptor(true))),
        };
        // Each connection holds a sender; `recv` yields `None` once all have ended.
        let (open_tx, mut open_rx) = mpsc::channel::<()>(1);
        let mut loops = Vec::with_capacity(listeners.len());
        for (listener, admin) in listeners {
            // Deprecated for an `AsRawFd` that may not own its descriptor; a listener owns its
            // own, for as long as the `AsyncFd` holds it.
            #[allow(deprecated)]
            let listener = AsyncFd::new(listener);
            match listener {
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
    /// Set when serving TLS: every connection's handshake, on the main port and on the admin
    /// port (which asks for no client certificate).
    tls: Option<(tokio_rustls::TlsAcceptor, tokio_rustls::TlsAcceptor)>,
}

impl Worker {
    /// Accepts connections until `stop` turns true.
    async fn accept_loop(
        self,
        listener: AsyncFd<StdListener>,
        admin: bool,
        stop: watch::Receiver<bool>,
        open: mpsc::Sender<()>,
    ) {
        let mut stopping = stop.clone();
        let mut last_error_log: Option<tokio::time::Instant> = None;
        // Plain serve-mode connections on the main port get their first read at once.
        let read_first =
            self.fast_path && !admin && self.tls.is_none() && !self.routes.is_gateway();
        let mut answered_here: u32 = 0;
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = stopping.wait_for(|stopped| *stopped) => break,
                accepted = accept(&listener) => match accepted {
                    Ok(accepted) => accepted,
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
            let mut connection = Connection {
                timeouts: self.timeouts,
                http2: self.http2,
                fast_path: self.fast_path && !admin,
                admin,
                peer: Some(peer),
                routes: Rc::clone(&self.routes),
                http: Rc::clone(&self.http),
                stop: stop.clone(),
                reason: None,
                _open: open.clone(),
            };
            let first = if read_first {
                fast::first_read(&stream, &self.routes)
            } else {
                fast::First::Serve(BytesMut::new())
            };
            if let fast::First::Closed(reason) = first {
                // Answered (or ended) without a task; counted as it is dropped.
                connection.reason = Some(reason);
                drop(connection);
                answered_here += 1;
                if answered_here % ANSWERED_BEFORE_YIELD == 0 {
                    // While connections keep coming, the loop would otherwise run until the
                    // runtime's budget for a task is spent (128 of them, about 2 ms), and the
                    // connections served by tasks would wait that long.
                    tokio::task::yield_now().await;
                }
                continue;
            }
            let stream = match TcpStream::from_std(stream) {
                Ok(stream) => stream,
                Err(err) => {
                    connection.reason = Some(CloseReason::of_io(&err));
                    continue;
                }
            };
            match (&self.tls, first) {
                (_, fast::First::Unwritten(rest, answered)) => {
                    tokio::task::spawn_local(connection.finish(stream, rest, answered));
                }
                (Some((main, admin_only)), _) => {
                    let acceptor = if admin { admin_only } else { main };
                    tokio::task::spawn_local(connection.serve_tls(stream, acceptor.clone()));
                }
                (None, fast::First::Serve(read)) => {
                    tokio::task::spawn_local(connection.serve_read(stream, read));
                }
                (None, fast::First::Closed(_)) => unreachable!("handled above"),
            }
        }
    }
}
