//! The command line as parsed: clap's definition of every serve-mode flag, with its
//! environment variable and its default (each written once, here), and the parsers of the
//! values. [`super::Config`] is resolved from what this parses.

use std::net::{IpAddr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use hyper::header::HeaderName;

use super::{Host, LogFormat};
use crate::behaviour;
use crate::time::{DateHeader, parse_duration};

/// The suite's microservice 2 listens on port 3000 (also the gateway's default upstream).
pub(crate) const DEFAULT_PORT: u16 = 3000;
/// The seed's path (also the gateway's default upstream path).
pub(crate) const DEFAULT_PATH: &str = "/v1/avatar";

/// Paths the service keeps for itself: health, readiness and metrics.
pub const HEALTHZ: &str = "/healthz";
pub const READYZ: &str = "/readyz";
pub const METRICS: &str = "/metrics";
pub const RESERVED_PATHS: [&str; 3] = [HEALTHZ, READYZ, METRICS];

/// Serve mode's flags, as parsed.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "microservice2",
    version,
    about = "Answers GET /v1/avatar with the benchmark suite's fixed JSON list of avatars",
    after_help = "Gateway mode (the suite's microservice 1): microservice2 gateway --help\n\
                  Health check for containers: microservice2 healthcheck [URL] (default http://127.0.0.1:$M2_PORT/healthz)"
)]
pub(crate) struct ServeArgs {
    /// Address to listen on: an IP address or a name that resolves locally.
    #[arg(long, env = "M2_DOMAIN", default_value = "0.0.0.0", value_parser = parse_host)]
    pub host: Host,

    /// TCP port to listen on; 0 picks a free one.
    #[arg(long, env = "M2_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Path that answers the avatar list.
    #[arg(long, env = "M2_PATH", default_value = DEFAULT_PATH, value_parser = parse_path)]
    pub path: String,

    /// Worker threads, each with its own runtime and listener [default: the CPUs this process may use].
    #[arg(long, env = "M2_WORKERS", value_name = "N", value_parser = parse_at_least_one)]
    pub workers: Option<NonZeroUsize>,

    /// How long in-flight requests may take to finish after SIGINT or SIGTERM.
    #[arg(long, env = "M2_SHUTDOWN_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Form of the `date` response header.
    #[arg(long, env = "M2_DATE_HEADER", value_enum, default_value_t = DateHeader::Rfc3339)]
    pub date_header: DateHeader,

    /// Server-wide behaviour profile, e.g. 'delay=lognormal(5ms,50ms)&status=503:1'.
    #[arg(long, env = "M2_BEHAVIOUR", value_name = "CONTROLS")]
    pub behaviour: Option<String>,

    /// Honour the x-m2-behaviour header and behaviour query parameters.
    #[arg(long, env = "M2_ALLOW_REQUEST_BEHAVIOUR", value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_request_behaviour: bool,

    /// Answer 503 with retry-after: 1 at once above this many requests in flight.
    #[arg(long, env = "M2_MAX_INFLIGHT", value_name = "N", value_parser = parse_at_least_one)]
    pub max_inflight: Option<NonZeroUsize>,

    /// The longest delay, drip or distribution parameter a request may ask for.
    #[arg(long, env = "M2_MAX_DELAY", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub max_delay: Duration,

    /// How long `fault=hang` holds a request before closing it.
    #[arg(long, env = "M2_MAX_HANG", value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub max_hang: Duration,

    /// The most avatars `count=` may ask for.
    #[arg(long, env = "M2_MAX_COUNT", value_name = "N", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_count: u32,

    /// Seed for the workers' random generators, so a run can be replayed.
    #[arg(long, env = "M2_SEED", value_name = "N")]
    pub seed: Option<u64>,

    /// The request header whose value names a request's attempts, for fail-first=N (a gateway passes it on to its upstreams).
    #[arg(long, env = "M2_ATTEMPT_HEADER", value_name = "NAME", default_value = "x-request-id", value_parser = parse_attempt_header)]
    pub attempt_header: HeaderName,

