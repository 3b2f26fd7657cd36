//! What the gateway answers when a call failed (502 or 504, naming the kind and the cause),
//! and the gathered answer of a fan-out to several upstreams.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;

use super::error::{Kind, UpstreamError};
use super::{Answer, JSON, Reply};
use crate::config::Upstream;

/// The answer for a single upstream's failure: 504 for a timeout, else 502, naming the cause.
pub(super) fn failure_answer(failure: &UpstreamError, upstream: &Upstream) -> Answer {
    let mut body = format!(
        r#"{{"error":"{}","upstream":{}"#,
        failure.kind.message(),
        json_string(&upstream.url)
    );
    if failure.kind != Kind::Timeout {
        let _ = write!(
            body,
            r#","kind":"{}","cause":{}"#,
            failure.kind.label(),
            json_string(&failure.cause)
        );
    }
    body.push('}');
    Answer {
        status: failure.kind.status(),
        content_type: JSON,
        body: Bytes::from(body),
    }
}

/// Gathers the answers of a fan-out: 200 with one entry per upstream when any answered; when
/// none did, 504 if all timed out, else 502, with the same entries.
pub(super) fn fan_in(results: &[(&Upstream, Result<Reply, UpstreamError>, Duration)]) -> Answer {
    let mut entries = String::from("[");
    for (index, (upstream, result, elapsed)) in results.iter().enumerate() {
        if index > 0 {
            entries.push(',');
        }
        let _ = write!(
            entries,
            r#"{{"url":{},"status":"#,
            json_string(&upstream.url)
        );
        match result {
            Ok(reply) => {
                let _ = write!(entries, "{}", reply.status.as_u16());
            }
            Err(_) => entries.push_str("null"),
        }
        let _ = write!(
            entries,
            r#","duration_ms":{:.3},"body":"#,
            elapsed.as_secs_f64() * 1e3
        );
        match result {
            Ok(reply) if is_json(&reply.body) => {
                entries.push_str(&String::from_utf8_lossy(&reply.body));
            }
            Ok(_) => entries.push_str("null"),
            Err(failure) => {
                let _ = write!(
                    entries,
                    r#"null,"error":"{}","cause":{}"#,
                    failure.kind.message(),
                    json_string(&failure.cause)
                );
            }
        }
        entries.push('}');
    }
    entries.push(']');
    let answered = results.iter().any(|(_, result, _)| result.is_ok());
    let (status, body) = if answered {
        (StatusCode::OK, format!(r#"{{"upstreams":{entries}}}"#))
    } else {
        let all_timed_out = results
            .iter()
            .all(|(_, result, _)| matches!(result, Err(failure) if failure.kind == Kind::Timeout));
        let (status, message) = if all_timed_out {
            (StatusCode::GATEWAY_TIMEOUT, "upstream timeout")
        } else {
            (StatusCode::BAD_GATEWAY, "all upstreams failed")
        };
        (
            status,
            format!(r#"{{"error":"{message}","upstreams":{entries}}}"#),
        )
    };
    Answer {
        status,
        content_type: JSON,
        body: Bytes::from(body),
    }
}

/// Whether `body` is one JSON value (UTF-8), so it can be embedded as it is.
fn is_json(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok()
}

/// `text` as a JSON string literal.
fn json_string(text: &str) -> String {
    serde_json::Value::from(text).to_string()
}
