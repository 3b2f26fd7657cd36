//! Gateway mode: the suite's "microservice 1". Each request on the gateway's path becomes a
//! call to the upstream (or to several at once) over a pooled keep-alive HTTP/1.1 client, one
//! pool per worker, with a deadline, retries and answers that name what went wrong. The client
//! is hyper-util's pooled one, or with `--client lean` the leaner one in `gateway/lean.rs`.

mod answer;
pub(crate) mod error;
mod forward;
mod hyper_util;
pub(crate) mod lean;
mod wire;

use std::cell::RefCell;
use std::sync::Arc;
use std::time::Duration;

use ::hyper_util::client::legacy::Client;
use ::hyper_util::client::legacy::connect::HttpConnector;
use ::hyper_util::rt::{TokioExecutor, TokioTimer};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::header::HeaderValue;
use hyper::{StatusCode, Uri};
use hyper_rustls::HttpsConnector;
use tokio::time::Instant;

use crate::behaviour::Rng;
use crate::config::{ClientKind, GatewayConfig, Upstream, UpstreamTls};
use answer::{failure_answer, fan_in};
use error::{Kind, Outcome, UpstreamError};
pub use forward::Forward;
// One upstream's answer, read whole (by either client).
use lean::Response as Reply;
use wire::request_head;

/// Told of every attempt, for the metrics: which upstream, how it ended, how long it took;
/// and of every retry, as the next attempt starts.
pub trait Observer: std::fmt::Debug {
    fn attempt(&self, upstream: usize, outcome: Outcome, elapsed: Duration);
    fn retry(&self, upstream: usize);
}

/// Backoff doubles at most this many times (10 ms base: about 10 s), however many retries.
const MAX_BACKOFF_DOUBLINGS: u32 = 10;

/// What the gateway answers its caller: status, content type and body (the caller adds the
/// gateway's own headers).
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub content_type: HeaderValue,
    pub body: Bytes,
}

const JSON: HeaderValue = HeaderValue::from_static("application/json");

/// The lean client's pool and what it sends each upstream.
#[derive(Debug)]
struct Lean {
    pool: lean::Pool,
    targets: Vec<lean::Target>,
    /// Each upstream's request with nothing forwarded, written once.
    requests: Vec<Bytes>,
}

impl Lean {
    fn new(config: &GatewayConfig, hosts: &[HeaderValue]) -> Lean {
        let targets = config
            .upstreams
            .iter()
            .map(|upstream| {
                lean::Target::of(&upstream.uri)
                    .expect("config validation requires a host, and a server name for https")
            })
            .collect();
        let requests = config
            .upstreams
            .iter()
            .zip(hosts)
            .map(|(upstream, host)| request_head(&upstream.uri, host, std::iter::empty()))
            .collect();
        Lean {
            pool: lean::Pool::new(
                config.upstreams.len(),
                config.pool_max_idle,
                config.max_upstream_body,
                config.tls.as_ref().map(UpstreamTls::for_worker),
            ),
            targets,
            requests,
        }
    }
}

/// The HTTP/1.1 client a worker calls its upstreams with (`--client`). hyper-util's client
/// has a TLS layer only when some upstream needs one: going through hyper-rustls's stream
/// cost cleartext calls 1,215 more instructions each (32,946 against 31,731 under callgrind).
#[derive(Debug)]
enum Caller {
    HyperUtil(Box<Client<HttpConnector, Empty<Bytes>>>),
    HyperUtilTls(Box<Client<hyper_util::Timed<HttpsConnector<HttpConnector>>, Empty<Bytes>>>),
    Lean(Lean),
}

/// One worker's gateway: its connection pool and the upstreams it calls.
#[derive(Debug)]
pub struct Gateway {
    caller: Caller,
    config: GatewayConfig,
    /// Each upstream's `host` header, made once: the client would format it per request.
    hosts: Vec<HeaderValue>,
    rng: RefCell<Rng>,
    /// Told of every attempt (the worker's metrics), unless metrics are off.
    observer: Option<Arc<dyn Observer>>,
}

