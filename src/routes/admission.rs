//! Admission: the state all workers share (requests in flight, readiness, open
//! connections, `fail-first`'s attempts), and whether a request may go on under
//! `--max-inflight`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::Routes;
use super::live::{Live, Profile};
use crate::behaviour::{Attempts, Controls};
use crate::config::Config;
use crate::ops::exposition::Registry;

/// State shared by all workers. The request path touches none of it but for requests on the
/// behaviour path (the in-flight count, and `fail-first`'s attempts for requests that use it);
/// each worker writes only its own metrics.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Requests in flight on the behaviour path, for `--max-inflight` and `linear(…)`.
    pub(super) inflight: Arc<AtomicUsize>,
    /// False from the moment shutdown begins: `/readyz` answers 503.
    pub(super) ready: Arc<AtomicBool>,
    /// Connections open on all workers, for `--max-connections` (touched per connection).
    pub(super) connections: Arc<AtomicUsize>,
    pub(super) metrics: Registry,
    /// The server-wide behaviour as it is now (read by workers only when it can change).
    pub(super) live: Arc<Live>,
    /// The attempts of each request id, for `fail-first` (touched only by requests with it).
    pub(super) attempts: Arc<Attempts>,
}

impl Shared {
    /// The shared state of `workers` workers with every default setting.
    pub fn new(workers: usize) -> Shared {
        Shared::for_config(&Config::default(), workers)
    }

    /// The shared state of `workers` workers serving `config`; a scenario starts now. In
    /// gateway mode metrics also count calls to each upstream (by URL); `fail-first`
    /// remembers as many request ids as the config says.
    pub fn for_config(config: &Config, workers: usize) -> Shared {
        let upstreams = config.gateway.as_ref().map_or_else(Vec::new, |gateway| {
            gateway.upstreams.iter().map(|u| u.url.clone()).collect()
        });
        let start = Profile {
            text: config.behaviour.clone().unwrap_or_default(),
            controls: config.profile.clone(),
        };
        let live = Live::new(
            start,
            config.scenario.clone(),
            config.profile_check(),
            std::time::Instant::now(),
        );
        let capacity = usize::try_from(config.attempt_keys).unwrap_or(usize::MAX);
        Shared {
            inflight: Arc::default(),
            ready: Arc::new(AtomicBool::new(true)),
            connections: Arc::default(),
            metrics: Registry::new(workers.max(1), upstreams),
            live: Arc::new(live),
            attempts: Arc::new(Attempts::new(capacity, config.attempt_ttl)),
        }
    }

    /// The server-wide behaviour as it is now.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live)
    }

    /// Counts a new connection in, unless `limit` are open already.
    pub fn admit_connection(&self, limit: usize) -> bool {
        if self.connections.fetch_add(1, Ordering::Relaxed) < limit {
            true
        } else {
            self.connections.fetch_sub(1, Ordering::Relaxed);
            false
        }
    }

    /// Counts a connection out.
    pub fn connection_ended(&self) {
        self.connections.fetch_sub(1, Ordering::Relaxed);
    }

    /// Every worker's metrics.
    pub fn metrics(&self) -> Registry {
        self.metrics.clone()
    }

    /// Shutdown has begun: readiness turns 503.
    pub fn set_draining(&self) {
        self.ready.store(false, Ordering::Relaxed);
    }
}

/// Whether a request may go on.
pub(super) enum Admission {
    /// Yes; counted in flight while the guard lives, when counting is needed.
    Admitted(Option<InflightGuard>),
    /// No: above `--max-inflight`.
    Shed,
}

/// Decrements the in-flight count when the request is done (or dropped).
#[derive(Debug)]
pub(super) struct InflightGuard {
    inflight: Arc<AtomicUsize>,
    /// The count including this request.
    count: usize,
}

impl InflightGuard {
    pub(super) fn new(inflight: &Arc<AtomicUsize>) -> InflightGuard {
        let count = inflight.fetch_add(1, Ordering::Relaxed) + 1;
        InflightGuard {
            inflight: Arc::clone(inflight),
            count,
        }
    }
}

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Routes {
    /// Counts the request in flight when anything needs the count (load shedding, a
    /// behaviour to act out, an upstream call: `always`); above `--max-inflight`, sheds it.
    pub(super) fn admit(&self, controls: &Controls, always: bool) -> Admission {
        if !always && self.max_inflight.is_none() && controls.is_empty() {
            return Admission::Admitted(None);
        }
        let guard = InflightGuard::new(&self.shared.inflight);
        match self.max_inflight {
            Some(max) if guard.count > max => Admission::Shed,
            _ => Admission::Admitted(Some(guard)),
        }
    }
}
