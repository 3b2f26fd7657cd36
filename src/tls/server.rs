//! The server end: the certificate and key `--tls-cert`/`--tls-key` name, held so that a new
//! pair can replace them while the server runs (on SIGHUP, or when the files change, as a
//! mounted Kubernetes Secret does when cert-manager renews it): new handshakes use the new
//! pair, connections already open keep theirs, and a pair that does not load is logged and
//! the old one kept. Also ALPN (`--tls-alpn`), session tickets, and client certificates
//! verified against `--tls-client-ca` (mutual TLS).

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ServerConfig, ServerConnection};
use tokio_rustls::TlsAcceptor;

use super::{PemFile, Stamp, TlsError, VERSIONS, provider, roots};

/// The ALPN protocols the server knows: HTTP/2 and HTTP/1.1.
pub const H2: &str = "h2";
pub const HTTP1: &str = "http/1.1";

/// What `--tls-*` asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    pub cert: PemFile,
    pub key: PemFile,
    /// Clients must present a certificate signed by one of these CAs.
    pub client_ca: Option<PemFile>,
    /// Offered in order of preference; each is `h2` or `http/1.1`.
    pub alpn: Vec<String>,
}

/// Parses `--tls-alpn`: a comma-separated list of `h2` and `http/1.1`, each at most once.
pub fn parse_alpn(value: &str) -> Result<Vec<String>, String> {
    let mut protocols: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        if name != H2 && name != HTTP1 {
            return Err(format!(
                "unknown protocol {name:?}; expected a list of {H2} and {HTTP1}"
            ));
        }
        if protocols.iter().any(|known| known == name) {
            return Err(format!("{name} is listed twice"));
        }
        protocols.push(name.to_owned());
    }
    Ok(protocols)
}

/// A serving certificate and everything handshakes need; shared by every worker.
#[derive(Debug)]
pub struct ServerTls {
    settings: ServerSettings,
    keys: Arc<Keys>,
    config: Arc<ServerConfig>,
    /// The admin listener's: the same certificate and tickets, never a client certificate
    /// asked for, so probes and scrapes that have none (a kubelet's) get through.
    admin: Arc<ServerConfig>,
}

/// The current certificate and key, and the files' stamps when they were read.
#[derive(Debug)]
struct Keys {
    current: RwLock<Arc<CertifiedKey>>,
    stamps: Mutex<[Option<Stamp>; 2]>,
}

impl ResolvesServerCert for Keys {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        Some(Arc::clone(&current))
    }
}

impl ServerTls {
    /// Reads the files and builds the server's TLS configuration; the error names the flag
    /// whose file cannot be used.
    pub fn new(settings: &ServerSettings) -> Result<ServerTls, TlsError> {
        let stamps = [settings.cert.stamp(), settings.key.stamp()];
        let keys = Arc::new(Keys {
            current: RwLock::new(Arc::new(certified_key(settings)?)),
            stamps: Mutex::new(stamps),
        });
        let provider = provider();
        let builder = || {
            ServerConfig::builder_with_provider(Arc::clone(&provider))
                .with_protocol_versions(VERSIONS)
                .map_err(|err| TlsError::new("--tls-cert", err.to_string()))
        };
        let finish = |mut config: ServerConfig| {
            config.alpn_protocols = settings
                .alpn
                .iter()
                .map(|proto| proto.as_bytes().to_vec())
                .collect();
            // Resumption: stateless tickets (TLS 1.3 and 1.2), and rustls's default cache of
            // 256 sessions for TLS 1.2 clients that resume by session id. Each configuration
            // has keys of its own: a session the admin port made without a client
            // certificate must not resume on a main port that asks for one.
            config.ticketer =
                ticketer().map_err(|err| TlsError::new("--tls-cert", err.to_string()))?;
            Ok::<_, TlsError>(Arc::new(config))
        };
        let admin = finish(
            builder()?
                .with_no_client_auth()
                .with_cert_resolver(Arc::clone(&keys) as _),
        )?;
        let builder = builder()?;
        let builder = match &settings.client_ca {
            Some(ca) => {
                let verifier = WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots(ca)?),
                    Arc::clone(&provider),
                )
                .build()
                .map_err(|err| ca.error(err))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let config = finish(builder.with_cert_resolver(Arc::clone(&keys) as _))?;
        Ok(ServerTls {
            settings: settings.clone(),
            keys,
            config,
            admin,
        })
    }

