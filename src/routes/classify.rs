//! Which requests the fast path may take: `GET` or `HEAD` of the path, HTTP/1.1 or 1.0, no
//! body, no protocol switch, at most one `connection` header saying `close` or `keep-alive`,
//! with or without a query and the behaviour header (their controls are drawn on the fast
//! path too, `shaped.rs`). In gateway mode only the plain shape (no query, no behaviour
//! header, no connection header, HTTP/1.1, no attempt header, which hyper's path passes on).
//! Everything else is hyper's, answered through [`super::Routes::call`]. The fast path asks
//! here (through [`super::Routes::classify`]) rather than deciding for itself.

use crate::behaviour;

/// Headers a fast-path request may carry; one more sends it to hyper (whose limit is 100).
const MAX_HEADERS: usize = 32;

/// A request head still incomplete past this many bytes goes to hyper, which applies its own
/// limits and answers 431 when they are exceeded.
const MAX_HEAD: usize = 8 * 1024;

/// Headers whose presence means the request needs hyper: a body or a protocol switch.
const HYPER_HEADERS: [&str; 4] = ["content-length", "transfer-encoding", "expect", "upgrade"];

/// What the bytes at the front of a connection's buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A complete request the fast path may take (of the avatar path, or of the gateway's
    /// path in gateway mode).
    Avatar(Shape),
    /// The start of a request: read more.
    Partial,
    /// Anything else: hyper takes the connection from here.
    Hyper,
}

/// A request the fast path may take, as offsets into the bytes it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Its length, head and all (it has no body).
    pub len: usize,
    /// HEAD: the answer's status line and headers only.
    pub head_only: bool,
    /// HTTP/1.0: answered as HTTP/1.0, and closed after unless it asked for keep-alive.
    pub http10: bool,
    /// Its `connection` header.
    pub connection: Connection,
    /// The query (after `?`), when the target has one.
    pub query: Option<Span>,
    /// The behaviour header's value, when it has one.
    pub behaviour: Option<Span>,
}

impl Shape {
    /// The one shape every fast-path answer was made for: HTTP/1.1, kept alive, no controls.
    #[inline]
    pub fn is_plain(&self) -> bool {
        !self.http10
            && self.connection == Connection::Unsaid
            && self.query.is_none()
            && self.behaviour.is_none()
    }

    /// Whether the connection ends after this request's answer, as hyper decides it.
    pub fn closes(&self) -> bool {
        if self.http10 {
            self.connection != Connection::KeepAlive
        } else {
            self.connection == Connection::Close
        }
    }

    /// How the avatars are written for it, when not as for the plain shape.
    pub fn variant(&self) -> Option<crate::avatar::Variant> {
        use crate::avatar::Variant;
        match (self.http10, self.connection) {
            (true, Connection::KeepAlive) => Some(Variant::Http10KeepAlive),
            (true, _) => Some(Variant::Http10),
            (false, Connection::Close) => Some(Variant::Close),
            (false, _) => None,
        }
    }

    /// The `connection` header hyper adds to the answer: `close` on an HTTP/1.1 request that
    /// asked for it, `keep-alive` on an HTTP/1.0 one that asked for that.
    pub fn connection_header(&self) -> Option<&'static [u8]> {
        match (self.http10, self.connection) {
            (false, Connection::Close) => Some(b"connection: close\r\n"),
            (true, Connection::KeepAlive) => Some(b"connection: keep-alive\r\n"),
            _ => None,
        }
    }
}

/// What a request's `connection` header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    Unsaid,
    Close,
    KeepAlive,
}

/// Where something is in the bytes a request was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    fn of(buf: &[u8], part: &[u8]) -> Span {
        let start = part.as_ptr() as usize - buf.as_ptr() as usize;
        Span {
            start,
            end: start + part.len(),
        }
    }

    /// The bytes it spans in `buf`, the bytes it was found in.
    pub fn in_buf<'b>(&self, buf: &'b [u8]) -> &'b [u8] {
        &buf[self.start..self.end]
    }
}

/// Classifies the request at the front of `buf` against the main `path`.
pub fn classify(buf: &[u8], path: &str) -> Head {
    classify_with(buf, path, None)
}

