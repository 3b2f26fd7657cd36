//! Behaviour injection: the controls that make this service act like a real, imperfect
//! upstream — latency, error statuses, socket faults, payload size, slow bodies.
//!
//! One grammar everywhere (`delay=…&status=…`), read from three sources merged key by key, the
//! later winning: the server profile (`--behaviour`), the `x-m2-behaviour` request header, and
//! the request's query string. Parsing ([`parse`]) and sampling (`sample.rs`) are pure and
//! unit-tested; the server applies the outcome of a [`Plan`]. A [`scenario`] scripts the server
//! profile over time: phases, each a behaviour held for a duration, read from a YAML file.
//! `fail-first=N` remembers each request id's attempts in [`Attempts`], shared by the workers.

pub mod attempts;
pub(crate) mod body;
pub mod parse;
mod plan;
pub(crate) mod sample;
pub mod scenario;
mod values;

pub use attempts::{Attempts, Failure};
pub use parse::{Controls, Limits};

/// The request header that carries behaviour controls.
pub const HEADER: &str = "x-m2-behaviour";
pub use plan::Plan;
pub use sample::Rng;

/// A malformed or out-of-range control: answered with `400` and
/// `{"error":"<expected>","param":"<param>"}`, or exit status 2 at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expected} (param {param})")]
pub struct BehaviourError {
    /// The control's name: `delay`, `status`, `fault`, `count`, `drip`, `rate`, `seed`,
    /// `fail-first`.
    pub param: String,
    /// What was expected instead, in words.
    pub expected: String,
}

impl BehaviourError {
    pub fn new(param: &str, expected: impl Into<String>) -> BehaviourError {
        BehaviourError {
            param: param.to_owned(),
            expected: expected.into(),
        }
    }

    /// The JSON body of the `400` answer.
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"error":{},"param":{}}}"#,
            json_string(&self.expected),
            json_string(&self.param)
        )
    }
}

/// A JSON string literal for `text`.
fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A socket-level fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// TCP RST: `SO_LINGER` 0, then close.
    Reset,
    /// Close without any response.
    Close,
    /// Read the request, never answer, until the client leaves or `--max-hang` passes.
    Hang,
    /// The headers with the full `content-length`, half the body, then close.
    Truncate,
}

impl Fault {
    pub const ALL: [Fault; 4] = [Fault::Reset, Fault::Close, Fault::Hang, Fault::Truncate];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Reset => "reset",
            Fault::Close => "close",
            Fault::Hang => "hang",
            Fault::Truncate => "truncate",
        }
    }
}
