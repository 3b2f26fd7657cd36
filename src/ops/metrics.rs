//! Metrics: per-worker counters and histograms, each written only by its own worker (a load and
//! a store, no locked instruction, no cache line shared with another writer), merged when
//! `/metrics` is scraped ([`super::exposition`]) into the Prometheus text format 0.0.4.

use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::Duration;

use crate::behaviour::Fault;
use crate::gateway::Observer;
use crate::gateway::error::Outcome;

/// The routes requests are counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Avatar,
    Healthz,
    Readyz,
    Metrics,
    NotFound,
    /// Gateway mode's path.
    Gateway,
    /// The control API, `/admin/*`.
    Control,
}

impl Route {
    pub(super) const ALL: [Route; 7] = [
        Route::Avatar,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::NotFound,
        Route::Gateway,
        Route::Control,
    ];

    pub(super) fn label(self) -> &'static str {
        match self {
            Route::Avatar => "avatar",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::NotFound => "not_found",
            Route::Gateway => "gateway",
            Route::Control => "control",
        }
    }
}

/// Methods are counted as GET, HEAD or other (the label set stays bounded).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MethodLabel {
    Get,
    Head,
    Other,
}

impl MethodLabel {
    pub(super) const ALL: [MethodLabel; 3] =
        [MethodLabel::Get, MethodLabel::Head, MethodLabel::Other];

    pub fn of(method: &hyper::Method) -> MethodLabel {
        match *method {
            hyper::Method::GET => MethodLabel::Get,
            hyper::Method::HEAD => MethodLabel::Head,
            _ => MethodLabel::Other,
        }
    }

    pub(super) fn label(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Other => "other",
        }
    }
}

pub(super) const OUTCOMES: usize = Outcome::LABELS.len();

/// Why a connection ended: the `reason` label of `microservice2_connections_closed_total`, so a
/// user can tell which limit cut their clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// The client closed or reset the connection, or asked for it to be closed
    /// (`connection: close`, HTTP/1.0 without keep-alive).
    Client,
    /// A request head took longer than `--header-timeout`.
    HeaderTimeout,
    /// No request came for `--idle-timeout`.
    IdleTimeout,
    /// A pending write made no progress for `--write-timeout` (a client that stopped reading).
    WriteTimeout,
    /// Closed at once: `--max-connections` were open already.
    MaxConnections,
    /// Closed by graceful shutdown (or cut at the shutdown timeout).
    Shutdown,
    /// A request that could not be parsed (answered 4xx first where HTTP allows), or an I/O
    /// error other than the client's close.
    Error,
    /// An injected socket fault (`fault=reset`, `close`, `hang`, `truncate`).
    Fault,
    /// The TLS handshake failed or took longer than `--header-timeout` (a cleartext request
    /// on a TLS port, an unknown client certificate, no common protocol).
    TlsHandshake,
}

impl CloseReason {
    pub const ALL: [CloseReason; 9] = [
        CloseReason::Client,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::WriteTimeout,
        CloseReason::MaxConnections,
        CloseReason::Shutdown,
        CloseReason::Error,
        CloseReason::Fault,
        CloseReason::TlsHandshake,
    ];

    pub fn label(self) -> &'static str {
        match self {
            CloseReason::Client => "client",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::IdleTimeout => "idle_timeout",
            CloseReason::WriteTimeout => "write_timeout",
            CloseReason::MaxConnections => "max_connections",
            CloseReason::Shutdown => "shutdown",
            CloseReason::Error => "error",
            CloseReason::Fault => "fault",
            CloseReason::TlsHandshake => "tls_handshake",
        }
    }

    /// The reason an I/O error on the connection's socket gives: the client's close or reset,
    /// or any other error.
    pub fn of_io(err: &std::io::Error) -> CloseReason {
        use std::io::ErrorKind;
        match err.kind() {
            ErrorKind::ConnectionReset
            | ErrorKind::ConnectionAborted
            | ErrorKind::BrokenPipe
            | ErrorKind::UnexpectedEof => CloseReason::Client,
            ErrorKind::TimedOut => CloseReason::WriteTimeout,
            _ => CloseReason::Error,
        }
    }

    /// Whether the connection ended in good order (the client's close, a timeout, shutdown),
    /// so that a TLS session may say goodbye (`close_notify`) before the socket closes.
    pub fn is_clean(self) -> bool {
        matches!(
            self,
            CloseReason::Client
                | CloseReason::HeaderTimeout
                | CloseReason::IdleTimeout
                | CloseReason::Shutdown
        )
    }
}

