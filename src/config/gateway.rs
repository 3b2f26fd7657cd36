//! Gateway mode's command line: serve mode's flags with the gateway's defaults and `M1_*`
//! variables (in gateway mode the `M2_*` ones describe the upstream), plus whom to call and
//! how to fail; and the resolved [`GatewayConfig`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Command, CommandFactory};
use hyper::Uri;
use rustls::pki_types::ServerName;

use super::cli::{DEFAULT_PATH, DEFAULT_PORT, ServeArgs, parse_positive_duration};
use super::size::parse_size;
use crate::time::parse_duration;
use crate::tls::{ClientSettings, PemFile, TlsError, client_config};

/// The one protocol the gateway offers `https://` upstreams by ALPN: it speaks HTTP/1.1.
pub const UPSTREAM_ALPN: &[&[u8]] = &[b"http/1.1"];

/// The suite's microservice 1 listens on 8080 and serves `/v1/user`.
const GATEWAY_PORT: &str = "8080";
const GATEWAY_PATH: &str = "/v1/user";

/// In gateway mode every serve-mode flag reads an `M1_*` variable (the `M2_*` ones name the
/// upstream): (argument, variable).
const GATEWAY_ENV: [(&str, &str); 37] = [
    ("host", "M1_DOMAIN"),
    ("port", "M1_PORT"),
    ("path", "M1_PATH"),
    ("workers", "M1_WORKERS"),
    ("date_header", "M1_DATE_HEADER"),
    ("behaviour", "M1_BEHAVIOUR"),
    ("max_connections", "M1_MAX_CONNECTIONS"),
    ("admin_port", "M1_ADMIN_PORT"),
    ("http2", "M1_HTTP2"),
    ("log_format", "M1_LOG_FORMAT"),
    ("write_timeout", "M1_WRITE_TIMEOUT"),
    ("no_fast_path", "M1_NO_FAST_PATH"),
    ("defer_accept", "M1_DEFER_ACCEPT"),
    ("tls_cert", "M1_TLS_CERT"),
    ("tls_key", "M1_TLS_KEY"),
    ("tls_alpn", "M1_TLS_ALPN"),
    ("tls_client_ca", "M1_TLS_CLIENT_CA"),
    ("server_timing", "M1_SERVER_TIMING"),
    ("control", "M1_CONTROL"),
    ("control_token", "M1_CONTROL_TOKEN"),
    ("scenario", "M1_SCENARIO"),
    ("attempt_header", "M1_ATTEMPT_HEADER"),
    ("attempt_keys", "M1_ATTEMPT_KEYS"),
    ("attempt_ttl", "M1_ATTEMPT_TTL"),
    ("shutdown_timeout", "M1_SHUTDOWN_TIMEOUT"),
    ("allow_request_behaviour", "M1_ALLOW_REQUEST_BEHAVIOUR"),
    ("max_inflight", "M1_MAX_INFLIGHT"),
    ("max_delay", "M1_MAX_DELAY"),
    ("max_hang", "M1_MAX_HANG"),
    ("max_count", "M1_MAX_COUNT"),
    ("seed", "M1_SEED"),
    ("header_timeout", "M1_HEADER_TIMEOUT"),
    ("idle_timeout", "M1_IDLE_TIMEOUT"),
    ("shutdown_delay", "M1_SHUTDOWN_DELAY"),
    ("no_metrics", "M1_NO_METRICS"),
    ("access_log", "M1_ACCESS_LOG"),
    ("access_log_sample", "M1_ACCESS_LOG_SAMPLE"),
];

/// `microservice2 gateway`.
pub(crate) fn command() -> Command {
    let command = ServeArgs::command()
        .bin_name("microservice2 gateway")
        .after_help(None::<&str>)
        .mut_arg("port", |arg| arg.default_value(GATEWAY_PORT))
        .mut_arg("path", |arg| {
            arg.default_value(GATEWAY_PATH)
                .help("Path that calls the upstream and answers with what it said")
        })
        .mut_arg("behaviour", |arg| {
            arg.help("Behaviour of the gateway itself, acted out before the upstream call")
        });
    let command = GATEWAY_ENV.iter().fold(command, |command, &(id, env)| {
        command.mut_arg(id, |arg| arg.env(env))
    });
    // The about text goes in last: `augment_args` would put the struct's doc comment there.
    GatewayArgs::augment_args(command).about(
        "Gateway mode (the suite's microservice 1): answers GET /v1/user by calling the upstream",
    )
}