impl Gateway {
    /// A gateway with its own pool; `rng` jitters the retry backoff.
    pub fn new(config: &GatewayConfig, observer: Option<Arc<dyn Observer>>, rng: Rng) -> Gateway {
        let hosts: Vec<HeaderValue> = config
            .upstreams
            .iter()
            .map(|upstream| {
                let authority = upstream.uri.authority().map_or("", |a| a.as_str());
                HeaderValue::from_str(authority).expect("a parsed URI's authority is ASCII")
            })
            .collect();
        let caller = match config.client {
            ClientKind::HyperUtil => {
                let mut connector = HttpConnector::new();
                connector.set_nodelay(true);
                connector.set_connect_timeout(Some(config.timeout));
                let mut builder = Client::builder(TokioExecutor::new());
                builder
                    .pool_timer(TokioTimer::new())
                    .pool_max_idle_per_host(config.pool_max_idle);
                let https = config
                    .upstreams
                    .iter()
                    .any(|upstream| upstream.uri.scheme_str() == Some("https"));
                match config.tls.as_ref().filter(|_| https) {
                    None => Caller::HyperUtil(Box::new(builder.build(connector))),
                    Some(tls) => {
                        // https:// upstreams too: the TLS layer over it takes those. `From`
                        // keeps the configuration's ALPN (HTTP/1.1 only), which the builder
                        // would insist on setting itself.
                        connector.enforce_http(false);
                        // Twice the call's deadline: a call sees that deadline's 504 first,
                        // as with the lean client; the limit is for connects left behind.
                        let connector = hyper_util::Timed {
                            inner: HttpsConnector::from((connector, tls.for_worker())),
                            limit: config.timeout.saturating_mul(2),
                        };
                        Caller::HyperUtilTls(Box::new(builder.build(connector)))
                    }
                }
            }
            ClientKind::Lean => Caller::Lean(Lean::new(config, &hosts)),
        };
        Gateway {
            caller,
            config: config.clone(),
            hosts,
            rng: RefCell::new(rng),
            observer,
        }
    }

    /// Whether the caller's behaviour goes on to the upstream (`--forward-behaviour`).
    pub fn forwards_behaviour(&self) -> bool {
        self.config.forward_behaviour
    }

    /// Calls the upstream(s) for one request and says what to answer.
    pub async fn call(&self, forward: &Forward) -> Answer {
        let deadline = Instant::now() + self.config.timeout;
        if let [upstream] = self.config.upstreams.as_slice() {
            return match self.attempts(0, upstream, forward, deadline).await {
                Ok(reply) => Answer {
                    status: reply.status,
                    content_type: reply.content_type.unwrap_or(JSON),
                    body: reply.body,
                },
                Err(failure) => failure_answer(&failure, upstream),
            };
        }
        let calls = self
            .config
            .upstreams
            .iter()
            .enumerate()
            .map(|(index, upstream)| async move {
                let start = Instant::now();
                let result = self.attempts(index, upstream, forward, deadline).await;
                (upstream, result, start.elapsed())
            });
        let results = futures_util::future::join_all(calls).await;
        fan_in(&results)
    }

    /// Calls `upstream` until it answers something not worth retrying, retries run out, or
    /// the next try would start past `deadline`.
    async fn attempts(
        &self,
        index: usize,
        upstream: &Upstream,
        forward: &Forward,
        deadline: Instant,
    ) -> Result<Reply, UpstreamError> {
        let uri = forward.uri(&upstream.uri);
        let host = &self.hosts[index];
        let mut attempt = 0;
        loop {
            let start = Instant::now();
            let call = self.once(index, &uri, host, forward);
            let result = match tokio::time::timeout_at(deadline, call).await {
                Ok(result) => result,
                Err(_) => Err(UpstreamError::new(
                    Kind::Timeout,
                    format!("no answer within {:?}", self.config.timeout),
                )),
            };
            let retry = self.observe(index, &result, start.elapsed());
            if !retry || attempt >= self.config.retries {
                return result;
            }
            let pause = self.backoff(attempt);
            if Instant::now() + pause >= deadline {
                return result;
            }
            tokio::time::sleep(pause).await;
            // A busy worker can wake past the deadline: no try starts then (it would time
            // out at once), and the last answer stands.
            if Instant::now() >= deadline {
                return result;
            }
            if let Some(observer) = &self.observer {
                observer.retry(index);
            }
            attempt += 1;
        }
    }

    /// One request to the upstream, its body read whole.
    async fn once(
        &self,
        index: usize,
        uri: &Uri,
        host: &HeaderValue,
        forward: &Forward,
    ) -> Result<Reply, UpstreamError> {
        match &self.caller {
            Caller::HyperUtil(client) => {
                let max_body = self.config.max_upstream_body;
                hyper_util::call(client, uri, host, forward, max_body).await
            }
            Caller::HyperUtilTls(client) => {
                let max_body = self.config.max_upstream_body;
                hyper_util::call(client, uri, host, forward, max_body).await
            }
            Caller::Lean(lean) => {
                let forwarded;
                let request = if forward.is_empty() {
                    &lean.requests[index]
                } else {
                    forwarded = request_head(uri, host, forward.headers());
                    &forwarded
                };
                let target = &lean.targets[index];
                Ok(lean.pool.send(index, target, request).await?)
            }
        }
    }

