//! The URL space and dispatch: which (method, path) gets which answer. The fast path asks
//! here which requests it may answer ([`Routes::classify`]); every other request comes
//! through [`Routes::call`], which answers at once when it can and returns a future only for
//! requests with behaviour to act out (`act.rs`) or an upstream to call (`gateway.rs`).

mod act;
mod admission;
mod classify;
mod control;
mod gateway;
pub mod live;
mod reply;
mod shaped;

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{ALLOW, HeaderName, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};

use crate::avatar::AvatarCache;
use crate::behaviour::body::Body;
use crate::behaviour::{Controls, Limits, Rng};
use crate::config::{Config, HEALTHZ, METRICS, READYZ};
use crate::gateway::Gateway;
use crate::ops::metrics::{MethodLabel, Route, WorkerMetrics};
use admission::Admission;
pub use admission::Shared;
pub use classify::{Connection, Head, Shape, Span, classify};
pub use gateway::GatewayWire;
pub use reply::{FaultSignal, Recorded, Reply};
use reply::{overloaded, plain, with_headers};
pub use shaped::{Answer, Decision, Held};

pub(crate) const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const GET_HEAD: HeaderValue = HeaderValue::from_static("GET, HEAD");
pub(crate) const ONE_SECOND: HeaderValue = HeaderValue::from_static("1");

/// The seed's 404 body.
const NOT_FOUND_BODY: &[u8] = b"Not found";
const METHOD_NOT_ALLOWED_BODY: &[u8] = br#"{"error":"method not allowed","allow":["GET","HEAD"]}"#;
pub(crate) const OVERLOADED_BODY: &[u8] = br#"{"error":"overloaded","status":503}"#;
const HEALTHY_BODY: &[u8] = br#"{"status":"ok"}"#;
const READY_BODY: &[u8] = br#"{"status":"ready"}"#;
const DRAINING_BODY: &[u8] = br#"{"status":"draining"}"#;
const PROMETHEUS: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");

/// One worker's routing table and response state. Not shared between threads: each worker
/// owns one, so caches and the random generator are used without locks.
#[derive(Debug)]
pub struct Routes {
    path: String,
    avatars: RefCell<AvatarCache>,
    /// The server-wide profile, when it cannot change (no `--control`, no `--scenario`).
    profile: Controls,
    /// A request of the plain shape may get the plain answer without planning: no static
    /// profile (a changing one is asked each batch) and no load shedding.
    plain_shape: bool,
    /// The static profile is empty.
    profile_empty: bool,
    /// The last behaviour header the fast path parsed, and its controls.
    header_controls: RefCell<shaped::HeaderControls>,
    /// Set when the server-wide profile can change: this worker's copy of the one that
    /// applies now.
    live: Option<RefCell<live::Cached>>,
    /// `--control` (with its token): `/admin/*` may change the server-wide behaviour.
    control: Option<control::Control>,
    allow_request_behaviour: bool,
    limits: Limits,
    max_inflight: Option<usize>,
    max_hang: Duration,
    /// `--attempt-header`: the request id `fail-first` counts attempts under, which the
    /// gateway passes on to its upstreams.
    attempt_header: HeaderName,
    shared: Shared,
    /// `--server-timing`: the main path's answers carry `server-timing` and `x-m2-injected`.
    pub(super) server_timing: bool,
    /// This worker's metrics; recorded unless `--no-metrics`.
    metrics: Arc<WorkerMetrics>,
    record: bool,
    /// `/healthz`, `/readyz` and `/metrics` live on the admin listener, not here.
    admin_port: bool,
    /// `--access-log`: the fraction of requests to log.
    access_log: Option<f64>,
    rng: RefCell<Rng>,
    /// `count=N` bodies as rendered (the seed's first `createdAt`), newest last.
    lists: RefCell<Vec<(u32, Bytes)>>,
    /// Gateway mode: the path calls the upstream instead of answering avatars.
    gateway: Option<Gateway>,
    location: HeaderValue,
    date_header: crate::time::DateHeader,
}

