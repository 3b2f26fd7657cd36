//! The URL space: which (method, path) gets which answer, and where behaviour injection comes
//! in. This is the only module that knows the paths. [`Routes::respond`] answers at once when
//! it can and returns a future only for requests with behaviour to act out.

use std::cell::{Cell, RefCell};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hyper::header::{
    ALLOW, CONTENT_LENGTH, CONTENT_TYPE, DATE, HeaderValue, LOCATION, RETRY_AFTER,
};
use hyper::{HeaderMap, Method, Request, Response, StatusCode};
use tokio::sync::Notify;

use crate::avatar::{self, AvatarCache};
use crate::behaviour::body::{Body, Content};
use crate::behaviour::parse::Unknown;
use crate::behaviour::{self, BehaviourError, Controls, Fault, Limits, Plan, Rng};
use crate::config::Config;
use crate::gateway::{Forward, Gateway};
use crate::ops::metrics::{MethodLabel, Registry, Route, WorkerMetrics};
use crate::time;

const JSON: HeaderValue = HeaderValue::from_static("application/json");
const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");
const GET_HEAD: HeaderValue = HeaderValue::from_static("GET, HEAD");
const ONE_SECOND: HeaderValue = HeaderValue::from_static("1");

/// The seed's 404 body.
const NOT_FOUND_BODY: &[u8] = b"Not found";
const METHOD_NOT_ALLOWED_BODY: &[u8] = br#"{"error":"method not allowed","allow":["GET","HEAD"]}"#;
const OVERLOADED_BODY: &[u8] = br#"{"error":"overloaded","status":503}"#;
const HEALTHY_BODY: &[u8] = br#"{"status":"ok"}"#;
const READY_BODY: &[u8] = br#"{"status":"ready"}"#;
const DRAINING_BODY: &[u8] = br#"{"status":"draining"}"#;
const PROMETHEUS: HeaderValue =
    HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8");

/// How many `count=N` bodies each worker keeps rendered.
const LIST_CACHE: usize = 16;

/// State shared by all workers. The request path touches none of it but for requests on the
/// behaviour path (the in-flight count); each worker writes only its own metrics.
#[derive(Debug, Clone)]
pub struct Shared {
    /// Requests in flight on the behaviour path, for `--max-inflight` and `linear(…)`.
    inflight: Arc<AtomicUsize>,
    /// False from the moment shutdown begins: `/readyz` answers 503.
    ready: Arc<AtomicBool>,
    /// Connections open on all workers, for `--max-connections` (touched per connection).
    connections: Arc<AtomicUsize>,
    metrics: Registry,
}

impl Shared {
    pub fn new(workers: usize) -> Shared {
        Shared::with_upstreams(workers, Vec::new())
    }

