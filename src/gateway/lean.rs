//! The gateway's lean HTTP/1.1 client (`--client lean`): one worker's idle keep-alive
//! connections per upstream, plain or TLS, requests written as prepared bytes, answers read by
//! one task with no channel between it and the connection. It reads what the gateway needs
//! (status, content type, a body framed by `content-length`, chunked coding or the
//! connection's end) and says why when it cannot.

use std::cell::RefCell;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use hyper::header::HeaderValue;
use hyper::{StatusCode, Uri};
use rustls::pki_types::ServerName;

use super::error::{Kind, UpstreamError};
use super::wire::{Framing, MAX_CHUNK_LINE, MAX_HEAD, chunk_size, parse_head};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, Interest, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// Room made in the read buffer before each read.
const READ_SIZE: usize = 4 * 1024;

/// An upstream's answer, its body read whole.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// Where to connect: `host:port` as the resolver takes it, and for `https://` the name the
/// server's certificate is verified against.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// `https://`: the host as a name (an IP literal as an address).
    pub tls: Option<ServerName<'static>>,
}

impl Target {
    /// The host (an IPv6 address without its brackets) and port (80, or 443 for `https://`,
    /// when unsaid) of a URI; `None` when it names no host, or an `https://` host that is no
    /// server name.
    pub fn of(uri: &Uri) -> Option<Target> {
        let host = uri.host().filter(|host| !host.is_empty())?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let tls = match uri.scheme_str() {
            Some("https") => Some(ServerName::try_from(host).ok()?.to_owned()),
            _ => None,
        };
        Some(Target {
            host: host.to_owned(),
            port: uri
                .port_u16()
                .unwrap_or(if tls.is_some() { 443 } else { 80 }),
            tls,
        })
    }
}

/// A connection to an upstream: TCP, or TLS over it (boxed: rustls's state is kilobytes).
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => tls.get_ref().0,
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

struct Connection {
    stream: Stream,
    buffer: BytesMut,
}

/// One worker's idle connections, a list per upstream (by index), at most `max_idle` each;
/// no answer's body may be larger than `max_body`. `https://` upstreams are reached with
/// `tls`, whose session cache resumes the worker's later handshakes.
pub struct Pool {
    idle: RefCell<Vec<Vec<Connection>>>,
    max_idle: usize,
    max_body: usize,
    tls: Option<TlsConnector>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let idle: Vec<usize> = self.idle.borrow().iter().map(Vec::len).collect();
        f.debug_struct("Pool")
            .field("idle", &idle)
            .field("max_idle", &self.max_idle)
            .field("max_body", &self.max_body)
            .finish()
    }
}

impl Pool {
    pub fn new(
        upstreams: usize,
        max_idle: usize,
        max_body: usize,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Pool {
        Pool {
            idle: RefCell::new((0..upstreams).map(|_| Vec::new()).collect()),
            max_idle,
            max_body,
            tls: tls.map(TlsConnector::from),
        }
    }

    /// Sends `request` (a whole GET, head only) to upstream `index` on an idle connection, or
    /// a new one to `target`, and reads the answer. Idle connections the upstream has closed,
    /// or written anything on, are dropped unused. A connection that fails once the request is
    /// on it is an error, not a reason to send again: the upstream may have received it (an
    /// injected `fault=close`, say), and the caller should see that as hyper-util's client
    /// would show it.
    pub async fn send(
        &self,
        index: usize,
        target: &Target,
        request: &[u8],
    ) -> Result<Response, UpstreamError> {
        loop {
            let idle = self.idle.borrow_mut()[index].pop();
            let Some(mut connection) = idle else { break };
            if fit_for_reuse(&mut connection) {
                return self.exchange(index, connection, request).await;
            }
        }
        let connection = Connection {
            stream: self.connect(target).await?,
            buffer: BytesMut::with_capacity(READ_SIZE),
        };
        self.exchange(index, connection, request).await
    }

    /// A new connection to `target`, with its TLS handshake done for `https://`; failing
    /// either is a connect error, as hyper-util's client reports it.
    async fn connect(&self, target: &Target) -> Result<Stream, UpstreamError> {
        let tcp = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|err| {
                UpstreamError::new(Kind::Connect, format!("tcp connect error: {err}"))
            })?;
        // Without it, a small request can wait for the upstream's delayed ACK.
        let _ = tcp.set_nodelay(true);
        let (Some(name), Some(connector)) = (&target.tls, &self.tls) else {
            return Ok(Stream::Plain(tcp));
        };
        let tls = connector
            .connect(name.clone(), tcp)
            .await
            .map_err(|err| UpstreamError::new(Kind::Connect, err))?;
        Ok(Stream::Tls(Box::new(tls)))
    }

