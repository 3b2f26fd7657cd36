//! The gateway's lean HTTP/1.1 client (`--client lean`): one worker's idle keep-alive
//! connections per upstream, requests written as prepared bytes, answers read by one task with
//! no channel between it and the connection. It reads what the gateway needs (status, content
//! type, a body framed by `content-length`, chunked coding or the connection's end) and says
//! why when it cannot.

use std::cell::RefCell;
use std::io;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::FutureExt;
use hyper::header::HeaderValue;
use hyper::{StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::TcpStream;

/// The most header bytes an answer may have before its body.
const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may have.
const MAX_HEADERS: usize = 64;
/// The longest chunk-size line (with its extensions) accepted.
const MAX_CHUNK_LINE: usize = 1024;
/// Room made in the read buffer before each read.
const READ_SIZE: usize = 4 * 1024;

/// An upstream's answer, its body read whole.
#[derive(Debug)]
pub struct Response {
    pub status: StatusCode,
    pub content_type: Option<HeaderValue>,
    pub body: Bytes,
}

/// Why a call got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// No connection could be made.
    Connect,
    /// The connection failed or ended before the whole answer.
    Closed,
    /// The answer is not HTTP/1.x as this client reads it.
    Malformed,
    /// The answer's body is larger than the pool's limit (`--max-upstream-body`).
    TooLarge,
}

/// Why a call failed, with the cause as text.
#[derive(Debug)]
pub struct Error {
    pub kind: ErrorKind,
    pub cause: String,
}

impl Error {
    fn closed(cause: impl ToString) -> Error {
        Error {
            kind: ErrorKind::Closed,
            cause: cause.to_string(),
        }
    }

    fn malformed(cause: impl ToString) -> Error {
        Error {
            kind: ErrorKind::Malformed,
            cause: cause.to_string(),
        }
    }

    fn too_large(limit: usize) -> Error {
        Error {
            kind: ErrorKind::TooLarge,
            cause: format!("body over {limit} bytes (--max-upstream-body)"),
        }
    }
}

/// Where to connect: `host:port` as the resolver takes it.
#[derive(Debug, Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    /// The host (an IPv6 address without its brackets) and port (80 when unsaid) of an
    /// `http://` URI; `None` when it names no host.
    pub fn of(uri: &Uri) -> Option<Target> {
        let host = uri.host().filter(|host| !host.is_empty())?;
        Some(Target {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: uri.port_u16().unwrap_or(80),
        })
    }
}

struct Connection {
    stream: TcpStream,
    buffer: BytesMut,
}

