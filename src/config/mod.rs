//! Configuration: command-line flags with environment fallbacks (flags win over the
//! environment, which wins over the `DEFAULT_*` constants), validated in full before the
//! server starts. Every bad setting becomes a [`ConfigError`] whose message names it.

use std::net::{IpAddr, Ipv4Addr, ToSocketAddrs};
use std::num::NonZeroUsize;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{Args, Command, CommandFactory, FromArgMatches, Parser, ValueEnum};
use hyper::Uri;

use crate::behaviour::parse::Unknown;
use crate::behaviour::{Controls, Limits};

/// The seed listens on every interface.
pub const DEFAULT_HOST: &str = "0.0.0.0";
/// The seed's port.
pub const DEFAULT_PORT: u16 = 3000;
/// The seed's path.
pub const DEFAULT_PATH: &str = "/v1/avatar";
/// Long enough for any in-flight avatar response, short enough for an orchestrator's grace period.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Long enough for any honest client to send a request head, short enough to shed slowloris.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive connections idle longer than this are closed.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// A write that makes no progress for this long means a client that stopped reading.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest upstream body the gateway reads: far above any answer a load test passes on,
/// far below what would exhaust a container's memory.
pub const DEFAULT_MAX_UPSTREAM_BODY: usize = 16 * 1024 * 1024;

/// The default `--max-delay`, `--max-hang`: long enough for any realistic slow upstream.
pub const DEFAULT_MAX_DELAY: Duration = Duration::from_secs(60);
/// The default `--max-count`: 10,000 avatars is a body of about 1.8 MB.
pub const DEFAULT_MAX_COUNT: u32 = 10_000;

/// Which form the `date` response header takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum DateHeader {
    /// RFC 3339 with nanoseconds, as the seed sends: `2023-04-21T12:40:19.925350124+00:00`.
    #[default]
    Rfc3339,
    /// RFC 9110 IMF-fixdate, for clients and caches that parse `date`: `Fri, 21 Apr 2023 12:40:19 GMT`.
    Http,
}

/// How log lines are written (to stderr).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The address to listen on: the text the user gave (shown in the `Listening on` line) and the
/// IP it resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub name: String,
    pub ip: IpAddr,
}

impl Host {
    /// The host as it goes into a URL: IPv6 literals in brackets.
    pub fn url_form(&self) -> String {
        if self.name.contains(':') {
            format!("[{}]", self.name)
        } else {
            self.name.clone()
        }
    }
}

/// The service's whole configuration.
#[derive(Debug, Clone, PartialEq, Parser)]
#[command(
    name = "microservice2",
    version,
    about = "Answers GET /v1/avatar with the benchmark suite's fixed JSON list of avatars",
    after_help = "Gateway mode (the suite's microservice 1): microservice2 gateway --help\n\
                  Health check for containers: microservice2 healthcheck [URL] (default http://127.0.0.1:$M2_PORT/healthz)"
)]
pub struct Config {
    /// Address to listen on: an IP address or a name that resolves locally.
    #[arg(long, env = "M2_DOMAIN", default_value = DEFAULT_HOST, value_parser = parse_host)]
    pub host: Host,

    /// TCP port to listen on; 0 picks a free one.
    #[arg(long, env = "M2_PORT", default_value_t = DEFAULT_PORT)]
    pub port: u16,

    /// Path that answers the avatar list.
    #[arg(long, env = "M2_PATH", default_value = DEFAULT_PATH, value_parser = parse_path)]
    pub path: String,

    /// Worker threads, each with its own runtime and listener [default: the CPUs this process may use].
    #[arg(long, env = "M2_WORKERS", value_name = "N", value_parser = parse_workers)]
    pub workers: Option<NonZeroUsize>,

    /// How long in-flight requests may take to finish after SIGINT or SIGTERM.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Form of the `date` response header.
    #[arg(long, env = "M2_DATE_HEADER", value_enum, default_value_t = DateHeader::Rfc3339)]
    pub date_header: DateHeader,

    /// Server-wide behaviour profile, e.g. 'delay=lognormal(5ms,50ms)&status=503:1'.
    #[arg(long, env = "M2_BEHAVIOUR", value_name = "CONTROLS")]
    pub behaviour: Option<String>,

    /// Honour the x-m2-behaviour header and behaviour query parameters.
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    pub allow_request_behaviour: bool,

