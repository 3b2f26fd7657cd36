//! Configuration in two stages: the command line as parsed (`cli.rs`, and `gateway.rs` for
//! gateway mode), then the resolved [`Config`] the server runs with, validated in full before
//! it starts. Flags win over environment variables ([`env`](mod@env), an input like any other), which
//! win over the defaults written in the flags' definitions. Every bad setting becomes a
//! [`ConfigError`] whose one line names it.

pub(crate) mod cli;
pub mod env;
pub(crate) mod gateway;
pub(crate) mod size;

use std::ffi::OsString;
use std::io::Read as _;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use clap::error::{ContextKind, ContextValue, ErrorKind};
use clap::{CommandFactory, FromArgMatches, ValueEnum};
use hyper::header::HeaderName;

use crate::avatar;
use crate::behaviour::parse::Unknown;
use crate::behaviour::scenario::Scenario;
use crate::behaviour::{BehaviourError, Controls, Limits};
use crate::time::DateHeader;
use crate::tls::{PemFile, ServerSettings, ServerTls, TlsError};
use cli::ServeArgs;
pub use cli::{HEALTHZ, METRICS, READYZ, RESERVED_PATHS};
use env::{Binding, Env, ProcessEnv};
pub use gateway::{ClientKind, GatewayConfig, Upstream, UpstreamTls};

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

/// The service's whole configuration, resolved: what the server runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub host: Host,
    pub port: u16,
    pub path: String,
    pub workers: Option<NonZeroUsize>,
    pub shutdown_timeout: Duration,
    pub date_header: DateHeader,
    /// `--behaviour` as written (for the start-up log line), and as parsed.
    pub behaviour: Option<String>,
    pub profile: Controls,
    pub allow_request_behaviour: bool,
    pub max_inflight: Option<NonZeroUsize>,
    pub max_delay: Duration,
    pub max_hang: Duration,
    pub max_count: u32,
    pub seed: Option<u64>,
    /// `fail-first=N`: the header naming a request's attempts, how many request ids are
    /// remembered, and for how long from the first attempt.
    pub attempt_header: HeaderName,
    pub attempt_keys: u32,
    pub attempt_ttl: Duration,
    pub header_timeout: Duration,
    pub idle_timeout: Duration,
    pub write_timeout: Duration,
    pub no_fast_path: bool,
    /// `--defer-accept`: the main port's connections are accepted once they have sent
    /// something (`TCP_DEFER_ACCEPT`).
    pub defer_accept: bool,
    pub max_connections: Option<NonZeroUsize>,
    pub admin_port: Option<u16>,
    pub shutdown_delay: Duration,
    pub no_metrics: bool,
    pub http2: bool,
    /// `--server-timing`: the main path's answers say what was injected and how long it took.
    pub server_timing: bool,
    /// `--control`: the control API (`/admin/*`) may change the server-wide behaviour.
    pub control: bool,
    /// `--control-token`: the bearer token `/admin/*` requires.
    pub control_token: Option<String>,
    /// `--scenario`: the phases the server-wide behaviour goes through, loaded and checked.
    pub scenario: Option<Arc<Scenario>>,
    pub log_format: LogFormat,
    pub access_log: bool,
    pub access_log_sample: f64,
    /// `--tls-cert` and the rest: serve HTTPS. Checked to load when the config is resolved.
    pub tls: Option<ServerSettings>,
    /// Gateway mode's settings: set when the first argument is `gateway`.
    pub gateway: Option<GatewayConfig>,
}

impl Default for Config {
    /// Every default, as the flags define them (no environment read).
    fn default() -> Self {
        Config::from_args_env(["microservice2"], &env::NoEnv).expect("the defaults are valid")
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
    /// Parses flags (the first item is the program name) with the process's environment as
    /// fallback. When the first argument is `gateway`, parses gateway mode's flags instead.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        Config::from_args_env(args, &ProcessEnv)
    }