/// One worker's idle connections, a list per upstream (by index), at most `max_idle` each;
/// no answer's body may be larger than `max_body`.
pub struct Pool {
    idle: RefCell<Vec<Vec<Connection>>>,
    max_idle: usize,
    max_body: usize,
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
    pub fn new(upstreams: usize, max_idle: usize, max_body: usize) -> Pool {
        Pool {
            idle: RefCell::new((0..upstreams).map(|_| Vec::new()).collect()),
            max_idle,
            max_body,
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
    ) -> Result<Response, Error> {
        loop {
            let idle = self.idle.borrow_mut()[index].pop();
            let Some(connection) = idle else { break };
            if fit_for_reuse(&connection) {
                return self.exchange(index, connection, request).await;
            }
        }
        let stream = TcpStream::connect((target.host.as_str(), target.port))
            .await
            .map_err(|err| Error {
                kind: ErrorKind::Connect,
                cause: format!("tcp connect error: {err}"),
            })?;
        // Without it, a small request can wait for the upstream's delayed ACK.
        let _ = stream.set_nodelay(true);
        let connection = Connection {
            stream,
            buffer: BytesMut::with_capacity(READ_SIZE),
        };
        self.exchange(index, connection, request).await
    }

    /// One request and its answer on `connection`, which goes back to the pool when the
    /// answer left it fit for another.
    async fn exchange(
        &self,
        index: usize,
        mut connection: Connection,
        request: &[u8],
    ) -> Result<Response, Error> {
        if let Err(err) = connection.stream.write_all(request).await {
            return Err(Error::closed(err));
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
/// closed or reset it, nor when it wrote anything while no request was out, which read as
/// the next answer would hand a caller an answer meant for nobody (hyper-util's client
/// discards such a connection too). The runtime's last readiness for the socket says so
/// without a system call; only a readable socket is looked at, with one non-blocking read.
fn fit_for_reuse(connection: &Connection) -> bool {
    match connection.stream.ready(Interest::READABLE).now_or_never() {
        None => true,
        Some(Ok(ready)) if ready.is_read_closed() || ready.is_error() => false,
        Some(Ok(_)) => {
            // Readiness left from the last answer, or unsolicited bytes: only "nothing to
            // read" keeps the connection.
            let mut byte = [0u8; 1];
            matches!(
                connection.stream.try_read(&mut byte),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock
            )
        }
        Some(Err(_)) => false,
    }
}

/// Reads more of the answer into the buffer; `Ok(false)` at the end of the stream.
async fn fill(connection: &mut Connection) -> io::Result<bool> {
    if connection.buffer.capacity() - connection.buffer.len() < READ_SIZE / 2 {
        connection.buffer.reserve(READ_SIZE);
    }
    Ok(connection.stream.read_buf(&mut connection.buffer).await? > 0)
}

/// How the body of an answer ends.
enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// The head of an answer: what the gateway keeps of it, how its body is framed, whether the
/// connection may carry another request.
struct Head {
    status: StatusCode,
    content_type: Option<HeaderValue>,
    framing: Framing,
    keep_alive: bool,
}

/// Reads one whole answer (skipping informational ones), refusing a body over `max_body`;
/// says with it whether the connection may be reused, and how many bytes of head and body
/// were read.
async fn read_response(
    connection: &mut Connection,
    max_body: usize,
) -> Result<(Response, bool, usize), Error> {
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
                return Err(Error::malformed("answer head over 64 KiB"));
            }
            None => fill_to(connection, connection.buffer.len() + 1).await?,
        }
    };
    let (body, reusable) = match head.framing {
        // A declared length over the limit is refused before a byte of the body is read.
        Framing::Length(length) if length > max_body => return Err(Error::too_large(max_body)),
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

/// A `content-length` value: ASCII digits only (RFC 9110: no sign, space, comma or radix
/// prefix), no more than a `u64` holds.
fn parse_content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The size on a chunk-size line: hex digits only (no sign, space, comma or `0x`), then
/// nothing or an extension (`;`, which RFC 9112 lets whitespace precede).
fn chunk_size(line: &[u8]) -> Option<usize> {
    let digits = line
        .iter()
        .position(|byte| !byte.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let after = &line[digits..];
    if digits == 0 || !(after.is_empty() || after.trim_ascii_start().starts_with(b";")) {
        return None;
    }
    usize::from_str_radix(std::str::from_utf8(&line[..digits]).ok()?, 16).ok()
}

/// The head at the start of `buffer` with its length in bytes, or `None` when it is not all
/// there yet.
fn parse_head(buffer: &[u8]) -> Result<Option<(usize, Head)>, Error> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(Error::malformed(format!("invalid HTTP answer: {err}"))),
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| Error::malformed(format!("invalid status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(Error::malformed("unexpected 101 Switching Protocols"));
    }
    let mut keep_alive = response.version == Some(1);
    let mut content_type = None;
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    for header in response.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-type") {
            content_type = HeaderValue::from_bytes(header.value).ok();
        } else if name.eq_ignore_ascii_case("content-length") {
            let length = parse_content_length(header.value)
                .ok_or_else(|| Error::malformed("invalid content-length"))?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(Error::malformed("conflicting content-length headers"));
            }
            content_length = Some(length);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            // Chunked must be the last coding; anything else is read to the end.
            chunked = last_token(header.value).is_some_and(|last| last == b"chunked");
            if !chunked {
                keep_alive = false;
            }
        } else if name.eq_ignore_ascii_case("connection") {
            for token in header.value.split(|&byte| byte == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") && response.version == Some(0) {
                    keep_alive = true;
                }
            }
        }
    }
    let framing = if matches!(code, 204 | 304) || status.is_informational() {
        Framing::Length(0)
    } else if chunked {
        Framing::Chunked
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        Framing::Close
    };
    let head = Head {
        status,
        content_type,
        framing,
        keep_alive,
    };
    Ok(Some((length, head)))
}

/// The last comma-separated token of a header value.
fn last_token(value: &[u8]) -> Option<&[u8]> {
    value
        .rsplit(|&byte| byte == b',')
        .next()
        .map(|token| token.trim_ascii())
}

fn cut_off(err: Option<io::Error>) -> Error {
    match err {
        Some(err) => Error::closed(err),
        None => Error::closed("connection closed before message completed"),
    }
}

/// Reads until the buffer holds `needed` bytes.
async fn fill_to(connection: &mut Connection, needed: usize) -> Result<(), Error> {
    while connection.buffer.len() < needed {
        match fill(connection).await {
            Ok(true) => {}
            Ok(false) => return Err(cut_off(None)),
            Err(err) => return Err(cut_off(Some(err))),
        }
    }
    Ok(())
}

async fn read_length(connection: &mut Connection, length: usize) -> Result<Bytes, Error> {
    // Room for the whole body at once (it is under the limit), rather than doubling up to it.
    connection
        .buffer
        .reserve(length.saturating_sub(connection.buffer.len()));
    fill_to(connection, length).await?;
    Ok(connection.buffer.split_to(length).freeze())
}