    /// The most request ids fail-first remembers at once (about 100 bytes each); the oldest is forgotten first.
    #[arg(long, env = "M2_ATTEMPT_KEYS", value_name = "N", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub attempt_keys: u32,

    /// How long fail-first remembers a request id, from its first attempt.
    #[arg(long, env = "M2_ATTEMPT_TTL", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub attempt_ttl: Duration,

    /// Close a connection whose request head takes longer than this to arrive (slowloris).
    #[arg(long, env = "M2_HEADER_TIMEOUT", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// Close a keep-alive connection idle for this long between requests.
    #[arg(long, env = "M2_IDLE_TIMEOUT", value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// Close a connection whose pending answer makes no progress for this long (a client that stopped reading).
    #[arg(long, env = "M2_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub write_timeout: Duration,

    /// Serve every request through hyper, without the fast path (for comparisons).
    #[arg(long, env = "M2_NO_FAST_PATH")]
    pub no_fast_path: bool,

    /// Accept a connection only once its first bytes have come (Linux TCP_DEFER_ACCEPT): one that sends nothing is accepted about 1 s later.
    #[arg(long, env = "M2_DEFER_ACCEPT")]
    pub defer_accept: bool,

    /// Close new connections at once above this many open [default: the open-files limit less 64].
    #[arg(long, env = "M2_MAX_CONNECTIONS", value_name = "N", value_parser = parse_at_least_one)]
    pub max_connections: Option<NonZeroUsize>,

    /// Serve /healthz, /readyz and /metrics on this port instead of the main one.
    #[arg(long, env = "M2_ADMIN_PORT", value_name = "PORT")]
    pub admin_port: Option<u16>,

    /// After SIGTERM, keep serving this long with /readyz answering 503, then drain.
    #[arg(long, env = "M2_SHUTDOWN_DELAY", value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Record no metrics (and answer 404 on /metrics).
    #[arg(long, env = "M2_NO_METRICS")]
    pub no_metrics: bool,

    /// Also accept HTTP/2 with prior knowledge (h2c) on the same port.
    #[arg(long, env = "M2_HTTP2")]
    pub http2: bool,

    /// Serve HTTPS with this PEM certificate chain (the server's certificate first); needs --tls-key.
    #[arg(long, env = "M2_TLS_CERT", value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// The PEM private key (RSA, ECDSA or Ed25519) of --tls-cert.
    #[arg(long, env = "M2_TLS_KEY", value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// With TLS: the protocols offered by ALPN, in order of preference.
    #[arg(long, env = "M2_TLS_ALPN", value_name = "LIST", default_value = "h2,http/1.1", value_parser = parse_alpn)]
    pub tls_alpn: Alpn,

    /// With TLS: require client certificates signed by a CA in this PEM file (mutual TLS).
    #[arg(long, env = "M2_TLS_CLIENT_CA", value_name = "PATH")]
    pub tls_client_ca: Option<PathBuf>,

    /// Add server-timing (injected and total time) and x-m2-injected (what was injected) to the main path's answers; the fast path is off.
    #[arg(long, env = "M2_SERVER_TIMING")]
    pub server_timing: bool,

    /// Serve the control API (/admin/behaviour, /admin/scenario): change the server-wide behaviour while serving; on the admin port when there is one.
    #[arg(long, env = "M2_CONTROL")]
    pub control: bool,

    /// With --control: require `authorization: Bearer TOKEN` on /admin/*.
    #[arg(long, env = "M2_CONTROL_TOKEN", value_name = "TOKEN", hide_env_values = true, value_parser = parse_token)]
    pub control_token: Option<String>,

    /// A YAML file of phases, each a behaviour profile for a duration, played from the start (docs/behaviour.md).
    #[arg(long, env = "M2_SCENARIO", value_name = "FILE")]
    pub scenario: Option<PathBuf>,

    /// Log line format; RUST_LOG filters (default: info).
    #[arg(long, env = "M2_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log one line per request: method, path, status, duration, bytes.
    #[arg(long, env = "M2_ACCESS_LOG")]
    pub access_log: bool,

