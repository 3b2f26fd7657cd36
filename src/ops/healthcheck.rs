//! `microservice2 healthcheck [URL]`: one GET, exit status 0 on a 200. The container image has
//! no shell, curl or wget (distroless), so Docker and Compose health checks call the binary.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use hyper::Uri;

use crate::gateway::lean::Target;

/// How long the whole check may take: connect, then each read or write.
const TIMEOUT: Duration = Duration::from_secs(2);

/// Why a check did not pass.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The URL is unusable: a bad setting (exit status 2).
    #[error("invalid healthcheck URL '{url}': {reason}")]
    Url { url: String, reason: String },
    /// The server could not be reached or did not answer 200 (exit status 1).
    #[error("{0}")]
    Unhealthy(String),
}

/// The URL checked when none is given: `/healthz` on this machine at `M2_PORT` (3000).
pub fn default_url() -> String {
    let port = std::env::var("M2_PORT").unwrap_or_else(|_| "3000".to_owned());
    format!("http://127.0.0.1:{port}/healthz")
}

/// GETs `url` and succeeds when the answer's status is 200.
pub fn check(url: &str) -> Result<(), CheckError> {
    let bad = |reason: &str| CheckError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: Uri = url
        .parse()
        .map_err(|_| bad("expected e.g. http://127.0.0.1:3000/healthz"))?;
    if uri.scheme_str() != Some("http") {
        return Err(bad("only http:// URLs are supported"));
    }
    let target = Target::of(&uri).ok_or_else(|| bad("the URL names no host"))?;
    let addr: SocketAddr = (target.host.as_str(), target.port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| bad("the host does not resolve"))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    let unhealthy =
        |what: &str, err: std::io::Error| CheckError::Unhealthy(format!("{what} {url}: {err}"));
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT)
        .map_err(|err| unhealthy("cannot connect to", err))?;
    stream
        .set_read_timeout(Some(TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(TIMEOUT)))
        .map_err(|err| unhealthy("cannot set timeouts for", err))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        uri.authority().map_or(target.host.as_str(), |a| a.as_str())
    )
    .map_err(|err| unhealthy("cannot send to", err))?;
    let mut status_line = String::new();
    BufReader::new(stream)
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