/// Upper bounds of the duration histogram's buckets, in seconds: 50 µs to 60 s.
pub const BUCKETS: [f64; 19] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Distinct statuses counted per (route, method); a 33rd would be counted as `other`. Real
/// traffic sees a handful (200, 400, 404, 405, 503 and the injected ones). A small table
/// instead of one counter per possible code keeps idle memory low.
pub(super) const STATUSES: usize = 32;
pub(super) const ROUTES: usize = Route::ALL.len();
pub(super) const METHODS: usize = MethodLabel::ALL.len();

/// Bumps a counter only this worker writes: no locked read-modify-write needed.
pub(super) fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// One (route, method) row of request counters: statuses in the order first seen.
#[derive(Debug, Default)]
pub(super) struct StatusRow {
    /// 0 marks a free slot.
    pub(super) codes: [AtomicU16; STATUSES],
    pub(super) counts: [AtomicU64; STATUSES],
    /// Requests whose status found no free slot.
    pub(super) other: AtomicU64,
}

impl StatusRow {
    /// Only the owning worker calls this, so claiming a free slot needs no compare-and-swap.
    fn bump(&self, status: u16, by: u64) {
        for (code, count) in self.codes.iter().zip(&self.counts) {
            match code.load(Ordering::Relaxed) {
                c if c == status => return bump(count, by),
                0 => {
                    // Publish the count before the code, so a scrape never sees the code
                    // with another status's count.
                    bump(count, by);
                    code.store(status, Ordering::Release);
                    return;
                }
                _ => {}
            }
        }
        bump(&self.other, by);
    }
}

/// One worker's metrics. Aligned so two workers' hot counters never share a cache line.
#[derive(Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// [route][method].
    pub(super) requests: Vec<StatusRow>,
    /// [route][bucket], the last bucket being +Inf.
    pub(super) buckets: Vec<AtomicU64>,
    /// [route]: total nanoseconds.
    pub(super) duration_sum: Vec<AtomicU64>,
    pub(super) accepted: AtomicU64,
    /// Connections the fast path handed to hyper.
    pub(super) handed_over: AtomicU64,
    /// [reason].
    pub(super) closed: [AtomicU64; CloseReason::ALL.len()],
    pub(super) faults: [AtomicU64; 4],
    /// Gateway mode: [upstream][outcome][bucket], the last bucket being +Inf.
    pub(super) upstream_buckets: Vec<AtomicU64>,
    /// [upstream][outcome]: total nanoseconds.
    pub(super) upstream_sum: Vec<AtomicU64>,
    pub(super) upstream_errors: [AtomicU64; Outcome::ERROR_LABELS.len()],
    /// [upstream]: attempts made again (`--retries`).
    pub(super) upstream_retries: Vec<AtomicU64>,
    /// TLS handshakes: [result].
    pub(super) handshakes: [AtomicU64; Handshake::ALL.len()],
    /// Successful TLS handshakes' durations: [bucket], the last being +Inf; and their sum in
    /// nanoseconds.
    pub(super) handshake_buckets: [AtomicU64; BUCKETS.len() + 1],
    pub(super) handshake_sum: AtomicU64,
}

/// How a TLS handshake ended: the `result` label of `microservice2_tls_handshakes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handshake {
    /// A full handshake.
    Ok,
    /// A session resumed from a ticket or the session cache.
    Resumed,
    /// No session: a bad or missing client certificate, a cleartext request, a timeout.
    Failed,
}