    /// Answer 503 with retry-after: 1 at once above this many requests in flight.
    #[arg(long, value_name = "N", value_parser = parse_workers)]
    pub max_inflight: Option<NonZeroUsize>,

    /// The longest delay, drip or distribution parameter a request may ask for.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub max_delay: Duration,

    /// How long `fault=hang` holds a request before closing it.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub max_hang: Duration,

    /// The most avatars `count=` may ask for.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_COUNT, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_count: u32,

    /// Seed for the workers' random generators, so a run can be replayed.
    #[arg(long, value_name = "N")]
    pub seed: Option<u64>,

    /// Close a connection whose request head takes longer than this to arrive (slowloris).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub header_timeout: Duration,

    /// Close a keep-alive connection idle for this long between requests.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive_duration)]
    pub idle_timeout: Duration,

    /// Close a connection whose pending answer makes no progress for this long (a client that stopped reading).
    #[arg(long, env = "M2_WRITE_TIMEOUT", value_name = "DURATION", default_value = "30s", value_parser = parse_positive_duration)]
    pub write_timeout: Duration,

    /// Serve every request through hyper, without the fast path (for comparisons).
    #[arg(long, env = "M2_NO_FAST_PATH")]
    pub no_fast_path: bool,

    /// Close new connections at once above this many open [default: the open-files limit less 64].
    #[arg(long, env = "M2_MAX_CONNECTIONS", value_name = "N", value_parser = parse_workers)]
    pub max_connections: Option<NonZeroUsize>,

    /// Serve /healthz, /readyz and /metrics on this port instead of the main one.
    #[arg(long, env = "M2_ADMIN_PORT", value_name = "PORT")]
    pub admin_port: Option<u16>,

    /// After SIGTERM, keep serving this long with /readyz answering 503, then drain.
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub shutdown_delay: Duration,

    /// Record no metrics (and answer 404 on /metrics).
    #[arg(long)]
    pub no_metrics: bool,

    /// Also accept HTTP/2 with prior knowledge (h2c) on the same port.
    #[arg(long, env = "M2_HTTP2")]
    pub http2: bool,

    /// Log line format; RUST_LOG filters (default: info).
    #[arg(long, env = "M2_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log one line per request: method, path, status, duration, bytes.
    #[arg(long)]
    pub access_log: bool,

    /// With --access-log, log this fraction of requests (for high rates).
    #[arg(long, value_name = "RATIO", default_value_t = 1.0, value_parser = parse_ratio)]
    pub access_log_sample: f64,

    /// The parsed `--behaviour` profile (filled in by [`Config::from_args`]).
    #[arg(skip)]
    pub profile: Controls,

    /// Gateway mode's settings: set when the first argument is `gateway`.
    #[arg(skip)]
    pub gateway: Option<GatewayConfig>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            host: Host {
                name: DEFAULT_HOST.to_owned(),
                ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            },
            port: DEFAULT_PORT,
            path: DEFAULT_PATH.to_owned(),
            workers: None,
            shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
            date_header: DateHeader::Rfc3339,
            behaviour: None,
            allow_request_behaviour: true,
            max_inflight: None,
            max_delay: DEFAULT_MAX_DELAY,
            max_hang: DEFAULT_MAX_DELAY,
            max_count: DEFAULT_MAX_COUNT,
            seed: None,
            header_timeout: DEFAULT_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            write_timeout: DEFAULT_WRITE_TIMEOUT,
            no_fast_path: false,
            max_connections: None,
            admin_port: None,
            shutdown_delay: Duration::ZERO,
            no_metrics: false,
            http2: false,
            log_format: LogFormat::Text,
            access_log: false,
            access_log_sample: 1.0,
            profile: Controls::default(),
            gateway: None,
        }
    }
}

/// What parsing the command line produced when it did not produce a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--help` or `--version`: print the text and exit successfully.
    #[error("{0}")]
    Info(String),
    /// A bad setting: one line naming it.
    #[error("{0}")]
    Invalid(String),
}