    /// What accepts a connection's handshake: on the main port, or (`admin`) on the admin
    /// port, where no client certificate is asked for.
    pub fn acceptor(&self, admin: bool) -> TlsAcceptor {
        TlsAcceptor::from(Arc::clone(if admin { &self.admin } else { &self.config }))
    }

    /// Reads the files again and, when they make a good pair, serves it to new handshakes;
    /// else the error, and the old pair stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let stamps = [self.settings.cert.stamp(), self.settings.key.stamp()];
        // Noted whatever the outcome, so a bad pair is reported once, not at every look.
        *self
            .keys
            .stamps
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = stamps;
        let key = certified_key(&self.settings)?;
        *self
            .keys
            .current
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(key);
        Ok(())
    }

    /// Whether either file changed since it was last read.
    pub fn files_changed(&self) -> bool {
        let now = [self.settings.cert.stamp(), self.settings.key.stamp()];
        *self
            .keys
            .stamps
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            != now
    }

    /// Reloads on SIGHUP, and when the files change (looked at every `interval`), until the
    /// task is dropped; `reloaded` hears each outcome.
    pub async fn watch(&self, interval: Duration, reloaded: impl Fn(Result<(), TlsError>)) {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(hangup) => Some(hangup),
            Err(err) => {
                tracing::warn!(
                    "cannot listen for SIGHUP, certificate files are still watched: {err}"
                );
                None
            }
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let cause = tokio::select! {
                Some(()) = async { hangup.as_mut()?.recv().await } => "SIGHUP",
                _ = tick.tick() => {
                    if !self.files_changed() {
                        continue;
                    }
                    "the files changed"
                }
            };
            let outcome = self.reload();
            // Counted before it is logged: whoever sees the log line finds it counted.
            reloaded(outcome.clone());
            match &outcome {
                Ok(()) => tracing::info!(
                    cause,
                    cert = %self.settings.cert.path.display(),
                    "TLS certificate reloaded; new connections use it"
                ),
                Err(err) => tracing::error!(
                    cause,
                    "TLS certificate not reloaded, the previous one stays: {} {err}",
                    err.flag
                ),
            }
        }
    }
}

/// The pair in the files, checked to belong together.
fn certified_key(settings: &ServerSettings) -> Result<CertifiedKey, TlsError> {
    let chain = settings.cert.certificates()?;
    let key = settings.key.private_key()?;
    CertifiedKey::from_der(chain, key, &provider()).map_err(|err| {
        let why = match err {
            rustls::Error::InconsistentKeys(_) => {
                format!("does not match the certificate in {}", settings.cert.flag)
            }
            other => format!("cannot be used: {other}"),
        };
        settings.key.error(why)
    })
}

/// The provider's session ticket maker.
fn ticketer() -> Result<Arc<dyn rustls::server::ProducesTickets>, rustls::Error> {
    #[cfg(feature = "aws-lc-rs")]
    return rustls::crypto::aws_lc_rs::Ticketer::new();
    #[cfg(all(feature = "ring", not(feature = "aws-lc-rs")))]
    return rustls::crypto::ring::Ticketer::new();
}

/// Whether a finished handshake resumed an earlier session.
pub fn resumed(connection: &ServerConnection) -> bool {
    connection.handshake_kind() == Some(rustls::HandshakeKind::Resumed)
}

/// Whether a finished handshake chose HTTP/2.
pub fn chose_h2(connection: &ServerConnection) -> bool {
    connection.alpn_protocol() == Some(H2.as_bytes())
}