    /// Reports one attempt; says whether it is worth retrying.
    fn observe(
        &self,
        index: usize,
        result: &Result<Reply, UpstreamError>,
        elapsed: Duration,
    ) -> bool {
        let outcome = match result {
            Ok(reply) => Outcome::Answered(reply.status),
            Err(err) => Outcome::Failed(err.kind),
        };
        if let Some(observer) = &self.observer {
            observer.attempt(index, outcome, elapsed);
        }
        outcome.retryable()
    }

    /// The pause before retry number `attempt + 1`: the base doubled `attempt` times, of
    /// which a random half or more ("equal jitter", so retries of many requests spread out).
    fn backoff(&self, attempt: u32) -> Duration {
        let full = self
            .config
            .retry_backoff
            .saturating_mul(1 << attempt.min(MAX_BACKOFF_DOUBLINGS));
        let jitter = self.rng.borrow_mut().next_f64();
        full.mul_f64(0.5 + 0.5 * jitter)
    }
}

#[cfg(test)]
mod tests {
    use hyper::Request;

    use super::answer::{failure_answer, fan_in};
    use super::*;

    fn upstream(url: &str) -> Upstream {
        Upstream {
            url: url.to_owned(),
            uri: url.parse().expect("a test URL"),
        }
    }

    fn get(target: &str, header: Option<&str>) -> Request<()> {
        let mut request = Request::new(());
        *request.uri_mut() = target.parse().expect("a test target");
        if let Some(header) = header {
            request.headers_mut().insert(
                crate::behaviour::HEADER,
                HeaderValue::from_str(header).expect("ASCII"),
            );
        }
        request
    }

    #[test]
    fn the_lean_client_writes_what_hyper_would_to_bare_hosts_and_ports() {
        let config = GatewayConfig {
            upstreams: vec![
                upstream("http://[::1]:3000/v1/avatar?count=2"),
                upstream("http://m2"),
            ],
            timeout: Duration::from_secs(1),
            retries: 0,
            retry_backoff: Duration::from_millis(10),
            pool_max_idle: 1,
            forward_behaviour: true,
            client: ClientKind::Lean,
            max_upstream_body: 16 << 20,
            tls: None,
        };
        let hosts = [
            HeaderValue::from_static("[::1]:3000"),
            HeaderValue::from_static("m2"),
        ];
        let lean = Lean::new(&config, &hosts);
        let targets: Vec<(&str, u16)> = lean
            .targets
            .iter()
            .map(|target| (target.host.as_str(), target.port))
            .collect();
        assert_eq!(targets, [("::1", 3000), ("m2", 80)]);
        assert_eq!(
            &lean.requests[0][..],
            b"GET /v1/avatar?count=2 HTTP/1.1\r\nhost: [::1]:3000\r\n\r\n"
        );
        assert_eq!(&lean.requests[1][..], b"GET / HTTP/1.1\r\nhost: m2\r\n\r\n");
        let forward = Forward::of(&get("/v1/user?status=503", Some("delay=1ms")));
        let uri = forward.uri(&config.upstreams[1].uri);
        assert_eq!(
            &request_head(&uri, &hosts[1], forward.headers())[..],
            b"GET /?status=503 HTTP/1.1\r\nhost: m2\r\nx-m2-behaviour: delay=1ms\r\n\r\n"
        );
        // The attempt header follows the behaviour header, with or without it.
        let name = hyper::header::HeaderName::from_static("x-request-id");
        let mut request = get("/v1/user", Some("delay=1ms"));
        request
            .headers_mut()
            .insert(name.clone(), HeaderValue::from_static("r1"));
        let both = Forward::of(&request).with_attempt(&name, &request);
        assert_eq!(
            &request_head(&config.upstreams[1].uri, &hosts[1], both.headers())[..],
            b"GET / HTTP/1.1\r\nhost: m2\r\nx-m2-behaviour: delay=1ms\r\nx-request-id: r1\r\n\r\n"
        );
        let alone = Forward::default().with_attempt(&name, &request);
        assert!(!alone.is_empty());
        assert_eq!(
            &request_head(&config.upstreams[1].uri, &hosts[1], alone.headers())[..],
            b"GET / HTTP/1.1\r\nhost: m2\r\nx-request-id: r1\r\n\r\n"
        );
        assert!(
            Forward::default()
                .with_attempt(&name, &get("/", None))
                .is_empty()
        );
    }