impl Config {
    /// Parses flags (the first item is the program name) with environment fallbacks. When
    /// the first argument is `gateway`, parses gateway mode's flags instead.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
        let gateway = args.get(1).is_some_and(|arg| arg == "gateway");
        let mut command = if gateway {
            args.remove(1);
            gateway_command()
        } else {
            Config::command()
        };
        let invalid = |err: clap::Error, command: &Command| match err.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                ConfigError::Info(err.render().to_string())
            }
            _ => ConfigError::Invalid(one_line(&err, command)),
        };
        let matches = command
            .try_get_matches_from_mut(args)
            .map_err(|err| invalid(err, &command))?;
        let mut config =
            Config::from_arg_matches(&matches).map_err(|err| invalid(err, &command))?;
        if gateway {
            let args =
                GatewayArgs::from_arg_matches(&matches).map_err(|err| invalid(err, &command))?;
            config.gateway = Some(args.into_config().map_err(ConfigError::Invalid)?);
        }
        if let Some(text) = &config.behaviour {
            // M2_BEHAVIOUR, or M1_BEHAVIOUR in gateway mode: whatever the command says.
            let env = env_name_of("--behaviour", &command).unwrap_or_default();
            config.profile = Controls::parse(text, &config.limits(), Unknown::Reject)
                .and_then(|profile| {
                    // The longest body the profile could pace: the upstream's, in gateway mode.
                    let longest = match (&config.gateway, profile.count) {
                        (Some(_), Some(_)) => {
                            return Err(crate::behaviour::BehaviourError::new(
                                "count",
                                "no count: the gateway passes the upstream's body on",
                            ));
                        }
                        (Some(gateway), None) => gateway.max_upstream_body,
                        (None, Some(count)) => crate::routes::avatar::list(count).len(),
                        (None, None) => crate::routes::avatar::TEMPLATE.len(),
                    };
                    profile.check_rate(longest, &config.limits())?;
                    Ok(profile)
                })
                .map_err(|err| {
                    ConfigError::Invalid(format!(
                        "invalid value '{text}' for '--behaviour <CONTROLS>': {err} (flag or env {env})"
                    ))
                })?;
        }
        Ok(config)
    }

    /// The bounds behaviour controls are checked against.
    pub fn limits(&self) -> Limits {
        Limits {
            max_delay: self.max_delay,
            max_count: self.max_count,
        }
    }

    /// The most connections served at once: `--max-connections`, or the process's soft limit
    /// on open files less a reserve for listeners, logs and the admin port.
    pub fn connection_limit(&self) -> usize {
        /// File descriptors kept free for everything that is not a client connection.
        const RESERVE: usize = 64;
        self.max_connections.map_or_else(
            || open_files_limit().map_or(usize::MAX, |limit| limit.saturating_sub(RESERVE).max(1)),
            NonZeroUsize::get,
        )
    }

    /// Whether every request can take the fast path's fixed answer: no server-wide profile
    /// and no load shedding, which both need each request counted and planned, and no
    /// `--no-fast-path`.
    pub fn fast_path_allowed(&self) -> bool {
        self.profile.is_empty() && self.max_inflight.is_none() && !self.no_fast_path
    }

    /// The number of workers to run: the configured count, or the CPUs this process may use
    /// (`available_parallelism` honours the affinity mask and the cgroup CPU quota).
    pub fn worker_count(&self) -> usize {
        self.workers
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

/// Gateway mode's defaults: the suite's microservice 1 listens on 8080 and serves `/v1/user`.
pub const GATEWAY_PORT: &str = "8080";
pub const GATEWAY_PATH: &str = "/v1/user";

/// In gateway mode the `M2_*` variables describe the upstream, so the gateway's own settings
/// read `M1_*` ones: (argument, variable).
const GATEWAY_ENV: [(&str, &str); 12] = [
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
];

/// `microservice2 gateway`: the serve mode's flags with the gateway's defaults and `M1_*`
/// variables, plus the upstream and failure-policy flags.
fn gateway_command() -> Command {
    let command = Config::command()
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
struct GatewayArgs {
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
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_positive_duration)]
    timeout: Duration,

    /// Retry connect errors and 502/503/504 answers this many times.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    retries: u32,

    /// First pause between retries; it doubles each time, with jitter.
    #[arg(long, value_name = "DURATION", default_value = "10ms", value_parser = parse_duration)]
    retry_backoff: Duration,

    /// Idle keep-alive connections each worker keeps per upstream host.
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pool_max_idle: usize,

    /// Pass the caller's x-m2-behaviour header and behaviour query parameters to the upstream.
    #[arg(long)]
    forward_behaviour: bool,

    /// HTTP/1.1 client for upstream calls: hyper-util's pooled client, or the lean built-in one
    /// (same pooling and failure policy, about a third of the instructions per call).
    #[arg(long, env = "M1_CLIENT", value_name = "CLIENT", value_enum, default_value_t = ClientKind::HyperUtil)]
    client: ClientKind,

    /// Refuse (502) an upstream answer whose body is larger than this: bytes, or with KiB, MiB, GiB, kB, MB, GB.
    #[arg(long, env = "M1_MAX_UPSTREAM_BODY", value_name = "SIZE", default_value = "16MiB", value_parser = parse_size)]
    max_upstream_body: usize,
}