    /// With --access-log, log this fraction of requests (for high rates).
    #[arg(long, env = "M2_ACCESS_LOG_SAMPLE", value_name = "RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub access_log_sample: f64,
}

fn parse_host(value: &str) -> Result<Host, String> {
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(Host {
            name: value.to_owned(),
            ip,
        });
    }
    let resolved = (value, 0)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next());
    match resolved {
        Some(addr) => Ok(Host {
            name: value.to_owned(),
            ip: addr.ip(),
        }),
        None => Err("expected an IP address or a name that resolves on this machine".to_owned()),
    }
}

/// `--tls-alpn`'s protocols (clap takes a value parser's output whole only when it is not a
/// `Vec`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Alpn(pub Vec<String>);

fn parse_alpn(value: &str) -> Result<Alpn, String> {
    crate::tls::server::parse_alpn(value).map(Alpn)
}

fn parse_path(value: &str) -> Result<String, String> {
    if !value.starts_with('/') {
        return Err("the path must start with '/'".to_owned());
    }
    if RESERVED_PATHS.contains(&value) {
        return Err(format!(
            "{value} is reserved for health, readiness and metrics"
        ));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !c.is_ascii_graphic() || matches!(c, '?' | '#'))
    {
        return Err(format!(
            "the path may hold only visible ASCII without '?' or '#', found {bad:?}"
        ));
    }
    Ok(value.to_owned())
}

/// Headers that cannot name attempts: the request's host, framing and connection (which a
/// gateway cannot pass on as they are), and the behaviour header.
const NOT_ATTEMPT_HEADERS: [&str; 10] = [
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "upgrade",
    "expect",
    behaviour::HEADER,
];

fn parse_attempt_header(value: &str) -> Result<HeaderName, String> {
    let name = HeaderName::from_lowercase(value.as_bytes())
        .map_err(|_| "expected a header name in lower case, such as x-request-id".to_owned())?;
    if NOT_ATTEMPT_HEADERS.contains(&name.as_str()) {
        return Err(format!(
            "{value} is the request's own; expected a header of its own, such as x-request-id"
        ));
    }
    Ok(name)
}

/// A count of at least one: workers, requests in flight, connections.
fn parse_at_least_one(value: &str) -> Result<NonZeroUsize, String> {
    match value.parse::<usize>() {
        Ok(n) => NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_owned()),
        Err(_) => Err("expected a whole number, at least 1".to_owned()),
    }
}

pub(crate) fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        duration if duration.is_zero() => Err("must be more than 0".to_owned()),
        duration => Ok(duration),
    }
}

/// A bearer token: 16 to 256 visible ASCII characters (a short token can be guessed).
fn parse_token(value: &str) -> Result<String, String> {
    if !(16..=256).contains(&value.len()) {
        return Err("expected 16 to 256 characters".to_owned());
    }
    if !value.bytes().all(|byte| byte.is_ascii_graphic()) {
        return Err("expected visible ASCII only (no spaces)".to_owned());
    }
    Ok(value.to_owned())
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if ratio > 0.0 && ratio <= 1.0 => Ok(ratio),
        _ => Err("expected a fraction above 0 and at most 1, such as 0.01".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls() {
        assert_eq!(parse_host("::1").expect("literal").url_form(), "[::1]");
        assert_eq!(
            parse_host("127.0.0.1").expect("literal").url_form(),
            "127.0.0.1"
        );
    }

    #[test]
    fn attempt_headers_are_lower_case_names_of_their_own() {
        assert_eq!(
            parse_attempt_header("x-attempt-id").map(|name| name.to_string()),
            Ok("x-attempt-id".to_owned())
        );
        for bad in [
            "X-Request-Id",
            "x request",
            "",
            "x:y",
            "host",
            "x-m2-behaviour",
        ] {
            assert!(parse_attempt_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn counts_are_whole_numbers_of_at_least_one() {
        assert_eq!(parse_at_least_one("3").map(NonZeroUsize::get), Ok(3));
        assert_eq!(
            parse_at_least_one("0"),
            Err("must be at least 1".to_owned())
        );
        assert!(parse_at_least_one("x").is_err_and(|err| err.contains("whole number")));
    }
}