impl Routes {
    /// The routes of worker number `worker`.
    pub fn new(config: &Config, shared: &Shared, worker: usize) -> Routes {
        let location = HeaderValue::from_str(&config.path)
            .expect("config validation admits only visible ASCII paths");
        let salt = (worker as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut rng = match config.seed {
            Some(seed) => Rng::new(seed ^ salt),
            None => Rng::from_entropy(salt),
        };
        let metrics = shared.metrics.worker(worker);
        let gateway = config.gateway.as_ref().map(|gateway| {
            let observer = (!config.no_metrics)
                .then(|| Arc::clone(&metrics) as Arc<dyn crate::gateway::Observer>);
            Gateway::new(gateway, observer, Rng::new(rng.next_u64()))
        });
        Routes {
            path: config.path.clone(),
            avatars: RefCell::new(AvatarCache::new(config.date_header, location.clone())),
            profile: config.profile.clone(),
            plain_shape: config.max_inflight.is_none()
                && (config.profile.is_empty() || config.behaviour_changes()),
            profile_empty: config.profile.is_empty(),
            header_controls: RefCell::default(),
            live: config
                .behaviour_changes()
                .then(|| live::Cached::new(&shared.live, Instant::now())),
            control: control::Control::of(config),
            allow_request_behaviour: config.allow_request_behaviour,
            limits: config.limits(),
            max_inflight: config.max_inflight.map(usize::from),
            max_hang: config.max_hang,
            attempt_header: config.attempt_header.clone(),
            server_timing: config.server_timing,
            shared: shared.clone(),
            metrics,
            record: !config.no_metrics,
            admin_port: config.admin_port.is_some(),
            access_log: config.access_log.then_some(config.access_log_sample),
            rng: RefCell::new(rng),
            lists: RefCell::new(Vec::new()),
            gateway,
            location,
            date_header: config.date_header,
        }
    }

    /// The main path: the avatars, or the upstream call in gateway mode.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Whether plain requests may take the fast path now (`now` reads the clock): the
    /// server-wide profile is empty (it always is when it cannot change, or the fast path
    /// would be off).
    #[inline]
    pub fn fast_path_open(&self, now: impl FnOnce() -> Instant) -> bool {
        match &self.live {
            None => true,
            Some(cached) => cached.borrow_mut().plain_at(&self.shared.live, now()),
        }
    }

    /// The server-wide profile that applies now.
    fn profile_now(&self) -> Controls {
        match &self.live {
            None => self.profile.clone(),
            Some(cached) => {
                let mut cached = cached.borrow_mut();
                let current = cached.at(&self.shared.live, Instant::now());
                current.profile.controls.clone()
            }
        }
    }

    /// Whether the request at the front of `buf` is one the fast path may answer.
    #[inline]
    pub fn classify(&self, buf: &[u8]) -> Head {
        classify(buf, &self.path)
    }

    /// [`Routes::classify`] for a connection's first read at accept.
    pub fn classify_first(&self, buf: &[u8]) -> Head {
        classify::classify_first(buf, &self.path)
    }

    /// Gateway mode's [`Routes::classify`]: a request carrying the attempt header is hyper's,
    /// which passes it on to the upstream.
    #[inline]
    pub fn classify_call(&self, buf: &[u8]) -> Head {
        classify::classify_call(buf, &self.path, self.attempt_header.as_str())
    }

    /// `--max-hang`: how long `fault=hang` holds a request before closing.
    pub fn max_hang(&self) -> Duration {
        self.max_hang
    }

    /// The state all workers share.
    pub fn shared(&self) -> &Shared {
        &self.shared
    }

    /// This worker's metrics.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.metrics
    }

    /// Records `count` answered requests, unless metrics are off.
    pub fn record(
        &self,
        route: Route,
        method: MethodLabel,
        status: u16,
        elapsed: Duration,
        count: u64,
    ) {
        if self.record && count > 0 {
            self.metrics.request(route, method, status, elapsed, count);
        }
    }

    /// Whether requests are access-logged at all.
    pub fn access_logging(&self) -> bool {
        self.access_log.is_some()
    }