/// The HTTP/1.1 client the gateway calls its upstreams with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// hyper-util's pooled client (`client::legacy::Client`).
    HyperUtil,
    /// the gateway's own keep-alive client (`microservice2::gateway::lean`).
    Lean,
}

impl GatewayArgs {
    fn into_config(self) -> Result<GatewayConfig, String> {
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
            self.upstreams
        };
        Ok(GatewayConfig {
            upstreams,
            timeout: self.timeout,
            retries: self.retries,
            retry_backoff: self.retry_backoff,
            pool_max_idle: self.pool_max_idle,
            forward_behaviour: self.forward_behaviour,
            client: self.client,
            max_upstream_body: self.max_upstream_body,
        })
    }
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
}

/// One upstream: the URL as given and as parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    pub url: String,
    pub uri: Uri,
}

fn parse_upstream(value: &str) -> Result<Upstream, String> {
    let uri: Uri = value.parse().map_err(|err| {
        format!("not a URL ({err}); expected e.g. http://127.0.0.1:3000/v1/avatar")
    })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => {
            return Err(format!(
                "only http:// upstreams are supported, not {other}://"
            ));
        }
        None => {
            return Err(
                "expected an absolute URL such as http://127.0.0.1:3000/v1/avatar".to_owned(),
            );
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err("the URL names no host".to_owned());
    }
    Ok(Upstream {
        url: value.to_owned(),
        uri,
    })
}

/// Reduces a clap error to one line, adding the environment variable behind the flag when
/// it has one, so `M2_PORT=abc` is named as such.
fn one_line(err: &clap::Error, command: &Command) -> String {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut line = first.to_owned();
    // Clap lists the accepted values of a choice on a line of its own: keep them on this one.
    if let Some(ContextValue::Strings(values)) = err.get(ContextKind::ValidValue) {
        line.push_str(&format!("; expected one of: {}", values.join(", ")));
    }
    if let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) {
        if let Some(env) = env_name_of(arg, command) {
            line.push_str(&format!(" (flag or env {env})"));
        }
    }
    line
}

/// The environment variable of the argument clap renders as `arg` (`--port <PORT>`).
fn env_name_of(arg: &str, command: &Command) -> Option<String> {
    let long = arg.strip_prefix("--")?.split([' ', '=']).next()?;
    command
        .get_arguments()
        .find(|a| a.get_long() == Some(long))
        .and_then(|a| a.get_env())
        .map(|env| env.to_string_lossy().into_owned())
}

/// The soft limit on open files, from /proc/self/limits (`None` when unlimited or unknown).
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
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

/// Paths the service keeps for itself.
pub const RESERVED_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

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

fn parse_workers(value: &str) -> Result<NonZeroUsize, String> {
    match value.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_owned()),
        Ok(n) => NonZeroUsize::new(n).ok_or_else(|| "must be at least 1".to_owned()),
        Err(_) => Err("expected a whole number of workers".to_owned()),
    }
}

fn parse_positive_duration(value: &str) -> Result<Duration, String> {
    match parse_duration(value)? {
        duration if duration.is_zero() => Err("must be more than 0".to_owned()),
        duration => Ok(duration),
    }
}

fn parse_ratio(value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(ratio) if ratio > 0.0 && ratio <= 1.0 => Ok(ratio),
        _ => Err("expected a fraction above 0 and at most 1, such as 0.01".to_owned()),
    }
}

/// Parses a size in bytes: `512`, `64KiB`, `16MiB`, `1GiB`, or decimal `kB`, `MB`, `GB`; at
/// least 1 byte, at most 1 TiB.
pub fn parse_size(value: &str) -> Result<usize, String> {
    const EXPECTED: &str = "expected a size such as 512, 64KiB, 16MiB or 1GiB";
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let multiplier: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return Err(EXPECTED.to_owned()),
    };
    let number: u64 = number.parse().map_err(|_| EXPECTED.to_owned())?;
    match number.checked_mul(multiplier) {
        Some(0) => Err("must be at least 1 byte".to_owned()),
        Some(bytes) if bytes <= 1 << 40 => usize::try_from(bytes).map_err(|_| EXPECTED.to_owned()),
        _ => Err("at most 1TiB".to_owned()),
    }
}

