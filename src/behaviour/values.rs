//! The values of each control: durations bounded by `--max-delay`, weighted choices
//! (`503:5,429:1`), the delay distributions, counts and rates.

use std::time::Duration;

use super::parse::{Delay, Limits, Weighted};
use super::{BehaviourError, Fault};
use crate::time::parse_duration;

const DURATION: &str = "a duration such as 250ms, 1.5s or 150us";

pub(super) fn parse_bounded_duration(
    param: &str,
    text: &str,
    limits: &Limits,
) -> Result<Duration, BehaviourError> {
    let duration = parse_duration(text.trim()).map_err(|_| BehaviourError::new(param, DURATION))?;
    if duration > limits.max_delay {
        return Err(BehaviourError::new(
            param,
            format!(
                "a duration of at most {} (--max-delay)",
                show(limits.max_delay)
            ),
        ));
    }
    Ok(duration)
}

/// A duration as the user would write it.
fn show(duration: Duration) -> String {
    if duration.subsec_nanos() == 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_secs_f64() * 1e3)
    }
}

/// Parses `p` in `value:p`: a percentage above 0 and at most 100.
fn parse_percent(param: &str, text: &str) -> Result<f64, BehaviourError> {
    match text.trim().parse::<f64>() {
        Ok(p) if p > 0.0 && p <= 100.0 => Ok(p),
        _ => Err(BehaviourError::new(
            param,
            "a percentage above 0 and at most 100 after ':'",
        )),
    }
}

/// Parses `a:p,b:q` (or a bare `a`, meaning 100%) with `item` for each value.
fn parse_weighted<T>(
    param: &str,
    text: &str,
    item: impl Fn(&str) -> Result<T, BehaviourError>,
) -> Result<Weighted<T>, BehaviourError> {
    if text.is_empty() {
        return Err(BehaviourError::new(param, "a value"));
    }
    let parts: Vec<&str> = text.split(',').collect();
    let mut choices = Vec::with_capacity(parts.len());
    for part in &parts {
        let (value, percent) = match part.split_once(':') {
            Some((value, percent)) => (value, parse_percent(param, percent)?),
            None if parts.len() == 1 => (*part, 100.0),
            None => {
                return Err(BehaviourError::new(
                    param,
                    "value:percent for every item of a list",
                ));
            }
        };
        choices.push((item(value)?, percent));
    }
    let total: f64 = choices.iter().map(|(_, p)| p).sum();
    if total > 100.0 + 1e-9 {
        return Err(BehaviourError::new(
            param,
            format!("percentages summing to at most 100, not {total}"),
        ));
    }
    Ok(Weighted { choices })
}

pub(super) fn parse_delay(text: &str, limits: &Limits) -> Result<Delay, BehaviourError> {
    let duration = |t: &str| parse_bounded_duration("delay", t, limits);
    if let Some((name, rest)) = text.split_once('(') {
        let args = rest.strip_suffix(')').ok_or_else(|| {
            BehaviourError::new("delay", "a closing ')' after the distribution's arguments")
        })?;
        let args: Vec<&str> = args.split(',').collect();
        let two = |form: &str| -> Result<(Duration, Duration), BehaviourError> {
            match args[..] {
                [a, b] => Ok((duration(a)?, duration(b)?)),
                _ => Err(BehaviourError::new(
                    "delay",
                    format!("two durations: {form}"),
                )),
            }
        };
        return match name {
            "uniform" => {
                let (low, high) = two("uniform(10ms,50ms)")?;
                if low > high {
                    return Err(BehaviourError::new(
                        "delay",
                        "uniform(low,high) with low at most high",
                    ));
                }
                Ok(Delay::Uniform(low, high))
            }
            "normal" => {
                let (mean, sd) = two("normal(mean,standard deviation)")?;
                Ok(Delay::Normal { mean, sd })
            }
            "lognormal" => {
                let (median, p99) = two("lognormal(median,p99)")?;
                if median.is_zero() || p99 < median {
                    return Err(BehaviourError::new(
                        "delay",
                        "lognormal(median,p99) with 0 < median <= p99",
                    ));
                }
                Ok(Delay::lognormal(median, p99))
            }
            "linear" => {
                let (base, per_inflight) = two("linear(base,per request in flight)")?;
                Ok(Delay::Linear { base, per_inflight })
            }
            "exp" => match args[..] {
                [mean] => Ok(Delay::Exp {
                    mean: duration(mean)?,
                }),
                _ => Err(BehaviourError::new("delay", "one duration: exp(mean)")),
            },
            _ => Err(BehaviourError::new(
                "delay",
                "a duration, a weighted list or one of uniform, normal, exp, lognormal, linear",
            )),
        };
    }
    if text.contains(':') {
        return Ok(Delay::Weighted(parse_weighted("delay", text, duration)?));
    }
    Ok(Delay::Fixed(duration(text)?))
}

pub(super) fn parse_status(text: &str) -> Result<Weighted<u16>, BehaviourError> {
    parse_weighted("status", text, |code| match code.trim().parse::<u16>() {
        Ok(code) if (200..=599).contains(&code) => Ok(code),
        _ => Err(BehaviourError::new(
            "status",
            "an HTTP status code from 200 to 599",
        )),
    })
}

pub(super) fn parse_fault(text: &str) -> Result<Weighted<Fault>, BehaviourError> {
    parse_weighted("fault", text, |kind| {
        Fault::ALL
            .into_iter()
            .find(|fault| fault.name() == kind.trim())
            .ok_or_else(|| BehaviourError::new("fault", "reset, close, hang or truncate"))
    })
}

pub(super) fn parse_count(text: &str, limits: &Limits) -> Result<u32, BehaviourError> {
    match text.trim().parse::<u32>() {
        Ok(count) if count >= 1 && count <= limits.max_count => Ok(count),
        _ => Err(BehaviourError::new(
            "count",
            format!(
                "a whole number from 1 to {} (--max-count)",
                limits.max_count
            ),
        )),
    }
}

/// `fail-first=N`: how many attempts of a request id get the injected failure, 1 to 100.
pub(super) fn parse_fail_first(text: &str) -> Result<u8, BehaviourError> {
    match text.trim().parse::<u8>() {
        Ok(n) if (1..=100).contains(&n) => Ok(n),
        _ => Err(BehaviourError::new(
            "fail-first",
            "an integer from 1 to 100",
        )),
    }
}

pub(super) fn parse_rate(text: &str) -> Result<u64, BehaviourError> {
    const EXPECTED: &str = "bytes per second, such as 64KiB, 1MB or 512";
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let multiplier: f64 = match unit {
        "" | "B" => 1.0,
        "KB" | "kB" => 1e3,
        "KiB" => 1024.0,
        "MB" => 1e6,
        "MiB" => 1024.0 * 1024.0,
        "GB" => 1e9,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        _ => return Err(BehaviourError::new("rate", EXPECTED)),
    };
    let value = number
        .parse::<f64>()
        .map_err(|_| BehaviourError::new("rate", EXPECTED))?
        * multiplier;
    if !(1.0..=1e12).contains(&value) {
        return Err(BehaviourError::new(
            "rate",
            "at least 1 byte per second and at most 1TB",
        ));
    }
    Ok(value as u64)
}
