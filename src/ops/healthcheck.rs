//! `microservice2 healthcheck [URL]`: one GET, exit status 0 on a 200; `https://` URLs too,
//! verified against `--ca` or the system's roots (or not at all with `--insecure`). The
//! container image has no shell, curl or wget (distroless), so Docker and Compose health
//! checks call the binary.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use clap::error::ErrorKind;
use hyper::Uri;

use crate::gateway::lean::Target;
use crate::tls::{ClientSettings, PemFile, client_config};

/// How long the whole check may take: connect, then each read or write.
const TIMEOUT: Duration = Duration::from_secs(2);

/// The health check's command line (flags before or after the URL).
#[derive(Debug, Parser)]
#[command(
    name = "microservice2 healthcheck",
    about = "GETs the URL; exit status 0 on a 200, 1 otherwise, 2 for a bad setting"
)]
struct Args {
    /// URL to check [default: http://127.0.0.1:$M2_PORT/healthz, https:// when M2_TLS_CERT is set].
    url: Option<String>,

    /// PEM CA certificates that sign an https:// server's certificate [default: the system's roots].
    #[arg(long, env = "M2_HEALTHCHECK_CA", value_name = "PATH")]
    ca: Option<PathBuf>,

    /// Accept any certificate from an https:// server (no verification).
    #[arg(long, env = "M2_HEALTHCHECK_INSECURE")]
    insecure: bool,
}

/// Why a check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// `--help`: print the text and exit successfully.
    #[error("{0}")]
    Info(String),
    /// A bad flag or URL (exit status 2).
    #[error("{0}")]
    Invalid(String),
    /// The server could not be reached or did not answer 200 (exit status 1).
    #[error("{0}")]
    Unhealthy(String),
}

/// The URL checked when none is given: `/healthz` on this machine at `M2_PORT` (3000), over
/// https when `M2_TLS_CERT` says the server serves it.
pub fn default_url() -> String {
    let port = std::env::var("M2_PORT").unwrap_or_else(|_| "3000".to_owned());
    let scheme = if std::env::var_os("M2_TLS_CERT").is_some() {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://127.0.0.1:{port}/healthz")
}

/// Parses the health check's arguments (after `healthcheck`) and runs it.
pub fn run(args: impl IntoIterator<Item = OsString>) -> Result<(), CheckError> {
    let argv = std::iter::once(OsString::from("microservice2 healthcheck")).chain(args);
    let args = Args::try_parse_from(argv).map_err(|err| match err.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            CheckError::Info(err.render().to_string())
        }
        _ => {
            let rendered = err.render().to_string();
            let line = rendered.lines().next().unwrap_or("invalid arguments");
            CheckError::Invalid(line.trim_start_matches("error: ").to_owned())
        }
    })?;
    let url = args.url.clone().unwrap_or_else(default_url);
    check(&url, &args)
}

/// GETs `url` and succeeds when the answer's status is 200.
fn check(url: &str, args: &Args) -> Result<(), CheckError> {
    let bad =
        |reason: &str| CheckError::Invalid(format!("invalid healthcheck URL '{url}': {reason}"));
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("expected e.g. http://127.0.0.1:3000/healthz"))?;
    let https = match uri.scheme_str() {
        Some("http") => false,
        Some("https") => true,
        _ => return Err(bad("only http:// and https:// URLs are supported")),
    };
    let tls = if https || args.ca.is_some() {
        let settings = ClientSettings {
            ca: args.ca.as_ref().map(|ca| PemFile::new("--ca", ca)),
            identity: None,
            insecure: args.insecure,
        };
        let config = client_config(&settings, &[b"http/1.1"]).map_err(|err| {
            CheckError::Invalid(format!(
                "{} {err} (flag or env M2_HEALTHCHECK_CA)",
                err.flag
            ))
        })?;
        Some(config)
    } else {
        None
    };
    let target = Target::of(&uri).ok_or_else(|| bad("the URL names no host"))?;
    let addr: SocketAddr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| bad("the host does not resolve"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let unhealthy = |what: &str, err: std::io::Error| {
        // rustls says why it refused the certificate; say what would change that.
        let hint = if err.to_string().contains("invalid peer certificate") {
            " (--ca PATH trusts the CA that signed it; --insecure accepts any)"
        } else {
            ""
        };
        CheckError::Unhealthy(format!("{what} {url}: {err}{hint}"))
    };
    let tcp = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|err| unhealthy("cannot connect to", err))?;
    tcp.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| tcp.set_write_timeout(Some(TIMEOUT)))
        .map_err(|err| unhealthy("cannot set timeouts for", err))?;
    let mut stream: Box<dyn ReadWrite> = match (tls, target.tls) {
        (Some(config), Some(name)) => {
            let connection = rustls::ClientConnection::new(config, name)
                .map_err(|err| unhealthy("cannot start TLS with", std::io::Error::other(err)))?;
            Box::new(rustls::StreamOwned::new(connection, tcp))
        }
        _ => Box::new(tcp),
    };
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        uri.authority().map_or(target.host.as_str(), |a| a.as_str())
    )
    .and_then(|()| stream.flush())
    .map_err(|err| unhealthy("cannot send to", err))?;
    let mut status_line = String::new();
    // The status line is all that is read: at most a line's worth, however long it is.
    BufReader::new(stream.take(8 * 1024))
        .read_line(&mut status_line)
        .map_err(|err| unhealthy("no answer from", err))?;
    match status_line.split(' ').nth(1) {
        Some("200") => Ok(()),
        _ => Err(CheckError::Unhealthy(format!(
            "{url} answered {:?}",
            status_line.trim_end()
        ))),
    }
}

/// A connection the check speaks HTTP over: TCP, or TLS over it.
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}
