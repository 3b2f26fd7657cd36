//! The Prometheus text exposition (format 0.0.4) of every worker's metrics, merged at
//! scrape: the only place that adds the workers' counters up.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::metrics::{
    BUCKETS, CloseReason, Handshake, METHODS, MethodLabel, OUTCOMES, Route, WorkerMetrics,
};
use super::process;
use crate::behaviour::Fault;
use crate::gateway::error::Outcome;

/// Every worker's metrics, for merging at scrape time.
#[derive(Debug, Clone)]
pub struct Registry {
    workers: Arc<Vec<Arc<WorkerMetrics>>>,
    /// Gateway mode: the upstreams' URLs, the `upstream` label (empty in serve mode).
    upstreams: Arc<[String]>,
    /// Certificate reloads: [ok, failed]. Written by the server's reload task, not a worker.
    reloads: Arc<[AtomicU64; 2]>,
    /// Changes of the server-wide behaviour: [control, scenario].
    changes: Arc<[AtomicU64; 2]>,
    /// The scenario's phase names and the one that applies now, when a scenario is loaded.
    scenario: Arc<Mutex<Option<Phases>>>,
}

/// What changed the server-wide behaviour: the `source` label of
/// `microservice2_behaviour_changes_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeSource {
    /// The control API (`PUT`/`DELETE /admin/behaviour`, a scenario replaced or restarted).
    Control,
    /// A scenario moving from one phase to the next.
    Scenario,
}

