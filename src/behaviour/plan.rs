//! A request's plan: what its controls draw for it (delay, fault, status), and the bound on
//! `rate` that keeps every pace within `--max-delay`.

use std::time::Duration;

use super::{BehaviourError, Controls, Fault, Limits, Rng};

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