/// Parses a duration such as `10s`, `250ms`, `1.5s`, `150us`, `2m` or `1h`.
pub fn parse_duration(value: &str) -> Result<Duration, String> {
    const EXPECTED: &str =
        "expected a number with a unit: ns, us, ms, s, m or h (e.g. 250ms, 1.5s)";
    let split = value
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| EXPECTED.to_owned())?;
    let (number, unit) = value.split_at(split);
    let nanos_per_unit: f64 = match unit {
        "ns" => 1.0,
        "us" | "µs" => 1e3,
        "ms" => 1e6,
        "s" => 1e9,
        "m" => 60e9,
        "h" => 3600e9,
        _ => return Err(EXPECTED.to_owned()),
    };
    let number: f64 = number.parse().map_err(|_| EXPECTED.to_owned())?;
    let nanos = number * nanos_per_unit;
    // A year is far beyond any timeout or delay this service has a use for.
    if !nanos.is_finite() || nanos > 365.0 * 86_400e9 {
        return Err("duration too large".to_owned());
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(std::iter::once("microservice2").chain(args.iter().copied()))
    }

    fn invalid(args: &[&str]) -> String {
        match parse(args) {
            Err(ConfigError::Invalid(message)) => message,
            other => panic!("expected an invalid configuration, got {other:?}"),
        }
    }

    #[test]
    fn default_struct_matches_parsed_defaults() {
        // Holds only while no M2_* variable is set, which is how tests run.
        if std::env::vars().any(|(k, _)| k.starts_with("M2_")) {
            return;
        }
        assert_eq!(parse(&[]).expect("defaults parse"), Config::default());
    }

    #[test]
    fn flags_are_parsed() {
        let config = parse(&[
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--path",
            "/x",
            "--workers",
            "3",
            "--shutdown-timeout",
            "1.5s",
            "--date-header",
            "http",
        ])
        .expect("valid flags");
        assert_eq!(config.host.ip, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(config.port, 0);
        assert_eq!(config.path, "/x");
        assert_eq!(config.worker_count(), 3);
        assert_eq!(config.shutdown_timeout, Duration::from_millis(1500));
        assert_eq!(config.date_header, DateHeader::Http);
    }

    #[test]
    fn each_bad_setting_is_named_on_one_line() {
        for (args, needle) in [
            (&["--port", "70000"][..], "--port"),
            (&["--path", "v1"][..], "--path"),
            (&["--path", "/a b"][..], "--path"),
            (&["--path", "/metrics"][..], "--path"),
            (&["--path", "/healthz"][..], "--path"),
            (&["--shutdown-delay", "x"][..], "--shutdown-delay"),
            (&["--admin-port", "70000"][..], "--admin-port"),
            (&["--log-format", "xml"][..], "--log-format"),
            (&["--header-timeout", "0s"][..], "--header-timeout"),
            (&["--idle-timeout", "soon"][..], "--idle-timeout"),
            (&["--access-log-sample", "0"][..], "--access-log-sample"),
            (&["--access-log-sample", "1.5"][..], "--access-log-sample"),
            (&["--workers", "0"][..], "--workers"),
            (&["--shutdown-timeout", "soon"][..], "--shutdown-timeout"),
            (&["--date-header", "iso"][..], "--date-header"),
            (&["--host", "no such host.invalid"][..], "--host"),
            (&["--bogus"][..], "--bogus"),
            (&["--behaviour", "delay=abc"][..], "--behaviour"),
            (&["--behaviour", "colour=blue"][..], "--behaviour"),
            (
                &["--max-delay", "1s", "--behaviour", "delay=2s"][..],
                "--behaviour",
            ),
            (&["--max-count", "0"][..], "--max-count"),
            (&["--max-inflight", "0"][..], "--max-inflight"),
            (
                &["--allow-request-behaviour", "maybe"][..],
                "--allow-request-behaviour",
            ),
            (&["--seed", "x"][..], "--seed"),
            (&["--write-timeout", "0s"][..], "--write-timeout"),
            (&["--write-timeout", "soon"][..], "--write-timeout"),
            (&["--behaviour", "rate=1"][..], "rate"),
            (&["--behaviour", "count=10000&rate=10kB"][..], "rate"),
        ] {
            let message = invalid(args);
            assert!(message.contains(needle), "{args:?}: {message}");
            assert!(!message.contains('\n'), "{args:?}: {message}");
        }
    }

    #[test]
    fn a_bad_value_names_the_environment_variable_too() {
        assert!(invalid(&["--port", "abc"]).contains("M2_PORT"));
    }

    #[test]
    fn help_and_version_are_information_not_errors() {
        assert!(matches!(parse(&["--help"]), Err(ConfigError::Info(_))));
        assert!(matches!(parse(&["--version"]), Err(ConfigError::Info(_))));
    }

    #[test]
    fn durations_take_every_unit() {
        for (text, expected) in [
            ("150us", Duration::from_micros(150)),
            ("250ms", Duration::from_millis(250)),
            ("1.5s", Duration::from_millis(1500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("0s", Duration::ZERO),
            ("10ns", Duration::from_nanos(10)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
        for bad in [
            "", "10", "s", "1.2.3s", "-1s", "1 s", "1d", "1e400s", "9999999h",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn the_connection_limit_defaults_to_the_open_files_limit_less_a_reserve() {
        let config = Config::default();
        let limit = open_files_limit().expect("Linux reports its open-files limit");
        assert_eq!(config.connection_limit(), limit - 64);
        let config = Config {
            max_connections: NonZeroUsize::new(7),
            ..Config::default()
        };
        assert_eq!(config.connection_limit(), 7);
    }

    #[test]
    fn gateway_mode_has_the_suites_defaults() {
        if std::env::vars().any(|(k, _)| k.starts_with("M1_") || k.starts_with("M2_")) {
            return;
        }
        let config = parse(&["gateway"]).expect("defaults parse");
        assert_eq!(config.port, 8080);
        assert_eq!(config.path, "/v1/user");
        assert!(config.fast_path_allowed());
        let gateway = config.gateway.expect("gateway mode");
        assert_eq!(gateway.upstreams.len(), 1);
        assert_eq!(gateway.upstreams[0].url, "http://127.0.0.1:3000/v1/avatar");
        assert_eq!(gateway.timeout, Duration::from_secs(1));
        assert_eq!(gateway.retries, 0);
        assert_eq!(gateway.retry_backoff, Duration::from_millis(10));
        assert!(!gateway.forward_behaviour);
        assert_eq!(gateway.client, ClientKind::HyperUtil);
        assert!(parse(&[]).expect("serve mode").gateway.is_none());
        let lean = parse(&["gateway", "--client", "lean"]).expect("lean client");
        assert_eq!(lean.gateway.map(|g| g.client), Some(ClientKind::Lean));
    }

    #[test]
    fn gateway_upstreams_come_from_flags_or_the_suites_parts() {
        let config = parse(&[
            "gateway",
            "--upstream",
            "http://a:1/x,http://b:2/y",
            "--upstream",
            "http://[::1]:3/z?count=2",
        ])
        .expect("valid upstreams");
        let urls: Vec<String> = config
            .gateway
            .expect("gateway mode")
            .upstreams
            .into_iter()
            .map(|u| u.url)
            .collect();
        assert_eq!(
            urls,
            ["http://a:1/x", "http://b:2/y", "http://[::1]:3/z?count=2"]
        );
        let config = parse(&[
            "gateway",
            "--upstream-domain",
            "m2",
            "--upstream-port",
            "4000",
            "--upstream-path",
            "/avatars",
        ])
        .expect("valid parts");
        let upstream = &config.gateway.expect("gateway mode").upstreams[0];
        assert_eq!(upstream.url, "http://m2:4000/avatars");
        assert_eq!(upstream.uri.host(), Some("m2"));
    }

    #[test]
    fn gateway_settings_are_named_with_their_m1_or_m2_variables() {
        for (args, needles) in [
            (&["gateway", "--port", "x"][..], &["--port", "M1_PORT"][..]),
            (&["gateway", "--path", "v1"][..], &["--path", "M1_PATH"][..]),
            (&["gateway", "--upstream-port", "x"][..], &["M2_PORT"][..]),
            (
                &["gateway", "--upstream", "https://a/"][..],
                &["--upstream", "https"][..],
            ),
            (
                &["gateway", "--upstream", "/v1/avatar"][..],
                &["--upstream", "absolute"][..],
            ),
            (
                &["gateway", "--upstream", "http://a b/"][..],
                &["--upstream"][..],
            ),
            (
                &["gateway", "--upstream-domain", "http://a:1"][..],
                &["M2_DOMAIN"][..],
            ),
            (&["gateway", "--timeout", "0s"][..], &["--timeout"][..]),
            (&["gateway", "--retries", "101"][..], &["--retries"][..]),
            (
                &["gateway", "--retry-backoff", "x"][..],
                &["--retry-backoff"][..],
            ),
            (
                &["gateway", "--pool-max-idle", "x"][..],
                &["--pool-max-idle"][..],
            ),
            (
                &["gateway", "--client", "curl"][..],
                &["--client", "M1_CLIENT", "hyper-util", "lean"][..],
            ),
            (
                &["gateway", "--behaviour", "count=3"][..],
                &["count", "M1_BEHAVIOUR"][..],
            ),
            (&["--upstream", "http://a/"][..], &["--upstream"][..]),
            (
                &["gateway", "--max-upstream-body", "0"][..],
                &["--max-upstream-body", "M1_MAX_UPSTREAM_BODY"][..],
            ),
            (
                &["gateway", "--max-upstream-body", "16mb"][..],
                &["--max-upstream-body"][..],
            ),
            (
                &["gateway", "--write-timeout", "0s"][..],
                &["--write-timeout", "M1_WRITE_TIMEOUT"][..],
            ),
            // The gateway paces a body as large as --max-upstream-body (16 MiB).
            (
                &["gateway", "--behaviour", "rate=64KiB"][..],
                &["rate", "M1_BEHAVIOUR"][..],
            ),
        ] {
            let message = invalid(args);
            for needle in needles {
                assert!(message.contains(needle), "{args:?}: {message}");
            }
            assert!(!message.contains('\n'), "{args:?}: {message}");
        }
    }

    #[test]
    fn gateway_help_lists_the_upstream_flags() {
        match parse(&["gateway", "--help"]) {
            Err(ConfigError::Info(text)) => {
                for flag in [
                    "--upstream",
                    "--timeout",
                    "--retries",
                    "--forward-behaviour",
                    "--client",
                    "M1_PORT",
                ] {
                    assert!(text.contains(flag), "{flag} missing from:\n{text}");
                }
            }
            other => panic!("expected help, got {other:?}"),
        }
        match parse(&["--help"]) {
            Err(ConfigError::Info(text)) => assert!(text.contains("gateway --help")),
            other => panic!("expected help, got {other:?}"),
        }
    }

    #[test]
    fn sizes_take_binary_and_decimal_units() {
        for (text, expected) in [
            ("512", 512),
            ("1B", 1),
            ("64KiB", 64 * 1024),
            ("16MiB", 16 << 20),
            ("1GiB", 1 << 30),
            ("2kB", 2_000),
            ("3MB", 3_000_000),
            ("1GB", 1_000_000_000),
        ] {
            assert_eq!(parse_size(text), Ok(expected), "{text}");
        }
        for bad in [
            "",
            "0",
            "0MiB",
            "-1",
            "1.5MiB",
            "16 MiB",
            "16mib",
            "2TiB",
            "99999999999GB",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn the_new_limits_have_their_defaults() {
        let config = parse(&["--port", "0"]).expect("defaults");
        assert_eq!(config.write_timeout, DEFAULT_WRITE_TIMEOUT);
        assert!(!config.no_fast_path && config.fast_path_allowed());
        assert!(
            !parse(&["--no-fast-path"])
                .expect("valid")
                .fast_path_allowed()
        );
        let gateway = parse(&["gateway"]).expect("defaults").gateway;
        assert_eq!(
            gateway.map(|g| g.max_upstream_body),
            Some(DEFAULT_MAX_UPSTREAM_BODY)
        );
        let faster = parse(&["gateway", "--behaviour", "rate=1MiB"]).expect("16 s of 16 MiB");
        assert_eq!(faster.profile.rate, Some(1 << 20));
    }

    #[test]
    fn ipv6_hosts_are_bracketed_in_urls() {
        assert_eq!(parse_host("::1").expect("literal").url_form(), "[::1]");
        assert_eq!(
            parse_host("127.0.0.1").expect("literal").url_form(),
            "127.0.0.1"
        );
    }
}