/// [`classify`] for a connection's first read at accept (`serve/fast/first.rs`): a copy of
/// its own, so that the one in the fast path's loop stays inlined there (called from two
/// places, it was not, which cost that loop about 25 instructions a request).
#[inline(never)]
pub fn classify_first(buf: &[u8], path: &str) -> Head {
    classify_with(buf, path, None)
}

/// Gateway mode's [`classify`]: only the plain shape, and a request that carries the header
/// `attempt` (the attempt header, which the gateway passes on to its upstreams) goes to hyper
/// too. Serve mode's path never looks for it.
pub fn classify_call(buf: &[u8], path: &str, attempt: &str) -> Head {
    match classify_with(buf, path, Some(attempt)) {
        Head::Avatar(request) if !request.is_plain() => Head::Hyper,
        head => head,
    }
}

/// Whether hyper's URI parser takes every byte of a query as it is (unreserved, sub-delims,
/// `:`, `@`, `/`, `?`, `%`): anything else (a `#`, a quote, a brace, non-ASCII) is left to
/// hyper, which may refuse it.
fn plain_query(query: &[u8]) -> bool {
    query
        .iter()
        .all(|&byte| byte.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=:@/?%".contains(&byte))
}

/// [`classify`], with one more header sending a request to hyper when `also` names it;
/// always inlined, so that serve mode's copy (`None`) has no trace of the check.
#[inline(always)]
fn classify_with(buf: &[u8], path: &str, also: Option<&str>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Head::Hyper,
    };
    let head_only = match parsed.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Head::Hyper,
    };
    let http10 = match parsed.version {
        Some(1) => false,
        Some(0) => true,
        _ => return Head::Hyper,
    };
    let Some(target) = parsed.path else {
        return Head::Hyper;
    };
    let query = if target == path {
        None
    } else {
        match target
            .strip_prefix(path)
            .and_then(|rest| rest.strip_prefix('?'))
        {
            Some(query) if plain_query(query.as_bytes()) => Some(Span::of(buf, query.as_bytes())),
            _ => return Head::Hyper,
        }
    };
    let mut request = Shape {
        len,
        head_only,
        http10,
        connection: Connection::Unsaid,
        query,
        behaviour: None,
    };
    for header in parsed.headers.iter() {
        let name = header.name;
        if name.eq_ignore_ascii_case("connection") {
            let value = header.value.trim_ascii();
            request.connection = match request.connection {
                Connection::Unsaid if value.eq_ignore_ascii_case(b"close") => Connection::Close,
                Connection::Unsaid if value.eq_ignore_ascii_case(b"keep-alive") => {
                    Connection::KeepAlive
                }
                // Several, a list, or another token: hyper's to read.
                _ => return Head::Hyper,
            };
        } else if name.eq_ignore_ascii_case(behaviour::HEADER) {
            if request.behaviour.is_some() {
                return Head::Hyper;
            }
            request.behaviour = Some(Span::of(buf, header.value));
        } else if HYPER_HEADERS
            .iter()
            .any(|hyper| name.eq_ignore_ascii_case(hyper))
            || also.is_some_and(|also| name.eq_ignore_ascii_case(also))
        {
            return Head::Hyper;
        }
    }
    Head::Avatar(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/v1/avatar";

    fn classify_str(raw: &str) -> Head {
        classify(raw.as_bytes(), PATH)
    }

    fn request(raw: &str) -> Shape {
        match classify_str(raw) {
            Head::Avatar(request) => request,
            other => panic!("{raw:?}: {other:?}"),
        }
    }

    fn plain(len: usize, head_only: bool) -> Head {
        Head::Avatar(Shape {
            len,
            head_only,
            http10: false,
            connection: Connection::Unsaid,
            query: None,
            behaviour: None,
        })
    }

    #[test]
    fn plain_get_and_head_take_the_fast_path() {
        let get = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n";
        assert_eq!(classify_str(get), plain(get.len(), false));
        let head = "HEAD /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(classify_str(head), plain(head.len(), true));
        assert!(request(get).is_plain());
    }

    #[test]
    fn only_the_first_of_pipelined_requests_is_measured() {
        let one = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(classify_str(&one.repeat(3)), plain(one.len(), false));
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for raw in ["G", "GET /v1/av", "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n"] {
            assert_eq!(classify_str(raw), Head::Partial, "{raw:?}");
        }
    }

    #[test]
    fn queries_and_the_behaviour_header_are_found_where_they_are() {
        let raw = "GET /v1/avatar?cb=1&status=503 HTTP/1.1\r\nX-M2-Behaviour: delay=1ms\r\n\r\n";
        let found = request(raw);
        assert!(!found.is_plain());
        let text = |span: Option<Span>| span.map(|span| span.in_buf(raw.as_bytes()).to_vec());
        assert_eq!(text(found.query), Some(b"cb=1&status=503".to_vec()));
        assert_eq!(text(found.behaviour), Some(b"delay=1ms".to_vec()));
        let empty = request("GET /v1/avatar? HTTP/1.1\r\n\r\n");
        assert_eq!(text(empty.query), Some(Vec::new()));
    }

    #[test]
    fn connection_handling_is_hypers() {
        let cases = [
            ("GET /v1/avatar HTTP/1.1\r\n\r\n", false, None),
            (
                "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\n\r\n",
                true,
                Some("close"),
            ),
            (
                "GET /v1/avatar HTTP/1.1\r\nconnection: Keep-Alive\r\n\r\n",
                false,
                None,
            ),
            ("GET /v1/avatar HTTP/1.0\r\n\r\n", true, None),
            (
                "GET /v1/avatar HTTP/1.0\r\nConnection: close\r\n\r\n",
                true,
                None,
            ),
            (
                "GET /v1/avatar HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                false,
                Some("keep-alive"),
            ),
        ];
        for (raw, closes, header) in cases {
            let found = request(raw);
            assert_eq!(found.closes(), closes, "{raw:?}");
            let expected = header.map(|value| format!("connection: {value}\r\n"));
            let written = found
                .connection_header()
                .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
            assert_eq!(written, expected, "{raw:?}");
        }
    }

    #[test]
    fn in_gateway_mode_only_the_plain_shape_without_the_attempt_header_is_fast() {
        let plain_get = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        let with_id = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\nX-Request-Id: r1\r\n\r\n";
        assert_eq!(
            classify_call(plain_get.as_bytes(), PATH, "x-request-id"),
            plain(plain_get.len(), false)
        );
        assert_eq!(
            classify_call(with_id.as_bytes(), PATH, "x-request-id"),
            Head::Hyper
        );
        assert!(matches!(
            classify_call(with_id.as_bytes(), PATH, "x-attempt-id"),
            Head::Avatar(_)
        ));
        // Serve mode's path does not look at it.
        assert!(matches!(classify_str(with_id), Head::Avatar(_)));
        for shaped in [
            "GET /v1/avatar?cb=1 HTTP/1.1\r\n\r\n",
            "GET /v1/avatar HTTP/1.0\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nX-M2-Behaviour: status=200\r\n\r\n",
        ] {
            assert!(
                matches!(classify_str(shaped), Head::Avatar(_)),
                "{shaped:?}"
            );
            assert_eq!(
                classify_call(shaped.as_bytes(), PATH, "x-request-id"),
                Head::Hyper
            );
        }
    }

    #[test]
    fn an_endless_head_goes_to_hyper() {
        let raw = format!("GET /v1/avatar HTTP/1.1\r\nX: {}", "a".repeat(MAX_HEAD));
        assert_eq!(classify_str(&raw), Head::Hyper);
    }

    #[test]
    fn everything_else_goes_to_hyper() {
        for raw in [
            "POST /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /other HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatarx HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar/?a=b HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar?a=b#c HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar?a={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar?a=\"b\" HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nConnection: close, keep-alive\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nConnection: upgrade\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\nConnection: close\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nX-M2-Behaviour: a=1\r\nX-M2-Behaviour: b=1\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /v1/avatar HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "\x00\x01garbage\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nBad Header\r\n\r\n",
        ] {
            assert_eq!(classify_str(raw), Head::Hyper, "{raw:?}");
        }
        let many = format!(
            "GET /v1/avatar HTTP/1.1\r\n{}\r\n",
            "X: y\r\n".repeat(MAX_HEADERS + 1)
        );
        assert_eq!(classify_str(&many), Head::Hyper);
    }
}