    /// One request and its answer on `connection`, which goes back to the pool when the
    /// answer left it fit for another.
    async fn exchange(
        &self,
        index: usize,
        mut connection: Connection,
        request: &[u8],
    ) -> Result<Response, UpstreamError> {
        if let Err(err) = connection.stream.write_all(request).await {
            return Err(UpstreamError::broken(err));
        }
        // A TLS session may hold the request's records when the socket was full: send them
        // (the reads that follow write nothing). A socket holds nothing back.
        if let Stream::Tls(tls) = &mut connection.stream {
            if let Err(err) = tls.flush().await {
                return Err(UpstreamError::broken(err));
            }
        }
        let (response, reusable, read) = read_response(&mut connection, self.max_body).await?;
        if reusable && connection.buffer.is_empty() {
            if read > READ_SIZE {
                // The body shares the buffer's allocation, which grew to hold it: an idle
                // connection keeps a fresh, small one instead.
                connection.buffer = BytesMut::with_capacity(READ_SIZE);
            }
            let mut idle = self.idle.borrow_mut();
            if idle[index].len() < self.max_idle {
                idle[index].push(connection);
            }
        }
        Ok(response)
    }
}

/// Whether `connection`, idle in the pool, may carry another request: not when the upstream
/// closed or reset it (or sent TLS's close_notify), nor when it wrote anything while no
/// request was out, which read as the next answer would hand a caller an answer meant for
/// nobody (hyper-util's client discards such a connection too). The runtime's last readiness
/// for the socket says so without a system call; a readable socket is looked at with one
/// read that does not wait. A TLS connection is always given that read (no system call
/// unless the socket is readable): rustls may already hold a close_notify that came in with
/// the last answer. The read also takes in what a TLS server sends on its own after the
/// handshake (TLS 1.3 session tickets, key updates), records with no data in them, which
/// leave the connection fit.
fn fit_for_reuse(connection: &mut Connection) -> bool {
    match connection
        .stream
        .tcp()
        .ready(Interest::READABLE)
        .now_or_never()
    {
        Some(Ok(ready)) if ready.is_read_closed() || ready.is_error() => return false,
        Some(Err(_)) => return false,
        None if matches!(connection.stream, Stream::Plain(_)) => return true,
        _ => {}
    }
    // Readiness left from the last answer, unsolicited bytes, or an end: only "nothing to
    // read yet" keeps the connection.
    connection
        .stream
        .read_buf(&mut connection.buffer)
        .now_or_never()
        .is_none()
}

/// Reads more of the answer into the buffer; `Ok(false)` at the end of the stream.
async fn fill(connection: &mut Connection) -> io::Result<bool> {
    if connection.buffer.capacity() - connection.buffer.len() < READ_SIZE / 2 {
        connection.buffer.reserve(READ_SIZE);
    }
    Ok(connection.stream.read_buf(&mut connection.buffer).await? > 0)
}

/// Reads one whole answer (skipping informational ones), refusing a body over `max_body`;
/// says with it whether the connection may be reused, and how many bytes of head and body
/// were read.
async fn read_response(
    connection: &mut Connection,
    max_body: usize,
) -> Result<(Response, bool, usize), UpstreamError> {
    let mut read = 0;
    let head = loop {
        match parse_head(&connection.buffer)? {
            Some((length, head)) => {
                connection.buffer.advance(length);
                read += length;
                if head.status.is_informational() {
                    continue;
                }
                break head;
            }
            None if connection.buffer.len() > MAX_HEAD => {
                return Err(UpstreamError::malformed("answer head over 64 KiB"));
            }
            None => fill_to(connection, connection.buffer.len() + 1).await?,
        }
    };
    let (body, reusable) = match head.framing {
        // A declared length over the limit is refused before a byte of the body is read.
        Framing::Length(length) if length > max_body => {
            return Err(UpstreamError::too_large(max_body));
        }
        Framing::Length(length) => (read_length(connection, length).await?, head.keep_alive),
        Framing::Chunked => (read_chunked(connection, max_body).await?, head.keep_alive),
        Framing::Close => (read_to_end(connection, max_body).await?, false),
    };
    read += body.len();
    let response = Response {
        status: head.status,
        content_type: head.content_type,
        body,
    };
    Ok((response, reusable, read))
}