/// A loaded scenario's phases, for `microservice2_scenario_phase`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Phases {
    pub names: Vec<String>,
    /// The phase that applies now; `None` before the scenario's start and after its end.
    pub current: Option<usize>,
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
            reloads: Arc::default(),
            changes: Arc::default(),
            scenario: Arc::default(),
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
             # HELP microservice2_fast_path_handovers_total Connections the fast path handed to hyper, at the first request it does not answer.\n\
             # TYPE microservice2_fast_path_handovers_total counter\n\
             microservice2_fast_path_handovers_total {}\n\
             # HELP microservice2_connections_open Connections open now.\n\
             # TYPE microservice2_connections_open gauge\n\
             microservice2_connections_open {}\n\
             # HELP microservice2_connections_closed_total Connections closed, by why they ended.\n\
             # TYPE microservice2_connections_closed_total counter",
            self.sum(|w| load(&w.handed_over)),
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
        self.render_tls(&mut out);
        self.render_behaviour(&mut out);
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

    /// TLS handshakes by result, the successful ones' durations, and certificate reloads
    /// (all zero when the server serves cleartext).
    fn render_tls(&self, out: &mut String) {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "# HELP microservice2_tls_handshakes_total TLS handshakes, by result: ok (full), resumed, failed.\n\
             # TYPE microservice2_tls_handshakes_total counter"
        );
        for result in Handshake::ALL {
            let value = self.sum(|w| load(&w.handshakes[result as usize]));
            let _ = writeln!(
                out,
                "microservice2_tls_handshakes_total{{result=\"{}\"}} {value}",
                result.label()
            );
        }
        let _ = writeln!(
            out,
            "# HELP microservice2_tls_handshake_duration_seconds Time from a connection's first byte to its TLS session, for handshakes that made one.\n\
             # TYPE microservice2_tls_handshake_duration_seconds histogram"
        );
        write_histogram(
            out,
            "microservice2_tls_handshake_duration_seconds",
            "",
            |bucket| self.sum(|w| load(&w.handshake_buckets[bucket])),
            self.sum(|w| load(&w.handshake_sum)),
        );
        let _ = writeln!(
            out,
            "# HELP microservice2_tls_reloads_total Certificate reloads (SIGHUP or changed files), by result.\n\
             # TYPE microservice2_tls_reloads_total counter\n\
             microservice2_tls_reloads_total{{result=\"ok\"}} {}\n\
             microservice2_tls_reloads_total{{result=\"failed\"}} {}",
            load(&self.reloads[0]),
            load(&self.reloads[1]),
        );
    }

    /// Behaviour changes by source, and the scenario's phases (only while one is loaded).
    fn render_behaviour(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP microservice2_behaviour_changes_total Changes of the server-wide behaviour, by what changed it.\n\
             # TYPE microservice2_behaviour_changes_total counter\n\
             microservice2_behaviour_changes_total{{source=\"control\"}} {}\n\
             microservice2_behaviour_changes_total{{source=\"scenario\"}} {}",
            self.changes[0].load(Ordering::Relaxed),
            self.changes[1].load(Ordering::Relaxed),
        );
        let scenario = self
            .scenario
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(phases) = scenario.as_ref() else {
            return;
        };
        let _ = writeln!(
            out,
            "# HELP microservice2_scenario_phase 1 for the scenario's phase that applies now, 0 for the others.\n\
             # TYPE microservice2_scenario_phase gauge"
        );
        for (index, name) in phases.names.iter().enumerate() {
            let value = u8::from(phases.current == Some(index));
            let _ = writeln!(
                out,
                "microservice2_scenario_phase{{name=\"{}\"}} {value}",
                escape(name)
            );
        }
    }

    /// The server-wide behaviour changed.
    pub fn behaviour_changed(&self, source: ChangeSource) {
        let index = usize::from(source == ChangeSource::Scenario);
        self.changes[index].fetch_add(1, Ordering::Relaxed);
    }

    /// The scenario loaded now, and its phase that applies (`None`: no scenario).
    pub fn set_scenario(&self, phases: Option<Phases>) {
        *self
            .scenario
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = phases;
    }

    /// A certificate reload happened: it took, or the old certificate stays.
    pub fn tls_reloaded(&self, ok: bool) {
        self.reloads[usize::from(!ok)].fetch_add(1, Ordering::Relaxed);
    }

    /// Gateway mode's metrics: upstream call durations, retries and errors.
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
            "# HELP microservice2_upstream_retries_total Attempts made again after a failure worth retrying (--retries), by upstream.\n\
             # TYPE microservice2_upstream_retries_total counter"
        );
        for (index, url) in self.upstreams.iter().enumerate() {
            let value = self.sum(|w| load(&w.upstream_retries[index]));
            let _ = writeln!(
                out,
                "microservice2_upstream_retries_total{{upstream=\"{}\"}} {value}",
                escape(url)
            );
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

/// Writes one histogram series: cumulative buckets, sum and count. `count(i)` is the number
/// of observations in bucket `i` alone (the last, `BUCKETS.len()`, being +Inf).
fn write_histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    count: impl Fn(usize) -> u64,
    sum_nanos: u64,
) {
    // A series without labels of its own: `le` alone, and no braces on the sum and count.
    let (before_le, own) = if labels.is_empty() {
        (String::new(), String::new())
    } else {
        (format!("{labels},"), format!("{{{labels}}}"))
    };
    let mut cumulative = 0;
    for (index, bound) in BUCKETS.iter().enumerate() {
        cumulative += count(index);
        let _ = writeln!(
            out,
            "{name}_bucket{{{before_le}le=\"{bound}\"}} {cumulative}"
        );
    }
    cumulative += count(BUCKETS.len());
    let sum = sum_nanos as f64 / 1e9;
    let _ = writeln!(
        out,
        "{name}_bucket{{{before_le}le=\"+Inf\"}} {cumulative}\n\
         {name}_sum{own} {sum}\n\
         {name}_count{own} {cumulative}"
    );
}

/// A label value with `\\`, `"` and newlines escaped, as the exposition format wants.
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ops::metrics::STATUSES;

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
    fn retries_are_counted_per_upstream_over_every_worker() {
        use crate::gateway::Observer;
        let registry = Registry::new(2, vec!["http://a/".into(), "http://b/".into()]);
        registry.worker(0).retry(1);
        registry.worker(1).retry(1);
        registry.worker(1).retry(0);
        let text = registry.render(0);
        assert!(text.contains("microservice2_upstream_retries_total{upstream=\"http://a/\"} 1\n"));
        assert!(text.contains("microservice2_upstream_retries_total{upstream=\"http://b/\"} 2\n"));
        let serving = Registry::new(1, Vec::new()).render(0);
        assert!(!serving.contains("upstream_retries"), "gateway mode only");
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