    /// [`Config::from_args`] with the environment read from `env`.
    pub fn from_args_env<I, T>(args: I, env: &dyn Env) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let is_gateway = args.get(1).is_some_and(|arg| arg == "gateway");
        let full = if is_gateway {
            args.remove(1);
            gateway::command()
        } else {
            ServeArgs::command()
        };
        let (mut command, bindings) = env::unbind(full.clone());
        let long_help = args.iter().any(|arg| arg == "--help");
        let invalid = |err: clap::Error| match err.kind() {
            // Help is rendered from the whole command, which names each flag's variable.
            ErrorKind::DisplayHelp => {
                let mut full = full.clone();
                let help = if long_help {
                    full.render_long_help()
                } else {
                    full.render_help()
                };
                ConfigError::Info(help.to_string())
            }
            ErrorKind::DisplayVersion => ConfigError::Info(err.render().to_string()),
            _ => ConfigError::Invalid(one_line(&err, &bindings)),
        };
        let matches = command
            .try_get_matches_from_mut(args.clone())
            .map_err(invalid)?;
        let from_env = env::as_args(&bindings, &matches, env).map_err(ConfigError::Invalid)?;
        let matches = if from_env.is_empty() {
            matches
        } else {
            args.extend(from_env);
            command
                .try_get_matches_from_mut(args.clone())
                .map_err(invalid)?
        };
        let parsed = ServeArgs::from_arg_matches(&matches).map_err(invalid)?;
        let gateway = if is_gateway {
            let args = gateway::GatewayArgs::from_arg_matches(&matches).map_err(invalid)?;
            let resolved = args.resolve(|err| tls_line(err, &bindings));
            Some(resolved.map_err(ConfigError::Invalid)?)
        } else {
            None
        };
        let tls = tls_settings(&parsed, given(&matches, "tls_alpn"))
            .map_err(|err| ConfigError::Invalid(tls_line(&err, &bindings)))?;
        Config::resolve(parsed, tls, gateway, &bindings).map_err(ConfigError::Invalid)
    }

    /// The resolved configuration: the profile parsed and bounded, the scenario loaded. The
    /// error is one line naming the setting.
    fn resolve(
        args: ServeArgs,
        tls: Option<ServerSettings>,
        gateway: Option<GatewayConfig>,
        bindings: &[Binding],
    ) -> Result<Config, String> {
        let var = |flag: &str| env::var_of(flag, bindings).unwrap_or_default();
        let check = ProfileCheck {
            limits: Limits {
                max_delay: args.max_delay,
                max_count: args.max_count,
            },
            upstream_body: gateway.as_ref().map(|gateway| gateway.max_upstream_body),
        };
        let profile = match &args.behaviour {
            Some(text) => check.check(text).map_err(|err| {
                format!(
                    "invalid value '{text}' for '--behaviour <CONTROLS>': {err} (flag or env {})",
                    var("--behaviour")
                )
            })?,
            None => Controls::default(),
        };
        if args.control_token.is_some() && !args.control {
            return Err(format!(
                "--control-token needs --control (flag or env {})",
                var("--control")
            ));
        }
        let scenario = match &args.scenario {
            Some(path) => Some(Arc::new(load_scenario(path, &check).map_err(|err| {
                format!(
                    "invalid value '{}' for '--scenario <FILE>': {err} (flag or env {})",
                    path.display(),
                    var("--scenario")
                )
            })?)),
            None => None,
        };
        Ok(Config {
            host: args.host,
            port: args.port,
            path: args.path,
            workers: args.workers,
            shutdown_timeout: args.shutdown_timeout,
            date_header: args.date_header,
            behaviour: args.behaviour,
            profile,
            allow_request_behaviour: args.allow_request_behaviour,
            max_inflight: args.max_inflight,
            max_delay: args.max_delay,
            max_hang: args.max_hang,
            max_count: args.max_count,
            seed: args.seed,
            attempt_header: args.attempt_header,
            attempt_keys: args.attempt_keys,
            attempt_ttl: args.attempt_ttl,
            header_timeout: args.header_timeout,
            idle_timeout: args.idle_timeout,
            write_timeout: args.write_timeout,
            no_fast_path: args.no_fast_path,
            defer_accept: args.defer_accept,
            max_connections: args.max_connections,
            admin_port: args.admin_port,
            shutdown_delay: args.shutdown_delay,
            no_metrics: args.no_metrics,
            http2: args.http2,
            server_timing: args.server_timing,
            control: args.control,
            control_token: args.control_token,
            scenario,
            log_format: args.log_format,
            access_log: args.access_log,
            access_log_sample: args.access_log_sample,
            tls,
            gateway,
        })
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

    /// Whether connections start on the fast path: not with `--no-fast-path`, nor with
    /// `--server-timing` (its headers are per request). In serve mode the fast path plans
    /// behaviour and sheds load itself; a gateway's fast path only calls the upstream, so a
    /// gateway needs no server-wide profile (or one that can change: then each batch asks
    /// whether it is empty now) and no load shedding.
    pub fn fast_path_allowed(&self) -> bool {
        let gateway_plain = self.gateway.is_none()
            || ((self.profile.is_empty() || self.behaviour_changes())
                && self.max_inflight.is_none());
        gateway_plain && !self.no_fast_path && !self.server_timing
    }

    /// Whether the server-wide behaviour can change while the server runs: by the control API
    /// or a scenario.
    pub fn behaviour_changes(&self) -> bool {
        self.control || self.scenario.is_some()
    }

    /// How a behaviour profile given while the server runs is checked: as `--behaviour` is.
    pub fn profile_check(&self) -> ProfileCheck {
        ProfileCheck {
            limits: self.limits(),
            upstream_body: self
                .gateway
                .as_ref()
                .map(|gateway| gateway.max_upstream_body),
        }
    }

    /// The number of workers to run: the configured count, or the CPUs this process may use
    /// (`available_parallelism` honours the affinity mask and the cgroup CPU quota).
    pub fn worker_count(&self) -> usize {
        self.workers
            .or_else(|| std::thread::available_parallelism().ok())
            .map_or(1, NonZeroUsize::get)
    }
}

