//! The one upstream error type: why a call gave no usable answer. The gateway's 502 and 504
//! bodies, the metrics' `outcome` and `kind` labels and the retry policy are all read off
//! [`Kind`] and [`Outcome`], never converted from another enum.

use hyper::StatusCode;

/// Why an attempt got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No connection: refused, unreachable, name not resolved, or no TLS session (a
    /// certificate refused either way, whenever the refusal arrives).
    Connect,
    /// No whole answer within `--timeout`.
    Timeout,
    /// The connection was closed or reset before a whole answer.
    Closed,
    /// The answer was not valid HTTP/1.1.
    Malformed,
    /// The answer's body was larger than `--max-upstream-body`.
    TooLarge,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Connect,
        Kind::Timeout,
        Kind::Closed,
        Kind::Malformed,
        Kind::TooLarge,
    ];

    /// The `kind` label, and the `kind` of a 502 body.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Timeout => "timeout",
            Kind::Closed => "closed",
            Kind::Malformed => "malformed",
            Kind::TooLarge => "too_large",
        }
    }

    /// The `error` of the answer's JSON body.
    pub fn message(self) -> &'static str {
        match self {
            Kind::Timeout => "upstream timeout",
            Kind::Connect => "upstream connection failed",
            Kind::Closed => "upstream closed the connection",
            Kind::Malformed => "malformed upstream response",
            Kind::TooLarge => "upstream body too large",
        }
    }

    /// The gateway's answer: 504 when the upstream took too long, else 502.
    pub fn status(self) -> StatusCode {
        if self == Kind::Timeout {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        }
    }
}

/// A failed attempt: its kind, and the cause as text (the `cause` of a 502 body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamError {
    pub kind: Kind,
    pub cause: String,
}

impl UpstreamError {
    pub fn new(kind: Kind, cause: impl ToString) -> UpstreamError {
        UpstreamError {
            kind,
            cause: cause.to_string(),
        }
    }

    pub(crate) fn closed(cause: impl ToString) -> UpstreamError {
        UpstreamError::new(Kind::Closed, cause)
    }

    /// A connection that failed under a request: closed, or (a TLS error) refused the
    /// session. TLS 1.3 ends the client's handshake before the server checks its
    /// certificate, so a refused one arrives as the answer; under TLS 1.2 it fails the
    /// handshake: a connect error either way.
    pub(crate) fn broken(err: std::io::Error) -> UpstreamError {
        UpstreamError::new(tls_kind(&err).unwrap_or(Kind::Closed), err)
    }

    pub(crate) fn malformed(cause: impl ToString) -> UpstreamError {
        UpstreamError::new(Kind::Malformed, cause)
    }

    pub(crate) fn too_large(limit: usize) -> UpstreamError {
        let cause = format!("body over {limit} bytes (--max-upstream-body)");
        UpstreamError::new(Kind::TooLarge, cause)
    }
}

/// The kind of a failed TLS session, when `err` is one: the server refusing the session (an
/// alert about the client's certificate or the handshake: TLS 1.3 delivers it as the answer to
/// the first request) is a connect error; any other TLS failure (a record that fails to
/// decrypt, an alert mid-answer) ended the connection under the request. `None` when `err`
/// is not a TLS error.
pub(crate) fn tls_kind(err: &std::io::Error) -> Option<Kind> {
    use rustls::AlertDescription as Alert;
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    let refused = matches!(
        tls,
        rustls::Error::AlertReceived(
            Alert::CertificateRequired
                | Alert::BadCertificate
                | Alert::UnsupportedCertificate
                | Alert::CertificateRevoked
                | Alert::CertificateExpired
                | Alert::CertificateUnknown
                | Alert::UnknownCA
                | Alert::AccessDenied
                | Alert::HandshakeFailure
        )
    );
    Some(if refused { Kind::Connect } else { Kind::Closed })
}

/// How one attempt ended: an answer with its status, or a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Answered(StatusCode),
    Failed(Kind),
}

impl Outcome {
    /// The `outcome` labels of the attempts' histogram, by [`Outcome::index`]: an answer by
    /// its status class, a failure by its kind.
    pub const LABELS: [&'static str; 9] = [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "connect",
        "timeout",
        "closed",
        "malformed",
        "too_large",
    ];

    /// The `kind` labels of `upstream_errors_total`, by [`Outcome::error_index`]: each
    /// failure, and `unavailable` for an answer of 502, 503 or 504.
    pub const ERROR_LABELS: [&'static str; 6] = [
        "connect",
        "timeout",
        "closed",
        "malformed",
        "too_large",
        "unavailable",
    ];

    pub fn index(self) -> usize {
        match self {
            Outcome::Answered(status) => match status.as_u16() {
                0..300 => 0,
                300..400 => 1,
                400..500 => 2,
                _ => 3,
            },
            Outcome::Failed(kind) => 4 + kind as usize,
        }
    }

    /// Counted as an upstream error, and under which kind: every failure, and the answers
    /// that say the upstream is unavailable.
    pub fn error_index(self) -> Option<usize> {
        match self {
            Outcome::Failed(kind) => Some(kind as usize),
            Outcome::Answered(_) if self.unavailable() => Some(Kind::ALL.len()),
            Outcome::Answered(_) => None,
        }
    }

    /// Worth another try: no connection was made, or the upstream said it is unavailable.
    pub fn retryable(self) -> bool {
        self == Outcome::Failed(Kind::Connect) || self.unavailable()
    }

    fn unavailable(self) -> bool {
        matches!(self, Outcome::Answered(status) if matches!(status.as_u16(), 502..=504))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_the_outcome() {
        let answered = |code| Outcome::Answered(StatusCode::from_u16(code).expect("a status"));
        for (outcome, label, error, retry) in [
            (answered(200), "2xx", None, false),
            (answered(404), "4xx", None, false),
            (answered(500), "5xx", None, false),
            (answered(503), "5xx", Some("unavailable"), true),
            (
                Outcome::Failed(Kind::Connect),
                "connect",
                Some("connect"),
                true,
            ),
            (
                Outcome::Failed(Kind::Timeout),
                "timeout",
                Some("timeout"),
                false,
            ),
            (
                Outcome::Failed(Kind::TooLarge),
                "too_large",
                Some("too_large"),
                false,
            ),
        ] {
            assert_eq!(Outcome::LABELS[outcome.index()], label, "{outcome:?}");
            let kind = outcome
                .error_index()
                .map(|index| Outcome::ERROR_LABELS[index]);
            assert_eq!(kind, error, "{outcome:?}");
            assert_eq!(outcome.retryable(), retry, "{outcome:?}");
        }
        for kind in Kind::ALL {
            assert_eq!(Outcome::LABELS[Outcome::Failed(kind).index()], kind.label());
            assert_eq!(Outcome::ERROR_LABELS[kind as usize], kind.label());
        }
        assert_eq!(Kind::Timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(Kind::Closed.status(), StatusCode::BAD_GATEWAY);
    }
}
