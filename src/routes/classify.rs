//! Which requests the fast path may answer with the path's fixed answer: `GET` or `HEAD` of
//! the path, HTTP/1.1, no body, no connection management, no behaviour controls (and in
//! gateway mode no attempt header, which hyper's path passes on). Everything else is hyper's,
//! answered through [`super::Routes::call`]. The fast path asks here (through
//! [`super::Routes::classify`]) rather than deciding for itself.

use crate::behaviour;

/// Headers a fast-path request may carry; one more sends it to hyper (whose limit is 100).
const MAX_HEADERS: usize = 32;

/// A request head still incomplete past this many bytes goes to hyper, which applies its own
/// limits and answers 431 when they are exceeded.
const MAX_HEAD: usize = 8 * 1024;

/// Headers whose presence means the request needs hyper: a body, connection management,
/// protocol switches, or behaviour controls.
const HYPER_HEADERS: [&str; 6] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "expect",
    "upgrade",
    behaviour::HEADER,
];

/// What the bytes at the front of a connection's buffer are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    /// A complete fast-path request of `len` bytes (of the avatar path, or of the gateway's
    /// path in gateway mode); `head_only` for HEAD.
    Avatar { len: usize, head_only: bool },
    /// The start of a request: read more.
    Partial,
    /// Anything else: hyper takes the connection from here.
    Hyper,
}

/// Classifies the request at the front of `buf` against the main `path`.
pub fn classify(buf: &[u8], path: &str) -> Head {
    classify_with(buf, path, None)
}

/// Gateway mode's [`classify`]: a request that carries the header `attempt` (the attempt
/// header, which the gateway passes on to its upstreams) goes to hyper too. Serve mode's
/// plain path never looks for it.
pub fn classify_call(buf: &[u8], path: &str, attempt: &str) -> Head {
    classify_with(buf, path, Some(attempt))
}

/// [`classify`], with one more header sending a request to hyper when `also` names it;
/// always inlined, so that serve mode's copy (`None`) has no trace of the check.
#[inline(always)]
fn classify_with(buf: &[u8], path: &str, also: Option<&str>) -> Head {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => return Head::Partial,
        Ok(httparse::Status::Partial) | Err(_) => return Head::Hyper,
    };
    let head_only = match request.method {
        Some("GET") => false,
        Some("HEAD") => true,
        _ => return Head::Hyper,
    };
    if request.version != Some(1) || request.path != Some(path) {
        return Head::Hyper;
    }
    let needs_hyper = request.headers.iter().any(|header| {
        HYPER_HEADERS
            .iter()
            .any(|name| header.name.eq_ignore_ascii_case(name))
            || also.is_some_and(|name| header.name.eq_ignore_ascii_case(name))
    });
    if needs_hyper {
        return Head::Hyper;
    }
    Head::Avatar { len, head_only }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &str = "/v1/avatar";

    fn classify_str(raw: &str) -> Head {
        classify(raw.as_bytes(), PATH)
    }

    #[test]
    fn plain_get_and_head_take_the_fast_path() {
        let get = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\nUser-Agent: wrk\r\n\r\n";
        assert_eq!(
            classify_str(get),
            Head::Avatar {
                len: get.len(),
                head_only: false
            }
        );
        let head = "HEAD /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            classify_str(head),
            Head::Avatar {
                len: head.len(),
                head_only: true
            }
        );
    }

    #[test]
    fn only_the_first_of_pipelined_requests_is_measured() {
        let one = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(
            classify_str(&one.repeat(3)),
            Head::Avatar {
                len: one.len(),
                head_only: false
            }
        );
    }

    #[test]
    fn incomplete_heads_wait_for_more() {
        for raw in ["G", "GET /v1/av", "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n"] {
            assert_eq!(classify_str(raw), Head::Partial, "{raw:?}");
        }
    }

    #[test]
    fn in_gateway_mode_a_request_carrying_the_attempt_header_goes_to_hyper() {
        let plain = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\n\r\n";
        let with_id = "GET /v1/avatar HTTP/1.1\r\nHost: x\r\nX-Request-Id: r1\r\n\r\n";
        let fast = Head::Avatar {
            len: plain.len(),
            head_only: false,
        };
        assert_eq!(classify_call(plain.as_bytes(), PATH, "x-request-id"), fast);
        assert_eq!(
            classify_call(with_id.as_bytes(), PATH, "x-request-id"),
            Head::Hyper
        );
        assert!(matches!(
            classify_call(with_id.as_bytes(), PATH, "x-attempt-id"),
            Head::Avatar { .. }
        ));
        // Serve mode's plain path does not look at it.
        assert!(matches!(classify_str(with_id), Head::Avatar { .. }));
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
            "GET /v1/avatar?delay=1s HTTP/1.1\r\nHost: x\r\n\r\n",
            "GET /v1/avatar HTTP/1.0\r\nHost: x\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nConnection: close\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nconnection: keep-alive\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /v1/avatar HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nUpgrade: websocket\r\n\r\n",
            "GET /v1/avatar HTTP/1.1\r\nX-M2-Behaviour: delay=1s\r\n\r\n",
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
