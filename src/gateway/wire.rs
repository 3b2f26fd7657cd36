//! HTTP/1.1 as the gateway's lean client writes and reads it: the request head it sends, and
//! the parsing of an answer's head (status, content type, framing, keep-alive) and of chunk
//! size lines. Pure functions over bytes, unit-tested here and held to hyper-util's reading by
//! the differential tests.

use bytes::Bytes;
use hyper::header::{HeaderName, HeaderValue};
use hyper::{StatusCode, Uri};

use super::error::UpstreamError;

/// The most header bytes an answer may have before its body.
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// The most headers an answer may have.
pub(super) const MAX_HEADERS: usize = 64;
/// The longest chunk-size line (with its extensions) accepted.
pub(super) const MAX_CHUNK_LINE: usize = 1024;

/// A GET request's head as the lean client sends it, `host` and then `headers`: what hyper's
/// client would write.
pub(crate) fn request_head<'h>(
    uri: &Uri,
    host: &HeaderValue,
    headers: impl Iterator<Item = (&'h HeaderName, &'h HeaderValue)>,
) -> Bytes {
    let target = uri.path_and_query().map_or("/", |target| target.as_str());
    let mut head = Vec::with_capacity(64 + target.len());
    head.extend_from_slice(b"GET ");
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\nhost: ");
    head.extend_from_slice(host.as_bytes());
    for (name, value) in headers {
        head.extend_from_slice(b"\r\n");
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
    }
    head.extend_from_slice(b"\r\n\r\n");
    Bytes::from(head)
}

/// How the body of an answer ends.
pub(super) enum Framing {
    Length(usize),
    Chunked,
    Close,
}

/// The head of an answer: what the gateway keeps of it, how its body is framed, whether the
/// connection may carry another request.
pub(super) struct Head {
    pub(super) status: StatusCode,
    pub(super) content_type: Option<HeaderValue>,
    pub(super) framing: Framing,
    pub(super) keep_alive: bool,
}

/// A `content-length` value: ASCII digits only (RFC 9110: no sign, space, comma or radix
/// prefix), no more than a `u64` holds.
pub(super) fn parse_content_length(value: &[u8]) -> Option<usize> {
    if value.is_empty() || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// The size on a chunk-size line: hex digits only (no sign, space, comma or `0x`), then
/// nothing or an extension (`;`, which RFC 9112 lets whitespace precede).
pub(super) fn chunk_size(line: &[u8]) -> Option<usize> {
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
pub(super) fn parse_head(buffer: &[u8]) -> Result<Option<(usize, Head)>, UpstreamError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let length = match response.parse(buffer) {
        Ok(httparse::Status::Complete(length)) => length,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => {
            return Err(UpstreamError::malformed(format!(
                "invalid HTTP answer: {err}"
            )));
        }
    };
    let code = response.code.unwrap_or_default();
    let status = StatusCode::from_u16(code)
        .map_err(|_| UpstreamError::malformed(format!("invalid status code {code}")))?;
    if status == StatusCode::SWITCHING_PROTOCOLS {
        return Err(UpstreamError::malformed(
            "unexpected 101 Switching Protocols",
        ));
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
                .ok_or_else(|| UpstreamError::malformed("invalid content-length"))?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(UpstreamError::malformed(
                    "conflicting content-length headers",
                ));
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gateway::error::Kind;

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
            assert_eq!(err.kind, Kind::Malformed, "{text}");
            assert!(err.cause.contains(cause), "{text}: {}", err.cause);
        }
    }
}