/// Gateway mode's own flags, as parsed.
#[derive(Debug, Clone, PartialEq, Args)]
pub(crate) struct GatewayArgs {
    /// Upstream URL to call; repeat (or separate with commas) to fan out to several.
    #[arg(long = "upstream", env = "M2_URL", value_name = "URL", value_delimiter = ',', value_parser = parse_upstream)]
    upstreams: Vec<Upstream>,

    /// Upstream scheme and host, used when no --upstream is given.
    #[arg(
        long,
        env = "M2_DOMAIN",
        value_name = "URL",
        default_value = "http://127.0.0.1"
    )]
    upstream_domain: String,

    /// Upstream port, used when no --upstream is given.
    #[arg(long, env = "M2_PORT", value_name = "PORT", default_value_t = DEFAULT_PORT)]
    upstream_port: u16,

    /// Upstream path, used when no --upstream is given.
    #[arg(long, env = "M2_PATH", value_name = "PATH", default_value = DEFAULT_PATH)]
    upstream_path: String,

    /// Give up on the upstream after this long, retries included, and answer 504.
    #[arg(long, env = "M1_TIMEOUT", value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    timeout: Duration,

    /// Retry connect errors and 502/503/504 answers this many times.
    #[arg(long, env = "M1_RETRIES", value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    retries: u32,

    /// First pause between retries; it doubles each time, with jitter.
    #[arg(long, env = "M1_RETRY_BACKOFF", value_name = "DURATION", default_value = "10ms", value_parser = parse_duration)]
    retry_backoff: Duration,

    /// Idle keep-alive connections each worker keeps per upstream host.
    #[arg(
        long,
        env = "M1_POOL_MAX_IDLE",
        value_name = "N",
        default_value_t = 1024
    )]
    pool_max_idle: usize,

    /// Pass the caller's x-m2-behaviour header and behaviour query parameters to the upstream.
    #[arg(long, env = "M1_FORWARD_BEHAVIOUR")]
    forward_behaviour: bool,

    /// HTTP/1.1 client for upstream calls: hyper-util's pooled client, or the lean built-in one
    /// (same pooling and failure policy, about a third of the instructions per call).
    #[arg(long, env = "M1_CLIENT", value_name = "CLIENT", value_enum, default_value_t = ClientKind::HyperUtil)]
    client: ClientKind,

    /// Refuse (502) an upstream answer whose body is larger than this: bytes, or with KiB, MiB, GiB, kB, MB, GB.
    #[arg(long, env = "M1_MAX_UPSTREAM_BODY", value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_upstream_body: usize,

    /// PEM CA certificates that sign https:// upstreams' certificates [default: the system's roots].
    #[arg(long, env = "M1_UPSTREAM_CA", value_name = "PATH")]
    upstream_ca: Option<PathBuf>,

    /// PEM certificate chain presented to https:// upstreams that ask for one (mutual TLS); needs --upstream-client-key.
    #[arg(long, env = "M1_UPSTREAM_CLIENT_CERT", value_name = "PATH")]
    upstream_client_cert: Option<PathBuf>,

    /// The PEM private key of --upstream-client-cert.
    #[arg(long, env = "M1_UPSTREAM_CLIENT_KEY", value_name = "PATH")]
    upstream_client_key: Option<PathBuf>,

    /// Accept any certificate from https:// upstreams (no verification; for tests only).
    #[arg(long, env = "M1_UPSTREAM_INSECURE")]
    upstream_insecure: bool,
}

/// The HTTP/1.1 client the gateway calls its upstreams with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// hyper-util's pooled client (`client::legacy::Client`).
    HyperUtil,
    /// the gateway's own keep-alive client (`microservice2::gateway::lean`).
    Lean,
}

/// Gateway mode: whom to call and how to fail.
#[derive(Debug, Clone, PartialEq)]
pub struct GatewayConfig {
    /// One: its answer passes through. Several: called at once, answers gathered.
    pub upstreams: Vec<Upstream>,
    pub timeout: Duration,
    pub retries: u32,
    pub retry_backoff: Duration,
    pub pool_max_idle: usize,
    pub forward_behaviour: bool,
    pub client: ClientKind,
    /// `--max-upstream-body`, in bytes.
    pub max_upstream_body: usize,
    /// How `https://` upstreams are called: set when one is, or when a TLS flag is given.
    pub tls: Option<UpstreamTls>,
}

/// `--upstream-ca` and the rest, loaded once when the configuration is resolved: each worker
/// makes its client from [`UpstreamTls::config`].
#[derive(Debug, Clone)]
pub struct UpstreamTls {
    pub settings: ClientSettings,
    /// Offers HTTP/1.1 by ALPN ([`UPSTREAM_ALPN`]).
    pub config: Arc<rustls::ClientConfig>,
}