/// How a server-wide behaviour profile is checked (`--behaviour`, the control API, each
/// phase of a scenario): parsed, and its `rate` bounded by the longest body it could pace
/// (the upstream's, in gateway mode, where `count` has no place).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileCheck {
    limits: Limits,
    /// Gateway mode: `--max-upstream-body`.
    upstream_body: Option<usize>,
}

impl ProfileCheck {
    pub fn check(&self, text: &str) -> Result<Controls, BehaviourError> {
        let profile = Controls::parse(text, &self.limits, Unknown::Reject)?;
        let longest = match (self.upstream_body, profile.count) {
            (Some(_), Some(_)) => {
                return Err(BehaviourError::new(
                    "count",
                    "no count: the gateway passes the upstream's body on",
                ));
            }
            (Some(body), None) => body,
            (None, Some(count)) => avatar::list(count).len(),
            (None, None) => avatar::TEMPLATE.len(),
        };
        profile.check_rate(longest, &self.limits)?;
        Ok(profile)
    }
}

/// The largest scenario file read.
const MAX_SCENARIO_FILE: u64 = 1024 * 1024;

/// Reads and checks a `--scenario` file.
fn load_scenario(path: &Path, check: &ProfileCheck) -> Result<Scenario, String> {
    let file = std::fs::File::open(path).map_err(|err| format!("cannot read it: {err}"))?;
    if file.metadata().is_ok_and(|metadata| metadata.is_dir()) {
        return Err("a directory, not a file".to_owned());
    }
    let mut text = String::new();
    file.take(MAX_SCENARIO_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|err| format!("cannot read it as UTF-8 text: {err}"))?;
    if text.len() as u64 > MAX_SCENARIO_FILE {
        return Err("larger than 1 MiB".to_owned());
    }
    Scenario::parse(&text, &|profile| check.check(profile)).map_err(|err| err.to_string())
}

/// The TLS settings, when `--tls-cert` and `--tls-key` are both given, checked by loading
/// them as the server will: files that cannot be read, a key that does not match, a CA file
/// with no usable certificate are errors naming their flag.
fn tls_settings(args: &ServeArgs, alpn_given: bool) -> Result<Option<ServerSettings>, TlsError> {
    let (cert, key) = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => (cert, key),
        (None, None) => {
            if args.tls_client_ca.is_some() {
                return Err(TlsError::new(
                    "--tls-client-ca",
                    "needs --tls-cert and --tls-key: client certificates are a TLS setting",
                ));
            }
            if alpn_given {
                return Err(TlsError::new(
                    "--tls-alpn",
                    "needs --tls-cert and --tls-key: ALPN is a TLS setting",
                ));
            }
            return Ok(None);
        }
        (Some(_), None) => return Err(TlsError::new("--tls-key", "is needed with --tls-cert")),
        (None, Some(_)) => return Err(TlsError::new("--tls-cert", "is needed with --tls-key")),
    };
    let settings = ServerSettings {
        cert: PemFile::new("--tls-cert", cert),
        key: PemFile::new("--tls-key", key),
        client_ca: args
            .tls_client_ca
            .as_ref()
            .map(|ca| PemFile::new("--tls-client-ca", ca)),
        alpn: args.tls_alpn.0.clone(),
    };
    ServerTls::new(&settings)?;
    Ok(Some(settings))
}

/// A TLS setting's error as one line naming its flag and variable.
fn tls_line(err: &TlsError, bindings: &[Binding]) -> String {
    let var = env::var_of(err.flag, bindings).unwrap_or_default();
    format!("{} {err} (flag or env {var})", err.flag)
}

/// Whether the argument `id` was given (on the command line or, fed in as an argument, by its
/// environment variable) rather than left at its default.
fn given(matches: &clap::ArgMatches, id: &str) -> bool {
    matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
}

/// Reduces a clap error to one line, adding the environment variable behind the flag when
/// it has one, so `M2_PORT=abc` is named as such.
fn one_line(err: &clap::Error, bindings: &[Binding]) -> String {
    let rendered = err.render().to_string();
    let first = rendered.lines().next().unwrap_or("invalid arguments");
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let mut line = first.to_owned();
    // Clap lists the accepted values of a choice on a line of its own: keep them on this one.
    if let Some(ContextValue::Strings(values)) = err.get(ContextKind::ValidValue) {
        line.push_str(&format!("; expected one of: {}", values.join(", ")));
    }
    if let Some(ContextValue::String(arg)) = err.get(ContextKind::InvalidArg) {
        if let Some(var) = env::var_of(arg, bindings) {
            line.push_str(&format!(" (flag or env {var})"));
        }
    }
    line
}

/// The soft limit on open files, from /proc/self/limits (`None` when unlimited or unknown):
/// the default `--max-connections`, and the process collector's `process_max_fds`.
pub(crate) fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests;