    /// Gateway mode's shared state: metrics also count calls to `upstreams` (their URLs).
    pub fn with_upstreams(workers: usize, upstreams: Vec<String>) -> Shared {
        Shared {
            inflight: Arc::default(),
            ready: Arc::new(AtomicBool::new(true)),
            connections: Arc::default(),
            metrics: Registry::new(workers.max(1), upstreams),
        }
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

/// One worker's routing table and response state. Not shared between threads: each worker
/// owns one, so caches and the random generator are used without locks.
#[derive(Debug)]
pub struct Routes {
    path: String,
    avatars: RefCell<AvatarCache>,
    profile: Controls,
    allow_request_behaviour: bool,
    limits: Limits,
    max_inflight: Option<usize>,
    max_hang: Duration,
    shared: Shared,
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
            allow_request_behaviour: config.allow_request_behaviour,
            limits: config.limits(),
            max_inflight: config.max_inflight.map(usize::from),
            max_hang: config.max_hang,
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

    /// The avatar path.
    pub fn path(&self) -> &str {
        &self.path
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

    /// The route a request path falls under, on a main (`admin == false`) or admin listener.
    fn route(&self, path: &str, admin: bool) -> Route {
        if admin || !self.admin_port {
            match path {
                "/healthz" => return Route::Healthz,
                "/readyz" => return Route::Readyz,
                "/metrics" if self.record => return Route::Metrics,
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

    /// Answers one request and records it when it is answered.
    pub fn call<B>(
        self: &Rc<Self>,
        request: &Request<B>,
        faults: &Rc<FaultSignal>,
        admin: bool,
    ) -> Recorded {
        let start = Instant::now();
        let route = self.route(request.uri().path(), admin);
        let access = self
            .access_logging()
            .then(|| (request.method().clone(), request.uri().path().to_owned()));
        Recorded {
            reply: self.respond(request, route, faults),
            routes: Rc::clone(self),
            route,
            method: MethodLabel::of(request.method()),
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
        (snapshot.body.clone(), snapshot.headers.clone())
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
            Route::Avatar | Route::NotFound => {}
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
        self.later(&controls, guard, faults, None)
    }

    /// Gateway mode: the gateway's own behaviour (`--behaviour` only), then the upstream call,
    /// carrying the caller's behaviour on with `--forward-behaviour`.
    fn forward<B>(self: &Rc<Self>, request: &Request<B>, faults: &Rc<FaultSignal>) -> Reply {
        let guard = match self.admit(&self.profile, true) {
            Admission::Admitted(guard) => guard,
            Admission::Shed => return Reply::now(overloaded()),
        };
        let forwards = self
            .gateway
            .as_ref()
            .is_some_and(Gateway::forwards_behaviour);
        let forward = if forwards {
            Forward::of(request)
        } else {
            Forward::default()
        };
        self.later(&self.profile, guard, faults, Some(forward))
    }

    /// Plans `controls` and acts them out; the answer comes later.
    fn later(
        self: &Rc<Self>,
        controls: &Controls,
        guard: Option<InflightGuard>,
        faults: &Rc<FaultSignal>,
        forward: Option<Forward>,
    ) -> Reply {
        let inflight = self.shared.inflight.load(Ordering::Relaxed);
        let plan = match controls.seed {
            Some(seed) => controls.plan(&mut Rng::new(seed), inflight, &self.limits),
            None => controls.plan(&mut self.rng.borrow_mut(), inflight, &self.limits),
        };
        let routes = Rc::clone(self);
        let faults = Rc::clone(faults);
        Reply::Later(Box::pin(async move {
            let response = routes.act_out(plan, &faults, forward).await;
            drop(guard);
            response
        }))
    }

    /// The controls for this request: the server profile, then the header, then the query.
    fn controls<B>(&self, request: &Request<B>) -> Result<Controls, BehaviourError> {
        let mut controls = self.profile.clone();
        if !self.allow_request_behaviour {
            return Ok(controls);
        }
        if let Some(header) = request.headers().get(behaviour::HEADER) {
            let text = header.to_str().map_err(|_| {
                BehaviourError::new(behaviour::HEADER, "visible ASCII key=value pairs")
            })?;
            controls.merge(Controls::parse(text, &self.limits, Unknown::Reject)?);
        }
        if let Some(query) = request.uri().query() {
            controls.merge(Controls::parse(query, &self.limits, Unknown::Ignore)?);
        }
        if controls.rate.is_some() {
            let longest = match controls.count {
                Some(count) => self.list_template(count).len(),
                None => avatar::TEMPLATE.len(),
            };
            controls.check_rate(longest, &self.limits)?;
        }
        Ok(controls)
    }

    /// Counts the request in flight when anything needs the count (load shedding, a
    /// behaviour to act out, an upstream call: `always`); above `--max-inflight`, sheds it.
    fn admit(&self, controls: &Controls, always: bool) -> Admission {
        if !always && self.max_inflight.is_none() && controls.is_empty() {
            return Admission::Admitted(None);
        }
        let guard = InflightGuard::new(&self.shared.inflight);
        match self.max_inflight {
            Some(max) if guard.count > max => Admission::Shed,
            _ => Admission::Admitted(Some(guard)),
        }
    }

    /// Carries out a plan: wait, then fault or answer: an injected status, else the upstream's
    /// answer in gateway mode (`forward`), else avatars.
    async fn act_out(
        &self,
        plan: Plan,
        faults: &FaultSignal,
        forward: Option<Forward>,
    ) -> Response<Body> {
        if !plan.delay.is_zero() {
            tokio::time::sleep(plan.delay).await;
        }
        match plan.fault {
            Some(Fault::Hang) => {
                self.fault_injected(Fault::Hang);
                tokio::time::sleep(self.max_hang).await;
                return faults.raise(Fault::Close).await;
            }
            Some(fault @ (Fault::Reset | Fault::Close)) => {
                self.fault_injected(fault);
                return faults.raise(fault).await;
            }
            Some(Fault::Truncate) => self.fault_injected(Fault::Truncate),
            None => {}
        }
        let injected = plan
            .status
            .map(|code| StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
        let (status, body, mut headers) = match (injected, forward, &self.gateway) {
            (Some(status), _, _) => {
                let body = format!(r#"{{"error":"injected","status":{}}}"#, status.as_u16());
                let mut headers = HeaderMap::with_capacity(2);
                headers.insert(CONTENT_TYPE, JSON);
                (status, Content::from(Bytes::from(body)), headers)
            }
            (None, Some(forward), Some(gateway)) => {
                let answer = gateway.call(&forward).await;
                (
                    answer.status,
                    Content::from(answer.body),
                    self.gateway_headers(answer.content_type),
                )
            }
            (None, _, _) => {
                let (body, headers) = self.avatar_parts();
                match plan.count {
                    Some(count) => (StatusCode::OK, self.list(count), headers),
                    None => (StatusCode::OK, Content::from(body), headers),
                }
            }
        };
        let body = if plan.fault == Some(Fault::Truncate) {
            headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
            Body::truncated(body)
        } else {
            // Validation keeps every pace within --max-delay; the bound is kept here too, for
            // bodies validation cannot know (the upstream's, in gateway mode).
            match plan.pace(body.len()) {
                Some(over) => Body::paced(body, over.min(self.limits.max_delay)),
                None => Body::whole(body),
            }
        };
        let mut response = with_headers(body, headers);
        *response.status_mut() = status;
        response
    }

    /// Whether this worker serves gateway mode.
    pub fn is_gateway(&self) -> bool {
        self.gateway.is_some()
    }

    /// Gateway mode's fast path: calls the upstream for a plain GET (or HEAD) and returns the
    /// answer as wire bytes, exactly what hyper would write for it: a head written here and
    /// the upstream's body as it was read (not copied again).
    pub async fn gateway_wire(&self, head_only: bool) -> GatewayWire {
        let gateway = self
            .gateway
            .as_ref()
            .expect("the fast path calls gateway_wire only in gateway mode");
        let _inflight = InflightGuard::new(&self.shared.inflight);
        let answer = gateway.call(&Forward::default()).await;
        let status = answer.status;
        let mut wire = BytesMut::with_capacity(256);
        wire.put_slice(b"HTTP/1.1 ");
        wire.put_slice(status.as_str().as_bytes());
        wire.put_u8(b' ');
        wire.put_slice(status.canonical_reason().unwrap_or("<none>").as_bytes());
        // The headers of `gateway_headers`, in its order, written straight out.
        wire.put_slice(b"\r\ncontent-type: ");
        wire.put_slice(answer.content_type.as_bytes());
        wire.put_slice(b"\r\nengine: ");
        wire.put_slice(avatar::ENGINE_VALUE.as_bytes());
        wire.put_slice(b"\r\nlocation: ");
        wire.put_slice(self.location.as_bytes());
        wire.put_slice(b"\r\ndate: ");
        time::put_date(self.date_header, time::now(), &mut wire);
        wire.put_slice(b"\r\n");
        // No body and no length for the statuses that cannot have one, as hyper does.
        let bodiless = status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        if !bodiless {
            wire.put_slice(b"content-length: ");
            wire.put_slice(itoa::Buffer::new().format(answer.body.len()).as_bytes());
            wire.put_slice(b"\r\n");
        }
        wire.put_slice(b"\r\n");
        let body = if head_only || bodiless {
            Bytes::new()
        } else {
            answer.body
        };
        GatewayWire {
            head: wire.freeze(),
            body,
            status: status.as_u16(),
        }
    }

    /// The gateway's answer headers, in the avatar answer's order: the upstream's content type,
    /// `engine`, `location` (the gateway's path) and `date` in the configured form.
    fn gateway_headers(&self, content_type: HeaderValue) -> HeaderMap {
        let mut date = BytesMut::with_capacity(40);
        time::put_date(self.date_header, time::now(), &mut date);
        let date = HeaderValue::from_maybe_shared(date.freeze())
            .expect("the time formatters write only visible ASCII");
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(CONTENT_TYPE, content_type);
        headers.insert(avatar::ENGINE, avatar::ENGINE_VALUE);
        headers.insert(LOCATION, self.location.clone());
        headers.insert(DATE, date);
        headers
    }

    fn fault_injected(&self, fault: Fault) {
        if self.record {
            self.metrics.fault(fault);
        }
    }

    /// The body with `count` avatars, its first `createdAt` now: a patched copy of the first
    /// few bytes, and the rest shared with every other request for `count` (no copy).
    fn list(&self, count: u32) -> Content {
        let template = self.list_template(count);
        avatar::created_now(&template, time::now())
    }

    /// The rendered body with `count` avatars, from this worker's cache of the last
    /// [`LIST_CACHE`] counts asked for.
    fn list_template(&self, count: u32) -> Bytes {
        let mut lists = self.lists.borrow_mut();
        match lists.iter().position(|(n, _)| *n == count) {
            Some(index) => lists[index].1.clone(),
            None => {
                if lists.len() == LIST_CACHE {
                    lists.remove(0);
                }
                let rendered = avatar::list(count);
                lists.push((count, rendered.clone()));
                rendered
            }
        }
    }
}

/// Gateway mode's answer to one fast-path request, as it goes on the wire.
#[derive(Debug)]
pub struct GatewayWire {
    /// Status line and headers.
    pub head: Bytes,
    /// The upstream's body (empty for HEAD and bodiless statuses).
    pub body: Bytes,
    pub status: u16,
}

/// Whether a request may go on.
enum Admission {
    /// Yes; counted in flight while the guard lives, when counting is needed.
    Admitted(Option<InflightGuard>),
    /// No: above `--max-inflight`.
    Shed,
}

/// Decrements the in-flight count when the request is done (or dropped).
#[derive(Debug)]
struct InflightGuard {
    inflight: Arc<AtomicUsize>,
    /// The count including this request.
    count: usize,
}

impl InflightGuard {
    fn new(inflight: &Arc<AtomicUsize>) -> InflightGuard {
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

/// How a request's handler tells its connection to fail at the socket level.
#[derive(Debug, Default)]
pub struct FaultSignal {
    fault: Cell<Option<Fault>>,
    notify: Notify,
}

impl FaultSignal {
    /// Raises `fault` and never returns: the connection drops this request with it.
    async fn raise(&self, fault: Fault) -> Response<Body> {
        self.fault.set(Some(fault));
        self.notify.notify_one();
        std::future::pending().await
    }

    /// Resolves with the first fault raised.
    pub async fn raised(&self) -> Fault {
        loop {
            if let Some(fault) = self.fault.get() {
                return fault;
            }
            self.notify.notified().await;
        }
    }
}

/// A [`Reply`] that records its request in the metrics once answered. A request dropped
/// before its answer (a socket fault, a client gone) is not counted as answered.
pub struct Recorded {
    reply: Reply,
    routes: Rc<Routes>,
    route: Route,
    method: MethodLabel,
    start: Instant,
    /// Method and path, kept only when access logging is on.
    access: Option<(Method, String)>,
}

impl Future for Recorded {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let response = std::task::ready!(Pin::new(&mut this.reply).poll(cx));
        if let Ok(response) = &response {
            let elapsed = this.start.elapsed();
            let status = response.status().as_u16();
            this.routes
                .record(this.route, this.method, status, elapsed, 1);
            if let Some((method, path)) = &this.access {
                let bytes = hyper::body::Body::size_hint(response.body()).lower();
                this.routes
                    .access(method.as_str(), path, status, elapsed, bytes);
            }
        }
        Poll::Ready(response)
    }
}

/// A response now, or a future of one for requests that act out behaviour. The response is
/// held inline: it is handed to hyper at once, and boxing it would cost every plain request
/// on hyper's path an allocation.
#[allow(clippy::large_enum_variant)]
pub enum Reply {
    Now(Option<Response<Body>>),
    Later(Pin<Box<dyn Future<Output = Response<Body>>>>),
}

impl Reply {
    fn now(response: Response<Body>) -> Reply {
        Reply::Now(Some(response))
    }
}

impl Future for Reply {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Reply::Now(response) => Poll::Ready(Ok(response
                .take()
                .expect("a Reply is not polled after it completed"))),
            Reply::Later(future) => future.as_mut().poll(cx).map(Ok),
        }
    }
}

/// `/__clock?shift=SECONDS` (the `test-clock` feature only): steps this process's wall clock.
#[cfg(feature = "test-clock")]
fn shift_clock(query: Option<&str>) -> Response<Body> {
    let seconds = query
        .and_then(|query| query.strip_prefix("shift="))
        .and_then(|value| value.parse::<i64>().ok());
    match seconds {
        Some(seconds) => {
            time::testing::shift(seconds);
            plain(StatusCode::OK, JSON, format!(r#"{{"shifted":{seconds}}}"#))
        }
        None => plain(
            StatusCode::BAD_REQUEST,
            JSON,
            r#"{"error":"shift=SECONDS"}"#,
        ),
    }
}

/// The 503 of `--max-inflight` load shedding.
fn overloaded() -> Response<Body> {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, JSON, OVERLOADED_BODY);
    response.headers_mut().insert(RETRY_AFTER, ONE_SECOND);
    response
}

fn with_headers(body: Body, headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(body);
    // Cloning the prepared map costs less than inserting four headers (about 375
    // instructions a request under callgrind).
    *response.headers_mut() = headers;
    response
}

/// A whole-body response with only a content type (hyper adds `date` and `content-length`).
fn plain(status: StatusCode, content_type: HeaderValue, body: impl Into<Bytes>) -> Response<Body> {
    let mut response = Response::new(Body::whole(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}
