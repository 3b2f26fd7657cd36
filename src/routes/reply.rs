//! Answers as hyper takes them: a response now or a future of one, recorded in the metrics
//! when answered, and the signal a handler raises a socket fault on.

use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::header::{CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use hyper::{HeaderMap, Method, Response, StatusCode};
use tokio::sync::Notify;

use super::{JSON, ONE_SECOND, OVERLOADED_BODY, Routes};
use crate::behaviour::Fault;
use crate::behaviour::body::Body;
use crate::ops::metrics::{MethodLabel, Route};

/// How a request's handler tells its connection to fail at the socket level.
#[derive(Debug, Default)]
pub struct FaultSignal {
    fault: Cell<Option<Fault>>,
    notify: Notify,
}

impl FaultSignal {
    /// Raises `fault` and never returns: the connection drops this request with it.
    pub(super) async fn raise(&self, fault: Fault) -> Response<Body> {
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

/// What behaviour injection did to an answer, kept on it for `--server-timing`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Injected {
    pub(super) delay: Duration,
    pub(super) status: Option<u16>,
    pub(super) truncated: bool,
}

/// `--server-timing`'s headers on `response`, made after `total`: `server-timing: inject;dur=…,
/// total;dur=…` (milliseconds), and `x-m2-injected` naming what was injected, if anything.
fn add_server_timing(response: &mut Response<Body>, total: Duration) {
    let injected = response.extensions_mut().remove::<Injected>();
    let delay = injected.map_or(Duration::ZERO, |injected| injected.delay);
    let ms = |duration: Duration| duration.as_secs_f64() * 1e3;
    let timing = format!("inject;dur={:.1}, total;dur={:.1}", ms(delay), ms(total));
    let mut what = Vec::new();
    if let Some(injected) = injected {
        if !injected.delay.is_zero() {
            what.push(format!("delay={:.1}ms", ms(injected.delay)));
        }
        if let Some(status) = injected.status {
            what.push(format!("status={status}"));
        }
        if injected.truncated {
            what.push("fault=truncate".to_owned());
        }
    }
    let headers = response.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&timing) {
        headers.insert(SERVER_TIMING, value);
    }
    if let Ok(value) = HeaderValue::from_str(&what.join(", ")) {
        if !what.is_empty() {
            headers.insert(INJECTED, value);
        }
    }
}

const SERVER_TIMING: HeaderName = HeaderName::from_static("server-timing");
const INJECTED: HeaderName = HeaderName::from_static("x-m2-injected");

/// A [`Reply`] that records its request in the metrics once answered. A request dropped
/// before its answer (a socket fault, a client gone) is not counted as answered.
pub struct Recorded {
    pub(super) reply: Reply,
    pub(super) routes: Rc<Routes>,
    pub(super) route: Route,
    pub(super) method: MethodLabel,
    pub(super) start: Instant,
    /// Method and path, kept only when access logging is on.
    pub(super) access: Option<(Method, String)>,
}

impl Future for Recorded {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut response = std::task::ready!(Pin::new(&mut this.reply).poll(cx));
        if this.routes.server_timing && matches!(this.route, Route::Avatar | Route::Gateway) {
            if let Ok(response) = &mut response {
                add_server_timing(response, this.start.elapsed());
            }
        }
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
    pub(super) fn now(response: Response<Body>) -> Reply {
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

/// The 503 of `--max-inflight` load shedding.
pub(super) fn overloaded() -> Response<Body> {
    let mut response = plain(StatusCode::SERVICE_UNAVAILABLE, JSON, OVERLOADED_BODY);
    response.headers_mut().insert(RETRY_AFTER, ONE_SECOND);
    response
}

pub(super) fn with_headers(body: Body, headers: HeaderMap) -> Response<Body> {
    let mut response = Response::new(body);
    // Cloning the prepared map costs less than inserting four headers (about 375
    // instructions a request under callgrind).
    *response.headers_mut() = headers;
    response
}

/// A whole-body response with only a content type (hyper adds `date` and `content-length`).
pub(super) fn plain(
    status: StatusCode,
    content_type: HeaderValue,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Body::whole(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, content_type);
    response
}