fn cut_off(err: Option<io::Error>) -> UpstreamError {
    match err {
        Some(err) => UpstreamError::broken(err),
        None => UpstreamError::closed("connection closed before message completed"),
    }
}

/// Reads until the buffer holds `needed` bytes.
async fn fill_to(connection: &mut Connection, needed: usize) -> Result<(), UpstreamError> {
    while connection.buffer.len() < needed {
        match fill(connection).await {
            Ok(true) => {}
            Ok(false) => return Err(cut_off(None)),
            Err(err) => return Err(cut_off(Some(err))),
        }
    }
    Ok(())
}

async fn read_length(connection: &mut Connection, length: usize) -> Result<Bytes, UpstreamError> {
    // Room for the whole body at once (it is under the limit), rather than doubling up to it.
    connection
        .buffer
        .reserve(length.saturating_sub(connection.buffer.len()));
    fill_to(connection, length).await?;
    Ok(connection.buffer.split_to(length).freeze())
}

/// Reads a body that ends with the connection, refused the moment it passes `max_body`.
async fn read_to_end(connection: &mut Connection, max_body: usize) -> Result<Bytes, UpstreamError> {
    loop {
        if connection.buffer.len() > max_body {
            return Err(UpstreamError::too_large(max_body));
        }
        match fill(connection).await {
            Ok(true) => {}
            Ok(false) => return Ok(connection.buffer.split().freeze()),
            Err(err) => return Err(cut_off(Some(err))),
        }
    }
}

/// Reads a chunked body: size lines, chunks, then trailers up to an empty line. A chunk that
/// would take the body past `max_body` is refused as soon as its size is read.
async fn read_chunked(
    connection: &mut Connection,
    max_body: usize,
) -> Result<Bytes, UpstreamError> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(connection).await?;
        let size =
            chunk_size(&line).ok_or_else(|| UpstreamError::malformed("invalid chunk size line"))?;
        let allowed = max_body - body.len();
        if size > allowed {
            // Refused when the bytes really cross the limit, as hyper-util's limited body is:
            // a chunk that only announces more and then ends the connection was cut off.
            fill_to(connection, allowed + 1).await?;
            return Err(UpstreamError::too_large(max_body));
        }
        if size == 0 {
            // Trailers, if any, end with an empty line; the gateway passes none on.
            let mut trailers = 0;
            loop {
                let line = read_line(connection).await?;
                if line.is_empty() {
                    break;
                }
                trailers += line.len() + 2;
                if trailers > MAX_HEAD {
                    return Err(UpstreamError::malformed("trailers over 64 KiB"));
                }
            }
            return Ok(body.freeze());
        }
        let framed = size
            .checked_add(2)
            .ok_or_else(|| UpstreamError::malformed("chunk size too large"))?;
        fill_to(connection, framed).await?;
        body.extend_from_slice(&connection.buffer[..size]);
        if &connection.buffer[size..size + 2] != b"\r\n" {
            return Err(UpstreamError::malformed("chunk not followed by CRLF"));
        }
        connection.buffer.advance(size + 2);
    }
}

/// One CRLF-ended line, without its CRLF, taken off the buffer.
async fn read_line(connection: &mut Connection) -> Result<Bytes, UpstreamError> {
    let mut searched = 0;
    loop {
        let buffer = &connection.buffer;
        if let Some(at) = buffer[searched..]
            .windows(2)
            .position(|pair| pair == b"\r\n")
        {
            let end = searched + at;
            let line = connection.buffer.split_to(end).freeze();
            connection.buffer.advance(2);
            return Ok(line);
        }
        if buffer.len() > MAX_CHUNK_LINE {
            return Err(UpstreamError::malformed("chunk size line too long"));
        }
        searched = buffer.len().saturating_sub(1);
        fill_to(connection, buffer.len() + 1).await?;
    }
}