    #[test]
    fn https_targets_default_to_port_443_and_verify_their_host() {
        let target = |url: &str| lean::Target::of(&url.parse().expect("a test URL"));
        let named = target("https://m2/v1/avatar").expect("a target");
        assert_eq!((named.host.as_str(), named.port), ("m2", 443));
        assert_eq!(
            named.tls.map(|name| name.to_str().into_owned()),
            Some("m2".into())
        );
        let ip = target("https://[::1]:8443/").expect("a target");
        assert_eq!(ip.port, 8443);
        assert!(matches!(
            ip.tls,
            Some(rustls::pki_types::ServerName::IpAddress(_))
        ));
        let plain = target("http://m2/").expect("a target");
        assert_eq!(plain.port, 80);
        assert!(plain.tls.is_none());
    }

    #[test]
    fn only_behaviour_pairs_are_forwarded_and_added_to_the_upstream_query() {
        let forward = Forward::of(&get(
            "/v1/user?delay=5ms&page=2&status=503:10&x",
            Some("fault=close"),
        ));
        assert_eq!(forward.query.as_deref(), Some("delay=5ms&status=503:10"));
        assert_eq!(
            forward.header,
            Some(HeaderValue::from_static("fault=close"))
        );
        let plain = upstream("http://127.0.0.1:3000/v1/avatar");
        assert_eq!(
            forward.uri(&plain.uri).to_string(),
            "http://127.0.0.1:3000/v1/avatar?delay=5ms&status=503:10"
        );
        let with_query = upstream("http://m2:3000/v1/avatar?count=3");
        assert_eq!(
            forward.uri(&with_query.uri).to_string(),
            "http://m2:3000/v1/avatar?count=3&delay=5ms&status=503:10"
        );
        let nothing = Forward::of(&get("/v1/user?page=2", None));
        assert!(nothing.query.is_none() && nothing.header.is_none());
        assert_eq!(nothing.uri(&plain.uri), plain.uri);
    }

    #[test]
    fn a_timeout_names_the_upstream_and_other_failures_their_cause() {
        let up = upstream("http://127.0.0.1:9/x");
        let timeout = failure_answer(&UpstreamError::new(Kind::Timeout, "no answer"), &up);
        assert_eq!(timeout.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            &timeout.body[..],
            br#"{"error":"upstream timeout","upstream":"http://127.0.0.1:9/x"}"#
        );
        let refused = failure_answer(
            &UpstreamError::new(Kind::Connect, "Connection \"refused\""),
            &up,
        );
        assert_eq!(refused.status, StatusCode::BAD_GATEWAY);
        let json: serde_json::Value = serde_json::from_slice(&refused.body).expect("JSON");
        assert_eq!(json["kind"], "connect");
        assert_eq!(json["cause"], "Connection \"refused\"");
    }

    #[test]
    fn fan_in_embeds_json_bodies_and_fails_only_when_every_upstream_failed() {
        let (a, b) = (upstream("http://a/"), upstream("http://b/"));
        let ok = |body: &'static [u8]| {
            Ok(Reply {
                status: StatusCode::OK,
                content_type: Some(JSON),
                body: Bytes::from_static(body),
            })
        };
        let timed_out = || Err(UpstreamError::new(Kind::Timeout, ""));
        let ms = Duration::from_millis(2);
        let answer = fan_in(&[(&a, ok(br#"[{"x":1}]"#), ms), (&b, ok(b"not json"), ms)]);
        assert_eq!(answer.status, StatusCode::OK);
        let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        assert_eq!(json["upstreams"][0]["body"][0]["x"], 1);
        assert_eq!(json["upstreams"][0]["duration_ms"], 2.0);
        assert!(json["upstreams"][1]["body"].is_null());
        let answer = fan_in(&[(&a, ok(b"{}"), ms), (&b, timed_out(), ms)]);
        assert_eq!(answer.status, StatusCode::OK);
        let answer = fan_in(&[(&a, timed_out(), ms), (&b, timed_out(), ms)]);
        assert_eq!(answer.status, StatusCode::GATEWAY_TIMEOUT);
        let refused = Err(UpstreamError::new(Kind::Connect, ""));
        let answer = fan_in(&[(&a, timed_out(), ms), (&b, refused, ms)]);
        assert_eq!(answer.status, StatusCode::BAD_GATEWAY);
        let json: serde_json::Value = serde_json::from_slice(&answer.body).expect("JSON");
        assert_eq!(json["upstreams"][1]["error"], "upstream connection failed");
    }
}