/// Reads a body that ends with the connection, refused the moment it passes `max_body`.
async fn read_to_end(connection: &mut Connection, max_body: usize) -> Result<Bytes, Error> {
    loop {
        if connection.buffer.len() > max_body {
            return Err(Error::too_large(max_body));
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
async fn read_chunked(connection: &mut Connection, max_body: usize) -> Result<Bytes, Error> {
    let mut body = BytesMut::new();
    loop {
        let line = read_line(connection).await?;
        let size = chunk_size(&line).ok_or_else(|| Error::malformed("invalid chunk size line"))?;
        let allowed = max_body - body.len();
        if size > allowed {
            // Refused when the bytes really cross the limit, as hyper-util's limited body is:
            // a chunk that only announces more and then ends the connection was cut off.
            fill_to(connection, allowed + 1).await?;
            return Err(Error::too_large(max_body));
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
                    return Err(Error::malformed("trailers over 64 KiB"));
                }
            }
            return Ok(body.freeze());
        }
        let framed = size
            .checked_add(2)
            .ok_or_else(|| Error::malformed("chunk size too large"))?;
        fill_to(connection, framed).await?;
        body.extend_from_slice(&connection.buffer[..size]);
        if &connection.buffer[size..size + 2] != b"\r\n" {
            return Err(Error::malformed("chunk not followed by CRLF"));
        }
        connection.buffer.advance(size + 2);
    }
}

/// One CRLF-ended line, without its CRLF, taken off the buffer.
async fn read_line(connection: &mut Connection) -> Result<Bytes, Error> {
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
            return Err(Error::malformed("chunk size line too long"));
        }
        searched = buffer.len().saturating_sub(1);
        fill_to(connection, buffer.len() + 1).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes())
            .expect("a valid head")
            .expect("a whole head")
            .1
    }

    #[test]
    fn framing_and_reuse_follow_the_answers_headers() {
        let plain =
            head("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 12\r\n\r\n");
        assert!(matches!(plain.framing, Framing::Length(12)) && plain.keep_alive);
        assert_eq!(
            plain.content_type,
            Some(HeaderValue::from_static("application/json"))
        );
        let chunked = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n");
        assert!(matches!(chunked.framing, Framing::Chunked) && chunked.keep_alive);
        let close = head("HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 1\r\n\r\n");
        assert!(!close.keep_alive);
        let old = head("HTTP/1.0 200 OK\r\n\r\n");
        assert!(matches!(old.framing, Framing::Close) && !old.keep_alive);
        let old_kept =
            head("HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\ncontent-length: 0\r\n\r\n");
        assert!(old_kept.keep_alive);
        let empty = head("HTTP/1.1 204 No Content\r\ncontent-length: 9\r\n\r\n");
        assert!(matches!(empty.framing, Framing::Length(0)));
        assert!(
            parse_head(b"HTTP/1.1 200 OK\r\ncontent-le")
                .expect("valid so far")
                .is_none()
        );
    }

    #[test]
    fn lengths_are_digits_and_chunk_sizes_hex_digits_only() {
        for (value, expected) in [
            (&b"5"[..], Some(5)),
            (b"05", Some(5)),
            (b"0", Some(0)),
            (b"+5", None),
            (b"-5", None),
            (b"5,5", None),
            (b"5 5", None),
            (b"0x5", None),
            (b"", None),
            (b"99999999999999999999999", None),
        ] {
            assert_eq!(parse_content_length(value), expected, "{value:?}");
        }
        for (line, expected) in [
            (&b"5"[..], Some(5)),
            (b"1f", Some(31)),
            (b"1F;name=value", Some(31)),
            (b"5 ;ext", Some(5)),
            (b"5\t;ext", Some(5)),
            (b"+5", None),
            (b" 5", None),
            (b"5 ", None),
            (b"0x5", None),
            (b"5,5", None),
            (b"", None),
            (b";ext", None),
            (b"ffffffffffffffffff", None),
        ] {
            assert_eq!(chunk_size(line), expected, "{line:?}");
        }
    }

    #[test]
    fn heads_this_client_cannot_read_are_malformed_with_a_reason() {
        for (text, cause) in [
            ("HTTP/1.1 2x0 OK\r\n\r\n", "invalid HTTP answer"),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: ten\r\n\r\n",
                "invalid content-length",
            ),
            (
                "HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\n",
                "conflicting content-length",
            ),
            ("HTTP/1.1 101 Switching Protocols\r\n\r\n", "101"),
            ("SSH-2.0-OpenSSH\r\n\r\n", "invalid HTTP answer"),
        ] {
            let err = parse_head(text.as_bytes()).err().expect(text);
            assert_eq!(err.kind, ErrorKind::Malformed, "{text}");
            assert!(err.cause.contains(cause), "{text}: {}", err.cause);
        }
    }
}
