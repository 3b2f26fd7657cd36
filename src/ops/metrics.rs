//! Metrics: per-worker counters and histograms, each written only by its own worker (a load and
//! a store, no locked instruction, no cache line shared with another writer), merged when
//! `/metrics` is scraped into the Prometheus text exposition format 0.0.4.

use std::fmt::Write as _;
use std::sync::Arc;
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
}

impl Route {
    const ALL: [Route; 6] = [
        Route::Avatar,
        Route::Healthz,
        Route::Readyz,
        Route::Metrics,
        Route::NotFound,
        Route::Gateway,
    ];

    fn label(self) -> &'static str {
        match self {
            Route::Avatar => "avatar",
            Route::Healthz => "healthz",
            Route::Readyz => "readyz",
            Route::Metrics => "metrics",
            Route::NotFound => "not_found",
            Route::Gateway => "gateway",
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
    const ALL: [MethodLabel; 3] = [MethodLabel::Get, MethodLabel::Head, MethodLabel::Other];

    pub fn of(method: &hyper::Method) -> MethodLabel {
        match *method {
            hyper::Method::GET => MethodLabel::Get,
            hyper::Method::HEAD => MethodLabel::Head,
            _ => MethodLabel::Other,
        }
    }

    fn label(self) -> &'static str {
        match self {
            MethodLabel::Get => "GET",
            MethodLabel::Head => "HEAD",
            MethodLabel::Other => "other",
        }
    }
}

const OUTCOMES: usize = Outcome::LABELS.len();

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
}

impl CloseReason {
    pub const ALL: [CloseReason; 8] = [
        CloseReason::Client,
        CloseReason::HeaderTimeout,
        CloseReason::IdleTimeout,
        CloseReason::WriteTimeout,
        CloseReason::MaxConnections,
        CloseReason::Shutdown,
        CloseReason::Error,
        CloseReason::Fault,
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
}

/// Upper bounds of the duration histogram's buckets, in seconds: 50 µs to 60 s.
pub const BUCKETS: [f64; 19] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Distinct statuses counted per (route, method); a 33rd would be counted as `other`. Real
/// traffic sees a handful (200, 400, 404, 405, 503 and the injected ones). A small table
/// instead of one counter per possible code keeps idle memory low.
const STATUSES: usize = 32;
const ROUTES: usize = Route::ALL.len();
const METHODS: usize = MethodLabel::ALL.len();

/// Bumps a counter only this worker writes: no locked read-modify-write needed.
fn bump(counter: &AtomicU64, by: u64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(by),
        Ordering::Relaxed,
    );
}

/// One (route, method) row of request counters: statuses in the order first seen.
#[derive(Debug, Default)]
struct StatusRow {
    /// 0 marks a free slot.
    codes: [AtomicU16; STATUSES],
    counts: [AtomicU64; STATUSES],
    /// Requests whose status found no free slot.
    other: AtomicU64,
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
    requests: Vec<StatusRow>,
    /// [route][bucket], the last bucket being +Inf.
    buckets: Vec<AtomicU64>,
    /// [route]: total nanoseconds.
    duration_sum: Vec<AtomicU64>,
    accepted: AtomicU64,
    /// [reason].
    closed: [AtomicU64; CloseReason::ALL.len()],
    faults: [AtomicU64; 4],
    /// Gateway mode: [upstream][outcome][bucket], the last bucket being +Inf.
    upstream_buckets: Vec<AtomicU64>,
    /// [upstream][outcome]: total nanoseconds.
    upstream_sum: Vec<AtomicU64>,
    upstream_errors: [AtomicU64; Outcome::ERROR_LABELS.len()],
}