impl Handshake {
    pub const ALL: [Handshake; 3] = [Handshake::Ok, Handshake::Resumed, Handshake::Failed];

    pub fn label(self) -> &'static str {
        match self {
            Handshake::Ok => "ok",
            Handshake::Resumed => "resumed",
            Handshake::Failed => "failed",
        }
    }
}

impl WorkerMetrics {
    /// Metrics for a worker calling `upstreams` upstreams (0 in serve mode).
    pub(super) fn new(upstreams: usize) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        WorkerMetrics {
            upstream_buckets: zeros(upstreams * OUTCOMES * (BUCKETS.len() + 1)),
            upstream_sum: zeros(upstreams * OUTCOMES),
            upstream_errors: Default::default(),
            upstream_retries: zeros(upstreams),
            requests: (0..ROUTES * METHODS)
                .map(|_| StatusRow::default())
                .collect(),
            buckets: zeros(ROUTES * (BUCKETS.len() + 1)),
            duration_sum: zeros(ROUTES),
            accepted: AtomicU64::new(0),
            handed_over: AtomicU64::new(0),
            closed: Default::default(),
            faults: Default::default(),
            handshakes: Default::default(),
            handshake_buckets: Default::default(),
            handshake_sum: AtomicU64::new(0),
        }
    }
}

impl WorkerMetrics {
    /// Records `count` requests answered with `status` after `elapsed` each.
    #[inline]
    pub fn request(
        &self,
        route: Route,
        method: MethodLabel,
        status: u16,
        elapsed: Duration,
        count: u64,
    ) {
        self.requests[route as usize * METHODS + method as usize].bump(status, count);
        bump(
            &self.buckets[route as usize * (BUCKETS.len() + 1) + bucket(elapsed)],
            count,
        );
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        bump(
            &self.duration_sum[route as usize],
            nanos.saturating_mul(count),
        );
    }

    pub fn connection_accepted(&self) {
        bump(&self.accepted, 1);
    }

    /// The fast path handed a connection to hyper (a request it does not answer came).
    pub fn handed_over(&self) {
        bump(&self.handed_over, 1);
    }

    pub fn connection_closed(&self, reason: CloseReason) {
        bump(&self.closed[reason as usize], 1);
    }

    /// A TLS handshake ended: how, and (when it made a session) how long it took.
    pub fn handshake(&self, result: Handshake, elapsed: Duration) {
        bump(&self.handshakes[result as usize], 1);
        if result != Handshake::Failed {
            bump(&self.handshake_buckets[bucket(elapsed)], 1);
            bump(
                &self.handshake_sum,
                u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            );
        }
    }

    pub fn fault(&self, fault: Fault) {
        let index = Fault::ALL
            .iter()
            .position(|f| *f == fault)
            .expect("Fault::ALL lists every fault");
        bump(&self.faults[index], 1);
    }
}

/// Gateway mode: each attempt counted under its upstream and outcome, and as an error of its
/// kind where it is one; each retry under its upstream.
impl Observer for WorkerMetrics {
    fn attempt(&self, upstream: usize, outcome: Outcome, elapsed: Duration) {
        let series = upstream * OUTCOMES + outcome.index();
        if let Some(sum) = self.upstream_sum.get(series) {
            bump(
                &self.upstream_buckets[series * (BUCKETS.len() + 1) + bucket(elapsed)],
                1,
            );
            bump(sum, u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX));
        }
        if let Some(kind) = outcome.error_index() {
            bump(&self.upstream_errors[kind], 1);
        }
    }

    fn retry(&self, upstream: usize) {
        if let Some(retries) = self.upstream_retries.get(upstream) {
            bump(retries, 1);
        }
    }
}

/// The bucket a duration falls in: the first whose bound holds it, else +Inf.
pub(super) fn bucket(elapsed: Duration) -> usize {
    let seconds = elapsed.as_secs_f64();
    BUCKETS
        .iter()
        .position(|&bound| seconds <= bound)
        .unwrap_or(BUCKETS.len())
}