impl PartialEq for UpstreamTls {
    /// The same settings load the same configuration.
    fn eq(&self, other: &Self) -> bool {
        self.settings == other.settings
    }
}

impl UpstreamTls {
    /// A worker's own client configuration: the loaded one, with a session cache of its own,
    /// shared by the worker's connections (for resumed handshakes), not by other workers.
    pub fn for_worker(&self) -> Arc<rustls::ClientConfig> {
        let mut config = (*self.config).clone();
        config.resumption = rustls::client::Resumption::default();
        Arc::new(config)
    }
}

/// One upstream: the URL as given and as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub url: String,
    pub uri: Uri,
}

impl GatewayArgs {
    /// The resolved settings: the upstream from `--upstream`, else built from its parts, and
    /// the TLS files loaded; `tls_line` words a TLS error (naming its variable).
    pub(crate) fn resolve(
        self,
        tls_line: impl Fn(&TlsError) -> String,
    ) -> Result<GatewayConfig, String> {
        let upstreams = if self.upstreams.is_empty() {
            let domain = self.upstream_domain.trim_end_matches('/');
            let domain = if domain.contains("://") {
                domain.to_owned()
            } else {
                format!("http://{domain}")
            };
            let url = format!("{domain}:{}{}", self.upstream_port, self.upstream_path);
            let upstream = parse_upstream(&url).map_err(|err| {
                format!(
                    "invalid upstream '{url}' built from M2_DOMAIN, M2_PORT and M2_PATH: {err} (or give --upstream URL)"
                )
            })?;
            vec![upstream]
        } else {
            self.upstreams.clone()
        };
        let tls = self
            .upstream_tls(&upstreams)
            .map_err(|err| tls_line(&err))?;
        Ok(GatewayConfig {
            upstreams,
            timeout: self.timeout,
            retries: self.retries,
            retry_backoff: self.retry_backoff,
            pool_max_idle: self.pool_max_idle,
            forward_behaviour: self.forward_behaviour,
            client: self.client,
            max_upstream_body: self.max_upstream_body,
            tls,
        })
    }

    /// The client TLS settings, loaded as the workers will load them, when an upstream is
    /// `https://` or a TLS flag is given (so a bad file is an error either way).
    fn upstream_tls(&self, upstreams: &[Upstream]) -> Result<Option<UpstreamTls>, TlsError> {
        let identity = match (&self.upstream_client_cert, &self.upstream_client_key) {
            (Some(cert), Some(key)) => Some((
                PemFile::new("--upstream-client-cert", cert),
                PemFile::new("--upstream-client-key", key),
            )),
            (None, None) => None,
            (Some(_), None) => {
                return Err(TlsError::new(
                    "--upstream-client-key",
                    "is needed with --upstream-client-cert",
                ));
            }
            (None, Some(_)) => {
                return Err(TlsError::new(
                    "--upstream-client-cert",
                    "is needed with --upstream-client-key",
                ));
            }
        };
        let settings = ClientSettings {
            ca: self
                .upstream_ca
                .as_ref()
                .map(|ca| PemFile::new("--upstream-ca", ca)),
            identity,
            insecure: self.upstream_insecure,
        };
        let https = upstreams
            .iter()
            .any(|u| u.uri.scheme_str() == Some("https"));
        if !https && settings == ClientSettings::default() {
            return Ok(None);
        }
        let config = client_config(&settings, UPSTREAM_ALPN)?;
        Ok(Some(UpstreamTls { settings, config }))
    }
}

fn parse_upstream(value: &str) -> Result<Upstream, String> {
    let uri: Uri = value.parse().map_err(|err| {
        format!("not a URL ({err}); expected e.g. http://127.0.0.1:3000/v1/avatar")
    })?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => {
            return Err(format!(
                "only http:// and https:// upstreams are supported, not {other}://"
            ));
        }
        None => {
            return Err(
                "expected an absolute URL such as http://127.0.0.1:3000/v1/avatar".to_owned(),
            );
        }
    }
    let Some(host) = uri.host().filter(|host| !host.is_empty()) else {
        return Err("the URL names no host".to_owned());
    };
    // The name an https:// upstream's certificate is verified against (an IP literal
    // against its IP addresses).
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if uri.scheme_str() == Some("https") && ServerName::try_from(bare).is_err() {
        return Err(format!(
            "'{host}' is not a name a certificate can be verified for"
        ));
    }
    Ok(Upstream {
        url: value.to_owned(),
        uri,
    })
}