impl WorkerMetrics {
    /// Metrics for a worker calling `upstreams` upstreams (0 in serve mode).
    fn new(upstreams: usize) -> Self {
        let zeros = |n: usize| (0..n).map(|_| AtomicU64::new(0)).collect();
        WorkerMetrics {
            upstream_buckets: zeros(upstreams * OUTCOMES * (BUCKETS.len() + 1)),
            upstream_sum: zeros(upstreams * OUTCOMES),
            upstream_errors: Default::default(),
            requests: (0..ROUTES * METHODS)
                .map(|_| StatusRow::default())
                .collect(),
            buckets: zeros(ROUTES * (BUCKETS.len() + 1)),
            duration_sum: zeros(ROUTES),
            accepted: AtomicU64::new(0),
            closed: Default::default(),
            faults: Default::default(),
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

    pub fn connection_closed(&self, reason: CloseReason) {
        bump(&self.closed[reason as usize], 1);
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
/// kind where it is one.
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
}

/// Every worker's metrics, for merging at scrape time.
#[derive(Debug, Clone)]
pub struct Registry {
    workers: Arc<Vec<Arc<WorkerMetrics>>>,
    /// Gateway mode: the upstreams' URLs, the `upstream` label (empty in serve mode).
    upstreams: Arc<[String]>,
}

impl Registry {
    pub fn new(workers: usize, upstreams: Vec<String>) -> Registry {
        Registry {
            workers: Arc::new(
                (0..workers)
                    .map(|_| Arc::new(WorkerMetrics::new(upstreams.len())))
                    .collect(),
            ),
            upstreams: upstreams.into(),
        }
    }

    /// The metrics worker `index` writes.
    pub fn worker(&self, index: usize) -> Arc<WorkerMetrics> {
        Arc::clone(&self.workers[index % self.workers.len()])
    }

    fn sum(&self, read: impl Fn(&WorkerMetrics) -> u64) -> u64 {
        self.workers.iter().map(|w| read(w)).sum()
    }

    /// The exposition text. `inflight` is the current number of requests in flight.
    pub fn render(&self, inflight: usize) -> String {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut out = String::with_capacity(8192);
        let _ = writeln!(
            out,
            "# HELP microservice2_requests_total Requests answered, by route, method and status.\n\
             # TYPE microservice2_requests_total counter"
        );
        for route in Route::ALL {
            for method in MethodLabel::ALL {
                let row = route as usize * METHODS + method as usize;
                // Workers see statuses in different orders: add up by code.
                let mut totals: Vec<(String, u64)> = Vec::new();
                for worker in self.workers.iter() {
                    let row = &worker.requests[row];
                    let slots = row.codes.iter().zip(&row.counts);
                    let seen = slots.filter_map(|(code, count)| {
                        let code = code.load(Ordering::Acquire);
                        (code != 0).then(|| (code.to_string(), load(count)))
                    });
                    for (code, count) in seen.chain([("other".to_owned(), load(&row.other))]) {
                        match totals.iter_mut().find(|(c, _)| *c == code) {
                            Some((_, total)) => *total += count,
                            None => totals.push((code, count)),
                        }
                    }
                }
                totals.sort();
                for (status, value) in totals.into_iter().filter(|(_, v)| *v > 0) {
                    let _ = writeln!(
                        out,
                        "microservice2_requests_total{{route=\"{}\",method=\"{}\",status=\"{status}\"}} {value}",
                        route.label(),
                        method.label(),
                    );
                }
            }
        }
        let _ = writeln!(
            out,
            "# HELP microservice2_request_duration_seconds Time from a request's head to its answer.\n\
             # TYPE microservice2_request_duration_seconds histogram"
        );
        for route in Route::ALL {
            let base = route as usize * (BUCKETS.len() + 1);
            write_histogram(
                &mut out,
                "microservice2_request_duration_seconds",
                &format!("route=\"{}\"", route.label()),
                |bucket| self.sum(|w| load(&w.buckets[base + bucket])),
                self.sum(|w| load(&w.duration_sum[route as usize])),
            );
        }
        let accepted = self.sum(|w| load(&w.accepted));
        let closed_by = |reason: CloseReason| self.sum(|w| load(&w.closed[reason as usize]));
        let closed: u64 = CloseReason::ALL.into_iter().map(closed_by).sum();
        let _ = writeln!(
            out,
            "# HELP microservice2_inflight_requests Requests being answered now.\n\
             # TYPE microservice2_inflight_requests gauge\n\
             microservice2_inflight_requests {inflight}\n\
             # HELP microservice2_connections_accepted_total Connections accepted.\n\
             # TYPE microservice2_connections_accepted_total counter\n\
             microservice2_connections_accepted_total {accepted}\n\
             # HELP microservice2_connections_open Connections open now.\n\
             # TYPE microservice2_connections_open gauge\n\
             microservice2_connections_open {}\n\
             # HELP microservice2_connections_closed_total Connections closed, by why they ended.\n\
             # TYPE microservice2_connections_closed_total counter",
            accepted.saturating_sub(closed)
        );
        for reason in CloseReason::ALL {
            let _ = writeln!(
                out,
                "microservice2_connections_closed_total{{reason=\"{}\"}} {}",
                reason.label(),
                closed_by(reason)
            );
        }
        let _ = writeln!(
            out,
            "# HELP microservice2_faults_injected_total Socket faults injected, by kind.\n\
             # TYPE microservice2_faults_injected_total counter"
        );
        for (index, fault) in Fault::ALL.iter().enumerate() {
            let value = self.sum(|w| load(&w.faults[index]));
            let _ = writeln!(
                out,
                "microservice2_faults_injected_total{{kind=\"{}\"}} {value}",
                fault.name()
            );
        }
        if !self.upstreams.is_empty() {
            self.render_upstreams(&mut out);
        }
        let _ = writeln!(
            out,
            "# HELP microservice2_build_info The running build.\n\
             # TYPE microservice2_build_info gauge\n\
             microservice2_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        process::render(&mut out);
        out
    }

    /// Gateway mode's metrics: upstream call durations and errors.
    fn render_upstreams(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP microservice2_upstream_request_duration_seconds Calls to upstreams (each attempt), by upstream and outcome.\n\
             # TYPE microservice2_upstream_request_duration_seconds histogram"
        );
        for (index, url) in self.upstreams.iter().enumerate() {
            for (outcome, label) in Outcome::LABELS.iter().enumerate() {
                let series = index * OUTCOMES + outcome;
                let base = series * (BUCKETS.len() + 1);
                let count = |bucket| self.sum(|w| load(&w.upstream_buckets[base + bucket]));
                // Outcomes never seen are left out: eight series per upstream would be noise.
                if (0..=BUCKETS.len()).all(|bucket| count(bucket) == 0) {
                    continue;
                }
                write_histogram(
                    out,
                    "microservice2_upstream_request_duration_seconds",
                    &format!("upstream=\"{}\",outcome=\"{}\"", escape(url), label),
                    count,
                    self.sum(|w| load(&w.upstream_sum[series])),
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP microservice2_upstream_errors_total Upstream calls that gave no usable answer, by kind.\n\
             # TYPE microservice2_upstream_errors_total counter"
        );
        for (kind, label) in Outcome::ERROR_LABELS.iter().enumerate() {
            let value = self.sum(|w| load(&w.upstream_errors[kind]));
            let _ = writeln!(
                out,
                "microservice2_upstream_errors_total{{kind=\"{label}\"}} {value}"
            );
        }
    }
}

/// The bucket a duration falls in: the first whose bound holds it, else +Inf.
fn bucket(elapsed: Duration) -> usize {
    let seconds = elapsed.as_secs_f64();
    BUCKETS
        .iter()
        .position(|&bound| seconds <= bound)
        .unwrap_or(BUCKETS.len())
}

/// Writes one histogram series: cumulative buckets, sum and count. `count(i)` is the number
/// of observations in bucket `i` alone (the last, `BUCKETS.len()`, being +Inf).
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    count: impl Fn(usize) -> u64,
    sum_nanos: u64,
) {
    let mut cumulative = 0;
    for (index, bound) in BUCKETS.iter().enumerate() {
        cumulative += count(index);
        let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{bound}\"}} {cumulative}");
    }
    cumulative += count(BUCKETS.len());
    let sum = sum_nanos as f64 / 1e9;
    let _ = writeln!(
        out,
        "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}\n\
         {name}_sum{{{labels}}} {sum}\n\
         {name}_count{{{labels}}} {cumulative}"
    );
}

/// A label value with `\\`, `"` and newlines escaped, as the exposition format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The process collector's metrics, read from /proc/self.
mod process {
    use std::fmt::Write as _;

    fn clock_ticks() -> f64 {
        // The kernel's USER_HZ is 100 on every Linux architecture this service targets.
        100.0
    }

    pub fn render(out: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        // Fields after the parenthesised command name; utime is field 14, stime 15,
        // starttime 22 (1-based in proc(5)), so 11, 12 and 19 here.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(11), field(12)) {
            let _ = writeln!(
                out,
                "# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.\n\
                 # TYPE process_cpu_seconds_total counter\n\
                 process_cpu_seconds_total {}",
                (utime + stime) / clock_ticks()
            );
        }
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|text| {
            text.lines()
                .find_map(|line| line.strip_prefix("btime "))
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if let (Some(start), Some(boot)) = (field(19), boot_time) {
            let _ = writeln!(
                out,
                "# HELP process_start_time_seconds Start time of the process since unix epoch in seconds.\n\
                 # TYPE process_start_time_seconds gauge\n\
                 process_start_time_seconds {}",
                boot + start / clock_ticks()
            );
        }
        let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
        if let Some(pages) = statm
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
        {
            let _ = writeln!(
                out,
                "# HELP process_resident_memory_bytes Resident memory size in bytes.\n\
                 # TYPE process_resident_memory_bytes gauge\n\
                 process_resident_memory_bytes {}",
                pages * 4096
            );
        }
        if let Ok(entries) = std::fs::read_dir("/proc/self/fd") {
            let _ = writeln!(
                out,
                "# HELP process_open_fds Number of open file descriptors.\n\
                 # TYPE process_open_fds gauge\n\
                 process_open_fds {}",
                entries.count()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_are_counted_by_code_and_overflow_into_other() {
        let registry = Registry::new(2, Vec::new());
        let (a, b) = (registry.worker(0), registry.worker(1));
        let micro = Duration::from_micros(10);
        a.request(Route::Avatar, MethodLabel::Get, 200, micro, 3);
        b.request(Route::Avatar, MethodLabel::Get, 503, micro, 1);
        b.request(Route::Avatar, MethodLabel::Get, 200, micro, 2);
        for code in 400..400 + STATUSES as u16 + 2 {
            a.request(Route::NotFound, MethodLabel::Other, code, micro, 1);
        }
        let text = registry.render(0);
        assert!(text.contains(
            "microservice2_requests_total{route=\"avatar\",method=\"GET\",status=\"200\"} 5\n"
        ));
        assert!(text.contains(
            "microservice2_requests_total{route=\"avatar\",method=\"GET\",status=\"503\"} 1\n"
        ));
        assert!(text.contains(
            "microservice2_requests_total{route=\"not_found\",method=\"other\",status=\"other\"} 2\n"
        ));
        assert!(text.contains(
            "microservice2_request_duration_seconds_bucket{route=\"avatar\",le=\"0.00005\"} 6\n"
        ));
        assert!(
            text.contains("microservice2_request_duration_seconds_count{route=\"avatar\"} 6\n")
        );
    }

    #[test]
    fn durations_land_in_the_first_bucket_that_holds_them() {
        let registry = Registry::new(1, Vec::new());
        let worker = registry.worker(0);
        worker.request(
            Route::Healthz,
            MethodLabel::Get,
            200,
            Duration::from_millis(3),
            1,
        );
        worker.request(
            Route::Healthz,
            MethodLabel::Get,
            200,
            Duration::from_secs(61),
            1,
        );
        let text = registry.render(0);
        let bucket = |le: &str| {
            let key = format!(
                "microservice2_request_duration_seconds_bucket{{route=\"healthz\",le=\"{le}\"}} "
            );
            text.lines()
                .find_map(|line| line.strip_prefix(key.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le}"))
                .to_owned()
        };
        assert_eq!(bucket("0.0025"), "0");
        assert_eq!(bucket("0.005"), "1");
        assert_eq!(bucket("60"), "1");
        assert_eq!(bucket("+Inf"), "2");
    }
}