    /// Writes one access-log line, when this request is in the sample.
    pub fn access(&self, method: &str, path: &str, status: u16, elapsed: Duration, bytes: u64) {
        let Some(ratio) = self.access_log else {
            return;
        };
        if ratio < 1.0 && self.rng.borrow_mut().next_f64() >= ratio {
            return;
        }
        tracing::info!(
            target: "access",
            method,
            path,
            status,
            duration_us = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX),
            bytes,
            "request"
        );
    }

    /// The route a request falls under, on a main (`admin == false`) or admin listener.
    fn route(&self, method: &Method, path: &str, admin: bool) -> Route {
        if (admin || !self.admin_port) && self.is_control(method, path) {
            return Route::Control;
        }
        if admin || !self.admin_port {
            match path {
                HEALTHZ => return Route::Healthz,
                READYZ => return Route::Readyz,
                METRICS if self.record => return Route::Metrics,
                _ => {}
            }
        }
        if !admin && path == self.path {
            if self.gateway.is_some() {
                Route::Gateway
            } else {
                Route::Avatar
            }
        } else {
            Route::NotFound
        }
    }

    /// Answers one request from `peer` and records it when it is answered.
    pub fn call<B>(
        self: &Rc<Self>,
        request: Request<B>,
        faults: &Rc<FaultSignal>,
        admin: bool,
        peer: Option<SocketAddr>,
    ) -> Recorded
    where
        B: hyper::body::Body + 'static,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let start = Instant::now();
        let route = self.route(request.method(), request.uri().path(), admin);
        let access = self
            .access_logging()
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        let method = MethodLabel::of(request.method());
        let reply = if route == Route::Control {
            self.control(request, peer)
        } else {
            self.respond(&request, route, faults)
        };
        Recorded {
            reply,
            routes: Rc::clone(self),
            route,
            method,
            start,
            access,
        }
    }

    /// The avatar response at the monotonic instant `now` as wire bytes: the whole of it, or
    /// only the status line and headers for HEAD. Shares the cached buffer: no copy.
    #[inline]
    pub fn avatar_bytes(&self, head_only: bool, now: std::time::Instant) -> Bytes {
        let mut avatars = self.avatars.borrow_mut();
        let snapshot = avatars.at(now);
        if head_only {
            snapshot.head()
        } else {
            snapshot.wire.clone()
        }
    }

    /// The current avatar body and headers (without content-length).
    fn avatar_parts(&self) -> (Bytes, HeaderMap) {
        let mut avatars = self.avatars.borrow_mut();
        let snapshot = avatars.at(std::time::Instant::now());
        (snapshot.body.clone(), snapshot.headers().clone())
    }

    /// Answers one request on `route`; `faults` reaches the connection for socket faults.
    fn respond<B>(
        self: &Rc<Self>,
        request: &Request<B>,
        route: Route,
        faults: &Rc<FaultSignal>,
    ) -> Reply {
        #[cfg(feature = "test-panic-route")]
        if request.uri().path() == "/__panic" {
            panic!("test-panic-route: a request handler panicking on purpose");
        }
        #[cfg(feature = "test-clock")]
        if request.uri().path() == "/__clock" {
            return Reply::now(shift_clock(request.uri().query()));
        }
        if route == Route::NotFound {
            return Reply::now(plain(StatusCode::NOT_FOUND, TEXT, NOT_FOUND_BODY));
        }
        if !matches!(*request.method(), Method::GET | Method::HEAD) {
            let mut response = plain(
                StatusCode::METHOD_NOT_ALLOWED,
                JSON,
                METHOD_NOT_ALLOWED_BODY,
            );
            response.headers_mut().insert(ALLOW, GET_HEAD);
            return Reply::now(response);
        }
        match route {
            Route::Healthz => return Reply::now(plain(StatusCode::OK, JSON, HEALTHY_BODY)),
            Route::Readyz if self.shared.ready.load(Ordering::Relaxed) => {
                return Reply::now(plain(StatusCode::OK, JSON, READY_BODY));
            }
            Route::Readyz => {
                return Reply::now(plain(StatusCode::SERVICE_UNAVAILABLE, JSON, DRAINING_BODY));
            }
            Route::Metrics => {
                let inflight = self.shared.inflight.load(Ordering::Relaxed);
                let text = self.shared.metrics.render(inflight);
                return Reply::now(plain(StatusCode::OK, PROMETHEUS, text));
            }
            Route::Gateway => return self.forward(request, faults),
            Route::Avatar | Route::NotFound | Route::Control => {}
        }
        let controls = match self.controls(request) {
            Ok(controls) => controls,
            Err(err) => return Reply::now(plain(StatusCode::BAD_REQUEST, JSON, err.to_json())),
        };
        let guard = match self.admit(&controls, false) {
            Admission::Admitted(guard) => guard,
            Admission::Shed => return Reply::now(overloaded()),
        };
        if controls.is_empty() {
            let (body, headers) = self.avatar_parts();
            return Reply::now(with_headers(Body::whole(body), headers));
        }
        let attempt = self.attempt_id(request, &controls);
        self.later(&controls, attempt, guard, faults, None)
    }
}

/// `/__clock?shift=SECONDS` (the `test-clock` feature only): steps this process's wall clock.
#[cfg(feature = "test-clock")]
fn shift_clock(query: Option<&str>) -> hyper::Response<Body> {
    let seconds = query
        .and_then(|query| query.strip_prefix("shift="))
        .and_then(|value| value.parse::<i64>().ok());
    match seconds {
        Some(seconds) => {
            crate::time::testing::shift(seconds);
            plain(StatusCode::OK, JSON, format!(r#"{{"shifted":{seconds}}}"#))
        }
        None => plain(
            StatusCode::BAD_REQUEST,
            JSON,
            r#"{"error":"shift=SECONDS"}"#,
        ),
    }
}
