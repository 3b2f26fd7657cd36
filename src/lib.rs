//! microservice2: the "microservice 2" of a service-to-service benchmark suite. `GET /v1/avatar`
//! answers the seed's fixed JSON list of 20 avatars, byte for byte, as cheaply as possible;
//! `microservice2 gateway` is the suite's "microservice 1", which calls it.
//!
//! The map, from the top down. A module imports only from the modules below it (a test in
//! `tests/it/structure.rs` holds this), so each can be read knowing only what is under it:
//!
//! - [`serve`]: per-core runtimes, `SO_REUSEPORT` listeners, the accept loop and graceful
//!   shutdown; each connection on the fast path (`serve/fast.rs`: every GET/HEAD of the main
//!   path answered from shared pre-rendered bytes, its behaviour acted out there) until a
//!   request needs hyper (`serve/connection.rs`).
//! - [`routes`]: the URL space and dispatch: which requests the fast path may answer and how
//!   it plans them (`routes/shaped.rs`), and the answer to every other (health, readiness,
//!   metrics, behaviour acted out, the gateway's path).
//! - [`ops`]: per-worker metrics and their Prometheus exposition, the process collector, and
//!   `microservice2 healthcheck`.
//! - [`gateway`]: upstream calls with a deadline, retries and fan-out, through hyper-util's
//!   client or the lean one; one upstream error type.
//! - [`config`]: the command line as parsed (flags, environment, defaults), then resolved into
//!   the [`Config`] the server runs with.
//! - [`tls`]: rustls: the serving certificate (reloaded while the server runs) and the
//!   clients' trust and identity, read from PEM files.
//! - [`avatar`]: the seed payload: the template, `count=N` lists and the per-millisecond cache.
//! - [`behaviour`]: the behaviour grammar, its sampling into a plan, and paced or truncated
//!   bodies.
//! - [`time`]: clock reads, the timestamp formats and the duration grammar.

pub mod avatar;
pub mod behaviour;
pub mod config;
pub mod gateway;
pub mod ops;
pub mod routes;
pub mod serve;
pub mod time;
pub mod tls;

pub use config::Config;
pub use serve::{Server, ServerError};
