//! Behaviour injection: the controls that make this service act like a real, imperfect
//! upstream — latency, error statuses, socket faults, payload size, slow bodies.
//!
//! One grammar everywhere (`delay=…&status=…`), read from three sources merged key by key, the
//! later winning: the server profile (`--behaviour`), the `x-m2-behaviour` request header, and
//! the request's query string. Parsing ([`parse`]) and sampling ([`sample`]) are pure and
//! unit-tested; the server applies the outcome of a [`Plan`].

pub mod body;
pub mod parse;
pub mod sample;

use std::time::Duration;

pub use parse::{Controls, Limits};

/// The request header that carries behaviour controls.
pub const HEADER: &str = "x-m2-behaviour";
pub use sample::Rng;

/// A malformed or out-of-range control: answered with `400` and
/// `{"error":"<expected>","param":"<param>"}`, or exit status 2 at start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{expected} (param {param})")]
pub struct BehaviourError {
    /// The control's name: `delay`, `status`, `fault`, `count`, `drip`, `rate`, `seed`.
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

/// What to do with one request, drawn from its [`Controls`].
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Wait this long before answering (or faulting).
    pub delay: Duration,
    /// A socket fault instead of an answer.
    pub fault: Option<Fault>,
    /// An injected error status instead of the avatars (never 200: that is the avatars).
    pub status: Option<u16>,
    /// Avatars in the body.
    pub count: Option<u32>,
    /// Send the body evenly over this long.
    pub drip: Option<Duration>,
    /// Send the body at no more than this many bytes per second.
    pub rate: Option<u64>,
}

impl Plan {
    /// How long sending a body of `len` bytes should take: the longer of `drip` and what
    /// `rate` allows; `None` sends it at once.
    pub fn pace(&self, len: usize) -> Option<Duration> {
        let by_rate = self
            .rate
            .map(|rate| Duration::from_secs_f64(len as f64 / rate as f64));
        match (self.drip, by_rate) {
            (Some(drip), Some(rate)) => Some(drip.max(rate)),
            (drip, rate) => drip.or(rate),
        }
    }
}

impl Controls {
    /// Checks that `rate`, if set, sends a body of `body_len` bytes (the largest this request
    /// could get) within `--max-delay`, as `drip` must: a pace that would hold a connection
    /// for hours is refused, not acted out.
    pub fn check_rate(&self, body_len: usize, limits: &Limits) -> Result<(), BehaviourError> {
        let Some(rate) = self.rate else {
            return Ok(());
        };
        let takes = Duration::from_secs_f64(body_len as f64 / rate as f64);
        if takes <= limits.max_delay {
            return Ok(());
        }
        let least = (body_len as f64 / limits.max_delay.as_secs_f64().max(1e-9)).ceil();
        Err(BehaviourError::new(
            "rate",
            format!(
                "at least {least} bytes per second: a body of {body_len} bytes must be sent within {:?} (--max-delay)",
                limits.max_delay
            ),
        ))
    }

    /// Draws this request's plan. `inflight` is the number of requests in flight, for `linear`.
    pub fn plan(&self, rng: &mut Rng, inflight: usize, limits: &Limits) -> Plan {
        let delay = self
            .delay
            .as_ref()
            .map_or(Duration::ZERO, |delay| delay.sample(rng, inflight))
            .min(limits.max_delay);
        let fault = self.fault.as_ref().and_then(|faults| faults.pick(rng));
        // An injected 200 is the ordinary answer: `status=503:5,200:95` reads naturally, and
        // a later source can switch an earlier one's errors off with `status=200`.
        let status = match fault {
            Some(_) => None,
            None => self
                .status
                .as_ref()
                .and_then(|statuses| statuses.pick(rng))
                .filter(|&code| code != 200),
        };
        Plan {
            delay,
            fault,
            status,
            count: self.count,
            drip: self.drip,
            rate: self.rate,
        }
    }
}
