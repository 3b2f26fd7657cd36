//! microservice2: the "microservice 2" of a service-to-service benchmark suite. `GET /v1/avatar`
//! answers the seed's fixed JSON list of 20 avatars, byte for byte, as cheaply as possible.
//!
//! - [`behaviour`]: the injection grammar, its sources and sampling (latency, errors, faults).
//! - [`body`]: response bodies: whole, paced (`drip`, `rate`), truncated.
//! - [`config`]: flags and environment variables, defaults, validation.
//! - [`server`]: per-core runtimes, `SO_REUSEPORT` listeners, accept loop, graceful shutdown.
//! - [`fast`]: the hot path: plain avatar GETs answered from pre-rendered bytes, else hyper.
//! - [`gateway`]: gateway mode (the suite's microservice 1): calls the upstream per request.
//! - [`client`]: the gateway's lean HTTP/1.1 keep-alive client (`--client lean`).
//! - [`healthcheck`]: `microservice2 healthcheck [URL]`, for images without curl.
//! - [`metrics`]: per-worker counters and histograms, merged into Prometheus text at scrape.
//! - [`routes`]: (method, path) to response; the only place that knows the URL space.
//! - [`avatar`]: the seed payload as a template, patched at most once per millisecond per worker.
//! - [`time`]: clock reads and the timestamp formats (pure, unit-tested at fixed instants).
//! - [`watched`]: the socket under hyper: the write timeout, and what it saw last.

pub mod avatar;
pub mod behaviour;
pub mod config;
pub mod gateway;
pub mod ops;
pub mod routes;
pub mod serve;
pub mod time;

pub use config::Config;
pub use serve::{Server, ServerError};
